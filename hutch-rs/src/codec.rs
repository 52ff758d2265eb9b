//! Body formats: how a typed value becomes a message body and back,
//! chosen on publish by [`PublishOptions::codec`](crate::PublishOptions::codec)
//! and on consume by the message's content type.

use serde::{Serialize, de::DeserializeOwned};

use crate::{BoxError, message::DecodeError};

/// A body format. JSON is the default and always available; MessagePack
/// and CBOR come with the cargo features `msgpack` and `cbor`.
///
/// A consumer decodes by the message's content type, whichever codec
/// published it: an application can move its publishers to a more compact
/// format while its consumers keep the same `Message<T>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// `application/json`, with serde_json.
    #[default]
    Json,
    /// `application/msgpack`, with rmp-serde (struct fields by name, so
    /// that a consumer's type may add optional fields).
    #[cfg(feature = "msgpack")]
    MessagePack,
    /// `application/cbor`, with ciborium.
    #[cfg(feature = "cbor")]
    Cbor,
}

/// The content type of JSON bodies.
pub(crate) const JSON: &str = "application/json";

impl Codec {
    /// The content type a message in this format is published with.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => JSON,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => "application/msgpack",
            #[cfg(feature = "cbor")]
            Codec::Cbor => "application/cbor",
        }
    }

    /// The codec of a message with `content_type`, or why there is none.
    ///
    /// Parameters are ignored (`application/json; charset=utf-8` is JSON),
    /// names are compared without regard to case, `+json` suffixes are
    /// JSON, and a message without a content type is taken as JSON (other
    /// publishers often leave it out). A format whose feature is not
    /// enabled is named in the error, with the feature.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnsupportedContentType`] for any other content type;
    /// [`DecodeError::FeatureDisabled`] for a format hutch-rs can decode
    /// with a feature that is off.
    pub fn for_content_type(content_type: Option<&str>) -> Result<Codec, DecodeError> {
        let Some(content_type) = content_type else {
            return Ok(Codec::Json);
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | JSON => Ok(Codec::Json),
            json if json.ends_with("+json") => Ok(Codec::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                #[cfg(feature = "msgpack")]
                return Ok(Codec::MessagePack);
                #[cfg(not(feature = "msgpack"))]
                return Err(unsupported(content_type, Some("msgpack")));
            }
            "application/cbor" => {
                #[cfg(feature = "cbor")]
                return Ok(Codec::Cbor);
                #[cfg(not(feature = "cbor"))]
                return Err(unsupported(content_type, Some("cbor")));
            }
            _ => Err(unsupported(content_type, None)),
        }
    }

    /// `value` in this format.
    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, BoxError> {
        match self {
            Codec::Json => Ok(serde_json::to_vec(value)?),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => Ok(rmp_serde::to_vec_named(value)?),
            #[cfg(feature = "cbor")]
            Codec::Cbor => {
                let mut body = Vec::new();
                ciborium::into_writer(value, &mut body)?;
                Ok(body)
            }
        }
    }

    /// `body` as a `T`.
    pub(crate) fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, DecodeError> {
        let type_name = std::any::type_name::<T>();
        match self {
            Codec::Json => {
                // Some writers (PowerShell, .NET's UTF8Encoding(true)) start
                // UTF-8 text with a byte-order mark; other JSON readers skip
                // it too.
                let json = body.strip_prefix(UTF8_BOM).unwrap_or(body);
                serde_json::from_slice(json)
                    .map_err(|source| DecodeError::Json { type_name, source })
            }
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::from_slice(body).map_err(|source| DecodeError::Body {
                content_type: self.content_type(),
                type_name,
                source: source.into(),
            }),
            #[cfg(feature = "cbor")]
            Codec::Cbor => ciborium::from_reader(body).map_err(|source| DecodeError::Body {
                content_type: self.content_type(),
                type_name,
                source: source.into(),
            }),
        }
    }
}

/// The UTF-8 encoding of U+FEFF, the byte-order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn unsupported(content_type: &str, feature: Option<&'static str>) -> DecodeError {
    match feature {
        Some(feature) => DecodeError::FeatureDisabled {
            content_type: content_type.to_owned(),
            feature,
        },
        None => DecodeError::UnsupportedContentType(content_type.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
        note: Option<String>,
    }

    #[test]
    fn content_types_name_their_codec_whatever_the_case_and_parameters() {
        for json in [
            None,
            Some(""),
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/vnd.acme.order+json"),
        ] {
            assert_eq!(
                Codec::for_content_type(json).unwrap(),
                Codec::Json,
                "{json:?}"
            );
        }
        for other in ["text/plain", "application/protobuf", "application/jsonx"] {
            let error = Codec::for_content_type(Some(other)).unwrap_err();
            assert!(error.to_string().contains(other), "{error}");
        }
    }

    #[test]
    fn every_codec_round_trips_what_it_encodes() {
        let order = Order {
            id: 7,
            note: Some("fragile".to_owned()),
        };
        let codecs = [
            Codec::Json,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack,
            #[cfg(feature = "cbor")]
            Codec::Cbor,
        ];
        for codec in codecs {
            let body = codec.encode(&order).unwrap();
            let found = Codec::for_content_type(Some(codec.content_type())).unwrap();
            assert_eq!(found, codec);
            assert_eq!(found.decode::<Order>(&body).unwrap(), order, "{codec:?}");
            // Garbage is an error, never a panic.
            assert!(found.decode::<Order>(&body[..body.len() / 2]).is_err());
        }
    }

    #[cfg(not(feature = "msgpack"))]
    #[test]
    fn a_format_whose_feature_is_off_names_the_feature() {
        let error = Codec::for_content_type(Some("application/msgpack")).unwrap_err();
        assert!(error.to_string().contains("`msgpack` feature"), "{error}");
    }
}
