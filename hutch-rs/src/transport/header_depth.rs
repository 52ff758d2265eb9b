//! Bounding how deeply a content header's `headers` table nests.
//!
//! amq-protocol parses field arrays and tables recursively, on lapin's I/O
//! thread (a plain 2 MiB thread hutch-rs cannot configure). Each level of
//! nesting costs 5 bytes on the wire (`'A'` plus a `u32` length) but more
//! than a kilobyte of that thread's stack, so a few kilobytes of headers
//! that any publisher may send abort the whole process; the broker
//! redelivers the message and it aborts every restart. This walker reads
//! the same bytes without recursion, before amq-protocol does, and replaces
//! headers nested too deeply with a flat table that says what happened.

use std::ops::Range;

use crate::headers::REJECTED_HEADERS;

/// How deeply arrays and tables may nest inside a message's headers table
/// (a header whose value is an array of scalars is depth 1).
///
/// Generous for real use (headers are metadata; nothing we know of nests
/// more than a handful of levels) and far below what any parser stack
/// needs: amq-protocol uses about 12 KB of stack per level in a debug build
/// and 1.6 KB in release, so 64 levels stay under 1 MB even in debug, on a
/// 2 MiB thread.
pub(crate) const MAX_HEADER_DEPTH: usize = 64;

/// AMQP frame type of a content header frame.
pub(crate) const FRAME_HEADER: u8 = 2;
/// The octet every AMQP frame ends with.
pub(crate) const FRAME_END: u8 = 0xCE;
/// Frame type, channel and payload size.
pub(crate) const FRAME_HEADER_LEN: usize = 7;

/// Bit of the property flags that says the headers table is present
/// (content-type is bit 15, content-encoding bit 14, headers bit 13).
const HEADERS_FLAG: u16 = 1 << 13;
const CONTENT_TYPE_FLAG: u16 = 1 << 15;
const CONTENT_ENCODING_FLAG: u16 = 1 << 14;
/// Class id, weight and body size, ahead of the property flags.
const PROPERTIES_OFFSET: usize = 2 + 2 + 8;

/// A whole content header frame (7-byte frame header, payload, frame end)
/// with its headers table replaced if it nests deeper than
/// [`MAX_HEADER_DEPTH`]; `None` when the frame is fine as it is or when it
/// is not a content header this walker understands (amq-protocol then
/// reports its own error, as it would have without us).
pub(crate) fn sanitize_content_header_frame(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < FRAME_HEADER_LEN + 1 || frame[0] != FRAME_HEADER {
        return None;
    }
    let size = u32::from_be_bytes(frame[3..7].try_into().ok()?) as usize;
    if frame.len() != FRAME_HEADER_LEN + size + 1 || frame[frame.len() - 1] != FRAME_END {
        return None;
    }
    let payload = &frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + size];
    let Verdict::TooDeep { headers } = check_properties(payload) else {
        return None;
    };
    let replacement = rejected_headers_table(headers.len());
    let new_size = payload.len() - headers.len() + replacement.len();
    let mut sanitized = Vec::with_capacity(FRAME_HEADER_LEN + new_size + 1);
    sanitized.extend_from_slice(&frame[..3]);
    // The replacement is about a hundred bytes, always fewer than what it
    // replaces (at least 65 levels of 5 bytes each).
    sanitized.extend_from_slice(&u32::try_from(new_size).ok()?.to_be_bytes());
    sanitized.extend_from_slice(&payload[..headers.start]);
    sanitized.extend_from_slice(&replacement);
    sanitized.extend_from_slice(&payload[headers.end..]);
    sanitized.push(FRAME_END);
    Some(sanitized)
}

/// What [`check_properties`] found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// No headers, or headers within [`MAX_HEADER_DEPTH`].
    Fine,
    /// The headers table (its length prefix included) at this range of the
    /// payload nests deeper than [`MAX_HEADER_DEPTH`].
    TooDeep { headers: Range<usize> },
    /// Not something this walker can read (cut short, an unknown tag, an
    /// entry running past its container); amq-protocol refuses it too.
    Malformed,
}

/// Finds the headers table in a content header payload (class id, weight,
/// body size, property flags, properties) and measures its depth.
fn check_properties(payload: &[u8]) -> Verdict {
    let mut reader = Reader::new(payload, PROPERTIES_OFFSET);
    let Some(flags) = reader.u16() else {
        return Verdict::Malformed;
    };
    if flags & HEADERS_FLAG == 0 {
        return Verdict::Fine;
    }
    for flag in [CONTENT_TYPE_FLAG, CONTENT_ENCODING_FLAG] {
        if flags & flag != 0 && reader.short_string().is_none() {
            return Verdict::Malformed;
        }
    }
    let start = reader.pos;
    let Some(table) = reader.long_bytes() else {
        return Verdict::Malformed;
    };
    match depth_exceeds_limit(payload, table) {
        Some(true) => Verdict::TooDeep {
            headers: start..reader.pos,
        },
        Some(false) => Verdict::Fine,
        None => Verdict::Malformed,
    }
}

/// Whether the field table occupying `table` (its entries, without the
/// length prefix) nests arrays and tables deeper than [`MAX_HEADER_DEPTH`];
/// `None` if it is malformed before that is known.
///
/// Iterative on purpose: an explicit stack of open containers, bounded by
/// the limit (a fixed array, no allocation per message), so that the
/// walker itself cannot run out of stack.
fn depth_exceeds_limit(payload: &[u8], table: Range<usize>) -> Option<bool> {
    /// An array or table being walked: where it ends and whether its
    /// entries have names.
    #[derive(Clone, Copy)]
    struct Open {
        end: usize,
        named: bool,
    }
    // The headers table, then one slot per level allowed inside it.
    let mut open = [Open {
        end: table.end,
        named: true,
    }; MAX_HEADER_DEPTH + 1];
    let mut depth = 0;
    let mut pos = table.start;
    loop {
        let container = open[depth];
        if pos == container.end {
            if depth == 0 {
                return Some(false);
            }
            depth -= 1;
            continue;
        }
        // Each container is read only within its own bounds, as
        // amq-protocol does: an entry that runs past them is malformed.
        let mut reader = Reader::new(&payload[..container.end], pos);
        if container.named {
            reader.short_string()?;
        }
        let tag = reader.u8()?;
        match tag {
            b'A' | b'F' => {
                let inner = reader.long_bytes()?;
                // The headers table is depth 0: this container is at
                // `depth + 1`.
                if depth == MAX_HEADER_DEPTH {
                    return Some(true);
                }
                depth += 1;
                open[depth] = Open {
                    end: inner.end,
                    named: tag == b'F',
                };
                pos = inner.start;
                continue;
            }
            b'S' | b'x' => {
                reader.long_bytes()?;
            }
            tag => reader.skip(scalar_len(tag)?)?,
        }
        pos = reader.pos;
    }
}

/// The size of a fixed-size field value after its tag, for the tags
/// amq-protocol knows (`types/src/types.rs`, `AMQPType::from_id`).
fn scalar_len(tag: u8) -> Option<usize> {
    match tag {
        b'V' => Some(0),
        b't' | b'b' | b'B' => Some(1),
        b's' | b'U' | b'u' => Some(2),
        b'I' | b'i' | b'f' => Some(4),
        b'D' => Some(5),
        b'L' | b'l' | b'd' | b'T' => Some(8),
        _ => None,
    }
}

/// The headers table that replaces rejected ones: a length prefix and one
/// long-string entry [`REJECTED_HEADERS`] saying what was removed.
fn rejected_headers_table(removed_bytes: usize) -> Vec<u8> {
    let text = format!(
        "headers nested deeper than {MAX_HEADER_DEPTH} levels ({removed_bytes} bytes) \
         were removed by hutch-rs"
    );
    let name = REJECTED_HEADERS.as_bytes();
    let entries_len = 1 + name.len() + 1 + 4 + text.len();
    let mut table = Vec::with_capacity(4 + entries_len);
    table.extend_from_slice(&(entries_len as u32).to_be_bytes());
    table.push(name.len() as u8);
    table.extend_from_slice(name);
    table.push(b'S');
    table.extend_from_slice(&(text.len() as u32).to_be_bytes());
    table.extend_from_slice(text.as_bytes());
    table
}

/// A cursor over a byte slice whose reads fail (with `None`) rather than
/// run past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    fn skip(&mut self, len: usize) -> Option<()> {
        let end = self.pos.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        self.pos = end;
        Some(())
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let start = self.pos;
        self.skip(N)?;
        self.bytes[start..self.pos].try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }

    /// A short string (octet length, bytes); only its extent matters here.
    fn short_string(&mut self) -> Option<()> {
        let len = self.u8()?;
        self.skip(len.into())
    }

    /// A long string, byte array, field array or field table: `u32`
    /// length, then that many bytes, whose range it returns.
    fn long_bytes(&mut self) -> Option<Range<usize>> {
        let len = usize::try_from(u32::from_be_bytes(self.take()?)).ok()?;
        let start = self.pos;
        self.skip(len)?;
        Some(start..self.pos)
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame};
    use lapin::{
        BasicProperties,
        types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString},
    };

    use super::*;

    /// A field value nested `depth` containers deep, alternating or not.
    fn nested(depth: usize, table_at: impl Fn(usize) -> bool) -> AMQPValue {
        let mut value = AMQPValue::LongString("bottom".into());
        for level in (0..depth).rev() {
            value = if table_at(level) {
                let mut table = FieldTable::default();
                table.insert("t".into(), value);
                AMQPValue::FieldTable(table)
            } else {
                AMQPValue::FieldArray(FieldArray::from(vec![value]))
            };
        }
        value
    }

    fn arrays(depth: usize) -> AMQPValue {
        nested(depth, |_| false)
    }

    fn tables(depth: usize) -> AMQPValue {
        nested(depth, |_| true)
    }

    fn mixed(depth: usize) -> AMQPValue {
        nested(depth, |level| level % 2 == 1)
    }

    /// Every field type amq-protocol writes, flat.
    fn every_scalar() -> FieldTable {
        let mut table = FieldTable::default();
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 }),
            AMQPValue::LongString(LongString::from("text")),
            AMQPValue::Timestamp(7),
            AMQPValue::ByteArray(ByteArray::from(vec![1, 2, 3])),
            AMQPValue::Void,
            AMQPValue::FieldArray(FieldArray::default()),
            AMQPValue::FieldTable(FieldTable::default()),
        ];
        for (index, value) in values.into_iter().enumerate() {
            table.insert(format!("k{index}").into(), value);
        }
        table
    }

    fn properties_with(headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("order".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("cluster".into())
    }

    fn one_header(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert("before".into(), AMQPValue::LongString("kept".into()));
        headers.insert("deep".into(), value);
        headers
    }

    /// A content header frame as the broker sends it, written by
    /// amq-protocol (which recurses too, so depths stay small here).
    fn frame(properties: BasicProperties) -> Vec<u8> {
        let header = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 42,
                properties,
            },
        );
        let (bytes, _) = gen_frame(&header)(Vec::new().into())
            .expect("serialize")
            .into_inner();
        bytes
    }

    /// `payload` in a content header frame on channel 1.
    fn wrap(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![FRAME_HEADER, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        frame
    }

    fn parse(frame: &[u8]) -> BasicProperties {
        match parse_frame(frame) {
            Ok((rest, AMQPFrame::Header(1, header))) => {
                assert!(rest.is_empty());
                assert_eq!((header.class_id, header.body_size), (60, 42));
                header.properties
            }
            other => panic!("not a content header: {other:?}"),
        }
    }

    fn rejected(frame: &[u8]) -> BasicProperties {
        let sanitized = sanitize_content_header_frame(frame).expect("rewritten");
        parse(&sanitized)
    }

    #[test]
    fn depth_up_to_the_limit_passes_untouched() {
        for make in [arrays, tables, mixed] {
            for depth in [0, 1, MAX_HEADER_DEPTH - 1, MAX_HEADER_DEPTH] {
                let frame = frame(properties_with(one_header(make(depth))));
                assert_eq!(sanitize_content_header_frame(&frame), None, "depth {depth}");
            }
        }
    }

    #[test]
    fn depth_past_the_limit_is_replaced() {
        for make in [arrays, tables, mixed] {
            for depth in [MAX_HEADER_DEPTH + 1, MAX_HEADER_DEPTH + 2, 200] {
                let properties = rejected(&frame(properties_with(one_header(make(depth)))));
                let headers = properties.headers().clone().expect("headers");
                assert_eq!(headers.inner().len(), 1, "{headers:?}");
                let text = crate::headers::text(&headers, REJECTED_HEADERS).expect("note");
                assert!(text.contains("deeper than 64 levels"), "{text}");
                assert!(text.contains("removed by hutch-rs"), "{text}");
            }
        }
    }

    #[test]
    fn a_deep_value_after_flat_ones_is_found() {
        let mut headers = every_scalar();
        headers.insert("zz".into(), mixed(MAX_HEADER_DEPTH + 1));
        let frame = frame(properties_with(headers));
        assert!(sanitize_content_header_frame(&frame).is_some());
    }

    #[test]
    fn every_field_type_is_understood() {
        let mut headers = every_scalar();
        let flat: Vec<AMQPValue> = every_scalar().inner().values().cloned().collect();
        headers.insert("array".into(), AMQPValue::FieldArray(flat.into()));
        headers.insert("table".into(), AMQPValue::FieldTable(every_scalar()));
        headers.insert("deep".into(), mixed(MAX_HEADER_DEPTH));
        let fine = frame(properties_with(headers));
        let payload = &fine[FRAME_HEADER_LEN..fine.len() - 1];
        assert_eq!(check_properties(payload), Verdict::Fine);

        // The same values one level too deep: found, which it could not be
        // if a tag on the way were misread.
        let mut headers = every_scalar();
        let mut inner = every_scalar();
        inner.insert("deep".into(), mixed(MAX_HEADER_DEPTH));
        headers.insert("table".into(), AMQPValue::FieldTable(inner));
        let deep = frame(properties_with(headers));
        let payload = &deep[FRAME_HEADER_LEN..deep.len() - 1];
        assert!(matches!(check_properties(payload), Verdict::TooDeep { .. }));
    }

    #[test]
    fn every_tag_amq_protocol_accepts_has_a_known_size() {
        // Tags amq-protocol writes differently from how RabbitMQ does
        // ('U' for 's', 'L' for 'l'): one byte of payload each way.
        for (tag, len) in [(b'U', 2), (b'L', 8), (b's', 2), (b'l', 8)] {
            assert_eq!(scalar_len(tag), Some(len));
        }
        for tag in 0..=u8::MAX {
            let known = lapin::types::AMQPType::from_id(tag as char).is_some();
            let ours = scalar_len(tag).is_some() || b"AFSx".contains(&tag);
            assert_eq!(known, ours, "tag {:?}", tag as char);
        }
    }

    #[test]
    fn the_rewrite_keeps_every_other_property_and_fixes_the_size() {
        let original = properties_with(one_header(arrays(MAX_HEADER_DEPTH + 1)));
        let frame = frame(original.clone());
        let sanitized = sanitize_content_header_frame(&frame).expect("rewritten");
        assert_eq!(sanitized[..3], frame[..3], "type and channel");
        assert_eq!(*sanitized.last().unwrap(), FRAME_END);
        let size = u32::from_be_bytes(sanitized[3..7].try_into().unwrap()) as usize;
        assert_eq!(sanitized.len(), FRAME_HEADER_LEN + size + 1);

        // Byte for byte around the headers table: flags, content type
        // ("application/json") and encoding ("utf-8") before it, the rest
        // of the properties after it.
        let payload = &frame[FRAME_HEADER_LEN..frame.len() - 1];
        let rewritten = &sanitized[FRAME_HEADER_LEN..sanitized.len() - 1];
        let at = PROPERTIES_OFFSET + 2 + (1 + 16) + (1 + 5);
        let long_at =
            |bytes: &[u8]| 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let (removed, note) = (long_at(payload), long_at(rewritten));
        assert_eq!(rewritten[..at], payload[..at]);
        assert_eq!(rewritten[at + note..], payload[at + removed..]);

        let parsed = parse(&sanitized);
        let headers = parsed.headers().clone().unwrap();
        let text = crate::headers::text(&headers, REJECTED_HEADERS).unwrap();
        assert_eq!(
            text,
            format!(
                "headers nested deeper than 64 levels ({removed} bytes) were removed by hutch-rs"
            )
        );
        assert_eq!(
            parsed.with_headers(FieldTable::default()),
            original.with_headers(FieldTable::default())
        );
    }

    #[test]
    fn headers_alone_or_absent() {
        let only_headers = BasicProperties::default().with_headers(one_header(tables(65)));
        let parsed = rejected(&frame(only_headers));
        assert!(parsed.content_type().is_none());
        assert!(parsed.headers().is_some());

        let none = properties_with(FieldTable::default()).with_headers(FieldTable::default());
        assert_eq!(sanitize_content_header_frame(&frame(none)), None);
        let no_headers = BasicProperties::default().with_message_id("m".into());
        assert_eq!(sanitize_content_header_frame(&frame(no_headers)), None);
    }

    #[test]
    fn a_deep_frame_written_by_hand_is_caught_without_recursion() {
        // Far deeper than amq-protocol could write or read on this stack.
        let depth = 100_000;
        let frame = hand_written_nested_arrays(depth);
        let properties = rejected(&frame);
        let text = crate::headers::text(properties.headers().as_ref().unwrap(), REJECTED_HEADERS);
        assert!(
            text.unwrap()
                .contains(&format!("({} bytes)", 4 + 2 + 5 * depth))
        );
    }

    /// A content header whose only header `a` is `depth` nested empty
    /// arrays, encoded by hand (amq-protocol would recurse).
    fn hand_written_nested_arrays(depth: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&60_u16.to_be_bytes());
        payload.extend_from_slice(&0_u16.to_be_bytes());
        payload.extend_from_slice(&42_u64.to_be_bytes());
        payload.extend_from_slice(&HEADERS_FLAG.to_be_bytes());
        let entries = 2 + 5 * depth;
        payload.extend_from_slice(&(entries as u32).to_be_bytes());
        payload.extend_from_slice(&[1, b'a']);
        for level in 0..depth {
            let inner = 5 * (depth - level - 1);
            payload.push(b'A');
            payload.extend_from_slice(&(inner as u32).to_be_bytes());
        }
        wrap(&payload)
    }

    #[test]
    fn malformed_payloads_pass_untouched() {
        let deep = frame(properties_with(one_header(arrays(MAX_HEADER_DEPTH + 1))));
        let fine = frame(properties_with(every_scalar()));
        // Truncated anywhere (the frame re-wrapped so only the payload is
        // short): never rewritten unless the deep part was already seen,
        // never a panic.
        for frame in [&deep, &fine] {
            let payload = &frame[FRAME_HEADER_LEN..frame.len() - 1];
            for cut in 0..payload.len() {
                let _ = sanitize_content_header_frame(&wrap(&payload[..cut]));
            }
        }
        let payload = &fine[FRAME_HEADER_LEN..fine.len() - 1];
        for cut in 0..payload.len() {
            assert_eq!(sanitize_content_header_frame(&wrap(&payload[..cut])), None);
        }
        // A frame whose size field disagrees with its length, or with a
        // bad frame end, or of another type.
        assert_eq!(sanitize_content_header_frame(&deep[..deep.len() - 1]), None);
        let mut bad_end = deep.clone();
        *bad_end.last_mut().unwrap() = 0;
        assert_eq!(sanitize_content_header_frame(&bad_end), None);
        let mut method = deep.clone();
        method[0] = 1;
        assert_eq!(sanitize_content_header_frame(&method), None);
    }

    #[test]
    fn an_unknown_tag_passes_untouched() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&HEADERS_FLAG.to_be_bytes());
        // { "a": 'Z' 1 2 3 4 }
        payload.extend_from_slice(&[0, 0, 0, 7, 1, b'a', b'Z', 1, 2, 3, 4]);
        assert_eq!(check_properties(&payload), Verdict::Malformed);
        assert_eq!(sanitize_content_header_frame(&wrap(&payload)), None);
    }

    #[test]
    fn an_entry_running_past_its_container_is_malformed() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&HEADERS_FLAG.to_be_bytes());
        // { "a": [ "S" claiming 9 bytes inside a 5-byte array ] }, then
        // bytes enough after it that only the array bound catches it.
        payload.extend_from_slice(&[0, 0, 0, 12, 1, b'a', b'A', 0, 0, 0, 5]);
        payload.extend_from_slice(&[b'S', 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(check_properties(&payload), Verdict::Malformed);
    }
}
