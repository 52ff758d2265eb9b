//! hutch-rs on a three-node cluster (`hutch_rs::testing::Cluster`) with
//! quorum queues: a stream of 10,000 confirmed publishes while the node the
//! application is connected to stops, while the node leading the queue
//! stops, and while the application's path to its node is cut by a proxy.
//! Each test prints what it saw (confirmed, consumed, lost, duplicates, how
//! long until consuming again) and fails if a confirmed message was lost.
//!
//! An operator's view comes last: a service configured from environment
//! variables alone runs on the cluster over TLS, with quorum queues, and
//! moves to another node when its own stops.
//!
//! The cluster harness itself is tested here too. A cluster takes about 40
//! seconds to start and the test machine has two cores, so one cluster
//! serves every test, and they take turns; each leaves all three nodes
//! running. The cluster is never dropped: the nodes' watchdogs stop them
//! when the test process ends, which `process_exit_stops_the_cluster`
//! checks.

use std::{
    collections::BTreeSet,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    sync::{LazyLock, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use hutch_rs::{BoxError, Hutch, HutchBuilder, Message, consumer, testing::Cluster};
use hutch_rs_tests::{
    Scope,
    failover::{Deliveries, FailoverReport, Stream, Tick},
    init_logging,
    pki::{CERT_USER, Pki},
    proxy::BlackHoleProxy,
};
use serde_json::{Value, json};

/// How long the operator's service may take to consume what was published
/// to it.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long a new leader may take to be elected, or a restarted replica to
/// come back online.
const ELECTION_PATIENCE: Duration = Duration::from_secs(60);

/// Set in the environment of the child process of
/// [`process_exit_stops_the_cluster`].
const CHILD_VAR: &str = "HUTCH_CLUSTER_CHILD";

/// What the child prints before each node's pid and directory.
const CHILD_MARKER: &str = "HUTCH_CLUSTER_NODE";

/// How long the nodes may take to go away once their owner is gone; the
/// watchdogs kill them within a second.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// How many confirmed publishes each failover stream sends.
const STREAM_LENGTH: u64 = 10_000;

/// How many were confirmed when the failure is caused.
const FAIL_AT: u64 = 3_000;

/// How many tasks publish the stream at once.
const PUBLISHERS: usize = 16;

/// The stream's pace: 500 messages a second, so that 7,000 publishes, 14
/// seconds, follow the failure.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(2);

/// How long a stream may take, failover included; reaching it means
/// publishing did not recover.
const STREAM_PATIENCE: Duration = Duration::from_secs(180);

/// How long the consumer may take to get every confirmed message once the
/// stream ended.
const DRAIN_PATIENCE: Duration = Duration::from_secs(120);

/// The one cluster of this test binary, started by the first test that
/// needs it. Two clusters at once would be six nodes on two cores, so the
/// child process's cluster waits for this lock too.
static CLUSTER: Mutex<Option<Shared>> = Mutex::new(None);

/// The shared cluster, with a TLS listener on every node, and the
/// certificates it was started with.
struct Shared {
    cluster: Cluster,
    pki: Pki,
}

impl Shared {
    /// Makes the certificates and starts the cluster with them. They are
    /// kept in node 0's directory, which lives as long as the node.
    fn start() -> Self {
        let scratch = tempfile::tempdir().expect("a scratch directory");
        let pki = Pki::make(scratch.path(), "hutch cluster test CA");
        let cluster = Cluster::start_tls(&pki.node_files()).expect("the cluster starts");
        let pki = pki.copy_to(&cluster.node(0).dir().join("test-pki"));
        Self { cluster, pki }
    }
}

/// What the failover consumers received.
static DELIVERIES: LazyLock<Deliveries> = LazyLock::new(Deliveries::default);

/// Quorum queue, declared through the node the application is connected
/// to: RabbitMQ 3.10 and 4.0 both place its leader there with
/// `client-local`, which the tests rely on to know where it is.
#[consumer(
    routing_key = "ticks.#",
    group = "failover",
    queue_type = "quorum",
    arguments = [("x-queue-leader-locator", "client-local")]
)]
async fn ticks(msg: Message<Tick>) -> Result<(), BoxError> {
    DELIVERIES.record(&msg);
    Ok(())
}

/// A test's turn with the shared cluster.
struct Turn(MutexGuard<'static, Option<Shared>>);

impl Turn {
    /// The certificates the cluster's TLS listeners use and trust.
    fn pki(&self) -> &Pki {
        &self.0.as_ref().expect("a turn holds a cluster").pki
    }
}

impl Deref for Turn {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0.as_ref().expect("a turn holds a cluster").cluster
    }
}

impl DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0.as_mut().expect("a turn holds a cluster").cluster
    }
}

/// Waits for the shared cluster, starting it first if needed. A test that
/// failed half-way may have left a node down: then a fresh cluster
/// replaces it, so that one failure does not fail the tests after it.
fn turn() -> Turn {
    init_logging();
    let (mut guard, poisoned) = match CLUSTER.lock() {
        Ok(guard) => (guard, false),
        Err(poison) => (poison.into_inner(), true),
    };
    let healthy = guard
        .as_ref()
        .is_some_and(|shared| (0..3).all(|node| shared.cluster.is_running(node)));
    if poisoned || !healthy {
        drop(guard.take());
        *guard = Some(Shared::start());
        CLUSTER.clear_poison();
    }
    Turn(guard)
}

/// A runtime for a test's application and publishers, which go on while
/// the test thread stops and starts nodes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The failover consumer's application on `uris`, with timeouts short
/// enough for a test: a silent connection is given up after 2 heartbeats
/// of 2 seconds, and reconnecting waits at most half a second.
fn application(uris: Vec<String>, scope: &Scope) -> HutchBuilder {
    Hutch::builder()
        .uris(uris)
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group("failover")
        .heartbeat(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .confirm_timeout(Duration::from_secs(30))
}

/// The nodes holding client connections (only the tests' applications
/// connect).
fn connected_nodes(cluster: &Cluster) -> BTreeSet<usize> {
    cluster
        .connection_nodes()
        .expect("the cluster lists its connections")
        .into_iter()
        .collect()
}

/// Waits until the queue has a leader and all three replicas online.
fn await_replicated(cluster: &Cluster, queue: &str) -> usize {
    cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| {
            queue.leader.is_some() && queue.online.len() == 3
        })
        .unwrap_or_else(|error| panic!("{queue} is not replicated: {error}"))
        .leader
        .expect("a leader")
}

/// Sends the stream through `hutch`, causes the failure when
/// [`FAIL_AT`] publishes were confirmed, and reports once every confirmed
/// message was consumed (or the drain's patience ran out).
fn stream_through_failure(
    runtime: &tokio::runtime::Runtime,
    hutch: &Hutch,
    scope: &Scope,
    cause_failure: impl FnOnce(),
) -> FailoverReport {
    let run = scope.namespace.clone();
    let mut stream = runtime.block_on(async {
        Stream::start(
            hutch,
            "ticks.new",
            &run,
            STREAM_LENGTH,
            PUBLISHERS,
            PUBLISH_INTERVAL,
        )
    });
    runtime.block_on(stream.wait_confirmed(FAIL_AT, STREAM_PATIENCE));
    let failure = Instant::now();
    cause_failure();
    let caused = Instant::now();
    let published = runtime.block_on(stream.finish(STREAM_PATIENCE));
    // Without publishes after it, the failure would prove nothing.
    let after = published
        .confirmed
        .iter()
        .filter(|(_, confirmed)| *confirmed > caused)
        .count();
    eprintln!(
        "failure caused in {:.2} s, {after} publishes confirmed after it",
        (caused - failure).as_secs_f64()
    );
    assert!(
        after >= 1_000,
        "only {after} publishes were confirmed after the failure"
    );
    let expected: BTreeSet<u64> = published.confirmed.iter().map(|(seq, _)| *seq).collect();
    runtime.block_on(DELIVERIES.wait_for_all(&run, &expected, DRAIN_PATIENCE));
    FailoverReport::new(&published, &DELIVERIES.of(&run), failure)
}

/// What every failover test requires of its report.
fn assert_nothing_lost(scenario: &str, report: &FailoverReport) {
    eprintln!("failover, {scenario}: {report}");
    assert_eq!(report.confirmed as u64, STREAM_LENGTH, "{report}");
    assert!(
        report.lost.is_empty(),
        "{scenario}: {} confirmed message(s) lost, e.g. {:?}",
        report.lost.len(),
        &report.lost[..report.lost.len().min(20)]
    );
    assert!(report.consumed >= report.confirmed, "{report}");
}

/// Stops the application and deletes the scope's queues, so that the
/// cluster stays light for the next test.
fn clean_up(
    runtime: &tokio::runtime::Runtime,
    running: hutch_rs::Running,
    hutch: &Hutch,
    cluster: &Cluster,
    scope: &Scope,
) {
    runtime
        .block_on(running.shutdown())
        .expect("a clean shutdown");
    runtime.block_on(hutch.close()).expect("close");
    delete_queues(cluster, scope);
}

/// Deletes the scope's queues.
fn delete_queues(cluster: &Cluster, scope: &Scope) {
    let node = cluster.node(0);
    for queue in node.queues().expect("list queues") {
        if queue.name.starts_with(&scope.namespace) {
            let path = format!("queues/%2f/{}", queue.name.replace(':', "%3A"));
            node.management_request("DELETE", &path, None)
                .expect("delete a test queue");
        }
    }
}

#[test]
fn a_cluster_forms_replicates_and_fails_over() {
    init_logging();
    let mut cluster = turn();

    // The cluster forms: three private nodes, all running, all listed.
    assert_eq!(cluster.nodes().len(), 3);
    let names: Vec<&str> = (0..3).map(|i| cluster.node_name(i)).collect();
    assert!(
        names.iter().all(|name| name.ends_with("@localhost")),
        "{names:?}"
    );
    assert_eq!(cluster.running_nodes().unwrap(), vec![0, 1, 2]);
    let status = cluster.cluster_status().unwrap();
    let mut running: Vec<&str> = status["running_nodes"]
        .as_array()
        .expect("running_nodes")
        .iter()
        .filter_map(|name| name.as_str())
        .collect();
    running.sort_unstable();
    let mut expected = names.clone();
    expected.sort_unstable();
    assert_eq!(running, expected, "{status}");
    let uris = cluster.uris();
    assert_eq!(uris.len(), 3);
    assert_eq!(uris[1], cluster.amqp_uri(1));
    assert_eq!(
        uris.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "{uris:?}"
    );

    // A quorum queue declared through node 0 has a replica on every node.
    let queue = "cluster-test:orders";
    cluster
        .node(0)
        .management_request(
            "PUT",
            "queues/%2f/cluster-test%3Aorders",
            Some(json!({"durable": true, "arguments": {"x-queue-type": "quorum"}})),
        )
        .unwrap();
    let placement = cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| {
            queue.leader.is_some() && queue.online.len() == 3
        })
        .unwrap();
    assert_eq!(placement.members, vec![0, 1, 2], "{placement:?}");

    // Stopping the leader's node moves leadership to another node.
    let leader = placement.leader.unwrap();
    cluster.stop_node(leader).unwrap();
    assert!(!cluster.is_running(leader));
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    assert_eq!(cluster.running_nodes().unwrap(), others);
    let moved = cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| {
            queue.leader.is_some_and(|new| new != leader)
        })
        .unwrap();
    assert!(!moved.online.contains(&leader), "{moved:?}");

    // Starting it again brings it back into the cluster and its replica
    // back online.
    cluster.start_node(leader).unwrap();
    assert!(cluster.is_running(leader));
    assert_eq!(cluster.running_nodes().unwrap(), vec![0, 1, 2]);
    let back = cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| queue.online.len() == 3)
        .unwrap();
    assert_eq!(back.members, vec![0, 1, 2], "{back:?}");
    assert!(cluster.node(leader).queue(queue).unwrap().is_some());

    // Killing a node's VM outright and restarting it: a new process with
    // the same data rejoins, and its replica comes back.
    let victim = (leader + 1) % 3;
    let old_pid = cluster
        .node(victim)
        .os_pid()
        .expect("a running node has a pid");
    cluster.kill_node(victim).unwrap();
    assert!(!Path::new(&format!("/proc/{old_pid}")).exists());
    assert!(!cluster.is_running(victim));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    assert_eq!(cluster.running_nodes().unwrap(), survivors);
    cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| {
            queue.leader.is_some_and(|new| new != victim)
        })
        .unwrap();
    cluster.restart_node(victim).unwrap();
    assert!(cluster.is_running(victim));
    assert_ne!(cluster.node(victim).os_pid(), Some(old_pid));
    assert_eq!(cluster.running_nodes().unwrap(), vec![0, 1, 2]);
    let back = cluster
        .await_queue(queue, ELECTION_PATIENCE, |queue| queue.online.len() == 3)
        .unwrap();
    assert_eq!(back.members, vec![0, 1, 2], "{back:?}");

    // The queue goes, so that the cluster stays light for the next test.
    cluster
        .node(0)
        .management_request("DELETE", "queues/%2f/cluster-test%3Aorders", None)
        .unwrap();
    assert_eq!(cluster.queue_placement(queue).unwrap(), None);
}

#[test]
fn process_exit_stops_the_cluster() {
    init_logging();
    // Waits for the shared cluster's tests without starting it.
    let _turn = CLUSTER.lock().unwrap_or_else(|poison| poison.into_inner());
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_of_a_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let nodes: Vec<(u32, PathBuf)> = stdout
        .lines()
        .filter_map(|line| {
            // The first report follows the test runner's `test … ... ` on
            // the same line.
            let (_, report) = line.split_once(CHILD_MARKER)?;
            let mut words = report.split_whitespace();
            Some((words.next()?.parse().ok()?, PathBuf::from(words.next()?)))
        })
        .collect();
    assert!(
        output.status.success() && nodes.len() == 3,
        "the child did not report three nodes ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // Nothing signals the end of a process that is not our child; polling
    // its /proc entry is the only way to see it go.
    let deadline = Instant::now() + STOP_PATIENCE;
    for (pid, dir) in nodes {
        while Path::new(&format!("/proc/{pid}")).exists() || dir.exists() {
            assert!(
                Instant::now() < deadline,
                "node VM {pid} still runs or its directory {} remains after the child exited",
                dir.display()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Not a test of its own: the child process of
/// [`process_exit_stops_the_cluster`]. It starts a cluster, reports its
/// nodes and exits without dropping anything.
#[test]
fn cluster_of_a_child_process() {
    init_logging();
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let cluster = Cluster::start().expect("the cluster starts");
    for node in cluster.nodes() {
        let pid = node.os_pid().expect("a running node has a pid");
        println!("{CHILD_MARKER} {pid} {}", node.dir().display());
    }
    std::process::exit(0);
}

#[test]
fn nothing_is_lost_when_the_node_the_application_is_connected_to_stops() {
    let cluster = turn();
    let runtime = runtime();
    let scope = Scope::new("stop-connected");
    let hutch = application(cluster.uris(), &scope).build().unwrap();
    let running = runtime.block_on(hutch.start()).expect("start");
    // Connected to node 0, the first URI; the queue declared through it is
    // led there too: the worst single failure, both move at once.
    assert_eq!(connected_nodes(&cluster), BTreeSet::from([0]));
    assert_eq!(await_replicated(&cluster, &scope.queue("ticks")), 0);

    let report = stream_through_failure(&runtime, &hutch, &scope, || {
        cluster.stop_node(0).expect("stop node 0");
    });
    assert_nothing_lost("the connected node (and queue leader) stops", &report);
    assert!(
        !connected_nodes(&cluster).contains(&0),
        "the application moved to the other nodes"
    );

    cluster.start_node(0).expect("start node 0 again");
    await_replicated(&cluster, &scope.queue("ticks"));
    clean_up(&runtime, running, &hutch, &cluster, &scope);
}

#[test]
fn nothing_is_lost_when_the_node_leading_the_queue_stops() {
    let cluster = turn();
    let runtime = runtime();
    let scope = Scope::new("stop-leader");
    // Declared through node 2 alone, the queue is led by node 2; the
    // application then connects to node 0.
    let declarer = application(vec![cluster.amqp_uri(2)], &scope)
        .build()
        .unwrap();
    runtime
        .block_on(declarer.declare())
        .expect("declare through node 2");
    runtime.block_on(declarer.close()).expect("close");
    assert_eq!(await_replicated(&cluster, &scope.queue("ticks")), 2);
    let hutch = application(cluster.uris(), &scope).build().unwrap();
    let running = runtime.block_on(hutch.start()).expect("start");
    assert_eq!(connected_nodes(&cluster), BTreeSet::from([0]));

    let report = stream_through_failure(&runtime, &hutch, &scope, || {
        cluster.stop_node(2).expect("stop node 2");
    });
    assert_nothing_lost("the queue's leader stops", &report);
    let moved = cluster
        .queue_leader(&scope.queue("ticks"))
        .expect("the cluster answers");
    assert!(matches!(moved, Some(0 | 1)), "new leader: {moved:?}");
    assert_eq!(
        connected_nodes(&cluster),
        BTreeSet::from([0]),
        "the application kept its connections"
    );

    cluster.start_node(2).expect("start node 2 again");
    await_replicated(&cluster, &scope.queue("ticks"));
    clean_up(&runtime, running, &hutch, &cluster, &scope);
}

#[test]
fn nothing_is_lost_when_a_proxy_cuts_the_application_off_its_node() {
    let cluster = turn();
    let runtime = runtime();
    let scope = Scope::new("cut-off");
    // The application reaches node 0 through a proxy that can go silent,
    // as a dead network path does: no close, no reset, only missed
    // heartbeats tell.
    let proxy = runtime.block_on(BlackHoleProxy::start(cluster.node(0).amqp_port()));
    let uris = vec![proxy.amqp_uri(), cluster.amqp_uri(1), cluster.amqp_uri(2)];
    let hutch = application(uris, &scope).build().unwrap();
    let running = runtime.block_on(hutch.start()).expect("start");
    assert_eq!(connected_nodes(&cluster), BTreeSet::from([0]));
    assert_eq!(await_replicated(&cluster, &scope.queue("ticks")), 0);

    let report = stream_through_failure(&runtime, &hutch, &scope, || proxy.black_hole());
    assert_nothing_lost("the application's path to its node goes silent", &report);
    // Node 0 closes the silent connections when their heartbeats are
    // missed too; the application is on the other nodes by then.
    let deadline = Instant::now() + ELECTION_PATIENCE;
    while connected_nodes(&cluster).contains(&0) {
        assert!(
            Instant::now() < deadline,
            "node 0 still lists the silent connections"
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert!(!connected_nodes(&cluster).is_empty());

    proxy.heal();
    clean_up(&runtime, running, &hutch, &cluster, &scope);
}

/// The consumer process of the operator's test, killed if the test ends
/// before it does, and the messages it printed that it consumed.
struct Service {
    child: std::process::Child,
    consumed: std::sync::mpsc::Receiver<u64>,
}

impl Service {
    /// Starts `env_consumer` with exactly the `HUTCH_*` variables given
    /// (none inherited from the test's environment).
    fn start(variables: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_env_consumer"));
        for (name, _) in std::env::vars() {
            if name.starts_with("HUTCH_") {
                command.env_remove(name);
            }
        }
        command
            .envs(variables.iter().map(|(name, value)| (*name, value)))
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().expect("start env_consumer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, consumed) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(seq) = line.strip_prefix("consumed ") {
                    let _ = sender.send(seq.parse().expect("a sequence number"));
                }
            }
        });
        Self { child, consumed }
    }

    /// Panics if the process has ended (its error is on the test's output).
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the service") {
            panic!("the service ended: {status}");
        }
    }

    /// Waits until it consumed every message of `expected`; panics after
    /// `patience` with what is missing.
    fn await_consumed(&self, expected: std::ops::Range<u64>, patience: Duration) {
        let mut missing: BTreeSet<u64> = expected.collect();
        let deadline = Instant::now() + patience;
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumed.recv_timeout(left) {
                Ok(seq) => {
                    missing.remove(&seq);
                }
                Err(_) => panic!(
                    "the service did not consume {} message(s), e.g. {:?}",
                    missing.len(),
                    missing.iter().take(10).collect::<Vec<_>>()
                ),
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster's client connections as rabbitmqctl sees them: TLS or not,
/// login mechanism, user.
fn connection_logins(cluster: &Cluster) -> Vec<Value> {
    let running = cluster.running_nodes().expect("the cluster answers");
    let stdout = cluster
        .node(running[0])
        .rabbitmqctl(&[
            "-q",
            "list_connections",
            "--formatter",
            "json",
            "ssl",
            "auth_mechanism",
            "user",
        ])
        .expect("rabbitmqctl list_connections");
    serde_json::from_str(&stdout).expect("a JSON list of connections")
}

#[test]
fn an_operator_runs_a_service_on_a_tls_only_cluster_from_environment_variables_alone() {
    let cluster = turn();
    let pki = cluster.pki().clone();
    let ctl = |args: &[&str]| {
        cluster
            .node(0)
            .rabbitmqctl(args)
            .unwrap_or_else(|error| panic!("rabbitmqctl {args:?}: {error}"))
    };
    // The certificate's user, without a password: users are cluster-wide.
    if !ctl(&["-q", "list_users"]).contains(CERT_USER) {
        ctl(&["add_user", CERT_USER, "unused-password"]);
        ctl(&["clear_password", CERT_USER]);
        ctl(&["set_permissions", "-p", "/", CERT_USER, ".*", ".*", ".*"]);
    }
    let amqps: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let port = node.amqps_port().expect("a TLS listener");
            format!("amqps://127.0.0.1:{port}/%2f?auth_mechanism=external")
        })
        .collect();
    let scope = Scope::new("operator");
    let path = |path: &std::path::Path| path.display().to_string();
    let mut service = Service::start(&[
        ("HUTCH_URI", amqps.join(",")),
        ("HUTCH_TLS_CA_CERT", path(&pki.ca_cert)),
        ("HUTCH_TLS_CLIENT_CERT", path(&pki.client_cert)),
        ("HUTCH_TLS_CLIENT_KEY", path(&pki.client_key)),
        ("HUTCH_QUEUE_TYPE", "quorum".to_owned()),
        ("HUTCH_EXCHANGE", scope.exchange.clone()),
        ("HUTCH_NAMESPACE", scope.namespace.clone()),
        ("HUTCH_GROUP", "operator".to_owned()),
        ("HUTCH_HEARTBEAT", "2s".to_owned()),
    ]);
    let queue = scope.queue("operator");
    let deadline = Instant::now() + ELECTION_PATIENCE;
    let placement = loop {
        service.assert_running();
        let waited = cluster.await_queue(&queue, Duration::from_secs(1), |queue| {
            queue.online.len() == 3
        });
        match waited {
            Ok(placement) => break placement,
            Err(error) if Instant::now() >= deadline => {
                panic!("the service did not declare its queue: {error}")
            }
            Err(_) => {}
        }
    };
    assert_eq!(
        placement.members,
        vec![0, 1, 2],
        "a quorum queue on every node"
    );

    // The test publishes through node 2 alone, over TLS too, so that node 0
    // holds the service's connections only.
    let runtime = runtime();
    let publisher = Hutch::builder()
        .uri(amqps[2].clone())
        .tls_ca_cert(&pki.ca_cert)
        .tls_client_cert(&pki.client_cert)
        .tls_client_key(&pki.client_key)
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group("publisher-only")
        .build()
        .expect("valid TLS settings");
    let publish = |seqs: std::ops::Range<u64>| {
        runtime.block_on(async {
            for seq in seqs {
                let tick = Tick {
                    run: scope.namespace.clone(),
                    seq,
                };
                publisher
                    .publish("operator.tick", &tick)
                    .await
                    .expect("a confirmed publish");
            }
        });
    };
    publish(0..100);
    service.await_consumed(0..100, PATIENCE);
    let service_nodes: BTreeSet<usize> = connected_nodes(&cluster);
    assert_eq!(
        service_nodes,
        BTreeSet::from([0, 2]),
        "service on 0, test on 2"
    );
    let logins = connection_logins(&cluster);
    // The service's consuming connection and the test's publishing one (the
    // service publishes nothing, so it opened no publishing connection).
    assert_eq!(logins.len(), 2, "{logins:?}");
    for login in &logins {
        assert_eq!(login["ssl"], true, "{login}");
        assert_eq!(login["auth_mechanism"], "EXTERNAL", "{login}");
        assert_eq!(login["user"], CERT_USER, "{login}");
    }

    // Its node stops: the service moves on, over TLS, and loses nothing.
    cluster.stop_node(0).expect("stop node 0");
    publish(100..200);
    service.await_consumed(100..200, PATIENCE);
    assert!(!connected_nodes(&cluster).contains(&0));
    for login in connection_logins(&cluster) {
        assert_eq!(login["ssl"], true, "{login}");
    }

    cluster.start_node(0).expect("start node 0 again");
    await_replicated(&cluster, &queue);
    drop(service);
    runtime.block_on(publisher.close()).expect("close");
    delete_queues(&cluster, &scope);
}
