//! TLS for the clients of our listening port: the rustls server configuration,
//! built once at start from the `--tls-cert` / `--tls-key` PEM files, and one
//! fresh server session per accepted socket.
//!
//! It owns loading and checking those files (every failure is one line naming
//! the file, so the process can refuse to start with exit code 2) and nothing
//! else: the bytes of a session move through [`crate::shell::conn::transport::Transport`]
//! like any other socket's. It never touches a socket itself and never reads
//! the files again after start (a renewed certificate needs a restart).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{Connection, ServerConfig, ServerConnection};

/// The server side of TLS for clients; cheap to share (one `Arc`).
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain (`cert`: PEM, leaf first, intermediates after it) and the
    /// private key (`key`: PEM, PKCS#8, PKCS#1 RSA or SEC1 EC) and checks that they belong
    /// together. The error is one line naming the file (and the flag) at fault.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let chain = read_certificate_chain(cert)?;
        let private_key = read_private_key(key)?;
        // The ring provider is named explicitly, as for the exchange side: no process-wide
        // default provider is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| describe_cert_key_error(cert, key, &e))?;
        Ok(ServerTls { config: Arc::new(config) })
    }

    /// A new server session for one accepted socket. Fails only if the configuration
    /// itself is unusable, which `from_pem_files` already ruled out.
    pub(crate) fn session(&self) -> Result<Connection, rustls::Error> {
        ServerConnection::new(Arc::clone(&self.config)).map(Connection::Server)
    }
}

fn read_certificate_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("--tls-cert {}: cannot read: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: bad PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("--tls-key {}: cannot read: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "--tls-key {} holds no private key (expected PEM \"BEGIN PRIVATE KEY\", \
             \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            path.display()
        ),
        other => format!("--tls-key {}: bad PEM: {other}", path.display()),
    })
}

/// Which file rustls' refusal of the pair points at.
fn describe_cert_key_error(cert: &Path, key: &Path, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {} does not match the certificate in --tls-cert {}",
            key.display(),
            cert.display()
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            format!("--tls-cert {}: first certificate is not usable: {e}", cert.display())
        }
        // Key loading is the only other step that can fail (unsupported or corrupt key).
        _ => format!("--tls-key {}: key not usable: {e}", key.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files { dir: tempfile::tempdir().unwrap() }
        }

        fn write(&self, name: &str, body: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path
        }
    }

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn a_matching_pair_loads_and_makes_server_sessions() {
        let f = Files::new();
        let pair = self_signed();
        let cert = f.write("cert.pem", &pair.cert.pem());
        let key = f.write("key.pem", &pair.signing_key.serialize_pem());
        let tls = ServerTls::from_pem_files(&cert, &key).unwrap();
        assert!(matches!(tls.session().unwrap(), Connection::Server(_)));
    }

    #[test]
    fn a_chain_of_leaf_and_ca_loads() {
        let f = Files::new();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let cert = f.write("chain.pem", &format!("{}{}", leaf.pem(), ca.pem()));
        let key = f.write("key.pem", &leaf_key.serialize_pem());
        assert!(ServerTls::from_pem_files(&cert, &key).is_ok());
    }

    #[test]
    fn every_failure_is_one_line_naming_the_file() {
        let f = Files::new();
        let pair = self_signed();
        let other = self_signed();
        let cert = f.write("cert.pem", &pair.cert.pem());
        let key = f.write("key.pem", &pair.signing_key.serialize_pem());
        let wrong_key = f.write("other-key.pem", &other.signing_key.serialize_pem());
        let empty = f.write("empty.pem", "nothing here\n");
        let missing = f.dir.path().join("missing.pem");
        let garbage_key = f.write(
            "garbage-key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );

        let cases: Vec<(PathBuf, PathBuf, &str, &PathBuf)> = vec![
            (missing.clone(), key.clone(), "--tls-cert", &missing),
            (cert.clone(), missing.clone(), "--tls-key", &missing),
            (empty.clone(), key.clone(), "holds no certificate", &empty),
            (cert.clone(), empty.clone(), "holds no private key", &empty),
            // The key file holds a certificate but no key.
            (cert.clone(), cert.clone(), "holds no private key", &cert),
            (cert.clone(), wrong_key.clone(), "does not match", &wrong_key),
            (cert.clone(), garbage_key.clone(), "--tls-key", &garbage_key),
        ];
        for (c, k, needle, named) in cases {
            let line = ServerTls::from_pem_files(&c, &k).unwrap_err();
            assert!(!line.contains('\n'), "not one line: {line}");
            assert!(line.contains(needle), "{line} lacks {needle}");
            assert!(line.contains(&named.display().to_string()), "{line} does not name {}", named.display());
        }
    }

    #[test]
    fn a_key_under_the_wrong_pem_tag_is_found_and_refused_naming_the_key_file() {
        // The SEC1 tag is recognised as a key (so the message is not "holds no private
        // key"), but a PKCS#8 body under it does not parse: the key file is named.
        let f = Files::new();
        let pair = self_signed();
        let cert = f.write("cert.pem", &pair.cert.pem());
        let pkcs8 = pair.signing_key.serialize_pem();
        let sec1_tagged = f.write(
            "sec1.pem",
            &pkcs8.replace("BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY").replace("END PRIVATE KEY", "END EC PRIVATE KEY"),
        );
        let line = ServerTls::from_pem_files(&cert, &sec1_tagged).unwrap_err();
        assert!(line.starts_with("--tls-key") && !line.contains("holds no private key"), "{line}");
        assert!(line.contains("sec1.pem"), "{line}");
    }
}
