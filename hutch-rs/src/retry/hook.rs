//! Error hooks: user code told about every failed delivery, which can
//! neither hold up nor break the consumer.

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{BoxError, retry::Failure};

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

    /// The hooks, in registration order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn ErrorHook>> {
        self.hooks.iter()
    }
}
