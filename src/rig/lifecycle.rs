//! The rig's lifecycle: `up` (directory, PKI, network, members, state and target files, wait
//! for one agreed leader; then kube mode when asked), `restart_member`, `restart_process`,
//! and `down` (which also removes a half-built rig).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{
    net, pki, process, status, DownReport, Isolation, MemberState, RigError, RigSpec, RigState, MARKER_FILE,
    STATE_FILE, TARGET_FILE,
};
use crate::fault::process as proc_;
use crate::probe::etcd::{cluster_view, status_of, ClusterView};
use crate::target::{EtcdTarget, TlsMaterial};

/// Raft timing given to every member (recorded in the state: checks derive bounds from it).
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;
/// How long `up` waits for every member to answer and agree on one leader.
pub const UP_DEADLINE: Duration = Duration::from_secs(30);
/// How long `restart_member` waits for the member to answer status.
pub const RESTART_DEADLINE: Duration = Duration::from_secs(20);
/// SIGTERM grace before SIGKILL in `down`.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(200);
const LOG_TAIL_LINES: usize = 12;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

fn shown(dir: &Path) -> String {
    dir.display().to_string()
}

/// The directory as an absolute path without symlinks (when it exists), so that the rig id
/// and the command lines are the same whichever way the user names it.
pub fn normalize(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf())
}

fn io(dir: &Path, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RigError {
    let (dir, path) = (shown(dir), path.display().to_string());
    move |source| RigError::Io { dir, what, path, source }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts the rig described by `spec` and returns once every member answers and all agree
/// on one leader. On failure everything it started is removed again.
pub async fn up(spec: &RigSpec) -> Result<RigState, RigError> {
    up_with_kube(spec, None).await
}

/// Like [`up`]; with `kube` (the binaries found), kube mode is brought up on the members
/// too (see [`super::kube`]): it needs network namespaces.
pub async fn up_with_kube(spec: &RigSpec, kube: Option<super::kube::Binaries>) -> Result<RigState, RigError> {
    let etcd = net::which("etcd").ok_or(RigError::EtcdMissing)?;
    let ip = net::which("ip");
    let isolation = match spec.isolation {
        Isolation::Loopback => Isolation::Loopback,
        Isolation::Auto if is_root() && ip.is_some() => Isolation::Netns,
        Isolation::Auto => Isolation::Loopback,
        Isolation::Netns if is_root() && ip.is_some() => Isolation::Netns,
        Isolation::Netns => return Err(RigError::NetnsUnavailable { dir: shown(&spec.dir) }),
    };
    if kube.is_some() && isolation != Isolation::Netns {
        return Err(RigError::KubeNeedsNetns { dir: shown(&spec.dir) });
    }
    let dir = claim_dir(&spec.dir)?;
    let built = match build(&dir, spec.members, isolation, &etcd, ip.as_deref()).await {
        Ok(mut st) => match &kube {
            Some(bins) => match super::kube::lifecycle::up(&mut st, bins).await {
                Ok(()) => write_target(&st).map(|_| st),
                Err(e) => Err(e),
            },
            None => Ok(st),
        },
        Err(e) => Err(e),
    };
    match built {
        Ok(st) => Ok(st),
        Err(e) => {
            if let Err(d) = down(&dir).await {
                tracing::warn!("removing the failed rig: {}", crate::exit::chain(&d));
            }
            Err(e)
        }
    }
}

/// Creates or checks the directory and writes the marker. Refuses a directory with a rig
/// (running or not) or with anything else in it.
fn claim_dir(dir: &Path) -> Result<PathBuf, RigError> {
    if dir.exists() {
        let abs = normalize(dir);
        match status(&abs) {
            Ok(st) => {
                let running: Vec<String> = st
                    .members
                    .iter()
                    .filter(|m| proc_::alive(m.pid, m.start_time))
                    .map(|m| format!("{} pid {}", m.name, m.pid))
                    .collect();
                return Err(if running.is_empty() {
                    RigError::Stale { dir: shown(&abs) }
                } else {
                    RigError::Running { dir: shown(&abs), running: running.join(", ") }
                });
            }
            Err(RigError::NoRig { .. }) => {}
            Err(_) => return Err(RigError::Stale { dir: shown(&abs) }),
        }
        if abs.join(MARKER_FILE).exists() {
            return Err(RigError::Stale { dir: shown(&abs) });
        }
        let mut entries = std::fs::read_dir(&abs).map_err(io(&abs, "read", &abs))?;
        if entries.next().is_some() {
            return Err(RigError::NotEmpty { dir: shown(&abs) });
        }
    } else {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir, "create", dir))?;
    }
    let abs = normalize(dir);
    let marker = abs.join(MARKER_FILE);
    std::fs::write(&marker, "a hadrill rig: `hadrill rig down --dir` on this directory removes it\n")
        .map_err(io(&abs, "write", &marker))?;
    Ok(abs)
}

/// Ports for loopback members: 2 per member, distinct, free now, held until the members start.
fn reserve_ports(count: usize) -> Result<Vec<TcpListener>, std::io::Error> {
    let mut held: Vec<TcpListener> = Vec::new();
    let mut tries = 0;
    while held.len() < count {
        tries += 1;
        if tries > 2000 {
            return Err(std::io::Error::other("no free ports in 20000-32000 on 127.0.0.1"));
        }
        // below the ephemeral range, where outgoing connections do not take ports
        let port: u16 = rand::random_range(20000..32000);
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push(l);
        }
    }
    Ok(held)
}

async fn build(
    dir: &Path,
    count: usize,
    isolation: Isolation,
    etcd: &Path,
    ip: Option<&Path>,
) -> Result<RigState, RigError> {
    let id = net::rig_id(dir);
    let names: Vec<String> = (1..=count).map(|i| format!("m{i}")).collect();
    // where each member listens: (ip, client port, peer port, netns)
    let mut held = Vec::new();
    let places: Vec<(IpAddr, u16, u16, Option<String>)> = match isolation {
        Isolation::Netns => {
            let built = net::create(&id, &names).await.map_err(|source| RigError::Net { dir: shown(dir), source })?;
            built.members.into_iter().map(|(ns, a)| (IpAddr::V4(a), CLIENT_PORT, PEER_PORT, Some(ns))).collect()
        }
        _ => {
            held = reserve_ports(2 * count).map_err(io(dir, "reserve ports for", dir))?;
            let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
            (0..count)
                .map(|i| (IpAddr::V4(Ipv4Addr::LOCALHOST), port(&held[2 * i]), port(&held[2 * i + 1]), None))
                .collect()
        }
    };
    let pki_paths = pki::PkiPaths::new(dir.join("pki"));
    let with_ips: Vec<(String, IpAddr)> = names.iter().cloned().zip(places.iter().map(|p| p.0)).collect();
    pki::create(&pki_paths, &with_ips).map_err(|source| RigError::Pki { dir: shown(dir), source })?;

    let url = |ip: IpAddr, port: u16| format!("https://{ip}:{port}");
    let initial_cluster =
        names.iter().zip(&places).map(|(n, p)| format!("{n}={}", url(p.0, p.2))).collect::<Vec<_>>().join(",");
    let token = format!("hadrill-{id}-{:08x}", rand::random::<u32>());
    let mut members = Vec::new();
    for (name, (addr, cport, pport, ns)) in names.iter().zip(&places) {
        let mdir = dir.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&mdir).map_err(io(dir, "create", &mdir))?;
        let data_dir = mdir.join("data");
        let log = mdir.join("etcd.log");
        let (client_url, peer_url) = (url(*addr, *cport), url(*addr, *pport));
        let p = |x: PathBuf| x.display().to_string();
        let mut argv: Vec<String> = Vec::new();
        if let (Some(ns), Some(ip)) = (ns, ip) {
            argv.extend([p(ip.to_path_buf()), "netns".into(), "exec".into(), ns.clone()]);
        }
        argv.push(p(etcd.to_path_buf()));
        for (k, v) in [
            ("--name", name.clone()),
            ("--data-dir", p(data_dir.clone())),
            ("--listen-client-urls", client_url.clone()),
            ("--advertise-client-urls", client_url.clone()),
            ("--listen-peer-urls", peer_url.clone()),
            ("--initial-advertise-peer-urls", peer_url.clone()),
            ("--initial-cluster", initial_cluster.clone()),
            ("--initial-cluster-state", "new".into()),
            ("--initial-cluster-token", token.clone()),
            ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
            ("--election-timeout", ELECTION_MS.to_string()),
            ("--trusted-ca-file", p(pki_paths.ca_cert())),
            ("--cert-file", p(pki_paths.member_cert(name))),
            ("--key-file", p(pki_paths.member_key(name))),
            ("--peer-trusted-ca-file", p(pki_paths.ca_cert())),
            ("--peer-cert-file", p(pki_paths.member_cert(name))),
            ("--peer-key-file", p(pki_paths.member_key(name))),
            ("--logger", "zap".into()),
            ("--log-outputs", "stderr".into()),
        ] {
            argv.push(format!("{k}={v}"));
        }
        argv.push("--client-cert-auth".into());
        argv.push("--peer-client-cert-auth".into());
        members.push(MemberState {
            name: name.clone(),
            ip: addr.to_string(),
            client_url,
            peer_url,
            pid: 0,
            start_time: 0,
            netns: ns.clone(),
            argv,
            data_dir,
            log,
        });
    }
    let mut st = RigState {
        dir: dir.to_path_buf(),
        isolation,
        members,
        ca_cert: pki_paths.ca_cert(),
        client_cert: pki_paths.client_cert(),
        client_key: pki_paths.client_key(),
        election_timeout_ms: ELECTION_MS,
        heartbeat_interval_ms: HEARTBEAT_MS,
        kube: None,
    };
    drop(held);
    for m in &mut st.members {
        let (pid, start) = process::spawn_detached(&m.argv, &m.log).map_err(|source| RigError::Spawn {
            dir: shown(dir),
            member: m.name.clone(),
            source,
        })?;
        m.pid = pid;
        m.start_time = start;
    }
    write_state(&st)?;
    write_target(&st)?;
    wait_ready(&st, UP_DEADLINE).await?;
    Ok(st)
}

/// Writes `rig.json` atomically (a reader sees the old or the new state, never half).
pub fn write_state(st: &RigState) -> Result<(), RigError> {
    let body =
        serde_json::to_vec_pretty(st).map_err(|e| RigError::Other { dir: shown(&st.dir), message: e.to_string() })?;
    write_atomic(&st.dir, &st.dir.join(STATE_FILE), &body)
}

/// Writes `target.yaml`: the members with the client certificate, and in kube mode the admin
/// kubeconfig (through the load balancer).
pub fn write_target(st: &RigState) -> Result<(), RigError> {
    let c = crate::config::Config {
        etcd: Some(crate::config::EtcdConfig {
            endpoints: st.members.iter().map(|m| m.client_url.clone()).collect(),
            cacert: Some(st.ca_cert.clone()),
            cert: Some(st.client_cert.clone()),
            key: Some(st.client_key.clone()),
        }),
        rig: Some(st.dir.clone()),
        kubeconfig: st.kube.as_ref().map(|k| k.admin_kubeconfig.clone()),
        ..Default::default()
    };
    let body = format!(
        "# written by `hadrill rig up`: hadrill run --config {}\n{}",
        st.dir.join(TARGET_FILE).display(),
        c.to_yaml()
    );
    write_atomic(&st.dir, &st.dir.join(TARGET_FILE), body.as_bytes())
}

fn write_atomic(dir: &Path, path: &Path, body: &[u8]) -> Result<(), RigError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(dir, "write", &tmp))?;
    f.write_all(body).and_then(|_| f.sync_all()).map_err(io(dir, "write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io(dir, "write", path))
}

/// The etcd target of the rig: every member's client URL, with the rig's client certificate.
pub fn etcd_target(st: &RigState) -> Result<EtcdTarget, RigError> {
    let other = |m: String| RigError::Other { dir: shown(&st.dir), message: m };
    let tls = TlsMaterial::from_files(&st.ca_cert, Some(&st.client_cert), Some(&st.client_key))
        .map_err(|e| other(e.to_string()))?;
    EtcdTarget::new(st.members.iter().map(|m| m.client_url.clone()).collect(), Some(tls))
        .map_err(|e| other(e.to_string()))
}

fn not_ready(st: &RigState, member: &MemberState, message: String) -> RigError {
    RigError::NotReady {
        dir: shown(&st.dir),
        message,
        log: member.log.display().to_string(),
        tail: process::tail(&member.log, LOG_TAIL_LINES),
    }
}

/// Whether every member of `st` answers and all see the same leader; else why not, and
/// the member to blame.
fn readiness<'a>(st: &'a RigState, v: &ClusterView) -> Result<(), (String, &'a MemberState)> {
    let mut leaders = std::collections::BTreeSet::new();
    for m in &st.members {
        match v.members.iter().find(|x| x.name == m.name) {
            None => return Err((format!("{} is not in the member list yet", m.name), m)),
            Some(x) => match &x.status {
                Err(e) => return Err((format!("{} does not answer: {e}", m.name), m)),
                Ok(s) if s.leader == 0 => return Err((format!("{} sees no leader", m.name), m)),
                Ok(s) => {
                    leaders.insert(s.leader);
                }
            },
        }
    }
    if leaders.len() > 1 {
        return Err((format!("members disagree on the leader ({} leaders seen)", leaders.len()), &st.members[0]));
    }
    Ok(())
}

/// Polls (deadline `within`) until every member answers status and all agree on one leader.
/// A member whose process exits fails at once, with the end of its log.
pub async fn wait_ready(st: &RigState, within: Duration) -> Result<(), RigError> {
    let target = etcd_target(st)?;
    let end = Instant::now() + within;
    loop {
        if let Some(m) = st.members.iter().find(|m| !proc_::alive(m.pid, m.start_time)) {
            return Err(not_ready(st, m, format!("member {} (pid {}) exited while starting", m.name, m.pid)));
        }
        let why = match cluster_view(&target).await {
            Ok(v) => match readiness(st, &v) {
                Ok(()) => return Ok(()),
                Err((why, m)) => (why, m),
            },
            Err(e) => (format!("no member answers: {e}"), &st.members[0]),
        };
        if Instant::now() >= end {
            return Err(not_ready(st, why.1, format!("not ready within {within:?}: {}", why.0)));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One line per member as etcd sees it (leader or follower, raft term, DB size), or why it
/// does not answer: the health part of `rig status`.
pub async fn health(st: &RigState) -> String {
    let target = match etcd_target(st) {
        Ok(t) => t,
        Err(e) => return format!("health: {}\n", crate::exit::chain(&e)),
    };
    let mut out = String::from("health:\n");
    for m in &st.members {
        let line = match status_of(&target, &m.client_url).await {
            Ok(s) if s.leader == s.member_id => {
                format!("leader, term {}, db {} B, etcd {}", s.raft_term, s.db_size, s.version)
            }
            Ok(s) if s.leader == 0 => format!("no leader seen, term {}", s.raft_term),
            Ok(s) => format!("follower, term {}, db {} B, etcd {}", s.raft_term, s.db_size, s.version),
            Err(e) => format!("does not answer: {e}"),
        };
        out.push_str(&format!("  {:<4} {line}\n", m.name));
    }
    if let Some(k) = &st.kube {
        for h in k.hosts.iter().filter(|h| h.pid > 0) {
            let line = match super::kube::lifecycle::check(k, h).await {
                Ok(()) => "healthy".to_string(),
                Err(e) => format!("NOT HEALTHY: {e}"),
            };
            out.push_str(&format!("  {:<21} {line}\n", h.name));
        }
    }
    out
}

/// Serializes read-modify-write of `rig.json` (two members restarted at once).
pub(crate) async fn lock_state(dir: &Path) -> Result<Flock<File>, RigError> {
    let path = dir.join("rig.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(dir, "open", &path))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err((_, e)) => {
                return Err(RigError::Other { dir: shown(dir), message: format!("lock {}: {e}", path.display()) })
            }
        }
    }
}

/// Starts a stopped member again with its stored command (same flags, data directory and
/// namespace), records its new pid, and waits until it answers status. A running (or
/// paused) member is left alone.
pub async fn restart_member(dir: &Path, member: &str) -> Result<(), RigError> {
    let dir = normalize(dir);
    let (st, m) = {
        let _lock = lock_state(&dir).await?;
        let mut st = status(&dir)?;
        let Some(i) = st.members.iter().position(|m| m.name == member) else {
            return Err(RigError::NoMember {
                dir: shown(&dir),
                member: member.into(),
                members: st.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        };
        if proc_::alive(st.members[i].pid, st.members[i].start_time) {
            return Ok(());
        }
        let (pid, start) = process::spawn_detached(&st.members[i].argv, &st.members[i].log)
            .map_err(|source| RigError::Spawn { dir: shown(&dir), member: member.into(), source })?;
        st.members[i].pid = pid;
        st.members[i].start_time = start;
        write_state(&st)?;
        let m = st.members[i].clone();
        (st, m)
    };
    let target = etcd_target(&st)?;
    let end = Instant::now() + RESTART_DEADLINE;
    loop {
        if !proc_::alive(m.pid, m.start_time) {
            return Err(not_ready(&st, &m, format!("restarted member {} (pid {}) exited", m.name, m.pid)));
        }
        let why = match status_of(&target, &m.client_url).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= end {
            return Err(not_ready(
                &st,
                &m,
                format!("restarted member {} does not answer within {RESTART_DEADLINE:?}: {why}", m.name),
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Starts a stopped process of the rig again, by its name: an etcd member (see
/// [`restart_member`]) or, in kube mode, a host (`apiserver-2`, `scheduler-1`, `lb`: see
/// [`super::kube::lifecycle::restart_host`]), and waits until it is healthy.
pub async fn restart_process(dir: &Path, name: &str) -> Result<(), RigError> {
    let dir = normalize(dir);
    let st = status(&dir)?;
    if st.member(name).is_some() {
        return restart_member(&dir, name).await;
    }
    if st.kube.as_ref().is_some_and(|k| k.host(name).is_some()) {
        return super::kube::lifecycle::restart_host(&dir, name).await;
    }
    let mut names: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
    names.extend(st.kube.iter().flat_map(|k| k.hosts.iter().map(|h| h.name.as_str())));
    Err(RigError::NoProcess { dir: shown(&dir), name: name.into(), names: names.join(", ") })
}

/// Stops every member and removes the namespaces, interfaces and the directory. Works on a
/// half-built rig (no or corrupt `rig.json`): processes are also found by their command
/// line and their namespace, namespaces and interfaces by the rig id prefix. Safe to repeat.
pub async fn down(dir: &Path) -> Result<DownReport, RigError> {
    let dir = normalize(dir);
    let id = net::rig_id(&dir);
    let prefix = format!("{id}-");
    let mut report = DownReport::default();
    let mut problems: Vec<String> = Vec::new();

    // only a directory that `up` claimed (its marker is written before anything starts) is
    // searched by command line: `rig down --dir /etc` must not stop a node's kube-apiserver
    let ours = dir.join(MARKER_FILE).exists() || dir.join(STATE_FILE).exists();
    // every process of the rig: (pid) -> (start time, what)
    let mut procs: BTreeMap<i32, (u64, String)> = BTreeMap::new();
    if let Ok(st) = status(&dir) {
        for m in &st.members {
            if proc_::alive(m.pid, m.start_time) {
                procs.insert(m.pid, (m.start_time, format!("etcd member {} (pid {})", m.name, m.pid)));
            }
        }
        for (pid, start, what) in super::kube::lifecycle::recorded_processes(&st) {
            procs.insert(pid, (start, what));
        }
    }
    if ours {
        for (pid, start) in process::etcd_with_arg_prefix(&format!("--data-dir={}/", dir.display())) {
            procs.entry(pid).or_insert((start, format!("etcd pid {pid} (found by its command line)")));
        }
        // kube mode's programs name files of the rig in their arguments
        let kube_programs = ["haproxy", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];
        for (pid, start, prog) in process::programs_with_arg(&kube_programs, &format!("{}/", dir.display())) {
            procs.entry(pid).or_insert((start, format!("{prog} pid {pid} (found by its command line)")));
        }
    }
    if net::which("ip").is_some() {
        for ns in net::list_netns(&prefix).await.unwrap_or_default() {
            for pid in net::netns_pids(&ns).await.unwrap_or_default() {
                if let Some(start) = proc_::start_time(pid) {
                    let name = process::comm(pid).unwrap_or_else(|| "process".into());
                    procs.entry(pid).or_insert((start, format!("{name} pid {pid} in network namespace {ns}")));
                }
            }
        }
    }
    let list: Vec<(i32, u64)> = procs.iter().map(|(p, (s, _))| (*p, *s)).collect();
    let stuck = process::stop_all(&list, STOP_GRACE).await;
    for (pid, (_, what)) in &procs {
        if stuck.contains(pid) {
            problems.push(format!("{what} still runs after SIGKILL"));
        } else {
            report.stopped.push(what.clone());
        }
    }

    let (removed, p) = net::teardown(&id).await;
    report.removed.extend(removed);
    problems.extend(p);

    if ours {
        if stuck.is_empty() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.removed.push(format!("directory {}", dir.display())),
                Err(e) => problems.push(format!("remove {}: {e}", dir.display())),
            }
        } else {
            problems.push(format!("left {} in place: processes still use it", dir.display()));
        }
    } else if dir.exists() {
        problems.push(format!("{} holds no rig (no {MARKER_FILE}): left in place", dir.display()));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(RigError::Down { dir: shown(&dir), problems: problems.join("; ") })
    }
}
