//! `Message<T>`: a decoded delivery as a handler sees it.

use std::{
    ops::Deref,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::de::DeserializeOwned;

use crate::{codec::Codec, headers, retry::provenance};

/// A message delivered to a `#[consumer]` function: the decoded body plus the
/// AMQP metadata it came with.
///
/// `Message<T>` dereferences to `T`, so `msg.order_id` reads the body.
///
/// Tests can build one with [`Message::new`] and call a consumer function
/// directly:
///
/// ```
/// use hutch_rs::Message;
///
/// let msg = Message::new(42_u64).with_routing_key("orders.placed");
/// assert_eq!(*msg, 42);
/// assert_eq!(msg.routing_key(), "orders.placed");
/// assert!(!msg.redelivered());
/// ```
#[derive(Debug, Clone)]
pub struct Message<T> {
    body: T,
    envelope: Arc<Envelope>,
}

impl<T> Message<T> {
    /// A message with `body`, an empty routing key and no properties: for
    /// calling consumer functions in tests.
    #[must_use]
    pub fn new(body: T) -> Self {
        Self {
            body,
            envelope: Arc::new(Envelope {
                exchange: String::new(),
                routing_key: String::new(),
                redelivered: false,
                attempt: 1,
                properties: BasicProperties::default(),
            }),
        }
    }

    /// What the delivery carried besides its body.
    pub(crate) fn envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    fn envelope_mut(&mut self) -> &mut Envelope {
        Arc::make_mut(&mut self.envelope)
    }

    /// Sets the routing key (for tests).
    #[must_use]
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.envelope_mut().routing_key = routing_key.into();
        self
    }

    /// Sets the exchange (for tests).
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.envelope_mut().exchange = exchange.into();
        self
    }

    /// Sets the message id (for tests).
    #[must_use]
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Self {
        let envelope = self.envelope_mut();
        envelope.properties = std::mem::take(&mut envelope.properties)
            .with_message_id(ShortString::from(message_id.into()));
        self
    }

    /// Marks the message as redelivered (for tests).
    #[must_use]
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.envelope_mut().redelivered = redelivered;
        self
    }

    /// Sets the attempt number (for tests of retry logic; 1 is the first
    /// delivery).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.envelope_mut().attempt = attempt.max(1);
        self
    }

    /// Adds an AMQP header (for tests).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<AMQPValue>) -> Self {
        let envelope = self.envelope_mut();
        let mut headers = envelope.properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(name), value.into());
        envelope.properties = std::mem::take(&mut envelope.properties).with_headers(headers);
        self
    }

    /// The decoded body.
    #[must_use]
    pub fn body(&self) -> &T {
        &self.body
    }

    /// Takes the decoded body out of the message.
    #[must_use]
    pub fn into_body(self) -> T {
        self.body
    }

    /// The routing key the message was published with (also on a retry,
    /// which reaches the queue by another route).
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.envelope.routing_key
    }

    /// The exchange the message was published to (also on a retry).
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.envelope.exchange
    }

    /// Which attempt at handling this message this is: 1 on the first
    /// delivery, 2 on the first retry, and so on up to the consumer's
    /// `max_attempts`. The count travels with the message (header
    /// [`ATTEMPT`](crate::headers::ATTEMPT)).
    ///
    /// A redelivery by the broker (the connection was lost, the process
    /// died before the ack) counts too where the broker says how many
    /// there were: a quorum queue writes
    /// [`DELIVERY_COUNT`](crate::headers::DELIVERY_COUNT) on a redelivery,
    /// and hutch-rs adds it (at most the queue's delivery limit; never
    /// read from a first delivery, where a publisher could have written
    /// it). A classic queue does not count: there a redelivery is the same
    /// attempt again, flagged by [`redelivered`](Self::redelivered).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The publisher's message id (hutch-rs publishers always set one).
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.envelope.message_id()
    }

    /// The correlation id, if the publisher set one.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        self.envelope
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// Whether the broker delivered this message before (to this or another
    /// consumer) without it being acknowledged.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.envelope.redelivered
    }

    /// When the publisher sent the message (AMQP timestamps have one-second
    /// resolution).
    #[must_use]
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.envelope
            .properties
            .timestamp()
            // Any u64 can arrive; past what SystemTime holds there is no time.
            .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
    }

    /// The AMQP headers table, if the message has one.
    #[must_use]
    pub fn headers(&self) -> Option<&FieldTable> {
        self.envelope.properties.headers().as_ref()
    }

    /// One AMQP header by name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers()?.inner().get(name)
    }

    /// All AMQP properties of the message (content type, priority, reply-to…).
    #[must_use]
    pub fn properties(&self) -> &BasicProperties {
        &self.envelope.properties
    }
}

impl<T> Deref for Message<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.body
    }
}

impl<T: Body> Message<T> {
    pub(crate) fn decode(incoming: &Incoming) -> Result<Self, DecodeError> {
        check_headers(&incoming.envelope.properties)?;
        let body = T::decode(incoming)?;
        Ok(Self {
            body,
            envelope: incoming.envelope.clone(),
        })
    }
}

/// A type a `Message<T>` can carry: any type serde can deserialize, decoded
/// by the message's content type (see [`Codec`]), or [`RawBody`], the bytes
/// as they arrived.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the body of a `Message`",
    label = "not a message body",
    note = "derive `serde::Deserialize` for it (`#[derive(serde::Deserialize)]`), or take `Message<hutch_rs::RawBody>` for the bytes as they arrived"
)]
pub trait Body: Sized + Send + 'static {
    /// Decodes the delivery's body.
    ///
    /// # Errors
    ///
    /// Why it cannot be this type: a content type or encoding that is not
    /// understood, or a body that does not parse.
    #[doc(hidden)]
    fn decode(incoming: &Incoming) -> Result<Self, DecodeError>;
}

impl<T: DeserializeOwned + Send + 'static> Body for T {
    fn decode(incoming: &Incoming) -> Result<Self, DecodeError> {
        let properties = &incoming.envelope.properties;
        check_content_encoding(properties)?;
        let content_type = properties.content_type().as_ref().map(ShortString::as_str);
        Codec::for_content_type(content_type)?.decode(&incoming.body)
    }
}

/// A body taken as it arrived, whatever its content type and encoding: for
/// messages published with
/// [`publish_bytes`](crate::Hutch::publish_bytes), by a protobuf producer,
/// or in any format hutch-rs does not decode. The content type is in
/// [`Message::properties`].
///
/// ```
/// use hutch_rs::{BoxError, Message, RawBody, consumer};
///
/// #[consumer(routing_key = "images.uploaded")]
/// async fn store(msg: Message<RawBody>) -> Result<(), BoxError> {
///     let kind = msg.properties().content_type().as_ref().map(|kind| kind.as_str());
///     println!("{} bytes of {kind:?}", msg.len());
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBody(pub Vec<u8>);

impl Body for RawBody {
    fn decode(incoming: &Incoming) -> Result<Self, DecodeError> {
        Ok(RawBody(incoming.body.clone()))
    }
}

impl std::ops::Deref for RawBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for RawBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A message whose headers hutch-rs replaced on arrival (nested too deeply
/// to parse safely) is poison: what the handler would read is gone.
fn check_headers(properties: &BasicProperties) -> Result<(), DecodeError> {
    let Some(headers) = properties.headers() else {
        return Ok(());
    };
    if !headers.inner().contains_key(headers::REJECTED_HEADERS) {
        return Ok(());
    }
    let note = headers::text(headers, headers::REJECTED_HEADERS)
        .unwrap_or_else(|| "set by the publisher".to_owned());
    Err(DecodeError::RejectedHeaders(note))
}

/// A compressed or otherwise encoded body is refused rather than guessed
/// at.
fn check_content_encoding(properties: &BasicProperties) -> Result<(), DecodeError> {
    if let Some(encoding) = properties.content_encoding() {
        let encoding = encoding.as_str();
        if !(encoding.is_empty()
            || encoding.eq_ignore_ascii_case("identity")
            || encoding.eq_ignore_ascii_case("utf-8"))
        {
            return Err(DecodeError::UnsupportedContentEncoding(encoding.to_owned()));
        }
    }
    Ok(())
}

/// Why a delivery's body could not become the handler's message type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The content type names no format hutch-rs decodes.
    #[error(
        "unsupported content type {0:?} (hutch-rs decodes application/json, and with its features application/msgpack and application/cbor; take Message<RawBody> for any other)"
    )]
    UnsupportedContentType(String),
    /// The content type names a format hutch-rs decodes with a cargo
    /// feature that is off.
    #[error("content type {content_type:?} needs hutch-rs's `{feature}` feature")]
    FeatureDisabled {
        /// The message's content type.
        content_type: String,
        /// The feature that decodes it.
        feature: &'static str,
    },
    /// The body is compressed or otherwise encoded.
    #[error("unsupported content encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// The message's headers were removed on arrival (see
    /// [`REJECTED_HEADERS`](crate::headers::REJECTED_HEADERS)); the text says
    /// why.
    #[error("rejected headers: {0}")]
    RejectedHeaders(String),
    /// The body is not valid in its format (MessagePack, CBOR) for the
    /// handler's type.
    #[error("body is not valid {content_type} for {type_name}: {source}")]
    Body {
        /// The format's content type.
        content_type: &'static str,
        /// The Rust type the handler expects.
        type_name: &'static str,
        /// What the format's decoder reported.
        source: crate::BoxError,
    },
    /// The body is not valid JSON for the handler's type.
    #[error("body is not valid JSON for {type_name}: {source}")]
    Json {
        /// The Rust type the handler expects.
        type_name: &'static str,
        /// What serde_json reported.
        source: serde_json::Error,
    },
}

/// What a delivery carries besides its body, shared between the consumer
/// and the decoded [`Message`] (one allocation per delivery, not one per
/// field).
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    /// The exchange the message was first published to.
    pub(crate) exchange: String,
    /// The routing key the message was first published with.
    pub(crate) routing_key: String,
    pub(crate) redelivered: bool,
    /// 1 on the first delivery; retries carry theirs in a header.
    pub(crate) attempt: u32,
    pub(crate) properties: BasicProperties,
}

impl Envelope {
    /// The publisher's message id, if any.
    pub(crate) fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The envelope of a delivery to the consumer of `queue`, as the broker
    /// handed it over. A retried copy arrives from a delay queue through the
    /// default exchange; its headers say where it was first published and
    /// which attempt it is. A replayed dead letter arrives the same way,
    /// and its headers say where it was first published. On any other
    /// delivery those headers are a
    /// publisher's say-so and are ignored: it is a first attempt, on the
    /// route it came by.
    pub(crate) fn of_delivery(
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        properties: BasicProperties,
        queue: &str,
    ) -> Self {
        let headers = properties.headers().as_ref();
        let retry = headers.filter(|headers| {
            provenance::is_own_retry(exchange, routing_key, Some(headers), queue)
        });
        // A replayed dead letter starts again at attempt 1 on its original
        // route; a publisher claiming one gets no more than a routing key
        // of its choosing, which publishing to the exchange gives it too.
        let replay = headers.filter(|headers| {
            retry.is_none() && provenance::is_replay(exchange, routing_key, Some(headers), queue)
        });
        // An exchange name and a routing key are AMQP short strings: a
        // longer one was not written by hutch-rs, and carried onto the next
        // copy it could fill the frame on its own.
        let text = |name: &str| {
            retry
                .or(replay)
                .and_then(|headers| headers::text(headers, name))
                .filter(|text| text.len() <= SHORT_STRING_MAX)
        };
        let attempt = retry
            .and_then(|headers| headers::number(headers, headers::ATTEMPT))
            .and_then(|attempt| u32::try_from(attempt).ok())
            .unwrap_or(1)
            .max(1);
        Self {
            exchange: text(headers::ORIGINAL_EXCHANGE).unwrap_or_else(|| exchange.to_owned()),
            routing_key: text(headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_owned()),
            redelivered,
            attempt,
            properties,
        }
    }

    /// Counts the deliveries of this copy that the broker says ended
    /// without an ack (its consumer's process died, its connection was
    /// lost) as attempts too. Only a quorum queue says so, in
    /// `x-delivery-count`, and only on a redelivery is that header the
    /// broker's rather than a publisher's: a first delivery keeps whatever
    /// its publisher wrote, so it is read only when `redelivered` is set,
    /// and never above `delivery_limit`, past which the broker would have
    /// dead-lettered the message.
    pub(crate) fn with_broker_redeliveries(mut self, delivery_limit: Option<u32>) -> Self {
        let Some(limit) = delivery_limit else {
            return self;
        };
        if !self.redelivered {
            return self;
        }
        let redeliveries = self
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers::number(headers, headers::DELIVERY_COUNT))
            .and_then(|count| u32::try_from(count).ok())
            .unwrap_or(0)
            .min(limit);
        self.attempt = self.attempt.saturating_add(redeliveries);
        self
    }
}

/// The longest AMQP short string, in bytes.
const SHORT_STRING_MAX: usize = 255;

/// A delivery before decoding: what the consumer hands to a registered
/// handler.
#[doc(hidden)]
#[derive(Debug)]
pub struct Incoming {
    pub(crate) body: Vec<u8>,
    pub(crate) envelope: Arc<Envelope>,
    /// The delivery's `process` span (see `telemetry::spans`); it ends when
    /// the last holder of the delivery lets go, once it is settled.
    pub(crate) span: tracing::Span,
}

impl Incoming {
    /// A delivery carrying `body` with the given properties; lets tests drive
    /// a registered handler without a broker.
    #[doc(hidden)]
    #[must_use]
    pub fn new(body: Vec<u8>, routing_key: &str, properties: BasicProperties) -> Self {
        Self {
            body,
            envelope: Arc::new(Envelope::of_delivery(
                "",
                routing_key,
                false,
                properties,
                "",
            )),
            span: tracing::Span::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Order {
        id: u64,
    }

    fn incoming(body: &str, properties: BasicProperties) -> Incoming {
        Incoming::new(body.as_bytes().to_vec(), "orders.placed", properties)
    }

    #[test]
    fn decodes_json_with_or_without_content_type() {
        let typed = BasicProperties::default().with_content_type("application/json".into());
        let message = Message::<Order>::decode(&incoming(r#"{"id":7}"#, typed)).unwrap();
        assert_eq!(message.body(), &Order { id: 7 });
        assert_eq!(message.routing_key(), "orders.placed");

        let untyped =
            Message::<Order>::decode(&incoming(r#"{"id":8}"#, BasicProperties::default()));
        assert_eq!(untyped.unwrap().into_body(), Order { id: 8 });

        let with_charset =
            BasicProperties::default().with_content_type("application/json; charset=utf-8".into());
        assert!(Message::<Order>::decode(&incoming(r#"{"id":9}"#, with_charset)).is_ok());
    }

    #[test]
    fn refuses_other_content_types_and_encodings() {
        let xml = BasicProperties::default().with_content_type("application/xml".into());
        let error = Message::<Order>::decode(&incoming(r#"{"id":7}"#, xml)).unwrap_err();
        assert!(
            matches!(error, DecodeError::UnsupportedContentType(ref t) if t == "application/xml")
        );

        let gzip = BasicProperties::default().with_content_encoding("gzip".into());
        let error = Message::<Order>::decode(&incoming(r#"{"id":7}"#, gzip)).unwrap_err();
        assert!(matches!(error, DecodeError::UnsupportedContentEncoding(_)));
    }

    #[test]
    fn invalid_json_names_the_expected_type() {
        let error = Message::<Order>::decode(&incoming("not json", BasicProperties::default()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("Order"), "{error}");
    }

    #[test]
    fn a_json_body_may_start_with_a_byte_order_mark() {
        let body = b"\xEF\xBB\xBF{\"id\":7}".to_vec();
        let message = Message::<Order>::decode(&Incoming::new(body, "k", Default::default()));
        assert_eq!(message.unwrap().into_body(), Order { id: 7 });
        // Only one, and only at the start.
        let twice = b"\xEF\xBB\xBF\xEF\xBB\xBF{\"id\":7}".to_vec();
        assert!(Message::<Order>::decode(&Incoming::new(twice, "k", Default::default())).is_err());
    }

    #[test]
    fn a_timestamp_past_what_system_time_holds_is_none() {
        for seconds in [u64::MAX, i64::MAX as u64 + 1] {
            let properties = BasicProperties::default().with_timestamp(seconds);
            let message = Message::<Order>::decode(&incoming(r#"{"id":1}"#, properties)).unwrap();
            assert_eq!(message.timestamp(), None, "{seconds}");
        }
        let properties = BasicProperties::default().with_timestamp(1_700_000_000);
        let message = Message::<Order>::decode(&incoming(r#"{"id":1}"#, properties)).unwrap();
        assert_eq!(
            message.timestamp(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn retry_headers_on_a_first_delivery_are_ignored() {
        let mut forged = FieldTable::default();
        forged.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongLongInt(4_294_967_295),
        );
        forged.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString("admin.grant".into()),
        );
        forged.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString("elsewhere".into()),
        );
        let properties = BasicProperties::default().with_headers(forged);
        let envelope =
            Envelope::of_delivery("hutch", "orders.placed", false, properties, "shop:receipts");
        assert_eq!(envelope.attempt, 1);
        assert_eq!(envelope.routing_key, "orders.placed");
        assert_eq!(envelope.exchange, "hutch");
    }

    #[test]
    fn rejected_headers_make_the_message_poison() {
        let note = "headers nested deeper than 64 levels (9000 bytes) were removed by hutch-rs";
        let mut headers = FieldTable::default();
        headers.insert(
            headers::REJECTED_HEADERS.into(),
            AMQPValue::LongString(note.into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        let error = Message::<Order>::decode(&incoming(r#"{"id":7}"#, properties)).unwrap_err();
        assert!(matches!(error, DecodeError::RejectedHeaders(ref text) if text == note));
        assert_eq!(error.to_string(), format!("rejected headers: {note}"));

        // Whatever its value: a publisher setting it only poisons its own
        // message.
        let mut headers = FieldTable::default();
        headers.insert(headers::REJECTED_HEADERS.into(), AMQPValue::Boolean(true));
        let properties = BasicProperties::default().with_headers(headers);
        let error = Message::<Order>::decode(&incoming(r#"{"id":7}"#, properties)).unwrap_err();
        assert!(matches!(error, DecodeError::RejectedHeaders(_)));

        let mut headers = FieldTable::default();
        headers.insert("x-other".into(), AMQPValue::Boolean(true));
        let properties = BasicProperties::default().with_headers(headers);
        assert!(Message::<Order>::decode(&incoming(r#"{"id":7}"#, properties)).is_ok());
    }

    #[test]
    fn a_retrys_route_longer_than_a_short_string_is_ignored() {
        // Found by decode_fuzz_tests: carried onto the next copy, the
        // route alone overfilled the frame and the consumer stopped.
        let mut expired = FieldTable::default();
        expired.insert(
            "queue".into(),
            AMQPValue::LongString("shop:receipts:delay:50ms".into()),
        );
        expired.insert("reason".into(), AMQPValue::LongString("expired".into()));
        let mut retry = FieldTable::default();
        retry.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(expired)].into()),
        );
        retry.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(2));
        retry.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString("k".repeat(256).as_str().into()),
        );
        retry.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString("e".repeat(255).as_str().into()),
        );
        let properties = BasicProperties::default().with_headers(retry);
        let envelope =
            Envelope::of_delivery("", "shop:receipts", false, properties, "shop:receipts");
        assert_eq!(envelope.attempt, 2);
        assert_eq!(envelope.routing_key, "shop:receipts");
        assert_eq!(envelope.exchange, "e".repeat(255));
    }

    #[test]
    fn test_builders_set_metadata() {
        let message = Message::new("x")
            .with_message_id("m-1")
            .with_header("tenant", AMQPValue::LongString("acme".into()))
            .with_redelivered(true);
        assert_eq!(message.message_id(), Some("m-1"));
        assert!(message.redelivered());
        assert!(message.header("tenant").is_some());
        assert!(message.header("other").is_none());
    }
}
