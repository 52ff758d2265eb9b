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
/// A content header is as large as its properties: with RabbitMQ's default
/// `frame_max` (128 KiB, which also bounds what publishers may send) the
/// largest is far below this. A larger one is passed on unchanged and lapin
/// refuses it as larger than the negotiated frame size; holding it would
/// only let a broker make hutch-rs buffer without bound.
pub(crate) const MAX_HELD_PAYLOAD: u32 = 1 << 20;

/// A broker connection's socket that rewrites content header frames whose
/// headers nest deeper than
/// [`MAX_HEADER_DEPTH`](super::header_depth::MAX_HEADER_DEPTH) before lapin
/// reads them (see [`header_depth`](super::header_depth) for why).
///
/// Writes pass straight through. Reads follow the AMQP 0-9-1 frame
/// boundaries (type octet, channel `u16`, payload size `u32`, payload,
/// frame end): method, body and heartbeat frames are handed over in the
/// buffer lapin read into, untouched; a content header frame is held back
/// until it is whole, checked, and handed over as it was or with its
/// headers replaced. Only the few bytes of a frame header split across two
/// reads, and content header frames, are copied.
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
    /// Bytes read from `inner` but not handed over yet. Past its first
    /// `release` bytes it starts at a frame boundary.
    held: Vec<u8>,
    /// How many bytes at the front of `held` are decided on and wait to be
    /// handed over.
    release: usize,
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
            release: 0,
            eof: false,
        }
    }

    /// Follows the frames in `bytes`, just read into the caller's buffer
    /// from a frame boundary (or from inside a passing frame). Returns how
    /// many of them can be handed over as they are; the rest, from the
    /// start of a content header frame or of a frame header cut short, is
    /// moved to `held`.
    fn scan(&mut self, bytes: &[u8]) -> usize {
        let mut at = usize::try_from(self.passing).map_or(bytes.len(), |p| p.min(bytes.len()));
        self.passing -= at as u64;
        while at < bytes.len() {
            let Some((frame_type, size)) = frame_header(&bytes[at..]) else {
                break;
            };
            if is_held(frame_type, size) {
                break;
            }
            let total = frame_len(size);
            let available = (bytes.len() - at) as u64;
            if total <= available {
                at += total as usize;
            } else {
                self.passing = total - available;
                at = bytes.len();
            }
        }
        self.held.extend_from_slice(&bytes[at..]);
        at
    }

    /// Decides on the frame at the front of `held`: how much of it to
    /// release, rewritten or not. Returns how many more bytes it needs to
    /// decide, if it cannot yet.
    fn decide(&mut self) -> Option<usize> {
        let Some((frame_type, size)) = frame_header(&self.held) else {
            return Some(FRAME_HEADER_LEN - self.held.len());
        };
        let total = frame_len(size);
        if !is_held(frame_type, size) {
            let release = total.min(self.held.len() as u64);
            self.passing = total - release;
            self.release = release as usize;
            return None;
        }
        // At most MAX_HELD_PAYLOAD + 8 bytes: fits in usize.
        let total = total as usize;
        if self.held.len() < total {
            return Some(total - self.held.len());
        }
        self.release = match sanitize_content_header_frame(&self.held[..total]) {
            Some(sanitized) => {
                let len = sanitized.len();
                self.held.splice(..total, sanitized);
                len
            }
            None => total,
        };
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

/// Whether a frame is held back to be checked.
fn is_held(frame_type: u8, size: u32) -> bool {
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
            if this.release > 0 {
                let len = this.release.min(buf.len());
                buf[..len].copy_from_slice(&this.held[..len]);
                this.held.drain(..len);
                this.release -= len;
                return Poll::Ready(Ok(len));
            }
            if this.held.is_empty() {
                // The common case: straight into lapin's buffer.
                let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if read == 0 {
                    return Poll::Ready(Ok(0));
                }
                let handed_over = this.scan(&buf[..read]);
                if handed_over > 0 {
                    return Poll::Ready(Ok(handed_over));
                }
                // Everything read was held back: 0 would read as the end of
                // the stream, so go on until there is something to hand over.
                continue;
            }
            if this.eof {
                this.release = this.held.len();
                continue;
            }
            let Some(needed) = this.decide() else {
                continue;
            };
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
    fn frames_after_a_held_one_in_the_same_read_are_not_lost() {
        let (input, expected) = conversation();
        // Whole conversation in one read, read back through a tiny buffer
        // that forces many partial hand-overs of held bytes.
        assert_eq!(read_all(vec![input], 3), expected);
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
