//! The rig's kube mode: a whole HA control plane on this machine from the Kubernetes server
//! binaries — 3 kube-apiservers behind HAProxy, 2 kube-controller-managers and 2
//! kube-schedulers with leader election — each a host of its own (network namespace with its
//! own address on the rig's bridge, UTS namespace with its own hostname). With kube-apiserver
//! alone (envtest's assets), the apiservers and HAProxy only: what is absent is recorded, and
//! the cases that need it are skipped with that reason.
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
    /// What its hosts are called together (`controller-managers`).
    pub fn plural(self) -> &'static str {
        match self {
            Role::LoadBalancer => "load balancers",
            Role::Apiserver => "apiservers",
            Role::ControllerManager => "controller-managers",
            Role::Scheduler => "schedulers",
        }
    }
    /// The role that runs `c`, if kube mode runs it at all.
    pub fn of_component(c: crate::suite::Component) -> Option<Role> {
        [Role::Apiserver, Role::ControllerManager, Role::Scheduler].into_iter().find(|r| r.component() == Some(c))
    }
}

/// A component kube mode does not run because its binary was not found (kube-apiserver
/// alone, as envtest's assets ship it), as recorded in `rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Absent {
    pub role: Role,
    /// Where it was looked for: `in /path/to/bin` or `on PATH`.
    pub searched: String,
}

impl Absent {
    /// The one line `rig up` and `rig status` print: `kube-controller-manager not found in
    /// DIR: no controller-managers; cases that need them are skipped`.
    pub fn note(&self) -> String {
        format!(
            "{} not found {}: no {}; cases that need them are skipped",
            self.role.program(),
            self.searched,
            self.role.plural()
        )
    }
    /// The reason a case that needs it is skipped with: `needs kube-controller-manager: the
    /// rig runs none (its binary was not found in DIR)`.
    pub fn skip_reason(&self) -> String {
        format!("needs {}: the rig runs none (its binary was not found {})", self.role.program(), self.searched)
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
/// apiservers, controller-managers, schedulers; none of the roles in `absent` (their
/// binaries were not found). A role's addresses do not depend on which others run.
pub fn places(gateway: Ipv4Addr, absent: &[Role]) -> Vec<Place> {
    let o = gateway.octets();
    let mut out = Vec::new();
    for (role, count) in [
        (Role::LoadBalancer, 1),
        (Role::Apiserver, APISERVERS),
        (Role::ControllerManager, CONTROLLER_MANAGERS),
        (Role::Scheduler, SCHEDULERS),
    ] {
        if absent.contains(&role) {
            continue;
        }
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
    /// The components not run because their binaries were not found (none in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Absent>,
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
    /// Why the rig runs no instance of `c`, when that is because its binary was not found.
    pub fn absent_component(&self, c: crate::suite::Component) -> Option<&Absent> {
        let role = Role::of_component(c)?;
        self.absent.iter().find(|a| a.role == role)
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

/// The programs kube mode runs, found: kube-apiserver and HAProxy always; the
/// controller-manager and the scheduler when they are where kube-apiserver was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Binaries {
    pub dir: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: Option<PathBuf>,
    pub scheduler: Option<PathBuf>,
    pub haproxy: PathBuf,
    /// Where the Kubernetes binaries were looked for: `in DIR` or `on PATH`.
    pub searched: String,
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
    /// The Kubernetes binaries in `dir`, else on PATH: kube-apiserver must be there (the
    /// error names where it was looked for); kube-controller-manager and kube-scheduler are
    /// taken from the same place when there, else not run (envtest's assets hold
    /// kube-apiserver alone). HAProxy on PATH (or in `dir`).
    pub fn find(dir: Option<&Path>) -> Result<Self, FindError> {
        Self::find_with(dir, &|b: &str| super::net::which(b))
    }

    /// [`Binaries::find`] with `which` standing for the PATH lookup.
    fn find_with(dir: Option<&Path>, which: &dyn Fn(&str) -> Option<PathBuf>) -> Result<Self, FindError> {
        let look = |b: &str| -> Option<PathBuf> {
            let p = match dir {
                Some(d) => Some(d.join(b)).filter(|p| executable(p))?,
                None => which(b)?,
            };
            Some(std::path::absolute(&p).unwrap_or(p))
        };
        let [a, cm, sc] = KUBE_BINARIES;
        let apiserver = look(a).ok_or_else(|| match dir {
            Some(d) => FindError::NotInDir { binary: a.into(), dir: d.display().to_string() },
            None => FindError::NotOnPath { binary: a.into() },
        })?;
        let haproxy = dir
            .map(|d| d.join("haproxy"))
            .filter(|p| executable(p))
            .or_else(|| which("haproxy"))
            .ok_or_else(|| FindError::NotOnPath { binary: "haproxy".into() })?;
        let bin_dir = apiserver.parent().map(Path::to_path_buf).unwrap_or_default();
        let searched = match dir {
            Some(_) => format!("in {}", bin_dir.display()),
            None => "on PATH".to_string(),
        };
        Ok(Self { dir: bin_dir, controller_manager: look(cm), scheduler: look(sc), apiserver, haproxy, searched })
    }

    /// kube-apiserver (and HAProxy) on PATH: kube mode without `--kube-bin`. No
    /// kube-apiserver: `Ok(None)` (etcd only); kube-apiserver without what it needs (HAProxy):
    /// the error naming it, rather than a silent etcd-only rig.
    pub fn on_path() -> Result<Option<Self>, FindError> {
        match Self::find(None) {
            Ok(b) => Ok(Some(b)),
            Err(FindError::NotOnPath { binary }) if binary == "kube-apiserver" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The program of `role`; None when it was not found.
    pub fn of(&self, role: Role) -> Option<&Path> {
        match role {
            Role::LoadBalancer => Some(&self.haproxy),
            Role::Apiserver => Some(&self.apiserver),
            Role::ControllerManager => self.controller_manager.as_deref(),
            Role::Scheduler => self.scheduler.as_deref(),
        }
    }

    /// The components not found, and where they were looked for.
    pub fn absent(&self) -> Vec<Absent> {
        [Role::ControllerManager, Role::Scheduler]
            .into_iter()
            .filter(|r| self.of(*r).is_none())
            .map(|role| Absent { role, searched: self.searched.clone() })
            .collect()
    }

    /// What runs, for `rig up`'s first line: `apiservers, HAProxy, controller-managers, schedulers`.
    pub fn runs(&self) -> String {
        let mut out = vec!["apiservers", "HAProxy"];
        for r in [Role::ControllerManager, Role::Scheduler] {
            if self.of(r).is_some() {
                out.push(r.plural());
            }
        }
        out.join(", ")
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
        let p = places(Ipv4Addr::new(10, 213, 7, 1), &[]);
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
    fn places_leave_out_the_absent_roles_and_keep_the_others_addresses() {
        let gw = Ipv4Addr::new(10, 213, 7, 1);
        let p = places(gw, &[Role::ControllerManager, Role::Scheduler]);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["lb", "apiserver-1", "apiserver-2", "apiserver-3"]);
        assert_eq!(p[3].address, Ipv4Addr::new(10, 213, 7, 103));
        // the scheduler alone absent: the controller-managers keep .111 and .112
        let p = places(gw, &[Role::Scheduler]);
        let cms: Vec<String> =
            p.iter().filter(|p| p.role == Role::ControllerManager).map(|p| p.address.to_string()).collect();
        assert_eq!(cms, ["10.213.7.111", "10.213.7.112"]);
        assert!(p.iter().all(|p| p.role != Role::Scheduler));
    }

    fn put(dir: &Path, names: &[&str]) {
        use std::os::unix::fs::PermissionsExt;
        for b in names {
            let p = dir.join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn kube_apiserver_alone_in_the_dir_is_kube_mode_without_controller_managers_and_schedulers() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), &["kube-apiserver", "haproxy"]);
        let b = Binaries::find(Some(d.path())).unwrap();
        assert_eq!(b.apiserver, d.path().join("kube-apiserver"));
        assert_eq!((b.controller_manager.as_deref(), b.scheduler.as_deref()), (None, None));
        assert_eq!(b.of(Role::ControllerManager), None);
        let dir = d.path().display().to_string();
        let absent = b.absent();
        assert_eq!(
            absent,
            [
                Absent { role: Role::ControllerManager, searched: format!("in {dir}") },
                Absent { role: Role::Scheduler, searched: format!("in {dir}") }
            ]
        );
        assert_eq!(
            absent[0].note(),
            format!(
                "kube-controller-manager not found in {dir}: no controller-managers; cases that need them are skipped"
            )
        );
        assert_eq!(
            absent[1].skip_reason(),
            format!("needs kube-scheduler: the rig runs none (its binary was not found in {dir})")
        );
        assert_eq!(b.runs(), "apiservers, HAProxy");
        // one of the two there: taken, the other absent
        put(d.path(), &["kube-scheduler"]);
        let b = Binaries::find(Some(d.path())).unwrap();
        assert_eq!(b.scheduler, Some(d.path().join("kube-scheduler")));
        assert_eq!(b.absent().iter().map(|a| a.role).collect::<Vec<_>>(), [Role::ControllerManager]);
        assert_eq!(b.runs(), "apiservers, HAProxy, schedulers");
    }

    #[test]
    fn all_three_in_the_dir_leave_nothing_absent() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "haproxy"]);
        let b = Binaries::find(Some(d.path())).unwrap();
        assert_eq!(b.controller_manager, Some(d.path().join("kube-controller-manager")));
        assert_eq!(b.scheduler, Some(d.path().join("kube-scheduler")));
        assert_eq!(b.haproxy, d.path().join("haproxy"));
        assert!(b.absent().is_empty());
        assert_eq!(b.dir, d.path());
        assert_eq!(b.runs(), "apiservers, HAProxy, controller-managers, schedulers");
    }

    #[test]
    fn on_path_kube_apiserver_turns_kube_mode_on_and_the_others_are_optional() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), &["kube-apiserver", "haproxy"]);
        let dir = d.path().to_path_buf();
        let path = move |b: &str| Some(dir.join(b)).filter(|p| p.exists());
        let b = Binaries::find_with(None, &path).unwrap();
        assert_eq!(b.apiserver, d.path().join("kube-apiserver"));
        assert_eq!(b.scheduler, None);
        assert_eq!(
            b.absent()[0].note(),
            "kube-controller-manager not found on PATH: no controller-managers; cases that need them are skipped"
        );
        // no kube-apiserver on PATH: no kube mode, whatever else is there
        let e = Binaries::find_with(None, &|b: &str| (b != "kube-apiserver").then(|| PathBuf::from("/x").join(b)))
            .unwrap_err();
        assert_eq!(e, FindError::NotOnPath { binary: "kube-apiserver".into() });
    }

    #[test]
    fn version_is_read_from_the_binary_banner() {
        assert_eq!(parse_version("Kubernetes v1.26.3\n").as_deref(), Some("v1.26.3"));
        assert_eq!(parse_version("Kubernetes v1.30.0-alpha.1"), Some("v1.30.0-alpha.1".into()));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("version"), None);
    }

    #[test]
    fn missing_kube_apiserver_is_named_with_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let e = Binaries::find(Some(d.path())).unwrap_err();
        assert_eq!(e, FindError::NotInDir { binary: "kube-apiserver".into(), dir: d.path().display().to_string() });
        // the other two (and HAProxy) without kube-apiserver: still refused
        put(d.path(), &["kube-controller-manager", "kube-scheduler", "haproxy"]);
        let e = Binaries::find(Some(d.path())).unwrap_err();
        assert!(e.to_string().contains("kube-apiserver not found in"), "{e}");
        // present but not executable is missing
        let p = d.path().join("kube-apiserver");
        std::fs::write(&p, "x").unwrap();
        assert!(matches!(Binaries::find(Some(d.path())), Err(FindError::NotInDir { .. })));
        put(d.path(), &["kube-apiserver"]);
        let b = Binaries::find(Some(d.path())).unwrap();
        assert_eq!(b.apiserver, d.path().join("kube-apiserver"));
        assert_eq!(b.dir, d.path());
    }
}
