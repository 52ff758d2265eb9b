//! A private RabbitMQ node: start, inspect, stop.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    BrokerError,
    command::{self, TimedOut},
    ctl::Ctl,
    layout::Layout,
    management::Management,
    ports::Ports,
    runtime::Runtime,
    server::{NodeEvent, Server},
    tls::{self, TlsNodeFiles},
    watchdog::Watchdog,
};

/// How many times a start is attempted when a port or the node name turned
/// out to be taken (another process grabbed it between our choosing and the
/// node binding it).
const START_ATTEMPTS: u32 = 4;

/// How long `rabbitmqctl wait` gives a node to boot; nodes boot in about ten
/// seconds, but a loaded CI machine can take much longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the management listener may take to answer after the boot
/// completed. It is started during the boot, so this is a margin only.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a killed node may take to exit (it takes milliseconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Numbers the nodes of this process, for unique names.
static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private RabbitMQ node, started for tests and stopped when dropped.
///
/// The node has its own name (`hutch-test-<pid>-<n>@localhost`), its own
/// ports on 127.0.0.1 (AMQP, Erlang distribution, management HTTP), its own
/// temporary directory (data, logs, configuration, Erlang cookie) and the
/// management plugin enabled. Nothing of the machine's own RabbitMQ
/// configuration is read, and no other node is touched.
///
/// Dropping it kills the node at once (nothing of it is kept, so a clean
/// shutdown would only cost time) and removes its directory. A watchdog
/// process does the same if the test process ends without dropping it (for
/// [`Broker::shared`](super::Broker::shared), or when the process is
/// killed). [`Broker`](super::Broker) handles hold it.
pub(crate) struct Node {
    node_name: String,
    ports: Ports,
    /// The TLS listener's port, for nodes started with one.
    amqps_port: Option<u16>,
    ctl: Ctl,
    /// How the node's programs run, for a restart.
    runtime: Runtime,
    management: Management,
    server: Server,
    /// Events of the node process; only `Exited` arrives after startup.
    events: Mutex<Receiver<NodeEvent>>,
    /// Whether the `Exited` event has been seen.
    exited: AtomicBool,
    dir: PathBuf,
    /// `dir` as the node sees it (its path inside the tree for RabbitMQ 4).
    node_dir: PathBuf,
    /// RabbitMQ's version, from the management API.
    version: String,
    pid_file: PathBuf,
    /// `None` once stopped.
    watchdog: Option<Watchdog>,
    /// Holds the directory; `None` once stopped.
    layout: Option<Layout>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("node_name", &self.node_name)
            .field("amqp_port", &self.ports.amqp)
            .field("management_port", &self.ports.management)
            .field("dist_port", &self.ports.dist)
            .field("dir", &self.dir)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a new node, with a TLS listener if `tls` says so and `cookie`
    /// as its Erlang cookie if given (nodes that share a cookie can form a
    /// cluster); retries with new ports and a new name when those turned out
    /// to be taken.
    pub(crate) fn start(
        tls: Option<&TlsNodeFiles>,
        cookie: Option<&str>,
    ) -> Result<Node, BrokerError> {
        let runtime = Runtime::from_env()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&runtime, tls, cookie) {
                Ok(node) => return Ok(node),
                Err(Failure { error, retry: true }) if attempt < START_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "port or node name taken; retrying");
                    attempt += 1;
                }
                Err(Failure { error, .. }) => return Err(error),
            }
        }
    }

    /// The Erlang node name.
    pub(crate) fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The RabbitMQ version, from the management API.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// The node's ports on 127.0.0.1.
    pub(crate) fn ports(&self) -> Ports {
        self.ports
    }

    /// The TLS listener's port, for a node started with one.
    pub(crate) fn amqps_port(&self) -> Option<u16> {
        self.amqps_port
    }

    /// The node's management API, as `guest`.
    pub(crate) fn management(&self) -> &Management {
        &self.management
    }

    /// `rabbitmqctl -n <node>`.
    pub(crate) fn ctl(&self) -> &Ctl {
        &self.ctl
    }

    /// The node's temporary directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OS process id of the node's Erlang VM, from its pid file.
    pub(crate) fn os_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// A failed start, and whether a new attempt with new ports and a new name
/// could succeed.
struct Failure {
    error: BrokerError,
    retry: bool,
}

impl From<BrokerError> for Failure {
    fn from(error: BrokerError) -> Self {
        Self {
            error,
            retry: false,
        }
    }
}

impl Node {
    fn start_once(
        runtime: &Runtime,
        tls: Option<&TlsNodeFiles>,
        cookie: Option<&str>,
    ) -> Result<Node, Failure> {
        let node_name = format!(
            "hutch-test-{}-{}@localhost",
            std::process::id(),
            NODE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ports = Ports::pick().map_err(|source| BrokerError::Setup {
            what: "choosing free ports".to_owned(),
            source,
        })?;
        let layout = Layout::create_in(&node_name, ports, runtime, cookie)?;
        let amqps_port = tls
            .map(|files| {
                let port = tls::pick_port(ports)?;
                tls::configure(layout.root(), layout.node_root(), files, port)?;
                Ok(port)
            })
            .transpose()
            .map_err(|source| BrokerError::Setup {
                what: "configuring the TLS listener".to_owned(),
                source,
            })?;
        tracing::debug!(
            node_name,
            ?ports,
            dir = %layout.root().display(),
            "starting RabbitMQ test node"
        );

        // The watchdog first, so that no node ever runs unwatched.
        let mut watchdog = Watchdog::spawn(&layout)?;
        let (events_sender, events) = mpsc::channel();
        let server = match Server::spawn(runtime, &layout, events_sender.clone()) {
            Ok(server) => server,
            Err(error) => {
                watchdog.finish(true);
                return Err(error.into());
            }
        };
        watchdog.watch(server.pid());
        let ctl = Ctl::new(runtime.clone(), node_name.clone(), layout.env().clone());
        let mut broker = Node {
            node_name,
            ports,
            amqps_port,
            management: Management::local(ports.management),
            server,
            events: Mutex::new(events),
            exited: AtomicBool::new(false),
            dir: layout.root().to_owned(),
            node_dir: layout.node_root().to_owned(),
            version: String::new(),
            pid_file: layout.pid_file(),
            watchdog: Some(watchdog),
            ctl,
            runtime: runtime.clone(),
            layout: Some(layout),
        };
        // From here on, an early return drops `broker`, which stops the
        // node and removes its directory.
        broker.await_boot(events_sender)?;
        broker.version = broker.await_management()?;
        tracing::debug!(
            node_name = broker.node_name,
            amqp_port = broker.ports.amqp,
            "RabbitMQ test node ready"
        );
        Ok(broker)
    }

    /// Waits for whichever comes first: `rabbitmqctl wait` reporting the node
    /// booted, or the node exiting.
    fn await_boot(&self, events_sender: mpsc::Sender<NodeEvent>) -> Result<(), Failure> {
        // `wait --pid` follows the server script: unlike `wait <pidfile>`,
        // it gives up as soon as the script is gone, even when the node died
        // before writing its pid file.
        let ctl = self.ctl.clone();
        let pid = self.server.pid().to_string();
        let timeout = BOOT_TIMEOUT.as_secs().to_string();
        let args =
            ["wait", "--pid", pid.as_str(), "--timeout", timeout.as_str()].map(str::to_owned);
        thread::Builder::new()
            .name(format!("rabbitmqctl-wait-{pid}"))
            .spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let command = ctl.command(&args);
                let outcome = command::run_bounded(command, BOOT_TIMEOUT + Duration::from_secs(30));
                let _ = events_sender.send(NodeEvent::Ready(outcome));
            })
            .map_err(|source| BrokerError::Spawn {
                program: "a thread to run rabbitmqctl wait".to_owned(),
                source,
            })?;

        let events = self
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let reason = match events.recv() {
            Ok(NodeEvent::Ready(Ok(Ok(finished)))) if finished.status.success() => return Ok(()),
            Ok(NodeEvent::Ready(Ok(Ok(finished)))) => format!(
                "`rabbitmqctl wait` failed ({}): {} {}",
                finished.status,
                finished.stdout.trim(),
                finished.stderr.trim()
            ),
            Ok(NodeEvent::Ready(Ok(Err(TimedOut)))) => {
                format!("it was not ready after {BOOT_TIMEOUT:?}")
            }
            Ok(NodeEvent::Ready(Err(error))) => {
                format!("could not run `rabbitmqctl wait`: {error}")
            }
            Ok(NodeEvent::Exited(status)) => {
                self.exited.store(true, Ordering::Relaxed);
                match status {
                    Ok(status) => format!("it exited during startup ({status})"),
                    Err(error) => format!("it exited during startup ({error})"),
                }
            }
            Err(mpsc::RecvError) => "its watcher threads ended unexpectedly".to_owned(),
        };
        drop(events);
        // The node is usually still crashing when `wait` gives up; its last
        // words (the reason) come with its exit.
        self.await_exit(Duration::from_secs(15));
        Err(self.start_failure(reason))
    }

    /// Waits until `GET /api/overview` answers and returns the RabbitMQ
    /// version it names. The listener is started during the boot that was
    /// just awaited, so the first request nearly always succeeds; the short
    /// retries only cover a slow listener.
    fn await_management(&self) -> Result<String, Failure> {
        let deadline = Instant::now() + MANAGEMENT_TIMEOUT;
        loop {
            match self.management.request("GET", "overview", None) {
                Ok(Some(overview)) => {
                    return match overview["rabbitmq_version"].as_str() {
                        Some(version) => Ok(version.to_owned()),
                        None => Err(self.start_failure(format!(
                            "/api/overview names no rabbitmq_version: {overview}"
                        ))),
                    };
                }
                Ok(None) => {
                    return Err(self.start_failure(
                        "the management API answered /api/overview with nothing".to_owned(),
                    ));
                }
                Err(error) if Instant::now() >= deadline => {
                    return Err(self.start_failure(format!(
                        "the management API did not answer within {MANAGEMENT_TIMEOUT:?}: {error}"
                    )));
                }
                Err(error) => {
                    tracing::debug!(%error, "management API not answering yet");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The error for a node that did not start, with its output; retryable
    /// if that output shows a port or the name was taken.
    fn start_failure(&self, reason: String) -> Failure {
        let (log_tail, output) = self
            .layout
            .as_ref()
            .map(|layout| (layout.output_tail(), layout.output()))
            .unwrap_or_default();
        // The whole output, not the tail: the cause can be many lines up.
        let lowercase = output.to_lowercase();
        let retry = [
            "eaddrinuse",
            "dist_port_already_used",
            "already in use",
            "is in use",
            "already running",
        ]
        .iter()
        .any(|needle| lowercase.contains(needle));
        Failure {
            error: BrokerError::StartFailed {
                node: self.node_name.clone(),
                reason,
                log_tail,
            },
            retry,
        }
    }

    /// Stops the node and returns whether it is known to be gone.
    ///
    /// The node is killed, not shut down: nothing of a test node is kept,
    /// and RabbitMQ 3.10's clean shutdown idles five seconds in the
    /// management agent (rabbitmq-server#11070, fixed in 3.13), which every
    /// test with a node of its own would pay. Tests that need a clean
    /// shutdown as clients see it can run `rabbitmqctl stop_app` or
    /// `shutdown` through [`Broker::rabbitmqctl`](super::Broker::rabbitmqctl) first.
    fn stop_node(&self) -> bool {
        if self.await_exit(Duration::ZERO) {
            return true;
        }
        // The VM, not its whole process group: the server script waits for
        // the VM and so reaps it. Killed together, the script could die
        // first and leave the VM a zombie for init to reap, some time later.
        match self.vm_pid() {
            Some(pid) => command::kill_process(pid),
            // The server script has not been reaped (no `Exited` event yet),
            // so its pid, the node's process group id, is still ours.
            None => command::kill_process_group(self.server.pid()),
        }
        if self.await_exit(STOP_TIMEOUT) {
            return true;
        }
        tracing::warn!(
            node = self.node_name,
            "RabbitMQ test node did not exit within {STOP_TIMEOUT:?}; killing its process group"
        );
        command::kill_process_group(self.server.pid());
        self.await_exit(STOP_TIMEOUT)
    }

    /// The pid in the pid file, if it is this node's VM: a pid file can
    /// outlive its process, whose pid can then be reused. Where /proc exists
    /// the VM's command line must name the node's directory (`-home <dir>`).
    fn vm_pid(&self) -> Option<u32> {
        let pid = self.os_pid()?;
        if !Path::new("/proc/self").exists() {
            return Some(pid);
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = format!("-home\0{}\0", self.node_dir.display());
        let ours = cmdline
            .windows(needle.len())
            .any(|window| window == needle.as_bytes());
        ours.then_some(pid)
    }

    /// Waits up to `timeout` for the server script to exit.
    fn await_exit(&self, timeout: Duration) -> bool {
        if self.exited.load(Ordering::Relaxed) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let events = self
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loop {
            match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(NodeEvent::Exited(_)) | Err(RecvTimeoutError::Disconnected) => {
                    self.exited.store(true, Ordering::Relaxed);
                    return true;
                }
                // A late answer of `rabbitmqctl wait` after a failed start.
                Ok(NodeEvent::Ready(_)) => {}
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

impl Node {
    /// Kills the node's Erlang VM, as a crashed machine would lose it, and
    /// waits for it to exit; its directory and watchdog stay, for
    /// [`Node::restart_process`]. Returns whether it is known to be gone.
    pub(crate) fn kill_process(&self) -> bool {
        self.stop_node()
    }

    /// Starts the node again, with the same name, ports and data, after
    /// [`Node::kill_process`], and blocks until it has booted.
    pub(crate) fn restart_process(&mut self) -> Result<(), BrokerError> {
        let Some(layout) = self.layout.as_ref() else {
            return Err(BrokerError::NoRunningNode);
        };
        let (events_sender, events) = mpsc::channel();
        let server = Server::spawn(&self.runtime, layout, events_sender.clone())?;
        if let Some(watchdog) = self.watchdog.as_mut() {
            watchdog.watch(server.pid());
        }
        self.server = server;
        self.events = Mutex::new(events);
        self.exited.store(false, Ordering::Relaxed);
        tracing::debug!(node = self.node_name, "restarting RabbitMQ test node");
        self.await_boot(events_sender)
            .map_err(|failure| failure.error)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(watchdog) = self.watchdog.take() else {
            return;
        };
        let stopped = self.stop_node();
        tracing::debug!(node = self.node_name, stopped, "RabbitMQ test node stopped");
        // The watchdog removes the directory (and, if the node still runs,
        // tries once more to stop it); then the directory guard has nothing
        // left to do.
        watchdog.finish(stopped);
        drop(self.layout.take());
    }
}
