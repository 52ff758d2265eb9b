//! What hutch-rs tells observability tools: the spans of publishes and
//! deliveries.

pub(crate) mod spans;
