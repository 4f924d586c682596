//! The control plane of a Kubernetes target, built from discovery and node access (pure):
//! one instance per static pod (apiserver, controller-manager, scheduler, etcd) stopped by
//! parking its manifest, one kubelet per control-plane node stopped with systemd, and the
//! choice of one instance for an [`InstancePick`] given who leads now.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::seq::IndexedRandom;

use super::{Component, ControlPlane, Instance, InstancePick, StopMethod};
use crate::node::NodeAccess;
use crate::target::discovery::{host_port, Discovery};

/// The kubelet's `staticPodPath` on kubeadm and kind nodes.
pub const DEFAULT_MANIFEST_DIR: &str = "/etc/kubernetes/manifests";
/// Where parked manifests wait on the node (outside the manifest directory, which the
/// kubelet watches).
pub const PARKING_DIR: &str = "/etc/kubernetes/hadrill-parked";
/// The kubelet's config file on kubeadm and kind nodes (holds `staticPodPath`).
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// The kubelet's systemd unit.
pub const KUBELET_UNIT: &str = "kubelet";

/// Why the kubelet cannot be stopped through the `pod` backend.
pub const POD_CANNOT_STOP_KUBELET: &str = "the pod node access backend execs through the node's kubelet: stopping the kubelet would cut hadrill off from the node (configure ssh, or docker on kind, for this node under node_access.nodes)";

/// The component of a static pod's `component` label.
pub fn component_of(label: &str) -> Option<Component> {
    [Component::Apiserver, Component::ControllerManager, Component::Scheduler, Component::Etcd]
        .into_iter()
        .find(|c| c.static_pod() == label)
}

/// The version in an image reference's tag (`registry.k8s.io/kube-apiserver:v1.29.2` →
/// `v1.29.2`); None for a digest-only reference.
pub fn image_version(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t.to_string()).filter(|t| !t.is_empty())
}

/// `staticPodPath` of a kubelet config file (KubeletConfiguration YAML).
pub fn static_pod_path(kubelet_config: &str) -> Option<String> {
    let v: serde_json::Value = serde_saphyr::from_str(kubelet_config).ok()?;
    v.get("staticPodPath")?.as_str().map(|s| s.trim_end_matches('/').to_string()).filter(|s| !s.is_empty())
}

/// Builds the control plane of a discovered cluster. `access` is each node's node access (or
/// why it has none); `manifest_dirs` the kubelet's `staticPodPath` per node where it was
/// read (the kubeadm default elsewhere).
pub fn from_discovery(
    d: &Discovery,
    access: &[(String, Result<NodeAccess, String>)],
    manifest_dirs: &BTreeMap<String, String>,
    source: String,
) -> ControlPlane {
    let access_of = |node: &str| -> (Option<NodeAccess>, Option<String>) {
        match access.iter().find(|(n, _)| n == node).map(|(_, a)| a) {
            Some(Ok(a)) => (Some(a.clone()), None),
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, Some(format!("{node} is not a control-plane node known to discovery: no node access"))),
        }
    };
    let node_ip =
        |node: &str| d.nodes.iter().find(|n| n.name == node).and_then(|n| n.internal_ip()).map(str::to_string);
    let mut instances = Vec::new();
    for p in &d.static_pods {
        let Some(component) = component_of(&p.component) else { continue };
        let address = match component {
            Component::Apiserver => p.flag("advertise-address").map(str::to_string),
            Component::Etcd => p.flag("advertise-client-urls").and_then(|u| {
                u.split(',')
                    .filter_map(|u| host_port(u.trim()))
                    .map(|(h, _)| h)
                    .find(|h| h != "127.0.0.1" && h != "localhost")
            }),
            _ => None,
        }
        .or_else(|| node_ip(&p.node));
        let (acc, access_error) = access_of(&p.node);
        let dir = manifest_dirs.get(&p.node).map(String::as_str).unwrap_or(DEFAULT_MANIFEST_DIR);
        instances.push(Instance {
            component,
            host: p.node.clone(),
            address,
            access: acc,
            access_error,
            stop: Some(StopMethod::StaticPodManifest {
                manifest: PathBuf::from(dir).join(format!("{}.yaml", component.static_pod())),
                parking_dir: PathBuf::from(PARKING_DIR),
            }),
            stop_error: None,
            version: image_version(&p.image),
        });
    }
    for n in &d.nodes {
        let (acc, access_error) = access_of(&n.name);
        let pod = matches!(acc, Some(NodeAccess::Pod { .. }));
        instances.push(Instance {
            component: Component::Kubelet,
            host: n.name.clone(),
            address: n.internal_ip().map(str::to_string),
            access: acc,
            access_error,
            stop: (!pod).then(|| StopMethod::SystemdUnit { unit: KUBELET_UNIT.into() }),
            stop_error: pod.then(|| POD_CANNOT_STOP_KUBELET.to_string()),
            version: Some(n.kubelet_version.clone()).filter(|v| !v.is_empty()),
        });
    }
    ControlPlane { source, instances, has_kubelet: !d.nodes.is_empty(), has_kubeadm: !d.static_pods.is_empty() }
}

/// Why an instance cannot be faulted, if it cannot.
pub fn unusable(i: &Instance) -> Option<String> {
    if i.access.is_none() {
        return Some(i.access_error.clone().unwrap_or_else(|| format!("no node access to {}", i.host)));
    }
    if i.stop.is_none() {
        return Some(
            i.stop_error
                .clone()
                .unwrap_or_else(|| format!("{} on {} cannot be stopped", i.component.static_pod(), i.host)),
        );
    }
    None
}

/// Chooses the instance of `c` that `pick` names. `leader` is the host of the current leader
/// (asked for `Leader` and `NotLeader`). Any and NotLeader choose among the instances that
/// can be faulted, with `rng`. The error says why nothing fits.
pub fn choose<'a, R: rand::Rng>(
    cp: &'a ControlPlane,
    c: Component,
    pick: InstancePick,
    leader: Option<&str>,
    rng: &mut R,
) -> Result<&'a Instance, String> {
    let all = cp.of(c);
    if all.is_empty() {
        return Err(format!("no {} instance on this target ({})", c.static_pod(), cp.source));
    }
    let pool: Vec<&Instance> = match pick {
        InstancePick::Leader | InstancePick::LeaderOf(_) => {
            let l = leader.ok_or_else(|| format!("the {} leader is not known", c.static_pod()))?;
            let i = cp.on(c, l).ok_or_else(|| {
                format!("the {} leader is on {l}, where hadrill knows no {} instance", c.static_pod(), c.static_pod())
            })?;
            vec![i]
        }
        InstancePick::NotLeader => {
            let l = leader.ok_or_else(|| format!("the {} leader is not known", c.static_pod()))?;
            all.iter().copied().filter(|i| i.host != l).collect()
        }
        InstancePick::Any => all.clone(),
    };
    if pool.is_empty() {
        return Err(format!("no {} instance other than the leader's", c.static_pod()));
    }
    let usable: Vec<&Instance> = pool.iter().copied().filter(|i| unusable(i).is_none()).collect();
    match usable.choose(rng) {
        Some(i) => Ok(i),
        None => Err(unusable(pool[0]).expect("not usable")),
    }
}

#[cfg(test)]
mod tests;

/// The fault an instance would get, as `plan` shows it (the token is a placeholder; the
/// kubeadm peer port).
fn planned_fault(cp: &ControlPlane, i: &Instance, spec: &crate::suite::FaultSpec) -> Option<crate::fault::Fault> {
    use crate::fault::node::{NodeRef, DEFAULT_WAIT_SECS, STATIC_POD_DEAD_MAN_SECS, UNIT_DEAD_MAN_SECS};
    use crate::fault::Fault;
    let at = NodeRef { node: i.host.clone(), access: i.access.clone()?, kube: None };
    let token = "<token>".to_string();
    if let crate::suite::FaultSpec::NodeEtcdPartition { dead_man, .. } = spec {
        let others: Vec<&Instance> = cp.of(Component::Etcd).into_iter().filter(|o| o.host != i.host).collect();
        return Some(Fault::NodeEtcdPartition {
            at,
            token,
            others: others.iter().filter_map(|o| o.address.clone()).collect(),
            other_names: others.iter().map(|o| o.host.clone()).collect(),
            peer_ports: vec![2380],
            dead_man_secs: dead_man.as_secs().max(1),
        });
    }
    if let crate::suite::FaultSpec::NodePeerLatency { delay, dead_man, .. } = spec {
        return Some(Fault::NodePeerLatency {
            at,
            token,
            dev: "<the interface towards the peers>".into(),
            peer_ports: vec![2380],
            delay_ms: delay.as_millis() as u64,
            dead_man_secs: dead_man.as_secs().max(1),
        });
    }
    Some(match i.stop.clone()? {
        StopMethod::StaticPodManifest { manifest, parking_dir } => Fault::StaticPodStop {
            at,
            container: i.component.static_pod().into(),
            manifest,
            parking_dir,
            token,
            wait_secs: DEFAULT_WAIT_SECS,
            dead_man_secs: STATIC_POD_DEAD_MAN_SECS,
        },
        StopMethod::SystemdUnit { unit } => {
            Fault::NodeUnitStop { at, unit, token, dead_man_secs: UNIT_DEAD_MAN_SECS, wait_secs: 120 }
        }
        StopMethod::RigProcess { .. } => return None,
    })
}

/// `plan`'s lines for one control-plane fault spec: which instances are candidates, on which
/// node, through which access, what would be done there and how it is reverted (pure; the
/// leader shown is the lease holder at discovery, read again at injection).
pub fn plan_lines(cp: &ControlPlane, d: &Discovery, spec: &crate::suite::FaultSpec) -> Vec<String> {
    use crate::suite::FaultSpec;
    let (c, p) = match spec {
        FaultSpec::KubeletStop { pick } => (Component::Kubelet, *pick),
        FaultSpec::ComponentStop { component, pick, .. } => (*component, *pick),
        FaultSpec::NodeEtcdPartition { pick, .. } | FaultSpec::NodePeerLatency { pick, .. } => (Component::Etcd, *pick),
        _ => return Vec::new(),
    };
    let lease_node = |c: Component| {
        let name = c.lease()?;
        d.leases.iter().find(|l| l.name == name).and_then(|l| l.holder_node.clone())
    };
    let leader_now = |c: Component| match c {
        Component::Etcd => "the raft leader, asked from the members at injection".to_string(),
        _ => match lease_node(c) {
            Some(n) => format!("now {n}, the {} lease holder; read again at injection", c.static_pod()),
            None => format!("the {} lease holder at injection (none now)", c.static_pod()),
        },
    };
    let how = match p {
        InstancePick::Any => "any one, chosen with the run's seed".to_string(),
        InstancePick::Leader => format!("the leader ({})", leader_now(c)),
        InstancePick::NotLeader => format!("one that does not lead ({})", leader_now(c)),
        InstancePick::LeaderOf(o) => {
            format!("the one on the node of the {} leader ({})", o.static_pod(), leader_now(o))
        }
    };
    let all = cp.of(c);
    let mut out = vec![format!("where: {how}; {} {} instance(s) found", all.len(), c.static_pod())];
    for i in all {
        match unusable(i)
            .map(Err)
            .unwrap_or_else(|| planned_fault(cp, i, spec).ok_or_else(|| "no stop method".to_string()))
        {
            Ok(f) => out.push(format!("{}: {} → revert: {}", i.host, f.describe(), f.revert_plan())),
            Err(why) => out.push(format!("{}: cannot be faulted: {why}", i.host)),
        }
    }
    out
}

/// Discovers the target and renders `plan`'s Kubernetes section, with the control plane that
/// the per-fault lines are drawn from. Nothing on the nodes is contacted (the kubeadm manifest
/// directory is assumed; a run reads the kubelet's `staticPodPath`).
pub async fn plan_report(
    k: &crate::target::kube::KubeTarget,
    node_access: Option<&crate::node::select::NodeAccessConfig>,
) -> Result<(String, ControlPlane, Discovery), crate::target::discovery::DiscoveryError> {
    use crate::target::discovery::{discover, plan_text, DiscoveryError};
    let client = kube::Client::try_from(k.config.clone()).map_err(|e| DiscoveryError::Client {
        path: k.kubeconfig.display().to_string(),
        message: crate::exit::chain(&e),
    })?;
    let d = discover(&client, &k.server).await?;
    let cfg = node_access.cloned().unwrap_or_default();
    let access = crate::node::select::resolve_all(&cfg, &d);
    let cp = from_discovery(&d, &access, &BTreeMap::new(), format!("cluster of context {}", k.context));
    Ok((plan_text(&d, node_access, chrono::Utc::now()), cp, d))
}
