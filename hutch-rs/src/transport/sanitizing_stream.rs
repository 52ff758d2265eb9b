//! A socket wrapper that bounds header nesting before lapin parses a frame.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_io::{AsyncRead, AsyncWrite};

use super::header_depth::{FRAME_HEADER, FRAME_HEADER_LEN, sanitize_content_header_frame};

/// The largest content header frame payload held back to be checked.
///
/// RabbitMQ refuses frames from a publisher larger than its `frame_max`
/// (128 KiB unless the operator raises it), and relays a content header as
/// it was published, so real ones stay far below this. A larger frame is
/// passed on unchanged for lapin to refuse as larger than the negotiated
/// frame size; holding it would let a broker make hutch-rs buffer without
/// bound. (lapin parses a frame before it checks its size, so a broker
/// configured with a `frame_max` above 1 MiB could still deliver headers
/// this does not check.)
pub(crate) const MAX_HELD_PAYLOAD: u32 = 1 << 20;

/// Capacity of `held` kept between content headers; a larger buffer, left
/// by an unusually large header, is given back once it is empty.
const HELD_CAPACITY_KEPT: usize = 64 * 1024;

/// A broker connection's socket that rewrites content header frames whose
/// headers nest deeper than
/// [`MAX_HEADER_DEPTH`](super::header_depth::MAX_HEADER_DEPTH) before lapin
/// reads them (see [`header_depth`](super::header_depth) for why).
///
/// Writes pass straight through. Reads follow the AMQP 0-9-1 frame
/// boundaries (type octet, channel `u16`, payload size `u32`, payload,
/// frame end) in the buffer lapin read into: method, body and heartbeat
/// frames are skipped over, content header frames are checked where they
/// are and, in the rare case they must be rewritten, rewritten in place (the
/// replacement is always shorter, so what follows moves up). Nothing is
/// copied except the tail of a read that ends inside a frame header or a
/// content header frame: that frame is held back and completed with exact
/// reads before it is handed over.
///
/// What the broker sends first is frames too: the protocol header goes the
/// other way, and a broker that refuses our version answers with its own
/// (`AMQP…`), which reads as a frame of unknown type and passes untouched.
#[derive(Debug)]
pub(crate) struct SanitizingStream<S> {
    inner: S,
    /// Bytes of a frame already being handed over that are still to come
    /// from `inner` and pass untouched.
    passing: u64,
    /// One frame read only in part, from its start, held back until it can
    /// be decided on; then handed over from `handed`.
    held: Vec<u8>,
    /// `held` is decided on and being handed over.
    releasing: bool,
    /// How much of `held` is handed over.
    handed: usize,
    /// `inner` reached its end; what is held goes out as it is.
    eof: bool,
}

impl<S> SanitizingStream<S> {
    /// Wraps a freshly connected socket (nothing read from it yet).
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            passing: 0,
            held: Vec::new(),
            releasing: false,
            handed: 0,
            eof: false,
        }
    }

    /// Follows the frames in `bytes`, just read into the caller's buffer
    /// from a frame boundary (or from inside a passing frame), rewriting
    /// content headers in place. Returns how many bytes are ready to hand
    /// over; a last frame that is not all there and must be checked (a
    /// content header, or a frame header cut short) is moved to `held`.
    fn scan(&mut self, bytes: &mut [u8]) -> usize {
        let mut end = bytes.len();
        let mut at = usize::try_from(self.passing).map_or(end, |passing| passing.min(end));
        self.passing -= at as u64;
        while at < end {
            let Some((frame_type, size)) = frame_header(&bytes[at..end]) else {
                break;
            };
            let total = frame_len(size);
            let available = (end - at) as u64;
            if !is_checked(frame_type, size) {
                if total <= available {
                    at += total as usize;
                } else {
                    self.passing = total - available;
                    at = end;
                }
                continue;
            }
            if total > available {
                break;
            }
            let total = total as usize;
            match sanitize_content_header_frame(&bytes[at..at + total]) {
                None => at += total,
                Some(sanitized) if sanitized.len() <= total => {
                    let len = sanitized.len();
                    bytes[at..at + len].copy_from_slice(&sanitized);
                    bytes.copy_within(at + total..end, at + len);
                    end -= total - len;
                    at += len;
                }
                // Cannot happen (the replacement is a hundred bytes, what
                // it replaces more than 320), but the held path copes.
                Some(_) => break,
            }
        }
        self.held.extend_from_slice(&bytes[at..end]);
        at
    }

    /// Decides on the frame in `held`: hands it over as it is, rewritten,
    /// or (a frame that is not checked) as far as it came. Returns how many
    /// more bytes it needs to decide, if it cannot yet.
    fn decide(&mut self) -> Option<usize> {
        let Some((frame_type, size)) = frame_header(&self.held) else {
            return Some(FRAME_HEADER_LEN - self.held.len());
        };
        let total = frame_len(size);
        if !is_checked(frame_type, size) {
            // Held only for its header, cut short: the rest passes.
            self.passing = total.saturating_sub(self.held.len() as u64);
            self.releasing = true;
            return None;
        }
        // At most MAX_HELD_PAYLOAD + 8 bytes: fits in usize.
        let total = total as usize;
        if self.held.len() < total {
            return Some(total - self.held.len());
        }
        if let Some(sanitized) = sanitize_content_header_frame(&self.held) {
            self.held = sanitized;
        }
        self.releasing = true;
        None
    }
}

/// The type and payload size of the frame starting `bytes`, once its
/// frame header is all there.
fn frame_header(bytes: &[u8]) -> Option<(u8, u32)> {
    let header: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    Some((header[0], size))
}

/// Whether a frame is a content header to check (and to hold back until it
/// is whole).
fn is_checked(frame_type: u8, size: u32) -> bool {
    frame_type == FRAME_HEADER && size <= MAX_HELD_PAYLOAD
}

/// Frame header, payload and frame end.
fn frame_len(size: u32) -> u64 {
    FRAME_HEADER_LEN as u64 + u64::from(size) + 1
}

impl<S: AsyncRead + Unpin> AsyncRead for SanitizingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.releasing {
                let rest = &this.held[this.handed..];
                let len = rest.len().min(buf.len());
                buf[..len].copy_from_slice(&rest[..len]);
                this.handed += len;
                if this.handed == this.held.len() {
                    this.held.clear();
                    this.handed = 0;
                    this.releasing = false;
                    if this.held.capacity() > HELD_CAPACITY_KEPT {
                        this.held = Vec::new();
                    }
                }
                return Poll::Ready(Ok(len));
            }
            if this.held.is_empty() {
                // The common case: straight into lapin's buffer.
                let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if read == 0 {
                    return Poll::Ready(Ok(0));
                }
                let ready = this.scan(&mut buf[..read]);
                if ready > 0 {
                    return Poll::Ready(Ok(ready));
                }
                // Everything read was held back: 0 would read as the end of
                // the stream, so go on until there is something to hand over.
                continue;
            }
            if this.eof {
                this.releasing = true;
                continue;
            }
            let Some(needed) = this.decide() else {
                continue;
            };
            // Exactly what the held frame lacks: what follows it goes
            // through the common case again, uncopied.
            let start = this.held.len();
            this.held.resize(start + needed, 0);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut this.held[start..]);
            let read = match read {
                Poll::Ready(Ok(read)) => read,
                other => {
                    this.held.truncate(start);
                    return other;
                }
            };
            this.held.truncate(start + read);
            if read == 0 {
                // Cut off mid-frame: hand over what came, lapin reports the
                // connection as broken.
                this.eof = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SanitizingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, task::Waker};

    use super::*;
    use crate::transport::header_depth::{FRAME_END, MAX_HEADER_DEPTH};

    /// A socket that delivers `chunks` one read at a time (never more than
    /// one chunk per read), saying "not yet" before every other one.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        stall: bool,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.stall = !self.stall;
            if self.stall {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some(chunk) = self.chunks.front_mut() else {
                return Poll::Ready(Ok(0));
            };
            let len = chunk.len().min(buf.len());
            buf[..len].copy_from_slice(&chunk[..len]);
            chunk.drain(..len);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            Poll::Ready(Ok(len))
        }
    }

    /// Everything lapin would read through the wrapper, with reads of at
    /// most `read_size` bytes.
    fn read_all(chunks: Vec<Vec<u8>>, read_size: usize) -> Vec<u8> {
        let mut stream = SanitizingStream::new(Chunks {
            chunks: chunks.into(),
            stall: false,
        });
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            match Pin::new(&mut stream).poll_read(&mut cx, &mut buf) {
                Poll::Pending => {}
                Poll::Ready(Ok(0)) => return out,
                Poll::Ready(Ok(len)) => out.extend_from_slice(&buf[..len]),
                Poll::Ready(Err(error)) => panic!("{error}"),
            }
        }
    }

    fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![frame_type];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        frame
    }

    /// A content header payload whose one header nests `depth` arrays.
    fn content_header(depth: usize) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        payload.extend_from_slice(&(1_u16 << 13 | 1 << 7).to_be_bytes());
        payload.extend_from_slice(&((2 + 5 * depth + 5) as u32).to_be_bytes());
        payload.extend_from_slice(&[1, b'a']);
        for level in 0..depth {
            payload.push(b'A');
            payload.extend_from_slice(&((5 * (depth - level - 1) + 5) as u32).to_be_bytes());
        }
        payload.extend_from_slice(&[b'I', 0, 0, 0, 1]);
        // message-id "m"
        payload.extend_from_slice(&[1, b'm']);
        frame(FRAME_HEADER, 1, &payload)
    }

    /// What a consumer's connection reads: deliveries with shallow and deep
    /// headers among method, body and heartbeat frames.
    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let deliver = frame(1, 1, &[0, 60, 0, 60, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let body = frame(3, 1, b"{\"id\":1}");
        let heartbeat = frame(8, 0, &[]);
        let shallow = content_header(3);
        let limit = content_header(MAX_HEADER_DEPTH);
        let deep = content_header(MAX_HEADER_DEPTH + 1);
        let deeper = content_header(1500);
        let sanitize = |frame: &[u8]| sanitize_content_header_frame(frame).expect("rewritten");

        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (frame, output) in [
            (&deliver, deliver.clone()),
            (&shallow, shallow.clone()),
            (&body, body.clone()),
            (&heartbeat, heartbeat.clone()),
            (&deliver, deliver.clone()),
            (&deep, sanitize(&deep)),
            (&body, body.clone()),
            (&deliver, deliver.clone()),
            (&limit, limit.clone()),
            (&body, body.clone()),
            (&deliver, deliver.clone()),
            (&deeper, sanitize(&deeper)),
            (&body, body.clone()),
            (&deep, sanitize(&deep)),
        ] {
            input.extend_from_slice(frame);
            expected.extend_from_slice(&output);
        }
        (input, expected)
    }

    #[test]
    fn frames_read_whole_come_out_sanitized() {
        let (input, expected) = conversation();
        assert_ne!(input, expected);
        for read_size in [1, 2, 7, 8, 100, 4096, 1 << 20] {
            assert_eq!(
                read_all(vec![input.clone()], read_size),
                expected,
                "{read_size}"
            );
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_the_same() {
        let (input, expected) = conversation();
        for at in 1..input.len() {
            let chunks = vec![input[..at].to_vec(), input[at..].to_vec()];
            assert_eq!(read_all(chunks, 4096), expected, "split at {at}");
        }
    }

    #[test]
    fn one_byte_at_a_time_comes_out_the_same() {
        let (input, expected) = conversation();
        let chunks = input.iter().map(|byte| vec![*byte]).collect();
        assert_eq!(read_all(chunks, 4096), expected);
        let chunks = input.chunks(3).map(<[u8]>::to_vec).collect();
        assert_eq!(read_all(chunks, 5), expected);
    }

    #[test]
    fn what_is_not_understood_passes_unchanged() {
        // A broker refusing our protocol version answers with its own
        // protocol header; an oversized content header is lapin's to
        // refuse; a malformed one lapin's to report; a stream cut off
        // mid-frame is handed over as it came.
        let mut oversized = vec![FRAME_HEADER, 0, 1];
        oversized.extend_from_slice(&(MAX_HELD_PAYLOAD + 1).to_be_bytes());
        oversized.extend_from_slice(&[0; 64]);
        let mut malformed = content_header(MAX_HEADER_DEPTH + 1);
        let tag = 7 + 12 + 2 + 4 + 2;
        malformed[tag] = b'Z';
        let cut_off = content_header(MAX_HEADER_DEPTH + 1)[..40].to_vec();
        for input in [
            b"AMQP\x00\x00\x09\x01".to_vec(),
            oversized,
            malformed,
            cut_off,
        ] {
            for read_size in [1, 3, 4096] {
                assert_eq!(read_all(vec![input.clone()], read_size), input);
            }
            let chunks = input.iter().map(|byte| vec![*byte]).collect();
            assert_eq!(read_all(chunks, 4096), input);
        }
    }

    #[test]
    fn frames_read_whole_are_rewritten_in_place_without_holding() {
        let (input, expected) = conversation();
        let mut stream = SanitizingStream::new(Chunks {
            chunks: vec![input.clone()].into(),
            stall: false,
        });
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = vec![0; input.len()];
        let read = loop {
            if let Poll::Ready(read) = Pin::new(&mut stream).poll_read(&mut cx, &mut buf) {
                break read.unwrap();
            }
        };
        assert_eq!(buf[..read], expected[..], "all in one read");
        assert_eq!(stream.held.capacity(), 0, "nothing copied aside");
    }

    #[test]
    fn writes_pass_straight_through() {
        struct Sink(Vec<u8>);
        impl AsyncWrite for Sink {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut stream = SanitizingStream::new(Sink(Vec::new()));
        let mut cx = Context::from_waker(Waker::noop());
        let deep = content_header(MAX_HEADER_DEPTH + 1);
        let written = Pin::new(&mut stream).poll_write(&mut cx, &deep);
        assert!(matches!(written, Poll::Ready(Ok(len)) if len == deep.len()));
        assert_eq!(stream.inner.0, deep);
    }
}
