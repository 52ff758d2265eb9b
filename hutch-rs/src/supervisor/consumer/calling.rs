//! Handler calls, on the runtime's worker threads: one task per call, so a
//! handler that burns CPU holds up neither the consumer's acknowledgements
//! and `basic.cancel` nor the consumer's other calls, and its timeout is
//! kept from outside the call.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::Instrument;

use crate::{
    context::{ConsumerScope, with_running_hutch},
    handler::{Delivered, HandlerFn},
    message::Incoming,
    middleware::{CallResult, Middlewares},
    panic::panic_message,
    retry::HandlerError,
    telemetry::metrics::HandlerCall,
};

/// One call of `handler` with `incoming`, through the middleware, in the
/// delivery's span, panics caught: the task a consumer spawns per delivery.
fn one_call(
    handler: HandlerFn,
    middleware: &Middlewares,
    scope: &Arc<ConsumerScope>,
    incoming: &Arc<Incoming>,
) -> impl Future<Output = Option<HandlerError>> + Send + 'static {
    let delivered = Delivered::new(incoming.clone(), scope.clone());
    let hutch = scope.hutch.clone();
    // The handler is called inside the guarded future, so that a panic
    // while decoding is caught as well as one in the handler's body.
    // `hutch_rs::publish` called from the handler publishes through the
    // instance running it.
    // The handler's own logs and spans fall inside the delivery's span.
    let span = incoming.span.clone();
    let middleware = (!middleware.is_empty()).then(|| middleware.clone());
    let call = async move {
        match middleware {
            None => handler(delivered).await.into_result(),
            Some(middleware) => middleware.run(handler, delivered).await,
        }
    };
    guarded(with_running_hutch(hutch, call)).instrument(span)
}

/// One handler call run alone, to its end or its timeout, as a consumer
/// runs each of its calls: how the in-memory test broker calls handlers.
#[cfg(feature = "testing")]
pub(crate) async fn call_alone(
    handler: HandlerFn,
    scope: &Arc<ConsumerScope>,
    incoming: &Arc<Incoming>,
    timeout: Duration,
) -> Option<HandlerError> {
    let middleware = scope.hutch.middleware().clone();
    let task = tokio::spawn(one_call(handler, &middleware, scope, incoming));
    let abort = task.abort_handle();
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(failure)) => failure,
        Ok(Err(error)) => Some(HandlerError::Panicked(
            error
                .try_into_panic()
                .map(|panic| panic_message(panic.as_ref()))
                .unwrap_or_else(|error| error.to_string()),
        )),
        Err(_) => {
            abort.abort();
            Some(HandlerError::TimedOut(timeout))
        }
    }
}

/// Runs a call, its panic (in the handler or in middleware) caught as its
/// failure.
async fn guarded(call: impl Future<Output = CallResult>) -> Option<HandlerError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(outcome) => outcome.err(),
        Err(panic) => Some(HandlerError::Panicked(panic_message(panic.as_ref()))),
    }
}

/// A call that finished, failed or ran out of time.
pub(super) struct Finished {
    pub(super) tag: u64,
    pub(super) incoming: Arc<Incoming>,
    /// `None` when the handler succeeded.
    pub(super) failure: Option<HandlerError>,
}

struct Call {
    tag: u64,
    incoming: Arc<Incoming>,
    deadline: delay_queue::Key,
    abort: AbortHandle,
    /// In flight while the call is kept here; its duration once decided.
    metered: HandlerCall,
}

/// The handler calls of one consumer run.
pub(super) struct Calls {
    handler: HandlerFn,
    /// Around each call; empty unless the application added some.
    middleware: Middlewares,
    scope: Arc<ConsumerScope>,
    timeout: Duration,
    tasks: JoinSet<Option<HandlerError>>,
    /// Calls whose outcome is still to come, by task.
    calls: HashMap<tokio::task::Id, Call>,
    deadlines: DelayQueue<tokio::task::Id>,
}

impl Calls {
    pub(super) fn new(handler: HandlerFn, timeout: Duration, scope: Arc<ConsumerScope>) -> Self {
        Self {
            handler,
            middleware: scope.hutch.middleware().clone(),
            scope,
            timeout,
            tasks: JoinSet::new(),
            calls: HashMap::new(),
            deadlines: DelayQueue::new(),
        }
    }

    /// Starts the handler on `incoming`, decoding included, on a task of its
    /// own.
    pub(super) fn start(&mut self, tag: u64, incoming: Arc<Incoming>) {
        let call = one_call(self.handler, &self.middleware, &self.scope, &incoming);
        let abort = self.tasks.spawn(call);
        let metered = HandlerCall::start(&self.scope.consumer);
        let id = abort.id();
        let deadline = self.deadlines.insert(id, self.timeout);
        self.calls.insert(
            id,
            Call {
                tag,
                incoming,
                deadline,
                abort,
                metered,
            },
        );
    }

    /// How many calls occupy the consumer's concurrency: those running,
    /// including any past its timeout that has not stopped yet (a handler
    /// that never reaches an `.await` cannot be stopped).
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next call to finish, fail or run out of time; `None` when a task
    /// ended whose call was decided already (stopped at its timeout), so
    /// that the caller sees the set shrink. Pending for ever when no call
    /// runs.
    pub(super) async fn next(&mut self) -> Option<Finished> {
        loop {
            tokio::select! {
                // A call that finished is reported as it finished even when
                // its deadline has passed too by the time this runs (a
                // loaded runtime polls late): what the handler did is the
                // truth, not the order of two wake-ups.
                biased;
                Some(joined) = self.tasks.join_next_with_id() => {
                    let (id, failure) = match joined {
                        Ok((id, failure)) => (id, failure),
                        // Stopped at its timeout: already reported.
                        Err(error) if error.is_cancelled() => return None,
                        // The guard catches panics in the call; this is one in
                        // dropping what the call left.
                        Err(error) => {
                            let id = error.id();
                            let panic = error
                                .try_into_panic()
                                .map(|panic| panic_message(panic.as_ref()))
                                .unwrap_or_else(|error| error.to_string());
                            (id, Some(HandlerError::Panicked(panic)))
                        }
                    };
                    // Gone from the map: it ran past its timeout, which was
                    // reported; it finished after all.
                    let call = self.calls.remove(&id)?;
                    self.deadlines.remove(&call.deadline);
                    call.metered.finished();
                    return Some(Finished { tag: call.tag, incoming: call.incoming, failure });
                }
                Some(expired) = std::future::poll_fn(|context| self.deadlines.poll_expired(context)) => {
                    let Some(call) = self.calls.remove(expired.get_ref()) else { continue };
                    // Dropped at its next `.await`; its message is decided now.
                    call.abort.abort();
                    call.metered.finished();
                    return Some(Finished {
                        tag: call.tag,
                        incoming: call.incoming,
                        failure: Some(HandlerError::TimedOut(self.timeout)),
                    });
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}
