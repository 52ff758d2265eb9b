//! Certificates for the TLS tests, made with rcgen: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate,
//! as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The common name of the client certificate, and so the user an EXTERNAL
/// login is made as.
pub const CERT_USER: &str = "hutch-tls-client";

/// A CA and the server and client certificates it signed, with their
/// keys, as PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA's certificate.
    pub ca_cert: PathBuf,
    /// The server's certificate, for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    /// The server certificate's key.
    pub server_key: PathBuf,
    /// The client's certificate, for [`CERT_USER`].
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a CA named `ca_name` in `dir`, a server certificate for 127.0.0.1
    /// and localhost, and a client certificate whose common name is
    /// [`CERT_USER`].
    pub fn make(dir: &Path, ca_name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, CERT_USER);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        Pki {
            ca_cert: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
        }
    }

    /// The server's files, as a test node takes them.
    pub fn node_files(&self) -> hutch_rs::testing::TlsNodeFiles {
        hutch_rs::testing::TlsNodeFiles {
            ca_cert: self.ca_cert.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
        }
    }

    /// Copies the files into `dir`.
    pub fn copy_to(&self, dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let copy = |from: &Path| {
            let to = dir.join(from.file_name().unwrap());
            std::fs::copy(from, &to).unwrap();
            to
        };
        Pki {
            ca_cert: copy(&self.ca_cert),
            server_cert: copy(&self.server_cert),
            server_key: copy(&self.server_key),
            client_cert: copy(&self.client_cert),
            client_key: copy(&self.client_key),
        }
    }
}
