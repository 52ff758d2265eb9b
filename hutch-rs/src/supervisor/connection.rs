//! Opening the connections hutch-rs owns.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::{Error, Result, config::BrokerUri};

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
    Connection::connect_uri(amqp_uri, properties)
        .await
        .map_err(|source| Error::Connect {
            uri: uri.to_string(),
            source: Box::new(source),
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
