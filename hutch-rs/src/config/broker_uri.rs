//! Broker URIs, parsed once and never shown with their password.

use std::{fmt, str::FromStr};

use lapin::uri::AMQPUri;

use super::DEFAULT_URI;

/// A broker URI whose password never leaves this type: `Debug` and `Display`
/// show it masked.
#[derive(Clone)]
pub(crate) struct BrokerUri {
    parsed: AMQPUri,
    masked: String,
}

impl BrokerUri {
    pub(crate) fn parse(raw: &str) -> std::result::Result<Self, String> {
        let parsed = AMQPUri::from_str(raw).map_err(|reason| {
            // lapin's message may quote the URI; describe the problem without it.
            let reason = reason.replace(raw, "<uri>");
            format!("not an AMQP URI ({reason}); expected e.g. {DEFAULT_URI}")
        })?;
        Ok(Self {
            masked: mask(&parsed),
            parsed,
        })
    }

    /// The parsed URI, credentials included: only for handing to lapin.
    pub(crate) fn expose(&self) -> &AMQPUri {
        &self.parsed
    }
}

fn mask(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    format!(
        "{scheme}://{}:***@{}:{}/{vhost}",
        uri.authority.userinfo.username, uri.authority.host, uri.authority.port
    )
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.masked, f)
    }
}
