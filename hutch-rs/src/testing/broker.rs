//! A private RabbitMQ node: start, inspect, stop.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    BindingInfo, BrokerError, ConsumerInfo, ExchangeInfo, QueueInfo,
    command::{self, TimedOut},
    ctl::Ctl,
    info::{self, BindingRow, ConsumerRow, ExchangeRow, QueueRow},
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
/// Dropping the `Broker` (or calling [`Broker::stop`]) kills the node at
/// once (nothing of it is kept, so a clean shutdown would only cost time) and
/// removes its directory. A watchdog process does the same if the test
/// process ends without dropping it (for [`Broker::shared`], or when the
/// process is killed).
///
/// All inspection methods work on the default virtual host `/` and are
/// blocking; call them from async tests through
/// `tokio::task::spawn_blocking` if blocking the runtime matters, or simply
/// directly: each takes about a second.
pub struct Broker {
    node_name: String,
    ports: Ports,
    /// The TLS listener's port, for nodes from [`Broker::start_tls`].
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

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("node_name", &self.node_name)
            .field("amqp_port", &self.ports.amqp)
            .field("management_port", &self.ports.management)
            .field("dist_port", &self.ports.dist)
            .field("dir", &self.dir)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a new node and blocks until it accepts AMQP connections and its
    /// management API answers (usually 7–11 seconds).
    ///
    /// Fails if RabbitMQ is not installed (the error says how to install
    /// it), or with the tail of the node's output if it does not boot.
    pub fn start() -> Result<Broker, BrokerError> {
        Self::start_with(None, None)
    }

    /// Starts a new node as [`Broker::start`] does, with a TLS listener
    /// besides the plain one: it uses `files`, requires a client
    /// certificate signed by their CA, and accepts the EXTERNAL mechanism
    /// (a certificate login as the user named by its common name; create
    /// that user with [`Broker::rabbitmqctl`]). The files are copied into
    /// the node's directory. See [`Broker::amqps_uri`].
    ///
    /// ```no_run
    /// use hutch_rs::testing::{Broker, TlsNodeFiles};
    ///
    /// let broker = Broker::start_tls(&TlsNodeFiles {
    ///     ca_cert: "ca.pem".into(),
    ///     cert: "server.pem".into(),
    ///     key: "server.key".into(),
    /// })?;
    /// let uri = broker.amqps_uri().expect("a TLS node"); // amqps://guest:guest@127.0.0.1:<port>/%2f
    /// # let _ = uri;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn start_tls(files: &TlsNodeFiles) -> Result<Broker, BrokerError> {
        Self::start_with(Some(files), None)
    }

    /// Starts a new node as [`Broker::start`] does, with a TLS listener if
    /// `tls` says so (see [`Broker::start_tls`]) and `cookie` as its Erlang
    /// cookie if given: nodes that share a cookie can form a cluster.
    pub(crate) fn start_with(
        tls: Option<&TlsNodeFiles>,
        cookie: Option<&str>,
    ) -> Result<Broker, BrokerError> {
        let runtime = Runtime::from_env()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&runtime, tls, cookie) {
                Ok(broker) => return Ok(broker),
                Err(Failure { error, retry: true }) if attempt < START_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "port or node name taken; retrying");
                    attempt += 1;
                }
                Err(Failure { error, .. }) => return Err(error),
            }
        }
    }

    /// The node shared by the whole test binary, started on first use.
    ///
    /// It is never dropped; a watchdog stops it and removes its directory
    /// when the test process exits, however it exits. Tests sharing it
    /// should use unique queue and exchange names.
    ///
    /// # Panics
    ///
    /// If the node cannot be started, with the [`BrokerError`] message. A
    /// failed start is not retried by later calls; they panic with the same
    /// message.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Result<Broker, BrokerError>> = OnceLock::new();
        match SHARED.get_or_init(Broker::start) {
            Ok(broker) => broker,
            Err(error) => panic!("could not start the shared RabbitMQ test node: {error}"),
        }
    }

    /// The Erlang node name, e.g. `hutch-test-1234-0@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The RabbitMQ version the node runs, e.g. `3.10.8` or `4.0.5`, as its
    /// management API reports it (`rabbitmq_version` of `/api/overview`).
    ///
    /// Which RabbitMQ test nodes run is chosen by the environment variable
    /// `HUTCH_TEST_RABBITMQ` (see [the module docs](crate::testing)); tests
    /// that depend on a version-specific behaviour can branch on this:
    ///
    /// ```no_run
    /// let broker = hutch_rs::testing::Broker::shared();
    /// let rabbitmq_4 = broker.version().starts_with("4.");
    /// # let _ = rabbitmq_4;
    /// ```
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The major version of [`Broker::version`]: 3 or 4.
    pub fn major_version(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0)
    }

    /// The AMQP port on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.ports.amqp
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`: the default user on the
    /// default virtual host.
    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    /// The TLS listener's port on 127.0.0.1, for a node from
    /// [`Broker::start_tls`]; `None` otherwise.
    pub fn amqps_port(&self) -> Option<u16> {
        self.amqps_port
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f` for a node from
    /// [`Broker::start_tls`]; `None` otherwise. The broker's certificate
    /// must name 127.0.0.1, and the client must present a certificate.
    pub fn amqps_uri(&self) -> Option<String> {
        self.amqps_port
            .map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    /// The management HTTP port on 127.0.0.1.
    pub fn management_port(&self) -> u16 {
        self.ports.management
    }

    /// `http://127.0.0.1:<port>`; the API is under `/api/`, user `guest`,
    /// password `guest`.
    pub fn management_url(&self) -> String {
        self.management.base_url().to_owned()
    }

    /// The node's temporary directory: configuration, data (`mnesia/`), logs
    /// (`log/`) and the server's output (`server.stdout.log`,
    /// `server.stderr.log`). Removed when the node stops.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OS process id of the node's Erlang VM, read from its pid file;
    /// `None` if the file is missing (the node is not running).
    pub fn os_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `rabbitmqctl -n <node> <args>` with the node's environment (its
    /// `HOME` holds the Erlang cookie) and returns its stdout.
    ///
    /// Fails with stderr and the exit status if the command fails, or if it
    /// runs for more than two minutes (it is then killed). Each call starts
    /// an Erlang VM and takes about a second.
    ///
    /// ```no_run
    /// let broker = hutch_rs::testing::Broker::shared();
    /// broker.rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"])?;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, BrokerError> {
        self.ctl.run(args)
    }

    /// `GET /api/<path>` as `guest`; `path` is percent-encoded by the caller
    /// (the default virtual host is `%2f`), e.g. `"queues/%2f/orders"`.
    ///
    /// The management API's counters (message counts, rates) lag by up to a
    /// second; for exact message counts use [`Broker::queue`].
    pub fn management_get(&self, path: &str) -> Result<Value, BrokerError> {
        self.management
            .request("GET", path, None)?
            .ok_or_else(|| BrokerError::Parse {
                command: format!("GET {}/api/{path}", self.management.base_url()),
                detail: "the answer was empty".to_owned(),
            })
    }

    /// Sends `method /api/<path>` (`PUT`, `POST`, `DELETE`, …) as `guest`,
    /// with `body` as JSON, and returns the JSON answer (`None` if empty, as
    /// for most `PUT` and `DELETE` requests).
    ///
    /// ```no_run
    /// use serde_json::json;
    /// let broker = hutch_rs::testing::Broker::shared();
    /// broker.management_request("PUT", "queues/%2f/parked", Some(json!({"durable": true})))?;
    /// broker.management_request("DELETE", "queues/%2f/parked", None)?;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn management_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, BrokerError> {
        self.management.request(method, path, body.as_ref())
    }

    /// Every queue, with exact message counts at the moment of the call.
    pub fn queues(&self) -> Result<Vec<QueueInfo>, BrokerError> {
        let rows: Vec<QueueRow> = self.ctl.list("list_queues", info::QUEUE_COLUMNS)?;
        Ok(rows.into_iter().map(QueueInfo::from).collect())
    }

    /// The queue called `name`, or `None` if there is none.
    pub fn queue(&self, name: &str) -> Result<Option<QueueInfo>, BrokerError> {
        Ok(self.queues()?.into_iter().find(|queue| queue.name == name))
    }

    /// Every binding, including the default exchange's implicit ones.
    pub fn bindings(&self) -> Result<Vec<BindingInfo>, BrokerError> {
        let rows: Vec<BindingRow> = self.ctl.list("list_bindings", info::BINDING_COLUMNS)?;
        Ok(rows.into_iter().map(BindingInfo::from).collect())
    }

    /// Every exchange, including the predeclared `amq.*` ones and the
    /// default exchange `""`.
    pub fn exchanges(&self) -> Result<Vec<ExchangeInfo>, BrokerError> {
        let rows: Vec<ExchangeRow> = self.ctl.list("list_exchanges", info::EXCHANGE_COLUMNS)?;
        Ok(rows.into_iter().map(ExchangeInfo::from).collect())
    }

    /// Every consumer, with its queue and prefetch.
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>, BrokerError> {
        let rows: Vec<ConsumerRow> = self.ctl.list("list_consumers", info::CONSUMER_COLUMNS)?;
        Ok(rows.into_iter().map(ConsumerInfo::from).collect())
    }

    /// How many client connections the node has (on every virtual host).
    pub fn connection_count(&self) -> Result<usize, BrokerError> {
        let rows: Vec<Value> = self.ctl.list("list_connections", &["pid"])?;
        Ok(rows.len())
    }

    /// How many channels the node has, over all connections.
    pub fn channel_count(&self) -> Result<usize, BrokerError> {
        let rows: Vec<Value> = self.ctl.list("list_channels", &["pid"])?;
        Ok(rows.len())
    }

    /// Makes the broker close every client connection with `reason` (as a
    /// 320 CONNECTION_FORCED), as an operator or a failing node would.
    ///
    /// Returns once the broker has sent the closes; clients learn of them
    /// asynchronously, and connections disappear from
    /// [`Broker::connection_count`] once the clients have answered.
    pub fn close_all_connections(&self, reason: &str) -> Result<(), BrokerError> {
        self.ctl.run(&["-q", "close_all_connections", reason])?;
        Ok(())
    }

    /// Kills the node, waits for its processes to exit and removes its
    /// directory. The same happens on drop; this spells it out.
    ///
    /// For a clean shutdown as clients would see it (connections closed
    /// with 320 CONNECTION_FORCED), run `rabbitmqctl shutdown` first:
    ///
    /// ```no_run
    /// let broker = hutch_rs::testing::Broker::start()?;
    /// broker.rabbitmqctl(&["shutdown"])?;
    /// broker.stop();
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn stop(self) {
        drop(self);
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

impl Broker {
    fn start_once(
        runtime: &Runtime,
        tls: Option<&TlsNodeFiles>,
        cookie: Option<&str>,
    ) -> Result<Broker, Failure> {
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
        let mut broker = Broker {
            node_name,
            ports,
            amqps_port,
            management: Management::new(ports.management),
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
    /// `shutdown` through [`Broker::rabbitmqctl`] first.
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

impl Broker {
    /// Kills the node's Erlang VM, as a crashed machine would lose it, and
    /// waits for it to exit; its directory and watchdog stay, for
    /// [`Broker::restart_process`]. Returns whether it is known to be gone.
    pub(crate) fn kill_process(&self) -> bool {
        self.stop_node()
    }

    /// Starts the node again, with the same name, ports and data, after
    /// [`Broker::kill_process`], and blocks until it has booted.
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

impl Drop for Broker {
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
