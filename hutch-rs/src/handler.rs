//! How a `#[consumer]` function is called: the delivery is decoded into a
//! `Message<T>`, the function runs, and its result becomes an outcome that the
//! consumer turns into an ack or a reject.

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{
    BoxError, Hutch,
    context::{ConsumerScope, Context},
    extract::RequiredState,
    message::{Body, DecodeError, Incoming, Message},
    retry::HandlerError,
};

/// The future a registered handler returns. Boxed because registrations are
/// `fn` pointers built in `const` context, one type for every consumer.
#[doc(hidden)]
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerOutcome> + Send + 'static>>;

/// The type-erased entry point `#[consumer]` generates for each function.
#[doc(hidden)]
pub type HandlerFn = fn(Delivered) -> HandlerFuture;

/// One delivery handed to a registered handler: the delivery, and what every
/// call of its consumer shares (the running `Hutch`, the consumer's names),
/// from which a [`Context`] is made only for handlers that take extractors.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Delivered {
    pub(crate) incoming: Arc<Incoming>,
    pub(crate) scope: Arc<ConsumerScope>,
}

impl Delivered {
    pub(crate) fn new(incoming: Arc<Incoming>, scope: Arc<ConsumerScope>) -> Self {
        Self { incoming, scope }
    }

    /// A delivery of `incoming` run by `hutch` outside any consumer: lets
    /// tests drive a registered handler without a broker.
    #[doc(hidden)]
    #[must_use]
    pub fn detached(incoming: Incoming, hutch: &Hutch) -> Self {
        Self {
            incoming: Arc::new(incoming),
            scope: Arc::new(ConsumerScope {
                hutch: hutch.clone(),
                consumer: String::new(),
                queue: String::new(),
            }),
        }
    }

    /// The context of this call.
    pub(crate) fn context(&self) -> Context {
        Context::new(self.incoming.clone(), self.scope.clone())
    }
}

/// What declares the state a registered handler's extractors read.
#[doc(hidden)]
pub type RequiredStateFn = fn(&mut RequiredState);

/// What became of one delivery once its handler finished.
#[doc(hidden)]
#[derive(Debug)]
pub enum HandlerOutcome {
    /// The handler returned `Ok`: ack.
    Succeeded,
    /// The handler returned `Err`.
    Failed(BoxError),
    /// The body could not be decoded into the handler's message type; the
    /// handler was not called.
    Undecodable(DecodeError),
}

impl HandlerOutcome {
    /// The outcome as middleware and the consumer see it: `Ok` acks.
    pub(crate) fn into_result(self) -> Result<(), HandlerError> {
        match self {
            HandlerOutcome::Succeeded => Ok(()),
            HandlerOutcome::Failed(error) => Err(HandlerError::Failed(error)),
            HandlerOutcome::Undecodable(error) => Err(HandlerError::Undecodable(error)),
        }
    }
}

/// The return type of a `#[consumer]` function.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a #[consumer] function must return `Result<(), E>` where `E: Into<hutch_rs::BoxError>`, not `{Self}`",
    label = "this is the type the function returns",
    note = "return `Ok(())` once the message is handled; any error type that converts into `Box<dyn std::error::Error + Send + Sync>` (anyhow::Error, std::io::Error, your own error) works"
)]
pub trait IntoHandlerResult {
    /// Converts into the framework's result type.
    fn into_handler_result(self) -> Result<(), BoxError>;
}

impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Decodes the delivery as `Message<T>` and calls `handler` with it: the
/// entry point of a function that takes the message alone.
///
/// The delivery is borrowed: the consumer keeps the original bytes and
/// properties to forward the message to a delay or dead-letter queue if the
/// handler fails.
///
/// The code `#[consumer]` generates calls this with the user's function; the
/// generic bounds are where a wrong signature is reported.
#[doc(hidden)]
pub fn call_handler<T, F, Fut>(handler: F, delivered: &Delivered) -> HandlerFuture
where
    T: Body,
    F: FnOnce(Message<T>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: IntoHandlerResult,
{
    match Message::<T>::decode(&delivered.incoming) {
        Ok(message) => {
            let handling = handler(message);
            Box::pin(async move { outcome(handling.await.into_handler_result()) })
        }
        Err(error) => Box::pin(std::future::ready(HandlerOutcome::Undecodable(error))),
    }
}

/// Decodes the delivery as `Message<T>` and calls `handler` with it and the
/// call's [`Context`]: the entry point of a function that takes extractors,
/// which the code `#[consumer]` generates builds from the context (a
/// refusal is the `Err` of `handler`'s future).
#[doc(hidden)]
pub fn call_handler_with_context<T, F, Fut>(handler: F, delivered: &Delivered) -> HandlerFuture
where
    T: Body,
    F: FnOnce(Message<T>, Context) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    match Message::<T>::decode(&delivered.incoming) {
        Ok(message) => {
            let handling = handler(message, delivered.context());
            Box::pin(async move { outcome(handling.await) })
        }
        Err(error) => Box::pin(std::future::ready(HandlerOutcome::Undecodable(error))),
    }
}

/// The handler's result as the consumer's outcome; what the code
/// `#[consumer]` generates returns from a function with extractors goes
/// through [`into_handler_result`].
fn outcome(result: Result<(), BoxError>) -> HandlerOutcome {
    match result {
        Ok(()) => HandlerOutcome::Succeeded,
        Err(error) => HandlerOutcome::Failed(error),
    }
}

/// The user function's return value as the framework's result; its bound
/// is where a wrong return type is reported.
#[doc(hidden)]
pub fn into_handler_result<R: IntoHandlerResult>(result: R) -> Result<(), BoxError> {
    result.into_handler_result()
}
