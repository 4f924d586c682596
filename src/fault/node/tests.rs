//! Node faults run for real through the `local` backend: a temporary directory stands in for
//! the kubelet's manifest directory (with a stand-in kubelet that runs a process while the
//! manifest is there), and a network namespace created here stands in for the node's root
//! namespace. The other backends are tested on the command lines they build.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::fault::{self, Ledger};

fn local(netns: Option<&str>) -> NodeRef {
    NodeRef { node: "cp-test".into(), access: NodeAccess::Local { netns: netns.map(str::to_string) }, kube: None }
}

fn ledger(dir: &Path) -> Ledger {
    Ledger::open(&dir.join("ledger")).unwrap()
}

/// A network namespace of this test, deleted (with every rule in it) and its dead-man timer
/// killed even when the test panics.
struct Netns {
    name: String,
    tokens: Vec<String>,
}

impl Netns {
    fn new() -> Self {
        let name = format!("hdnf-{:08x}", rand::random::<u32>());
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        let _ = Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]).status();
        Netns { name, tokens: vec![] }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for t in &self.tokens {
            net::kill_deadman(t);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn save(ns: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "iptables-save"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tagged(ns: &str, token: &str) -> Vec<String> {
    save(ns).lines().filter(|l| l.contains(&format!("hadrill:{token}"))).map(str::to_string).collect()
}

fn partition(at: NodeRef, token: &str, dead_man_secs: u64) -> Fault {
    Fault::NodeEtcdPartition {
        at,
        token: token.into(),
        others: vec!["10.99.0.2".into(), "10.99.0.3".into()],
        other_names: vec!["cp-2".into(), "cp-3".into()],
        peer_ports: vec![2380],
        dead_man_secs,
    }
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let ok = crate::engine::poll(Duration::from_secs(secs), Duration::from_millis(50), || {
        let v = f();
        async move { v.then_some(()) }
    })
    .await;
    assert!(ok.is_some(), "{what} within {secs}s");
}

#[tokio::test]
async fn partition_on_the_node_puts_tagged_rules_and_revert_removes_exactly_them() {
    let mut ns = Netns::new();
    let token = net::new_token();
    ns.tokens.push(token.clone());
    // somebody else's rule on the same node, on the same port: must survive our revert
    let foreign = ["iptables", "-w", "-A", "INPUT", "-s", "10.99.0.2", "-p", "tcp", "--dport", "2380", "-j", "ACCEPT"];
    assert!(Command::new("ip").args(["netns", "exec", &ns.name]).args(foreign).status().unwrap().success());
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path());
    let g = fault::inject(&l, partition(local(Some(&ns.name)), &token, 60)).await.expect("inject");
    let rules = tagged(&ns.name, &token);
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("-A INPUT -s 10.99.0.3/32") && r.contains("-j DROP")), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("-A OUTPUT -d 10.99.0.2/32") && r.contains("--ports 2380")), "{rules:?}");
    assert!(net::deadman_running(&token), "the dead-man timer runs detached on the node");
    assert_eq!(l.entries().unwrap().len(), 1, "journaled");
    g.revert().await.expect("revert");
    assert!(tagged(&ns.name, &token).is_empty(), "{}", save(&ns.name));
    assert!(
        save(&ns.name).contains("-A INPUT -s 10.99.0.2/32 -p tcp -m tcp --dport 2380 -j ACCEPT"),
        "the foreign rule stays"
    );
    wait_for("the dead-man timer is gone after the revert", 5, || !net::deadman_running(&token)).await;
    assert!(l.entries().unwrap().is_empty());
    // reverting again (as `recover` would after a crash mid-revert) succeeds and changes nothing
    partition(local(Some(&ns.name)), &token, 60).revert().await.expect("second revert");
}

#[tokio::test]
async fn the_dead_man_on_the_node_heals_without_hadrill() {
    let mut ns = Netns::new();
    let token = net::new_token();
    ns.tokens.push(token.clone());
    let f = partition(local(Some(&ns.name)), &token, 2);
    // applied and never reverted (as after a SIGKILL): only the timer on the node heals it
    super::apply(&f).await.expect("apply");
    assert_eq!(tagged(&ns.name, &token).len(), 4);
    wait_for("the dead-man removed the rules", 15, || tagged(&ns.name, &token).is_empty()).await;
    wait_for("the dead-man exited", 5, || !net::deadman_running(&token)).await;
}

#[tokio::test]
async fn a_partition_that_cannot_be_applied_is_undone() {
    let mut ns = Netns::new();
    let token = net::new_token();
    ns.tokens.push(token.clone());
    let dir = tempfile::tempdir().unwrap();
    // a malformed address: iptables refuses the rule after the timer started
    let mut f = partition(local(Some(&ns.name)), &token, 60);
    if let Fault::NodeEtcdPartition { others, .. } = &mut f {
        others.push("10.99.0.300".into());
    }
    let e = fault::inject(&ledger(dir.path()), f).await.unwrap_err().to_string();
    assert!(e.contains("10.99.0.300"), "{e}");
    assert!(tagged(&ns.name, &token).is_empty(), "the rules that went in are removed: {}", save(&ns.name));
    wait_for("the timer is stopped", 5, || !net::deadman_running(&token)).await;
}

/// A stand-in kubelet: runs `name` (a process whose command line starts with it) while the
/// manifest exists, stops it when the manifest goes.
struct FakeKubelet {
    stop: Arc<AtomicBool>,
    task: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(manifest: PathBuf, name: String, obey: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = std::thread::spawn(move || {
            let mut child: Option<std::process::Child> = None;
            while !s.load(Ordering::SeqCst) {
                let want = manifest.exists() || !obey;
                match (&mut child, want) {
                    (None, true) => {
                        child = Some(
                            Command::new("bash").args(["-c", &format!("exec -a {name} sleep 300")]).spawn().unwrap(),
                        )
                    }
                    (Some(c), false) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        child = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(mut c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        FakeKubelet { stop, task: Some(task) }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.join();
        }
    }
}

fn static_pod(dir: &Path, name: &str, wait_secs: u64, dead_man_secs: u64) -> (Fault, PathBuf, PathBuf) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let manifest = manifests.join(format!("{name}.yaml"));
    std::fs::write(&manifest, "apiVersion: v1\nkind: Pod\n").unwrap();
    let parking = dir.join("hadrill-parked");
    let f = Fault::StaticPodStop {
        at: local(None),
        container: name.into(),
        manifest: manifest.clone(),
        parking_dir: parking.clone(),
        token: net::new_token(),
        wait_secs,
        dead_man_secs,
    };
    (f, manifest, parking)
}

async fn running(name: &str) -> bool {
    component_running(&local(None), name).await.unwrap()
}

#[tokio::test]
async fn a_static_pod_is_stopped_by_parking_its_manifest_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hdfake-{:08x}", rand::random::<u32>());
    let (f, manifest, parking) = static_pod(dir.path(), &name, 10, 60);
    let _k = FakeKubelet::start(manifest.clone(), name.clone(), true);
    wait_for("the stand-in component runs", 5, || {
        Command::new("pgrep").args(["-f", &format!("^{name} ")]).output().unwrap().status.success()
    })
    .await;
    assert!(running(&name).await);
    let l = ledger(dir.path());
    let g = fault::inject(&l, f.clone()).await.expect("inject");
    // the manifest is parked with the token in its name, and the component is gone
    assert!(!manifest.exists());
    let parked: Vec<_> =
        std::fs::read_dir(&parking).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let Fault::StaticPodStop { token, .. } = &f else { unreachable!() };
    assert_eq!(parked, [format!("{name}.yaml.hadrill-{token}")]);
    assert!(!running(&name).await, "inject returns once the component is gone");
    assert!(net::deadman_running(token), "the dead-man waits on the node");
    g.revert().await.expect("revert");
    wait_for("the dead-man is stopped by the revert", 5, || !net::deadman_running(token)).await;
    assert!(manifest.exists() && std::fs::read_dir(&parking).unwrap().next().is_none());
    assert!(running(&name).await, "revert returns once the component runs again");
    f.revert().await.expect("reverting twice succeeds");
    assert!(manifest.exists());
}

#[tokio::test]
async fn a_component_that_does_not_stop_fails_the_inject_and_the_manifest_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hdfake-{:08x}", rand::random::<u32>());
    let (f, manifest, _) = static_pod(dir.path(), &name, 2, 60);
    let _k = FakeKubelet::start(manifest.clone(), name.clone(), false);
    wait_for("the stand-in component runs", 5, || {
        Command::new("pgrep").args(["-f", &format!("^{name} ")]).output().unwrap().status.success()
    })
    .await;
    let l = ledger(dir.path());
    let Fault::StaticPodStop { token, .. } = f.clone() else { unreachable!() };
    let e = fault::inject(&l, f).await.unwrap_err().to_string();
    assert!(e.contains("did not stop within 2s") && e.contains("last seen: running"), "{e}");
    assert!(manifest.exists(), "the failed inject moved the manifest back");
    wait_for("its dead-man is stopped", 5, || !net::deadman_running(&token)).await;
    assert!(l.entries().unwrap().is_empty(), "and cleared its ledger entry");
}

#[tokio::test]
async fn a_missing_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (f, manifest, _) = static_pod(dir.path(), "hdfake-none", 2, 0);
    std::fs::remove_file(&manifest).unwrap();
    let e = super::apply(&f).await.unwrap_err();
    assert!(e.contains("is not there") && e.contains(&manifest.display().to_string()), "{e}");
}

#[test]
fn unsafe_words_never_reach_a_node_script() {
    assert!(park_script(Path::new("/etc/kubernetes/manifests/x y.yaml"), Path::new("/p"), "ab", 0)
        .unwrap_err()
        .contains("refusing"));
    assert!(running_script("etcd; reboot").is_err());
    assert!(partition_apply_script(&["10.0.0.1$(reboot)".into()], &[2380], "ab", 5).is_err());
    assert!(unit_stop_script("kubelet'", "ab", 5).is_err());
    assert!(deadman_start("ab cd", 5, "true").is_err());
}

#[test]
fn the_kubelet_stop_starts_its_dead_man_before_stopping_the_unit() {
    let s = unit_stop_script("kubelet", "00ff", 600).unwrap();
    let timer = s.find("systemd-run --quiet --collect --unit=hadrill-deadman-00ff --on-active=600s").expect(&s);
    let fallback = s.find("setsid -f /bin/sh -c 'sleep 600; systemctl start kubelet' hadrill-deadman-00ff").expect(&s);
    let stop = s.find("systemctl stop kubelet").expect(&s);
    assert!(timer < stop && fallback < stop, "{s}");
    assert!(s.contains("/bin/sh -c 'systemctl start kubelet' hadrill-deadman-00ff"), "{s}");
    let r = unit_start_script("kubelet", "00ff").unwrap();
    assert!(
        r.find("systemctl stop hadrill-deadman-00ff.timer").unwrap() < r.find("systemctl start kubelet").unwrap(),
        "{r}"
    );
}

#[test]
fn latency_scripts_add_and_remove_our_qdisc_only() {
    let s = latency_apply_script("eth0", &[2380], 200, "0a", 30).unwrap();
    assert!(s.contains("tc qdisc add dev eth0 parent 1:4 handle 40: netem delay 200ms"), "{s}");
    assert!(s.contains("'sleep 30; tc qdisc del dev eth0 root handle 1: 2>/dev/null'"), "{s}");
    let r = latency_revert_script("eth0", "0a").unwrap();
    assert!(r.contains("grep -q 'qdisc prio 1: root'; then tc qdisc del dev eth0 root handle 1:"), "{r}");
}

#[tokio::test]
async fn latency_on_a_node_namespace_or_the_kernels_reason() {
    let mut ns = Netns::new();
    let token = net::new_token();
    ns.tokens.push(token.clone());
    let f = Fault::NodePeerLatency {
        at: local(Some(&ns.name)),
        token: token.clone(),
        dev: "lo".into(),
        peer_ports: vec![2380],
        delay_ms: 100,
        dead_man_secs: 60,
    };
    let dir = tempfile::tempdir().unwrap();
    match fault::inject(&ledger(dir.path()), f.clone()).await {
        Ok(g) => {
            let q = Command::new("ip")
                .args(["netns", "exec", &ns.name, "tc", "qdisc", "show", "dev", "lo"])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&q.stdout).contains("netem"));
            g.revert().await.unwrap();
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("no tc netem/prio support"), "{e}");
            eprintln!("skipped the live part: {e}");
        }
    }
    let q = Command::new("ip").args(["netns", "exec", &ns.name, "tc", "qdisc", "show", "dev", "lo"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&q.stdout).contains("prio 1:"), "our qdisc is gone");
    wait_for("no timer left", 5, || !net::deadman_running(&token)).await;
}

/// The same script reaches the node through every backend: docker passes the words, the
/// access pod wraps them in nsenter, ssh quotes them for the remote shell; the ssh form run by
/// a real shell (as sshd does) puts the same rules in.
#[tokio::test]
async fn every_backend_carries_the_script_and_the_ssh_form_works_for_real() {
    let token = net::new_token();
    let script = partition_apply_script(&["10.99.0.2".into()], &[2380], &token, 30).unwrap();
    let words = ["sh", "-c", script.as_str(), "hadrill-partition"];
    let docker = NodeAccess::Docker { container: "kind-control-plane2".into() }.wrap(&words);
    assert_eq!(docker[..5], ["docker", "exec", "kind-control-plane2", "sh", "-c"]);
    assert_eq!(docker[5], script);
    let pod =
        NodeAccess::Pod { node: "cp-2".into(), namespace: "kube-system".into(), image: "busybox".into() }.wrap(&words);
    assert_eq!(pod[..11], ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c"]);
    assert_eq!(pod[11], script);
    let ssh = NodeAccess::Ssh {
        host: "10.0.0.12".into(),
        user: Some("root".into()),
        port: None,
        key: None,
        jump: None,
        strict_host_key_checking: Default::default(),
    }
    .wrap(&words);
    assert_eq!(ssh[ssh.len() - 3..ssh.len() - 1], ["root@10.0.0.12", "--"]);
    let remote = ssh.last().unwrap().clone();
    let mut ns = Netns::new();
    ns.tokens.push(token.clone());
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", &remote]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tagged(&ns.name, &token).len(), 2);
    let heal = partition_revert_script(&["10.99.0.2".into()], &[2380], &token).unwrap();
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", &heal, "hadrill-heal"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tagged(&ns.name, &token).is_empty());
    wait_for("no timer left", 5, || !net::deadman_running(&token)).await;
}

#[test]
fn node_faults_round_trip_through_the_ledger_form() {
    let f = Fault::StaticPodStop {
        at: NodeRef {
            node: "cp-1".into(),
            access: NodeAccess::Pod { node: "cp-1".into(), namespace: "kube-system".into(), image: "busybox".into() },
            kube: Some(KubeRef { kubeconfig: Some("/home/ci/.kube/config".into()), context: Some("prod-ha".into()) }),
        },
        container: "kube-apiserver".into(),
        manifest: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
        parking_dir: "/etc/kubernetes/hadrill-parked".into(),
        token: "abc".into(),
        wait_secs: 180,
        dead_man_secs: 600,
    };
    let j = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<Fault>(&j).unwrap(), f, "{j}");
    assert!(f.describe().contains("stop kube-apiserver on node cp-1"), "{}", f.describe());
    assert!(
        f.revert_plan().contains("/etc/kubernetes/hadrill-parked/kube-apiserver.yaml.hadrill-abc"),
        "{}",
        f.revert_plan()
    );
}

/// Through an access pod only a systemd timer outlives the pod: without systemd (as on this
/// machine) the script refuses before any rule goes in.
#[tokio::test]
async fn without_systemd_the_pod_backend_refuses_a_dead_man_that_would_die_with_the_pod() {
    let mut ns = Netns::new();
    let token = net::new_token();
    ns.tokens.push(token.clone());
    let pod = NodeRef {
        node: "cp-1".into(),
        access: NodeAccess::Pod { node: "cp-1".into(), namespace: "kube-system".into(), image: "busybox".into() },
        kube: None,
    };
    let script =
        format!("{}{}", prelude(&pod), partition_apply_script(&["10.99.0.2".into()], &[2380], &token, 30).unwrap());
    // run it where the pod would (here: the test's namespace, no systemd)
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", &script, "hadrill-partition"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would die with the pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tagged(&ns.name, &token).is_empty());
    assert!(!net::deadman_running(&token));
    assert_eq!(prelude(&local(None)), "");
}

/// A stored `pod`-backend fault builds its client from the kubeconfig path it carries and
/// deletes the node's access pod after the revert (here against a local HTTP stand-in of the
/// API that records the requests and answers like the real one once the pod is gone).
#[tokio::test]
async fn release_deletes_the_access_pod_through_the_stored_kubeconfig() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
            seen2.lock().unwrap().push(head.clone());
            let body = if head.starts_with("DELETE") {
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":200}"#.to_string()
            } else {
                crate::target::discovery::tests::not_found("hadrill-node-access-cp-2", "pods")
            };
            let code = if head.starts_with("DELETE") { "200 OK" } else { "404 Not Found" };
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: lab, context: {{cluster: c, user: u}}}}]\ncurrent-context: lab\n")).unwrap();
    let at = NodeRef {
        node: "cp-2".into(),
        access: NodeAccess::Pod { node: "cp-2".into(), namespace: "hadrill-system".into(), image: "busybox".into() },
        kube: Some(KubeRef { kubeconfig: Some(kc), context: Some("lab".into()) }),
    };
    at.release().await.expect("release");
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].starts_with("DELETE /api/v1/namespaces/hadrill-system/pods/hadrill-node-access-cp-2"), "{seen:?}");
    assert!(seen[1].starts_with("GET /api/v1/namespaces/hadrill-system/pods/hadrill-node-access-cp-2"), "{seen:?}");
    // other backends have nothing to release and ask nothing
    local(None).release().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn a_parked_manifest_comes_back_by_the_dead_man_alone() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hdfake-{:08x}", rand::random::<u32>());
    let (f, manifest, _) = static_pod(dir.path(), &name, 10, 2);
    let _k = FakeKubelet::start(manifest.clone(), name.clone(), true);
    wait_for("the stand-in component runs", 5, || {
        Command::new("pgrep").args(["-f", &format!("^{name} ")]).output().unwrap().status.success()
    })
    .await;
    super::apply(&f).await.expect("apply");
    assert!(!manifest.exists());
    // never reverted (as after a SIGKILL): the timer on the node moves it back
    wait_for("the dead-man moved the manifest back", 15, || manifest.exists()).await;
    let Fault::StaticPodStop { token, .. } = &f else { unreachable!() };
    wait_for("the dead-man exited", 5, || !net::deadman_running(token)).await;
    wait_for("the component runs again", 5, || {
        Command::new("pgrep").args(["-f", &format!("^{name} ")]).output().unwrap().status.success()
    })
    .await;
    f.revert().await.expect("a revert after the dead-man fired succeeds");
}
