//! Error hooks on bounded queues: one queue and one worker task per
//! registered hook, so that neither a slow hook nor a storm of failures can
//! pile up tasks (each holding a message body) or hold up a consumer.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, future::join_all};
use tokio::{
    sync::{Notify, mpsc},
    task::AbortHandle,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    panic::panic_message,
    retry::{ErrorHook, ErrorHooks, Failure},
    supervisor::observer::Observer,
};

/// How many failures wait for one hook. A failure that finds its hook's
/// queue full is not queued for that hook: it is counted in
/// [`Status::hook_failures_dropped`](crate::Status::hook_failures_dropped)
/// and logged. At most this many message bodies are held per hook.
pub const ERROR_HOOK_QUEUE_CAPACITY: usize = 1_024;

/// At most one log line per hook in this interval about failures dropped
/// from its full queue: a storm of failures is a storm of drops, and one
/// line per drop would bury the log (the count is in the status anyway).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The error hooks of one [`Hutch`](crate::Hutch), each behind its queue.
///
/// A worker is started on a hook's first failure (a `Hutch` may be built
/// outside a runtime), tracked by the `Hutch`'s root, and stops with it.
#[derive(Debug)]
pub(crate) struct HookQueues {
    lanes: Vec<Lane>,
    observer: Observer,
    tracker: TaskTracker,
    token: CancellationToken,
}

/// One hook, its worker and what was dropped from its queue.
struct Lane {
    /// The hook's place in registration order, for logs.
    index: usize,
    hook: Arc<dyn ErrorHook>,
    state: Mutex<LaneState>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("index", &self.index).finish()
    }
}

#[derive(Default)]
struct LaneState {
    /// The running worker, if one was started and not stopped since.
    worker: Option<Worker>,
    /// Failures dropped since the last log line about it.
    unlogged_drops: u64,
    /// When the last log line about drops was written.
    last_drop_log: Option<Instant>,
}

/// A worker task and its queue.
struct Worker {
    sender: mpsc::Sender<Failure>,
    task: AbortHandle,
    /// Failures queued or being handled by the hook: the worker's own, so
    /// that one abandoned cannot skew the count of the next.
    pending: Arc<AtomicUsize>,
    /// Rung each time the hook returns.
    progress: Arc<Notify>,
}

impl HookQueues {
    /// The queues of `hooks`; workers are spawned on `tracker` and stop when
    /// `token` is cancelled.
    pub(crate) fn new(
        hooks: &ErrorHooks,
        observer: Observer,
        tracker: TaskTracker,
        token: CancellationToken,
    ) -> Self {
        let lanes = hooks
            .iter()
            .enumerate()
            .map(|(index, hook)| Lane {
                index,
                hook: hook.clone(),
                state: Mutex::new(LaneState::default()),
            })
            .collect();
        Self {
            lanes,
            observer,
            tracker,
            token,
        }
    }

    /// Whether no hook is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Queues `failure` for every hook, without waiting: a hook whose queue
    /// is full misses it (counted and logged).
    pub(crate) fn notify(&self, failure: &Failure) {
        for lane in &self.lanes {
            let mut state = lane.state();
            if state
                .worker
                .as_ref()
                .is_none_or(|worker| worker.task.is_finished())
            {
                state.worker = Some(self.start(lane));
            }
            let queued = {
                let worker = state.worker.as_ref().expect("started above");
                // Counted before it is sent, so the worker never counts it
                // down before it was counted up.
                worker.pending.fetch_add(1, Ordering::AcqRel);
                match worker.sender.try_send(failure.clone()) {
                    Ok(()) => true,
                    Err(error) => {
                        worker.pending.fetch_sub(1, Ordering::AcqRel);
                        if let mpsc::error::TrySendError::Closed(_) = error {
                            // Only once the root was cancelled: nothing runs any more.
                            tracing::debug!(hook = lane.index, "error hook worker stopped");
                        }
                        false
                    }
                }
            };
            if !queued {
                self.observer.hook_failures_dropped(1);
                state.unlogged_drops += 1;
                let now = Instant::now();
                if state
                    .last_drop_log
                    .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
                {
                    tracing::warn!(
                        hook = lane.index,
                        dropped = state.unlogged_drops,
                        capacity = ERROR_HOOK_QUEUE_CAPACITY,
                        consumer = %failure.consumer(),
                        "an error hook's queue is full; failures were not reported to it (counted in Status::hook_failures_dropped)"
                    );
                    state.unlogged_drops = 0;
                    state.last_drop_log = Some(now);
                }
            }
        }
    }

    /// Starts `lane`'s worker: it calls the hook with each queued failure in
    /// turn, until the queue's sender is gone or the root is cancelled.
    fn start(&self, lane: &Lane) -> Worker {
        let (sender, mut queue) = mpsc::channel::<Failure>(ERROR_HOOK_QUEUE_CAPACITY);
        let pending = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(Notify::new());
        let hook = lane.hook.clone();
        let token = self.token.clone();
        // A root: the lane outlives the failure that started it.
        let span = tracing::info_span!(parent: None, "error_hook", hook = lane.index);
        let task = self.tracker.spawn(
            {
                let pending = pending.clone();
                let progress = progress.clone();
                async move {
                    loop {
                        let failure = tokio::select! {
                            biased;
                            () = token.cancelled() => break,
                            failure = queue.recv() => match failure {
                                Some(failure) => failure,
                                None => break,
                            },
                        };
                        call(hook.as_ref(), failure).await;
                        pending.fetch_sub(1, Ordering::AcqRel);
                        progress.notify_waiters();
                    }
                }
            }
            .instrument(span),
        );
        Worker {
            sender,
            task: task.abort_handle(),
            pending,
            progress,
        }
    }

    /// Waits until every failure queued so far has been handled by its
    /// hook, or until `deadline`. A hook still busy then is abandoned: its
    /// worker is stopped (the hook's future dropped) and what it had not
    /// reported is counted in the status and logged. Returns how many
    /// failures were not reported.
    pub(crate) async fn drain(&self, deadline: Instant) -> usize {
        let lanes = self
            .lanes
            .iter()
            .map(|lane| self.drain_lane(lane, deadline));
        join_all(lanes).await.into_iter().sum()
    }

    async fn drain_lane(&self, lane: &Lane, deadline: Instant) -> usize {
        let (pending, progress) = {
            let mut state = lane.state();
            if state.unlogged_drops > 0 {
                tracing::warn!(
                    hook = lane.index,
                    dropped = state.unlogged_drops,
                    "an error hook's queue was full; failures were not reported to it"
                );
                state.unlogged_drops = 0;
            }
            match &state.worker {
                Some(worker) => (worker.pending.clone(), worker.progress.clone()),
                None => return 0,
            }
        };
        let drained = async {
            loop {
                let notified = progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, drained).await.is_ok() {
            return 0;
        }
        let mut state = lane.state();
        // Still the worker that was waited for (not one started since)?
        if !state
            .worker
            .as_ref()
            .is_some_and(|worker| Arc::ptr_eq(&worker.pending, &pending))
        {
            return 0;
        }
        let Some(worker) = state.worker.take() else {
            return 0;
        };
        worker.task.abort();
        let unreported = worker.pending.load(Ordering::Acquire);
        self.observer.hook_failures_dropped(unreported as u64);
        tracing::warn!(
            hook = lane.index,
            unreported,
            "an error hook was still busy at the shutdown deadline; abandoned, {unreported} failure(s) not reported to it"
        );
        unreported
    }

    /// Stops the workers once their queues are empty (after a
    /// [`drain`](Self::drain)); the next failure starts them again.
    pub(crate) fn stop(&self) {
        for lane in &self.lanes {
            // Dropping the sender ends the worker after what it has queued.
            lane.state().worker.take();
        }
    }
}

impl Lane {
    fn state(&self) -> MutexGuard<'_, LaneState> {
        // Plain counters behind the lock: a panic cannot leave them broken.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Calls `hook` with `failure`: what goes wrong (an `Err`, a panic) is
/// logged at WARN and changes nothing else.
async fn call(hook: &dyn ErrorHook, failure: Failure) {
    let consumer = failure.consumer().to_owned();
    // The call itself may panic before it returns a future.
    let called = AssertUnwindSafe(async move { hook.call(failure).await })
        .catch_unwind()
        .await;
    match called {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%consumer, error = %crate::retry::error_chain(error.as_ref()), "an error hook failed");
        }
        Err(panic) => {
            let panic = panic_message(panic.as_ref());
            tracing::warn!(%consumer, %panic, "an error hook panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, time::SystemTime};

    use lapin::BasicProperties;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        message::Envelope,
        retry::{HandlerError, Outcome},
    };

    fn failure() -> Failure {
        Failure::new(
            "tests::consumer",
            "q",
            Arc::new(Envelope::of_delivery(
                "x",
                "rk",
                false,
                BasicProperties::default(),
                "q",
            )),
            b"{}".to_vec(),
            HandlerError::Panicked("boom".to_owned()),
            Outcome::Requeued,
            SystemTime::now(),
        )
    }

    fn queues(hooks: ErrorHooks) -> (HookQueues, Observer, TaskTracker) {
        let observer = Observer::default();
        let tracker = TaskTracker::new();
        let queues = HookQueues::new(
            &hooks,
            observer.clone(),
            tracker.clone(),
            CancellationToken::new(),
        );
        (queues, observer, tracker)
    }

    /// Increments its counter when the hook's future is dropped unfinished.
    struct DropGuard(Arc<AtomicUsize>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_piling_up_tasks() {
        let gate = Arc::new(Semaphore::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let mut hooks = ErrorHooks::default();
        hooks.push({
            let gate = gate.clone();
            let received = received.clone();
            move |_failure: Failure| {
                let gate = gate.clone();
                let received = received.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    received.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(())
                }
            }
        });
        let (queues, observer, tracker) = queues(hooks);
        // The worker does not run before this (single-threaded) test yields:
        // the whole burst meets a queue that nothing empties.
        for _ in 0..ERROR_HOOK_QUEUE_CAPACITY + 10 {
            queues.notify(&failure());
        }
        assert_eq!(observer.snapshot().hook_failures_dropped, 10);
        assert_eq!(tracker.len(), 1, "one worker, not one task per failure");

        gate.add_permits(ERROR_HOOK_QUEUE_CAPACITY);
        let unreported = queues.drain(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(unreported, 0);
        assert_eq!(received.load(Ordering::SeqCst), ERROR_HOOK_QUEUE_CAPACITY);
        assert_eq!(observer.snapshot().hook_failures_dropped, 10);
    }

    #[tokio::test]
    async fn a_hook_that_fails_or_panics_is_called_again_for_the_next_failure() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut hooks = ErrorHooks::default();
        hooks.push({
            let calls = calls.clone();
            move |_failure: Failure| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match call {
                        0 => panic!("a hook's bug"),
                        1 => Err(std::io::Error::other("a hook's error")),
                        _ => Ok(()),
                    }
                }
            }
        });
        let (queues, observer, _tracker) = queues(hooks);
        for _ in 0..3 {
            queues.notify(&failure());
        }
        let unreported = queues.drain(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!((unreported, calls.load(Ordering::SeqCst)), (0, 3));
        assert_eq!(observer.snapshot().hook_failures_dropped, 0);
    }

    #[tokio::test]
    async fn a_hook_busy_at_the_deadline_is_abandoned_and_what_it_missed_counted() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut hooks = ErrorHooks::default();
        hooks.push({
            let dropped = dropped.clone();
            move |_failure: Failure| {
                let guard = DropGuard(dropped.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(())
                }
            }
        });
        let (queues, observer, tracker) = queues(hooks);
        for _ in 0..3 {
            queues.notify(&failure());
        }
        let started = Instant::now();
        let unreported = queues
            .drain(Instant::now() + Duration::from_millis(200))
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(unreported, 3, "the one in the hook and the two queued");
        assert_eq!(observer.snapshot().hook_failures_dropped, 3);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(2), tracker.wait())
            .await
            .expect("the abandoned worker ends");
        // The hook's future was dropped (the queued failures with it).
        assert_eq!(dropped.load(Ordering::SeqCst), 1);

        // The next failure starts a new worker.
        queues.notify(&failure());
        assert_eq!(tracker.len(), 1);
    }
}
