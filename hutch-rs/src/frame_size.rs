//! How much of an AMQP frame a message's properties take.
//!
//! A message's properties travel in one content header frame, which cannot
//! be split: if it is larger than the connection's negotiated `frame_max`,
//! the broker closes the whole connection with 501 FRAME_ERROR. Publishing
//! the same message again would only close it again, so hutch-rs measures
//! the header before it sends one.

use lapin::{BasicProperties, protocol::basic::gen_properties};

/// What a content header frame carries besides the properties: the frame
/// header (type, channel, size: 7 bytes), class id, weight and body size
/// (12 bytes) and the frame end octet.
const CONTENT_HEADER_OVERHEAD: usize = 7 + 12 + 1;

/// How many bytes of properties fit in one frame of `frame_max` bytes.
pub(crate) fn properties_capacity(frame_max: u32) -> usize {
    usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(CONTENT_HEADER_OVERHEAD)
}

/// The encoded size of `properties`, exactly as lapin writes them.
pub(crate) fn properties_size(properties: &BasicProperties) -> usize {
    // Writing to a Vec cannot fail short of memory; a failure would only
    // mean the size is unknown, and then the broker is the judge.
    cookie_factory::gen_simple(gen_properties(properties), Vec::new())
        .map(|encoded| encoded.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable, LongString};

    use super::*;

    #[test]
    fn measures_what_lapin_encodes() {
        // Two bytes of flags and nothing else.
        assert_eq!(properties_size(&BasicProperties::default()), 2);
        // Flags, then a short string: one length byte and the text.
        let typed = BasicProperties::default().with_content_type("application/json".into());
        assert_eq!(properties_size(&typed), 2 + 1 + 16);
        let mut headers = FieldTable::default();
        headers.insert(
            "k".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; 1_000])),
        );
        // Flags, table length, key (1 + 1), type tag, string length, text.
        let with_headers = BasicProperties::default().with_headers(headers);
        assert_eq!(properties_size(&with_headers), 2 + 4 + 2 + 1 + 4 + 1_000);
    }

    #[test]
    fn the_frame_overhead_is_subtracted() {
        assert_eq!(properties_capacity(131_072), 131_052);
        assert_eq!(properties_capacity(4), 0);
    }
}
