//! hutch-rs against real RabbitMQ nodes: one test binary for every test that
//! runs on the binary's shared node or on its turn-taking node (see
//! `hutch_rs_tests::NodeTurn`), one module per subject.
//!
//! One binary instead of one per file: each binary started a node of its own
//! (7–11 seconds) and was linked on its own, and a binary's slowest test
//! held up the next binary while the other test thread stood idle. The
//! tests that need whole nodes to themselves (`harness`, `tls`, `cluster`)
//! stay binaries of their own.
//!
//! Consumer groups are unique across the modules, since a `Hutch` built for
//! a group runs every consumer of that group in the binary; so are the
//! consumer names the handlers record in the shared `JOURNAL`.

mod bad_input;
mod cli;
mod codecs;
mod concurrency;
mod decode_fuzz;
mod deep_headers;
mod failure_handling;
mod failure_outages;
mod handlers;
mod hostile_input;
mod in_memory;
mod metrics;
mod publish_confirm;
mod publish_consume;
mod publish_outages;
mod publishing;
mod queue_types;
mod request_reply;
mod run_from_env;
mod shutdown;
mod spans;
mod stale_bindings;
mod supervision;
mod topic_matching;
mod topology_description;
mod trace_context;
mod tree;
