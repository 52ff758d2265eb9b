//! Settings: defaults, then the environment, then builder setters.

use std::{fmt, str::FromStr, time::Duration};

use lapin::uri::AMQPUri;

use crate::{Error, Result, topology};

/// The broker URI used when neither `HUTCH_URI` nor [`HutchBuilder::uri`] says otherwise.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The exchange used when neither `HUTCH_EXCHANGE` nor [`HutchBuilder::exchange`] says otherwise.
pub const DEFAULT_EXCHANGE: &str = "hutch";
/// How many unacknowledged messages the broker sends each consumer ahead.
pub const DEFAULT_PREFETCH: u16 = 32;
/// How long a publish waits for the broker's confirm.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight handlers.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variables hutch-rs reads.
const ENV_URI: &str = "HUTCH_URI";
const ENV_EXCHANGE: &str = "HUTCH_EXCHANGE";
const ENV_NAMESPACE: &str = "HUTCH_NAMESPACE";
const ENV_GROUP: &str = "HUTCH_GROUP";

/// Where a setting's value came from; errors name it so the user knows what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Default,
    Env(&'static str),
    Setter(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env(var) => write!(f, "{var} (environment)"),
            Source::Setter(method) => write!(f, "HutchBuilder::{method}"),
        }
    }
}

/// A raw value and where it came from, validated in `build()`.
#[derive(Debug, Clone)]
struct Layered<T> {
    value: T,
    source: Source,
}

impl<T> Layered<T> {
    fn new(value: T, source: Source) -> Self {
        Self { value, source }
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            setting: self.source.to_string(),
            reason: reason.into(),
        }
    }
}

/// A broker URI whose password never leaves this type: `Debug` and `Display`
/// show it masked.
#[derive(Clone)]
pub(crate) struct BrokerUri {
    secret: String,
    masked: String,
}

impl BrokerUri {
    fn parse(raw: &str) -> std::result::Result<Self, String> {
        let parsed = AMQPUri::from_str(raw).map_err(|reason| {
            // lapin's message may quote the URI; describe the problem without it.
            let reason = reason.replace(raw, "<uri>");
            format!("not an AMQP URI ({reason}); expected e.g. {DEFAULT_URI}")
        })?;
        Ok(Self {
            secret: raw.to_owned(),
            masked: mask(&parsed),
        })
    }

    /// The full URI, credentials included: only for handing to lapin.
    pub(crate) fn expose(&self) -> &str {
        &self.secret
    }
}

fn mask(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    format!(
        "{scheme}://{}:***@{}:{}/{vhost}",
        uri.authority.userinfo.username, uri.authority.host, uri.authority.port
    )
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.masked, f)
    }
}

/// Validated settings of one [`Hutch`](crate::Hutch).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) uri: BrokerUri,
    pub(crate) exchange: String,
    pub(crate) namespace: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) prefetch: u16,
    pub(crate) confirm_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Builds a [`Hutch`](crate::Hutch): defaults, overlaid with the environment,
/// overlaid with the setters called here.
///
/// | setting   | environment       | default                                  |
/// |-----------|-------------------|------------------------------------------|
/// | uri       | `HUTCH_URI`       | `amqp://guest:guest@127.0.0.1:5672/%2f`  |
/// | exchange  | `HUTCH_EXCHANGE`  | `hutch`                                  |
/// | namespace | `HUTCH_NAMESPACE` | none                                     |
/// | group     | `HUTCH_GROUP`     | none: every consumer runs                |
///
/// An empty `HUTCH_NAMESPACE` or `HUTCH_GROUP` counts as unset. Nothing is
/// validated until [`build`](Self::build), which names the setting at fault
/// (the environment variable or the setter it came from).
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
    uri: Layered<String>,
    exchange: Layered<String>,
    namespace: Layered<Option<String>>,
    group: Layered<Option<String>>,
    prefetch: Layered<u16>,
    confirm_timeout: Layered<Duration>,
    shutdown_timeout: Layered<Duration>,
}

impl fmt::Debug for HutchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = BrokerUri::parse(&self.uri.value)
            .map(|uri| uri.masked)
            .unwrap_or_else(|_| "<unparsable uri>".to_owned());
        f.debug_struct("HutchBuilder")
            .field("uri", &uri)
            .field("exchange", &self.exchange.value)
            .field("namespace", &self.namespace.value)
            .field("group", &self.group.value)
            .field("prefetch", &self.prefetch.value)
            .field("confirm_timeout", &self.confirm_timeout.value)
            .field("shutdown_timeout", &self.shutdown_timeout.value)
            .finish()
    }
}

impl HutchBuilder {
    /// The built-in defaults, without reading the environment.
    pub fn defaults() -> Self {
        Self {
            uri: Layered::new(DEFAULT_URI.to_owned(), Source::Default),
            exchange: Layered::new(DEFAULT_EXCHANGE.to_owned(), Source::Default),
            namespace: Layered::new(None, Source::Default),
            group: Layered::new(None, Source::Default),
            prefetch: Layered::new(DEFAULT_PREFETCH, Source::Default),
            confirm_timeout: Layered::new(DEFAULT_CONFIRM_TIMEOUT, Source::Default),
            shutdown_timeout: Layered::new(DEFAULT_SHUTDOWN_TIMEOUT, Source::Default),
        }
    }

    /// The defaults overlaid with the `HUTCH_*` environment variables. This is
    /// what [`Hutch::builder`](crate::Hutch::builder) returns.
    pub fn from_env() -> Self {
        Self::defaults().overlay_env(|name| std::env::var(name).ok())
    }

    fn overlay_env(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(uri) = var(ENV_URI) {
            self.uri = Layered::new(uri, Source::Env(ENV_URI));
        }
        if let Some(exchange) = var(ENV_EXCHANGE) {
            self.exchange = Layered::new(exchange, Source::Env(ENV_EXCHANGE));
        }
        if let Some(namespace) = var(ENV_NAMESPACE).filter(|value| !value.is_empty()) {
            self.namespace = Layered::new(Some(namespace), Source::Env(ENV_NAMESPACE));
        }
        if let Some(group) = var(ENV_GROUP).filter(|value| !value.is_empty()) {
            self.group = Layered::new(Some(group), Source::Env(ENV_GROUP));
        }
        self
    }

    /// The broker URI, e.g. `amqp://user:password@host:5672/vhost` (`%2f` is
    /// the default vhost `/`). The password never appears in logs or errors.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = Layered::new(uri.into(), Source::Setter("uri"));
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
    /// ahead of its handler (AMQP `basic.qos`). Must be at least 1.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Layered::new(prefetch, Source::Setter("prefetch"));
        self
    }

    /// How long a publish waits for the broker's confirm before failing.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = Layered::new(timeout, Source::Setter("confirm_timeout"));
        self
    }

    /// How long shutdown waits for in-flight handlers before giving up on
    /// them (their messages are then redelivered by the broker).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Layered::new(timeout, Source::Setter("shutdown_timeout"));
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
    /// is zero.
    pub fn build(self) -> Result<crate::Hutch> {
        let settings = self.validate()?;
        Ok(crate::Hutch::from_settings(settings))
    }

    pub(crate) fn validate(self) -> Result<Settings> {
        let uri = BrokerUri::parse(&self.uri.value).map_err(|reason| self.uri.invalid(reason))?;
        topology::check_exchange_name(&self.exchange.value)
            .map_err(|reason| self.exchange.invalid(reason))?;
        if let Some(namespace) = &self.namespace.value {
            topology::check_name_part(namespace)
                .map_err(|reason| self.namespace.invalid(reason))?;
        }
        if let Some(group) = &self.group.value {
            topology::check_name_part(group).map_err(|reason| self.group.invalid(reason))?;
        }
        if self.prefetch.value == 0 {
            return Err(self
                .prefetch
                .invalid("must be at least 1 (0 would mean no limit)"));
        }
        for timeout in [&self.confirm_timeout, &self.shutdown_timeout] {
            if timeout.value.is_zero() {
                return Err(timeout.invalid("must be longer than zero"));
            }
        }
        Ok(Settings {
            uri,
            exchange: self.exchange.value,
            namespace: self.namespace.value,
            group: self.group.value,
            prefetch: self.prefetch.value,
            confirm_timeout: self.confirm_timeout.value,
            shutdown_timeout: self.shutdown_timeout.value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn config_error(builder: HutchBuilder) -> (String, String) {
        match builder.validate() {
            Err(Error::Config { setting, reason }) => (setting, reason),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_without_environment() {
        let settings = HutchBuilder::defaults().validate().unwrap();
        assert_eq!(settings.exchange, "hutch");
        assert_eq!(settings.namespace, None);
        assert_eq!(settings.group, None);
        assert_eq!(settings.uri.expose(), DEFAULT_URI);
    }

    #[test]
    fn environment_overrides_defaults_and_setters_override_environment() {
        let from_env = HutchBuilder::defaults().overlay_env(env(&[
            ("HUTCH_EXCHANGE", "events"),
            ("HUTCH_NAMESPACE", "shop"),
            ("HUTCH_GROUP", "billing"),
        ]));
        let settings = from_env.clone().validate().unwrap();
        assert_eq!(settings.exchange, "events");
        assert_eq!(settings.namespace.as_deref(), Some("shop"));
        assert_eq!(settings.group.as_deref(), Some("billing"));

        let settings = from_env
            .exchange("orders")
            .namespace("crm")
            .validate()
            .unwrap();
        assert_eq!(settings.exchange, "orders");
        assert_eq!(settings.namespace.as_deref(), Some("crm"));
        assert_eq!(settings.group.as_deref(), Some("billing"));
    }

    #[test]
    fn empty_namespace_and_group_in_environment_mean_unset() {
        let settings = HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_NAMESPACE", ""), ("HUTCH_GROUP", "")]))
            .validate()
            .unwrap();
        assert_eq!(settings.namespace, None);
        assert_eq!(settings.group, None);
    }

    #[test]
    fn bad_uri_names_its_source_and_hides_the_password() {
        let (setting, reason) = config_error(
            HutchBuilder::defaults().overlay_env(env(&[("HUTCH_URI", "http://u:s3cret@host")])),
        );
        assert_eq!(setting, "HUTCH_URI (environment)");
        assert!(!reason.contains("s3cret"), "{reason}");

        let (setting, _) = config_error(HutchBuilder::defaults().uri("not a uri at all"));
        assert_eq!(setting, "HutchBuilder::uri");
    }

    #[test]
    fn a_setter_can_repair_a_bad_environment_value() {
        let settings = HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_URI", "garbage")]))
            .uri("amqp://localhost")
            .validate();
        assert!(settings.is_ok());
    }

    #[test]
    fn empty_exchange_is_refused() {
        let (setting, reason) = config_error(HutchBuilder::defaults().exchange(""));
        assert_eq!(setting, "HutchBuilder::exchange");
        assert!(reason.contains("empty"), "{reason}");
        let (setting, _) =
            config_error(HutchBuilder::defaults().overlay_env(env(&[("HUTCH_EXCHANGE", "")])));
        assert_eq!(setting, "HUTCH_EXCHANGE (environment)");
    }

    #[test]
    fn invalid_namespace_is_refused() {
        for bad in ["", "has space", "slash/ed", "amq.x"] {
            let (setting, _) = config_error(HutchBuilder::defaults().namespace(bad));
            assert_eq!(setting, "HutchBuilder::namespace", "{bad:?}");
        }
    }

    #[test]
    fn zero_prefetch_is_refused() {
        let (setting, _) = config_error(HutchBuilder::defaults().prefetch(0));
        assert_eq!(setting, "HutchBuilder::prefetch");
    }

    #[test]
    fn debug_output_masks_the_password() {
        let builder = HutchBuilder::defaults().uri("amqp://user:s3cret@broker:5672/%2f");
        let debug = format!("{builder:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("user:***@broker:5672"), "{debug}");
        let settings = builder.validate().unwrap();
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert_eq!(settings.uri.to_string(), "amqp://user:***@broker:5672/%2f");
    }
}
