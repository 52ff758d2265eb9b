//! What `#[consumer]` can refuse before the type checker runs: the shape of
//! the function's signature, the syntax of routing keys, queue and group
//! names, the number of attempts, the durations of the failure handling, the
//! prefetch and the concurrency.
//!
//! The return type and the message body type are left to the bounds of
//! `hutch_rs::__private::call_handler`: only the type checker knows whether a
//! type implements `Deserialize` or converts into `BoxError`.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{
    FnArg, GenericArgument, ItemFn, LitInt, LitStr, PathArguments, ReturnType, Signature, Type,
    ext::IdentExt, spanned::Spanned,
};

use crate::{attr::ConsumerArgs, duration, errors::Errors};

/// The longest routing key AMQP can carry (a short string).
const MAX_ROUTING_KEY_BYTES: usize = 255;

/// Queue names are short strings too (255 bytes); the rest is left for the
/// `"<namespace>:"` prefix and the `":dead"` suffix of the dead-letter queue.
const MAX_NAME_BYTES: usize = 200;

/// A retry waits in a delay queue as a message TTL (`x-message-ttl`), which
/// RabbitMQ caps at `u32::MAX` milliseconds, about 49 days. The same limit as
/// `hutch_rs::retry::policy::MAX_DELAY`, checked again at startup.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// RabbitMQ's `consumer_timeout`: a delivery unacknowledged for 30 minutes
/// makes the broker close the channel, and the message comes back as the
/// same attempt. A handler timeout must end a call before that. The same
/// limit as `hutch_rs::config::MAX_HANDLER_TIMEOUT`.
const MAX_HANDLER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A `#[consumer]` whose arguments and signature passed every check.
pub(crate) struct Consumer<'a> {
    pub(crate) function: &'a ItemFn,
    /// The function name without `r#`: the registered name and default queue.
    pub(crate) name: String,
    pub(crate) routing_keys: &'a [LitStr],
    pub(crate) queue: Option<&'a LitStr>,
    pub(crate) group: Option<&'a LitStr>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) retry_min_delay: Option<Duration>,
    pub(crate) retry_max_delay: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) prefetch: Option<u16>,
    pub(crate) concurrency: Option<u16>,
    /// `.with_queue_arguments(...)` when any queue argument is given.
    pub(crate) queue_arguments: Option<proc_macro2::TokenStream>,
    /// `T` in the argument `Message<T>`.
    pub(crate) body_type: &'a Type,
    /// The types of the arguments after the message: extractors, each
    /// checked by the type checker against `hutch_rs::FromDelivery`.
    pub(crate) extractors: Vec<&'a Type>,
    /// Where the function's return type is written, or its name when it
    /// returns `()`: where a wrong return type is reported.
    pub(crate) output_span: Span,
}

/// Checks everything and reports every problem in `errors`. `None` when
/// `args` could not be parsed or something is wrong.
pub(crate) fn consumer<'a>(
    args: Option<&'a ConsumerArgs>,
    function: &'a ItemFn,
    errors: &mut Errors,
) -> Option<Consumer<'a>> {
    if let Some(again) = function
        .attrs
        .iter()
        .find(|attribute| is_consumer_attribute(attribute))
    {
        errors.spanned(
            again,
            "#[consumer] is applied twice to this function; remove one",
        );
    }
    let name = function.sig.ident.unraw().to_string();
    let Some(args) = args else {
        signature(&function.sig, errors);
        return None;
    };

    let routing_keys = match &args.routing_key {
        Some(routing_key) => {
            if routing_key.keys.is_empty() {
                errors.at(
                    routing_key.value_span,
                    "`routing_key` needs at least one routing key, e.g. `routing_key = [\"orders.placed\"]`",
                );
            }
            routing_keys(&routing_key.keys, errors);
            Some(&routing_key.keys[..])
        }
        // `routing_key = KEY` or `routing_keys = ...` already has its error.
        None if args.mentioned.contains(&"routing_key") => None,
        None => {
            errors.at(
                Span::call_site(),
                "#[consumer] needs a routing key to bind its queue with: \
                 add `routing_key = \"orders.placed\"` (or a list, `routing_key = [\"orders.*\", \"refunds.#\"]`)",
            );
            None
        }
    };

    if let Some(queue) = &args.queue {
        if let Err(problem) = validate_name(NameKind::Queue, &queue.value()) {
            errors.at(queue.span(), problem);
        }
    } else if let Err(problem) = validate_name(NameKind::Queue, &name) {
        errors.at(
            function.sig.ident.span(),
            format_args!(
                "the queue is named after the function, but {problem}; give the queue a name with `queue = \"...\"`"
            ),
        );
    }
    if let Some(group) = &args.group {
        if let Err(problem) = validate_name(NameKind::Group, &group.value()) {
            errors.at(group.span(), problem);
        }
    }

    let max_attempts = args
        .max_attempts
        .as_ref()
        .and_then(|literal| max_attempts(literal, errors));
    let (retry_min_delay, retry_max_delay) = retry_delays(args, errors);
    let timeout = args
        .timeout
        .as_ref()
        .and_then(|literal| handler_timeout(literal, errors));
    let (prefetch, concurrency) = flow_control(args, errors);
    let queue_arguments = crate::queue::queue_arguments(args, errors);

    let (body_type, extractors) = signature(&function.sig, errors)?;
    Some(Consumer {
        function,
        name,
        routing_keys: routing_keys?,
        queue: args.queue.as_ref(),
        group: args.group.as_ref(),
        max_attempts,
        retry_min_delay,
        retry_max_delay,
        timeout,
        prefetch,
        concurrency,
        queue_arguments,
        body_type,
        extractors,
        output_span: match &function.sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => function.sig.ident.span(),
        },
    })
}

/// `max_attempts = N`: at least 1, a `u32`.
fn max_attempts(literal: &LitInt, errors: &mut Errors) -> Option<u32> {
    let suffix = literal.suffix();
    if !suffix.is_empty() && suffix != "u32" {
        errors.at(
            literal.span(),
            format_args!(
                "`max_attempts` is a `u32`; remove the `{suffix}` suffix: `max_attempts = {}`",
                literal.base10_digits()
            ),
        );
        return None;
    }
    match literal.base10_parse::<u32>() {
        Ok(0) => {
            errors.at(
                literal.span(),
                "max_attempts must be at least 1: 1 means no retries; \
                 `max_attempts = 3` handles a failing message up to 3 times",
            );
            None
        }
        Ok(attempts) => Some(attempts),
        Err(_) => {
            errors.at(
                literal.span(),
                format_args!(
                    "`max_attempts` is at most {}; a handful is usual, e.g. `max_attempts = 3`",
                    u32::MAX
                ),
            );
            None
        }
    }
}

/// `prefetch` and `concurrency`, each valid on its own and, when both are
/// given, `concurrency` at most `prefetch`. One given alone is checked
/// against the configured default of the other when the consumer starts.
fn flow_control(args: &ConsumerArgs, errors: &mut Errors) -> (Option<u16>, Option<u16>) {
    let prefetch = args.prefetch.as_ref().and_then(|literal| {
        u16_count(
            "prefetch",
            literal,
            "prefetch must be at least 1: in AMQP a prefetch of 0 means unlimited, which lets \
             the broker push the whole queue into this consumer's memory; give a number, \
             e.g. `prefetch = 32`",
            "`prefetch` is at most 65535, the largest prefetch count AMQP can carry; \
             a few dozen is usual, e.g. `prefetch = 32`",
            errors,
        )
    });
    let concurrency = args.concurrency.as_ref().and_then(|literal| {
        u16_count(
            "concurrency",
            literal,
            "concurrency must be at least 1: with 0 the handler would never be called; \
             `concurrency = 1` handles one message at a time, `concurrency = 8` up to 8 at once",
            "`concurrency` is at most 65535, and at most the prefetch; e.g. `concurrency = 8`",
            errors,
        )
    });
    if let (Some(prefetch), Some(concurrency), Some(literal)) =
        (prefetch, concurrency, &args.concurrency)
    {
        if concurrency > prefetch {
            errors.at(
                literal.span(),
                format_args!(
                    "`concurrency = {concurrency}` is more than `prefetch = {prefetch}`: the broker \
                     never has more than {prefetch} deliveries out to this consumer, so at most \
                     {prefetch} calls could run at once; lower concurrency to {prefetch} or less, \
                     or raise prefetch to at least {concurrency}"
                ),
            );
        }
    }
    (prefetch, concurrency)
}

/// `prefetch = N` or `concurrency = N`: at least 1, a `u16`. `zero` and
/// `too_large` are the messages for 0 and for more than `u16::MAX`.
fn u16_count(
    name: &str,
    literal: &LitInt,
    zero: &str,
    too_large: &str,
    errors: &mut Errors,
) -> Option<u16> {
    let suffix = literal.suffix();
    if !suffix.is_empty() && suffix != "u16" {
        errors.at(
            literal.span(),
            format_args!(
                "`{name}` is a `u16`; remove the `{suffix}` suffix: `{name} = {}`",
                literal.base10_digits()
            ),
        );
        return None;
    }
    match literal.base10_parse::<u16>() {
        Ok(0) => {
            errors.at(literal.span(), zero);
            None
        }
        Ok(count) => Some(count),
        Err(_) => {
            errors.at(literal.span(), too_large);
            None
        }
    }
}

/// `retry_min_delay` and `retry_max_delay`, each valid on its own and, when
/// both are given, in order. One given alone is checked against the
/// configured default of the other when the consumer starts.
fn retry_delays(args: &ConsumerArgs, errors: &mut Errors) -> (Option<Duration>, Option<Duration>) {
    let min = args
        .retry_min_delay
        .as_ref()
        .and_then(|literal| retry_delay("retry_min_delay", "500ms", literal, errors));
    let max = args
        .retry_max_delay
        .as_ref()
        .and_then(|literal| retry_delay("retry_max_delay", "5m", literal, errors));
    if let (Some(min_delay), Some(max_delay), Some(min_literal), Some(max_literal)) =
        (min, max, &args.retry_min_delay, &args.retry_max_delay)
    {
        if min_delay > max_delay {
            errors.at(
                min_literal.span(),
                format_args!(
                    "`retry_min_delay = {:?}` is longer than `retry_max_delay = {:?}`; the wait between \
                     attempts grows from the first to the second, so make retry_min_delay the shorter, \
                     e.g. `retry_min_delay = \"500ms\", retry_max_delay = \"5m\"`",
                    min_literal.value(),
                    max_literal.value()
                ),
            );
        }
    }
    (min, max)
}

/// A retry delay: longer than zero, and short enough for a message TTL.
fn retry_delay(
    name: &str,
    example: &str,
    literal: &LitStr,
    errors: &mut Errors,
) -> Option<Duration> {
    let delay = positive_duration(name, example, literal, errors)?;
    if delay > MAX_RETRY_DELAY {
        errors.at(
            literal.span(),
            format_args!(
                "`{name} = {:?}` is longer than RabbitMQ allows: a retry waits as a message TTL, \
                 at most {} ms (about 49 days); e.g. `{name} = \"{example}\"`",
                literal.value(),
                MAX_RETRY_DELAY.as_millis()
            ),
        );
        return None;
    }
    Some(delay)
}

/// A handler timeout: longer than zero, shorter than RabbitMQ's
/// `consumer_timeout`.
fn handler_timeout(literal: &LitStr, errors: &mut Errors) -> Option<Duration> {
    let timeout = positive_duration("timeout", "30s", literal, errors)?;
    if timeout >= MAX_HANDLER_TIMEOUT {
        errors.at(
            literal.span(),
            format_args!(
                "`timeout = {:?}` is not shorter than RabbitMQ's consumer_timeout (30 minutes), \
                 after which the broker takes the message back and it would loop; \
                 e.g. `timeout = \"5m\"`",
                literal.value()
            ),
        );
        return None;
    }
    Some(timeout)
}

/// A duration such as `"30s"`, longer than zero.
pub(crate) fn positive_duration(
    name: &str,
    example: &str,
    literal: &LitStr,
    errors: &mut Errors,
) -> Option<Duration> {
    match duration::parse(name, &literal.value()) {
        Ok(duration) if duration.is_zero() => {
            errors.at(
                literal.span(),
                format_args!("`{name}` must be longer than zero, e.g. `{name} = \"{example}\"`"),
            );
            None
        }
        Ok(duration) => Some(duration),
        Err(problem) => {
            errors.at(literal.span(), problem);
            None
        }
    }
}

/// `#[consumer]` or `#[hutch_rs::consumer]`, left on the function by a second
/// application of the attribute.
fn is_consumer_attribute(attribute: &syn::Attribute) -> bool {
    let path = attribute.path();
    path.is_ident("consumer")
        || (path.segments.len() == 2
            && path.segments[0].ident == "hutch_rs"
            && path.segments[1].ident == "consumer")
}

fn routing_keys(keys: &[LitStr], errors: &mut Errors) {
    let mut seen: Vec<String> = Vec::with_capacity(keys.len());
    for key in keys {
        let value = key.value();
        if let Err(problem) = validate_routing_key(&value) {
            errors.at(key.span(), problem);
        } else if seen.contains(&value) {
            errors.at(
                key.span(),
                format_args!("routing key \"{value}\" is listed twice; remove one"),
            );
        }
        seen.push(value);
    }
}

/// Checks that `key` is an AMQP topic pattern: dot-separated words, where
/// `*` (exactly one word) and `#` (zero or more words) stand for whole words.
pub(crate) fn validate_routing_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(
            "routing key is empty; write a dot-separated topic such as \"orders.placed\" \
                    (or \"#\" to receive every message)"
                .to_owned(),
        );
    }
    if key.len() > MAX_ROUTING_KEY_BYTES {
        return Err(format!(
            "routing key is {} bytes long; AMQP allows at most {MAX_ROUTING_KEY_BYTES}",
            key.len()
        ));
    }
    if key.starts_with('.') {
        return Err(format!(
            "routing key \"{key}\" starts with a dot; remove the leading `.`"
        ));
    }
    if key.ends_with('.') {
        return Err(format!(
            "routing key \"{key}\" ends with a dot; remove the trailing `.`"
        ));
    }
    if key.contains("..") {
        return Err(format!(
            "routing key \"{key}\" has an empty word between two dots; use a single `.` between words"
        ));
    }
    for word in key.split('.') {
        for wildcard in ['*', '#'] {
            if word.contains(wildcard) && word != wildcard.to_string() {
                let within = if word == key {
                    String::new()
                } else {
                    format!(", not part of \"{word}\"")
                };
                return Err(format!(
                    "in routing key \"{key}\", `{wildcard}` must be a whole word between dots{within} \
                     (`*` matches exactly one word, `#` zero or more: \"orders.*\", \"orders.#\")"
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    Queue,
    Group,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Group => "group",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Self::Queue => "billing_audit",
            Self::Group => "billing",
        }
    }
}

/// Checks a queue or group name: short, made of characters that need no
/// quoting anywhere (management UI, URLs, shell), and not reserved.
pub(crate) fn validate_name(kind: NameKind, name: &str) -> Result<(), String> {
    let kind_name = kind.as_str();
    if name.is_empty() {
        return Err(format!(
            "{kind_name} name is empty; remove `{kind_name}` or give a name such as \"{}\"",
            kind.example()
        ));
    }
    if let Some(invalid) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "{kind_name} name \"{name}\" contains {invalid:?}; use only ASCII letters, digits, `_`, `-`, `.` and `:`"
        ));
    }
    if kind == NameKind::Queue && name.starts_with("amq.") {
        return Err(format!(
            "queue name \"{name}\" starts with \"amq.\", which RabbitMQ reserves for its own queues; choose another name"
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{kind_name} name is {} bytes long; at most {MAX_NAME_BYTES} are allowed \
             (room is kept for the namespace prefix and the \":dead\" suffix)",
            name.len()
        ));
    }
    Ok(())
}

/// Checks that the function is `async fn name(msg: Message<T>, ...)` and
/// returns `T` and the types of the arguments after the message.
fn signature<'a>(sig: &'a Signature, errors: &mut Errors) -> Option<(&'a Type, Vec<&'a Type>)> {
    let mut valid = true;
    let mut refuse = |errors: &mut Errors, tokens: &dyn ToTokens, message: &str| {
        errors.spanned(tokens, message);
        valid = false;
    };

    if let Some(constness) = &sig.constness {
        refuse(
            errors,
            constness,
            "a #[consumer] function cannot be `const`; remove `const`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        refuse(
            errors,
            unsafety,
            "a #[consumer] function cannot be `unsafe`: the runtime calls it with no way to uphold its \
             safety contract; remove `unsafe`",
        );
    }
    if let Some(abi) = &sig.abi {
        refuse(
            errors,
            abi,
            "a #[consumer] function cannot be `extern`; remove the ABI",
        );
    }
    if sig.asyncness.is_none() {
        refuse(
            errors,
            &sig.fn_token,
            "a #[consumer] function must be `async`: write `async fn`",
        );
    }
    if !sig.generics.params.is_empty() {
        refuse(
            errors,
            &sig.generics,
            "a #[consumer] function cannot be generic: the runtime needs one concrete message type; \
             remove the generic parameters and name the type in `Message<...>`",
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        refuse(
            errors,
            where_clause,
            "a #[consumer] function cannot have a `where` clause; remove it",
        );
    }
    if let Some(variadic) = &sig.variadic {
        refuse(
            errors,
            variadic,
            "a #[consumer] function cannot be variadic",
        );
    }

    let mut inputs = sig.inputs.iter();
    let body_type = match inputs.next() {
        None => {
            errors.at(
                sig.paren_token.span.join(),
                "a #[consumer] function takes the message first, `msg: Message<T>` where `T` is the \
                 body type, then any extractors (`State<T>`, `Context`)",
            );
            None
        }
        Some(FnArg::Receiver(receiver)) => {
            errors.spanned(
                receiver,
                "a #[consumer] function cannot take `self`: it must be a free function \
                 taking `msg: Message<T>`; move it out of the `impl` block",
            );
            return None;
        }
        Some(FnArg::Typed(argument)) => message_body_type(&argument.ty, errors),
    };
    let mut extractors = Vec::new();
    for argument in inputs {
        match argument {
            FnArg::Receiver(receiver) => {
                errors.spanned(
                    receiver,
                    "a #[consumer] function cannot take `self`: it must be a free function; \
                     move it out of the `impl` block",
                );
                valid = false;
            }
            FnArg::Typed(argument) => {
                if is_message_type(&argument.ty) {
                    errors.spanned(
                        &argument.ty,
                        "a #[consumer] function takes one `Message<T>`, first; the arguments \
                         after it are extractors (`State<T>`, `Context`, or your own \
                         `hutch_rs::FromDelivery` type)",
                    );
                    valid = false;
                } else if let Some(impl_token) = find_impl_keyword(argument.ty.to_token_stream()) {
                    errors.at(
                        impl_token,
                        "an extractor cannot be `impl Trait`: the runtime builds one concrete \
                         type for each argument; name it",
                    );
                    valid = false;
                } else {
                    extractors.push(&*argument.ty);
                }
            }
        }
    }
    match body_type {
        Some(body_type) if valid => Some((body_type, extractors)),
        _ => None,
    }
}

/// Whether `ty` names `Message<...>` (by its last path segment).
fn is_message_type(ty: &Type) -> bool {
    let mut unwrapped = ty;
    while let Type::Group(group) = unwrapped {
        unwrapped = &group.elem;
    }
    matches!(unwrapped, Type::Path(path)
        if path.qself.is_none()
            && path.path.segments.last().is_some_and(|segment| segment.ident == "Message"))
}

/// `T` in `Message<T>`, `hutch_rs::Message<T>` or any other path ending in
/// `Message` with one type argument. Checked by name only: a type alias or a
/// different `Message` type is left to the type checker.
fn message_body_type<'a>(ty: &'a Type, errors: &mut Errors) -> Option<&'a Type> {
    let mut unwrapped = ty;
    while let Type::Group(group) = unwrapped {
        unwrapped = &group.elem;
    }
    let body_type = match unwrapped {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .filter(|segment| segment.ident == "Message")
            .and_then(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(generics) if generics.args.len() == 1 => {
                    match &generics.args[0] {
                        GenericArgument::Type(body_type) => Some(body_type),
                        _ => None,
                    }
                }
                _ => None,
            }),
        _ => None,
    };
    let Some(body_type) = body_type else {
        errors.spanned(
            ty,
            "the first argument of a #[consumer] function must be the message, `Message<T>` \
             (`hutch_rs::Message`) where `T` is the body type, e.g. `msg: Message<OrderPlaced>`; \
             extractors (`State<T>`, `Context`) come after it",
        );
        return None;
    };
    // `Message<impl Trait>` makes the function generic in disguise.
    if let Some(impl_token) = find_impl_keyword(body_type.to_token_stream()) {
        errors.at(
            impl_token,
            "the message type cannot be `impl Trait`: the runtime decodes into one concrete type; name it",
        );
        return None;
    }
    Some(body_type)
}

fn find_impl_keyword(tokens: TokenStream) -> Option<Span> {
    tokens.into_iter().find_map(|token| match token {
        TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
        TokenTree::Group(group) => find_impl_keyword(group.stream()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_topic_patterns() {
        for key in [
            "orders",
            "orders.placed",
            "orders.*",
            "orders.#",
            "*",
            "#",
            "#.placed",
            "*.orders.#",
            "a.*.*.b",
            "orders-v2.placed_at",
            "ünïcödé.ключ",
        ] {
            assert_eq!(validate_routing_key(key), Ok(()), "{key}");
        }
        assert_eq!(validate_routing_key(&"a".repeat(255)), Ok(()));
    }

    #[test]
    fn refuses_empty_keys_and_words() {
        let empty = validate_routing_key("").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        let leading = validate_routing_key(".orders").unwrap_err();
        assert!(leading.contains("starts with a dot"), "{leading}");
        let trailing = validate_routing_key("orders.").unwrap_err();
        assert!(trailing.contains("ends with a dot"), "{trailing}");
        let double = validate_routing_key("orders..placed").unwrap_err();
        assert!(double.contains("empty word"), "{double}");
        assert!(validate_routing_key(".").is_err());
    }

    #[test]
    fn refuses_wildcards_inside_words() {
        for key in ["orders.*x", "ord#ers", "orders.**", "#.##", "x*", "*#"] {
            let problem = validate_routing_key(key).unwrap_err();
            assert!(problem.contains("must be a whole word"), "{key}: {problem}");
        }
    }

    #[test]
    fn refuses_keys_longer_than_255_bytes() {
        let problem = validate_routing_key(&"a".repeat(256)).unwrap_err();
        assert!(problem.contains("256 bytes"), "{problem}");
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(validate_routing_key(&"é".repeat(128)).is_err());
    }

    /// Checks a consumer with these arguments: what `seen` picks out of it
    /// when it passed, and every error message, one a line.
    fn check_with<T>(args: TokenStream, seen: impl Fn(&Consumer<'_>) -> T) -> (Option<T>, String) {
        let mut errors = Errors::default();
        let args = crate::attr::parse(args, &mut errors).expect("parsed");
        let function: ItemFn = syn::parse_quote! {
            async fn handle(msg: Message<u64>) -> Result<(), BoxError> { Ok(()) }
        };
        let seen = consumer(Some(&args), &function, &mut errors).map(|consumer| seen(&consumer));
        let message = errors
            .finish()
            .err()
            .into_iter()
            .flatten()
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        (seen, message)
    }

    fn check(args: TokenStream) -> (Option<FailureHandling>, String) {
        check_with(args, |consumer| FailureHandling {
            max_attempts: consumer.max_attempts,
            retry_min_delay: consumer.retry_min_delay,
            retry_max_delay: consumer.retry_max_delay,
            timeout: consumer.timeout,
        })
    }

    /// `prefetch` and `concurrency` of a consumer that passed.
    type Flow = (Option<u16>, Option<u16>);

    /// The `Flow` when the consumer passed, and the errors.
    fn flow(args: TokenStream) -> (Option<Flow>, String) {
        check_with(quote::quote!(routing_key = "a", #args), |consumer| {
            (consumer.prefetch, consumer.concurrency)
        })
    }

    #[test]
    fn accepts_prefetch_and_concurrency() {
        for (args, expected) in [
            (quote::quote!(), (None, None)),
            (quote::quote!(prefetch = 64), (Some(64), None)),
            (quote::quote!(concurrency = 8), (None, Some(8))),
            (
                quote::quote!(prefetch = 64, concurrency = 8),
                (Some(64), Some(8)),
            ),
            // Equal is fine: every delivery out can be handled at once.
            (
                quote::quote!(prefetch = 16u16, concurrency = 16u16),
                (Some(16), Some(16)),
            ),
            (
                quote::quote!(prefetch = 1, concurrency = 1),
                (Some(1), Some(1)),
            ),
            (
                quote::quote!(prefetch = 65535, concurrency = 65535),
                (Some(65535), Some(65535)),
            ),
            // Alone, a large concurrency is checked against the configured
            // prefetch when the consumer starts.
            (quote::quote!(concurrency = 1000), (None, Some(1000))),
        ] {
            let (seen, message) = flow(args.clone());
            assert_eq!(message, "", "{args}");
            assert_eq!(seen, Some(expected), "{args}");
        }
    }

    #[test]
    fn refuses_out_of_range_prefetch_and_concurrency() {
        for (args, expected) in [
            (
                quote::quote!(prefetch = 0),
                "prefetch must be at least 1: in AMQP a prefetch of 0 means unlimited",
            ),
            (
                quote::quote!(concurrency = 0),
                "concurrency must be at least 1",
            ),
            (
                quote::quote!(prefetch = 65536),
                "`prefetch` is at most 65535",
            ),
            (
                quote::quote!(concurrency = 70000),
                "`concurrency` is at most 65535",
            ),
            (
                quote::quote!(prefetch = 32u32),
                "`prefetch` is a `u16`; remove the `u32` suffix: `prefetch = 32`",
            ),
            (quote::quote!(concurrency = 4i64), "remove the `i64` suffix"),
            (
                quote::quote!(prefetch = 64, concurrency = 65),
                "`concurrency = 65` is more than `prefetch = 64`",
            ),
            (
                quote::quote!(concurrency = 100, prefetch = 10),
                "at most 10 calls could run at once",
            ),
        ] {
            let (_, message) = flow(args.clone());
            assert!(message.contains(expected), "{args}: {message}");
            assert_eq!(message.lines().count(), 1, "{args}: {message}");
        }
        // An invalid prefetch is reported once, not compared with the concurrency.
        let (_, message) = flow(quote::quote!(prefetch = 0, concurrency = 8));
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    #[derive(Debug, PartialEq)]
    struct FailureHandling {
        max_attempts: Option<u32>,
        retry_min_delay: Option<Duration>,
        retry_max_delay: Option<Duration>,
        timeout: Option<Duration>,
    }

    #[test]
    fn accepts_failure_handling_arguments() {
        let (handling, message) = check(quote::quote!(
            routing_key = "a",
            max_attempts = 5u32,
            retry_min_delay = "500ms",
            retry_max_delay = "1m 30s",
            timeout = "29m",
        ));
        assert_eq!(message, "");
        assert_eq!(
            handling,
            Some(FailureHandling {
                max_attempts: Some(5),
                retry_min_delay: Some(Duration::from_millis(500)),
                retry_max_delay: Some(Duration::from_secs(90)),
                timeout: Some(Duration::from_secs(29 * 60)),
            })
        );
        let (handling, message) = check(quote::quote!(
            routing_key = "a",
            max_attempts = 1,
            retry_min_delay = "4294967295ms",
            retry_max_delay = "4294967295ms",
        ));
        assert_eq!(message, "");
        assert_eq!(handling.unwrap().max_attempts, Some(1));
    }

    #[test]
    fn refuses_out_of_range_failure_handling_arguments() {
        for (args, expected) in [
            (
                quote::quote!(max_attempts = 0),
                "max_attempts must be at least 1: 1 means no retries",
            ),
            (quote::quote!(max_attempts = 3u8), "remove the `u8` suffix"),
            (
                quote::quote!(max_attempts = 4294967296),
                "at most 4294967295",
            ),
            (
                quote::quote!(retry_min_delay = "0s"),
                "`retry_min_delay` must be longer than zero",
            ),
            (
                quote::quote!(timeout = "0ms"),
                "`timeout` must be longer than zero",
            ),
            (quote::quote!(timeout = ""), "`timeout` is empty"),
            (
                quote::quote!(retry_max_delay = "4294967296ms"),
                "at most 4294967295 ms",
            ),
            (
                quote::quote!(retry_min_delay = "50d"),
                "at most 4294967295 ms",
            ),
            (
                quote::quote!(retry_min_delay = "10s", retry_max_delay = "5s"),
                "`retry_min_delay = \"10s\"` is longer than `retry_max_delay = \"5s\"`",
            ),
        ] {
            let (_, message) = check(quote::quote!(routing_key = "a", #args));
            assert!(message.contains(expected), "{args}: {message}");
            assert_eq!(message.lines().count(), 1, "{args}: {message}");
        }
    }

    #[test]
    fn validates_queue_and_group_names() {
        for name in ["billing_audit", "shop:billing", "a.b-c", "Q1"] {
            assert_eq!(validate_name(NameKind::Queue, name), Ok(()), "{name}");
            assert_eq!(validate_name(NameKind::Group, name), Ok(()), "{name}");
        }
        assert!(
            validate_name(NameKind::Queue, "")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            validate_name(NameKind::Group, "bill ing")
                .unwrap_err()
                .contains("' '")
        );
        assert!(
            validate_name(NameKind::Queue, "café")
                .unwrap_err()
                .contains("'é'")
        );
        assert!(
            validate_name(NameKind::Queue, "amq.audit")
                .unwrap_err()
                .contains("reserves")
        );
        assert_eq!(validate_name(NameKind::Group, "amq.audit"), Ok(()));
        assert_eq!(validate_name(NameKind::Queue, &"q".repeat(200)), Ok(()));
        assert!(
            validate_name(NameKind::Queue, &"q".repeat(201))
                .unwrap_err()
                .contains("201 bytes")
        );
    }
}
