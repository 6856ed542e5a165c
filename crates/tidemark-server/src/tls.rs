//! https (`--tls-cert FILE --tls-key FILE`), with rustls.

use crate::config::ServerConfig;
use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;

/// The TLS configuration, if the server serves https.
pub async fn config(config: &ServerConfig) -> anyhow::Result<Option<RustlsConfig>> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("https needs both --tls-cert FILE and --tls-key FILE"),
    };
    // One process-wide crypto provider (ring); a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "reading the TLS certificate {} and key {} (PEM)",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(tls))
}
