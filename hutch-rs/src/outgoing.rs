//! A message on its way out: routing key, body, content type and the
//! per-publish options; and what the broker confirmed.

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Serialize;

use crate::{Codec, Error, Result, properties::PERSISTENT, telemetry::propagation::TraceHeaders};

pub(crate) use crate::codec::JSON;

/// AMQP short strings (property values, header names) hold at most 255
/// bytes.
const MAX_SHORT_STRING_BYTES: usize = 255;

/// Options for one publish, on top of what every hutch-rs message gets
/// (persistent, a timestamp, a fresh message id unless one is given here).
///
/// ```
/// use std::time::Duration;
/// use hutch_rs::PublishOptions;
///
/// let options = PublishOptions::new()
///     .correlation_id("req-42")
///     .reply_to("shop:replies")
///     .header("tenant", "acme")
///     .expiration(Duration::from_secs(60))
///     .priority(5)
///     .message_id("order-1001-placed")
///     .mandatory();
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PublishOptions {
    /// Names are checked (at most 255 bytes) when the message is published.
    headers: BTreeMap<String, AMQPValue>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<Duration>,
    priority: Option<u8>,
    message_id: Option<String>,
    mandatory: bool,
    codec: Codec,
}

impl PublishOptions {
    /// No options: the same as [`publish`](crate::Hutch::publish).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an AMQP header: a string, an integer, a boolean, or any
    /// [`AMQPValue`](crate::amqp::AMQPValue) (see [`HeaderValue`]). A
    /// header of the same name given earlier is replaced.
    ///
    /// A name longer than 255 bytes (AMQP's limit) fails the publish with
    /// [`Error::InvalidProperty`], as does a message id, correlation id,
    /// `reply_to` or content type that long.
    pub fn header(mut self, name: &str, value: impl HeaderValue) -> Self {
        self.headers
            .insert(name.to_owned(), value.into_amqp_value());
        self
    }

    /// Sets the correlation id (request/reply, tracing).
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets `reply_to`: where the receiver should answer.
    pub fn reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// The message expires (is dropped, or dead-lettered by a queue that
    /// says so) if not consumed within `ttl` (whole milliseconds).
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// Sets the priority (0–9 on a priority queue; ignored elsewhere).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Uses `message_id` instead of a fresh UUID: publish the same business
    /// event with the same id and consumers can recognise a duplicate.
    pub fn message_id(mut self, message_id: impl Into<String>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    /// Fails with [`Error::Unroutable`] if no queue is bound for the routing
    /// key, instead of the broker dropping the message. Mandatory publishes
    /// go out one at a time (a `basic.return` can only be matched to its
    /// publish that way), so they are slower than ordinary ones. The confirm
    /// timeout of each starts when its turn comes; waiting for the turn
    /// fails only if no mandatory publish was answered for a whole confirm
    /// timeout.
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// The body format for [`Hutch::publish_with`](crate::Hutch::publish_with):
    /// JSON by default; MessagePack or CBOR with their cargo features. The
    /// message's content type follows. (Ignored by
    /// [`Hutch::publish_bytes`](crate::Hutch::publish_bytes), whose body is
    /// given as bytes with its content type.)
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    pub(crate) fn body_codec(&self) -> Codec {
        self.codec
    }

    pub(crate) fn is_mandatory(&self) -> bool {
        self.mandatory
    }
}

/// A value an AMQP header can hold, for [`PublishOptions::header`]: text
/// becomes a long string, a `bool` a boolean, and the integer types that
/// always fit in one (`i8` to `i64`, `u8` to `u32`) a signed 64-bit integer.
///
/// `u64` and `usize` are left out on purpose: AMQP as RabbitMQ speaks it
/// has no unsigned 64-bit header type, and a value above `i64::MAX` has no
/// lossless encoding. Convert explicitly (`i64::try_from(n)?`), or pass the
/// [`AMQPValue`] you want.
pub trait HeaderValue {
    /// The value as AMQP encodes it.
    fn into_amqp_value(self) -> AMQPValue;
}

impl HeaderValue for AMQPValue {
    fn into_amqp_value(self) -> AMQPValue {
        self
    }
}

impl HeaderValue for &str {
    fn into_amqp_value(self) -> AMQPValue {
        AMQPValue::LongString(self.into())
    }
}

impl HeaderValue for String {
    fn into_amqp_value(self) -> AMQPValue {
        AMQPValue::LongString(self.into())
    }
}

impl HeaderValue for bool {
    fn into_amqp_value(self) -> AMQPValue {
        AMQPValue::Boolean(self)
    }
}

macro_rules! integer_header_values {
    ($($integer:ty),*) => {
        $(impl HeaderValue for $integer {
            fn into_amqp_value(self) -> AMQPValue {
                AMQPValue::LongLongInt(self.into())
            }
        })*
    };
}

integer_header_values!(i8, i16, i32, i64, u8, u16, u32);

/// One message to publish, for [`Hutch::publish_batch`](crate::Hutch::publish_batch).
#[derive(Debug, Clone)]
#[must_use]
pub struct Outgoing {
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    content_type: String,
    pub(crate) options: PublishOptions,
}

impl Outgoing {
    /// `value` as JSON (`application/json`), as [`Hutch::publish`](crate::Hutch::publish) sends it.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if `value` does not serialize.
    pub fn json<T: Serialize + ?Sized>(routing_key: &str, value: &T) -> Result<Self> {
        let body = encode_json(routing_key, value)?;
        Ok(Self::bytes(routing_key, body, JSON))
    }

    /// `value` in `codec`'s format, with its content type.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] or [`Error::EncodeBody`] if `value` cannot be
    /// serialized in that format.
    pub fn encoded<T: Serialize + ?Sized>(
        routing_key: &str,
        value: &T,
        codec: Codec,
    ) -> Result<Self> {
        let body = encode(routing_key, value, codec)?;
        Ok(Self::bytes(routing_key, body, codec.content_type()))
    }

    /// `body` as it is, with `content_type` (e.g. `"text/plain"`,
    /// `"application/protobuf"`).
    pub fn bytes(routing_key: &str, body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        Self {
            routing_key: routing_key.to_owned(),
            body: body.into(),
            content_type: content_type.to_owned(),
            options: PublishOptions::default(),
        }
    }

    /// Sets the per-publish options.
    pub fn with_options(mut self, options: PublishOptions) -> Self {
        self.options = options;
        self
    }

    /// The routing key.
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The message as the publisher reads it.
    pub(crate) fn draft(&self) -> Draft<'_> {
        Draft {
            routing_key: &self.routing_key,
            body: &self.body,
            content_type: &self.content_type,
            options: &self.options,
        }
    }

    /// The AMQP properties this message would be published with now, and
    /// its message id (the one given, or a fresh UUID).
    #[cfg(test)]
    fn properties(&self) -> Result<(BasicProperties, String)> {
        let draft = self.draft();
        let message_id = draft.message_id();
        let now = crate::properties::unix_seconds(std::time::SystemTime::now());
        let properties = draft.properties(&message_id, now, &TraceHeaders::default())?;
        Ok((properties, message_id))
    }
}

/// `value` as a JSON body for a message to `routing_key`.
pub(crate) fn encode_json<T: Serialize + ?Sized>(routing_key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Encode {
        routing_key: routing_key.to_owned(),
        source,
    })
}

/// `value` as a body in `codec`'s format for a message to `routing_key`.
pub(crate) fn encode<T: Serialize + ?Sized>(
    routing_key: &str,
    value: &T,
    codec: Codec,
) -> Result<Vec<u8>> {
    if codec == Codec::Json {
        // Kept apart for its error, which names serde_json's.
        return encode_json(routing_key, value);
    }
    codec.encode(value).map_err(|source| Error::EncodeBody {
        routing_key: routing_key.to_owned(),
        content_type: codec.content_type(),
        source,
    })
}

/// A message to publish, borrowed from an [`Outgoing`] or from the caller
/// of [`Hutch::publish`](crate::Hutch::publish), which serializes the body
/// and publishes it without copying the routing key or the content type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Draft<'a> {
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) content_type: &'a str,
    pub(crate) options: &'a PublishOptions,
}

impl Draft<'_> {
    /// The message id to publish with: the one given, or a fresh UUID.
    /// Chosen once per publish: a publish sent again on a new connection
    /// goes out with the same id.
    pub(crate) fn message_id(&self) -> String {
        self.options
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }

    /// Checks that every property fits in AMQP, as
    /// [`properties`](Self::properties) would, without building them: a
    /// publish fails on it at once, before it waits for a connection, and
    /// builds its properties only when it sends them.
    ///
    /// # Errors
    ///
    /// As [`properties`](Self::properties).
    pub(crate) fn validate(&self, message_id: &str) -> Result<()> {
        let options = self.options;
        let short = |property: &str, value: &str| {
            if value.len() <= MAX_SHORT_STRING_BYTES {
                Ok(())
            } else {
                short_string(self.routing_key, property, value).map(drop)
            }
        };
        short("content type", self.content_type)?;
        short("message id", message_id)?;
        for name in options.headers.keys() {
            if name.len() > MAX_SHORT_STRING_BYTES {
                short(&format!("header name {}", abbreviated(name)), name)?;
            }
        }
        if let Some(correlation_id) = &options.correlation_id {
            short("correlation id", correlation_id)?;
        }
        if let Some(reply_to) = &options.reply_to {
            short("reply_to", reply_to)?;
        }
        Ok(())
    }

    /// The AMQP properties to publish with, for `message_id` and
    /// `timestamp` (Unix seconds), with the publish's `trace` headers. Built anew for every attempt of a
    /// publish (lapin takes them by value): from the same inputs, the same
    /// properties, and cheaper than keeping a copy for an attempt that
    /// rarely comes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidProperty`] for a header name, message id,
    /// correlation id, `reply_to` or content type longer than AMQP allows.
    pub(crate) fn properties(
        &self,
        message_id: &str,
        timestamp: u64,
        trace: &TraceHeaders,
    ) -> Result<BasicProperties> {
        let options = self.options;
        let short = |property: &str, value: &str| short_string(self.routing_key, property, value);
        let mut properties = BasicProperties::default()
            .with_content_type(short("content type", self.content_type)?)
            .with_delivery_mode(PERSISTENT)
            .with_message_id(short("message id", message_id)?)
            .with_timestamp(timestamp);
        if !options.headers.is_empty() || !trace.is_empty() {
            let mut headers = FieldTable::default();
            for (name, value) in &options.headers {
                let property = format!("header name {}", abbreviated(name));
                headers.insert(short(&property, name)?, value.clone());
            }
            // After the caller's own: the publish's span is where the
            // message is in its trace now.
            trace.write_into(&mut headers);
            properties = properties.with_headers(headers);
        }
        if let Some(correlation_id) = &options.correlation_id {
            properties = properties.with_correlation_id(short("correlation id", correlation_id)?);
        }
        if let Some(reply_to) = &options.reply_to {
            properties = properties.with_reply_to(short("reply_to", reply_to)?);
        }
        if let Some(ttl) = options.expiration {
            properties = properties.with_expiration(ttl.as_millis().to_string().into());
        }
        if let Some(priority) = options.priority {
            properties = properties.with_priority(priority);
        }
        Ok(properties)
    }
}

/// `value` as an AMQP short string, or [`Error::InvalidProperty`] naming
/// `property` if it is longer than AMQP allows.
fn short_string(routing_key: &str, property: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| Error::InvalidProperty {
        routing_key: routing_key.to_owned(),
        property: property.to_owned(),
        reason: format!(
            "it is {} bytes long; AMQP allows at most {MAX_SHORT_STRING_BYTES}",
            value.len()
        ),
    })
}

/// A name, cut short enough for an error message.
fn abbreviated(name: &str) -> String {
    const SHOWN: usize = 32;
    if name.chars().count() <= SHOWN {
        format!("{name:?}")
    } else {
        format!("{:?}…", name.chars().take(SHOWN).collect::<String>())
    }
}

/// A message the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    message_id: String,
}

impl Published {
    pub(crate) fn new(message_id: String) -> Self {
        Self { message_id }
    }

    /// The message id it was published with: the one given in
    /// [`PublishOptions::message_id`], or the fresh UUID hutch-rs chose.
    #[must_use]
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_properties() {
        let outgoing = Outgoing::bytes("a.b", b"hi".to_vec(), "text/plain").with_options(
            PublishOptions::new()
                .header("tenant", "acme")
                .correlation_id("c-1")
                .reply_to("replies")
                .expiration(Duration::from_millis(1_500))
                .priority(7)
                .message_id("m-1"),
        );
        let (properties, message_id) = outgoing.properties().unwrap();
        assert_eq!(message_id, "m-1");
        assert_eq!(properties.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        assert_eq!(
            properties.correlation_id().as_ref().unwrap().as_str(),
            "c-1"
        );
        assert_eq!(properties.reply_to().as_ref().unwrap().as_str(), "replies");
        assert_eq!(properties.expiration().as_ref().unwrap().as_str(), "1500");
        assert_eq!(properties.priority(), &Some(7));
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        assert!(properties.timestamp().is_some());
        assert!(
            properties
                .headers()
                .as_ref()
                .unwrap()
                .contains_key("tenant")
        );
    }

    #[test]
    fn without_options_a_message_gets_a_fresh_id_and_nothing_else() {
        let outgoing = Outgoing::json("a.b", &serde_json::json!({ "n": 1 })).unwrap();
        let (first, first_id) = outgoing.properties().unwrap();
        let (_, second_id) = outgoing.properties().unwrap();
        assert_ne!(first_id, second_id, "each publish call gets its own id");
        assert_eq!(first.content_type().as_ref().unwrap().as_str(), JSON);
        assert!(first.headers().is_none());
        assert!(first.expiration().is_none());
        assert!(!outgoing.options.is_mandatory());
    }

    #[test]
    fn strings_longer_than_amqp_allows_are_errors_not_panics() {
        let long = "x".repeat(256);
        let limit = "x".repeat(255);
        let cases = [
            ("header name", PublishOptions::new().header(&long, 1)),
            ("message id", PublishOptions::new().message_id(&long)),
            (
                "correlation id",
                PublishOptions::new().correlation_id(&long),
            ),
            ("reply_to", PublishOptions::new().reply_to(&long)),
        ];
        for (property, options) in cases {
            let outgoing = Outgoing::json("a.b", &1).unwrap().with_options(options);
            let draft = outgoing.draft();
            let validated = draft.validate(&draft.message_id()).unwrap_err();
            let error = outgoing.properties().unwrap_err();
            assert_eq!(validated.to_string(), error.to_string());
            assert!(
                matches!(&error, Error::InvalidProperty { property: named, routing_key, .. } if named.starts_with(property) && routing_key == "a.b"),
                "{error:?}"
            );
            assert!(error.to_string().contains("256 bytes"), "{error}");
        }
        let long_content_type = Outgoing::bytes("a.b", b"x".to_vec(), &long);
        let draft = long_content_type.draft();
        assert!(draft.validate(&draft.message_id()).is_err());
        let error = long_content_type.properties().unwrap_err();
        assert!(
            matches!(&error, Error::InvalidProperty { property, .. } if property == "content type"),
            "{error:?}"
        );
        let at_the_limit = Outgoing::bytes("a.b", b"x".to_vec(), &limit).with_options(
            PublishOptions::new()
                .header(&limit, 1)
                .message_id(&limit)
                .correlation_id(&limit)
                .reply_to(&limit),
        );
        assert!(at_the_limit.properties().is_ok());
        let draft = at_the_limit.draft();
        assert!(draft.validate(&draft.message_id()).is_ok());
    }
}
