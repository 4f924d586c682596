//! The control plane of the kubeadm fixtures (three stacked control-plane nodes).

use super::*;
use crate::node::select::{resolve_all, NodeAccessConfig};
use crate::target::discovery::tests::fixture_discovery;

fn cp(cfg_yaml: &str, dirs: &[(&str, &str)]) -> ControlPlane {
    let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
    let cfg: NodeAccessConfig = serde_saphyr::from_str(cfg_yaml).unwrap();
    let dirs = dirs.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect();
    from_discovery(&d, &resolve_all(&cfg, &d), &dirs, "kubeadm fixtures".into())
}

fn rng() -> rand_chacha::ChaCha8Rng {
    rand::SeedableRng::seed_from_u64(7)
}

#[test]
fn every_static_pod_and_kubelet_is_an_instance_with_its_stop_method() {
    let c = cp("backend: ssh\nssh:\n  user: root\n", &[("cp-2", "/etc/kubelet.d")]);
    assert!(c.has_kubelet && c.has_kubeadm);
    assert_eq!(c.instances.len(), 15, "4 static pods and a kubelet on each of 3 nodes");
    for comp in
        [Component::Apiserver, Component::ControllerManager, Component::Scheduler, Component::Etcd, Component::Kubelet]
    {
        assert_eq!(
            c.of(comp).iter().map(|i| i.host.as_str()).collect::<Vec<_>>(),
            ["cp-1", "cp-2", "cp-3"],
            "{comp:?}"
        );
    }
    let api = c.on(Component::Apiserver, "cp-1").unwrap();
    assert_eq!(api.address.as_deref(), Some("10.0.0.11"));
    assert_eq!(api.version.as_deref(), Some("v1.29.2"));
    assert_eq!(
        api.stop,
        Some(StopMethod::StaticPodManifest {
            manifest: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
            parking_dir: "/etc/kubernetes/hadrill-parked".into()
        })
    );
    assert!(matches!(&api.access, Some(NodeAccess::Ssh { host, .. }) if host == "10.0.0.11"), "{:?}", api.access);
    // the staticPodPath read from cp-2's kubelet config
    let kcm = c.on(Component::ControllerManager, "cp-2").unwrap();
    assert!(
        matches!(&kcm.stop, Some(StopMethod::StaticPodManifest { manifest, .. }) if manifest == std::path::Path::new("/etc/kubelet.d/kube-controller-manager.yaml"))
    );
    let etcd = c.on(Component::Etcd, "cp-3").unwrap();
    assert_eq!(etcd.address.as_deref(), Some("10.0.0.13"), "the advertised client URL's host");
    assert_eq!(etcd.version.as_deref(), Some("3.5.10-0"));
    let kubelet = c.on(Component::Kubelet, "cp-1").unwrap();
    assert_eq!(kubelet.stop, Some(StopMethod::SystemdUnit { unit: "kubelet".into() }));
    assert_eq!(kubelet.version.as_deref(), Some("v1.29.2"));
}

#[test]
fn without_node_access_every_instance_says_how_to_configure_it() {
    let c = cp("{}", &[]);
    let i = c.on(Component::Etcd, "cp-1").unwrap();
    assert!(i.access.is_none());
    let why = unusable(i).unwrap();
    assert!(why.contains("no node access to cp-1") && why.contains("node_access.backend"), "{why}");
    let e = choose(&c, Component::Apiserver, InstancePick::Any, None, &mut rng()).unwrap_err();
    assert!(e.contains("node_access.backend"), "{e}");
}

#[test]
fn the_pod_backend_cannot_stop_the_kubelet_it_goes_through() {
    let c = cp("backend: pod\n", &[]);
    let k = c.on(Component::Kubelet, "cp-1").unwrap();
    assert!(k.stop.is_none());
    assert!(unusable(k).unwrap().contains("cut hadrill off"), "{:?}", unusable(k));
    assert!(unusable(c.on(Component::Apiserver, "cp-1").unwrap()).is_none(), "static pods are fine through the pod");
}

/// The lease payloads name the leader: kube-controller-manager is held by cp-2, the
/// scheduler by cp-1.
#[test]
fn leaders_come_from_the_lease_holders() {
    let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
    let c = cp("backend: ssh\n", &[]);
    let holder = |name: &str| d.leases.iter().find(|l| l.name == name).and_then(|l| l.holder.clone()).unwrap();
    let kcm = crate::controlplane::holder_host(&holder("kube-controller-manager")).to_string();
    let sched = crate::controlplane::holder_host(&holder("kube-scheduler")).to_string();
    assert_eq!(
        choose(&c, Component::ControllerManager, InstancePick::Leader, Some(&kcm), &mut rng()).unwrap().host,
        "cp-2"
    );
    assert_eq!(choose(&c, Component::Scheduler, InstancePick::Leader, Some(&sched), &mut rng()).unwrap().host, "cp-1");
    for seed in 0..20 {
        let mut r: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(seed);
        let i = choose(&c, Component::ControllerManager, InstancePick::NotLeader, Some(&kcm), &mut r).unwrap();
        assert_ne!(i.host, "cp-2", "seed {seed}");
    }
    // the kubelet on the node of the scheduler's leader
    assert_eq!(
        choose(&c, Component::Kubelet, InstancePick::LeaderOf(Component::Scheduler), Some(&sched), &mut rng())
            .unwrap()
            .host,
        "cp-1"
    );
    // a leader on a node hadrill does not know is named
    let e = choose(&c, Component::Scheduler, InstancePick::Leader, Some("cp-9"), &mut rng()).unwrap_err();
    assert!(e.contains("cp-9"), "{e}");
    assert!(choose(&c, Component::Scheduler, InstancePick::Leader, None, &mut rng())
        .unwrap_err()
        .contains("not known"));
}

#[test]
fn any_is_seeded_and_spreads_over_the_instances() {
    let c = cp("backend: ssh\n", &[]);
    let a = choose(&c, Component::Apiserver, InstancePick::Any, None, &mut rng()).unwrap().host.clone();
    assert_eq!(
        choose(&c, Component::Apiserver, InstancePick::Any, None, &mut rng()).unwrap().host,
        a,
        "same seed, same pick"
    );
    let hosts: std::collections::BTreeSet<String> = (0..30)
        .map(|s| {
            let mut r: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(s);
            choose(&c, Component::Apiserver, InstancePick::Any, None, &mut r).unwrap().host.clone()
        })
        .collect();
    assert_eq!(hosts.len(), 3);
}

#[test]
fn images_and_kubelet_configs_are_read() {
    assert_eq!(image_version("registry.k8s.io/kube-apiserver:v1.29.2").as_deref(), Some("v1.29.2"));
    assert_eq!(image_version("localhost:5000/etcd:3.5.10-0").as_deref(), Some("3.5.10-0"));
    assert_eq!(image_version("localhost:5000/etcd"), None);
    assert_eq!(image_version("registry.k8s.io/etcd@sha256:abc"), None);
    let kc = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests/\nauthentication:\n  anonymous:\n    enabled: false\n";
    assert_eq!(static_pod_path(kc).as_deref(), Some("/etc/kubernetes/manifests"));
    assert_eq!(static_pod_path("kind: KubeletConfiguration\n"), None);
    assert_eq!(component_of("kube-scheduler"), Some(Component::Scheduler));
    assert_eq!(component_of("coredns"), None);
}

#[test]
fn plan_names_every_candidate_its_access_the_action_and_the_revert() {
    use crate::suite::{FaultSpec, StopSignal};
    let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
    let c = cp("backend: ssh\nssh:\n  user: root\nnodes:\n  cp-3:\n    backend: pod\n", &[]);
    let spec = FaultSpec::ComponentStop {
        component: Component::Scheduler,
        pick: InstancePick::Leader,
        signal: StopSignal::Term,
    };
    let l = plan_lines(&c, &d, &spec);
    assert_eq!(l[0], "where: the leader (now cp-1, the kube-scheduler lease holder; read again at injection); 3 kube-scheduler instance(s) found");
    assert!(l[1].starts_with("cp-1: stop kube-scheduler on node cp-1 (static pod: move /etc/kubernetes/manifests/kube-scheduler.yaml aside, via ssh root@10.0.0.11; dead-man on the node 600s) → revert: stop the dead-man hadrill-deadman-<token> on cp-1, move /etc/kubernetes/hadrill-parked/kube-scheduler.yaml.hadrill-<token> back"), "{l:?}");
    assert!(l[3].contains("via privileged pod on node cp-3"), "{l:?}");
    let k = plan_lines(&c, &d, &FaultSpec::KubeletStop { pick: InstancePick::LeaderOf(Component::ControllerManager) });
    assert!(k[0].contains("the node of the kube-controller-manager leader (now cp-2"), "{k:?}");
    assert!(k[2].starts_with("cp-2: stop the kubelet unit on node cp-2 (systemctl stop, via ssh root@10.0.0.12; dead-man on the node 600s) → revert: stop the dead-man hadrill-deadman-<token> on cp-2, systemctl start kubelet"), "{k:?}");
    assert!(
        k[3].starts_with("cp-3: cannot be faulted: the pod node access backend execs through the node's kubelet"),
        "{k:?}"
    );
    let p = plan_lines(
        &c,
        &d,
        &FaultSpec::NodeEtcdPartition { pick: InstancePick::Leader, dead_man: std::time::Duration::from_secs(90) },
    );
    assert!(p[0].contains("the raft leader, asked from the members at injection"), "{p:?}");
    assert!(
        p[1].contains("partition the etcd member on node cp-1 from cp-2+cp-3 (drop peer ports [2380] both ways")
            && p[1].contains("dead-man 90s on the node"),
        "{p:?}"
    );
    assert!(plan_lines(&c, &d, &FaultSpec::MemberPause { role: crate::suite::MemberRole::Any, count: 1 }).is_empty());
}
