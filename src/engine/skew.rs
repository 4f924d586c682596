//! The `skew` steps: read the live versions of every component (each apiserver's `/version`
//! on its own address, kubelets from the Node objects, kube-proxy from its DaemonSet pods'
//! image tags, controller-manager and scheduler from their static pods or the rig, the local
//! kubectl) and judge them with the policy in `fixtures/skew-policy.yaml`
//! ([`crate::check::skew`]); and the upgrade path: `kubeadm upgrade plan`, then
//! `kubeadm upgrade apply vX.(Y+2).0 --dry-run --yes` on a control-plane node, which must be
//! refused ([`crate::check::kubeadm`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use super::kubecerts::{self, KubeView};
use super::{CaseState, RunContext, StepEnd};
use crate::check::skew::{self, ComponentVersion};
use crate::check::{kubeadm, CheckOutcome};
use crate::suite::{CheckSpec, Component};
use crate::target::discovery::{Discovery, REQUEST_TIMEOUT};

const NODE_DEADLINE: Duration = Duration::from_secs(120);

pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    match spec {
        CheckSpec::VersionSkew => version_skew(ctx, st).await,
        CheckSpec::KubeadmRefusesSkippingAMinor => upgrade(ctx, st).await,
        other => Err(StepEnd::Error(format!("not a skew check: {other:?}"))),
    }
}

/// The version in an image reference's tag: `registry.k8s.io/kube-proxy:v1.29.2` → `v1.29.2`.
/// None for a digest-only reference or a tag that is not a version.
pub fn image_version(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    skew::parse_minor(tag)?;
    Some(tag.to_string())
}

/// `gitVersion` of a `/version` answer or of `kubectl version --client -o json`.
pub fn git_version(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("gitVersion")
        .or_else(|| v.get("clientVersion").and_then(|c| c.get("gitVersion")))
        .and_then(|g| g.as_str())
        .map(str::to_string)
}

/// Kubelets (every node) and kube-proxy (its DaemonSet pods' image tags; a node's
/// `kubeProxyVersion` is deprecated and unreliable, and used only when no kube-proxy pod is
/// found at all). Returns the versions and notes for the evidence.
pub fn node_versions(nodes: &[Node], proxy_pods: &[Pod]) -> (Vec<ComponentVersion>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        match n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.kubelet_version.clone()) {
            Some(v) if !v.is_empty() => out.push(ComponentVersion::new("kubelet", &name, &v)),
            _ => notes.push(format!("node {name}: no kubeletVersion in its status")),
        }
    }
    let mut proxies: Vec<ComponentVersion> = Vec::new();
    for p in proxy_pods {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "(unscheduled)".into());
        let image = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "kube-proxy").or(s.containers.first()))
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        match image_version(&image) {
            Some(v) => proxies.push(ComponentVersion::new("kube-proxy", &node, &v)),
            None => notes.push(format!("kube-proxy on {node}: image `{image}` carries no version tag")),
        }
    }
    if proxy_pods.is_empty() {
        notes.push("no kube-proxy pods in kube-system (label k8s-app=kube-proxy): a kube-proxy replacement, or kube-proxy outside pods; nodes' deprecated kubeProxyVersion used where set".into());
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            if let Some(v) = n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.kube_proxy_version.clone())
            {
                if skew::parse_minor(&v).is_some() {
                    proxies.push(ComponentVersion::new("kube-proxy", &name, &v));
                }
            }
        }
    }
    proxies.sort_by(|a, b| a.node.cmp(&b.node));
    out.extend(proxies);
    (out, notes)
}

/// Controller-manager and scheduler from the static pods' image tags.
pub fn static_pod_versions(d: &Discovery) -> (Vec<ComponentVersion>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for c in ["kube-controller-manager", "kube-scheduler"] {
        for p in d.static_pods.iter().filter(|p| p.component == c) {
            match image_version(&p.image) {
                Some(v) => out.push(ComponentVersion::new(c, &p.node, &v)),
                None => notes.push(format!("{c} on {}: image `{}` carries no version tag", p.node, p.image)),
            }
        }
    }
    (out, notes)
}

/// Lists every node and the kube-proxy pods through `client`.
pub async fn read_nodes(client: &kube::Client) -> Result<(Vec<Node>, Vec<Pod>), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let n = tokio::time::timeout(REQUEST_TIMEOUT, nodes.list(&ListParams::default()))
        .await
        .map_err(|_| format!("list nodes: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("list nodes: {}", crate::exit::chain(&e)))?;
    let p = tokio::time::timeout(REQUEST_TIMEOUT, pods.list(&ListParams::default().labels("k8s-app=kube-proxy")))
        .await
        .map_err(|_| format!("list pods in kube-system: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("list pods in kube-system: {}", crate::exit::chain(&e)))?;
    Ok((n.items, p.items))
}

/// Each apiserver's own `/version` (anonymous, allowed by `system:public-info-viewer`); when
/// an address cannot be read, that node's apiserver static-pod image tag, with a note.
async fn apiserver_versions(kv: &KubeView, notes: &mut Vec<String>) -> Vec<ComponentVersion> {
    let mut out = Vec::new();
    for a in &kv.discovery.apiservers {
        let url = a.url();
        let node = a.node.clone().unwrap_or_else(|| a.address.clone());
        let got = crate::tls::https_get(&url, &kv.ca_pem, None, Duration::from_secs(5), "/version").await;
        match got.as_ref().ok().filter(|g| g.status == Some(200)).and_then(|g| git_version(&g.body)) {
            Some(v) => out.push(ComponentVersion::new("kube-apiserver", &node, &v)),
            None => {
                let why = match got {
                    Ok(g) => format!("{}; HTTP {:?}", g.handshake, g.status),
                    Err(e) => e.to_string(),
                };
                let tag = kv
                    .discovery
                    .static_pods
                    .iter()
                    .find(|p| p.component == "kube-apiserver" && Some(&p.node) == a.node.as_ref())
                    .and_then(|p| image_version(&p.image));
                match tag {
                    Some(v) => {
                        notes.push(format!(
                            "apiserver {url}: /version not read ({why}); its static pod's image tag {v} used"
                        ));
                        out.push(ComponentVersion::new("kube-apiserver", &node, &v));
                    }
                    None => notes.push(format!("apiserver {url}: version not read: {why}")),
                }
            }
        }
    }
    out
}

/// The local kubectl's client version; a note when there is none.
async fn kubectl_version(notes: &mut Vec<String>) -> Option<ComponentVersion> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into());
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(["version", "--client", "-o", "json"]).kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
        Ok(Ok(o)) if o.status.success() => match git_version(&String::from_utf8_lossy(&o.stdout)) {
            Some(v) => Some(ComponentVersion::new("kubectl", &format!("{host} (local)"), &v)),
            None => {
                notes.push("kubectl version --client -o json: no clientVersion.gitVersion in its answer".into());
                None
            }
        },
        Ok(Ok(o)) => {
            notes.push(format!("kubectl version --client failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
            None
        }
        Ok(Err(_)) => {
            notes.push("kubectl is not on PATH: the kubectl rule was not checked".into());
            None
        }
        Err(_) => {
            notes.push("kubectl version --client did not answer within 10s".into());
            None
        }
    }
}

async fn version_skew(ctx: &RunContext, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let kv = kubecerts::kube_view(ctx, st).await?;
    let mut notes = Vec::new();
    (ctx.progress)(&st.name, "reading the versions of every component");
    let mut versions = apiserver_versions(&kv, &mut notes).await;
    let (nodes, proxies) =
        read_nodes(&kv.client).await.map_err(|e| StepEnd::Error(format!("cannot read the nodes: {e}")))?;
    let (nv, n2) = node_versions(&nodes, &proxies);
    notes.extend(n2);
    let (sv, n3) = static_pod_versions(&kv.discovery);
    notes.extend(n3);
    let (no_apis, no_cm) = (versions.is_empty(), sv.is_empty());
    versions.extend(nv);
    versions.extend(sv);
    // the rig (no static pods): its instances carry their binaries' versions
    let rig_cp = ctx.target.rig.as_ref().map(crate::controlplane::ControlPlane::from_rig);
    if let Some(cp) = rig_cp.as_ref().or(ctx.target.control_plane.get()) {
        for (c, name) in [
            (Component::Apiserver, "kube-apiserver"),
            (Component::ControllerManager, "kube-controller-manager"),
            (Component::Scheduler, "kube-scheduler"),
        ] {
            let fill = if c == Component::Apiserver { no_apis } else { no_cm };
            if !fill {
                continue;
            }
            for i in cp.of(c) {
                if let Some(v) = &i.version {
                    versions.push(ComponentVersion::new(name, &i.host, v));
                }
            }
        }
    }
    for c in ["kube-controller-manager", "kube-scheduler"] {
        if !versions.iter().any(|v| v.component == c) {
            notes
                .push(format!("no {c} version found (no static pod with a version tag, no rig instance): not checked"));
        }
    }
    if nodes.is_empty() {
        notes.push(
            "no Node objects (the rig runs no kubelet): the kubelet and kube-proxy rules were not checked".into(),
        );
    }
    if let Some(k) = kubectl_version(&mut notes).await {
        versions.push(k);
    }
    for v in &versions {
        st.log(format!("{} on {}: {}", v.component, v.node, v.version));
    }
    for n in &notes {
        st.log(n);
    }
    let mut o = skew::outcome(&versions).map_err(|e| StepEnd::Error(format!("cannot apply the skew policy: {e}")))?;
    if !notes.is_empty() {
        o.evidence.push_str(&format!("not checked / how read:\n  {}\n", notes.join("\n  ")));
    }
    // an apiserver whose version could not be read at all is untested: the apiserver rules
    // passing over the others must not read as a pass for every apiserver
    let unread: Vec<String> =
        notes.iter().filter(|n| n.starts_with("apiserver ") && n.contains(": version not read: ")).cloned().collect();
    super::certs::with_untested(o, unread)
}

/// Whether a failed `kubeadm …` on a node means there is no kubeadm there.
fn kubeadm_missing(status: &str, stderr: &str) -> bool {
    status == "exit status: 127"
        || [
            "kubeadm: not found",
            "kubeadm: command not found",
            "executable file not found",
            "failed to execute kubeadm",
        ]
        .iter()
        .any(|w| stderr.contains(w))
}

async fn upgrade(ctx: &RunContext, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    kubecerts::needs_kubeadm(&ctx.target)?;
    let kv = kubecerts::kube_view(ctx, st).await?;
    let mut why = Vec::new();
    let mut chosen = None;
    for (node, a) in kubecerts::node_accesses(&ctx.target, &kv.discovery) {
        match a {
            Ok(a) => {
                chosen = Some((node, a));
                break;
            }
            Err(e) => why.push(e),
        }
    }
    let Some((node, access)) = chosen else {
        return Err(StepEnd::Skip(format!(
            "needs node access to a control-plane node to run kubeadm ({})",
            if why.is_empty() { "no control-plane node found".into() } else { why.join("; ") }
        )));
    };
    (ctx.progress)(&st.name, &format!("kubeadm upgrade plan on {node}"));
    let plan_text = match access.exec_with(Some(&kv.client), &["kubeadm", "upgrade", "plan"], NODE_DEADLINE).await {
        Ok(o) => format!("{}\n{}", o.stdout, o.stderr),
        // kubeadm itself missing (exit 127, or the shells', docker's and nsenter's words for
        // it); not any "not found" (a missing kubeadm-config ConfigMap is kubeadm's own error)
        Err(crate::node::NodeError::Failed { stderr, status, .. }) if kubeadm_missing(&status, &stderr) => {
            return Err(StepEnd::Skip(format!("needs kubeadm on {node}: {stderr}")))
        }
        Err(e) => {
            return Err(StepEnd::Error(format!("kubeadm upgrade plan on {node} failed: {}", crate::exit::chain(&e))))
        }
    };
    let plan = kubeadm::parse_upgrade_plan(&plan_text);
    st.log(format!(
        "kubeadm upgrade plan on {node}: cluster {:?}, kubeadm {:?}, suggests {:?}",
        plan.cluster_version, plan.kubeadm_version, plan.suggested
    ));
    let current = plan.cluster_version.clone().or_else(|| kv.discovery.server_version.clone()).ok_or_else(|| {
        StepEnd::Error(format!("neither `kubeadm upgrade plan` on {node} nor /version told the cluster's version"))
    })?;
    let target = kubeadm::skipping_target(&current)
        .ok_or_else(|| StepEnd::Error(format!("the cluster version `{current}` is not vMAJOR.MINOR.PATCH")))?;
    (ctx.progress)(&st.name, &format!("kubeadm upgrade apply {target} --dry-run on {node}"));
    // the dry run is the only thing run: it writes nothing to the node or the cluster
    let (ok, out) = match access
        .exec_with(Some(&kv.client), &["kubeadm", "upgrade", "apply", &target, "--dry-run", "--yes"], NODE_DEADLINE)
        .await
    {
        Ok(o) => (true, format!("{}\n{}", o.stdout, o.stderr)),
        Err(crate::node::NodeError::Failed { stderr, .. }) => (false, stderr),
        Err(e) => {
            return Err(StepEnd::Error(format!(
                "kubeadm upgrade apply {target} --dry-run on {node}: {}",
                crate::exit::chain(&e)
            )))
        }
    };
    let answer = kubeadm::classify_apply(ok, &out);
    st.timeline.record("kubeadm", format!("upgrade apply {target} --dry-run on {node}: {answer:?}"));
    kubeadm::upgrade_verdict(&node, &plan, &target, &answer).map_err(StepEnd::Error)
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_a_missing_kubeadm_is_a_skip() {
        assert!(kubeadm_missing("exit status: 127", "sh: 1: kubeadm: not found"));
        assert!(kubeadm_missing(
            "exit status: 126",
            "OCI runtime exec failed: exec: \"kubeadm\": executable file not found in $PATH"
        ));
        // kubeadm's own error about its ConfigMap is not "no kubeadm"
        assert!(!kubeadm_missing("exit status: 1", "[upgrade/config] FATAL: configmaps \"kubeadm-config\" not found"));
    }
    use super::*;
    use crate::target::discovery::tests::{fixture, fixture_discovery, kubeadm_routes, mock_client, route};

    #[test]
    fn image_tags_and_version_answers() {
        assert_eq!(image_version("registry.k8s.io/kube-proxy:v1.29.2").as_deref(), Some("v1.29.2"));
        assert_eq!(image_version("localhost:5000/kube-proxy:v1.28.4+k3s1").as_deref(), Some("v1.28.4+k3s1"));
        assert_eq!(image_version("registry.k8s.io/kube-proxy@sha256:abc"), None);
        assert_eq!(image_version("localhost:5000/kube-proxy:latest"), None);
        assert_eq!(git_version(&fixture("version-1.29.json")).as_deref(), Some("v1.29.2"));
        let kubectl = r#"{"clientVersion":{"major":"1","minor":"30","gitVersion":"v1.30.1","gitCommit":"6911225c","gitTreeState":"clean","buildDate":"2024-05-14T10:50:53Z","goVersion":"go1.22.2","compiler":"gc","platform":"linux/amd64"},"kustomizeVersion":"v5.0.4-0.20230601165947-6ce0bf390ce3"}"#;
        assert_eq!(git_version(kubectl).as_deref(), Some("v1.30.1"));
    }

    /// Through kube's mock service with real-shaped Node and Pod lists: a worker whose kubelet
    /// is newer than the apiservers fails, naming the node and both versions.
    #[tokio::test]
    async fn a_kubelet_newer_than_its_apiserver_fails() {
        let mut routes = kubeadm_routes("pods-kube-system-stacked.json");
        routes.push(route("/api/v1/nodes", None, 200, fixture("nodes-all-1.29-w2-kubelet-newer.json")));
        routes.push(route(
            "/api/v1/namespaces/kube-system/pods",
            Some("labelSelector=k8s-app%3Dkube-proxy"),
            200,
            fixture("pods-kube-proxy.json"),
        ));
        let (client, seen, _t) = mock_client(routes);
        let (nodes, pods) = read_nodes(&client).await.unwrap();
        assert!(seen.lock().unwrap().iter().any(|r| r.contains("labelSelector=k8s-app%3Dkube-proxy")));
        let (mut vs, notes) = node_versions(&nodes, &pods);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(vs.iter().filter(|v| v.component == "kubelet").count(), 5);
        assert!(vs.contains(&ComponentVersion::new("kube-proxy", "w-1", "v1.27.13")));
        let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
        let (sv, _) = static_pod_versions(&d);
        assert_eq!(sv.len(), 6);
        let mut all: Vec<ComponentVersion> =
            ["cp-1", "cp-2", "cp-3"].iter().map(|n| ComponentVersion::new("kube-apiserver", n, "v1.29.2")).collect();
        all.append(&mut vs);
        all.extend(sv);
        let o = skew::outcome(&all).unwrap();
        assert!(!o.passed);
        assert_eq!(
            o.message,
            "kubelet on w-2 is v1.30.1, 1 minor version(s) newer than kube-apiserver v1.29.2 on cp-1 (must not be newer than any kube-apiserver)"
        );
        // the same cluster with w-2's kubelet at the apiservers' version passes
        let fixed: Vec<ComponentVersion> = all
            .into_iter()
            .map(|v| {
                if v.node == "w-2" && v.component == "kubelet" {
                    ComponentVersion::new("kubelet", "w-2", "v1.29.2")
                } else {
                    v
                }
            })
            .collect();
        assert!(skew::outcome(&fixed).unwrap().passed);
    }

    #[test]
    fn without_kube_proxy_pods_the_deprecated_node_field_is_used_and_said() {
        let nodes: k8s_openapi::List<Node> = serde_json::from_str(&fixture("nodes-kubeadm-1.29.json")).unwrap();
        let (vs, notes) = node_versions(&nodes.items, &[]);
        assert_eq!(vs.iter().filter(|v| v.component == "kube-proxy").count(), 3);
        assert!(notes[0].contains("no kube-proxy pods"), "{notes:?}");
    }
}
