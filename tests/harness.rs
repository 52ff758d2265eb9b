//! Tests of the private-broker harness itself (`hutch_rs::testing`), against
//! real RabbitMQ nodes.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use hutch_rs::testing::Broker;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, Event,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;

/// Set in the environment of the child processes these tests start, to
/// say which role the child plays: `exit` for
/// [`shared_node_of_a_child_process`], `start` for
/// [`start_of_a_child_process`].
const CHILD_VAR: &str = "HUTCH_HARNESS_CHILD_ROLE";

/// What the child prints before the line with the node's details.
const CHILD_MARKER: &str = "HUTCH_HARNESS_CHILD";

/// How long a node may take to go away once its owner is gone; the watchdog
/// kills it within a second.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// Shows the harness's own logs with `RUST_LOG=hutch_rs=debug`.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

#[test]
fn a_node_starts_and_answers() {
    init_logging();
    let broker = Broker::shared();
    assert!(
        broker.node_name().starts_with("hutch-test-") && broker.node_name().ends_with("@localhost"),
        "{}",
        broker.node_name()
    );
    assert_eq!(
        broker.amqp_uri(),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.amqp_port())
    );
    assert_eq!(
        broker.management_url(),
        format!("http://127.0.0.1:{}", broker.management_port())
    );

    let overview = broker.management_get("overview").unwrap();
    assert_eq!(overview["node"], broker.node_name(), "{overview:#}");

    let status = broker.rabbitmqctl(&["status"]).unwrap();
    assert!(status.contains(broker.node_name()), "{status}");

    // The RabbitMQ that HUTCH_TEST_RABBITMQ asks for.
    let wanted = match std::env::var("HUTCH_TEST_RABBITMQ").as_deref() {
        Ok("4") => 4,
        _ => 3,
    };
    assert_eq!(broker.major_version(), wanted, "{}", broker.version());
    assert_eq!(overview["rabbitmq_version"], broker.version());

    // Nothing in this binary declares anything on the shared node's
    // default virtual host (the tests sharing it take virtual hosts of
    // their own).
    assert_eq!(broker.queues().unwrap(), vec![]);
    let topic = broker
        .exchanges()
        .unwrap()
        .into_iter()
        .find(|exchange| exchange.name == "amq.topic")
        .expect("amq.topic is predeclared");
    assert_eq!(topic.kind, "topic");
    assert!(topic.durable);
    assert_eq!(broker.connection_count().unwrap(), 0);
    assert_eq!(broker.channel_count().unwrap(), 0);

    let pid = broker.os_pid().expect("a running node has a pid file");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn rabbitmqctl_failures_carry_its_stderr() {
    init_logging();
    let error = Broker::shared()
        .rabbitmqctl(&["no_such_command"])
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("no_such_command"), "{message}");
}

#[test]
fn management_requests_change_the_broker() {
    init_logging();
    // A virtual host of its own on the shared node, so that no other
    // test's queues count.
    let broker = Broker::shared().isolated().unwrap();
    let vhost = broker.encoded_vhost();
    let answer = broker
        .management_request(
            "PUT",
            &format!("queues/{vhost}/harness-parked"),
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}})),
        )
        .unwrap();
    assert_eq!(answer, None);
    let parked = broker.queue("harness-parked").unwrap().expect("declared");
    assert!(parked.durable && !parked.auto_delete && !parked.exclusive);
    assert_eq!(parked.arguments["x-max-length"], 10);

    let error = broker
        .management_request(
            "DELETE",
            &format!("queues/{vhost}/harness-nonexistent"),
            None,
        )
        .unwrap_err();
    assert!(error.to_string().contains("404"), "{error}");

    broker
        .management_request("DELETE", &format!("queues/{vhost}/harness-parked"), None)
        .unwrap();
    assert_eq!(broker.queue("harness-parked").unwrap(), None);
}

#[test]
fn rabbitmq_4_nodes_refuse_deprecated_features() {
    init_logging();
    let broker = Broker::shared();
    if broker.major_version() < 4 {
        return;
    }
    // RabbitMQ ignores a misspelt `deprecated_features.permit.*` key, so
    // the refusal is checked where it acts.
    let error = broker
        .management_request(
            "PUT",
            "queues/%2f/harness-located",
            Some(json!({"durable": true, "arguments": {"x-queue-master-locator": "client-local"}})),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("queue_master_locator"),
        "{error}"
    );
    assert_eq!(broker.queue("harness-located").unwrap(), None);
}

#[test]
fn a_client_is_seen_and_can_be_forced_off() {
    init_logging();
    // A virtual host of its own on the shared node: its counts and its
    // forced close are its own (isolated_handles_share_one_node checks that
    // the default virtual host's client is left alone).
    let broker = Broker::shared().isolated().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (forced_sender, forced) = mpsc::channel();
    let (connection, channel) = runtime.block_on(async {
        let connection = Connection::connect(&broker.amqp_uri(), ConnectionProperties::default())
            .await
            .unwrap();
        let mut events = connection.events_listener();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    let _ = forced_sender.send(error.to_string());
                    return;
                }
            }
        });
        let channel = connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        channel
            .queue_declare(
                "harness-orders".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "harness-orders".into(),
                "amq.topic".into(),
                "orders.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                "amq.topic".into(),
                "orders.created".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
        // Returned so that it stays open: lapin closes a dropped channel.
        (connection, channel)
    });

    let orders = broker.queue("harness-orders").unwrap().expect("declared");
    assert_eq!(orders.messages, 1);
    assert_eq!(orders.consumers, 0);
    assert!(orders.durable);
    assert_eq!(orders.arguments["x-queue-type"], "classic");
    let bindings = broker.bindings().unwrap();
    assert!(
        bindings.iter().any(|binding| binding.source == "amq.topic"
            && binding.destination == "harness-orders"
            && binding.destination_kind == "queue"
            && binding.routing_key == "orders.#"),
        "{bindings:#?}"
    );
    assert_eq!(broker.connection_count().unwrap(), 1);
    assert_eq!(broker.channel_count().unwrap(), 1);

    broker.close_all_connections("harness says bye").unwrap();
    let error = forced
        .recv_timeout(Duration::from_secs(30))
        .expect("the client learns of the forced close");
    assert!(error.contains("harness says bye"), "{error}");
    drop((channel, connection));
    // The client has answered the close by the time it reports it; the
    // broker forgets the connection on that answer.
    assert_eq!(broker.connection_count().unwrap(), 0);
}

#[test]
fn two_nodes_run_side_by_side() {
    init_logging();
    let starting: Vec<_> = (0..2).map(|_| thread::spawn(Broker::start)).collect();
    let brokers: Vec<Broker> = starting
        .into_iter()
        .map(|handle| handle.join().unwrap().unwrap())
        .collect();
    let [first, second] = &brokers[..] else {
        unreachable!()
    };
    assert_ne!(first.node_name(), second.node_name());
    assert_ne!(first.amqp_port(), second.amqp_port());
    assert_ne!(first.management_port(), second.management_port());
    assert_ne!(first.dir(), second.dir());
    for broker in &brokers {
        let overview = broker.management_get("overview").unwrap();
        assert_eq!(overview["node"], broker.node_name());
        TcpStream::connect((Ipv4Addr::LOCALHOST, broker.amqp_port())).unwrap();
    }
}

#[test]
fn drop_stops_the_node() {
    init_logging();
    let broker = Broker::start().unwrap();
    let pid = broker.os_pid().expect("a running node has a pid file");
    let port = broker.amqp_port();
    let dir = broker.dir().to_owned();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();

    drop(broker);

    // Drop returns once the VM has exited, so there is nothing to wait for.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the node's VM (pid {pid}) still runs"
    );
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// Runs [`start_of_a_child_process`] with `HUTCH_RABBITMQ_BIN_DIR=bin_dir`
/// (and the machine's own RabbitMQ, which that variable is about, whatever
/// `HUTCH_TEST_RABBITMQ` says) and returns what `Broker::start` said. A
/// child process, because changing the environment of this multi-threaded
/// one is unsound.
fn start_in_child(bin_dir: &Path) -> String {
    start_in_child_with(&[("HUTCH_RABBITMQ_BIN_DIR", bin_dir.as_os_str())])
}

/// Runs [`start_of_a_child_process`] with `vars` set, `HUTCH_TEST_RABBITMQ`
/// unset unless among them, and returns what `Broker::start` said.
fn start_in_child_with(vars: &[(&str, &std::ffi::OsStr)]) -> String {
    start_in_child_without(&[], vars)
}

/// [`start_in_child_with`], with `removed` also unset.
fn start_in_child_without(removed: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    for name in removed {
        command.env_remove(name);
    }
    let output = command
        .args([
            "--exact",
            "start_of_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "start")
        .env_remove("HUTCH_TEST_RABBITMQ")
        .env_remove("HUTCH_TEST_URI")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_missing_installation_says_how_to_install() {
    init_logging();
    let said = start_in_child(Path::new("/nonexistent/hutch-harness"));
    assert!(
        said.contains("/nonexistent/hutch-harness/rabbitmq-server")
            && said.contains("apt-get install rabbitmq-server"),
        "{said}"
    );
}

#[test]
fn a_missing_rabbitmq4_tree_says_how_to_build_it() {
    init_logging();
    let said = start_in_child_with(&[
        ("HUTCH_TEST_RABBITMQ", "4".as_ref()),
        ("HUTCH_RABBITMQ4_ROOT", "/nonexistent/hutch-tree".as_ref()),
    ]);
    assert!(
        said.contains("/nonexistent/hutch-tree/usr/lib/rabbitmq/bin/rabbitmq-server")
            && said.contains("scripts/ensure-rabbitmq4"),
        "{said}"
    );
    let said = start_in_child_with(&[("HUTCH_TEST_RABBITMQ", "5".as_ref())]);
    assert!(said.contains("HUTCH_TEST_RABBITMQ=\"5\""), "{said}");
}

#[test]
fn a_node_that_dies_at_boot_fails_at_once_with_its_output() {
    init_logging();
    let bin_dir = std::env::temp_dir().join(format!("hutch-harness-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&bin_dir).unwrap();
    let server = bin_dir.join("rabbitmq-server");
    std::fs::write(
        &server,
        "#!/bin/sh\necho 'BOOT FAILED (simulated)'\necho 'ERROR: simulated cause' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The real rabbitmqctl: the harness runs `rabbitmqctl wait` as usual.
    let real_bin_dir = std::env::var_os("HUTCH_RABBITMQ_BIN_DIR")
        .map_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin"), PathBuf::from);
    std::os::unix::fs::symlink(
        real_bin_dir.join("rabbitmqctl"),
        bin_dir.join("rabbitmqctl"),
    )
    .unwrap();

    let started = Instant::now();
    let said = start_in_child(&bin_dir);
    std::fs::remove_dir_all(&bin_dir).unwrap();
    assert!(
        said.contains("did not start") && said.contains("ERROR: simulated cause"),
        "{said}"
    );
    // Not the boot timeout: the exit is noticed as it happens.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// Not a test of its own: the child process of [`start_in_child`].
#[test]
fn start_of_a_child_process() {
    if std::env::var_os(CHILD_VAR).is_none_or(|value| value != "start") {
        return;
    }
    match Broker::start() {
        Ok(broker) => {
            // Where the node loaded RabbitMQ from: the installation it runs.
            let rabbit = broker
                .rabbitmqctl(&["eval", "code:lib_dir(rabbit)."])
                .unwrap_or_else(|error| error.to_string());
            println!(
                "started {} with rabbit from {}",
                broker.node_name(),
                rabbit.trim()
            );
        }
        Err(error) => println!("{error}"),
    }
}

/// What the child process reports of its shared node.
struct ChildNode {
    node_name: String,
    pid: u32,
    dir: PathBuf,
}

impl ChildNode {
    fn parse(stdout: &str) -> Option<Self> {
        // libtest prints the test's name on the same line.
        let line = stdout
            .lines()
            .find_map(|line| Some(&line[line.find(CHILD_MARKER)? + CHILD_MARKER.len()..]))?;
        let mut fields = line.split_whitespace();
        Some(Self {
            node_name: fields.next()?.to_owned(),
            pid: fields.next()?.parse().ok()?,
            dir: PathBuf::from(fields.next()?),
        })
    }

    fn running(&self) -> bool {
        // The pid could in theory be reused; the command line of the VM names
        // the node's directory, which nothing else's does.
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline).contains(&*self.dir.to_string_lossy())
        })
    }
}

/// Kills the child's node if the test ends (or fails) while it still runs,
/// so that a failing test leaves nothing behind.
struct KillOnDrop<'a>(&'a ChildNode);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.running() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0.pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = std::fs::remove_dir_all(&self.0.dir);
        }
    }
}

#[test]
fn process_exit_stops_the_shared_node() {
    init_logging();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    // `output` returns once the child has exited and closed its stdout and
    // stderr: this also checks that neither the node nor its watchdog holds
    // them open.
    let output = Command::new(exe)
        .args([
            "--exact",
            "shared_node_of_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "exit")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let node = ChildNode::parse(&stdout).unwrap_or_else(|| {
        panic!(
            "the child reported no node ({}):\n{stdout}\n{stderr}",
            output.status
        )
    });
    let _cleanup = KillOnDrop(&node);
    assert!(
        output.status.success(),
        "{}:\n{stdout}\n{stderr}",
        output.status
    );

    // Nothing signals the end of a process that is neither ours nor our
    // child's child; polling its /proc entry is the only way to see it go.
    let deadline = Instant::now() + STOP_PATIENCE;
    while node.running() || node.dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} (pid {}) still runs or its directory {} remains {:?} after the child exited",
            node.node_name,
            node.pid,
            node.dir.display(),
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Not a test of its own: the child process of
/// [`process_exit_stops_the_shared_node`]. It starts the shared node, reports
/// it and exits without dropping anything.
#[test]
fn shared_node_of_a_child_process() {
    init_logging();
    if std::env::var_os(CHILD_VAR).is_none_or(|value| value != "exit") {
        return;
    }
    let broker = Broker::shared();
    let pid = broker.os_pid().expect("a running node has a pid file");
    println!(
        "{CHILD_MARKER} {} {pid} {}",
        broker.node_name(),
        broker.dir().display()
    );
    std::process::exit(0);
}

/// The installation of the machine's RabbitMQ, laid out as RabbitMQ's
/// generic-unix package is (`rabbitmq_server-X.Y.Z/{sbin,plugins,escript}`):
/// Debian keeps exactly that tree under `/usr/lib/rabbitmq/lib`.
fn debian_release_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/rabbitmq/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("rabbitmq_server-"))
        })
}

#[test]
fn a_generic_unix_package_runs_through_rabbitmq_home() {
    init_logging();
    let Some(release) = debian_release_dir() else {
        panic!("this test copies Debian's RabbitMQ release tree; install rabbitmq-server");
    };
    // A copy, so that the node can only have come from RABBITMQ_HOME.
    let unpacked = tempfile::tempdir().unwrap();
    let home = unpacked.path().join(release.file_name().unwrap());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&release)
        .arg(&home)
        .status()
        .unwrap();
    assert!(copied.success());
    let said = start_in_child_without(
        &["HUTCH_RABBITMQ_BIN_DIR"],
        &[("RABBITMQ_HOME", home.as_os_str())],
    );
    assert!(said.contains("started hutch-test-"), "{said}");
    assert!(
        said.contains(&format!("rabbit from \"{}/plugins/", home.display())),
        "the node did not run from {}: {said}",
        home.display()
    );
}

/// How long a test waits for the management API to list what the broker
/// did: a test node collects statistics every second.
const STATISTICS_PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `check` holds. The management API's lists of connections
/// and consumers follow the node's statistics; there is nothing to
/// subscribe to, so each look is one request.
fn await_listed(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + STATISTICS_PATIENCE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {STATISTICS_PATIENCE:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A client on `uri` that declared `queue`, bound it to `amq.topic` with
/// `orders.#` and consumes from it with a prefetch of 7. Forced closes arrive on the returned receiver.
struct Client {
    connection: Connection,
    _channel: lapin::Channel,
    /// Kept: lapin cancels a dropped consumer.
    _consumer: lapin::Consumer,
    forced: mpsc::Receiver<String>,
}

fn client(runtime: &tokio::runtime::Runtime, uri: &str, queue: &str) -> Client {
    runtime.block_on(async {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .unwrap();
        let (forced_sender, forced) = mpsc::channel();
        let mut events = connection.events_listener();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    let _ = forced_sender.send(error.to_string());
                    return;
                }
            }
        });
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.into(),
                "amq.topic".into(),
                "orders.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .basic_qos(7, lapin::options::BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.into(),
                "harness-consumer".into(),
                lapin::options::BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Client {
            connection,
            _channel: channel,
            _consumer: consumer,
            forced,
        }
    })
}

/// The names of the node's virtual hosts, sorted, from its management API.
fn vhosts(node: &Broker) -> Vec<String> {
    let mut names: Vec<String> = node
        .management_get("vhosts")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|vhost| vhost["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_existing_broker_gives_each_handle_a_virtual_host_of_its_own() {
    init_logging();
    // The "existing" broker is a private node; the handles see it only
    // through its URI and management API, as they would a docker container.
    let node = Broker::start().unwrap();
    let uri = format!("amqp://guest:guest@localhost:{}/", node.amqp_port());
    let management_url = node.management_url();
    let first = Broker::existing(&uri, Some(&management_url)).unwrap();
    let second = Broker::existing(&uri, Some(&format!("{management_url}/"))).unwrap();

    assert_ne!(first.vhost(), second.vhost());
    for handle in [&first, &second] {
        assert!(
            handle.vhost().starts_with("hutch-test-"),
            "{}",
            handle.vhost()
        );
        assert_eq!(
            handle.amqp_uri(),
            format!(
                "amqp://guest:guest@localhost:{}/{}",
                node.amqp_port(),
                handle.vhost()
            )
        );
        assert!(!handle.has_private_node());
        assert_eq!(handle.node_name(), node.node_name());
        assert_eq!(handle.version(), node.version());
        assert_eq!(handle.amqp_port(), node.amqp_port());
        assert_eq!(handle.management_port(), node.management_port());
        assert_eq!(handle.management_url(), management_url);
        assert_eq!(handle.os_pid(), None);
        assert_eq!(handle.dir(), Path::new(""));
        assert_eq!(handle.amqps_uri(), None);
        let refused = handle.rabbitmqctl(&["status"]).unwrap_err().to_string();
        assert!(
            refused.contains("rabbitmqctl needs a private RabbitMQ node")
                && refused.contains("HUTCH_TEST_URI"),
            "{refused}"
        );
    }
    let listed = vhosts(&node);
    assert!(
        listed.contains(&first.vhost().to_owned()) && listed.contains(&second.vhost().to_owned()),
        "{listed:?}"
    );
    // Every permission for the URI's user, on its virtual host only.
    let permissions = node
        .management_get(&format!("permissions/{}/guest", first.encoded_vhost()))
        .unwrap();
    assert_eq!(permissions["configure"], ".*", "{permissions}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = client(&runtime, &first.amqp_uri(), "harness-isolated");

    let queue = first.queue("harness-isolated").unwrap().expect("declared");
    assert!(!queue.durable && !queue.exclusive);
    assert_eq!(second.queue("harness-isolated").unwrap(), None);
    assert_eq!(node.queue("harness-isolated").unwrap(), None, "not on /");
    let bound = |handle: &Broker| {
        handle.bindings().unwrap().iter().any(|binding| {
            binding.source == "amq.topic"
                && binding.destination == "harness-isolated"
                && binding.destination_kind == "queue"
                && binding.routing_key == "orders.#"
        })
    };
    assert!(bound(&first));
    assert!(!bound(&second));
    let exchanges = first.exchanges().unwrap();
    assert!(
        exchanges
            .iter()
            .any(|exchange| exchange.name == "amq.topic" && exchange.kind == "topic"),
        "{exchanges:#?}"
    );
    await_listed("the consumer", || {
        first.consumers().unwrap().iter().any(|consumer| {
            consumer.queue == "harness-isolated"
                && consumer.consumer_tag == "harness-consumer"
                && consumer.prefetch_count == 7
                && consumer.ack_required
        })
    });
    assert_eq!(second.consumers().unwrap(), vec![]);
    await_listed("the connection and its channel", || {
        first.connection_count().unwrap() == 1 && first.channel_count().unwrap() == 1
    });
    assert_eq!(second.connection_count().unwrap(), 0);
    assert_eq!(second.channel_count().unwrap(), 0);

    // Closed through the management API, with the reason given.
    first.close_all_connections("harness says bye").unwrap();
    let error = client
        .forced
        .recv_timeout(Duration::from_secs(30))
        .expect("the client learns of the forced close");
    assert!(error.contains("harness says bye"), "{error}");
    drop(client);

    let (first_vhost, second_vhost) = (first.vhost().to_owned(), second.vhost().to_owned());
    drop(first);
    let listed = vhosts(&node);
    assert!(
        !listed.contains(&first_vhost) && listed.contains(&second_vhost),
        "{listed:?}"
    );
    second.stop();
    assert!(!vhosts(&node).contains(&second_vhost));
}

#[test]
fn isolated_handles_share_one_node() {
    init_logging();
    let node = Broker::start().unwrap();
    let isolated = node.isolated().unwrap();
    assert!(isolated.has_private_node());
    assert_eq!(isolated.node_name(), node.node_name());
    assert_ne!(isolated.vhost(), node.vhost());
    assert_eq!(node.vhost(), "/");
    assert_eq!(
        isolated.amqp_uri(),
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{}",
            node.amqp_port(),
            isolated.vhost()
        )
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let on_isolated = client(&runtime, &isolated.amqp_uri(), "harness-alone");
    let on_default = client(&runtime, &node.amqp_uri(), "harness-default");

    // rabbitmqctl -p: exact at once, no statistics to wait for.
    assert!(isolated.queue("harness-alone").unwrap().is_some());
    assert_eq!(isolated.queue("harness-default").unwrap(), None);
    assert_eq!(node.queue("harness-alone").unwrap(), None);
    assert_eq!(isolated.connection_count().unwrap(), 1);
    assert_eq!(isolated.channel_count().unwrap(), 1);
    assert_eq!(node.connection_count().unwrap(), 1);
    assert_eq!(isolated.consumers().unwrap().len(), 1);
    assert!(
        isolated
            .bindings()
            .unwrap()
            .iter()
            .any(|binding| binding.destination == "harness-alone" && binding.source == "amq.topic")
    );
    assert!(
        !node
            .bindings()
            .unwrap()
            .iter()
            .any(|binding| binding.destination == "harness-alone")
    );

    // Only the isolated handle's connections are closed.
    isolated
        .close_all_connections("only the isolated one")
        .unwrap();
    let error = on_isolated
        .forced
        .recv_timeout(Duration::from_secs(30))
        .expect("the isolated client learns of the forced close");
    assert!(error.contains("only the isolated one"), "{error}");
    assert!(on_default.connection.status().connected());
    assert!(on_default.forced.try_recv().is_err());
    drop((on_isolated, on_default));

    // The node outlives its first handle while another one is open.
    let pid = node.os_pid().expect("a running node has a pid file");
    let vhost = isolated.vhost().to_owned();
    drop(node);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(vhosts(&isolated).contains(&vhost));
    drop(isolated);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the node's VM (pid {pid}) still runs after its last handle"
    );
}

#[test]
fn an_existing_broker_that_cannot_be_used_says_why() {
    init_logging();
    let node = Broker::start().unwrap();
    let management_url = node.management_url();
    let uri = |userinfo: &str| format!("amqp://{userinfo}@127.0.0.1:{}/", node.amqp_port());

    let said = Broker::existing("localhost:5672", None)
        .unwrap_err()
        .to_string();
    assert!(said.contains("no scheme"), "{said}");

    // Port 1 on the loopback interface: nothing listens there.
    let said = Broker::existing(&uri("guest:guest"), Some("http://127.0.0.1:1"))
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("does not answer") && said.contains("HUTCH_TEST_MANAGEMENT_URL"),
        "{said}"
    );

    let said = Broker::existing(&uri("guest:not-the-password"), Some(&management_url))
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("HTTP 401") && said.contains("check the user and password"),
        "{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");

    // A user who may look but not create virtual hosts.
    node.management_request(
        "PUT",
        "users/harness-watcher",
        Some(json!({"password": "watch", "tags": "monitoring"})),
    )
    .unwrap();
    let said = Broker::existing(&uri("harness-watcher:watch"), Some(&management_url))
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("may not create test virtual hosts") && said.contains("administrator"),
        "{said}"
    );
    // Nothing was left behind by the failed attempts.
    assert_eq!(vhosts(&node), vec!["/".to_owned()]);
}

#[test]
fn hutch_test_uri_makes_start_and_shared_use_the_existing_broker() {
    init_logging();
    let node = Broker::start().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "uri_of_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "uri")
        .env("HUTCH_TEST_URI", node.amqp_uri())
        .env("HUTCH_TEST_MANAGEMENT_URL", node.management_url())
        // Unusable on purpose: no node may be started.
        .env("HUTCH_RABBITMQ_BIN_DIR", "/nonexistent/hutch-harness")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let line = stdout
        .lines()
        .find_map(|line| Some(&line[line.find(CHILD_MARKER)? + CHILD_MARKER.len()..]))
        .unwrap_or_else(|| panic!("the child reported nothing: {stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [node_name, shared, started, private] = fields[..] else {
        panic!("{line}");
    };
    assert_eq!(node_name, node.node_name());
    assert_eq!(private, "false");
    assert_ne!(shared, started);
    let listed = vhosts(&node);
    // The dropped handle's virtual host is gone; the shared one, never
    // dropped, stays until the next process of this machine sets one up.
    assert!(!listed.contains(&started.to_owned()), "{listed:?}");
    assert!(listed.contains(&shared.to_owned()), "{listed:?}");
    let next = Broker::existing(&node.amqp_uri(), Some(&node.management_url())).unwrap();
    assert_eq!(vhosts(&node), vec!["/".to_owned(), next.vhost().to_owned()]);
}

/// Not a test of its own: the child process of
/// [`hutch_test_uri_makes_start_and_shared_use_the_existing_broker`].
#[test]
fn uri_of_a_child_process() {
    if std::env::var_os(CHILD_VAR).is_none_or(|value| value != "uri") {
        return;
    }
    let shared = Broker::shared();
    let started = Broker::start().unwrap();
    assert_eq!(started.queues().unwrap(), vec![]);
    println!(
        "{CHILD_MARKER} {} {} {} {}",
        shared.node_name(),
        shared.vhost(),
        started.vhost(),
        shared.has_private_node()
    );
}
