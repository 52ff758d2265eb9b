//! What hutch-rs tells observability tools: the spans of publishes and
//! deliveries, and the trace context they carry across the broker.

pub(crate) mod propagation;
pub(crate) mod spans;
