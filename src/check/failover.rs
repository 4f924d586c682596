//! Failover checks over what the Kubernetes probes recorded: the API's disruption through the
//! load balancer (longest run of failed requests, per client kind), a lease taken over by
//! another instance within its bound, a node turning NotReady within the node-monitor grace
//! period, and every apiserver answering `/livez` and `/readyz`. Pure functions: every
//! failure names the measured figure and the bound.

use std::time::{Duration, Instant};

use super::CheckOutcome;
use crate::probe::kube::{ApiOp, ClientKind, HealthAnswer, LeaseObs, NodeObs};
use crate::report::Measurement;

fn off(t0: Instant, t: Instant) -> String {
    format!("+{:.3}s", t.saturating_duration_since(t0).as_secs_f64())
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A stretch of time during which requests of one client were failing: from the start of a
/// failed request until the start of the first successful request that began after every
/// failure of the stretch had ended. A success that starts while a failed request is still
/// pending does not end it: with a load balancer still sending some connections to a dead
/// backend, some requests hang until their deadline while others succeed, and that is
/// disruption, not a string of short blips.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub client: ClientKind,
    /// The start of the first failed request.
    pub from: Instant,
    /// The start of the success that ended it, else the end of its last failure.
    pub to: Instant,
    pub failed: usize,
    /// No request succeeded after it within the window.
    pub open: bool,
    pub first_error: String,
}

impl Span {
    pub fn length(&self) -> Duration {
        self.to.saturating_duration_since(self.from)
    }
}

/// The stretches of failures of `kind`'s requests that started in `[from, to]`.
pub fn failure_spans(ops: &[ApiOp], kind: ClientKind, from: Instant, to: Instant) -> Vec<Span> {
    let mut mine: Vec<&ApiOp> = ops.iter().filter(|o| o.client == kind && o.start >= from && o.start <= to).collect();
    mine.sort_by_key(|o| o.start);
    let mut out = Vec::new();
    let mut cur: Option<Span> = None;
    for o in mine {
        match (&o.outcome, cur.as_mut()) {
            (Err(e), None) => {
                cur =
                    Some(Span { client: kind, from: o.start, to: o.end, failed: 1, open: true, first_error: e.clone() })
            }
            (Err(_), Some(s)) => {
                s.failed += 1;
                s.to = s.to.max(o.end);
            }
            // a success while failed requests are still pending does not end the stretch
            (Ok(()), Some(s)) if o.start < s.to => {}
            (Ok(()), Some(_)) => {
                if let Some(mut s) = cur.take() {
                    s.to = o.start;
                    s.open = false;
                    out.push(s);
                }
            }
            (Ok(()), None) => {}
        }
    }
    out.extend(cur);
    out
}

/// The API stayed available through the load balancer: for each client kind, the longest
/// run of failures since `from` is at most `max`.
pub fn api_available(ops: &[ApiOp], t0: Instant, from: Instant, to: Instant, max: Duration) -> CheckOutcome {
    const N: &str = "kube_api_available";
    let mut bad = Vec::new();
    let mut good = Vec::new();
    let mut ms = Vec::new();
    let mut evidence = format!(
        "API probe requests from {} to {} (budget {} per run of failures):\n",
        off(t0, from),
        off(t0, to),
        secs(max)
    );
    for kind in [ClientKind::Reused, ClientKind::Fresh] {
        let n = ops.iter().filter(|o| o.client == kind && o.start >= from && o.start <= to).count();
        let failed =
            ops.iter().filter(|o| o.client == kind && o.start >= from && o.start <= to && o.outcome.is_err()).count();
        let spans = failure_spans(ops, kind, from, to);
        let longest = spans.iter().max_by_key(|s| s.length());
        let total: Duration = spans.iter().map(|s| s.length()).sum();
        let long = longest.map(|s| s.length()).unwrap_or_default();
        ms.push(
            Measurement::new(format!("kube_api_disruption_{}", kind.key()), round3(long.as_secs_f64()), "s")
                .with_bound(max.as_secs_f64()),
        );
        ms.push(Measurement::new(format!("kube_api_failed_seconds_{}", kind.key()), round3(total.as_secs_f64()), "s"));
        ms.push(Measurement::new(format!("kube_api_failed_requests_{}", kind.key()), failed as f64, "requests"));
        evidence.push_str(&format!(
            "  {} : {n} requests, {failed} failed, {} run(s) of failures\n",
            kind.label(),
            spans.len()
        ));
        for s in &spans {
            evidence.push_str(&format!(
                "    {} → {} ({}{}): {} failed; first: {}\n",
                off(t0, s.from),
                off(t0, s.to),
                secs(s.length()),
                if s.open { ", still failing at the end" } else { "" },
                s.failed,
                s.first_error
            ));
        }
        if n == 0 {
            bad.push(format!("the API probe made no request over a {} in the window: nothing to judge", kind.label()));
            continue;
        }
        match longest {
            Some(s) if s.length() > max || s.open => bad.push(format!(
                "API through the load balancer unavailable for {} over a {} ({} failed requests from {}{}; first error: {}), budget {}",
                secs(s.length()),
                kind.label(),
                s.failed,
                off(t0, s.from),
                if s.open { ", still failing at the end of the window" } else { "" },
                s.first_error,
                secs(max)
            )),
            Some(s) => good.push(format!("{}: longest disruption {} ({failed} of {n} failed)", kind.label(), secs(s.length()))),
            None => good.push(format!("{}: {n} requests, none failed", kind.label())),
        }
    }
    let mut out = if bad.is_empty() {
        CheckOutcome::pass(
            N,
            format!("API available through the load balancer within the {} budget: {}", secs(max), good.join("; ")),
        )
    } else {
        CheckOutcome::fail(N, bad.join("; "))
    }
    .with_evidence(evidence);
    for m in ms {
        out = out.with_measurement(m);
    }
    out
}

/// The holder of `lease` at `t` (the last observation at or before it).
pub fn holder_at<'a>(obs: &'a [LeaseObs], lease: &str, t: Instant) -> Option<&'a LeaseObs> {
    obs.iter().filter(|o| o.lease == lease && o.at <= t).max_by_key(|o| o.at)
}

fn lease_table(obs: &[LeaseObs], lease: &str, t0: Instant) -> String {
    let mut o = format!("lease kube-system/{lease}, holder changes as observed:\n");
    let mut last: Option<Option<&String>> = None;
    for x in obs.iter().filter(|x| x.lease == lease) {
        if last == Some(x.holder.as_ref()) {
            continue;
        }
        last = Some(x.holder.as_ref());
        o.push_str(&format!(
            "  {} ({}) holder {} acquireTime {} renewTime {} transitions {}\n",
            off(t0, x.at),
            x.via,
            x.holder.as_deref().unwrap_or("(none)"),
            x.acquire_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
            x.renew_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
            x.transitions.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    o
}

/// The first observation after `fault_at` of a holder other than the one before the fault.
pub fn takeover<'a>(obs: &'a [LeaseObs], lease: &str, fault_at: Instant) -> Option<&'a LeaseObs> {
    let before = holder_at(obs, lease, fault_at).and_then(|o| o.holder.clone());
    obs.iter().filter(|o| o.lease == lease && o.at > fault_at).find(|o| o.holder.is_some() && o.holder != before)
}

/// Another instance holds `lease` within `bound` of the fault (`why` says what the bound is
/// made of: lease duration + retry period + slack).
pub fn lease_takeover(
    obs: &[LeaseObs],
    lease: &str,
    t0: Instant,
    fault_at: Instant,
    now: Instant,
    bound: Duration,
    why: &str,
) -> CheckOutcome {
    const N: &str = "kube_lease_takeover";
    let evidence = lease_table(obs, lease, t0);
    let Some(before) = holder_at(obs, lease, fault_at) else {
        return CheckOutcome::fail(
            N,
            format!("lease kube-system/{lease} was not observed before the fault: the takeover cannot be measured"),
        )
        .with_evidence(evidence);
    };
    let old = before.holder.clone().unwrap_or_else(|| "(no holder)".into());
    match takeover(obs, lease, fault_at) {
        Some(o) => {
            let took = o.at.saturating_duration_since(fault_at);
            let m = Measurement::new(
                format!("lease_takeover_{}", lease.replace('-', "_")),
                round3(took.as_secs_f64()),
                "s",
            )
            .with_bound(bound.as_secs_f64());
            let new = o.holder.as_deref().unwrap_or_default();
            if took <= bound {
                CheckOutcome::pass(
                    N,
                    format!(
                        "lease kube-system/{lease} moved from {old} to {new} {} after the fault (bound {}: {why})",
                        secs(took),
                        secs(bound)
                    ),
                )
            } else {
                CheckOutcome::fail(
                    N,
                    format!(
                        "lease kube-system/{lease} moved from {old} to {new} only {} after the fault; bound {} ({why})",
                        secs(took),
                        secs(bound)
                    ),
                )
            }
            .with_measurement(m)
            .with_evidence(evidence)
        }
        None => {
            let waited = now.saturating_duration_since(fault_at);
            let last = obs.iter().filter(|o| o.lease == lease).max_by_key(|o| o.at);
            let still = match last.and_then(|o| o.holder.clone()) {
                Some(h) => format!("still held by {h}"),
                None => "without a holder".into(),
            };
            CheckOutcome::fail(
                N,
                format!(
                    "lease kube-system/{lease} {still} {} after the fault stopped {old}; bound {} ({why})",
                    secs(waited),
                    secs(bound)
                ),
            )
            .with_measurement(
                Measurement::new(
                    format!("lease_takeover_{}", lease.replace('-', "_")),
                    round3(waited.as_secs_f64()),
                    "s",
                )
                .with_bound(bound.as_secs_f64()),
            )
            .with_evidence(evidence)
        }
    }
}

fn node_table(obs: &[NodeObs], t0: Instant) -> String {
    let mut o = String::from("node Ready conditions as observed (changes only):\n");
    let mut last: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for x in obs {
        if last.get(x.node.as_str()) == Some(&x.status.as_str()) {
            continue;
        }
        last.insert(&x.node, &x.status);
        o.push_str(&format!(
            "  {} ({}) {} Ready={} reason={} lastTransitionTime={}\n",
            off(t0, x.at),
            x.via,
            x.node,
            x.status,
            if x.reason.is_empty() { "-" } else { &x.reason },
            x.last_transition.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
        ));
    }
    o
}

/// The first observation after `fault_at` of `node` (any control-plane node when None) not
/// Ready.
pub fn first_not_ready<'a>(obs: &'a [NodeObs], node: Option<&str>, fault_at: Instant) -> Option<&'a NodeObs> {
    obs.iter().filter(|o| o.at > fault_at && node.is_none_or(|n| o.node == n)).find(|o| !o.ready())
}

/// `node` (the one the fault hit; any when None) turned NotReady within `bound` of the fault,
/// and was Ready before it.
pub fn node_not_ready(
    obs: &[NodeObs],
    node: Option<&str>,
    t0: Instant,
    fault_at: Instant,
    now: Instant,
    bound: Duration,
    why: &str,
) -> CheckOutcome {
    const N: &str = "kube_node_not_ready";
    let evidence = node_table(obs, t0);
    let who = node.map(|n| format!("node {n}")).unwrap_or_else(|| "no control-plane node".into());
    if let Some(n) = node {
        let before = obs.iter().filter(|o| o.node == n && o.at <= fault_at).max_by_key(|o| o.at);
        match before {
            None => {
                return CheckOutcome::fail(
                    N,
                    format!("node {n} was not observed before the fault: is it a control-plane node?"),
                )
                .with_evidence(evidence)
            }
            Some(b) if !b.ready() => {
                return CheckOutcome::fail(
                    N,
                    format!("node {n} was already Ready={} before the fault: nothing to measure", b.status),
                )
                .with_evidence(evidence)
            }
            _ => {}
        }
    }
    match first_not_ready(obs, node, fault_at) {
        Some(o) => {
            let took = o.at.saturating_duration_since(fault_at);
            let m = Measurement::new("node_not_ready_after", round3(took.as_secs_f64()), "s")
                .with_bound(bound.as_secs_f64());
            if took <= bound {
                CheckOutcome::pass(
                    N,
                    format!(
                        "node {} Ready={} ({}) {} after the fault (bound {}: {why})",
                        o.node,
                        o.status,
                        o.reason,
                        secs(took),
                        secs(bound)
                    ),
                )
            } else {
                CheckOutcome::fail(
                    N,
                    format!(
                        "node {} turned Ready={} only {} after the fault; bound {} ({why})",
                        o.node,
                        o.status,
                        secs(took),
                        secs(bound)
                    ),
                )
            }
            .with_measurement(m)
            .with_evidence(evidence)
        }
        None => {
            let waited = now.saturating_duration_since(fault_at);
            CheckOutcome::fail(
                N,
                format!("{who} still Ready {} after the fault; bound {} ({why})", secs(waited), secs(bound)),
            )
            .with_measurement(
                Measurement::new("node_not_ready_after", round3(waited.as_secs_f64()), "s")
                    .with_bound(bound.as_secs_f64()),
            )
            .with_evidence(evidence)
        }
    }
}

/// The nodes whose latest observation is not Ready, with their status.
pub fn not_ready_now(obs: &[NodeObs]) -> Vec<(String, String)> {
    let mut latest: std::collections::BTreeMap<&str, &NodeObs> = std::collections::BTreeMap::new();
    for o in obs {
        latest.insert(&o.node, o);
    }
    latest.into_values().filter(|o| !o.ready()).map(|o| (o.node.clone(), o.status.clone())).collect()
}

/// The failing checks a verbose health answer names (`[-]etcd failed: reason withheld`).
pub fn failing_checks(body: &str) -> Vec<String> {
    body.lines().map(str::trim).filter(|l| l.starts_with("[-]")).map(str::to_string).collect()
}

fn who(a: &HealthAnswer) -> String {
    match &a.node {
        Some(n) => format!("apiserver {} (node {n})", a.endpoint),
        None => format!("apiserver {}", a.endpoint),
    }
}

/// Every apiserver answered `/livez` and `/readyz` 200 on its own address.
pub fn apiservers_ready(answers: &[HealthAnswer]) -> CheckOutcome {
    const N: &str = "kube_apiservers_ready";
    let mut evidence = String::new();
    let mut bad = Vec::new();
    for a in answers {
        match &a.result {
            Ok((code, body)) => {
                let body: String = body.chars().take(4000).collect();
                evidence.push_str(&format!("{} {} → {code}\n{}\n", who(a), a.path, body.trim_end()));
                if *code != 200 {
                    let failing = failing_checks(&body);
                    let why = if failing.is_empty() {
                        body.lines().next().unwrap_or("").chars().take(200).collect::<String>()
                    } else {
                        failing.join(", ")
                    };
                    bad.push(format!("{} {} answered {code}: {why}", who(a), a.path));
                }
            }
            Err(e) => {
                evidence.push_str(&format!("{} {} → no answer: {e}\n", who(a), a.path));
                bad.push(format!("{} {}: {e}", who(a), a.path));
            }
        }
    }
    let n = answers.iter().map(|a| &a.endpoint).collect::<std::collections::BTreeSet<_>>().len();
    if n == 0 {
        return CheckOutcome::fail(
            N,
            "no apiserver endpoint to ask: the EndpointSlice of default/kubernetes lists none",
        );
    }
    let m = Measurement::new(
        "apiservers_ready",
        (n - answers.iter().filter(|a| !a.ok()).map(|a| &a.endpoint).collect::<std::collections::BTreeSet<_>>().len())
            as f64,
        "apiservers",
    )
    .with_min(n as f64);
    if bad.is_empty() {
        CheckOutcome::pass(N, format!("all {n} apiservers answer /livez and /readyz 200 on their own address"))
    } else {
        CheckOutcome::fail(N, bad.join("; "))
    }
    .with_evidence(evidence)
    .with_measurement(m)
}

#[cfg(test)]
mod tests;
