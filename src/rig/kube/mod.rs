//! The rig's kube mode: a whole HA control plane on this machine from the Kubernetes server
//! binaries — 3 kube-apiservers behind HAProxy, 2 kube-controller-managers and 2
//! kube-schedulers with leader election — each a host of its own (network namespace with its
//! own address on the rig's bridge, UTS namespace with its own hostname).
//!
//! - [`pki`]: the Kubernetes PKI in kubeadm's layout and names (`<rig>/pki/kube`).
//! - [`kubeconfig`]: the kubeconfigs (admin, controller-manager, scheduler) through the LB.
//! - [`flags`]: the command line of each component.
//! - [`haproxy`]: the load balancer's configuration.
//! - [`host`]: one host: its namespace, the command that runs a program as that host.
//! - [`lifecycle`]: plan, bring-up in order, health waits, restart of one component.
//!
//! Files: `<rig>/pki/kube/` (PKI), `<rig>/kube/{admin,controller-manager,scheduler}.conf`
//! (kubeconfigs, 0600), `<rig>/kube/<host>/` per host (its log, HAProxy's configuration).

pub mod flags;
pub mod haproxy;
pub mod host;
pub mod kubeconfig;
pub mod lifecycle;
pub mod pki;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many of each component kube mode starts.
pub const APISERVERS: usize = 3;
pub const CONTROLLER_MANAGERS: usize = 2;
pub const SCHEDULERS: usize = 2;
/// The apiservers' secure port, and the load balancer's.
pub const APISERVER_PORT: u16 = 6443;
pub const LB_PORT: u16 = 6443;
/// The controller-manager's and the scheduler's secure (health) ports, their defaults.
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
/// The Service network, as kubeadm's default; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The cluster's DNS domain (the serving certificate names `kubernetes.default.svc.<domain>`).
pub const DNS_DOMAIN: &str = "cluster.local";

/// The binaries kube mode needs: the three from the Kubernetes server release (or
/// kube-apiserver from envtest's assets) and HAProxy.
pub const KUBE_BINARIES: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];

/// What a host of the kube mode runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    LoadBalancer,
    Apiserver,
    ControllerManager,
    Scheduler,
}

impl Role {
    /// The control-plane component it is (the load balancer is none).
    pub fn component(self) -> Option<crate::suite::Component> {
        use crate::suite::Component;
        match self {
            Role::LoadBalancer => None,
            Role::Apiserver => Some(Component::Apiserver),
            Role::ControllerManager => Some(Component::ControllerManager),
            Role::Scheduler => Some(Component::Scheduler),
        }
    }
    /// The hostname prefix (`apiserver-1`) and the short name in interface names (`as1`).
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Role::LoadBalancer => ("lb", "lb"),
            Role::Apiserver => ("apiserver", "as"),
            Role::ControllerManager => ("controller-manager", "cm"),
            Role::Scheduler => ("scheduler", "sc"),
        }
    }
    /// The last octet of instance `index` (0-based): .100 for the LB, .101… apiservers,
    /// .111… controller-managers, .121… schedulers (etcd members are .11…).
    fn host_octet(self, index: usize) -> u8 {
        let base = match self {
            Role::LoadBalancer => 100,
            Role::Apiserver => 101,
            Role::ControllerManager => 111,
            Role::Scheduler => 121,
        };
        base + index as u8
    }
    pub fn port(self) -> u16 {
        match self {
            Role::LoadBalancer => LB_PORT,
            Role::Apiserver => APISERVER_PORT,
            Role::ControllerManager => CONTROLLER_MANAGER_PORT,
            Role::Scheduler => SCHEDULER_PORT,
        }
    }
    /// The program's name (what `down` recognises in /proc, and the log file's name).
    pub fn program(self) -> &'static str {
        match self {
            Role::LoadBalancer => "haproxy",
            Role::Apiserver => "kube-apiserver",
            Role::ControllerManager => "kube-controller-manager",
            Role::Scheduler => "kube-scheduler",
        }
    }
}

/// Where one host is: its hostname, interface short name, namespace and address.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub role: Role,
    /// The hostname (`apiserver-1`, `lb`): the apiserver identity lease and the
    /// leader-election holder identities are named from it.
    pub name: String,
    /// At most 5 characters: `as1`.
    pub short: String,
    pub address: Ipv4Addr,
}

/// Every host of kube mode on the rig subnet whose gateway is `gateway`, LB first, then
/// apiservers, controller-managers, schedulers.
pub fn places(gateway: Ipv4Addr) -> Vec<Place> {
    let o = gateway.octets();
    let mut out = Vec::new();
    for (role, count) in [
        (Role::LoadBalancer, 1),
        (Role::Apiserver, APISERVERS),
        (Role::ControllerManager, CONTROLLER_MANAGERS),
        (Role::Scheduler, SCHEDULERS),
    ] {
        for i in 0..count {
            let (long, short) = role.names();
            let (name, short) = if role == Role::LoadBalancer {
                (long.to_string(), short.to_string())
            } else {
                (format!("{long}-{}", i + 1), format!("{short}{}", i + 1))
            };
            out.push(Place { role, name, short, address: Ipv4Addr::new(o[0], o[1], o[2], role.host_octet(i)) });
        }
    }
    out
}

/// One host of kube mode, as recorded in `rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KubeHost {
    /// Its hostname (`apiserver-1`), also the name faults and `restart_process` use.
    pub name: String,
    pub role: Role,
    pub netns: String,
    pub address: String,
    /// The port it serves on (its health endpoint; the LB's frontend).
    pub port: u16,
    /// The full command (`ip netns exec NS unshare --uts -- sh -c 'hostname …; exec …' …`).
    pub argv: Vec<String>,
    /// 0 until started.
    pub pid: i32,
    pub start_time: u64,
    pub log: PathBuf,
    /// `v1.26.3` from the binary's `--version`.
    #[serde(default)]
    pub version: Option<String>,
}

/// Kube mode as recorded in `rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KubeRigState {
    /// Where the Kubernetes binaries were found.
    pub bin_dir: PathBuf,
    /// `<rig>/pki/kube` (kubeadm's layout).
    pub pki_dir: PathBuf,
    /// `https://<LB address>:6443`: every kubeconfig points here.
    pub server: String,
    pub admin_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
    pub haproxy_config: PathBuf,
    /// HAProxy's admin socket (`show stat` lists the backends' states).
    pub haproxy_socket: PathBuf,
    pub service_cidr: String,
    /// LB first, then apiservers, controller-managers, schedulers.
    pub hosts: Vec<KubeHost>,
}

impl KubeRigState {
    pub fn host(&self, name: &str) -> Option<&KubeHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
    pub fn of(&self, role: Role) -> impl Iterator<Item = &KubeHost> {
        self.hosts.iter().filter(move |h| h.role == role)
    }
    pub fn lb(&self) -> Option<&KubeHost> {
        self.of(Role::LoadBalancer).next()
    }
}

/// Paths of kube mode's files in a rig directory.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeDirs {
    /// `<rig>/kube`: kubeconfigs and one directory per host.
    pub dir: PathBuf,
    pub pki: PathBuf,
}

impl KubeDirs {
    pub fn new(rig_dir: &Path) -> Self {
        Self { dir: rig_dir.join("kube"), pki: crate::controlplane::rig_kube_pki_dir(rig_dir) }
    }
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn kubeconfig(&self, which: &str) -> PathBuf {
        self.dir.join(format!("{which}.conf"))
    }
}

/// The programs kube mode runs, found.
#[derive(Debug, Clone, PartialEq)]
pub struct Binaries {
    pub dir: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
    pub haproxy: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FindError {
    #[error(
        "kube mode: {binary} not found in {dir} (give the directory of the Kubernetes server binaries with --kube-bin)"
    )]
    NotInDir { binary: String, dir: String },
    #[error("kube mode: {binary} not found on PATH")]
    NotOnPath { binary: String },
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

impl Binaries {
    /// The Kubernetes binaries in `dir` (all three must be there), else on PATH; HAProxy on
    /// PATH (or in `dir`). The error names the first one missing and where it was looked for.
    pub fn find(dir: Option<&Path>) -> Result<Self, FindError> {
        let mut found = Vec::new();
        for b in KUBE_BINARIES {
            let p = match dir {
                Some(d) => {
                    let p = d.join(b);
                    if !executable(&p) {
                        return Err(FindError::NotInDir { binary: b.into(), dir: d.display().to_string() });
                    }
                    p
                }
                None => super::net::which(b).ok_or_else(|| FindError::NotOnPath { binary: b.into() })?,
            };
            found.push(std::path::absolute(&p).unwrap_or(p));
        }
        let haproxy = dir
            .map(|d| d.join("haproxy"))
            .filter(|p| executable(p))
            .or_else(|| super::net::which("haproxy"))
            .ok_or_else(|| FindError::NotOnPath { binary: "haproxy".into() })?;
        let bin_dir = found[0].parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            dir: bin_dir,
            apiserver: found[0].clone(),
            controller_manager: found[1].clone(),
            scheduler: found[2].clone(),
            haproxy,
        })
    }

    /// Whether all three Kubernetes binaries are on PATH (kube mode without `--kube-bin`).
    pub fn on_path() -> Option<Self> {
        Self::find(None).ok()
    }

    pub fn of(&self, role: Role) -> &Path {
        match role {
            Role::LoadBalancer => &self.haproxy,
            Role::Apiserver => &self.apiserver,
            Role::ControllerManager => &self.controller_manager,
            Role::Scheduler => &self.scheduler,
        }
    }
}

/// `Kubernetes v1.26.3` (what `kube-apiserver --version` prints) → `v1.26.3`.
pub fn parse_version(out: &str) -> Option<String> {
    out.split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_have_distinct_addresses_and_short_names_that_fit() {
        let p = places(Ipv4Addr::new(10, 213, 7, 1));
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lb",
                "apiserver-1",
                "apiserver-2",
                "apiserver-3",
                "controller-manager-1",
                "controller-manager-2",
                "scheduler-1",
                "scheduler-2"
            ]
        );
        let mut addrs: Vec<String> = p.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addrs[0], "10.213.7.100");
        assert_eq!(addrs[1], "10.213.7.101");
        assert_eq!(addrs[4], "10.213.7.111");
        assert_eq!(addrs[6], "10.213.7.121");
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), p.len(), "addresses collide");
        for x in &p {
            // hdXXXXXX- (9) + short + "c" within 15
            assert!(x.short.len() <= 5, "{}", x.short);
        }
    }

    #[test]
    fn version_is_read_from_the_binary_banner() {
        assert_eq!(parse_version("Kubernetes v1.26.3\n").as_deref(), Some("v1.26.3"));
        assert_eq!(parse_version("Kubernetes v1.30.0-alpha.1"), Some("v1.30.0-alpha.1".into()));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("version"), None);
    }

    #[test]
    fn missing_binary_is_named_with_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let e = Binaries::find(Some(d.path())).unwrap_err();
        assert_eq!(e, FindError::NotInDir { binary: "kube-apiserver".into(), dir: d.path().display().to_string() });
        // the first two present and executable: the third is named
        use std::os::unix::fs::PermissionsExt;
        for b in ["kube-apiserver", "kube-controller-manager"] {
            let p = d.path().join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let e = Binaries::find(Some(d.path())).unwrap_err();
        assert!(e.to_string().contains("kube-scheduler not found in"), "{e}");
        // present but not executable is missing
        let p = d.path().join("kube-scheduler");
        std::fs::write(&p, "x").unwrap();
        assert!(matches!(Binaries::find(Some(d.path())), Err(FindError::NotInDir { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = Binaries::find(Some(d.path())).unwrap();
        assert_eq!(b.scheduler, d.path().join("kube-scheduler"));
        assert_eq!(b.dir, d.path());
    }
}
