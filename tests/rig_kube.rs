//! The rig's kube mode on this machine: the host mechanism (own network namespace, own UTS
//! namespace and hostname, the recorded pid being the program's) with a harmless program;
//! HAProxy as the load balancer on a real etcd rig (in its namespace, reachable from the
//! host, backends DOWN with no apiserver, stopped and restarted through the rig-process
//! fault, removed by `rig down` twice); the refusals of `rig up --kube-bin`; a bring-up whose
//! apiserver dies, torn down with the component and its log named; and, when the Kubernetes
//! server binaries are there (HADRILL_KUBE_BIN or PATH), a whole control plane.
//! Every rig is taken down even when a test panics, and nothing of it may be left behind.

mod rigutil;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hadrill::controlplane::{ControlPlane, StopMethod};
use hadrill::fault::{self, process as proc_, Fault, Ledger};
use hadrill::node::NodeAccess;
use hadrill::rig::kube::{self as rk, lifecycle as kl, Binaries, Role};
use hadrill::rig::{self, Isolation, RigState};
use hadrill::suite::{Component, StopSignal};
use rigutil::*;

fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {test}: network and UTS namespaces need root");
        return true;
    }
    if rig::net::which("haproxy").is_none() {
        eprintln!("SKIPPED {test}: haproxy is not on PATH (bash ci/install-deps.sh installs it)");
        return true;
    }
    false
}

/// The namespace name `ip netns identify` gives for a pid.
fn netns_name_of(pid: i32) -> String {
    let out = std::process::Command::new("ip").args(["netns", "identify", &pid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn our_hostname() -> String {
    String::from_utf8_lossy(&std::process::Command::new("hostname").output().unwrap().stdout).trim().to_string()
}

#[test]
fn a_host_has_its_own_netns_hostname_and_the_recorded_pid_is_the_program() {
    if skip_unless_root("a_host_has_its_own_netns_hostname_and_the_recorded_pid_is_the_program") {
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 1, Isolation::Netns);
    let id = st.id();
    let addr: std::net::Ipv4Addr = {
        let o: std::net::Ipv4Addr = st.members[0].ip.parse().unwrap();
        let o = o.octets();
        std::net::Ipv4Addr::new(o[0], o[1], o[2], 200)
    };
    let ns = rt.block_on(rig::net::add_host(&id, "tst1", addr)).expect("add a host namespace");
    let log = st.dir.join("host.log");
    let argv = rk::host::argv(
        &rig::net::which("ip").unwrap(),
        &rig::net::which("unshare").unwrap(),
        &ns,
        "apiserver-9",
        Path::new("/bin/sh"),
        &["-c".into(), "echo \"I am $(hostname)\"; exec sleep 600".into()],
    );
    let (pid, start) = rig::process::spawn_detached(&argv, &log).expect("start the host");
    assert!(
        poll_until(Duration::from_secs(5), || rig::process::tail(&log, 5).contains("I am apiserver-9")),
        "log: {}",
        rig::process::tail(&log, 5)
    );
    // the recorded pid is the program itself (every step exec'd), not a wrapper
    assert!(
        poll_until(Duration::from_secs(5), || rig::process::comm(pid).as_deref() == Some("sleep")),
        "pid {pid} is {:?}",
        rig::process::comm(pid)
    );
    assert_eq!(rig::process::cmdline(pid).unwrap(), ["sleep", "600"]);
    assert_eq!(netns_name_of(pid), ns, "the program runs in the host's network namespace");
    assert_ne!(
        rk::host::uts_of(pid),
        rk::host::uts_of(std::process::id() as i32),
        "the program needs a UTS namespace of its own"
    );
    assert_eq!(rt.block_on(rk::host::hostname_of(pid)).as_deref(), Some("apiserver-9"));
    assert_ne!(our_hostname(), "apiserver-9", "the machine's hostname must not change");
    // its address answers from the host through the bridge
    let out = std::process::Command::new("ip").args(["-n", &ns, "-4", "-o", "addr", "show"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/24")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ping comes with ci/install-deps.sh (iputils-ping)
    let p = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "2", &addr.to_string()])
        .output()
        .expect("ping (iputils-ping, installed by ci/install-deps.sh)");
    assert!(
        p.status.success(),
        "the host's address does not answer from the root namespace: {}",
        String::from_utf8_lossy(&p.stdout)
    );
    // rig down finds it through its namespace and stops it
    let r = rt.block_on(rig::down(&d.dir)).expect("rig down");
    assert!(r.stopped.iter().any(|s| s.contains(&format!("pid {pid}"))), "{:?}", r.stopped);
    assert!(!proc_::alive(pid, start));
    assert!(r.removed.iter().any(|s| s.contains(&ns)), "{:?}", r.removed);
}

/// Binaries for planning kube mode without the Kubernetes binaries: paths that do not exist
/// (never started here) and the real HAProxy.
fn lb_only_binaries() -> Binaries {
    let none = PathBuf::from("/nonexistent/kubernetes/bin");
    Binaries {
        dir: none.clone(),
        apiserver: none.join("kube-apiserver"),
        controller_manager: Some(none.join("kube-controller-manager")),
        scheduler: Some(none.join("kube-scheduler")),
        haproxy: rig::net::which("haproxy").unwrap(),
        searched: format!("in {}", none.display()),
    }
}

#[test]
fn haproxy_load_balancer_on_a_real_rig() {
    if skip_unless_root("haproxy_load_balancer_on_a_real_rig") {
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    let mut st: RigState = d.up(&rt, 3, Isolation::Netns);
    let k = rt.block_on(kl::plan(&st, &lb_only_binaries())).expect("plan kube mode");
    st.kube = Some(k);
    rig::lifecycle::write_state(&st).unwrap();
    rig::lifecycle::write_target(&st).unwrap();
    rt.block_on(kl::create_hosts(&st)).expect("create the hosts' namespaces");
    kl::start_host(&mut st, "lb").expect("start HAProxy");
    rig::lifecycle::write_state(&st).unwrap();
    let k = st.kube.clone().unwrap();
    let lb = k.lb().unwrap().clone();
    rt.block_on(kl::wait_healthy(&st.dir, &k, &lb, Duration::from_secs(20))).expect("HAProxy accepts on its frontend");

    // HAProxy itself, in its own namespace, named lb
    assert_eq!(rig::process::comm(lb.pid).as_deref(), Some("haproxy"));
    assert_eq!(netns_name_of(lb.pid), lb.netns);
    assert_eq!(rt.block_on(rk::host::hostname_of(lb.pid)).as_deref(), Some("lb"));
    assert!(lb.argv.iter().any(|a| a == &k.haproxy_config.display().to_string()), "{:?}", lb.argv);
    // reachable from the host
    let lb_addr = format!("{}:{}", lb.address, lb.port);
    std::net::TcpStream::connect_timeout(&lb_addr.parse().unwrap(), Duration::from_secs(3))
        .expect("connect to the LB from the host");
    // with no apiserver, every backend server goes DOWN (the checks are real)
    let mut states = Vec::new();
    let all_down = poll_until(Duration::from_secs(15), || {
        states =
            rt.block_on(rk::haproxy::backend_states(&k.haproxy_socket, Duration::from_secs(3))).unwrap_or_default();
        states.len() == 3 && states.iter().all(|(_, s)| s.starts_with("DOWN"))
    });
    assert!(all_down, "backends: {states:?}");
    let names: Vec<&str> = states.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["apiserver-1", "apiserver-2", "apiserver-3"]);
    assert!(
        poll_until(Duration::from_secs(5), || rig::process::tail(&lb.log, 50).contains("is DOWN")),
        "HAProxy's log (stderr) must say the servers are DOWN:\n{}",
        rig::process::tail(&lb.log, 20)
    );

    // the control plane as faults see it: every component host, stopped by rig process
    let cp = ControlPlane::from_rig(&st);
    assert_eq!(cp.of(Component::Apiserver).len(), 3);
    assert_eq!(cp.of(Component::ControllerManager).len(), 2);
    assert_eq!(cp.of(Component::Scheduler).len(), 2);
    assert_eq!(cp.of(Component::Etcd).len(), 3);
    let a2 = cp.on(Component::Apiserver, "apiserver-2").expect("apiserver-2");
    assert_eq!(a2.address.as_deref(), Some(k.host("apiserver-2").unwrap().address.as_str()));
    assert_eq!(a2.access, Some(NodeAccess::Local { netns: Some(format!("{}-as2", st.id())) }));
    assert_eq!(a2.stop, Some(StopMethod::RigProcess { rig_dir: st.dir.clone(), name: "apiserver-2".into() }));
    assert!(cp.on(Component::Scheduler, "scheduler-2").is_some());

    // `rig status` shows the hosts, their logs and the admin kubeconfig
    let text = rig::describe(&rig::status(&d.dir).unwrap());
    assert!(text.contains(&format!("lb                    {lb_addr}")), "{text}");
    assert!(text.contains(&lb.log.display().to_string()), "{text}");
    assert!(text.contains(&k.admin_kubeconfig.display().to_string()), "{text}");
    assert!(text.contains("apiserver-1") && text.contains("not started"), "{text}");

    // the target of `run` takes the rig's admin kubeconfig (the LB) as its Kubernetes API
    let (_, out, _) = hadrill(&["--config", &d.target_yaml(), "plan", "topology::"]);
    assert!(out.contains(&format!("server: {}", k.server)), "plan must show the rig's LB as the API server:\n{out}");

    // the rig-process fault on it: SIGTERM, gone; revert restarts it with its command
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(ledger_dir.path()).unwrap();
    let f = Fault::RigProcessStop {
        rig_dir: st.dir.clone(),
        name: "lb".into(),
        pid: lb.pid,
        start_time: lb.start_time,
        signal: StopSignal::Term,
    };
    let guard = rt.block_on(fault::inject(&ledger, f)).expect("stop HAProxy");
    assert!(!proc_::alive(lb.pid, lb.start_time));
    assert!(
        std::net::TcpStream::connect_timeout(&lb_addr.parse().unwrap(), Duration::from_secs(2)).is_err(),
        "the LB still accepts"
    );
    rt.block_on(guard.revert()).expect("revert restarts HAProxy");
    let again = rig::status(&d.dir).unwrap().kube.unwrap().lb().unwrap().clone();
    assert_ne!(again.pid, lb.pid);
    assert!(proc_::alive(again.pid, again.start_time));
    assert_eq!(again.argv, lb.argv, "restarted with the same command");
    assert_eq!(netns_name_of(again.pid), lb.netns);
    assert_eq!(rt.block_on(rk::host::hostname_of(again.pid)).as_deref(), Some("lb"));
    std::net::TcpStream::connect_timeout(&lb_addr.parse().unwrap(), Duration::from_secs(3))
        .expect("the LB accepts again");
    assert!(ledger.entries().unwrap().is_empty(), "the reverted fault left its ledger entry");
    // restarting a running host changes nothing; an unknown name is refused with the list
    rt.block_on(rig::restart_process(&d.dir, "lb")).unwrap();
    assert_eq!(rig::status(&d.dir).unwrap().kube.unwrap().lb().unwrap().pid, again.pid);
    let e = rt.block_on(rig::restart_process(&d.dir, "apiserver-7")).unwrap_err().to_string();
    assert!(e.contains("no process apiserver-7") && e.contains("m1") && e.contains("scheduler-2"), "{e}");

    // rig down stops HAProxy and removes every namespace; twice is fine
    let r = rt.block_on(rig::down(&d.dir)).expect("rig down");
    assert!(r.stopped.iter().any(|s| s.contains("haproxy lb")), "{:?}", r.stopped);
    assert!(!proc_::alive(again.pid, again.start_time));
    assert!(r.removed.iter().any(|s| s.contains(&lb.netns)), "{:?}", r.removed);
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
    rt.block_on(rig::down(&d.dir)).expect("a second rig down");
}

/// A directory of fake Kubernetes binaries: `--version` answers like the real ones; started,
/// the apiserver prints its hostname and exits 1 (the others would sleep).
fn fake_kube_bin(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (b, body) in [
        ("kube-apiserver", "echo \"fake kube-apiserver on $(hostname) refuses to start\"; exit 1"),
        ("kube-controller-manager", "exec sleep 600"),
        ("kube-scheduler", "exec sleep 600"),
    ] {
        let p = dir.join(b);
        std::fs::write(
            &p,
            format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Kubernetes v1.26.3'; exit 0; fi\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn rig_up_kube_bin_refusals_are_one_line_exit_2() {
    let d = RigDir::new();
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = hadrill(&["rig", "up", "--dir", d.path(), "--kube-bin", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{}", show(code, &out, &err));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("kube-apiserver not found in") && err.contains(empty.path().to_str().unwrap()), "{err}");
    assert!(!d.dir.exists(), "nothing is started when a binary is missing");
    // kube mode refuses loopback isolation (its hosts need their own addresses)
    let fake = tempfile::tempdir().unwrap();
    fake_kube_bin(fake.path());
    let (code, out, err) = hadrill(&[
        "rig",
        "up",
        "--dir",
        d.path(),
        "--kube-bin",
        fake.path().to_str().unwrap(),
        "--isolation",
        "loopback",
    ]);
    assert_eq!(code, 2, "{}", show(code, &out, &err));
    assert!(err.contains("kube mode needs network namespaces"), "{err}");
    assert!(!d.dir.exists());
}

#[test]
fn a_failed_bring_up_names_the_component_and_its_log_and_leaves_nothing() {
    if skip_unless_root("a_failed_bring_up_names_the_component_and_its_log_and_leaves_nothing") {
        return;
    }
    let d = RigDir::new();
    let fake = tempfile::tempdir().unwrap();
    fake_kube_bin(fake.path());
    let (code, out, err) = hadrill(&["rig", "up", "--dir", d.path(), "--kube-bin", fake.path().to_str().unwrap()]);
    assert_eq!(code, 3, "{}", show(code, &out, &err));
    assert!(err.contains("kube-apiserver apiserver-") && err.contains("exited while starting"), "{err}");
    assert!(err.contains("kube/apiserver-") && err.contains("kube-apiserver.log"), "the log is named: {err}");
    // the end of its log shows it ran as its own host
    assert!(err.contains("fake kube-apiserver on apiserver-"), "{err}");
    assert!(!d.dir.exists(), "the failed rig is removed");
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
}

/// The Kubernetes server binaries: $HADRILL_KUBE_BIN, else PATH.
fn real_kube_bin() -> Result<Binaries, String> {
    let dir = std::env::var_os("HADRILL_KUBE_BIN").map(PathBuf::from);
    Binaries::find(dir.as_deref()).map_err(|e| e.to_string())
}

#[test]
fn kube_mode_brings_up_a_whole_ha_control_plane() {
    let bins = match real_kube_bin() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED kube_mode_brings_up_a_whole_ha_control_plane: {why} (set HADRILL_KUBE_BIN to the server release's bin directory)");
            return;
        }
    };
    if skip_unless_root("kube_mode_brings_up_a_whole_ha_control_plane") {
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    let (code, out, err) = hadrill(&["rig", "up", "--dir", d.path(), "--kube-bin", bins.dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(out.contains("admin kubeconfig:") && out.contains("kube logs:"), "{out}");
    let st = rig::status(&d.dir).unwrap();
    let k = st.kube.clone().expect("kube mode recorded");
    for h in &k.hosts {
        assert!(proc_::alive(h.pid, h.start_time), "{} is not running", h.name);
        assert_eq!(rt.block_on(rk::host::hostname_of(h.pid)).as_deref(), Some(h.name.as_str()));
        if h.role != Role::LoadBalancer {
            assert!(h.version.as_deref().is_some_and(|v| v.starts_with('v')), "{}: {:?}", h.name, h.version);
        }
    }
    // every apiserver is published in default/kubernetes (what discovery reads)
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&k.admin_kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    });
    let want: std::collections::BTreeSet<String> = k.of(Role::Apiserver).map(|h| h.address.clone()).collect();
    let mut got = std::collections::BTreeSet::new();
    let published = poll_until(Duration::from_secs(30), || {
        let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
        got = rt
            .block_on(api.get_opt("kubernetes"))
            .ok()
            .flatten()
            .map(|s| s.endpoints.into_iter().flatten().flat_map(|e| e.addresses).collect())
            .unwrap_or_default();
        got == want
    });
    assert!(published, "EndpointSlice default/kubernetes has {got:?}, want {want:?}");
    // topology runs against it through the same code path as a cluster
    let (code, out, err) = hadrill(&["--config", &d.target_yaml(), "run", "topology::"]);
    assert!(code == 0 || code == 1, "{}", show(code, &out, &err));
    // an apiserver stopped and reverted comes back healthy with the same command
    let a1 = k.host("apiserver-1").unwrap().clone();
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(ledger_dir.path()).unwrap();
    let f = Fault::RigProcessStop {
        rig_dir: st.dir.clone(),
        name: a1.name.clone(),
        pid: a1.pid,
        start_time: a1.start_time,
        signal: StopSignal::Kill,
    };
    let g = rt.block_on(fault::inject(&ledger, f)).unwrap();
    rt.block_on(g.revert()).expect("apiserver-1 restarts and becomes ready");
    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
}

/// A test double for the three Kubernetes binaries, to drive the whole bring-up (hosts,
/// HAProxy, waits, leases, restart) where the real binaries cannot be installed: each
/// answers `--version` like the real ones and serves HTTPS with the certificate and address
/// its real flags name — `/readyz` (apiserver, client certificates verified against
/// `--client-ca-file` when sent), `/healthz` (controller-manager, scheduler), and the two
/// leader-election leases as the API returns them. It checks nothing a real component
/// checks: what it proves is the rig's orchestration, not Kubernetes.
const FAKE_COMPONENT: &str = r#"#!/usr/bin/env python3
import sys, ssl, json, socket, socketserver, http.server, os
if '--version' in sys.argv:
    print('Kubernetes v1.26.3'); sys.exit(0)
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
role = os.path.basename(sys.argv[0])
host = args.get('advertise-address') or args['bind-address']
port = int(args['secure-port'])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ('/readyz', '/healthz', '/livez'):
            body, ctype = b'ok', 'text/plain'
        elif role == 'kube-apiserver' and self.path == '/version':
            body = json.dumps({'major': '1', 'minor': '26', 'gitVersion': 'v1.26.3',
                'gitCommit': '9e644106593f3f4aa98f8a84b23db5fa378900bd', 'gitTreeState': 'clean',
                'buildDate': '2023-03-15T13:33:12Z', 'goVersion': 'go1.19.7', 'compiler': 'gc',
                'platform': 'linux/amd64'}).encode()
            ctype = 'application/json'
        elif role == 'kube-apiserver' and self.path.startswith('/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/'):
            name = self.path.rsplit('/', 1)[1]
            holder = {'kube-controller-manager': 'controller-manager-1', 'kube-scheduler': 'scheduler-2'}.get(name)
            # held only when that component's stand-in is there to hold it: with no
            # controller-manager a real apiserver has no such lease either
            if holder is None or not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)):
                self.send_error(404); return
            body = json.dumps({'apiVersion': 'coordination.k8s.io/v1', 'kind': 'Lease',
                'metadata': {'name': name, 'namespace': 'kube-system'},
                'spec': {'holderIdentity': holder + '_0b6d1f2e', 'leaseDurationSeconds': 15}}).encode()
            ctype = 'application/json'
        else:
            self.send_error(404); return
        self.send_response(200)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *a):
        sys.stderr.write('%s %s\n' % (socket.gethostname(), fmt % a))
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    def server_bind(self):
        # HTTPServer's own looks the address up in DNS (getfqdn): seconds with no resolver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = host, port
srv = S((host, port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args['tls-cert-file'], args['tls-private-key-file'])
if role == 'kube-apiserver':
    ctx.load_verify_locations(args['client-ca-file'])
    ctx.verify_mode = ssl.CERT_OPTIONAL
srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print('%s (fake) serving on %s:%d as host %s' % (role, host, port, socket.gethostname()), flush=True)
srv.serve_forever()
"#;

fn fake_live_kube_bin(dir: &Path) {
    fake_live_kube_bins(dir, &rk::KUBE_BINARIES);
}

/// The stand-ins of `names` only (kube-apiserver alone: envtest's assets).
fn fake_live_kube_bins(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for &b in names {
        let p = dir.join(b);
        std::fs::write(&p, FAKE_COMPONENT).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn bring_up_orchestration_with_stand_in_components() {
    if skip_unless_root("bring_up_orchestration_with_stand_in_components") {
        return;
    }
    if rig::net::which("python3").is_none() {
        eprintln!("SKIPPED bring_up_orchestration_with_stand_in_components: python3 is not on PATH");
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    let fake = tempfile::tempdir().unwrap();
    fake_live_kube_bin(fake.path());
    // the binaries on PATH: kube mode without --kube-bin (and not with --no-kube)
    let path = format!("{}:{}", fake.path().display(), std::env::var("PATH").unwrap());
    let (code, out, err) =
        hadrill_env(&["rig", "up", "--dir", d.path(), "--members", "1", "--no-kube"], &[("PATH", &path)]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(rig::status(&d.dir).unwrap().kube.is_none(), "--no-kube must keep the rig etcd-only");
    assert!(out.contains("kube mode: off"), "{out}");
    rt.block_on(rig::down(&d.dir)).unwrap();
    let (code, out, err) = hadrill_env(&["rig", "up", "--dir", d.path()], &[("PATH", &path)]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(err.contains(&format!("kube mode with the binaries in {}", fake.path().display())), "{err}");
    let st = rig::status(&d.dir).unwrap();
    let k = st.kube.clone().expect("kube mode recorded");
    assert_eq!(k.bin_dir, fake.path());
    assert_eq!(k.hosts.len(), 8);
    for h in &k.hosts {
        assert!(proc_::alive(h.pid, h.start_time), "{} is not running", h.name);
        assert!(out.contains(&h.log.display().to_string()), "rig up must print {}'s log:\n{out}", h.name);
        assert_eq!(rt.block_on(rk::host::hostname_of(h.pid)).as_deref(), Some(h.name.as_str()));
        assert_eq!(netns_name_of(h.pid), h.netns);
        if h.role != Role::LoadBalancer {
            assert_eq!(h.version.as_deref(), Some("v1.26.3"), "{}", h.name);
            let log = std::fs::read_to_string(&h.log).unwrap();
            assert!(log.contains(&format!("as host {}", h.name)), "{}", rig::process::tail(&h.log, 5));
        }
    }
    assert!(out.contains(&format!("admin kubeconfig: {}", k.admin_kubeconfig.display())), "{out}");
    assert_eq!(std::fs::metadata(&k.admin_kubeconfig).unwrap().permissions().mode() & 0o777, 0o600);
    // HAProxy sees every apiserver UP (its TLS /readyz checks pass)
    let mut states = Vec::new();
    let up = poll_until(Duration::from_secs(10), || {
        states =
            rt.block_on(rk::haproxy::backend_states(&k.haproxy_socket, Duration::from_secs(3))).unwrap_or_default();
        states.len() == 3 && states.iter().all(|(_, s)| s == "UP")
    });
    assert!(up, "backends: {states:?}");
    // the control plane with versions, and the target through the LB
    let cp = ControlPlane::from_rig(&st);
    assert!(cp.of(Component::Apiserver).iter().all(|i| i.version.as_deref() == Some("v1.26.3")));
    let target = std::fs::read_to_string(d.dir.join("target.yaml")).unwrap();
    assert!(target.contains(&k.admin_kubeconfig.display().to_string()), "{target}");

    // an apiserver killed: HAProxy marks it DOWN; the revert restarts it and it is UP again
    let a2 = k.host("apiserver-2").unwrap().clone();
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(ledger_dir.path()).unwrap();
    let (pid, start_time) = st.process("apiserver-2").expect("apiserver-2 runs");
    assert_eq!((pid, start_time), (a2.pid, a2.start_time));
    assert_eq!(st.process("m1"), Some((st.members[0].pid, st.members[0].start_time)));
    assert_eq!(st.process("apiserver-9"), None);
    let f = Fault::RigProcessStop {
        rig_dir: st.dir.clone(),
        name: a2.name.clone(),
        pid,
        start_time,
        signal: StopSignal::Kill,
    };
    let g = rt.block_on(fault::inject(&ledger, f)).unwrap();
    let down = poll_until(Duration::from_secs(10), || {
        states =
            rt.block_on(rk::haproxy::backend_states(&k.haproxy_socket, Duration::from_secs(3))).unwrap_or_default();
        states.iter().any(|(n, s)| n == "apiserver-2" && s.starts_with("DOWN"))
    });
    assert!(down, "HAProxy did not mark the killed apiserver DOWN: {states:?}");
    rt.block_on(g.revert()).expect("apiserver-2 restarts and is ready");
    let a2b = rig::status(&d.dir).unwrap().kube.unwrap().host("apiserver-2").unwrap().clone();
    assert_ne!(a2b.pid, a2.pid);
    assert_eq!(rt.block_on(rk::host::hostname_of(a2b.pid)).as_deref(), Some("apiserver-2"));
    let up = poll_until(Duration::from_secs(10), || {
        states =
            rt.block_on(rk::haproxy::backend_states(&k.haproxy_socket, Duration::from_secs(3))).unwrap_or_default();
        states.iter().any(|(n, s)| n == "apiserver-2" && s == "UP")
    });
    assert!(up, "{states:?}");

    // a suite's `component_stop` through the engine, as against a cluster: the leader read
    // from its Lease through the load balancer (the stand-in apiservers say scheduler-2),
    // resolved to that rig host's process, stopped, and restarted by the heal
    let suites = tempfile::tempdir().unwrap();
    std::fs::write(
        suites.path().join("cp.yaml"),
        "suite: cpfault\ndescription: d\ncases:\n  - name: scheduler_leader\n    description: d\n    disruptive: true\n    requires: [kubernetes]\n    steps:\n      - inject: { component_stop: { component: scheduler, pick: leader, signal: term } }\n      - heal\n",
    )
    .unwrap();
    let s2 = rig::status(&d.dir).unwrap().kube.unwrap().host("scheduler-2").unwrap().clone();
    let report = d.dir.join("cpfault.json");
    let (code, out, err) = hadrill(&[
        "--config",
        &d.dir.join("target.yaml").display().to_string(),
        "--suite-dir",
        &suites.path().display().to_string(),
        "--ledger",
        &ledger_dir.path().display().to_string(),
        "run",
        "--allow-disruption",
        "cpfault::",
        "--json",
        &report.display().to_string(),
    ]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let case_out = r["cases"][0]["output"].as_str().unwrap().to_string();
    assert!(case_out.contains("injected: stop scheduler-2 of rig") && case_out.contains("SIGTERM"), "{r}");
    let s2b = rig::status(&d.dir).unwrap().kube.unwrap().host("scheduler-2").unwrap().clone();
    assert!(!proc_::alive(s2.pid, s2.start_time), "the leader's old process was stopped");
    assert!(proc_::alive(s2b.pid, s2b.start_time) && s2b.pid != s2.pid, "the heal restarted scheduler-2");

    // rig down stops all 8 hosts and 3 members; twice is fine
    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    for h in &k.hosts {
        assert!(
            out.contains(&format!(" {} (pid ", h.name)) || h.name == "apiserver-2",
            "{} not stopped:\n{out}",
            h.name
        );
    }
    assert!(!proc_::alive(a2b.pid, a2b.start_time));
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
}

/// The leases the stand-in apiserver answers for: only those of components whose stand-in is
/// beside it, else 404 as from a real apiserver with no such holder. Without this the rig
/// test below would see leases nobody holds.
#[test]
fn the_stand_in_apiserver_answers_leases_only_for_stand_ins_beside_it() {
    if rig::net::which("python3").is_none() || rig::net::which("openssl").is_none() || rig::net::which("curl").is_none()
    {
        eprintln!(
            "SKIPPED the_stand_in_apiserver_answers_leases_only_for_stand_ins_beside_it: python3, openssl or curl missing (ci/install-deps.sh installs them)"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    fake_live_kube_bins(d.path(), &["kube-apiserver", "kube-scheduler"]);
    let (crt, key) = (d.path().join("s.crt"), d.path().join("s.key"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = d.path().join("a.log");
    let argv: Vec<String> = vec![
        d.path().join("kube-apiserver").display().to_string(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", crt.display()),
        format!("--tls-private-key-file={}", key.display()),
        format!("--client-ca-file={}", crt.display()),
    ];
    let (pid, start) = rig::process::spawn_detached(&argv, &log).unwrap();
    struct Stop(i32, u64);
    impl Drop for Stop {
        fn drop(&mut self) {
            if proc_::alive(self.0, self.1) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _stop = Stop(pid, start);
    let get = |lease: &str| -> Option<u16> {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", "--cacert"])
            .arg(&crt)
            .arg(format!("https://127.0.0.1:{port}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).parse().ok().filter(|c| *c != 0)
    };
    let mut code = None;
    assert!(
        poll_until(Duration::from_secs(10), || {
            code = get("kube-scheduler");
            code.is_some()
        }),
        "the stand-in did not answer: {}",
        rig::process::tail(&log, 10)
    );
    assert_eq!(code, Some(200), "the scheduler's stand-in is beside it");
    assert_eq!(get("kube-controller-manager"), Some(404), "no controller-manager stand-in beside it");
}

#[test]
fn kube_apiserver_alone_runs_apiservers_and_the_lb_and_skips_what_needs_the_others() {
    if skip_unless_root("kube_apiserver_alone_runs_apiservers_and_the_lb_and_skips_what_needs_the_others") {
        return;
    }
    if rig::net::which("python3").is_none() {
        eprintln!("SKIPPED kube_apiserver_alone_runs_apiservers_and_the_lb_and_skips_what_needs_the_others: python3 is not on PATH");
        return;
    }
    let rt = runtime();
    let d = RigDir::new();
    // envtest's assets: kube-apiserver (etcd, kubectl) and nothing else
    let fake = tempfile::tempdir().unwrap();
    fake_live_kube_bins(fake.path(), &["kube-apiserver"]);
    let bin = fake.path().display().to_string();
    let (code, out, err) = hadrill(&["rig", "up", "--dir", d.path(), "--kube-bin", &bin]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(err.contains(&format!("kube mode with the binaries in {bin} (apiservers, HAProxy)")), "{err}");
    for (prog, plural) in [("kube-controller-manager", "controller-managers"), ("kube-scheduler", "schedulers")] {
        let line = format!("{prog} not found in {bin}: no {plural}; cases that need them are skipped");
        assert_eq!(err.lines().filter(|l| l.contains(&line)).count(), 1, "one stderr line for {prog}:\n{err}");
        assert!(out.contains(&line), "rig up's description says so too:\n{out}");
    }
    let st = rig::status(&d.dir).unwrap();
    let k = st.kube.clone().expect("kube mode recorded");
    let names: Vec<&str> = k.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["lb", "apiserver-1", "apiserver-2", "apiserver-3"]);
    assert_eq!(k.absent.iter().map(|a| a.role).collect::<Vec<_>>(), [Role::ControllerManager, Role::Scheduler]);
    for h in &k.hosts {
        assert!(proc_::alive(h.pid, h.start_time), "{} is not running", h.name);
        assert_eq!(netns_name_of(h.pid), h.netns);
    }
    // nothing of the others was started, their namespaces not created
    let nss =
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .to_string();
    assert!(!nss.contains(&format!("{}-cm1", st.id())) && !nss.contains(&format!("{}-sc1", st.id())), "{nss}");
    assert!(rig::process::programs_with_arg(&["kube-controller-manager", "kube-scheduler"], &format!("{}/", d.path()))
        .is_empty());
    // the LB passes to every apiserver
    let mut states = Vec::new();
    let up = poll_until(Duration::from_secs(10), || {
        states =
            rt.block_on(rk::haproxy::backend_states(&k.haproxy_socket, Duration::from_secs(3))).unwrap_or_default();
        states.len() == 3 && states.iter().all(|(_, s)| s == "UP")
    });
    assert!(up, "backends: {states:?}");
    // the control plane faults see: apiservers and etcd, no controller-manager or scheduler
    let cp = ControlPlane::from_rig(&st);
    assert_eq!(cp.of(Component::Apiserver).len(), 3);
    assert!(cp.of(Component::ControllerManager).is_empty() && cp.of(Component::Scheduler).is_empty());
    // rig status says so
    let (code, out, err) = hadrill(&["rig", "status", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(out.contains(&format!("kube-controller-manager not found in {bin}: no controller-managers")), "{out}");
    assert!(out.contains(&format!("kube-scheduler not found in {bin}: no schedulers")), "{out}");

    // the takeover case and the lease check: skipped, naming the missing binary (not
    // errors, not failures; `run` takes one filter: one run each)
    let why_cm = format!("needs kube-controller-manager: the rig runs none (its binary was not found in {bin})");
    let why_sc = format!("needs kube-scheduler: the rig runs none (its binary was not found in {bin})");
    for (name, want) in [
        ("failover::controller_manager_leader_takeover", why_cm.clone()),
        ("topology::kube_leases_renewed", format!("{why_cm}; {why_sc}")),
    ] {
        let report = d.dir.join(format!("{}.json", name.replace("::", "-")));
        let (code, out, err) = hadrill(&[
            "--config",
            &d.target_yaml(),
            "run",
            "--allow-disruption",
            "--exact",
            name,
            "--json",
            &report.display().to_string(),
        ]);
        assert_eq!(code, 0, "{name}: {}", show(code, &out, &err));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["counts"], serde_json::json!({"passed": 0, "failed": 0, "errors": 0, "skipped": 1}), "{r}");
        let c = &r["cases"][0];
        assert_eq!(format!("{}::{}", c["suite"].as_str().unwrap(), c["case"].as_str().unwrap()), name);
        assert_eq!(c["verdict"], serde_json::json!({"status": "skipped", "reason": want}), "{c}");
    }
    // nothing was stopped by the skipped case
    for h in &rig::status(&d.dir).unwrap().kube.unwrap().hosts {
        let before = k.host(&h.name).unwrap();
        assert_eq!((h.pid, h.start_time), (before.pid, before.start_time), "{} was restarted", h.name);
    }

    // an apiserver stopped and restarted as on a full rig
    rt.block_on(async {
        let (pid, start) = st.process("apiserver-3").unwrap();
        let ledger_dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(ledger_dir.path()).unwrap();
        let f = Fault::RigProcessStop {
            rig_dir: st.dir.clone(),
            name: "apiserver-3".into(),
            pid,
            start_time: start,
            signal: StopSignal::Term,
        };
        let g = fault::inject(&ledger, f).await.unwrap();
        assert!(!proc_::alive(pid, start));
        g.revert().await.expect("apiserver-3 restarts and is ready");
    });

    let (code, out, err) = hadrill(&["rig", "down", "--dir", d.path()]);
    assert_eq!(code, 0, "{}", show(code, &out, &err));
    assert!(leftovers(&d.dir).is_empty(), "{:?}", leftovers(&d.dir));
}
