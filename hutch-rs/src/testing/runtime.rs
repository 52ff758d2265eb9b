//! Which RabbitMQ a test node runs, and how its programs are started.
//!
//! The host's own RabbitMQ (Debian 12: 3.10) is run as it is. RabbitMQ 4.0
//! comes from a Debian 13 tree (`scripts/ensure-rabbitmq4` builds it) and
//! is run through `chroot <tree>`: the node's directory is made under the
//! tree's `/tmp`, and every path the node is given is the one it sees from
//! inside the tree. The chroot shares the host's network, process ids and
//! `epmd`; only the file system differs, so a node in the tree is as
//! private, and is stopped the same way (by pid, `rabbitmqctl -n`), as one
//! on the host.
//!
//! RabbitMQ needs `/proc` (its memory monitor, `rabbitmqctl status`, and
//! `ps`, which `rabbitmqctl wait --pid` runs). Nothing is mounted in the
//! tree for good: each program runs in a mount namespace of its own
//! (`unshare --mount`) where the host's `/proc` is bound onto the tree's.
//! The mount is private to that namespace, invisible to the host, and
//! disappears with the program's last process, however it ends; nothing
//! needs unmounting.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{BrokerError, binaries::Binaries, layout::NodeEnv};

/// The environment variable choosing the RabbitMQ of test nodes: unset,
/// empty or `3` for the machine's own, `4` for the Debian 13 tree.
pub(crate) const VERSION_VAR: &str = "HUTCH_TEST_RABBITMQ";

/// The environment variable naming the Debian 13 tree holding RabbitMQ 4.
pub(crate) const TREE_VAR: &str = "HUTCH_RABBITMQ4_ROOT";

/// Where `scripts/ensure-rabbitmq4` builds the tree by default.
pub(crate) const DEFAULT_TREE: &str = "/var/cache/hutch-rs/rabbitmq4-trixie";

/// Debian's directory of the scripts that run as the caller, inside the tree.
const TREE_BIN_DIR: &str = "/usr/lib/rabbitmq/bin";

/// `rabbitmq.conf` lines for RabbitMQ 4 nodes.
///
/// The deprecated features of 4.0.5 are refused, so that a test fails where
/// hutch-rs relies on one rather than users finding out when a later release
/// drops it (`x-queue-master-locator` is refused, for instance; a global
/// `basic.qos` is still answered with `qos-ok` by 4.0.5). Two stay
/// permitted. `management_metrics_collection`: the tests read the
/// management API's statistics. `transient_nonexcl_queues`: refused, it
/// makes `rabbitmqctl start_app` after `stop_app` fail at random
/// (`failed_to_deny_deprecated_features`): 4.0.5 checks whether such queues
/// exist before its queue table is back (`no_exists, rabbit_queue`) and
/// takes the error for a yes, and the tests restart the broker that way.
/// `rabbitmqctl list_deprecated_features` lists the names; 4.0.5 ignores a
/// name it does not know.
const RABBITMQ4_CONFIG: &str = "\
# RabbitMQ 4: deprecated features refused, so that tests reveal their use.\n\
deprecated_features.permit.global_qos = false\n\
deprecated_features.permit.queue_master_locator = false\n\
deprecated_features.permit.amqp_address_v1 = false\n\
deprecated_features.permit.ram_node_type = false\n\
deprecated_features.permit.classic_queue_mirroring = false\n";

/// Runs `$3…` in the tree `$1`, in the directory `$2` (as the tree sees
/// it), with the host's `/proc` bound onto the tree's in the mount
/// namespace `unshare` made for it. Every step execs the next, so the pid
/// the harness spawned is the program's, as on the host; chroot always
/// starts in the tree's `/`, hence `env -C`.
const IN_TREE: &str = r#"root=$1 dir=$2; shift 2
mount --bind /proc "$root/proc" && exec chroot "$root" /usr/bin/env -C "$dir" "$@""#;

/// One of the two programs of a node.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Program {
    Server,
    Ctl,
}

/// Where a node's programs are and how they are run.
#[derive(Debug, Clone)]
pub(crate) enum Runtime {
    /// The machine's own RabbitMQ, run directly.
    Host(Binaries),
    /// RabbitMQ from a Debian tree, run through `chroot <root>`.
    Tree {
        /// The tree, as the host sees it.
        root: PathBuf,
    },
}

impl Runtime {
    /// The runtime `HUTCH_TEST_RABBITMQ` asks for, or what to do to have it.
    pub(crate) fn from_env() -> Result<Self, BrokerError> {
        let version = std::env::var_os(VERSION_VAR).unwrap_or_default();
        match version.to_str() {
            Some("" | "3") => Ok(Self::Host(Binaries::locate()?)),
            Some("4") => Self::tree(tree_root()),
            _ => Err(BrokerError::UnknownVersion {
                value: version.to_string_lossy().into_owned(),
            }),
        }
    }

    /// The tree at `root`, if RabbitMQ is installed in it.
    fn tree(root: PathBuf) -> Result<Self, BrokerError> {
        let runtime = Self::Tree { root };
        for program in [Program::Server, Program::Ctl] {
            let path = runtime.host_path(program);
            if !path.metadata().is_ok_and(|meta| meta.is_file()) {
                return Err(BrokerError::TreeNotReady { path });
            }
        }
        Ok(runtime)
    }

    /// Where node directories are made: the system's temporary directory,
    /// or the tree's `/tmp`, which the node can reach.
    pub(crate) fn temp_parent(&self) -> PathBuf {
        match self {
            Self::Host(_) => std::env::temp_dir(),
            Self::Tree { root } => root.join("tmp"),
        }
    }

    /// The path a node sees for the host's `path`, which lies under
    /// [`Runtime::temp_parent`].
    pub(crate) fn node_path(&self, path: &Path) -> PathBuf {
        match self {
            Self::Host(_) => path.to_owned(),
            Self::Tree { root } => match path.strip_prefix(root) {
                Ok(inside) => Path::new("/").join(inside),
                // Not reachable from inside the tree; the node's error will
                // name it.
                Err(_) => path.to_owned(),
            },
        }
    }

    /// Lines the node's `rabbitmq.conf` gets on top of the common ones.
    pub(crate) fn extra_config(&self) -> &'static str {
        match self {
            Self::Host(_) => "",
            Self::Tree { .. } => RABBITMQ4_CONFIG,
        }
    }

    /// `program` with the node's environment, run in the node's directory.
    pub(crate) fn command(&self, program: Program, env: &NodeEnv) -> Command {
        let mut command = match self {
            Self::Host(binaries) => Command::new(match program {
                Program::Server => &binaries.server,
                Program::Ctl => &binaries.ctl,
            }),
            Self::Tree { root } => {
                let mut command = Command::new("unshare");
                command
                    .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(IN_TREE)
                    .arg("sh")
                    .arg(root)
                    .arg(env.node_dir())
                    .arg(Self::tree_program(program));
                command
            }
        };
        env.apply(&mut command);
        command
    }

    /// The program, for error messages.
    pub(crate) fn describe(&self, program: Program) -> String {
        match self {
            Self::Host(_) => self.host_path(program).display().to_string(),
            Self::Tree { root } => format!(
                "unshare --mount … chroot {} {}",
                root.display(),
                Self::tree_program(program).display()
            ),
        }
    }

    /// The program as the host sees it.
    fn host_path(&self, program: Program) -> PathBuf {
        match self {
            Self::Host(binaries) => match program {
                Program::Server => binaries.server.clone(),
                Program::Ctl => binaries.ctl.clone(),
            },
            Self::Tree { root } => {
                let inside = Self::tree_program(program);
                root.join(inside.strip_prefix("/").unwrap_or(&inside))
            }
        }
    }

    fn tree_program(program: Program) -> PathBuf {
        Path::new(TREE_BIN_DIR).join(match program {
            Program::Server => "rabbitmq-server",
            Program::Ctl => "rabbitmqctl",
        })
    }
}

/// `HUTCH_RABBITMQ4_ROOT`, or the default tree.
fn tree_root() -> PathBuf {
    std::env::var_os(TREE_VAR)
        .filter(|root| !root.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_TREE), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths_are_seen_from_inside() {
        let tree = Runtime::Tree {
            root: PathBuf::from("/var/cache/t"),
        };
        assert_eq!(
            tree.node_path(Path::new("/var/cache/t/tmp/hutch-rabbitmq-x/mnesia")),
            Path::new("/tmp/hutch-rabbitmq-x/mnesia")
        );
        assert_eq!(tree.temp_parent(), Path::new("/var/cache/t/tmp"));
        assert_eq!(
            tree.host_path(Program::Ctl),
            Path::new("/var/cache/t/usr/lib/rabbitmq/bin/rabbitmqctl")
        );
        assert!(tree.extra_config().contains("queue_master_locator = false"));
    }

    #[test]
    fn a_missing_tree_says_how_to_build_it() {
        let error = Runtime::tree(PathBuf::from("/nonexistent/hutch-tree")).unwrap_err();
        assert!(
            error.to_string().contains("scripts/ensure-rabbitmq4"),
            "{error}"
        );
    }
}
