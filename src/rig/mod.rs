//! The local rig: real etcd members on this machine with mutual TLS, their state file and
//! the target file `hadrill run` reads. (Interface first; lifecycle lands with the rig work.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("rig {dir}: {message}")]
    Other { dir: String, message: String },
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
    pub ip: String,
    pub client_url: String,
    pub peer_url: String,
    pub pid: i32,
    pub start_time: u64,
    pub netns: Option<String>,
    pub argv: Vec<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// The rig as recorded in `<dir>/rig.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RigState {
    pub dir: PathBuf,
    pub isolation: Isolation,
    pub members: Vec<MemberState>,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Election timeout given to every member, in milliseconds.
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
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

pub async fn up(spec: &RigSpec) -> Result<RigState, RigError> {
    Err(RigError::Other { dir: spec.dir.display().to_string(), message: "not built yet".into() })
}

pub async fn down(dir: &Path) -> Result<DownReport, RigError> {
    Err(RigError::Other { dir: dir.display().to_string(), message: "not built yet".into() })
}

pub fn status(dir: &Path) -> Result<RigState, RigError> {
    Err(RigError::Other { dir: dir.display().to_string(), message: "not built yet".into() })
}

pub async fn restart_member(dir: &Path, member: &str) -> Result<(), RigError> {
    Err(RigError::Other { dir: dir.display().to_string(), message: format!("cannot restart {member}: not built yet") })
}

/// Human-readable state: members, addresses, pids, logs.
pub fn describe(st: &RigState) -> String {
    let mut out = format!("rig {} ({:?} isolation)\n", st.dir.display(), st.isolation);
    for m in &st.members {
        let alive = crate::fault::process::alive(m.pid, m.start_time);
        out.push_str(&format!(
            "  {:<4} {:<28} pid {:<7} {}  log {}\n",
            m.name,
            m.client_url,
            m.pid,
            if alive { "running" } else { "NOT RUNNING" },
            m.log.display()
        ));
    }
    out
}
