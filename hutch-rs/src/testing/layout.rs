//! A node's private directory, its files and the environment that points
//! RabbitMQ at them.

use std::{
    ffi::OsString,
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

use super::{BrokerError, ports::Ports, runtime::Runtime};

/// Everything a node keeps on disk, inside one temporary directory.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Removes the directory when dropped, unless the watchdog already has.
    _dir: TempDir,
    root: PathBuf,
    /// `root` as the node sees it (differs when it runs in a chroot).
    node_root: PathBuf,
    env: NodeEnv,
}

impl Layout {
    /// Creates the directory and writes the node's configuration, for a
    /// node of the machine's own RabbitMQ.
    #[cfg(test)]
    pub(crate) fn create(node_name: &str, ports: Ports) -> Result<Self, BrokerError> {
        let host = Runtime::Host(super::binaries::Binaries {
            server: PathBuf::new(),
            ctl: PathBuf::new(),
        });
        Self::create_in(node_name, ports, &host, None)
    }

    /// Creates the directory where `runtime`'s nodes can reach it and writes
    /// the node's configuration, with every path as the node sees it. The
    /// node gets `cookie` as its Erlang cookie (nodes of one cluster share
    /// one), or a random one of its own.
    pub(crate) fn create_in(
        node_name: &str,
        ports: Ports,
        runtime: &Runtime,
        cookie: Option<&str>,
    ) -> Result<Self, BrokerError> {
        let setup = |what: &str| {
            let what = what.to_owned();
            move |source| BrokerError::Setup { what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("hutch-rabbitmq-")
            .tempdir_in(runtime.temp_parent())
            .map_err(setup("creating a temporary directory"))?;
        let root = dir.path().to_owned();
        let path = |name: &str| root.join(name);
        let node_root = runtime.node_path(&root);
        let node_path = |name: &str| node_root.join(name);

        write(
            &path("rabbitmq.conf"),
            &format!(
                "# Written by hutch_rs::testing for a throwaway test node.\n\
                 listeners.tcp.1 = 127.0.0.1:{amqp}\n\
                 management.tcp.port = {management}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 # Test machines can be short of disk: pinned low so that a\n\
                 # different default cannot block publishers.\n\
                 disk_free_limit.absolute = 50MB\n\
                 # Management counters refresh every second, not every five.\n\
                 collect_statistics_interval = 1000\n\
                 {extra}",
                amqp = ports.amqp,
                management = ports.management,
                extra = runtime.extra_config(),
            ),
        )
        .map_err(setup("writing rabbitmq.conf"))?;
        write(&path("enabled_plugins"), "[rabbitmq_management].\n")
            .map_err(setup("writing enabled_plugins"))?;
        // Empty on purpose: it replaces /etc/rabbitmq/rabbitmq-env.conf, so
        // that nothing from the machine's own broker leaks in.
        write(&path("rabbitmq-env.conf"), "").map_err(setup("writing rabbitmq-env.conf"))?;
        write_cookie(&path(".erlang.cookie"), cookie)
            .map_err(setup("writing the Erlang cookie"))?;

        let ip = "127.0.0.1";
        let vars: Vec<(&'static str, OsString)> = vec![
            // The Erlang cookie lives in $HOME; the node and every rabbitmqctl
            // call must agree on it.
            ("HOME", node_root.clone().into()),
            ("RABBITMQ_NODENAME", node_name.into()),
            ("RABBITMQ_NODE_IP_ADDRESS", ip.into()),
            ("RABBITMQ_NODE_PORT", ports.amqp.to_string().into()),
            ("RABBITMQ_DIST_PORT", ports.dist.to_string().into()),
            ("RABBITMQ_MNESIA_BASE", node_path("mnesia").into()),
            ("RABBITMQ_LOG_BASE", node_path("log").into()),
            ("RABBITMQ_PID_FILE", node_path("node.pid").into()),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node_path("enabled_plugins").into(),
            ),
            ("RABBITMQ_CONFIG_FILE", node_path("rabbitmq.conf").into()),
            (
                "RABBITMQ_CONF_ENV_FILE",
                node_path("rabbitmq-env.conf").into(),
            ),
            // Deliberately absent, so /etc/rabbitmq/advanced.config is not read.
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node_path("advanced.config").into(),
            ),
            // Keep Erlang distribution on the loopback interface too.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            // rabbitmqctl otherwise listens on one of only eleven ports
            // (35672-35682) machine-wide, which parallel test runs exhaust;
            // 0 lets the kernel choose.
            ("RABBITMQ_CTL_DIST_PORT_MIN", "0".into()),
            ("RABBITMQ_CTL_DIST_PORT_MAX", "0".into()),
        ];
        Ok(Self {
            _dir: dir,
            root: root.clone(),
            node_root: node_root.clone(),
            env: NodeEnv {
                vars,
                root,
                node_root,
            },
        })
    }

    /// The directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The directory as the node sees it: [`Layout::root`] on the host, its
    /// path inside the tree for a node run through chroot.
    pub(crate) fn node_root(&self) -> &Path {
        &self.node_root
    }

    /// The environment every RabbitMQ program for this node runs with.
    pub(crate) fn env(&self) -> &NodeEnv {
        &self.env
    }

    /// Where the node writes its OS process id once it runs.
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.root.join("node.pid")
    }

    /// Where the server script's stdout goes.
    pub(crate) fn stdout_log(&self) -> PathBuf {
        self.root.join("server.stdout.log")
    }

    /// Where the server script's stderr goes.
    pub(crate) fn stderr_log(&self) -> PathBuf {
        self.root.join("server.stderr.log")
    }

    /// Where the watchdog's output goes.
    pub(crate) fn watchdog_log(&self) -> PathBuf {
        self.root.join("watchdog.log")
    }

    /// Everything the server script printed so far, stderr first.
    pub(crate) fn output(&self) -> String {
        let read = |path: PathBuf| fs::read_to_string(path).unwrap_or_default();
        format!("{}\n{}", read(self.stderr_log()), read(self.stdout_log()))
    }

    /// What the server printed, condensed for an error message: the lines
    /// that name an error (RabbitMQ prints the cause on a "BOOT FAILED" /
    /// "ERROR:" line, or as one long `init terminating` term), then the
    /// last lines of stderr and stdout.
    pub(crate) fn output_tail(&self) -> String {
        let mut tail = String::new();
        let stderr = fs::read_to_string(self.stderr_log()).unwrap_or_default();
        let stdout = fs::read_to_string(self.stdout_log()).unwrap_or_default();
        let errors: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|line| {
                let line = line.to_lowercase();
                ["error:", "boot failed", "init terminating", "eaddrinuse"]
                    .iter()
                    .any(|needle| line.contains(needle))
            })
            .take(10)
            .collect();
        if !errors.is_empty() {
            tail.push_str(&format!("--- errors ---\n{}\n", cut_lines(&errors)));
        }
        // No paths: the directory is removed with the failed node.
        for (label, text, count) in [("stderr", &stderr, 20), ("stdout", &stdout, 10)] {
            let lines: Vec<&str> = text.lines().collect();
            let last = &lines[lines.len().saturating_sub(count)..];
            if last.iter().any(|line| !line.trim().is_empty()) {
                tail.push_str(&format!("--- end of {label} ---\n{}\n", cut_lines(last)));
            }
        }
        if tail.is_empty() {
            tail.push_str("(the node printed nothing)");
        }
        tail
    }
}

/// The environment of one node, applied to every program run for it.
#[derive(Debug, Clone)]
pub(crate) struct NodeEnv {
    vars: Vec<(&'static str, OsString)>,
    root: PathBuf,
    node_root: PathBuf,
}

impl NodeEnv {
    /// The node's directory as the node sees it.
    pub(crate) fn node_dir(&self) -> &Path {
        &self.node_root
    }

    /// Sets this node's environment on `command` and runs it in the node's
    /// directory, so that crash dumps land there and not in the test's
    /// working directory.
    pub(crate) fn apply(&self, command: &mut Command) {
        // RABBITMQ_* settings of the caller's shell (say, a developer's
        // RABBITMQ_USE_LONGNAME) would change how the node is named or where
        // it looks; only ours count.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                command.env_remove(key);
            }
        }
        command.envs(self.vars.iter().map(|(key, value)| (key, value)));
        command.current_dir(&self.root);
    }
}

fn write(path: &Path, contents: &str) -> io::Result<()> {
    fs::write(path, contents)
}

/// Writes the cookie (`cookie`, or a random one) readable only by us before
/// anything starts: if the node and a concurrent `rabbitmqctl` both created
/// it, they could end up with different ones. Erlang refuses a cookie file
/// others can read.
fn write_cookie(path: &Path, cookie: Option<&str>) -> io::Result<()> {
    let cookie = cookie.map_or_else(new_cookie, str::to_owned);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    file.write_all(cookie.as_bytes())
}

/// A random Erlang cookie.
pub(crate) fn new_cookie() -> String {
    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
}

/// `lines`, each cut to a readable length (Erlang prints whole crash
/// reports on one line).
fn cut_lines(lines: &[&str]) -> String {
    const MAX_LINE: usize = 600;
    lines
        .iter()
        .map(|line| match line.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut() {
        assert_eq!(cut_lines(&["a", "b"]), "a\nb");
        let long = "x".repeat(700);
        assert_eq!(cut_lines(&[&long]).chars().count(), 601);
    }

    #[test]
    fn the_tail_leads_with_errors() {
        let layout = Layout::create(
            "n@localhost",
            Ports {
                amqp: 1,
                dist: 2,
                management: 3,
            },
        )
        .unwrap();
        let mut stdout = String::from("BOOT FAILED\n");
        for i in 0..100 {
            stdout.push_str(&format!("line {i}\n"));
        }
        fs::write(layout.stdout_log(), stdout).unwrap();
        let tail = layout.output_tail();
        assert!(tail.starts_with("--- errors ---\nBOOT FAILED\n"), "{tail}");
        assert!(
            tail.contains("line 99") && !tail.contains("line 50\n"),
            "{tail}"
        );
    }

    #[test]
    fn creates_files_and_a_private_cookie() {
        use std::os::unix::fs::PermissionsExt;
        let ports = Ports {
            amqp: 1,
            dist: 2,
            management: 3,
        };
        let layout = Layout::create("n@localhost", ports).unwrap();
        let conf = fs::read_to_string(layout.root().join("rabbitmq.conf")).unwrap();
        assert!(conf.contains("listeners.tcp.1 = 127.0.0.1:1\n"));
        assert!(conf.contains("management.tcp.port = 3\n"));
        let cookie = layout.root().join(".erlang.cookie");
        let mode = fs::metadata(cookie).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        assert!(!layout.root().join("advanced.config").exists());
    }

    #[test]
    fn a_given_cookie_is_written() {
        let host = Runtime::Host(crate::testing::binaries::Binaries {
            server: PathBuf::new(),
            ctl: PathBuf::new(),
        });
        let ports = Ports {
            amqp: 1,
            dist: 2,
            management: 3,
        };
        let layout = Layout::create_in("n@localhost", ports, &host, Some("SHARED")).unwrap();
        let cookie = fs::read_to_string(layout.root().join(".erlang.cookie")).unwrap();
        assert_eq!(cookie, "SHARED");
        assert_ne!(new_cookie(), new_cookie());
    }
}
