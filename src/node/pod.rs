//! The `pod` node access backend: a short-lived privileged pod with hostPID, hostNetwork and
//! hostIPC, pinned to one node with `nodeName`, in which commands run through the API's exec
//! as `nsenter -t 1 -m -u -i -n -p -- …` (in the host's namespaces, as root).
//!
//! The pod is created on first use and reused; it removes itself after
//! [`POD_LIFETIME_SECS`] (its `sleep` ends and `activeDeadlineSeconds` stops it) even when
//! hadrill dies, and [`delete`] / [`delete_all`] remove it on revert and in `recover`.
//! The exec goes through the node's kubelet: with the kubelet stopped, this backend cannot
//! reach the node (faults that stop the kubelet must heal themselves on the node).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SecurityContext, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use kube::Client;
use tokio::io::AsyncReadExt;

use super::{NodeError, Output};

/// The image used when none is configured (busybox has `nsenter` and `sleep`).
pub const DEFAULT_IMAGE: &str = "docker.io/library/busybox:1.36";
/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
/// How long an access pod may live before it stops itself.
pub const POD_LIFETIME_SECS: i64 = 3600;
/// How long to wait for the pod to run (image pull included).
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// The label that marks every pod hadrill creates for node access.
pub const LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "hadrill");
pub const ROLE_LABEL: (&str, &str) = ("hadrill.io/role", "node-access");
const CONTAINER: &str = "nsenter";

/// The access pod's name for a node (a DNS subdomain, like the node name itself).
pub fn pod_name(node: &str) -> String {
    format!("hadrill-node-access-{node}")
}

/// What runs inside the pod: `argv` in the namespaces of the host's PID 1.
pub fn nsenter_argv(argv: &[&str]) -> Vec<String> {
    ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--"]
        .iter()
        .chain(argv.iter())
        .map(|s| s.to_string())
        .collect()
}

/// The pod spec (pure).
pub fn pod_spec(node: &str, namespace: &str, image: &str) -> Pod {
    let labels: BTreeMap<String, String> =
        [LABEL, ROLE_LABEL].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(node)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "hadrill.io/purpose".to_string(),
                format!("node access to {node} for hadrill faults; deleted on revert, stops itself after {POD_LIFETIME_SECS}s"),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            host_pid: Some(true),
            host_network: Some(true),
            host_ipc: Some(true),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(POD_LIFETIME_SECS),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // the node may be tainted NoSchedule (control plane) or NoExecute (unreachable)
            tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(image.to_string()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec!["sleep".into(), POD_LIFETIME_SECS.to_string()]),
                security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn perr(node: &str, m: impl Into<String>) -> NodeError {
    NodeError::Pod { node: format!("node {node} (pod access)"), message: m.into() }
}

fn phase(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into())
}

async fn bounded<T>(
    node: &str,
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(Duration::from_secs(15), f).await {
        Err(_) => Err(perr(node, format!("{what}: no answer within 15s"))),
        Ok(r) => r.map_err(|e| perr(node, format!("{what}: {}", crate::exit::chain(&e)))),
    }
}

/// Makes sure the access pod runs on `node`; creates it when needed.
pub async fn ensure(client: &Client, node: &str, namespace: &str, image: &str) -> Result<(), NodeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = pod_name(node);
    if let Some(p) = bounded(node, "get the access pod", pods.get_opt(&name)).await? {
        match phase(&p).as_str() {
            "Running" => return Ok(()),
            "Pending" => {}
            _ => {
                // stopped by its deadline: replace it
                delete(client, node, namespace).await?;
            }
        }
    }
    if bounded(node, "get the access pod", pods.get_opt(&name)).await?.is_none() {
        bounded(node, "create the access pod", pods.create(&PostParams::default(), &pod_spec(node, namespace, image)))
            .await?;
    }
    let last = std::sync::Mutex::new(String::from("not seen yet"));
    let running = crate::engine::poll(START_DEADLINE, Duration::from_millis(500), || async {
        match tokio::time::timeout(Duration::from_secs(10), pods.get_opt(&name)).await {
            Ok(Ok(Some(p))) => {
                let ph = phase(&p);
                *last.lock().unwrap() = ph.clone();
                (ph == "Running").then_some(())
            }
            _ => None,
        }
    })
    .await;
    running.ok_or_else(|| {
        perr(
            node,
            format!(
                "access pod {namespace}/{name} not running within {START_DEADLINE:?} (phase {})",
                last.lock().unwrap()
            ),
        )
    })
}

/// Runs `argv` on the node through the access pod, at most `timeout` for the command.
pub async fn exec(
    client: &Client,
    node: &str,
    namespace: &str,
    image: &str,
    argv: &[&str],
    timeout: Duration,
) -> Result<Output, NodeError> {
    ensure(client, node, namespace, image).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let full = nsenter_argv(argv);
    let command = argv.join(" ");
    let nodelabel = format!("node {node} (pod access)");
    let run = async {
        let ap = AttachParams::default().container(CONTAINER).stdin(false).stdout(true).stderr(true);
        let mut p = pods
            .exec(&pod_name(node), full.clone(), &ap)
            .await
            .map_err(|e| perr(node, format!("exec: {}", crate::exit::chain(&e))))?;
        let mut so = p.stdout().ok_or_else(|| perr(node, "exec: no stdout stream"))?;
        let mut se = p.stderr().ok_or_else(|| perr(node, "exec: no stderr stream"))?;
        let status = p.take_status().ok_or_else(|| perr(node, "exec: no status channel"))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (r1, r2) = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        r1.and(r2).map_err(|e| perr(node, format!("exec: reading output: {e}")))?;
        let st = status.await;
        let _ = p.join().await;
        Ok::<_, NodeError>((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).trim().to_string(),
            st,
        ))
    };
    let (stdout, stderr, st) = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Err(NodeError::Timeout { node: nodelabel, command, timeout }),
        Ok(r) => r?,
    };
    match exit_status(st.as_ref()) {
        Ok(()) => Ok(Output { stdout, stderr }),
        Err(status) => Err(NodeError::Failed { node: nodelabel, command, status, stderr }),
    }
}

/// Reads the exec's final Status: Ok for Success, else the exit code or the message.
pub fn exit_status(st: Option<&Status>) -> Result<(), String> {
    let Some(st) = st else {
        return Err("no exit status (the exec stream ended without one)".into());
    };
    if st.status.as_deref() == Some("Success") {
        return Ok(());
    }
    let code = st
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.clone());
    Err(match code {
        Some(c) => format!("exit status: {c}"),
        None => format!("failure: {}", st.message.clone().unwrap_or_default()),
    })
}

/// Deletes the access pod of `node` (absent is fine) and waits until it is gone.
pub async fn delete(client: &Client, node: &str, namespace: &str) -> Result<(), NodeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = pod_name(node);
    match tokio::time::timeout(Duration::from_secs(15), pods.delete(&name, &DeleteParams::default().grace_period(0)))
        .await
    {
        Err(_) => return Err(perr(node, "delete the access pod: no answer within 15s")),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => return Ok(()),
        Ok(Err(e)) => return Err(perr(node, format!("delete the access pod: {}", crate::exit::chain(&e)))),
        Ok(Ok(_)) => {}
    }
    crate::engine::poll(Duration::from_secs(60), Duration::from_millis(500), || async {
        matches!(tokio::time::timeout(Duration::from_secs(10), pods.get_opt(&name)).await, Ok(Ok(None))).then_some(())
    })
    .await
    .ok_or_else(|| perr(node, format!("access pod {namespace}/{name} still exists 60s after its deletion")))
}

/// Deletes every access pod hadrill created in `namespace` (for `recover`). Returns their names.
pub async fn delete_all(client: &Client, namespace: &str) -> Result<Vec<String>, NodeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let sel = format!("{}={},{}={}", LABEL.0, LABEL.1, ROLE_LABEL.0, ROLE_LABEL.1);
    let list =
        bounded(&format!("namespace {namespace}"), "list access pods", pods.list(&ListParams::default().labels(&sel)))
            .await?;
    // one pod that cannot be deleted does not keep the others (privileged, hostPID) around
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for p in list.items {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            let name = p.metadata.name.unwrap_or_default();
            match delete(client, &node, namespace).await {
                Ok(()) => names.push(name),
                Err(e) => failures.push(format!("{name}: {}", crate::exit::chain(&e))),
            }
        }
    }
    if failures.is_empty() {
        Ok(names)
    } else {
        Err(perr(
            &format!("namespace {namespace}"),
            format!(
                "deleted {} access pod(s){}; could not delete {}",
                names.len(),
                if names.is_empty() { String::new() } else { format!(" ({})", names.join(", ")) },
                failures.join("; ")
            ),
        ))
    }
}

/// Whether a node access config can start access pods (the `pod` backend anywhere in it).
pub fn uses_pods(cfg: &super::select::NodeAccessConfig) -> bool {
    use super::select::Backend;
    cfg.backend == Backend::Pod || cfg.nodes.values().any(|o| o.backend == Some(Backend::Pod))
}

/// The namespace access pods are started in.
pub fn namespace(cfg: &super::select::NodeAccessConfig) -> String {
    cfg.pod.as_ref().and_then(|p| p.namespace.clone()).unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

/// At the end of a run, and in `recover`: deletes every access pod hadrill left in the
/// namespace the config names (nothing is asked when the config uses no `pod` backend).
pub async fn cleanup(client: &Client, cfg: &super::select::NodeAccessConfig) -> Result<Vec<String>, NodeError> {
    if !uses_pods(cfg) {
        return Ok(Vec::new());
    }
    delete_all(client, &namespace(cfg)).await
}

/// The end of a run: the access pods of the target are deleted (a failure is a warning: they
/// stop themselves after [`POD_LIFETIME_SECS`], and `hadrill recover` deletes them too).
pub async fn cleanup_after_run(t: &crate::target::Target) {
    let (Some(k), Some(cfg)) = (&t.kube, &t.node_access) else { return };
    if !uses_pods(cfg) {
        return;
    }
    let result = match Client::try_from(k.config.clone()) {
        Ok(c) => cleanup(&c, cfg).await.map_err(|e| crate::exit::chain(&e)),
        Err(e) => Err(crate::exit::chain(&e)),
    };
    match result {
        Ok(names) if !names.is_empty() => tracing::info!("deleted the access pods {}", names.join(", ")),
        Ok(_) => {}
        Err(e) => eprintln!(
            "hadrill: could not delete the node access pods ({e}); `hadrill recover --kubeconfig …` deletes them"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::discovery::tests::mock_client;

    #[test]
    fn spec_is_privileged_host_namespaced_and_pinned() {
        let p = pod_spec("cp-2", "hadrill-system", "registry.local/busybox:1.36");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["metadata"]["name"], "hadrill-node-access-cp-2");
        assert_eq!(v["metadata"]["namespace"], "hadrill-system");
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "hadrill");
        assert_eq!(v["metadata"]["labels"]["hadrill.io/role"], "node-access");
        let s = &v["spec"];
        assert_eq!(s["nodeName"], "cp-2");
        assert_eq!(s["hostPID"], true);
        assert_eq!(s["hostNetwork"], true);
        assert_eq!(s["hostIPC"], true);
        assert_eq!(s["restartPolicy"], "Never");
        assert_eq!(s["activeDeadlineSeconds"], 3600);
        assert_eq!(s["automountServiceAccountToken"], false);
        assert_eq!(s["tolerations"], serde_json::json!([{"operator": "Exists"}]));
        let c = &s["containers"][0];
        assert_eq!(c["name"], "nsenter");
        assert_eq!(c["image"], "registry.local/busybox:1.36");
        assert_eq!(c["command"], serde_json::json!(["sleep", "3600"]));
        assert_eq!(c["securityContext"]["privileged"], true);
        assert!(s.get("schedulerName").is_none() && s.get("serviceAccountName").is_none());
    }

    #[test]
    fn commands_enter_the_hosts_namespaces() {
        assert_eq!(
            nsenter_argv(&["systemctl", "stop", "kubelet"]),
            ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "systemctl", "stop", "kubelet"]
        );
    }

    #[test]
    fn exit_status_reads_the_exec_status_object() {
        let ok: Status = serde_json::from_value(serde_json::json!({"metadata":{},"status":"Success"})).unwrap();
        assert_eq!(exit_status(Some(&ok)), Ok(()));
        // what the kubelet sends for `exit 3` (NonZeroExitCode with an ExitCode cause)
        let bad: Status = serde_json::from_value(serde_json::json!({
            "metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
            "reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}})).unwrap();
        assert_eq!(exit_status(Some(&bad)), Err("exit status: 3".into()));
        assert!(exit_status(None).is_err());
    }

    #[tokio::test]
    async fn ensure_creates_the_pod_when_absent_and_sends_the_spec() {
        // GET → 404, POST → the created pod, GET → Running
        let running = serde_json::to_string(&{
            let mut p = pod_spec("cp-1", "kube-system", DEFAULT_IMAGE);
            p.status =
                Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Running".into()), ..Default::default() });
            p
        })
        .unwrap();
        let (client, seen, _t) = {
            use http::{Request, Response};
            use kube::client::Body;
            let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
            let seen2 = seen.clone();
            let t = tokio::spawn(async move {
                let mut handle = std::pin::pin!(handle);
                let mut created = false;
                while let Some((req, send)) = handle.next_request().await {
                    let method = req.method().to_string();
                    let body = req.into_body().collect_bytes().await.unwrap();
                    seen2.lock().unwrap().push((method.clone(), String::from_utf8_lossy(&body).into_owned()));
                    let (code, out) = match (method.as_str(), created) {
                        ("GET", false) => {
                            (404, crate::target::discovery::tests::not_found("hadrill-node-access-cp-1", "pods"))
                        }
                        ("POST", _) => {
                            created = true;
                            (201, String::from_utf8_lossy(&body).into_owned())
                        }
                        _ => (200, running.clone()),
                    };
                    send.send_response(Response::builder().status(code).body(Body::from(out.into_bytes())).unwrap());
                }
            });
            (Client::new(svc, "default"), seen, t)
        };
        ensure(&client, "cp-1", "kube-system", DEFAULT_IMAGE).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(&methods[..3], ["GET", "GET", "POST"], "{methods:?}");
        let posted: serde_json::Value = serde_json::from_str(&seen[2].1).unwrap();
        assert_eq!(posted["spec"]["nodeName"], "cp-1");
        assert_eq!(posted["spec"]["containers"][0]["securityContext"]["privileged"], true);
    }

    /// A mock API that knows which access pods exist: LIST by label, DELETE, then GET → 404.
    fn stateful_api(
        pods: Vec<Pod>,
    ) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let t = tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            let mut live = pods;
            while let Some((req, send)) = handle.next_request().await {
                let (m, path, q) = (
                    req.method().to_string(),
                    req.uri().path().to_string(),
                    req.uri().query().unwrap_or("").to_string(),
                );
                seen2.lock().unwrap().push(format!("{m} {path}?{q}"));
                let name = path.rsplit('/').next().unwrap_or("").to_string();
                let (code, body) = match m.as_str() {
                    "GET" if path.ends_with("/pods") => {
                        let sel = q.contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dhadrill%2Chadrill.io%2Frole%3Dnode-access",
                        );
                        let items = if sel { live.clone() } else { vec![] };
                        (200, serde_json::json!({"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":items}).to_string())
                    }
                    "DELETE" | "GET" => {
                        match live.iter().position(|p| p.metadata.name.as_deref() == Some(name.as_str())) {
                            Some(i) if m == "DELETE" => (200, serde_json::to_string(&live.remove(i)).unwrap()),
                            Some(i) => (200, serde_json::to_string(&live[i]).unwrap()),
                            None => (404, crate::target::discovery::tests::not_found(&name, "pods")),
                        }
                    }
                    _ => (405, String::new()),
                };
                send.send_response(Response::builder().status(code).body(Body::from(body.into_bytes())).unwrap());
            }
        });
        (Client::new(svc, "default"), seen, t)
    }

    #[tokio::test]
    async fn cleanup_deletes_every_access_pod_it_finds_by_label() {
        let pods =
            vec![pod_spec("cp-1", "hadrill-system", DEFAULT_IMAGE), pod_spec("cp-3", "hadrill-system", DEFAULT_IMAGE)];
        let (client, seen, _t) = stateful_api(pods);
        let cfg: crate::node::select::NodeAccessConfig = serde_saphyr::from_str(
            "backend: ssh
nodes:
  cp-3:
    backend: pod
pod:
  namespace: hadrill-system
",
        )
        .unwrap();
        let mut gone = cleanup(&client, &cfg).await.unwrap();
        gone.sort();
        assert_eq!(gone, ["hadrill-node-access-cp-1", "hadrill-node-access-cp-3"]);
        let seen = seen.lock().unwrap().clone();
        assert!(seen[0].starts_with("GET /api/v1/namespaces/hadrill-system/pods?"), "{seen:?}");
        for n in ["cp-1", "cp-3"] {
            assert!(
                seen.contains(&format!("DELETE /api/v1/namespaces/hadrill-system/pods/hadrill-node-access-{n}?")),
                "{seen:?}"
            );
        }
        // nothing configured for pods: not a single request
        let (client, seen, _t) = stateful_api(vec![pod_spec("cp-1", "kube-system", DEFAULT_IMAGE)]);
        assert!(cleanup(&client, &Default::default()).await.unwrap().is_empty());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_treats_absent_as_done() {
        let (client, seen, _t) = mock_client(vec![]);
        delete(&client, "cp-9", "kube-system").await.unwrap();
        assert_eq!(seen.lock().unwrap()[0], "DELETE /api/v1/namespaces/kube-system/pods/hadrill-node-access-cp-9?");
    }

    #[tokio::test]
    async fn pod_access_without_a_client_says_what_it_needs() {
        let a = super::super::NodeAccess::Pod {
            node: "cp-1".into(),
            namespace: "kube-system".into(),
            image: DEFAULT_IMAGE.into(),
        };
        let e = a.exec(&["true"], Duration::from_secs(1)).await.unwrap_err().to_string();
        assert!(e.contains("needs a Kubernetes client"), "{e}");
    }
}
