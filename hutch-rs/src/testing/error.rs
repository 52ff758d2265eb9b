//! What can go wrong with a private test broker, phrased as what to do about it.

use std::{path::PathBuf, time::Duration};

/// Why a private RabbitMQ node could not be started, queried or stopped.
///
/// Every message says what to do next; a failed start carries the last lines
/// the node printed, because its directory is removed with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `rabbitmq-server` or `rabbitmqctl` is not where the harness looks.
    #[error(
        "rabbitmq-server is not installed ({} not found): run `apt-get install rabbitmq-server` \
         (scripts/test does this), or set {} to the directory holding rabbitmq-server and \
         rabbitmqctl",
        path.display(),
        crate::testing::binaries::BIN_DIR_VAR
    )]
    NotInstalled {
        /// The program that is missing.
        path: PathBuf,
    },

    /// No RabbitMQ installation was found anywhere the harness looks (see
    /// [the module docs](crate::testing#requirements) for the order).
    #[error(
        "RabbitMQ is not installed where the harness looks:\n  - {}\ninstall it (`apt-get \
         install rabbitmq-server` on Debian and Ubuntu, `brew install rabbitmq` on macOS), or \
         unpack RabbitMQ's generic-unix package and set {} to its directory, or set {} to the \
         directory holding rabbitmq-server and rabbitmqctl; or set {} to the AMQP URI of a \
         RabbitMQ you run (a docker container, a CI service) to test in virtual hosts of it",
        looked.join("\n  - "),
        crate::testing::binaries::HOME_VAR,
        crate::testing::binaries::BIN_DIR_VAR,
        crate::testing::existing::URI_VAR
    )]
    NotFound {
        /// Each place looked at, and why it did not do.
        looked: Vec<String>,
    },

    /// The [`Broker`](crate::testing::Broker) is a virtual host of an
    /// existing broker (`HUTCH_TEST_URI`, [`Broker::existing`]), and what was
    /// asked needs a node of the test's own.
    ///
    /// [`Broker::existing`]: crate::testing::Broker::existing
    #[error(
        "{what} needs a private RabbitMQ node, and this Broker is a virtual host of an existing \
         broker ({}); run this test without {} (with RabbitMQ installed), or skip it when \
         Broker::has_private_node() is false",
        crate::testing::existing::URI_VAR,
        crate::testing::existing::URI_VAR
    )]
    NeedsPrivateNode {
        /// What was asked.
        what: String,
    },

    /// The existing broker (`HUTCH_TEST_URI`, [`Broker::existing`]) cannot
    /// be used: a malformed URI, an unreachable management API, credentials
    /// it refuses.
    ///
    /// [`Broker::existing`]: crate::testing::Broker::existing
    #[error("cannot use the existing RabbitMQ at {broker}: {reason}")]
    Existing {
        /// The broker's AMQP URI (password masked) or management URL.
        broker: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// `HUTCH_TEST_RABBITMQ=4` asks for RabbitMQ 4, whose Debian 13 tree is
    /// not built (or not where `HUTCH_RABBITMQ4_ROOT` says).
    #[error(
        "RabbitMQ 4 is not set up ({} not found): run `scripts/ensure-rabbitmq4` as root, \
         which builds a Debian 13 tree with RabbitMQ 4.0 in {}, or set {} to such a tree; \
         unset {} to test against the machine's own RabbitMQ",
        path.display(),
        crate::testing::runtime::DEFAULT_TREE,
        crate::testing::runtime::TREE_VAR,
        crate::testing::runtime::VERSION_VAR
    )]
    TreeNotReady {
        /// The program that is missing.
        path: PathBuf,
    },

    /// `HUTCH_TEST_RABBITMQ` names no RabbitMQ the harness knows.
    #[error(
        "{}={value:?} is not a RabbitMQ version the harness runs: leave it unset (or `3`) for \
         the machine's own RabbitMQ, or set it to `4` for RabbitMQ 4.0",
        crate::testing::runtime::VERSION_VAR
    )]
    UnknownVersion {
        /// The variable's value.
        value: String,
    },

    /// The node's temporary directory or one of its files could not be made.
    #[error(
        "could not prepare the test node ({what}): {source}; check that the temporary \
         directory (TMPDIR, default /tmp) is writable and not full"
    )]
    Setup {
        /// What was being prepared.
        what: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A program could not be run at all.
    #[error("could not run {program}: {source}; check that it is installed and executable")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The node exited or never became ready.
    #[error(
        "RabbitMQ test node {node} did not start: {reason}. If this keeps happening, check free \
         memory and disk space. Last lines the node printed:\n{log_tail}"
    )]
    StartFailed {
        /// The node name.
        node: String,
        /// What went wrong.
        reason: String,
        /// The end of the node's stdout and stderr.
        log_tail: String,
    },

    /// `rabbitmqctl` ran but reported a failure.
    #[error(
        "`rabbitmqctl -n {node} {args}` failed ({status}): {stderr}; check the command's \
         arguments and that the node is still running"
    )]
    Rabbitmqctl {
        /// The node name.
        node: String,
        /// The arguments, space-separated.
        args: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr (or stdout if stderr was empty).
        stderr: String,
    },

    /// A command did not finish in time and was killed.
    #[error(
        "`{command}` did not finish within {timeout:?} and was killed; the test node may be \
         overloaded or hung"
    )]
    Timeout {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: Duration,
    },

    /// A management API request failed or answered with an error status.
    #[error(
        "management API {method} {url} failed{}: {detail}",
        status.map(|status| format!(" with HTTP {status}")).unwrap_or_default()
    )]
    Management {
        /// The HTTP method.
        method: String,
        /// The full URL.
        url: String,
        /// The HTTP status, if the server answered.
        status: Option<u16>,
        /// The response body or the transport error.
        detail: String,
    },

    /// A command's output was not what this harness understands.
    #[error(
        "could not parse the output of `{command}`: {detail}; this harness is tested with \
         RabbitMQ 3.10 and may need adapting to the installed version"
    )]
    Parse {
        /// The command line or URL.
        command: String,
        /// What was wrong.
        detail: String,
    },

    /// Every node of a [`Cluster`](crate::testing::Cluster) is stopped, so
    /// there is none to ask.
    #[error(
        "every node of the test cluster is stopped; start one with Cluster::start_node before \
         asking the cluster"
    )]
    NoRunningNode,

    /// A queue of a [`Cluster`](crate::testing::Cluster) did not reach the
    /// awaited placement in time.
    #[error(
        "queue {queue:?} did not reach the awaited placement within {timeout:?}; last seen: \
         {last}"
    )]
    QueueNotReady {
        /// The queue's name.
        queue: String,
        /// How long it was given.
        timeout: Duration,
        /// The last placement seen, or that the queue did not exist.
        last: String,
    },

    /// A node of a [`Cluster`](crate::testing::Cluster) was killed but its
    /// process did not exit, or the other nodes kept listing it as running.
    #[error(
        "RabbitMQ test node {node} did not exit after being killed, or the other nodes still \
         list it as running; the machine may be overloaded"
    )]
    StillRunning {
        /// The node name.
        node: String,
    },
}
