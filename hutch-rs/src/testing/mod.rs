//! RabbitMQ for tests (feature `testing`): an in-memory broker, a private
//! node, a vhost of one, or an existing broker.
//!
//! [`TestBroker`] needs no RabbitMQ at all: it runs the binary's registered
//! consumers over an in-memory topic exchange, with the routing, decoding,
//! retries and dead letters of a real broker (see its module docs for what
//! differs, and how it is held to RabbitMQ). The rest of this module starts
//! and inspects real nodes.
//!
//! [`Broker::start`] starts a RabbitMQ node of its own: its own node name,
//! its own ports on 127.0.0.1, its own temporary directory, the management
//! plugin enabled, and nothing read from the machine's RabbitMQ
//! configuration. It never touches another node (nor the shared `epmd`).
//! Dropping the [`Broker`] stops the node; [`Broker::shared`] gives one node
//! per test binary, stopped by a watchdog process when the binary exits.
//!
//! [`Broker::isolated`] gives a handle scoped to a new virtual host of the
//! same node, deleted when that handle is dropped, so that tests sharing a
//! node see nothing of each other. With `HUTCH_TEST_URI` set, no node is
//! started at all: tests get virtual hosts of that broker (see
//! [Running against an existing broker](#running-against-an-existing-broker)).
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
//! Either RabbitMQ installed where the harness finds it, or a RabbitMQ you
//! run (see [Running against an existing broker](#running-against-an-existing-broker)).
//! A node needs about 150 MB of memory and takes 7–11 seconds to start; it
//! is run as the current user (the system service need not run), and needs
//! Erlang's `erl` on `PATH` as RabbitMQ's scripts do.
//!
//! - **Debian and Ubuntu**: `apt-get install rabbitmq-server`. The node is
//!   run from `/usr/lib/rabbitmq/bin`, never through `/usr/sbin`, whose
//!   wrappers switch to the `rabbitmq` user.
//! - **macOS (Homebrew)**: `brew install rabbitmq`. Found on `PATH`
//!   (`/opt/homebrew/sbin` or `/usr/local/sbin`, links into the Cellar) or
//!   in `/opt/homebrew/opt/rabbitmq/sbin` / `/usr/local/opt/rabbitmq/sbin`.
//! - **RabbitMQ's generic-unix package** (any Unix): unpack
//!   `rabbitmq-server-generic-unix-X.Y.Z.tar.xz` and set `RABBITMQ_HOME` to
//!   the `rabbitmq_server-X.Y.Z` directory it holds.
//! - **Anything else**: set `HUTCH_RABBITMQ_BIN_DIR` to the directory
//!   holding `rabbitmq-server` and `rabbitmqctl`.
//!
//! The harness looks, in this order, and takes the first place that holds
//! both `rabbitmq-server` and `rabbitmqctl`:
//!
//! 1. `HUTCH_RABBITMQ_BIN_DIR`; set, it is the only place looked at.
//! 2. `$RABBITMQ_HOME/sbin`.
//! 3. `rabbitmq-server` on `PATH`, symbolic links resolved, with
//!    `rabbitmqctl` beside the resolved script; wrappers that switch users
//!    (Debian's and RPM's `/usr/sbin` entries) are passed over.
//! 4. Homebrew's `opt/rabbitmq/sbin` under `/opt/homebrew`, `/usr/local`
//!    and `/home/linuxbrew/.linuxbrew`.
//! 5. `/usr/lib/rabbitmq/bin`.
//!
//! When none does, the error lists each place and why it did not do. The
//! node never reads the installation's configuration (`rabbitmq.conf`,
//! `rabbitmq-env.conf`, `enabled_plugins`): its own are in its directory.
//!
//! # Running against an existing broker
//!
//! With `HUTCH_TEST_URI` set to the AMQP URI of a RabbitMQ you run (a
//! docker container on a laptop, a service container in CI),
//! [`Broker::start`] and [`Broker::shared`] start no node. Each gives a
//! virtual host of its own on that broker instead, named
//! `hutch-test-<pid>-<n>-<random>`, created through the management API
//! with every permission for the URI's user, and deleted with everything in
//! it when the handle is dropped; [`Broker::amqp_uri`] points at it and
//! the inspection methods ([`Broker::queues`], [`Broker::bindings`], …) see
//! only it. Tests written against [`Broker::shared`] run unchanged.
//!
//! - `HUTCH_TEST_URI`: e.g. `amqp://guest:guest@localhost:5672/`; its
//!   user must be allowed to create virtual hosts (tag `administrator`, as
//!   `guest` is). The URI's own virtual host is ignored.
//! - `HUTCH_TEST_MANAGEMENT_URL`: the management API, when it is not
//!   `http://<host of the URI>:15672`; the URI's credentials are used. The
//!   management plugin must be enabled (the `-management` docker images).
//!
//! What needs a node of the test's own is refused with
//! [`BrokerError::NeedsPrivateNode`] ([`Broker::rabbitmqctl`]) or absent
//! ([`Broker::os_pid`], [`Broker::amqps_uri`]); [`Broker::has_private_node`]
//! tells a test to skip. [`Broker::start_tls`] and [`Cluster::start`] always
//! start private nodes. Counters of an existing broker come from its
//! management API and lag (5 seconds by default); those of a private node
//! are exact. The virtual host of [`Broker::shared`] is never dropped: it
//! stays on the broker until the next test process of the same machine
//! sets up a virtual host there, which deletes those that ended processes
//! of this machine left behind (the description of each names its process
//! and machine).
//!
//! A GitHub Actions job with RabbitMQ as a service container:
//!
//! ```yaml
//! jobs:
//!   test:
//!     runs-on: ubuntu-latest
//!     services:
//!       rabbitmq:
//!         image: rabbitmq:3-management
//!         ports: ["5672:5672", "15672:15672"]
//!         options: >-
//!           --health-cmd "rabbitmq-diagnostics -q check_port_connectivity"
//!           --health-interval 5s --health-retries 20
//!     env:
//!       HUTCH_TEST_URI: amqp://guest:guest@localhost:5672/
//!     steps:
//!       - uses: actions/checkout@v4
//!       - run: cargo test
//! ```
//!
//! On a laptop: `docker run -d -p 5672:5672 -p 15672:15672
//! rabbitmq:3-management`, then `HUTCH_TEST_URI=amqp://guest:guest@localhost:5672/
//! cargo test`.
//!
//! The same virtual hosts serve tests sharing one private node:
//! [`Broker::isolated`] gives a handle on a new virtual host of the node it
//! is called on, e.g. `Broker::shared().isolated()?`.
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
mod memory;
mod node;
mod ports;
mod runtime;
mod server;
mod tls;
mod topic;
mod vhost;
mod watchdog;

pub use broker::Broker;
pub use cluster::{Cluster, QueuePlacement};
pub use error::BrokerError;
pub use info::{BindingInfo, ConsumerInfo, ExchangeInfo, QueueInfo};
pub use memory::{DeadLetter, Handled, PublishedMessage, Received, TestBroker};
pub use tls::TlsNodeFiles;
pub use topic::topic_matches;
