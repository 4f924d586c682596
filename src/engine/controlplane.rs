//! The control-plane fault steps: resolves the target's control plane once per run (the rig's
//! processes, or discovery plus node access on a Kubernetes target), aims `kubelet_stop`,
//! `component_stop` and `node_etcd_partition` at the instance the pick names at this moment
//! (lease holders read fresh, the etcd raft leader from the members), and injects the fault.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use super::{CaseState, RunContext, StepEnd};
use crate::controlplane::discovered::{self, choose};
use crate::controlplane::{holder_host, Component, ControlPlane, Instance, InstancePick, StopMethod};
use crate::fault::node::{KubeRef, NodeRef, DEFAULT_WAIT_SECS, STATIC_POD_DEAD_MAN_SECS, UNIT_DEAD_MAN_SECS};
use crate::fault::{self, net, Fault};
use crate::node::NodeAccess;
use crate::suite::{FaultSpec, MemberRole, StopSignal};

/// The peer port of kubeadm's etcd static pods.
pub const KUBEADM_PEER_PORT: u16 = 2380;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn err(m: impl Into<String>) -> StepEnd {
    StepEnd::Error(m.into())
}

/// Why the target, a rig, runs no `c`: its binary was not found (kube-apiserver alone, as
/// envtest's assets ship it). None on any other target, or when the rig runs it.
pub fn rig_absent(t: &crate::target::Target, c: Component) -> Option<String> {
    t.rig.as_ref()?.kube.as_ref()?.absent_component(c).map(|a| a.skip_reason())
}

/// The leader-election leases a rig has none of, each with the reason (see [`rig_absent`]).
pub fn rig_absent_leases(t: &crate::target::Target) -> Vec<(&'static str, String)> {
    [Component::ControllerManager, Component::Scheduler]
        .into_iter()
        .filter_map(|c| Some((c.lease()?, rig_absent(t, c)?)))
        .collect()
}

/// Why `case` cannot run on a rig that does not run a component it stops, picks by or waits
/// for (its binary was not found): checked before the first step, so that no probe starts.
pub fn rig_case_needs_absent(t: &crate::target::Target, case: &crate::suite::Case) -> Result<(), String> {
    use crate::suite::{AwaitSpec, Step};
    for step in &case.steps {
        let needs: Vec<Component> = match step {
            Step::Inject(FaultSpec::ComponentStop { component, pick, .. }) => match pick {
                InstancePick::LeaderOf(of) => vec![*component, *of],
                _ => vec![*component],
            },
            Step::Inject(FaultSpec::KubeletStop { pick: InstancePick::LeaderOf(of) }) => vec![*of],
            Step::Await(AwaitSpec::LeaseTakeover { component, .. }) => vec![*component],
            _ => vec![],
        };
        if let Some(why) = needs.into_iter().find_map(|c| rig_absent(t, c)) {
            return Err(why);
        }
    }
    Ok(())
}

/// The target's control plane, resolved on first use and kept for the run.
pub async fn control_plane(ctx: &RunContext) -> Result<&ControlPlane, StepEnd> {
    ctx.target.control_plane.get_or_try_init(|| resolve(ctx)).await
}

async fn resolve(ctx: &RunContext) -> Result<ControlPlane, StepEnd> {
    if let Some(rig) = &ctx.target.rig {
        return Ok(ControlPlane::from_rig(rig));
    }
    let Some(k) = &ctx.target.kube else {
        return Err(StepEnd::Skip(
            "needs a control plane to fault: give --kubeconfig (with node access in the config) or use --rig".into(),
        ));
    };
    let client = kube_client(ctx)?.expect("a kube target");
    let cfg = ctx.target.node_access.clone().unwrap_or_default();
    resolve_kube(&client, &k.server, &format!("cluster of context {} ({})", k.context, k.server), &cfg).await
}

fn kube_client(ctx: &RunContext) -> Result<Option<kube::Client>, StepEnd> {
    let Some(k) = &ctx.target.kube else { return Ok(None) };
    kube::Client::try_from(k.config.clone())
        .map(Some)
        .map_err(|e| err(format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e))))
}

/// Discovery through `client`, node access from `cfg` (kind detected), and the kubelet's
/// `staticPodPath` read on each node that can be reached without creating anything.
pub async fn resolve_kube(
    client: &kube::Client,
    server: &str,
    source: &str,
    cfg: &crate::node::select::NodeAccessConfig,
) -> Result<ControlPlane, StepEnd> {
    let d = crate::target::discovery::discover(client, server)
        .await
        .map_err(|e| err(format!("cannot discover the control plane: {}", crate::exit::chain(&e))))?;
    let access = crate::node::select::resolve_all(cfg, &d);
    let dirs = manifest_dirs(&access).await;
    Ok(discovered::from_discovery(&d, &access, &dirs, source.to_string()))
}

/// The kubelet's `staticPodPath` of each node reachable without creating anything (the pod
/// backend keeps the kubeadm default rather than start a pod per node for it).
async fn manifest_dirs(access: &[(String, Result<NodeAccess, String>)]) -> BTreeMap<String, String> {
    let reads = access.iter().filter_map(|(n, a)| match a {
        Ok(a) if !matches!(a, NodeAccess::Pod { .. }) => Some(async move {
            let out = a.exec(&["cat", discovered::KUBELET_CONFIG], REQUEST_TIMEOUT).await;
            match out {
                Ok(o) => discovered::static_pod_path(&o.stdout).map(|p| (n.clone(), p)),
                Err(e) => {
                    tracing::info!(
                        "{n}: cannot read {}: {}; using {}",
                        discovered::KUBELET_CONFIG,
                        crate::exit::chain(&e),
                        discovered::DEFAULT_MANIFEST_DIR
                    );
                    None
                }
            }
        }),
        _ => None,
    });
    futures::future::join_all(reads).await.into_iter().flatten().collect()
}

/// The holder of a leader-election lease in kube-system, read now.
pub async fn lease_holder(client: &kube::Client, lease: &str) -> Result<Option<String>, String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    match tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(lease)).await {
        Err(_) => Err(format!("get lease kube-system/{lease}: no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("get lease kube-system/{lease}: {}", crate::exit::chain(&e))),
        Ok(Ok(l)) => Ok(l.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty())),
    }
}

/// The host of the current leader of `c`, and the etcd member view's leader id for etcd.
async fn leader_host(
    ctx: &RunContext,
    st: &mut CaseState,
    cp: &ControlPlane,
    c: Component,
    kube: Option<&kube::Client>,
) -> Result<String, StepEnd> {
    match c {
        Component::Etcd => {
            let (v, names) = super::steps::pick_members(ctx, st, MemberRole::Leader, 1).await?;
            etcd_host(cp, &v, &names[0])
        }
        Component::ControllerManager | Component::Scheduler => {
            let lease = c.lease().expect("leader-elected");
            let Some(client) = kube else {
                return Err(StepEnd::Skip(format!(
                    "the {} leader is read from its lease: needs a Kubernetes API (--kubeconfig)",
                    c.static_pod()
                )));
            };
            let holder = lease_holder(client, lease).await.map_err(err)?;
            let Some(holder) = holder else {
                return Err(err(format!(
                    "lease kube-system/{lease} has no holder: there is no {} leader now",
                    c.static_pod()
                )));
            };
            st.timeline.record("probe:lease", format!("{lease} held by {holder} before the fault"));
            Ok(holder_host(&holder).to_string())
        }
        Component::Apiserver | Component::Kubelet => Err(err(format!(
            "{} has no leader: pick `any`, or `leader_of: <component>` for the kubelet",
            c.static_pod()
        ))),
    }
}

/// The host of an etcd member: its name (kubeadm and the rig name members after the host),
/// else the instance whose address is its client URL's host.
fn etcd_host(cp: &ControlPlane, v: &crate::probe::etcd::ClusterView, name: &str) -> Result<String, StepEnd> {
    if cp.on(Component::Etcd, name).is_some() {
        return Ok(name.to_string());
    }
    let m = v.members.iter().find(|m| m.name == name);
    let hosts: Vec<String> = m
        .map(|m| m.client_urls.iter().filter_map(|u| crate::target::discovery::host_port(u)).map(|(h, _)| h).collect())
        .unwrap_or_default();
    cp.of(Component::Etcd)
        .into_iter()
        .find(|i| i.address.as_ref().is_some_and(|a| hosts.contains(a)))
        .map(|i| i.host.clone())
        .ok_or_else(|| err(format!("etcd member {name} matches no etcd instance of the control plane ({})", cp.source)))
}

/// Chooses the instance, asking who leads when the pick needs it. etcd picks go through the
/// members' own view (which also records the raft leader before the fault, as the quorum
/// checks expect).
async fn pick(
    ctx: &RunContext,
    st: &mut CaseState,
    cp: &ControlPlane,
    c: Component,
    p: InstancePick,
    kube: Option<&kube::Client>,
) -> Result<Instance, StepEnd> {
    let leader = match p {
        InstancePick::Any if c != Component::Etcd => None,
        InstancePick::LeaderOf(of) if of != c => Some(leader_host(ctx, st, cp, of, kube).await?),
        _ if c == Component::Kubelet => {
            return Err(err("the kubelet has no leader: pick `any` or `leader_of: <component>`"))
        }
        _ if c == Component::Etcd => {
            let role = match p {
                InstancePick::NotLeader => MemberRole::Follower,
                InstancePick::Any => MemberRole::Any,
                _ => MemberRole::Leader,
            };
            let (v, names) = super::steps::pick_members(ctx, st, role, 1).await?;
            return instance(cp, c, &etcd_host(cp, &v, &names[0])?);
        }
        _ => Some(leader_host(ctx, st, cp, c, kube).await?),
    };
    choose(cp, c, p, leader.as_deref(), &mut st.rng).cloned().map_err(StepEnd::Skip)
}

fn instance(cp: &ControlPlane, c: Component, host: &str) -> Result<Instance, StepEnd> {
    let i = cp.on(c, host).ok_or_else(|| err(format!("no {} instance on {host}", c.static_pod())))?;
    match discovered::unusable(i) {
        None => Ok(i.clone()),
        Some(why) => Err(StepEnd::Skip(why)),
    }
}

fn node_ref(ctx: &RunContext, i: &Instance) -> Result<NodeRef, StepEnd> {
    let access = i.access.clone().ok_or_else(|| StepEnd::Skip(discovered::unusable(i).unwrap_or_default()))?;
    let kube = ctx.target.kube.as_ref().map(KubeRef::of);
    if matches!(access, NodeAccess::Pod { .. }) && kube.is_none() {
        return Err(StepEnd::Skip(format!(
            "{}: the pod node access backend needs a Kubernetes API (--kubeconfig)",
            i.host
        )));
    }
    Ok(NodeRef { node: i.host.clone(), access, kube })
}

/// The pid and start time of a rig process, from the rig's state now.
fn rig_process(rig_dir: &std::path::Path, name: &str) -> Result<(i32, u64), StepEnd> {
    let r = crate::rig::status(rig_dir).map_err(|e| err(crate::exit::chain(&e)))?;
    // an etcd member or, in kube mode, a Kubernetes host (the pid as it is now: a revert
    // may have restarted it since the rig came up)
    r.process(name)
        .ok_or_else(|| err(format!("process {name} is not recorded in the rig's state ({})", rig_dir.display())))
}

/// The fault that stops instance `i`.
fn stop_fault(ctx: &RunContext, i: &Instance, signal: StopSignal) -> Result<Fault, StepEnd> {
    let stop = i.stop.clone().ok_or_else(|| StepEnd::Skip(discovered::unusable(i).unwrap_or_default()))?;
    Ok(match stop {
        StopMethod::StaticPodManifest { manifest, parking_dir } => Fault::StaticPodStop {
            at: node_ref(ctx, i)?,
            container: i.component.static_pod().to_string(),
            manifest,
            parking_dir,
            token: net::new_token(),
            wait_secs: DEFAULT_WAIT_SECS,
            dead_man_secs: STATIC_POD_DEAD_MAN_SECS,
        },
        StopMethod::SystemdUnit { unit } => {
            let at = node_ref(ctx, i)?;
            if matches!(at.access, NodeAccess::Pod { .. }) && i.component == Component::Kubelet {
                return Err(StepEnd::Skip(discovered::POD_CANNOT_STOP_KUBELET.into()));
            }
            Fault::NodeUnitStop { at, unit, token: net::new_token(), dead_man_secs: UNIT_DEAD_MAN_SECS, wait_secs: 120 }
        }
        StopMethod::RigProcess { rig_dir, name } => {
            let (pid, start_time) = rig_process(&rig_dir, &name)?;
            Fault::RigProcessStop { rig_dir, name, pid, start_time, signal }
        }
    })
}

/// The etcd peer ports: the rig's members' peer URLs, else kubeadm's 2380.
fn peer_ports(ctx: &RunContext) -> Vec<u16> {
    let mut ports: Vec<u16> = ctx
        .target
        .rig
        .iter()
        .flat_map(|r| r.members.iter())
        .filter_map(|m| m.peer_url.rsplit_once(':').and_then(|(_, p)| p.trim_end_matches('/').parse().ok()))
        .collect();
    ports.sort();
    ports.dedup();
    if ports.is_empty() {
        ports.push(KUBEADM_PEER_PORT);
    }
    ports
}

fn partition_fault(ctx: &RunContext, cp: &ControlPlane, i: &Instance, dead_man: Duration) -> Result<Fault, StepEnd> {
    let at = node_ref(ctx, i)?;
    if matches!(at.access, NodeAccess::Local { netns: None }) {
        return Err(StepEnd::Skip(
            "needs the etcd member in a network namespace of its own: start the rig as root with --isolation netns"
                .into(),
        ));
    }
    let others: Vec<&Instance> = cp.of(Component::Etcd).into_iter().filter(|o| o.host != i.host).collect();
    if others.is_empty() {
        return Err(StepEnd::Skip("needs at least two etcd members to partition one from the others".into()));
    }
    let mut addrs = Vec::new();
    for o in &others {
        addrs
            .push(o.address.clone().ok_or_else(|| err(format!("the etcd member on {} has no known address", o.host)))?);
    }
    Ok(Fault::NodeEtcdPartition {
        at,
        token: net::new_token(),
        others: addrs,
        other_names: others.iter().map(|o| o.host.clone()).collect(),
        peer_ports: peer_ports(ctx),
        dead_man_secs: dead_man.as_secs().max(1),
    })
}

async fn latency_fault(
    ctx: &RunContext,
    cp: &ControlPlane,
    i: &Instance,
    delay: Duration,
    dead_man: Duration,
) -> Result<Fault, StepEnd> {
    let at = node_ref(ctx, i)?;
    let peer = cp
        .of(Component::Etcd)
        .into_iter()
        .filter(|o| o.host != i.host)
        .find_map(|o| o.address.clone())
        .ok_or_else(|| StepEnd::Skip("needs at least two etcd members with known addresses".into()))?;
    let dev = crate::fault::node::dev_towards(&at, &peer).await.map_err(err)?;
    Ok(Fault::NodePeerLatency {
        at,
        token: net::new_token(),
        dev,
        peer_ports: peer_ports(ctx),
        delay_ms: delay.as_millis() as u64,
        dead_man_secs: dead_man.as_secs().max(1),
    })
}

/// `inject` steps of the control-plane fault specs.
pub async fn inject(ctx: &RunContext, spec: &FaultSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    let kube = kube_client(ctx)?;
    let (host, f) = resolve_fault(ctx, spec, st, kube.as_ref()).await?;
    (ctx.progress)(&st.name, &format!("injecting: {}", f.describe()));
    st.timeline.record("fault", format!("injecting: {}", f.describe()));
    let g = match fault::inject(&ctx.ledger, f).await {
        Ok(g) => g,
        // the kernel cannot do it: a skip with the kernel's reason, like the rig's latency
        Err(e) if crate::exit::chain(&e).contains("no tc netem") => return Err(StepEnd::Skip(crate::exit::chain(&e))),
        Err(e) => return Err(err(crate::exit::chain(&e))),
    };
    st.last_fault_at = Some(Instant::now());
    st.faulted_members = vec![host];
    st.timeline.record("fault", format!("injected: {}", g.description()));
    st.log(format!("injected: {}", g.description()));
    st.guards.push(g);
    Ok(())
}

/// The host a spec is aimed at now, and the fault that does it (nothing is changed yet).
/// `kube` reads the leases.
pub async fn resolve_fault(
    ctx: &RunContext,
    spec: &FaultSpec,
    st: &mut CaseState,
    kube: Option<&kube::Client>,
) -> Result<(String, Fault), StepEnd> {
    let cp = control_plane(ctx).await?;
    Ok(match spec {
        FaultSpec::KubeletStop { pick: p }
        | FaultSpec::ComponentStop { component: Component::Kubelet, pick: p, .. } => {
            if !cp.has_kubelet {
                return Err(StepEnd::Skip("needs a kubelet: the rig runs none".into()));
            }
            let i = pick(ctx, st, cp, Component::Kubelet, *p, kube).await?;
            (i.host.clone(), stop_fault(ctx, &i, StopSignal::Term)?)
        }
        FaultSpec::ComponentStop { component, pick: p, signal } => {
            // before any lease is read: a component that does not run has no leader to ask for
            if cp.of(*component).is_empty() {
                return Err(StepEnd::Skip(rig_absent(&ctx.target, *component).unwrap_or_else(|| {
                    format!(
                        "needs {}: the target runs none that hadrill can see ({})",
                        component.static_pod(),
                        cp.source
                    )
                })));
            }
            if let InstancePick::LeaderOf(of) = p {
                if let Some(why) = rig_absent(&ctx.target, *of) {
                    return Err(StepEnd::Skip(why));
                }
            }
            let i = pick(ctx, st, cp, *component, *p, kube).await?;
            (i.host.clone(), stop_fault(ctx, &i, *signal)?)
        }
        FaultSpec::NodeEtcdPartition { pick: p, dead_man } => {
            if cp.of(Component::Etcd).is_empty() {
                return Err(StepEnd::Skip(format!(
                    "needs etcd members on the control-plane nodes (stacked etcd); {} has none",
                    cp.source
                )));
            }
            let i = pick(ctx, st, cp, Component::Etcd, *p, kube).await?;
            (i.host.clone(), partition_fault(ctx, cp, &i, *dead_man)?)
        }
        FaultSpec::NodePeerLatency { pick: p, delay, dead_man } => {
            if cp.of(Component::Etcd).is_empty() {
                return Err(StepEnd::Skip(format!(
                    "needs etcd members on the control-plane nodes (stacked etcd); {} has none",
                    cp.source
                )));
            }
            let i = pick(ctx, st, cp, Component::Etcd, *p, kube).await?;
            (i.host.clone(), latency_fault(ctx, cp, &i, *delay, *dead_man).await?)
        }
        other => return Err(err(format!("not a control-plane fault: {other:?}"))),
    })
}

#[cfg(test)]
mod tests;
