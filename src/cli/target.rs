//! Builds the [`Target`] from flags, the config file and the rig, and checks that it can be
//! reached before anything is injected (exit 3 when it cannot).

use std::path::PathBuf;
use std::time::Duration;

use super::Global;
use crate::config::Config;
use crate::exit::Fatal;
use crate::rig::RigState;
use crate::target::{kube::KubeTarget, EtcdTarget, Target, TlsMaterial};

/// Flags and config merged (flags win).
pub struct Resolved {
    pub config: Config,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub etcd_endpoints: Vec<String>,
    pub etcd_cacert: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub rig_dir: Option<PathBuf>,
    pub kube_ca_key: Option<PathBuf>,
}

pub fn resolve(g: &Global) -> Result<Resolved, Fatal> {
    let config = match &g.config {
        Some(p) => Config::load(p).map_err(|e| Fatal::usage(e.to_string()))?,
        None => Config::default(),
    };
    let ce = config.etcd.clone().unwrap_or_default();
    let given_etcd = !g.etcd_endpoints.is_empty();
    Ok(Resolved {
        kubeconfig: g.kubeconfig.clone().or_else(|| config.kubeconfig.clone()),
        context: g.context.clone().or_else(|| config.context.clone()),
        etcd_endpoints: if given_etcd { g.etcd_endpoints.clone() } else { ce.endpoints.clone() },
        etcd_cacert: g.etcd_cacert.clone().or(ce.cacert.clone()),
        etcd_cert: g.etcd_cert.clone().or(ce.cert.clone()),
        etcd_key: g.etcd_key.clone().or(ce.key.clone()),
        rig_dir: config.rig.clone(),
        kube_ca_key: g.kube_ca_key.clone().or_else(|| config.kube_ca_key.clone()),
        config,
    })
}

/// The kubeconfig to read when none is given: $KUBECONFIG (first path), then ~/.kube/config.
fn default_kubeconfig() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECONFIG") {
        let first = std::env::split_paths(&k).next()?;
        return Some(first);
    }
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".kube/config");
    p.exists().then_some(p)
}

/// Builds the target without contacting it. `rig` is the rig of `run --rig`, if any.
/// What `build` says when nothing names a target (`plan` then shows the cases only).
pub const NO_TARGET: &str =
    "no target: give --etcd-endpoints (with --etcd-cacert/--etcd-cert/--etcd-key), --kubeconfig, --config FILE, or --rig";

pub async fn build(r: &Resolved, rig: Option<RigState>) -> Result<Target, Fatal> {
    let mut t = Target::default();
    let rig = match rig {
        Some(r) => Some(r),
        None => match &r.rig_dir {
            Some(d) => Some(crate::rig::status(d).map_err(|e| Fatal::usage(crate::exit::chain(&e)))?),
            None => None,
        },
    };
    let mut endpoints = r.etcd_endpoints.clone();
    let (mut ca, mut cert, mut key) = (r.etcd_cacert.clone(), r.etcd_cert.clone(), r.etcd_key.clone());
    if let Some(rig) = &rig {
        if endpoints.is_empty() {
            endpoints = rig.members.iter().map(|m| m.client_url.clone()).collect();
            ca = ca.or(Some(rig.ca_cert.clone()));
            cert = cert.or(Some(rig.client_cert.clone()));
            key = key.or(Some(rig.client_key.clone()));
        }
        t.label = format!("rig:{}", rig.dir.display());
        t.fact("target", t.label.clone());
        t.fact("rig_dir", rig.dir.display().to_string());
        t.fact("rig_isolation", format!("{:?}", rig.isolation).to_lowercase());
    }
    if !endpoints.is_empty() {
        let tls = match &ca {
            Some(ca) => Some(
                TlsMaterial::from_files(ca, cert.as_deref(), key.as_deref())
                    .map_err(|e| Fatal::usage(e.to_string()))?,
            ),
            None => {
                if cert.is_some() || key.is_some() {
                    return Err(Fatal::usage("--etcd-cert and --etcd-key need --etcd-cacert"));
                }
                None
            }
        };
        let etcd = EtcdTarget::new(endpoints, tls).map_err(|e| Fatal::usage(e.to_string()))?;
        if t.label.is_empty() {
            t.label = format!("etcd:{}", etcd.endpoints.join(","));
            t.fact("target", t.label.clone());
        }
        t.fact("etcd_endpoints", etcd.endpoints.join(","));
        t.etcd = Some(etcd);
    }
    // the kubeconfig: explicit, the rig's admin kubeconfig in kube mode (through its load
    // balancer, the same code path as a real cluster), or the default one unless the target
    // is a rig or plain etcd
    let rig_kubeconfig = rig.as_ref().and_then(|r| r.kube.as_ref()).map(|k| k.admin_kubeconfig.clone());
    let kubeconfig =
        r.kubeconfig.clone().or(rig_kubeconfig).or_else(|| if t.etcd.is_none() { default_kubeconfig() } else { None });
    // inside a pod with no kubeconfig: the pod's service account
    let in_cluster = kubeconfig.is_none() && t.etcd.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if kubeconfig.is_some() || in_cluster {
        let k = match &kubeconfig {
            Some(kc) => KubeTarget::load(kc, r.context.as_deref()).await,
            None => KubeTarget::in_cluster(),
        }
        .map_err(|e| Fatal::usage(e.to_string()))?;
        if t.label.is_empty() {
            t.label = format!("context:{}", k.context);
            t.fact("target", t.label.clone());
        }
        t.fact("context", k.context.clone());
        t.fact("server", k.server.clone());
        t.kube = Some(k);
    }
    t.rig = rig;
    t.node_access = r.config.node_access.clone();
    t.kube_ca_key = r.kube_ca_key.clone();
    if t.etcd.is_none() && t.kube.is_none() {
        return Err(Fatal::usage(NO_TARGET));
    }
    Ok(t)
}

/// Contacts the target once; exit 3 when nothing answers. Adds what it learns to the facts.
pub async fn reach(t: &mut Target) -> Result<(), Fatal> {
    // no --etcd-* flags on a Kubernetes target: etcd through the cluster, when node access allows
    if t.etcd.is_none() && t.kube.is_some() {
        if let Err(why) = crate::target::etcd_via_node::attach(t).await {
            tracing::info!("etcd is not reached through the cluster: {why}");
            t.fact("etcd", format!("not reached through the cluster: {why}"));
        }
    }
    if let Some(etcd) = &t.etcd {
        // a direct TLS handshake names certificate problems that the gRPC client hides
        let mut refused = Vec::new();
        for e in &etcd.endpoints {
            if let Err(why) = crate::tls::preflight(etcd, e).await {
                refused.push(format!("etcd {e}: {why}"));
            }
        }
        // when no endpoint passes, the reasons are the error (gRPC would only say "transport error")
        if refused.len() == etcd.endpoints.len() {
            return Err(Fatal::unreachable(refused.join("; ")));
        }
        for r in &refused {
            tracing::warn!("{r}");
        }
        let v = crate::probe::etcd::cluster_view(etcd)
            .await
            .map_err(|e| Fatal::unreachable(format!("etcd could not be reached: {e}")))?;
        let versions: std::collections::BTreeSet<String> =
            v.members.iter().filter_map(|m| m.status.as_ref().ok().map(|s| s.version.clone())).collect();
        t.fact("etcd_members", v.members.len().to_string());
        t.fact("etcd_version", versions.into_iter().collect::<Vec<_>>().join(","));
        if let Some(l) = v.leader() {
            t.fact("etcd_leader", v.name_of(l));
        }
    }
    if let Some(k) = &t.kube {
        let client = kube::Client::try_from(k.config.clone())
            .map_err(|e| Fatal::usage(format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e))))?;
        match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(v)) => t.fact("kube_version", v.git_version),
            Ok(Err(e)) => {
                return Err(Fatal::unreachable(format!(
                    "Kubernetes API {} (context {}): {}",
                    k.server,
                    k.context,
                    crate::exit::chain(&e)
                )))
            }
            Err(_) => {
                return Err(Fatal::unreachable(format!(
                    "Kubernetes API {} (context {}): no answer within 10s",
                    k.server, k.context
                )))
            }
        }
    }
    Ok(())
}
