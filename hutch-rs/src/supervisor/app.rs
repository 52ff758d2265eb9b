//! The root of the tree: the consume connection manager, one supervised
//! task per consumer, one cancellation token and one task tracker for them.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Error, Result,
    config::Settings,
    publisher::Publisher,
    status::Status,
    supervisor::{
        connection::Purpose, connection_manager::ConnectionManager, consumer::ConsumerSupervisor,
        observer::Observer,
    },
    topology::ConsumerPlan,
};

/// The consumers of a started [`Hutch`](crate::Hutch), from
/// [`Hutch::start`](crate::Hutch::start).
///
/// They run under supervision until [`shutdown`](Self::shutdown): the
/// connection is re-established whenever it is lost, and a consumer that
/// fails is restarted on its channel. [`failure`](Self::failure) resolves
/// when something fails for good.
///
/// Dropping it without `shutdown` stops the consumers without waiting for
/// in-flight handlers; their messages are redelivered.
#[derive(Debug)]
#[must_use = "consumers stop when `Running` is dropped; call `shutdown().await` to stop them cleanly"]
pub struct Running {
    settings: Arc<Settings>,
    observer: Observer,
    manager: ConnectionManager,
    manager_task: Option<JoinHandle<()>>,
    /// Stops the consumers; the connection is closed after them.
    stop_consumers: CancellationToken,
    tracker: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
    failures: mpsc::UnboundedReceiver<Error>,
    queues: Vec<String>,
}

impl Running {
    /// Starts the connection manager and one supervised task per consumer.
    /// Resolves once every consumer consumes, or with the first fatal error.
    pub(crate) async fn start(
        settings: Arc<Settings>,
        observer: Observer,
        publisher: Arc<Publisher>,
        plans: Vec<ConsumerPlan>,
    ) -> Result<Self> {
        observer.track_consumers(plans.iter().map(|plan| (plan.name(), plan.queue.clone())));
        let manager = ConnectionManager::new(Purpose::Consume, settings.clone(), observer.clone());
        let (failure_sender, failures) = mpsc::unbounded_channel();
        let manager_task = tokio::spawn({
            let manager = manager.clone();
            let failures = failure_sender.clone();
            async move {
                if let Err(error) = manager.run().await {
                    let _ = failures.send(error);
                }
            }
        });

        let stop_consumers = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut ready = Vec::with_capacity(plans.len());
        let queues = plans.iter().map(|plan| plan.queue.clone()).collect();
        let tasks = plans
            .into_iter()
            .map(|plan| {
                let (ready_sender, ready_receiver) = oneshot::channel();
                ready.push(ready_receiver);
                let consumer = ConsumerSupervisor::new(
                    plan,
                    settings.clone(),
                    manager.clone(),
                    observer.clone(),
                    publisher.clone(),
                );
                let failures = failure_sender.clone();
                let shutdown = stop_consumers.child_token();
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
            manager,
            manager_task: Some(manager_task),
            stop_consumers,
            tracker,
            tasks,
            failures,
            queues,
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

    /// A snapshot of the connections and consumers.
    #[must_use]
    pub fn status(&self) -> Status {
        self.observer.snapshot()
    }

    /// Resolves when something failed for good: a consumer past its restart
    /// intensity, a refused declaration, refused credentials on reconnect.
    /// Pending while everything runs or recovers.
    pub async fn failure(&mut self) -> Error {
        match self.failures.recv().await {
            Some(error) => error,
            // Never: `self` holds no sender, but the tasks do until `self`
            // stops them.
            None => std::future::pending().await,
        }
    }

    /// Stops consuming, lets in-flight handlers finish (up to the shutdown
    /// timeout), acks what they finished, and closes the channels and the
    /// connection.
    ///
    /// # Errors
    ///
    /// [`Error::ShutdownTimeout`] when handlers were still running at the
    /// timeout (their messages are redelivered by the broker).
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop(true).await
    }

    async fn stop(&mut self, wait_for_handlers: bool) -> Result<()> {
        self.stop_consumers.cancel();
        let timeout = self.settings.shutdown_timeout;
        let finished = !wait_for_handlers
            || tokio::time::timeout(timeout, self.tracker.wait())
                .await
                .is_ok();
        let unfinished = self.tasks.iter().filter(|task| !task.is_finished()).count();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if !finished {
            tracing::error!(
                ?timeout,
                unfinished,
                "handlers did not finish in time; their messages will be redelivered"
            );
        }
        // The connection closes last, after the consumers closed their channels.
        self.manager.shut_down();
        if let Some(manager_task) = self.manager_task.take() {
            let _ = manager_task.await;
        }
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
        self.stop_consumers.cancel();
        for task in &self.tasks {
            task.abort();
        }
        self.manager.shut_down();
    }
}
