//! Opening the connections hutch-rs owns.

use std::time::Duration;

use std::sync::Arc;

use async_rs::{Tokio, traits::Reactor};
use lapin::{
    AsyncTcpStream, Connection, ConnectionProperties, ErrorKind,
    tcp::AMQPUriTcpExt,
    uri::{AMQPScheme, AMQPUri},
};

use crate::{
    Error, Result,
    config::BrokerUri,
    supervisor::classify,
    transport::{
        SanitizingRuntime, SanitizingStream, Socket, sanitizing_runtime, tls::TlsSettings,
    },
};

/// What a connection is for; shown in the broker's connection list so an
/// operator can tell hutch-rs's connections apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Consume,
    Publish,
    /// One-off work outside the supervision tree: reading and replaying
    /// dead letters.
    Tooling,
}

impl Purpose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::Consume => "consume",
            Purpose::Publish => "publish",
            Purpose::Tooling => "tooling",
        }
    }
}

/// Opens one connection. lapin's own recovery stays off (its default):
/// hutch-rs is the single owner of recovery.
///
/// The socket is a [`SanitizingStream`]: message headers nested deeply
/// enough to overflow lapin's I/O thread are replaced before lapin parses
/// them. For `amqps` it wraps the TLS stream, so it reads decrypted bytes.
///
/// A TLS failure (an untrusted broker certificate, our client certificate
/// refused) is [`Error::Tls`], which retrying cannot fix.
pub(crate) async fn connect(
    uri: &BrokerUri,
    purpose: Purpose,
    heartbeat: Duration,
    tls: Option<&TlsSettings>,
) -> Result<Connection> {
    let name = format!("hutch-rs {} ({})", purpose.as_str(), program_name());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut amqp_uri = uri.expose().clone();
    // Validated to fit in build(); asked for explicitly so that a dead socket
    // is noticed even when the broker's default is off.
    amqp_uri.query.heartbeat = Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
    tracing::debug!(uri = %uri, connection = purpose.as_str(), "connecting");
    let connection = match (&amqp_uri.scheme, tls) {
        (AMQPScheme::AMQP, _) => {
            Connection::connector(amqp_uri, sanitizing_runtime(), open_socket, properties).await
        }
        (AMQPScheme::AMQPS, Some(tls)) => {
            let tls = tls.clone();
            let tokio = Tokio::current();
            Connection::connector(
                amqp_uri,
                sanitizing_runtime(),
                async move |uri, runtime| open_tls_socket(uri, runtime, &tokio, &tls).await,
                properties,
            )
            .await
        }
        // build() makes the TLS settings whenever a URI is amqps.
        (AMQPScheme::AMQPS, None) => {
            return Err(Error::Tls {
                uri: uri.to_string(),
                reason: "no TLS settings for an amqps URI".to_owned(),
            });
        }
    };
    connection.map_err(|source| match classify::tls_problem(&source, tls) {
        Some(reason) => Error::Tls {
            uri: uri.to_string(),
            reason,
        },
        None => Error::Connect {
            uri: uri.to_string(),
            source: Box::new(source),
        },
    })
}

/// Opens the TCP socket the way lapin's own `connect_uri` does (same
/// address resolution), through the sanitizing runtime, whose reactor wraps
/// it.
async fn open_socket(
    uri: AMQPUri,
    runtime: SanitizingRuntime,
) -> lapin::Result<AsyncTcpStream<<SanitizingRuntime as Reactor>::TcpStream>> {
    if uri.scheme != AMQPScheme::AMQP {
        // `connect_async` would put TLS on top of the sanitizer, which then
        // would read ciphertext; `connect` sends amqps to open_tls_socket.
        return Err(std::io::Error::other("amqps goes through open_tls_socket").into());
    }
    uri.connect_async(&runtime).await.map_err(|error| {
        // As lapin tells a socket error from its runtime shutting down.
        if runtime.is_runtime_shutdown_error(&error) {
            ErrorKind::RuntimeShutdownError(Arc::new(error)).into()
        } else {
            error.into()
        }
    })
}

/// Opens the TCP socket, does the TLS handshake over it and wraps the TLS
/// stream in the sanitizer. The TCP socket comes from tokio's own reactor:
/// the sanitizing one would wrap it below TLS.
async fn open_tls_socket(
    uri: AMQPUri,
    runtime: SanitizingRuntime,
    tokio: &Tokio,
    tls: &TlsSettings,
) -> lapin::Result<AsyncTcpStream<<SanitizingRuntime as Reactor>::TcpStream>> {
    let opened = async {
        let host = uri.authority.host.clone();
        let server_name = tls.server_name(&host)?;
        let addresses = runtime.to_socket_addrs((host, uri.authority.port));
        let tcp = tokio.tcp_connect(addresses).await?;
        let stream = tls.handshake(tcp, server_name).await?;
        Ok(SanitizingStream::new(Socket::Tls(Box::new(stream))))
    };
    match opened.await {
        Ok(stream) => Ok(AsyncTcpStream::Plain(stream)),
        Err(error) => Err(if runtime.is_runtime_shutdown_error(&error) {
            ErrorKind::RuntimeShutdownError(Arc::new(error)).into()
        } else {
            error.into()
        }),
    }
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|path| {
            std::path::Path::new(&path)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
