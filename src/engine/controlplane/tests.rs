//! Resolving control-plane fault specs on the kubeadm fixtures, through kube's mock service:
//! leases are read at injection (not taken from discovery), picks follow the case's seed,
//! and what cannot be faulted is a skip that says why.

use std::sync::Arc;

use super::*;
use crate::fault::Ledger;
use crate::node::select::NodeAccessConfig;
use crate::probe::Timeline;
use crate::target::discovery::tests::{fixture, fixture_discovery, kubeadm_routes, mock_client, route};
use crate::target::kube::KubeTarget;
use crate::target::Target;

const LEASE_KCM: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager";

fn cfg(yaml: &str) -> NodeAccessConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

fn ctx(cfg_yaml: &str) -> RunContext {
    let cfg = cfg(cfg_yaml);
    let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
    let cp = discovered::from_discovery(
        &d,
        &crate::node::select::resolve_all(&cfg, &d),
        &Default::default(),
        "fixtures".into(),
    );
    with_cp(cp, Some(cfg))
}

fn with_cp(cp: ControlPlane, cfg: Option<NodeAccessConfig>) -> RunContext {
    let t = Target {
        kube: Some(KubeTarget {
            kubeconfig: "/home/ci/.kube/config".into(),
            context: "prod-ha".into(),
            cluster: "prod".into(),
            server: "https://10.0.0.10:6443".into(),
            config: kube::Config::new("https://10.0.0.10:6443".parse().unwrap()),
        }),
        node_access: cfg,
        ..Default::default()
    };
    t.control_plane.set(cp).unwrap();
    let dir = std::env::temp_dir().join(format!("hadrill-cp-test-{}", std::process::id()));
    RunContext {
        target: Arc::new(t),
        ledger: Ledger::open(&dir).unwrap(),
        allow_disruption: true,
        disruption_refusal: String::new(),
        seed: 1,
        artifacts: None,
        exclusive: Arc::default(),
        progress: Arc::new(|_, _| {}),
    }
}

fn state(seed: u64) -> CaseState {
    CaseState {
        name: "failover::x".into(),
        timeline: Arc::new(Timeline::new()),
        output: String::new(),
        measurements: vec![],
        guards: vec![],
        probes: Default::default(),
        rng: rand::SeedableRng::seed_from_u64(seed),
        last_fault_at: None,
        leader_before_fault: None,
        faulted_members: vec![],
    }
}

fn lease(holder: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&fixture("lease-kube-controller-manager.json")).unwrap();
    v["spec"]["holderIdentity"] = serde_json::Value::String(holder.into());
    v.to_string()
}

fn skip(r: Result<(String, Fault), StepEnd>) -> String {
    match r {
        Err(StepEnd::Skip(s)) => s,
        Err(StepEnd::Error(e)) => panic!("error, not a skip: {e}"),
        Err(StepEnd::Failed(c)) => panic!("failed, not a skip: {}", c.message),
        Ok((h, f)) => panic!("resolved to {h}: {}", f.describe()),
    }
}

#[tokio::test]
async fn the_controller_manager_leader_is_read_from_its_lease_at_injection() {
    // discovery saw cp-2 holding the lease; by the time of the fault cp-3 holds it
    let (client, seen, _t) = mock_client(vec![route(LEASE_KCM, None, 200, lease("cp-3_0d1e2f"))]);
    let c = ctx("backend: pod\npod:\n  image: registry.local/busybox:1.36\n");
    let mut st = state(1);
    let spec = FaultSpec::ComponentStop {
        component: Component::ControllerManager,
        pick: InstancePick::Leader,
        signal: StopSignal::Term,
    };
    let (host, f) = resolve_fault(&c, &spec, &mut st, Some(&client)).await.ok().expect("resolved");
    assert_eq!(host, "cp-3");
    assert_eq!(seen.lock().unwrap().as_slice(), [format!("GET {LEASE_KCM}?")]);
    let Fault::StaticPodStop { at, container, manifest, parking_dir, .. } = f else { panic!("{f:?}") };
    assert_eq!(at.node, "cp-3");
    assert_eq!(
        at.access,
        NodeAccess::Pod {
            node: "cp-3".into(),
            namespace: "kube-system".into(),
            image: "registry.local/busybox:1.36".into()
        }
    );
    assert_eq!(
        at.kube,
        Some(KubeRef { kubeconfig: Some("/home/ci/.kube/config".into()), context: Some("prod-ha".into()) })
    );
    assert_eq!(container, "kube-controller-manager");
    assert_eq!(manifest, std::path::Path::new("/etc/kubernetes/manifests/kube-controller-manager.yaml"));
    assert_eq!(parking_dir, std::path::Path::new("/etc/kubernetes/hadrill-parked"));
    assert!(st
        .timeline
        .events()
        .iter()
        .any(|e| e.message == "kube-controller-manager held by cp-3_0d1e2f before the fault"));
}

#[tokio::test]
async fn not_leader_never_hits_the_lease_holder() {
    let (client, _, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    let c = ctx("backend: docker\n");
    let spec = FaultSpec::ComponentStop {
        component: Component::Scheduler,
        pick: InstancePick::NotLeader,
        signal: StopSignal::Kill,
    };
    let mut hosts = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let (host, _) = resolve_fault(&c, &spec, &mut state(seed), Some(&client)).await.ok().unwrap();
        hosts.insert(host);
    }
    assert_eq!(hosts.into_iter().collect::<Vec<_>>(), ["cp-2", "cp-3"], "the scheduler lease is held by cp-1");
}

#[tokio::test]
async fn the_kubelet_of_the_leaders_node_is_stopped_with_systemd_and_a_dead_man() {
    let (client, _, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    let c = ctx("backend: ssh\nssh:\n  user: root\n");
    let spec = FaultSpec::KubeletStop { pick: InstancePick::LeaderOf(Component::ControllerManager) };
    let (host, f) = resolve_fault(&c, &spec, &mut state(1), Some(&client)).await.ok().unwrap();
    assert_eq!(host, "cp-2");
    let Fault::NodeUnitStop { at, unit, dead_man_secs, .. } = &f else { panic!("{f:?}") };
    assert_eq!(unit, "kubelet");
    assert_eq!(*dead_man_secs, UNIT_DEAD_MAN_SECS);
    assert!(
        matches!(&at.access, NodeAccess::Ssh { host, user: Some(u), .. } if host == "10.0.0.12" && u == "root"),
        "{:?}",
        at.access
    );
    assert!(f.describe().contains("stop the kubelet unit on node cp-2"), "{}", f.describe());
}

#[tokio::test]
async fn what_cannot_be_faulted_is_skipped_with_the_reason() {
    let (client, _, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    // no node access configured on nodes that are not kind nodes
    let none = ctx("{}");
    let spec =
        FaultSpec::ComponentStop { component: Component::Apiserver, pick: InstancePick::Any, signal: StopSignal::Term };
    let s = skip(resolve_fault(&none, &spec, &mut state(1), Some(&client)).await);
    assert!(s.contains("no node access to") && s.contains("node_access.backend"), "{s}");
    // the pod backend cannot stop the kubelet it execs through
    let pod = ctx("backend: pod\n");
    let s = skip(
        resolve_fault(&pod, &FaultSpec::KubeletStop { pick: InstancePick::Any }, &mut state(1), Some(&client)).await,
    );
    assert!(s.contains("cut hadrill off"), "{s}");
    // a control plane without kubelets (the rig)
    let rig = with_cp(ControlPlane { source: "rig /tmp/r".into(), ..Default::default() }, None);
    let s = skip(resolve_fault(&rig, &FaultSpec::KubeletStop { pick: InstancePick::Any }, &mut state(1), None).await);
    assert_eq!(s, "needs a kubelet: the rig runs none");
    let s = skip(resolve_fault(&rig, &spec, &mut state(1), None).await);
    assert!(s.contains("needs kube-apiserver") && s.contains("rig /tmp/r"), "{s}");
    // leases need an API
    let s = skip(
        resolve_fault(
            &ctx("backend: docker\n"),
            &FaultSpec::ComponentStop {
                component: Component::Scheduler,
                pick: InstancePick::Leader,
                signal: StopSignal::Kill,
            },
            &mut state(1),
            None,
        )
        .await,
    );
    assert!(s.contains("--kubeconfig"), "{s}");
}

#[tokio::test]
async fn an_apiserver_has_no_leader_and_a_lease_without_holder_is_an_error() {
    let (client, _, _t) = mock_client(vec![route(LEASE_KCM, None, 200, lease(""))]);
    let c = ctx("backend: docker\n");
    let spec = FaultSpec::ComponentStop {
        component: Component::Apiserver,
        pick: InstancePick::Leader,
        signal: StopSignal::Term,
    };
    match resolve_fault(&c, &spec, &mut state(1), Some(&client)).await {
        Err(StepEnd::Error(e)) => assert!(e.contains("kube-apiserver has no leader"), "{e}"),
        _ => panic!("expected an error"),
    }
    let spec = FaultSpec::ComponentStop {
        component: Component::ControllerManager,
        pick: InstancePick::Leader,
        signal: StopSignal::Term,
    };
    match resolve_fault(&c, &spec, &mut state(1), Some(&client)).await {
        Err(StepEnd::Error(e)) => assert!(e.contains("has no holder"), "{e}"),
        _ => panic!("expected an error"),
    }
}

#[tokio::test]
async fn the_control_plane_is_resolved_through_discovery_on_the_mock() {
    let (client, seen, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
    let cp = resolve_kube(&client, "https://10.0.0.10:6443", "ctx", &cfg("backend: pod\n")).await.ok().unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        6,
        "discovery only: the pod backend starts no pod to read the kubelet config"
    );
    assert_eq!(cp.instances.len(), 15);
    assert!(cp.instances.iter().all(|i| matches!(i.access, Some(NodeAccess::Pod { .. }))));
}

/// A kube-mode rig started with kube-apiserver alone (envtest's assets): apiservers and the
/// LB, no controller-manager or scheduler, both recorded as absent; its control plane as
/// `from_rig` builds it, and a Kubernetes API (the LB) for the leases.
fn envtest_rig(absent: &[crate::rig::kube::Role]) -> RunContext {
    use crate::rig::kube::{Absent, KubeHost, KubeRigState, Role};
    let dir = std::path::PathBuf::from("/tmp/hadrill-envtest-rig");
    let host = |name: &str, role: Role, addr: &str| KubeHost {
        name: name.into(),
        role,
        netns: format!("hd000000-{name}"),
        address: addr.into(),
        port: role.port(),
        argv: vec![],
        pid: 0,
        start_time: 0,
        log: dir.join(name),
        version: None,
    };
    let mut hosts = vec![host("lb", Role::LoadBalancer, "10.1.2.100")];
    for i in 1..=3 {
        hosts.push(host(&format!("apiserver-{i}"), Role::Apiserver, &format!("10.1.2.10{i}")));
    }
    for (role, name, addr) in [
        (Role::ControllerManager, "controller-manager-1", "10.1.2.111"),
        (Role::Scheduler, "scheduler-1", "10.1.2.121"),
    ] {
        if !absent.contains(&role) {
            hosts.push(host(name, role, addr));
        }
    }
    let k = KubeRigState {
        bin_dir: "/opt/envtest/bin".into(),
        pki_dir: dir.join("pki/kube"),
        server: "https://10.1.2.100:6443".into(),
        admin_kubeconfig: dir.join("kube/admin.conf"),
        controller_manager_kubeconfig: dir.join("kube/controller-manager.conf"),
        scheduler_kubeconfig: dir.join("kube/scheduler.conf"),
        haproxy_config: dir.join("kube/lb/haproxy.cfg"),
        haproxy_socket: dir.join("kube/lb/haproxy.sock"),
        service_cidr: "10.96.0.0/12".into(),
        hosts,
        absent: absent.iter().map(|&role| Absent { role, searched: "in /opt/envtest/bin".into() }).collect(),
    };
    let rig = crate::rig::RigState {
        dir: dir.clone(),
        isolation: crate::rig::Isolation::Netns,
        members: vec![],
        ca_cert: dir.join("pki/ca.crt"),
        client_cert: dir.join("pki/c.crt"),
        client_key: dir.join("pki/c.key"),
        election_timeout_ms: 1000,
        heartbeat_interval_ms: 100,
        kube: Some(k),
    };
    let cp = ControlPlane::from_rig(&rig);
    let c = with_cp(cp, None);
    let mut t = (*c.target).clone();
    t.rig = Some(rig);
    RunContext { target: Arc::new(t), ..c }
}

#[tokio::test]
async fn a_rig_without_the_components_binary_skips_naming_it_before_any_lease_is_read() {
    use crate::rig::kube::Role;
    let c = envtest_rig(&[Role::ControllerManager, Role::Scheduler]);
    let cp = control_plane(&c).await.ok().unwrap();
    assert_eq!(cp.of(Component::Apiserver).len(), 3);
    assert!(cp.of(Component::ControllerManager).is_empty() && cp.of(Component::Scheduler).is_empty());
    // the leases would answer: the skip must come first, without asking
    let (client, seen, _t) = mock_client(vec![route(LEASE_KCM, None, 200, lease("controller-manager-1_0d1e2f"))]);
    for p in [InstancePick::Leader, InstancePick::NotLeader, InstancePick::Any] {
        let spec =
            FaultSpec::ComponentStop { component: Component::ControllerManager, pick: p, signal: StopSignal::Term };
        let s = skip(resolve_fault(&c, &spec, &mut state(1), Some(&client)).await);
        assert_eq!(
            s,
            "needs kube-controller-manager: the rig runs none (its binary was not found in /opt/envtest/bin)"
        );
    }
    // an apiserver picked by the scheduler leader's host: the scheduler is named
    let spec = FaultSpec::ComponentStop {
        component: Component::Apiserver,
        pick: InstancePick::LeaderOf(Component::Scheduler),
        signal: StopSignal::Term,
    };
    let s = skip(resolve_fault(&c, &spec, &mut state(1), Some(&client)).await);
    assert_eq!(s, "needs kube-scheduler: the rig runs none (its binary was not found in /opt/envtest/bin)");
    assert!(seen.lock().unwrap().is_empty(), "a lease was read: {:?}", seen.lock().unwrap());
    // an apiserver is still stopped as a rig process
    let spec =
        FaultSpec::ComponentStop { component: Component::Apiserver, pick: InstancePick::Any, signal: StopSignal::Term };
    match resolve_fault(&c, &spec, &mut state(1), Some(&client)).await {
        // the state file does not exist here: the rig process is looked up and not found
        Err(StepEnd::Error(e)) => assert!(e.contains("hadrill-envtest-rig"), "{e}"),
        Err(StepEnd::Skip(s)) => panic!("an apiserver must not be skipped: {s}"),
        Err(StepEnd::Failed(f)) => panic!("failed: {}", f.message),
        Ok((h, f)) => panic!("resolved to {h} with no rig state on disk: {}", f.describe()),
    }
}

#[tokio::test]
async fn cases_that_stop_or_wait_for_an_absent_component_are_skipped_before_their_first_step() {
    use crate::rig::kube::Role;
    use crate::suite::{AwaitSpec, Case, CheckSpec, ProbeSpec, Step};
    let case = |steps: Vec<Step>| Case {
        name: "x".into(),
        description: "d".into(),
        disruptive: true,
        requires: vec![crate::suite::Requirement::Kubernetes],
        ignore: None,
        steps,
    };
    let takeover = case(vec![
        Step::Probe(ProbeSpec::KubeWatch),
        Step::Inject(FaultSpec::ComponentStop {
            component: Component::ControllerManager,
            pick: InstancePick::Leader,
            signal: StopSignal::Term,
        }),
        Step::Await(AwaitSpec::LeaseTakeover {
            component: Component::ControllerManager,
            slack: Duration::from_secs(5),
        }),
        Step::Heal,
        Step::Check(CheckSpec::KubeLeasesRenewed),
    ]);
    let c = envtest_rig(&[Role::ControllerManager]);
    let e = crate::engine::preconditions(&c, &takeover).unwrap_err();
    assert_eq!(e, "needs kube-controller-manager: the rig runs none (its binary was not found in /opt/envtest/bin)");
    // the scheduler runs on this rig: its takeover case is not held back
    let sched = case(vec![Step::Await(AwaitSpec::LeaseTakeover {
        component: Component::Scheduler,
        slack: Duration::from_secs(5),
    })]);
    assert!(crate::engine::preconditions(&c, &sched).is_ok());
    // a rig with all of them, and a cluster, hold nothing back
    assert!(crate::engine::preconditions(&envtest_rig(&[]), &takeover).is_ok());
    assert!(crate::engine::preconditions(&ctx("backend: docker\n"), &takeover).is_ok());
}

#[tokio::test]
async fn kube_leases_renewed_is_skipped_on_a_rig_running_neither_leader_elected_component() {
    use crate::rig::kube::Role;
    let c = envtest_rig(&[Role::ControllerManager, Role::Scheduler]);
    match crate::engine::kube::check(&c, &crate::suite::CheckSpec::KubeLeasesRenewed, &mut state(1)).await {
        Err(StepEnd::Skip(s)) => assert_eq!(
            s,
            "needs kube-controller-manager: the rig runs none (its binary was not found in /opt/envtest/bin); \
             needs kube-scheduler: the rig runs none (its binary was not found in /opt/envtest/bin)"
        ),
        Err(StepEnd::Error(e)) => panic!("error, not a skip: {e}"),
        Err(StepEnd::Failed(f)) => panic!("failed, not a skip: {}", f.message),
        Ok(o) => panic!("judged, not skipped: {}", o.message),
    }
    assert_eq!(rig_absent_leases(&c.target).len(), 2);
    // with both running nothing is left out (the check then asks the API)
    assert!(rig_absent_leases(&envtest_rig(&[]).target).is_empty());
    assert_eq!(
        rig_absent_leases(&envtest_rig(&[Role::Scheduler]).target).iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        ["kube-scheduler"]
    );
}
