//! https with rustls: the server's certificate and key, and optionally the
//! CA that clients' certificates must be signed by (mTLS).

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for `--tls-cert`/`--tls-key`; with `client_ca`, only
/// clients presenting a certificate signed by it are served.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    // One process-wide crypto provider (ring); a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the TLS private key {}: {e}; give --tls-key a readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).with_context(|| {
                    format!(
                        "the client CA file {} holds an unusable certificate",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .with_context(|| format!("using {} as the client CA", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not match, or one is unsupported (give --tls-cert a PEM X.509 v3 certificate and --tls-key the PEM private key that belongs to it)")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in a PEM file; none is an error.
fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the PEM certificates in {}: {e}; check the path, and that the file is readable PEM",
                path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The acceptor the settings ask for: none without a certificate.
pub fn configured(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> anyhow::Result<Option<TlsAcceptor>> {
    match (cert, key) {
        (None, None) if client_ca.is_some() => anyhow::bail!(
            "client certificates (tls_client_ca) need https: give --tls-cert FILE and --tls-key FILE too"
        ),
        (None, None) => Ok(None),
        (Some(c), Some(k)) => acceptor(c, k, client_ca).map(Some),
        _ => anyhow::bail!("https needs both --tls-cert FILE and --tls-key FILE"),
    }
}
