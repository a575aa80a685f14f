//! HTTPS checks' TLS: one client configuration per way of verifying
//! (system roots, each CA file, none), made when the checks start and
//! shared by every backend that verifies that way, with a session cache
//! big enough for all of them so that most checks resume a session (no
//! certificate to verify, a cheaper handshake). rustls with the ring
//! provider: no C toolchain beyond ring's own, no OpenSSL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fulcrum_config::TlsVerify;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::HealthError;

/// The client configurations, by how they verify.
pub struct TlsConfigs {
    configs: HashMap<TlsVerify, Arc<ClientConfig>>,
    sessions: usize,
}

impl TlsConfigs {
    /// `sessions`: how many sessions to keep for resumption (one per
    /// https backend).
    pub fn new(sessions: usize) -> TlsConfigs {
        TlsConfigs { configs: HashMap::new(), sessions }
    }

    /// The configuration for `verify`, made on first use.
    pub fn get(&mut self, verify: &TlsVerify) -> Result<Arc<ClientConfig>, HealthError> {
        if let Some(c) = self.configs.get(verify) {
            return Ok(Arc::clone(c));
        }
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().map_err(HealthError::Tls)?;
        let mut config = match verify {
            TlsVerify::Off => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.signature_verification_algorithms))),
            TlsVerify::SystemRoots => builder.with_root_certificates(system_roots()?),
            TlsVerify::CaFile(path) => builder.with_root_certificates(file_roots(path)?),
        }
        .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(self.sessions.max(1));
        let config = Arc::new(config);
        self.configs.insert(verify.clone(), Arc::clone(&config));
        Ok(config)
    }
}

/// The name a check verifies and sends as SNI: `name` if set, else the
/// address (no SNI is sent for an address; the certificate must name it).
pub fn server_name(name: Option<&str>, address: std::net::IpAddr) -> Result<ServerName<'static>, HealthError> {
    match name {
        None => Ok(ServerName::IpAddress(address.into())),
        Some(n) => ServerName::try_from(n.to_string()).map_err(|_| HealthError::ServerName(n.to_string())),
    }
}

fn system_roots() -> Result<RootCertStore, HealthError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map_or_else(|| "none installed (package ca-certificates)".to_string(), ToString::to_string);
        return Err(HealthError::Roots { what: "the system's trusted certificates".into(), why });
    }
    Ok(roots)
}

fn file_roots(path: &Path) -> Result<RootCertStore, HealthError> {
    let what = || format!("CA file {}", path.display());
    let certs: Result<Vec<CertificateDer<'static>>, _> = CertificateDer::pem_file_iter(path).and_then(Iterator::collect);
    let certs = certs.map_err(|e| HealthError::Roots { what: what(), why: e.to_string() })?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        let why = if bad > 0 { format!("none of its {bad} certificates can be used") } else { "no PEM certificate in it".into() };
        return Err(HealthError::Roots { what: what(), why });
    }
    Ok(roots)
}

/// `verify = false`: any certificate is accepted, but the handshake must
/// still be signed by its key (a server that cannot finish TLS fails).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
