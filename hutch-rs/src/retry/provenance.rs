//! Whether a delivery came back through one of its consumer's own delay
//! queues, the only route on which hutch-rs's retry headers mean anything.
//!
//! Any publisher can set `x-hutch-attempt` or `x-hutch-original-routing-key`
//! on a message it publishes to the exchange: read on a first delivery, they
//! would forge the routing key a handler sees or cut its retries short. A
//! retried copy is recognisable by how the broker hands it over: through the
//! default exchange, with the consumer's queue as routing key, and with an
//! `x-death` entry that the broker wrote when the copy's TTL expired in
//! `<queue>:delay:<ms>ms`.
//!
//! A publisher allowed to write to the default exchange can still place a
//! message in a delay queue itself; withholding write permission on
//! `amq.default` from publishers closes that route too (hutch-rs publishes
//! its copies from its own connection).

use lapin::types::{AMQPValue, FieldTable};

use crate::retry::queues;

/// The header the broker writes when it dead-letters a message.
const X_DEATH: &str = "x-death";

/// True when a delivery with this route and these headers is a copy
/// replayed from `queue`'s dead-letter queue: sent through the default
/// exchange to `queue` alone, marked with [`headers::REPLAYS`].
pub(crate) fn is_replay(
    exchange: &str,
    routing_key: &str,
    headers: Option<&FieldTable>,
    queue: &str,
) -> bool {
    exchange.is_empty()
        && routing_key == queue
        && headers.is_some_and(|headers| {
            crate::headers::number(headers, crate::headers::REPLAYS).is_some_and(|n| n > 0)
        })
}

/// True when a delivery with this route and these headers is a retried copy
/// that expired from one of `queue`'s delay queues.
pub(crate) fn is_own_retry(
    exchange: &str,
    routing_key: &str,
    headers: Option<&FieldTable>,
    queue: &str,
) -> bool {
    if !exchange.is_empty() || routing_key != queue {
        return false;
    }
    // The broker puts the most recent death first.
    let Some(AMQPValue::FieldArray(deaths)) = headers.and_then(|h| h.inner().get(X_DEATH)) else {
        return false;
    };
    let Some(AMQPValue::FieldTable(last)) = deaths.as_slice().first() else {
        return false;
    };
    let text = |name: &str| match last.inner().get(name) {
        Some(AMQPValue::LongString(value)) => Some(value.as_bytes()),
        Some(AMQPValue::ShortString(value)) => Some(value.as_str().as_bytes()),
        _ => None,
    };
    let from_own_delay_queue = text("queue").is_some_and(|dead_in| {
        dead_in
            .strip_prefix(queues::delay_queue_prefix(queue).as_bytes())
            .and_then(|rest| rest.strip_suffix(b"ms"))
            .is_some_and(|millis| !millis.is_empty() && millis.iter().all(u8::is_ascii_digit))
    });
    from_own_delay_queue && text("reason") == Some(b"expired".as_slice())
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn death(queue: &str, reason: &str) -> AMQPValue {
        let mut entry = FieldTable::default();
        entry.insert(
            "queue".into(),
            AMQPValue::LongString(LongString::from(queue)),
        );
        entry.insert(
            "reason".into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        AMQPValue::FieldTable(entry)
    }

    fn headers(deaths: Vec<AMQPValue>) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        headers
    }

    #[test]
    fn a_copy_expired_from_the_consumers_delay_queue_is_a_retry() {
        let headers = headers(vec![death("shop:receipts:delay:1000ms", "expired")]);
        assert!(is_own_retry(
            "",
            "shop:receipts",
            Some(&headers),
            "shop:receipts"
        ));
    }

    #[test]
    fn anything_published_to_the_exchange_is_a_first_delivery() {
        let forged = headers(vec![death("shop:receipts:delay:1000ms", "expired")]);
        assert!(!is_own_retry(
            "hutch",
            "shop:receipts",
            Some(&forged),
            "shop:receipts"
        ));
        assert!(!is_own_retry(
            "",
            "orders.placed",
            Some(&forged),
            "shop:receipts"
        ));
        assert!(!is_own_retry("", "shop:receipts", None, "shop:receipts"));
    }

    #[test]
    fn only_the_consumers_own_delay_queues_and_expiry_count() {
        for (queue, reason) in [
            ("other:delay:1000ms", "expired"),
            ("shop:receipts:dead", "expired"),
            ("shop:receipts:delay:1000ms", "rejected"),
            ("shop:receipts:delay:", "expired"),
        ] {
            let headers = headers(vec![death(queue, reason)]);
            assert!(
                !is_own_retry("", "shop:receipts", Some(&headers), "shop:receipts"),
                "{queue} {reason}"
            );
        }
        // The most recent death decides; older ones are history.
        let headers = headers(vec![
            death("shop:receipts", "rejected"),
            death("shop:receipts:delay:1000ms", "expired"),
        ]);
        assert!(!is_own_retry(
            "",
            "shop:receipts",
            Some(&headers),
            "shop:receipts"
        ));
        let not_a_table = {
            let mut headers = FieldTable::default();
            headers.insert(X_DEATH.into(), AMQPValue::LongString("expired".into()));
            headers
        };
        assert!(!is_own_retry(
            "",
            "shop:receipts",
            Some(&not_a_table),
            "shop:receipts"
        ));
    }
}
