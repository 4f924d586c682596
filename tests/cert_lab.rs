//! The expired-serving-certificate lab end to end, by the engine, with the fault applied for
//! real: a rig directory holds the cluster PKI in kubeadm's layout (`pki/kube/ca.{crt,key}`,
//! `apiserver.{crt,key}`); the apiserver of cp-1 is a TEST DOUBLE (`apiserver_support`) that
//! re-reads `apiserver.crt` at every handshake, as kube-apiserver's dynamic serving
//! certificate does; cp-2 is a double with its own valid certificate; a real HAProxy passes
//! TLS through to both, with a TLS health check. The fault swaps the file through `local`
//! node access, the checks see the expired certificate on cp-1, the balancer's behaviour is
//! judged, and the heal puts the original back byte for byte.

mod apiserver_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apiserver_support::{serving, start, start_from_files, Routes};
use chrono::{Duration as D, Utc};
use hadrill::engine::{run_case, RunContext};
use hadrill::fault::Ledger;
use hadrill::report::Verdict;
use hadrill::rig::{Isolation, RigState};
use hadrill::suite::{Case, CheckSpec, Component, FaultSpec, InstancePick, Step, Suite};
use hadrill::target::kube::KubeTarget;
use hadrill::target::Target;
use hadrill::tls::mint::{Ca, LeafSpec, Window};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn node(name: &str, ip: &str) -> Value {
    let mut n = fixture("nodes-kubeadm-1.29.json")["items"][0].clone();
    n["metadata"]["name"] = json!(name);
    n["status"]["addresses"] = json!([{"type":"InternalIP","address":ip},{"type":"Hostname","address":name}]);
    n
}

fn routes(port: u16) -> Routes {
    Arc::new(move |target: &str, user: &str| {
        if user != "kubernetes-admin" {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        let list = |kind: &str, items: Vec<Value>| {
            json!({"apiVersion":"v1","kind":kind,"metadata":{"resourceVersion":"1"},"items":items}).to_string()
        };
        Some(match path {
            "/api/v1/nodes" => (200, list("NodeList", vec![node("cp-1", "127.0.0.2"), node("cp-2", "127.0.0.3")])),
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
            // the scheduler's lease is held by cp-1: `leader_of: scheduler` picks cp-1
            p if p.ends_with("/leases/kube-scheduler") => (200, fixture("lease-kube-scheduler.json").to_string()),
            p if p.ends_with("/leases/kube-controller-manager") => {
                (200, fixture("lease-kube-controller-manager.json").to_string())
            }
            _ => return None,
        })
    })
}

fn secret(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn lab_suite() -> Suite {
    let s = Duration::from_secs;
    Suite {
        suite: "certs_lab_test".into(),
        description: "the lab with short windows".into(),
        cases: vec![Case {
            name: "expired_serving_cert".into(),
            description: "d".into(),
            disruptive: true,
            ignore: None,
            requires: vec![],
            steps: vec![
                Step::Inject(FaultSpec::ApiserverCertExpired { pick: InstancePick::LeaderOf(Component::Scheduler) }),
                Step::Check(CheckSpec::ApiserverServesExpiredCert { within: s(10) }),
                Step::Check(CheckSpec::LbRoutesAroundExpiredCert { within: s(3), window: s(3) }),
                Step::Heal,
                Step::Check(CheckSpec::ApiserverServesValidCert { within: s(10) }),
            ],
        }],
    }
}

/// Runs the lab behind an HAProxy whose TLS health check has `server_check`; returns the
/// verdict, after checking that the heal restored the certificate and cleaned up.
async fn lab(server_check: &str) -> Option<Verdict> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let rig_dir = tempfile::tempdir().unwrap();
    let pki = hadrill::controlplane::rig_kube_pki_dir(rig_dir.path());
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.crt"), ca.cert_pem()).unwrap();
    secret(&pki.join("ca.key"), &ca.key_pem());
    // the rig keeps each apiserver's serving certificate in a directory named after its host
    let host_pki = pki.join("cp-1");
    std::fs::create_dir_all(&host_pki).unwrap();
    let (crt, key) = serving(&ca, (now - D::hours(1), now + D::days(365)));
    std::fs::write(host_pki.join("apiserver.crt"), &crt).unwrap();
    secret(&host_pki.join("apiserver.key"), &key);
    let original = std::fs::read(host_pki.join("apiserver.crt")).unwrap();

    let (l2, l3) = loop {
        let l2 = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l2.local_addr().unwrap().port();
        if let Ok(l3) = std::net::TcpListener::bind(("127.0.0.3", port)) {
            break (l2, l3);
        }
    };
    let port = l2.local_addr().unwrap().port();
    let cp1 = start_from_files(
        &ca,
        &host_pki.join("apiserver.crt"),
        &host_pki.join("apiserver.key"),
        l2,
        "v1.29.2",
        routes(port),
    );
    let cp2 = start(&ca, serving(&ca, (now - D::hours(1), now + D::days(365))), l3, false, "v1.29.2", routes(port));
    let ca_file = rig_dir.path().join("lb-ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let lb =
        apiserver_support::haproxy(&[&cp1, &cp2], &server_check.replace("CA_FILE", &ca_file.display().to_string()))?;

    let admin = ca.issue(&LeafSpec::client("kubernetes-admin", Window::Valid, now)).unwrap();
    let p = |n: &str| rig_dir.path().join(n);
    std::fs::write(p("admin.crt"), &admin.cert_pem).unwrap();
    secret(&p("admin.key"), &admin.key_pem);
    std::fs::write(
        p("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: ha\nclusters:\n- name: ha\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: ha\n  context:\n    cluster: ha\n    user: admin\n",
            lb.url,
            pki.join("ca.crt").display(),
            p("admin.crt").display(),
            p("admin.key").display()
        ),
    )
    .unwrap();
    let rig = RigState {
        dir: rig_dir.path().to_path_buf(),
        isolation: Isolation::Loopback,
        members: vec![],
        ca_cert: p("etcd-ca.crt"),
        client_cert: p("etcd-client.crt"),
        client_key: p("etcd-client.key"),
        election_timeout_ms: 1000,
        heartbeat_interval_ms: 100,
        kube: None,
    };
    let target = Target {
        label: "lab".into(),
        kube: Some(KubeTarget::load(&p("kubeconfig"), None).await.unwrap()),
        rig: Some(rig),
        ..Default::default()
    };
    let ledger = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        target: Arc::new(target),
        ledger: Ledger::open(ledger.path()).unwrap(),
        allow_disruption: true,
        disruption_refusal: String::new(),
        seed: 7,
        artifacts: None,
        exclusive: Arc::new(tokio::sync::RwLock::new(())),
        progress: Arc::new(|_: &str, _: &str| {}),
    };
    let suite = lab_suite();
    let record = run_case(&ctx, &suite, &suite.cases[0]).await;
    eprintln!("{}", record.output);
    // whatever the verdict: the original is back byte for byte, no backup dir, no ledger entry
    assert_eq!(std::fs::read(host_pki.join("apiserver.crt")).unwrap(), original, "the heal restores the certificate");
    let leftovers: Vec<_> = std::fs::read_dir(rig_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("hadrill-cert-backup-"))
        .collect();
    assert!(leftovers.is_empty(), "backup directory left: {leftovers:?}");
    assert!(ctx.ledger.entries().unwrap().is_empty(), "the ledger entry is cleared");
    assert!(record.output.contains("on cp-1"), "the fault went to the scheduler leader's node:\n{}", record.output);
    Some(record.verdict)
}

#[tokio::test]
async fn a_balancer_whose_check_verifies_the_certificate_routes_around_it() {
    let Some(v) = lab("verify required ca-file CA_FILE").await else {
        return;
    };
    assert_eq!(v, Verdict::Passed);
}

#[tokio::test]
async fn a_balancer_with_check_ssl_verify_none_keeps_the_expired_backend_and_the_lab_fails() {
    let Some(v) = lab("verify none").await else {
        return;
    };
    let Verdict::Failed { message, .. } = &v else { panic!("expected a failure, got {v:?}") };
    assert!(message.contains("keeps sending traffic to https://127.0.0.2:"), "{message}");
    assert!(message.contains("we refused the server's certificate: it has expired"), "{message}");
}
