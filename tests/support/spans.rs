//! The spans hutch-rs closed under its messaging target, with their fields
//! and parents, as the tests' subscriber saw them (installed by
//! [`init_logging`](crate::init_logging)).

use std::{
    collections::HashMap,
    fmt,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

/// The target hutch-rs's message spans are under.
pub const TARGET: &str = "hutch_rs::messaging";

/// A closed span.
#[derive(Debug, Clone)]
pub struct CapturedSpan {
    /// `process` or `publish`.
    pub name: &'static str,
    /// The span's id while it was open.
    pub id: u64,
    /// Its parent's id, if it had one.
    pub parent: Option<u64>,
    /// Every field that had a value, as text.
    pub fields: HashMap<String, String>,
}

impl CapturedSpan {
    /// The field's value, or `""`.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// The layer recording closed spans.
#[derive(Debug, Default)]
pub struct SpanCapture;

/// Every span closed in this process, in closing order.
static CLOSED: LazyLock<Mutex<Vec<CapturedSpan>>> = LazyLock::new(Mutex::default);

/// Counts closed spans, for waiting.
static CHANGED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// A span's fields while it is open.
#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for SpanCapture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span
            .extensions_mut()
            .remove::<Fields>()
            .map(|fields| fields.0)
            .unwrap_or_default();
        CLOSED.lock().unwrap().push(CapturedSpan {
            name: span.name(),
            id: id.into_u64(),
            parent: span.parent().map(|parent| parent.id().into_u64()),
            fields,
        });
        CHANGED.send_modify(|count| *count += 1);
    }
}

/// Waits until `n` closed spans match `wanted`; returns them. Panics after
/// `patience` with what was seen.
pub async fn await_spans(
    n: usize,
    patience: Duration,
    wanted: impl Fn(&CapturedSpan) -> bool,
) -> Vec<CapturedSpan> {
    let matching = || -> Vec<CapturedSpan> {
        CLOSED
            .lock()
            .unwrap()
            .iter()
            .filter(|span| wanted(span))
            .cloned()
            .collect()
    };
    let mut changes = CHANGED.subscribe();
    let waited = tokio::time::timeout(patience, async {
        loop {
            let spans = matching();
            if spans.len() >= n {
                return spans;
            }
            changes.changed().await.expect("the counter lives for ever");
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        let closed = CLOSED.lock().unwrap();
        let last = &closed[closed.len().saturating_sub(5)..];
        panic!(
            "{n} spans expected, saw {:#?}; the last spans closed: {last:#?}",
            matching()
        )
    })
}
