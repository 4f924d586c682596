//! The YAML config file (`--config`): the target (etcd, kubeconfig, rig) and safety settings.
//! Flags given on the command line win over the file. The rig writes one of these as its
//! target file. Relative paths are read relative to the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    /// The target is this local rig (its members' processes are reachable as node access).
    #[serde(default)]
    pub rig: Option<PathBuf>,
    #[serde(default)]
    pub disruption: Option<Disruption>,
    #[serde(default)]
    pub suite_dirs: Vec<PathBuf>,
    /// How faults reach the nodes of a Kubernetes target (docker, ssh, pod; kind detected).
    #[serde(default)]
    pub node_access: Option<crate::node::select::NodeAccessConfig>,
    /// The cluster CA's key file (the `certs` suite signs test client certificates with it).
    #[serde(default)]
    pub kube_ca_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// Where disruptive cases may run, besides `--allow-disruption`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Disruption {
    /// Kubernetes contexts on which disruptive cases may run.
    #[serde(default)]
    pub allowed_contexts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut c: Config = serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(e) = &mut c.etcd {
            e.cacert.as_mut().map(fix);
            e.cert.as_mut().map(fix);
            e.key.as_mut().map(fix);
        }
        c.kubeconfig.as_mut().map(fix);
        c.rig.as_mut().map(fix);
        c.kube_ca_key.as_mut().map(fix);
        c.suite_dirs.iter_mut().for_each(fix);
        if let Some(key) = c.node_access.as_mut().and_then(|n| n.ssh.as_mut()).and_then(|s| s.key.as_mut()) {
            fix(key);
        }
        Ok(c)
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_and_unknown_fields_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.yaml");
        std::fs::write(&p, "etcd:\n  endpoints: [https://127.0.0.1:2379]\n  cacert: pki/ca.crt\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.etcd.unwrap().cacert.unwrap(), d.path().join("pki/ca.crt"));
        std::fs::write(&p, "etcd:\n  endpoint: [x]\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("endpoint") && e.starts_with("config "), "{e}");
    }

    #[test]
    fn node_access_section_is_typed_and_its_key_path_follows_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.yaml");
        std::fs::write(&p, "kubeconfig: kc\nnode_access:\n  backend: ssh\n  ssh:\n    user: root\n    key: keys/id\n")
            .unwrap();
        let c = Config::load(&p).unwrap();
        let na = c.node_access.unwrap();
        assert_eq!(na.backend, crate::node::select::Backend::Ssh);
        assert_eq!(na.ssh.unwrap().key.unwrap(), d.path().join("keys/id"));
        std::fs::write(&p, "node_access:\n  backend: ssh\n  hosts: {}\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("hosts"), "{e}");
    }

    #[test]
    fn round_trips_as_yaml() {
        let c = Config {
            etcd: Some(EtcdConfig {
                endpoints: vec!["https://a:2379".into()],
                cacert: Some("/ca".into()),
                cert: None,
                key: None,
            }),
            rig: Some("/tmp/r".into()),
            ..Default::default()
        };
        let back: Config = serde_saphyr::from_str(&c.to_yaml()).unwrap();
        assert_eq!(back, c);
    }
}
