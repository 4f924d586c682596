//! Discovery on kube's own test double: the real client and code path, with the transport
//! replaced by `tower_test::mock` answering with payloads shaped like a kubeadm 1.29 API's.

use super::*;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use std::sync::{Arc, Mutex};

pub(crate) fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// A route: the request path (and the query it must carry, if any) → status and body.
pub(crate) struct Route {
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub body: String,
}

pub(crate) fn route(path: &str, query: Option<&str>, status: u16, body: String) -> Route {
    Route { path: path.into(), query: query.map(str::to_string), status, body }
}

pub(crate) fn not_found(name: &str, kind: &str) -> String {
    serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message": format!("{kind} \"{name}\" not found"),"reason":"NotFound","details":{"name":name,"group":"coordination.k8s.io","kind":kind},"code":404})
    .to_string()
}

/// A kube client whose transport is a mock serving `routes`; every request seen is recorded
/// as "METHOD path?query". An unknown path gets a 404 Status, like the real API.
pub(crate) fn mock_client(routes: Vec<Route>) -> (Client, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            seen2.lock().unwrap().push(format!("{} {}?{}", req.method(), path, query));
            let hit = routes
                .iter()
                .find(|r| r.path == path && r.query.as_ref().is_none_or(|q| query.split('&').any(|kv| kv == q)));
            let (status, body) = match hit {
                Some(r) => (r.status, r.body.clone()),
                None => (404, not_found(&path, "unknown")),
            };
            let resp = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(body.into_bytes()))
                .unwrap();
            send.send_response(resp);
        }
    });
    (Client::new(svc, "default"), seen, task)
}

pub(crate) fn kubeadm_routes(pods: &str) -> Vec<Route> {
    vec![
        route("/version", None, 200, fixture("version-1.29.json")),
        route(
            "/api/v1/nodes",
            Some("labelSelector=node-role.kubernetes.io%2Fcontrol-plane"),
            200,
            fixture("nodes-kubeadm-1.29.json"),
        ),
        route(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some("labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes"),
            200,
            fixture("endpointslices-kubernetes.json"),
        ),
        route("/api/v1/namespaces/kube-system/pods", Some("labelSelector=tier%3Dcontrol-plane"), 200, fixture(pods)),
        route(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager",
            None,
            200,
            fixture("lease-kube-controller-manager.json"),
        ),
        route(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler",
            None,
            200,
            fixture("lease-kube-scheduler.json"),
        ),
    ]
}

pub(crate) async fn discover_fixture(pods: &str, server: &str) -> Discovery {
    let (client, _, _t) = mock_client(kubeadm_routes(pods));
    discover(&client, server).await.expect("discovery over the mock")
}

#[tokio::test]
async fn stacked_kubeadm_cluster_is_discovered() {
    let (client, seen, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    let d = discover(&client, "https://10.0.0.10:6443").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(d.server_version.as_deref(), Some("v1.29.2"));
    assert_eq!(d.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["cp-1", "cp-2", "cp-3"]);
    assert_eq!(d.nodes[1].internal_ip(), Some("10.0.0.12"));
    assert_eq!(d.nodes[0].ready, Some(true));
    assert_eq!(d.nodes[0].kubelet_version, "v1.29.2");
    // apiservers: the EndpointSlice addresses, mapped back to the nodes
    let a: Vec<(String, u16, Option<String>)> =
        d.apiservers.iter().map(|a| (a.address.clone(), a.port, a.node.clone())).collect();
    assert_eq!(
        a,
        [
            ("10.0.0.11".to_string(), 6443, Some("cp-1".to_string())),
            ("10.0.0.12".to_string(), 6443, Some("cp-2".to_string())),
            ("10.0.0.13".to_string(), 6443, Some("cp-3".to_string())),
        ]
    );
    assert_eq!(d.apiservers[0].url(), "https://10.0.0.11:6443");
    // static pods, with their flags
    assert_eq!(d.static_pods.len(), 12);
    let api = d.static_pods.iter().find(|p| p.name == "kube-apiserver-cp-2").unwrap();
    assert_eq!(api.node, "cp-2");
    assert_eq!(api.component, "kube-apiserver");
    assert_eq!(api.flag("advertise-address"), Some("10.0.0.12"));
    assert_eq!(api.flag("authorization-mode"), Some("Node,RBAC"));
    assert_eq!(api.image, "registry.k8s.io/kube-apiserver:v1.29.2");
    let kcm = d.static_pods.iter().find(|p| p.name == "kube-controller-manager-cp-1").unwrap();
    assert_eq!(kcm.flag("leader-elect"), Some("true"));
    assert_eq!(kcm.flag("controllers"), Some("*,bootstrapsigner,tokencleaner"));
    // etcd: stacked, advertised client URLs, TLS paths from the apiserver
    assert_eq!(d.etcd.topology, EtcdTopologyKind::Stacked);
    assert_eq!(d.etcd.endpoints, ["https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"]);
    assert_eq!(d.etcd.members[2], ("cp-3".into(), "etcd-cp-3".into(), "cp-3".into()));
    assert_eq!(d.etcd.apiserver_etcd_servers, ["https://127.0.0.1:2379"]);
    let tls = d.etcd.client_tls.clone().unwrap();
    assert_eq!(tls.node, "cp-1");
    assert_eq!(tls.ca, "/etc/kubernetes/pki/etcd/ca.crt");
    assert_eq!(tls.cert.as_deref(), Some("/etc/kubernetes/pki/apiserver-etcd-client.crt"));
    assert_eq!(tls.key.as_deref(), Some("/etc/kubernetes/pki/apiserver-etcd-client.key"));
    // leases
    let kcm = &d.leases[0];
    assert_eq!(kcm.name, "kube-controller-manager");
    assert_eq!(kcm.holder.as_deref(), Some("cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55"));
    assert_eq!(kcm.holder_node.as_deref(), Some("cp-2"));
    assert_eq!(kcm.duration, Some(Duration::from_secs(15)));
    assert_eq!(kcm.renew_time.unwrap().to_rfc3339(), "2024-03-04T10:02:13.455213+00:00");
    assert_eq!(d.leases[1].holder_node.as_deref(), Some("cp-1"));
    // the load balancer is not a node
    assert_eq!(d.load_balancer.host, "10.0.0.10");
    assert_eq!(d.load_balancer.node, None);
}

#[tokio::test]
async fn external_etcd_comes_from_the_apiserver_flags() {
    let d = discover_fixture("pods-kube-system-external.json", "https://cp.example.com:6443").await;
    assert_eq!(d.etcd.topology, EtcdTopologyKind::External);
    assert_eq!(d.etcd.endpoints, ["https://10.0.0.21:2379", "https://10.0.0.22:2379", "https://10.0.0.23:2379"]);
    assert!(d.etcd.members.is_empty());
    assert!(d.etcd.client_tls.is_some());
}

#[tokio::test]
async fn a_server_that_is_a_node_address_is_reported_as_that_node() {
    let d = discover_fixture("pods-kube-system-stacked.json", "https://10.0.0.12:6443").await;
    assert_eq!(d.load_balancer.node.as_deref(), Some("cp-2"));
    let d = discover_fixture("pods-kube-system-stacked.json", "https://cp-3:6443").await;
    assert_eq!(d.load_balancer.node.as_deref(), Some("cp-3"), "Hostname addresses count too");
}

#[tokio::test]
async fn a_missing_lease_is_data_not_an_error() {
    let mut routes = kubeadm_routes("pods-kube-system-stacked.json");
    routes.retain(|r| !r.path.ends_with("/leases/kube-scheduler"));
    let (client, _, _t) = mock_client(routes);
    let d = discover(&client, "https://10.0.0.10:6443").await.unwrap();
    assert!(d.leases[0].exists);
    assert!(!d.leases[1].exists);
    assert_eq!(d.leases[1].holder, None);
}

#[tokio::test]
async fn forbidden_names_the_resource_and_the_permission() {
    let mut routes = kubeadm_routes("pods-kube-system-stacked.json");
    routes.retain(|r| r.path != "/api/v1/nodes");
    routes.push(route("/api/v1/nodes", None, 403, fixture("status-403-nodes.json")));
    let (client, _, _t) = mock_client(routes);
    let e = discover(&client, "https://10.0.0.10:6443").await.unwrap_err();
    assert!(e.is_permission());
    let s = e.to_string();
    assert!(s.starts_with("list nodes (cluster-wide) is forbidden"), "{s}");
    assert!(s.contains("grant `list` on `nodes`") && s.contains("cannot list resource \"nodes\""), "{s}");
}

#[tokio::test]
async fn forbidden_leases_name_the_api_group() {
    let mut routes = kubeadm_routes("pods-kube-system-stacked.json");
    routes.retain(|r| !r.path.contains("/leases/"));
    let body = serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message":"leases.coordination.k8s.io \"kube-controller-manager\" is forbidden: User \"ci\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-system\"",
        "reason":"Forbidden","details":{"name":"kube-controller-manager","group":"coordination.k8s.io","kind":"leases"},"code":403}).to_string();
    routes.push(route(
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager",
        None,
        403,
        body,
    ));
    let (client, _, _t) = mock_client(routes);
    let s = discover(&client, "https://10.0.0.10:6443").await.unwrap_err().to_string();
    assert!(s.starts_with("get leases (namespace kube-system) is forbidden"), "{s}");
    assert!(s.contains("API group \"coordination.k8s.io\""), "{s}");
}

#[test]
fn flags_parse_like_the_components_do() {
    let argv: Vec<String> = [
        "etcd",
        "--name=cp-1",
        "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.11:2379",
        "--client-cert-auth",
        "positional",
        "--x=a=b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = parse_flags(&argv);
    assert_eq!(f.get("name").map(String::as_str), Some("cp-1"));
    assert_eq!(f.get("client-cert-auth").map(String::as_str), Some("true"));
    assert_eq!(f.get("x").map(String::as_str), Some("a=b"));
    assert_eq!(f.len(), 4);
}

#[test]
fn host_port_handles_ipv6_names_and_defaults() {
    assert_eq!(host_port("https://[fd00::10]:6443"), Some(("fd00::10".into(), 6443)));
    assert_eq!(host_port("https://lb.example.com"), Some(("lb.example.com".into(), 443)));
    assert_eq!(host_port("https://127.0.0.1:39113/"), Some(("127.0.0.1".into(), 39113)));
    assert_eq!(host_port("not a url"), None);
}

#[test]
fn local_etcd_servers_without_pods_is_unknown_not_external() {
    let pods = vec![StaticPod {
        name: "kube-apiserver-cp-1".into(),
        node: "cp-1".into(),
        component: "kube-apiserver".into(),
        image: String::new(),
        ready: true,
        phase: "Running".into(),
        flags: parse_flags(&["--etcd-servers=https://127.0.0.1:2379".to_string()]),
    }];
    let e = etcd_topology(&pods);
    assert_eq!(e.topology, EtcdTopologyKind::Unknown);
    assert!(e.reason.contains("outside Kubernetes"), "{}", e.reason);
    assert_eq!(etcd_topology(&[]).topology, EtcdTopologyKind::Unknown);
}

#[tokio::test]
async fn render_prints_what_was_found() {
    let d = discover_fixture("pods-kube-system-stacked.json", "https://10.0.0.10:6443").await;
    let now = DateTime::parse_from_rfc3339("2024-03-04T10:02:20Z").unwrap().with_timezone(&Utc);
    let text = render(&d, now);
    for needle in [
        "discovery (server https://10.0.0.10:6443, version v1.29.2):",
        "control-plane nodes (3):",
        "cp-1                 Ready    kubelet v1.29.2 InternalIP=10.0.0.11 Hostname=cp-1",
        "https://10.0.0.12:6443",
        "static control-plane pods (12):",
        "kube-scheduler-cp-3",
        "etcd: stacked (3 etcd static pod(s) on the control-plane nodes)",
        "endpoints: https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379",
        "member cp-2 in pod etcd-cp-2 on cp-2",
        "client TLS (read on cp-1 through node access): ca /etc/kubernetes/pki/etcd/ca.crt",
        "kube-controller-manager  holder cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55 (node cp-2) renewed 2024-03-04T10:02:13.455Z (6.5s ago) duration 15s transitions 2",
        "load balancer: https://10.0.0.10:6443 (host 10.0.0.10 port 6443): not the address of any control-plane node",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    let single = discover_fixture("pods-kube-system-stacked.json", "https://10.0.0.11:6443").await;
    assert!(render(&single, now).contains("NOT a load balancer: it is node cp-1's own address"));
}

fn items<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
    let v: serde_json::Value = serde_json::from_str(&fixture(name)).unwrap();
    serde_json::from_value(v["items"].clone()).unwrap()
}

/// The kubeadm fixtures assembled without the transport (for the pure checks' tests).
pub(crate) fn fixture_discovery(pods: &str, server: &str) -> Discovery {
    let leases: Vec<(String, Option<Lease>)> = LEASES
        .iter()
        .map(|n| (n.to_string(), Some(serde_json::from_str(&fixture(&format!("lease-{n}.json"))).unwrap())))
        .collect();
    assemble(
        server,
        Some("v1.29.2".into()),
        &items::<Node>("nodes-kubeadm-1.29.json"),
        &items::<EndpointSlice>("endpointslices-kubernetes.json"),
        &items::<Pod>(pods),
        &leases,
    )
}

#[tokio::test]
async fn assembling_the_fixtures_equals_discovering_them() {
    let via_api = discover_fixture("pods-kube-system-stacked.json", "https://10.0.0.10:6443").await;
    assert_eq!(fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443"), via_api);
}

#[test]
fn plan_text_adds_the_node_access_of_each_node() {
    let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
    let now = DateTime::parse_from_rfc3339("2024-03-04T10:02:20Z").unwrap().with_timezone(&Utc);
    let none = plan_text(&d, None, now);
    assert!(none.contains("cp-1                 none: no node access to cp-1: not a kind node"), "{none}");
    let cfg: crate::node::select::NodeAccessConfig =
        serde_saphyr::from_str("backend: ssh\nssh:\n  user: root\n  jump: bastion\n").unwrap();
    let ssh = plan_text(&d, Some(&cfg), now);
    assert!(ssh.contains("cp-3                 ssh root@10.0.0.13 via bastion"), "{ssh}");
    assert!(ssh.starts_with(&render(&d, now)));
}

/// Every request discovery makes is allowed by the ClusterRole the docs tell users to bind.
#[tokio::test]
async fn the_documented_cluster_role_covers_every_discovery_request() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rbac/hadrill-readonly.yaml"),
    )
    .unwrap();
    let role: ClusterRole = serde_saphyr::from_str(&text).unwrap();
    let rules = role.rules.unwrap();
    let allows = |verb: &str, group: &str, resource: &str| {
        rules.iter().any(|r| {
            r.verbs.iter().any(|v| v == verb)
                && r.api_groups.as_ref().is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == resource))
        })
    };
    let allows_url = |url: &str| {
        rules.iter().any(|r| {
            r.verbs.iter().any(|v| v == "get")
                && r.non_resource_urls.as_ref().is_some_and(|u| u.iter().any(|x| x == url))
        })
    };
    let (client, seen, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    discover(&client, "https://10.0.0.10:6443").await.unwrap();
    for req in seen.lock().unwrap().iter() {
        let (method, rest) = req.split_once(' ').unwrap();
        let path = rest.split('?').next().unwrap();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ok = match segs.as_slice() {
            ["version"] => allows_url("/version"),
            ["api", "v1", res] => allows("list", "", res),
            ["api", "v1", "namespaces", _, res] => allows("list", "", res),
            ["apis", group, _, "namespaces", _, res] => allows("list", group, res),
            ["apis", group, _, "namespaces", _, res, _name] => allows("get", group, res),
            _ => false,
        };
        assert!(ok && method == "GET", "{req} is not allowed by docs/rbac/hadrill-readonly.yaml");
    }
}
