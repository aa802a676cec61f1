//! TLS for connections we open (exchange WebSockets and REST): the rustls client
//! configuration shared by all of them (webpki roots plus optional extra trust anchors
//! from a PEM file) and a new client session for one URL.
//!
//! Owns: the client trust store. Never opens a socket and never serves TLS (that is
//! [`crate::shell::conn::tls_server`]).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::shell::conn::url::WsUrl;

/// The rustls client configuration shared by every upstream connection: the webpki root
/// certificates plus, optionally, extra trust anchors from a PEM file (a private CA, or the
/// self-signed certificate of a test exchange).
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup").finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Builds the configuration. `extra_ca_pem` names a PEM file whose certificates are
    /// trusted in addition to the webpki roots; the error names the file when it cannot be
    /// read, holds no certificate, or holds one that is not a usable trust anchor.
    pub fn new(extra_ca_pem: Option<&Path>) -> Result<TlsSetup, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_pem {
            for cert in read_pem_certificates(path)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "CA file {}: certificate not usable as a trust anchor: {e}",
                        path.display()
                    )
                })?;
            }
        }
        // The ring provider is named explicitly so no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsSetup {
            config: Arc::new(config),
        })
    }
}

fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

pub(crate) fn new_tls_session(url: &WsUrl, tls: &TlsSetup) -> io::Result<ClientConnection> {
    let name = ServerName::try_from(url.host.clone()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {:?}: {e}", url.host),
        )
    })?;
    ClientConnection::new(Arc::clone(&tls.config), name)
        .map_err(|e| io::Error::other(format!("TLS session for {}: {e}", url.host)))
}
