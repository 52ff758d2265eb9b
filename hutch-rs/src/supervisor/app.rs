//! The root of the tree: one connection for consumers, one task per consumer,
//! one cancellation token and one task tracker for all of them.

use std::sync::Arc;

use lapin::Connection;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Error, Result,
    config::Settings,
    supervisor::{
        connection::{Purpose, connect},
        consumer::Consumer,
    },
    topology::{self, ConsumerPlan},
};

/// The consumers of a started [`Hutch`](crate::Hutch), from
/// [`Hutch::start`](crate::Hutch::start).
///
/// Dropping it without [`shutdown`](Self::shutdown) stops the consumers
/// without waiting for in-flight handlers; their messages are redelivered.
#[derive(Debug)]
#[must_use = "consumers stop when `Running` is dropped; call `shutdown().await` to stop them cleanly"]
pub struct Running {
    settings: Arc<Settings>,
    /// `None` once closed by `shutdown` (or handed to a closing task by `Drop`).
    connection: Option<Connection>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
    failures: mpsc::UnboundedReceiver<Error>,
    queues: Vec<String>,
}

impl Running {
    /// Connects, declares the exchange and every selected consumer's queue and
    /// bindings, and starts consuming. Resolves once every consumer consumes.
    pub(crate) async fn start(settings: Arc<Settings>, plans: Vec<ConsumerPlan>) -> Result<Self> {
        let connection = connect(&settings.uri, Purpose::Consume).await?;
        match Self::open_consumers(&settings, &connection, plans).await {
            Ok(consumers) => Ok(Self::spawn(settings, connection, consumers)),
            Err(error) => {
                // Leave nothing half-open behind a failed start.
                let _ = connection.close(200, "hutch-rs start failed".into()).await;
                Err(error)
            }
        }
    }

    async fn open_consumers(
        settings: &Settings,
        connection: &Connection,
        plans: Vec<ConsumerPlan>,
    ) -> Result<Vec<Consumer>> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| Error::Connect {
                uri: settings.uri.to_string(),
                source: Box::new(source),
            })?;
        topology::declare_exchange(&channel, &settings.exchange).await?;
        let _ = channel.close(200, "exchange declared".into()).await;

        let mut consumers = Vec::with_capacity(plans.len());
        for plan in plans {
            consumers.push(
                Consumer::open(connection, &settings.exchange, settings.prefetch, plan).await?,
            );
        }
        Ok(consumers)
    }

    fn spawn(settings: Arc<Settings>, connection: Connection, consumers: Vec<Consumer>) -> Self {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (failure_sender, failures) = mpsc::unbounded_channel();
        let queues = consumers
            .iter()
            .map(|consumer| consumer.queue().to_owned())
            .collect();
        let tasks = consumers
            .into_iter()
            .map(|consumer| {
                tracker.spawn(consumer.run(shutdown.child_token(), failure_sender.clone()))
            })
            .collect();
        tracker.close();
        Self {
            settings,
            connection: Some(connection),
            shutdown,
            tracker,
            tasks,
            failures,
            queues,
        }
    }

    /// The queues being consumed, one per selected consumer.
    #[must_use]
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Resolves when a consumer stops without being asked to (the broker
    /// cancelled it, its channel or the connection failed), with the reason.
    /// Pending forever while all consumers run.
    pub async fn failure(&mut self) -> Error {
        match self.failures.recv().await {
            Some(error) => error,
            // Every sender lives in a consumer task; all of them have ended
            // only if they were told to stop, which takes `self`.
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
    /// timeout (their messages are redelivered by the broker), or
    /// [`Error::Close`] when the connection could not be closed cleanly.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        let timeout = self.settings.shutdown_timeout;
        let finished = tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok();
        let unfinished = if finished {
            0
        } else {
            let unfinished = self.tasks.iter().filter(|task| !task.is_finished()).count();
            tracing::error!(
                ?timeout,
                unfinished,
                "handlers did not finish in time; their messages will be redelivered"
            );
            for task in &self.tasks {
                task.abort();
            }
            unfinished
        };
        self.tasks.clear();
        let closed = match self.connection.take() {
            Some(connection) => connection
                .close(200, "hutch-rs shutdown".into())
                .await
                .map_err(|source| Error::Close {
                    connection: Purpose::Consume.as_str(),
                    source: Box::new(source),
                }),
            None => Ok(()),
        };
        if unfinished > 0 {
            return Err(Error::ShutdownTimeout {
                timeout,
                in_flight: unfinished,
            });
        }
        closed
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
        // Dropping the connection closes it (lapin closes on drop).
    }
}
