//! The supervision tree: the connections hutch-rs owns and the consumers
//! running on them.

pub(crate) mod app;
pub(crate) mod connection;
pub(crate) mod consumer;
