//! The TLS settings as the builder holds them, read and checked into
//! [`TlsSettings`] by `build()`.

use std::path::PathBuf;

use super::{
    BrokerUri,
    layered::Layered,
    sources::{RawSetting, Source},
};
use crate::{
    Result,
    transport::tls::{Identity, TlsSetting, TlsSettings},
};

/// The TLS settings as given: file paths and the server name, read and
/// checked in `build()`.
#[derive(Debug, Clone)]
pub(super) struct TlsBuilder {
    pub(super) ca_cert: Layered<Option<PathBuf>>,
    pub(super) client_cert: Layered<Option<PathBuf>>,
    pub(super) client_key: Layered<Option<PathBuf>>,
    pub(super) server_name: Layered<Option<String>>,
}

impl Default for TlsBuilder {
    fn default() -> Self {
        Self {
            ca_cert: Layered::new(None, Source::Default),
            client_cert: Layered::new(None, Source::Default),
            client_key: Layered::new(None, Source::Default),
            server_name: Layered::new(None, Source::Default),
        }
    }
}

impl TlsBuilder {
    /// One TLS setting from the environment or the file; an empty value
    /// means none, so that a deployment can clear one a file sets.
    pub(super) fn apply(&mut self, raw: &RawSetting) {
        let path = |text: &str| Ok((!text.is_empty()).then(|| PathBuf::from(text)));
        match raw.key {
            "tls_ca_cert" => self.ca_cert.parse_from(raw, path),
            "tls_client_cert" => self.client_cert.parse_from(raw, path),
            "tls_client_key" => self.client_key.parse_from(raw, path),
            "tls_server_name" => self
                .server_name
                .parse_from(raw, |text| Ok((!text.is_empty()).then(|| text.to_owned()))),
            other => unreachable!("{other:?} is not a TLS setting"),
        }
    }

    fn is_set(&self) -> bool {
        self.ca_cert.value.is_some()
            || self.client_cert.value.is_some()
            || self.client_key.value.is_some()
            || self.server_name.value.is_some()
    }

    /// Reads the files when a URI is `amqps` or a TLS setting is given
    /// (so that a bad file is reported even before TLS is used).
    pub(super) fn validate(
        &self,
        uris: &[BrokerUri],
        uri_setting: &Layered<Vec<String>>,
    ) -> Result<Option<TlsSettings>> {
        let amqps = uris
            .iter()
            .any(|uri| uri.expose().scheme == lapin::uri::AMQPScheme::AMQPS);
        if !amqps && !self.is_set() {
            return Ok(None);
        }
        let named = |(setting, reason): (TlsSetting, String)| match setting {
            TlsSetting::CaCert => self.ca_cert.invalid(reason),
            TlsSetting::ClientCert => self.client_cert.invalid(reason),
            TlsSetting::ClientKey => self.client_key.invalid(reason),
            TlsSetting::ServerName => self.server_name.invalid(reason),
            TlsSetting::Roots if amqps => uri_setting.invalid(reason),
            TlsSetting::Roots => self.ca_cert.invalid(reason),
        };
        let identity = match (&self.client_cert.value, &self.client_key.value) {
            (Some(cert), Some(key)) => Some(Identity::read(cert, key).map_err(named)?),
            (Some(_), None) => {
                return Err(self.client_cert.invalid(
                    "a client certificate needs its key: set HUTCH_TLS_CLIENT_KEY or tls_client_key",
                ));
            }
            (None, Some(_)) => {
                return Err(self.client_key.invalid(
                    "a client key needs its certificate: set HUTCH_TLS_CLIENT_CERT or tls_client_cert",
                ));
            }
            (None, None) => None,
        };
        let settings = TlsSettings::new(
            self.ca_cert.value.as_deref(),
            identity,
            self.server_name.value.as_deref(),
        )
        .map_err(named)?;
        for uri in uris {
            let uri = uri.expose();
            if uri.scheme == lapin::uri::AMQPScheme::AMQPS {
                settings.server_name(&uri.authority.host).map_err(|error| {
                    uri_setting.invalid(format!(
                        "{error}: name the one in the broker's certificate with \
                         HUTCH_TLS_SERVER_NAME or tls_server_name"
                    ))
                })?;
            }
        }
        Ok(Some(settings))
    }
}
