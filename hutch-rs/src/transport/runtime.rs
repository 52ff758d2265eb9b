//! The async runtime hutch-rs hands lapin: tokio, with every TCP stream it
//! connects wrapped in a [`SanitizingStream`] (and, for `amqps`, every TLS
//! stream hutch-rs opens itself: see [`Socket`]).
//!
//! lapin reads its socket on its own I/O thread through the runtime it was
//! given ([`Connection::connector`](lapin::Connection::connector)); the
//! runtime's reactor decides what type that socket is. Swapping the
//! reactor's stream type is the one place where hutch-rs can see the bytes
//! before amq-protocol parses them, while lapin keeps its I/O loop, its
//! buffers and its error handling.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use async_rs::{Runtime, Tokio, traits::Reactor, util::RuntimeParts};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::Stream;

use super::{SanitizingStream, Socket};

/// tokio's executor with a [`SanitizingReactor`].
pub(crate) type SanitizingRuntime = Runtime<RuntimeParts<Tokio, SanitizingReactor>>;

/// The runtime for one connection, bound to the tokio runtime the caller
/// runs on (what lapin's own default, `Runtime::tokio_current`, does).
pub(crate) fn sanitizing_runtime() -> SanitizingRuntime {
    Runtime::new(RuntimeParts::new(
        Tokio::current(),
        SanitizingReactor(Tokio::current()),
    ))
}

/// tokio's reactor, except that the TCP streams it connects are wrapped in
/// a [`SanitizingStream`]. Its stream type also fits TLS streams, which
/// [`connect`](crate::supervisor::connection) opens itself.
#[derive(Debug, Clone)]
pub(crate) struct SanitizingReactor(Tokio);

pub(crate) type TokioStream = <Tokio as Reactor>::TcpStream;

impl Reactor for SanitizingReactor {
    type TcpStream = SanitizingStream<Socket>;
    type Sleep = <Tokio as Reactor>::Sleep;

    // async-rs bounds `H` by a trait it does not export (`AsSysFd`), which
    // is `AsFd + AsRawFd` on unix and `AsSocket + AsRawSocket` on windows;
    // naming those is what an implementation outside async-rs can do.
    #[cfg(unix)]
    fn register<H>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static>
    where
        H: Read + Write + std::os::fd::AsFd + std::os::fd::AsRawFd + Send + 'static,
    {
        self.0.register(socket)
    }

    #[cfg(windows)]
    fn register<H>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static>
    where
        H: Read
            + Write
            + std::os::windows::io::AsSocket
            + std::os::windows::io::AsRawSocket
            + Send
            + 'static,
    {
        self.0.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.0.tcp_connect_addr(addr);
        async move {
            connect
                .await
                .map(|tcp| SanitizingStream::new(Socket::Tcp(tcp)))
        }
    }
}
