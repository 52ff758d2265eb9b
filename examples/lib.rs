//! The examples of hutch-rs live in this package's `[[example]]` targets.
//! What an example shares with a test lives here: [`health`], the HTTP
//! health endpoints of `examples/health_http.rs`.

pub mod health;
