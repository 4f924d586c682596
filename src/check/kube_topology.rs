//! Kubernetes topology checks over a [`Discovery`]: the number of control-plane nodes, the
//! kubeconfig server being a load balancer rather than one node, the serving certificate's
//! SANs covering it, the controller-manager and scheduler leases held and renewed, and the
//! node-monitor grace period a NotReady transition is held to. Pure functions.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;

use super::CheckOutcome;
use crate::report::Measurement;
use crate::target::discovery::{Discovery, LEASES};

/// The nodes table, the evidence of the node checks.
pub fn node_table(d: &Discovery) -> String {
    let mut o = format!("control-plane nodes (label node-role.kubernetes.io/control-plane), server {}:\n", d.server);
    for n in &d.nodes {
        let addrs = n.addresses.iter().map(|(t, a)| format!("{t}={a}")).collect::<Vec<_>>().join(" ");
        o.push_str(&format!("  {:<20} {addrs}\n", n.name));
    }
    for a in &d.apiservers {
        o.push_str(&format!("  apiserver endpoint {} (node {})\n", a.url(), a.node.as_deref().unwrap_or("-")));
    }
    o
}

/// An odd number of control-plane nodes, at least `min`.
pub fn control_plane_count(d: &Discovery, min: usize, odd: bool) -> CheckOutcome {
    const N: &str = "kube_control_plane_count";
    let n = d.nodes.len();
    let m = Measurement::new("control_plane_nodes", n as f64, "nodes").with_min(min as f64);
    let out = if n < min {
        CheckOutcome::fail(
            N,
            format!(
                "{n} control-plane node(s), expected at least {min}: losing one node loses the control plane's quorum"
            ),
        )
    } else if odd && n % 2 == 0 {
        CheckOutcome::fail(
            N,
            format!(
                "{n} control-plane nodes, expected an odd number: with stacked etcd {n} nodes tolerate {} failure(s), no more than {}",
                crate::check::quorum_tolerance(n),
                n - 1
            ),
        )
    } else {
        CheckOutcome::pass(N, format!("{n} control-plane nodes"))
    };
    out.with_evidence(node_table(d)).with_measurement(m)
}

/// The kubeconfig server is not the address of a single control-plane node.
pub fn server_is_load_balancer(d: &Discovery) -> CheckOutcome {
    const N: &str = "kube_server_is_load_balancer";
    let lb = &d.load_balancer;
    let apiserver = d.apiservers.iter().find(|a| same_host(&a.address, &lb.host));
    let out = match (&lb.node, apiserver) {
        (Some(node), _) => CheckOutcome::fail(
            N,
            format!("the kubeconfig server {} is node {node}'s own address: when {node} is down the API is unreachable; point it at a load balancer", lb.url),
        ),
        (None, Some(a)) => CheckOutcome::fail(
            N,
            format!("the kubeconfig server {} is the apiserver endpoint {} itself, not a load balancer in front of all {}", lb.url, a.url(), d.apiservers.len()),
        ),
        (None, None) if d.nodes.is_empty() && d.apiservers.is_empty() => CheckOutcome::fail(
            N,
            format!("no control-plane node and no apiserver endpoint were found: cannot tell whether {} is a load balancer", lb.url),
        ),
        (None, None) => CheckOutcome::pass(
            N,
            format!("the kubeconfig server {} is not the address of any of the {} control-plane nodes", lb.url, d.nodes.len()),
        ),
    };
    out.with_evidence(node_table(d))
}

fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Whether one SAN (`DNS:name`, `IP:addr`, or a bare name or address) covers `host`.
/// A wildcard matches exactly one leftmost label; an IP host needs an IP SAN.
pub fn san_matches(san: &str, host: &str) -> bool {
    let san = san
        .strip_prefix("DNS:")
        .or_else(|| san.strip_prefix("IP Address:"))
        .or_else(|| san.strip_prefix("IP:"))
        .unwrap_or(san)
        .trim();
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    if let Ok(h) = host.parse::<IpAddr>() {
        return san.parse::<IpAddr>().is_ok_and(|s| s == h);
    }
    if san.parse::<IpAddr>().is_ok() {
        return false;
    }
    let san = san.trim_end_matches('.');
    if let Some(suffix) = san.strip_prefix("*.") {
        return match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        };
    }
    san.eq_ignore_ascii_case(host)
}

/// The apiserver serving certificate's SANs cover the kubeconfig server's host.
pub fn serving_cert_covers(sans: &[String], host: &str, served_by: &str) -> CheckOutcome {
    const N: &str = "kube_serving_cert_covers_server";
    let evidence = format!(
        "certificate served by {served_by}, SANs:\n{}",
        sans.iter().map(|s| format!("  {s}\n")).collect::<String>()
    );
    match sans.iter().find(|s| san_matches(s, host)) {
        Some(s) => CheckOutcome::pass(N, format!("SAN {s} covers the server host {host}")),
        None => CheckOutcome::fail(
            N,
            format!("no SAN of the certificate served by {served_by} covers the server host {host} ({} SANs): clients verifying TLS are refused; add it to apiServer.certSANs", sans.len()),
        ),
    }
    .with_evidence(evidence)
}

/// The controller-manager and scheduler leases exist, have a holder and were renewed within
/// their lease duration of `now`.
pub fn leases_renewed(d: &Discovery, now: DateTime<Utc>) -> CheckOutcome {
    leases_renewed_of(d, now, &LEASES, &[])
}

/// [`leases_renewed`] over the leases `names` only; `not_checked` (one line each) names the
/// leases left out and why (a rig that does not run that component), in the message.
pub fn leases_renewed_of(d: &Discovery, now: DateTime<Utc>, names: &[&str], not_checked: &[String]) -> CheckOutcome {
    const N: &str = "kube_leases_renewed";
    let mut bad = Vec::new();
    let mut evidence = format!("leases in kube-system at {}:\n", now.to_rfc3339());
    let mut out_m = Vec::new();
    for &name in names {
        let Some(l) = d.leases.iter().find(|l| l.name == name) else {
            bad.push(format!("{name}: not read"));
            continue;
        };
        evidence.push_str(&format!(
            "  {name}: exists={} holder={} renewTime={} leaseDurationSeconds={} transitions={}\n",
            l.exists,
            l.holder.as_deref().unwrap_or("-"),
            l.renew_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
            l.duration.map(|d| d.as_secs().to_string()).unwrap_or_else(|| "-".into()),
            l.transitions.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        ));
        if !l.exists {
            bad.push(format!("{name}: the lease does not exist (leader election off, or the component never started)"));
            continue;
        }
        let Some(holder) = &l.holder else {
            bad.push(format!("{name}: no holder"));
            continue;
        };
        let (Some(renew), Some(dur)) = (l.renew_time, l.duration) else {
            bad.push(format!("{name}: held by {holder} without renewTime or leaseDurationSeconds"));
            continue;
        };
        let age = now.signed_duration_since(renew);
        let age_s = age.num_milliseconds() as f64 / 1000.0;
        out_m.push(Measurement::new(format!("{name}_lease_age"), age_s, "s").with_bound(dur.as_secs_f64()));
        if age_s > dur.as_secs_f64() {
            bad.push(format!(
                "{name}: held by {holder} but last renewed {age_s:.1}s ago, more than its lease duration {}s",
                dur.as_secs()
            ));
        }
    }
    let also =
        if not_checked.is_empty() { String::new() } else { format!(" (not checked: {})", not_checked.join("; ")) };
    let mut out = if bad.is_empty() && names.len() == LEASES.len() {
        CheckOutcome::pass(
            N,
            "controller-manager and scheduler leases are held and renewed within their lease duration",
        )
    } else if bad.is_empty() {
        CheckOutcome::pass(N, format!("lease {} is held and renewed within its lease duration{also}", names.join(", ")))
    } else {
        CheckOutcome::fail(N, format!("{}{also}", bad.join("; ")))
    }
    .with_evidence(evidence);
    for m in out_m {
        out = out.with_measurement(m);
    }
    out
}

/// Parses a Go duration (`40s`, `1m0s`, `1m30.5s`, `500ms`, `1h`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

/// The minor version of `v1.29.2`, `1.32`, `v1.32.0-eks-abc`, `registry/…:v1.31.1`.
pub fn minor_version(v: &str) -> Option<u32> {
    let v = v.rsplit(':').next().unwrap_or(v).trim_start_matches('v');
    let mut parts = v.split('.');
    if parts.next()? != "1" {
        return None;
    }
    let minor = parts.next()?;
    minor.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

/// The controller-manager's node-monitor grace period: its `--node-monitor-grace-period`
/// flag, else the default of its version (40 s before 1.32, 50 s from 1.32).
pub fn node_monitor_grace_period(kcm_flags: &IndexMap<String, String>, version: &str) -> Result<Duration, String> {
    if let Some(v) = kcm_flags.get("node-monitor-grace-period") {
        return parse_go_duration(v).ok_or_else(|| format!("--node-monitor-grace-period={v} is not a duration"));
    }
    match minor_version(version) {
        Some(m) if m >= 32 => Ok(Duration::from_secs(50)),
        Some(_) => Ok(Duration::from_secs(40)),
        None => Err(format!("cannot tell the default node-monitor grace period of version `{version}`")),
    }
}

/// The grace period of the cluster in `d`: from the controller-manager pods' flags and image
/// version (the lease holder's pod first), else the server version.
pub fn grace_period_of(d: &Discovery) -> Result<Duration, String> {
    let holder = d.leases.iter().find(|l| l.name == "kube-controller-manager").and_then(|l| l.holder_node.clone());
    let mut kcms: Vec<_> = d.static_pods.iter().filter(|p| p.component == "kube-controller-manager").collect();
    kcms.sort_by_key(|p| Some(&p.node) != holder.as_ref());
    match kcms.first() {
        Some(p) => {
            let v = if minor_version(&p.image).is_some() {
                p.image.clone()
            } else {
                d.server_version.clone().unwrap_or_default()
            };
            node_monitor_grace_period(&p.flags, &v)
        }
        None => node_monitor_grace_period(&IndexMap::new(), d.server_version.as_deref().unwrap_or("")),
    }
}

/// A node turned NotReady `observed` after its kubelet stopped: within `grace + slack`.
pub fn node_not_ready_within(node: &str, observed: Option<Duration>, grace: Duration, slack: Duration) -> CheckOutcome {
    const N: &str = "kube_node_not_ready_within_grace";
    let bound = grace + slack;
    match observed {
        None => CheckOutcome::fail(
            N,
            format!(
                "node {node} never turned NotReady within {:.0}s (grace {}s + slack {}s)",
                bound.as_secs_f64(),
                grace.as_secs(),
                slack.as_secs()
            ),
        ),
        Some(o) => {
            let m = Measurement::new("node_not_ready_after", o.as_secs_f64(), "s").with_bound(bound.as_secs_f64());
            if o <= bound {
                CheckOutcome::pass(
                    N,
                    format!(
                        "node {node} NotReady {:.1}s after its kubelet stopped (bound {:.0}s)",
                        o.as_secs_f64(),
                        bound.as_secs_f64()
                    ),
                )
            } else {
                CheckOutcome::fail(
                    N,
                    format!(
                        "node {node} NotReady {:.1}s after its kubelet stopped, more than grace {}s + slack {}s",
                        o.as_secs_f64(),
                        grace.as_secs(),
                        slack.as_secs()
                    ),
                )
            }
            .with_measurement(m)
        }
    }
}

#[cfg(test)]
mod tests;
