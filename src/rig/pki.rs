//! The rig's PKI: a CA, one certificate per member (server and peer), a client certificate
//! for hadrill, and the CA key kept so that later suites can mint certificates (bad ones too).
//!
//! Layout under `<rig>/pki` (directory 0700, every key 0600):
//! `ca.crt ca.key client.crt client.key <member>.crt <member>.key`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generate the {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// How long the rig's certificates are valid (the topology suite wants ≥ 30 days left).
pub const CA_VALIDITY_DAYS: i64 = 3650;
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// Backdating of `not_before`, so that a clock a little behind does not refuse them.
pub const BACKDATE: Duration = Duration::hours(1);
/// The common name of hadrill's client certificate.
pub const CLIENT_CN: &str = "hadrill";

/// Where the PKI's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
    pub fn member_cert(&self, member: &str) -> PathBuf {
        self.dir.join(format!("{member}.crt"))
    }
    pub fn member_key(&self, member: &str) -> PathBuf {
        self.dir.join(format!("{member}.key"))
    }
}

/// A certificate and its key, PEM.
pub struct Minted {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted").field("cert_pem", &self.cert_pem.len()).field("key_pem", &"<redacted>").finish()
    }
}

/// The rig's CA, loaded from (or just written to) its files.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

fn gen(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate { what: what.to_string(), source }
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

/// A subject: the organizations (`O=`, in order), then the common name.
fn dn_orgs(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d.push(DnType::CommonName, cn);
    d
}

/// What a leaf certificate says: subject, SANs, extended key usages, validity.
pub struct Leaf<'a> {
    pub cn: &'a str,
    pub orgs: &'a [&'a str],
    pub sans: &'a [SanType],
    pub ekus: &'a [ExtendedKeyUsagePurpose],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Ca {
    /// A new self-signed CA; returns it and its certificate's PEM.
    fn generate(now: OffsetDateTime) -> Result<(Self, Minted), PkiError> {
        Self::generate_named("hadrill rig CA", &["hadrill"], now)
    }

    /// A new self-signed CA with this subject (the kube mode's `kubernetes` and
    /// `front-proxy-ca`, as kubeadm names them); returns it and its certificate's PEM.
    pub fn generate_named(cn: &str, orgs: &[&str], now: OffsetDateTime) -> Result<(Self, Minted), PkiError> {
        let key = KeyPair::generate().map_err(gen("CA key"))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn_orgs(cn, orgs);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now - BACKDATE;
        p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key).map_err(gen("CA certificate"))?;
        let minted = Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok((Self { issuer: Issuer::new(p, key) }, minted))
    }

    /// Loads a CA from its certificate and key files.
    pub fn load_files(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Read { path: p.display().to_string(), source })
        };
        let cert = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?).map_err(gen("CA key (parse)"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(gen("CA certificate (parse)"))?;
        Ok(Self { issuer })
    }

    /// Loads the CA of a rig's PKI directory (certificate and key).
    pub fn load(paths: &PkiPaths) -> Result<Self, PkiError> {
        Self::load_files(&paths.ca_cert(), &paths.ca_key())
    }

    /// A certificate signed by this CA, valid from `not_before` to `not_after`.
    pub fn issue(
        &self,
        cn: &str,
        sans: &[SanType],
        ekus: &[ExtendedKeyUsagePurpose],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Minted, PkiError> {
        self.issue_leaf(&Leaf { cn, orgs: &["hadrill"], sans, ekus, not_before, not_after })
    }

    /// A leaf certificate signed by this CA with exactly the subject, SANs and extended key
    /// usages given (key usage: digitalSignature and keyEncipherment, as kubeadm's).
    pub fn issue_leaf(&self, leaf: &Leaf<'_>) -> Result<Minted, PkiError> {
        let key = KeyPair::generate().map_err(gen(leaf.cn))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn_orgs(leaf.cn, leaf.orgs);
        p.subject_alt_names = leaf.sans.to_vec();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = leaf.ekus.to_vec();
        p.not_before = leaf.not_before;
        p.not_after = leaf.not_after;
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).map_err(gen(leaf.cn))?;
        Ok(Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate (EKU clientAuth) with the given window: the certs suite mints
    /// expired and not-yet-valid ones with this.
    pub fn issue_client(
        &self,
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Minted, PkiError> {
        self.issue(cn, &[], &[ExtendedKeyUsagePurpose::ClientAuth], not_before, not_after)
    }
}

/// The SANs of a member's certificate: its address, loopback, `localhost` and its name.
pub fn member_sans(name: &str, ip: IpAddr) -> Result<Vec<SanType>, PkiError> {
    let dns = |s: &str| s.to_string().try_into().map(SanType::DnsName).map_err(gen(&format!("SAN {s}")));
    let mut sans = vec![SanType::IpAddress(ip)];
    let lo: IpAddr = [127, 0, 0, 1].into();
    if ip != lo {
        sans.push(SanType::IpAddress(lo));
    }
    sans.push(dns("localhost")?);
    sans.push(dns(name)?);
    Ok(sans)
}

/// Creates the directory (0700) and writes the whole PKI for these members.
pub fn create(paths: &PkiPaths, members: &[(String, IpAddr)]) -> Result<(), PkiError> {
    let wfail = |p: &Path| {
        let path = p.display().to_string();
        move |source| PkiError::Write { path, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&paths.dir).map_err(wfail(&paths.dir))?;
    std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700)).map_err(wfail(&paths.dir))?;
    let now = OffsetDateTime::now_utc();
    let (ca, ca_files) = Ca::generate(now)?;
    write_pair(&paths.ca_cert(), &paths.ca_key(), &ca_files)?;
    let leaf_end = now + Duration::days(LEAF_VALIDITY_DAYS);
    for (name, ip) in members {
        let m = ca.issue(
            name,
            &member_sans(name, *ip)?,
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            now - BACKDATE,
            leaf_end,
        )?;
        write_pair(&paths.member_cert(name), &paths.member_key(name), &m)?;
    }
    let c = ca.issue_client(CLIENT_CN, now - BACKDATE, leaf_end)?;
    write_pair(&paths.client_cert(), &paths.client_key(), &c)?;
    Ok(())
}

/// Writes a certificate (0644) and its key (0600, created with that mode: never readable by
/// others, not even for an instant).
pub fn write_pair(cert: &Path, key: &Path, m: &Minted) -> Result<(), PkiError> {
    write_file(cert, m.cert_pem.as_bytes(), 0o644)?;
    write_file(key, m.key_pem.as_bytes(), 0o600)
}

/// Writes a file with `mode` (set at creation, and again on an existing file).
pub fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<(), PkiError> {
    let fail = |source| PkiError::Write { path: path.display().to_string(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(fail)?;
    // an existing file keeps its mode through open(): set it
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    f.write_all(body).map_err(fail)?;
    f.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        p.contents
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn built() -> (tempfile::TempDir, PkiPaths) {
        let d = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(d.path().join("pki"));
        let ip: IpAddr = "10.213.7.11".parse().unwrap();
        create(&paths, &[("m1".into(), ip), ("m2".into(), "10.213.7.12".parse().unwrap())]).unwrap();
        (d, paths)
    }

    #[test]
    fn member_certificate_has_sans_and_both_ekus() {
        let (_d, paths) = built();
        let der = parse(&std::fs::read_to_string(paths.member_cert("m1")).unwrap());
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        let san = c.subject_alternative_name().unwrap().expect("SAN extension");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(s) => s.to_string(),
                GeneralName::IPAddress(b) if b.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["10.213.7.11", "127.0.0.1", "localhost", "m1"]);
        let eku = c.extended_key_usage().unwrap().expect("EKU extension").value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        assert!(!c.is_ca());
        assert_eq!(c.subject().iter_common_name().next().unwrap().as_str().unwrap(), "m1");
    }

    #[test]
    fn client_certificate_is_client_only_and_named_hadrill() {
        let (_d, paths) = built();
        let der = parse(&std::fs::read_to_string(paths.client_cert()).unwrap());
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        let eku = c.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
        assert_eq!(c.subject().iter_common_name().next().unwrap().as_str().unwrap(), CLIENT_CN);
        // signed by the rig CA
        let ca_der = parse(&std::fs::read_to_string(paths.ca_cert()).unwrap());
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        assert_eq!(c.issuer(), ca.subject());
        c.verify_signature(Some(ca.public_key())).expect("client certificate signed by the CA");
    }

    #[test]
    fn validity_window_is_backdated_and_bounded() {
        let (_d, paths) = built();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for (p, days) in [
            (paths.ca_cert(), CA_VALIDITY_DAYS),
            (paths.member_cert("m2"), LEAF_VALIDITY_DAYS),
            (paths.client_cert(), LEAF_VALIDITY_DAYS),
        ] {
            let der = parse(&std::fs::read_to_string(&p).unwrap());
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            let nb = c.validity().not_before.timestamp();
            let na = c.validity().not_after.timestamp();
            assert!(nb <= now - 3000 && nb >= now - 3700, "{}: not_before {nb} vs now {now}", p.display());
            let want = now + days * 86400;
            assert!((na - want).abs() < 120, "{}: not_after {na}, expected about {want}", p.display());
        }
    }

    #[test]
    fn keys_are_0600_and_the_directory_0700() {
        let (_d, paths) = built();
        assert_eq!(mode(&paths.dir), 0o700);
        for k in [paths.ca_key(), paths.client_key(), paths.member_key("m1"), paths.member_key("m2")] {
            assert_eq!(mode(&k), 0o600, "{}", k.display());
            assert!(std::fs::read_to_string(&k).unwrap().contains("PRIVATE KEY"));
        }
        assert_eq!(mode(&paths.ca_cert()), 0o644);
        // a key rewritten over a file that was too open becomes 0600 again
        std::fs::set_permissions(paths.client_key(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let ca = Ca::load(&paths).unwrap();
        let now = OffsetDateTime::now_utc();
        let m = ca.issue_client("again", now, now + Duration::days(1)).unwrap();
        write_pair(&paths.client_cert(), &paths.client_key(), &m).unwrap();
        assert_eq!(mode(&paths.client_key()), 0o600);
    }

    #[test]
    fn loaded_ca_mints_an_expired_client_certificate() {
        let (_d, paths) = built();
        let ca = Ca::load(&paths).unwrap();
        let now = OffsetDateTime::now_utc();
        let m = ca.issue_client("expired", now - Duration::days(10), now - Duration::days(1)).unwrap();
        let der = parse(&m.cert_pem);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert!(!c.validity().is_valid(), "expired certificate reads as valid");
        let ca_der = parse(&std::fs::read_to_string(paths.ca_cert()).unwrap());
        let (_, cac) = X509Certificate::from_der(&ca_der).unwrap();
        c.verify_signature(Some(cac.public_key())).expect("signed by the stored CA key");
        assert!(!format!("{m:?}").contains("PRIVATE"), "Debug must not print the key");
    }
}
