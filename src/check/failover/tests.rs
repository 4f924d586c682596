//! The failover checks over hand-made histories: each passes on a healthy history and names
//! the measured figure and the bound on a broken one.

use super::*;

fn ms(t0: Instant, x: u64) -> Instant {
    t0 + Duration::from_millis(x)
}

fn op(t0: Instant, client: ClientKind, start: u64, end: u64, ok: bool) -> ApiOp {
    ApiOp {
        seq: start,
        client,
        verb: crate::probe::kube::ApiVerb::Write,
        start: ms(t0, start),
        end: ms(t0, end),
        start_wall: chrono::Utc::now(),
        outcome: if ok {
            Ok(())
        } else {
            Err("503 ServiceUnavailable: the server is currently unable to handle the request".into())
        },
    }
}

/// Requests every 200ms over both clients from 0 to `until`; failing in `[from, to)`.
fn history(t0: Instant, until: u64, fail: Option<(u64, u64)>) -> Vec<ApiOp> {
    let mut v = Vec::new();
    let mut t = 0;
    while t <= until {
        let ok = fail.is_none_or(|(a, b)| t < a || t >= b);
        for k in [ClientKind::Reused, ClientKind::Fresh] {
            v.push(op(t0, k, t, t + 30, ok));
        }
        t += 200;
    }
    v
}

#[test]
fn spans_run_from_the_first_failure_to_the_next_success() {
    let t0 = Instant::now();
    let ops = history(t0, 10_000, Some((3_000, 4_000)));
    let s = failure_spans(&ops, ClientKind::Reused, t0, ms(t0, 10_000));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].from, ms(t0, 3_000));
    assert_eq!(s[0].to, ms(t0, 4_000));
    assert_eq!(s[0].failed, 5);
    assert!(!s[0].open);
    // still failing at the end of the window: open, up to the last failure's end
    let ops = history(t0, 5_000, Some((3_000, 99_000)));
    let s = failure_spans(&ops, ClientKind::Fresh, t0, ms(t0, 5_000));
    assert!(s[0].open);
    assert_eq!(s[0].to, ms(t0, 5_030));
}

#[test]
fn requests_hanging_on_a_dead_backend_are_one_disruption_though_others_succeed() {
    // every third request hangs until its 2s deadline (the LB still sends it to the stopped
    // apiserver), the others succeed at once: 20s of that is 20s of disruption
    let t0 = Instant::now();
    let mut ops = Vec::new();
    for i in 0..200u64 {
        let t = i * 100;
        let hangs = (2_000..22_000).contains(&t) && i % 3 == 0;
        ops.push(op(t0, ClientKind::Reused, t, if hangs { t + 2_000 } else { t + 20 }, !hangs));
    }
    let s = failure_spans(&ops, ClientKind::Reused, t0, ms(t0, 20_000));
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].length() >= Duration::from_secs(19), "{:?}", s[0].length());
    let c = api_available(&ops, t0, t0, ms(t0, 20_000), Duration::from_secs(3));
    assert!(
        !c.passed && c.message.contains("unavailable for 19.") && c.message.contains("over a reused connection"),
        "{}",
        c.message
    );
}

#[test]
fn api_available_within_budget_passes_with_measurements() {
    let t0 = Instant::now();
    let ops = history(t0, 10_000, Some((3_000, 3_400)));
    let c = api_available(&ops, t0, ms(t0, 2_000), ms(t0, 10_000), Duration::from_secs(3));
    assert!(c.passed, "{}", c.message);
    let m = c.measurements.iter().find(|m| m.name == "kube_api_disruption_reused").unwrap();
    assert_eq!((m.value, m.bound), (0.4, Some(3.0)));
    let f = c.measurements.iter().find(|m| m.name == "kube_api_failed_requests_fresh").unwrap();
    assert_eq!(f.value, 2.0);
}

#[test]
fn api_disruption_over_budget_fails_naming_figure_and_bound() {
    let t0 = Instant::now();
    let ops = history(t0, 12_000, Some((3_000, 7_200)));
    let c = api_available(&ops, t0, ms(t0, 2_000), ms(t0, 12_000), Duration::from_secs(3));
    assert!(!c.passed);
    assert!(c.message.contains("unavailable for 4.200s over a reused connection"), "{}", c.message);
    assert!(c.message.contains("budget 3.000s"), "{}", c.message);
    assert!(c.message.contains("503 ServiceUnavailable"), "{}", c.message);
    assert!(c.evidence.contains("+3.000s → +7.200s"), "{}", c.evidence);
}

#[test]
fn api_still_failing_at_the_end_fails_even_when_short() {
    let t0 = Instant::now();
    let ops = history(t0, 4_000, Some((3_800, 99_000)));
    let c = api_available(&ops, t0, ms(t0, 1_000), ms(t0, 4_000), Duration::from_secs(3));
    assert!(!c.passed);
    assert!(c.message.contains("still failing at the end of the window"), "{}", c.message);
}

#[test]
fn no_request_in_the_window_is_not_a_pass() {
    let t0 = Instant::now();
    let c = api_available(&[], t0, t0, ms(t0, 1_000), Duration::from_secs(3));
    assert!(!c.passed);
    assert!(c.message.contains("made no request"), "{}", c.message);
}

fn lease(t0: Instant, at: u64, holder: Option<&str>) -> LeaseObs {
    LeaseObs {
        at: ms(t0, at),
        lease: "kube-controller-manager".into(),
        holder: holder.map(str::to_string),
        duration: Some(Duration::from_secs(15)),
        renew_time: None,
        acquire_time: None,
        transitions: Some(2),
        via: "watch",
    }
}

#[test]
fn a_takeover_within_the_bound_passes_and_is_measured() {
    let t0 = Instant::now();
    // the controller-manager does not release its lease on SIGTERM: the next holder waits out
    // the lease (about 17s on a real 1.26 control plane)
    let obs: Vec<LeaseObs> =
        (0..=10).map(|i| lease(t0, i * 2_000, Some("cp-2_a"))).chain([lease(t0, 27_100, Some("cp-1_b"))]).collect();
    let bound = Duration::from_secs(15 + 2 + 5);
    let c = lease_takeover(&obs, "kube-controller-manager", t0, ms(t0, 10_000), ms(t0, 30_000), bound, "15s + 2s + 5s");
    assert!(c.passed, "{}", c.message);
    assert_eq!(c.measurements[0].name, "lease_takeover_kube_controller_manager");
    assert_eq!((c.measurements[0].value, c.measurements[0].bound), (17.1, Some(22.0)));
    assert!(c.message.contains("from cp-2_a to cp-1_b 17.100s after the fault"), "{}", c.message);
}

#[test]
fn a_released_lease_counts_from_the_new_holder_not_the_release() {
    let t0 = Instant::now();
    // the scheduler releases on SIGTERM: the holder goes empty, then another takes it (≈3s)
    let obs = vec![lease(t0, 0, Some("cp-1_a")), lease(t0, 10_100, None), lease(t0, 13_000, Some("cp-3_c"))];
    let c = lease_takeover(
        &obs,
        "kube-controller-manager",
        t0,
        ms(t0, 10_000),
        ms(t0, 14_000),
        Duration::from_secs(22),
        "b",
    );
    assert!(c.passed);
    assert_eq!(c.measurements[0].value, 3.0);
}

#[test]
fn a_takeover_too_slow_fails_naming_figure_and_bound() {
    let t0 = Instant::now();
    let obs = vec![lease(t0, 0, Some("cp-2_a")), lease(t0, 40_000, Some("cp-1_b"))];
    let c = lease_takeover(
        &obs,
        "kube-controller-manager",
        t0,
        ms(t0, 10_000),
        ms(t0, 45_000),
        Duration::from_secs(22),
        "leaseDurationSeconds 15s + retry 2s + slack 5s",
    );
    assert!(!c.passed);
    assert!(
        c.message.contains("only 30.000s after the fault; bound 22.000s (leaseDurationSeconds 15s"),
        "{}",
        c.message
    );
    assert_eq!(c.measurements[0].value, 30.0);
}

#[test]
fn a_lease_never_taken_over_fails_with_how_long_it_waited() {
    let t0 = Instant::now();
    let obs: Vec<LeaseObs> = (0..20).map(|i| lease(t0, i * 2_000, Some("cp-2_a"))).collect();
    let c = lease_takeover(
        &obs,
        "kube-controller-manager",
        t0,
        ms(t0, 5_000),
        ms(t0, 38_000),
        Duration::from_secs(22),
        "b",
    );
    assert!(!c.passed);
    assert!(
        c.message.contains("still held by cp-2_a 33.000s after the fault stopped cp-2_a; bound 22.000s"),
        "{}",
        c.message
    );
    // no observation before the fault: not measurable, not a pass
    let c = lease_takeover(
        &obs[5..],
        "kube-controller-manager",
        t0,
        ms(t0, 5_000),
        ms(t0, 38_000),
        Duration::from_secs(22),
        "b",
    );
    assert!(!c.passed && c.message.contains("not observed before the fault"), "{}", c.message);
}

fn node(t0: Instant, at: u64, name: &str, status: &str) -> NodeObs {
    NodeObs {
        at: ms(t0, at),
        node: name.into(),
        status: status.into(),
        reason: if status == "True" { "KubeletReady".into() } else { "NodeStatusUnknown".into() },
        last_transition: None,
        via: "watch",
    }
}

#[test]
fn a_node_not_ready_within_grace_passes() {
    let t0 = Instant::now();
    let obs = vec![node(t0, 0, "cp-1", "True"), node(t0, 0, "cp-2", "True"), node(t0, 52_000, "cp-2", "Unknown")];
    let c = node_not_ready(
        &obs,
        Some("cp-2"),
        t0,
        ms(t0, 10_000),
        ms(t0, 53_000),
        Duration::from_secs(50),
        "grace 40s + slack 10s",
    );
    assert!(c.passed, "{}", c.message);
    assert_eq!((c.measurements[0].value, c.measurements[0].bound), (42.0, Some(50.0)));
}

#[test]
fn a_node_still_ready_fails_naming_figure_and_bound() {
    let t0 = Instant::now();
    // another node going NotReady does not count for the one the fault hit
    let obs = vec![node(t0, 0, "cp-1", "True"), node(t0, 0, "cp-2", "True"), node(t0, 20_000, "cp-1", "Unknown")];
    let c = node_not_ready(
        &obs,
        Some("cp-2"),
        t0,
        ms(t0, 10_000),
        ms(t0, 57_100),
        Duration::from_secs(50),
        "node-monitor grace period 40s + slack 10s",
    );
    assert!(!c.passed);
    assert_eq!(
        c.message,
        "node cp-2 still Ready 47.100s after the fault; bound 50.000s (node-monitor grace period 40s + slack 10s)"
    );
    // late
    let obs = vec![node(t0, 0, "cp-2", "True"), node(t0, 70_000, "cp-2", "Unknown")];
    let c = node_not_ready(&obs, Some("cp-2"), t0, ms(t0, 10_000), ms(t0, 71_000), Duration::from_secs(50), "b");
    assert!(!c.passed && c.message.contains("only 60.000s after the fault"), "{}", c.message);
    // already NotReady before the fault: nothing to measure
    let obs = vec![node(t0, 0, "cp-2", "False")];
    let c = node_not_ready(&obs, Some("cp-2"), t0, ms(t0, 10_000), ms(t0, 11_000), Duration::from_secs(50), "b");
    assert!(!c.passed && c.message.contains("already Ready=False before the fault"), "{}", c.message);
}

#[test]
fn latest_not_ready_nodes_are_listed() {
    let t0 = Instant::now();
    let obs = vec![
        node(t0, 0, "cp-1", "Unknown"),
        node(t0, 1, "cp-2", "True"),
        node(t0, 5, "cp-1", "True"),
        node(t0, 6, "cp-3", "False"),
    ];
    assert_eq!(not_ready_now(&obs), vec![("cp-3".to_string(), "False".to_string())]);
}

fn answer(endpoint: &str, path: &str, r: Result<(u16, &str), &str>) -> HealthAnswer {
    HealthAnswer {
        endpoint: endpoint.into(),
        node: Some("cp-2".into()),
        path: path.into(),
        result: r.map(|(c, b)| (c, b.to_string())).map_err(str::to_string),
    }
}

#[test]
fn apiservers_ready_names_the_failing_checks() {
    let ok = |e: &str| {
        vec![
            answer(e, "/livez", Ok((200, "livez check passed"))),
            answer(e, "/readyz", Ok((200, "readyz check passed"))),
        ]
    };
    let all: Vec<HealthAnswer> =
        ["https://10.0.0.11:6443", "https://10.0.0.12:6443"].iter().flat_map(|e| ok(e)).collect();
    let c = apiservers_ready(&all);
    assert!(c.passed, "{}", c.message);
    let mut bad = ok("https://10.0.0.11:6443");
    bad.push(answer("https://10.0.0.12:6443", "/livez", Ok((200, "ok"))));
    bad.push(answer(
        "https://10.0.0.12:6443",
        "/readyz",
        Ok((500, "[+]ping ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\nreadyz check failed")),
    ));
    bad.push(answer("https://10.0.0.13:6443", "/livez", Err("tcp connect error: Connection refused (os error 111)")));
    let c = apiservers_ready(&bad);
    assert!(!c.passed);
    assert!(
        c.message.contains(
            "apiserver https://10.0.0.12:6443 (node cp-2) /readyz answered 500: [-]etcd failed: reason withheld"
        ),
        "{}",
        c.message
    );
    assert!(c.message.contains("https://10.0.0.13:6443 (node cp-2) /livez: tcp connect error"), "{}", c.message);
    assert_eq!((c.measurements[0].value, c.measurements[0].bound), (1.0, Some(3.0)));
    assert!(!apiservers_ready(&[]).passed);
}
