//! Minting certificates with rcgen: a CA from its PEM files (PKCS#8, PKCS#1 or SEC1 key, as
//! kubeadm and openssl write them), an impostor CA with the same name and another key, and
//! leaf certificates with a chosen validity window. Keys stay in memory; [`Minted`] never
//! prints its key.

use std::fmt;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("read the CA certificate: {0}")]
    CaCert(String),
    #[error("read the CA key: {0}")]
    CaKey(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("sign a certificate: {0}")]
    Sign(String),
}

/// A CA that can sign: its certificate (PEM) and its key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("cert_pem", &format_args!("{} bytes", self.cert_pem.len())).finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
    /// Server and client (etcd members use their serving certificate as a peer client).
    Both,
}

/// A leaf certificate to mint.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// DNS names or IP addresses.
    pub sans: Vec<String>,
    pub usage: Usage,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The validity windows of the client certificates the `certs` suite presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Valid from an hour ago for a day.
    Valid,
    /// Valid for 30 days that ended a day ago.
    Expired,
    /// Valid for 30 days starting tomorrow.
    NotYetValid,
}

impl Window {
    /// `(notBefore, notAfter)` relative to `now`.
    pub fn bounds(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        match self {
            Window::Valid => (now - ChronoDuration::hours(1), now + ChronoDuration::days(1)),
            Window::Expired => (now - ChronoDuration::days(31), now - ChronoDuration::days(1)),
            Window::NotYetValid => (now + ChronoDuration::days(1), now + ChronoDuration::days(31)),
        }
    }
}

impl LeafSpec {
    /// A client certificate with the given window.
    pub fn client(common_name: &str, window: Window, now: DateTime<Utc>) -> Self {
        let (not_before, not_after) = window.bounds(now);
        Self { common_name: common_name.into(), sans: vec![], usage: Usage::Client, not_before, not_after }
    }
}

/// A minted certificate and its key, PEM. The key is never printed.
#[derive(Clone)]
pub struct Minted {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256), valid from a day ago for ten years.
    pub fn generate(common_name: &str) -> Result<Self, MintError> {
        let key = KeyPair::generate().map_err(|e| MintError::Sign(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = Utc::now();
        p.not_before = to_time(now - ChronoDuration::days(1));
        p.not_after = to_time(now + ChronoDuration::days(3650));
        let cert = p.self_signed(&key).map_err(|e| MintError::Sign(e.to_string()))?;
        Ok(Self { cert_pem: cert.pem(), key })
    }

    /// A CA from its certificate and key files' contents. The key may be PKCS#8 (`PRIVATE
    /// KEY`), PKCS#1 (`RSA PRIVATE KEY`, kubeadm's default) or SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, MintError> {
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| MintError::CaCert("no PEM certificate found".into()))?
            .map_err(|e| MintError::CaCert(e.to_string()))?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| MintError::CaCert(format!("not X.509: {e}")))?;
        let key = load_key(key_pem)?;
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(MintError::KeyMismatch);
        }
        Ok(Self { cert_pem: cert_pem.to_string(), key })
    }

    /// A CA that carries this CA's name (subject DN) but a key of its own: what it signs
    /// names the right issuer and must still be refused.
    pub fn impostor(&self) -> Result<Self, MintError> {
        let key = KeyPair::generate().map_err(|e| MintError::Sign(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &key).map_err(|e| MintError::CaCert(e.to_string()))?;
        // its own self-signed certificate, same name, the impostor's key
        let mut p = CertificateParams::default();
        p.distinguished_name = name_of(&self.cert_pem)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = issuer.key_usages().to_vec();
        let cert = p.self_signed(&key).map_err(|e| MintError::Sign(e.to_string()))?;
        Ok(Self { cert_pem: cert.pem(), key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key as PKCS#8 PEM (for writing a test rig's `ca.key`, mode 0600).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a new leaf certificate (fresh ECDSA P-256 key) as this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Minted, MintError> {
        let sign = |e: rcgen::Error| MintError::Sign(e.to_string());
        let key = KeyPair::generate().map_err(sign)?;
        let mut p = CertificateParams::new(spec.sans.clone()).map_err(sign)?;
        p.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = match spec.usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Both => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        p.not_before = to_time(spec.not_before);
        p.not_after = to_time(spec.not_after);
        p.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(sign)?;
        let cert = p.signed_by(&key, &issuer).map_err(sign)?;
        Ok(Minted {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before: trunc(spec.not_before),
            not_after: trunc(spec.not_after),
        })
    }
}

impl Ca {
    /// A copy of the serving certificate `original_pem` (same subject, same SANs, same public
    /// key, server usage) signed by this CA with the window `not_before`..`not_after`. Only
    /// the public key is needed: the server's private key is never read, and the server keeps
    /// using its own key with the new certificate.
    pub fn reissue(
        &self,
        original_pem: &str,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
    ) -> Result<Minted, MintError> {
        use x509_parser::extensions::GeneralName;
        let sign = |e: rcgen::Error| MintError::Sign(e.to_string());
        let der = rustls_pemfile::certs(&mut original_pem.as_bytes())
            .next()
            .ok_or_else(|| MintError::CaCert("the certificate to copy: no PEM certificate found".into()))?
            .map_err(|e| MintError::CaCert(e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| MintError::CaCert(format!("the certificate to copy is not X.509: {e}")))?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(x509.public_key().raw).map_err(sign)?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = x509.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.push(rcgen::SanType::DnsName((*d).try_into().map_err(sign)?)),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()),
                            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()),
                            _ => continue,
                        };
                        sans.push(rcgen::SanType::IpAddress(ip));
                    }
                    _ => {}
                }
            }
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = name_of(original_pem)?;
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = to_time(not_before);
        p.not_after = to_time(not_after);
        p.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(sign)?;
        let cert = p.signed_by(&spki, &issuer).map_err(sign)?;
        Ok(Minted {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            not_before: trunc(not_before),
            not_after: trunc(not_after),
        })
    }
}

fn name_of(cert_pem: &str) -> Result<rcgen::DistinguishedName, MintError> {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .ok_or_else(|| MintError::CaCert("no PEM certificate found".into()))?
        .map_err(|e| MintError::CaCert(e.to_string()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| MintError::CaCert(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    for attr in x509.subject().iter_attributes() {
        let Ok(value) = attr.as_str() else { continue };
        let oid: Vec<u64> = match attr.attr_type().iter() {
            Some(arcs) => arcs.collect(),
            None => continue,
        };
        let ty = match oid.as_slice() {
            [2, 5, 4, 3] => DnType::CommonName,
            [2, 5, 4, 6] => DnType::CountryName,
            [2, 5, 4, 7] => DnType::LocalityName,
            [2, 5, 4, 8] => DnType::StateOrProvinceName,
            [2, 5, 4, 10] => DnType::OrganizationName,
            [2, 5, 4, 11] => DnType::OrganizationalUnitName,
            _ => DnType::CustomDnType(oid),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn to_time(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Loads a private key in any of the PEM forms, converting PKCS#1 and SEC1 to PKCS#8 (ring
/// signs only with PKCS#8 keys).
fn load_key(key_pem: &str) -> Result<KeyPair, MintError> {
    use rustls::pki_types::PrivateKeyDer;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| MintError::CaKey(e.to_string()))?
        .ok_or_else(|| MintError::CaKey("no PEM private key found".into()))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs1_to_pkcs8(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => sec1_to_pkcs8(k.secret_sec1_der())?,
        _ => return Err(MintError::CaKey("unsupported private key format".into())),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| MintError::CaKey(format!("unsupported key: {e}")))
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PrivateKeyInfo { version 0, AlgorithmIdentifier, OCTET STRING key } (RFC 5208).
fn private_key_info(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der_tlv(0x30, alg_id));
    body.extend(der_tlv(0x04, key));
    der_tlv(0x30, &body)
}

fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    let mut alg = OID_RSA_ENCRYPTION.to_vec();
    alg.extend([0x05, 0x00]);
    private_key_info(&alg, pkcs1)
}

fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, MintError> {
    let curve =
        [OID_P256, OID_P384].into_iter().find(|oid| sec1.windows(oid.len()).any(|w| w == *oid)).ok_or_else(|| {
            MintError::CaKey("EC key on a curve other than P-256 or P-384, or without its curve named".into())
        })?;
    let mut alg = OID_EC_PUBLIC_KEY.to_vec();
    alg.extend_from_slice(curve);
    Ok(private_key_info(&alg, sec1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn leaf_windows_and_issuer() {
        let ca = Ca::generate("test-ca").unwrap();
        let now = Utc::now();
        let m = ca.issue(&LeafSpec::client("probe", Window::Expired, now)).unwrap();
        let der = rustls_pemfile::certs(&mut m.cert_pem.as_bytes()).next().unwrap().unwrap();
        let (_, c) = parse_x509_certificate(&der).unwrap();
        assert_eq!(c.validity().not_after.timestamp(), m.not_after.timestamp());
        assert!(m.not_after < now);
        assert_eq!(c.issuer().to_string(), "CN=test-ca");
        assert!(!format!("{m:?}").contains("PRIVATE"));
    }

    #[test]
    fn reissue_keeps_names_and_key_and_changes_the_window() {
        let ca = Ca::generate("kubernetes").unwrap();
        let now = Utc::now();
        let orig = ca
            .issue(&LeafSpec {
                common_name: "kube-apiserver".into(),
                sans: vec!["10.0.0.11".into(), "kubernetes.default".into()],
                usage: Usage::Server,
                not_before: now - ChronoDuration::days(1),
                not_after: now + ChronoDuration::days(300),
            })
            .unwrap();
        let (nb, na) = Window::Expired.bounds(now);
        let re = ca.reissue(&orig.cert_pem, nb, na).unwrap();
        let parse = |pem: &str| rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
        let (d1, d2) = (parse(&orig.cert_pem), parse(&re.cert_pem));
        let (_, c1) = parse_x509_certificate(&d1).unwrap();
        let (_, c2) = parse_x509_certificate(&d2).unwrap();
        assert_eq!(c1.subject().to_string(), c2.subject().to_string());
        assert_eq!(c1.public_key().raw, c2.public_key().raw, "the server keeps its key");
        assert_eq!(
            c1.subject_alternative_name().unwrap().unwrap().value,
            c2.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(c2.validity().not_after.timestamp() < now.timestamp());
        assert_eq!(c2.issuer().to_string(), "CN=kubernetes");
    }

    #[test]
    fn impostor_has_the_same_name_and_another_key() {
        let ca = Ca::generate("etcd-ca").unwrap();
        let imp = ca.impostor().unwrap();
        let d1 = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().unwrap().unwrap();
        let d2 = rustls_pemfile::certs(&mut imp.cert_pem().as_bytes()).next().unwrap().unwrap();
        let (_, c1) = parse_x509_certificate(&d1).unwrap();
        let (_, c2) = parse_x509_certificate(&d2).unwrap();
        assert_eq!(c1.subject().to_string(), c2.subject().to_string());
        assert_ne!(c1.public_key().raw, c2.public_key().raw);
    }

    #[test]
    fn ca_from_pem_refuses_a_foreign_key() {
        let a = Ca::generate("a").unwrap();
        let b = Ca::generate("b").unwrap();
        assert!(Ca::from_pem(a.cert_pem(), &a.key_pem()).is_ok());
        assert!(matches!(Ca::from_pem(a.cert_pem(), &b.key_pem()), Err(MintError::KeyMismatch)));
    }

    /// kubeadm writes `RSA PRIVATE KEY` (PKCS#1); openssl `ecparam -genkey` writes SEC1.
    #[test]
    fn ca_keys_in_pkcs1_and_sec1_load() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(dir.path()).output();
            match out {
                Ok(o) if o.status.success() => true,
                Ok(o) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
                Err(_) => false,
            }
        };
        // RSA, PKCS#1 ("traditional") as kubeadm writes it
        if !run(&["genrsa", "-traditional", "-out", "rsa.key", "2048"]) {
            eprintln!("openssl not installed: skipping");
            return;
        }
        run(&["req", "-x509", "-new", "-key", "rsa.key", "-subj", "/CN=etcd-ca", "-days", "2", "-out", "rsa.crt"]);
        let key = std::fs::read_to_string(dir.path().join("rsa.key")).unwrap();
        assert!(key.contains("BEGIN RSA PRIVATE KEY"), "{}", &key[..40]);
        let rsa_crt = std::fs::read_to_string(dir.path().join("rsa.crt")).unwrap();
        let ca = Ca::from_pem(&rsa_crt, &key).unwrap();
        ca.issue(&LeafSpec::client("x", Window::Valid, Utc::now())).unwrap();
        // an RSA public key (kubeadm's apiserver.crt) is copied into a re-signed certificate
        let (nb, na) = Window::Expired.bounds(Utc::now());
        ca.reissue(&rsa_crt, nb, na).unwrap();
        // EC P-256, SEC1
        run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"]);
        run(&["req", "-x509", "-new", "-key", "ec.key", "-subj", "/CN=etcd-ca", "-days", "2", "-out", "ec.crt"]);
        let key = std::fs::read_to_string(dir.path().join("ec.key")).unwrap();
        assert!(key.contains("BEGIN EC PRIVATE KEY"));
        let ca = Ca::from_pem(&std::fs::read_to_string(dir.path().join("ec.crt")).unwrap(), &key).unwrap();
        ca.issue(&LeafSpec::client("x", Window::Valid, Utc::now())).unwrap();
    }
}
