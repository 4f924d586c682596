//! The Kubernetes PKI of kube mode, what kubeadm makes and under kubeadm's file names:
//! cluster CA, front-proxy CA, apiserver serving certificate, the apiserver's kubelet, etcd
//! and front-proxy client certificates, the service-account key pair, and the client
//! certificates of the admin, the controller-manager and the scheduler (these go into the
//! kubeconfigs, as kubeadm does). The etcd CA is the etcd rig's own (`<rig>/pki/ca.crt`); a
//! copy of its certificate sits at `etcd/ca.crt` as on a kubeadm node.
//!
//! Layout of `<rig>/pki/kube` (0700; every key 0600):
//! `ca.crt ca.key apiserver-kubelet-client.{crt,key} apiserver-etcd-client.{crt,key}
//! front-proxy-ca.{crt,key} front-proxy-client.{crt,key} sa.key sa.pub etcd/ca.crt`;
//! `<apiserver host>/apiserver.{crt,key}`: each apiserver has its own serving certificate
//! and key, as each kubeadm control-plane node has its own `/etc/kubernetes/pki/apiserver.crt`
//! (so a lab that expires one apiserver's certificate leaves the others alone); and, beyond
//! kubeadm, `<host>.{crt,key}` serving certificates for each controller-manager and
//! scheduler so that their health endpoints are verified.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyPair, SanType};
use time::{Duration, OffsetDateTime};

use crate::rig::pki::{write_file, write_pair, Ca, Leaf, Minted, PkiError, BACKDATE, LEAF_VALIDITY_DAYS};

/// Subjects, as kubeadm (≤ 1.28) writes them.
pub const CA_CN: &str = "kubernetes";
pub const FRONT_PROXY_CA_CN: &str = "front-proxy-ca";
pub const APISERVER_CN: &str = "kube-apiserver";
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
pub const ETCD_CLIENT_CN: &str = "kube-apiserver-etcd-client";
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";
pub const ADMIN_CN: &str = "kubernetes-admin";
pub const CONTROLLER_MANAGER_CN: &str = "system:kube-controller-manager";
pub const SCHEDULER_CN: &str = "system:kube-scheduler";
pub const MASTERS: &str = "system:masters";

/// Files of the Kubernetes PKI directory.
#[derive(Debug, Clone, PartialEq)]
pub struct KubePki {
    pub dir: PathBuf,
}

impl KubePki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.file("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.file("ca.key")
    }
    pub fn etcd_ca_cert(&self) -> PathBuf {
        self.dir.join("etcd").join("ca.crt")
    }
    /// `<name>.crt`, `<name>.key`.
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.file(&format!("{name}.crt")), self.file(&format!("{name}.key")))
    }
    /// The directory that plays the apiserver host's `/etc/kubernetes/pki` for its serving
    /// certificate: `<dir>/<host>`.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }
    /// The serving certificate and key of apiserver `host`.
    pub fn apiserver_pair(&self, host: &str) -> (PathBuf, PathBuf) {
        let d = self.host_dir(host);
        (d.join("apiserver.crt"), d.join("apiserver.key"))
    }
    pub fn sa_key(&self) -> PathBuf {
        self.file("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.file("sa.pub")
    }
}

/// The client identities that go into kubeconfigs (kubeadm does not write them as files).
pub struct KubeconfigIdentities {
    pub ca_pem: String,
    pub admin: Minted,
    pub controller_manager: Minted,
    pub scheduler: Minted,
}

/// What the serving certificates must name.
#[derive(Debug, Clone)]
pub struct PkiSpec {
    /// Per apiserver: (hostname, address).
    pub apiservers: Vec<(String, Ipv4Addr)>,
    pub lb: Ipv4Addr,
    /// Per controller-manager and scheduler: (hostname, address).
    pub health_servers: Vec<(String, Ipv4Addr)>,
}

fn dns(s: &str) -> Result<SanType, PkiError> {
    s.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|source| PkiError::Generate { what: format!("SAN {s}"), source })
}

/// The apiserver serving certificate's SANs: every apiserver's hostname and address, the
/// load balancer's address, the `kubernetes` Service's cluster IP and DNS names, localhost.
pub fn apiserver_sans(spec: &PkiSpec) -> Result<Vec<SanType>, PkiError> {
    let mut sans = Vec::new();
    for n in [
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{}", super::DNS_DOMAIN),
        "localhost".to_string(),
    ] {
        sans.push(dns(&n)?);
    }
    for (name, _) in &spec.apiservers {
        sans.push(dns(name)?);
    }
    sans.push(SanType::IpAddress(IpAddr::V4(super::SERVICE_IP)));
    for (_, a) in &spec.apiservers {
        sans.push(SanType::IpAddress(IpAddr::V4(*a)));
    }
    sans.push(SanType::IpAddress(IpAddr::V4(spec.lb)));
    sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    Ok(sans)
}

/// Writes the whole Kubernetes PKI into `pki.dir` (created 0700). `etcd_ca` is the etcd
/// rig's CA (certificate and key files). Returns the identities for the kubeconfigs.
pub fn create(pki: &KubePki, etcd_ca: (&Path, &Path), spec: &PkiSpec) -> Result<KubeconfigIdentities, PkiError> {
    let wfail = |p: &Path| {
        let path = p.display().to_string();
        move |source| PkiError::Write { path, source }
    };
    for d in [pki.dir.clone(), pki.dir.join("etcd")] {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(wfail(&d))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(wfail(&d))?;
    }
    let now = OffsetDateTime::now_utc();
    let (nb, na) = (now - BACKDATE, now + Duration::days(LEAF_VALIDITY_DAYS));
    fn window<'a>(
        nb: OffsetDateTime,
        na: OffsetDateTime,
    ) -> impl Fn(&'a str, &'a [&'a str], &'a [SanType], &'a [Eku]) -> Leaf<'a> {
        move |cn, orgs, sans, ekus| Leaf { cn, orgs, sans, ekus, not_before: nb, not_after: na }
    }

    let (ca, ca_files) = Ca::generate_named(CA_CN, &[], now)?;
    write_pair(&pki.ca_cert(), &pki.ca_key(), &ca_files)?;
    let (fp, fp_files) = Ca::generate_named(FRONT_PROXY_CA_CN, &[], now)?;
    let (c, k) = pki.pair("front-proxy-ca");
    write_pair(&c, &k, &fp_files)?;
    let etcd = Ca::load_files(etcd_ca.0, etcd_ca.1)?;
    let etcd_ca_pem =
        std::fs::read(etcd_ca.0).map_err(|source| PkiError::Read { path: etcd_ca.0.display().to_string(), source })?;
    write_file(&pki.etcd_ca_cert(), &etcd_ca_pem, 0o644)?;

    let server = [Eku::ServerAuth];
    let client = [Eku::ClientAuth];
    let sans = apiserver_sans(spec)?;
    let leaf = window(nb, na);
    for (host, _) in &spec.apiservers {
        let d = pki.host_dir(host);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(wfail(&d))?;
        let m = ca.issue_leaf(&leaf(APISERVER_CN, &[], &sans, &server))?;
        let (c, k) = pki.apiserver_pair(host);
        write_pair(&c, &k, &m)?;
    }
    let issued: [(&str, &Ca, Leaf<'_>); 3] = [
        ("apiserver-kubelet-client", &ca, leaf(KUBELET_CLIENT_CN, &[MASTERS], &[], &client)),
        ("apiserver-etcd-client", &etcd, leaf(ETCD_CLIENT_CN, &[MASTERS], &[], &client)),
        ("front-proxy-client", &fp, leaf(FRONT_PROXY_CLIENT_CN, &[], &[], &client)),
    ];
    for (name, issuer, l) in issued {
        let m = issuer.issue_leaf(&l)?;
        let (c, k) = pki.pair(name);
        write_pair(&c, &k, &m)?;
    }
    for (name, addr) in &spec.health_servers {
        let sans = vec![dns(name)?, SanType::IpAddress(IpAddr::V4(*addr))];
        let m = ca.issue_leaf(&window(nb, na)(name, &[], &sans, &server))?;
        let (c, k) = pki.pair(name);
        write_pair(&c, &k, &m)?;
    }

    // the service-account key pair (ECDSA P-256: kube-apiserver signs ES256 tokens with it)
    let sa = KeyPair::generate().map_err(|source| PkiError::Generate { what: "service-account key".into(), source })?;
    write_file(&pki.sa_key(), sa.serialize_pem().as_bytes(), 0o600)?;
    write_file(&pki.sa_pub(), sa.public_key_pem().as_bytes(), 0o644)?;

    Ok(KubeconfigIdentities {
        ca_pem: ca_files.cert_pem.clone(),
        admin: ca.issue_leaf(&leaf(ADMIN_CN, &[MASTERS], &[], &client))?,
        controller_manager: ca.issue_leaf(&leaf(CONTROLLER_MANAGER_CN, &[], &[], &client))?,
        scheduler: ca.issue_leaf(&leaf(SCHEDULER_CN, &[], &[], &client))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    struct Built {
        _d: tempfile::TempDir,
        pki: KubePki,
        etcd_ca: PathBuf,
        ids: KubeconfigIdentities,
    }

    fn build() -> Built {
        let d = tempfile::tempdir().unwrap();
        let etcd = crate::rig::pki::PkiPaths::new(d.path().join("pki"));
        crate::rig::pki::create(&etcd, &[("m1".into(), "10.213.7.11".parse().unwrap())]).unwrap();
        let pki = KubePki::new(d.path().join("pki/kube"));
        let spec = PkiSpec {
            apiservers: (1..=3).map(|i| (format!("apiserver-{i}"), Ipv4Addr::new(10, 213, 7, 100 + i))).collect(),
            lb: Ipv4Addr::new(10, 213, 7, 100),
            health_servers: vec![("controller-manager-1".into(), Ipv4Addr::new(10, 213, 7, 111))],
        };
        let ids = create(&pki, (&etcd.ca_cert(), &etcd.ca_key()), &spec).unwrap();
        Built { etcd_ca: etcd.ca_cert(), _d: d, pki, ids }
    }

    fn der(pem: &[u8]) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem).expect("pem").1.contents
    }

    fn with_cert<T>(path: &Path, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let d = der(&std::fs::read(path).unwrap());
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        f(&c)
    }

    fn subject(c: &X509Certificate<'_>) -> (String, Vec<String>) {
        let cn = c.subject().iter_common_name().next().map(|a| a.as_str().unwrap().to_string()).unwrap_or_default();
        let orgs = c.subject().iter_organization().map(|a| a.as_str().unwrap().to_string()).collect();
        (cn, orgs)
    }

    fn sans(c: &X509Certificate<'_>) -> Vec<String> {
        c.subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|g| match g {
                        GeneralName::DNSName(s) => s.to_string(),
                        GeneralName::IPAddress(b) if b.len() == 4 => {
                            IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                        }
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn verify_by(cert: &Path, ca: &Path) -> bool {
        let ca_der = der(&std::fs::read(ca).unwrap());
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        with_cert(cert, |c| c.issuer() == ca.subject() && c.verify_signature(Some(ca.public_key())).is_ok())
    }

    #[test]
    fn apiserver_certificate_names_every_apiserver_the_lb_and_the_service() {
        let b = build();
        let first = b.pki.apiserver_pair("apiserver-1").0;
        let names = with_cert(&first, sans);
        for want in [
            "10.213.7.101",
            "10.213.7.102",
            "10.213.7.103",
            "10.213.7.100",
            "10.96.0.1",
            "127.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "apiserver-1",
            "localhost",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        with_cert(&first, |c| {
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign(), "{ku:?}");
            assert!(!c.is_ca());
            assert_eq!(subject(c).0, APISERVER_CN);
        });
        for i in 1..=3 {
            assert!(verify_by(&b.pki.apiserver_pair(&format!("apiserver-{i}")).0, &b.pki.ca_cert()));
        }
        // each apiserver its own certificate and key, as each kubeadm node
        let read = |h: &str| std::fs::read(b.pki.apiserver_pair(h).1).unwrap();
        assert_ne!(read("apiserver-1"), read("apiserver-2"));
        assert!(!b.pki.file("apiserver.crt").exists(), "no shared serving certificate");
    }

    #[test]
    fn client_certificates_have_kubeadms_subjects_and_issuers() {
        let b = build();
        let cases = [
            ("apiserver-kubelet-client.crt", KUBELET_CLIENT_CN, vec![MASTERS], b.pki.ca_cert()),
            ("apiserver-etcd-client.crt", ETCD_CLIENT_CN, vec![MASTERS], b.etcd_ca.clone()),
            ("front-proxy-client.crt", FRONT_PROXY_CLIENT_CN, vec![], b.pki.file("front-proxy-ca.crt")),
        ];
        for (file, cn, orgs, ca) in cases {
            let p = b.pki.file(file);
            let (got_cn, got_orgs) = with_cert(&p, subject);
            assert_eq!(got_cn, cn, "{file}");
            assert_eq!(got_orgs, orgs, "{file}");
            with_cert(&p, |c| {
                let eku = c.extended_key_usage().unwrap().unwrap().value;
                assert!(eku.client_auth && !eku.server_auth, "{file}: {eku:?}");
            });
            assert!(verify_by(&p, &ca), "{file} is not signed by {}", ca.display());
        }
        // the etcd client is not signed by the cluster CA (a wrong-CA mix-up would show here)
        assert!(!verify_by(&b.pki.file("apiserver-etcd-client.crt"), &b.pki.ca_cert()));
        assert_eq!(std::fs::read(b.pki.etcd_ca_cert()).unwrap(), std::fs::read(&b.etcd_ca).unwrap());
    }

    #[test]
    fn kubeconfig_identities_are_admin_controller_manager_scheduler() {
        let b = build();
        for (m, cn, orgs) in [
            (&b.ids.admin, ADMIN_CN, vec![MASTERS]),
            (&b.ids.controller_manager, CONTROLLER_MANAGER_CN, vec![]),
            (&b.ids.scheduler, SCHEDULER_CN, vec![]),
        ] {
            let d = der(m.cert_pem.as_bytes());
            let (_, c) = X509Certificate::from_der(&d).unwrap();
            let (got_cn, got_orgs) = subject(&c);
            assert_eq!((got_cn.as_str(), got_orgs), (cn, orgs.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
            assert!(c.extended_key_usage().unwrap().unwrap().value.client_auth);
        }
        assert_eq!(b.ids.ca_pem, std::fs::read_to_string(b.pki.ca_cert()).unwrap());
    }

    #[test]
    fn cas_are_cas_and_health_servers_get_serving_certificates() {
        let b = build();
        for (f, cn) in [("ca.crt", CA_CN), ("front-proxy-ca.crt", FRONT_PROXY_CA_CN)] {
            with_cert(&b.pki.file(f), |c| {
                assert!(c.is_ca(), "{f}");
                assert_eq!(subject(c).0, cn);
                assert!(c.key_usage().unwrap().unwrap().value.key_cert_sign());
            });
        }
        let p = b.pki.file("controller-manager-1.crt");
        assert_eq!(with_cert(&p, sans), ["controller-manager-1", "10.213.7.111"]);
        assert!(verify_by(&p, &b.pki.ca_cert()));
    }

    #[test]
    fn keys_are_0600_and_the_sa_pair_matches() {
        let b = build();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.pki.dir), 0o700);
        let mut keys: Vec<PathBuf> = std::fs::read_dir(&b.pki.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            .collect();
        // ca, front-proxy-ca, 3 clients, 1 health server, sa
        assert_eq!(keys.len(), 7, "{keys:?}");
        for i in 1..=3 {
            let h = format!("apiserver-{i}");
            assert_eq!(mode(&b.pki.host_dir(&h)), 0o700);
            keys.push(b.pki.apiserver_pair(&h).1);
        }
        for k in &keys {
            assert_eq!(mode(k), 0o600, "{}", k.display());
        }
        for f in ["ca.crt", "apiserver-1/apiserver.crt", "sa.pub"] {
            assert_eq!(mode(&b.pki.file(f)), 0o644, "{f}");
        }
        let key = KeyPair::from_pem(&std::fs::read_to_string(b.pki.sa_key()).unwrap()).unwrap();
        assert_eq!(key.public_key_pem(), std::fs::read_to_string(b.pki.sa_pub()).unwrap());
        assert!(std::fs::read_to_string(b.pki.sa_pub()).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
