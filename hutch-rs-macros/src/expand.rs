//! The code `#[consumer]` generates: the function, unchanged, and a hidden
//! registration that `hutch_rs::consumers()` finds at startup.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::check::Consumer;

/// The function followed by its registration.
///
/// Everything is reached through `::hutch_rs::__private`, so users depend on
/// `hutch-rs` alone. The registration sits in an anonymous `const` so that its
/// helper items cannot collide with the user's, and so that it is allowed
/// wherever the function is: at module level or inside a function body.
pub(crate) fn consumer(consumer: &Consumer<'_>) -> TokenStream {
    let function = consumer.function;
    let name = &consumer.name;
    let routing_keys = consumer.routing_keys;
    let body_type = consumer.body_type;
    let queue = consumer.queue.map(|queue| quote!(.with_queue(#queue)));
    let group = consumer.group.map(|group| quote!(.with_group(#group)));
    let max_attempts = consumer.max_attempts.map(|attempts| {
        let attempts = Literal::u32_suffixed(attempts);
        quote!(.with_max_attempts(#attempts))
    });
    let retry_min_delay = consumer.retry_min_delay.map(|delay| {
        let delay = duration(delay);
        quote!(.with_retry_min_delay(#delay))
    });
    let retry_max_delay = consumer.retry_max_delay.map(|delay| {
        let delay = duration(delay);
        quote!(.with_retry_max_delay(#delay))
    });
    let timeout = consumer.timeout.map(|timeout| {
        let timeout = duration(timeout);
        quote!(.with_timeout(#timeout))
    });
    let prefetch = consumer.prefetch.map(|prefetch| {
        let prefetch = Literal::u16_suffixed(prefetch);
        quote!(.with_prefetch(#prefetch))
    });
    let queue_arguments = &consumer.queue_arguments;
    let concurrency = consumer.concurrency.map(|concurrency| {
        let concurrency = Literal::u16_suffixed(concurrency);
        quote!(.with_concurrency(#concurrency))
    });

    // A wrong return type fails `call_handler`'s bounds, reported at the
    // call; located at the return type, the error points where the fix goes.
    // `located_at` moves only the location: names resolve as at the call site.
    let call_span = Span::call_site().located_at(consumer.output_span);
    let handler = &function.sig.ident;

    // `#[consumer] #[cfg(...)] async fn` removes the function when the cfg is
    // off; its registration has to go with it.
    let cfgs = function
        .attrs
        .iter()
        .filter(|attribute| attribute.path().is_ident("cfg"));

    let (call, required_state) = if consumer.extractors.is_empty() {
        let call = quote_spanned! {call_span=>
            ::hutch_rs::__private::call_handler::<#body_type, _, _>(#handler, &delivered)
        };
        (call, None)
    } else {
        with_extractors(consumer, call_span)
    };
    // The message type's name and (with hutch-rs's `asyncapi` feature) its
    // JSON Schema, for `Hutch::topology` and AsyncAPI documents. Neither
    // puts a bound on `T`: a type without `JsonSchema` is listed without a
    // schema (see hutch-rs/src/message_schema.rs).
    let message_type = quote! {
        .with_message_type(::core::any::type_name::<#body_type>)
        .with_message_schema(::hutch_rs::__private::message_schema!(#body_type))
    };
    let with_context = consumer
        .extractors
        .iter()
        .any(|ty| is_context(ty))
        .then(|| quote!(.with_context()));
    let with_required_state = required_state
        .as_ref()
        .map(|_| quote!(.with_required_state(__hutch_rs_required_state)));

    quote! {
        #function

        #(#cfgs)*
        const _: () = {
            // The user decides whether calling a deprecated consumer warns.
            #[allow(deprecated)]
            fn __hutch_rs_handler(
                delivered: ::hutch_rs::__private::Delivered,
            ) -> ::hutch_rs::__private::HandlerFuture {
                // Naming `T` makes a body type without `Deserialize` fail
                // at the `T` of `Message<T>`.
                #call
            }

            #required_state

            ::hutch_rs::__private::inventory::submit! {
                ::hutch_rs::__private::ConsumerRegistration::new(
                    #name,
                    ::core::module_path!(),
                    &[#(#routing_keys),*],
                    __hutch_rs_handler,
                )
                #with_required_state
                #message_type
                #with_context
                #queue
                #group
                #max_attempts
                #retry_min_delay
                #retry_max_delay
                #timeout
                #prefetch
                #concurrency
                #queue_arguments
            }
        };
    }
}

/// The call of a function that takes extractors after its message, and the
/// function that declares the state they read.
///
/// Each extractor is built in the order of the arguments, before the call;
/// the first refusal is the message's failure and the function is not
/// called. Each `extract::<T>` is located at its argument's type, so a type
/// that is not an extractor is reported there, with `FromDelivery`'s note.
fn with_extractors(consumer: &Consumer<'_>, call_span: Span) -> (TokenStream, Option<TokenStream>) {
    let body_type = consumer.body_type;
    let handler = &consumer.function.sig.ident;
    let names: Vec<_> = (0..consumer.extractors.len())
        .map(|index| quote::format_ident!("__hutch_rs_argument_{index}"))
        .collect();
    let extractions = consumer.extractors.iter().zip(&names).map(|(ty, name)| {
        let at_type = Span::call_site().located_at(ty.span());
        quote_spanned! {at_type=>
            let #name = ::hutch_rs::__private::extract::<#ty>(&context).await?;
        }
    });
    let requirements = consumer.extractors.iter().map(|ty| {
        let at_type = Span::call_site().located_at(ty.span());
        quote_spanned! {at_type=>
            ::hutch_rs::__private::require::<#ty>(required);
        }
    });
    let result = quote_spanned! {call_span=>
        ::hutch_rs::__private::into_handler_result(#handler(message, #(#names),*).await)
    };
    let call = quote! {
        ::hutch_rs::__private::call_handler_with_context::<#body_type, _, _>(
            |message, context| async move {
                #(#extractions)*
                #result
            },
            &delivered,
        )
    };
    let required_state = quote! {
        fn __hutch_rs_required_state(required: &mut ::hutch_rs::RequiredState) {
            #(#requirements)*
        }
    };
    (call, Some(required_state))
}

/// Whether an extractor is hutch-rs's `Context` (written `Context`,
/// `hutch_rs::Context`, ...), through which a handler replies. By name: the
/// macro sees tokens, not types, so a user's own type called `Context`
/// counts too; it only marks the consumer as one that may reply.
fn is_context(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Context"),
        _ => false,
    }
}

/// `duration` as a `const` expression: parsed when the macro ran, nothing
/// left to parse at run time.
fn duration(duration: Duration) -> TokenStream {
    let secs = Literal::u64_suffixed(duration.as_secs());
    let nanos = Literal::u32_suffixed(duration.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}

/// The item as written, followed by the errors: the function still exists, so
/// the rest of the crate type-checks and IDEs keep completing it.
pub(crate) fn with_errors(item: TokenStream, error: syn::Error) -> TokenStream {
    let errors = error.into_compile_error();
    quote! {
        #item
        #errors
    }
}
