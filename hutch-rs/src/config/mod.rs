//! Settings: defaults, then the settings file, then the environment, then
//! builder setters.

mod broker_uri;
mod layered;
mod management;
mod sources;
mod tls;

use std::{fmt, path::PathBuf, time::Duration};

pub(crate) use broker_uri::BrokerUri;
use layered::{Layered, boolean, number, range_error};
use sources::{RawSetting, Source};
use tls::TlsBuilder;

use crate::{
    Error, Result,
    context::Context,
    duration_text,
    extract::States,
    management::ManagementApi,
    middleware::{CallResult, Middlewares, Next},
    queue_arguments::{QueueArguments, QueueDeclaration, QueueType},
    retry::{self, ErrorHook, ErrorHooks, RetryPolicy},
    topology,
    transport::tls::TlsSettings,
};

/// The broker URI used when neither `HUTCH_URI` nor [`HutchBuilder::uri`] says otherwise.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The exchange used when neither `HUTCH_EXCHANGE` nor [`HutchBuilder::exchange`] says otherwise.
pub const DEFAULT_EXCHANGE: &str = "hutch";
/// How many unacknowledged messages the broker sends each consumer ahead,
/// unless the consumer (`prefetch`) or [`HutchBuilder::prefetch`] says
/// otherwise; a consumer whose concurrency is above half of it gets twice its
/// concurrency instead. Chosen from measurement (the guide's Performance
/// chapter): the drain rate still grows past it, but 50 deliveries handled
/// one at a time within the default 30 s timeout stay inside RabbitMQ's
/// 30-minute `consumer_timeout`.
pub const DEFAULT_PREFETCH: u16 = 50;
/// How many calls of one consumer's handler may be in flight at once,
/// unless the consumer says otherwise (`concurrency`).
pub const DEFAULT_CONCURRENCY: u16 = 1;
/// How long a publish waits for the broker's confirm.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Hutch::request`](crate::Hutch::request) waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight handlers.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The AMQP heartbeat interval asked of the broker: a dead peer is noticed
/// after about two intervals without traffic.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// The first delay before reconnecting; it doubles on each failed attempt.
pub const DEFAULT_RECONNECT_MIN_DELAY: Duration = Duration::from_millis(200);
/// The longest delay between two connection attempts, before jitter (which
/// adds up to as much again).
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);
/// How long one connection attempt (TCP, TLS and the AMQP handshake) may take.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times one consumer may be restarted within
/// [`DEFAULT_RESTART_PERIOD`] before its failure ends `run`.
pub const DEFAULT_MAX_RESTARTS: u32 = 10;
/// The window of the restart intensity.
pub const DEFAULT_RESTART_PERIOD: Duration = Duration::from_secs(60);

/// How many times a failing message is handled before it is dead-lettered,
/// unless its consumer says otherwise (`max_attempts`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The wait before the first retry (`retry_min_delay`).
pub const DEFAULT_RETRY_MIN_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts (`retry_max_delay`).
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
/// How long one handler call may run before it counts as failed
/// (`timeout`). Well below RabbitMQ's `consumer_timeout` (30 minutes from
/// delivery to ack, after which the broker closes the channel and takes the
/// message back): a delivery may wait behind up to `prefetch` others before
/// its own handler starts, and 50 × 30 s is 25 minutes.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// RabbitMQ's default `consumer_timeout`. A handler timeout must be shorter:
/// past it the broker takes the message back as the same attempt, and a
/// handler that always needs longer would loop.
pub(crate) const MAX_HANDLER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Validated settings of one [`Hutch`](crate::Hutch).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The broker's nodes, tried in turn.
    pub(crate) uris: Vec<BrokerUri>,
    pub(crate) exchange: String,
    pub(crate) namespace: Option<String>,
    pub(crate) group: Option<String>,
    /// Set with [`HutchBuilder::prefetch`]; otherwise each consumer's
    /// default follows its concurrency.
    pub(crate) prefetch: Option<u16>,
    pub(crate) concurrency: u16,
    pub(crate) confirm_timeout: Duration,
    /// How long a request waits for its reply, from the call on.
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) connection_timeout: Duration,
    pub(crate) reconnect_min_delay: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) max_restarts: u32,
    pub(crate) restart_period: Duration,
    /// The retry policy of consumers that do not set their own.
    pub(crate) retry: RetryPolicy,
    pub(crate) handler_timeout: Duration,
    /// Every consumer's queue type and arguments unless it sets its own.
    pub(crate) queue_arguments: QueueArguments,
    pub(crate) error_hooks: ErrorHooks,
    /// The values handlers take as [`State<T>`](crate::State).
    pub(crate) states: States,
    /// Around every handler call, outermost first.
    pub(crate) middleware: Middlewares,
    /// For `amqps` URIs: made whenever a URI is `amqps` or a TLS setting
    /// is given.
    pub(crate) tls: Option<TlsSettings>,
    /// Set when stale bindings are to be removed at start: the management
    /// API that lists them.
    pub(crate) stale_bindings: Option<ManagementApi>,
    /// Fault injection for hutch-rs's own tests: the queue whose consumer
    /// panics in its run loop on each delivery (see
    /// [`HutchBuilder::__panic_in_run_loop`]).
    #[cfg(feature = "testing")]
    pub(crate) panic_in_run_loop: Option<String>,
}

/// Builds a [`Hutch`](crate::Hutch): the defaults, overlaid with the TOML
/// file that `HUTCH_CONFIG` names (if set), overlaid with the environment,
/// overlaid with the setters called here.
///
/// Every setting that is a value (not a hook, state or middleware) is read
/// from the environment as `HUTCH_<KEY>` and from the file as `<key>`:
///
/// | key | environment | setter | default |
/// |-----|-------------|--------|---------|
/// | `uri` | `HUTCH_URI` (comma-separated nodes) | [`uri`](Self::uri), [`uris`](Self::uris) | [`DEFAULT_URI`] |
/// | `exchange` | `HUTCH_EXCHANGE` | [`exchange`](Self::exchange) | [`DEFAULT_EXCHANGE`] |
/// | `namespace` | `HUTCH_NAMESPACE` | [`namespace`](Self::namespace) | none |
/// | `group` | `HUTCH_GROUP` | [`group`](Self::group) | none: every consumer runs |
/// | `prefetch` | `HUTCH_PREFETCH` | [`prefetch`](Self::prefetch) | [`DEFAULT_PREFETCH`] |
/// | `concurrency` | `HUTCH_CONCURRENCY` | [`concurrency`](Self::concurrency) | [`DEFAULT_CONCURRENCY`] |
/// | `confirm_timeout` | `HUTCH_CONFIRM_TIMEOUT` | [`confirm_timeout`](Self::confirm_timeout) | [`DEFAULT_CONFIRM_TIMEOUT`] |
/// | `request_timeout` | `HUTCH_REQUEST_TIMEOUT` | [`request_timeout`](Self::request_timeout) | [`DEFAULT_REQUEST_TIMEOUT`] |
/// | `shutdown_timeout` | `HUTCH_SHUTDOWN_TIMEOUT` | [`shutdown_timeout`](Self::shutdown_timeout) | [`DEFAULT_SHUTDOWN_TIMEOUT`] |
/// | `handler_timeout` | `HUTCH_HANDLER_TIMEOUT` | [`handler_timeout`](Self::handler_timeout) | [`DEFAULT_HANDLER_TIMEOUT`] |
/// | `heartbeat` | `HUTCH_HEARTBEAT` | [`heartbeat`](Self::heartbeat) | [`DEFAULT_HEARTBEAT`] |
/// | `connection_timeout` | `HUTCH_CONNECTION_TIMEOUT` | [`connection_timeout`](Self::connection_timeout) | [`DEFAULT_CONNECTION_TIMEOUT`] |
/// | `reconnect_min_delay`, `reconnect_max_delay` | `HUTCH_RECONNECT_MIN_DELAY`, `HUTCH_RECONNECT_MAX_DELAY` | [`reconnect_delay`](Self::reconnect_delay) | 200 ms, 30 s |
/// | `max_restarts`, `restart_period` | `HUTCH_MAX_RESTARTS`, `HUTCH_RESTART_PERIOD` | [`restart_intensity`](Self::restart_intensity) | 10 within 60 s |
/// | `max_attempts` | `HUTCH_MAX_ATTEMPTS` | [`max_attempts`](Self::max_attempts) | [`DEFAULT_MAX_ATTEMPTS`] |
/// | `retry_min_delay`, `retry_max_delay` | `HUTCH_RETRY_MIN_DELAY`, `HUTCH_RETRY_MAX_DELAY` | [`retry_delay`](Self::retry_delay) | 1 s, 60 s |
/// | `queue_type` | `HUTCH_QUEUE_TYPE` (`classic`, `quorum`) | [`queue_type`](Self::queue_type) | classic |
/// | `delivery_limit` | `HUTCH_DELIVERY_LIMIT` | [`delivery_limit`](Self::delivery_limit) | [`DEFAULT_DELIVERY_LIMIT`](crate::DEFAULT_DELIVERY_LIMIT) |
/// | `tls_ca_cert` | `HUTCH_TLS_CA_CERT` | [`tls_ca_cert`](Self::tls_ca_cert) | the system's trusted roots |
/// | `tls_client_cert` | `HUTCH_TLS_CLIENT_CERT` | [`tls_client_cert`](Self::tls_client_cert) | none |
/// | `tls_client_key` | `HUTCH_TLS_CLIENT_KEY` | [`tls_client_key`](Self::tls_client_key) | none |
/// | `tls_server_name` | `HUTCH_TLS_SERVER_NAME` | [`tls_server_name`](Self::tls_server_name) | the URI's host |
/// | `remove_stale_bindings` | `HUTCH_REMOVE_STALE_BINDINGS` (`true`, `false`) | [`remove_stale_bindings`](Self::remove_stale_bindings) | `false` |
/// | `management_uri` | `HUTCH_MANAGEMENT_URI` | [`management_uri`](Self::management_uri) | `http://`, the broker URI's host and credentials, port [`DEFAULT_MANAGEMENT_PORT`](crate::DEFAULT_MANAGEMENT_PORT) |
///
/// Durations are written `"500ms"`, `"30s"`, `"2m"` or `"1m 30s"`; numbers
/// as whole numbers; booleans as `true` or `false`. `HUTCH_URI` may list several nodes of a cluster,
/// separated by commas (in the file, a list); they are tried in turn. An
/// empty `HUTCH_NAMESPACE`, `HUTCH_GROUP`, `HUTCH_MANAGEMENT_URI` or TLS
/// value counts as unset.
/// Nothing is validated until [`build`](Self::build), which names the
/// setting at fault: the environment variable, the file and key, or the
/// setter it came from.
///
/// ```
/// let hutch = hutch_rs::Hutch::builder()
///     .uri("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .exchange("hutch")
///     .namespace("shop")
///     .build()?;
/// # Ok::<(), hutch_rs::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct HutchBuilder {
    uris: Layered<Vec<String>>,
    exchange: Layered<String>,
    namespace: Layered<Option<String>>,
    group: Layered<Option<String>>,
    prefetch: Layered<u16>,
    concurrency: Layered<u16>,
    confirm_timeout: Layered<Duration>,
    request_timeout: Layered<Duration>,
    shutdown_timeout: Layered<Duration>,
    heartbeat: Layered<Duration>,
    connection_timeout: Layered<Duration>,
    reconnect_min_delay: Layered<Duration>,
    reconnect_max_delay: Layered<Duration>,
    max_restarts: Layered<u32>,
    restart_period: Layered<Duration>,
    max_attempts: Layered<u32>,
    retry_min_delay: Layered<Duration>,
    retry_max_delay: Layered<Duration>,
    handler_timeout: Layered<Duration>,
    queue_type: Layered<Option<QueueType>>,
    delivery_limit: Layered<Option<u32>>,
    /// Every consumer's queue arguments unless it sets its own (the type
    /// and delivery limit are the two fields above).
    queue_arguments: QueueArguments,
    /// `HUTCH_CONFIG` named a file that could not be read or parsed: the
    /// setting and the reason, reported by `build()`.
    config_file_error: Option<(String, String)>,
    error_hooks: ErrorHooks,
    states: States,
    middleware: Middlewares,
    tls: TlsBuilder,
    remove_stale_bindings: Layered<bool>,
    management_uri: Layered<Option<String>>,
    #[cfg(feature = "testing")]
    panic_in_run_loop: Option<String>,
}

impl fmt::Debug for HutchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uris: Vec<String> = self
            .uris
            .value
            .iter()
            .map(|uri| {
                BrokerUri::parse(uri)
                    .map(|uri| uri.to_string())
                    .unwrap_or_else(|_| "<unparsable uri>".to_owned())
            })
            .collect();
        f.debug_struct("HutchBuilder")
            .field("uris", &uris)
            .field("exchange", &self.exchange.value)
            .field("namespace", &self.namespace.value)
            .field("group", &self.group.value)
            .field("prefetch", &self.prefetch.value)
            .field("concurrency", &self.concurrency.value)
            .field("confirm_timeout", &self.confirm_timeout.value)
            .field("request_timeout", &self.request_timeout.value)
            .field("shutdown_timeout", &self.shutdown_timeout.value)
            .field("heartbeat", &self.heartbeat.value)
            .field("connection_timeout", &self.connection_timeout.value)
            .field("reconnect_min_delay", &self.reconnect_min_delay.value)
            .field("reconnect_max_delay", &self.reconnect_max_delay.value)
            .field("max_restarts", &self.max_restarts.value)
            .field("restart_period", &self.restart_period.value)
            .field("max_attempts", &self.max_attempts.value)
            .field("retry_min_delay", &self.retry_min_delay.value)
            .field("retry_max_delay", &self.retry_max_delay.value)
            .field("handler_timeout", &self.handler_timeout.value)
            .field("queue_type", &self.queue_type.value)
            .field("delivery_limit", &self.delivery_limit.value)
            .field("queue_arguments", &self.queue_arguments)
            .field("error_hooks", &self.error_hooks)
            .field("states", &self.states)
            .field("middleware", &self.middleware)
            .field("tls", &self.tls)
            .field("remove_stale_bindings", &self.remove_stale_bindings.value)
            // It may hold a password: whether it is set is enough.
            .field(
                "management_uri",
                &self.management_uri.value.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl HutchBuilder {
    /// The built-in defaults, without reading the environment.
    pub fn defaults() -> Self {
        Self {
            uris: Layered::new(vec![DEFAULT_URI.to_owned()], Source::Default),
            exchange: Layered::new(DEFAULT_EXCHANGE.to_owned(), Source::Default),
            namespace: Layered::new(None, Source::Default),
            group: Layered::new(None, Source::Default),
            prefetch: Layered::new(DEFAULT_PREFETCH, Source::Default),
            concurrency: Layered::new(DEFAULT_CONCURRENCY, Source::Default),
            confirm_timeout: Layered::new(DEFAULT_CONFIRM_TIMEOUT, Source::Default),
            request_timeout: Layered::new(DEFAULT_REQUEST_TIMEOUT, Source::Default),
            shutdown_timeout: Layered::new(DEFAULT_SHUTDOWN_TIMEOUT, Source::Default),
            heartbeat: Layered::new(DEFAULT_HEARTBEAT, Source::Default),
            connection_timeout: Layered::new(DEFAULT_CONNECTION_TIMEOUT, Source::Default),
            reconnect_min_delay: Layered::new(DEFAULT_RECONNECT_MIN_DELAY, Source::Default),
            reconnect_max_delay: Layered::new(DEFAULT_RECONNECT_MAX_DELAY, Source::Default),
            max_restarts: Layered::new(DEFAULT_MAX_RESTARTS, Source::Default),
            restart_period: Layered::new(DEFAULT_RESTART_PERIOD, Source::Default),
            max_attempts: Layered::new(DEFAULT_MAX_ATTEMPTS, Source::Default),
            retry_min_delay: Layered::new(DEFAULT_RETRY_MIN_DELAY, Source::Default),
            retry_max_delay: Layered::new(DEFAULT_RETRY_MAX_DELAY, Source::Default),
            handler_timeout: Layered::new(DEFAULT_HANDLER_TIMEOUT, Source::Default),
            queue_type: Layered::new(None, Source::Default),
            delivery_limit: Layered::new(None, Source::Default),
            queue_arguments: QueueArguments::new(),
            config_file_error: None,
            error_hooks: ErrorHooks::default(),
            states: States::default(),
            middleware: Middlewares::default(),
            tls: TlsBuilder::default(),
            remove_stale_bindings: Layered::new(false, Source::Default),
            management_uri: Layered::new(None, Source::Default),
            #[cfg(feature = "testing")]
            panic_in_run_loop: None,
        }
    }

    /// The defaults, overlaid with the TOML file that `HUTCH_CONFIG` names
    /// (if set), overlaid with the `HUTCH_*` environment variables. This is
    /// what [`Hutch::builder`](crate::Hutch::builder) returns.
    pub fn from_env() -> Self {
        Self::defaults().overlay_env(|name| std::env::var(name).ok())
    }

    /// The file `HUTCH_CONFIG` names, then the environment, over `self`.
    fn overlay_env(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(path) = var(sources::CONFIG_FILE_VAR).filter(|path| !path.trim().is_empty()) {
            match sources::read_file(std::path::Path::new(path.trim())) {
                Ok(settings) => settings.iter().for_each(|setting| self.apply(setting)),
                Err(reason) => {
                    self.config_file_error =
                        Some((Source::Env(sources::CONFIG_FILE_VAR).to_string(), reason));
                }
            }
        }
        for setting in sources::read_env(&var) {
            self.apply(&setting);
        }
        self
    }

    /// One setting from the environment or the file, as text.
    fn apply(&mut self, raw: &RawSetting) {
        let duration = duration_text::parse;
        // An empty namespace or group means none, so that a deployment can
        // clear one that a file sets.
        let optional_name = |text: &str| Ok((!text.is_empty()).then(|| text.to_owned()));
        match raw.key {
            "uri" => self.uris.parse_from(raw, |text| {
                Ok(text.split(',').map(|uri| uri.trim().to_owned()).collect())
            }),
            "exchange" => self.exchange.parse_from(raw, |text| Ok(text.to_owned())),
            "namespace" => self.namespace.parse_from(raw, optional_name),
            "group" => self.group.parse_from(raw, optional_name),
            "prefetch" => self.prefetch.parse_from(raw, number),
            "concurrency" => self.concurrency.parse_from(raw, number),
            "confirm_timeout" => self.confirm_timeout.parse_from(raw, duration),
            "request_timeout" => self.request_timeout.parse_from(raw, duration),
            "shutdown_timeout" => self.shutdown_timeout.parse_from(raw, duration),
            "handler_timeout" => self.handler_timeout.parse_from(raw, duration),
            "heartbeat" => self.heartbeat.parse_from(raw, duration),
            "connection_timeout" => self.connection_timeout.parse_from(raw, duration),
            "reconnect_min_delay" => self.reconnect_min_delay.parse_from(raw, duration),
            "reconnect_max_delay" => self.reconnect_max_delay.parse_from(raw, duration),
            "max_restarts" => self.max_restarts.parse_from(raw, number),
            "restart_period" => self.restart_period.parse_from(raw, duration),
            "max_attempts" => self.max_attempts.parse_from(raw, number),
            "retry_min_delay" => self.retry_min_delay.parse_from(raw, duration),
            "retry_max_delay" => self.retry_max_delay.parse_from(raw, duration),
            "queue_type" => self
                .queue_type
                .parse_from(raw, |text| text.parse().map(Some)),
            "delivery_limit" => self
                .delivery_limit
                .parse_from(raw, |text| number(text).map(Some)),
            "tls_ca_cert" | "tls_client_cert" | "tls_client_key" | "tls_server_name" => {
                self.tls.apply(raw);
            }
            "remove_stale_bindings" => self.remove_stale_bindings.parse_from(raw, boolean),
            "management_uri" => self.management_uri.parse_from(raw, optional_name),
            other => unreachable!("setting {other:?} is in sources::KEYS but not applied"),
        }
    }

    /// The broker URI, e.g. `amqp://user:password@host:5672/vhost` (`%2f` is
    /// the default vhost `/`). The password never appears in logs or errors.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uris = Layered::new(vec![uri.into()], Source::Setter("uri"));
        self
    }

    /// Several broker URIs, the nodes of a cluster: each connection attempt
    /// tries the next one in turn.
    pub fn uris<I, S>(mut self, uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let uris = uris.into_iter().map(Into::into).collect();
        self.uris = Layered::new(uris, Source::Setter("uris"));
        self
    }

    /// The topic exchange that publishers send to and consumer queues are bound to.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Layered::new(exchange.into(), Source::Setter("exchange"));
        self
    }

    /// Prefixes every queue name with `"<namespace>:"`, so several
    /// applications can share a broker and an exchange.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Layered::new(Some(namespace.into()), Source::Setter("namespace"));
        self
    }

    /// Runs only the consumers declared with `group = "<group>"`; without a
    /// group every registered consumer runs.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Layered::new(Some(group.into()), Source::Setter("group"));
        self
    }

    /// How many unacknowledged messages the broker may send each consumer
    /// ahead of its handler (AMQP `basic.qos`), for consumers without their
    /// own `prefetch = N`. Must be at least 1, and at least the consumer's
    /// concurrency. Unset, each consumer gets [`DEFAULT_PREFETCH`] or twice
    /// its concurrency, whichever is more.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Layered::new(prefetch, Source::Setter("prefetch"));
        self
    }

    /// How many calls of one consumer's handler may be in flight at once,
    /// for consumers without their own `concurrency = N`. Must be at least
    /// 1, and at most the consumer's prefetch. The calls run concurrently on
    /// the consumer's task (like `join_all`, not on separate threads): a
    /// handler that waits on I/O lets the others go on; one that computes
    /// for long should hand that work to `tokio::task::spawn_blocking`.
    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = Layered::new(concurrency, Source::Setter("concurrency"));
        self
    }

    /// How long a publish waits for the broker's confirm before failing.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = Layered::new(timeout, Source::Setter("confirm_timeout"));
        self
    }

    /// How long [`Hutch::request`](crate::Hutch::request) waits for its
    /// reply, from the call on (a connection being re-established, the
    /// publish and its confirm included), before it fails with
    /// [`Error::RequestTimeout`]. Environment: `HUTCH_REQUEST_TIMEOUT`;
    /// default [`DEFAULT_REQUEST_TIMEOUT`] (30 s). Longer than zero.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Layered::new(timeout, Source::Setter("request_timeout"));
        self
    }

    /// How long shutdown waits for in-flight handlers before giving up on
    /// them (their messages are then redelivered by the broker).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Layered::new(timeout, Source::Setter("shutdown_timeout"));
        self
    }

    /// The AMQP heartbeat interval (whole seconds, at least one). Without
    /// traffic for about two intervals a connection is taken as dead and
    /// re-established.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Layered::new(interval, Source::Setter("heartbeat"));
        self
    }

    /// How long one connection attempt may take, handshake included; a
    /// broker that accepts the socket but never answers counts as down.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = Layered::new(timeout, Source::Setter("connection_timeout"));
        self
    }

    /// The delays between connection attempts: exponential from `min` to
    /// `max`, each plus a random jitter of up to the same amount; reset once
    /// a connection has stayed up for a while.
    ///
    /// While it waits, the connection manager watches the broker's port:
    /// once the port has refused connections (the broker is down), the wait
    /// ends as soon as it accepts again, so a broker back from a restart is
    /// used within about a second rather than after the rest of the delay.
    /// A port that accepts is probed once per wait, and once a second only
    /// within the first seconds after the connection was lost, so that the
    /// log of the broker (or of a load balancer in front of it) is not
    /// filled with probes.
    ///
    /// The same range, without jitter, paces a consumer restarted more than
    /// once within the restart intensity's window (its first restart there
    /// is immediate), the forwarding of failed messages that could not be
    /// published, and a publish whose channel keeps failing.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = Layered::new(min, Source::Setter("reconnect_delay"));
        self.reconnect_max_delay = Layered::new(max, Source::Setter("reconnect_delay"));
        self
    }

    /// The restart intensity, as in OTP: a consumer may be restarted at most
    /// `max_restarts` times within `period`; one more failure ends
    /// `run`/`run_until` with an error naming the consumer.
    ///
    /// Restarts are for the consumer's own machinery: its channel closed by
    /// the broker, a server `basic.cancel` (its queue deleted). A handler's
    /// `Err`, panic or timeout is that one message's failure (retried, then
    /// dead-lettered) and never counts here.
    pub fn restart_intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = Layered::new(max_restarts, Source::Setter("restart_intensity"));
        self.restart_period = Layered::new(period, Source::Setter("restart_intensity"));
        self
    }

    /// How many times a failing message is handled before it goes to its
    /// consumer's dead-letter queue, for consumers without
    /// `#[consumer(max_attempts = ...)]`. At least 1 (1: no retries).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Layered::new(max_attempts, Source::Setter("max_attempts"));
        self
    }

    /// The waits between attempts, for consumers without their own
    /// `retry_min_delay` / `retry_max_delay`: `min` after the first failure,
    /// doubling up to `max`, ±20 % jitter. The waiting happens in delay queues
    /// on the broker (see [`RetryPolicy`](crate::RetryPolicy)).
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min_delay = Layered::new(min, Source::Setter("retry_delay"));
        self.retry_max_delay = Layered::new(max, Source::Setter("retry_delay"));
        self
    }

    /// How long one handler call may run before it is stopped and counts as
    /// failed, for consumers without `#[consumer(timeout = ...)]`.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Layered::new(timeout, Source::Setter("handler_timeout"));
        self
    }

    /// The type of every consumer's queues, for consumers without
    /// `#[consumer(queue_type = "...")]` (which wins). Environment:
    /// `HUTCH_QUEUE_TYPE` (`classic` or `quorum`); default
    /// [`QueueType::Classic`]. See [`QueueType`] for what each means.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = Layered::new(Some(queue_type), Source::Setter("queue_type"));
        self
    }

    /// How many unacked deliveries a quorum queue allows a message before
    /// dead-lettering it to `<queue>:dead`, for consumers without
    /// `#[consumer(delivery_limit = N)]`; see
    /// [`QueueArguments::delivery_limit`]. Environment:
    /// `HUTCH_DELIVERY_LIMIT`; default [`DEFAULT_DELIVERY_LIMIT`](crate::DEFAULT_DELIVERY_LIMIT).
    /// Applies to quorum queues only.
    pub fn delivery_limit(mut self, deliveries: u32) -> Self {
        self.delivery_limit = Layered::new(Some(deliveries), Source::Setter("delivery_limit"));
        self
    }

    /// Queue arguments for every consumer's queue (length limit, single
    /// active consumer, priorities, TTL, any `x-` argument); a consumer's
    /// own arguments on `#[consumer]` win, one by one. A type or delivery
    /// limit set here counts as a call of [`queue_type`](Self::queue_type)
    /// or [`delivery_limit`](Self::delivery_limit).
    pub fn queue_arguments(mut self, arguments: QueueArguments) -> Self {
        if let Some(queue_type) = arguments.queue_type {
            self.queue_type = Layered::new(Some(queue_type), Source::Setter("queue_arguments"));
        }
        if let Some(limit) = arguments.delivery_limit {
            self.delivery_limit = Layered::new(Some(limit), Source::Setter("queue_arguments"));
        }
        self.queue_arguments = arguments;
        self
    }

    /// Adds an error hook, called for every message whose handling failed,
    /// once its outcome (retry, dead letter, requeue) is carried out. Hooks
    /// add to the log line hutch-rs always writes; one that fails or panics
    /// is logged and changes nothing else.
    ///
    /// Each hook has a worker task of its own that calls it with one failure
    /// at a time, from a queue of
    /// [`ERROR_HOOK_QUEUE_CAPACITY`](crate::ERROR_HOOK_QUEUE_CAPACITY)
    /// failures: a slow hook never holds up a consumer. A failure that finds
    /// the queue full is not reported to that hook; it is counted in
    /// [`Status::hook_failures_dropped`](crate::Status::hook_failures_dropped)
    /// and logged. Shutdown waits for the queues to drain, within the
    /// shutdown timeout.
    pub fn on_error(mut self, hook: impl ErrorHook) -> Self {
        self.error_hooks.push(hook);
        self
    }

    /// Gives handlers a value of type `T`, taken as a
    /// [`State<T>`](crate::State) argument (or read with
    /// [`Context::state`](crate::Context::state)): a connection pool, an HTTP
    /// client, settings. One value per type; a second value of the same type
    /// replaces the first. Each call gets a clone, so share what must be
    /// shared through the type itself (pools and clients are handles
    /// already; wrap anything else in an `Arc`).
    ///
    /// A selected consumer that takes a `State<T>` whose value was not
    /// given makes [`Hutch::start`](crate::Hutch::start), `run` and
    /// `run_until` fail with [`Error::MissingState`] before anything is
    /// declared.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Runs `middleware` around every handler call of every consumer, in
    /// the idiom of axum's `from_fn`: an async function of the call's
    /// [`Context`](crate::Context) and the [`Next`](crate::Next) step. It
    /// sees the delivery before the handler and the outcome after it (a
    /// handler's panic included), and may return without calling
    /// `next.run` (a duplicate seen before, say): `Ok` acks the message,
    /// an `Err` is its failure, retried or dead-lettered as usual.
    ///
    /// Middleware added first runs outermost. To apply one to some
    /// consumers only, look at [`Context::consumer`](crate::Context::consumer)
    /// or [`Context::queue`](crate::Context::queue) and call `next.run`
    /// directly for the others.
    ///
    /// The call's timeout stops the whole call, middleware included, from
    /// outside: middleware does not see it (the error hooks do).
    ///
    /// ```
    /// use hutch_rs::{CallResult, Context, Hutch, Next};
    ///
    /// let hutch = Hutch::builder()
    ///     .middleware(|ctx: Context, next: Next| async move {
    ///         tracing::info!(routing_key = ctx.routing_key(), "handling");
    ///         next.run(ctx).await
    ///     })
    ///     .build()?;
    /// # Ok::<(), hutch_rs::Error>(())
    /// ```
    pub fn middleware<F, Fut>(mut self, middleware: F) -> Self
    where
        F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CallResult> + Send + 'static,
    {
        self.middleware.push(middleware);
        self
    }

    /// The CA certificate(s) that signed the broker's certificate, as a PEM
    /// file, for `amqps` URIs. Environment: `HUTCH_TLS_CA_CERT`. Without
    /// it the operating system's trusted roots are used. Read by
    /// [`build`](Self::build), which fails naming this setting when the file
    /// is missing or holds no PEM certificate.
    pub fn tls_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_cert = Layered::new(Some(path.into()), Source::Setter("tls_ca_cert"));
        self
    }

    /// The client certificate (PEM; the chain, leaf first) sent when the
    /// broker asks for one, for `amqps` URIs. Needs
    /// [`tls_client_key`](Self::tls_client_key). Environment:
    /// `HUTCH_TLS_CLIENT_CERT`. With `?auth_mechanism=external` in the URI
    /// the certificate alone logs in (RabbitMQ's
    /// `rabbitmq_auth_mechanism_ssl` plugin).
    pub fn tls_client_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Layered::new(Some(path.into()), Source::Setter("tls_client_cert"));
        self
    }

    /// The private key of the client certificate (PEM: PKCS#8, PKCS#1 or
    /// SEC1). Environment: `HUTCH_TLS_CLIENT_KEY`. [`build`](Self::build)
    /// checks that it goes with the certificate.
    pub fn tls_client_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.client_key = Layered::new(Some(path.into()), Source::Setter("tls_client_key"));
        self
    }

    /// The name the broker's certificate must carry (a DNS name or an IP
    /// address), when it is not the URI's host: e.g. connecting to an
    /// address whose certificate names the host. Environment:
    /// `HUTCH_TLS_SERVER_NAME`.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Layered::new(Some(name.into()), Source::Setter("tls_server_name"));
        self
    }

    /// Removes, at each [`start`](crate::Hutch::start), the stale bindings
    /// of the selected consumers' queues: bindings that hutch-rs made
    /// earlier (they carry its mark, [`BINDING_MARK`](crate::BINDING_MARK))
    /// from the exchange to one of those queues, for a routing key its
    /// consumer no longer declares. A consumer that drops a routing key
    /// otherwise keeps receiving its messages, as AMQP bindings outlive the
    /// code that made them. Environment: `HUTCH_REMOVE_STALE_BINDINGS`;
    /// default off.
    ///
    /// Never removed: bindings without the mark (made by hand, by other
    /// tools, or by hutch-rs before it marked its bindings), bindings with
    /// other arguments, from other exchanges, or to queues this process does
    /// not declare (other namespaces, other groups, and the queue of a
    /// consumer removed altogether, whose bindings stay until the queue is
    /// deleted).
    ///
    /// AMQP cannot list bindings, so they are listed through RabbitMQ's
    /// management HTTP API (plugin `rabbitmq_management`), at the
    /// [`management_uri`](Self::management_uri). If it cannot be reached or
    /// refuses, `start` fails with
    /// [`Error::StaleBindings`](crate::Error::StaleBindings) saying what to
    /// change; each request to it may take as long as the
    /// [`connection_timeout`](Self::connection_timeout). What was removed is logged (info) and listed by
    /// [`Running::removed_bindings`](crate::Running::removed_bindings). See
    /// the guide's Topology chapter.
    pub fn remove_stale_bindings(mut self, remove: bool) -> Self {
        self.remove_stale_bindings = Layered::new(remove, Source::Setter("remove_stale_bindings"));
        self
    }

    /// Where RabbitMQ's management HTTP API listens, for
    /// [`remove_stale_bindings`](Self::remove_stale_bindings):
    /// `http://user:password@host:15672` (a path prefix may follow, for a
    /// proxy). Without credentials, the broker URI's are used; the vhost is
    /// always the broker URI's. Environment: `HUTCH_MANAGEMENT_URI`.
    /// Unset, it is derived from the (first) broker URI: `http://`, its
    /// host, port [`DEFAULT_MANAGEMENT_PORT`](crate::DEFAULT_MANAGEMENT_PORT),
    /// its credentials; an `amqps` broker URI gives no default, as the
    /// credentials would cross in clear. Only `http` for now. The password
    /// never appears in logs or errors.
    pub fn management_uri(mut self, uri: impl Into<String>) -> Self {
        self.management_uri = Layered::new(Some(uri.into()), Source::Setter("management_uri"));
        self
    }

    /// Fault injection for hutch-rs's own tests; not part of the API and not
    /// covered by semver. The consumer of `queue` (its full name, namespace
    /// included) panics in its run loop, outside any handler, on each
    /// delivery: what a bug in hutch-rs's consumer code would do. Only with
    /// the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __panic_in_run_loop(mut self, queue: &str) -> Self {
        self.panic_in_run_loop = Some(queue.to_owned());
        self
    }

    /// Validates the settings and builds the [`Hutch`](crate::Hutch). Nothing
    /// connects yet.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting (setter or environment variable)
    /// when the URI does not parse, the exchange or namespace is empty or
    /// holds characters RabbitMQ names cannot, the prefetch is 0, or a timeout
    /// is zero; or when a TLS file is missing, holds no PEM certificate or
    /// key, or a client key does not go with its certificate (or comes
    /// without it); or when the management URI is not an `http` URI, or,
    /// with stale-binding removal on, none is set and none can be derived
    /// (an `amqps` broker URI).
    pub fn build(self) -> Result<crate::Hutch> {
        let settings = self.validate()?;
        Ok(crate::Hutch::from_settings(settings))
    }

    pub(crate) fn validate(self) -> Result<Settings> {
        if let Some((setting, reason)) = self.config_file_error {
            return Err(Error::Config { setting, reason });
        }
        let uri_texts = self.uris.parsed()?;
        if uri_texts.is_empty() {
            return Err(self.uris.invalid("no broker URI given"));
        }
        let uris = uri_texts
            .iter()
            .map(|uri| BrokerUri::parse(uri).map_err(|reason| self.uris.invalid(reason)))
            .collect::<Result<Vec<_>>>()?;
        topology::check_exchange_name(self.exchange.parsed()?)
            .map_err(|reason| self.exchange.invalid(reason))?;
        if let Some(namespace) = self.namespace.parsed()? {
            topology::check_name_part(namespace)
                .map_err(|reason| self.namespace.invalid(reason))?;
        }
        if let Some(group) = self.group.parsed()? {
            topology::check_name_part(group).map_err(|reason| self.group.invalid(reason))?;
        }
        if *self.prefetch.parsed()? == 0 {
            return Err(self
                .prefetch
                .invalid("must be at least 1 (0 would mean no limit)"));
        }
        if *self.concurrency.parsed()? == 0 {
            return Err(self.concurrency.invalid("must be at least 1"));
        }
        for timeout in [
            &self.confirm_timeout,
            &self.request_timeout,
            &self.shutdown_timeout,
            &self.connection_timeout,
        ] {
            if timeout.parsed()?.is_zero() {
                return Err(timeout.invalid("must be longer than zero"));
            }
        }
        let heartbeat = *self.heartbeat.parsed()?;
        if heartbeat.subsec_nanos() != 0
            || !(1..=u64::from(u16::MAX)).contains(&heartbeat.as_secs())
        {
            return Err(self
                .heartbeat
                .invalid("must be a whole number of seconds between 1 and 65535"));
        }
        let reconnect_min_delay = *self.reconnect_min_delay.parsed()?;
        let reconnect_max_delay = *self.reconnect_max_delay.parsed()?;
        if reconnect_min_delay.is_zero() {
            return Err(self.reconnect_min_delay.invalid("must be above zero"));
        }
        if reconnect_min_delay > reconnect_max_delay {
            return Err(range_error(
                &self.reconnect_min_delay,
                &self.reconnect_max_delay,
                "the minimum reconnect delay must be at most the maximum",
            ));
        }
        let max_restarts = *self.max_restarts.parsed()?;
        let restart_period = *self.restart_period.parsed()?;
        if restart_period.is_zero() {
            return Err(self
                .restart_period
                .invalid("the restart period must be longer than zero"));
        }
        let max_attempts = *self.max_attempts.parsed()?;
        if max_attempts == 0 {
            return Err(self
                .max_attempts
                .invalid("must be at least 1 (1 means no retries)"));
        }
        let min_delay = *self.retry_min_delay.parsed()?;
        let max_delay = *self.retry_max_delay.parsed()?;
        retry::check_delays(min_delay, max_delay)
            .map_err(|reason| range_error(&self.retry_min_delay, &self.retry_max_delay, &reason))?;
        let handler_timeout = *self.handler_timeout.parsed()?;
        if handler_timeout.is_zero() || handler_timeout >= MAX_HANDLER_TIMEOUT {
            return Err(self.handler_timeout.invalid(
                "must be longer than zero and shorter than RabbitMQ's consumer_timeout (30 minutes)",
            ));
        }
        let mut queue_arguments = self.queue_arguments;
        queue_arguments.queue_type = *self.queue_type.parsed()?;
        queue_arguments.delivery_limit = *self.delivery_limit.parsed()?;
        // Checked here too, so that a bad builder-wide argument is reported
        // at build() naming where it came from, not once per consumer.
        QueueDeclaration::resolve(queue_arguments.clone()).map_err(|reason| {
            let source = if self.queue_type.source != Source::Default {
                self.queue_type.source.to_string()
            } else {
                "HutchBuilder::queue_arguments".to_owned()
            };
            Error::Config {
                setting: source,
                reason,
            }
        })?;
        let tls = self.tls.validate(&uris, &self.uris)?;
        let stale_bindings = management::validate(
            &self.remove_stale_bindings,
            &self.management_uri,
            &self.uris,
            &uris,
        )?;
        Ok(Settings {
            uris,
            exchange: self.exchange.value,
            namespace: self.namespace.value,
            group: self.group.value,
            prefetch: (self.prefetch.source != Source::Default).then_some(self.prefetch.value),
            concurrency: self.concurrency.value,
            confirm_timeout: self.confirm_timeout.value,
            request_timeout: self.request_timeout.value,
            shutdown_timeout: self.shutdown_timeout.value,
            heartbeat,
            connection_timeout: self.connection_timeout.value,
            reconnect_min_delay,
            reconnect_max_delay,
            max_restarts,
            restart_period,
            retry: RetryPolicy {
                max_attempts,
                min_delay,
                max_delay,
            },
            handler_timeout,
            queue_arguments,
            error_hooks: self.error_hooks,
            states: self.states,
            middleware: self.middleware,
            tls,
            stale_bindings,
            #[cfg(feature = "testing")]
            panic_in_run_loop: self.panic_in_run_loop,
        })
    }
}

#[cfg(test)]
mod tests;
