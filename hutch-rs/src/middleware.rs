//! Middleware around every handler call, in the idiom of axum's `from_fn`:
//! an async function of the call's [`Context`] and the [`Next`] step, which
//! sees the delivery before the handler and the outcome after it, and may
//! answer without calling the handler at all.

use std::{fmt, future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use futures_util::FutureExt;

use crate::{
    context::Context,
    handler::{Delivered, HandlerFn},
    panic::panic_message,
    retry::HandlerError,
};

/// What a handler call came to, as middleware sees and returns it: `Ok` acks
/// the message; an `Err` is its failure, retried or dead-lettered as the
/// consumer's policy says (a [`HandlerError::Undecodable`] goes to the
/// dead-letter queue at once).
pub type CallResult = Result<(), HandlerError>;

/// The future of a middleware or of [`Next::run`].
pub type CallFuture = Pin<Box<dyn Future<Output = CallResult> + Send + 'static>>;

/// One middleware, registered with
/// [`HutchBuilder::middleware`](crate::HutchBuilder::middleware).
trait Middleware: Send + Sync + 'static {
    fn call(&self, ctx: Context, next: Next) -> CallFuture;
}

impl<F, Fut> Middleware for F
where
    F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    fn call(&self, ctx: Context, next: Next) -> CallFuture {
        Box::pin(self(ctx, next))
    }
}

/// The middleware of a `Hutch`, outermost first (the order they were
/// registered in).
#[derive(Clone, Default)]
pub(crate) struct Middlewares {
    layers: Arc<[Arc<dyn Middleware>]>,
}

impl Middlewares {
    /// Adds `middleware` inside the ones added before.
    pub(crate) fn push<F, Fut>(&mut self, middleware: F)
    where
        F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CallResult> + Send + 'static,
    {
        let mut layers: Vec<Arc<dyn Middleware>> = self.layers.iter().cloned().collect();
        layers.push(Arc::new(middleware));
        self.layers = layers.into();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs the call of `handler` on `delivered` through every middleware.
    pub(crate) fn run(&self, handler: HandlerFn, delivered: Delivered) -> CallFuture {
        let ctx = delivered.context();
        Next {
            layers: self.layers.clone(),
            index: 0,
            handler,
        }
        .run(ctx)
    }
}

impl fmt::Debug for Middlewares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} middleware", self.layers.len())
    }
}

/// The rest of a handler call: the middleware registered after the current
/// one, then the handler (decoding included).
///
/// ```
/// use std::time::Instant;
///
/// use hutch_rs::{CallResult, Context, Hutch, Next};
///
/// async fn timing(ctx: Context, next: Next) -> CallResult {
///     let started = Instant::now();
///     let outcome = next.run(ctx.clone()).await;
///     println!("{} took {:?}: {:?}", ctx.consumer(), started.elapsed(), outcome.is_ok());
///     outcome
/// }
///
/// let hutch = Hutch::builder().middleware(timing).build()?;
/// # Ok::<(), hutch_rs::Error>(())
/// ```
#[must_use = "the handler is called only when `run` is awaited"]
pub struct Next {
    layers: Arc<[Arc<dyn Middleware>]>,
    index: usize,
    handler: HandlerFn,
}

impl Next {
    /// Runs the rest of the call with `ctx`: the next middleware, or the
    /// handler. A panic in the handler is its outcome here
    /// ([`HandlerError::Panicked`]), so middleware sees every outcome but a
    /// timeout, which stops the whole call from outside.
    pub fn run(self, ctx: Context) -> CallFuture {
        match self.layers.get(self.index).cloned() {
            Some(layer) => layer.call(
                ctx,
                Next {
                    layers: self.layers,
                    index: self.index + 1,
                    handler: self.handler,
                },
            ),
            None => {
                let handler = self.handler;
                let delivered = ctx.delivered();
                Box::pin(async move {
                    // Decoding included: a panic there is the outcome too.
                    let handling = async move { handler(delivered).await };
                    match AssertUnwindSafe(handling).catch_unwind().await {
                        Ok(outcome) => outcome.into_result(),
                        Err(panic) => Err(HandlerError::Panicked(panic_message(panic.as_ref()))),
                    }
                })
            }
        }
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("middleware_left", &(self.layers.len() - self.index))
            .finish_non_exhaustive()
    }
}
