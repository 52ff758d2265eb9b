//! TLS for `amqps://` connections, with rustls.
//!
//! hutch-rs does the handshake itself instead of leaving it to lapin, so
//! that the [`SanitizingStream`](super::SanitizingStream) can sit above TLS
//! and read the decrypted frames: lapin's own TLS would put it below, where
//! it would see ciphertext.
//!
//! Certificates and keys are read once, when the settings are built, so that
//! a missing or malformed file is a configuration error, not a connection
//! that keeps failing.

use std::{fmt, io, path::Path, sync::Arc};

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsConnector, client::TlsStream};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

/// A client certificate chain and its private key, read from PEM files.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads the certificate chain (leaf first) and the private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub(crate) fn read(cert: &Path, key: &Path) -> std::result::Result<Self, (TlsSetting, String)> {
        let chain = read_certificates(cert).map_err(|reason| (TlsSetting::ClientCert, reason))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
            (
                TlsSetting::ClientKey,
                format!(
                    "could not read a PEM private key from {}: {}",
                    key.display(),
                    pem_error(&error)
                ),
            )
        })?;
        Ok(Self { chain, key })
    }
}

/// What every `amqps` connection of one [`Hutch`](crate::Hutch) uses: the
/// rustls configuration (trusted roots, client certificate) and the name
/// checked in the broker's certificate when it is not the URI's host.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    client_certificate: bool,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

/// Which part of the TLS settings a configuration problem is in, so that
/// the error names the right setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsSetting {
    CaCert,
    ClientCert,
    ClientKey,
    ServerName,
    /// Neither a CA file nor system roots: the URI cannot be used.
    Roots,
}

impl TlsSettings {
    /// Reads and checks everything a handshake needs: the CA file (or the
    /// operating system's roots without one), the client identity, the
    /// server name override.
    pub(crate) fn new(
        ca_cert: Option<&Path>,
        identity: Option<Identity>,
        server_name: Option<&str>,
    ) -> std::result::Result<Self, (TlsSetting, String)> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|_| {
                    (
                        TlsSetting::ServerName,
                        format!("{name:?} is neither a DNS name nor an IP address"),
                    )
                })
            })
            .transpose()?;
        let provider = provider().map_err(|reason| (TlsSetting::Roots, reason))?;
        let roots = match ca_cert {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in
                    read_certificates(path).map_err(|reason| (TlsSetting::CaCert, reason))?
                {
                    roots.add(certificate).map_err(|error| {
                        (
                            TlsSetting::CaCert,
                            format!(
                                "{} holds an unusable CA certificate: {error}",
                                path.display()
                            ),
                        )
                    })?;
                }
                roots
            }
            None => system_roots().map_err(|reason| (TlsSetting::Roots, reason))?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| (TlsSetting::Roots, format!("no usable TLS version: {error}")))?
            .with_root_certificates(roots);
        let client_certificate = identity.is_some();
        let config = match identity {
            Some(Identity { chain, key }) => {
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    (
                        TlsSetting::ClientKey,
                        format!("the key does not go with the client certificate: {error}"),
                    )
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
            server_name,
            client_certificate,
        })
    }

    /// Whether a client certificate is sent when the broker asks for one.
    pub(crate) fn has_client_certificate(&self) -> bool {
        self.client_certificate
    }

    /// The name the broker's certificate must carry: the override, or the
    /// URI's host.
    pub(crate) fn server_name(&self, host: &str) -> io::Result<ServerName<'static>> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_owned()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the host {host:?} is not a name a certificate can carry"),
                )
            }),
        }
    }

    /// The TLS handshake over a connected socket. A rejected certificate
    /// fails here as an `io::Error` carrying the `rustls::Error`; with TLS
    /// 1.3 the broker's refusal of our client certificate arrives only on
    /// the first read after it.
    pub(crate) async fn handshake<S>(
        &self,
        socket: S,
        server_name: ServerName<'static>,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        TlsConnector::from(self.config.clone())
            .connect(server_name, socket)
            .await
    }
}

/// The crypto provider chosen by hutch-rs's features: aws-lc-rs when
/// `tls-rustls-aws-lc-rs` is on, else ring (`tls-rustls-ring`, the
/// default), else the one the application installed as rustls's process
/// default.
fn provider() -> std::result::Result<Arc<CryptoProvider>, String> {
    #[cfg(feature = "tls-rustls-aws-lc-rs")]
    return Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    #[cfg(all(feature = "tls-rustls-ring", not(feature = "tls-rustls-aws-lc-rs")))]
    return Ok(Arc::new(rustls::crypto::ring::default_provider()));
    #[allow(unreachable_code)]
    CryptoProvider::get_default().cloned().ok_or_else(|| {
        "hutch-rs was built without a TLS crypto provider: enable its feature \
         `tls-rustls-ring` or `tls-rustls-aws-lc-rs`, or install one with \
         rustls::crypto::CryptoProvider::install_default"
            .to_owned()
    })
}

/// The operating system's trusted roots (on Debian, /etc/ssl/certs), as an
/// operator manages them; certificates among them that rustls cannot use
/// are skipped.
fn system_roots() -> std::result::Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|error| format!(" ({error})"))
            .unwrap_or_default();
        return Err(format!(
            "no CA file given and no trusted root certificates found in the system's store{why}"
        ));
    }
    Ok(roots)
}

fn read_certificates(path: &Path) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            format!(
                "could not read PEM certificates from {}: {}",
                path.display(),
                pem_error(&error)
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of that kind in it".to_owned(),
        other => other.to_string(),
    }
}
