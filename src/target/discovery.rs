//! Discovery of a Kubernetes control plane through its API: control-plane nodes, each
//! apiserver's own address, the static control-plane pods and their flags, the etcd topology
//! and client TLS paths, the controller-manager and scheduler leases, and the load balancer.
//!
//! Read-only: list and get only. Every request has its own deadline. The result is a typed
//! [`Discovery`] that checks and `plan` consume as pure data.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::Client;
use serde::Serialize;

/// The label every control-plane node carries (kubeadm, kind, most distributions).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The lease names of the leader-elected control-plane components, in kube-system.
pub const LEASES: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];
/// The deadline of each discovery request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "{verb} {resource} ({scope}) is forbidden for these credentials: grant `{verb}` on `{resource}` in API group \"{group}\" (docs/targets.md has the ClusterRole): {message}"
    )]
    Forbidden { verb: &'static str, resource: &'static str, group: &'static str, scope: &'static str, message: String },
    #[error("{verb} {resource} ({scope}): the API refused the credentials (401): {message}")]
    Unauthorized { verb: &'static str, resource: &'static str, scope: &'static str, message: String },
    #[error("{verb} {resource} ({scope}): no answer within {timeout:?}")]
    Timeout { verb: &'static str, resource: &'static str, scope: &'static str, timeout: Duration },
    #[error("{verb} {resource} ({scope}): {source}")]
    Request {
        verb: &'static str,
        resource: &'static str,
        scope: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("read the API server version: {0}")]
    Version(String),
    #[error("build a client from kubeconfig {path}: {message}")]
    Client { path: String, message: String },
}

impl DiscoveryError {
    /// Whether the error is about permissions (a configuration problem, exit 2) rather than
    /// reachability (exit 3).
    pub fn is_permission(&self) -> bool {
        matches!(self, DiscoveryError::Forbidden { .. } | DiscoveryError::Unauthorized { .. })
    }
}

/// Everything discovery found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovery {
    /// The kubeconfig server, as given.
    pub server: String,
    /// `gitVersion` of the apiserver that answered `/version` through the server.
    pub server_version: Option<String>,
    /// Control-plane nodes, sorted by name.
    pub nodes: Vec<ControlPlaneNode>,
    /// Each apiserver's own address, from the EndpointSlices of `default/kubernetes`.
    pub apiservers: Vec<ApiserverEndpoint>,
    /// Static control-plane pods (kube-system, tier=control-plane), sorted by node, component.
    pub static_pods: Vec<StaticPod>,
    pub etcd: EtcdDiscovery,
    /// The controller-manager and scheduler leases, in [`LEASES`] order.
    pub leases: Vec<LeaseInfo>,
    pub load_balancer: LoadBalancer,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlPlaneNode {
    pub name: String,
    /// (type, address) in the order the node reports them.
    pub addresses: Vec<(String, String)>,
    /// The Ready condition: Some(true) "True", Some(false) "False", None "Unknown" or absent.
    pub ready: Option<bool>,
    pub ready_since: Option<DateTime<Utc>>,
    pub kubelet_version: String,
    pub provider_id: Option<String>,
}

impl ControlPlaneNode {
    /// The first InternalIP (else ExternalIP), the address node access uses by default.
    pub fn internal_ip(&self) -> Option<&str> {
        let by = |t: &str| self.addresses.iter().find(|(k, _)| k == t).map(|(_, a)| a.as_str());
        by("InternalIP").or_else(|| by("ExternalIP"))
    }

    /// Whether `host` (an IP or a name) is one of the node's addresses.
    pub fn has_address(&self, host: &str) -> bool {
        self.addresses.iter().any(|(_, a)| same_host(a, host))
    }

    /// kind nodes carry a providerID `kind://docker/<cluster>/<node>`.
    pub fn is_kind_docker(&self) -> bool {
        self.provider_id.as_deref().is_some_and(|p| p.starts_with("kind://docker/"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiserverEndpoint {
    pub address: String,
    pub port: u16,
    /// The endpoint's `conditions.ready` (absent means ready, per the API).
    pub ready: bool,
    /// The control-plane node with this address, when one has it.
    pub node: Option<String>,
}

impl ApiserverEndpoint {
    pub fn url(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("https://[{}]:{}", self.address, self.port),
            _ => format!("https://{}:{}", self.address, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticPod {
    pub name: String,
    pub node: String,
    /// The `component` label: kube-apiserver, kube-controller-manager, kube-scheduler, etcd.
    pub component: String,
    pub image: String,
    /// Every container of the pod is ready.
    pub ready: bool,
    pub phase: String,
    /// `--key=value` flags of the first container's command and args, in order.
    pub flags: IndexMap<String, String>,
}

impl StaticPod {
    pub fn flag(&self, key: &str) -> Option<&str> {
        self.flags.get(key).map(|s| s.as_str())
    }
}

/// Where etcd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdTopologyKind {
    /// etcd static pods on the control-plane nodes.
    Stacked,
    /// No etcd pods; the apiservers name non-local `--etcd-servers`.
    External,
    /// Neither could be established (no apiserver pods to read, or local servers without pods).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EtcdDiscovery {
    pub topology: EtcdTopologyKind,
    /// Client URLs hadrill should use: each stacked member's advertised client URL, or the
    /// external servers.
    pub endpoints: Vec<String>,
    /// Stacked members: (node, pod name, member name) in node order.
    pub members: Vec<(String, String, String)>,
    /// The apiservers' `--etcd-servers`, deduplicated, in the order found.
    pub apiserver_etcd_servers: Vec<String>,
    /// The client TLS files the apiserver uses, to be read through node access.
    pub client_tls: Option<EtcdClientFiles>,
    /// Why the topology is what it is, one line.
    pub reason: String,
}

/// Paths on a control-plane node (not on this machine).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EtcdClientFiles {
    /// The node whose apiserver names these files.
    pub node: String,
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    /// False when the lease does not exist (404).
    pub exists: bool,
    pub holder: Option<String>,
    /// The node part of a `node_uuid` holder identity.
    pub holder_node: Option<String>,
    pub renew_time: Option<DateTime<Utc>>,
    pub acquire_time: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub transitions: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadBalancer {
    /// The kubeconfig server URL.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The control-plane node that has the server's host as an address: then there is no
    /// load balancer, only that node.
    pub node: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------

/// Parses `--key=value` (and bare `--flag` as "true") from a command line; the first word
/// (the binary) and anything not starting with `--` are ignored. Later flags win.
pub fn parse_flags<'a>(argv: impl IntoIterator<Item = &'a String>) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    for a in argv {
        let Some(rest) = a.strip_prefix("--") else { continue };
        if rest.is_empty() {
            continue;
        }
        match rest.split_once('=') {
            Some((k, v)) => out.insert(k.to_string(), v.to_string()),
            None => out.insert(rest.to_string(), "true".to_string()),
        };
    }
    out
}

/// Splits a URL into (host, port), brackets removed from IPv6 hosts. The port defaults to 443
/// for https and 80 for http.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map(|(_, a)| a).unwrap_or(authority);
    let default = if scheme.eq_ignore_ascii_case("http") { 80 } else { 443 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
    .filter(|(h, _)| !h.is_empty())
}

fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn is_loopback_url(url: &str) -> bool {
    match host_port(url) {
        Some((h, _)) => h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn split_urls(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Derives the etcd topology from the static pods (pure).
pub fn etcd_topology(pods: &[StaticPod]) -> EtcdDiscovery {
    let apiservers: Vec<&StaticPod> = pods.iter().filter(|p| p.component == "kube-apiserver").collect();
    let mut servers: Vec<String> = Vec::new();
    for a in &apiservers {
        for u in a.flag("etcd-servers").map(split_urls).unwrap_or_default() {
            if !servers.contains(&u) {
                servers.push(u);
            }
        }
    }
    let client_tls = apiservers.iter().find_map(|a| {
        Some(EtcdClientFiles {
            node: a.node.clone(),
            ca: a.flag("etcd-cafile")?.to_string(),
            cert: a.flag("etcd-certfile").map(str::to_string),
            key: a.flag("etcd-keyfile").map(str::to_string),
        })
    });
    let etcd_pods: Vec<&StaticPod> = pods.iter().filter(|p| p.component == "etcd").collect();
    if !etcd_pods.is_empty() {
        let mut endpoints = Vec::new();
        let mut members = Vec::new();
        for p in &etcd_pods {
            let advertised = p.flag("advertise-client-urls").map(split_urls).unwrap_or_default();
            let listen = p.flag("listen-client-urls").map(split_urls).unwrap_or_default();
            let pick = advertised
                .iter()
                .find(|u| !is_loopback_url(u))
                .or_else(|| listen.iter().find(|u| !is_loopback_url(u)))
                .cloned();
            if let Some(u) = pick {
                if !endpoints.contains(&u) {
                    endpoints.push(u);
                }
            }
            members.push((p.node.clone(), p.name.clone(), p.flag("name").unwrap_or(&p.node).to_string()));
        }
        return EtcdDiscovery {
            topology: EtcdTopologyKind::Stacked,
            reason: format!("{} etcd static pod(s) on the control-plane nodes", etcd_pods.len()),
            endpoints,
            members,
            apiserver_etcd_servers: servers,
            client_tls,
        };
    }
    if apiservers.is_empty() {
        return EtcdDiscovery {
            topology: EtcdTopologyKind::Unknown,
            reason: "no etcd and no kube-apiserver static pods in kube-system (not a kubeadm-style control plane?)"
                .into(),
            endpoints: vec![],
            members: vec![],
            apiserver_etcd_servers: servers,
            client_tls,
        };
    }
    let remote: Vec<String> = servers.iter().filter(|u| !is_loopback_url(u)).cloned().collect();
    if remote.is_empty() {
        return EtcdDiscovery {
            topology: EtcdTopologyKind::Unknown,
            reason: format!(
                "the apiservers use local etcd ({}) but no etcd static pod was found: etcd runs outside Kubernetes on the nodes",
                servers.join(",")
            ),
            endpoints: vec![],
            members: vec![],
            apiserver_etcd_servers: servers,
            client_tls,
        };
    }
    EtcdDiscovery {
        topology: EtcdTopologyKind::External,
        reason: format!("no etcd static pods; the apiservers' --etcd-servers name {} external member(s)", remote.len()),
        endpoints: remote,
        members: vec![],
        apiserver_etcd_servers: servers,
        client_tls,
    }
}

fn to_chrono(ts: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
}

fn node_info(n: &Node) -> ControlPlaneNode {
    let status = n.status.clone().unwrap_or_default();
    let addresses = status.addresses.unwrap_or_default().into_iter().map(|a| (a.type_, a.address)).collect::<Vec<_>>();
    let ready_cond = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Ready");
    ControlPlaneNode {
        name: n.metadata.name.clone().unwrap_or_default(),
        addresses,
        ready: ready_cond.as_ref().and_then(|c| match c.status.as_str() {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        }),
        ready_since: ready_cond.as_ref().and_then(|c| c.last_transition_time.as_ref()).and_then(|t| to_chrono(&t.0)),
        kubelet_version: status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
        provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
    }
}

fn static_pod(p: &Pod) -> Option<StaticPod> {
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let component = labels.get("component")?.clone();
    let spec = p.spec.as_ref()?;
    let c = spec.containers.first()?;
    let argv: Vec<String> =
        c.command.clone().unwrap_or_default().into_iter().chain(c.args.clone().unwrap_or_default()).collect();
    let status = p.status.clone().unwrap_or_default();
    let ready = status.container_statuses.as_ref().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|s| s.ready));
    Some(StaticPod {
        name: p.metadata.name.clone().unwrap_or_default(),
        node: spec.node_name.clone().unwrap_or_default(),
        component,
        image: c.image.clone().unwrap_or_default(),
        ready,
        phase: status.phase.unwrap_or_else(|| "Unknown".into()),
        flags: parse_flags(&argv),
    })
}

fn lease_info(name: &str, l: Option<&Lease>) -> LeaseInfo {
    let Some(spec) = l.and_then(|l| l.spec.as_ref()) else {
        return LeaseInfo {
            name: name.into(),
            exists: l.is_some(),
            holder: None,
            holder_node: None,
            renew_time: None,
            acquire_time: None,
            duration: None,
            transitions: None,
        };
    };
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    LeaseInfo {
        name: name.into(),
        exists: true,
        holder_node: holder.as_ref().map(|h| h.split_once('_').map(|(n, _)| n).unwrap_or(h).to_string()),
        holder,
        renew_time: spec.renew_time.as_ref().and_then(|t| to_chrono(&t.0)),
        acquire_time: spec.acquire_time.as_ref().and_then(|t| to_chrono(&t.0)),
        duration: spec.lease_duration_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        transitions: spec.lease_transitions,
    }
}

fn apiserver_endpoints(slices: &[EndpointSlice], nodes: &[ControlPlaneNode]) -> Vec<ApiserverEndpoint> {
    let mut out: BTreeMap<(String, u16), ApiserverEndpoint> = BTreeMap::new();
    for s in slices {
        let port = s
            .ports
            .as_ref()
            .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some("https")).or(ps.first()))
            .and_then(|p| p.port)
            .unwrap_or(6443) as u16;
        for e in s.endpoints.iter().flatten() {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for a in &e.addresses {
                let node =
                    e.node_name.clone().or_else(|| nodes.iter().find(|n| n.has_address(a)).map(|n| n.name.clone()));
                out.insert((a.clone(), port), ApiserverEndpoint { address: a.clone(), port, ready, node });
            }
        }
    }
    out.into_values().collect()
}

/// Assembles a [`Discovery`] from API objects (pure; `discover` feeds it).
pub fn assemble(
    server: &str,
    server_version: Option<String>,
    nodes: &[Node],
    slices: &[EndpointSlice],
    pods: &[Pod],
    leases: &[(String, Option<Lease>)],
) -> Discovery {
    let mut cp: Vec<ControlPlaneNode> = nodes.iter().map(node_info).collect();
    cp.sort_by(|a, b| a.name.cmp(&b.name));
    let apiservers = apiserver_endpoints(slices, &cp);
    let mut static_pods: Vec<StaticPod> = pods.iter().filter_map(static_pod).collect();
    static_pods.sort_by(|a, b| (a.node.as_str(), a.component.as_str()).cmp(&(b.node.as_str(), b.component.as_str())));
    let etcd = etcd_topology(&static_pods);
    let leases = leases.iter().map(|(n, l)| lease_info(n, l.as_ref())).collect();
    let (host, port) = host_port(server).unwrap_or_else(|| (server.to_string(), 443));
    let node = cp.iter().find(|n| n.has_address(&host)).map(|n| n.name.clone());
    Discovery {
        server: server.to_string(),
        server_version,
        nodes: cp,
        apiservers,
        static_pods,
        etcd,
        leases,
        load_balancer: LoadBalancer { url: server.to_string(), host, port, node },
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the API
// ---------------------------------------------------------------------------------------

fn classify(
    verb: &'static str,
    resource: &'static str,
    group: &'static str,
    scope: &'static str,
    e: kube::Error,
) -> DiscoveryError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => {
            DiscoveryError::Forbidden { verb, resource, group, scope, message: s.message.clone() }
        }
        kube::Error::Api(s) if s.code == 401 => {
            DiscoveryError::Unauthorized { verb, resource, scope, message: s.message.clone() }
        }
        _ => DiscoveryError::Request { verb, resource, scope, source: e },
    }
}

async fn bounded<T>(
    verb: &'static str,
    resource: &'static str,
    group: &'static str,
    scope: &'static str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Err(_) => Err(DiscoveryError::Timeout { verb, resource, scope, timeout: REQUEST_TIMEOUT }),
        Ok(r) => r.map_err(|e| classify(verb, resource, group, scope, e)),
    }
}

/// Discovers the control plane through `client`. `server` is the kubeconfig server URL.
pub async fn discover(client: &Client, server: &str) -> Result<Discovery, DiscoveryError> {
    let version = match tokio::time::timeout(REQUEST_TIMEOUT, client.apiserver_version()).await {
        Err(_) => return Err(DiscoveryError::Version(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(DiscoveryError::Version(crate::exit::chain(&e))),
        Ok(Ok(v)) => v.git_version,
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes =
        bounded("list", "nodes", "", "cluster-wide", nodes.list(&ListParams::default().labels(CONTROL_PLANE_LABEL)))
            .await?
            .items;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slices = bounded(
        "list",
        "endpointslices",
        "discovery.k8s.io",
        "namespace default",
        slices.list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes")),
    )
    .await?
    .items;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let pods = bounded(
        "list",
        "pods",
        "",
        "namespace kube-system",
        pods.list(&ListParams::default().labels("tier=control-plane")),
    )
    .await?
    .items;
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let mut leases = Vec::new();
    for name in LEASES {
        let l =
            bounded("get", "leases", "coordination.k8s.io", "namespace kube-system", leases_api.get_opt(name)).await?;
        leases.push((name.to_string(), l));
    }
    Ok(assemble(server, Some(version), &nodes, &slices, &pods, &leases))
}

// ---------------------------------------------------------------------------------------
// The text `plan` prints
// ---------------------------------------------------------------------------------------

fn ago(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => {
            let d = now.signed_duration_since(t);
            format!(
                "{} ({:.1}s ago)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                d.num_milliseconds() as f64 / 1000.0
            )
        }
        None => "never".into(),
    }
}

/// What discovery found, as `hadrill plan` prints it (pure; `now` for lease ages).
pub fn render(d: &Discovery, now: DateTime<Utc>) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "discovery (server {}, version {}):\n",
        d.server,
        d.server_version.as_deref().unwrap_or("unknown")
    ));
    o.push_str(&format!("  control-plane nodes ({}):\n", d.nodes.len()));
    for n in &d.nodes {
        let addrs = n.addresses.iter().map(|(t, a)| format!("{t}={a}")).collect::<Vec<_>>().join(" ");
        let ready = match n.ready {
            Some(true) => "Ready",
            Some(false) => "NotReady",
            None => "Unknown",
        };
        o.push_str(&format!("    {:<20} {ready:<8} kubelet {} {addrs}", n.name, n.kubelet_version));
        if let Some(p) = &n.provider_id {
            o.push_str(&format!(" providerID={p}"));
        }
        o.push('\n');
    }
    o.push_str(&format!("  apiserver endpoints ({}, EndpointSlice default/kubernetes):\n", d.apiservers.len()));
    for a in &d.apiservers {
        o.push_str(&format!(
            "    {:<28} {} node {}\n",
            a.url(),
            if a.ready { "ready    " } else { "not ready" },
            a.node.as_deref().unwrap_or("(not a control-plane node address)")
        ));
    }
    o.push_str(&format!("  static control-plane pods ({}):\n", d.static_pods.len()));
    for p in &d.static_pods {
        o.push_str(&format!(
            "    {:<12} {:<24} {:<40} {} {}\n",
            p.node,
            p.component,
            p.name,
            p.phase,
            if p.ready { "ready" } else { "not ready" }
        ));
    }
    let topo = match d.etcd.topology {
        EtcdTopologyKind::Stacked => "stacked",
        EtcdTopologyKind::External => "external",
        EtcdTopologyKind::Unknown => "unknown",
    };
    o.push_str(&format!("  etcd: {topo} ({})\n", d.etcd.reason));
    if !d.etcd.endpoints.is_empty() {
        o.push_str(&format!("    endpoints: {}\n", d.etcd.endpoints.join(",")));
    }
    for (node, pod, member) in &d.etcd.members {
        o.push_str(&format!("    member {member} in pod {pod} on {node}\n"));
    }
    if !d.etcd.apiserver_etcd_servers.is_empty() {
        o.push_str(&format!("    apiserver --etcd-servers: {}\n", d.etcd.apiserver_etcd_servers.join(",")));
    }
    match &d.etcd.client_tls {
        Some(t) => o.push_str(&format!(
            "    client TLS (read on {} through node access): ca {} cert {} key {}\n",
            t.node,
            t.ca,
            t.cert.as_deref().unwrap_or("-"),
            t.key.as_deref().unwrap_or("-")
        )),
        None => o.push_str("    client TLS: not found in the apiserver flags\n"),
    }
    o.push_str("  leases (kube-system):\n");
    for l in &d.leases {
        if !l.exists {
            o.push_str(&format!("    {:<24} missing\n", l.name));
            continue;
        }
        o.push_str(&format!(
            "    {:<24} holder {} (node {}) renewed {} duration {} transitions {}\n",
            l.name,
            l.holder.as_deref().unwrap_or("(none)"),
            l.holder_node.as_deref().unwrap_or("-"),
            ago(now, l.renew_time),
            l.duration.map(|d| format!("{}s", d.as_secs())).unwrap_or_else(|| "-".into()),
            l.transitions.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    o.push_str(&format!(
        "  load balancer: {} (host {} port {}): {}\n",
        d.load_balancer.url,
        d.load_balancer.host,
        d.load_balancer.port,
        match &d.load_balancer.node {
            Some(n) => format!("NOT a load balancer: it is node {n}'s own address"),
            None => "not the address of any control-plane node".into(),
        }
    ));
    o
}

/// `plan`'s Kubernetes section: what discovery found and the node access of each node.
pub fn plan_text(
    d: &Discovery,
    node_access: Option<&crate::node::select::NodeAccessConfig>,
    now: DateTime<Utc>,
) -> String {
    let mut o = render(d, now);
    let default = crate::node::select::NodeAccessConfig::default();
    o.push_str("  node access:\n");
    for (node, a) in crate::node::select::resolve_all(node_access.unwrap_or(&default), d) {
        match a {
            Ok(a) => o.push_str(&format!("    {node:<20} {}\n", a.describe())),
            Err(why) => o.push_str(&format!("    {node:<20} none: {why}\n")),
        }
    }
    o
}

/// Discovers the target of a kubeconfig and renders [`plan_text`]. Read-only.
pub async fn plan_report(
    k: &crate::target::kube::KubeTarget,
    node_access: Option<&crate::node::select::NodeAccessConfig>,
) -> Result<String, DiscoveryError> {
    let client = Client::try_from(k.config.clone()).map_err(|e| DiscoveryError::Client {
        path: k.kubeconfig.display().to_string(),
        message: crate::exit::chain(&e),
    })?;
    let d = discover(&client, &k.server).await?;
    Ok(plan_text(&d, node_access, Utc::now()))
}

#[cfg(test)]
pub(crate) mod tests;
