//! Tests of the three-node test cluster (`hutch_rs::testing::Cluster`)
//! itself, against real RabbitMQ nodes. The failover tests of hutch-rs
//! build on it.
//!
//! The main test goes in steps: a cluster takes about 40 seconds to start,
//! and the test machine has two cores, so one cluster serves them all and
//! the tests take turns.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use hutch_rs::testing::Cluster;
use serde_json::json;

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

/// Two clusters at once would be six nodes on two cores.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

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
fn a_cluster_forms_replicates_fails_over_and_stops() {
    init_logging();
    let _turn = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut cluster = Cluster::start().expect("the cluster starts");

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

    // Dropping the cluster stops all three nodes.
    let pids: Vec<u32> = cluster
        .nodes()
        .iter()
        .map(|node| node.os_pid().expect("a running node has a pid"))
        .collect();
    let dirs: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|node| node.dir().to_owned())
        .collect();
    drop(cluster);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the node's Erlang VM {pid} still runs"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[test]
fn process_exit_stops_the_cluster() {
    init_logging();
    let _turn = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
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
