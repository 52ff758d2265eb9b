//! Parsing the arguments of `#[consumer(...)]`.
//!
//! Every argument has the form `name = value`. The syntax is parsed once for
//! all arguments (a name, `=`, any expression); each known name then decides
//! which expressions it accepts. A new argument is one more entry in
//! [`KNOWN_ARGUMENTS`] and one more arm in [`ConsumerArgs::assign`].
//!
//! Only the shape of the values is checked here (a string, an integer);
//! whether a routing key, a queue name, a number of attempts or a duration is
//! valid is decided in `check.rs`.

use proc_macro2::{Span, TokenStream};
use syn::{
    Expr, ExprLit, ExprUnary, Ident, Lit, LitBool, LitInt, LitStr, Token, UnOp,
    ext::IdentExt,
    parse::{Parse, ParseStream, Parser},
    punctuated::Punctuated,
};

use crate::errors::Errors;

/// Every argument `#[consumer]` accepts, in the order an error lists them.
const KNOWN_ARGUMENTS: &[&str] = &[
    "routing_key",
    "queue",
    "group",
    "max_attempts",
    "retry_min_delay",
    "retry_max_delay",
    "timeout",
    "prefetch",
    "concurrency",
    "queue_type",
    "max_length",
    "max_length_bytes",
    "overflow",
    "single_active_consumer",
    "max_priority",
    "message_ttl",
    "delivery_limit",
    "arguments",
];

/// Names used by other frameworks or settings, too far from the right one
/// for [`edit_distance`] to find it.
const SYNONYMS: &[(&str, &str)] = &[
    ("attempts", "max_attempts"),
    ("retries", "max_attempts"),
    ("max_retries", "max_attempts"),
    ("min_delay", "retry_min_delay"),
    ("max_delay", "retry_max_delay"),
    ("handler_timeout", "timeout"),
    ("prefetch_count", "prefetch"),
    ("qos", "prefetch"),
    ("workers", "concurrency"),
    ("max_workers", "concurrency"),
    ("parallelism", "concurrency"),
    ("max_concurrency", "concurrency"),
    ("queue_kind", "queue_type"),
    ("quorum", "queue_type"),
    ("x_queue_type", "queue_type"),
    ("ttl", "message_ttl"),
    ("x_message_ttl", "message_ttl"),
    ("x_max_length", "max_length"),
    ("max_len", "max_length"),
    ("x_overflow", "overflow"),
    ("priority", "max_priority"),
    ("x_max_priority", "max_priority"),
    ("x_delivery_limit", "delivery_limit"),
    ("x_single_active_consumer", "single_active_consumer"),
    ("single_active", "single_active_consumer"),
    ("queue_arguments", "arguments"),
    ("args", "arguments"),
    ("x_args", "arguments"),
];

/// The arguments of one `#[consumer(...)]`.
///
/// Values keep their literal tokens so that later errors point at them.
#[derive(Default)]
pub(crate) struct ConsumerArgs {
    pub(crate) routing_key: Option<RoutingKeys>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) max_attempts: Option<LitInt>,
    pub(crate) retry_min_delay: Option<LitStr>,
    pub(crate) retry_max_delay: Option<LitStr>,
    pub(crate) timeout: Option<LitStr>,
    pub(crate) prefetch: Option<LitInt>,
    pub(crate) concurrency: Option<LitInt>,
    pub(crate) queue_type: Option<LitStr>,
    pub(crate) max_length: Option<LitInt>,
    pub(crate) max_length_bytes: Option<LitInt>,
    pub(crate) overflow: Option<LitStr>,
    pub(crate) single_active_consumer: Option<LitBool>,
    pub(crate) max_priority: Option<LitInt>,
    pub(crate) message_ttl: Option<LitStr>,
    pub(crate) delivery_limit: Option<LitInt>,
    pub(crate) arguments: Option<Vec<QueueArgument>>,
    /// The known arguments that were written, valid or not, or suggested for
    /// a misspelled one: an argument with an error is not also "missing".
    pub(crate) mentioned: Vec<&'static str>,
}

/// One entry of `arguments = [("x-name", value), ...]`: a name and a
/// string, integer or boolean literal.
pub(crate) struct QueueArgument {
    pub(crate) name: LitStr,
    pub(crate) value: Lit,
}

/// `routing_key = "a.b"` or `routing_key = ["a.b", "c.*"]`.
pub(crate) struct RoutingKeys {
    pub(crate) keys: Vec<LitStr>,
    /// The whole value, where an empty list is reported.
    pub(crate) value_span: Span,
}

/// Parses the attribute's arguments. `None` when they are not even
/// syntactically `name = value, ...` (that error is in `errors`); otherwise
/// the arguments that could be understood, with an error in `errors` for each
/// one that could not.
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Option<ConsumerArgs> {
    let raw = match Punctuated::<RawArgument, Token![,]>::parse_terminated.parse2(args) {
        Ok(raw) => raw,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let mut args = ConsumerArgs::default();
    let mut seen: Vec<String> = Vec::new();
    for argument in raw {
        let name = argument.name.unraw().to_string();
        if seen.contains(&name) {
            errors.at(
                argument.name.span(),
                format_args!("`{name}` is given twice; give each argument once"),
            );
            continue;
        }
        seen.push(name.clone());
        args.assign(&name, &argument, errors);
    }
    Some(args)
}

impl ConsumerArgs {
    fn assign(&mut self, name: &str, argument: &RawArgument, errors: &mut Errors) {
        match name {
            "routing_key" => self.routing_key = routing_keys(&argument.value, errors),
            "queue" => {
                self.queue = string_literal(name, "\"billing_audit\"", &argument.value, errors)
            }
            "group" => self.group = string_literal(name, "\"billing\"", &argument.value, errors),
            "max_attempts" => {
                self.max_attempts = integer_literal(
                    name,
                    "3",
                    "how many times a message is handled",
                    &argument.value,
                    errors,
                )
            }
            "retry_min_delay" => {
                self.retry_min_delay = duration_literal(name, "500ms", &argument.value, errors)
            }
            "retry_max_delay" => {
                self.retry_max_delay = duration_literal(name, "5m", &argument.value, errors)
            }
            "timeout" => self.timeout = duration_literal(name, "30s", &argument.value, errors),
            "prefetch" => {
                self.prefetch = integer_literal(
                    name,
                    "32",
                    "how many deliveries the broker sends ahead",
                    &argument.value,
                    errors,
                )
            }
            "concurrency" => {
                self.concurrency = integer_literal(
                    name,
                    "8",
                    "how many calls of the handler run at once",
                    &argument.value,
                    errors,
                )
            }
            "queue_type" => {
                self.queue_type = string_literal(name, "\"quorum\"", &argument.value, errors);
            }
            "max_length" | "max_length_bytes" | "max_priority" | "delivery_limit" => {
                let (example, counts) = match name {
                    "max_length" => ("100000", "messages"),
                    "max_length_bytes" => ("1000000000", "bytes"),
                    "max_priority" => ("10", "priority levels"),
                    _ => ("5", "deliveries"),
                };
                let literal = integer_literal(name, example, counts, &argument.value, errors);
                match name {
                    "max_length" => self.max_length = literal,
                    "max_length_bytes" => self.max_length_bytes = literal,
                    "max_priority" => self.max_priority = literal,
                    _ => self.delivery_limit = literal,
                }
            }
            "overflow" => {
                self.overflow = string_literal(name, "\"reject-publish\"", &argument.value, errors);
            }
            "single_active_consumer" => {
                self.single_active_consumer = bool_literal(name, &argument.value, errors);
            }
            "message_ttl" => {
                self.message_ttl = duration_literal(name, "24h", &argument.value, errors);
            }
            "arguments" => self.arguments = queue_arguments(&argument.value, errors),
            _ => errors.at(argument.name.span(), unknown_argument(name)),
        }
        self.mentioned.extend(
            KNOWN_ARGUMENTS
                .iter()
                .find(|known| **known == name)
                .copied()
                .or_else(|| suggestion(name)),
        );
    }
}

/// `name = value` before the name is looked up.
struct RawArgument {
    name: Ident,
    value: Expr,
}

impl Parse for RawArgument {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            return Err(input.error("name the argument: `routing_key = \"orders.placed\"`"));
        }
        // `parse_any` so that a keyword such as `type = ...` gets the
        // "unknown argument" message rather than "expected identifier".
        let name = input.call(Ident::parse_any)?;
        if !input.peek(Token![=]) {
            let unraw = name.unraw().to_string();
            let message = if KNOWN_ARGUMENTS.contains(&unraw.as_str()) {
                format!("expected `=` after `{unraw}`: arguments are written `{unraw} = value`")
            } else {
                unknown_argument(&unraw)
            };
            return Err(syn::Error::new(name.span(), message));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Self { name, value })
    }
}

fn unknown_argument(name: &str) -> String {
    let known = KNOWN_ARGUMENTS
        .iter()
        .map(|known| format!("`{known}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut message = format!("unknown argument `{name}`; #[consumer] accepts {known}");
    if let Some(suggestion) = suggestion(name) {
        message.push_str(&format!(" (did you mean `{suggestion}`?)"));
    }
    message
}

/// The known argument closest to `unknown` (a typo or a synonym), if any is close.
fn suggestion(unknown: &str) -> Option<&'static str> {
    KNOWN_ARGUMENTS
        .iter()
        .map(|known| (edit_distance(unknown, known), *known))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
        .or_else(|| {
            SYNONYMS
                .iter()
                .find(|(synonym, _)| *synonym == unknown)
                .map(|(_, known)| *known)
        })
}

fn routing_keys(value: &Expr, errors: &mut Errors) -> Option<RoutingKeys> {
    const EXPECTED: &str = "`routing_key` takes a string literal or a list of string literals: \
                            `routing_key = \"orders.placed\"` or `routing_key = [\"orders.*\", \"refunds.#\"]`";
    match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(key), ..
        }) => Some(RoutingKeys {
            keys: vec![key.clone()],
            value_span: key.span(),
        }),
        Expr::Array(array) => {
            let mut keys = Vec::with_capacity(array.elems.len());
            for element in &array.elems {
                match ungroup(element) {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(key), ..
                    }) => keys.push(key.clone()),
                    other => errors.spanned(
                        other,
                        "a routing key must be a string literal such as \"orders.placed\"",
                    ),
                }
            }
            Some(RoutingKeys {
                keys,
                value_span: array.bracket_token.span.join(),
            })
        }
        other => {
            errors.spanned(other, EXPECTED);
            None
        }
    }
}

fn string_literal(name: &str, example: &str, value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(literal),
            ..
        }) => Some(literal.clone()),
        other => {
            errors.spanned(
                other,
                format_args!("`{name}` takes a string literal: `{name} = {example}`"),
            );
            None
        }
    }
}

/// `single_active_consumer = true`.
fn bool_literal(name: &str, value: &Expr, errors: &mut Errors) -> Option<LitBool> {
    match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(literal),
            ..
        }) => Some(literal.clone()),
        other => {
            errors.spanned(
                other,
                format_args!("`{name}` takes `true` or `false`: `{name} = true`"),
            );
            None
        }
    }
}

/// `arguments = [("x-queue-leader-locator", "balanced"), ("x-max-age", "7D")]`:
/// a list of (name, literal) pairs, whose names `check.rs` validates.
fn queue_arguments(value: &Expr, errors: &mut Errors) -> Option<Vec<QueueArgument>> {
    const EXPECTED: &str = "`arguments` takes a list of (name, value) pairs of literals: \
                            `arguments = [(\"x-queue-leader-locator\", \"balanced\"), (\"x-max-age\", \"7D\")]`";
    let Expr::Array(array) = ungroup(value) else {
        errors.spanned(value, EXPECTED);
        return None;
    };
    let mut arguments = Vec::with_capacity(array.elems.len());
    for element in &array.elems {
        let Expr::Tuple(pair) = ungroup(element) else {
            errors.spanned(element, EXPECTED);
            continue;
        };
        let mut items = pair.elems.iter().map(ungroup);
        match (items.next(), items.next(), items.next()) {
            (
                Some(Expr::Lit(ExprLit {
                    lit: Lit::Str(name),
                    ..
                })),
                Some(Expr::Lit(ExprLit { lit: value, .. })),
                None,
            ) if matches!(value, Lit::Str(_) | Lit::Int(_) | Lit::Bool(_)) => {
                arguments.push(QueueArgument {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
            _ => errors.spanned(
                element,
                "each queue argument is a pair of a name and a string, integer or boolean literal: `(\"x-max-age\", \"7D\")`",
            ),
        }
    }
    Some(arguments)
}

/// `max_attempts = 3`, `prefetch = 32`: an integer literal, whose value
/// `check.rs` validates. `example` is a typical value and `counts` what the
/// number counts, for the error messages.
fn integer_literal(
    name: &str,
    example: &str,
    counts: &str,
    value: &Expr,
    errors: &mut Errors,
) -> Option<LitInt> {
    let message = match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Int(literal),
            ..
        }) => return Some(literal.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(literal),
            ..
        }) if literal.value().trim().parse::<u32>().is_ok() => format!(
            "`{name}` takes an integer, not a string: remove the quotes, `{name} = {}`",
            literal.value().trim()
        ),
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => format!("`{name}` takes a whole number: `{name} = {example}`"),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => format!(
            "`{name}` cannot be negative: it counts {counts}, at least 1, e.g. `{name} = {example}`"
        ),
        _ => format!("`{name}` takes an integer literal: `{name} = {example}`"),
    };
    errors.spanned(value, message);
    None
}

/// `timeout = "30s"`: a string literal, which `check.rs` parses as a duration.
fn duration_literal(
    name: &str,
    example: &str,
    value: &Expr,
    errors: &mut Errors,
) -> Option<LitStr> {
    let message = match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(literal),
            ..
        }) => return Some(literal.clone()),
        // A bare number has no unit: say which units there are.
        Expr::Lit(ExprLit {
            lit: Lit::Int(number),
            ..
        }) => format!(
            "`{name}` takes a duration with a unit, in a string: `{name} = \"{digits}s\"` \
             for seconds or `{name} = \"{digits}ms\"` for milliseconds",
            digits = number.base10_digits()
        ),
        Expr::Lit(ExprLit {
            lit: Lit::Float(number),
            ..
        }) => format!(
            "`{name}` takes a duration with a unit, in a string: `{name} = \"{digits}s\"`",
            digits = number.base10_digits()
        ),
        _ => format!(
            "`{name}` takes a duration in a string literal, such as `{name} = \"{example}\"` \
             (units: ms, s, m, h)"
        ),
    };
    errors.spanned(value, message);
    None
}

/// Looks through the invisible groups `macro_rules!` puts around `$value:expr`,
/// so a consumer declared by a user's macro is parsed like one written out.
fn ungroup(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

/// Levenshtein distance, to suggest `routing_key` for `routing_keys` or `rounting_key`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_ok(tokens: TokenStream) -> ConsumerArgs {
        let mut errors = Errors::default();
        let args = parse(tokens, &mut errors);
        errors.finish().expect("no errors");
        args.expect("parsed")
    }

    fn parse_err(tokens: TokenStream) -> String {
        let mut errors = Errors::default();
        let _ = parse(tokens, &mut errors);
        errors
            .finish()
            .expect_err("an error")
            .into_iter()
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn parses_single_key_list_queue_and_group() {
        let args = parse_ok(quote!(routing_key = "a.b"));
        let keys = args.routing_key.unwrap().keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].value(), "a.b");

        let args = parse_ok(quote!(
            routing_key = ["a.#", "b.*"],
            queue = "q",
            group = "g",
        ));
        let keys: Vec<_> = args
            .routing_key
            .unwrap()
            .keys
            .iter()
            .map(LitStr::value)
            .collect();
        assert_eq!(keys, ["a.#", "b.*"]);
        assert_eq!(args.queue.unwrap().value(), "q");
        assert_eq!(args.group.unwrap().value(), "g");
    }

    #[test]
    fn reports_every_bad_argument() {
        let message = parse_err(quote!(routing_keys = "a", queue = 1, queue = "q", type = "x"));
        assert!(
            message.contains("unknown argument `routing_keys`"),
            "{message}"
        );
        assert!(message.contains("did you mean `routing_key`"), "{message}");
        assert!(
            message.contains("`queue` takes a string literal"),
            "{message}"
        );
        assert!(message.contains("`queue` is given twice"), "{message}");
        assert!(message.contains("unknown argument `type`"), "{message}");
        assert!(!message.contains("did you mean `queue`"), "{message}");
    }

    #[test]
    fn explains_missing_names_and_values() {
        assert!(parse_err(quote!("a.b")).contains("name the argument"));
        assert!(parse_err(quote!(routing_key)).contains("expected `=` after `routing_key`"));
        assert!(parse_err(quote!(routing_key = [1])).contains("must be a string literal"));
        assert!(parse_err(quote!(routing_key = KEY)).contains("a list of string literals"));
    }

    #[test]
    fn parses_failure_handling_arguments() {
        let args = parse_ok(quote!(
            routing_key = "a.b",
            max_attempts = 5,
            retry_min_delay = "500ms",
            retry_max_delay = "5m",
            timeout = "30s",
        ));
        assert_eq!(args.max_attempts.unwrap().base10_digits(), "5");
        assert_eq!(args.retry_min_delay.unwrap().value(), "500ms");
        assert_eq!(args.retry_max_delay.unwrap().value(), "5m");
        assert_eq!(args.timeout.unwrap().value(), "30s");
    }

    #[test]
    fn parses_prefetch_and_concurrency() {
        let args = parse_ok(quote!(
            routing_key = "a.b",
            prefetch = 64,
            concurrency = 8u16
        ));
        assert_eq!(args.prefetch.unwrap().base10_digits(), "64");
        let concurrency = args.concurrency.unwrap();
        assert_eq!(concurrency.base10_digits(), "8");
        assert_eq!(concurrency.suffix(), "u16");
    }

    #[test]
    fn explains_values_of_the_wrong_kind() {
        let quoted = parse_err(quote!(max_attempts = "3"));
        assert!(
            quoted.contains("remove the quotes, `max_attempts = 3`"),
            "{quoted}"
        );
        let fraction = parse_err(quote!(max_attempts = 3.5));
        assert!(fraction.contains("a whole number"), "{fraction}");
        let negative = parse_err(quote!(max_attempts = -1));
        assert!(negative.contains("cannot be negative"), "{negative}");
        let constant = parse_err(quote!(max_attempts = ATTEMPTS));
        assert!(constant.contains("an integer literal"), "{constant}");
        let quoted = parse_err(quote!(prefetch = "32"));
        assert!(
            quoted.contains("remove the quotes, `prefetch = 32`"),
            "{quoted}"
        );
        let negative = parse_err(quote!(concurrency = -1));
        assert!(
            negative.contains(
                "`concurrency` cannot be negative: it counts how many calls of the handler run \
                 at once, at least 1, e.g. `concurrency = 8`"
            ),
            "{negative}"
        );
        let fraction = parse_err(quote!(concurrency = 2.5));
        assert!(
            fraction.contains("`concurrency` takes a whole number: `concurrency = 8`"),
            "{fraction}"
        );
        let constant = parse_err(quote!(prefetch = PREFETCH));
        assert!(
            constant.contains("`prefetch` takes an integer literal: `prefetch = 32`"),
            "{constant}"
        );
        let twice = parse_err(quote!(prefetch = 1, prefetch = 2));
        assert!(twice.contains("`prefetch` is given twice"), "{twice}");
        let bare = parse_err(quote!(timeout = 30));
        assert!(bare.contains("`timeout = \"30s\"`"), "{bare}");
        let constant = parse_err(quote!(retry_max_delay = MAX));
        assert!(
            constant.contains("`retry_max_delay = \"5m\"`"),
            "{constant}"
        );
    }

    #[test]
    fn suggests_the_closest_argument() {
        assert_eq!(suggestion("max_attempt"), Some("max_attempts"));
        assert_eq!(suggestion("retry_min_dely"), Some("retry_min_delay"));
        assert_eq!(suggestion("retry_max_dely"), Some("retry_max_delay"));
        assert_eq!(suggestion("timout"), Some("timeout"));
        assert_eq!(suggestion("max_retries"), Some("max_attempts"));
        assert_eq!(suggestion("min_delay"), Some("retry_min_delay"));
        assert_eq!(suggestion("prefetc"), Some("prefetch"));
        assert_eq!(suggestion("prefetch_count"), Some("prefetch"));
        assert_eq!(suggestion("qos"), Some("prefetch"));
        assert_eq!(suggestion("concurency"), Some("concurrency"));
        for synonym in ["workers", "max_workers", "parallelism", "max_concurrency"] {
            assert_eq!(suggestion(synonym), Some("concurrency"), "{synonym}");
        }
        assert_eq!(suggestion("exchange"), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("routing_key", "routing_key"), 0);
        assert_eq!(edit_distance("routing_keys", "routing_key"), 1);
        assert_eq!(edit_distance("rounting_key", "routing_key"), 1);
        assert_eq!(edit_distance("grp", "group"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
