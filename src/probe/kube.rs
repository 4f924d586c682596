//! The Kubernetes probes: API writes and reads through the load balancer (a ConfigMap in a
//! scratch namespace, over one reused client and over a new connection per request), `/livez`
//! and `/readyz` of each apiserver on its own address, and watches on the leader-election
//! leases and the control-plane nodes' Ready conditions. Every request has its own deadline;
//! the probes append to shared histories and write transitions to the timeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use tokio::sync::{watch, Semaphore};

use super::Timeline;

/// The label every namespace hadrill creates carries (`hadrill recover` deletes by it).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "hadrill";
/// What a hadrill namespace is for: `scratch` for the API probe's (the `pod` node access
/// uses `node-access` for its pods). `recover` deletes only scratch namespaces.
pub const ROLE_LABEL: &str = "hadrill.io/role";
pub const ROLE_SCRATCH: &str = "scratch";
/// The label selector of the scratch namespaces.
pub const SCRATCH_SELECTOR: &str = "app.kubernetes.io/managed-by=hadrill,hadrill.io/role=scratch";
/// The run that created a scratch namespace (the ledger's run id).
pub const RUN_LABEL: &str = "hadrill.io/run";
/// The machine the run lives on, so `recover` can tell whether the run is still alive.
pub const HOST_ANNOTATION: &str = "hadrill.io/host";
pub const CASE_ANNOTATION: &str = "hadrill.io/case";
/// The ConfigMaps of the API probe, one per client kind.
pub const CONFIGMAPS: [&str; 2] = ["probe-reused", "probe-fresh"];

#[derive(Debug, thiserror::Error)]
pub enum KubeProbeError {
    #[error("create namespace {name}: {message}")]
    CreateNamespace {
        name: String,
        message: String,
        /// The API answered (with a refusal): the namespace was not created. False after a
        /// timeout or a transport error, when it may exist all the same.
        answered: bool,
    },
    #[error("namespace {name} exists and is not a hadrill scratch namespace (labels {SCRATCH_SELECTOR}): refusing to write into it")]
    NotOurs { name: String },
    #[error("namespace {name} is being deleted (phase Terminating): wait for it to go, or run `hadrill recover`")]
    Terminating { name: String },
    #[error("delete namespace {name}: {message}")]
    DeleteNamespace { name: String, message: String },
    #[error("list namespaces labelled {SCRATCH_SELECTOR}: {message}")]
    ListNamespaces { message: String },
    #[error("create ConfigMap {namespace}/{name}: {message}")]
    CreateConfigMap { namespace: String, name: String, message: String },
    #[error("build a client for {endpoint}: {message}")]
    Client { endpoint: String, message: String },
}

/// Makes a new kube client each call: a new connection pool, so the next request opens a new
/// TCP connection and does a new TLS handshake.
pub type ClientFactory = Arc<dyn Fn() -> Result<Client, String> + Send + Sync>;

/// A factory of fresh clients from a kubeconfig's resolved config.
pub fn fresh_clients(config: kube::Config) -> ClientFactory {
    Arc::new(move || Client::try_from(config.clone()).map_err(|e| crate::exit::chain(&e)))
}

/// One line for a kube error: the API's status message and reason, or the transport's chain.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => crate::exit::chain(other),
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Runs `fut` within `timeout`; a timeout is an error naming it.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, (Option<u16>, String)> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err((None, format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err((api_code(&e), describe(&e))),
        Ok(Ok(v)) => Ok(v),
    }
}

// ---------------------------------------------------------------------------------------
// The scratch namespace
// ---------------------------------------------------------------------------------------

/// The scratch namespace of one case of one run: `hadrill-<run id>-<case hash>`, a valid
/// DNS-1123 label (lowercase, at most 63 characters). One per case, so a namespace still
/// terminating from the previous case is never reused.
pub fn scratch_namespace(run_id: &str, case: &str) -> String {
    let run: String =
        run_id.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let mut h: u32 = 0x811c9dc5;
    for b in case.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    let mut run = run.trim_matches('-').to_string();
    run.truncate(63 - "hadrill-".len() - 9);
    format!("hadrill-{}-{h:08x}", run.trim_matches('-'))
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Creates the scratch namespace (labelled as hadrill's), or accepts it when it already
/// exists and is hadrill's. Refuses a namespace of the same name that is not hadrill's.
pub async fn ensure_namespace(
    client: &Client,
    name: &str,
    run_id: &str,
    case: &str,
    timeout: Duration,
) -> Result<(), KubeProbeError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                (ROLE_LABEL.to_string(), ROLE_SCRATCH.to_string()),
                (RUN_LABEL.to_string(), label_value(run_id)),
            ])),
            annotations: Some(BTreeMap::from([
                (HOST_ANNOTATION.to_string(), this_host()),
                (CASE_ANNOTATION.to_string(), case.to_string()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    let fail = |code: Option<u16>, m: String| KubeProbeError::CreateNamespace {
        name: name.into(),
        message: m,
        answered: code.is_some(),
    };
    match bounded(timeout, api.create(&PostParams::default(), &ns)).await {
        Ok(_) => Ok(()),
        Err((Some(409), _)) => {
            let got = bounded(timeout, api.get(name)).await.map_err(|(_, m)| fail(Some(409), m))?;
            let labels = got.metadata.labels.clone().unwrap_or_default();
            let ours = labels.get(MANAGED_BY).is_some_and(|v| v == MANAGED_BY_VALUE)
                && labels.get(ROLE_LABEL).is_some_and(|v| v == ROLE_SCRATCH);
            if !ours {
                return Err(KubeProbeError::NotOurs { name: name.into() });
            }
            if got.metadata.deletion_timestamp.is_some()
                || got.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
            {
                return Err(KubeProbeError::Terminating { name: name.into() });
            }
            Ok(())
        }
        Err((code, m)) => Err(fail(code, m)),
    }
}

fn label_value(v: &str) -> String {
    let mut s: String =
        v.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    s.truncate(63);
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Deletes a scratch namespace (the API removes what is in it). A namespace that is already
/// gone is fine. Does not wait for the deletion to finish.
pub async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<(), KubeProbeError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match bounded(timeout, api.delete(name, &DeleteParams::background())).await {
        Ok(_) | Err((Some(404), _)) => Ok(()),
        Err((_, m)) => Err(KubeProbeError::DeleteNamespace { name: name.into(), message: m }),
    }
}

/// What `recover` did with one leftover scratch namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Leftover {
    Deleted(String),
    /// Left alone: its run is still alive (why).
    Alive(String, String),
    AlreadyTerminating(String),
    Failed(String, String),
}

/// Deletes every namespace labelled as hadrill's whose run is not alive (`alive` says, from
/// the run label and the host annotation, whether a run still is).
pub async fn delete_leftovers(
    client: &Client,
    timeout: Duration,
    alive: impl Fn(&str, &str) -> Option<String>,
) -> Result<Vec<Leftover>, KubeProbeError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = SCRATCH_SELECTOR;
    let list = bounded(timeout, api.list(&ListParams::default().labels(selector)))
        .await
        .map_err(|(_, m)| KubeProbeError::ListNamespaces { message: m })?;
    let mut out = Vec::new();
    for ns in list.items {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_some() {
            out.push(Leftover::AlreadyTerminating(name));
            continue;
        }
        let run = ns.metadata.labels.as_ref().and_then(|l| l.get(RUN_LABEL)).cloned().unwrap_or_default();
        let host = ns.metadata.annotations.as_ref().and_then(|a| a.get(HOST_ANNOTATION)).cloned().unwrap_or_default();
        if let Some(why) = alive(&run, &host) {
            out.push(Leftover::Alive(name, why));
            continue;
        }
        match delete_namespace(client, &name, timeout).await {
            Ok(()) => out.push(Leftover::Deleted(name)),
            Err(e) => out.push(Leftover::Failed(name, e.to_string())),
        }
    }
    Ok(out)
}

/// Whether the run `run_id` (`<time>-<pid>`, as the ledger names runs) is alive: only known
/// when it ran on this host.
pub fn run_alive_here(run_id: &str, host: &str) -> Option<String> {
    if host != this_host() {
        return None;
    }
    let pid: i32 = run_id.rsplit('-').next()?.parse().ok()?;
    if pid as u32 == std::process::id() {
        return Some(format!("run {run_id} is this process"));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .ok()
        .map(|_| format!("run {run_id} is still alive as pid {pid} on this host"))
}

/// Creates the probe's ConfigMaps in `ns` (an existing one is fine).
pub async fn prepare_configmaps(client: &Client, ns: &str, timeout: Duration) -> Result<(), KubeProbeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in CONFIGMAPS {
        match bounded(timeout, api.create(&PostParams::default(), &configmap(name, 0, "created"))).await {
            Ok(_) | Err((Some(409), _)) => {}
            Err((_, m)) => {
                return Err(KubeProbeError::CreateConfigMap { namespace: ns.into(), name: name.into(), message: m })
            }
        }
    }
    Ok(())
}

fn configmap(name: &str, seq: u64, at: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("seq".to_string(), seq.to_string()), ("at".to_string(), at.to_string())])),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// The API probe
// ---------------------------------------------------------------------------------------

/// Which client made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientKind {
    /// One client for the whole case: requests reuse its connections.
    Reused,
    /// A new client per request: a new TCP connection and TLS handshake each time.
    Fresh,
}

impl ClientKind {
    pub fn label(self) -> &'static str {
        match self {
            ClientKind::Reused => "reused connection",
            ClientKind::Fresh => "new connection per request",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            ClientKind::Reused => "reused",
            ClientKind::Fresh => "fresh",
        }
    }
    fn configmap(self) -> &'static str {
        match self {
            ClientKind::Reused => CONFIGMAPS[0],
            ClientKind::Fresh => CONFIGMAPS[1],
        }
    }
}

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVerb {
    /// Update (PUT) of the ConfigMap.
    Write,
    /// Get of the ConfigMap, which must show the write before it.
    Read,
}

/// One request of the API probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiOp {
    pub seq: u64,
    pub client: ClientKind,
    pub verb: ApiVerb,
    pub start: Instant,
    pub end: Instant,
    pub start_wall: DateTime<Utc>,
    /// Ok, or the error (an API status, a transport error, a timeout, a stale read).
    pub outcome: Result<(), String>,
}

/// Every request of the API probe.
#[derive(Debug)]
pub struct ApiHistory {
    pub namespace: String,
    ops: Mutex<Vec<ApiOp>>,
    started: AtomicU64,
    finished: AtomicU64,
}

impl ApiHistory {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            ops: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }
    pub fn push(&self, op: ApiOp) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
    /// Every op, sorted by start.
    pub fn ops(&self) -> Vec<ApiOp> {
        let mut v = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|o| (o.start, o.seq, o.client, o.verb as u8));
        v
    }
    /// Successful requests of `kind` that ended at or after `t`.
    pub fn ok_since(&self, kind: ClientKind, t: Instant) -> usize {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|o| o.client == kind && o.outcome.is_ok() && o.end >= t)
            .count()
    }
    /// Whether write `seq` of `kind` was acknowledged before `t` (seq 0 is the ConfigMap's
    /// creation, before the probe started).
    pub fn acknowledged_before(&self, kind: ClientKind, seq: u64, t: Instant) -> bool {
        seq == 0
            || self
                .ops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|o| o.client == kind && o.verb == ApiVerb::Write && o.seq == seq && o.outcome.is_ok() && o.end < t)
    }
    /// Whether every round started so far has ended.
    pub fn settled(&self) -> bool {
        self.finished.load(Ordering::SeqCst) >= self.started.load(Ordering::SeqCst)
    }
}

/// Settings of the API probe.
#[derive(Debug, Clone)]
pub struct ApiProbe {
    pub per_second: u32,
    pub timeout: Duration,
}

/// Runs the API probe until `stop`: at each tick, for each client kind, a write then a read of
/// that kind's ConfigMap, each within its own deadline. Waits for the rounds in flight.
pub async fn run_api(
    cfg: ApiProbe,
    reused: Client,
    fresh: ClientFactory,
    history: Arc<ApiHistory>,
    timeline: Arc<Timeline>,
    mut stop: watch::Receiver<bool>,
) {
    let rate = cfg.per_second.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let max_inflight = ((rate as f64 * 2.0 * (cfg.timeout.as_secs_f64() * 2.0 + 1.0)).ceil() as usize).clamp(4, 256);
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let streaks = Arc::new(Mutex::new(BTreeMap::<ClientKind, Streak>::new()));
    timeline.record(
        "probe:kube-api",
        format!(
            "API probe started: {rate}/s write+read of ConfigMaps {} in namespace {}, {:?} per request, reused and new connections",
            CONFIGMAPS.join(","),
            history.namespace,
            cfg.timeout
        ),
    );
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if *stop.borrow() {
            break;
        }
        seq += 1;
        for kind in [ClientKind::Reused, ClientKind::Fresh] {
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                continue;
            };
            history.started.fetch_add(1, Ordering::SeqCst);
            let (reused, fresh, history, timeline, streaks, cfg) =
                (reused.clone(), fresh.clone(), history.clone(), timeline.clone(), streaks.clone(), cfg.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let ops = one_round(seq, kind, &cfg, &reused, &fresh, &history, &timeline).await;
                for op in ops {
                    streaks.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default().note(&op, &timeline);
                    history.push(op);
                }
                history.finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    let _ = tokio::time::timeout(cfg.timeout * 2 + Duration::from_secs(2), inflight.acquire_many(max_inflight as u32))
        .await;
    let ops = history.ops();
    let ok = ops.iter().filter(|o| o.outcome.is_ok()).count();
    timeline.record("probe:kube-api", format!("API probe stopped: {} requests, {ok} answered", ops.len()));
}

async fn one_round(
    seq: u64,
    kind: ClientKind,
    cfg: &ApiProbe,
    reused: &Client,
    fresh: &ClientFactory,
    history: &ApiHistory,
    timeline: &Timeline,
) -> Vec<ApiOp> {
    let ns = history.namespace.as_str();
    let client = |_: ()| -> Result<Client, String> {
        match kind {
            ClientKind::Reused => Ok(reused.clone()),
            ClientKind::Fresh => fresh().map_err(|e| format!("cannot build a client: {e}")),
        }
    };
    let name = kind.configmap();
    let start = Instant::now();
    let start_wall = timeline.wall_at(start);
    let at = start_wall.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let write = match client(()) {
        Err(e) => Err(e),
        Ok(c) => {
            let api: Api<ConfigMap> = Api::namespaced(c, ns);
            bounded(cfg.timeout, api.replace(name, &PostParams::default(), &configmap(name, seq, &at)))
                .await
                .map(|_| ())
                .map_err(|(_, m)| m)
        }
    };
    let written = write.is_ok();
    let w_start = start;
    let w = ApiOp { seq, client: kind, verb: ApiVerb::Write, start, end: Instant::now(), start_wall, outcome: write };
    let start = Instant::now();
    let start_wall = timeline.wall_at(start);
    let read = match client(()) {
        Err(e) => Err(e),
        Ok(c) => {
            let api: Api<ConfigMap> = Api::namespaced(c, ns);
            match bounded(cfg.timeout, api.get(name)).await {
                Err((_, m)) => Err(m),
                Ok(cm) => {
                    let got: Option<u64> = cm.data.as_ref().and_then(|d| d.get("seq")).and_then(|s| s.parse().ok());
                    match got {
                        // the read is a quorum read: it sees the acknowledged write before it
                        // or a later one. An older value is stale only when its write was
                        // acknowledged before this one started (rounds overlap, and a write
                        // that timed out may still land late)
                        Some(g) if written && g < seq && history.acknowledged_before(kind, g, w_start) => Err(format!(
                            "stale read: seq {g} (acknowledged before write {seq} started), after write {seq} was acknowledged"
                        )),
                        Some(_) => Ok(()),
                        None => Err(format!("ConfigMap {ns}/{name} has no data.seq")),
                    }
                }
            }
        }
    };
    let r = ApiOp { seq, client: kind, verb: ApiVerb::Read, start, end: Instant::now(), start_wall, outcome: read };
    vec![w, r]
}

/// Writes the API probe's transitions (answering ↔ failing) to the timeline.
#[derive(Default)]
struct Streak {
    failing: Option<bool>,
    since: Option<Instant>,
}

impl Streak {
    fn note(&mut self, op: &ApiOp, timeline: &Timeline) {
        let failing = op.outcome.is_err();
        if self.failing == Some(failing) {
            return;
        }
        let what = format!("API via {}", op.client.label());
        let msg = match (&op.outcome, self.since) {
            (Err(e), _) => format!("{what}: failing ({:?} of ConfigMap seq {}): {e}", op.verb, op.seq),
            (Ok(()), Some(t)) if self.failing == Some(true) => {
                format!(
                    "{what}: answering again ({:.3}s after the first failure)",
                    op.end.saturating_duration_since(t).as_secs_f64()
                )
            }
            (Ok(()), _) => format!("{what}: answering"),
        };
        timeline.record_at(if failing { op.start } else { op.end }, "probe:kube-api", msg);
        self.failing = Some(failing);
        self.since = Some(op.start);
    }
}

// ---------------------------------------------------------------------------------------
// /livez and /readyz of each apiserver
// ---------------------------------------------------------------------------------------

/// A client that talks to one apiserver at `url` directly, with the kubeconfig's CA and
/// credentials (client certificate, token, exec plugin: whatever the kubeconfig uses).
pub fn endpoint_client(config: &kube::Config, url: &str, timeout: Duration) -> Result<Client, KubeProbeError> {
    let fail = |m: String| KubeProbeError::Client { endpoint: url.into(), message: m };
    let mut c = config.clone();
    c.cluster_url = url.parse().map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
    c.connect_timeout = Some(timeout);
    c.read_timeout = Some(timeout);
    Client::try_from(c).map_err(|e| fail(crate::exit::chain(&e)))
}

/// One health endpoint's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthAnswer {
    /// The apiserver's own URL.
    pub endpoint: String,
    pub node: Option<String>,
    /// `/livez` or `/readyz`.
    pub path: String,
    /// The HTTP status and the `?verbose` body, or why there was none.
    pub result: Result<(u16, String), String>,
}

impl HealthAnswer {
    pub fn ok(&self) -> bool {
        matches!(self.result, Ok((200, _)))
    }
}

/// `GET <path>?verbose` through `client`, within `timeout`.
pub async fn health(client: &Client, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let fut = async {
        let req = http::Request::get(format!("{path}?verbose"))
            .body(kube::client::Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = client.send(req).await.map_err(|e| describe(&e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect_bytes().await.map_err(|e| describe(&e))?;
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `/livez` and `/readyz` of every apiserver endpoint `(url, node)`, each directly.
pub async fn apiservers_health(
    config: &kube::Config,
    endpoints: &[(String, Option<String>)],
    timeout: Duration,
) -> Vec<HealthAnswer> {
    let mut out = Vec::new();
    let answers = futures::future::join_all(endpoints.iter().map(|(url, node)| async move {
        let mut v = Vec::new();
        match endpoint_client(config, url, timeout) {
            Err(e) => {
                for path in ["/livez", "/readyz"] {
                    v.push(HealthAnswer {
                        endpoint: url.clone(),
                        node: node.clone(),
                        path: path.into(),
                        result: Err(e.to_string()),
                    });
                }
            }
            Ok(c) => {
                for path in ["/livez", "/readyz"] {
                    let result = health(&c, path, timeout).await;
                    v.push(HealthAnswer { endpoint: url.clone(), node: node.clone(), path: path.into(), result });
                }
            }
        }
        v
    }))
    .await;
    for a in answers {
        out.extend(a);
    }
    out
}

/// One line for a health answer: `200`, `500: [-]etcd failed: reason withheld`, or why none.
pub fn health_line(r: &Result<(u16, String), String>) -> String {
    match r {
        Ok((200, _)) => "200".into(),
        Ok((code, body)) => {
            let failing: Vec<&str> = body.lines().map(str::trim).filter(|l| l.starts_with("[-]")).collect();
            if failing.is_empty() {
                format!("{code}: {}", body.lines().next().unwrap_or("").chars().take(120).collect::<String>())
            } else {
                format!("{code}: {}", failing.join(", "))
            }
        }
        Err(e) => format!("no answer: {e}"),
    }
}

/// Asks every apiserver endpoint `(url, node)` for `/readyz` every `interval` (each request
/// within `timeout`) until `stop`; writes each change of answer to the timeline.
pub async fn run_health(
    config: kube::Config,
    endpoints: Vec<(String, Option<String>)>,
    interval: Duration,
    timeout: Duration,
    timeline: Arc<Timeline>,
    stop: watch::Receiver<bool>,
) {
    let tasks: Vec<_> = endpoints
        .into_iter()
        .map(|(url, node)| {
            let (config, timeline, mut stop) = (config.clone(), timeline.clone(), stop.clone());
            tokio::spawn(async move {
                let who = match &node {
                    Some(n) => format!("apiserver {url} (node {n})"),
                    None => format!("apiserver {url}"),
                };
                let client = match endpoint_client(&config, &url, timeout) {
                    Ok(c) => c,
                    Err(e) => {
                        timeline.record("probe:kube-health", format!("{who}: {e}"));
                        return;
                    }
                };
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut last = String::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick() => {}
                    }
                    if *stop.borrow() {
                        break;
                    }
                    let at = Instant::now();
                    let line = health_line(&health(&client, "/readyz", timeout).await);
                    if line != last {
                        timeline.record_at(at, "probe:kube-health", format!("{who} /readyz: {line}"));
                        last = line;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------------------------------
// Watches: leases and node Ready conditions
// ---------------------------------------------------------------------------------------

/// One observation of a leader-election lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseObs {
    pub at: Instant,
    pub lease: String,
    /// None when the lease is missing or has no holder (released).
    pub holder: Option<String>,
    pub duration: Option<Duration>,
    pub renew_time: Option<DateTime<Utc>>,
    pub acquire_time: Option<DateTime<Utc>>,
    pub transitions: Option<i32>,
    /// `list`, `watch` or `get` (the fallback poll).
    pub via: &'static str,
}

/// One observation of a node's Ready condition.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObs {
    pub at: Instant,
    pub node: String,
    /// `True`, `False`, `Unknown` (the node controller's verdict once the kubelet stops
    /// posting), or `absent`.
    pub status: String,
    pub reason: String,
    pub last_transition: Option<DateTime<Utc>>,
    pub via: &'static str,
}

impl NodeObs {
    pub fn ready(&self) -> bool {
        self.status == "True"
    }
}

/// What the watches saw, in arrival order. `changes` ticks on every observation, so a wait
/// wakes on news rather than on a timer.
#[derive(Debug)]
pub struct WatchHistory {
    leases: Mutex<Vec<LeaseObs>>,
    nodes: Mutex<Vec<NodeObs>>,
    changes: watch::Sender<u64>,
}

impl Default for WatchHistory {
    fn default() -> Self {
        Self { leases: Mutex::default(), nodes: Mutex::default(), changes: watch::channel(0).0 }
    }
}

impl WatchHistory {
    pub fn push_lease(&self, o: LeaseObs) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).push(o);
        self.changes.send_modify(|v| *v += 1);
    }
    pub fn push_node(&self, o: NodeObs) {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).push(o);
        self.changes.send_modify(|v| *v += 1);
    }
    pub fn leases(&self) -> Vec<LeaseObs> {
        let mut v = self.leases.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|o| o.at);
        v
    }
    pub fn nodes(&self) -> Vec<NodeObs> {
        let mut v = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|o| o.at);
        v
    }
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn chrono_of(ts: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
}

/// The observation a Lease object makes.
pub fn lease_obs(l: &Lease, at: Instant, via: &'static str) -> LeaseObs {
    let spec = l.spec.clone().unwrap_or_default();
    LeaseObs {
        at,
        lease: l.metadata.name.clone().unwrap_or_default(),
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        duration: spec.lease_duration_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        renew_time: spec.renew_time.as_ref().and_then(|t| chrono_of(&t.0)),
        acquire_time: spec.acquire_time.as_ref().and_then(|t| chrono_of(&t.0)),
        transitions: spec.lease_transitions,
        via,
    }
}

/// The observation a Node object makes of its Ready condition.
pub fn node_obs(n: &Node, at: Instant, via: &'static str) -> NodeObs {
    let cond = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned();
    NodeObs {
        at,
        node: n.metadata.name.clone().unwrap_or_default(),
        status: cond.as_ref().map(|c| c.status.clone()).unwrap_or_else(|| "absent".into()),
        reason: cond.as_ref().and_then(|c| c.reason.clone()).unwrap_or_default(),
        last_transition: cond.as_ref().and_then(|c| c.last_transition_time.as_ref()).and_then(|t| chrono_of(&t.0)),
        via,
    }
}

/// How long a watch may stay silent before it is re-established (a connection through an
/// apiserver that died can hang without a reset).
const LEASE_IDLE: Duration = Duration::from_secs(20);
const NODE_IDLE: Duration = Duration::from_secs(90);
/// The server closes each watch after this long; it is then re-established.
const WATCH_SERVER_TIMEOUT: u32 = 290;

/// Lists, then watches from the list's resourceVersion; re-watches from the last version seen
/// when a watch ends, re-lists when the version is gone (410) or on any error. Calls `seen`
/// with every object. Runs until `stop`.
#[allow(clippy::too_many_arguments)] // the watch's parts, each used once
async fn watch_loop<K>(
    api: Api<K>,
    selector: WatchSelector,
    what: String,
    idle: Duration,
    timeout: Duration,
    timeline: Arc<Timeline>,
    seen: impl Fn(&K, Instant, &'static str),
    mut stop: watch::Receiver<bool>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let lp = selector.list();
    let wp = selector.watch(WATCH_SERVER_TIMEOUT);
    let mut last_error = String::new();
    let mut note_error = |m: String, timeline: &Timeline| {
        if m != last_error {
            timeline.record("probe:kube-watch", format!("watch on {what}: {m}"));
            last_error = m;
        }
    };
    'relist: loop {
        if *stop.borrow() {
            return;
        }
        let list = match bounded(timeout, api.list(&lp)).await {
            Ok(l) => l,
            Err((_, m)) => {
                note_error(format!("list failed, retrying in 1s: {m}"), &timeline);
                tokio::select! { _ = stop.changed() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                continue 'relist;
            }
        };
        let at = Instant::now();
        for o in &list.items {
            seen(o, at, "list");
        }
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        loop {
            let stream = match bounded(timeout, api.watch(&wp, &rv)).await {
                Ok(s) => s,
                Err((_, m)) => {
                    note_error(format!("watch failed, re-listing in 1s: {m}"), &timeline);
                    tokio::select! { _ = stop.changed() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                    continue 'relist;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::select! {
                    _ = stop.changed() => return,
                    n = tokio::time::timeout(idle, stream.next()) => n,
                };
                match next {
                    // silent for too long: re-watch from the last version
                    Err(_) => break,
                    Ok(None) => break,
                    Ok(Some(Ok(WatchEvent::Added(o)))) | Ok(Some(Ok(WatchEvent::Modified(o)))) => {
                        if let Some(v) = o.meta().resource_version.clone() {
                            rv = v;
                        }
                        seen(&o, Instant::now(), "watch");
                    }
                    Ok(Some(Ok(WatchEvent::Deleted(o)))) => {
                        if let Some(v) = o.meta().resource_version.clone() {
                            rv = v;
                        }
                        timeline.record(
                            "probe:kube-watch",
                            format!("{what}: {} deleted", o.meta().name.clone().unwrap_or_default()),
                        );
                    }
                    Ok(Some(Ok(WatchEvent::Bookmark(b)))) => rv = b.metadata.resource_version,
                    Ok(Some(Ok(WatchEvent::Error(e)))) => {
                        note_error(
                            format!("the API ended the watch ({} {}): re-listing", e.code, e.message),
                            &timeline,
                        );
                        continue 'relist;
                    }
                    Ok(Some(Err(e))) => {
                        note_error(format!("watch stream broke ({}): re-listing", describe(&e)), &timeline);
                        continue 'relist;
                    }
                }
            }
        }
    }
}

/// What a watch selects.
#[derive(Debug, Clone)]
enum WatchSelector {
    Name(String),
    Labels(String),
}

impl WatchSelector {
    fn list(&self) -> ListParams {
        match self {
            WatchSelector::Name(n) => ListParams::default().fields(&format!("metadata.name={n}")),
            WatchSelector::Labels(l) => ListParams::default().labels(l),
        }
    }
    fn watch(&self, secs: u32) -> WatchParams {
        let wp = WatchParams::default().timeout(secs);
        match self {
            WatchSelector::Name(n) => wp.fields(&format!("metadata.name={n}")),
            WatchSelector::Labels(l) => wp.labels(l),
        }
    }
}

/// Watches the leases `names` in kube-system; records every observation and holder changes.
pub async fn run_lease_watch(
    client: Client,
    name: String,
    timeout: Duration,
    history: Arc<WatchHistory>,
    timeline: Arc<Timeline>,
    stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    let last: Mutex<Option<Option<String>>> = Mutex::new(None);
    let tl = timeline.clone();
    let seen = move |l: &Lease, at: Instant, via: &'static str| {
        let o = lease_obs(l, at, via);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() != Some(&o.holder) {
            let msg = match &o.holder {
                Some(h) => format!(
                    "lease kube-system/{}: holder {h} (acquired {}, {} transitions, duration {}s)",
                    o.lease,
                    o.acquire_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                    o.transitions.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    o.duration.map(|d| d.as_secs().to_string()).unwrap_or_else(|| "-".into()),
                ),
                None => format!("lease kube-system/{}: no holder (released)", o.lease),
            };
            tl.record_at(at, "probe:kube-lease", msg);
            *last = Some(o.holder.clone());
        }
        history.push_lease(o);
    };
    watch_loop(
        api,
        WatchSelector::Name(name.clone()),
        format!("lease kube-system/{name}"),
        LEASE_IDLE,
        timeout,
        timeline,
        seen,
        stop,
    )
    .await;
}

/// Watches the control-plane nodes; records every observation and Ready transitions.
pub async fn run_node_watch(
    client: Client,
    timeout: Duration,
    history: Arc<WatchHistory>,
    timeline: Arc<Timeline>,
    stop: watch::Receiver<bool>,
) {
    let api: Api<Node> = Api::all(client);
    let last: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let tl = timeline.clone();
    let seen = move |n: &Node, at: Instant, via: &'static str| {
        let o = node_obs(n, at, via);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&o.node) != Some(&o.status) {
            tl.record_at(
                at,
                "probe:kube-node",
                format!(
                    "node {}: Ready={} ({}; lastTransitionTime {})",
                    o.node,
                    o.status,
                    if o.reason.is_empty() { "-" } else { &o.reason },
                    o.last_transition.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
                ),
            );
            last.insert(o.node.clone(), o.status.clone());
        }
        history.push_node(o);
    };
    let sel = WatchSelector::Labels(crate::target::discovery::CONTROL_PLANE_LABEL.to_string());
    watch_loop(api, sel, "control-plane nodes".into(), NODE_IDLE, timeout, timeline, seen, stop).await;
}

/// One direct read of a lease (the fallback when its watch is silent).
pub async fn get_lease(client: &Client, name: &str, timeout: Duration) -> Result<LeaseObs, String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    bounded(timeout, api.get(name)).await.map(|l| lease_obs(&l, Instant::now(), "get")).map_err(|(_, m)| m)
}

/// One direct read of a node (the fallback when the node watch is silent).
pub async fn get_node(client: &Client, name: &str, timeout: Duration) -> Result<NodeObs, String> {
    let api: Api<Node> = Api::all(client.clone());
    bounded(timeout, api.get(name)).await.map(|n| node_obs(&n, Instant::now(), "get")).map_err(|(_, m)| m)
}

#[cfg(test)]
pub(crate) mod tests;
