//! What hutch-rs tells observability tools: the spans of publishes and
//! deliveries, and (feature `metrics`) the metrics of deliveries, publishes
//! and connections.

pub(crate) mod metrics;
pub(crate) mod spans;
