//! What hutch-rs puts between the broker's socket and lapin.
//!
//! Everything a message carries is untrusted (ARCHITECTURE.md, invariant
//! 11), and amq-protocol parses a message's headers recursively on lapin's
//! I/O thread, which a few kilobytes of nested arrays overflow, aborting the
//! process. hutch-rs therefore reads the frames first:
//!
//! - [`header_depth`] measures a content header's headers without recursion
//!   and replaces them when they nest deeper than
//!   [`MAX_HEADER_DEPTH`](header_depth::MAX_HEADER_DEPTH);
//! - [`SanitizingStream`] finds content header frames in what the socket
//!   delivers and runs them through it;
//! - [`runtime`] gives lapin a tokio runtime whose sockets are such
//!   streams;
//! - [`tls`] does the TLS handshake of `amqps` connections, so that the
//!   sanitizer sits above TLS and reads decrypted frames.
//!
//! A message whose headers were replaced carries only
//! [`REJECTED_HEADERS`](crate::headers::REJECTED_HEADERS), and its consumer
//! dead-letters it as poison without calling the handler.

mod header_depth;
mod runtime;
mod sanitizing_stream;
mod socket;
pub(crate) mod tls;

pub(crate) use runtime::{SanitizingRuntime, sanitizing_runtime};
pub(crate) use sanitizing_stream::SanitizingStream;
pub(crate) use socket::Socket;
