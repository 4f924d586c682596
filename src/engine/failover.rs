//! The failover steps over a Kubernetes target: starting the API probe (in a scratch namespace
//! removed at the end of the case) and the lease and node watches, the waits on them (node
//! NotReady within the grace period, lease taken over within its bound), and the checks (API
//! disruption through the load balancer, `/livez` and `/readyz` per apiserver, the serving
//! certificate covering the kubeconfig server). The pure judging is in
//! [`crate::check::failover`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use super::{poll, CaseState, RunContext, StepEnd};
use crate::check::{failover as fc, kube_topology, CheckOutcome};
use crate::probe::kube::{self as pk, ApiHistory, ClientFactory, ClientKind, WatchHistory};
use crate::probe::Timeline;
use crate::suite::{AwaitSpec, CheckSpec, Component, ProbeSpec};
use crate::target::discovery::{self, Discovery};

/// The deadline of each one-off request (namespace, ConfigMaps, health, fallback gets).
const REQUEST: Duration = Duration::from_secs(5);
/// Deleting the scratch namespace at the end of a case gets this long.
const CLEANUP: Duration = Duration::from_secs(15);
/// How long a wait on a watch goes without news before it reads the object directly.
const FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// `--leader-elect-retry-period`'s default (controller-manager and scheduler).
const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// `--leader-elect-lease-duration`'s default, when the Lease does not say.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// What the Kubernetes probes of one case share with its waits and checks.
pub struct KubeProbes {
    /// The reused client through the kubeconfig server (the load balancer).
    pub client: Client,
    pub fresh: ClientFactory,
    /// The kubeconfig's resolved config, for clients aimed at one apiserver; None in tests
    /// on the mock.
    pub config: Option<kube::Config>,
    pub server: String,
    pub timeline: Arc<Timeline>,
    /// The scratch namespace this case created (deleted at the end of the case).
    pub namespace: Option<String>,
    pub api: Option<Arc<ApiHistory>>,
    pub api_started: Option<Instant>,
    pub watch: Option<Arc<WatchHistory>>,
    pub discovery: Option<Discovery>,
}

impl KubeProbes {
    pub fn new(
        client: Client,
        fresh: ClientFactory,
        config: Option<kube::Config>,
        server: String,
        timeline: Arc<Timeline>,
    ) -> Self {
        Self {
            client,
            fresh,
            config,
            server,
            timeline,
            namespace: None,
            api: None,
            api_started: None,
            watch: None,
            discovery: None,
        }
    }

    /// Deletes the scratch namespace, within a deadline; the outcome goes to the timeline.
    /// Called at the end of the case whatever happened (after the probes stopped).
    pub async fn cleanup(&mut self) -> Result<(), String> {
        let Some(ns) = self.namespace.take() else { return Ok(()) };
        match pk::delete_namespace(&self.client, &ns, CLEANUP).await {
            Ok(()) => {
                self.timeline.record("cleanup", format!("scratch namespace {ns} deleted"));
                Ok(())
            }
            Err(e) => {
                let m = format!("{e} (left behind; `hadrill recover` deletes it)");
                self.timeline.record("cleanup", m.clone());
                Err(m)
            }
        }
    }
}

fn err(m: impl Into<String>) -> StepEnd {
    StepEnd::Error(m.into())
}

/// The case's Kubernetes probe state, made from the target's kubeconfig on first use.
pub(crate) fn state<'a>(ctx: &RunContext, st: &'a mut CaseState) -> Result<&'a mut KubeProbes, StepEnd> {
    if st.probes.kube.is_none() {
        let Some(k) = &ctx.target.kube else {
            return Err(StepEnd::Skip("needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()));
        };
        let client = Client::try_from(k.config.clone())
            .map_err(|e| err(format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e))))?;
        st.probes.kube = Some(KubeProbes::new(
            client,
            pk::fresh_clients(k.config.clone()),
            Some(k.config.clone()),
            k.server.clone(),
            st.timeline.clone(),
        ));
    }
    Ok(st.probes.kube.as_mut().expect("set above"))
}

async fn discovery_of(ks: &mut KubeProbes) -> Result<Discovery, StepEnd> {
    if let Some(d) = &ks.discovery {
        return Ok(d.clone());
    }
    let d = discovery::discover(&ks.client, &ks.server)
        .await
        .map_err(|e| err(format!("cannot discover the control plane: {}", crate::exit::chain(&e))))?;
    ks.discovery = Some(d.clone());
    Ok(d)
}

/// `Probe` steps of the Kubernetes probes; None when `spec` is not one.
pub async fn probe(ctx: &RunContext, spec: &ProbeSpec, st: &mut CaseState) -> Option<Result<(), StepEnd>> {
    match spec {
        ProbeSpec::KubeApi { .. } | ProbeSpec::KubeWatch | ProbeSpec::KubeApiserverHealth { .. } => {
            Some(probe_(ctx, spec, st).await)
        }
        _ => None,
    }
}

async fn probe_(ctx: &RunContext, spec: &ProbeSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    let timeline = st.timeline.clone();
    let case = st.name.clone();
    let run_id = ctx.ledger.run_id().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ks = state(ctx, st)?;
    match spec {
        ProbeSpec::KubeApi { per_second, timeout } => {
            if ks.api.is_some() {
                return Err(err("an API probe already runs in this case"));
            }
            let ns = pk::scratch_namespace(&run_id, &case);
            (ctx.progress)(&case, &format!("creating the scratch namespace {ns}"));
            match pk::ensure_namespace(&ks.client, &ns, &run_id, &case, REQUEST).await {
                Ok(()) => ks.namespace = Some(ns.clone()),
                Err(e @ pk::KubeProbeError::CreateNamespace { answered: false, .. }) => {
                    // no answer: it may exist all the same, so it is deleted at the end
                    ks.namespace = Some(ns.clone());
                    return Err(err(e.to_string()));
                }
                Err(e) => return Err(err(e.to_string())),
            }
            timeline
                .record("probe:kube-api", format!("scratch namespace {ns} ready (labelled {})", pk::SCRATCH_SELECTOR));
            pk::prepare_configmaps(&ks.client, &ns, REQUEST).await.map_err(|e| err(e.to_string()))?;
            let h = Arc::new(ApiHistory::new(ns));
            ks.api = Some(h.clone());
            ks.api_started = Some(Instant::now());
            let cfg = pk::ApiProbe { per_second: *per_second, timeout: *timeout };
            let task = tokio::spawn(pk::run_api(cfg, ks.client.clone(), ks.fresh.clone(), h, timeline, stop_rx));
            st.probes.tasks.push(("kube-api".into(), task, stop_tx));
        }
        ProbeSpec::KubeWatch => {
            if ks.watch.is_some() {
                return Err(err("a watch probe already runs in this case"));
            }
            (ctx.progress)(&case, "discovering the control plane");
            let d = discovery_of(ks).await?;
            let h = Arc::new(WatchHistory::default());
            ks.watch = Some(h.clone());
            // the watches get a client of their own: their long-lived streams do not share
            // connections with the API probe's reused client
            let wc = (ks.fresh)().map_err(|e| err(format!("build a client for the watches: {e}")))?;
            let mut tasks = Vec::new();
            for name in discovery::LEASES {
                let t = tokio::spawn(pk::run_lease_watch(
                    wc.clone(),
                    name.to_string(),
                    REQUEST,
                    h.clone(),
                    timeline.clone(),
                    stop_rx.clone(),
                ));
                tasks.push((format!("kube-watch-lease-{name}"), t));
            }
            tasks.push((
                "kube-watch-nodes".into(),
                tokio::spawn(pk::run_node_watch(wc, REQUEST, h.clone(), timeline.clone(), stop_rx)),
            ));
            for (name, t) in tasks {
                // every watch listens to the same stop signal
                st.probes.tasks.push((name, t, stop_tx.clone()));
            }
            // wait (bounded) for the initial lists, so a wait later has a "before"
            (ctx.progress)(&case, "waiting for the lease and node watches' first lists");
            let expect_nodes = d.nodes.len();
            let expect_leases: Vec<String> = d.leases.iter().filter(|l| l.exists).map(|l| l.name.clone()).collect();
            let h2 = h.clone();
            let got = poll(Duration::from_secs(10), Duration::from_millis(20), || {
                let h = h2.clone();
                let expect_leases = expect_leases.clone();
                async move {
                    let nodes: std::collections::BTreeSet<String> = h.nodes().into_iter().map(|o| o.node).collect();
                    let leases = h.leases();
                    (nodes.len() >= expect_nodes && expect_leases.iter().all(|l| leases.iter().any(|o| &o.lease == l)))
                        .then_some(())
                }
            })
            .await;
            if got.is_none() {
                // without a first list there is no "before" to measure from: the harness
                // cannot judge this case
                let why: Vec<String> = st
                    .timeline
                    .events()
                    .into_iter()
                    .filter(|e| e.source == "probe:kube-watch")
                    .map(|e| e.message)
                    .collect();
                return Err(err(format!(
                    "the lease and node watches did not list {} node(s) and the leases {} within 10s{}",
                    expect_nodes,
                    expect_leases.join(", "),
                    if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
                )));
            }
        }
        ProbeSpec::KubeApiserverHealth { interval } => {
            let Some(config) = ks.config.clone() else {
                return Err(err("no kubeconfig to reach each apiserver with"));
            };
            (ctx.progress)(&case, "discovering the apiserver endpoints");
            let d = discovery_of(ks).await?;
            let endpoints: Vec<(String, Option<String>)> =
                d.apiservers.iter().map(|a| (a.url(), a.node.clone())).collect();
            let task = tokio::spawn(pk::run_health(config, endpoints, *interval, REQUEST, timeline, stop_rx));
            st.probes.tasks.push(("kube-health".into(), task, stop_tx));
        }
        _ => return Err(err("not a Kubernetes probe")),
    }
    Ok(())
}

/// Records an outcome that an await produced: measurements, the timeline, the log.
fn conclude(st: &mut CaseState, c: CheckOutcome) -> Result<(), StepEnd> {
    st.measurements.extend(c.measurements.iter().cloned());
    st.timeline.record("check", format!("{} {}: {}", c.name, if c.passed { "passed" } else { "FAILED" }, c.message));
    st.log(format!("await {}: {}", c.name, c.message));
    if c.passed {
        Ok(())
    } else {
        Err(StepEnd::Failed(c))
    }
}

fn watch_history(st: &CaseState) -> Result<Arc<WatchHistory>, StepEnd> {
    st.probes
        .kube
        .as_ref()
        .and_then(|k| k.watch.clone())
        .ok_or_else(|| err("this step reads the lease and node watches: start them first with `probe: kube_watch`"))
}

fn api_history(st: &CaseState) -> Result<Arc<ApiHistory>, StepEnd> {
    st.probes
        .kube
        .as_ref()
        .and_then(|k| k.api.clone())
        .ok_or_else(|| err("this step reads the API probe: start it first with `probe: { kube_api: {} }`"))
}

fn fault_at(st: &CaseState) -> Result<Instant, StepEnd> {
    st.last_fault_at.ok_or_else(|| err("this step measures from the last fault, and no fault was injected yet"))
}

/// Waits until `done` says yes or `until`; wakes on every watch observation, and calls
/// `fallback` (a direct read) when the watches have been silent for a while.
async fn wait_on_watch<F, Fut>(h: &WatchHistory, until: Instant, mut done: impl FnMut() -> bool, mut fallback: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut changes = h.subscribe();
    loop {
        if done() {
            return;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match tokio::time::timeout(left.min(FALLBACK_AFTER), changes.changed()).await {
            Ok(Ok(())) => {}
            // silent (or the watches ended): read directly
            Ok(Err(_)) | Err(_) => {
                fallback().await;
                if Instant::now() < until {
                    // a fallback read also changes the history; give the watches a moment
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200).min(until.saturating_duration_since(Instant::now())),
                        changes.changed(),
                    )
                    .await;
                }
            }
        }
    }
}

/// The node-monitor grace period and where it comes from.
pub fn grace_with_source(d: &Discovery) -> Result<(Duration, String), String> {
    let g = kube_topology::grace_period_of(d)?;
    let flag = d
        .static_pods
        .iter()
        .filter(|p| p.component == "kube-controller-manager")
        .find_map(|p| p.flag("node-monitor-grace-period").map(|v| (p.node.clone(), v.to_string())));
    let why = match flag {
        Some((node, v)) => {
            format!("node-monitor grace period {}s (--node-monitor-grace-period={v} on {node})", g.as_secs())
        }
        None => format!(
            "node-monitor grace period {}s (the controller-manager's default for {}: 40s before 1.32, 50s from 1.32)",
            g.as_secs(),
            d.static_pods
                .iter()
                .find(|p| p.component == "kube-controller-manager")
                .map(|p| p.image.clone())
                .or(d.server_version.clone())
                .unwrap_or_else(|| "its version".into())
        ),
    };
    Ok((g, why))
}

/// `--leader-elect-retry-period` of `component` (the holder's instance first), and where it
/// comes from.
pub fn retry_period(d: &Discovery, component: Component, holder_node: Option<&str>) -> (Duration, String) {
    let mut pods: Vec<_> = d.static_pods.iter().filter(|p| p.component == component.static_pod()).collect();
    pods.sort_by_key(|p| Some(p.node.as_str()) != holder_node);
    for p in pods {
        if let Some(v) = p.flag("leader-elect-retry-period") {
            if let Some(x) = kube_topology::parse_go_duration(v) {
                return (x, format!("--leader-elect-retry-period={v} on {}", p.node));
            }
        }
    }
    (DEFAULT_RETRY_PERIOD, "--leader-elect-retry-period default 2s".into())
}

/// `Await` steps on the Kubernetes probes; None when `spec` is not one.
pub async fn await_(ctx: &RunContext, spec: &AwaitSpec, st: &mut CaseState) -> Option<Result<(), StepEnd>> {
    let r = match spec {
        AwaitSpec::KubeApiAnswers { count, within } => api_answers(ctx, st, *count, *within).await,
        AwaitSpec::NodeNotReady { within, slack } => node_not_ready(ctx, st, *within, *slack).await,
        AwaitSpec::NodesReady { within } => nodes_ready(ctx, st, *within).await,
        AwaitSpec::LeaseTakeover { component, slack } => lease_takeover(ctx, st, *component, *slack).await,
        _ => return None,
    };
    Some(r)
}

async fn api_answers(ctx: &RunContext, st: &mut CaseState, count: usize, within: Duration) -> Result<(), StepEnd> {
    let h = api_history(st)?;
    let t0 = Instant::now();
    (ctx.progress)(&st.name, &format!("waiting for {count} answers over reused and new connections"));
    let got = poll(within, Duration::from_millis(50), || {
        let h = h.clone();
        async move {
            (h.ok_since(ClientKind::Reused, t0) >= count && h.ok_since(ClientKind::Fresh, t0) >= count).then_some(())
        }
    })
    .await;
    let (r, f) = (h.ok_since(ClientKind::Reused, t0), h.ok_since(ClientKind::Fresh, t0));
    st.log(format!(
        "API probe: {r} answers over the reused client, {f} over new connections after {:.3}s",
        t0.elapsed().as_secs_f64()
    ));
    if got.is_some() {
        return Ok(());
    }
    let errors: Vec<String> = h
        .ops()
        .iter()
        .rev()
        .filter_map(|o| o.outcome.as_ref().err().map(|e| format!("{} {:?}: {e}", o.client.label(), o.verb)))
        .take(10)
        .collect();
    Err(StepEnd::Failed(
        CheckOutcome::fail(
            "await_kube_api_answers",
            format!(
                "{r} (reused) and {f} (new connections) of {count} API requests answered within {:.0}s through {}",
                within.as_secs_f64(),
                h.namespace
            ),
        )
        .with_evidence(errors.join("\n")),
    ))
}

async fn node_not_ready(
    ctx: &RunContext,
    st: &mut CaseState,
    within: Option<Duration>,
    slack: Duration,
) -> Result<(), StepEnd> {
    let h = watch_history(st)?;
    let f = fault_at(st)?;
    let target = st.faulted_members.first().cloned();
    let ks = state(ctx, st)?;
    let d = discovery_of(ks).await?;
    let (bound, why) = match within {
        Some(w) => (w, "as the suite sets it".to_string()),
        None => {
            let (g, why) = grace_with_source(&d).map_err(err)?;
            (g + slack, format!("{why} + slack {}s", slack.as_secs()))
        }
    };
    let known: Vec<String> = d.nodes.iter().map(|n| n.name.clone()).collect();
    // the faulted host must be one of the nodes: falling back to "any node" would let a node
    // that was already NotReady pass for the one the fault was aimed at
    if let Some(t) = target.as_ref().filter(|t| !known.contains(t)) {
        return Err(err(format!(
            "the fault was aimed at host {t}, which is none of the control-plane nodes ({}): cannot tell which node should turn NotReady",
            known.join(", ")
        )));
    }
    let node = target;
    let client = ks.client.clone();
    let t0 = st.timeline.start();
    (ctx.progress)(
        &st.name,
        &format!("waiting for {} to turn NotReady", node.as_deref().unwrap_or("a control-plane node")),
    );
    // watch past the bound, so a late transition is still measured
    let until = f + bound + bound / 2;
    let names: Vec<String> = match &node {
        Some(n) => vec![n.clone()],
        None => known.clone(),
    };
    wait_on_watch(
        &h,
        until,
        || fc::first_not_ready(&h.nodes(), node.as_deref(), f).is_some(),
        || {
            let (client, h, names) = (client.clone(), h.clone(), names.clone());
            async move {
                for n in names {
                    if let Ok(o) = pk::get_node(&client, &n, REQUEST).await {
                        h.push_node(o);
                    }
                }
            }
        },
    )
    .await;
    let c = fc::node_not_ready(&h.nodes(), node.as_deref(), t0, f, Instant::now(), bound, &why);
    conclude(st, c)
}

async fn nodes_ready(ctx: &RunContext, st: &mut CaseState, within: Duration) -> Result<(), StepEnd> {
    let h = watch_history(st)?;
    let client = state(ctx, st)?.client.clone();
    let t = Instant::now();
    (ctx.progress)(&st.name, "waiting for every control-plane node to be Ready");
    let names: Vec<String> = {
        let mut v: Vec<String> = h.nodes().into_iter().map(|o| o.node).collect();
        v.sort();
        v.dedup();
        v
    };
    if names.is_empty() {
        return Err(err("the node watch saw no control-plane node: nothing to find Ready"));
    }
    wait_on_watch(
        &h,
        t + within,
        || fc::not_ready_now(&h.nodes()).is_empty(),
        || {
            let (client, h, names) = (client.clone(), h.clone(), names.clone());
            async move {
                for n in names {
                    if let Ok(o) = pk::get_node(&client, &n, REQUEST).await {
                        h.push_node(o);
                    }
                }
            }
        },
    )
    .await;
    let bad = fc::not_ready_now(&h.nodes());
    let m = crate::report::Measurement::new(
        "nodes_ready_after",
        (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "s",
    )
    .with_bound(within.as_secs_f64());
    let c = if bad.is_empty() {
        CheckOutcome::pass(
            "await_nodes_ready",
            format!("every control-plane node Ready after {:.3}s", t.elapsed().as_secs_f64()),
        )
    } else {
        CheckOutcome::fail(
            "await_nodes_ready",
            format!(
                "{} not Ready {:.0}s after the wait began (bound {:.0}s)",
                bad.iter().map(|(n, s)| format!("node {n} (Ready={s})")).collect::<Vec<_>>().join(", "),
                t.elapsed().as_secs_f64(),
                within.as_secs_f64()
            ),
        )
    };
    conclude(st, c.with_measurement(m))
}

async fn lease_takeover(
    ctx: &RunContext,
    st: &mut CaseState,
    component: Component,
    slack: Duration,
) -> Result<(), StepEnd> {
    let Some(lease) = component.lease() else {
        return Err(err(format!("{} holds no leader-election lease", component.static_pod())));
    };
    let h = watch_history(st)?;
    let f = fault_at(st)?;
    let ks = state(ctx, st)?;
    let d = discovery_of(ks).await?;
    let client = ks.client.clone();
    let obs = h.leases();
    let before = fc::holder_at(&obs, lease, f).cloned();
    let holder_node =
        before.as_ref().and_then(|o| o.holder.as_deref()).map(crate::controlplane::holder_host).map(str::to_string);
    let (duration, dur_why) = match before.as_ref().and_then(|o| o.duration) {
        Some(x) => (x, format!("leaseDurationSeconds {}s (from the Lease)", x.as_secs())),
        None => (DEFAULT_LEASE_DURATION, "lease duration default 15s".into()),
    };
    let (retry, retry_why) = retry_period(&d, component, holder_node.as_deref());
    let bound = duration + retry + slack;
    let why = format!("{dur_why} + {retry_why} + slack {}s", slack.as_secs());
    let t0 = st.timeline.start();
    (ctx.progress)(&st.name, &format!("waiting for another instance to take the {lease} lease"));
    let until = f + bound + bound / 2;
    wait_on_watch(
        &h,
        until,
        || fc::takeover(&h.leases(), lease, f).is_some(),
        || {
            let (client, h) = (client.clone(), h.clone());
            async move {
                if let Ok(o) = pk::get_lease(&client, lease, REQUEST).await {
                    h.push_lease(o);
                }
            }
        },
    )
    .await;
    let c = fc::lease_takeover(&h.leases(), lease, t0, f, Instant::now(), bound, &why);
    conclude(st, c)
}

/// The Kubernetes failover and topology checks; None when `spec` is not one.
pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Option<Result<CheckOutcome, StepEnd>> {
    let r = match spec {
        CheckSpec::KubeApiAvailable { max_disruption } => api_available(ctx, st, *max_disruption).await,
        CheckSpec::KubeApiserversReady { within } => apiservers_ready(ctx, st, *within).await,
        CheckSpec::KubeServerCertCoversServer => cert_covers(ctx, st).await,
        _ => return None,
    };
    Some(r)
}

async fn api_available(ctx: &RunContext, st: &mut CaseState, max: Duration) -> Result<CheckOutcome, StepEnd> {
    let h = api_history(st)?;
    let from = st.last_fault_at.or(st.probes.kube.as_ref().and_then(|k| k.api_started)).unwrap_or_else(Instant::now);
    let to = Instant::now();
    (ctx.progress)(&st.name, "waiting for the API requests in flight to end");
    let _ = poll(Duration::from_secs(30), Duration::from_millis(50), || {
        let h = h.clone();
        async move { h.settled().then_some(()) }
    })
    .await;
    Ok(fc::api_available(&h.ops(), st.timeline.start(), from, to, max))
}

/// `/livez` and `/readyz` of every endpoint, until all answer 200 or `within` passes.
pub async fn ready_check(
    config: &kube::Config,
    endpoints: &[(String, Option<String>)],
    within: Option<Duration>,
) -> CheckOutcome {
    let end = Instant::now() + within.unwrap_or_default();
    loop {
        let answers = pk::apiservers_health(config, endpoints, REQUEST).await;
        let c = fc::apiservers_ready(&answers);
        if c.passed || Instant::now() >= end {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(500).min(end.saturating_duration_since(Instant::now()))).await;
    }
}

async fn apiservers_ready(
    ctx: &RunContext,
    st: &mut CaseState,
    within: Option<Duration>,
) -> Result<CheckOutcome, StepEnd> {
    let ks = state(ctx, st)?;
    let Some(config) = ks.config.clone() else {
        return Err(err("no kubeconfig to reach each apiserver with"));
    };
    // a fresh discovery: the endpoints as they are now
    ks.discovery = None;
    let d = discovery_of(ks).await?;
    let endpoints: Vec<(String, Option<String>)> = d.apiservers.iter().map(|a| (a.url(), a.node.clone())).collect();
    (ctx.progress)(&st.name, &format!("asking {} apiservers for /livez and /readyz", endpoints.len()));
    st.timeline.record(
        "probe:kube-health",
        format!("apiserver endpoints: {}", endpoints.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>().join(", ")),
    );
    Ok(ready_check(&config, &endpoints, within).await)
}

/// The SANs of a DER certificate, as `DNS:name` and `IP:address`.
pub fn sans_of(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("parse the certificate: {e}"))?;
    let mut out = Vec::new();
    if let Some(ext) = c.subject_alternative_name().map_err(|e| format!("parse its SAN extension: {e}"))? {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(s) => out.push(format!("DNS:{s}")),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    out.push(format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))))
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    out.push(format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))))
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Reads the certificate served at `server` and checks that a SAN covers the name a client
/// verifies (`tls_server_name` when the kubeconfig sets one, else the server's host).
pub async fn cert_covers_server(
    server: &str,
    tls_server_name: Option<&str>,
    timeout: Duration,
) -> Result<CheckOutcome, String> {
    let (host, port) =
        discovery::host_port(server).ok_or_else(|| format!("the kubeconfig server `{server}` is not a URL"))?;
    let endpoint = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    };
    let chain = crate::tls::peer_chain(&endpoint, None, timeout)
        .await
        .map_err(|e| format!("read the certificate served at {endpoint}: {e}"))?;
    let sans = sans_of(&chain.certs[0])?;
    let name = tls_server_name.unwrap_or(&host);
    Ok(kube_topology::serving_cert_covers(&sans, name, &endpoint))
}

async fn cert_covers(ctx: &RunContext, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let Some(k) = &ctx.target.kube else {
        return Err(StepEnd::Skip("needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()));
    };
    (ctx.progress)(&st.name, &format!("reading the certificate served at {}", k.server));
    cert_covers_server(&k.server, k.config.tls_server_name.as_deref(), REQUEST).await.map_err(err)
}

/// What a case writes to the cluster besides its faults (for `plan`): the API probe's
/// scratch namespace.
pub fn plan_writes(case: &crate::suite::Case) -> Option<String> {
    case.steps.iter().any(|s| matches!(s, crate::suite::Step::Probe(ProbeSpec::KubeApi { .. }))).then(|| {
        format!(
            "ConfigMaps {} in a scratch namespace hadrill-<run>-<case> labelled {}, deleted at the end of the case (`hadrill recover` deletes leftovers)",
            pk::CONFIGMAPS.join(", "),
            pk::SCRATCH_SELECTOR
        )
    })
}

/// Whether the target's control-plane nodes run a kubelet (the `kubelet` requirement).
pub fn kubelet_available(t: &crate::target::Target) -> Result<(), String> {
    if t.kube.is_none() {
        return Err(if t.rig.is_some() {
            "needs control-plane nodes with a kubelet: the local rig runs none".into()
        } else {
            "needs a Kubernetes cluster with kubelets: give --kubeconfig (or KUBECONFIG)".into()
        });
    }
    match t.control_plane.get() {
        Some(cp) if !cp.has_kubelet => Err(format!("needs control-plane nodes with a kubelet: {} has none", cp.source)),
        _ => Ok(()),
    }
}

/// `hadrill recover`'s Kubernetes part: deletes the scratch namespaces of runs that are no
/// longer alive (all of them with `force`). Returns one line per namespace and the failures.
pub async fn recover_namespaces(
    k: &crate::target::kube::KubeTarget,
    dry_run: bool,
    force: bool,
) -> Result<(Vec<String>, usize), String> {
    let client = Client::try_from(k.config.clone())
        .map_err(|e| format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e)))?;
    let alive = |run: &str, host: &str| -> Option<String> {
        if dry_run {
            return Some("dry run".into());
        }
        if force {
            return None;
        }
        pk::run_alive_here(run, host)
    };
    let found = pk::delete_leftovers(&client, REQUEST, alive).await.map_err(|e| e.to_string())?;
    let mut failed = 0;
    let lines = found
        .into_iter()
        .map(|l| match l {
            pk::Leftover::Deleted(n) => format!("deleted scratch namespace {n} (context {})", k.context),
            pk::Leftover::Alive(n, why) if why == "dry run" => {
                format!("would delete scratch namespace {n} (context {})", k.context)
            }
            pk::Leftover::Alive(n, why) => format!("left alone: scratch namespace {n} ({why})"),
            pk::Leftover::AlreadyTerminating(n) => format!("scratch namespace {n} is already being deleted"),
            pk::Leftover::Failed(n, e) => {
                failed += 1;
                format!("could NOT delete scratch namespace {n}: {e}")
            }
        })
        .collect();
    Ok((lines, failed))
}

#[cfg(test)]
mod tests;
