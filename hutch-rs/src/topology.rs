//! Topology by convention: one durable topic exchange, one durable queue per
//! consumer, one binding per routing key.

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::{
    ConsumerRegistration, Error, Result,
    config::{DEFAULT_PREFETCH, MAX_HANDLER_TIMEOUT, Settings},
    queue_arguments::QueueDeclaration,
    retry::{self, RetryPolicy, queues::LONGEST_SUFFIX},
};

/// The binding argument every binding hutch-rs makes carries, with the
/// value [`BINDING_MARK_VALUE`]: it tells hutch-rs's bindings from those
/// made by hand or by other tools, so that stale-binding removal
/// ([`HutchBuilder::remove_stale_bindings`](crate::HutchBuilder::remove_stale_bindings))
/// removes only its own. A topic exchange ignores binding arguments when it
/// routes, so the mark changes nothing else.
///
/// Bindings made by hutch-rs before the mark existed have no arguments and
/// cannot be told from hand-made ones: they are never removed. Binding
/// arguments are part of a binding's identity, so after an upgrade such a
/// queue has two bindings per routing key, the old one and the marked one;
/// a message that matches both still reaches the queue once.
pub const BINDING_MARK: &str = "x-hutch-rs";

/// The value of [`BINDING_MARK`] on hutch-rs's bindings.
pub const BINDING_MARK_VALUE: &str = "1";

/// The arguments of every binding hutch-rs makes: its mark alone. Unbinding
/// one must pass the same.
pub(crate) fn binding_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        BINDING_MARK.into(),
        AMQPValue::LongString(BINDING_MARK_VALUE.into()),
    );
    arguments
}

/// AMQP short strings (names, routing keys) hold at most 255 bytes.
const MAX_NAME_BYTES: usize = 255;

/// Exchange and queue names starting with `amq.` are reserved by RabbitMQ;
/// declaring one is refused with 403.
const RESERVED_PREFIX: &str = "amq.";

/// Checks an exchange name as RabbitMQ would, so the mistake surfaces in
/// `build()` rather than as a channel error at startup.
pub(crate) fn check_exchange_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err(
            "the exchange name is empty; hutch-rs needs a named topic exchange (default \"hutch\")"
                .into(),
        );
    }
    check_name_part(name)
}

/// Checks a namespace, group or exchange name: letters, digits, `_`, `-`,
/// `.`, `:`; not reserved; short enough to leave room for a queue name.
pub(crate) fn check_name_part(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 200 {
        return Err(format!("{name:?} is longer than 200 bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; use letters, digits, '_', '-', '.' and ':'"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "{name:?} starts with \"amq.\", which RabbitMQ reserves for itself"
        ));
    }
    Ok(())
}

/// Checks the routing key of a publish. Any bytes are allowed; the length is
/// the protocol's limit.
pub(crate) fn check_publish_routing_key(routing_key: &str) -> Result<()> {
    if routing_key.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidRoutingKey {
            routing_key: routing_key.to_owned(),
            reason: format!("longer than {MAX_NAME_BYTES} bytes"),
        });
    }
    Ok(())
}

/// The queue name of a consumer: `queue = "..."` or the function name,
/// prefixed `"<namespace>:"` when a namespace is set.
pub(crate) fn queue_name(namespace: Option<&str>, registration: &ConsumerRegistration) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}:{}", registration.base_queue_name()),
        None => registration.base_queue_name().to_owned(),
    }
}

/// One consumer selected to run, with its resolved queue.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerPlan {
    pub(crate) registration: &'static ConsumerRegistration,
    pub(crate) queue: String,
    /// The consumer's `#[consumer]` arguments over the configured defaults.
    pub(crate) retry: RetryPolicy,
    /// How long one handler call may run.
    pub(crate) timeout: Duration,
    /// The channel's prefetch (`basic.qos`).
    pub(crate) prefetch: u16,
    /// How many handler calls may be in flight at once (at most `prefetch`).
    pub(crate) concurrency: u16,
    /// The type and arguments its queues are declared with.
    pub(crate) declaration: QueueDeclaration,
}

impl ConsumerPlan {
    pub(crate) fn name(&self) -> String {
        self.registration.qualified_name()
    }

    /// The arguments the consumer's own queue is declared with: its type
    /// and arguments, dead-lettering to `<queue>:dead`.
    pub(crate) fn main_queue_arguments(&self) -> FieldTable {
        self.declaration
            .main_queue(&crate::retry::queues::dead_letter_queue(&self.queue))
    }

    /// The arguments of each binding of the consumer's queue: hutch-rs's
    /// mark ([`binding_arguments`]), whatever the routing key.
    pub(crate) fn binding_arguments(&self, _routing_key: &str) -> FieldTable {
        binding_arguments()
    }
}

/// The kind of the exchange hutch-rs declares.
pub(crate) const EXCHANGE_KIND: ExchangeKind = ExchangeKind::Topic;

/// Whether the exchange and every queue hutch-rs declares survive a broker
/// restart: they do.
pub(crate) const DURABLE: bool = true;

/// Picks the consumers this process runs (all, or those of the configured
/// group) and resolves their queues. Two consumers on one queue would split
/// its messages between two different functions, so that is refused.
pub(crate) fn plan_consumers(
    settings: &Settings,
    registrations: &[&'static ConsumerRegistration],
) -> Result<Vec<ConsumerPlan>> {
    let mut by_queue: BTreeMap<String, ConsumerPlan> = BTreeMap::new();
    let selected = registrations.iter().filter(|registration| {
        settings
            .group
            .as_deref()
            .is_none_or(|group| registration.group() == Some(group))
    });
    for &registration in selected {
        let queue = queue_name(settings.namespace.as_deref(), registration);
        // Room for the longest name derived from it, a delay queue's.
        if queue.len() + LONGEST_SUFFIX > MAX_NAME_BYTES {
            return Err(Error::Config {
                setting: "namespace".into(),
                reason: format!(
                    "queue name {queue:?} of consumer {} is longer than {} bytes, which leaves no room for its delay queues' names (at most {MAX_NAME_BYTES} bytes)",
                    registration.qualified_name(),
                    MAX_NAME_BYTES - LONGEST_SUFFIX
                ),
            });
        }
        let retry = retry_policy(settings, registration)?;
        let (prefetch, concurrency) = flow(settings, registration)?;
        let declaration = QueueDeclaration::resolve(
            registration
                .queue_arguments()
                .or(&settings.queue_arguments),
        )
        .map_err(|reason| Error::Config {
            setting: format!(
                "queue arguments of consumer {} (its #[consumer] arguments over HutchBuilder::queue_type/queue_arguments and HUTCH_QUEUE_TYPE)",
                registration.qualified_name()
            ),
            reason,
        })?;
        if let Some(existing) = by_queue.get(&queue) {
            return Err(Error::DuplicateQueue {
                queue,
                first: existing.name(),
                second: registration.qualified_name(),
            });
        }
        by_queue.insert(
            queue.clone(),
            ConsumerPlan {
                registration,
                queue,
                retry,
                timeout: registration.timeout().unwrap_or(settings.handler_timeout),
                prefetch,
                concurrency,
                declaration,
            },
        );
    }
    Ok(by_queue.into_values().collect())
}

/// A consumer's retry policy: its own arguments where it has them, the
/// configured defaults elsewhere. The mix must still make sense.
fn retry_policy(settings: &Settings, registration: &ConsumerRegistration) -> Result<RetryPolicy> {
    let defaults = settings.retry;
    let policy = RetryPolicy {
        max_attempts: registration.max_attempts().unwrap_or(defaults.max_attempts),
        min_delay: registration.retry_min_delay().unwrap_or(defaults.min_delay),
        max_delay: registration.retry_max_delay().unwrap_or(defaults.max_delay),
    };
    let invalid = |reason: String| Error::Config {
        setting: format!("#[consumer] on {}", registration.qualified_name()),
        reason,
    };
    if policy.max_attempts == 0 {
        return Err(invalid("max_attempts must be at least 1".into()));
    }
    retry::check_delays(policy.min_delay, policy.max_delay).map_err(|reason| {
        invalid(format!(
            "{reason} (retry_min_delay/retry_max_delay of the consumer, HutchBuilder::retry_delay otherwise)"
        ))
    })?;
    if registration
        .timeout()
        .is_some_and(|timeout| timeout.is_zero())
    {
        return Err(invalid("timeout must be longer than zero".into()));
    }
    Ok(policy)
}

/// A consumer's prefetch and concurrency: its own arguments where it has
/// them, the configured defaults elsewhere. Handler calls beyond the
/// prefetch could never run: the broker sends no more deliveries than that.
fn flow(settings: &Settings, registration: &ConsumerRegistration) -> Result<(u16, u16)> {
    let concurrency = registration.concurrency().unwrap_or(settings.concurrency);
    // Unset, the prefetch keeps every handler call busy with one delivery
    // waiting behind it.
    let prefetch = registration
        .prefetch()
        .or(settings.prefetch)
        .unwrap_or_else(|| DEFAULT_PREFETCH.max(concurrency.saturating_mul(2)));
    let invalid = |reason: String| Error::Config {
        setting: format!("#[consumer] on {}", registration.qualified_name()),
        reason,
    };
    if prefetch == 0 || concurrency == 0 {
        return Err(invalid(
            "prefetch and concurrency must be at least 1".to_owned(),
        ));
    }
    if concurrency > prefetch {
        let origin = |own: Option<u16>, setter: &str| {
            if own.is_some() {
                "its own argument".to_owned()
            } else {
                format!("HutchBuilder::{setter}")
            }
        };
        return Err(invalid(format!(
            "concurrency {concurrency} ({}) exceeds prefetch {prefetch} ({}): the broker never has more than prefetch deliveries out, so at most {prefetch} calls could run; raise the prefetch or lower the concurrency",
            origin(registration.concurrency(), "concurrency"),
            origin(registration.prefetch(), "prefetch"),
        )));
    }
    Ok((prefetch, concurrency))
}

/// Warns about a consumer whose handler timeout, times the deliveries that
/// may wait ahead of a message, reaches RabbitMQ's `consumer_timeout`: under
/// a slow downstream the broker would close its channel and take the
/// messages back.
pub(crate) fn warn_about_consumer_timeout(plan: &ConsumerPlan) {
    // The last of `prefetch` deliveries waits for the ones ahead of it,
    // `concurrency` at a time, and then for its own call.
    let rounds = plan.prefetch.div_ceil(plan.concurrency);
    let worst_wait = plan.timeout.saturating_mul(u32::from(rounds));
    if worst_wait >= MAX_HANDLER_TIMEOUT {
        tracing::warn!(
            consumer = %plan.name(),
            timeout = ?plan.timeout,
            prefetch = plan.prefetch,
            concurrency = plan.concurrency,
            "a delivery can wait ⌈prefetch / concurrency⌉ × timeout = {worst_wait:?} before it is acked, past RabbitMQ's consumer_timeout (30 minutes); lower the timeout or the prefetch, or raise the concurrency"
        );
    }
}

/// How many `#` words a binding pattern may hold before RabbitMQ's routing
/// gets slow: its topic matching backtracks over each `#`, so its cost grows
/// with the routing key's words to the power of the pattern's `#`s.
const FAST_HASHES: usize = 2;

/// The number of `#` words of `pattern`, when more than [`FAST_HASHES`].
pub(crate) fn costly_pattern(pattern: &str) -> Option<usize> {
    let hashes = pattern.split('.').filter(|word| *word == "#").count();
    (hashes > FAST_HASHES).then_some(hashes)
}

/// Warns about routing keys whose `#`s make every publish to the exchange
/// slow: measured on RabbitMQ 3.10, one publish with a 120-word routing key
/// took 17.7 s against a single binding `#.#.#.#.z`, and with five `#`s
/// over 20 s (15 ms with `#.#.z`). Any publisher's long key pays it.
pub(crate) fn warn_about_costly_patterns(plan: &ConsumerPlan) {
    for pattern in plan.registration.routing_keys() {
        if let Some(hashes) = costly_pattern(pattern) {
            tracing::warn!(
                consumer = %plan.name(),
                routing_key = %pattern,
                "the routing key holds {hashes} `#` words: RabbitMQ's topic matching backtracks over each one, so routing a long key against this binding can take seconds; use at most {FAST_HASHES} (two adjacent `#` match nothing one does not)"
            );
        }
    }
}

/// Declares the durable topic exchange.
pub(crate) async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            EXCHANGE_KIND,
            ExchangeDeclareOptions {
                durable: DURABLE,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            resource: format!("exchange {exchange:?} (durable topic)"),
            source: Box::new(source),
        })
}

/// Declares a durable, named queue with `arguments`; `resource` describes
/// it in the error if the broker refuses.
pub(crate) async fn declare_durable_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    resource: impl FnOnce() -> String,
) -> Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: DURABLE,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|source| Error::Declare {
            resource: resource(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// Declares a consumer's durable queue and binds it once per routing key,
/// each binding marked as hutch-rs's ([`BINDING_MARK`]).
///
/// Named and durable, never exclusive or auto-delete: after a reconnect the
/// queue is still there with everything published meanwhile.
pub(crate) async fn declare_consumer_queue(
    channel: &Channel,
    exchange: &str,
    plan: &ConsumerPlan,
) -> Result<()> {
    let arguments = plan.main_queue_arguments();
    let described = plan.declaration.describe(&arguments);
    declare_durable_queue(channel, &plan.queue, arguments, || {
        format!(
            "queue {:?} (durable, {described}) of consumer {}",
            plan.queue,
            plan.name()
        )
    })
    .await?;
    for routing_key in plan.registration.routing_keys() {
        channel
            .queue_bind(
                plan.queue.as_str().into(),
                exchange.into(),
                (*routing_key).into(),
                QueueBindOptions::default(),
                plan.binding_arguments(routing_key),
            )
            .await
            .map_err(|source| Error::Declare {
                resource: format!(
                    "binding of queue {:?} to exchange {exchange:?} with routing key {routing_key:?}",
                    plan.queue
                ),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HutchBuilder;
    use crate::handler::{Delivered, HandlerFuture};

    fn never(_: Delivered) -> HandlerFuture {
        unreachable!("handlers are not called in topology tests")
    }

    static SEND_RECEIPT: ConsumerRegistration =
        ConsumerRegistration::new("send_receipt", "shop", &["orders.placed"], never);
    static AUDIT: ConsumerRegistration =
        ConsumerRegistration::new("audit", "billing", &["billing.#", "refunds.*"], never)
            .with_queue("billing_audit")
            .with_group("billing");
    static OTHER_AUDIT: ConsumerRegistration =
        ConsumerRegistration::new("billing_audit", "other", &["x"], never);

    fn settings(builder: HutchBuilder) -> Settings {
        builder.validate().unwrap()
    }

    #[test]
    fn patterns_with_more_than_two_hashes_are_costly() {
        assert_eq!(costly_pattern("orders.#"), None);
        assert_eq!(costly_pattern("#.orders.#"), None);
        assert_eq!(costly_pattern("#.#.#"), Some(3));
        assert_eq!(costly_pattern("a.#.b.#.c.#.d.#"), Some(4));
        // `#` inside a word is an ordinary character.
        assert_eq!(costly_pattern("#a.b#.#.#"), None);
    }

    #[test]
    fn queue_names_follow_the_convention() {
        assert_eq!(queue_name(None, &SEND_RECEIPT), "send_receipt");
        assert_eq!(queue_name(Some("shop"), &SEND_RECEIPT), "shop:send_receipt");
        assert_eq!(queue_name(Some("shop"), &AUDIT), "shop:billing_audit");
    }

    #[test]
    fn group_selects_only_its_consumers() {
        let all = plan_consumers(
            &settings(HutchBuilder::defaults()),
            &[&SEND_RECEIPT, &AUDIT],
        );
        assert_eq!(all.unwrap().len(), 2);
        let billing = plan_consumers(
            &settings(HutchBuilder::defaults().group("billing")),
            &[&SEND_RECEIPT, &AUDIT],
        )
        .unwrap();
        assert_eq!(billing.len(), 1);
        assert_eq!(billing[0].queue, "billing_audit");
    }

    #[test]
    fn two_consumers_on_one_queue_are_refused_naming_both() {
        let error = plan_consumers(&settings(HutchBuilder::defaults()), &[&AUDIT, &OTHER_AUDIT])
            .unwrap_err()
            .to_string();
        assert!(error.contains("billing::audit"), "{error}");
        assert!(error.contains("other::billing_audit"), "{error}");
    }

    static BUSY: ConsumerRegistration =
        ConsumerRegistration::new("busy", "shop", &["busy.#"], never).with_concurrency(40);
    static SMALL_WINDOW: ConsumerRegistration =
        ConsumerRegistration::new("small_window", "shop", &["small.#"], never).with_prefetch(4);

    fn flow_of(builder: HutchBuilder, registration: &'static ConsumerRegistration) -> (u16, u16) {
        let plans = plan_consumers(&settings(builder), &[registration]).unwrap();
        (plans[0].prefetch, plans[0].concurrency)
    }

    #[test]
    fn an_unset_prefetch_follows_the_concurrency() {
        assert_eq!(flow_of(HutchBuilder::defaults(), &SEND_RECEIPT), (50, 1));
        assert_eq!(flow_of(HutchBuilder::defaults(), &BUSY), (80, 40));
        assert_eq!(
            flow_of(HutchBuilder::defaults().concurrency(30), &SEND_RECEIPT),
            (60, 30)
        );
        // Set anywhere, the prefetch is taken as it is.
        assert_eq!(
            flow_of(HutchBuilder::defaults().prefetch(200), &BUSY),
            (200, 40)
        );
        assert_eq!(flow_of(HutchBuilder::defaults(), &SMALL_WINDOW), (4, 1));
    }

    #[test]
    fn concurrency_above_the_prefetch_is_refused_naming_where_each_came_from() {
        let error = plan_consumers(&settings(HutchBuilder::defaults().prefetch(32)), &[&BUSY])
            .unwrap_err()
            .to_string();
        assert!(error.contains("shop::busy"), "{error}");
        assert!(
            error.contains(
                "concurrency 40 (its own argument) exceeds prefetch 32 (HutchBuilder::prefetch)"
            ),
            "{error}"
        );
        let error = plan_consumers(
            &settings(HutchBuilder::defaults().concurrency(8)),
            &[&SMALL_WINDOW],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(
                "concurrency 8 (HutchBuilder::concurrency) exceeds prefetch 4 (its own argument)"
            ),
            "{error}"
        );
    }

    static PATIENT: ConsumerRegistration =
        ConsumerRegistration::new("patient", "shop", &["slow.#"], never)
            .with_max_attempts(7)
            .with_retry_min_delay(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(600));
    static IMPATIENT: ConsumerRegistration =
        ConsumerRegistration::new("impatient", "shop", &["x"], never)
            .with_retry_min_delay(Duration::from_secs(600));

    #[test]
    fn a_consumer_s_arguments_win_over_the_defaults() {
        let settings = settings(
            HutchBuilder::defaults()
                .max_attempts(2)
                .retry_delay(Duration::from_secs(1), Duration::from_secs(60))
                .handler_timeout(Duration::from_secs(9)),
        );
        let plans = plan_consumers(&settings, &[&PATIENT, &SEND_RECEIPT]).unwrap();
        let patient = plans.iter().find(|plan| plan.queue == "patient").unwrap();
        assert_eq!(
            patient.retry,
            RetryPolicy {
                max_attempts: 7,
                min_delay: Duration::from_secs(5),
                max_delay: Duration::from_secs(60),
            }
        );
        assert_eq!(patient.timeout, Duration::from_secs(600));
        let plain = plans
            .iter()
            .find(|plan| plan.queue == "send_receipt")
            .unwrap();
        assert_eq!(plain.retry, settings.retry);
        assert_eq!(plain.timeout, Duration::from_secs(9));
    }

    #[test]
    fn a_minimum_delay_above_the_default_maximum_is_refused_naming_the_consumer() {
        let error = plan_consumers(&settings(HutchBuilder::defaults()), &[&IMPATIENT])
            .unwrap_err()
            .to_string();
        assert!(error.contains("shop::impatient"), "{error}");
        assert!(error.contains("retry_max_delay"), "{error}");
    }

    #[test]
    fn reserved_and_odd_names_are_refused() {
        assert!(check_exchange_name("amq.topic").is_err());
        assert!(check_exchange_name("").is_err());
        assert!(check_exchange_name("my exchange").is_err());
        assert!(check_exchange_name("hutch").is_ok());
        assert!(check_name_part("shop-eu.1:a_b").is_ok());
        assert!(check_publish_routing_key(&"a".repeat(256)).is_err());
        assert!(check_publish_routing_key(&"a".repeat(255)).is_ok());
    }
}
