//! The local rig against real etcd: up (loopback and network namespaces), the target file
//! that `hadrill run` reads, a killed member restarted on its data, down on a whole and on a
//! half-built rig (twice), refusals, and the CLI end to end. Every test takes its rig down
//! even when it panics, and checks that nothing of it is left on the machine.

mod rigutil;

use std::time::Duration;

use etcd_client::GetOptions;
use hadrill::fault::process as proc_;
use hadrill::rig::{self, lifecycle::etcd_target, Isolation};
use nix::sys::signal::Signal;
use rigutil::*;

#[test]
fn cli_up_status_run_down_on_loopback() {
    let d = RigDir::new();
    let (code, out, err) = hadrill(&["rig", "up", "--members", "3", "--dir", d.path(), "--isolation", "loopback"]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(out.contains("logs:") && out.contains("m1/etcd.log"), "rig up names the logs:\n{out}");
    // the members outlive `rig up`
    let st = rig::status(&d.dir).unwrap();
    assert_eq!(st.members.len(), 3);
    assert_eq!(st.isolation, Isolation::Loopback);
    assert_eq!((st.heartbeat_interval_ms, st.election_timeout_ms), (100, 1000));
    for m in &st.members {
        assert!(proc_::alive(m.pid, m.start_time), "{} (pid {}) is gone after rig up returned", m.name, m.pid);
        assert_eq!(m.ip, "127.0.0.1");
        assert!(m.netns.is_none());
        for flag in ["--client-cert-auth", "--peer-client-cert-auth", "--initial-cluster-state=new"] {
            assert!(m.argv.iter().any(|a| a == flag), "{} lacks {flag}: {:?}", m.name, m.argv);
        }
    }
    let ports: std::collections::BTreeSet<&str> =
        st.members.iter().flat_map(|m| [m.client_url.as_str(), m.peer_url.as_str()]).collect();
    assert_eq!(ports.len(), 6, "every member needs its own ports: {ports:?}");

    let (code, out, err) = hadrill(&["rig", "status", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert_eq!(out.matches(" running").count(), 3, "{out}");
    assert_eq!(out.matches(", term ").count(), 3, "every member answers:\n{out}");
    assert_eq!(out.matches(" leader, term").count(), 1, "one leader:\n{out}");

    let (code, out, err) = hadrill(&["--config", &d.target_yaml(), "run", "topology::"]);
    assert_eq!(code, 0, "topology on a healthy 3-member rig must pass\n{}", show(code, &out, &err));
    assert!(out.contains("5 passed"), "{out}");

    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    for m in ["m1", "m2", "m3"] {
        assert!(out.contains(&format!("stopped etcd member {m}")), "{out}");
    }
    assert!(!d.dir.exists(), "rig down must remove the directory");
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
    // twice is fine
    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "a second rig down must succeed\n{}", show(code, &out, &err));
    assert!(!out.contains("stopped"), "{out}");
    // and then there is no rig
    let (code, out, err) = hadrill(&["rig", "status", "--dir", d.path()]);
    assert_eq!(code, 2, "{}", show(code, &out, &err));
    assert!(err.contains(&format!("no rig in {}", d.path())) && err.contains("hadrill rig up --dir"), "{err}");
}

#[test]
fn netns_members_live_in_their_own_namespaces() {
    if !is_root() {
        eprintln!("SKIPPED netns_members_live_in_their_own_namespaces: network namespaces need root");
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 3, Isolation::Netns);
    assert_eq!(st.isolation, Isolation::Netns);
    let id = rig::net::rig_id(&st.dir);
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let target = etcd_target(&st).unwrap();
    for m in &st.members {
        let ns = m.netns.clone().expect("a namespace per member");
        assert_eq!(ns, format!("{id}-{}", m.name));
        assert!(m.ip.starts_with("10.213.") && m.client_url == format!("https://{}:2379", m.ip), "{m:?}");
        // the recorded pid is etcd itself (ip netns exec execs), in the member's namespace
        assert_eq!(rig::process::comm(m.pid).as_deref(), Some("etcd"), "pid {} is not etcd", m.pid);
        let theirs = std::fs::read_link(format!("/proc/{}/ns/net", m.pid)).unwrap();
        assert_ne!(theirs, ours, "{} shares our network namespace", m.name);
        assert!(seen.insert(theirs), "{} shares a namespace with another member", m.name);
        let pids =
            String::from_utf8(std::process::Command::new("ip").args(["netns", "pids", &ns]).output().unwrap().stdout)
                .unwrap();
        assert!(pids.lines().any(|l| l.trim() == m.pid.to_string()), "pid {} not in {ns}: {pids}", m.pid);
        // reachable from here by its own address, with the rig's client certificate
        let s = rt.block_on(hadrill::probe::etcd::status_of(&target, &m.client_url));
        assert!(s.is_ok(), "{} at {}: {:?}", m.name, m.client_url, s);
        // loopback is up inside
        let lo = std::process::Command::new("ip").args(["-n", &ns, "-o", "link", "show", "lo"]).output().unwrap();
        assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"), "lo is down in {ns}");
    }
    let (code, out, err) = hadrill(&["--config", &d.target_yaml(), "run", "topology::"]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    // where bridged frames go through iptables, the rig lets its own bridge forward
    let filtered = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    let rules = || {
        String::from_utf8(std::process::Command::new("iptables").args(["-S", "FORWARD"]).output().unwrap().stdout)
            .unwrap()
    };
    let comment = format!("hadrill-rig {id}");
    if filtered {
        assert!(rules().contains(&comment), "no FORWARD rule for the bridge:\n{}", rules());
    }

    let report = rt.block_on(rig::down(&d.dir)).unwrap();
    assert!(!rules().contains(&comment), "down left the FORWARD rule:\n{}", rules());
    if filtered {
        assert!(report.removed.iter().any(|r| r.starts_with("iptables rule FORWARD")), "{:?}", report.removed);
    }
    assert_eq!(report.stopped.len(), 3, "{:?}", report.stopped);
    for m in ["m1", "m2", "m3"] {
        assert!(report.removed.contains(&format!("network namespace {id}-{m}")), "{:?}", report.removed);
    }
    assert!(report.removed.contains(&format!("interface {id}-br")), "{:?}", report.removed);
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
}

#[test]
fn killed_member_restarts_on_its_data() {
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 3, Isolation::Auto);
    let target = etcd_target(&st).unwrap();
    let m1 = st.member("m1").unwrap().clone();
    rt.block_on(async {
        let mut c = target.cluster_client(true).await.unwrap();
        c.put("hadrill/rig-test", "before-the-kill", None).await.unwrap();
        // m1 has it locally (serializable read answered from its own store)
        let mut one = target.member_client(&m1.client_url).await.unwrap();
        let seen = hadrill::engine::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            let mut one = one.clone();
            async move {
                let r = one.get("hadrill/rig-test", Some(GetOptions::new().with_serializable())).await.ok()?;
                (r.kvs().len() == 1).then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "m1 never applied the write");
        let _ = one.status().await;
    });
    assert!(proc_::signal(m1.pid, m1.start_time, Signal::SIGKILL).unwrap());
    assert!(rt.block_on(proc_::wait_gone(m1.pid, m1.start_time, Duration::from_secs(10))));
    assert!(rig::describe(&rig::status(&d.dir).unwrap()).contains("NOT RUNNING"));

    rt.block_on(rig::restart_member(&d.dir, "m1")).unwrap_or_else(|e| panic!("restart: {}", hadrill::exit::chain(&e)));
    let after = rig::status(&d.dir).unwrap();
    let again = after.member("m1").unwrap().clone();
    assert_ne!(again.pid, m1.pid, "rig.json must hold the new pid");
    assert_eq!(proc_::start_time(again.pid), Some(again.start_time));
    assert_eq!(again.argv, m1.argv, "restarted with the same flags");
    assert_eq!(rig::process::comm(again.pid).as_deref(), Some("etcd"));
    let value = rt.block_on(async {
        let mut one = target.member_client(&again.client_url).await.unwrap();
        let r = one.get("hadrill/rig-test", Some(GetOptions::new().with_serializable())).await.unwrap();
        r.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
    });
    assert_eq!(value.as_deref(), Some("before-the-kill"), "the restarted member lost its data");
    // a running member is left alone
    rt.block_on(rig::restart_member(&d.dir, "m1")).unwrap();
    assert_eq!(rig::status(&d.dir).unwrap().member("m1").unwrap().pid, again.pid);
    // an unknown member is named
    let e = rt.block_on(rig::restart_member(&d.dir, "m9")).unwrap_err().to_string();
    assert!(e.contains("no member m9") && e.contains("m1, m2, m3"), "{e}");

    // a paused member is still taken down (SIGCONT before SIGTERM)
    let m2 = after.member("m2").unwrap().clone();
    assert!(proc_::signal(m2.pid, m2.start_time, Signal::SIGSTOP).unwrap());
    assert!(rt.block_on(proc_::wait_stopped(m2.pid, m2.start_time, Duration::from_secs(5))));
    let report = rt.block_on(rig::down(&d.dir)).unwrap();
    assert!(report.stopped.iter().any(|s| s.contains("m2")), "{:?}", report.stopped);
    assert!(!proc_::alive(m2.pid, m2.start_time));
}

#[test]
fn down_removes_a_half_built_rig_twice() {
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 3, Isolation::Auto);
    // the state file is lost: down must still find the members and the namespaces
    std::fs::write(d.dir.join("rig.json"), "{ not json").unwrap();
    let e = rig::status(&d.dir).unwrap_err().to_string();
    assert!(e.contains("rig.json cannot be read"), "{e}");
    let report = rt.block_on(rig::down(&d.dir)).unwrap();
    assert_eq!(report.stopped.len(), 3, "{:?}", report.stopped);
    for m in &st.members {
        assert!(!proc_::alive(m.pid, m.start_time), "{} still runs", m.name);
        assert!(report.stopped.iter().any(|s| s.contains(&format!("pid {}", m.pid))), "{:?}", report.stopped);
    }
    if st.isolation == Isolation::Netns {
        assert!(report.removed.iter().any(|r| r.starts_with("network namespace")), "{:?}", report.removed);
    }
    assert!(!d.dir.exists());
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
    let second = rt.block_on(rig::down(&d.dir)).unwrap();
    assert!(second.stopped.is_empty() && second.removed.is_empty(), "{second:?}");

    // namespaces and a bridge left without any directory (a rig killed while building)
    if is_root() {
        let id = rig::net::rig_id(&rig::lifecycle::normalize(&d.dir));
        let run =
            |a: &[&str]| assert!(std::process::Command::new("ip").args(a).status().unwrap().success(), "ip {a:?}");
        run(&["netns", "add", &format!("{id}-m1")]);
        run(&["link", "add", &format!("{id}-br"), "type", "bridge"]);
        let report = rt.block_on(rig::down(&d.dir)).unwrap();
        assert_eq!(report.removed.len(), 2, "{:?}", report.removed);
        assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
    }
}

#[test]
fn up_refuses_a_running_rig_and_a_foreign_directory() {
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 1, Isolation::Loopback);
    let again = rig::RigSpec { dir: d.dir.clone(), members: 3, isolation: Isolation::Loopback };
    let e = rt.block_on(rig::up(&again)).unwrap_err().to_string();
    assert!(e.contains("rig down first") && e.contains("already running"), "{e}");
    // the refusal left the running rig alone
    assert!(proc_::alive(st.members[0].pid, st.members[0].start_time));
    assert_eq!(rig::status(&d.dir).unwrap(), st);
    // the CLI says so too, as a usage error
    let (code, out, err) = hadrill(&["rig", "up", "--dir", d.path(), "--isolation", "loopback"]);
    assert_eq!(code, 2, "{}", show(code, &out, &err));
    assert!(err.contains("rig down first"), "{err}");

    // a directory with files of someone else's: neither used by up nor removed by down
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
    // and someone's etcd whose data lives there is not stopped by a `down` aimed at it
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (cp, pp) = (port(), port());
    let theirs = std::process::Command::new("etcd")
        .arg(format!("--data-dir={}/data", other.path().display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{cp}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{cp}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{pp}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{pp}"))
        .arg(format!("--initial-cluster=theirs=http://127.0.0.1:{pp}"))
        .args(["--name", "theirs"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut theirs = Kill(theirs);
    assert!(
        poll_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", cp)).is_ok()),
        "the foreign etcd did not start"
    );
    let spec = rig::RigSpec { dir: other.path().to_path_buf(), members: 1, isolation: Isolation::Loopback };
    let e = rt.block_on(rig::up(&spec)).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    let e = rt.block_on(rig::down(other.path())).unwrap_err().to_string();
    assert!(e.contains("holds no rig"), "{e}");
    assert!(other.path().join("notes.txt").exists(), "down removed a directory that was not a rig");
    assert!(theirs.0.try_wait().unwrap().is_none(), "down stopped an etcd that is not the rig's");
}

#[test]
fn missing_etcd_is_named() {
    let d = RigDir::new();
    let (code, out, err) = hadrill_env(&["rig", "up", "--dir", d.path()], &[("PATH", "/nonexistent")]);
    assert_eq!(code, 2, "{}", show(code, &out, &err));
    assert!(err.contains("etcd not found on PATH: install Debian's etcd-server (bash ci/install-deps.sh)"), "{err}");
    assert!(!d.dir.exists(), "nothing is created without etcd");
}

#[test]
fn a_member_that_cannot_start_fails_up_with_its_log_and_leaves_nothing() {
    // an `etcd` that writes an error and exits, first on PATH
    let fake = tempfile::tempdir().unwrap();
    let etcd = fake.path().join("etcd");
    std::fs::write(&etcd, "#!/bin/sh\necho \"fake etcd: cannot listen (bad flags: $2)\" >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.path().display(), std::env::var("PATH").unwrap());
    let d = RigDir::new();
    let (code, out, err) =
        hadrill_env(&["rig", "up", "--members", "3", "--dir", d.path(), "--isolation", "auto"], &[("PATH", &path)]);
    assert_eq!(code, 3, "{}", show(code, &out, &err));
    assert!(err.contains("exited while starting") && err.contains("fake etcd: cannot listen"), "{err}");
    assert!(!d.dir.exists(), "a failed up removes what it built");
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
}

#[test]
fn run_with_its_own_rig_removes_it() {
    let ledger = tempfile::tempdir().unwrap();
    let l = ledger.path().join("ledger");
    let child = std::process::Command::new(bin())
        .args(["--ledger", l.to_str().unwrap(), "run", "--rig", "--members", "3", "--isolation", "auto", "topology::"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("hadrill-run-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let (code, so, se) =
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(code, 0, "{}", show(code, &so, &se));
    assert!(so.contains("5 passed"), "{so}");
    // the directory checked is the one the run says it used (else the checks below are vacuous)
    assert!(se.contains(&format!("rig in {}", dir.display())), "{se}");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let entries: Vec<_> =
        std::fs::read_dir(&l).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(entries.iter().all(|n| !n.to_string_lossy().ends_with(".json")), "ledger not empty: {entries:?}");
}
