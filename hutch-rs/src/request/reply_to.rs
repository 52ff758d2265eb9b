//! Where a reply goes: the `reply_to` of a request, which came from the
//! wire and is trusted for nothing.
//!
//! Most of it is AMQP's business: a routing key of at most 255 bytes, for
//! which the default exchange finds a queue or drops the message. Direct
//! reply-to addresses are not: RabbitMQ decodes the part after
//! `amq.rabbitmq.reply-to.` into the process id of a channel, and before
//! 4.x it does so unguarded. Measured on 3.10: an address that is not
//! base64, not a process id, or names a node that is not one of the
//! cluster crashes the replier's channel process, and the broker closes the
//! replier's whole connection with 541 INTERNAL_ERROR (every publish and
//! request on it is cut off).
//!
//! So an address must have the shape RabbitMQ gives one (a base64 process
//! id with a node name, a dot, a key), checked here before anything is
//! sent. Whether its node is one of the cluster only the broker knows: a
//! well-formed address naming another node still costs one connection, and
//! the publisher then fails that reply instead of sending it again, which
//! would close the next connection too.

use crate::{Error, Result};

/// AMQP short strings, routing keys among them, hold at most 255 bytes.
const MAX_REPLY_TO_BYTES: usize = 255;

/// How much of a `reply_to` an error shows.
const SHOWN_CHARS: usize = 64;

/// What every direct reply-to address starts with.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Checks that a reply can be routed to `reply_to` through the default
/// exchange without harm: not empty (the default exchange routes `""`
/// nowhere), a routing key AMQP can carry, and if a direct reply-to
/// address, one of the shape RabbitMQ gives.
///
/// What it names is not checked: a queue that does not exist (a requester
/// that has gone, or a name made up) drops the reply, as the broker drops
/// any message routed nowhere, and the replier's channel is not affected.
pub(crate) fn check_reply_to(reply_to: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidReplyTo {
        reply_to: shortened(reply_to),
        reason,
    };
    if reply_to.is_empty() {
        return Err(invalid(
            "it is empty: the message names no queue to reply to".to_owned(),
        ));
    }
    if reply_to.len() > MAX_REPLY_TO_BYTES {
        return Err(invalid(format!(
            "it is {} bytes long; AMQP allows at most {MAX_REPLY_TO_BYTES}",
            reply_to.len()
        )));
    }
    if let Some(address) = reply_to.strip_prefix(DIRECT_REPLY_TO) {
        check_direct_reply_to(address).map_err(|reason| {
            invalid(format!(
                "not a direct reply-to address as RabbitMQ gives them ({reason}); \
                 sent, it could make the broker close the replying connection"
            ))
        })?;
    }
    Ok(())
}

/// Whether `reply_to` is a direct reply-to address, which the broker
/// decodes rather than routes.
pub(crate) fn is_direct_reply_to(reply_to: &str) -> bool {
    reply_to.starts_with(DIRECT_REPLY_TO)
}

/// The part of a direct reply-to address after `amq.rabbitmq.reply-to`:
/// `.<base64 of an Erlang process id>.<key>`, as every RabbitMQ version
/// writes it (the process id names a node, or in later versions a hash of
/// one as `reply@<hash>`).
fn check_direct_reply_to(address: &str) -> std::result::Result<(), &'static str> {
    let address = address
        .strip_prefix('.')
        .ok_or("no channel address follows the prefix")?;
    let (process, key) = address
        .split_once('.')
        .ok_or("no key follows the channel address")?;
    if process.is_empty() || key.is_empty() || key.contains('.') {
        return Err("not a channel address and a key separated by one dot");
    }
    let term = decode_base64(process).ok_or("the channel address is not base64")?;
    check_process_id(&term)
}

/// Erlang's external term format: the version byte, then the term.
const TERM_VERSION: u8 = 131;
const PID_EXT: u8 = 103;
const NEW_PID_EXT: u8 = 88;
const ATOM_EXT: u8 = 100;
const SMALL_ATOM_EXT: u8 = 115;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;

/// Checks that `term` is exactly one process id in Erlang's external term
/// format, stricter than Erlang itself where the format leaves room (the
/// node must look like a node name, the old format's fields within their
/// significant bits), so that nothing passes here that the broker would
/// fail to decode.
fn check_process_id(term: &[u8]) -> std::result::Result<(), &'static str> {
    let mut term = Bytes(term);
    if term.u8()? != TERM_VERSION {
        return Err("the channel address is not an Erlang term");
    }
    match term.u8()? {
        PID_EXT => {
            check_node(&mut term)?;
            let id = term.u32()?;
            let serial = term.u32()?;
            let creation = term.u8()?;
            if id >= 1 << 15 || serial >= 1 << 13 || creation > 3 {
                return Err("the process id's fields are out of range");
            }
        }
        NEW_PID_EXT => {
            check_node(&mut term)?;
            term.take(12)?;
        }
        _ => return Err("the channel address is not a process id"),
    }
    if !term.0.is_empty() {
        return Err("the channel address has bytes after the process id");
    }
    Ok(())
}

/// A node name: an atom of 1 to 255 characters with an `@`.
fn check_node(term: &mut Bytes<'_>) -> std::result::Result<(), &'static str> {
    let (length, utf8) = match term.u8()? {
        ATOM_EXT => (usize::from(term.u16()?), false),
        SMALL_ATOM_EXT => (usize::from(term.u8()?), false),
        ATOM_UTF8_EXT => (usize::from(term.u16()?), true),
        SMALL_ATOM_UTF8_EXT => (usize::from(term.u8()?), true),
        _ => return Err("the process id's node is not an atom"),
    };
    let name = term.take(length)?;
    let characters = if utf8 {
        std::str::from_utf8(name)
            .map_err(|_| "the process id's node is not UTF-8")?
            .chars()
            .count()
    } else {
        name.len()
    };
    if !(1..=255).contains(&characters) || !name.contains(&b'@') {
        return Err("the process id's node is not a node name");
    }
    Ok(())
}

/// Reads a term front to back; every read past the end is an error.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, count: usize) -> std::result::Result<&'a [u8], &'static str> {
        if self.0.len() < count {
            return Err("the channel address ends too early");
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, &'static str> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// Standard base64 with padding, canonical only (as RabbitMQ writes it):
/// anything else is `None`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(byte: u8) -> Option<u32> {
        Some(u32::from(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&byte| byte == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut decoded = Vec::with_capacity(bytes.len() / 4 * 3);
    let last = bytes.len() / 4 - 1;
    for (index, quad) in bytes.chunks_exact(4).enumerate() {
        let kept = if index == last { 4 - padding } else { 4 };
        let mut bits = 0_u32;
        for &byte in &quad[..kept] {
            bits = bits << 6 | sextet(byte)?;
        }
        bits <<= 6 * (4 - kept);
        let [_, first, second, third] = bits.to_be_bytes();
        let produced = [first, second, third];
        let useful = kept - 1;
        // Bits past the last byte must be zero in canonical base64.
        if produced[useful..].iter().any(|&byte| byte != 0) {
            return None;
        }
        decoded.extend_from_slice(&produced[..useful]);
    }
    Some(decoded)
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

    /// An address of RabbitMQ 4.2 (node `reply@<hash>`, new pid format).
    const RABBITMQ_4: &str = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUA2ODc4MTMzNAAAcEoAAAAAaS8eQg==.qPK/bO8v+U0xM3tcHOmN1A==";

    fn encode_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in bytes.chunks(3) {
            let mut bits = 0_u32;
            for (index, &byte) in chunk.iter().enumerate() {
                bits |= u32::from(byte) << (16 - 8 * index);
            }
            for index in 0..4 {
                if index <= chunk.len() {
                    text.push(char::from(
                        ALPHABET[(bits >> (18 - 6 * index) & 63) as usize],
                    ));
                } else {
                    text.push('=');
                }
            }
        }
        text
    }

    /// A direct reply-to address for the process id `term`.
    fn address(term: &[u8]) -> String {
        format!("{DIRECT_REPLY_TO}.{}.a2V5", encode_base64(term))
    }

    /// An old-format process id on `node`.
    fn old_pid(node: &[u8], id: u32, serial: u32, creation: u8) -> Vec<u8> {
        let mut term = vec![TERM_VERSION, PID_EXT, ATOM_EXT, 0, node.len() as u8];
        term.extend_from_slice(node);
        term.extend_from_slice(&id.to_be_bytes());
        term.extend_from_slice(&serial.to_be_bytes());
        term.push(creation);
        term
    }

    #[test]
    fn base64_decodes_canonical_text_only() {
        assert_eq!(decode_base64("a2V5").unwrap(), b"key");
        assert_eq!(decode_base64("aw==").unwrap(), b"k");
        assert_eq!(decode_base64("a2U=").unwrap(), b"ke");
        for bad in ["", "a2V", "a2V5=", "aw=a", "a===", "ax==", "a2V$", "a2U-"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
        for bytes in [&b""[..], b"\x83", b"\x83X", b"\xff\xfe\xfd\xfc"] {
            if !bytes.is_empty() {
                assert_eq!(decode_base64(&encode_base64(bytes)).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn routable_reply_tos_pass() {
        for reply_to in [
            RABBITMQ_4,
            &address(&old_pid(b"rabbit@host", 1234, 0, 1)),
            "shop:replies",
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            &"r".repeat(255),
        ] {
            assert!(check_reply_to(reply_to).is_ok(), "{reply_to:?}");
        }
    }

    #[test]
    fn forged_direct_reply_to_addresses_are_refused() {
        let mut long_tail = old_pid(b"rabbit@host", 1, 0, 1);
        long_tail.push(0);
        let forged = [
            DIRECT_REPLY_TO.to_owned(),
            format!("{DIRECT_REPLY_TO}."),
            format!("{DIRECT_REPLY_TO}.."),
            format!("{DIRECT_REPLY_TO}x"),
            format!("{DIRECT_REPLY_TO}.abc"),
            format!("{DIRECT_REPLY_TO}.not base64.key"),
            format!("{DIRECT_REPLY_TO}.a2V5.key.more"),
            format!("{DIRECT_REPLY_TO}.a2V5."),
            // Base64, but not a term, or a term that is not a process id.
            address(b"key"),
            address(&[TERM_VERSION, 97, 1]),
            // Process ids that end early, run on, or name no node.
            address(&old_pid(b"rabbit@host", 1, 0, 1)[..12]),
            address(&long_tail),
            address(&old_pid(b"no-at-sign", 1, 0, 1)),
            address(&old_pid(b"", 1, 0, 1)),
            address(&old_pid(b"rabbit@host", 1 << 15, 0, 1)),
            address(&old_pid(b"rabbit@host", 1, 1 << 13, 1)),
            address(&old_pid(b"rabbit@host", 1, 0, 4)),
            address(&[
                TERM_VERSION,
                NEW_PID_EXT,
                SMALL_ATOM_UTF8_EXT,
                3,
                0xff,
                b'@',
                0xfe,
            ]),
            "amq.rabbitmq.reply-to.g2dkABNyYWJiaXRAbm93aGVyZQAAAAAAAAAA.garbage".to_owned(),
        ];
        for reply_to in &forged {
            let error = check_reply_to(reply_to).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidReplyTo { reason, .. } if reason.contains("direct reply-to")),
                "{reply_to:?}: {error:?}"
            );
        }
    }

    #[test]
    fn an_empty_or_overlong_reply_to_is_refused_with_a_short_message() {
        assert!(matches!(
            check_reply_to(""),
            Err(Error::InvalidReplyTo { reason, .. }) if reason.contains("empty")
        ));
        // Four-byte characters: a cut in the middle of one would panic.
        for long in ["x".repeat(256), "𝄞".repeat(65), "é".repeat(10_000)] {
            let error = check_reply_to(&long).unwrap_err();
            let Error::InvalidReplyTo { reply_to, reason } = &error else {
                panic!("{error:?}");
            };
            assert!(reason.contains(&long.len().to_string()), "{reason}");
            assert!(reply_to.chars().count() <= SHOWN_CHARS + 1, "{reply_to}");
            assert!(error.to_string().len() < 400, "{error}");
        }
    }

    proptest::proptest! {
        /// Whatever the wire carries, the check answers without panicking.
        #[test]
        fn any_reply_to_is_judged_without_panicking(suffix in ".{0,300}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = check_reply_to(&suffix);
            let _ = check_reply_to(&format!("{DIRECT_REPLY_TO}.{suffix}"));
            let _ = check_reply_to(&address(&bytes));
            let mut term = vec![TERM_VERSION, NEW_PID_EXT];
            term.extend_from_slice(&bytes);
            let _ = check_reply_to(&address(&term));
        }
    }
}
