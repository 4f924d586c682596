//! The kinds of fault: each knows how to apply itself, how to revert itself from its stored
//! form alone, and how to describe both in one line for `plan`.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::net::{self, NetMember};
use super::node::{self as node_fault, NodeRef};
use super::{process, FaultError};
use crate::suite::StopSignal;

/// A fault, as injected and as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// SIGSTOP a process of this machine; revert sends SIGCONT.
    Pause { what: String, pid: i32, start_time: u64 },
    /// Stop a rig member's etcd; revert starts it again with the same flags and data.
    StopMember { rig_dir: PathBuf, member: String, pid: i32, start_time: u64, signal: StopSignal },
    /// The rig that `hadrill run --rig` started for itself; revert removes it.
    EphemeralRig { rig_dir: PathBuf },
    /// Drop the peer traffic between the `isolated` members and the members at `others`
    /// (their addresses), both ways, with iptables rules tagged `hadrill:<token>` inside the
    /// isolated members' namespaces; a dead-man timer removes them after `dead_man_secs`.
    Partition {
        token: String,
        isolated: Vec<NetMember>,
        others: Vec<String>,
        other_names: Vec<String>,
        peer_ports: Vec<u16>,
        dead_man_secs: u64,
    },
    /// Delay a member's peer traffic by `delay_ms` with tc netem on `dev` in its namespace;
    /// a dead-man timer removes the qdisc after `dead_man_secs`.
    PeerLatency {
        token: String,
        member: NetMember,
        dev: String,
        peer_ports: Vec<u16>,
        delay_ms: u64,
        dead_man_secs: u64,
    },
    /// Stop a process of the local rig (an etcd member or a Kubernetes component) by pid,
    /// checked against its start time; revert restarts it with its stored command line.
    RigProcessStop { rig_dir: PathBuf, name: String, pid: i32, start_time: u64, signal: StopSignal },
    /// The disaster-recovery drill's scratch directory on this machine (a snapshot of the
    /// cluster's etcd, and the scratch member restored from it); revert stops that member and
    /// removes the directory.
    DrScratch { dir: PathBuf },
    /// Lab: `pki_dir/apiserver.crt` on `node` backed up into `backup_dir` (on the node) and
    /// replaced by `expired_cert_pem` (same names and key, expired); revert restores the
    /// backup byte for byte. Logic in [`super::cert`].
    ApiserverCertSwap {
        node: String,
        access: crate::node::NodeAccess,
        pki_dir: PathBuf,
        backup_dir: PathBuf,
        expired_cert_pem: String,
        /// notAfter of the expired copy (unix seconds).
        not_after: i64,
    },
    /// Stop a static pod on a node by moving its manifest into `parking_dir` (the kubelet
    /// stops the pod) and waiting until `container` is gone; revert moves it back and waits
    /// until it runs again. A dead-man on the node moves it back after `dead_man_secs` (0: none).
    StaticPodStop {
        at: NodeRef,
        container: String,
        manifest: PathBuf,
        parking_dir: PathBuf,
        token: String,
        wait_secs: u64,
        #[serde(default)]
        dead_man_secs: u64,
    },
    /// `systemctl stop` a unit on a node (the kubelet), with a dead-man on the node that
    /// starts it again; revert starts it and waits until it is active.
    NodeUnitStop { at: NodeRef, unit: String, token: String, dead_man_secs: u64, wait_secs: u64 },
    /// Drop the etcd peer traffic between a node and the other members' addresses with
    /// iptables rules tagged `hadrill:<token>` in the node's root namespace; a dead-man on the
    /// node removes them after `dead_man_secs`.
    NodeEtcdPartition {
        at: NodeRef,
        token: String,
        others: Vec<String>,
        other_names: Vec<String>,
        peer_ports: Vec<u16>,
        dead_man_secs: u64,
    },
    /// Delay a node's etcd peer traffic with tc netem on `dev`; a dead-man on the node removes
    /// the qdisc after `dead_man_secs`.
    NodePeerLatency { at: NodeRef, token: String, dev: String, peer_ports: Vec<u16>, delay_ms: u64, dead_man_secs: u64 },
}

fn signal_name(s: StopSignal) -> &'static str {
    match s {
        StopSignal::Kill => "SIGKILL",
        StopSignal::Term => "SIGTERM",
    }
}

const STOP_DEADLINE: Duration = Duration::from_secs(10);

impl Fault {
    /// What the fault does and where, one line.
    pub fn describe(&self) -> String {
        match self {
            Fault::Pause { what, pid, .. } => format!("pause {what} (SIGSTOP pid {pid})"),
            Fault::StopMember { member, pid, signal, rig_dir, .. } => format!(
                "stop etcd member {member} of rig {} ({} pid {pid})",
                rig_dir.display(),
                signal_name(*signal)
            ),
            Fault::EphemeralRig { rig_dir } => format!("local rig {} started for this run", rig_dir.display()),
            Fault::Partition { isolated, other_names, peer_ports, token, dead_man_secs, .. } => format!(
                "partition {} from {} (drop peer ports {:?} both ways, iptables rules hadrill:{token}, dead-man {dead_man_secs}s)",
                isolated.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join("+"),
                other_names.join("+"),
                peer_ports
            ),
            Fault::PeerLatency { member, dev, delay_ms, dead_man_secs, .. } => format!(
                "delay the peer traffic of {} by {delay_ms}ms (tc netem on {dev} in {}, dead-man {dead_man_secs}s)",
                member.name, member.netns
            ),
            Fault::DrScratch { dir } => {
                format!("scratch directory {} for the etcd snapshot and the member restored from it", dir.display())
            }
            Fault::RigProcessStop { rig_dir, name, pid, signal, .. } => format!(
                "stop {name} of rig {} ({} pid {pid})",
                rig_dir.display(),
                signal_name(*signal)
            ),
            Fault::ApiserverCertSwap { node, access, pki_dir, not_after, .. } => format!(
                "replace {}/apiserver.crt on {node} ({}) by an expired copy (notAfter {})",
                pki_dir.display(),
                access.describe(),
                chrono::DateTime::from_timestamp(*not_after, 0).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
            ),
            f @ (Fault::StaticPodStop { .. } | Fault::NodeUnitStop { .. } | Fault::NodeEtcdPartition { .. } | Fault::NodePeerLatency { .. }) => node_fault::describe(f),
        }
    }

    /// How it will be reverted, one line.
    pub fn revert_plan(&self) -> String {
        match self {
            Fault::Pause { pid, .. } => format!("SIGCONT pid {pid}"),
            Fault::StopMember { member, .. } => format!("restart {member} with its flags and data directory"),
            Fault::EphemeralRig { rig_dir } => format!("rig down {}", rig_dir.display()),
            Fault::Partition { token, .. } => {
                format!("kill the dead-man timer hadrill-deadman-{token}, delete every rule tagged hadrill:{token}")
            }
            Fault::PeerLatency { token, dev, .. } => {
                format!("kill the dead-man timer hadrill-deadman-{token}, delete the root qdisc of {dev}")
            }
            Fault::RigProcessStop { name, .. } => format!("restart {name} with its command line, namespace and data"),
            Fault::DrScratch { dir } => format!("stop the scratch etcd in {}, remove the directory", dir.display()),
            Fault::ApiserverCertSwap { backup_dir, .. } => {
                format!(
                    "copy {}/apiserver.crt back over it (byte for byte), remove that directory",
                    backup_dir.display()
                )
            }
            f @ (Fault::StaticPodStop { .. }
            | Fault::NodeUnitStop { .. }
            | Fault::NodeEtcdPartition { .. }
            | Fault::NodePeerLatency { .. }) => node_fault::revert_plan(f),
        }
    }

    pub(super) async fn apply(&self) -> Result<(), FaultError> {
        let fail = |m: String| FaultError::Apply { what: self.describe(), message: m };
        match self {
            Fault::Pause { pid, start_time, .. } => {
                if !process::signal(*pid, *start_time, Signal::SIGSTOP).map_err(fail)? {
                    return Err(fail(format!("process {pid} is not running")));
                }
                if !process::wait_stopped(*pid, *start_time, STOP_DEADLINE).await {
                    return Err(fail(format!("process {pid} did not stop within {STOP_DEADLINE:?}")));
                }
                Ok(())
            }
            Fault::StopMember { pid, start_time, signal, .. }
            | Fault::RigProcessStop { pid, start_time, signal, .. } => {
                let sig = match signal {
                    StopSignal::Kill => Signal::SIGKILL,
                    StopSignal::Term => Signal::SIGTERM,
                };
                if !process::signal(*pid, *start_time, sig).map_err(fail)? {
                    return Err(fail(format!("process {pid} is not running")));
                }
                if !process::wait_gone(*pid, *start_time, STOP_DEADLINE).await {
                    // do not leave it dying on its own: a revert that finds it still alive
                    // would do nothing, and it would then stay down unrecorded
                    let _ = process::signal(*pid, *start_time, Signal::SIGKILL);
                    let gone = process::wait_gone(*pid, *start_time, STOP_DEADLINE).await;
                    return Err(fail(format!(
                        "process {pid} still ran {STOP_DEADLINE:?} after {sig:?}; {}",
                        if gone { "SIGKILLed it, the revert restarts it" } else { "it survives SIGKILL too" }
                    )));
                }
                Ok(())
            }
            // The rig is started by the caller; the entry only records that it must go.
            Fault::EphemeralRig { .. } => Ok(()),
            Fault::DrScratch { dir } => crate::engine::dr::create_scratch(dir).map_err(fail),
            Fault::Partition { token, isolated, others, peer_ports, dead_man_secs, .. } => {
                net::apply_partition(isolated, others, peer_ports, token, *dead_man_secs).await.map_err(fail)
            }
            Fault::PeerLatency { token, member, dev, peer_ports, delay_ms, dead_man_secs } => {
                net::apply_latency(member, dev, peer_ports, *delay_ms, token, *dead_man_secs).await.map_err(fail)
            }
            Fault::ApiserverCertSwap { access, pki_dir, backup_dir, expired_cert_pem, .. } => {
                super::cert::apply(access, pki_dir, backup_dir, expired_cert_pem).await.map_err(fail)
            }
            f @ (Fault::StaticPodStop { .. }
            | Fault::NodeUnitStop { .. }
            | Fault::NodeEtcdPartition { .. }
            | Fault::NodePeerLatency { .. }) => node_fault::apply(f).await.map_err(fail),
        }
    }

    /// Reverts from the stored form alone. Reverting what is already reverted succeeds.
    pub async fn revert(&self) -> Result<(), FaultError> {
        let fail = |m: String| FaultError::Revert { what: self.describe(), message: m };
        match self {
            Fault::Pause { pid, start_time, .. } => {
                process::signal(*pid, *start_time, Signal::SIGCONT).map_err(fail)?;
                Ok(())
            }
            // a rig that is gone has nothing left to restart: reverted (else `recover` could
            // never clear the entry)
            Fault::StopMember { rig_dir, .. } | Fault::RigProcessStop { rig_dir, .. }
                if !rig_dir.join(crate::rig::STATE_FILE).exists() =>
            {
                Ok(())
            }
            Fault::StopMember { rig_dir, member, .. } => {
                crate::rig::restart_member(rig_dir, member).await.map_err(|e| fail(crate::exit::chain(&e)))
            }
            Fault::EphemeralRig { rig_dir } => {
                crate::rig::down(rig_dir).await.map(|_| ()).map_err(|e| fail(crate::exit::chain(&e)))
            }
            Fault::Partition { token, isolated, others, peer_ports, .. } => {
                net::revert_partition(isolated, others, peer_ports, token).await.map_err(fail)
            }
            Fault::PeerLatency { token, member, dev, .. } => {
                net::revert_latency(member, dev, token).await.map_err(fail)
            }
            Fault::RigProcessStop { rig_dir, name, .. } => {
                crate::rig::restart_process(rig_dir, name).await.map_err(|e| fail(crate::exit::chain(&e)))
            }
            Fault::DrScratch { dir } => crate::engine::dr::remove_scratch(dir).await.map_err(fail),
            Fault::ApiserverCertSwap { access, pki_dir, backup_dir, .. } => {
                super::cert::revert(access, pki_dir, backup_dir).await.map_err(fail)
            }
            f @ (Fault::StaticPodStop { .. }
            | Fault::NodeUnitStop { .. }
            | Fault::NodeEtcdPartition { .. }
            | Fault::NodePeerLatency { .. }) => node_fault::revert(f).await.map_err(fail),
        }
    }
}
