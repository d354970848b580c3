//! Certificate authorities tollgate creates and signs with: the development SPIFFE trust domain
//! (`certs init` / `certs issue`) and the interception CA that signs per-host leaves.
//!
//! Keys are ECDSA P-256 (fast to mint, universally supported). Serial numbers are random 128-bit
//! values so that re-issued certificates never collide in a client's cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::SpiffeId;

/// Why a certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "no CA for trust domain {trust_domain} in {dir}: run `tollgate certs init --dir {dir} --trust-domain {trust_domain}` first"
    )]
    NoTrustDomain { trust_domain: String, dir: String },
}

/// How long development CAs are valid.
const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Backdating of `notBefore` for clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A CA certificate and key, ready to sign.
pub struct SigningCa {
    pub cert_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes a file atomically (temp + rename) so a crash never leaves half a key; keys get 0600.
pub fn write_private(path: &Path, contents: &str, secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    let err = |e: std::io::Error| CaError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl SigningCa {
    /// Creates a new self-signed CA with the given common name.
    pub fn generate(common_name: &str) -> Result<SigningCa, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "tollgate development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(SigningCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from PEM files (the key must be PKCS#8, as `openssl genpkey` writes it).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<SigningCa, CaError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Parse {
            path: key_path.to_path_buf(),
            message: format!("not a usable PKCS#8 private key: {e}"),
        })?;
        let cert_der = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
                CaError::Parse {
                    path: cert_path.to_path_buf(),
                    message: e.to_string(),
                }
            })?
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::Parse {
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(SigningCa {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Writes the CA to `cert` and `key` (key 0600).
    pub fn save(&self, cert: &Path, key: &Path) -> Result<(), CaError> {
        write_private(cert, &self.cert_pem, false)?;
        write_private(key, &self.issuer.key().serialize_pem(), true)
    }

    /// Mints a TLS server leaf for `host` (DNS name or IP), valid for `lifetime`.
    /// Returns (leaf DER, PKCS#8 key DER).
    pub fn mint_server_leaf(
        &self,
        host: &str,
        lifetime: Duration,
    ) -> Result<(rustls::pki_types::CertificateDer<'static>, Vec<u8>), CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into()?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().clone(), key.serialize_der()))
    }

    /// Issues an X.509-SVID: exactly one URI SAN (the SPIFFE ID), not a CA, digitalSignature,
    /// usable as TLS client and server certificate. Returns (cert PEM, key PEM).
    pub fn issue_svid(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SPIFFE");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + lifetime;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// File layout of a development PKI folder made by `certs init`.
pub struct DevPkiLayout {
    pub dir: PathBuf,
}

impl DevPkiLayout {
    /// The trust domain's CA certificate.
    pub fn trust_domain_ca(&self, trust_domain: &str) -> PathBuf {
        self.dir.join(format!("{trust_domain}.ca.pem"))
    }
    /// The trust domain's CA key.
    pub fn trust_domain_key(&self, trust_domain: &str) -> PathBuf {
        self.dir.join(format!("{trust_domain}.ca-key.pem"))
    }
    /// The trust bundle to configure under `identity.trust_domains` (same as the CA today).
    pub fn trust_domain_bundle(&self, trust_domain: &str) -> PathBuf {
        self.dir.join(format!("{trust_domain}.bundle.pem"))
    }
    /// The interception CA certificate.
    pub fn intercept_ca(&self) -> PathBuf {
        self.dir.join("intercept-ca.pem")
    }
    /// The interception CA key.
    pub fn intercept_key(&self) -> PathBuf {
        self.dir.join("intercept-ca-key.pem")
    }

    /// `certs init`: a SPIFFE trust-domain CA (+ bundle) and an interception CA. Existing files
    /// are kept (re-running init never invalidates issued certificates); returns what was written.
    pub fn init(&self, trust_domain: &str) -> Result<Vec<PathBuf>, CaError> {
        let mut written = Vec::new();
        let ca_path = self.trust_domain_ca(trust_domain);
        if !ca_path.exists() {
            let ca = SigningCa::generate(&format!(
                "tollgate development SPIFFE CA for {trust_domain}"
            ))?;
            ca.save(&ca_path, &self.trust_domain_key(trust_domain))?;
            write_private(&self.trust_domain_bundle(trust_domain), &ca.cert_pem, false)?;
            written.extend([
                ca_path,
                self.trust_domain_key(trust_domain),
                self.trust_domain_bundle(trust_domain),
            ]);
        }
        if !self.intercept_ca().exists() {
            let ca = SigningCa::generate("tollgate development interception CA")?;
            ca.save(&self.intercept_ca(), &self.intercept_key())?;
            written.extend([self.intercept_ca(), self.intercept_key()]);
        }
        Ok(written)
    }

    /// `certs issue`: an SVID for `id` signed by its trust domain's CA in this folder.
    /// Returns the (cert, key) paths.
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        name: &str,
    ) -> Result<(PathBuf, PathBuf), CaError> {
        let td = id.trust_domain();
        let (ca_cert, ca_key) = (self.trust_domain_ca(td), self.trust_domain_key(td));
        if !ca_cert.exists() {
            return Err(CaError::NoTrustDomain {
                trust_domain: td.to_string(),
                dir: self.dir.display().to_string(),
            });
        }
        let ca = SigningCa::load(&ca_cert, &ca_key)?;
        let (cert_pem, key_pem) = ca.issue_svid(id, ttl)?;
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}-key.pem"));
        write_private(&cert_path, &cert_pem, false)?;
        write_private(&key_path, &key_pem, true)?;
        Ok((cert_path, key_path))
    }
}

/// A file name for an SVID derived from its ID: `spiffe://td/ns/a/sa/b` → `td_ns_a_sa_b`.
pub fn svid_file_stem(id: &SpiffeId) -> String {
    let mut stem = id.trust_domain().to_string();
    for segment in id.path().split('/').filter(|s| !s.is_empty()) {
        stem.push('_');
        stem.push_str(segment);
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn issues_svid_with_exactly_one_spiffe_uri_san() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DevPkiLayout {
            dir: dir.path().to_path_buf(),
        };
        layout.init("example.org").unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/agents/sa/triage").unwrap();
        let (cert, _key) = layout
            .issue(&id, Duration::from_secs(3600), "triage")
            .unwrap();
        let pem = std::fs::read(&cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let x509 = pem.parse_x509().unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["spiffe://example.org/ns/agents/sa/triage"]);
        assert!(!x509.is_ca());
    }

    #[test]
    fn refuses_to_issue_for_an_unknown_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DevPkiLayout {
            dir: dir.path().to_path_buf(),
        };
        layout.init("example.org").unwrap();
        let id = SpiffeId::parse("spiffe://other.org/a").unwrap();
        assert!(matches!(
            layout.issue(&id, Duration::from_secs(60), "a"),
            Err(CaError::NoTrustDomain { .. })
        ));
    }

    #[test]
    fn mints_leaves_for_dns_names_and_ips() {
        let ca = SigningCa::generate("test").unwrap();
        assert!(
            ca.mint_server_leaf("api.github.com", Duration::from_secs(60))
                .is_ok()
        );
        assert!(
            ca.mint_server_leaf("127.0.0.1", Duration::from_secs(60))
                .is_ok()
        );
    }
}
