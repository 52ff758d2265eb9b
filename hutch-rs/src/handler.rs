//! How a `#[consumer]` function is called: the delivery is decoded into a
//! `Message<T>`, the function runs, and its result becomes an outcome that the
//! consumer turns into an ack or a reject.

use std::{future::Future, pin::Pin};

use serde::de::DeserializeOwned;

use crate::{
    BoxError,
    message::{DecodeError, Incoming, Message},
};

/// The future a registered handler returns. Boxed because registrations are
/// `fn` pointers built in `const` context, one type for every consumer.
#[doc(hidden)]
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerOutcome> + Send + 'static>>;

/// The type-erased entry point `#[consumer]` generates for each function.
#[doc(hidden)]
pub type HandlerFn = fn(&Incoming) -> HandlerFuture;

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

/// Decodes `incoming` as `Message<T>` and calls `handler` with it.
///
/// `incoming` is borrowed: the consumer keeps the original bytes and
/// properties to forward the message to a delay or dead-letter queue if the
/// handler fails.
///
/// The code `#[consumer]` generates calls this with the user's function; the
/// generic bounds are where a wrong signature is reported.
#[doc(hidden)]
pub fn call_handler<T, F, Fut>(handler: F, incoming: &Incoming) -> HandlerFuture
where
    T: DeserializeOwned + Send + 'static,
    F: FnOnce(Message<T>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: IntoHandlerResult,
{
    match Message::<T>::decode(incoming) {
        Ok(message) => {
            let handling = handler(message);
            Box::pin(async move {
                match handling.await.into_handler_result() {
                    Ok(()) => HandlerOutcome::Succeeded,
                    Err(error) => HandlerOutcome::Failed(error),
                }
            })
        }
        Err(error) => Box::pin(std::future::ready(HandlerOutcome::Undecodable(error))),
    }
}
