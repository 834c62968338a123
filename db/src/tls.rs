//! TLS to Postgres, with rustls: libpq's `sslmode` and `sslrootcert` in the database URL.
//!
//! tokio-postgres itself knows `sslmode` `disable`, `prefer` and `require` only, and leaves
//! checking the server's certificate to the TLS connector. So the URL's `sslmode` and
//! `sslrootcert` are taken out here and become the connector's policy, as libpq reads them:
//!
//! - `disable`: no TLS.
//! - `allow`, `prefer` (the default): TLS when the server offers it, the certificate unchecked
//!   (checked as by `verify-ca` when `sslrootcert` is given, as libpq does).
//! - `require`: TLS or no connection; the certificate unchecked, unless `sslrootcert` is given,
//!   which makes it `verify-ca`.
//! - `verify-ca`: the certificate must chain to a trusted root.
//! - `verify-full`: that, and name the host connected to.
//!
//! Trusted roots are the PEM file `sslrootcert` names, or the system's store when it is
//! `system` or not given.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;

/// How a connection uses TLS, from the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, Error> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Invalid(format!(
                    "database URL: sslmode {other:?} is not one of disable, allow, prefer, \
                     require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is a must.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// A database URL read: tokio-postgres's config and the TLS connector for it (`None` for
/// `disable`, and for `prefer` on a Unix socket, where tokio-postgres would still ask a TLS
/// connector for a name the socket does not have).
pub struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
    pub mode: SslMode,
}

/// Reads `url` (a `postgres://` URL or a `key=value` connection string) with its TLS settings.
pub fn read_url(url: &str) -> Result<Connector, Error> {
    let (rest, mode, root_cert) = take_tls_settings(url)?;
    let mode = match (mode, &root_cert) {
        // libpq: a root certificate given makes `require` check the chain.
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|source| Error::BadUrl { source })?;
    // Postgres has no TLS on a Unix socket: `prefer` there means none (as in libpq).
    let unix_only = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)));
    let mode = match mode {
        SslMode::Prefer if unix_only => SslMode::Disable,
        mode => mode,
    };
    config.ssl_mode(match mode.for_tokio_postgres() {
        "disable" => tokio_postgres::config::SslMode::Disable,
        "prefer" => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let tls = match mode {
        SslMode::Disable => None,
        mode => Some(MakeRustlsConnect::new(client_config(
            mode,
            root_cert.as_deref(),
        )?)),
    };
    Ok(Connector { config, tls, mode })
}

/// Splits the `sslmode` and `sslrootcert` settings out of `url`, returning the rest.
fn take_tls_settings(url: &str) -> Result<(String, SslMode, Option<String>), Error> {
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, Error> {
        match key {
            "sslmode" => mode = SslMode::parse(value)?,
            "sslrootcert" => root_cert = Some(value.to_string()),
            "sslcert" | "sslkey" => {
                return Err(Error::Invalid(format!(
                    "database URL: {key} (a client certificate) is not supported"
                )));
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The query starts at the first `?` after the user and password, as tokio-postgres
        // reads it (a password may hold a `?`).
        let authority = url.find('@').map_or(0, |at| at + 1);
        match url[authority..]
            .find('?')
            .map(|i| url.split_at(authority + i))
        {
            Some((base, query)) => {
                let query = &query[1..];
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&percent_decode(key)?, &percent_decode(value)?)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        let mut kept = Vec::new();
        for (key, value, text) in key_values(url)? {
            if !take(key, &value)? {
                kept.push(text);
            }
        }
        kept.join(" ")
    };
    // Whatever was not taken out above reaches tokio-postgres, whose TLS mode this module
    // then sets: a TLS setting left in would be overridden, perhaps weakened. Refuse instead.
    let lowered = percent_decode(&rest)
        .unwrap_or_else(|_| rest.clone())
        .to_ascii_lowercase();
    let set = |setting: &str| {
        lowered
            .match_indices(setting)
            .any(|(at, _)| lowered[at + setting.len()..].trim_start().starts_with('='))
    };
    if ["sslmode", "sslrootcert", "sslcert", "sslkey"]
        .iter()
        .any(|setting| set(setting))
    {
        return Err(Error::Invalid(
            "database URL: a TLS setting (sslmode, sslrootcert) could not be read: give it as \
             a plain query parameter (`?sslmode=verify-full`) or key=value pair"
                .into(),
        ));
    }
    Ok((rest, mode, root_cert))
}

/// The `key=value` pairs of a connection string: key, unquoted value, and the pair's text.
fn key_values(text: &str) -> Result<Vec<(&str, String, &str)>, Error> {
    let bad = || Error::Invalid("database URL: a key=value connection string is malformed".into());
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let eq = rest.find('=').ok_or_else(bad)?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = if rest.starts_with('\'') {
            chars.next();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().ok_or_else(bad)?.1),
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            end.ok_or_else(bad)?
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            end
        };
        let consumed = start.len() - rest.len() + end;
        pairs.push((key, value, &start[..consumed]));
        rest = rest[end..].trim_start();
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| Error::Invalid("database URL: a bad %-escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Invalid("database URL: not UTF-8".into()))
}

fn tls_error(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("database TLS: {what}"))
}

/// The rustls client configuration for `mode`, trusting `root_cert` (a PEM file, or `system`).
fn client_config(mode: SslMode, root_cert: Option<&str>) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let config = match mode {
        // libpq checks the chain whenever it has a root certificate, `prefer` included.
        SslMode::Disable | SslMode::Prefer | SslMode::Require if root_cert.is_none() => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        SslMode::Disable | SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => {
            let roots = Arc::new(trusted_roots(root_cert)?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(tls_error)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(trusted_roots(root_cert)?)
            .with_no_client_auth(),
    };
    Ok(config)
}

fn trusted_roots(root_cert: Option<&str>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot use is skipped, as a browser would.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_error(
                    "no trusted certificates in the system's store: name a CA file with \
                     sslrootcert in the database URL",
                ));
            }
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|err| tls_error(format!("sslrootcert {path}: {err}")))?;
            for cert in certs {
                let cert = cert.map_err(|err| tls_error(format!("sslrootcert {path}: {err}")))?;
                roots
                    .add(cert)
                    .map_err(|err| tls_error(format!("sslrootcert {path}: {err}")))?;
            }
            if roots.is_empty() {
                return Err(tls_error(format!(
                    "sslrootcert {path} holds no PEM certificate"
                )));
            }
        }
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypted, the certificate not checked (libpq's behaviour); the
/// handshake's signatures still are.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the certificate must chain to a trusted root; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_either_form() {
        let (rest, mode, root) = take_tls_settings(
            "postgres://u:p@db.example/keycap?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=k",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db.example/keycap?application_name=k");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));

        let (rest, mode, root) = take_tls_settings(
            "host='/run/my dir' sslmode=require port=5432 sslrootcert='/a b/c\\'d.pem' user=k",
        )
        .unwrap();
        assert_eq!(rest, "host='/run/my dir' port=5432 user=k");
        assert_eq!(mode, SslMode::Require);
        assert_eq!(root.as_deref(), Some("/a b/c'd.pem"));

        let (rest, mode, _) =
            take_tls_settings("postgres://k:pa?ss@h/db?sslmode=require&x=1").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://k:pa?ss@h/db?x=1", SslMode::Require)
        );
        let (rest, mode, root) = take_tls_settings("postgres://u@h/db").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://u@h/db", SslMode::Prefer, None)
        );
    }

    #[test]
    fn bad_tls_settings_are_refused_with_what_is_wrong() {
        for (url, why) in [
            ("postgres://h/db?sslmode=verify", "not one of"),
            ("host=h sslmode=", "not one of"),
            ("postgres://h/db?sslcert=/c.pem", "client certificate"),
            ("host='unterminated", "malformed"),
            ("postgres://h/db?sslrootcert=%zz", "%-escape"),
            // A `?` in the password does not move the query; an escaped key is still read.
            ("postgres://k:pa?ss@h/db?sslmode=nope", "not one of"),
            ("postgres://h/db?sslmod%65=nope", "not one of"),
            // A setting this module cannot read is refused, never left for tokio-postgres.
            ("host=h options='-c sslmode=require'", "could not be read"),
        ] {
            let err = take_tls_settings(url).err().unwrap().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let dir = std::env::temp_dir().join(format!("keycap-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let url = format!("host=h sslmode=require sslrootcert={}", missing.display());
        // The file is read, so a missing one is an error that names it.
        let err = read_url(&url).err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let url = format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            dir.join("empty.pem").display()
        );
        let err = read_url(&url).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert_eq!(
            read_url("host=h sslmode=require").unwrap().mode,
            SslMode::Require
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
