//! The meaning of each step kind: checks over a fresh cluster view, fault injection through
//! the target's node access, probes and bounded waits.

use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::task::JoinHandle;

use super::{CaseState, RunContext, StepEnd};
use crate::check::{topology, CheckOutcome};
use crate::fault::{self, Fault};
use crate::probe::etcd::{cluster_view, ClusterView};
use crate::suite::{CheckSpec, FaultSpec, MemberRole, Step};

/// Background probes of a case; stopped (and awaited) at the end of the case.
#[derive(Default)]
pub struct ProbeSet {
    pub tasks: Vec<(String, JoinHandle<()>, tokio::sync::watch::Sender<bool>)>,
    /// The etcd quorum probes' clients and histories, read by the quorum checks.
    pub quorum: Option<super::quorum::QuorumState>,
    /// The Kubernetes probes' clients, histories and scratch namespace.
    pub kube: Option<super::failover::KubeProbes>,
}

impl ProbeSet {
    pub async fn stop_all(&mut self) {
        for (_, _, stop) in &self.tasks {
            let _ = stop.send(true);
        }
        for (name, task, _) in self.tasks.drain(..) {
            // a probe's own requests have deadlines; give it a bounded time to wind down
            if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
                tracing::warn!("probe {name} did not stop within 10s");
            }
        }
        if let Some(k) = self.kube.as_mut() {
            // best effort within its deadline; the outcome is on the timeline
            let _ = k.cleanup().await;
        }
    }
}

/// One line naming a step, for the timeline.
pub fn label(step: &Step) -> String {
    match step {
        Step::Heal => "heal".into(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

pub async fn run(ctx: &RunContext, step: &Step, st: &mut CaseState) -> Result<(), StepEnd> {
    match step {
        Step::Check(spec) => check(ctx, spec, st).await,
        Step::Inject(spec) => inject(ctx, spec, st).await,
        Step::Heal => {
            let errors = super::unwind(st).await;
            if errors.is_empty() {
                Ok(())
            } else {
                Err(StepEnd::Error(format!("heal failed: {}", errors.join("; "))))
            }
        }
        Step::Probe(spec) => match super::failover::probe(ctx, spec, st).await {
            Some(r) => r,
            None => super::quorum::probe(ctx, spec, st).await,
        },
        Step::Await(spec) => match super::failover::await_(ctx, spec, st).await {
            Some(r) => r,
            None => super::quorum::await_(ctx, spec, st).await,
        },
    }
}

async fn view(ctx: &RunContext, st: &mut CaseState) -> Result<ClusterView, StepEnd> {
    let Some(etcd) = &ctx.target.etcd else {
        return Err(StepEnd::Skip("needs etcd: give --etcd-endpoints or use --rig".into()));
    };
    (ctx.progress)(&st.name, "reading etcd member status");
    let v = cluster_view(etcd).await.map_err(|e| StepEnd::Error(format!("cannot read the etcd cluster: {e}")))?;
    st.timeline.record(
        "probe:etcd-status",
        format!(
            "{} members; leader {}",
            v.members.len(),
            v.leader().map(|l| v.name_of(l)).unwrap_or_else(|| "unknown".into())
        ),
    );
    Ok(v)
}

fn conclude(st: &mut CaseState, c: CheckOutcome) -> Result<(), StepEnd> {
    st.measurements.extend(c.measurements.iter().cloned());
    st.timeline.record("check", format!("{} {}: {}", c.name, if c.passed { "passed" } else { "FAILED" }, c.message));
    st.log(format!("check {}: {}", c.name, c.message));
    if c.passed {
        Ok(())
    } else {
        Err(StepEnd::Failed(c))
    }
}

async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    let outcome = match spec {
        CheckSpec::EtcdMemberCount { min, odd } => topology::member_count(&view(ctx, st).await?, *min, *odd),
        CheckSpec::EtcdMembersReachable => topology::members_reachable(&view(ctx, st).await?),
        CheckSpec::EtcdOneLeader => topology::one_leader(&view(ctx, st).await?),
        CheckSpec::EtcdLeaderAgreement => topology::leader_agreement(&view(ctx, st).await?),
        CheckSpec::EtcdDbSizeSpread { max_ratio } => topology::db_size_spread(&view(ctx, st).await?, *max_ratio),
        CheckSpec::HarnessSelftest(outcome) => super::selftest::check(*outcome, st)?,
        CheckSpec::EtcdSnapshotRestores { within } => super::dr::check(ctx, *within, st).await?,
        CheckSpec::EtcdRefusesClientCert { .. }
        | CheckSpec::EtcdAcceptsControlCert
        | CheckSpec::EtcdServingCertValidFor { .. } => super::certs::check(ctx, spec, st).await?,
        k @ (CheckSpec::KubeControlPlaneCount { .. }
        | CheckSpec::KubeServerIsLoadBalancer
        | CheckSpec::KubeLeasesRenewed) => super::kube::check(ctx, k, st).await?,
        k @ (CheckSpec::ApiserverRefusesClientCert { .. }
        | CheckSpec::ApiserverAcceptsControlCert
        | CheckSpec::KubeServingCertsValidFor { .. }
        | CheckSpec::KubeadmCertsValidFor { .. }
        | CheckSpec::ApiserverServesExpiredCert { .. }
        | CheckSpec::LbRoutesAroundExpiredCert { .. }
        | CheckSpec::ApiserverServesValidCert { .. }) => super::kubecerts::check(ctx, k, st).await?,
        k @ (CheckSpec::VersionSkew | CheckSpec::KubeadmRefusesSkippingAMinor) => {
            super::skew::check(ctx, k, st).await?
        }
        k @ (CheckSpec::KubeApiAvailable { .. }
        | CheckSpec::KubeApiserversReady { .. }
        | CheckSpec::KubeServerCertCoversServer) => super::failover::check(ctx, k, st).await.unwrap_or_else(|| {
            Err(StepEnd::Error(format!("check `{}` has no failover arm", label(&Step::Check(k.clone())))))
        })?,
        other => match super::quorum::check(ctx, other, st).await {
            Some(r) => r?,
            None => {
                return Err(StepEnd::Error(format!(
                    "check `{}` is not supported by this build of hadrill",
                    serde_json::to_string(other).unwrap_or_default()
                )))
            }
        },
    };
    conclude(st, outcome)
}

/// Picks `count` rig members by role, at this moment.
pub async fn pick_members(
    ctx: &RunContext,
    st: &mut CaseState,
    role: MemberRole,
    count: usize,
) -> Result<(ClusterView, Vec<String>), StepEnd> {
    let v = view(ctx, st).await?;
    let leader = v.leader();
    let mut leaders = Vec::new();
    let mut followers = Vec::new();
    for m in &v.members {
        if m.status.is_err() {
            continue;
        }
        if Some(m.id) == leader {
            leaders.push(m.name.clone());
        } else {
            followers.push(m.name.clone());
        }
    }
    followers.shuffle(&mut st.rng);
    let pool: Vec<String> = match role {
        MemberRole::Leader => {
            if leaders.is_empty() {
                return Err(StepEnd::Error("no leader to aim the fault at: the cluster has no leader now".into()));
            }
            leaders.into_iter().chain(followers).collect()
        }
        MemberRole::Follower => followers,
        MemberRole::Any => {
            let mut all: Vec<String> = leaders.into_iter().chain(followers).collect();
            all.shuffle(&mut st.rng);
            all
        }
    };
    if pool.len() < count {
        return Err(StepEnd::Error(format!("the fault asks for {count} {role:?} member(s), {} available", pool.len())));
    }
    st.leader_before_fault = leader;
    Ok((v, pool.into_iter().take(count).collect()))
}

async fn inject(ctx: &RunContext, spec: &FaultSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    if let FaultSpec::ApiserverCertExpired { pick } = spec {
        return super::kubecerts::inject_expired_cert(ctx, *pick, st).await;
    }
    if let FaultSpec::KubeletStop { .. }
    | FaultSpec::ComponentStop { .. }
    | FaultSpec::NodeEtcdPartition { .. }
    | FaultSpec::NodePeerLatency { .. } = spec
    {
        return super::controlplane::inject(ctx, spec, st).await;
    }
    let Some(rig) = ctx.target.rig.clone() else {
        return Err(StepEnd::Skip("faults need node access to the members (the local rig)".into()));
    };
    let faults: Vec<(String, Fault)> = match spec {
        FaultSpec::MemberKill { role, count, signal } => {
            let (_, names) = pick_members(ctx, st, *role, *count).await?;
            let mut out = Vec::new();
            for n in names {
                let m = rig
                    .members
                    .iter()
                    .find(|m| m.name == n)
                    .ok_or_else(|| StepEnd::Error(format!("member {n} is not one of the rig's members")))?;
                let current = crate::rig::status(&rig.dir)
                    .ok()
                    .and_then(|r| r.members.into_iter().find(|x| x.name == n))
                    .unwrap_or_else(|| m.clone());
                out.push((
                    n.clone(),
                    Fault::StopMember {
                        rig_dir: rig.dir.clone(),
                        member: n,
                        pid: current.pid,
                        start_time: current.start_time,
                        signal: *signal,
                    },
                ));
            }
            out
        }
        FaultSpec::MemberPause { role, count } => {
            let (_, names) = pick_members(ctx, st, *role, *count).await?;
            let current = crate::rig::status(&rig.dir).map_err(|e| StepEnd::Error(crate::exit::chain(&e)))?;
            let mut out = Vec::new();
            for n in names {
                let m = current
                    .members
                    .iter()
                    .find(|m| m.name == n)
                    .ok_or_else(|| StepEnd::Error(format!("member {n} is not one of the rig's members")))?;
                out.push((
                    n.clone(),
                    Fault::Pause { what: format!("etcd member {n}"), pid: m.pid, start_time: m.start_time },
                ));
            }
            out
        }
        FaultSpec::Partition { .. } | FaultSpec::PeerLatency { .. } => {
            return super::quorum::inject_net(ctx, spec, st, &rig).await;
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(StepEnd::Error(format!(
                "fault `{}` is not supported by this build of hadrill",
                serde_json::to_string(other).unwrap_or_default()
            )))
        }
    };
    st.faulted_members.clear();
    for (member, f) in faults {
        (ctx.progress)(&st.name, &format!("injecting: {}", f.describe()));
        st.timeline.record("fault", format!("injecting: {}", f.describe()));
        let g = fault::inject(&ctx.ledger, f).await.map_err(|e| StepEnd::Error(crate::exit::chain(&e)))?;
        st.last_fault_at = Some(std::time::Instant::now());
        st.timeline.record("fault", format!("injected: {}", g.description()));
        st.log(format!("injected: {}", g.description()));
        st.guards.push(g);
        st.faulted_members.push(member);
    }
    Ok(())
}
