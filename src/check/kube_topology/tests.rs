use super::*;
use crate::target::discovery::tests::fixture_discovery;

fn d() -> Discovery {
    fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn three_control_plane_nodes_pass() {
    let c = control_plane_count(&d(), 3, true);
    assert!(c.passed, "{}", c.message);
    assert!(c.evidence.contains("cp-3"));
}

#[test]
fn two_or_four_control_plane_nodes_fail() {
    let mut two = d();
    two.nodes.pop();
    let c = control_plane_count(&two, 3, true);
    assert!(!c.passed);
    assert!(c.message.starts_with("2 control-plane node(s), expected at least 3"), "{}", c.message);
    let mut four = d();
    let mut extra = four.nodes[0].clone();
    extra.name = "cp-4".into();
    four.nodes.push(extra);
    let c = control_plane_count(&four, 3, true);
    assert!(
        !c.passed && c.message.contains("expected an odd number") && c.message.contains("tolerate 1 failure"),
        "{}",
        c.message
    );
}

#[test]
fn a_load_balancer_in_front_passes() {
    let c = server_is_load_balancer(&d());
    assert!(c.passed, "{}", c.message);
}

#[test]
fn a_server_pointing_at_one_node_fails_naming_it() {
    let c = server_is_load_balancer(&fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.12:6443"));
    assert!(!c.passed);
    assert!(c.message.contains("is node cp-2's own address"), "{}", c.message);
    // an apiserver endpoint address that no node lists still is not a load balancer
    let mut x = d();
    x.load_balancer.host = "10.0.0.13".into();
    x.load_balancer.node = None;
    x.nodes.iter_mut().for_each(|n| n.addresses.retain(|(t, _)| t == "Hostname"));
    let c = server_is_load_balancer(&x);
    assert!(!c.passed && c.message.contains("apiserver endpoint https://10.0.0.13:6443 itself"), "{}", c.message);
}

#[test]
fn san_matching_follows_the_rules() {
    assert!(san_matches("IP:10.0.0.10", "10.0.0.10"));
    assert!(san_matches("10.0.0.10", "10.0.0.10"));
    assert!(san_matches("IP Address:fd00::10", "[fd00::10]"));
    assert!(!san_matches("DNS:10.0.0.10", "10.0.0.11"));
    assert!(!san_matches("DNS:lb.example.com", "10.0.0.10"));
    assert!(san_matches("DNS:LB.example.com", "lb.example.com"));
    assert!(san_matches("*.example.com", "lb.example.com"));
    assert!(!san_matches("*.example.com", "a.lb.example.com"), "a wildcard covers one label");
    assert!(!san_matches("*.example.com", "example.com"));
}

#[test]
fn serving_cert_sans_must_cover_the_server_host() {
    // kubeadm's apiserver SANs: node name, kubernetes.default…, service IP, advertise address
    let kubeadm: Vec<String> = [
        "DNS:cp-1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP:10.96.0.1",
        "IP:10.0.0.11",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = serving_cert_covers(&kubeadm, "10.0.0.10", "https://10.0.0.10:6443");
    assert!(!c.passed);
    assert!(
        c.message.contains("no SAN") && c.message.contains("10.0.0.10") && c.message.contains("certSANs"),
        "{}",
        c.message
    );
    assert!(c.evidence.contains("IP:10.0.0.11"));
    let mut with_lb = kubeadm.clone();
    with_lb.push("IP:10.0.0.10".into());
    assert!(serving_cert_covers(&with_lb, "10.0.0.10", "https://10.0.0.10:6443").passed);
}

#[test]
fn fresh_leases_pass() {
    // renewTimes 10:02:13.455 (kcm) and 10:02:12.901 (scheduler), 15 s leases
    let c = leases_renewed(&d(), at("2024-03-04T10:02:20Z"));
    assert!(c.passed, "{}", c.message);
    assert_eq!(c.measurements.len(), 2);
    assert!(c.evidence.contains("holder=cp-2_4f8c1a3e"));
}

#[test]
fn a_stale_lease_fails_with_its_age_and_duration() {
    let c = leases_renewed(&d(), at("2024-03-04T10:02:28Z"));
    assert!(!c.passed);
    assert!(
        c.message.contains("kube-scheduler: held by cp-1_")
            && c.message.contains("15.1s ago")
            && c.message.contains("lease duration 15s"),
        "{}",
        c.message
    );
    assert!(!c.message.contains("kube-controller-manager"), "{}", c.message);
}

#[test]
fn missing_or_unheld_leases_fail() {
    let mut x = d();
    x.leases[0].exists = false;
    x.leases[1].holder = None;
    let c = leases_renewed(&x, at("2024-03-04T10:02:20Z"));
    assert!(!c.passed);
    assert!(
        c.message.contains("kube-controller-manager: the lease does not exist")
            && c.message.contains("kube-scheduler: no holder"),
        "{}",
        c.message
    );
}

#[test]
fn go_durations_parse() {
    assert_eq!(parse_go_duration("40s"), Some(Duration::from_secs(40)));
    assert_eq!(parse_go_duration("1m0s"), Some(Duration::from_secs(60)));
    assert_eq!(parse_go_duration("1m30.5s"), Some(Duration::from_millis(90_500)));
    assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_go_duration("40"), None);
    assert_eq!(parse_go_duration("s"), None);
    assert_eq!(parse_go_duration(""), None);
}

#[test]
fn grace_period_defaults_change_at_1_32_and_the_flag_wins() {
    let none = IndexMap::new();
    assert_eq!(node_monitor_grace_period(&none, "v1.29.2"), Ok(Duration::from_secs(40)));
    assert_eq!(node_monitor_grace_period(&none, "v1.31.4"), Ok(Duration::from_secs(40)));
    assert_eq!(node_monitor_grace_period(&none, "v1.32.0"), Ok(Duration::from_secs(50)));
    assert_eq!(
        node_monitor_grace_period(&none, "registry.k8s.io/kube-controller-manager:v1.33.1"),
        Ok(Duration::from_secs(50))
    );
    assert_eq!(node_monitor_grace_period(&none, "v1.32.2-eks-7f2b3c1"), Ok(Duration::from_secs(50)));
    let flag: IndexMap<String, String> = [("node-monitor-grace-period".to_string(), "1m0s".to_string())].into();
    assert_eq!(node_monitor_grace_period(&flag, "v1.29.2"), Ok(Duration::from_secs(60)));
    let bad: IndexMap<String, String> = [("node-monitor-grace-period".to_string(), "forty".to_string())].into();
    assert!(node_monitor_grace_period(&bad, "v1.29.2").unwrap_err().contains("forty"));
    assert!(node_monitor_grace_period(&none, "garbage").is_err());
}

#[test]
fn grace_period_of_the_fixture_cluster_is_read_from_its_controller_manager() {
    let mut x = d();
    assert_eq!(grace_period_of(&x), Ok(Duration::from_secs(40)), "kubeadm 1.29 sets no flag");
    // the lease holder's pod (cp-2) is the one that decides
    let p = x.static_pods.iter_mut().find(|p| p.name == "kube-controller-manager-cp-2").unwrap();
    p.flags.insert("node-monitor-grace-period".into(), "20s".into());
    assert_eq!(grace_period_of(&x), Ok(Duration::from_secs(20)));
}

#[test]
fn not_ready_within_grace_plus_slack() {
    let g = Duration::from_secs(40);
    let s = Duration::from_secs(10);
    assert!(node_not_ready_within("cp-1", Some(Duration::from_secs(44)), g, s).passed);
    let late = node_not_ready_within("cp-1", Some(Duration::from_secs(73)), g, s);
    assert!(
        !late.passed && late.message.contains("73.0s") && late.message.contains("grace 40s + slack 10s"),
        "{}",
        late.message
    );
    assert!(!node_not_ready_within("cp-1", None, g, s).passed);
}

#[test]
fn leases_of_a_component_not_run_are_left_out_and_said_so_but_the_others_still_judged() {
    let mut x = d();
    x.leases[0].exists = false; // kube-controller-manager: no lease (the rig runs none)
    let why = ["needs kube-controller-manager: the rig runs none (its binary was not found in /b)".to_string()];
    let c = leases_renewed_of(&x, at("2024-03-04T10:02:20Z"), &["kube-scheduler"], &why);
    assert!(c.passed, "{}", c.message);
    assert!(
        c.message.starts_with("lease kube-scheduler is held")
            && c.message.contains("not checked: needs kube-controller-manager"),
        "{}",
        c.message
    );
    assert_eq!(c.measurements.len(), 1);
    // the lease still checked still fails when stale
    let c = leases_renewed_of(&x, at("2024-03-04T10:02:28Z"), &["kube-scheduler"], &why);
    assert!(!c.passed && c.message.contains("kube-scheduler: held by cp-1_"), "{}", c.message);
    // a real cluster without the lease (nothing left out) still fails
    let c = leases_renewed(&x, at("2024-03-04T10:02:20Z"));
    assert!(!c.passed && c.message.contains("kube-controller-manager: the lease does not exist"), "{}", c.message);
}

#[test]
fn nothing_discovered_is_not_a_load_balancer_pass() {
    let mut x = d();
    x.nodes.clear();
    x.apiservers.clear();
    let c = server_is_load_balancer(&x);
    assert!(!c.passed && c.message.contains("cannot tell"), "{}", c.message);
}
