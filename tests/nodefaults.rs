//! Control-plane fault specs run through the `hadrill` binary. On the local rig (real etcd
//! members, each in a network namespace reached with `local` node access) the on-node etcd
//! partition cuts the leader off and the quorum checks see the majority elect a new one; the
//! same partition of a follower makes that check fail; a kubelet fault is skipped with the
//! rig's reason. Against a real cluster (`HADRILL_E2E_KUBECONFIG`) the node faults run on its
//! nodes; without it those tests say why they did nothing.
//! Needs root, etcd, ip and iptables. Each test removes what it started, even on panic.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use hadrill::rig::{self, Isolation, RigSpec, RigState};

static SERIAL: Mutex<()> = Mutex::new(());

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

struct Rig {
    state: RigState,
    _tmp: tempfile::TempDir,
    ledger: PathBuf,
}

impl Rig {
    fn up(members: usize) -> Rig {
        let tmp = tempfile::Builder::new().prefix("hn-").tempdir().unwrap();
        let dir = tmp.path().join("rig");
        let ledger = tmp.path().join("ledger");
        let state = rt()
            .block_on(rig::up(&RigSpec { dir: dir.clone(), members, isolation: Isolation::Netns }))
            .unwrap_or_else(|e| panic!("rig up: {}", hadrill::exit::chain(&e)));
        Rig { state, _tmp: tmp, ledger }
    }

    fn hadrill(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hadrill"));
        c.env("HADRILL_LEDGER", &self.ledger).arg("--config").arg(self.state.dir.join("target.yaml"));
        c
    }

    fn no_rules_left(&self) {
        for m in &self.state.members {
            let ns = m.netns.as_ref().unwrap();
            let rules = rt().block_on(hadrill::fault::net::tagged_rules(ns, None)).unwrap();
            assert!(rules.is_empty(), "rules left in {ns}: {rules:?}");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = rt().block_on(rig::down(&self.state.dir.clone()));
    }
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn suite_dir(yaml: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("custom.yaml"), yaml).unwrap();
    d
}

fn case<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["cases"].as_array().unwrap().iter().find(|c| c["case"] == name).unwrap_or_else(|| panic!("no case {name}"))
}

const SUITE: &str = r#"suite: nodefaults
description: control-plane fault specs on the rig
cases:
  - name: leader_partitioned_on_its_node
    description: the etcd leader's node drops its peer traffic → the majority elects a new leader
    disruptive: true
    requires: [etcd, { etcd_members: { min: 3 } }]
    steps:
      - probe: { etcd_status: {} }
      - probe: { etcd_writes: { per_second: 20, timeout: 2s } }
      - await: { acknowledged_writes: { count: 10, within: 10s } }
      - inject: { node_etcd_partition: { pick: leader, dead_man: 120s } }
      - check: { majority_elects_new_leader: { within: 10s } }
      - check: isolated_leader_refuses_writes
      - heal
      - await: { leader: { within: 15s } }
      - check: { writes_succeed: { within: 10s } }
      - check: no_lost_writes
      - check: { converged: { within: 20s } }
  - name: follower_partitioned_on_its_node
    description: a follower cut off → no new leader (this check must fail)
    disruptive: true
    requires: [etcd, { etcd_members: { min: 3 } }]
    steps:
      - probe: { etcd_status: {} }
      - inject: { node_etcd_partition: { pick: not_leader, dead_man: 120s } }
      - check: { majority_elects_new_leader: { within: 3s } }
  - name: follower_latency_on_its_node
    description: tc netem on a follower's node (skipped with the kernel's reason without sch_netem)
    disruptive: true
    requires: [etcd, { etcd_members: { min: 3 } }]
    steps:
      - inject: { node_peer_latency: { pick: not_leader, delay: 100ms, dead_man: 60s } }
      - check: { writes_succeed: { within: 10s } }
  - name: kubelet_on_the_rig
    description: the rig runs no kubelet
    disruptive: true
    steps:
      - inject: { kubelet_stop: { pick: any } }
"#;

#[test]
fn node_etcd_partition_through_the_rigs_node_access() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rig = Rig::up(3);
    let suites = suite_dir(SUITE);
    let report = rig.state.dir.join("report.json");
    let o = rig
        .hadrill()
        .arg("--suite-dir")
        .arg(suites.path())
        .args(["run", "--allow-disruption", "--seed", "3", "nodefaults::", "--json"])
        .arg(&report)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "one case must fail: {}", show(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let c = case(&r, "leader_partitioned_on_its_node");
    assert_eq!(c["verdict"]["status"], "passed", "{c}\n{}", show(&o));
    let text = c.to_string();
    assert!(text.contains("partition the etcd member on node") && text.contains("iptables rules hadrill:"), "{text}");
    let c = case(&r, "follower_partitioned_on_its_node");
    assert_eq!(c["verdict"]["status"], "failed", "{c}");
    let m = c["verdict"]["message"].as_str().unwrap();
    assert!(m.contains("did not agree on a new leader other than"), "{m}");
    let c = case(&r, "follower_latency_on_its_node");
    match c["verdict"]["status"].as_str() {
        Some("passed") => {}
        Some("skipped") => {
            assert!(c["verdict"]["reason"].as_str().unwrap().contains("no tc netem/prio support"), "{c}")
        }
        _ => panic!("{c}"),
    }
    let c = case(&r, "kubelet_on_the_rig");
    assert_eq!(c["verdict"]["status"], "skipped", "{c}");
    assert_eq!(c["verdict"]["reason"], "needs a kubelet: the rig runs none", "{c}");
    rig.no_rules_left();
    assert!(std::fs::read_dir(&rig.ledger).unwrap().next().is_none(), "the ledger is empty after the run");
}

/// Against a real cluster: every node fault is injected and reverted through the configured
/// node access. `HADRILL_E2E_CONFIG` names the config that lists the context under
/// `disruption.allowed_contexts` (and `node_access` unless the cluster is kind).
#[test]
fn e2e_node_faults_on_a_real_cluster() {
    let Some(kubeconfig) = std::env::var_os("HADRILL_E2E_KUBECONFIG") else {
        eprintln!(
            "skipped: HADRILL_E2E_KUBECONFIG is not set (a kubeconfig of a disposable HA cluster with node access)"
        );
        return;
    };
    let ledger = tempfile::tempdir().unwrap();
    let suites = suite_dir(
        r#"suite: e2enode
description: node faults on a real cluster
cases:
  - name: apiserver_stop
    description: one apiserver's manifest parked, then restored
    disruptive: true
    requires: [kubernetes]
    steps:
      - inject: { component_stop: { component: apiserver, pick: any } }
      - heal
  - name: scheduler_leader_stop
    description: the scheduler leader's manifest parked, then restored
    disruptive: true
    requires: [kubernetes]
    steps:
      - inject: { component_stop: { component: scheduler, pick: leader } }
      - heal
  - name: kubelet_stop
    description: a kubelet stopped, then started
    disruptive: true
    requires: [kubernetes]
    steps:
      - inject: { kubelet_stop: { pick: any } }
      - heal
  - name: etcd_partition
    description: the etcd leader's node cut off, then healed
    disruptive: true
    requires: [kubernetes, etcd]
    steps:
      - inject: { node_etcd_partition: { pick: leader, dead_man: 120s } }
      - heal
"#,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hadrill"));
    cmd.env("HADRILL_LEDGER", ledger.path()).arg("--kubeconfig").arg(&kubeconfig);
    if let Some(c) = std::env::var_os("HADRILL_E2E_CONFIG") {
        cmd.arg("--config").arg(c);
    }
    let o = cmd
        .arg("--suite-dir")
        .arg(suites.path())
        .args(["run", "--allow-disruption", "e2enode::"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(std::fs::read_dir(ledger.path()).unwrap().next().is_none(), "nothing left in the ledger");
}

/// The etcd client material of a Kubernetes target is read through node access (here `local`
/// on the rig's PKI, standing in for /etc/kubernetes/pki on a control-plane node) and reaches
/// the real members; a wrong CA bundle is refused before the target is used.
#[test]
fn etcd_material_read_through_node_access_reaches_the_members() {
    use hadrill::node::NodeAccess;
    use hadrill::target::discovery::EtcdClientFiles;
    use hadrill::target::etcd_via_node::{reachable_target, read_tls};
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rig = Rig::up(3);
    let s = |p: &std::path::Path| p.display().to_string();
    let files = EtcdClientFiles {
        node: "cp-1".into(),
        ca: s(&rig.state.ca_cert),
        cert: Some(s(&rig.state.client_cert)),
        key: Some(s(&rig.state.client_key)),
    };
    let endpoints: Vec<String> = rig.state.members.iter().map(|m| m.client_url.clone()).collect();
    let rt = rt();
    let tls = rt.block_on(read_tls(&NodeAccess::Local { netns: None }, None, &files)).unwrap();
    let etcd = rt.block_on(reachable_target(endpoints.clone(), tls)).unwrap_or_else(|e| panic!("{e}"));
    let v = rt.block_on(hadrill::probe::etcd::cluster_view(&etcd)).unwrap();
    assert_eq!(v.members.len(), 3);
    assert!(v.leader().is_some());
    // the client certificate given as the CA bundle: the members' serving certificates fail
    let wrong = EtcdClientFiles { ca: s(&rig.state.client_cert), ..files };
    let tls = rt.block_on(read_tls(&NodeAccess::Local { netns: None }, None, &wrong)).unwrap();
    let e = rt.block_on(reachable_target(endpoints, tls)).unwrap_err();
    assert!(e.contains("did not answer"), "{e}");
}

/// `recover` with a kubeconfig also looks for leftover access pods; an API that does not
/// answer is reported (not silently passed), and the ledger part still runs.
#[test]
fn recover_with_a_kubeconfig_reports_access_pods_it_could_not_delete() {
    let d = tempfile::tempdir().unwrap();
    let kc = d.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\"}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .env("HADRILL_LEDGER", d.path().join("ledger"))
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("recover")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("holds no fault"), "{}", show(&o));
    assert!(out.contains("could not delete the node access pods in kube-system: "), "{}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    // without a kubeconfig nothing is asked of any API
    let o = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .env("HADRILL_LEDGER", d.path().join("ledger"))
        .arg("recover")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("access pods"), "{}", show(&o));
}

/// A node fault left in the ledger (its run gone) is reverted by `hadrill recover` from the
/// stored form alone: the rules tagged with its token go, the timer on the "node" goes.
#[test]
fn recover_reverts_a_node_partition_from_the_ledger() {
    use hadrill::fault::node::NodeRef;
    use hadrill::fault::{net, Fault, Ledger};
    use hadrill::node::NodeAccess;
    struct Ns(String, String);
    impl Drop for Ns {
        fn drop(&mut self) {
            net::kill_deadman(&self.1);
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let token = net::new_token();
    let ns = Ns(format!("hdnr-{}", &token[..8]), token.clone());
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let d = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&d.path().join("ledger")).unwrap();
    let f = Fault::NodeEtcdPartition {
        at: NodeRef { node: "cp-1".into(), access: NodeAccess::Local { netns: Some(ns.0.clone()) }, kube: None },
        token: token.clone(),
        others: vec!["10.98.0.2".into(), "10.98.0.3".into()],
        other_names: vec!["cp-2".into(), "cp-3".into()],
        peer_ports: vec![2380],
        dead_man_secs: 300,
    };
    let g = rt().block_on(hadrill::fault::inject(&ledger, f)).unwrap();
    std::mem::forget(g); // as if this run were SIGKILLed: nothing reverts it here
    assert_eq!(rt().block_on(net::tagged_rules(&ns.0, Some(&token))).unwrap().len(), 4);
    assert!(net::deadman_running(&token));
    let o = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .env("HADRILL_LEDGER", d.path().join("ledger"))
        .args(["recover", "--force"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("delete every rule tagged hadrill:{token}")),
        "{}",
        show(&o)
    );
    assert!(rt().block_on(net::tagged_rules(&ns.0, Some(&token))).unwrap().is_empty());
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while net::deadman_running(&token) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!net::deadman_running(&token), "the timer is gone");
    assert!(ledger.entries().unwrap().is_empty());
}
