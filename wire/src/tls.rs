//! Mutual TLS: the aggregator's CA, the certificates it issues, and the rustls
//! configurations both ends use. An agent's identity is its certificate: the URI SAN
//! `pathpulse:agent:<name>` (or the common name). Every aggregator certificate carries the
//! DNS name [`SERVER_NAME`], which agents verify against: trust comes from the private CA,
//! not from how the aggregator is addressed. The ring provider is always passed
//! explicitly, so a process-wide default installed by another crate cannot interfere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

pub const ALPN: &[u8] = b"pathpulse/1";
/// ALPN of an enrollment connection: no client certificate, one token exchanged for one.
pub const ENROLL_ALPN: &[u8] = b"pathpulse-enroll/1";
/// The DNS name every aggregator server certificate carries and every agent verifies.
pub const SERVER_NAME: &str = "pathpulse-aggregator";
/// File stem of an agent identity (`agent.crt`, `agent.key`).
pub const AGENT_STEM: &str = "agent";
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
const AGENT_URI_PREFIX: &str = "pathpulse:agent:";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("agent name {0}")]
    BadName(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("peer certificate: {0}")]
    Peer(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Agent names: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_agent_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(format!(
            "`{name}` must be 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)"
        )))
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Cert chain and key in the form rustls takes.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn parse_identity(cert_pem: &str, key_pem: &str, what: &Path) -> Result<Identity, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(what, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(what, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| file_err(what, format!("no usable private key: {e}")))?;
    Ok((certs, key))
}

impl IssuedCert {
    pub fn identity(&self) -> Result<Identity, TlsError> {
        parse_identity(&self.cert_pem, &self.key_pem, Path::new("<memory>"))
    }

    /// Write `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`, creating it.
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        write_file(
            &dir.join(format!("{stem}.crt")),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(format!("{stem}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )
    }

    /// Load `<stem>.crt` and `<stem>.key` from `dir`.
    pub fn load(dir: &Path, stem: &str) -> Result<IssuedCert, TlsError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| file_err(&p, e));
        Ok(IssuedCert {
            cert_pem: read(dir.join(format!("{stem}.crt")))?,
            key_pem: read(dir.join(format!("{stem}.key")))?,
        })
    }
}

/// Load an identity (`<stem>.crt`, `<stem>.key`) from `dir`, with errors naming the file.
pub fn load_identity(dir: &Path, stem: &str) -> Result<Identity, TlsError> {
    let c = IssuedCert::load(dir, stem)?;
    parse_identity(&c.cert_pem, &c.key_pem, &dir.join(format!("{stem}.crt")))
}

/// The CA certificate (`ca.crt`) stored next to an agent identity.
pub fn read_ca_pem(dir: &Path) -> Result<String, TlsError> {
    let p = dir.join(CA_CERT_FILE);
    std::fs::read_to_string(&p).map_err(|e| file_err(&p, e))
}

pub fn write_ca_pem(dir: &Path, pem: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    write_file(&dir.join(CA_CERT_FILE), pem.as_bytes(), 0o644)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// The aggregator's certificate authority.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // Allow for agents whose clocks are a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after =
        now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64) as i64);
}

impl Ca {
    /// A new CA: ECDSA P-256, ten years.
    pub fn generate(common_name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pathpulse");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(&key_pem)?;
        Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, key_pem })
    }

    /// Install an operator's CA (PEM certificate and private key, e.g. from an
    /// organisation's PKI) as `ca.crt` and `ca.key` in `dir`, before the aggregator's first
    /// start. Refused, naming why: a certificate that is not a CA allowed to sign
    /// certificates, a key that is not the certificate's, and another CA already in `dir`
    /// (the agents it issued would all be refused). Importing the same CA again is a no-op.
    pub fn import(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| {
                TlsError::Config("no PEM certificate in the CA certificate file".into())
            })?
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(TlsError::Config(
                "the certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        if let Ok(Some(ku)) = x509.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(TlsError::Config(
                "the CA certificate's keyUsage does not allow keyCertSign".into(),
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let v = x509.validity();
        if v.not_after.timestamp() <= now {
            return Err(TlsError::Config("the CA certificate has expired".into()));
        }
        if !key_matches_cert(key_pem, cert_pem) {
            return Err(TlsError::Config(
                "the private key is not the CA certificate's (or not a PEM key rcgen can sign with: PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA)".into(),
            ));
        }
        let ca = Ca::from_pem(cert_pem.to_string(), key_pem.to_string())?;
        let (c, k) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if c.exists() || k.exists() {
            let have = std::fs::read_to_string(&c).map_err(|e| file_err(&c, e))?;
            if ca_fingerprint(&have)? == ca_fingerprint(cert_pem)? {
                return Ok(ca);
            }
            return Err(file_err(
                &c,
                "another CA is already installed here; certificates it issued would be refused, so move the state directory's ca/ aside first",
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        write_file(&k, ca.key_pem.as_bytes(), 0o600)?;
        write_file(&c, ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// `ca.crt` and `ca.key` in `dir`; generated (and written, key 0600) when absent.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        let (c, k) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if c.exists() || k.exists() {
            let cert = std::fs::read_to_string(&c).map_err(|e| file_err(&c, e))?;
            let key = std::fs::read_to_string(&k).map_err(|e| file_err(&k, e))?;
            return Ca::from_pem(cert, key)
                .map_err(|e| file_err(&c, format!("not a usable CA: {e}")));
        }
        let ca = Ca::generate("pathpulse CA")?;
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        write_file(&k, ca.key_pem.as_bytes(), 0o600)?;
        write_file(&c, ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn sign(&self, params: &CertificateParams) -> Result<IssuedCert, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate whose identity is `name`, valid from now for `valid_for`.
    pub fn issue_agent(&self, name: &str, valid_for: Duration) -> Result<IssuedCert, TlsError> {
        let now = OffsetDateTime::now_utc();
        let secs = valid_for.as_secs().min(i64::MAX as u64) as i64;
        self.issue_agent_between(
            name,
            now - time::Duration::hours(1),
            now + time::Duration::seconds(secs),
        )
    }

    /// As [`Ca::issue_agent`] with explicit validity bounds (tests issue expired ones).
    pub fn issue_agent_between(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, TlsError> {
        self.sign(&agent_params(name, not_before, not_after)?)
    }

    /// Sign an agent's certificate request for `name`. Only the request's public key is
    /// used (its signature is checked); identity, usage and validity are the CA's choice.
    /// Returns the certificate, PEM.
    pub fn sign_agent_request(
        &self,
        name: &str,
        csr_pem: &str,
        valid_for: Duration,
    ) -> Result<String, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Peer(format!("certificate request: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let secs = valid_for.as_secs().min(i64::MAX as u64) as i64;
        let params = agent_params(
            name,
            now - time::Duration::hours(1),
            now + time::Duration::seconds(secs),
        )?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }

    /// The aggregator's server certificate: [`SERVER_NAME`], localhost, loopback addresses
    /// and `extra` names or addresses.
    pub fn issue_server(
        &self,
        extra: &[String],
        valid_for: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let mut names = vec![
            SERVER_NAME.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        names.extend(extra.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, valid_for);
        self.sign(&params)
    }
}

/// Parameters of an agent certificate: identity `name` (common name and URI SAN), client
/// authentication only, a random serial (revocation names certificates by serial).
fn agent_params(
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, TlsError> {
    validate_agent_name(name)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "pathpulse agent");
    params.subject_alt_names = vec![SanType::URI(
        format!("{AGENT_URI_PREFIX}{name}").try_into()?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn random_serial() -> Result<rcgen::SerialNumber, TlsError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TlsError::Config("no randomness".into()))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and no leading zero byte
    Ok(rcgen::SerialNumber::from_slice(&b))
}

/// Lower-case hex of SHA-256 over `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CA's fingerprint: SHA-256 of its (first) certificate's DER, lower-case hex. An
/// enrollment token carries it, so the agent trusts only that CA's aggregator.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Config("no CA certificate".into()))?
        .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    Ok(sha256_hex(der.as_ref()))
}

/// The serial number of a certificate, lower-case hex without leading zero bytes.
pub fn cert_serial(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Peer(e.to_string()))?;
    Ok(x509
        .serial
        .to_bytes_be()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// As [`cert_serial`] for the first certificate of a PEM text.
pub fn cert_serial_pem(pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Peer("no certificate".into()))?
        .map_err(|e| TlsError::Peer(e.to_string()))?;
    cert_serial(&der)
}

/// Validity of a certificate: (not before, not after), seconds since the Unix epoch.
pub fn cert_validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Peer(e.to_string()))?;
    let v = x509.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// As [`cert_validity`] for the first certificate of a PEM text.
pub fn cert_validity_pem(pem: &str) -> Result<(i64, i64), TlsError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Peer("no certificate".into()))?
        .map_err(|e| TlsError::Peer(e.to_string()))?;
    cert_validity(&der)
}

/// Whether the certificate (first of `cert_pem`) is for the private key `key_pem`.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(der.as_ref())
        .is_ok_and(|(_, x)| x.public_key().raw == key.subject_public_key_info().as_slice())
}

/// An agent certificate is renewed in the last third of its validity.
pub fn renewal_due((not_before, not_after): (i64, i64), now: i64) -> bool {
    not_after - now < (not_after - not_before) / 3
}

/// A new agent key (ECDSA P-256) and a certificate request signed by it: (key PEM, CSR PEM).
pub fn new_key_and_request(name: &str) -> Result<(String, String), TlsError> {
    validate_agent_name(name)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Token format version prefix.
pub const TOKEN_PREFIX: &str = "pp1";

/// An enrollment token as printed by `pathpulse-aggregator token create`:
/// `pp1.<secret, 32 hex>.<CA fingerprint, 64 hex>`. The aggregator stores only a hash of
/// the secret; the fingerprint pins the CA the enrolling agent will trust.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollToken")
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

impl EnrollToken {
    pub fn parse(s: &str) -> Result<EnrollToken, String> {
        let mut parts = s.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(TOKEN_PREFIX), Some(secret), Some(fp), None)
                if secret.len() == 32
                    && fp.len() == 64
                    && secret
                        .chars()
                        .chain(fp.chars())
                        .all(|c| c.is_ascii_hexdigit()) =>
            {
                Ok(EnrollToken {
                    secret: secret.to_ascii_lowercase(),
                    ca_fingerprint: fp.to_ascii_lowercase(),
                })
            }
            _ => Err(format!(
                "not a pathpulse enrollment token (expected {TOKEN_PREFIX}.<32 hex>.<64 hex>, as printed by `pathpulse-aggregator token create`)"
            )),
        }
    }
}

impl std::fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }
}

/// Verifies the aggregator during enrollment, before the agent has the CA certificate:
/// the server's chain must carry a CA certificate with the token's fingerprint, and the
/// server certificate must be valid under that CA for [`SERVER_NAME`]. Not trust on first
/// use: a man in the middle would need the CA's key.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the aggregator's CA does not match the token's fingerprint".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("CA certificate: {e}")))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side of an enrollment: TLS 1.3, no client certificate, the server verified
/// against the CA whose fingerprint the token carries.
pub fn enroll_client_config(ca_fingerprint: &str) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    Ok(cfg)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config("no CA certificate".into()));
    }
    Ok(roots)
}

/// Server side: TLS 1.3; a client certificate, when presented, is verified against the
/// CA (an invalid one fails the handshake). A connection without one may only enroll: the
/// ingest refuses anything else from it. The CA certificate follows the server's in the
/// chain, so an enrolling agent can check it against its token's fingerprint.
pub fn server_config(ca_pem: &str, identity: Identity) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut chain = identity.0;
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        chain.push(c.map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?);
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, identity.1)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec(), ENROLL_ALPN.to_vec()];
    Ok(cfg)
}

/// Client side: TLS 1.3, the server verified against the CA only, our certificate presented.
pub fn client_config(ca_pem: &str, identity: Identity) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(identity.0, identity.1)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The agent name in a (verified) client certificate: the `pathpulse:agent:` URI SAN,
/// else the common name.
pub fn peer_agent_name(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Peer(e.to_string()))?;
    let from_san = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) => {
                    u.strip_prefix(AGENT_URI_PREFIX).map(str::to_string)
                }
                _ => None,
            })
        });
    let name = match from_san {
        Some(n) => n,
        None => x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| TlsError::Peer("no agent name (URI SAN or CN)".into()))?,
    };
    validate_agent_name(&name).map_err(|e| TlsError::Peer(e.to_string()))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_agent_certificate_carries_the_name() {
        let ca = Ca::generate("test CA").expect("ca");
        let c = ca
            .issue_agent("branch-1.hq", Duration::from_secs(3600))
            .expect("issue");
        let (certs, _) = c.identity().expect("identity");
        assert_eq!(peer_agent_name(&certs[0]).expect("name"), "branch-1.hq");
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "agent-1", "A.b_c", &"x".repeat(64)] {
            assert!(validate_agent_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(validate_agent_name(bad).is_err(), "{bad}");
        }
        let ca = Ca::generate("test CA").expect("ca");
        assert!(ca.issue_agent("bad name", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn files_round_trip_and_garbage_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let again = Ca::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let c = ca.issue_agent("a", Duration::from_secs(60)).expect("issue");
        c.write_to(dir.path(), AGENT_STEM).expect("write");
        assert!(load_identity(dir.path(), AGENT_STEM).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("agent.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("agent.crt"), "garbage").expect("write");
        let e = load_identity(dir.path(), AGENT_STEM)
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("agent.crt"), "{e}");
        let e = load_identity(&dir.path().join("missing"), AGENT_STEM)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing/agent.crt"), "{e}");
    }

    #[test]
    fn certificate_requests_are_signed_with_the_cas_choice_of_identity() {
        let ca = Ca::generate("test CA").expect("ca");
        let (key, csr) = new_key_and_request("asked-for").expect("csr");
        let cert = ca
            .sign_agent_request("granted", &csr, Duration::from_secs(60))
            .expect("sign");
        assert!(key_matches_cert(&key, &cert));
        let id = IssuedCert {
            cert_pem: cert.clone(),
            key_pem: key,
        }
        .identity()
        .expect("identity");
        assert_eq!(peer_agent_name(&id.0[0]).expect("name"), "granted");
        assert!(client_config(ca.cert_pem(), id).is_ok());
        assert_eq!(cert_serial_pem(&cert).expect("serial").len(), 32);
        let (other_key, _) = new_key_and_request("x").expect("csr");
        assert!(!key_matches_cert(&other_key, &cert));
        assert!(
            ca.sign_agent_request(
                "x",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                Duration::from_secs(1)
            )
            .is_err()
        );
        // A request whose signature does not verify.
        let mut bad = csr.into_bytes();
        let n = bad.len();
        bad[n - 40] = if bad[n - 40] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("utf-8");
        assert!(
            ca.sign_agent_request("x", &bad, Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn tokens_parse_and_hide_their_secret() {
        let t = EnrollToken::parse(&format!("pp1.{}.{}", "A".repeat(32), "b".repeat(64)))
            .expect("token");
        assert_eq!(t.secret, "a".repeat(32));
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "pp1",
            "pp2.aa.bb",
            &format!("pp1.{}.{}", "g".repeat(32), "b".repeat(64)),
        ] {
            assert!(EnrollToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs_build() {
        let ca = Ca::generate("test CA").expect("ca");
        let server = ca
            .issue_server(
                &["agg.example.net".into(), "10.1.2.3".into()],
                Duration::from_secs(60),
            )
            .expect("server");
        assert!(server_config(ca.cert_pem(), server.identity().expect("id")).is_ok());
        let agent = ca.issue_agent("a", Duration::from_secs(60)).expect("agent");
        assert!(client_config(ca.cert_pem(), agent.identity().expect("id")).is_ok());
    }
}
