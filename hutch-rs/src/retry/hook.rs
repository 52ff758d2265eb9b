//! Error hooks: user code told about every failed delivery, which can
//! neither hold up nor break the consumer.

use std::{future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use futures_util::FutureExt;

use crate::{BoxError, panic::panic_message, retry::Failure};

/// A user-supplied error handler, registered with
/// [`HutchBuilder::on_error`](crate::HutchBuilder::on_error).
///
/// Implemented for every `Fn(Failure) -> impl Future<Output = Result<(), E>>`
/// with `E: Into<BoxError>`, so an async closure works:
///
/// ```
/// let hutch = hutch_rs::Hutch::builder()
///     .on_error(|failure: hutch_rs::Failure| async move {
///         eprintln!("{} failed on {:?}: {}", failure.consumer(), failure.message_id(), failure.error());
///         Ok::<_, std::io::Error>(())
///     })
///     .build()?;
/// # Ok::<_, hutch_rs::Error>(())
/// ```
pub trait ErrorHook: Send + Sync + 'static {
    /// Called once the failed message's outcome is decided and carried out.
    fn call(&self, failure: Failure) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
}

impl<F, Fut, E> ErrorHook for F
where
    F: Fn(Failure) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn call(&self, failure: Failure) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> {
        let calling = self(failure);
        Box::pin(async move { calling.await.map_err(Into::into) })
    }
}

/// The registered error hooks.
#[derive(Clone, Default)]
pub(crate) struct ErrorHooks {
    hooks: Vec<Arc<dyn ErrorHook>>,
}

impl std::fmt::Debug for ErrorHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error hook(s)", self.hooks.len())
    }
}

impl ErrorHooks {
    pub(crate) fn push(&mut self, hook: impl ErrorHook) {
        self.hooks.push(Arc::new(hook));
    }

    /// Whether no hook is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Calls every hook on a task of its own, so a hook that is slow,
    /// fails or panics cannot hold up or break the consumer; what goes wrong
    /// is logged.
    pub(crate) fn notify(&self, failure: &Failure) {
        for hook in &self.hooks {
            let hook = hook.clone();
            let failure = failure.clone();
            let consumer = failure.consumer().to_owned();
            tokio::spawn(async move {
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
            });
        }
    }
}
