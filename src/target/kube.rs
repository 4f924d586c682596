//! The Kubernetes side of a target: the kubeconfig, its context and server.
//!
//! Discovery of control-plane nodes, apiservers, leases and static pods builds on this.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("kubeconfig {path}: context `{context}` not found (contexts: {known})")]
    NoContext { path: String, context: String, known: String },
}

/// A kubeconfig resolved to one context.
#[derive(Debug, Clone)]
pub struct KubeTarget {
    pub kubeconfig: PathBuf,
    pub context: String,
    pub cluster: String,
    pub server: String,
    pub config: kube::Config,
}

/// The context name shown for the in-cluster config (no kubeconfig file).
pub const IN_CLUSTER_CONTEXT: &str = "in-cluster";
/// Where the in-cluster service account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeTarget {
    /// The pod's own service account (`KUBERNETES_SERVICE_HOST` set, token mounted).
    pub fn in_cluster() -> Result<Self, KubeError> {
        let config = kube::Config::incluster().map_err(|e| KubeError::Kubeconfig {
            path: SERVICE_ACCOUNT_DIR.into(),
            message: format!("in-cluster config: {}", crate::exit::chain(&e)),
        })?;
        Ok(Self {
            kubeconfig: PathBuf::from(SERVICE_ACCOUNT_DIR),
            context: IN_CLUSTER_CONTEXT.into(),
            cluster: IN_CLUSTER_CONTEXT.into(),
            server: config.cluster_url.to_string(),
            config,
        })
    }

    /// Whether this is the in-cluster config rather than a kubeconfig file.
    pub fn is_in_cluster(&self) -> bool {
        self.context == IN_CLUSTER_CONTEXT && self.kubeconfig == Path::new(SERVICE_ACCOUNT_DIR)
    }

    /// Reads a kubeconfig and resolves the context (the current one when `context` is None).
    /// Nothing is contacted.
    pub async fn load(path: &Path, context: Option<&str>) -> Result<Self, KubeError> {
        let shown = path.display().to_string();
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Kubeconfig { path: shown.clone(), message: crate::exit::chain(&e) })?;
        let ctx_name = match context {
            Some(c) => c.to_string(),
            None => kc.current_context.clone().ok_or_else(|| KubeError::Kubeconfig {
                path: shown.clone(),
                message: "no current-context set and no --context given".into(),
            })?,
        };
        let Some(named) = kc.contexts.iter().find(|c| c.name == ctx_name) else {
            let known = kc.contexts.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(KubeError::NoContext { path: shown, context: ctx_name, known });
        };
        let cluster = named.context.as_ref().map(|c| c.cluster.clone()).unwrap_or_default();
        let opts = KubeConfigOptions { context: Some(ctx_name.clone()), ..Default::default() };
        let config = kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| KubeError::Kubeconfig { path: shown.clone(), message: crate::exit::chain(&e) })?;
        Ok(Self {
            kubeconfig: path.to_path_buf(),
            context: ctx_name,
            cluster,
            server: config.cluster_url.to_string(),
            config,
        })
    }
}
