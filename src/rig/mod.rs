//! The local rig: real etcd members on this machine with mutual TLS, their state file and
//! the target file `hadrill run` reads.
//!
//! - [`pki`]: the CA, member and client certificates.
//! - [`net`]: network namespaces, veths and the bridge (and their removal by prefix).
//! - [`process`]: detached member processes, found again by command line, stopped safely.
//! - [`lifecycle`]: `up`, `down`, `restart_member`, `restart_process`.
//! - [`kube`]: kube mode: apiservers behind HAProxy, controller-managers and schedulers,
//!   each a host of its own, when the Kubernetes server binaries are found.
//!
//! A rig directory holds `.hadrill-rig` (the marker that lets `down` remove it), `rig.json`
//! (this module's [`RigState`]), `target.yaml` (a [`crate::config::Config`]), `pki/`, and
//! per member `<name>/data` and `<name>/etcd.log`; in kube mode also `pki/kube/` and `kube/`
//! (kubeconfigs, one directory per host with its log).

pub mod kube;
pub mod lifecycle;
pub mod net;
pub mod pki;
pub mod process;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use lifecycle::{down, restart_member, restart_process, up, up_with_kube};

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("rig {dir}: {message}")]
    Other { dir: String, message: String },
    #[error("etcd not found on PATH: install Debian's etcd-server (bash ci/install-deps.sh)")]
    EtcdMissing,
    #[error("rig {dir}: network namespaces need root and iproute2's `ip` (use --isolation loopback)")]
    NetnsUnavailable { dir: String },
    #[error("rig {dir} is already running ({running}): rig down first (hadrill rig down --dir {dir})")]
    Running { dir: String, running: String },
    #[error("rig {dir}: holds a rig that is not running: rig down first (hadrill rig down --dir {dir})")]
    Stale { dir: String },
    #[error("rig {dir}: the directory is not empty and holds no rig: give a new or empty directory")]
    NotEmpty { dir: String },
    #[error("no rig in {dir} (hadrill rig up --dir {dir})")]
    NoRig { dir: String },
    #[error("rig {dir}: rig.json cannot be read: {message}")]
    Corrupt { dir: String, message: String },
    #[error("rig {dir}: {what} {path}: {source}")]
    Io {
        dir: String,
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rig {dir}: {source}")]
    Pki {
        dir: String,
        #[source]
        source: pki::PkiError,
    },
    #[error("rig {dir}: {source}")]
    Net {
        dir: String,
        #[source]
        source: net::NetError,
    },
    #[error("rig {dir}: start member {member}: {source}")]
    Spawn {
        dir: String,
        member: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rig {dir}: {message}; last lines of {log}:\n{tail}")]
    NotReady { dir: String, message: String, log: String, tail: String },
    #[error("rig {dir} has no member {member} (members: {members})")]
    NoMember { dir: String, member: String, members: String },
    #[error("rig {dir}: could not remove everything: {problems}")]
    Down { dir: String, problems: String },
    #[error("{source}")]
    KubeBinaries {
        #[source]
        source: kube::FindError,
    },
    #[error("rig {dir}: kube mode needs network namespaces (root, iproute2): every component is a host with its own address and hostname")]
    KubeNeedsNetns { dir: String },
    #[error("rig {dir} has no process {name} (processes: {names})")]
    NoProcess { dir: String, name: String, names: String },
}

impl RigError {
    /// Whether the user can fix it by changing the command or the machine (exit 2), as
    /// opposed to a rig that could not be brought up (exit 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RigError::EtcdMissing
                | RigError::NetnsUnavailable { .. }
                | RigError::Running { .. }
                | RigError::Stale { .. }
                | RigError::NotEmpty { .. }
                | RigError::NoRig { .. }
                | RigError::KubeBinaries { .. }
                | RigError::KubeNeedsNetns { .. }
        )
    }
}

/// How members are separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Network namespaces when root, loopback ports otherwise.
    #[default]
    Auto,
    /// Every member on 127.0.0.1 with its own ports (no partitions possible).
    Loopback,
    /// Every member in its own network namespace with its own address on a bridge.
    Netns,
}

/// What `rig up` is asked for.
#[derive(Debug, Clone)]
pub struct RigSpec {
    pub dir: PathBuf,
    pub members: usize,
    pub isolation: Isolation,
}

/// One running member, as recorded in `rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberState {
    pub name: String,
    /// The member's address: its own in a namespace, 127.0.0.1 on loopback.
    pub ip: String,
    pub client_url: String,
    pub peer_url: String,
    pub pid: i32,
    /// Clock ticks since boot (`/proc/PID/stat` field 22): a signal goes to `pid` only if it
    /// still started at this time.
    pub start_time: u64,
    /// The member's network namespace (`ip netns exec NAME …` reaches it).
    pub netns: Option<String>,
    /// The full command that starts it (with `ip netns exec` when in a namespace).
    pub argv: Vec<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// The rig as recorded in `<dir>/rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RigState {
    pub dir: PathBuf,
    /// Loopback or Netns (never Auto: `up` decides).
    pub isolation: Isolation,
    pub members: Vec<MemberState>,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Election timeout given to every member, in milliseconds.
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Kube mode's hosts and files, when it runs (absent in etcd-only rigs and older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<kube::KubeRigState>,
}

impl RigState {
    /// The rig id (`hdXXXXXX`): the prefix of its namespaces and interfaces.
    pub fn id(&self) -> String {
        net::rig_id(&self.dir)
    }
    pub fn pki(&self) -> pki::PkiPaths {
        pki::PkiPaths::new(self.dir.join("pki"))
    }
    pub fn member(&self, name: &str) -> Option<&MemberState> {
        self.members.iter().find(|m| m.name == name)
    }
    /// The running process named `name` (an etcd member, or a kube-mode host such as
    /// `apiserver-2`): (pid, start time), what a `Fault::RigProcessStop` signals. None when
    /// there is no such process or it was never started.
    pub fn process(&self, name: &str) -> Option<(i32, u64)> {
        if let Some(m) = self.member(name) {
            return Some((m.pid, m.start_time));
        }
        let h = self.kube.as_ref()?.host(name)?;
        (h.pid > 0).then_some((h.pid, h.start_time))
    }
}

/// What `rig down` removed.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    pub stopped: Vec<String>,
    pub removed: Vec<String>,
}

pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join(format!("hadrill-rig-{}", nix::unistd::geteuid()))
}

pub const STATE_FILE: &str = "rig.json";
pub const TARGET_FILE: &str = "target.yaml";
/// Written first by `up`: `down` removes only directories that carry it.
pub const MARKER_FILE: &str = ".hadrill-rig";

/// The rig recorded in `dir`.
pub fn status(dir: &Path) -> Result<RigState, RigError> {
    let p = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RigError::NoRig { dir: dir.display().to_string() })
        }
        Err(source) => {
            return Err(RigError::Io {
                dir: dir.display().to_string(),
                what: "read",
                path: p.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| RigError::Corrupt { dir: dir.display().to_string(), message: e.to_string() })
}

/// Human-readable state: members, addresses, pids, logs.
pub fn describe(st: &RigState) -> String {
    let mut out = format!("rig {} ({:?} isolation, id {})\n", st.dir.display(), st.isolation, st.id());
    for m in &st.members {
        let alive = crate::fault::process::alive(m.pid, m.start_time);
        let state = if !alive {
            "NOT RUNNING"
        } else if crate::fault::process::stopped(m.pid, m.start_time) {
            "PAUSED"
        } else {
            "running"
        };
        out.push_str(&format!("  {:<4} {:<28} pid {:<7} {:<11}", m.name, m.client_url, m.pid, state));
        if let Some(ns) = &m.netns {
            out.push_str(&format!(" netns {ns}"));
        }
        out.push('\n');
    }
    out.push_str("logs:\n");
    for m in &st.members {
        out.push_str(&format!("  {:<4} {}\n", m.name, m.log.display()));
    }
    out.push_str(&format!(
        "certificates: {} (client {}, CA key kept for minting test certificates)\n",
        st.pki().dir.display(),
        st.client_cert.display()
    ));
    if let Some(k) = &st.kube {
        out.push_str(&describe_kube(k));
    }
    out
}

/// The kube-mode part of [`describe`]: every host, its address, pid, state, log.
fn describe_kube(k: &kube::KubeRigState) -> String {
    let mut out = format!("kube mode (binaries {}):\n", k.bin_dir.display());
    for h in &k.hosts {
        let state = if h.pid == 0 {
            "not started"
        } else if !crate::fault::process::alive(h.pid, h.start_time) {
            "NOT RUNNING"
        } else {
            "running"
        };
        out.push_str(&format!(
            "  {:<21} {:<21} pid {:<7} {:<11} netns {} {}\n",
            h.name,
            format!("{}:{}", h.address, h.port),
            h.pid,
            state,
            h.netns,
            h.version.as_deref().unwrap_or("")
        ));
    }
    for a in &k.absent {
        out.push_str(&format!("  {}\n", a.note()));
    }
    out.push_str("kube logs:\n");
    for h in &k.hosts {
        out.push_str(&format!("  {:<21} {}\n", h.name, h.log.display()));
    }
    out.push_str(&format!("API server (load balancer): {}\n", k.server));
    out.push_str(&format!(
        "admin kubeconfig: {} (kubectl --kubeconfig {} get --raw /readyz)\n",
        k.admin_kubeconfig.display(),
        k.admin_kubeconfig.display()
    ));
    out.push_str(&format!("Kubernetes PKI: {} (kubeadm layout)\n", k.pki_dir.display()));
    out
}
