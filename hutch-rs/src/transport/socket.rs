//! The byte stream under the [`SanitizingStream`](super::SanitizingStream):
//! the TCP socket itself, or TLS over it for `amqps`.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
};

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::client::TlsStream;

use super::runtime::TokioStream;

/// What the sanitizer reads decrypted bytes from.
pub(crate) enum Socket {
    /// `amqp`: the TCP socket.
    Tcp(TokioStream),
    /// `amqps`: TLS over the TCP socket, the handshake done.
    Tls(Box<TlsStream<TokioStream>>),
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Tcp(_) => f.write_str("Socket::Tcp"),
            Socket::Tls(_) => f.write_str("Socket::Tls"),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Socket::Tls(tls) => {
                let written = Pin::new(tls.as_mut()).poll_write(cx, buf);
                explain_write_failure(tls, cx, written)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Socket::Tls(tls) => {
                let written = Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs);
                explain_write_failure(tls, cx, written)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Socket::Tls(tls) => {
                let flushed = Pin::new(tls.as_mut()).poll_flush(cx);
                explain_write_failure(tls, cx, flushed)
            }
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => Pin::new(tcp).poll_close(cx),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}

/// With TLS 1.3 a broker judges our client certificate after the
/// handshake: it sends an alert and closes, and our first write (the AMQP
/// protocol header) can meet the reset that follows before anything reads
/// the alert. A write that fails that way reads once more, so that the
/// alert, which says what is wrong, is the error lapin reports, not the
/// reset, which would be retried as a network failure.
fn explain_write_failure<T>(
    tls: &mut TlsStream<TokioStream>,
    cx: &mut Context<'_>,
    outcome: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    let Poll::Ready(Err(error)) = outcome else {
        return outcome;
    };
    if !matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    ) {
        return Poll::Ready(Err(error));
    }
    // The connection is lost either way; whatever this reads is dropped.
    let mut scratch = [0; 256];
    match Pin::new(tls).poll_read(cx, &mut scratch) {
        Poll::Ready(Err(read)) if is_tls_error(&read) => Poll::Ready(Err(read)),
        _ => Poll::Ready(Err(error)),
    }
}

fn is_tls_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}
