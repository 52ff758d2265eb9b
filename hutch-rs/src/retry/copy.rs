//! The copy a failed message becomes: a retry for a delay queue, or a dead
//! letter. The original's body and properties, with headers that carry what
//! the new route would lose and say why.

use std::{collections::BTreeMap, time::SystemTime};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    frame_size, headers,
    message::Envelope,
    properties::{PERSISTENT, unix_seconds},
};

/// What the names of hutch-rs's own headers start with.
const OUR_PREFIX: &str = "x-hutch-";

/// Error texts in headers are cut here: the whole content header must fit
/// in one frame.
const MAX_ERROR_BYTES: usize = 2_000;

/// Headers the broker writes when it dead-letters a message (here: when a
/// retry leaves its delay queue), and the count of deliveries a quorum queue
/// writes. A copy starts without them: recent RabbitMQ versions take a
/// client's `x-death` as their own and would count every delay queue a
/// message passed through into its dead letter, and the copy is a new
/// message whose deliveries start from none.
const BROKER_DEATH_HEADERS: [&str; 6] = [
    crate::headers::DELIVERY_COUNT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-reason",
];

/// The properties of a retry: the original's, with the attempt it will be,
/// where it was first published, and the error.
pub(crate) fn retry_properties(
    envelope: &Envelope,
    next_attempt: u32,
    error: &str,
) -> BasicProperties {
    let mut headers = carried_headers(envelope, error);
    headers.insert(
        headers::ATTEMPT.into(),
        AMQPValue::LongLongInt(next_attempt.into()),
    );
    copy_properties(&envelope.properties, headers.into())
}

/// What a dead letter says about itself.
pub(crate) struct DeadLetter<'a> {
    pub(crate) consumer: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) reason: &'static str,
    pub(crate) error: &'a str,
    pub(crate) failed_at: SystemTime,
}

/// The properties of a dead letter: the original's, with why it is there.
pub(crate) fn dead_letter_properties(
    envelope: &Envelope,
    dead: &DeadLetter<'_>,
) -> BasicProperties {
    let mut headers = carried_headers(envelope, dead.error);
    // A dead letter is not going to be retried.
    headers.remove(headers::ATTEMPT);
    headers.insert(
        headers::ATTEMPTS.into(),
        AMQPValue::LongLongInt(envelope.attempt.into()),
    );
    headers.insert(headers::CONSUMER.into(), long_string(dead.consumer));
    headers.insert(headers::QUEUE.into(), long_string(dead.queue));
    headers.insert(headers::REASON.into(), long_string(dead.reason));
    headers.insert(
        headers::FAILED_AT.into(),
        AMQPValue::Timestamp(unix_seconds(dead.failed_at)),
    );
    copy_properties(&envelope.properties, headers.into())
}

/// The original headers plus the original route and the error.
///
/// The original's own `x-hutch-*` headers are not carried: each one hutch-rs
/// means is written again on the copy, and any other is a publisher's, which
/// [`fit_in_frame`] would keep as hutch-rs's (a large one would make every
/// copy too large for a frame, and the consumer stop). Only the notes of
/// what was removed from the original go on ([`CARRIED_NOTES`]).
fn carried_headers(envelope: &Envelope, error: &str) -> BTreeMap<ShortString, AMQPValue> {
    let mut headers: BTreeMap<ShortString, AMQPValue> = envelope
        .properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    headers.retain(|name, _| !is_ours(name.as_str()) || is_carried_note(name.as_str()));
    for broker_header in BROKER_DEATH_HEADERS {
        headers.remove(broker_header);
    }
    headers.insert(
        headers::ORIGINAL_EXCHANGE.into(),
        long_string(&envelope.exchange),
    );
    headers.insert(
        headers::ORIGINAL_ROUTING_KEY.into(),
        long_string(&envelope.routing_key),
    );
    headers.insert(headers::ERROR.into(), long_string(truncated(error)));
    headers
}

/// Every property of the original but two: `expiration`, which would let
/// the copy vanish from the delay queue (or the dead-letter queue) early, and
/// `user_id`, which the broker checks against the publishing connection's
/// user. Persistent whatever the original was: the copy replaces it.
fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut copy = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    macro_rules! carry {
        ($($getter:ident => $setter:ident),* $(,)?) => {
            $(if let Some(value) = original.$getter() {
                copy = copy.$setter(value.clone());
            })*
        };
    }
    carry!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

/// The copy's properties, made to fit in `capacity` bytes (what one frame
/// holds on the publishing connection): the original's own headers are
/// dropped first, with a header that says so, then the error text is cut.
/// A copy must reach its queue: one that does not fit would be refused with
/// the connection, again and again.
pub(crate) fn fit_in_frame(properties: BasicProperties, capacity: usize) -> BasicProperties {
    let size = frame_size::properties_size(&properties);
    if size <= capacity {
        return properties;
    }
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    // A note carried from an earlier copy is the original's too (and any
    // publisher can write one): dropped like the rest if need be, and
    // written again if anything is dropped now.
    let (ours, theirs): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut headers)
        .into_iter()
        .partition(|(name, _)| is_ours(name.as_str()) && !is_carried_note(name.as_str()));
    headers = ours;
    if !theirs.is_empty() {
        let dropped_bytes = frame_size::properties_size(
            &BasicProperties::default().with_headers(theirs.clone().into()),
        );
        headers.insert(
            headers::HEADERS_DROPPED.into(),
            long_string(&format!(
                "{} header(s) of the original, {dropped_bytes} bytes encoded, did not fit in one frame beside these",
                theirs.len()
            )),
        );
    }
    let mut fitted = properties.clone().with_headers(headers.clone().into());
    let over = frame_size::properties_size(&fitted).saturating_sub(capacity);
    if over > 0
        && let Some(AMQPValue::LongString(error)) = headers.get(headers::ERROR)
    {
        let error = String::from_utf8_lossy(error.as_bytes()).into_owned();
        let keep = error.len().saturating_sub(over);
        headers.insert(headers::ERROR.into(), long_string(cut(&error, keep)));
        fitted = properties.with_headers(headers.into());
    }
    fitted
}

/// hutch-rs's notes of what was removed from the original, carried from
/// copy to copy as the original's own headers are.
const CARRIED_NOTES: [&str; 2] = [headers::HEADERS_DROPPED, headers::REJECTED_HEADERS];

fn is_carried_note(name: &str) -> bool {
    CARRIED_NOTES.contains(&name)
}

fn is_ours(name: &str) -> bool {
    name.starts_with(OUR_PREFIX)
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn truncated(text: &str) -> &str {
    cut(text, MAX_ERROR_BYTES)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn envelope(properties: BasicProperties, attempt: u32) -> Envelope {
        Envelope {
            exchange: "hutch".into(),
            routing_key: "orders.placed".into(),
            redelivered: false,
            attempt,
            properties,
        }
    }

    #[test]
    fn a_retry_keeps_the_original_and_says_which_attempt_it_is() {
        let mut original_headers = FieldTable::default();
        original_headers.insert("tenant".into(), long_string("acme"));
        original_headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        original_headers.insert("x-first-death-queue".into(), long_string("q:delay:1000ms"));
        let original = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_content_type("application/json".into())
            .with_expiration("60000".into())
            .with_user_id("guest".into())
            .with_headers(original_headers);
        let copy = retry_properties(&envelope(original, 1), 2, "boom");
        assert_eq!(copy.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(copy.correlation_id().as_ref().unwrap().as_str(), "c-1");
        assert_eq!(copy.delivery_mode(), &Some(PERSISTENT));
        assert!(copy.expiration().is_none());
        assert!(copy.user_id().is_none());
        let headers = copy.headers().as_ref().unwrap();
        assert_eq!(headers::number(headers, headers::ATTEMPT), Some(2));
        assert_eq!(headers::text(headers, "tenant").as_deref(), Some("acme"));
        assert!(
            !headers.contains_key("x-death"),
            "the broker's own bookkeeping is not copied"
        );
        assert!(!headers.contains_key("x-first-death-queue"));
        assert_eq!(
            headers::text(headers, headers::ORIGINAL_ROUTING_KEY).as_deref(),
            Some("orders.placed")
        );
        // The copy, delivered from the delay queue, reads as the original.
        let mut expired = FieldTable::default();
        expired.insert("queue".into(), long_string("shop:receipts:delay:1000ms"));
        expired.insert("reason".into(), long_string("expired"));
        let mut delivered_headers = headers.clone();
        delivered_headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(expired)].into()),
        );
        let copy = copy.with_headers(delivered_headers);
        let delivered = Envelope::of_delivery("", "shop:receipts", false, copy, "shop:receipts");
        assert_eq!(delivered.attempt, 2);
        assert_eq!(delivered.routing_key, "orders.placed");
        assert_eq!(delivered.exchange, "hutch");
    }

    #[test]
    fn a_dead_letter_says_why() {
        let dead = DeadLetter {
            consumer: "shop::send_receipt",
            queue: "shop:send_receipt",
            reason: headers::REASON_ATTEMPTS_EXHAUSTED,
            error: &"x".repeat(5_000),
            failed_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let copy = dead_letter_properties(&envelope(BasicProperties::default(), 3), &dead);
        let headers = copy.headers().as_ref().unwrap();
        assert_eq!(headers::number(headers, headers::ATTEMPTS), Some(3));
        assert!(headers.inner().get(headers::ATTEMPT).is_none());
        assert_eq!(
            headers::text(headers, headers::REASON).as_deref(),
            Some("attempts-exhausted")
        );
        assert_eq!(
            headers::text(headers, headers::ERROR).map(|error| error.len()),
            Some(MAX_ERROR_BYTES)
        );
        assert_eq!(
            headers.inner().get(headers::FAILED_AT),
            Some(&AMQPValue::Timestamp(1_700_000_000))
        );
    }

    #[test]
    fn a_publishers_x_hutch_headers_are_not_carried_and_cannot_overfill_a_copy() {
        // Found by decode_fuzz_tests: kept as hutch-rs's own by
        // fit_in_frame, these made every copy too large for a frame, and
        // the consumer stopped with HeadersTooLarge.
        let mut forged = FieldTable::default();
        for name in [
            "x-hutch-padding",
            headers::CONSUMER,
            headers::HEADERS_DROPPED,
        ] {
            forged.insert(name.into(), long_string(&"é".repeat(3_000)));
        }
        forged.insert("tenant".into(), long_string("acme"));
        let original = envelope(BasicProperties::default().with_headers(forged), 1);
        let capacity = 4_096 - 20;

        let retry = retry_properties(&original, 2, "boom");
        let headers = retry.headers().as_ref().unwrap();
        assert!(!headers.contains_key("x-hutch-padding"));
        assert!(!headers.contains_key(headers::CONSUMER));
        assert!(headers.contains_key("tenant"));
        let fitted = fit_in_frame(retry, capacity);
        assert!(frame_size::properties_size(&fitted) <= capacity);
        let note = headers::text(fitted.headers().as_ref().unwrap(), headers::HEADERS_DROPPED);
        assert!(note.unwrap().starts_with("2 header(s)"));

        let dead = DeadLetter {
            consumer: "shop::send_receipt",
            queue: "shop:send_receipt",
            reason: headers::REASON_POISON,
            error: "bad",
            failed_at: SystemTime::UNIX_EPOCH,
        };
        let fitted = fit_in_frame(dead_letter_properties(&original, &dead), capacity);
        assert!(frame_size::properties_size(&fitted) <= capacity);
        assert_eq!(
            headers::text(fitted.headers().as_ref().unwrap(), headers::CONSUMER).as_deref(),
            Some("shop::send_receipt")
        );
    }
}
