//! A private RabbitMQ node for tests (feature `testing`).
//!
//! [`Broker::start`] starts a RabbitMQ node of its own: its own node name,
//! its own ports on 127.0.0.1, its own temporary directory, the management
//! plugin enabled, and nothing read from the machine's RabbitMQ
//! configuration. It never touches another node (nor the shared `epmd`).
//! Dropping the [`Broker`] stops the node; [`Broker::shared`] gives one node
//! per test binary, stopped by a watchdog process when the binary exits.
//!
//! [`Broker::start_tls`] adds a TLS listener that requires a client
//! certificate and accepts the EXTERNAL mechanism (certificate logins).
//!
//! [`Cluster::start`] starts three such nodes sharing one private Erlang
//! cookie and joins them into a cluster, for failover tests: stop a node's
//! broker ([`Cluster::stop_node`]) or kill its VM ([`Cluster::kill_node`]),
//! bring it back, and see where a queue's leader and replicas are
//! ([`Cluster::queue_placement`]).
//!
//! The API is blocking. Inspection goes through `rabbitmqctl` (exact at the
//! moment of the call) and the management HTTP API.
//!
//! # Requirements
//!
//! RabbitMQ must be installed: on Debian and Ubuntu `apt-get install
//! rabbitmq-server` (the node is run from `/usr/lib/rabbitmq/bin` as the
//! current user; the system service need not run). Elsewhere, set
//! `HUTCH_RABBITMQ_BIN_DIR` to the directory holding `rabbitmq-server` and
//! `rabbitmqctl`. A node needs about 150 MB of memory and takes 7–11 seconds
//! to start.
//!
//! # RabbitMQ 4
//!
//! With `HUTCH_TEST_RABBITMQ=4` in the environment, every node ([`Broker::start`],
//! [`Broker::shared`]) runs RabbitMQ 4.0 instead of the machine's own
//! RabbitMQ (`3` or unset). RabbitMQ 4.0 comes from Debian 13: run
//! `scripts/ensure-rabbitmq4` once as root; it builds a minimal Debian 13
//! tree with Debian's `rabbitmq-server` in `/var/cache/hutch-rs/rabbitmq4-trixie`
//! (or in `HUTCH_RABBITMQ4_ROOT`, which the harness reads too). The harness
//! runs the node's programs through `chroot` into that tree, so it must run
//! as root; the node's directory is made under the tree's `/tmp`, and the
//! node is as private as on the host (own name, ports, data, cookie;
//! network, process ids and `epmd` are the host's). These nodes refuse
//! RabbitMQ 4's deprecated features (`deprecated_features.permit.* =
//! false`; all but `management_metrics_collection` and
//! `transient_nonexcl_queues`, which break the tests' broker restarts on
//! 4.0.5), so that a test fails where hutch-rs would use one.
//! [`Broker::version`] tells which RabbitMQ a node runs.
//!
//! # Example
//!
//! ```no_run
//! use hutch_rs::testing::Broker;
//!
//! # fn main() -> Result<(), hutch_rs::testing::BrokerError> {
//! // One node for the whole test binary, started on first use.
//! let broker = Broker::shared();
//! let uri = broker.amqp_uri(); // amqp://guest:guest@127.0.0.1:<port>/%2f
//! # let _ = uri;
//!
//! // ... run hutch-rs (or any AMQP client) against `uri` ...
//!
//! // Then check what the broker really holds.
//! let orders = broker.queue("shop:orders")?.expect("the queue was declared");
//! assert!(orders.durable);
//! assert_eq!(orders.messages, 0);
//! assert!(broker.bindings()?.iter().any(|b| b.destination == "shop:orders"));
//!
//! // A node of one's own, for tests that restart or break it.
//! let private = Broker::start()?;
//! private.close_all_connections("testing reconnects")?;
//! private.stop();
//! # Ok(())
//! # }
//! ```

mod binaries;
mod broker;
mod cluster;
mod command;
mod ctl;
mod error;
mod existing;
mod info;
mod layout;
mod management;
mod node;
mod ports;
mod runtime;
mod server;
mod tls;
mod vhost;
mod watchdog;

pub use broker::Broker;
pub use cluster::{Cluster, QueuePlacement};
pub use error::BrokerError;
pub use info::{BindingInfo, ConsumerInfo, ExchangeInfo, QueueInfo};
pub use tls::TlsNodeFiles;
