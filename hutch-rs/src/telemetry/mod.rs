//! What hutch-rs tells observability tools: the spans of publishes and
//! deliveries, the trace context they carry across the broker, and
//! (feature `metrics`) the metrics of deliveries, publishes and connections.

pub(crate) mod metrics;
pub(crate) mod propagation;
pub(crate) mod spans;
