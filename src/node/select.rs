//! Which node access each node gets: the `node_access` section of the config, and kind
//! detection (a node whose providerID is `kind://docker/…` is a container named after it).
//! Pure: config and discovered nodes in, [`NodeAccess`] per node out.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::ssh::StrictHostKeyChecking;
use super::{pod, NodeAccess};
use crate::target::discovery::{ControlPlaneNode, Discovery};

/// The backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// kind nodes → docker; otherwise ssh when an `ssh` section is given; otherwise none.
    #[default]
    Auto,
    Docker,
    Ssh,
    Pod,
}

/// `node_access:` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAccessConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub ssh: Option<SshConfig>,
    #[serde(default)]
    pub pod: Option<PodConfig>,
    /// Per node (by node name): overrides of the backend, the ssh host, the container.
    #[serde(default)]
    pub nodes: IndexMap<String, NodeOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Private key file; relative paths are read relative to the config file.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Jump host, `[user@]host[:port]`.
    #[serde(default)]
    pub jump: Option<String>,
    #[serde(default)]
    pub strict_host_key_checking: StrictHostKeyChecking,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    /// Default: kube-system.
    #[serde(default)]
    pub namespace: Option<String>,
    /// An image with `nsenter` and `sleep` (default busybox); set it for air-gapped clusters.
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    #[serde(default)]
    pub backend: Option<Backend>,
    /// The ssh host of this node (default: its InternalIP).
    #[serde(default)]
    pub host: Option<String>,
    /// The docker container of this node (default: the node name).
    #[serde(default)]
    pub container: Option<String>,
}

/// The node access of one node, or why there is none.
pub fn resolve(cfg: &NodeAccessConfig, node: &ControlPlaneNode) -> Result<NodeAccess, String> {
    let o = cfg.nodes.get(&node.name).cloned().unwrap_or_default();
    let backend = o.backend.unwrap_or(cfg.backend);
    let docker = || NodeAccess::Docker { container: o.container.clone().unwrap_or_else(|| node.name.clone()) };
    let ssh = |s: &SshConfig| NodeAccess::Ssh {
        host: o.host.clone().or_else(|| node.internal_ip().map(str::to_string)).unwrap_or_else(|| node.name.clone()),
        user: s.user.clone(),
        port: s.port,
        key: s.key.clone(),
        jump: s.jump.clone(),
        strict_host_key_checking: s.strict_host_key_checking,
    };
    match backend {
        Backend::Docker => Ok(docker()),
        Backend::Ssh => Ok(ssh(&cfg.ssh.clone().unwrap_or_default())),
        Backend::Pod => {
            let p = cfg.pod.clone().unwrap_or_default();
            Ok(NodeAccess::Pod {
                node: node.name.clone(),
                namespace: p.namespace.unwrap_or_else(|| pod::DEFAULT_NAMESPACE.into()),
                image: p.image.unwrap_or_else(|| pod::DEFAULT_IMAGE.into()),
            })
        }
        Backend::Auto => {
            if node.is_kind_docker() {
                Ok(docker())
            } else if let Some(s) = &cfg.ssh {
                Ok(ssh(s))
            } else {
                Err(format!(
                    "no node access to {}: not a kind node (providerID {}); set node_access.backend (ssh or pod) in the config",
                    node.name,
                    node.provider_id.as_deref().unwrap_or("unset")
                ))
            }
        }
    }
}

/// Node access for every discovered control-plane node, in node order.
pub fn resolve_all(cfg: &NodeAccessConfig, d: &Discovery) -> Vec<(String, Result<NodeAccess, String>)> {
    d.nodes.iter().map(|n| (n.name.clone(), resolve(cfg, n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, provider: Option<&str>) -> ControlPlaneNode {
        ControlPlaneNode {
            name: name.into(),
            addresses: vec![("InternalIP".into(), "172.18.0.3".into()), ("Hostname".into(), name.into())],
            ready: Some(true),
            ready_since: None,
            kubelet_version: "v1.29.2".into(),
            provider_id: provider.map(str::to_string),
        }
    }

    #[test]
    fn kind_nodes_are_detected_as_docker_containers() {
        let n = node("hadrill-control-plane2", Some("kind://docker/hadrill/hadrill-control-plane2"));
        assert_eq!(
            resolve(&NodeAccessConfig::default(), &n),
            Ok(NodeAccess::Docker { container: "hadrill-control-plane2".into() })
        );
        assert_eq!(
            NodeAccess::Docker { container: "hadrill-control-plane2".into() }.wrap(&["crictl", "ps"]),
            ["docker", "exec", "hadrill-control-plane2", "crictl", "ps"]
        );
    }

    #[test]
    fn non_kind_nodes_without_config_have_no_access_and_say_why() {
        let e = resolve(&NodeAccessConfig::default(), &node("cp-1", None)).unwrap_err();
        assert!(e.contains("no node access to cp-1") && e.contains("node_access.backend"), "{e}");
        // a podman-backed kind node is not a docker container
        assert!(resolve(&NodeAccessConfig::default(), &node("k", Some("kind://podman/kind/k"))).is_err());
    }

    #[test]
    fn ssh_uses_the_internal_ip_unless_overridden() {
        let yaml = "backend: ssh\nssh:\n  user: root\n  key: /k\n  jump: bastion\n  strict_host_key_checking: accept_new\nnodes:\n  cp-2:\n    host: cp-2.mgmt.example.com\n";
        let cfg: NodeAccessConfig = serde_saphyr::from_str(yaml).unwrap();
        let a = resolve(&cfg, &node("cp-1", None)).unwrap();
        assert_eq!(
            a,
            NodeAccess::Ssh {
                host: "172.18.0.3".into(),
                user: Some("root".into()),
                port: None,
                key: Some("/k".into()),
                jump: Some("bastion".into()),
                strict_host_key_checking: StrictHostKeyChecking::AcceptNew
            }
        );
        let b = resolve(&cfg, &node("cp-2", None)).unwrap();
        assert!(matches!(b, NodeAccess::Ssh { ref host, .. } if host == "cp-2.mgmt.example.com"), "{b:?}");
        assert_eq!(b.describe(), "ssh root@cp-2.mgmt.example.com via bastion");
    }

    #[test]
    fn pod_backend_takes_namespace_and_image_from_config_and_per_node_overrides_win() {
        let yaml = "backend: pod\npod:\n  image: registry.internal/busybox:1.36\nnodes:\n  cp-3:\n    backend: docker\n    container: kind-cp3\n";
        let cfg: NodeAccessConfig = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            resolve(&cfg, &node("cp-1", None)).unwrap(),
            NodeAccess::Pod {
                node: "cp-1".into(),
                namespace: "kube-system".into(),
                image: "registry.internal/busybox:1.36".into()
            }
        );
        assert_eq!(resolve(&cfg, &node("cp-3", None)).unwrap(), NodeAccess::Docker { container: "kind-cp3".into() });
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_saphyr::from_str::<NodeAccessConfig>("backend: ssh\nssh:\n  username: root\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("username"), "{e}");
        assert!(serde_saphyr::from_str::<NodeAccessConfig>("backend: telnet\n").is_err());
    }

    #[test]
    fn node_access_round_trips_through_the_ledger_form() {
        for a in [
            NodeAccess::Docker { container: "c".into() },
            NodeAccess::Ssh {
                host: "h".into(),
                user: None,
                port: Some(22),
                key: None,
                jump: None,
                strict_host_key_checking: StrictHostKeyChecking::Off,
            },
            NodeAccess::Pod { node: "n".into(), namespace: "ns".into(), image: "i".into() },
        ] {
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<NodeAccess>(&j).unwrap(), a, "{j}");
        }
    }
}
