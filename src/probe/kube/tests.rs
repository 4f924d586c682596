//! The Kubernetes probes on kube's own test double (`tower_test::mock`): the real client and
//! code path, with the transport replaced by a scripted API server answering with payloads
//! shaped like a kubeadm 1.29 API's (Namespace 201/409, ConfigMap PUT/GET, Lease and Node
//! watch streams, 503s and connection errors). The health probe runs against a real TLS
//! listener on 127.0.0.1 (a test double of one apiserver's endpoint).

use super::*;
use crate::target::discovery::tests::fixture;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use std::sync::atomic::AtomicUsize;

/// A request as the scripted server sees it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: String,
}

impl Req {
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|kv| kv == "watch=true")
    }
    pub fn has(&self, kv: &str) -> bool {
        self.query.split('&').any(|x| x == kv)
    }
}

/// What the scripted server answers: a status and a body, or a transport error (as when the
/// load balancer refuses or resets the connection).
pub(crate) type Reply = Result<(u16, String), String>;
pub(crate) type Handler = Arc<dyn Fn(Req) -> BoxFuture<'static, Reply> + Send + Sync>;

/// A scripted server behind kube's mock service: every request is answered by `handler` in a
/// task of its own (so a watch can stay open while other requests are served). Returns the
/// reused client, a factory of new clients over the same server (counting how many it made),
/// and every request seen as "METHOD path?query".
#[allow(clippy::type_complexity)]
pub(crate) fn scripted(
    handler: Handler,
) -> (Client, ClientFactory, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            seen2.lock().unwrap().push(format!("{method} {path}?{query}"));
            let handler = handler.clone();
            tokio::spawn(async move {
                let body = req
                    .into_body()
                    .collect_bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                match handler(Req { method, path, query, body }).await {
                    Ok((status, body)) => send.send_response(
                        Response::builder()
                            .status(StatusCode::from_u16(status).unwrap())
                            .header("content-type", "application/json")
                            .body(Body::from(body.into_bytes()))
                            .unwrap(),
                    ),
                    Err(e) => send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e)),
                }
            });
        }
    });
    let made = Arc::new(AtomicUsize::new(0));
    let (svc2, made2) = (svc.clone(), made.clone());
    let factory: ClientFactory = Arc::new(move || {
        made2.fetch_add(1, Ordering::SeqCst);
        Ok(Client::new(svc2.clone(), "default"))
    });
    (Client::new(svc, "default"), factory, made, seen, task)
}

pub(crate) fn status(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code}).to_string()
}

pub(crate) fn namespace_json(name: &str, ours: bool, terminating: bool) -> String {
    let mut labels = serde_json::json!({"kubernetes.io/metadata.name": name});
    if ours {
        labels[MANAGED_BY] = MANAGED_BY_VALUE.into();
        labels[RUN_LABEL] = "20261121T101010123-4242".into();
        labels[ROLE_LABEL] = ROLE_SCRATCH.into();
    }
    let mut v = serde_json::json!({
        "kind":"Namespace","apiVersion":"v1",
        "metadata":{"name":name,"uid":"0b7e","resourceVersion":"900","creationTimestamp":"2026-11-21T10:10:10Z","labels":labels,
                    "annotations":{HOST_ANNOTATION:"ci-runner-7"}},
        "spec":{"finalizers":["kubernetes"]},
        "status":{"phase": if terminating {"Terminating"} else {"Active"}}
    });
    if terminating {
        v["metadata"]["deletionTimestamp"] = "2026-11-21T10:12:00Z".into();
    }
    v.to_string()
}

pub(crate) fn configmap_json(ns: &str, name: &str, seq: u64, rv: u64) -> String {
    serde_json::json!({
        "kind":"ConfigMap","apiVersion":"v1",
        "metadata":{"name":name,"namespace":ns,"uid":"c1","resourceVersion":rv.to_string(),"creationTimestamp":"2026-11-21T10:10:11Z",
                    "labels":{MANAGED_BY:MANAGED_BY_VALUE}},
        "data":{"seq":seq.to_string(),"at":"2026-11-21T10:10:11.000000Z"}
    })
    .to_string()
}

/// The fixture's controller-manager Lease with another holder, renewal and version.
pub(crate) fn lease_json(name: &str, holder: &str, duration: i32, rv: u64, transitions: i32) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&fixture("lease-kube-controller-manager.json")).unwrap();
    v["metadata"]["name"] = name.into();
    v["metadata"]["resourceVersion"] = rv.to_string().into();
    v["spec"]["holderIdentity"] = holder.into();
    v["spec"]["leaseDurationSeconds"] = duration.into();
    v["spec"]["leaseTransitions"] = transitions.into();
    v["spec"]["renewTime"] = format!("2026-11-21T10:10:{:02}.455213Z", rv % 60).into();
    v
}

pub(crate) fn list_json(kind: &str, api_version: &str, rv: u64, items: Vec<serde_json::Value>) -> String {
    serde_json::json!({"kind":kind,"apiVersion":api_version,"metadata":{"resourceVersion":rv.to_string()},"items":items}).to_string()
}

/// A watch response body: one JSON event per line, as the API streams them.
pub(crate) fn events(evs: &[(&str, serde_json::Value)]) -> String {
    evs.iter().map(|(t, o)| serde_json::json!({"type": t, "object": o}).to_string() + "\n").collect()
}

/// The fixture's node `name` with its Ready condition set as the node controller sets it.
pub(crate) fn node_json(name: &str, status: &str, rv: u64) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&fixture("nodes-kubeadm-1.29.json")).unwrap();
    let mut n = list["items"].as_array().unwrap().iter().find(|n| n["metadata"]["name"] == name).unwrap().clone();
    n["metadata"]["resourceVersion"] = rv.to_string().into();
    for c in n["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = status.into();
            match status {
                "Unknown" => {
                    c["reason"] = "NodeStatusUnknown".into();
                    c["message"] = "Kubelet stopped posting node status.".into();
                    c["lastTransitionTime"] = "2026-11-21T10:11:00Z".into();
                }
                _ => {
                    c["reason"] = "KubeletReady".into();
                }
            }
        }
    }
    n
}

/// A queue of watch bodies: each watch request takes the next one, or waits for it.
#[derive(Clone)]
pub(crate) struct Script(Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>);

impl Script {
    pub fn new() -> (tokio::sync::mpsc::UnboundedSender<String>, Script) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Script(Arc::new(tokio::sync::Mutex::new(rx))))
    }
    pub async fn next(&self) -> Reply {
        match self.0.lock().await.recv().await {
            Some(b) => Ok((200, b)),
            None => futures::future::pending().await,
        }
    }
}

#[test]
fn scratch_namespaces_are_dns_labels_one_per_case() {
    let a = scratch_namespace("20261121T193514123-12345", "failover::apiserver_stop_lb_routes_around");
    let b = scratch_namespace("20261121T193514123-12345", "failover::kubelet_stop_node_not_ready");
    assert!(a.starts_with("hadrill-20261121t193514123-12345-"), "{a}");
    assert_ne!(a, b);
    for n in [&a, &b, &scratch_namespace(&"X".repeat(200), "c")] {
        assert!(n.len() <= 63, "{n}");
        assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
        assert!(!n.ends_with('-') && !n.starts_with('-'), "{n}");
    }
}

fn ns_handler(create: u16, existing: Option<String>) -> Handler {
    Arc::new(move |r: Req| {
        let existing = existing.clone();
        Box::pin(async move {
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", "/api/v1/namespaces") if create == 201 => Ok((201, r.body.clone())),
                ("POST", "/api/v1/namespaces") if create == 409 => {
                    Ok((409, status(409, "AlreadyExists", "namespaces \"hadrill-x\" already exists")))
                }
                ("POST", "/api/v1/namespaces") => Ok((create, status(create, "Forbidden", "namespaces is forbidden: User \"ci\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope"))),
                ("GET", p) if p.starts_with("/api/v1/namespaces/") => Ok((200, existing.clone().unwrap())),
                _ => Ok((404, status(404, "NotFound", "not found"))),
            }
        })
    })
}

#[tokio::test]
async fn a_scratch_namespace_is_created_labelled_or_reused_only_when_ours() {
    let (c, _, _, seen, _t) = scripted(ns_handler(201, None));
    ensure_namespace(&c, "hadrill-x", "20261121T101010123-4242", "failover::c", REQUEST_T).await.unwrap();
    assert_eq!(seen.lock().unwrap().as_slice(), ["POST /api/v1/namespaces?"]);

    let (c, _, _, _, _t) = scripted(ns_handler(409, Some(namespace_json("hadrill-x", true, false))));
    ensure_namespace(&c, "hadrill-x", "r", "c", REQUEST_T).await.expect("409 on hadrill's own namespace is fine");

    let (c, _, _, _, _t) = scripted(ns_handler(409, Some(namespace_json("hadrill-x", false, false))));
    let e = ensure_namespace(&c, "hadrill-x", "r", "c", REQUEST_T).await.unwrap_err();
    assert!(matches!(e, KubeProbeError::NotOurs { .. }), "{e}");
    assert!(e.to_string().contains("refusing to write into it"), "{e}");

    let (c, _, _, _, _t) = scripted(ns_handler(409, Some(namespace_json("hadrill-x", true, true))));
    let e = ensure_namespace(&c, "hadrill-x", "r", "c", REQUEST_T).await.unwrap_err();
    assert!(matches!(e, KubeProbeError::Terminating { .. }), "{e}");

    let (c, _, _, _, _t) = scripted(ns_handler(403, None));
    let e = ensure_namespace(&c, "hadrill-x", "r", "c", REQUEST_T).await.unwrap_err().to_string();
    assert!(e.starts_with("create namespace hadrill-x: 403 Forbidden: namespaces is forbidden"), "{e}");
}

const REQUEST_T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_namespace_body_carries_the_label_recover_deletes_by() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b2 = bodies.clone();
    let (c, _, _, _, _t) = scripted(Arc::new(move |r: Req| {
        b2.lock().unwrap().push(r.body.clone());
        Box::pin(async move { Ok((201, r.body)) })
    }));
    ensure_namespace(&c, "hadrill-x", "20261121T101010123-4242", "failover::c", REQUEST_T).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(v["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
    assert_eq!(v["metadata"]["labels"][RUN_LABEL], "20261121T101010123-4242");
    assert_eq!(v["metadata"]["labels"][ROLE_LABEL], "scratch");
    assert_eq!(v["metadata"]["annotations"][CASE_ANNOTATION], "failover::c");
}

#[tokio::test]
async fn leftovers_of_dead_runs_are_deleted_and_live_ones_left_alone() {
    let (c, _, _, seen, _t) = scripted(Arc::new(|r: Req| {
        Box::pin(async move {
            match r.method.as_str() {
                "GET" => {
                    assert!(
                        r.has("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dhadrill%2Chadrill.io%2Frole%3Dscratch"),
                        "{}",
                        r.query
                    );
                    let items: Vec<serde_json::Value> = ["hadrill-a", "hadrill-b", "hadrill-c"]
                        .iter()
                        .map(|n| serde_json::from_str(&namespace_json(n, true, *n == "hadrill-c")).unwrap())
                        .collect();
                    Ok((200, list_json("NamespaceList", "v1", 901, items)))
                }
                "DELETE" if r.path.ends_with("hadrill-a") => Ok((200, namespace_json("hadrill-a", true, true))),
                _ => Ok((404, status(404, "NotFound", "not found"))),
            }
        })
    }));
    let alive = |_: &str, _: &str| None;
    let out = delete_leftovers(&c, REQUEST_T, alive).await.unwrap();
    assert_eq!(out[0], Leftover::Deleted("hadrill-a".into()));
    // a 404 on delete: already gone, fine
    assert_eq!(out[1], Leftover::Deleted("hadrill-b".into()));
    assert_eq!(out[2], Leftover::AlreadyTerminating("hadrill-c".into()));
    assert_eq!(seen.lock().unwrap().iter().filter(|s| s.starts_with("DELETE")).count(), 2);

    let alive = |run: &str, _: &str| (run == "20261121T101010123-4242").then(|| "alive".to_string());
    let out = delete_leftovers(&c, REQUEST_T, alive).await.unwrap();
    assert!(matches!(&out[0], Leftover::Alive(n, _) if n == "hadrill-a"), "{out:?}");
    assert_eq!(seen.lock().unwrap().iter().filter(|s| s.starts_with("DELETE")).count(), 2, "nothing more deleted");
}

#[test]
fn a_run_on_another_host_is_not_judged_alive_here() {
    assert_eq!(run_alive_here(&format!("20261121T101010123-{}", std::process::id()), "some-other-host"), None);
    let here = this_host();
    assert!(run_alive_here(&format!("20261121T101010123-{}", std::process::id()), &here).is_some());
    // pid 1 is always alive; a pid beyond pid_max never is
    assert!(run_alive_here("20261121T101010123-1", &here).is_some());
    assert_eq!(run_alive_here("20261121T101010123-99999999", &here), None);
}

/// An API behind a load balancer whose backends can be made to fail: `mode` 0 answers, 1
/// answers 503 (an apiserver going away), 2 refuses the connection.
pub(crate) fn configmap_api(mode: Arc<AtomicUsize>) -> Handler {
    let store: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    Arc::new(move |r: Req| {
        let (mode, store) = (mode.clone(), store.clone());
        Box::pin(async move {
            match mode.load(Ordering::SeqCst) {
                1 => {
                    return Ok((
                        503,
                        status(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
                    ))
                }
                2 => return Err("tcp connect error: Connection refused (os error 111)".into()),
                _ => {}
            }
            let ns = r.path.split('/').nth(4).unwrap_or("").to_string();
            let name = r.path.rsplit('/').next().unwrap_or("").to_string();
            match r.method.as_str() {
                "POST" if r.path == "/api/v1/namespaces" => Ok((201, r.body)),
                "POST" => {
                    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                    let name = v["metadata"]["name"].as_str().unwrap().to_string();
                    if store.lock().unwrap().insert(name.clone(), 0).is_some() {
                        return Ok((
                            409,
                            status(409, "AlreadyExists", &format!("configmaps \"{name}\" already exists")),
                        ));
                    }
                    Ok((201, configmap_json(&ns, &name, 0, 1)))
                }
                "PUT" => {
                    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                    assert!(v["metadata"]["resourceVersion"].is_null(), "an unconditional update");
                    let seq: u64 = v["data"]["seq"].as_str().unwrap().parse().unwrap();
                    let mut s = store.lock().unwrap();
                    let Some(cur) = s.get_mut(&name) else {
                        return Ok((404, status(404, "NotFound", &format!("configmaps \"{name}\" not found"))));
                    };
                    *cur = (*cur).max(seq);
                    Ok((200, configmap_json(&ns, &name, seq, seq + 1)))
                }
                "GET" => {
                    let s = store.lock().unwrap();
                    match s.get(&name) {
                        Some(seq) => Ok((200, configmap_json(&ns, &name, *seq, seq + 1))),
                        None => Ok((404, status(404, "NotFound", &format!("configmaps \"{name}\" not found")))),
                    }
                }
                "DELETE" => Ok((200, namespace_json(&name, true, true))),
                _ => Ok((405, status(405, "MethodNotAllowed", "no"))),
            }
        })
    })
}

#[tokio::test]
async fn the_api_probe_writes_and_reads_over_both_clients_and_records_an_outage() {
    let mode = Arc::new(AtomicUsize::new(0));
    let (c, fresh, made, _, _t) = scripted(configmap_api(mode.clone()));
    prepare_configmaps(&c, "hadrill-x", REQUEST_T).await.unwrap();
    // twice: 409 AlreadyExists is fine
    prepare_configmaps(&c, "hadrill-x", REQUEST_T).await.unwrap();
    let h = Arc::new(ApiHistory::new("hadrill-x"));
    let tl = Arc::new(Timeline::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_api(
        ApiProbe { per_second: 20, timeout: Duration::from_millis(500) },
        c,
        fresh,
        h.clone(),
        tl.clone(),
        stop_rx,
    ));
    let wait_for = |n: usize, h: Arc<ApiHistory>, t: Instant| async move {
        crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            let h = h.clone();
            async move { (h.ok_since(ClientKind::Reused, t) >= n && h.ok_since(ClientKind::Fresh, t) >= n).then_some(()) }
        })
        .await
    };
    assert!(wait_for(6, h.clone(), Instant::now()).await.is_some(), "the probe answers: {:?}", h.ops().last());
    let outage = Instant::now();
    mode.store(1, Ordering::SeqCst);
    crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let h = h.clone();
        async move { (h.ops().iter().filter(|o| o.start >= outage && o.outcome.is_err()).count() >= 8).then_some(()) }
    })
    .await
    .unwrap();
    mode.store(2, Ordering::SeqCst);
    crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let h = h.clone();
        async move {
            h.ops().iter().any(|o| o.outcome.as_ref().is_err_and(|e| e.contains("Connection refused"))).then_some(())
        }
    })
    .await
    .unwrap();
    let healed = Instant::now();
    mode.store(0, Ordering::SeqCst);
    assert!(wait_for(4, h.clone(), Instant::now()).await.is_some());
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert!(h.settled());

    let ops = h.ops();
    let fresh_ops = ops.iter().filter(|o| o.client == ClientKind::Fresh).count();
    assert_eq!(
        made.load(Ordering::SeqCst),
        fresh_ops,
        "one new client (a new connection) per request over the fresh client"
    );
    assert!(ops.iter().any(|o| o.outcome.as_ref().is_err_and(|e| e.starts_with("503 ServiceUnavailable"))), "{ops:?}");
    for kind in [ClientKind::Reused, ClientKind::Fresh] {
        let spans = crate::check::failover::failure_spans(&ops, kind, outage, Instant::now());
        assert_eq!(spans.len(), 1, "{kind:?}: one outage: {spans:?}");
        let s = &spans[0];
        assert!(!s.open);
        // the outage lasted from the switch to 503 until the heal (within a tick or two)
        let real = healed.saturating_duration_since(outage);
        assert!(
            s.length() + Duration::from_millis(300) >= real && s.length() <= real + Duration::from_millis(700),
            "{kind:?}: measured {:?}, real {:?}",
            s.length(),
            real
        );
    }
    let text = Timeline::render(&tl.events());
    assert!(text.contains("API via reused connection: failing"), "{text}");
    assert!(text.contains("answering again"), "{text}");
}

#[tokio::test]
async fn a_stale_read_is_a_failure_an_ambiguous_one_is_not() {
    // the read answers an older seq than the write just acknowledged
    let read_seq = Arc::new(AtomicUsize::new(0));
    let r2 = read_seq.clone();
    let (c, fresh, _, _, _t) = scripted(Arc::new(move |r: Req| {
        let g = r2.load(Ordering::SeqCst) as u64;
        Box::pin(async move {
            match r.method.as_str() {
                "PUT" => Ok((200, r.body)),
                _ => Ok((200, configmap_json("hadrill-x", "probe-reused", g, 7))),
            }
        })
    }));
    let tl = Timeline::new();
    let cfg = ApiProbe { per_second: 1, timeout: REQUEST_T };
    let h = ApiHistory::new("hadrill-x");
    // the initial value, written before the probe started
    let ops = one_round(5, ClientKind::Reused, &cfg, &c, &fresh, &h, &tl).await;
    assert!(ops[0].outcome.is_ok());
    assert_eq!(
        ops[1].outcome,
        Err("stale read: seq 0 (acknowledged before write 5 started), after write 5 was acknowledged".into())
    );
    // seq 4's write is still in flight (or timed out): it may land after 5, not stale
    read_seq.store(4, Ordering::SeqCst);
    let ops = one_round(5, ClientKind::Reused, &cfg, &c, &fresh, &h, &tl).await;
    assert_eq!(ops[1].outcome, Ok(()));
    // seq 4 acknowledged before write 5 started: reading it after 5 was acknowledged is stale
    let t = Instant::now();
    h.push(ApiOp {
        seq: 4,
        client: ClientKind::Reused,
        verb: ApiVerb::Write,
        start: t,
        end: t,
        start_wall: Utc::now(),
        outcome: Ok(()),
    });
    let ops = one_round(5, ClientKind::Reused, &cfg, &c, &fresh, &h, &tl).await;
    assert!(ops[1].outcome.as_ref().is_err_and(|e| e.starts_with("stale read: seq 4")), "{:?}", ops[1]);
}

#[tokio::test]
async fn the_lease_watch_records_holder_changes_and_relists_after_410() {
    let (tx, script) = Script::new();
    let lists = Arc::new(AtomicUsize::new(0));
    let l2 = lists.clone();
    let (c, _, _, seen, _t) = scripted(Arc::new(move |r: Req| {
        let (script, lists) = (script.clone(), l2.clone());
        Box::pin(async move {
            assert_eq!(r.path, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases");
            assert!(r.has("fieldSelector=metadata.name%3Dkube-controller-manager"), "{}", r.query);
            if r.is_watch() {
                return script.next().await;
            }
            let n = lists.fetch_add(1, Ordering::SeqCst);
            let holder = if n == 0 { "cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55" } else { "cp-3_9d0e" };
            Ok((
                200,
                list_json(
                    "LeaseList",
                    "coordination.k8s.io/v1",
                    100 + n as u64,
                    vec![lease_json("kube-controller-manager", holder, 15, 100, 2)],
                ),
            ))
        })
    }));
    let h = Arc::new(WatchHistory::default());
    let tl = Arc::new(Timeline::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task =
        tokio::spawn(run_lease_watch(c, "kube-controller-manager".into(), REQUEST_T, h.clone(), tl.clone(), stop_rx));
    // renewals by the same holder, then a new holder
    tx.send(events(&[
        ("MODIFIED", lease_json("kube-controller-manager", "cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55", 15, 101, 2)),
        ("MODIFIED", lease_json("kube-controller-manager", "cp-1_77aa", 15, 102, 3)),
    ]))
    .unwrap();
    // the next watch is told its version is too old: the probe lists again
    tx.send(events(&[("ERROR", serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 102 (150)","reason":"Expired","code":410}))])).unwrap();
    let got = crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let h = h.clone();
        async move { h.leases().iter().any(|o| o.holder.as_deref() == Some("cp-3_9d0e")).then_some(()) }
    })
    .await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert!(got.is_some(), "relisted after 410: {:?}", seen.lock().unwrap());
    let holders: Vec<Option<String>> = h.leases().into_iter().map(|o| o.holder).collect();
    assert_eq!(holders[0].as_deref(), Some("cp-2_4f8c1a3e-8d6b-4e0a-9a43-2b7d6f1c0e55"));
    assert!(holders.contains(&Some("cp-1_77aa".into())));
    let obs = h.leases();
    let first_watch = obs.iter().find(|o| o.via == "watch").unwrap();
    assert_eq!(first_watch.duration, Some(Duration::from_secs(15)));
    assert_eq!(first_watch.transitions, Some(2));
    let text = Timeline::render(&tl.events());
    assert!(text.contains("lease kube-system/kube-controller-manager: holder cp-1_77aa"), "{text}");
    assert!(text.contains("too old resource version"), "{text}");
    // the first watch resumed from the list's version
    assert!(
        seen.lock().unwrap().iter().any(|s| s.contains("watch=true") && s.contains("resourceVersion=100")),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn the_node_watch_sees_ready_turn_unknown_when_the_kubelet_stops() {
    let (tx, script) = Script::new();
    let (c, _, _, _, _t) = scripted(Arc::new(move |r: Req| {
        let script = script.clone();
        Box::pin(async move {
            assert!(r.has("labelSelector=node-role.kubernetes.io%2Fcontrol-plane"), "{}", r.query);
            if r.is_watch() {
                return script.next().await;
            }
            Ok((200, fixture("nodes-kubeadm-1.29.json")))
        })
    }));
    let h = Arc::new(WatchHistory::default());
    let tl = Arc::new(Timeline::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_node_watch(c, REQUEST_T, h.clone(), tl.clone(), stop_rx));
    tx.send(events(&[("MODIFIED", node_json("cp-2", "Unknown", 48300))])).unwrap();
    let got = crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let h = h.clone();
        async move { h.nodes().iter().any(|o| o.node == "cp-2" && !o.ready()).then_some(()) }
    })
    .await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert!(got.is_some());
    let nodes = h.nodes();
    assert_eq!(nodes.iter().filter(|o| o.via == "list").count(), 3);
    assert!(nodes.iter().filter(|o| o.via == "list").all(|o| o.ready()));
    let down = nodes.iter().find(|o| !o.ready()).unwrap();
    assert_eq!((down.status.as_str(), down.reason.as_str()), ("Unknown", "NodeStatusUnknown"));
    let text = Timeline::render(&tl.events());
    assert!(text.contains("node cp-2: Ready=Unknown (NodeStatusUnknown"), "{text}");
}

/// A test double of one apiserver's HTTPS endpoint: a real rustls listener on 127.0.0.1 with
/// a certificate minted for `sans`, answering each request by its path. Records the request
/// heads it got.
pub(crate) struct TlsDouble {
    pub url: String,
    pub ca_pem: String,
    pub heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn tls_double(sans: &[&str], answer: fn(&str) -> (u16, String)) -> TlsDouble {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = crate::tls::mint::Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let m = ca
        .issue(&crate::tls::mint::LeafSpec {
            common_name: "kube-apiserver".into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            usage: crate::tls::mint::Usage::Server,
            not_before: now - chrono::Duration::hours(1),
            not_after: now + chrono::Duration::days(300),
        })
        .unwrap();
    let certs = rustls_pemfile::certs(&mut m.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes()).unwrap().unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h2 = heads.clone();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((s, _)) = l.accept().await {
            let (a, heads) = (acceptor.clone(), h2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = a.accept(s).await else { return };
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path =
                        head.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_string();
                    heads.lock().unwrap().push(head);
                    let (code, body) = answer(&path);
                    let resp = format!(
                        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
                        if code == 200 { "OK" } else { "Internal Server Error" },
                        body.len()
                    );
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    TlsDouble { url: format!("https://{addr}"), ca_pem: ca.cert_pem().to_string(), heads, task }
}

/// A kube config for `url` trusting `ca_pem`, authenticating with a bearer token.
pub(crate) fn config_for(url: &str, ca_pem: &str) -> kube::Config {
    let mut c = kube::Config::new(url.parse().unwrap());
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes()).next().unwrap().unwrap();
    c.root_cert = Some(vec![der.to_vec()]);
    c.auth_info = serde_json::from_value(serde_json::json!({"token": "hadrill-test-token"})).unwrap();
    c
}

/// `/readyz?verbose` of a 1.29 apiserver whose etcd is gone.
pub(crate) const READYZ_ETCD_FAILED: &str = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n[+]informer-sync ok\n[+]poststarthook/start-apiserver-admission-initializer ok\n[+]shutdown ok\nreadyz check failed\n";

#[tokio::test]
async fn health_is_read_over_verified_tls_as_the_kubeconfig_user() {
    let d = tls_double(&["127.0.0.1"], |path| match path {
        "/livez" => (200, "[+]ping ok\n[+]log ok\n[+]etcd ok\nlivez check passed\n".into()),
        _ => (500, READYZ_ETCD_FAILED.into()),
    })
    .await;
    let cfg = config_for(&d.url, &d.ca_pem);
    let answers = apiservers_health(&cfg, &[(d.url.clone(), Some("cp-1".into()))], REQUEST_T).await;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].result.as_ref().map(|(c, _)| *c), Ok(200), "{:?}", answers[0]);
    assert!(answers[0].ok());
    let (code, body) = answers[1].result.clone().unwrap();
    assert_eq!(code, 500);
    assert!(body.contains("[-]etcd failed"), "{body}");
    let heads = d.heads.lock().unwrap().clone();
    assert!(heads[0].starts_with("GET /livez?verbose HTTP/1.1"), "{}", heads[0]);
    assert!(
        heads.iter().all(|h| h.contains("authorization: Bearer hadrill-test-token")
            || h.contains("Authorization: Bearer hadrill-test-token")),
        "{heads:?}"
    );

    // a CA that did not sign the server's certificate: refused, named, no answer read
    let other = crate::tls::mint::Ca::generate("kubernetes").unwrap();
    let cfg = config_for(&d.url, other.cert_pem());
    let answers = apiservers_health(&cfg, &[(d.url.clone(), None)], REQUEST_T).await;
    let e = answers[1].result.clone().unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

static SICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::test]
async fn the_health_probe_records_when_an_apiserver_stops_being_ready_and_comes_back() {
    let d = tls_double(&["127.0.0.1"], |_| {
        if SICK.load(Ordering::SeqCst) {
            (500, READYZ_ETCD_FAILED.to_string())
        } else {
            (200, "readyz check passed".to_string())
        }
    })
    .await;
    let cfg = config_for(&d.url, &d.ca_pem);
    let tl = Arc::new(Timeline::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let eps = vec![(d.url.clone(), Some("cp-2".to_string()))];
    let task = tokio::spawn(run_health(cfg, eps, Duration::from_millis(50), REQUEST_T, tl.clone(), stop_rx));
    let seen = |tl: Arc<Timeline>, what: &'static str| async move {
        crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            let tl = tl.clone();
            async move { tl.events().iter().any(|e| e.message.ends_with(what)).then_some(()) }
        })
        .await
    };
    assert!(seen(tl.clone(), "/readyz: 200").await.is_some());
    SICK.store(true, Ordering::SeqCst);
    assert!(seen(tl.clone(), "/readyz: 500: [-]etcd failed: reason withheld").await.is_some());
    SICK.store(false, Ordering::SeqCst);
    crate::engine::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let tl = tl.clone();
        async move { (tl.events().iter().filter(|e| e.message.ends_with("/readyz: 200")).count() == 2).then_some(()) }
    })
    .await
    .expect("ready again");
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let lines: Vec<String> = tl.events().into_iter().map(|e| e.message).collect();
    // changes only, not every poll
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].starts_with(&format!("apiserver {} (node cp-2) /readyz: 500", d.url)), "{lines:?}");
}
