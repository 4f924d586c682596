//! The failover steps end to end on kube's mock service: the probes start through the same
//! code as against a cluster, the waits wake on scripted watch events, and each wait and
//! check fails, naming the figure and the bound, when the scripted cluster misbehaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::fault::Ledger;
use crate::probe::kube::tests::{
    config_for, configmap_api, events, lease_json, list_json, node_json, scripted, status, tls_double, Handler, Req,
    Script, READYZ_ETCD_FAILED,
};
use crate::suite::Step;
use crate::target::discovery::tests::kubeadm_routes;
use crate::target::Target;

fn ctx() -> RunContext {
    let dir = std::env::temp_dir().join(format!("hadrill-failover-test-{}", std::process::id()));
    RunContext {
        target: Arc::new(Target::default()),
        ledger: Ledger::open(&dir).unwrap(),
        allow_disruption: true,
        disruption_refusal: String::new(),
        seed: 1,
        artifacts: None,
        exclusive: Arc::default(),
        progress: Arc::new(|_, _| {}),
    }
}

fn state(name: &str) -> CaseState {
    CaseState {
        name: name.into(),
        timeline: Arc::new(Timeline::new()),
        output: String::new(),
        measurements: vec![],
        guards: vec![],
        probes: Default::default(),
        rng: rand::SeedableRng::seed_from_u64(1),
        last_fault_at: None,
        leader_before_fault: None,
        faulted_members: vec![],
    }
}

/// A kubeadm 1.29 control plane: discovery's routes, lease and node lists, and watches fed
/// from scripts (one per lease, one for nodes).
struct Cluster {
    kcm: tokio::sync::mpsc::UnboundedSender<String>,
    nodes: tokio::sync::mpsc::UnboundedSender<String>,
    handler: Handler,
}

fn cluster(kcm_duration: i32) -> Cluster {
    let (kcm, kcm_script) = Script::new();
    let (sched_tx, sched_script) = Script::new();
    std::mem::forget(sched_tx); // the scheduler's watch stays open and quiet
    let (nodes, node_script) = Script::new();
    let routes = Arc::new(kubeadm_routes("pods-kube-system-stacked.json"));
    let handler: Handler = Arc::new(move |r: Req| {
        let (routes, kcm_script, sched_script, node_script) =
            (routes.clone(), kcm_script.clone(), sched_script.clone(), node_script.clone());
        Box::pin(async move {
            let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
            if r.path == leases {
                let name = if r.has("fieldSelector=metadata.name%3Dkube-controller-manager") {
                    "kube-controller-manager"
                } else {
                    "kube-scheduler"
                };
                if r.is_watch() {
                    return if name == "kube-controller-manager" {
                        kcm_script.next().await
                    } else {
                        sched_script.next().await
                    };
                }
                let (holder, d) = if name == "kube-controller-manager" {
                    ("cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55", kcm_duration)
                } else {
                    ("cp-1_5e2a", 15)
                };
                return Ok((
                    200,
                    list_json("LeaseList", "coordination.k8s.io/v1", 100, vec![lease_json(name, holder, d, 100, 2)]),
                ));
            }
            if r.path == "/api/v1/nodes" && r.is_watch() {
                return node_script.next().await;
            }
            if let Some(n) = r.path.strip_prefix("/api/v1/nodes/") {
                return Ok((200, node_json(n, "True", 48300).to_string()));
            }
            match routes.iter().find(|x| x.path == r.path && x.query.as_ref().is_none_or(|q| r.has(q))) {
                Some(x) => Ok((x.status, x.body.clone())),
                None => Ok((404, status(404, "NotFound", &format!("{} not found", r.path)))),
            }
        })
    });
    Cluster { kcm, nodes, handler }
}

async fn watching(c: &Cluster, name: &str) -> (CaseState, tokio::task::JoinHandle<()>) {
    let (client, fresh, _, _, task) = scripted(c.handler.clone());
    let mut st = state(name);
    st.probes.kube = Some(KubeProbes::new(client, fresh, None, "https://10.0.0.10:6443".into(), st.timeline.clone()));
    probe(&ctx(), &ProbeSpec::KubeWatch, &mut st)
        .await
        .expect("a kube probe")
        .unwrap_or_else(|_| panic!("watch probe starts"));
    let h = st.probes.kube.as_ref().unwrap().watch.clone().unwrap();
    assert_eq!(h.nodes().len(), 3, "the first node list is in");
    assert_eq!(h.leases().len(), 2, "both leases' first lists are in");
    (st, task)
}

fn failed(r: Result<(), StepEnd>) -> CheckOutcome {
    match r {
        Err(StepEnd::Failed(c)) => c,
        Err(StepEnd::Error(m)) => panic!("expected a failure, got an error: {m}"),
        Err(StepEnd::Skip(m)) => panic!("expected a failure, got a skip: {m}"),
        Ok(()) => panic!("expected a failure, got a pass"),
    }
}

#[tokio::test]
async fn lease_takeover_is_measured_from_the_fault_to_the_new_holder() {
    let c = cluster(15);
    let (mut st, _t) = watching(&c, "failover::controller_manager_leader_takeover").await;
    st.last_fault_at = Some(Instant::now());
    let kcm = c.kcm.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        kcm.send(events(&[("MODIFIED", lease_json("kube-controller-manager", "cp-1_77aa", 15, 140, 3))])).unwrap();
    });
    let spec = AwaitSpec::LeaseTakeover { component: Component::ControllerManager, slack: Duration::from_secs(5) };
    await_(&ctx(), &spec, &mut st).await.unwrap().unwrap_or_else(|_| panic!("takeover within the bound"));
    let m = st.measurements.iter().find(|m| m.name == "lease_takeover_kube_controller_manager").unwrap();
    assert!(m.value >= 0.3 && m.value < 2.0, "{m:?}");
    // leaseDurationSeconds 15 (from the Lease) + the default retry period 2s + slack 5s
    assert_eq!(m.bound, Some(22.0));
    let text = Timeline::render(&st.timeline.events());
    assert!(text.contains("moved from cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55 to cp-1_77aa"), "{text}");
    st.probes.stop_all().await;
}

#[tokio::test]
async fn a_lease_not_taken_over_fails_with_the_bound_it_comes_from() {
    // a 1s lease: bound 1s + retry 2s + slack 0s; nobody takes it over
    let c = cluster(1);
    let (mut st, _t) = watching(&c, "failover::controller_manager_leader_takeover").await;
    st.last_fault_at = Some(Instant::now());
    let spec = AwaitSpec::LeaseTakeover { component: Component::ControllerManager, slack: Duration::ZERO };
    let t = Instant::now();
    let f = failed(await_(&ctx(), &spec, &mut st).await.unwrap());
    assert!(t.elapsed() >= Duration::from_millis(4400), "watched past the bound: {:?}", t.elapsed());
    assert!(f.message.contains("still held by cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55"), "{}", f.message);
    assert!(
        f.message.contains("bound 3.000s (leaseDurationSeconds 1s (from the Lease) + --leader-elect-retry-period default 2s + slack 0s)"),
        "{}",
        f.message
    );
    st.probes.stop_all().await;
}

#[tokio::test]
async fn the_scheduler_has_a_lease_and_the_apiserver_has_none() {
    let c = cluster(15);
    let (mut st, _t) = watching(&c, "failover::x").await;
    st.last_fault_at = Some(Instant::now());
    let spec = AwaitSpec::LeaseTakeover { component: Component::Apiserver, slack: Duration::ZERO };
    match await_(&ctx(), &spec, &mut st).await.unwrap() {
        Err(StepEnd::Error(m)) => assert!(m.contains("kube-apiserver holds no leader-election lease"), "{m}"),
        _ => panic!("expected an error"),
    }
    st.probes.stop_all().await;
}

#[tokio::test]
async fn node_not_ready_waits_on_the_watch_for_the_faulted_node() {
    let c = cluster(15);
    let (mut st, _t) = watching(&c, "failover::kubelet_stop_node_not_ready").await;
    st.last_fault_at = Some(Instant::now());
    st.faulted_members = vec!["cp-2".into()];
    let nodes = c.nodes.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        nodes.send(events(&[("MODIFIED", node_json("cp-3", "Unknown", 48301))])).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        nodes.send(events(&[("MODIFIED", node_json("cp-2", "Unknown", 48302))])).unwrap();
    });
    // the bound from the cluster: 1.29's default grace 40s + slack 10s
    let spec = AwaitSpec::NodeNotReady { within: None, slack: Duration::from_secs(10) };
    await_(&ctx(), &spec, &mut st).await.unwrap().unwrap_or_else(|_| panic!("cp-2 NotReady"));
    let m = st.measurements.iter().find(|m| m.name == "node_not_ready_after").unwrap();
    assert!(m.value >= 0.4 && m.value < 3.0, "cp-3 does not count: {m:?}");
    assert_eq!(m.bound, Some(50.0));
    assert!(st.timeline.events().iter().any(|e| e.message.contains("node cp-2 Ready=Unknown (NodeStatusUnknown)")));
    st.probes.stop_all().await;
}

#[tokio::test]
async fn a_node_that_stays_ready_fails_naming_how_long_and_the_bound() {
    let c = cluster(15);
    let (mut st, _t) = watching(&c, "failover::kubelet_stop_node_not_ready").await;
    st.last_fault_at = Some(Instant::now());
    st.faulted_members = vec!["cp-2".into()];
    let spec = AwaitSpec::NodeNotReady { within: Some(Duration::from_secs(1)), slack: Duration::from_secs(10) };
    let f = failed(await_(&ctx(), &spec, &mut st).await.unwrap());
    // it waited out 1.5 × the bound (a busy machine may wake it a little later)
    let waited: f64 = f
        .message
        .strip_prefix("node cp-2 still Ready ")
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", f.message));
    assert!(waited >= 1.5, "{}", f.message);
    assert!(f.message.ends_with("bound 1.000s (as the suite sets it)"), "{}", f.message);
    st.probes.stop_all().await;
}

#[test]
fn grace_and_retry_periods_come_from_the_static_pods_flags_or_the_defaults() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut d = rt.block_on(crate::target::discovery::tests::discover_fixture(
        "pods-kube-system-stacked.json",
        "https://10.0.0.10:6443",
    ));
    let (g, why) = grace_with_source(&d).unwrap();
    assert_eq!(g, Duration::from_secs(40));
    assert!(why.contains("default for registry.k8s.io/kube-controller-manager:v1.29.2"), "{why}");
    assert_eq!(
        retry_period(&d, Component::Scheduler, Some("cp-1")),
        (Duration::from_secs(2), "--leader-elect-retry-period default 2s".into())
    );
    for p in d.static_pods.iter_mut().filter(|p| p.component == "kube-controller-manager") {
        p.flags.insert("node-monitor-grace-period".into(), "20s".into());
        if p.node == "cp-2" {
            p.flags.insert("leader-elect-retry-period".into(), "5s".into());
        }
    }
    let (g, why) = grace_with_source(&d).unwrap();
    assert_eq!(g, Duration::from_secs(20));
    assert!(why.contains("--node-monitor-grace-period=20s"), "{why}");
    assert_eq!(retry_period(&d, Component::ControllerManager, Some("cp-2")).0, Duration::from_secs(5));
}

#[tokio::test]
async fn the_api_probe_runs_in_a_scratch_namespace_and_judges_the_disruption() {
    let mode = Arc::new(AtomicUsize::new(0));
    let inner = configmap_api(mode.clone());
    let deletes = Arc::new(Mutex::new(Vec::new()));
    let d2 = deletes.clone();
    let handler: Handler = Arc::new(move |r: Req| {
        if r.method == "DELETE" {
            d2.lock().unwrap().push(r.path.clone());
        }
        inner(r)
    });
    let (client, fresh, _, _, _t) = scripted(handler);
    let mut st = state("failover::apiserver_stop_lb_routes_around");
    st.probes.kube = Some(KubeProbes::new(client, fresh, None, "https://10.0.0.10:6443".into(), st.timeline.clone()));
    let spec = ProbeSpec::KubeApi { per_second: 20, timeout: Duration::from_millis(500) };
    probe(&ctx(), &spec, &mut st).await.unwrap().unwrap_or_else(|_| panic!("API probe starts"));
    let ns = st.probes.kube.as_ref().unwrap().namespace.clone().unwrap();
    assert!(ns.starts_with("hadrill-"), "{ns}");
    await_(&ctx(), &AwaitSpec::KubeApiAnswers { count: 5, within: Duration::from_secs(5) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("answers"));
    // the "fault": the API answers 503 for a while
    st.last_fault_at = Some(Instant::now());
    mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await; // the outage the test stages
    mode.store(0, Ordering::SeqCst);
    await_(&ctx(), &AwaitSpec::KubeApiAnswers { count: 3, within: Duration::from_secs(5) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("answers again"));
    let ok = check(&ctx(), &CheckSpec::KubeApiAvailable { max_disruption: Duration::from_secs(3) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("check runs"));
    assert!(ok.passed, "{}", ok.message);
    let d = ok.measurements.iter().find(|m| m.name == "kube_api_disruption_fresh").unwrap();
    // at least the staged 700 ms less a probe tick; the ceiling leaves room for a busy machine
    assert!(d.value >= 0.5 && d.value <= 2.5, "{d:?}");
    let bad = check(&ctx(), &CheckSpec::KubeApiAvailable { max_disruption: Duration::from_millis(200) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("check runs"));
    assert!(!bad.passed);
    assert!(bad.message.contains("budget 0.200s"), "{}", bad.message);
    // the end of the case: probes stop, the scratch namespace goes
    st.probes.stop_all().await;
    assert_eq!(deletes.lock().unwrap().as_slice(), [format!("/api/v1/namespaces/{ns}")]);
    assert!(st.timeline.events().iter().any(|e| e.message == format!("scratch namespace {ns} deleted")));
}

#[tokio::test]
async fn a_namespace_that_cannot_be_deleted_is_recorded_not_hidden() {
    let handler: Handler = Arc::new(|r: Req| {
        Box::pin(async move {
            match r.method.as_str() {
                "DELETE" => Ok((
                    403,
                    status(
                        403,
                        "Forbidden",
                        "namespaces \"x\" is forbidden: User \"ci\" cannot delete resource \"namespaces\"",
                    ),
                )),
                _ => Ok((201, r.body)),
            }
        })
    });
    let (client, fresh, _, _, _t) = scripted(handler);
    let tl = Arc::new(Timeline::new());
    let mut k = KubeProbes::new(client, fresh, None, "https://lb:6443".into(), tl.clone());
    k.namespace = Some("hadrill-x".into());
    let e = k.cleanup().await.unwrap_err();
    assert!(e.contains("delete namespace hadrill-x: 403 Forbidden") && e.contains("hadrill recover"), "{e}");
    assert!(tl.events().iter().any(|ev| ev.source == "cleanup" && ev.message.contains("403 Forbidden")));
}

#[tokio::test]
async fn the_serving_certificate_must_cover_the_server_host() {
    let answer = |_: &str| (200, "ok".to_string());
    let good = tls_double(&["127.0.0.1", "kubernetes.default"], answer).await;
    let c = cert_covers_server(&good.url, None, Duration::from_secs(3)).await.unwrap();
    assert!(c.passed, "{}", c.message);
    assert!(c.message.contains("SAN IP:127.0.0.1 covers the server host 127.0.0.1"), "{}", c.message);

    let bad = tls_double(&["10.9.9.9", "lb.example.com"], answer).await;
    let c = cert_covers_server(&bad.url, None, Duration::from_secs(3)).await.unwrap();
    assert!(!c.passed);
    assert!(c.message.contains("covers the server host 127.0.0.1 (2 SANs)"), "{}", c.message);
    assert!(c.evidence.contains("DNS:lb.example.com") && c.evidence.contains("IP:10.9.9.9"), "{}", c.evidence);
    // a kubeconfig with tls-server-name verifies that name instead of the host
    let c = cert_covers_server(&bad.url, Some("lb.example.com"), Duration::from_secs(3)).await.unwrap();
    assert!(c.passed, "{}", c.message);
    // nothing listening: an error, not a verdict
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(cert_covers_server(&format!("https://{gone}"), None, Duration::from_secs(1)).await.is_err());
}

#[tokio::test]
async fn apiservers_ready_reads_each_endpoint_over_verified_tls() {
    // test doubles of two apiserver endpoints: one healthy, one whose etcd is gone
    let healthy = tls_double(&["127.0.0.1"], |p| (200, format!("[+]ping ok\n{} check passed\n", &p[1..]))).await;
    let sick = tls_double(&["127.0.0.1"], |p| {
        if p == "/readyz" {
            (500, READYZ_ETCD_FAILED.to_string())
        } else {
            (200, "ok".into())
        }
    })
    .await;
    let cfg = config_for(&healthy.url, &healthy.ca_pem);
    let c = ready_check(&cfg, &[(healthy.url.clone(), Some("cp-1".into()))], None).await;
    assert!(c.passed, "{}", c.message);
    // each double has its own CA: trust the sick one's to reach it
    let cfg = config_for(&sick.url, &sick.ca_pem);
    let t = Instant::now();
    let c = ready_check(&cfg, &[(sick.url.clone(), Some("cp-2".into()))], Some(Duration::from_millis(800))).await;
    assert!(t.elapsed() >= Duration::from_millis(800), "kept asking until the deadline");
    assert!(!c.passed);
    assert!(
        c.message.contains(&format!(
            "apiserver {} (node cp-2) /readyz answered 500: [-]etcd failed: reason withheld",
            sick.url
        )),
        "{}",
        c.message
    );
}

#[test]
fn the_kubelet_requirement_skips_the_rig_and_kubelet_less_targets() {
    let t = Target::default();
    assert!(kubelet_available(&t).unwrap_err().contains("--kubeconfig"));
    let t = Target {
        kube: Some(crate::target::kube::KubeTarget {
            kubeconfig: "/k".into(),
            context: "c".into(),
            cluster: "c".into(),
            server: "https://lb:6443".into(),
            config: kube::Config::new("https://lb:6443".parse().unwrap()),
        }),
        ..Default::default()
    };
    assert!(kubelet_available(&t).is_ok());
    t.control_plane
        .set(crate::controlplane::ControlPlane {
            source: "rig /tmp/r".into(),
            instances: vec![],
            has_kubelet: false,
            has_kubeadm: false,
        })
        .unwrap();
    assert_eq!(kubelet_available(&t).unwrap_err(), "needs control-plane nodes with a kubelet: rig /tmp/r has none");
}

#[tokio::test]
async fn e2e_api_probe_and_watches_on_a_real_cluster() {
    let Some(path) = std::env::var_os("HADRILL_E2E_KUBECONFIG") else {
        eprintln!("skipped: HADRILL_E2E_KUBECONFIG is not set (no real cluster to probe)");
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let k = crate::target::kube::KubeTarget::load(std::path::Path::new(&path), None).await.unwrap();
    let cert =
        cert_covers_server(&k.server, k.config.tls_server_name.as_deref(), Duration::from_secs(5)).await.unwrap();
    eprintln!("serving certificate: {}", cert.message);
    let t = Target { kube: Some(k), ..Default::default() };
    let mut c = ctx();
    c.target = Arc::new(t);
    let mut st = state("failover::e2e");
    probe(&c, &ProbeSpec::KubeWatch, &mut st).await.unwrap().unwrap_or_else(|_| panic!("watches start"));
    probe(&c, &ProbeSpec::KubeApi { per_second: 5, timeout: Duration::from_secs(2) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("API probe starts"));
    await_(&c, &AwaitSpec::KubeApiAnswers { count: 5, within: Duration::from_secs(20) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("answers"));
    let ok = check(&c, &CheckSpec::KubeApiAvailable { max_disruption: Duration::from_secs(3) }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("check runs"));
    assert!(ok.passed, "{}", ok.message);
    let ready = check(&c, &CheckSpec::KubeApiserversReady { within: None }, &mut st)
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("check runs"));
    eprintln!("{}\n{}", ready.message, ready.evidence);
    let h = st.probes.kube.as_ref().unwrap().watch.clone().unwrap();
    assert!(!h.nodes().is_empty() && !h.leases().is_empty());
    st.probes.stop_all().await;
    eprintln!("{}", Timeline::render(&st.timeline.events()));
}

/// What the test plays for a fault of the built-in suite (its injection is the node-access
/// helpers' job): the effect the real fault has on the API.
async fn play(spec: &crate::suite::FaultSpec, c: &Cluster, api_mode: &Arc<AtomicUsize>, st: &mut CaseState) {
    use crate::suite::FaultSpec;
    st.last_fault_at = Some(Instant::now());
    match spec {
        FaultSpec::KubeletStop { .. } => {
            st.faulted_members = vec!["cp-3".into()];
            let nodes = c.nodes.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                nodes.send(events(&[("MODIFIED", node_json("cp-3", "Unknown", 48310))])).unwrap();
            });
        }
        FaultSpec::ComponentStop { component: Component::Apiserver, .. } => {
            let mode = api_mode.clone();
            mode.store(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                mode.store(0, Ordering::SeqCst);
            });
        }
        FaultSpec::ComponentStop { component: Component::ControllerManager, .. } => {
            let kcm = c.kcm.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                kcm.send(events(&[("MODIFIED", lease_json("kube-controller-manager", "cp-3_1b2c", 15, 150, 3))]))
                    .unwrap();
            });
        }
        other => panic!("no play for {other:?}"),
    }
}

/// Walks the built-in failover cases on the scripted cluster: every probe, wait and check of
/// the suite file runs through the step dispatch as in a run; the faults are played by the
/// test. Stops at `heal` (what follows reads the cluster through the target's kubeconfig).
#[tokio::test]
async fn the_builtin_failover_cases_compose_on_the_scripted_cluster() {
    let suites = crate::suite::builtin().unwrap();
    let suite = suites.get("failover").expect("the failover suite is built in");
    for name in ["kubelet_stop_node_not_ready", "apiserver_stop_lb_routes_around", "controller_manager_leader_takeover"]
    {
        let case = suite.cases.iter().find(|c| c.name == name).unwrap();
        let c = cluster(15);
        let mode = Arc::new(AtomicUsize::new(0));
        let api = configmap_api(mode.clone());
        let base = c.handler.clone();
        let handler: Handler = Arc::new(move |r: Req| {
            let cm = r.path.contains("/configmaps") || (r.path.starts_with("/api/v1/namespaces") && r.method != "GET");
            if cm {
                api(r)
            } else {
                base(r)
            }
        });
        let (client, fresh, _, seen, _t) = scripted(handler);
        let mut st = state(&format!("failover::{name}"));
        st.probes.kube =
            Some(KubeProbes::new(client, fresh, None, "https://10.0.0.10:6443".into(), st.timeline.clone()));
        let ctx = ctx();
        for step in &case.steps {
            match step {
                Step::Inject(f) => play(f, &c, &mode, &mut st).await,
                Step::Await(AwaitSpec::Observe { .. }) => tokio::time::sleep(Duration::from_millis(800)).await,
                // each apiserver's own address is not on the scripted cluster (tested on TLS doubles)
                Step::Probe(ProbeSpec::KubeApiserverHealth { .. }) => {}
                Step::Heal => break,
                s => {
                    if let Err(e) = crate::engine::steps::run(&ctx, s, &mut st).await {
                        let m = match e {
                            StepEnd::Failed(c) => format!("failed: {} {}", c.message, c.evidence),
                            StepEnd::Error(m) => format!("error: {m}"),
                            StepEnd::Skip(m) => format!("skip: {m}"),
                        };
                        panic!(
                            "{name}: step {} {m}\n{}",
                            crate::engine::steps::label(s),
                            Timeline::render(&st.timeline.events())
                        );
                    }
                }
            }
        }
        let names: Vec<&str> = st.measurements.iter().map(|m| m.name.as_str()).collect();
        match name {
            "kubelet_stop_node_not_ready" => {
                assert!(
                    names.contains(&"node_not_ready_after") && names.contains(&"kube_api_disruption_reused"),
                    "{names:?}"
                )
            }
            "apiserver_stop_lb_routes_around" => {
                let d = st.measurements.iter().find(|m| m.name == "kube_api_disruption_fresh").unwrap();
                assert!(d.value > 0.2 && d.bound == Some(3.0), "{d:?}");
            }
            _ => assert!(names.contains(&"lease_takeover_kube_controller_manager"), "{names:?}"),
        }
        st.probes.stop_all().await;
        rbac_covers(&seen.lock().unwrap());
        let ns_made = st
            .timeline
            .events()
            .iter()
            .any(|e| e.message.starts_with("scratch namespace") && e.message.ends_with("deleted"));
        let uses_api = case.steps.iter().any(|s| matches!(s, Step::Probe(ProbeSpec::KubeApi { .. })));
        assert_eq!(
            ns_made,
            uses_api,
            "{name}: the scratch namespace is deleted at the end: {:?}",
            seen.lock().unwrap()
        );
    }
}

/// Every request in `seen` ("METHOD path?query") is allowed by the ClusterRoles the docs tell
/// users to bind (hadrill-readonly + hadrill-failover).
fn rbac_covers(seen: &[String]) {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let mut rules = Vec::new();
    for f in ["hadrill-readonly.yaml", "hadrill-failover.yaml"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rbac").join(f))
            .unwrap();
        let role: ClusterRole = serde_saphyr::from_str(&text).unwrap();
        rules.extend(role.rules.unwrap());
    }
    let allows = |verb: &str, group: &str, resource: &str| {
        rules.iter().any(|r| {
            r.verbs.iter().any(|v| v == verb)
                && r.api_groups.as_ref().is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == resource))
        })
    };
    for req in seen {
        let (method, rest) = req.split_once(' ').unwrap();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let watch = query.split('&').any(|kv| kv == "watch=true");
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // (group, resource, named)
        let (group, resource, named) = match segs.as_slice() {
            ["version"] => continue,
            ["api", "v1", res] => ("", *res, false),
            ["api", "v1", res, _] => ("", *res, true),
            ["api", "v1", "namespaces", _, res] => ("", *res, false),
            ["api", "v1", "namespaces", _, res, _] => ("", *res, true),
            ["apis", g, _, "namespaces", _, res] => (*g, *res, false),
            ["apis", g, _, "namespaces", _, res, _] => (*g, *res, true),
            _ => panic!("unexpected request {req}"),
        };
        let verb = match (method, named, watch) {
            ("GET", _, true) => "watch",
            ("GET", true, _) => "get",
            ("GET", false, _) => "list",
            ("POST", _, _) => "create",
            ("PUT", _, _) => "update",
            ("DELETE", _, _) => "delete",
            _ => panic!("unexpected method in {req}"),
        };
        assert!(
            allows(verb, group, resource),
            "{req} ({verb} {resource}) is not allowed by docs/rbac/hadrill-readonly.yaml + hadrill-failover.yaml"
        );
    }
}

#[tokio::test]
async fn a_refused_namespace_is_an_error_and_not_deleted_a_lost_answer_is_cleaned_up() {
    for (refuse, expect_delete) in [(true, false), (false, true)] {
        let deletes = Arc::new(AtomicUsize::new(0));
        let d2 = deletes.clone();
        let handler: Handler = Arc::new(move |r: Req| {
            let d2 = d2.clone();
            Box::pin(async move {
                match r.method.as_str() {
                    "POST" if refuse => Ok((
                        403,
                        status(
                            403,
                            "Forbidden",
                            "namespaces is forbidden: User \"ci\" cannot create resource \"namespaces\"",
                        ),
                    )),
                    "POST" => Err("connection reset by peer".into()),
                    "DELETE" => {
                        d2.fetch_add(1, Ordering::SeqCst);
                        Ok((404, status(404, "NotFound", "namespaces not found")))
                    }
                    _ => Ok((404, status(404, "NotFound", "not found"))),
                }
            })
        });
        let (client, fresh, _, _, _t) = scripted(handler);
        let mut st = state("failover::x");
        st.probes.kube = Some(KubeProbes::new(client, fresh, None, "https://lb:6443".into(), st.timeline.clone()));
        let spec = ProbeSpec::KubeApi { per_second: 5, timeout: Duration::from_secs(1) };
        match probe(&ctx(), &spec, &mut st).await.unwrap() {
            Err(StepEnd::Error(m)) => assert!(m.starts_with("create namespace hadrill-"), "{m}"),
            _ => panic!("expected a harness error"),
        }
        st.probes.stop_all().await;
        assert_eq!(deletes.load(Ordering::SeqCst) == 1, expect_delete, "refused={refuse}");
    }
}

#[tokio::test]
async fn watches_that_cannot_list_are_a_harness_error_naming_why() {
    let c = cluster(15);
    let base = c.handler.clone();
    let handler: Handler = Arc::new(move |r: Req| {
        if r.path == "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases" {
            return Box::pin(async {
                Ok((
                    403,
                    status(
                        403,
                        "Forbidden",
                        "leases.coordination.k8s.io is forbidden: User \"ci\" cannot list resource \"leases\"",
                    ),
                ))
            });
        }
        base(r)
    });
    let (client, fresh, _, _, _t) = scripted(handler);
    let mut st = state("failover::x");
    st.probes.kube = Some(KubeProbes::new(client, fresh, None, "https://10.0.0.10:6443".into(), st.timeline.clone()));
    match probe(&ctx(), &ProbeSpec::KubeWatch, &mut st).await.unwrap() {
        Err(StepEnd::Error(m)) => {
            assert!(
                m.contains("did not list 3 node(s) and the leases kube-controller-manager, kube-scheduler within 10s"),
                "{m}"
            );
            assert!(m.contains("403 Forbidden: leases.coordination.k8s.io is forbidden"), "{m}");
        }
        _ => panic!("expected a harness error"),
    }
    st.probes.stop_all().await;
}

#[tokio::test]
async fn a_fault_on_a_host_that_is_no_node_is_a_harness_error_not_any_node() {
    let c = cluster(15);
    let (mut st, _t) = watching(&c, "failover::kubelet_stop_node_not_ready").await;
    st.last_fault_at = Some(Instant::now());
    st.faulted_members = vec!["cp-2.lab".into()];
    let spec = AwaitSpec::NodeNotReady { within: Some(Duration::from_secs(1)), slack: Duration::from_secs(10) };
    match await_(&ctx(), &spec, &mut st).await.unwrap() {
        Err(StepEnd::Error(m)) => assert!(m.contains("cp-2.lab") && m.contains("cp-1"), "{m}"),
        Err(StepEnd::Failed(c)) => panic!("expected a harness error, got a failure: {}", c.message),
        _ => panic!("expected a harness error"),
    }
    st.probes.stop_all().await;
}
