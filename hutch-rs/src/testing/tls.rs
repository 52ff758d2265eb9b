//! A TLS listener for a test node: [`Broker::start_tls`](super::Broker::start_tls).

use std::{
    fs, io,
    io::Write,
    path::{Path, PathBuf},
};

use super::ports::Ports;

/// The PEM files a node's TLS listener uses, for
/// [`Broker::start_tls`](super::Broker::start_tls): its certificate and key,
/// and the CA whose client certificates it accepts.
///
/// The node requires a client certificate signed by `ca_cert`
/// (`verify_peer`, `fail_if_no_peer_cert`), and logs in with the EXTERNAL
/// mechanism as the user named by the certificate's common name. Name
/// 127.0.0.1 (or `localhost`) in the server certificate: clients connect to
/// 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsNodeFiles {
    /// The CA certificate the node trusts client certificates from.
    pub ca_cert: PathBuf,
    /// The node's own certificate.
    pub cert: PathBuf,
    /// The private key of the node's certificate.
    pub key: PathBuf,
}

/// Copies the files into the node's directory (whatever the node can read,
/// it reads there), adds the TLS listener on `port` to `rabbitmq.conf` and
/// enables the plugin of the EXTERNAL mechanism.
pub(crate) fn configure(
    root: &Path,
    node_root: &Path,
    files: &TlsNodeFiles,
    port: u16,
) -> io::Result<()> {
    let dir = root.join("tls");
    fs::create_dir_all(&dir)?;
    let copy = |from: &Path, name: &str| -> io::Result<PathBuf> {
        let to = dir.join(name);
        fs::copy(from, &to).map_err(|error| {
            io::Error::new(error.kind(), format!("copying {}: {error}", from.display()))
        })?;
        // Named as the node sees it (inside the tree of a RabbitMQ 4 node).
        Ok(node_root.join("tls").join(name))
    };
    let ca_cert = copy(&files.ca_cert, "ca_certificate.pem")?;
    let cert = copy(&files.cert, "server_certificate.pem")?;
    let key = copy(&files.key, "server_key.pem")?;
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(root.join("rabbitmq.conf"))?;
    write!(
        conf,
        "# TLS (Broker::start_tls): a client certificate is required.\n\
         listeners.ssl.1 = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {ca_cert}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n",
        ca_cert = ca_cert.display(),
        cert = cert.display(),
        key = key.display(),
    )?;
    fs::write(
        root.join("enabled_plugins"),
        "[rabbitmq_management,rabbitmq_auth_mechanism_ssl].\n",
    )
}

/// A free port for the TLS listener, other than the node's three: a start
/// that loses it to another process is retried like one that loses those.
pub(crate) fn pick_port(taken: Ports) -> io::Result<u16> {
    let others = Ports::pick()?;
    [others.amqp, others.dist, others.management]
        .into_iter()
        .find(|port| ![taken.amqp, taken.dist, taken.management].contains(port))
        .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "no free port left"))
}
