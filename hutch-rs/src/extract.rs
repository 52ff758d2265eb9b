//! Extractors: what a `#[consumer]` function takes after its `Message<T>`.
//!
//! The idiom is axum's `FromRequestParts`: each argument's type says how it
//! is built from the delivery, asynchronously, and may refuse. The built-in
//! ones are [`State<T>`] and [`Context`]; an application writes its own by
//! implementing [`FromDelivery`] (a tenant read from a header, a database
//! transaction begun on a pool from the state).

use std::{
    any::{Any, TypeId, type_name},
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::Arc,
};

use crate::{BoxError, context::Context};

/// A type a `#[consumer]` function can take as an argument after its
/// `Message<T>`: built from the delivery before each call.
///
/// A refusal (`Err`) is that message's failure, exactly like an `Err`
/// returned by the handler: the message is retried, then dead-lettered with
/// the rejection's text; the handler is not called.
///
/// ```
/// use hutch_rs::{BoxError, Context, FromDelivery};
///
/// /// The tenant a message belongs to, from its `x-tenant` header.
/// struct Tenant(String);
///
/// impl FromDelivery for Tenant {
///     type Rejection = BoxError;
///
///     async fn from_delivery(ctx: &Context) -> Result<Self, BoxError> {
///         let tenant = ctx
///             .header_text("x-tenant")
///             .ok_or("the message has no x-tenant header")?;
///         Ok(Tenant(tenant.to_owned()))
///     }
/// }
/// ```
///
/// An extractor that needs a value given to
/// [`HutchBuilder::state`](crate::HutchBuilder::state) reads it with
/// [`Context::state`] and declares it in
/// [`required_state`](Self::required_state), so that a missing value stops
/// `start` instead of failing every message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a #[consumer] function",
    label = "not an extractor",
    note = "after its `Message<T>`, a #[consumer] function takes extractors: `State<T>` (a value given to `HutchBuilder::state`), `Context` (the running `Hutch` and the delivery's metadata), or a type of your own that implements `hutch_rs::FromDelivery`"
)]
pub trait FromDelivery: Sized + Send {
    /// Why the value could not be built; becomes the message's failure.
    type Rejection: Into<BoxError>;

    /// Builds the value for one call from the delivery and the running
    /// instance that `ctx` gives access to.
    fn from_delivery(ctx: &Context) -> impl Future<Output = Result<Self, Self::Rejection>> + Send;

    /// Declares the state values this extractor reads with
    /// [`Context::state`], checked when the consumers start. None by
    /// default.
    fn required_state(required: &mut RequiredState) {
        let _ = required;
    }
}

/// A clone of the value of type `T` given to
/// [`HutchBuilder::state`](crate::HutchBuilder::state): a connection pool, an
/// HTTP client, settings.
///
/// ```
/// use hutch_rs::{BoxError, Message, State, consumer};
///
/// #[derive(Clone)]
/// struct Prices {
///     vat_percent: u64,
/// }
///
/// #[consumer(routing_key = "orders.placed")]
/// async fn add_vat(msg: Message<u64>, State(prices): State<Prices>) -> Result<(), BoxError> {
///     println!("{} with VAT", *msg * (100 + prices.vat_percent) / 100);
///     Ok(())
/// }
///
/// let hutch = hutch_rs::Hutch::builder()
///     .state(Prices { vat_percent: 20 })
///     .build()?;
/// # Ok::<(), hutch_rs::Error>(())
/// ```
///
/// A consumer that takes a `State<T>` whose value was not given makes
/// [`Hutch::start`](crate::Hutch::start) (and `run`, `run_until`) fail with
/// [`Error::MissingState`](crate::Error::MissingState) before anything is
/// declared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromDelivery for State<T> {
    type Rejection = MissingStateValue;

    async fn from_delivery(ctx: &Context) -> Result<Self, MissingStateValue> {
        ctx.state::<T>().map(State).ok_or(MissingStateValue {
            type_name: type_name::<T>(),
        })
    }

    fn required_state(required: &mut RequiredState) {
        required.state::<T>();
    }
}

/// A `State<T>` whose value was not given: only possible for a [`Context`]
/// built by hand (in a test), since `start` checks every consumer first.
#[derive(Debug, thiserror::Error)]
#[error("no state of type {type_name} was given to HutchBuilder::state")]
pub struct MissingStateValue {
    type_name: &'static str,
}

/// The state values a consumer's extractors read, collected before the
/// consumers start.
#[derive(Debug, Default)]
pub struct RequiredState {
    types: Vec<(TypeId, &'static str)>,
}

impl RequiredState {
    /// Declares that a value of type `T` must have been given to
    /// [`HutchBuilder::state`](crate::HutchBuilder::state).
    pub fn state<T: Send + Sync + 'static>(&mut self) {
        let id = TypeId::of::<T>();
        if !self.types.iter().any(|(known, _)| *known == id) {
            self.types.push((id, type_name::<T>()));
        }
    }

    /// The declared types that `states` does not hold, by name.
    pub(crate) fn missing_from(&self, states: &States) -> Vec<&'static str> {
        self.types
            .iter()
            .filter(|(id, _)| !states.values.contains_key(id))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// The values given to [`HutchBuilder::state`](crate::HutchBuilder::state),
/// one per type.
#[derive(Clone, Default)]
pub(crate) struct States {
    values: HashMap<TypeId, StateValue>,
}

#[derive(Clone)]
struct StateValue {
    type_name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

impl States {
    /// Keeps `value`, replacing an earlier value of the same type.
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(
            TypeId::of::<T>(),
            StateValue {
                type_name: type_name::<T>(),
                value: Arc::new(value),
            },
        );
    }

    /// A clone of the value of type `T`, if one was given.
    pub(crate) fn get<T: Clone + 'static>(&self) -> Option<T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|state| state.value.downcast_ref::<T>())
            .cloned()
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values may hold secrets (a pool's credentials): names only.
        f.debug_set()
            .entries(self.values.values().map(|state| state.type_name))
            .finish()
    }
}

impl FromDelivery for Context {
    type Rejection = std::convert::Infallible;

    async fn from_delivery(ctx: &Context) -> Result<Self, std::convert::Infallible> {
        Ok(ctx.clone())
    }
}

/// Builds extractor `E` for a call, its rejection boxed: what the code
/// `#[consumer]` generates calls for each argument after the message (the
/// bound is where a type that is not an extractor is reported).
///
/// The future is boxed so that its type does not depend on the bound: a
/// type that is not an extractor is then reported at the call, not again
/// at its `.await`.
#[doc(hidden)]
pub fn extract<E: FromDelivery>(ctx: &Context) -> Extraction<'_, E> {
    Box::pin(async move { E::from_delivery(ctx).await.map_err(Into::into) })
}

/// The future of [`extract`].
#[doc(hidden)]
pub type Extraction<'a, E> = Pin<Box<dyn Future<Output = Result<E, BoxError>> + Send + 'a>>;

/// Declares what extractor `E` requires: what `#[consumer]` generates for
/// each argument after the message.
#[doc(hidden)]
pub fn require<E: FromDelivery>(required: &mut RequiredState) {
    E::required_state(required);
}
