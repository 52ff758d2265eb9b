//! A handle on a test broker: a private node or a virtual host of one.

use std::{
    fmt,
    path::Path,
    sync::{Arc, OnceLock},
};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    BindingInfo, BrokerError, ConsumerInfo, ExchangeInfo, QueueInfo,
    existing::{self, Existing},
    info::{
        self, BindingRow, ConsumerRow, ExchangeRow, ManagementBinding, ManagementConsumer,
        ManagementExchange, ManagementQueue, QueueRow,
    },
    management::Management,
    node::Node,
    tls::TlsNodeFiles,
    vhost,
};

/// What a [`Broker`] handle works on.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per broker, behind the handles' Arc: boxing would save nothing"
)]
enum Target {
    /// A node the harness started and stops.
    Node(Node),
    /// A broker someone else runs (`HUTCH_TEST_URI`).
    Existing(Existing),
}

impl Target {
    fn management(&self) -> &Management {
        match self {
            Self::Node(node) => node.management(),
            Self::Existing(existing) => existing.management(),
        }
    }

    /// The user the tests connect as.
    fn username(&self) -> &str {
        match self {
            Self::Node(_) => "guest",
            Self::Existing(existing) => existing.username(),
        }
    }
}

/// A test broker: a private RabbitMQ node, or a virtual host of one.
///
/// [`Broker::start`] starts a node of the test's own: its own name
/// (`hutch-test-<pid>-<n>@localhost`), its own ports on 127.0.0.1 (AMQP,
/// Erlang distribution, management HTTP), its own temporary directory
/// (data, logs, configuration, Erlang cookie) and the management plugin
/// enabled. Nothing of the machine's own RabbitMQ configuration is read, and
/// no other node is touched. Its handle works on the default virtual host
/// `/`.
///
/// [`Broker::isolated`] gives a handle on the same node scoped to a new
/// virtual host of its own, deleted when that handle is dropped: tests that
/// share one node (see [`Broker::shared`]) see nothing of each other.
///
/// With `HUTCH_TEST_URI` set, no node is started: [`Broker::start`] and
/// [`Broker::shared`] give virtual hosts of that existing broker (see
/// [`Broker::existing`] and [the module docs](crate::testing)).
///
/// Dropping the last handle of a node (or calling [`Broker::stop`]) kills
/// the node at once (nothing of it is kept, so a clean shutdown would only
/// cost time) and removes its directory. A watchdog process does the same
/// if the test process ends without dropping it (for [`Broker::shared`], or
/// when the process is killed).
///
/// All inspection methods work on the handle's virtual host and are
/// blocking; call them from async tests through
/// `tokio::task::spawn_blocking` if blocking the runtime matters, or simply
/// directly: each takes about a second.
pub struct Broker {
    target: Arc<Target>,
    /// The virtual host this handle works on.
    vhost: String,
    /// Whether this handle made `vhost`, and so deletes it when dropped.
    owns_vhost: bool,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("target", &self.target)
            .field("vhost", &self.vhost)
            .finish()
    }
}

impl Broker {
    /// Starts a new node and blocks until it accepts AMQP connections and its
    /// management API answers (usually 7–11 seconds).
    ///
    /// With `HUTCH_TEST_URI` set, starts nothing: the handle is a new
    /// virtual host of that broker, as [`Broker::existing`] makes (the
    /// management API's URL is `HUTCH_TEST_MANAGEMENT_URL`, or port 15672 of
    /// the URI's host).
    ///
    /// Fails if RabbitMQ is not installed (the error lists where the harness
    /// looked and says how to install it), or with the tail of the node's
    /// output if it does not boot.
    pub fn start() -> Result<Broker, BrokerError> {
        match Existing::from_env()? {
            Some(existing) => Self::in_new_vhost(Arc::new(Target::Existing(existing))),
            None => Self::start_with(None, None),
        }
    }

    /// Starts a new node as [`Broker::start`] does, with a TLS listener
    /// besides the plain one: it uses `files`, requires a client
    /// certificate signed by their CA, and accepts the EXTERNAL mechanism
    /// (a certificate login as the user named by its common name; create
    /// that user with [`Broker::rabbitmqctl`]). The files are copied into
    /// the node's directory. See [`Broker::amqps_uri`].
    ///
    /// This always starts a private node, `HUTCH_TEST_URI` or not: the
    /// listener is part of the node's configuration.
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

    /// Starts a new private node (whatever `HUTCH_TEST_URI` says), with a
    /// TLS listener if `tls` says so (see [`Broker::start_tls`]) and
    /// `cookie` as its Erlang cookie if given: nodes that share a cookie can
    /// form a cluster.
    pub(crate) fn start_with(
        tls: Option<&TlsNodeFiles>,
        cookie: Option<&str>,
    ) -> Result<Broker, BrokerError> {
        Ok(Broker {
            target: Arc::new(Target::Node(Node::start(tls, cookie)?)),
            vhost: "/".to_owned(),
            owns_vhost: false,
        })
    }

    /// The broker shared by the whole test binary, set up on first use: a
    /// node started as [`Broker::start`] does, working on its default
    /// virtual host `/`; with `HUTCH_TEST_URI` set, one virtual host of that
    /// broker.
    ///
    /// It is never dropped; a watchdog stops the node and removes its
    /// directory when the test process exits, however it exits. (A virtual
    /// host of an existing broker stays there until the next test process
    /// of the same machine sets up one of its own there, which deletes
    /// the virtual hosts ended processes of this machine left.) Tests sharing
    /// it should use unique queue and exchange names, or take a virtual host
    /// of their own with [`Broker::isolated`].
    ///
    /// # Panics
    ///
    /// If the broker cannot be set up, with the [`BrokerError`] message. A
    /// failed start is not retried by later calls; they panic with the same
    /// message.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Result<Broker, BrokerError>> = OnceLock::new();
        match SHARED.get_or_init(Broker::start) {
            Ok(broker) => broker,
            Err(error) => panic!("could not set up the shared RabbitMQ test broker: {error}"),
        }
    }

    /// A new virtual host of the RabbitMQ you run yourself, reached at
    /// `amqp_uri` (e.g. `amqp://guest:guest@localhost:5672/`; its own
    /// virtual host is ignored) and at `management_url` (by default
    /// `http://<host of amqp_uri>:15672`), logged in as the URI's user.
    ///
    /// This is what [`Broker::start`] does when `HUTCH_TEST_URI` is set. The
    /// virtual host gets a unique name (`hutch-test-<pid>-<n>-<random>`),
    /// the URI's user every permission on it, and is deleted, with
    /// everything in it, when the handle is dropped. Test virtual hosts that
    /// ended processes of this machine left behind (a killed test's, or
    /// [`Broker::shared`]'s) are deleted first. The user must be
    /// allowed to create virtual hosts (tag `administrator`); the management
    /// plugin must be enabled (the docker image `rabbitmq:3-management`).
    ///
    /// Nothing of the node itself is the test's: what needs a node of its
    /// own ([`Broker::rabbitmqctl`], [`Broker::os_pid`], restarts, TLS,
    /// clusters) fails with [`BrokerError::NeedsPrivateNode`] or is
    /// `None`; see [`Broker::has_private_node`].
    ///
    /// Fails, saying what to check, if the URI is malformed, the management
    /// API does not answer, or it refuses the credentials.
    ///
    /// ```no_run
    /// use hutch_rs::testing::Broker;
    ///
    /// let broker = Broker::existing("amqp://guest:guest@localhost:5672/", None)?;
    /// let uri = broker.amqp_uri(); // amqp://guest:guest@localhost:5672/hutch-test-…
    /// # let _ = uri;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn existing(amqp_uri: &str, management_url: Option<&str>) -> Result<Broker, BrokerError> {
        let existing = Existing::connect(amqp_uri, management_url)?;
        Self::in_new_vhost(Arc::new(Target::Existing(existing)))
    }

    /// A handle on the same broker, working on a new virtual host of its
    /// own (created through the management API, deleted with everything in
    /// it when the handle is dropped).
    ///
    /// On a private node, the node stays up as long as any of its handles
    /// does. This is how tests share one node without seeing each other's
    /// queues, exchanges and connections:
    ///
    /// ```no_run
    /// use hutch_rs::testing::Broker;
    ///
    /// let broker = Broker::shared().isolated()?;
    /// let uri = broker.amqp_uri(); // amqp://guest:guest@127.0.0.1:<port>/hutch-test-…
    /// # let _ = uri;
    /// assert!(broker.queues()?.is_empty());
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn isolated(&self) -> Result<Broker, BrokerError> {
        Self::in_new_vhost(Arc::clone(&self.target))
    }

    fn in_new_vhost(target: Arc<Target>) -> Result<Broker, BrokerError> {
        let management = target.management();
        if let Target::Existing(_) = *target {
            // Nothing else removes them; a failure here only leaves them.
            if let Err(error) = vhost::sweep_leftovers(management) {
                tracing::warn!(%error, "could not delete leftover test virtual hosts");
            }
        }
        let name = vhost::unique_name();
        vhost::create(management, &name, target.username()).map_err(|error| {
            existing::explain_vhost_refusal(management.base_url(), target.username(), error)
        })?;
        tracing::debug!(vhost = name, "created test virtual host");
        Ok(Broker {
            target,
            vhost: name,
            owns_vhost: true,
        })
    }

    /// The virtual host this handle works on: `/` for a node from
    /// [`Broker::start`], `hutch-test-…` for one from [`Broker::isolated`]
    /// or an existing broker.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// [`Broker::vhost`] encoded for a management API path or an AMQP URI,
    /// e.g. `%2f` for `/`: `format!("queues/{}/orders", broker.encoded_vhost())`.
    pub fn encoded_vhost(&self) -> String {
        vhost::encode(&self.vhost)
    }

    /// Whether the handle is on a node the harness started (and so can
    /// stop, restart and run `rabbitmqctl` against); `false` on an existing
    /// broker (`HUTCH_TEST_URI`). Tests that need a node of their own can
    /// skip when it is `false`.
    pub fn has_private_node(&self) -> bool {
        matches!(*self.target, Target::Node(_))
    }

    /// The Erlang node name, e.g. `hutch-test-1234-0@localhost` (an existing
    /// broker's as its management API names it).
    pub fn node_name(&self) -> &str {
        match &*self.target {
            Target::Node(node) => node.node_name(),
            Target::Existing(existing) => existing.node_name(),
        }
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
        match &*self.target {
            Target::Node(node) => node.version(),
            Target::Existing(existing) => existing.version(),
        }
    }

    /// The major version of [`Broker::version`]: 3 or 4.
    pub fn major_version(&self) -> u32 {
        self.version()
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0)
    }

    /// The AMQP port (on 127.0.0.1 for a private node).
    pub fn amqp_port(&self) -> u16 {
        match &*self.target {
            Target::Node(node) => node.ports().amqp,
            Target::Existing(existing) => existing.amqp_port(),
        }
    }

    /// The URI of the handle's virtual host: for a private node
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the default user on the
    /// default virtual host) or `…/hutch-test-…` for [`Broker::isolated`];
    /// on an existing broker, its URI with the virtual host replaced.
    pub fn amqp_uri(&self) -> String {
        match &*self.target {
            Target::Node(node) => format!(
                "amqp://guest:guest@127.0.0.1:{}/{}",
                node.ports().amqp,
                self.encoded_vhost()
            ),
            Target::Existing(existing) => existing.amqp_uri(&self.encoded_vhost()),
        }
    }

    /// The TLS listener's port on 127.0.0.1, for a node from
    /// [`Broker::start_tls`]; `None` otherwise.
    pub fn amqps_port(&self) -> Option<u16> {
        match &*self.target {
            Target::Node(node) => node.amqps_port(),
            Target::Existing(_) => None,
        }
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f` (or the handle's virtual
    /// host) for a node from [`Broker::start_tls`]; `None` otherwise. The
    /// broker's certificate must name 127.0.0.1, and the client must
    /// present a certificate.
    pub fn amqps_uri(&self) -> Option<String> {
        self.amqps_port().map(|port| {
            format!(
                "amqps://guest:guest@127.0.0.1:{port}/{}",
                self.encoded_vhost()
            )
        })
    }

    /// The management HTTP port (on 127.0.0.1 for a private node).
    pub fn management_port(&self) -> u16 {
        match &*self.target {
            Target::Node(node) => node.ports().management,
            Target::Existing(existing) => existing.management_port(),
        }
    }

    /// `http://127.0.0.1:<port>` for a private node (user `guest`, password
    /// `guest`), the management URL of an existing broker; the API is under
    /// `/api/`, and [`Broker::encoded_vhost`] names the handle's virtual
    /// host in its paths.
    pub fn management_url(&self) -> String {
        self.target.management().base_url().to_owned()
    }

    /// The node's temporary directory: configuration, data (`mnesia/`), logs
    /// (`log/`) and the server's output (`server.stdout.log`,
    /// `server.stderr.log`). Removed when the node stops. Empty on an
    /// existing broker, whose files are not the test's.
    pub fn dir(&self) -> &Path {
        match &*self.target {
            Target::Node(node) => node.dir(),
            Target::Existing(_) => Path::new(""),
        }
    }

    /// The OS process id of the node's Erlang VM, read from its pid file;
    /// `None` if the file is missing (the node is not running) or the
    /// broker is an existing one.
    pub fn os_pid(&self) -> Option<u32> {
        match &*self.target {
            Target::Node(node) => node.os_pid(),
            Target::Existing(_) => None,
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` with the node's environment (its
    /// `HOME` holds the Erlang cookie) and returns its stdout. Commands act
    /// on `/` unless given `-p` (`["-p", broker.vhost(), …]`).
    ///
    /// Fails with stderr and the exit status if the command fails, or if it
    /// runs for more than two minutes (it is then killed). Each call starts
    /// an Erlang VM and takes about a second. On an existing broker it fails
    /// with [`BrokerError::NeedsPrivateNode`].
    ///
    /// ```no_run
    /// let broker = hutch_rs::testing::Broker::shared();
    /// broker.rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"])?;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, BrokerError> {
        self.node("rabbitmqctl")?.ctl().run(args)
    }

    /// The private node, or the error saying `what` needs one.
    fn node(&self, what: &str) -> Result<&Node, BrokerError> {
        match &*self.target {
            Target::Node(node) => Ok(node),
            Target::Existing(_) => Err(BrokerError::NeedsPrivateNode {
                what: what.to_owned(),
            }),
        }
    }

    /// `GET /api/<path>` as the broker's user (`guest` on a private node);
    /// `path` is percent-encoded by the caller (the default virtual host is
    /// `%2f`, the handle's is [`Broker::encoded_vhost`]), e.g.
    /// `"queues/%2f/orders"`.
    ///
    /// The management API's counters (message counts, rates) lag by up to a
    /// second on a private node; for exact message counts use
    /// [`Broker::queue`].
    pub fn management_get(&self, path: &str) -> Result<Value, BrokerError> {
        let management = self.target.management();
        management
            .request("GET", path, None)?
            .ok_or_else(|| BrokerError::Parse {
                command: format!("GET {}/api/{path}", management.base_url()),
                detail: "the answer was empty".to_owned(),
            })
    }

    /// Sends `method /api/<path>` (`PUT`, `POST`, `DELETE`, …) as the
    /// broker's user, with `body` as JSON, and returns the JSON answer
    /// (`None` if empty, as for most `PUT` and `DELETE` requests).
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
        self.target
            .management()
            .request(method, path, body.as_ref())
    }

    /// `GET /api/<what>/<vhost>`, one `T` per element of the answer.
    fn management_rows<T: DeserializeOwned>(&self, what: &str) -> Result<Vec<T>, BrokerError> {
        self.management_list(&format!("{what}/{}", self.encoded_vhost()))
    }

    /// `GET /api/<path>`, one `T` per element of the answer.
    fn management_list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, BrokerError> {
        let answer = self.management_get(path)?;
        serde_json::from_value(answer).map_err(|error| BrokerError::Parse {
            command: format!("GET {}/api/{path}", self.management_url()),
            detail: error.to_string(),
        })
    }

    /// Every queue of the handle's virtual host, with exact message counts
    /// at the moment of the call (on an existing broker, from the
    /// management API: they lag, by up to 5 seconds by default).
    pub fn queues(&self) -> Result<Vec<QueueInfo>, BrokerError> {
        Ok(match &*self.target {
            Target::Node(node) => node
                .ctl()
                .list_in::<QueueRow>("list_queues", &self.vhost, info::QUEUE_COLUMNS)?
                .into_iter()
                .map(QueueInfo::from)
                .collect(),
            Target::Existing(_) => self
                .management_rows::<ManagementQueue>("queues")?
                .into_iter()
                .map(QueueInfo::from)
                .collect(),
        })
    }

    /// The queue called `name`, or `None` if there is none.
    pub fn queue(&self, name: &str) -> Result<Option<QueueInfo>, BrokerError> {
        Ok(self.queues()?.into_iter().find(|queue| queue.name == name))
    }

    /// Every binding of the handle's virtual host, including the default
    /// exchange's implicit ones.
    pub fn bindings(&self) -> Result<Vec<BindingInfo>, BrokerError> {
        Ok(match &*self.target {
            Target::Node(node) => node
                .ctl()
                .list_in::<BindingRow>("list_bindings", &self.vhost, info::BINDING_COLUMNS)?
                .into_iter()
                .map(BindingInfo::from)
                .collect(),
            Target::Existing(_) => self
                .management_rows::<ManagementBinding>("bindings")?
                .into_iter()
                .map(BindingInfo::from)
                .collect(),
        })
    }

    /// Every exchange of the handle's virtual host, including the
    /// predeclared `amq.*` ones and the default exchange `""`.
    pub fn exchanges(&self) -> Result<Vec<ExchangeInfo>, BrokerError> {
        Ok(match &*self.target {
            Target::Node(node) => node
                .ctl()
                .list_in::<ExchangeRow>("list_exchanges", &self.vhost, info::EXCHANGE_COLUMNS)?
                .into_iter()
                .map(ExchangeInfo::from)
                .collect(),
            Target::Existing(_) => self
                .management_rows::<ManagementExchange>("exchanges")?
                .into_iter()
                .map(ExchangeInfo::from)
                .collect(),
        })
    }

    /// Every consumer of the handle's virtual host, with its queue and
    /// prefetch.
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>, BrokerError> {
        Ok(match &*self.target {
            Target::Node(node) => node
                .ctl()
                .list_in::<ConsumerRow>("list_consumers", &self.vhost, info::CONSUMER_COLUMNS)?
                .into_iter()
                .map(ConsumerInfo::from)
                .collect(),
            Target::Existing(_) => self
                .management_rows::<ManagementConsumer>("consumers")?
                .into_iter()
                .map(ConsumerInfo::from)
                .collect(),
        })
    }

    /// The `what` (`connections` or `channels`) of the handle's virtual
    /// host: each row's `name` on an existing broker, its `pid` on a node.
    fn scoped(&self, what: &str) -> Result<Vec<Value>, BrokerError> {
        match &*self.target {
            Target::Node(node) => {
                let rows: Vec<Value> = node
                    .ctl()
                    .list(&format!("list_{what}"), &["pid", "vhost"])?;
                Ok(rows
                    .into_iter()
                    .filter(|row| row["vhost"] == self.vhost.as_str())
                    .collect())
            }
            Target::Existing(_) => {
                self.management_list(&format!("vhosts/{}/{what}", self.encoded_vhost()))
            }
        }
    }

    /// How many client connections the handle's virtual host has.
    pub fn connection_count(&self) -> Result<usize, BrokerError> {
        Ok(self.scoped("connections")?.len())
    }

    /// How many channels the handle's virtual host has, over all its
    /// connections.
    pub fn channel_count(&self) -> Result<usize, BrokerError> {
        Ok(self.scoped("channels")?.len())
    }

    /// Makes the broker close every client connection of the handle's
    /// virtual host with `reason` (as a 320 CONNECTION_FORCED), as an
    /// operator or a failing node would; through `rabbitmqctl` on a private
    /// node, the management API (`DELETE /api/connections/<name>`) on an
    /// existing broker.
    ///
    /// Returns once the broker has been told; clients learn of the closes
    /// asynchronously, and connections disappear from
    /// [`Broker::connection_count`] once the clients have answered.
    pub fn close_all_connections(&self, reason: &str) -> Result<(), BrokerError> {
        match &*self.target {
            Target::Node(node) => {
                node.ctl()
                    .run(&["-q", "close_all_connections", "-p", &self.vhost, reason])?;
            }
            Target::Existing(existing) => {
                for connection in self.scoped("connections")? {
                    let Some(name) = connection["name"].as_str() else {
                        continue;
                    };
                    let closed = existing.management().request_with(
                        "DELETE",
                        &format!("connections/{}", vhost::encode(name)),
                        None,
                        &[("x-reason", reason)],
                    );
                    match closed {
                        // Gone meanwhile: closed all the same.
                        Ok(_)
                        | Err(BrokerError::Management {
                            status: Some(404), ..
                        }) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops the handle: deletes its virtual host if it made one, and kills
    /// the node (waiting for its processes to exit and removing its
    /// directory) if it was the node's last handle. The same happens on
    /// drop; this spells it out.
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

    /// Kills the node's Erlang VM, as a crashed machine would lose it, and
    /// waits for it to exit; its directory and watchdog stay, for
    /// [`Broker::restart_process`]. Returns whether it is known to be gone.
    pub(crate) fn kill_process(&self) -> bool {
        match &*self.target {
            Target::Node(node) => node.kill_process(),
            Target::Existing(_) => false,
        }
    }

    /// Starts the node again, with the same name, ports and data, after
    /// [`Broker::kill_process`], and blocks until it has booted. Only a
    /// node's sole handle can.
    pub(crate) fn restart_process(&mut self) -> Result<(), BrokerError> {
        match Arc::get_mut(&mut self.target) {
            Some(Target::Node(node)) => node.restart_process(),
            Some(Target::Existing(_)) | None => Err(BrokerError::NeedsPrivateNode {
                what: "restarting a node that other handles share".to_owned(),
            }),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.owns_vhost {
            return;
        }
        match vhost::delete(self.target.management(), &self.vhost) {
            Ok(()) => tracing::debug!(vhost = self.vhost, "deleted test virtual host"),
            Err(error) => {
                tracing::warn!(vhost = self.vhost, %error, "could not delete test virtual host");
            }
        }
    }
}
