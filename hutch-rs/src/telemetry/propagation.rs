//! W3C trace context in message headers (feature `opentelemetry`): every
//! publish carries its span's context as `traceparent` and `tracestate`
//! headers, and a delivery that carries them makes its process span a child
//! of the span that published it, so that one trace runs from the publishing
//! request through the broker to the handler, and on through every retry
//! and dead-letter copy.
//!
//! The context is read from and written to `tracing` spans through
//! `tracing-opentelemetry`: an application that installs its layer gets
//! propagation, one that does not gets no headers. Without the feature,
//! everything here is empty and compiles to nothing.
//!
//! The headers of a delivery are a publisher's say-so: they are read only as
//! strings of bounded length, parsed by OpenTelemetry's W3C propagator
//! (which refuses anything the format does not allow), and a header that
//! fails any of that is ignored, as if absent. The message is handled
//! either way.

use lapin::types::FieldTable;
use tracing::Span;

use crate::headers::{TRACEPARENT, TRACESTATE};

/// The longest trace header read from a delivery, in bytes. A
/// `traceparent` is 55 bytes; 512 is the length of `tracestate` that the
/// W3C recommendation asks every system to pass on. Anything longer is not
/// parsed.
pub(crate) const MAX_TRACE_HEADER_BYTES: usize = 512;

/// The trace headers of one publish, taken from its span once and written
/// into the headers of every attempt to send it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceHeaders {
    #[cfg(feature = "opentelemetry")]
    fields: Vec<(&'static str, String)>,
}

impl TraceHeaders {
    /// The context of `span`, as headers; none if `span` has no
    /// OpenTelemetry context (no `tracing-opentelemetry` layer, or the span
    /// is filtered out).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn of(span: &Span) -> Self {
        use opentelemetry::propagation::{Injector, TextMapPropagator};
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        struct Fields<'a>(&'a mut Vec<(&'static str, String)>);
        impl Injector for Fields<'_> {
            fn set(&mut self, key: &str, value: String) {
                let key = match key {
                    TRACEPARENT => TRACEPARENT,
                    TRACESTATE => TRACESTATE,
                    // W3C's propagator writes no other header.
                    _ => return,
                };
                if !value.is_empty() {
                    self.0.push((key, value));
                }
            }
        }

        if span.is_disabled() {
            return Self::default();
        }
        let mut fields = Vec::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut Fields(&mut fields));
        Self { fields }
    }

    /// Without the feature: no headers.
    #[cfg(not(feature = "opentelemetry"))]
    #[inline]
    pub(crate) fn of(_span: &Span) -> Self {
        Self::default()
    }

    /// Whether there is nothing to write.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        #[cfg(feature = "opentelemetry")]
        return self.fields.is_empty();
        #[cfg(not(feature = "opentelemetry"))]
        true
    }

    /// Writes the headers into `headers`, replacing any of the same name: a
    /// copy of a delivery carries its own span's context, not the one its
    /// original was published with.
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
    #[inline]
    pub(crate) fn write_into(&self, headers: &mut FieldTable) {
        #[cfg(feature = "opentelemetry")]
        for (name, value) in &self.fields {
            headers.insert(
                (*name).into(),
                lapin::types::AMQPValue::LongString(value.as_str().into()),
            );
        }
    }
}

/// Makes `span` (a delivery's process span, not yet entered) a child of the
/// span that published the delivery, if its `headers` carry a valid
/// `traceparent`. Anything else leaves `span` a root.
#[cfg(feature = "opentelemetry")]
pub(crate) fn adopt_parent(span: &Span, headers: Option<&FieldTable>) {
    use opentelemetry::{Context, propagation::TextMapPropagator, trace::TraceContextExt};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(headers) = headers else { return };
    if span.is_disabled() || trace_header(headers, TRACEPARENT).is_none() {
        return;
    }
    let parent = TraceContextPropagator::new()
        .extract_with_context(&Context::new(), &DeliveryHeaders(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when no `tracing-opentelemetry` layer is installed,
        // and then there is no trace to join.
        let _ = span.set_parent(parent);
    }
}

/// Without the feature: nothing to adopt.
#[cfg(not(feature = "opentelemetry"))]
#[inline]
pub(crate) fn adopt_parent(_span: &Span, _headers: Option<&FieldTable>) {}

/// A delivery's headers, as OpenTelemetry's propagators read them: only
/// the two trace headers, only as UTF-8 strings of bounded length.
#[cfg(feature = "opentelemetry")]
struct DeliveryHeaders<'a>(&'a FieldTable);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Extractor for DeliveryHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        trace_header(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|name| trace_header(self.0, name).is_some())
            .collect()
    }
}

/// The trace header `name` of a delivery, if it is a string (long or
/// short), valid UTF-8, and no longer than [`MAX_TRACE_HEADER_BYTES`].
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
fn trace_header<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    use lapin::types::AMQPValue;

    if name != TRACEPARENT && name != TRACESTATE {
        return None;
    }
    let text = match headers.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok()?,
        AMQPValue::ShortString(value) => value.as_str(),
        _ => return None,
    };
    if text.len() > MAX_TRACE_HEADER_BYTES
        || name == TRACEPARENT && !is_well_formed_traceparent(text)
    {
        return None;
    }
    Some(text)
}

/// Whether `text` has the form W3C Trace Context gives `traceparent`:
/// `version-traceid-parentid-flags`, each part lowercase hex of its exact
/// length, version `ff` never, and more after the flags only in a later
/// version than `00`. OpenTelemetry's propagator is laxer (it takes a `+`
/// before the trace id, for one), and the recommendation says to ignore
/// such a header.
fn is_well_formed_traceparent(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex = |from: usize, to: usize| {
        bytes
            .get(from..to)
            .is_some_and(|part| part.iter().all(|&b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    };
    let dash = |at: usize| bytes.get(at) == Some(&b'-');
    let version = bytes.get(..2);
    hex(0, 2)
        && dash(2)
        && hex(3, 35)
        && dash(35)
        && hex(36, 52)
        && dash(52)
        && hex(53, 55)
        && version != Some(b"ff")
        && (bytes.len() == 55 || dash(55) && version != Some(b"00"))
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    fn with(name: &str, value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        headers
    }

    #[test]
    fn a_trace_header_is_read_only_as_bounded_utf8_text() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = with(TRACEPARENT, AMQPValue::LongString(parent.into()));
        assert_eq!(trace_header(&long, TRACEPARENT), Some(parent));
        let short = with(TRACEPARENT, AMQPValue::ShortString(parent.into()));
        assert_eq!(trace_header(&short, TRACEPARENT), Some(parent));

        let number = with(TRACEPARENT, AMQPValue::LongLongInt(7));
        assert_eq!(trace_header(&number, TRACEPARENT), None);
        let invalid = with(
            TRACEPARENT,
            AMQPValue::LongString(vec![0xff, 0xfe, b'-'].into()),
        );
        assert_eq!(trace_header(&invalid, TRACEPARENT), None);
        let huge = "0".repeat(MAX_TRACE_HEADER_BYTES + 1);
        let huge = with(TRACESTATE, AMQPValue::LongString(huge.as_str().into()));
        assert_eq!(trace_header(&huge, TRACESTATE), None);
        let longest = "a=".to_owned() + &"b".repeat(MAX_TRACE_HEADER_BYTES - 2);
        let longest = with(TRACESTATE, AMQPValue::LongString(longest.as_str().into()));
        assert!(trace_header(&longest, TRACESTATE).is_some());
        let foreign = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future";
        assert!(is_well_formed_traceparent(foreign));
        for malformed in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "",
        ] {
            assert!(!is_well_formed_traceparent(malformed), "{malformed}");
        }
        // Only the two trace headers are ever looked at.
        let other = with("x-other", AMQPValue::LongString("text".into()));
        assert_eq!(trace_header(&other, "x-other"), None);
    }

    /// Runs `body` with a `tracing-opentelemetry` layer as this thread's
    /// subscriber, as an application would install it.
    #[cfg(feature = "opentelemetry")]
    fn with_opentelemetry(body: impl FnOnce()) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), body);
    }

    #[cfg(feature = "opentelemetry")]
    fn span_context(span: &Span) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        span.context().span().span_context().clone()
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn a_publish_span_context_becomes_the_parent_of_the_delivery_span() {
        with_opentelemetry(|| {
            let request = tracing::info_span!("request");
            let publish = tracing::info_span!(parent: &request, "publish");
            let trace = TraceHeaders::of(&publish);
            let mut headers = FieldTable::default();
            // A stale context from an earlier hop is replaced.
            headers.insert(TRACEPARENT.into(), AMQPValue::LongString("00-stale".into()));
            trace.write_into(&mut headers);
            let published = span_context(&publish);
            let expected = format!("00-{}-{}-01", published.trace_id(), published.span_id());
            assert_eq!(trace_header(&headers, TRACEPARENT), Some(expected.as_str()));

            let process = tracing::info_span!(parent: None, "process");
            adopt_parent(&process, Some(&headers));
            let processed = span_context(&process);
            assert_eq!(processed.trace_id(), span_context(&request).trace_id());
            assert_ne!(processed.span_id(), published.span_id());
        });
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn a_foreign_traceparent_is_joined_and_its_tracestate_kept() {
        with_opentelemetry(|| {
            let mut headers = FieldTable::default();
            headers.insert(
                TRACEPARENT.into(),
                AMQPValue::ShortString(
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                ),
            );
            headers.insert(
                TRACESTATE.into(),
                AMQPValue::LongString("vendor=value".into()),
            );
            let process = tracing::info_span!(parent: None, "process");
            adopt_parent(&process, Some(&headers));
            let context = span_context(&process);
            assert_eq!(
                context.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
            assert_eq!(context.trace_state().get("vendor"), Some("value"));
        });
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn a_hostile_traceparent_leaves_the_delivery_span_a_root() {
        let hostile: Vec<AMQPValue> = vec![
            AMQPValue::LongString("".into()),
            AMQPValue::LongString("00-00000000000000000000000000000000-b7ad6b7169203331-01".into()),
            AMQPValue::LongString("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01".into()),
            AMQPValue::LongString("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            AMQPValue::LongString("00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            AMQPValue::LongString("-".repeat(MAX_TRACE_HEADER_BYTES + 1).as_str().into()),
            AMQPValue::LongString(vec![0xc3, 0x28, b'-', b'-', b'-'].into()),
            AMQPValue::LongLongInt(-1),
            AMQPValue::FieldTable(FieldTable::default()),
        ];
        with_opentelemetry(|| {
            for value in hostile {
                let mut headers = FieldTable::default();
                headers.insert(TRACEPARENT.into(), value.clone());
                let process = tracing::info_span!(parent: None, "process");
                adopt_parent(&process, Some(&headers));
                let root = tracing::info_span!(parent: None, "root");
                // A root has a trace of its own: a fresh id, not one from
                // the header.
                assert!(span_context(&process).is_valid(), "{value:?}");
                assert_ne!(
                    span_context(&process).trace_id().to_string(),
                    "0af7651916cd43dd8448eb211c80319c",
                    "{value:?}"
                );
                drop(root);
            }
        });
    }

    #[cfg(feature = "opentelemetry")]
    proptest::proptest! {
        /// Whatever text a publisher puts in the two headers, reading them
        /// neither panics nor fails the span.
        #[test]
        fn any_trace_header_text_is_read_without_panicking(
            parent in "[0-9a-fA-F+\\-]{0,80}|\\PC{0,600}",
            state in "[a-z0-9=,@*/ _-]{0,700}|\\PC{0,600}",
        ) {
            with_opentelemetry(|| {
                let mut headers = FieldTable::default();
                headers.insert(TRACEPARENT.into(), AMQPValue::LongString(parent.as_str().into()));
                headers.insert(TRACESTATE.into(), AMQPValue::LongString(state.as_str().into()));
                let process = tracing::info_span!(parent: None, "process");
                adopt_parent(&process, Some(&headers));
                assert!(span_context(&process).is_valid());
            });
        }
    }

    #[test]
    fn without_a_context_a_publish_writes_no_trace_headers() {
        let headers = TraceHeaders::of(&Span::none());
        assert!(headers.is_empty());
        let mut table = FieldTable::default();
        headers.write_into(&mut table);
        assert!(table.inner().is_empty());
    }
}
