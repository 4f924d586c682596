//! The cluster under test: its etcd members (with client TLS), the Kubernetes API when a
//! kubeconfig is given, the local rig when there is one, and the facts reported about it.

pub mod discovery;
pub mod etcd;
pub mod etcd_via_node;
pub mod kube;

use indexmap::IndexMap;

pub use etcd::{EtcdTarget, TlsMaterial};

use crate::rig::RigState;

/// Everything a run knows about what it tests.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `rig:/tmp/hadrill-rig`, `etcd:https://…`, or the kube context.
    pub label: String,
    /// Reported as JUnit properties, in this order.
    pub facts: IndexMap<String, String>,
    pub etcd: Option<EtcdTarget>,
    /// The local rig, when the target is one: its members are processes of this machine.
    pub rig: Option<RigState>,
    pub kube: Option<kube::KubeTarget>,
    /// How to reach the nodes of a Kubernetes target (the config's `node_access`; kind is
    /// detected when it is absent).
    pub node_access: Option<crate::node::select::NodeAccessConfig>,
    /// The control plane's instances and how to stop each, resolved once per run (on first
    /// use) from the rig or from discovery.
    pub control_plane: tokio::sync::OnceCell<crate::controlplane::ControlPlane>,
    /// The cluster CA's key file (`--kube-ca-key`, `kube_ca_key:`), when given: the `certs`
    /// suite signs its test client certificates with it (`ca.crt` beside it, else the
    /// kubeconfig's CA, is the certificate).
    pub kube_ca_key: Option<std::path::PathBuf>,
}

impl Target {
    pub fn fact(&mut self, k: &str, v: impl Into<String>) {
        self.facts.insert(k.to_string(), v.into());
    }
}
