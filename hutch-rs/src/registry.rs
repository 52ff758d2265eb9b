//! The consumers that `#[consumer]` registers, collected across the whole binary by `inventory`.

use std::time::Duration;

use crate::{
    extract::RequiredState,
    handler::{HandlerFn, RequiredStateFn},
    queue_arguments::QueueArguments,
};

/// One function annotated with `#[consumer]`.
///
/// The attribute builds this value in a `const` context and submits it to
/// [`inventory`], so every consumer linked into the binary is found at startup
/// without a central list. [`consumers`] lists them.
#[derive(Clone)]
pub struct ConsumerRegistration {
    function: &'static str,
    module_path: &'static str,
    routing_keys: &'static [&'static str],
    queue: Option<&'static str>,
    group: Option<&'static str>,
    max_attempts: Option<u32>,
    retry_min_delay: Option<Duration>,
    retry_max_delay: Option<Duration>,
    timeout: Option<Duration>,
    prefetch: Option<u16>,
    concurrency: Option<u16>,
    queue_arguments: QueueArguments,
    handler: HandlerFn,
    required_state: RequiredStateFn,
    /// `std::any::type_name` of the `T` of `Message<T>`, when the
    /// attribute recorded it.
    message_type: Option<fn() -> &'static str>,
    /// Whether the function takes a `Context`, through which a handler
    /// replies to a request.
    takes_context: bool,
    /// The JSON Schema of the message type, when the attribute recorded it.
    #[cfg(feature = "asyncapi")]
    message_schema: Option<crate::message_schema::MessageSchemaFn>,
}

impl ConsumerRegistration {
    /// Used by `#[consumer]`; not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn new(
        function: &'static str,
        module_path: &'static str,
        routing_keys: &'static [&'static str],
        handler: HandlerFn,
    ) -> Self {
        Self {
            function,
            module_path,
            routing_keys,
            queue: None,
            group: None,
            max_attempts: None,
            retry_min_delay: None,
            retry_max_delay: None,
            timeout: None,
            prefetch: None,
            concurrency: None,
            queue_arguments: QueueArguments::new(),
            handler,
            required_state: requires_no_state,
            message_type: None,
            takes_context: false,
            #[cfg(feature = "asyncapi")]
            message_schema: None,
        }
    }

    /// Used by `#[consumer]`: the type of the function's message body
    /// (`std::any::type_name::<T>`, a function because `type_name` is not
    /// `const`); not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_message_type(mut self, message_type: fn() -> &'static str) -> Self {
        self.message_type = Some(message_type);
        self
    }

    /// Used by `#[consumer]` for a function that takes a `Context`; not a
    /// stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_context(mut self) -> Self {
        self.takes_context = true;
        self
    }

    /// Used by `#[consumer]`: the JSON Schema of the message type, from
    /// `hutch_rs::__private::message_schema!`; not a stable API.
    #[cfg(feature = "asyncapi")]
    #[doc(hidden)]
    #[must_use]
    pub const fn with_message_schema(
        mut self,
        message_schema: crate::message_schema::MessageSchemaFn,
    ) -> Self {
        self.message_schema = Some(message_schema);
        self
    }

    /// Used by `#[consumer]` without the `asyncapi` feature, where
    /// `hutch_rs::__private::message_schema!` records nothing; not a stable
    /// API.
    #[cfg(not(feature = "asyncapi"))]
    #[doc(hidden)]
    #[must_use]
    pub const fn with_message_schema(self, _nothing: ()) -> Self {
        self
    }

    /// Used by `#[consumer]` for a function that takes extractors; not a
    /// stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_required_state(mut self, required_state: RequiredStateFn) -> Self {
        self.required_state = required_state;
        self
    }

    /// Used by `#[consumer]`; not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_queue(mut self, queue: &'static str) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Used by `#[consumer]`; not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_group(mut self, group: &'static str) -> Self {
        self.group = Some(group);
        self
    }

    /// Sets `max_attempts`: how many times a failing message is handled
    /// before it goes to the dead-letter queue (at least 1).
    #[must_use]
    pub const fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Sets `retry_min_delay`: the wait before the first retry.
    #[must_use]
    pub const fn with_retry_min_delay(mut self, delay: Duration) -> Self {
        self.retry_min_delay = Some(delay);
        self
    }

    /// Sets `retry_max_delay`: the longest wait between two attempts.
    #[must_use]
    pub const fn with_retry_max_delay(mut self, delay: Duration) -> Self {
        self.retry_max_delay = Some(delay);
        self
    }

    /// Sets `timeout`: how long one handler call may run before it counts
    /// as failed.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets `prefetch`: how many unacknowledged deliveries the broker sends
    /// this consumer ahead.
    #[must_use]
    pub const fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets `concurrency`: how many calls of the handler may be in flight
    /// at once.
    #[must_use]
    pub const fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets the queue's type and arguments (`queue_type`, `max_length`,
    /// ..., `arguments` on `#[consumer]`).
    #[must_use]
    pub const fn with_queue_arguments(mut self, arguments: QueueArguments) -> Self {
        // A plain assignment would drop the old value, which a `const fn`
        // cannot; the old value holds nothing to free (`new` made it).
        std::mem::forget(std::mem::replace(&mut self.queue_arguments, arguments));
        self
    }

    /// The name of the annotated function.
    #[must_use]
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The module the function is defined in (`module_path!()` at the attribute).
    #[must_use]
    pub fn module_path(&self) -> &'static str {
        self.module_path
    }

    /// The function's path, `module::function`, as used in logs and errors.
    #[must_use]
    pub fn qualified_name(&self) -> String {
        format!("{}::{}", self.module_path, self.function)
    }

    /// The routing keys (topic patterns) the consumer's queue is bound with.
    #[must_use]
    pub fn routing_keys(&self) -> &'static [&'static str] {
        self.routing_keys
    }

    /// The `queue = "..."` argument, if given (without namespace).
    #[must_use]
    pub fn queue_argument(&self) -> Option<&'static str> {
        self.queue
    }

    /// The queue name before the namespace prefix: the `queue` argument, or the function name.
    #[must_use]
    pub fn base_queue_name(&self) -> &'static str {
        self.queue.unwrap_or(self.function)
    }

    /// The `group = "..."` argument, if given.
    #[must_use]
    pub fn group(&self) -> Option<&'static str> {
        self.group
    }

    /// The `max_attempts = N` argument, if given (otherwise the configured
    /// default applies).
    #[must_use]
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The `retry_min_delay = "..."` argument, if given.
    #[must_use]
    pub fn retry_min_delay(&self) -> Option<Duration> {
        self.retry_min_delay
    }

    /// The `retry_max_delay = "..."` argument, if given.
    #[must_use]
    pub fn retry_max_delay(&self) -> Option<Duration> {
        self.retry_max_delay
    }

    /// The `timeout = "..."` argument, if given.
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The `prefetch = N` argument, if given.
    #[must_use]
    pub fn prefetch(&self) -> Option<u16> {
        self.prefetch
    }

    /// The `concurrency = N` argument, if given.
    #[must_use]
    pub fn concurrency(&self) -> Option<u16> {
        self.concurrency
    }

    /// The queue type and arguments given on `#[consumer]` (unset ones
    /// come from [`HutchBuilder::queue_arguments`](crate::HutchBuilder::queue_arguments)).
    #[must_use]
    pub fn queue_arguments(&self) -> &QueueArguments {
        &self.queue_arguments
    }

    /// The generated entry point that decodes a delivery and calls the
    /// function. Not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub fn handler(&self) -> HandlerFn {
        self.handler
    }

    /// The type of the message body, the `T` of the function's
    /// `Message<T>`, as [`std::any::type_name`] writes it (e.g.
    /// `shop::OrderPlaced`); `None` for a registration not made by
    /// `#[consumer]`.
    #[must_use]
    pub fn message_type(&self) -> Option<&'static str> {
        self.message_type.map(|type_name| type_name())
    }

    /// Whether the function takes a [`Context`](crate::Context), the handle
    /// through which a handler replies to a request
    /// ([`Context::reply`](crate::Context::reply)). hutch-rs cannot see
    /// whether it does reply: this says it can.
    #[must_use]
    pub fn takes_context(&self) -> bool {
        self.takes_context
    }

    /// The generated function that writes the message type's JSON Schema,
    /// if the attribute recorded one.
    #[cfg(feature = "asyncapi")]
    pub(crate) fn message_schema(&self) -> Option<crate::message_schema::MessageSchemaFn> {
        self.message_schema
    }

    /// The state values the function's extractors read, by type.
    pub(crate) fn required_state(&self) -> RequiredState {
        let mut required = RequiredState::default();
        (self.required_state)(&mut required);
        required
    }
}

/// What a function that takes its message alone requires.
fn requires_no_state(_: &mut RequiredState) {}

impl std::fmt::Debug for ConsumerRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerRegistration")
            .field("function", &self.qualified_name())
            .field("routing_keys", &self.routing_keys)
            .field("queue", &self.queue)
            .field("group", &self.group)
            .field("max_attempts", &self.max_attempts)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("timeout", &self.timeout)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("queue_arguments", &self.queue_arguments)
            .field("message_type", &self.message_type())
            .field("takes_context", &self.takes_context)
            .finish_non_exhaustive()
    }
}

inventory::collect!(ConsumerRegistration);

/// Every consumer registered with `#[consumer]` in this binary, in a stable
/// order (by module path, then function name).
#[must_use]
pub fn consumers() -> Vec<&'static ConsumerRegistration> {
    let mut all: Vec<_> = inventory::iter::<ConsumerRegistration>
        .into_iter()
        .collect();
    all.sort_by_key(|registration| (registration.module_path, registration.function));
    all
}
