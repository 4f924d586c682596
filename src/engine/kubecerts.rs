//! The `certs` steps on the Kubernetes side: client certificates minted with the cluster CA
//! (held in memory only) presented to every apiserver address and the load balancer; the
//! serving certificates of apiservers, load balancer, control-plane kubelets and etcd (client
//! and peer ports) read over TLS; kubeadm's `certs check-expiration` through node access; and
//! the lab fault that swaps one apiserver's serving certificate for an expired copy, with its
//! two checks. The verdicts are pure functions in [`crate::check::kube_certs`],
//! [`crate::check::certs`] and [`crate::check::kubeadm`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::seq::SliceRandom;

use super::{CaseState, RunContext, StepEnd};
use crate::check::certs::{self as windows, CertWindow};
use crate::check::{kube_certs, kubeadm, CheckOutcome};
use crate::fault::{self, Fault};
use crate::node::NodeAccess;
use crate::suite::{CheckSpec, ClientCertKind, InstancePick};
use crate::target::discovery::{self, Discovery};
use crate::target::Target;
use crate::tls::mint::{Ca, LeafSpec, Window};
use crate::tls::{self, HandshakeOutcome, Identity, ServerCertProblem};

/// Common name (and so Kubernetes user name) of every client certificate hadrill mints.
pub const PROBE_CN: &str = "hadrill-certs-probe";
/// Deadline of each TLS exchange.
const TLS_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of a command on a node.
const NODE_DEADLINE: Duration = Duration::from_secs(60);
/// kubeadm's PKI directory on a control-plane node.
pub const KUBEADM_PKI: &str = "/etc/kubernetes/pki";

/// The Kubernetes side of a target as the certs and skew steps use it.
pub struct KubeView {
    pub client: kube::Client,
    pub discovery: Discovery,
    /// The cluster CA from the kubeconfig (PEM): verifies every apiserver's certificate.
    pub ca_pem: Vec<u8>,
}

/// The client and a fresh discovery; a skip when the target has no Kubernetes API.
pub async fn kube_view(ctx: &RunContext, st: &mut CaseState) -> Result<KubeView, StepEnd> {
    let Some(k) = &ctx.target.kube else {
        return Err(StepEnd::Skip("needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()));
    };
    let client = kube::Client::try_from(k.config.clone())
        .map_err(|e| StepEnd::Error(format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e))))?;
    (ctx.progress)(&st.name, "discovering the control plane");
    let d = discovery::discover(&client, &k.server)
        .await
        .map_err(|e| StepEnd::Error(format!("cannot discover the control plane: {}", crate::exit::chain(&e))))?;
    st.timeline.record(
        "probe:kube-discovery",
        format!(
            "{} control-plane nodes, {} apiserver endpoints, server {}",
            d.nodes.len(),
            d.apiservers.len(),
            d.server
        ),
    );
    let ca_pem = match &k.config.root_cert {
        Some(ders) if !ders.is_empty() => tls::der_to_pem(ders).into_bytes(),
        _ => {
            return Err(StepEnd::Skip(format!(
                "kubeconfig {} names no certificate-authority: the cluster CA is needed to verify the apiservers",
                k.kubeconfig.display()
            )))
        }
    };
    Ok(KubeView { client, discovery: d, ca_pem })
}

/// Where the cluster CA's key can come from, without contacting anything.
fn ca_key_files(t: &Target) -> Option<(Option<PathBuf>, PathBuf)> {
    if let Some(k) = &t.kube_ca_key {
        let crt = k.with_file_name("ca.crt");
        return Some((crt.is_file().then_some(crt), k.clone()));
    }
    let rig = t.rig.as_ref()?;
    let dir = crate::controlplane::rig_kube_pki_dir(&rig.dir);
    let key = dir.join("ca.key");
    key.is_file().then(|| (Some(dir.join("ca.crt")), key))
}

/// The `kube_ca_key` precondition: a key file given or on the rig, or a Kubernetes target
/// (the key is then read from a control-plane node through node access, or the step skips
/// with the reason).
pub fn ca_key_available(t: &Target) -> Result<(), String> {
    if ca_key_files(t).is_some() || t.kube.is_some() {
        return Ok(());
    }
    Err("needs the cluster CA's key to sign test client certificates: give --kube-ca-key FILE (kubeadm: /etc/kubernetes/pki/ca.key), \
         or node access to a control-plane node, or the rig in kube mode"
        .into())
}

/// Node access per control-plane node (config, or kind detected), in node order.
pub fn node_accesses(t: &Target, d: &Discovery) -> Vec<(String, Result<NodeAccess, String>)> {
    crate::node::select::resolve_all(&t.node_access.clone().unwrap_or_default(), d)
}

/// Reads a file on a node through its access (public files only; keys go through
/// [`load_ca`], which never logs them).
async fn cat(access: &NodeAccess, client: &kube::Client, path: &str) -> Result<String, String> {
    access
        .exec_with(Some(client), &["cat", path], NODE_DEADLINE)
        .await
        .map(|o| o.stdout)
        .map_err(|e| crate::exit::chain(&e))
}

/// The cluster CA (certificate and key), from the first source that has it: the key file
/// given, the rig's kube PKI, or `/etc/kubernetes/pki/ca.{crt,key}` on a control-plane node
/// through node access. The key is held in memory only.
pub async fn load_ca(ctx: &RunContext, kv: &KubeView, st: &mut CaseState) -> Result<Ca, StepEnd> {
    let fromfile = |crt: Option<PathBuf>, key: PathBuf| -> Result<Ca, StepEnd> {
        let k = std::fs::read_to_string(&key)
            .map_err(|e| StepEnd::Error(format!("cannot read the cluster CA key {}: {e}", key.display())))?;
        let c = match &crt {
            Some(c) => std::fs::read_to_string(c)
                .map_err(|e| StepEnd::Error(format!("cannot read the cluster CA {}: {e}", c.display())))?,
            None => String::from_utf8_lossy(&kv.ca_pem).into_owned(),
        };
        Ca::from_pem(&c, &k)
            .map_err(|e| StepEnd::Error(format!("cannot sign with the cluster CA key {}: {e}", key.display())))
    };
    if let Some((crt, key)) = ca_key_files(&ctx.target) {
        st.log(format!("cluster CA key: {}", key.display()));
        return fromfile(crt, key);
    }
    let mut why = Vec::new();
    for (node, access) in node_accesses(&ctx.target, &kv.discovery) {
        let access = match access {
            Ok(a) => a,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        (ctx.progress)(&st.name, &format!("reading the cluster CA from {node} ({})", access.describe()));
        let crt = match cat(&access, &kv.client, &format!("{KUBEADM_PKI}/ca.crt")).await {
            Ok(c) => c,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        // the key: straight into memory; an error message never carries stdout
        let key =
            match access.exec_with(Some(&kv.client), &["cat", &format!("{KUBEADM_PKI}/ca.key")], NODE_DEADLINE).await {
                Ok(o) => o.stdout,
                Err(e) => {
                    why.push(crate::exit::chain(&e));
                    continue;
                }
            };
        st.log(format!("cluster CA key: {KUBEADM_PKI}/ca.key on {node} ({}), held in memory", access.describe()));
        return Ca::from_pem(&crt, &key)
            .map_err(|e| StepEnd::Error(format!("cannot sign with {KUBEADM_PKI}/ca.key of {node}: {e}")));
    }
    Err(StepEnd::Skip(format!(
        "needs the cluster CA's key to sign test client certificates: give --kube-ca-key FILE, or node access to a control-plane node ({})",
        if why.is_empty() { "no control-plane node found".to_string() } else { why.join("; ") }
    )))
}

/// Every address a client certificate is presented to: each apiserver, and the load balancer
/// when the kubeconfig server is one (not a node's own address).
pub fn api_addresses(d: &Discovery) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = d
        .apiservers
        .iter()
        .map(|a| {
            let url = a.url();
            let label = match &a.node {
                Some(n) => format!("apiserver {url} ({n})"),
                None => format!("apiserver {url}"),
            };
            (label, url)
        })
        .collect();
    if d.load_balancer.node.is_none() && !out.iter().any(|(_, u)| *u == d.load_balancer.url.trim_end_matches('/')) {
        out.push((
            format!("load balancer {}", d.load_balancer.url.trim_end_matches('/')),
            d.load_balancer.url.trim_end_matches('/').to_string(),
        ));
    }
    out
}

/// Runs one of the Kubernetes certs checks; untested addresses make it an error unless the
/// verdict already failed.
pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let (outcome, untested) = match spec {
        CheckSpec::ApiserverRefusesClientCert { kind } => refuses(ctx, *kind, st).await?,
        CheckSpec::ApiserverAcceptsControlCert => control(ctx, st).await?,
        CheckSpec::KubeServingCertsValidFor { min_days } => serving(ctx, *min_days, st).await?,
        CheckSpec::KubeadmCertsValidFor { min_days } => kubeadm_expiration(ctx, *min_days, st).await?,
        CheckSpec::ApiserverServesExpiredCert { within } => return serves_expired(ctx, *within, st).await,
        CheckSpec::ApiserverServesValidCert { within } => return serves_valid(ctx, *within, st).await,
        CheckSpec::LbRoutesAroundExpiredCert { within, window } => {
            return lb_routes_around(ctx, *within, *window, st).await
        }
        other => return Err(StepEnd::Error(format!("not a Kubernetes certs check: {other:?}"))),
    };
    super::certs::with_untested(outcome, untested)
}

async fn present(
    addrs: &[(String, String)],
    ca_pem: &[u8],
    id: Option<(&str, &str)>,
) -> Result<Vec<(String, tls::HttpAnswer)>, StepEnd> {
    let identity = || id.map(|(c, k)| Identity { cert_pem: c.as_bytes(), key_pem: k.as_bytes() });
    let answers = futures::future::join_all(
        addrs.iter().map(|(_, url)| tls::https_get(url, ca_pem, identity(), TLS_DEADLINE, kube_certs::PROBE_PATH)),
    )
    .await;
    addrs
        .iter()
        .zip(answers)
        .map(|((label, _), a)| a.map(|a| (label.clone(), a)).map_err(|e| StepEnd::Error(format!("{label}: {e}"))))
        .collect()
}

fn record(st: &mut CaseState, tried: &[(String, tls::HttpAnswer)]) {
    for (l, a) in tried {
        st.timeline.record("tls", format!("{l}: {}; HTTP {:?}", a.handshake, a.status));
        st.log(format!("{l}: {}; HTTP {:?}", a.handshake, a.status));
    }
}

async fn refuses(
    ctx: &RunContext,
    kind: ClientCertKind,
    st: &mut CaseState,
) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let kv = kube_view(ctx, st).await?;
    let addrs = api_addresses(&kv.discovery);
    if addrs.is_empty() {
        return Err(StepEnd::Error(
            "discovery found no apiserver address (the `kubernetes` EndpointSlice is empty)".into(),
        ));
    }
    if kind == ClientCertKind::Missing {
        (ctx.progress)(&st.name, &format!("requests without a client certificate to {} address(es)", addrs.len()));
        let tried = present(&addrs, &kv.ca_pem, None).await?;
        record(st, &tried);
        return Ok(kube_certs::refuses_client_cert(kind, None, &tried));
    }
    let ca = load_ca(ctx, &kv, st).await?;
    let now = Utc::now();
    let minted = match kind {
        ClientCertKind::Expired => ca.issue(&LeafSpec::client(PROBE_CN, Window::Expired, now)),
        ClientCertKind::NotYetValid => ca.issue(&LeafSpec::client(PROBE_CN, Window::NotYetValid, now)),
        _ => ca.impostor().and_then(|i| i.issue(&LeafSpec::client(PROBE_CN, Window::Valid, now))),
    }
    .map_err(|e| StepEnd::Error(format!("cannot mint the test certificate: {e}")))?;
    let w = windows::window_pem(&minted.cert_pem).map_err(|e| StepEnd::Error(e.to_string()))?;
    st.log(format!("minted: {}", windows::describe_window(&w)));
    (ctx.progress)(&st.name, &format!("presenting the certificate to {} address(es)", addrs.len()));
    let tried = present(&addrs, &kv.ca_pem, Some((&minted.cert_pem, &minted.key_pem))).await?;
    record(st, &tried);
    Ok(kube_certs::refuses_client_cert(kind, Some(&w), &tried))
}

async fn control(ctx: &RunContext, st: &mut CaseState) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let kv = kube_view(ctx, st).await?;
    let addrs = api_addresses(&kv.discovery);
    if addrs.is_empty() {
        return Err(StepEnd::Error(
            "discovery found no apiserver address (the `kubernetes` EndpointSlice is empty)".into(),
        ));
    }
    let ca = load_ca(ctx, &kv, st).await?;
    let minted = ca
        .issue(&LeafSpec::client(PROBE_CN, Window::Valid, Utc::now()))
        .map_err(|e| StepEnd::Error(format!("cannot mint the control certificate: {e}")))?;
    let w = windows::window_pem(&minted.cert_pem).map_err(|e| StepEnd::Error(e.to_string()))?;
    st.log(format!("minted the control certificate: {}", windows::describe_window(&w)));
    let tried = present(&addrs, &kv.ca_pem, Some((&minted.cert_pem, &minted.key_pem))).await?;
    record(st, &tried);
    Ok(kube_certs::accepts_control_cert(PROBE_CN, &w, &tried))
}

/// `https://host:port` with `port` replaced.
fn with_port(url: &str, port: u16) -> Option<String> {
    let (host, _) = discovery::host_port(url)?;
    Some(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    })
}

/// Every serving endpoint the expiry check reads, labelled: apiservers, load balancer,
/// control-plane kubelets, etcd client and peer ports (from the target's etcd, else the etcd
/// static pods' flags).
pub fn serving_endpoints(d: &Discovery, etcd_clients: &[String], etcd_peers: &[String]) -> Vec<(String, String)> {
    let mut out = api_addresses(d);
    for n in &d.nodes {
        if let Some(ip) = n.internal_ip() {
            if let Some(u) = with_port(&format!("https://{ip}:10250"), 10250) {
                out.push((format!("kubelet {u} ({})", n.name), u));
            }
        }
    }
    let clients: Vec<String> = if etcd_clients.is_empty() { d.etcd.endpoints.clone() } else { etcd_clients.to_vec() };
    for c in clients.iter().filter(|c| c.starts_with("https://")) {
        out.push((format!("etcd client {c}"), c.trim_end_matches('/').to_string()));
    }
    let mut peers: Vec<String> = etcd_peers.to_vec();
    if peers.is_empty() {
        for p in d.static_pods.iter().filter(|p| p.component == "etcd") {
            if let Some(u) = p.flag("initial-advertise-peer-urls") {
                peers.extend(u.split(',').map(str::to_string));
            }
        }
    }
    for p in peers.iter().filter(|p| p.starts_with("https://")) {
        out.push((format!("etcd peer {p}"), p.trim_end_matches('/').to_string()));
    }
    out
}

/// The peer URLs of the target's etcd members (member list), when the target has etcd.
pub async fn etcd_peer_urls(ctx: &RunContext) -> Result<Vec<String>, String> {
    let Some(etcd) = &ctx.target.etcd else {
        return Ok(vec![]);
    };
    let req = async {
        let mut c = etcd.cluster_client(false).await.map_err(|e| e.to_string())?;
        let l = c.member_list().await.map_err(|e| crate::target::etcd::describe(&e))?;
        Ok::<_, String>(l.members().iter().flat_map(|m| m.peer_urls().to_vec()).collect())
    };
    tokio::time::timeout(etcd.connect_timeout + etcd.request_timeout, req)
        .await
        .unwrap_or_else(|_| Err("etcd member list: no answer in time".into()))
}

async fn read_windows(
    endpoints: &[(String, String)],
    ca_pem: Option<&[u8]>,
    st: &mut CaseState,
) -> Vec<(String, Result<CertWindow, String>)> {
    let chains =
        futures::future::join_all(endpoints.iter().map(|(_, u)| tls::peer_chain(u, ca_pem, TLS_DEADLINE))).await;
    let mut read = Vec::new();
    for ((label, _), c) in endpoints.iter().zip(chains) {
        let r = match c {
            Ok(chain) => {
                if let Some(Err(p)) = &chain.verified {
                    st.log(format!("{label}: its certificate does not verify against the cluster CA: {p}"));
                }
                windows::window(&chain.certs[0]).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        read.push((label.clone(), r));
    }
    read
}

async fn serving(ctx: &RunContext, min_days: i64, st: &mut CaseState) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let kv = kube_view(ctx, st).await?;
    let clients = ctx.target.etcd.as_ref().map(|e| e.endpoints.clone()).unwrap_or_default();
    let peers = match etcd_peer_urls(ctx).await {
        Ok(p) => p,
        Err(e) => {
            st.log(format!("etcd peer URLs not read ({e}); using the etcd static pods' flags"));
            vec![]
        }
    };
    let eps = serving_endpoints(&kv.discovery, &clients, &peers);
    (ctx.progress)(&st.name, &format!("reading {} serving certificate(s)", eps.len()));
    let read = read_windows(&eps, Some(&kv.ca_pem), st).await;
    Ok(windows::serving_windows("kube_serving_certs_valid_for", "serving_cert_days_left", &read, Utc::now(), min_days))
}

/// The etcd peer-port part of `etcd_serving_cert_valid_for { peers: true }`.
pub async fn etcd_peer_windows(
    ctx: &RunContext,
    ca_pem: &[u8],
    st: &mut CaseState,
) -> Result<Vec<(String, Result<CertWindow, String>)>, StepEnd> {
    let peers = etcd_peer_urls(ctx)
        .await
        .map_err(|e| StepEnd::Error(format!("cannot list the etcd members' peer URLs: {e}")))?;
    let mut eps = Vec::new();
    for p in &peers {
        if p.starts_with("https://") {
            eps.push((format!("etcd peer {p}"), p.trim_end_matches('/').to_string()));
        } else {
            st.log(format!("etcd peer {p}: plain http, no certificate to read"));
        }
    }
    Ok(read_windows(&eps, Some(ca_pem), st).await)
}

/// Skips with the reason when the target cannot run kubeadm (the rig runs none).
pub fn needs_kubeadm(t: &Target) -> Result<(), StepEnd> {
    if t.rig.is_some() {
        return Err(StepEnd::Skip("needs kubeadm: the rig runs none".into()));
    }
    Ok(())
}

async fn kubeadm_expiration(
    ctx: &RunContext,
    min_days: i64,
    st: &mut CaseState,
) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    needs_kubeadm(&ctx.target)?;
    let kv = kube_view(ctx, st).await?;
    let mut per_node = Vec::new();
    let mut no_access = Vec::new();
    for (node, access) in node_accesses(&ctx.target, &kv.discovery) {
        let access = match access {
            Ok(a) => a,
            Err(e) => {
                no_access.push(e);
                continue;
            }
        };
        (ctx.progress)(&st.name, &format!("kubeadm certs check-expiration on {node}"));
        let r = access
            .exec_with(Some(&kv.client), &["kubeadm", "certs", "check-expiration"], NODE_DEADLINE)
            .await
            .map_err(|e| crate::exit::chain(&e))
            .and_then(|o| kubeadm::parse_check_expiration(&o.stdout).map_err(|e| e.to_string()));
        st.log(format!(
            "{node}: {}",
            match &r {
                Ok(rows) => format!("{} rows", rows.len()),
                Err(e) => e.clone(),
            }
        ));
        per_node.push((node, r));
    }
    if per_node.is_empty() {
        return Err(StepEnd::Skip(format!(
            "needs node access to the control-plane nodes to run `kubeadm certs check-expiration` ({})",
            if no_access.is_empty() { "no control-plane node found".into() } else { no_access.join("; ") }
        )));
    }
    // nodes that could not be reached are untested: a pass on one node of three must not
    // read as "every control-plane node"
    let (outcome, mut untested) = kubeadm::expiration_verdict(&per_node, Utc::now(), min_days);
    untested.extend(no_access.into_iter().map(|e| format!("not checked: {e}")));
    Ok((outcome, untested))
}

// ---------------------------------------------------------------------------------------
// The lab fault: one apiserver's serving certificate swapped for an expired copy
// ---------------------------------------------------------------------------------------

/// Resolves `apiserver_cert_expired { pick }` into a fault: picks the apiserver, reads its
/// serving certificate through node access, re-signs it expired with the cluster CA.
/// The chosen apiserver's URL is left in `st.faulted_members` for the checks that follow.
pub async fn inject_expired_cert(ctx: &RunContext, pick: InstancePick, st: &mut CaseState) -> Result<(), StepEnd> {
    let kv = kube_view(ctx, st).await?;
    // the rig runs no kubelet, so no Node maps an apiserver address to its host: its own
    // state does (each apiserver a host with its own address and hostname)
    let rig_hosts: Vec<(String, String)> = ctx
        .target
        .rig
        .as_ref()
        .map(|r| {
            crate::controlplane::ControlPlane::from_rig(r)
                .of(crate::controlplane::Component::Apiserver)
                .into_iter()
                .filter_map(|i| Some((i.address.clone()?, i.host.clone())))
                .collect()
        })
        .unwrap_or_default();
    let mut candidates: Vec<_> = kv
        .discovery
        .apiservers
        .iter()
        .cloned()
        .map(|mut a| {
            if a.node.is_none() {
                a.node = rig_hosts.iter().find(|(addr, _)| *addr == a.address).map(|(_, h)| h.clone());
            }
            a
        })
        .filter(|a| a.node.is_some())
        .collect();
    candidates.sort_by(|a, b| a.node.cmp(&b.node));
    let chosen = match pick {
        InstancePick::Any => {
            candidates.shuffle(&mut st.rng);
            candidates.into_iter().next()
        }
        InstancePick::LeaderOf(c) => {
            let lease = c.lease().ok_or_else(|| StepEnd::Error(format!("{c:?} elects no leader")))?;
            let holder = kv.discovery.leases.iter().find(|l| l.name == lease).and_then(|l| l.holder_node.clone());
            candidates.into_iter().find(|a| a.node.is_some() && a.node == holder)
        }
        InstancePick::Leader | InstancePick::NotLeader => {
            return Err(StepEnd::Error("apiservers elect no leader: pick `any` or `leader_of: <component>`".into()))
        }
    };
    let Some(api) = chosen else {
        return Err(StepEnd::Error(
            "no apiserver endpoint maps to a control-plane node: cannot place the fault".into(),
        ));
    };
    let node = api.node.clone().unwrap_or_default();
    let token = format!("{:08x}", rand::random::<u32>());
    let (access, pki_dir, backup_dir) = match &ctx.target.rig {
        // each rig apiserver keeps its serving certificate in its own directory, as each
        // kubeadm node in /etc/kubernetes/pki
        Some(rig) => (
            NodeAccess::Local { netns: None },
            crate::rig::kube::pki::KubePki::new(crate::controlplane::rig_kube_pki_dir(&rig.dir)).host_dir(&node),
            rig.dir.join(format!("hadrill-cert-backup-{token}")),
        ),
        None => {
            let access = node_accesses(&ctx.target, &kv.discovery)
                .into_iter()
                .find(|(n, _)| *n == node)
                .map(|(_, a)| a)
                .unwrap_or_else(|| Err(format!("{node} is not a discovered control-plane node")))
                .map_err(|e| StepEnd::Skip(format!("needs node access to {node}: {e}")))?;
            (access, PathBuf::from(KUBEADM_PKI), PathBuf::from(format!("/var/lib/hadrill/cert-backup-{token}")))
        }
    };
    if matches!(access, NodeAccess::Pod { .. }) {
        // its revert must work from the ledger alone, without a Kubernetes client (recover)
        return Err(StepEnd::Skip(format!(
            "the expired-certificate lab needs docker or ssh node access to {node} (pod access needs the API, and the revert must work without it)"
        )));
    }
    let ca = load_ca(ctx, &kv, st).await?;
    let original = cat(&access, &kv.client, &pki_dir.join("apiserver.crt").display().to_string())
        .await
        .map_err(|e| StepEnd::Error(format!("cannot read the apiserver certificate on {node}: {e}")))?;
    let (nb, na) = Window::Expired.bounds(Utc::now());
    let expired = ca
        .reissue(&original, nb, na)
        .map_err(|e| StepEnd::Error(format!("cannot re-sign the apiserver certificate of {node}: {e}")))?;
    let f = Fault::ApiserverCertSwap {
        node: node.clone(),
        access,
        pki_dir,
        backup_dir,
        expired_cert_pem: expired.cert_pem,
        not_after: expired.not_after.timestamp(),
    };
    (ctx.progress)(&st.name, &format!("injecting: {}", f.describe()));
    st.timeline.record("fault", format!("injecting: {}", f.describe()));
    let g = fault::inject(&ctx.ledger, f).await.map_err(|e| StepEnd::Error(crate::exit::chain(&e)))?;
    st.last_fault_at = Some(Instant::now());
    st.timeline.record("fault", format!("injected: {}", g.description()));
    st.log(format!("injected: {}", g.description()));
    st.guards.push(g);
    // what the lab's checks need, kept so that they need no discovery through a load balancer
    // that may route them to the apiserver now serving an expired certificate
    st.faulted_members = vec![
        api.url(),
        match &kv.discovery.load_balancer.node {
            None => format!("lb={}", kv.discovery.load_balancer.url.trim_end_matches('/')),
            Some(n) => format!("lb-node={n} {}", kv.discovery.load_balancer.url),
        },
    ];
    Ok(())
}

/// Whether a direct handshake outcome says the server's certificate has expired.
pub fn is_expired(o: &HandshakeOutcome) -> bool {
    matches!(o, HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { .. }))
}

/// The cluster CA from the kubeconfig alone (no request).
fn kubeconfig_ca(ctx: &RunContext) -> Result<Vec<u8>, StepEnd> {
    let Some(k) = &ctx.target.kube else {
        return Err(StepEnd::Skip("needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()));
    };
    match &k.config.root_cert {
        Some(ders) if !ders.is_empty() => Ok(tls::der_to_pem(ders).into_bytes()),
        _ => Err(StepEnd::Skip(format!("kubeconfig {} names no certificate-authority", k.kubeconfig.display()))),
    }
}

/// The load balancer the lab fault recorded: Ok(url), or Err(why there is none).
fn faulted_lb(st: &CaseState) -> Result<Result<String, String>, StepEnd> {
    for m in &st.faulted_members {
        if let Some(u) = m.strip_prefix("lb=") {
            return Ok(Ok(u.to_string()));
        }
        if let Some(rest) = m.strip_prefix("lb-node=") {
            let (node, url) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(Err(format!(
                "the kubeconfig server {url} is the address of node {node}: there is no load balancer to route around the expired certificate"
            )));
        }
    }
    Err(StepEnd::Error("no apiserver_cert_expired fault was injected before this check".into()))
}

fn faulted_apiserver(st: &CaseState) -> Result<String, StepEnd> {
    st.faulted_members
        .iter()
        .find(|m| m.starts_with("https://"))
        .cloned()
        .ok_or_else(|| StepEnd::Error("no apiserver_cert_expired fault was injected before this check".into()))
}

async fn serves_expired(ctx: &RunContext, within: Duration, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    const N: &str = "apiserver_serves_expired_cert";
    let url = faulted_apiserver(st)?;
    let ca_pem = kubeconfig_ca(ctx)?;
    (ctx.progress)(
        &st.name,
        &format!("waiting up to {} for {url} to serve the expired certificate", humantime::format_duration(within)),
    );
    let t0 = Instant::now();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = {
        let last = last.clone();
        let ca = ca_pem.clone();
        let url = url.clone();
        super::poll(within, Duration::from_millis(500), move || {
            let (last, ca, url) = (last.clone(), ca.clone(), url.clone());
            async move {
                let o = tls::handshake(&url, &ca, None, TLS_DEADLINE).await.ok()?;
                let hit = is_expired(&o);
                *last.lock().ok()? = Some(o.clone());
                hit.then_some(o)
            }
        })
        .await
    };
    let last = last.lock().ok().and_then(|l| l.clone());
    Ok(match seen {
        Some(o) => {
            let after = t0.elapsed();
            st.timeline.record("tls", format!("{url}: {o}"));
            CheckOutcome::pass(N, format!("{url}: {o} (rustls CertificateError::Expired), {:.1}s after this check began", after.as_secs_f64()))
                .with_measurement(crate::report::Measurement::new("expired_cert_served_after_seconds", after.as_secs_f64(), "s"))
        }
        None => CheckOutcome::fail(
            N,
            format!(
                "{url} still served a certificate we accept {} after its file was replaced by an expired one (last: {}): the apiserver did not reload its serving certificate",
                humantime::format_duration(within),
                last.map(|o| o.to_string()).unwrap_or_else(|| "no answer".into())
            ),
        ),
    })
}

async fn serves_valid(ctx: &RunContext, within: Duration, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    const N: &str = "apiserver_serves_valid_cert";
    let url = faulted_apiserver(st)?;
    let ca_pem = kubeconfig_ca(ctx)?;
    (ctx.progress)(
        &st.name,
        &format!("waiting up to {} for {url} to serve its restored certificate", humantime::format_duration(within)),
    );
    let t0 = Instant::now();
    let ca = ca_pem.clone();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = {
        let (last, url) = (last.clone(), url.clone());
        super::poll(within, Duration::from_millis(500), move || {
            let (last, ca, url) = (last.clone(), ca.clone(), url.clone());
            async move {
                let o = tls::handshake(&url, &ca, None, TLS_DEADLINE).await.ok()?;
                let ok = o.is_accepted();
                *last.lock().ok()? = Some(o);
                ok.then_some(())
            }
        })
        .await
    };
    let last = last.lock().ok().and_then(|l| l.clone());
    Ok(match seen {
        Some(()) => CheckOutcome::pass(
            N,
            format!("{url} serves a certificate that verifies again, {:.1}s after the restore", t0.elapsed().as_secs_f64()),
        ),
        None => CheckOutcome::fail(
            N,
            format!(
                "{url} did not serve a valid certificate within {} of the restore (last: {}): check apiserver.crt on its node",
                humantime::format_duration(within),
                last.map(|o| o.to_string()).unwrap_or_else(|| "no answer".into())
            ),
        ),
    })
}

async fn lb_routes_around(
    ctx: &RunContext,
    within: Duration,
    window: Duration,
    st: &mut CaseState,
) -> Result<CheckOutcome, StepEnd> {
    let backend = faulted_apiserver(st)?;
    let lb = faulted_lb(st)?.map_err(StepEnd::Skip)?;
    let ca_pem = kubeconfig_ca(ctx)?;
    let total = within + window;
    (ctx.progress)(&st.name, &format!("requests through {lb} for {}", humantime::format_duration(total)));
    let samples = crate::probe::lb::sample(&lb, &ca_pem, total, |f| {
        st.timeline.record("probe:lb", format!("{:.2}s FAILED {}", f.at, f.what))
    })
    .await;
    Ok(kube_certs::lb_verdict(&lb, &backend, &samples, within.as_secs_f64(), window.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::discovery::tests::fixture_discovery;

    #[test]
    fn addresses_and_serving_endpoints_of_a_stacked_kubeadm_cluster() {
        let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
        let addrs = api_addresses(&d);
        assert!(addrs.iter().any(|(l, _)| l.starts_with("load balancer https://10.0.0.10:6443")), "{addrs:?}");
        assert!(addrs.iter().filter(|(l, _)| l.starts_with("apiserver ")).count() == 3, "{addrs:?}");
        let eps = serving_endpoints(&d, &[], &[]);
        let labels: Vec<&str> = eps.iter().map(|(l, _)| l.as_str()).collect();
        assert!(
            labels.iter().filter(|l| l.starts_with("kubelet https://") && l.contains(":10250")).count() == 3,
            "{labels:?}"
        );
        assert!(labels.iter().any(|l| l.starts_with("etcd client https://")), "{labels:?}");
        assert!(labels.iter().any(|l| l.starts_with("etcd peer https://") && l.contains(":2380")), "{labels:?}");
        // a kubeconfig that points at one node: no load balancer entry
        let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.12:6443");
        assert!(!api_addresses(&d).iter().any(|(l, _)| l.starts_with("load balancer")));
    }

    #[test]
    fn where_the_cluster_ca_key_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Target::default();
        let e = ca_key_available(&t).unwrap_err();
        assert!(e.contains("--kube-ca-key") && e.contains("node access"), "{e}");
        // a Kubernetes target: the step reads it through node access (or skips saying why)
        assert!(needs_kubeadm(&t).is_ok());
        // the rig's kube PKI, kubeadm layout
        let rig = crate::rig::RigState {
            dir: dir.path().to_path_buf(),
            isolation: crate::rig::Isolation::Loopback,
            members: vec![],
            ca_cert: dir.path().join("pki/ca.crt"),
            client_cert: dir.path().join("pki/c.crt"),
            client_key: dir.path().join("pki/c.key"),
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
            kube: None,
        };
        t.rig = Some(rig);
        assert!(ca_key_available(&t).is_err(), "no pki/kube/ca.key yet");
        assert!(matches!(needs_kubeadm(&t), Err(StepEnd::Skip(m)) if m == "needs kubeadm: the rig runs none"));
        let pki = crate::controlplane::rig_kube_pki_dir(dir.path());
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("ca.key"), "k").unwrap();
        assert!(ca_key_available(&t).is_ok());
        assert_eq!(ca_key_files(&t), Some((Some(pki.join("ca.crt")), pki.join("ca.key"))));
        // --kube-ca-key wins; its ca.crt beside it is used when present
        t.kube_ca_key = Some(dir.path().join("given/ca.key"));
        assert_eq!(ca_key_files(&t), Some((None, dir.path().join("given/ca.key"))));
    }

    #[test]
    fn expired_outcome_is_recognised() {
        assert!(is_expired(&HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { not_after: Some(0) })));
        assert!(!is_expired(&HandshakeOutcome::RefusedServerCert(ServerCertProblem::UnknownIssuer)));
    }
}
