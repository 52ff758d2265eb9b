//! The queue type and queue arguments of `#[consumer(...)]`: checked here,
//! where a wrong value can be pointed at, and turned into the
//! `hutch_rs::QueueArguments` the registration carries. Combinations that
//! depend on the builder's settings (a `max_priority` on a queue that the
//! builder makes quorum) are checked when the consumer starts.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Lit, LitInt};

use crate::{attr::ConsumerArgs, check::positive_duration, errors::Errors};

/// The largest `x-message-ttl` RabbitMQ accepts, in milliseconds.
const MAX_TTL_MILLIS: u128 = u32::MAX as u128;

/// The arguments hutch-rs sets itself or types, which `arguments = [...]`
/// may not name, with the argument to use instead. The same list as
/// `hutch_rs::queue_arguments::MANAGED`, which checks the builder's
/// arguments at start (this crate cannot depend on hutch-rs).
const MANAGED: &[(&str, &str)] = &[
    ("x-queue-type", "`queue_type`"),
    (
        "x-dead-letter-exchange",
        "nothing: hutch-rs dead-letters to <queue>:dead",
    ),
    (
        "x-dead-letter-routing-key",
        "nothing: hutch-rs dead-letters to <queue>:dead",
    ),
    (
        "x-dead-letter-strategy",
        "nothing: hutch-rs sets at-least-once on quorum queues",
    ),
    ("x-max-length", "`max_length`"),
    ("x-max-length-bytes", "`max_length_bytes`"),
    ("x-overflow", "`overflow`"),
    ("x-single-active-consumer", "`single_active_consumer`"),
    ("x-max-priority", "`max_priority`"),
    ("x-message-ttl", "`message_ttl`"),
    ("x-delivery-limit", "`delivery_limit`"),
];

/// Checks the queue arguments and returns the expression of their
/// `QueueArguments`, or `None` when none is given (the registration then
/// keeps the default, empty one).
pub(crate) fn queue_arguments(args: &ConsumerArgs, errors: &mut Errors) -> Option<TokenStream> {
    let mut setters = Vec::new();
    let mut quorum = false;
    if let Some(literal) = &args.queue_type {
        match literal.value().as_str() {
            "classic" => setters.push(quote!(.queue_type(::hutch_rs::QueueType::Classic))),
            "quorum" => {
                quorum = true;
                setters.push(quote!(.queue_type(::hutch_rs::QueueType::Quorum)));
            }
            other => errors.at(
                literal.span(),
                format_args!(
                    "{other:?} is not a queue type hutch-rs declares; write `queue_type = \"quorum\"` \
                     (replicated, for data that must survive a node) or `queue_type = \"classic\"`"
                ),
            ),
        }
    }
    for (literal, setter) in [
        (&args.max_length, quote!(max_length)),
        (&args.max_length_bytes, quote!(max_length_bytes)),
    ] {
        if let Some(value) = literal
            .as_ref()
            .and_then(|literal| whole::<u64>(literal, errors))
        {
            setters.push(quote!(.#setter(#value)));
        }
    }
    if let Some(literal) = &args.overflow {
        let variant = match literal.value().as_str() {
            "drop-head" => Some(quote!(DropHead)),
            "reject-publish" => Some(quote!(RejectPublish)),
            "reject-publish-dlx" if quorum => {
                errors.at(
                    literal.span(),
                    "quorum queues take `overflow = \"reject-publish\"` or `\"drop-head\"`, not \"reject-publish-dlx\"",
                );
                None
            }
            "reject-publish-dlx" => Some(quote!(RejectPublishDlx)),
            other => {
                errors.at(
                    literal.span(),
                    format_args!(
                        "{other:?} is not an overflow behaviour; write \"reject-publish\" (refuse new \
                         messages: publishers get an error), \"drop-head\" (dead-letter the oldest) \
                         or \"reject-publish-dlx\""
                    ),
                );
                None
            }
        };
        if let Some(variant) = variant {
            setters.push(quote!(.overflow(::hutch_rs::Overflow::#variant)));
        }
    }
    if let Some(literal) = &args.single_active_consumer {
        setters.push(quote!(.single_active_consumer(#literal)));
    }
    if let Some(literal) = &args.max_priority {
        if quorum {
            errors.at(
                literal.span(),
                "`max_priority` needs a classic queue: quorum queues do not order by priority",
            );
        } else if let Some(levels) = whole::<u8>(literal, errors) {
            if levels == 0 {
                errors.at(
                    literal.span(),
                    "`max_priority` must be at least 1; RabbitMQ advises at most 10, e.g. `max_priority = 10`",
                );
            } else {
                setters.push(quote!(.max_priority(#levels)));
            }
        }
    }
    if let Some(literal) = &args.message_ttl {
        if let Some(ttl) = positive_duration("message_ttl", "24h", literal, errors) {
            if ttl.as_millis() > MAX_TTL_MILLIS {
                errors.at(
                    literal.span(),
                    "`message_ttl` is at most 4294967295 ms (about 49 days)",
                );
            } else {
                let (secs, nanos) = (ttl.as_secs(), ttl.subsec_nanos());
                setters.push(quote!(.message_ttl(::core::time::Duration::new(#secs, #nanos))));
            }
        }
    }
    if let Some(literal) = &args.delivery_limit {
        if args.queue_type.is_some() && !quorum {
            errors.at(
                literal.span(),
                "`delivery_limit` needs `queue_type = \"quorum\"`: classic queues do not count deliveries",
            );
        } else if let Some(limit) = whole::<u32>(literal, errors) {
            setters.push(quote!(.delivery_limit(#limit)));
        }
    }
    let extra = args.arguments.as_ref().map(|arguments| {
        let pairs = arguments.iter().filter_map(|argument| {
            let name = argument.name.value();
            if !name.starts_with("x-") {
                errors.at(
                    argument.name.span(),
                    format_args!("queue argument {name:?} does not start with \"x-\"; RabbitMQ's queue arguments all do"),
                );
                return None;
            }
            if let Some((_, instead)) = MANAGED.iter().find(|(managed, _)| *managed == name) {
                errors.at(
                    argument.name.span(),
                    format_args!("queue argument {name:?} is set by hutch-rs; use {instead}"),
                );
                return None;
            }
            let value = match &argument.value {
                Lit::Str(text) => quote!(::hutch_rs::ArgumentValue::Text(::std::borrow::Cow::Borrowed(#text))),
                Lit::Int(number) => match number.base10_parse::<i64>() {
                    Ok(number) => quote!(::hutch_rs::ArgumentValue::Int(#number)),
                    Err(error) => {
                        errors.at(number.span(), format_args!("not an i64: {error}"));
                        return None;
                    }
                },
                Lit::Bool(flag) => quote!(::hutch_rs::ArgumentValue::Bool(#flag)),
                _ => return None,
            };
            let name = &argument.name;
            Some(quote!((::std::borrow::Cow::Borrowed(#name), #value)))
        });
        let pairs: Vec<_> = pairs.collect();
        // A `const` item: a borrow of values with destructors is not
        // promoted to 'static in an expression, but is in a constant.
        quote! {{
            const __HUTCH_RS_ARGUMENTS: &[::hutch_rs::Argument] = &[#(#pairs),*];
            __HUTCH_RS_ARGUMENTS
        }}
    });
    if setters.is_empty() && extra.is_none() {
        return None;
    }
    let start = match extra {
        Some(extra) => quote!(::hutch_rs::QueueArguments::with_static_arguments(#extra)),
        None => quote!(::hutch_rs::QueueArguments::new()),
    };
    Some(quote!(.with_queue_arguments(#start #(#setters)*)))
}

/// An integer literal of type `N`, or an error at it.
fn whole<N>(literal: &LitInt, errors: &mut Errors) -> Option<N>
where
    N: std::str::FromStr + quote::ToTokens,
    N::Err: std::fmt::Display,
{
    match literal.base10_parse::<N>() {
        Ok(value) => Some(value),
        Err(error) => {
            errors.at(
                literal.span(),
                format_args!(
                    "`{}` is not a whole number that fits a `{}` ({error})",
                    literal.base10_digits(),
                    std::any::type_name::<N>()
                ),
            );
            None
        }
    }
}
