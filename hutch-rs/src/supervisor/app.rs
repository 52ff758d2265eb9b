//! A running subtree of a `Hutch`'s tree: the consume connection manager
//! and one supervised task per consumer, under a child of the `Hutch`'s
//! root token and a task tracker of their own.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Error, Hutch, Result,
    config::Settings,
    context::ConsumerScope,
    publisher::Publisher,
    retry::HookQueues,
    stale_bindings::RemovedBinding,
    status::Status,
    supervisor::{
        connection::Purpose, connection_manager::ConnectionManager, consumer::ConsumerSupervisor,
        observer::Observer, tree::Root,
    },
    topology::ConsumerPlan,
};

/// The consumers of a started [`Hutch`](crate::Hutch), from
/// [`Hutch::start`](crate::Hutch::start).
///
/// They run under supervision until [`shutdown`](Self::shutdown): the
/// connection is re-established whenever it is lost, and a consumer that
/// fails is restarted on its channel. [`failure`](Self::failure) resolves
/// when something fails for good, including a consumer whose task panicked
/// in hutch-rs's own code more often than its restart intensity allows.
///
/// A `Running` is a subtree of its `Hutch`'s: its cancellation token is a
/// child of the `Hutch`'s root, and its tasks (the consuming connection's
/// manager and one per consumer) are tracked by a tracker of its own, which
/// `shutdown` waits for.
///
/// Dropping it without `shutdown` stops the consumers without waiting for
/// in-flight handlers; their messages are redelivered.
#[derive(Debug)]
#[must_use = "consumers stop when `Running` is dropped; call `shutdown().await` to stop them cleanly"]
pub struct Running {
    settings: Arc<Settings>,
    observer: Observer,
    /// The error hooks' queues, drained at shutdown.
    hooks: Arc<HookQueues>,
    /// Keeps the `Hutch`'s root (and so this subtree's parent token) alive
    /// while the consumers run, even if every `Hutch` handle is dropped.
    _root: Arc<Root>,
    /// This subtree: cancelling it stops the consumers and the connection.
    token: CancellationToken,
    /// Stops the consumers (a child of `token`); the connection is closed
    /// after them.
    stop_consumers: CancellationToken,
    /// Every task of this subtree: the connection manager and the consumers.
    tracker: TaskTracker,
    /// The consumers' tasks, to wait for them before the connection closes.
    consumers: Vec<JoinHandle<()>>,
    failures: mpsc::UnboundedReceiver<Error>,
    queues: Vec<String>,
    /// What stale-binding removal removed at start.
    removed_bindings: Vec<RemovedBinding>,
}

/// How long a shutdown waits, after the consumers, for the connection to
/// close: a few seconds for the broker's close-ok (the manager gives up on
/// it after 5 s), and a little more.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(6);

impl Running {
    /// Starts the connection manager and one supervised task per consumer.
    /// Resolves once every consumer consumes, or with the first fatal error.
    pub(crate) async fn start(
        hutch: Hutch,
        settings: Arc<Settings>,
        observer: Observer,
        publisher: Arc<Publisher>,
        hooks: Arc<HookQueues>,
        root: Arc<Root>,
        plans: Vec<ConsumerPlan>,
    ) -> Result<Self> {
        observer.track_consumers(plans.iter().map(|plan| (plan.name(), plan.queue.clone())));
        let token = root.child_token();
        let stop_consumers = token.child_token();
        let tracker = TaskTracker::new();
        let manager = ConnectionManager::new(
            Purpose::Consume,
            settings.clone(),
            observer.clone(),
            token.child_token(),
        );
        let (failure_sender, failures) = mpsc::unbounded_channel();
        // A root: a long-lived task is no part of whatever span started it.
        let span =
            tracing::info_span!(parent: None, "connection", purpose = Purpose::Consume.as_str());
        tracker.spawn(
            {
                let manager = manager.clone();
                let failures = failure_sender.clone();
                async move {
                    if let Err(error) = manager.run().await {
                        let _ = failures.send(error);
                    }
                }
            }
            .instrument(span),
        );

        let mut ready = Vec::with_capacity(plans.len());
        let queues = plans.iter().map(|plan| plan.queue.clone()).collect();
        let consumers = plans
            .into_iter()
            .map(|plan| {
                let (ready_sender, ready_receiver) = oneshot::channel();
                ready.push(ready_receiver);
                // Every call of the consumer can reach the instance running
                // it: a clone of the `Hutch`, held by the consumer's task,
                // which ends with this subtree (so no cycle keeps the
                // `Hutch`'s root alive).
                let scope = Arc::new(ConsumerScope {
                    hutch: hutch.clone(),
                    consumer: plan.name(),
                    queue: plan.queue.clone(),
                });
                let consumer = ConsumerSupervisor::new(
                    plan,
                    scope,
                    settings.clone(),
                    manager.clone(),
                    observer.clone(),
                    publisher.clone(),
                    hooks.clone(),
                );
                let failures = failure_sender.clone();
                let shutdown = stop_consumers.child_token();
                // `supervise` instruments itself with the consumer's span.
                tracker.spawn(async move {
                    if let Err(error) = consumer.supervise(shutdown, ready_sender).await {
                        let _ = failures.send(error);
                    }
                })
            })
            .collect();
        tracker.close();

        let mut running = Self {
            settings,
            observer,
            hooks,
            _root: root,
            token,
            stop_consumers,
            tracker,
            consumers,
            failures,
            queues,
            removed_bindings: Vec::new(),
        };
        tokio::select! {
            biased;
            failure = running.failures.recv() => {
                let error = failure.expect("this struct holds a sender's receiver while tasks run");
                // Leave nothing half-started behind a failed start.
                let _ = running.stop(false).await;
                Err(error)
            }
            all = join_all(ready) => {
                if all.iter().any(Result::is_err) {
                    // A consumer ended before consuming: it sent why.
                    let error = running.failures.recv().await.expect("a failed consumer reports why");
                    let _ = running.stop(false).await;
                    return Err(error);
                }
                Ok(running)
            }
        }
    }

    /// The queues being consumed, one per selected consumer.
    #[must_use]
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The bindings that stale-binding removal
    /// ([`HutchBuilder::remove_stale_bindings`](crate::HutchBuilder::remove_stale_bindings))
    /// removed when this was started; empty when it is off or nothing was
    /// stale. Each was also logged at info level.
    #[must_use]
    pub fn removed_bindings(&self) -> &[RemovedBinding] {
        &self.removed_bindings
    }

    pub(crate) fn record_removed_bindings(&mut self, removed: Vec<RemovedBinding>) {
        self.removed_bindings = removed;
    }

    /// A snapshot of the connections and consumers.
    #[must_use]
    pub fn status(&self) -> Status {
        self.observer.snapshot()
    }

    /// Resolves when something failed for good: a consumer past its restart
    /// intensity (its crashes include panics outside a handler, a bug in
    /// hutch-rs: [`Error::ConsumerFailed`] with a reason starting "the
    /// consumer's task panicked"), a refused declaration, refused
    /// credentials on reconnect. Pending while everything runs or recovers.
    pub async fn failure(&mut self) -> Error {
        match self.failures.recv().await {
            Some(error) => error,
            // Never: `self` holds no sender, but the tasks do until `self`
            // stops them.
            None => std::future::pending().await,
        }
    }

    /// Stops consuming, lets in-flight handlers finish (up to the shutdown
    /// timeout), acks what they finished, lets the error hooks report the
    /// failures queued for them (within what is left of the shutdown
    /// timeout), and closes the channels and the connection.
    ///
    /// A hook still busy at the deadline is abandoned: the failures it had
    /// not reported are logged and counted in
    /// [`Status::hook_failures_dropped`](crate::Status::hook_failures_dropped);
    /// that is not an error.
    ///
    /// # Errors
    ///
    /// [`Error::ShutdownTimeout`] when handlers were still running at the
    /// timeout (their messages are redelivered by the broker).
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop(true).await
    }

    async fn stop(&mut self, wait_for_handlers: bool) -> Result<()> {
        let timeout = self.settings.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        self.stop_consumers.cancel();
        let finished = !wait_for_handlers
            || tokio::time::timeout_at(deadline, join_all(self.consumers.iter_mut()))
                .await
                .is_ok();
        let unfinished = self
            .consumers
            .iter()
            .filter(|task| !task.is_finished())
            .count();
        for task in self.consumers.drain(..) {
            task.abort();
        }
        if !finished {
            tracing::error!(
                ?timeout,
                unfinished,
                "handlers did not finish in time; their messages will be redelivered"
            );
        }
        // No consumer of this subtree reports failures any more: what they
        // queued for the hooks is reported within the rest of the deadline,
        // while the connection closes (last, after the consumers closed
        // their channels).
        let hooks = async {
            if wait_for_handlers {
                self.hooks.drain(deadline).await;
            }
        };
        let connection = async {
            self.token.cancel();
            if tokio::time::timeout(CONNECTION_CLOSE_GRACE, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    tasks = self.tracker.len(),
                    "tasks of the consumers' tree still running after shutdown; abandoned"
                );
            }
        };
        tokio::join!(hooks, connection);
        if finished {
            Ok(())
        } else {
            Err(Error::ShutdownTimeout {
                timeout,
                in_flight: unfinished,
            })
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The consumers and the connection manager descend from this token.
        self.token.cancel();
        for task in &self.consumers {
            task.abort();
        }
    }
}
