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

    // Nothing in this binary declares anything on the shared node.
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
    // A private node, so that no other test's queues or connections count.
    let broker = Broker::start().unwrap();
    let answer = broker
        .management_request(
            "PUT",
            "queues/%2f/harness-parked",
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}})),
        )
        .unwrap();
    assert_eq!(answer, None);
    let parked = broker.queue("harness-parked").unwrap().expect("declared");
    assert!(parked.durable && !parked.auto_delete && !parked.exclusive);
    assert_eq!(parked.arguments["x-max-length"], 10);

    let error = broker
        .management_request("DELETE", "queues/%2f/harness-nonexistent", None)
        .unwrap_err();
    assert!(error.to_string().contains("404"), "{error}");

    broker
        .management_request("DELETE", "queues/%2f/harness-parked", None)
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
    let broker = Broker::start().unwrap();
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
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "start_of_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "start")
        .env_remove("HUTCH_TEST_RABBITMQ")
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
        Ok(broker) => println!("started {}", broker.node_name()),
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
