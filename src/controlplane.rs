//! The control plane as faults and failover cases see it: which component instances run on
//! which host, how to reach that host, and how each instance is stopped and brought back.
//!
//! One shape for every target: a kubeadm or kind cluster (static pods and the kubelet's
//! systemd unit, reached through node access) and the local rig (processes of this machine,
//! each in a namespace of its own). Suites name a [`Component`] and an [`InstancePick`]; the
//! engine resolves them here into a host and a [`StopMethod`], and the fault kinds act on that.

pub mod discovered;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::node::NodeAccess;
pub use crate::suite::{Component, InstancePick};

/// How one instance is stopped, and brought back on revert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum StopMethod {
    /// kubeadm/kind: the static-pod manifest is moved from the kubelet's manifest directory
    /// into `parking_dir` on the node (the kubelet stops the pod); revert moves it back.
    StaticPodManifest { manifest: PathBuf, parking_dir: PathBuf },
    /// A systemd unit on the node (the kubelet): `systemctl stop`; revert `systemctl start`.
    SystemdUnit { unit: String },
    /// The local rig: a process of this machine, signalled by pid (checked against its start
    /// time); revert restarts it with the same command line, namespace and data.
    RigProcess { rig_dir: PathBuf, name: String },
}

/// One running instance of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub component: Component,
    /// The host it runs on: the node name on a cluster, the rig host's hostname on the rig.
    /// Leader-election holder identities start with it (`<host>_<uuid>`), and a stacked etcd
    /// member is named after it.
    pub host: String,
    /// Its own address (an apiserver's advertise address, an etcd member's client URL host).
    pub address: Option<String>,
    /// How commands reach its host; `None` when no node access is configured or resolvable
    /// (the reason is in `access_error`).
    pub access: Option<NodeAccess>,
    pub access_error: Option<String>,
    /// How it is stopped; `None` when it cannot be (the reason is in `stop_error`).
    pub stop: Option<StopMethod>,
    pub stop_error: Option<String>,
    /// Its version when known (`v1.29.3`: the static pod's image tag on a cluster, the
    /// binary's `--version` on the rig).
    #[serde(default)]
    pub version: Option<String>,
}

/// Every instance of every component the target runs, as far as hadrill can see.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Where this view comes from (`rig /tmp/…`, `kubeadm cluster via context …`).
    pub source: String,
    pub instances: Vec<Instance>,
    /// Whether nodes run a kubelet (not on the rig: cases that need one are skipped).
    pub has_kubelet: bool,
    /// Whether the nodes are kubeadm nodes (`kubeadm` on PATH, `/etc/kubernetes`).
    pub has_kubeadm: bool,
}

impl ControlPlane {
    /// The instances of one component, in host order.
    pub fn of(&self, c: Component) -> Vec<&Instance> {
        self.instances.iter().filter(|i| i.component == c).collect()
    }

    /// The instance on `host`, if the component runs there.
    pub fn on(&self, c: Component, host: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.component == c && i.host == host)
    }

    /// The control plane of a rig: its etcd members and, in kube mode, its apiservers,
    /// controller-managers and schedulers (each a host of its own: hostname, address,
    /// network namespace), every one a process of this machine stopped by pid.
    pub fn from_rig(rig: &crate::rig::RigState) -> Self {
        let mut instances: Vec<Instance> = rig
            .members
            .iter()
            .map(|m| Instance {
                component: Component::Etcd,
                host: m.name.clone(),
                address: Some(m.ip.clone()),
                access: Some(NodeAccess::Local { netns: m.netns.clone() }),
                access_error: None,
                stop: Some(StopMethod::RigProcess { rig_dir: rig.dir.clone(), name: m.name.clone() }),
                stop_error: None,
                version: None,
            })
            .collect();
        for h in rig.kube.iter().flat_map(|k| k.hosts.iter()) {
            let Some(component) = h.role.component() else { continue };
            instances.push(Instance {
                component,
                host: h.name.clone(),
                address: Some(h.address.clone()),
                access: Some(NodeAccess::Local { netns: Some(h.netns.clone()) }),
                access_error: None,
                stop: Some(StopMethod::RigProcess { rig_dir: rig.dir.clone(), name: h.name.clone() }),
                stop_error: None,
                version: h.version.clone(),
            });
        }
        ControlPlane { source: format!("rig {}", rig.dir.display()), instances, has_kubelet: false, has_kubeadm: false }
    }
}

/// Where the rig's kube mode keeps its Kubernetes PKI, in kubeadm's layout and file names
/// (`ca.crt`, `ca.key`, `apiserver.crt`, `front-proxy-ca.crt`, `sa.key`, …), like
/// `/etc/kubernetes/pki` on a kubeadm node. The etcd PKI stays where the etcd rig keeps it.
pub fn rig_kube_pki_dir(rig_dir: &std::path::Path) -> PathBuf {
    rig_dir.join("pki").join("kube")
}

/// The host named in a leader-election holder identity: kube's leader election writes
/// `<hostname>_<uuid>` for the controller-manager and the scheduler.
pub fn holder_host(holder: &str) -> &str {
    holder.split_once('_').map(|(h, _)| h).unwrap_or(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_identity_names_the_host() {
        assert_eq!(holder_host("cp-1_3f1c9a2e-7f0b-4c55-9b7a-0d5d7b1e2a11"), "cp-1");
        assert_eq!(holder_host("kind-control-plane2_ab"), "kind-control-plane2");
        assert_eq!(holder_host("plain"), "plain");
    }
}
