//! Where a reply goes: the `reply_to` of a request, which came from the
//! wire and is trusted for nothing.

use crate::{Error, Result};

/// AMQP short strings, routing keys among them, hold at most 255 bytes.
const MAX_REPLY_TO_BYTES: usize = 255;

/// How much of a `reply_to` an error shows.
const SHOWN_CHARS: usize = 64;

/// Checks that a reply can be routed to `reply_to` through the default
/// exchange: not empty (the default exchange routes `""` nowhere), and a
/// routing key AMQP can carry.
///
/// What it names is not checked: a queue that does not exist (a requester
/// that has gone, or a name made up) drops the reply, as the broker drops
/// any message routed nowhere, and the replier's channel is not affected.
pub(crate) fn check_reply_to(reply_to: &str) -> Result<()> {
    if reply_to.is_empty() {
        return Err(Error::InvalidReplyTo {
            reply_to: String::new(),
            reason: "it is empty: the message names no queue to reply to".to_owned(),
        });
    }
    if reply_to.len() > MAX_REPLY_TO_BYTES {
        return Err(Error::InvalidReplyTo {
            reply_to: shortened(reply_to),
            reason: format!(
                "it is {} bytes long; AMQP allows at most {MAX_REPLY_TO_BYTES}",
                reply_to.len()
            ),
        });
    }
    Ok(())
}

/// `text`, cut at a character boundary if long, for an error message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routable_reply_to_passes() {
        for reply_to in [
            "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxNTg4OTk4NwAAB5AAAAAAXxNz",
            "shop:replies",
            &"r".repeat(255),
        ] {
            assert!(check_reply_to(reply_to).is_ok(), "{reply_to:?}");
        }
    }

    #[test]
    fn an_empty_or_overlong_reply_to_is_refused_with_a_short_message() {
        assert!(matches!(
            check_reply_to(""),
            Err(Error::InvalidReplyTo { reason, .. }) if reason.contains("empty")
        ));
        // Four-byte characters: a cut in the middle of one would panic.
        for long in ["x".repeat(256), "𝄞".repeat(64), "é".repeat(10_000)] {
            let error = check_reply_to(&long).unwrap_err();
            let Error::InvalidReplyTo { reply_to, reason } = &error else {
                panic!("{error:?}");
            };
            assert!(reason.contains(&long.len().to_string()), "{reason}");
            assert!(reply_to.chars().count() <= SHOWN_CHARS + 1, "{reply_to}");
            assert!(error.to_string().len() < 400, "{error}");
        }
    }
}
