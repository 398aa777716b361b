//! What the URL says about TLS (`sslmode`, `sslrootcert`), and the connector every
//! connection of a storage is opened with: rustls under the `postgres-tls` feature, none
//! without it.

use tokio_postgres::config::SslMode;

use crate::error::StorageError;

use super::PostgresOptions;

/// The connector of every connection, migration and cancel request of a storage.
#[cfg(feature = "postgres-tls")]
pub(super) type Connector = tokio_postgres_rustls::MakeRustlsConnect;
/// Without the `postgres-tls` feature: plain connections only.
#[cfg(not(feature = "postgres-tls"))]
pub(super) type Connector = tokio_postgres::NoTls;

/// Another handle on `connector` (an `Arc` clone; a copy without TLS).
#[cfg_attr(not(feature = "postgres-tls"), allow(clippy::clone_on_copy))]
pub(super) fn share(connector: &Connector) -> Connector {
    connector.clone()
}

/// Where the certificates a server must chain to come from.
#[cfg(feature = "postgres-tls")]
#[derive(Clone, Debug, Default)]
pub(super) enum Trust {
    /// `sslrootcert` in the URL if it names a file, else Mozilla's roots (`webpki-roots`).
    #[default]
    Default,
    /// The certificates of a PEM file.
    CaFile(std::path::PathBuf),
    /// The application's root store.
    Roots(std::sync::Arc<rustls::RootCertStore>),
    /// The application's whole client configuration.
    Config(std::sync::Arc<rustls::ClientConfig>),
}

/// A URL (or `key=value` string) as tokio-postgres reads it, and the TLS settings taken out
/// of it that tokio-postgres does not know.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) config: tokio_postgres::Config,
    /// libpq's `sslrootcert`: a PEM file of the CA certificates to trust, or `system`.
    pub(super) root_cert: Option<String>,
    /// Whether the URL names an `sslmode` (TLS options then need not imply `require`).
    #[cfg_attr(not(feature = "postgres-tls"), allow(dead_code))]
    pub(super) mode_given: bool,
}

fn url_error(detail: String) -> StorageError {
    // Never the URL itself: it may hold a password.
    StorageError::backend("postgres url", std::io::Error::other(detail))
}

/// Parses `url`, taking `sslrootcert` out and reading libpq's `sslmode=verify-ca` and
/// `verify-full` as `require` (the certificate is always verified, host name included).
pub(super) fn parse(url: &str) -> Result<Parsed, StorageError> {
    let mut root_cert = None;
    let mut mode_given = false;
    let mut take = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslrootcert", path) => {
                root_cert = Some(path.to_owned());
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                mode_given = true;
                Some("require".to_owned())
            }
            ("sslmode", _) => {
                mode_given = true;
                Some(value.to_owned())
            }
            _ => Some(value.to_owned()),
        }
    };
    let rewritten = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let decoded = percent_decode(value).ok_or_else(|| {
                        url_error(format!("the URL's `{key}` is not valid percent-encoding"))
                    })?;
                    if let Some(value) = take(key, &decoded) {
                        if value == decoded {
                            kept.push(pair.to_owned());
                        } else {
                            kept.push(format!("{key}={value}"));
                        }
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // `host=... sslmode=...`: plain words only (a quoted value is left to tokio-postgres).
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if !value.starts_with('\'') => {
                    if let Some(value) = take(key.trim(), value) {
                        kept.push(format!("{key}={value}"));
                    }
                }
                _ => kept.push(word.to_owned()),
            }
        }
        kept.join(" ")
    };
    let mut config = rewritten
        .parse::<tokio_postgres::Config>()
        .map_err(|error| StorageError::backend("postgres url", error))?;
    if !mode_given {
        // Not libpq's `prefer`: a URL that asks for nothing gets no unverified TLS; one that
        // names a CA gets verified TLS or no connection.
        config.ssl_mode(if root_cert.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
    }
    #[cfg(not(feature = "postgres-tls"))]
    {
        let require = config.get_ssl_mode() == SslMode::Require;
        if require || root_cert.is_some() {
            return Err(url_error(
                "the URL asks for TLS (sslmode=require, verify-ca, verify-full or sslrootcert), \
                 which needs circuitpy's `postgres-tls` feature; this build has none"
                    .to_owned(),
            ));
        }
    }
    Ok(Parsed {
        config,
        root_cert,
        mode_given,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = text.get(at + 1..at + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The connector for `options`, trusting `root_cert` (the URL's `sslrootcert`) unless the
/// options name their own trust.
#[cfg(feature = "postgres-tls")]
pub(super) fn connector(
    options: &PostgresOptions,
    root_cert: Option<&str>,
) -> Result<Connector, StorageError> {
    use std::sync::Arc;

    let roots = match (&options.trust, root_cert) {
        (Trust::Config(config), _) => {
            return Ok(Connector::new(ClientConfig::clone(config)));
        }
        (Trust::Roots(roots), _) => rustls::RootCertStore::clone(roots),
        (Trust::CaFile(path), _) => read_roots(path)?,
        (Trust::Default, Some(path)) if path != "system" => read_roots(std::path::Path::new(path))?,
        (Trust::Default, _) => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    // The provider is named here, not taken from the process: the application need not
    // install one, and one it installed for other uses does not matter.
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error(format!("no usable TLS protocol version: {error}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Connector::new(config))
}

#[cfg(feature = "postgres-tls")]
use rustls::ClientConfig;

/// Without TLS support there is nothing to choose.
#[cfg(not(feature = "postgres-tls"))]
pub(super) fn connector(
    _options: &PostgresOptions,
    _root_cert: Option<&str>,
) -> Result<Connector, StorageError> {
    Ok(tokio_postgres::NoTls)
}

#[cfg(feature = "postgres-tls")]
fn tls_error(detail: String) -> StorageError {
    StorageError::backend("postgres tls", std::io::Error::other(detail))
}

/// The certificates of a PEM file, as a root store: every one must be usable, and there
/// must be at least one.
#[cfg(feature = "postgres-tls")]
fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, StorageError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|error| tls_error(format!("cannot read the CA file {shown}: {error}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate
            .map_err(|error| tls_error(format!("the CA file {shown} is not valid PEM: {error}")))?;
        roots.add(certificate).map_err(|error| {
            tls_error(format!(
                "a certificate in the CA file {shown} is not usable: {error}"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(tls_error(format!(
            "the CA file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(roots)
}

/// What to do about a TLS failure whose text is `text`, if it is one users meet.
pub(super) fn hint(text: &str) -> Option<&'static str> {
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        Some(
            "the server's certificate does not chain to a trusted root; name its CA with \
             sslrootcert= in the URL or PostgresOptions::ca_file",
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some("the server's certificate does not name the host the URL connects to")
    } else if text.contains("server does not support TLS") {
        Some("the URL says sslmode=require, but the server does not accept TLS")
    } else if text.contains("no encryption") && text.contains("pg_hba.conf") {
        Some("the server may admit this connection over TLS only: try sslmode=require")
    } else {
        None
    }
}

/// A client error as one line with its causes (tokio-postgres says only "error performing
/// TLS handshake"; the reason is its source), and a hint for the TLS failures users meet.
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let hint = hint(&text);
    if let Some(hint) = hint {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "postgres-tls")]
    #[test]
    fn sslrootcert_is_taken_out_and_verify_modes_read_as_require() {
        let parsed = parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(parsed.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(parsed.config.get_application_name(), Some("x"));
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Require);
        let parsed = parse("host=h user=u sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(parsed.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Require);
        // A CA named without a mode means TLS, verified.
        let parsed = parse("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Require);
    }

    #[cfg(not(feature = "postgres-tls"))]
    #[test]
    fn tls_in_the_url_without_the_feature_is_a_clear_error() {
        for url in [
            "postgres://u@h/db?sslmode=require",
            "postgres://u@h/db?sslmode=verify-full",
            "host=h user=u sslrootcert=/ca.pem",
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains("`postgres-tls` feature"), "{error}");
        }
    }

    #[test]
    fn plain_urls_are_left_alone() {
        // No sslmode: plain, as before TLS support (not libpq's unverified `prefer`).
        let parsed = parse("postgres://u@h:5433/db").unwrap();
        assert_eq!(parsed.root_cert, None);
        assert!(!parsed.mode_given);
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Disable);
        let parsed = parse("postgres://u@h/db?sslmode=prefer").unwrap();
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Prefer);
        let parsed = parse("host=h user=u sslmode=disable").unwrap();
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Disable);
        assert!(parse("postgres://u@h/db?sslrootcert=%zz").is_err());
        assert!(parse("postgres://u@h/db?sslmode=sometimes").is_err());
    }

    #[cfg(feature = "postgres-tls")]
    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let options = PostgresOptions::default().ca_file("/nonexistent/ca.pem");
        let error = connector(&options, None).err().unwrap().to_string();
        assert!(
            error.contains("cannot read the CA file /nonexistent/ca.pem"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("circuitpy-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = connector(&PostgresOptions::default(), empty.to_str())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(connector(&PostgresOptions::default(), Some("system")).is_ok());
    }
}
