//! Three private RabbitMQ nodes joined into one cluster.

use std::{
    fmt,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Broker, BrokerError, TlsNodeFiles, ctl, layout};

/// How many nodes a [`Cluster`] has.
const NODES: usize = 3;

/// How long `rabbitmqctl await_startup` and `await_online_nodes` give a node
/// (they are bounded by the harness's two-minute limit per call).
const AWAIT_SECONDS: &str = "90";

/// How often [`Cluster::await_queue`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Three private RabbitMQ nodes clustered together, for failover tests.
///
/// Each node is a [`Broker`] of its own (own name, ports, directory; see
/// [`Broker::start`]); the three share one Erlang cookie, private to the
/// cluster, and nodes 1 and 2 joined node 0. Every node runs the management
/// plugin. Nothing outside the cluster is touched: nodes are stopped by pid
/// and through `rabbitmqctl -n <node>`, and each node's watchdog kills it
/// when the test process ends without dropping the `Cluster`.
///
/// Dropping the `Cluster` kills the three nodes and removes their
/// directories. Nodes are numbered 0, 1, 2; methods taking an index panic
/// on any other.
///
/// ```no_run
/// use hutch_rs::testing::Cluster;
///
/// let cluster = Cluster::start()?; // about 40 seconds
/// let uris = cluster.uris().join(","); // for HUTCH_URI
/// # let _ = uris;
/// // ... declare a quorum queue, publish through hutch-rs ...
/// let leader = cluster.queue_leader("orders")?.expect("a quorum queue");
/// cluster.stop_node(leader)?; // the others elect a new leader
/// cluster.start_node(leader)?; // it rejoins with its data
/// # Ok::<(), hutch_rs::testing::BrokerError>(())
/// ```
pub struct Cluster {
    nodes: Vec<Broker>,
    /// Whether each node's RabbitMQ application runs (see
    /// [`Cluster::stop_node`]).
    running: Mutex<[bool; NODES]>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// A queue as the cluster places it: which node leads it and which nodes
/// hold a replica (for a quorum queue; a classic queue has one member).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuePlacement {
    /// The queue's name.
    pub name: String,
    /// The index of the node that leads the queue (the quorum queue's Raft
    /// leader, or the classic queue's node); `None` while there is none
    /// (during an election) or it is not one of the cluster's nodes.
    pub leader: Option<usize>,
    /// The indexes of the nodes holding a replica, in node order.
    pub members: Vec<usize>,
    /// The indexes of the members whose replica runs, in node order.
    pub online: Vec<usize>,
}

impl Cluster {
    /// Starts three nodes and joins them into one cluster; blocks until all
    /// three run and see one another (about 40 seconds on 2 cores: the
    /// nodes start one after another, to keep the machine responsive).
    ///
    /// Fails as [`Broker::start`] does, or with `rabbitmqctl`'s error if a
    /// node does not join; the nodes started so far are stopped.
    pub fn start() -> Result<Cluster, BrokerError> {
        Self::start_with(None)
    }

    /// Starts a cluster as [`Cluster::start`] does, each node with a TLS
    /// listener besides the plain one, as [`Broker::start_tls`] describes:
    /// the three use the same `files` (a server certificate for `127.0.0.1`
    /// and `localhost` serves them all), require a client certificate
    /// signed by their CA and accept EXTERNAL logins. See
    /// [`Cluster::amqps_uris`].
    pub fn start_tls(files: &TlsNodeFiles) -> Result<Cluster, BrokerError> {
        Self::start_with(Some(files))
    }

    fn start_with(tls: Option<&TlsNodeFiles>) -> Result<Cluster, BrokerError> {
        let cookie = layout::new_cookie();
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(Broker::start_with(tls, Some(&cookie))?);
        }
        let cluster = Cluster {
            nodes,
            running: Mutex::new([true; NODES]),
        };
        let seed = cluster.nodes[0].node_name().to_owned();
        for node in &cluster.nodes[1..] {
            tracing::debug!(node = node.node_name(), seed, "joining the cluster");
            node.rabbitmqctl(&["stop_app"])?;
            node.rabbitmqctl(&["join_cluster", &seed])?;
            node.rabbitmqctl(&["start_app"])?;
            node.rabbitmqctl(&["await_startup", "--timeout", AWAIT_SECONDS])?;
        }
        cluster.nodes[0].rabbitmqctl(&[
            "await_online_nodes",
            &NODES.to_string(),
            "--timeout",
            AWAIT_SECONDS,
        ])?;
        Ok(cluster)
    }

    /// The three nodes, each with [`Broker`]'s inspection methods (which
    /// fail while the node is stopped with [`Cluster::stop_node`]).
    pub fn nodes(&self) -> &[Broker] {
        &self.nodes
    }

    /// Node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn node(&self, index: usize) -> &Broker {
        &self.nodes[index]
    }

    /// Node `index`'s Erlang node name, e.g. `hutch-test-1234-0@localhost`.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn node_name(&self, index: usize) -> &str {
        self.nodes[index].node_name()
    }

    /// Node `index`'s AMQP URI (see [`Broker::amqp_uri`]).
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn amqp_uri(&self, index: usize) -> String {
        self.nodes[index].amqp_uri()
    }

    /// Every node's AMQP URI, in node order; joined with commas, they make
    /// a `HUTCH_URI` that lets hutch-rs fail over between the nodes.
    pub fn uris(&self) -> Vec<String> {
        self.nodes.iter().map(Broker::amqp_uri).collect()
    }

    /// Every node's `amqps` URI, in node order, for a cluster started with
    /// [`Cluster::start_tls`] (see [`Broker::amqps_uri`]); `None` otherwise.
    pub fn amqps_uris(&self) -> Option<Vec<String>> {
        self.nodes.iter().map(Broker::amqps_uri).collect()
    }

    /// The index of the node called `node_name`, if it is one of ours.
    pub fn index_of(&self, node_name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.node_name() == node_name)
    }

    /// The index of the node running the Erlang process `pid`, as
    /// `rabbitmqctl` prints it: `<node@host.1.2.3>`.
    fn index_of_pid(&self, pid: &str) -> Option<usize> {
        let pid = pid.trim_start_matches('<');
        self.nodes.iter().position(|node| {
            pid.strip_prefix(node.node_name())
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// Stops node `index`'s RabbitMQ application (`rabbitmqctl stop_app`):
    /// it closes its client connections and listeners and leaves the
    /// cluster's running nodes, as a failed broker would, while its Erlang
    /// VM (and so its data directory and watchdog) stays. Queue leaders it
    /// held move to the other nodes. Returns once the application stopped.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn stop_node(&self, index: usize) -> Result<(), BrokerError> {
        let node = &self.nodes[index];
        tracing::debug!(node = node.node_name(), "stopping the node's application");
        node.rabbitmqctl(&["stop_app"])?;
        self.set_running(index, false);
        Ok(())
    }

    /// Starts node `index`'s RabbitMQ application again after
    /// [`Cluster::stop_node`] (`rabbitmqctl start_app`, then `await_startup`):
    /// it rejoins the cluster with the data it kept. Returns once the node
    /// accepts AMQP connections again and the cluster sees all its nodes
    /// running; its quorum queue replicas catch up asynchronously (see
    /// [`Cluster::await_queue`]).
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn start_node(&self, index: usize) -> Result<(), BrokerError> {
        let node = &self.nodes[index];
        tracing::debug!(node = node.node_name(), "starting the node's application");
        node.rabbitmqctl(&["start_app"])?;
        node.rabbitmqctl(&["await_startup", "--timeout", AWAIT_SECONDS])?;
        self.set_running(index, true);
        let running = self.running_count().to_string();
        node.rabbitmqctl(&["await_online_nodes", &running, "--timeout", AWAIT_SECONDS])?;
        Ok(())
    }

    /// Kills node `index`'s Erlang VM (SIGKILL), as a crashed machine would
    /// lose it, and waits for it to exit: unlike [`Cluster::stop_node`],
    /// nothing of the node runs, and no client gets a connection close.
    /// Its data directory stays, for [`Cluster::restart_node`]. Returns once
    /// the other nodes no longer list it as running.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn kill_node(&mut self, index: usize) -> Result<(), BrokerError> {
        let node = &self.nodes[index];
        tracing::debug!(node = node.node_name(), "killing the node");
        self.set_running(index, false);
        if !node.kill_process() {
            return Err(BrokerError::StillRunning {
                node: node.node_name().to_owned(),
            });
        }
        // The others learn of it when its distribution connections close,
        // a moment after the kill; callers expect the cluster to know.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running_nodes()?.contains(&index) {
            if Instant::now() >= deadline {
                return Err(BrokerError::StillRunning {
                    node: self.nodes[index].node_name().to_owned(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// Starts node `index` again after [`Cluster::kill_node`]: a new Erlang
    /// VM with the same name, ports and data, which rejoins the cluster.
    /// Returns once it has booted and the cluster sees all its running nodes.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn restart_node(&mut self, index: usize) -> Result<(), BrokerError> {
        self.nodes[index].restart_process()?;
        self.set_running(index, true);
        let node = &self.nodes[index];
        node.rabbitmqctl(&["await_startup", "--timeout", AWAIT_SECONDS])?;
        let running = self.running_count().to_string();
        node.rabbitmqctl(&["await_online_nodes", &running, "--timeout", AWAIT_SECONDS])?;
        Ok(())
    }

    /// Whether node `index`'s application runs, as far as this `Cluster`
    /// stopped and started it.
    ///
    /// # Panics
    ///
    /// If `index` is not 0, 1 or 2.
    pub fn is_running(&self, index: usize) -> bool {
        self.running_flags()[index]
    }

    /// `rabbitmqctl cluster_status --formatter json`, asked of the first
    /// running node: `running_nodes`, `disk_nodes`, `alarms`, … as
    /// RabbitMQ names them.
    pub fn cluster_status(&self) -> Result<Value, BrokerError> {
        let stdout =
            self.any_running()?
                .rabbitmqctl(&["-q", "cluster_status", "--formatter", "json"])?;
        parse_json_object(&stdout, "rabbitmqctl cluster_status --formatter json")
    }

    /// The indexes of the nodes the cluster reports running (from
    /// [`Cluster::cluster_status`]), in node order.
    pub fn running_nodes(&self) -> Result<Vec<usize>, BrokerError> {
        let status = self.cluster_status()?;
        let names = status["running_nodes"]
            .as_array()
            .ok_or_else(|| BrokerError::Parse {
                command: "rabbitmqctl cluster_status --formatter json".to_owned(),
                detail: format!("no running_nodes list in {status}"),
            })?;
        Ok(self.indexes(names))
    }

    /// Where the queue `name` (on the default virtual host) lives, asked of
    /// the first running node; `None` if there is no such queue.
    pub fn queue_placement(&self, name: &str) -> Result<Option<QueuePlacement>, BrokerError> {
        let stdout = self.any_running()?.rabbitmqctl(&[
            "-q",
            "list_queues",
            "--formatter",
            "json",
            "name",
            "type",
            "pid",
            "leader",
            "members",
            "online",
        ])?;
        let command = "rabbitmqctl list_queues --formatter json";
        let rows: Vec<Value> = parse_json_rows(&stdout, command)?;
        let Some(row) = rows.into_iter().find(|row| row["name"] == name) else {
            return Ok(None);
        };
        let quorum = row["type"] == "quorum";
        let node_of = |value: &Value| value.as_str().and_then(|name| self.index_of(name));
        let placement = if quorum {
            QueuePlacement {
                name: name.to_owned(),
                leader: node_of(&row["leader"]),
                members: self.indexes(row["members"].as_array().unwrap_or(&Vec::new())),
                online: self.indexes(row["online"].as_array().unwrap_or(&Vec::new())),
            }
        } else {
            // The JSON formatter prints a pid without its node
            // (`#PID<10986.1323.0>`); the table shows it.
            let stdout = self.any_running()?.rabbitmqctl(&[
                "-q",
                "list_queues",
                "--no-table-headers",
                "name",
                "pid",
            ])?;
            let node = stdout.lines().find_map(|line| {
                let (queue, pid) = line.rsplit_once('\t')?;
                (queue == name).then(|| self.index_of_pid(pid.trim()))?
            });
            QueuePlacement {
                name: name.to_owned(),
                leader: node,
                members: node.into_iter().collect(),
                online: node.into_iter().collect(),
            }
        };
        Ok(Some(placement))
    }

    /// The node holding each client connection, one entry per connection,
    /// sorted: where the applications under test are connected, as the
    /// broker itself knows it (`rabbitmqctl list_connections`).
    pub fn connection_nodes(&self) -> Result<Vec<usize>, BrokerError> {
        let stdout = self.any_running()?.rabbitmqctl(&[
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
        ])?;
        let mut nodes: Vec<usize> = stdout
            .lines()
            .filter_map(|pid| self.index_of_pid(pid.trim()))
            .collect();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// The index of the node leading the queue `name`; `None` if there is
    /// no such queue or no leader at the moment. See
    /// [`Cluster::queue_placement`].
    pub fn queue_leader(&self, name: &str) -> Result<Option<usize>, BrokerError> {
        Ok(self
            .queue_placement(name)?
            .and_then(|placement| placement.leader))
    }

    /// Looks at the queue `name` until `ready` accepts its placement and
    /// returns that placement, or fails after `timeout` with the last one
    /// seen. For what RabbitMQ only reports, not announces: a new leader
    /// elected, a restarted replica back online.
    ///
    /// ```no_run
    /// # let cluster = hutch_rs::testing::Cluster::start()?;
    /// # let old = 0;
    /// use std::time::Duration;
    /// let placement = cluster.await_queue("orders", Duration::from_secs(30), |queue| {
    ///     queue.leader.is_some_and(|leader| leader != old)
    /// })?;
    /// # let _ = placement;
    /// # Ok::<(), hutch_rs::testing::BrokerError>(())
    /// ```
    pub fn await_queue(
        &self,
        name: &str,
        timeout: Duration,
        mut ready: impl FnMut(&QueuePlacement) -> bool,
    ) -> Result<QueuePlacement, BrokerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let placement = self.queue_placement(name)?;
            if let Some(placement) = &placement {
                if ready(placement) {
                    return Ok(placement.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::QueueNotReady {
                    queue: name.to_owned(),
                    timeout,
                    last: placement.map_or_else(
                        || "no such queue".to_owned(),
                        |placement| format!("{placement:?}"),
                    ),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the three nodes, waits for their processes to exit and removes
    /// their directories. The same happens on drop; this spells it out.
    pub fn stop(self) {
        drop(self);
    }

    fn set_running(&self, index: usize, running: bool) {
        self.running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())[index] = running;
    }

    fn running_flags(&self) -> [bool; NODES] {
        *self
            .running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn running_count(&self) -> usize {
        self.running_flags()
            .iter()
            .filter(|&&running| running)
            .count()
    }

    /// The first node whose application runs, to ask about the cluster.
    fn any_running(&self) -> Result<&Broker, BrokerError> {
        let flags = self.running_flags();
        self.nodes
            .iter()
            .zip(flags)
            .find_map(|(node, running)| running.then_some(node))
            .ok_or(BrokerError::NoRunningNode)
    }

    /// The sorted indexes of the node names in `names` that are ours.
    fn indexes(&self, names: &[Value]) -> Vec<usize> {
        let mut indexes: Vec<usize> = names
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|name| self.index_of(name))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
    }
}

/// The JSON object in `stdout`, after any warning lines.
fn parse_json_object(stdout: &str, command: &str) -> Result<Value, BrokerError> {
    let start = stdout.find('{').unwrap_or(stdout.len());
    serde_json::from_str(&stdout[start..]).map_err(|error| BrokerError::Parse {
        command: command.to_owned(),
        detail: format!("{error} in {stdout:?}"),
    })
}

/// The JSON array in `stdout`, after any warning lines.
fn parse_json_rows(stdout: &str, command: &str) -> Result<Vec<Value>, BrokerError> {
    ctl::parse_json_rows(stdout).map_err(|detail| BrokerError::Parse {
        command: command.to_owned(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_after_warnings() {
        let object =
            parse_json_object("warning: latin1\n{\"running_nodes\":[\"a\"]}\n", "c").unwrap();
        assert_eq!(object["running_nodes"][0], "a");
        assert!(parse_json_object("Error: nope", "c").is_err());
    }
}
