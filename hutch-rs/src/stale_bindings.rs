//! Stale bindings: the bindings hutch-rs made earlier to one of this
//! application's queues for a routing key its consumer no longer declares.
//! Removed at start when asked (`HUTCH_REMOVE_STALE_BINDINGS`), and only
//! those: a binding is hutch-rs's when it carries hutch-rs's mark
//! ([`BINDING_MARK`](crate::BINDING_MARK)), and anything else (bound by
//! hand, by another tool, by a hutch-rs older than the mark) is left alone.
//!
//! AMQP cannot list bindings, so they are listed through the management
//! HTTP API; the removal itself is an AMQP `queue.unbind` with the exact
//! arguments of the binding, which are part of its identity.

use std::time::Duration;

use lapin::Channel;
use serde_json::Value;

use crate::{
    Error, Result,
    management::{ListedBinding, ManagementApi},
    topology::{self, BINDING_MARK, BINDING_MARK_VALUE},
};

/// A binding that [`Hutch::start`](crate::Hutch::start) removed as stale:
/// hutch-rs had made it, and the queue's consumer no longer declares its
/// routing key. See [`Running::removed_bindings`](crate::Running::removed_bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemovedBinding {
    /// The application's exchange.
    pub exchange: String,
    /// The consumer's queue, namespace included.
    pub queue: String,
    /// The routing key no consumer declares any more.
    pub routing_key: String,
}

/// One queue of the current plan and the routing keys its consumer binds.
#[derive(Debug, Clone)]
pub(crate) struct WantedBindings {
    pub(crate) queue: String,
    pub(crate) routing_keys: Vec<String>,
}

/// Whether `arguments` are exactly what hutch-rs binds with: its mark and
/// nothing else. A binding with more arguments, or another value, was made
/// by someone else (a copy of the mark included) and is not hutch-rs's to
/// remove.
fn is_hutch_rs_binding(arguments: &serde_json::Map<String, Value>) -> bool {
    arguments.len() == 1
        && arguments.get(BINDING_MARK) == Some(&Value::String(BINDING_MARK_VALUE.to_owned()))
}

/// The bindings of `listed` that are stale for `wanted`: from `exchange` to
/// `wanted.queue`, made by hutch-rs, for a routing key the consumer no
/// longer declares.
pub(crate) fn select_stale<'a>(
    exchange: &str,
    wanted: &WantedBindings,
    listed: &'a [ListedBinding],
) -> Vec<&'a ListedBinding> {
    listed
        .iter()
        .filter(|binding| {
            binding.source == exchange
                && binding.destination == wanted.queue
                && binding.destination_type == "queue"
                && is_hutch_rs_binding(&binding.arguments)
                && !wanted.routing_keys.contains(&binding.routing_key)
        })
        .collect()
}

/// Lists the bindings from `exchange` to each wanted queue (which exist:
/// their consumers have declared them) and returns the stale ones.
/// Blocking: run it on the blocking pool.
pub(crate) fn find_stale(
    api: &ManagementApi,
    timeout: Duration,
    exchange: &str,
    wanted: &[WantedBindings],
) -> Result<Vec<RemovedBinding>> {
    let client = api.client(timeout);
    let mut stale = Vec::new();
    for queue in wanted {
        let listed = client
            .bindings(exchange, &queue.queue)
            .map_err(|reason| Error::StaleBindings { reason })?;
        stale.extend(
            select_stale(exchange, queue, &listed)
                .into_iter()
                .map(|binding| RemovedBinding {
                    exchange: exchange.to_owned(),
                    queue: queue.queue.clone(),
                    routing_key: binding.routing_key.clone(),
                }),
        );
    }
    Ok(stale)
}

/// Unbinds each of `stale` with hutch-rs's binding arguments (the exact
/// ones it was made with), logging each.
pub(crate) async fn unbind(channel: &Channel, stale: &[RemovedBinding]) -> Result<()> {
    for binding in stale {
        let routing_key: lapin::types::ShortString = binding.routing_key.as_str().into();
        channel
            .queue_unbind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                routing_key,
                topology::binding_arguments(),
            )
            .await
            .map_err(|error| Error::StaleBindings {
                reason: format!(
                    "the broker refused to remove the binding of queue {:?} to exchange {:?} with routing key {:?} ({error}); unbinding, like binding, needs write permission on the queue and read permission on the exchange",
                    binding.queue, binding.exchange, binding.routing_key
                ),
            })?;
        tracing::info!(
            exchange = %binding.exchange,
            queue = %binding.queue,
            routing_key = %binding.routing_key,
            "removed a stale binding: hutch-rs made it, and the queue's consumer no longer declares its routing key"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listed(source: &str, destination: &str, key: &str, arguments: Value) -> ListedBinding {
        serde_json::from_value(json!({
            "source": source,
            "destination": destination,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": arguments,
        }))
        .unwrap()
    }

    fn mark() -> Value {
        json!({ BINDING_MARK: BINDING_MARK_VALUE })
    }

    fn wanted(queue: &str, keys: &[&str]) -> WantedBindings {
        WantedBindings {
            queue: queue.to_owned(),
            routing_keys: keys.iter().map(|&key| key.to_owned()).collect(),
        }
    }

    fn keys(stale: Vec<&ListedBinding>) -> Vec<&str> {
        stale
            .into_iter()
            .map(|binding| binding.routing_key.as_str())
            .collect()
    }

    #[test]
    fn only_marked_bindings_for_keys_no_longer_declared_are_stale() {
        let bindings = [
            listed("hutch", "shop:q", "a", mark()),
            listed("hutch", "shop:q", "b", mark()),
            listed("hutch", "shop:q", "c", mark()),
        ];
        let stale = select_stale("hutch", &wanted("shop:q", &["a", "c"]), &bindings);
        assert_eq!(keys(stale), ["b"]);
        assert!(select_stale("hutch", &wanted("shop:q", &["a", "b", "c"]), &bindings).is_empty());
    }

    #[test]
    fn bindings_made_by_anyone_else_are_never_stale() {
        let bindings = [
            // By hand, or by a hutch-rs older than the mark.
            listed("hutch", "shop:q", "b", json!({})),
            // Other arguments, or the mark with something more.
            listed("hutch", "shop:q", "b", json!({ "purpose": "audit" })),
            listed(
                "hutch",
                "shop:q",
                "b",
                json!({ BINDING_MARK: BINDING_MARK_VALUE, "purpose": "audit" }),
            ),
            // The mark's name with another value or type.
            listed("hutch", "shop:q", "b", json!({ BINDING_MARK: "2" })),
            listed("hutch", "shop:q", "b", json!({ BINDING_MARK: 1 })),
            // Another exchange, another queue.
            listed("other", "shop:q", "b", mark()),
            listed("hutch", "billing:q", "b", mark()),
        ];
        assert!(select_stale("hutch", &wanted("shop:q", &["a"]), &bindings).is_empty());
    }

    #[test]
    fn a_binding_to_an_exchange_of_the_same_name_is_not_the_queue_s() {
        let mut to_exchange = listed("hutch", "shop:q", "b", mark());
        to_exchange.destination_type = "exchange".into();
        assert!(select_stale("hutch", &wanted("shop:q", &["a"]), &[to_exchange]).is_empty());
    }

    #[test]
    fn a_consumer_with_no_keys_left_loses_every_marked_binding() {
        let bindings = [
            listed("hutch", "shop:q", "a", mark()),
            listed("hutch", "shop:q", "b", json!({})),
        ];
        assert_eq!(
            keys(select_stale("hutch", &wanted("shop:q", &[]), &bindings)),
            ["a"]
        );
    }
}
