//! The built-in `certs` (apiserver side) and `skew` cases run by the engine end to end —
//! kubeconfig, discovery, the cluster CA key from `--kube-ca-key`, minting, presenting, the
//! verdicts — against TEST DOUBLES of two apiservers (127.0.0.2 and 127.0.0.3) and a load
//! balancer (127.0.0.1) over real TLS (`apiserver_support`; no apiserver can run here). The
//! API answers are shaped like a kubeadm 1.29 cluster's.

mod apiserver_support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use apiserver_support::{not_found, serving, start, Routes};
use chrono::{Duration as D, Utc};
use hadrill::engine::{run_case, RunContext};
use hadrill::fault::Ledger;
use hadrill::report::Verdict;
use hadrill::suite::Suite;
use hadrill::target::kube::KubeTarget;
use hadrill::target::Target;
use hadrill::tls::mint::{Ca, LeafSpec, Window};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The fixture's first node, renamed, at `ip`, with `kubelet`; control-plane or worker.
fn node(name: &str, ip: &str, kubelet: &str, control_plane: bool) -> Value {
    let mut n = fixture("nodes-kubeadm-1.29.json")["items"][0].clone();
    n["metadata"]["name"] = json!(name);
    n["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
    if !control_plane {
        n["metadata"]["labels"].as_object_mut().unwrap().remove("node-role.kubernetes.io/control-plane");
    }
    n["status"]["addresses"] = json!([{"type":"InternalIP","address":ip},{"type":"Hostname","address":name}]);
    n["status"]["nodeInfo"]["kubeletVersion"] = json!(kubelet);
    n["status"]["nodeInfo"]["kubeProxyVersion"] = json!(kubelet);
    n
}

fn list(kind: &str, items: Vec<Value>) -> String {
    json!({"apiVersion":"v1","kind":kind,"metadata":{"resourceVersion":"48240"},"items":items}).to_string()
}

fn routes(port: u16, worker_kubelet: &'static str) -> Routes {
    Arc::new(move |target: &str, user: &str| {
        if user != "kubernetes-admin" {
            return None; // RBAC: only the admin reads anything
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let cps = vec![node("cp-1", "127.0.0.2", "v1.29.2", true), node("cp-2", "127.0.0.3", "v1.29.2", true)];
        Some(match path {
            "/api/v1/nodes" if query.contains("labelSelector=node-role") => (200, list("NodeList", cps)),
            "/api/v1/nodes" => {
                let mut all = cps;
                all.push(node("w-1", "127.0.0.4", worker_kubelet, false));
                (200, list("NodeList", all))
            }
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" => {
                let mut s = fixture("endpointslices-kubernetes.json");
                s["items"][0]["endpoints"] = json!([
                    {"addresses":["127.0.0.2"],"conditions":{"ready":true}},
                    {"addresses":["127.0.0.3"],"conditions":{"ready":true}}
                ]);
                s["items"][0]["ports"][0]["port"] = json!(port);
                (200, s.to_string())
            }
            "/api/v1/namespaces/kube-system/pods" => (200, list("PodList", vec![])),
            p if p.starts_with("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/") => {
                (404, not_found(&format!("leases.coordination.k8s.io \"{}\"", p.rsplit('/').next().unwrap_or(""))))
            }
            _ => return None,
        })
    })
}

fn secret(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

struct Cluster {
    dir: tempfile::TempDir,
    ledger: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

/// Two apiserver doubles on one port of 127.0.0.2 and 127.0.0.3, the "load balancer" double
/// on 127.0.0.1, a kubeconfig for `kubernetes-admin` through the load balancer.
fn cluster(careless: bool, worker_kubelet: &'static str) -> (Cluster, Ca) {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let srv = serving(&ca, (now - D::hours(1), now + D::days(365)));
    let (l2, l3) = loop {
        let l2 = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l2.local_addr().unwrap().port();
        if let Ok(l3) = std::net::TcpListener::bind(("127.0.0.3", port)) {
            break (l2, l3);
        }
    };
    let port = l2.local_addr().unwrap().port();
    start(&ca, srv.clone(), l2, careless, "v1.29.2", routes(port, worker_kubelet));
    start(&ca, srv.clone(), l3, careless, "v1.29.2", routes(port, worker_kubelet));
    let lb = start(
        &ca,
        srv,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        careless,
        "v1.29.2",
        routes(port, worker_kubelet),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.crt"), ca.cert_pem()).unwrap();
    secret(&p("ca.key"), &ca.key_pem());
    let admin = ca.issue(&LeafSpec::client("kubernetes-admin", Window::Valid, now)).unwrap();
    std::fs::write(p("admin.crt"), &admin.cert_pem).unwrap();
    secret(&p("admin.key"), &admin.key_pem);
    let kc = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: ha\nclusters:\n- name: ha\n  cluster:\n    server: {lb}\n    certificate-authority: {}\n\
         users:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: ha\n  context:\n    cluster: ha\n    user: admin\n",
        p("ca.crt").display(),
        p("admin.crt").display(),
        p("admin.key").display()
    );
    std::fs::write(p("kubeconfig"), kc).unwrap();
    (Cluster { kubeconfig: p("kubeconfig"), ledger: tempfile::tempdir().unwrap(), dir }, ca)
}

async fn context(c: &Cluster, with_key: bool) -> RunContext {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = KubeTarget::load(&c.kubeconfig, None).await.unwrap();
    let target = Target {
        label: "doubles".into(),
        kube: Some(kube),
        kube_ca_key: with_key.then(|| c.dir.path().join("ca.key")),
        ..Default::default()
    };
    RunContext {
        target: Arc::new(target),
        ledger: Ledger::open(c.ledger.path()).unwrap(),
        allow_disruption: false,
        disruption_refusal: "read-only test".into(),
        seed: 1,
        artifacts: None,
        exclusive: Arc::new(tokio::sync::RwLock::new(())),
        progress: Arc::new(|_: &str, _: &str| {}),
    }
}

fn suite(name: &str) -> Suite {
    hadrill::suite::builtin().unwrap().get(name).unwrap().clone()
}

async fn run(ctx: &RunContext, suite_name: &str, case: &str) -> Verdict {
    let s = suite(suite_name);
    let c = s.cases.iter().find(|c| c.name == case).unwrap_or_else(|| panic!("no case {case}"));
    run_case(ctx, &s, c).await.verdict
}

const APISERVER_CASES: [&str; 5] = [
    "apiserver_refuses_expired_client_cert",
    "apiserver_refuses_not_yet_valid_client_cert",
    "apiserver_refuses_unknown_ca_client_cert",
    "apiserver_refuses_missing_client_cert",
    "apiserver_accepts_control_client_cert",
];

#[tokio::test]
async fn apiserver_cases_pass_on_apiservers_that_verify_client_certificates() {
    let (c, _ca) = cluster(false, "v1.29.2");
    let ctx = context(&c, true).await;
    for case in APISERVER_CASES {
        let v = run(&ctx, "certs", case).await;
        assert_eq!(v, Verdict::Passed, "{case}");
    }
}

#[tokio::test]
async fn a_careless_front_door_fails_the_refusals_naming_each_address() {
    let (c, _ca) = cluster(true, "v1.29.2");
    let ctx = context(&c, true).await;
    let v = run(&ctx, "certs", "apiserver_refuses_expired_client_cert").await;
    let Verdict::Failed { message, .. } = &v else { panic!("expected a failure, got {v:?}") };
    let port = message.split("127.0.0.2:").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?").to_string();
    assert!(
        message.contains(&format!(
            "apiserver https://127.0.0.2:{port} (cp-1) ACCEPTED an expired client certificate (notAfter "
        )),
        "{message}"
    );
    assert!(message.contains("(cp-2) ACCEPTED") && message.contains("load balancer https://127.0.0.1:"), "{message}");
    assert!(message.contains("authenticated as user `hadrill-certs-probe` (HTTP 403)"), "{message}");
    // the control is still accepted: it is the refusals that are missing
    assert_eq!(run(&ctx, "certs", "apiserver_accepts_control_client_cert").await, Verdict::Passed);
}

#[tokio::test]
async fn without_a_ca_key_or_node_access_the_cases_skip_saying_how_to_provide_it() {
    let (c, _ca) = cluster(false, "v1.29.2");
    let ctx = context(&c, false).await;
    let v = run(&ctx, "certs", "apiserver_refuses_expired_client_cert").await;
    let Verdict::Skipped { reason } = &v else { panic!("expected a skip, got {v:?}") };
    assert!(reason.contains("--kube-ca-key") && reason.contains("no node access to cp-1"), "{reason}");
    // the missing-certificate case needs no key
    assert_eq!(run(&ctx, "certs", "apiserver_refuses_missing_client_cert").await, Verdict::Passed);
    // kubeadm's view needs node access
    let v = run(&ctx, "certs", "kubeadm_certs_valid_30_days").await;
    assert!(matches!(&v, Verdict::Skipped { reason } if reason.contains("needs node access")), "{v:?}");
    let v = run(&ctx, "skew", "upgrade_skipping_a_minor_refused").await;
    assert!(
        matches!(&v, Verdict::Skipped { reason } if reason.contains("needs node access to a control-plane node to run kubeadm")),
        "{v:?}"
    );
}

#[tokio::test]
async fn serving_certificates_that_cannot_be_read_make_an_error_naming_them() {
    let (c, _ca) = cluster(false, "v1.29.2");
    let ctx = context(&c, true).await;
    // the apiservers and the balancer are read; nothing listens on the kubelets' 10250
    let v = run(&ctx, "certs", "kube_serving_certs_valid_30_days").await;
    let Verdict::Error { message, .. } = &v else { panic!("expected an error, got {v:?}") };
    assert!(
        message.contains("kubelet https://127.0.0.2:10250 (cp-1): ") && message.contains("cannot connect"),
        "{message}"
    );
}

#[tokio::test]
async fn a_worker_kubelet_newer_than_the_apiservers_fails_the_skew_case() {
    let (c, _ca) = cluster(false, "v1.30.1");
    let ctx = context(&c, false).await;
    let v = run(&ctx, "skew", "versions_within_skew_policy").await;
    let Verdict::Failed { message, evidence } = &v else { panic!("expected a failure, got {v:?}") };
    assert!(
        message.contains(
            "kubelet on w-1 is v1.30.1, 1 minor version(s) newer than kube-apiserver v1.29.2 on cp-1 (must not be newer than any kube-apiserver)"
        ),
        "{message}"
    );
    assert!(message.contains("kube-proxy on w-1 is v1.30.1"), "{message}");
    assert!(evidence.contains("no kube-proxy pods"), "{evidence}");
    // the same cluster with the worker at the apiservers' minor passes, unless this machine's
    // kubectl is itself out of skew (then that is the only violation)
    let (c, _ca) = cluster(false, "v1.29.2");
    let ctx = context(&c, false).await;
    match run(&ctx, "skew", "versions_within_skew_policy").await {
        Verdict::Passed => {}
        Verdict::Failed { message, .. } => {
            assert!(message.starts_with("kubectl on ") && !message.contains("kubelet"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
