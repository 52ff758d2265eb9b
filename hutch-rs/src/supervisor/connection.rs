//! Opening the connections hutch-rs owns.

use std::time::Duration;

use std::sync::Arc;

use lapin::{
    AsyncTcpStream, Connection, ConnectionProperties, ErrorKind,
    tcp::AMQPUriTcpExt,
    uri::{AMQPScheme, AMQPUri},
};

use crate::{
    Error, Result,
    config::BrokerUri,
    transport::{SanitizingRuntime, sanitizing_runtime},
};

/// What a connection is for; shown in the broker's connection list so an
/// operator can tell hutch-rs's connections apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Consume,
    Publish,
}

impl Purpose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::Consume => "consume",
            Purpose::Publish => "publish",
        }
    }
}

/// Opens one connection. lapin's own recovery stays off (its default):
/// hutch-rs is the single owner of recovery.
///
/// The socket is a [`SanitizingStream`](crate::transport::SanitizingStream):
/// message headers nested deeply enough to overflow lapin's I/O thread are
/// replaced before lapin parses them.
pub(crate) async fn connect(
    uri: &BrokerUri,
    purpose: Purpose,
    heartbeat: Duration,
) -> Result<Connection> {
    let name = format!("hutch-rs {} ({})", purpose.as_str(), program_name());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut amqp_uri = uri.expose().clone();
    // Validated to fit in build(); asked for explicitly so that a dead socket
    // is noticed even when the broker's default is off.
    amqp_uri.query.heartbeat = Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
    tracing::debug!(uri = %uri, connection = purpose.as_str(), "connecting");
    let connection = match amqp_uri.scheme {
        AMQPScheme::AMQP => {
            Connection::connector(amqp_uri, sanitizing_runtime(), open_socket, properties).await
        }
        // TODO(tls): the sanitizer must read the decrypted bytes, so when
        // hutch-rs supports amqps it has to sit above TLS (wrap the TLS
        // stream), not below it as the reactor's TCP stream. Until then an
        // amqps connection is opened as lapin does it, unprotected.
        AMQPScheme::AMQPS => Connection::connect_uri(amqp_uri, properties).await,
    };
    connection.map_err(|source| Error::Connect {
        uri: uri.to_string(),
        source: Box::new(source),
    })
}

/// Opens the TCP socket the way lapin's own `connect_uri` does (same
/// address resolution), through the sanitizing runtime, whose reactor wraps
/// it.
async fn open_socket(
    uri: AMQPUri,
    runtime: SanitizingRuntime,
) -> lapin::Result<AsyncTcpStream<<SanitizingRuntime as async_rs::traits::Reactor>::TcpStream>> {
    if uri.scheme != AMQPScheme::AMQP {
        // `connect_async` would put TLS on top of the sanitizer, which then
        // would read ciphertext; `connect` never sends amqps here.
        return Err(std::io::Error::other("amqps is not sanitized yet").into());
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
