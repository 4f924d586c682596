//! Kube mode's lifecycle on a running etcd rig: plan (PKI, kubeconfigs, HAProxy
//! configuration, every command line), the hosts' namespaces, bring-up in order (apiservers
//! ready on their own addresses → HAProxy → the API ready through it → controller-managers
//! and schedulers healthy → both leases held), health checks, and the restart of one host
//! with its stored command (the revert of a component stop).
//!
//! Every wait polls with a deadline; a host whose process exits fails the wait at once with
//! the end of its log.

use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{flags, haproxy, host, kubeconfig, pki, Binaries, KubeDirs, KubeHost, KubeRigState, Role};
use crate::fault::process as proc_;
use crate::rig::{net, process, Isolation, RigError, RigState};

/// How long an apiserver may take to answer `/readyz` 200 after it is started.
pub const APISERVER_DEADLINE: Duration = Duration::from_secs(120);
/// How long a controller-manager, a scheduler or HAProxy may take to answer its health check.
pub const COMPONENT_DEADLINE: Duration = Duration::from_secs(60);
/// How long the leases may take to be held after the components are healthy.
pub const LEASE_DEADLINE: Duration = Duration::from_secs(60);
/// Each health request's own timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_millis(250);
const LOG_TAIL_LINES: usize = 15;

fn shown(dir: &Path) -> String {
    dir.display().to_string()
}

fn other(dir: &Path, message: String) -> RigError {
    RigError::Other { dir: shown(dir), message }
}

/// The gateway of the rig's subnet (the bridge's address), from a member's address.
fn gateway(st: &RigState) -> Result<Ipv4Addr, RigError> {
    let ip: Ipv4Addr = st
        .members
        .first()
        .and_then(|m| m.ip.parse().ok())
        .ok_or_else(|| other(&st.dir, "kube mode: the rig has no member address".into()))?;
    let o = ip.octets();
    Ok(Ipv4Addr::new(o[0], o[1], o[2], 1))
}

/// `BIN --version` → `v1.26.3`; None when it cannot be run or says nothing recognisable.
async fn version_of(bin: &Path) -> Option<String> {
    let out =
        tokio::time::timeout(Duration::from_secs(10), tokio::process::Command::new(bin).arg("--version").output())
            .await
            .ok()?
            .ok()?;
    super::parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// Writes the PKI, the kubeconfigs and HAProxy's configuration, and computes every host's
/// command line; nothing is started. The rig must run its members in network namespaces.
pub async fn plan(st: &RigState, bins: &Binaries) -> Result<KubeRigState, RigError> {
    if st.isolation != Isolation::Netns {
        return Err(RigError::KubeNeedsNetns { dir: shown(&st.dir) });
    }
    let dir = &st.dir;
    let pki_err = |source| RigError::Pki { dir: shown(dir), source };
    let ip = net::which("ip").ok_or_else(|| RigError::NetnsUnavailable { dir: shown(dir) })?;
    let unshare =
        net::which("unshare").ok_or_else(|| other(dir, "kube mode needs util-linux's unshare on PATH".into()))?;
    let dirs = KubeDirs::new(dir);
    let absent = bins.absent();
    let places = super::places(gateway(st)?, &absent.iter().map(|a| a.role).collect::<Vec<_>>());
    let lb = places.iter().find(|p| p.role == Role::LoadBalancer).expect("places has a load balancer");
    let of = |r: Role| places.iter().filter(move |p| p.role == r);
    let apiservers: Vec<(String, Ipv4Addr)> = of(Role::Apiserver).map(|p| (p.name.clone(), p.address)).collect();

    for d in std::iter::once(dirs.dir.clone()).chain(places.iter().map(|p| dirs.host_dir(&p.name))) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(|source| RigError::Io {
            dir: shown(dir),
            what: "create",
            path: shown(&d),
            source,
        })?;
    }
    let kpki = pki::KubePki::new(&dirs.pki);
    let spec = pki::PkiSpec {
        apiservers: apiservers.clone(),
        lb: lb.address,
        health_servers: places
            .iter()
            .filter(|p| matches!(p.role, Role::ControllerManager | Role::Scheduler))
            .map(|p| (p.name.clone(), p.address))
            .collect(),
    };
    let etcd_pki = st.pki();
    let ids = pki::create(&kpki, (&etcd_pki.ca_cert(), &etcd_pki.ca_key()), &spec).map_err(pki_err)?;
    let server = format!("https://{}:{}", lb.address, super::LB_PORT);
    let (admin, cm, sched) =
        (dirs.kubeconfig("admin"), dirs.kubeconfig("controller-manager"), dirs.kubeconfig("scheduler"));
    kubeconfig::write(&admin, &server, &ids.ca_pem, pki::ADMIN_CN, &ids.admin).map_err(pki_err)?;
    kubeconfig::write(&cm, &server, &ids.ca_pem, pki::CONTROLLER_MANAGER_CN, &ids.controller_manager)
        .map_err(pki_err)?;
    kubeconfig::write(&sched, &server, &ids.ca_pem, pki::SCHEDULER_CN, &ids.scheduler).map_err(pki_err)?;

    let lb_dir = dirs.host_dir(&lb.name);
    let (haproxy_config, haproxy_socket) = (lb_dir.join("haproxy.cfg"), lb_dir.join("haproxy.sock"));
    let cfg = haproxy::config(lb.address, super::LB_PORT, &apiservers, &haproxy_socket);
    crate::rig::pki::write_file(&haproxy_config, cfg.as_bytes(), 0o644).map_err(pki_err)?;

    let layout = flags::Layout {
        pki: kpki,
        etcd_servers: st.members.iter().map(|m| m.client_url.clone()).collect(),
        service_cidr: super::SERVICE_CIDR.into(),
        controller_manager_kubeconfig: cm.clone(),
        scheduler_kubeconfig: sched.clone(),
    };
    let id = st.id();
    let mut hosts = Vec::new();
    for p in &places {
        let args = match p.role {
            // -db: foreground, no daemon (the recorded pid is HAProxy's)
            Role::LoadBalancer => vec!["-db".into(), "-f".into(), haproxy_config.display().to_string()],
            Role::Apiserver => flags::apiserver(&layout, &p.name, p.address),
            Role::ControllerManager => flags::controller_manager(&layout, &p.name, p.address),
            Role::Scheduler => flags::scheduler(&layout, &p.name, p.address),
        };
        let netns = net::netns_name(&id, &p.short);
        let bin = bins
            .of(p.role)
            .ok_or_else(|| other(dir, format!("kube mode: no {} was found for {}", p.role.program(), p.name)))?;
        let version = if p.role == Role::LoadBalancer { None } else { version_of(bin).await };
        hosts.push(KubeHost {
            name: p.name.clone(),
            role: p.role,
            argv: host::argv(&ip, &unshare, &netns, &p.name, bin, &args),
            netns,
            address: p.address.to_string(),
            port: p.role.port(),
            pid: 0,
            start_time: 0,
            log: dirs.host_dir(&p.name).join(format!("{}.log", p.role.program())),
            version,
        });
    }
    Ok(KubeRigState {
        bin_dir: bins.dir.clone(),
        pki_dir: dirs.pki.clone(),
        server,
        admin_kubeconfig: admin,
        controller_manager_kubeconfig: cm,
        scheduler_kubeconfig: sched,
        haproxy_config,
        haproxy_socket,
        service_cidr: super::SERVICE_CIDR.into(),
        hosts,
        absent,
    })
}

/// Creates every planned host's network namespace (veth to the rig's bridge, its address,
/// a default route through the bridge).
pub async fn create_hosts(st: &RigState) -> Result<(), RigError> {
    let k = st.kube.as_ref().ok_or_else(|| other(&st.dir, "kube mode is not planned".into()))?;
    let id = st.id();
    for h in &k.hosts {
        let short = h.netns.strip_prefix(&format!("{id}-")).unwrap_or(&h.netns);
        let addr: Ipv4Addr =
            h.address.parse().map_err(|_| other(&st.dir, format!("{}: bad address {}", h.name, h.address)))?;
        net::add_host(&id, short, addr).await.map_err(|source| RigError::Net { dir: shown(&st.dir), source })?;
    }
    Ok(())
}

/// Starts host `name` with its stored command and records its pid and start time in `st`
/// (the caller writes the state).
pub fn start_host(st: &mut RigState, name: &str) -> Result<(), RigError> {
    let dir = st.dir.clone();
    let h = st
        .kube
        .as_mut()
        .and_then(|k| k.hosts.iter_mut().find(|h| h.name == name))
        .ok_or_else(|| other(&dir, format!("kube mode has no host {name}")))?;
    let (pid, start) = process::spawn_detached(&h.argv, &h.log).map_err(|source| RigError::Spawn {
        dir: shown(&dir),
        member: name.into(),
        source,
    })?;
    h.pid = pid;
    h.start_time = start;
    Ok(())
}

/// The admin identity and cluster CA, read from the admin kubeconfig.
fn admin(k: &KubeRigState) -> Result<kubeconfig::Embedded, String> {
    kubeconfig::read(&k.admin_kubeconfig)
}

fn https_client(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| format!("cluster CA: {e}"))?;
    let mut b =
        reqwest::Client::builder().tls_certs_only([ca]).timeout(REQUEST_TIMEOUT).connect_timeout(REQUEST_TIMEOUT);
    if let Some((cert, key)) = identity {
        let mut pem = cert.to_vec();
        pem.extend_from_slice(key);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("admin identity: {e}"))?);
    }
    b.build().map_err(|e| format!("HTTPS client: {e}"))
}

async fn get_200(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let r = client.get(url).send().await.map_err(|e| format!("GET {url}: {}", crate::exit::chain(&e)))?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let body = r.text().await.unwrap_or_default();
    let failing: Vec<&str> = body.lines().filter(|l| l.contains("failed")).take(3).collect();
    Err(format!(
        "GET {url}: {status}{}",
        if failing.is_empty() { String::new() } else { format!(" ({})", failing.join("; ")) }
    ))
}

/// One health check of a host: HAProxy accepts on its frontend; an apiserver answers
/// `/readyz` 200 on its own address (as the admin, verified against the cluster CA); a
/// controller-manager or scheduler answers `/healthz` 200 on its own address (its serving
/// certificate is issued by the cluster CA, so it is verified too).
pub async fn check(k: &KubeRigState, h: &KubeHost) -> Result<(), String> {
    let authority = format!("{}:{}", h.address, h.port);
    match h.role {
        Role::LoadBalancer => {
            match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(&authority)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {authority}: {e}")),
                Err(_) => Err(format!("connect {authority}: no answer within {REQUEST_TIMEOUT:?}")),
            }
        }
        Role::Apiserver => {
            let a = admin(k)?;
            get_200(&https_client(&a.ca_pem, Some((&a.cert_pem, &a.key_pem)))?, &format!("https://{authority}/readyz"))
                .await
        }
        Role::ControllerManager | Role::Scheduler => {
            let a = admin(k)?;
            get_200(&https_client(&a.ca_pem, None)?, &format!("https://{authority}/healthz")).await
        }
    }
}

fn not_ready(dir: &Path, h: &KubeHost, message: String) -> RigError {
    RigError::NotReady {
        dir: shown(dir),
        message,
        log: h.log.display().to_string(),
        tail: process::tail(&h.log, LOG_TAIL_LINES),
    }
}

/// Polls [`check`] until it passes, at most `within`; the host's process exiting fails at once.
pub async fn wait_healthy(dir: &Path, k: &KubeRigState, h: &KubeHost, within: Duration) -> Result<(), RigError> {
    let end = Instant::now() + within;
    loop {
        if !proc_::alive(h.pid, h.start_time) {
            return Err(not_ready(
                dir,
                h,
                format!("{} {} (pid {}) exited while starting", h.role.program(), h.name, h.pid),
            ));
        }
        let t = Instant::now();
        let why = match check(k, h).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        tracing::debug!("{} not healthy yet ({:?}): {why}", h.name, t.elapsed());
        if Instant::now() >= end {
            return Err(not_ready(
                dir,
                h,
                format!("{} {} not healthy within {within:?}: {why}", h.role.program(), h.name),
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The API through the load balancer: `/readyz` 200 at the admin kubeconfig's server.
pub async fn wait_api_through_lb(dir: &Path, k: &KubeRigState, within: Duration) -> Result<(), RigError> {
    let lb = k.lb().ok_or_else(|| other(dir, "kube mode has no load balancer".into()))?;
    let a = admin(k).map_err(|e| other(dir, e))?;
    let client = https_client(&a.ca_pem, Some((&a.cert_pem, &a.key_pem))).map_err(|e| other(dir, e))?;
    let url = format!("{}/readyz", a.server);
    let end = Instant::now() + within;
    loop {
        if !proc_::alive(lb.pid, lb.start_time) {
            return Err(not_ready(dir, lb, format!("haproxy (pid {}) exited", lb.pid)));
        }
        let why = match get_200(&client, &url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= end {
            return Err(not_ready(
                dir,
                lb,
                format!("the API is not ready through the load balancer within {within:?}: {why}"),
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until the `kube-controller-manager` and `kube-scheduler` leases in `kube-system`
/// are held by one of the rig's hosts; a component the rig does not run (its binary was not
/// found) has no lease to wait for.
pub async fn wait_leases(dir: &Path, k: &KubeRigState, within: Duration) -> Result<(), RigError> {
    use k8s_openapi::api::coordination::v1::Lease;
    let kc = kube::config::Kubeconfig::read_from(&k.admin_kubeconfig).map_err(|e| other(dir, e.to_string()))?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| other(dir, e.to_string()))?;
    let client = kube::Client::try_from(cfg).map_err(|e| other(dir, e.to_string()))?;
    let api: kube::Api<Lease> = kube::Api::namespaced(client, "kube-system");
    let end = Instant::now() + within;
    for (lease, role) in [("kube-controller-manager", Role::ControllerManager), ("kube-scheduler", Role::Scheduler)] {
        let ours: Vec<&str> = k.of(role).map(|h| h.name.as_str()).collect();
        if ours.is_empty() {
            continue;
        }
        loop {
            let got = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(lease)).await;
            let why = match got {
                Ok(Ok(Some(l))) => match l.spec.and_then(|s| s.holder_identity) {
                    Some(h) if ours.contains(&crate::controlplane::holder_host(&h)) => break,
                    Some(h) => format!("held by {h}, not by {}", ours.join(" or ")),
                    None => "not held".into(),
                },
                Ok(Ok(None)) => "not created yet".into(),
                Ok(Err(e)) => crate::exit::chain(&e),
                Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
            };
            if Instant::now() >= end {
                let h = k.of(role).next().expect("ours is not empty");
                return Err(not_ready(dir, h, format!("lease kube-system/{lease} within {within:?}: {why}")));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    Ok(())
}

async fn start_and_wait(st: &mut RigState, role: Role, within: Duration) -> Result<(), RigError> {
    let t = Instant::now();
    let names: Vec<String> = st.kube.as_ref().map(|k| k.of(role).map(|h| h.name.clone()).collect()).unwrap_or_default();
    if names.is_empty() {
        // its binary was not found: recorded in the state as absent, nothing to start
        return Ok(());
    }
    for n in &names {
        start_host(st, n)?;
    }
    crate::rig::lifecycle::write_state(st)?;
    let k = st.kube.clone().expect("planned");
    for h in k.of(role) {
        wait_healthy(&st.dir, &k, h, within).await?;
    }
    tracing::info!("rig kube mode: {} {} healthy after {:?}", names.len(), role.program(), t.elapsed());
    Ok(())
}

/// Brings kube mode up on a running etcd rig (members healthy): plan, hosts, apiservers,
/// HAProxy, the API through it, controller-managers and schedulers, their leases (of those
/// whose binaries were found). The state
/// is written after every start, so that `down` finds every process if this fails.
pub async fn up(st: &mut RigState, bins: &Binaries) -> Result<(), RigError> {
    let t = Instant::now();
    let k = plan(st, bins).await?;
    st.kube = Some(k);
    crate::rig::lifecycle::write_state(st)?;
    tracing::info!("rig kube mode: planned (PKI, kubeconfigs, HAProxy configuration) in {:?}", t.elapsed());
    create_hosts(st).await?;
    tracing::info!("rig kube mode: host namespaces created after {:?}", t.elapsed());
    start_and_wait(st, Role::Apiserver, APISERVER_DEADLINE).await?;
    start_and_wait(st, Role::LoadBalancer, COMPONENT_DEADLINE).await?;
    let k = st.kube.clone().expect("planned");
    wait_api_through_lb(&st.dir, &k, COMPONENT_DEADLINE).await?;
    tracing::info!("rig kube mode: the API answers through the load balancer after {:?}", t.elapsed());
    start_and_wait(st, Role::ControllerManager, COMPONENT_DEADLINE).await?;
    start_and_wait(st, Role::Scheduler, COMPONENT_DEADLINE).await?;
    let k = st.kube.clone().expect("planned");
    wait_leases(&st.dir, &k, LEASE_DEADLINE).await
}

/// Starts a stopped host again with its stored command (same flags, namespaces, hostname and
/// files), records its new pid, and waits until it is healthy. A running one is left alone.
pub async fn restart_host(dir: &Path, name: &str) -> Result<(), RigError> {
    let (k, h) = {
        let _lock = crate::rig::lifecycle::lock_state(dir).await?;
        let mut st = crate::rig::status(dir)?;
        let running = st.kube.as_ref().and_then(|k| k.host(name)).map(|h| proc_::alive(h.pid, h.start_time));
        match running {
            None => return Err(other(dir, format!("kube mode has no host {name}"))),
            Some(true) => return Ok(()),
            Some(false) => {}
        }
        start_host(&mut st, name)?;
        crate::rig::lifecycle::write_state(&st)?;
        let k = st.kube.expect("checked above");
        let h = k.host(name).expect("checked above").clone();
        (k, h)
    };
    let within = if h.role == Role::Apiserver { APISERVER_DEADLINE } else { COMPONENT_DEADLINE };
    wait_healthy(dir, &k, &h, within).await
}

/// Pids (with start times) of the kube hosts recorded in the state, still running.
pub fn recorded_processes(st: &RigState) -> Vec<(i32, u64, String)> {
    st.kube
        .iter()
        .flat_map(|k| k.hosts.iter())
        .filter(|h| h.pid > 0 && proc_::alive(h.pid, h.start_time))
        .map(|h| (h.pid, h.start_time, format!("{} {} (pid {})", h.role.program(), h.name, h.pid)))
        .collect()
}
