//! The quorum steps: starting the etcd probes, bounded waits on them, the quorum checks
//! (gathering the data the pure functions of [`crate::check::quorum`] judge), and the
//! network faults (partition, peer latency) aimed at members chosen by role.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use super::{poll, CaseState, RunContext, StepEnd};
use crate::check::quorum as q;
use crate::check::{quorum_size, CheckOutcome};
use crate::fault::net::{self, NetMember};
use crate::fault::{self, Fault};
use crate::probe::history::{Outcome, StatusHistory, WriteHistory, WriteOp};
use crate::probe::quorum::{self as pq, Member, MemberClients};
use crate::rig::RigState;
use crate::suite::{AwaitSpec, CheckSpec, FaultSpec, MemberRole, PartitionSide, ProbeSpec};

const POLL: Duration = Duration::from_millis(100);
/// etcd's default election timeout, used when the target does not say (not a rig).
const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// What the quorum probes of one case share with its checks.
pub struct QuorumState {
    /// require-leader clients, one per member (writes).
    pub writers: Arc<MemberClients>,
    /// plain clients, one per member (status, reads, hashes).
    pub readers: Arc<MemberClients>,
    pub writes: Option<Arc<WriteHistory>>,
    pub writes_started: Option<Instant>,
    pub status: Option<Arc<StatusHistory>>,
    pub extra_seq: u64,
}

/// The etcd keys a case writes live under this prefix, removed at the end of the case.
pub fn case_prefix(ctx: &RunContext, st: &CaseState) -> String {
    format!("/hadrill/{}/{}/", ctx.ledger.run_id(), st.name.replace("::", "/"))
}

/// Deletes the keys the case wrote (its [`case_prefix`]) once its faults are reverted: the
/// cluster keeps nothing of a run. Tries each member until one answers, within a deadline;
/// what happened goes to the timeline (a failure there does not change the verdict, and
/// names the prefix to delete by hand).
pub async fn cleanup(ctx: &RunContext, st: &mut CaseState) {
    let Some(q) = &st.probes.quorum else { return };
    let readers = q.readers.clone();
    let prefix = case_prefix(ctx, st);
    let timeout = readers.target().request_timeout;
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        for m in &readers.members {
            match pq::delete_prefix_via(&readers, &m.endpoint, &prefix, timeout).await {
                Ok(n) => {
                    st.timeline.record("probe:cleanup", format!("deleted {n} probe keys under {prefix}"));
                    return;
                }
                Err(e) => last = format!("{}: {e}", m.name),
            }
        }
        if Instant::now() >= end {
            let msg = format!("could not delete the probe keys under {prefix} (delete them with `etcdctl del --prefix {prefix}`): {last}");
            st.timeline.record("probe:cleanup", msg.clone());
            st.log(msg);
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn err(m: impl Into<String>) -> StepEnd {
    StepEnd::Error(m.into())
}

/// The members as the probes address them: the rig's, else the member list's.
async fn members(ctx: &RunContext) -> Result<Vec<Member>, StepEnd> {
    if let Some(r) = &ctx.target.rig {
        return Ok(r.members.iter().map(|m| Member { name: m.name.clone(), endpoint: m.client_url.clone() }).collect());
    }
    let Some(etcd) = &ctx.target.etcd else {
        return Err(StepEnd::Skip("needs etcd: give --etcd-endpoints or use --rig".into()));
    };
    let v = crate::probe::etcd::cluster_view(etcd)
        .await
        .map_err(|e| err(format!("cannot read the etcd member list: {e}")))?;
    let ms: Vec<Member> = v
        .members
        .iter()
        .filter_map(|m| {
            let ep = m.client_urls.first()?.trim_end_matches('/').to_string();
            Some(Member { name: if m.name.is_empty() { format!("{:x}", m.id) } else { m.name.clone() }, endpoint: ep })
        })
        .collect();
    if ms.is_empty() {
        return Err(err("no etcd member advertises a client URL: nothing to probe"));
    }
    Ok(ms)
}

async fn state<'a>(ctx: &RunContext, st: &'a mut CaseState) -> Result<&'a mut QuorumState, StepEnd> {
    if st.probes.quorum.is_none() {
        let Some(etcd) = ctx.target.etcd.clone() else {
            return Err(StepEnd::Skip("needs etcd: give --etcd-endpoints or use --rig".into()));
        };
        let ms = members(ctx).await?;
        st.probes.quorum = Some(QuorumState {
            writers: Arc::new(MemberClients::new(etcd.clone(), ms.clone(), true)),
            readers: Arc::new(MemberClients::new(etcd, ms, false)),
            writes: None,
            writes_started: None,
            status: None,
            extra_seq: 0,
        });
    }
    Ok(st.probes.quorum.as_mut().expect("set above"))
}

pub fn election_timeout(ctx: &RunContext) -> (Duration, String) {
    match &ctx.target.rig {
        Some(r) if r.election_timeout_ms > 0 => (
            Duration::from_millis(r.election_timeout_ms),
            format!("the rig's election timeout {}ms", r.election_timeout_ms),
        ),
        _ => (DEFAULT_ELECTION_TIMEOUT, "etcd's default election timeout 1000ms".into()),
    }
}

/// `Probe` steps.
pub async fn probe(ctx: &RunContext, spec: &ProbeSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    let timeline = st.timeline.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let prefix = case_prefix(ctx, st);
    let qs = state(ctx, st).await?;
    let (name, task) = match spec {
        ProbeSpec::EtcdWrites { per_second, timeout } => {
            if qs.writes.is_some() {
                return Err(err("a write probe already runs in this case"));
            }
            let h = Arc::new(WriteHistory::new(prefix));
            qs.writes = Some(h.clone());
            qs.writes_started = Some(Instant::now());
            let cfg = pq::WriteProbe { per_second: *per_second, timeout: *timeout };
            ("etcd-writes", tokio::spawn(pq::run_writes(cfg, qs.writers.clone(), h, timeline, stop_rx)))
        }
        ProbeSpec::EtcdStatus { interval } => {
            if qs.status.is_some() {
                return Err(err("a status probe already runs in this case"));
            }
            let h = Arc::new(StatusHistory::default());
            qs.status = Some(h.clone());
            ("etcd-status", tokio::spawn(pq::run_status(*interval, qs.readers.clone(), h, timeline, stop_rx)))
        }
        other => {
            return Err(err(format!(
                "probe `{}` is not an etcd probe",
                serde_json::to_string(other).unwrap_or_default()
            )))
        }
    };
    st.probes.tasks.push((name.to_string(), task, stop_tx));
    Ok(())
}

fn writes(st: &CaseState) -> Result<Arc<WriteHistory>, StepEnd> {
    st.probes
        .quorum
        .as_ref()
        .and_then(|q| q.writes.clone())
        .ok_or_else(|| err("this step reads the write probe: start it first with `probe: { etcd_writes: {} }`"))
}

/// The leader a majority of all members names now, with its term, from fresh status answers.
async fn current_leader(
    readers: &MemberClients,
) -> (Option<(u64, u64)>, BTreeMap<String, Result<crate::probe::etcd::MemberStatus, String>>) {
    let answers = futures::future::join_all(readers.members.iter().map(|m| pq::status_via(readers, &m.endpoint))).await;
    let mut by = BTreeMap::new();
    let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (m, a) in readers.members.iter().zip(answers) {
        if let Ok(s) = &a {
            if s.leader != 0 {
                *votes.entry((s.leader, s.raft_term)).or_default() += 1;
            }
        }
        by.insert(m.name.clone(), a);
    }
    let quorum = quorum_size(readers.members.len());
    (votes.into_iter().find(|(_, n)| *n >= quorum).map(|(k, _)| k), by)
}

fn name_by_id(
    by: &BTreeMap<String, Result<crate::probe::etcd::MemberStatus, String>>,
    extra: &BTreeMap<String, u64>,
    id: u64,
) -> String {
    by.iter()
        .find(|(_, s)| matches!(s, Ok(s) if s.member_id == id))
        .map(|(n, _)| n.clone())
        .or_else(|| extra.iter().find(|(_, i)| **i == id).map(|(n, _)| n.clone()))
        .unwrap_or_else(|| format!("{id:x}"))
}

/// `Await` steps.
pub async fn await_(ctx: &RunContext, spec: &AwaitSpec, st: &mut CaseState) -> Result<(), StepEnd> {
    let t0 = Instant::now();
    match spec {
        AwaitSpec::AcknowledgedWrites { count, within } => {
            let h = writes(st)?;
            (ctx.progress)(&st.name, &format!("waiting for {count} acknowledged writes"));
            let got = poll(*within, POLL, || {
                let h = h.clone();
                async move { (h.acknowledged_since(t0) >= *count).then_some(()) }
            })
            .await;
            let n = h.acknowledged_since(t0);
            st.log(format!("{n} writes acknowledged after {}", pq::secs(t0.elapsed())));
            if got.is_none() {
                let ops = h.ops();
                return Err(StepEnd::Failed(
                    CheckOutcome::fail(
                        "await_acknowledged_writes",
                        format!("{n} of {count} writes acknowledged within {}", pq::secs(*within)),
                    )
                    .with_evidence(q::ops_table(
                        &ops,
                        st.timeline.start(),
                        Some((t0, Instant::now())),
                        40,
                    )),
                ));
            }
            Ok(())
        }
        AwaitSpec::Leader { within } => {
            let readers = state(ctx, st).await?.readers.clone();
            (ctx.progress)(&st.name, "waiting for a leader");
            let got = poll(*within, POLL, || {
                let r = readers.clone();
                async move {
                    let (l, by) = current_leader(&r).await;
                    l.map(|(id, term)| (name_by_id(&by, &BTreeMap::new(), id), term))
                }
            })
            .await;
            match got {
                Some((leader, term)) => {
                    st.timeline.record(
                        "check",
                        format!("leader {leader} in term {term}, seen by a majority after {}", pq::secs(t0.elapsed())),
                    );
                    Ok(())
                }
                None => {
                    let (_, by) = current_leader(&readers).await;
                    Err(StepEnd::Failed(
                        CheckOutcome::fail(
                            "await_leader",
                            format!("no leader known to a majority of members within {}", pq::secs(*within)),
                        )
                        .with_evidence(status_table(&by)),
                    ))
                }
            }
        }
        AwaitSpec::Observe { duration } => {
            (ctx.progress)(&st.name, &format!("observing for {}", pq::secs(*duration)));
            // a measurement window: the probes record while it lasts
            tokio::time::sleep(*duration).await;
            Ok(())
        }
        other => Err(err(format!("await `{}` is not an etcd wait", serde_json::to_string(other).unwrap_or_default()))),
    }
}

fn status_table(by: &BTreeMap<String, Result<crate::probe::etcd::MemberStatus, String>>) -> String {
    by.iter()
        .map(|(n, s)| match s {
            Ok(s) => format!(
                "  {n:<10} leader={:x} term={} index={} revision={}\n",
                s.leader, s.raft_term, s.raft_index, s.revision
            ),
            Err(e) => format!("  {n:<10} no status: {e}\n"),
        })
        .collect()
}

/// Quorum checks; None when `spec` is not one of them.
pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Option<Result<CheckOutcome, StepEnd>> {
    let r = match spec {
        CheckSpec::WritesContinue { max_gap } => writes_continue(ctx, st, *max_gap).await,
        CheckSpec::Failover { within, election_timeouts } => failover(ctx, st, *within, *election_timeouts).await,
        CheckSpec::WritesFail { window } => writes_fail(ctx, st, *window).await,
        CheckSpec::LinearizableReadsFail => reads(ctx, st, false).await,
        CheckSpec::SerializableReadsAnswer => reads(ctx, st, true).await,
        CheckSpec::IsolatedLeaderRefusesWrites => isolated_leader(ctx, st).await,
        CheckSpec::MajorityElectsNewLeader { within } => majority_elects(ctx, st, *within).await,
        CheckSpec::NoLostWrites => no_lost_writes(ctx, st).await,
        CheckSpec::Converged { within } => converged(ctx, st, *within).await,
        CheckSpec::WritesSucceed { within } => writes_succeed(ctx, st, *within).await,
        _ => return None,
    };
    Some(r)
}

fn fault_at(st: &CaseState) -> Result<Instant, StepEnd> {
    st.last_fault_at.ok_or_else(|| err("this check measures from the last fault, and no fault was injected yet"))
}

/// Waits (bounded) until every put the probe started so far has ended.
async fn settle(ctx: &RunContext, st: &CaseState, h: &Arc<WriteHistory>) {
    let upto = h.started_count();
    (ctx.progress)(&st.name, "waiting for the puts in flight to end");
    let _ = poll(Duration::from_secs(30), POLL, || {
        let h = h.clone();
        async move { h.finished_below(upto).then_some(()) }
    })
    .await;
}

async fn writes_continue(ctx: &RunContext, st: &mut CaseState, max_gap: Duration) -> Result<CheckOutcome, StepEnd> {
    let h = writes(st)?;
    let from =
        st.last_fault_at.or(st.probes.quorum.as_ref().and_then(|q| q.writes_started)).unwrap_or_else(Instant::now);
    let to = Instant::now();
    // a put started in the window may still be waiting for its deadline: let it end
    settle(ctx, st, &h).await;
    Ok(q::writes_continue(&h.ops(), st.timeline.start(), from, to, max_gap))
}

async fn failover(
    ctx: &RunContext,
    st: &mut CaseState,
    within: Option<Duration>,
    factor: Option<f64>,
) -> Result<CheckOutcome, StepEnd> {
    let h = writes(st)?;
    let f = fault_at(st)?;
    let (et, et_why) = election_timeout(ctx);
    let (bound, why) = match (within, factor) {
        (Some(w), _) => (w, "as the suite sets it".to_string()),
        (None, x) => {
            let k = x.unwrap_or(3.0);
            (q::failover_bound(et, k), format!("{k} × {et_why}"))
        }
    };
    (ctx.progress)(&st.name, "waiting for the first acknowledged write after the fault");
    // watch up to twice the bound, so a late failover is still measured
    let watch = (f + bound * 2).saturating_duration_since(Instant::now());
    let _ = poll(watch, Duration::from_millis(20), || {
        let h = h.clone();
        async move { h.ops().iter().any(|o| o.outcome.is_ack() && o.start >= f).then_some(()) }
    })
    .await;
    let mut c = q::failover(&h.ops(), st.timeline.start(), f, Instant::now(), bound, &why);
    // the leader now, against the one before the fault
    let readers = state(ctx, st).await?.readers.clone();
    let (now, by) = current_leader(&readers).await;
    let ids = st.probes.quorum.as_ref().and_then(|q| q.status.as_ref()).map(|s| s.ids()).unwrap_or_default();
    let old = st.leader_before_fault;
    let leader_line = match (old, now) {
        (Some(o), Some((n, term))) if o != n => {
            format!("leader {} → {} (term {term})", name_by_id(&by, &ids, o), name_by_id(&by, &ids, n))
        }
        (Some(o), Some((n, _))) => {
            if c.passed && st.faulted_members.iter().any(|m| *m == name_by_id(&by, &ids, o)) {
                c.passed = false;
                c.message = format!(
                    "{}; but the leader is still {}, the member the fault hit",
                    c.message,
                    name_by_id(&by, &ids, n)
                );
            }
            format!("leader unchanged: {}", name_by_id(&by, &ids, n))
        }
        (_, None) => {
            if c.passed {
                c.passed = false;
                c.message = format!("{}; but no leader is known to a majority now", c.message);
            }
            "no leader known to a majority now".into()
        }
        (None, Some((n, _))) => format!("leader now {}", name_by_id(&by, &ids, n)),
    };
    c.evidence = format!("{leader_line}\n{}{}", status_table(&by), c.evidence);
    if let Some(m) = c.measurements.first() {
        st.timeline
            .record("measure", format!("failover {:.3}s (bound {:.3}s): {leader_line}", m.value, bound.as_secs_f64()));
    }
    Ok(c)
}

async fn alive_count(readers: &MemberClients) -> usize {
    let answers = futures::future::join_all(readers.members.iter().map(|m| pq::status_via(readers, &m.endpoint))).await;
    answers.iter().filter(|a| a.is_ok()).count()
}

async fn writes_fail(ctx: &RunContext, st: &mut CaseState, window: Duration) -> Result<CheckOutcome, StepEnd> {
    let h = writes(st)?;
    let readers = state(ctx, st).await?.readers.clone();
    let from = Instant::now();
    (ctx.progress)(&st.name, &format!("watching writes for {}", pq::secs(window)));
    tokio::time::sleep(window).await; // the observation window itself
    let to = Instant::now();
    // every put started in the window ends within its own deadline
    settle(ctx, st, &h).await;
    let alive = alive_count(&readers).await;
    Ok(q::writes_fail(&h.ops(), st.timeline.start(), from, to, readers.members.len(), alive))
}

async fn reads(ctx: &RunContext, st: &mut CaseState, serializable: bool) -> Result<CheckOutcome, StepEnd> {
    let key = st
        .probes
        .quorum
        .as_ref()
        .and_then(|q| q.writes.as_ref().map(|w| w.prefix.clone()))
        .unwrap_or_else(|| format!("/hadrill/{}/", ctx.ledger.run_id()));
    let readers = state(ctx, st).await?.readers.clone();
    let timeout = ctx.target.etcd.as_ref().map(|e| e.request_timeout).unwrap_or(Duration::from_secs(2));
    let mut rs = Vec::new();
    for m in &readers.members {
        let reachable = pq::status_via(&readers, &m.endpoint).await.is_ok();
        let answer =
            pq::read_via(&readers, &m.endpoint, &key, true, 1, serializable, timeout).await.map(|(rev, _)| rev);
        rs.push(q::ReadResult { member: m.name.clone(), reachable, answer });
    }
    Ok(if serializable {
        q::serializable_reads_answer(&rs)
    } else {
        q::linearizable_reads_fail(&rs, readers.members.len())
    })
}

async fn isolated_leader(ctx: &RunContext, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let f = fault_at(st)?;
    let old = st.leader_before_fault.ok_or_else(|| err("the leader before the fault is not known"))?;
    let (et, _) = election_timeout(ctx);
    let bound = et * 5;
    let qs = state(ctx, st).await?;
    let (writers, readers) = (qs.writers.clone(), qs.readers.clone());
    let base_seq = u64::MAX / 2 + qs.extra_seq * 1000;
    qs.extra_seq += 1;
    // which member is the old leader
    let answers =
        futures::future::join_all(readers.members.iter().map(|m| pq::status_via(&readers, &m.endpoint))).await;
    let mut member = None;
    for (m, a) in readers.members.iter().zip(&answers) {
        if matches!(a, Ok(s) if s.member_id == old) {
            member = Some(m.clone());
        }
    }
    let member = match member {
        Some(m) => m,
        None => {
            let ids = st.probes.quorum.as_ref().and_then(|q| q.status.as_ref()).map(|s| s.ids()).unwrap_or_default();
            let name = ids.iter().find(|(_, i)| **i == old).map(|(n, _)| n.clone());
            match name.and_then(|n| readers.members.iter().find(|m| m.name == n).cloned()) {
                Some(m) => m,
                None => {
                    return Err(err(format!(
                        "the old leader {old:x} does not answer a status request: it must stay up, cut off"
                    )))
                }
            }
        }
    };
    if !st.faulted_members.contains(&member.name) {
        return Err(err(format!("the last fault did not cut off the old leader {}: isolate it first", member.name)));
    }
    (ctx.progress)(&st.name, &format!("sending puts to the isolated old leader {}", member.name));
    let mut direct: Vec<WriteOp> = Vec::new();
    let mut stepped: Option<Duration> = None;
    let end = f + bound;
    let prefix = writes(st).map(|w| w.prefix.clone()).unwrap_or_else(|_| case_prefix(ctx, st));
    let mut i = 0u64;
    while Instant::now() < end && !(stepped.is_some() && direct.len() >= 2) {
        let start = Instant::now();
        let key = format!("{prefix}isolated-{i:04}");
        let value = format!("isolated {i}");
        let r = pq::put_via(&writers, &member.endpoint, &key, &value, et).await;
        direct.push(WriteOp {
            seq: base_seq + i,
            key,
            value,
            start,
            end: Instant::now(),
            start_wall: st.timeline.wall_at(start),
            member: member.name.clone(),
            attempts: 1,
            outcome: match r {
                Ok(rev) => Outcome::Acknowledged { revision: rev },
                Err((pq::ErrorKind::NotApplied, e)) => Outcome::Failed { error: e },
                Err((_, e)) => Outcome::Unknown { error: e },
            },
        });
        i += 1;
        if stepped.is_none() {
            if let Ok(s) = pq::status_via(&readers, &member.endpoint).await {
                if s.leader != s.member_id {
                    stepped = Some(Instant::now().saturating_duration_since(f));
                    st.timeline.record(
                        "check",
                        format!("isolated old leader {} stepped down (now sees leader {:x})", member.name, s.leader),
                    );
                }
            }
        }
    }
    let now = Instant::now();
    let mut ops: Vec<WriteOp> =
        writes(st).map(|w| w.ops()).unwrap_or_default().into_iter().filter(|o| o.start <= now).collect();
    ops.extend(direct.iter().cloned());
    Ok(q::isolated_leader_refuses(&ops, st.timeline.start(), &member.name, f, Duration::ZERO, stepped, bound))
}

async fn majority_elects(ctx: &RunContext, st: &mut CaseState, within: Duration) -> Result<CheckOutcome, StepEnd> {
    let f = fault_at(st)?;
    let old = st.leader_before_fault.ok_or_else(|| err("the leader before the fault is not known"))?;
    let qs = state(ctx, st).await?;
    let readers = qs.readers.clone();
    let history = qs.status.clone();
    let side: BTreeSet<String> =
        readers.members.iter().map(|m| m.name.clone()).filter(|n| !st.faulted_members.contains(n)).collect();
    let n = readers.members.len();
    let mut samples: Vec<q::LeaderSample> = Vec::new();
    let mut ids: BTreeMap<String, u64> = history.as_ref().map(|h| h.ids()).unwrap_or_default();
    let end = f + within;
    (ctx.progress)(&st.name, "waiting for the majority to elect a new leader");
    let found = loop {
        if let Some(h) = &history {
            for s in h.samples() {
                if let Ok(x) = &s.result {
                    ids.insert(s.member.clone(), x.member_id);
                    samples.push(q::LeaderSample {
                        at: s.at,
                        member: s.member.clone(),
                        leader: x.leader,
                        term: x.raft_term,
                    });
                }
            }
        }
        let at = Instant::now();
        let answers =
            futures::future::join_all(readers.members.iter().map(|m| pq::status_via(&readers, &m.endpoint))).await;
        for (m, a) in readers.members.iter().zip(answers) {
            if let Ok(x) = a {
                ids.insert(m.name.clone(), x.member_id);
                samples.push(q::LeaderSample { at, member: m.name.clone(), leader: x.leader, term: x.raft_term });
            }
        }
        samples.sort_by_key(|x| x.at);
        samples.dedup();
        if let Some(x) = q::new_leader_elected(&samples, &ids, &side, n, old, f) {
            break Some(x);
        }
        if Instant::now() >= end {
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    let ids2 = ids.clone();
    let name_of = move |id: u64| {
        ids2.iter().find(|(_, i)| **i == id).map(|(n, _)| n.clone()).unwrap_or_else(|| format!("{id:x}"))
    };
    Ok(q::majority_elects(found, name_of, old, f, Instant::now(), within, &side))
}

/// A linearizable read of the whole prefix through the first member that answers.
async fn read_all(
    readers: &MemberClients,
    prefix: &str,
    deadline: Duration,
    timeout: Duration,
) -> Result<(i64, BTreeMap<String, String>), String> {
    let mut last = String::from("no member answered");
    let end = Instant::now() + deadline;
    loop {
        for m in &readers.members {
            match pq::read_via(readers, &m.endpoint, prefix, true, 0, false, timeout).await {
                Ok((rev, kvs)) => return Ok((rev, kvs.into_iter().collect())),
                Err(e) => last = format!("{}: {e}", m.name),
            }
        }
        if Instant::now() >= end {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn no_lost_writes(ctx: &RunContext, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let h = writes(st)?;
    let readers = state(ctx, st).await?.readers.clone();
    let ops = h.ops();
    (ctx.progress)(&st.name, "reading back every acknowledged write");
    let timeout = Duration::from_secs(5);
    let (rev, present) = read_all(&readers, &h.prefix, Duration::from_secs(20), timeout)
        .await
        .map_err(|e| err(format!("cannot read back the written keys under {}: {e}", h.prefix)))?;
    Ok(q::no_lost_writes(&ops, st.timeline.start(), &present, rev))
}

async fn converged(ctx: &RunContext, st: &mut CaseState, within: Duration) -> Result<CheckOutcome, StepEnd> {
    let readers = state(ctx, st).await?.readers.clone();
    let t0 = Instant::now();
    (ctx.progress)(&st.name, "waiting for every member to converge");
    let timeout = ctx.target.etcd.as_ref().map(|e| e.request_timeout).unwrap_or(Duration::from_secs(2));
    // the revision the cluster has reached now (a linearizable read)
    let (target_rev, _) = read_all(&readers, "/hadrill/converged-probe", within, timeout)
        .await
        .map_err(|e| err(format!("no linearizable read answered to fix the revision to compare at: {e}")))?;
    let end = t0 + within;
    loop {
        let revs =
            futures::future::join_all(readers.members.iter().map(|m| pq::status_via(&readers, &m.endpoint))).await;
        let mut hs = Vec::new();
        for (m, r) in readers.members.iter().zip(revs) {
            let revision = r.map(|s| s.revision);
            let hash = match revision {
                Ok(x) if x >= target_rev => Some(pq::hash_kv_via(&readers, &m.endpoint, target_rev, timeout).await),
                _ => None,
            };
            hs.push(q::MemberHash { member: m.name.clone(), revision, hash });
        }
        let mut c = q::converged(&hs, target_rev, t0.elapsed());
        if c.passed || Instant::now() >= end {
            for m in &mut c.measurements {
                m.bound = Some(within.as_secs_f64());
            }
            return Ok(c);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn writes_succeed(ctx: &RunContext, st: &mut CaseState, within: Duration) -> Result<CheckOutcome, StepEnd> {
    let prefix = writes(st).map(|w| w.prefix.clone()).unwrap_or_else(|_| case_prefix(ctx, st));
    let history = writes(st).ok();
    let qs = state(ctx, st).await?;
    let writers = qs.writers.clone();
    let seq = u64::MAX / 4 + qs.extra_seq;
    qs.extra_seq += 1;
    let t0 = Instant::now();
    let key = format!("{prefix}check-{seq:x}");
    let value = format!("writes_succeed {seq}");
    let mut errors: Vec<String> = Vec::new();
    let mut i = 0usize;
    (ctx.progress)(&st.name, "putting a key through the cluster");
    let got = loop {
        let m = &writers.members[i % writers.members.len()];
        i += 1;
        let left = (t0 + within).saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        let start = Instant::now();
        match pq::put_via(&writers, &m.endpoint, &key, &value, left.min(Duration::from_secs(2))).await {
            Ok(rev) => break Some((m.name.clone(), rev, start)),
            Err((_, e)) => {
                if errors.len() < 10 {
                    errors.push(format!("{}: {e}", m.name));
                }
                if i % writers.members.len() == 0 {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    };
    let took = t0.elapsed();
    let m = crate::report::Measurement::new("write_after_heal", (took.as_secs_f64() * 1000.0).round() / 1000.0, "s")
        .with_bound(within.as_secs_f64());
    Ok(match got {
        Some((member, rev, start)) => {
            if let Some(h) = history {
                h.push(WriteOp {
                    seq,
                    key: key.clone(),
                    value,
                    start,
                    end: Instant::now(),
                    start_wall: st.timeline.wall_at(start),
                    member: member.clone(),
                    attempts: i as u32,
                    outcome: Outcome::Acknowledged { revision: rev },
                });
            }
            CheckOutcome::pass(
                "writes_succeed",
                format!("{key} acknowledged via {member} at revision {rev} after {}", pq::secs(took)),
            )
            .with_measurement(m)
        }
        None => CheckOutcome::fail(
            "writes_succeed",
            format!("no put acknowledged within {} ({} attempts)", pq::secs(within), i),
        )
        .with_measurement(m)
        .with_evidence(errors.join("\n")),
    })
}

/// The rig member's network identity, or why a network fault cannot reach it.
fn net_member(rig: &RigState, name: &str) -> Result<NetMember, StepEnd> {
    let m = rig
        .members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| err(format!("member {name} is not one of the rig's members")))?;
    let netns = m.netns.clone().ok_or_else(|| {
        StepEnd::Skip("network faults need members in network namespaces of their own: start the rig as root with --isolation netns".into())
    })?;
    Ok(NetMember { name: m.name.clone(), netns, ip: m.ip.clone() })
}

fn peer_ports(rig: &RigState) -> Result<Vec<u16>, StepEnd> {
    let mut ports = BTreeSet::new();
    for m in &rig.members {
        let port = m
            .peer_url
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| err(format!("member {}: peer URL {} has no port", m.name, m.peer_url)))?;
        ports.insert(port);
    }
    Ok(ports.into_iter().collect())
}

/// Partition and peer-latency faults.
pub async fn inject_net(ctx: &RunContext, spec: &FaultSpec, st: &mut CaseState, rig: &RigState) -> Result<(), StepEnd> {
    let ports = peer_ports(rig)?;
    let (faults, hit): (Vec<Fault>, Vec<String>) = match spec {
        FaultSpec::Partition { isolate, dead_man } => {
            let n = rig.members.len();
            let k = q::partition_size(n, isolate).map_err(err)?;
            let role = match isolate {
                PartitionSide::Leader | PartitionSide::LeaderMinority => MemberRole::Leader,
                PartitionSide::Followers(_) | PartitionSide::FollowerMajority => MemberRole::Follower,
            };
            let (_, mut names) = super::steps::pick_members(ctx, st, role, k).await?;
            if role == MemberRole::Leader {
                // the leader first, then random followers
                let rest = names.split_off(1);
                let mut rest = rest;
                rest.shuffle(&mut st.rng);
                names.extend(rest);
            }
            let isolated: Vec<NetMember> = names.iter().map(|n| net_member(rig, n)).collect::<Result<_, _>>()?;
            let other: Vec<&crate::rig::MemberState> =
                rig.members.iter().filter(|m| !names.contains(&m.name)).collect();
            let f = Fault::Partition {
                token: net::new_token(),
                isolated,
                others: other.iter().map(|m| m.ip.clone()).collect(),
                other_names: other.iter().map(|m| m.name.clone()).collect(),
                peer_ports: ports,
                dead_man_secs: dead_man.as_secs().max(1),
            };
            (vec![f], names)
        }
        FaultSpec::PeerLatency { role, count, delay, dead_man } => {
            let (_, names) = super::steps::pick_members(ctx, st, *role, *count).await?;
            let mut out = Vec::new();
            for n in &names {
                let m = net_member(rig, n)?;
                let peer = rig
                    .members
                    .iter()
                    .find(|x| x.name != *n)
                    .ok_or_else(|| err("latency needs at least two members"))?;
                let dev = net::dev_towards(&m.netns, &peer.ip).await.map_err(err)?;
                out.push(Fault::PeerLatency {
                    token: net::new_token(),
                    member: m,
                    dev,
                    peer_ports: ports.clone(),
                    delay_ms: delay.as_millis() as u64,
                    dead_man_secs: dead_man.as_secs().max(1),
                });
            }
            (out, names)
        }
        _ => return Err(err("not a network fault")),
    };
    st.faulted_members = hit;
    for f in faults {
        (ctx.progress)(&st.name, &format!("injecting: {}", f.describe()));
        st.timeline.record("fault", format!("injecting: {}", f.describe()));
        let g = match fault::inject(&ctx.ledger, f).await {
            Ok(g) => g,
            Err(e) => {
                let m = crate::exit::chain(&e);
                if m.contains("no tc netem") {
                    return Err(StepEnd::Skip(m));
                }
                return Err(err(m));
            }
        };
        st.last_fault_at = Some(Instant::now());
        st.timeline.record("fault", format!("injected: {}", g.description()));
        st.log(format!("injected: {}", g.description()));
        st.guards.push(g);
    }
    Ok(())
}
