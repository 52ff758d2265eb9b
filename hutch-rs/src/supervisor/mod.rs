//! The supervision tree: the connections hutch-rs owns and the consumers
//! running on them.

pub(crate) mod app;
pub(crate) mod classify;
pub(crate) mod connection;
pub(crate) mod connection_manager;
pub(crate) mod consumer;
mod intensity;
pub(crate) mod observer;
mod reachability;
pub(crate) mod tree;
