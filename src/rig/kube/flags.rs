//! The command line of each Kubernetes component of kube mode: kubeadm's flags (v1.26,
//! `kubeadm init` static-pod manifests) with the rig's paths and addresses, plus what a host
//! of its own needs (`--advertise-address`, the controller-manager's and scheduler's
//! `--bind-address` and serving certificates, so that their health endpoints are reached on
//! the host's address and verified against the cluster CA).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::pki::KubePki;

/// What the command lines refer to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub pki: KubePki,
    /// Every etcd member's client URL.
    pub etcd_servers: Vec<String>,
    pub service_cidr: String,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
}

fn p(x: &Path) -> String {
    x.display().to_string()
}

fn flags(pairs: Vec<(&str, String)>) -> Vec<String> {
    pairs.into_iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// kube-apiserver `name` on `address` (serving with its own certificate).
pub fn apiserver(l: &Layout, name: &str, address: Ipv4Addr) -> Vec<String> {
    let k = &l.pki;
    let (kc, kk) = k.pair("apiserver-kubelet-client");
    let (ec, ek) = k.pair("apiserver-etcd-client");
    let (pc, pk) = k.pair("front-proxy-client");
    let (sc, sk) = k.apiserver_pair(name);
    flags(vec![
        ("advertise-address", address.to_string()),
        ("allow-privileged", "true".into()),
        ("authorization-mode", "Node,RBAC".into()),
        ("client-ca-file", p(&k.ca_cert())),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("enable-bootstrap-token-auth", "true".into()),
        ("etcd-cafile", p(&k.etcd_ca_cert())),
        ("etcd-certfile", p(&ec)),
        ("etcd-keyfile", p(&ek)),
        ("etcd-servers", l.etcd_servers.join(",")),
        ("kubelet-client-certificate", p(&kc)),
        ("kubelet-client-key", p(&kk)),
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname".into()),
        ("proxy-client-cert-file", p(&pc)),
        ("proxy-client-key-file", p(&pk)),
        ("requestheader-allowed-names", super::pki::FRONT_PROXY_CLIENT_CN.into()),
        ("requestheader-client-ca-file", p(&k.file("front-proxy-ca.crt"))),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("secure-port", super::APISERVER_PORT.to_string()),
        ("service-account-issuer", format!("https://kubernetes.default.svc.{}", super::DNS_DOMAIN)),
        ("service-account-key-file", p(&k.sa_pub())),
        ("service-account-signing-key-file", p(&k.sa_key())),
        ("service-cluster-ip-range", l.service_cidr.clone()),
        ("tls-cert-file", p(&sc)),
        ("tls-private-key-file", p(&sk)),
    ])
}

/// kube-controller-manager `name` on `address`.
pub fn controller_manager(l: &Layout, name: &str, address: Ipv4Addr) -> Vec<String> {
    let k = &l.pki;
    let kc = p(&l.controller_manager_kubeconfig);
    let (sc, sk) = k.pair(name);
    flags(vec![
        ("authentication-kubeconfig", kc.clone()),
        ("authorization-kubeconfig", kc.clone()),
        ("bind-address", address.to_string()),
        ("client-ca-file", p(&k.ca_cert())),
        ("cluster-name", super::kubeconfig::CLUSTER.into()),
        ("cluster-signing-cert-file", p(&k.ca_cert())),
        ("cluster-signing-key-file", p(&k.ca_key())),
        ("controllers", "*,bootstrapsigner,tokencleaner".into()),
        ("kubeconfig", kc),
        ("leader-elect", "true".into()),
        ("requestheader-client-ca-file", p(&k.file("front-proxy-ca.crt"))),
        ("root-ca-file", p(&k.ca_cert())),
        ("secure-port", super::CONTROLLER_MANAGER_PORT.to_string()),
        ("service-account-private-key-file", p(&k.sa_key())),
        ("service-cluster-ip-range", l.service_cidr.clone()),
        ("tls-cert-file", p(&sc)),
        ("tls-private-key-file", p(&sk)),
        ("use-service-account-credentials", "true".into()),
    ])
}

/// kube-scheduler `name` on `address`.
pub fn scheduler(l: &Layout, name: &str, address: Ipv4Addr) -> Vec<String> {
    let kc = p(&l.scheduler_kubeconfig);
    let (sc, sk) = l.pki.pair(name);
    flags(vec![
        ("authentication-kubeconfig", kc.clone()),
        ("authorization-kubeconfig", kc.clone()),
        ("bind-address", address.to_string()),
        ("kubeconfig", kc),
        ("leader-elect", "true".into()),
        ("secure-port", super::SCHEDULER_PORT.to_string()),
        ("tls-cert-file", p(&sc)),
        ("tls-private-key-file", p(&sk)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn layout() -> Layout {
        Layout {
            pki: KubePki::new("/r/pki/kube"),
            etcd_servers: vec![
                "https://10.213.7.11:2379".into(),
                "https://10.213.7.12:2379".into(),
                "https://10.213.7.13:2379".into(),
            ],
            service_cidr: "10.96.0.0/12".into(),
            controller_manager_kubeconfig: "/r/kube/controller-manager.conf".into(),
            scheduler_kubeconfig: "/r/kube/scheduler.conf".into(),
        }
    }

    /// flag → value; fails on a flag given twice or not in `--k=v` form.
    fn parse(argv: &[String]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for a in argv {
            let (k, v) =
                a.strip_prefix("--").and_then(|r| r.split_once('=')).unwrap_or_else(|| panic!("not --k=v: {a}"));
            assert!(m.insert(k.to_string(), v.to_string()).is_none(), "{k} given twice");
        }
        m
    }

    fn expect(m: &BTreeMap<String, String>, want: &[(&str, &str)]) {
        for (k, v) in want {
            assert_eq!(m.get(*k).map(String::as_str), Some(*v), "--{k}");
        }
    }

    #[test]
    fn apiserver_flags() {
        let m = parse(&apiserver(&layout(), "apiserver-2", Ipv4Addr::new(10, 213, 7, 102)));
        expect(
            &m,
            &[
                ("advertise-address", "10.213.7.102"),
                ("etcd-servers", "https://10.213.7.11:2379,https://10.213.7.12:2379,https://10.213.7.13:2379"),
                ("etcd-cafile", "/r/pki/kube/etcd/ca.crt"),
                ("etcd-certfile", "/r/pki/kube/apiserver-etcd-client.crt"),
                ("etcd-keyfile", "/r/pki/kube/apiserver-etcd-client.key"),
                ("client-ca-file", "/r/pki/kube/ca.crt"),
                ("tls-cert-file", "/r/pki/kube/apiserver-2/apiserver.crt"),
                ("tls-private-key-file", "/r/pki/kube/apiserver-2/apiserver.key"),
                ("kubelet-client-certificate", "/r/pki/kube/apiserver-kubelet-client.crt"),
                ("kubelet-client-key", "/r/pki/kube/apiserver-kubelet-client.key"),
                ("service-account-issuer", "https://kubernetes.default.svc.cluster.local"),
                ("service-account-key-file", "/r/pki/kube/sa.pub"),
                ("service-account-signing-key-file", "/r/pki/kube/sa.key"),
                ("service-cluster-ip-range", "10.96.0.0/12"),
                ("authorization-mode", "Node,RBAC"),
                ("requestheader-client-ca-file", "/r/pki/kube/front-proxy-ca.crt"),
                ("requestheader-allowed-names", "front-proxy-client"),
                ("requestheader-username-headers", "X-Remote-User"),
                ("requestheader-group-headers", "X-Remote-Group"),
                ("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
                ("proxy-client-cert-file", "/r/pki/kube/front-proxy-client.crt"),
                ("proxy-client-key-file", "/r/pki/kube/front-proxy-client.key"),
                ("secure-port", "6443"),
            ],
        );
        // flags removed from kube-apiserver must not be there (it refuses to start)
        for gone in ["insecure-port", "kubelet-https", "apiserver-count"] {
            assert!(!m.contains_key(gone), "--{gone}");
        }
    }

    #[test]
    fn controller_manager_flags() {
        let m = parse(&controller_manager(&layout(), "controller-manager-2", Ipv4Addr::new(10, 213, 7, 112)));
        let kc = "/r/kube/controller-manager.conf";
        expect(
            &m,
            &[
                ("leader-elect", "true"),
                ("use-service-account-credentials", "true"),
                ("cluster-signing-cert-file", "/r/pki/kube/ca.crt"),
                ("cluster-signing-key-file", "/r/pki/kube/ca.key"),
                ("root-ca-file", "/r/pki/kube/ca.crt"),
                ("service-account-private-key-file", "/r/pki/kube/sa.key"),
                ("kubeconfig", kc),
                ("authentication-kubeconfig", kc),
                ("authorization-kubeconfig", kc),
                ("bind-address", "10.213.7.112"),
                ("secure-port", "10257"),
                ("tls-cert-file", "/r/pki/kube/controller-manager-2.crt"),
                ("tls-private-key-file", "/r/pki/kube/controller-manager-2.key"),
            ],
        );
    }

    #[test]
    fn scheduler_flags() {
        let m = parse(&scheduler(&layout(), "scheduler-1", Ipv4Addr::new(10, 213, 7, 121)));
        let kc = "/r/kube/scheduler.conf";
        expect(
            &m,
            &[
                ("leader-elect", "true"),
                ("kubeconfig", kc),
                ("authentication-kubeconfig", kc),
                ("authorization-kubeconfig", kc),
                ("bind-address", "10.213.7.121"),
                ("secure-port", "10259"),
                ("tls-cert-file", "/r/pki/kube/scheduler-1.crt"),
            ],
        );
        assert_eq!(m.len(), 8, "{m:?}");
    }
}
