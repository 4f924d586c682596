//! The quorum probes: a write probe that puts unique keys at a steady rate through one
//! client per member (rotating, skipping a member that refused), a status probe per member,
//! and one-shot reads, puts and KV hashes through a chosen member. Every request has its own
//! deadline; the probes append to a shared history and write transitions to the timeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use tokio::sync::{watch, Semaphore};

use super::etcd::MemberStatus;
use super::history::{Outcome, StatusHistory, StatusSample, WriteHistory, WriteOp};
use super::Timeline;
use crate::target::etcd::{describe, EtcdTarget};

/// A member as the probes address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub endpoint: String,
}

/// One cached client per member endpoint; a client whose connection broke is dropped and
/// made again on next use (a fresh channel, so a restarted member is reached again).
pub struct MemberClients {
    target: EtcdTarget,
    pub members: Vec<Member>,
    require_leader: bool,
    clients: Mutex<BTreeMap<String, Client>>,
}

impl MemberClients {
    pub fn new(target: EtcdTarget, members: Vec<Member>, require_leader: bool) -> Self {
        Self { target, members, require_leader, clients: Mutex::new(BTreeMap::new()) }
    }

    pub fn target(&self) -> &EtcdTarget {
        &self.target
    }

    pub async fn client(&self, endpoint: &str) -> Result<Client, String> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(endpoint) {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            self.target.connect_timeout + Duration::from_millis(200),
            self.target.member_client_with(endpoint, self.require_leader),
        )
        .await
        .map_err(|_| format!("no connection to {endpoint} within {:?}", self.target.connect_timeout))?
        .map_err(|e| e.to_string())?;
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    pub fn forget(&self, endpoint: &str) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
    }

    pub fn name_of(&self, endpoint: &str) -> String {
        self.members.iter().find(|m| m.endpoint == endpoint).map(|m| m.name.clone()).unwrap_or_else(|| endpoint.into())
    }

    pub fn endpoint_of(&self, name: &str) -> Option<String> {
        self.members.iter().find(|m| m.name == name).map(|m| m.endpoint.clone())
    }
}

/// What an error says about a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Refused before it reached raft (connection refused, no leader): not applied; another
    /// member may take it.
    NotApplied,
    /// It may have been proposed (deadline, leader changed, request timed out …).
    MaybeApplied,
}

/// Classifies a put error from its gRPC code and message (etcd 3.4's texts).
pub fn classify(code: Option<tonic::Code>, message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    let refused = [
        "connection refused",
        "tcp connect error",
        "no leader",
        "dns error",
        "error trying to connect",
        "not connected",
    ];
    if refused.iter().any(|r| m.contains(r)) {
        return ErrorKind::NotApplied;
    }
    match code {
        Some(tonic::Code::Unavailable) if !m.contains("timed out") && !m.contains("leader changed") => {
            // the channel was not ready (no connection): nothing was sent
            if m.contains("transport") || m.is_empty() || m.contains("unavailable") {
                ErrorKind::NotApplied
            } else {
                ErrorKind::MaybeApplied
            }
        }
        _ => ErrorKind::MaybeApplied,
    }
}

fn classify_error(e: &etcd_client::Error) -> ErrorKind {
    match e {
        etcd_client::Error::GRpcStatus(s) => classify(Some(s.code()), s.message()),
        other => classify(None, &crate::exit::chain(other)),
    }
}

/// One put through one member, within `timeout`.
pub async fn put_via(
    clients: &MemberClients,
    endpoint: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<i64, (ErrorKind, String)> {
    let fut = async {
        let mut c = clients.client(endpoint).await.map_err(|e| (ErrorKind::NotApplied, e))?;
        match c.put(key, value, None).await {
            Ok(r) => Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
            Err(e) => {
                let kind = classify_error(&e);
                if matches!(e, etcd_client::Error::TransportError(_)) || kind == ErrorKind::NotApplied {
                    clients.forget(endpoint);
                }
                Err((kind, describe(&e)))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err((ErrorKind::MaybeApplied, format!("no answer within {timeout:?}"))),
    }
}

/// Which member the next write goes to: round robin, skipping members that refused lately.
struct Rotation {
    next: AtomicUsize,
    backoff_until: Mutex<BTreeMap<String, Instant>>,
}

const BACKOFF: Duration = Duration::from_millis(500);

impl Rotation {
    fn order(&self, members: &[Member]) -> Vec<String> {
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let b = self.backoff_until.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..n {
            let m = &members[(start + i) % n];
            match b.get(&m.endpoint) {
                Some(until) if *until > now => waiting.push((*until, m.endpoint.clone())),
                _ => ready.push(m.endpoint.clone()),
            }
        }
        waiting.sort();
        ready.extend(waiting.into_iter().map(|(_, e)| e));
        ready
    }
    fn refused(&self, endpoint: &str) {
        self.backoff_until.lock().unwrap_or_else(|p| p.into_inner()).insert(endpoint.into(), Instant::now() + BACKOFF);
    }
    fn answered(&self, endpoint: &str) {
        self.backoff_until.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
    }
}

/// Settings of the write probe.
#[derive(Debug, Clone)]
pub struct WriteProbe {
    pub per_second: u32,
    pub timeout: Duration,
}

/// Runs the write probe until `stop` turns true; waits (bounded by the request timeout) for
/// the puts in flight before returning, so every op it started is in the history.
pub async fn run_writes(
    cfg: WriteProbe,
    clients: Arc<MemberClients>,
    history: Arc<WriteHistory>,
    timeline: Arc<Timeline>,
    mut stop: watch::Receiver<bool>,
) {
    let rate = cfg.per_second.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // puts run concurrently, so one hanging put does not stop the others
    let max_inflight = ((rate as f64 * (cfg.timeout.as_secs_f64() + 1.0)).ceil() as usize).clamp(4, 512);
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let seq = Arc::new(AtomicU64::new(0));
    let rotation = Arc::new(Rotation { next: AtomicUsize::new(0), backoff_until: Mutex::new(BTreeMap::new()) });
    let state = Arc::new(Mutex::new(Streak::default()));
    timeline.record(
        "probe:etcd-write",
        format!(
            "write probe started: {rate}/s under {}, {:?} per request, require-leader",
            history.prefix, cfg.timeout
        ),
    );
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if *stop.borrow() {
            break;
        }
        let Ok(permit) = inflight.clone().try_acquire_owned() else { continue };
        let n = seq.fetch_add(1, Ordering::Relaxed);
        history.started(n);
        let (clients, history, timeline, rotation, state, cfg) =
            (clients.clone(), history.clone(), timeline.clone(), rotation.clone(), state.clone(), cfg.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let op = one_write(n, &cfg, &clients, &history, &timeline, &rotation).await;
            state.lock().unwrap_or_else(|p| p.into_inner()).note(&op, &timeline);
            history.push(op);
        });
    }
    // wait for the puts in flight (each bounded by its own deadline)
    let _ =
        tokio::time::timeout(cfg.timeout + Duration::from_secs(2), inflight.acquire_many(max_inflight as u32)).await;
    let ops = history.ops();
    let acks = ops.iter().filter(|o| o.outcome.is_ack()).count();
    timeline.record("probe:etcd-write", format!("write probe stopped: {} puts, {acks} acknowledged", ops.len()));
}

async fn one_write(
    n: u64,
    cfg: &WriteProbe,
    clients: &MemberClients,
    history: &WriteHistory,
    timeline: &Timeline,
    rotation: &Rotation,
) -> WriteOp {
    let key = format!("{}{n:08}", history.prefix);
    let start = Instant::now();
    let start_wall = timeline.wall_at(start);
    let value = format!("{n}@{}", start_wall.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    let deadline = start + cfg.timeout;
    let mut attempts = 0;
    let mut unknown: Option<(String, String)> = None;
    let mut last: Option<(String, String)> = None;
    for endpoint in rotation.order(&clients.members) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(5) {
            break;
        }
        attempts += 1;
        match put_via(clients, &endpoint, &key, &value, left).await {
            Ok(revision) => {
                rotation.answered(&endpoint);
                return WriteOp {
                    seq: n,
                    key,
                    value,
                    start,
                    end: Instant::now(),
                    start_wall,
                    member: clients.name_of(&endpoint),
                    attempts,
                    outcome: Outcome::Acknowledged { revision },
                };
            }
            Err((ErrorKind::NotApplied, e)) => {
                rotation.refused(&endpoint);
                last = Some((endpoint.clone(), e));
            }
            Err((ErrorKind::MaybeApplied, e)) => {
                rotation.refused(&endpoint);
                // the put may still apply: retrying elsewhere with the same key and value is
                // safe (a put is idempotent here); the outcome stays unknown unless acked
                unknown = Some((endpoint.clone(), e));
            }
        }
    }
    let end = Instant::now();
    let (member, outcome) = match (unknown, last) {
        (Some((ep, e)), _) => (clients.name_of(&ep), Outcome::Unknown { error: e }),
        (None, Some((ep, e))) => (clients.name_of(&ep), Outcome::Failed { error: e }),
        (None, None) => {
            (String::new(), Outcome::Unknown { error: format!("no member tried within {:?}", cfg.timeout) })
        }
    };
    WriteOp { seq: n, key, value, start, end, start_wall, member, attempts, outcome }
}

/// Writes transitions (acknowledging ↔ not) to the timeline instead of every put.
#[derive(Default)]
struct Streak {
    acking: Option<bool>,
    last_ack_end: Option<Instant>,
    last_failure_note: Option<Instant>,
}

/// An acknowledgement after a gap shorter than this is not news.
const GAP_WORTH_NOTING: Duration = Duration::from_millis(250);
/// At most one failed/unknown put a second on the timeline.
const FAILURE_NOTE_EVERY: Duration = Duration::from_secs(1);

impl Streak {
    fn note(&mut self, op: &WriteOp, timeline: &Timeline) {
        let ack = op.outcome.is_ack();
        if ack {
            let gap = self.last_ack_end.map(|t| op.end.saturating_duration_since(t));
            if self.acking.is_none() || gap.is_some_and(|g| g >= GAP_WORTH_NOTING) {
                let gap = self.last_ack_end.map(|t| op.end.saturating_duration_since(t));
                timeline.record_at(
                    op.end,
                    "probe:etcd-write",
                    match gap {
                        Some(g) => format!(
                            "writes acknowledged again via {} ({} since the previous acknowledgement)",
                            op.member,
                            secs(g)
                        ),
                        None => format!("first write acknowledged via {}", op.member),
                    },
                );
            }
            self.last_ack_end = Some(self.last_ack_end.map_or(op.end, |t| t.max(op.end)));
        } else if self.last_failure_note.is_none_or(|t| op.end.saturating_duration_since(t) >= FAILURE_NOTE_EVERY) {
            self.last_failure_note = Some(op.end);
            let err = match &op.outcome {
                Outcome::Failed { error } | Outcome::Unknown { error } => error.as_str(),
                _ => "",
            };
            timeline.record_at(
                op.end,
                "probe:etcd-write",
                format!("write {} {} via {}: {err}", op.key, op.outcome.label(), op.member),
            );
        }
        self.acking = Some(ack);
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Runs one status poller per member until `stop`; records every sample, and changes of
/// leader, term and reachability on the timeline.
pub async fn run_status(
    interval: Duration,
    clients: Arc<MemberClients>,
    history: Arc<StatusHistory>,
    timeline: Arc<Timeline>,
    stop: watch::Receiver<bool>,
) {
    let names: BTreeMap<String, String> =
        clients.members.iter().map(|m| (m.endpoint.clone(), m.name.clone())).collect();
    let names = Arc::new(names);
    // learn every member's id first, so the first lines already name the leader
    let first = futures::future::join_all(clients.members.iter().map(|m| status_via(&clients, &m.endpoint))).await;
    for (m, r) in clients.members.iter().zip(first) {
        if r.is_ok() {
            history.push(StatusSample { at: Instant::now(), member: m.name.clone(), result: r });
        }
    }
    let tasks: Vec<_> = clients
        .members
        .clone()
        .into_iter()
        .map(|m| {
            let (clients, history, timeline, mut stop, names) =
                (clients.clone(), history.clone(), timeline.clone(), stop.clone(), names.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut last: Option<Result<(u64, u64), String>> = None;
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick() => {}
                    }
                    if *stop.borrow() {
                        break;
                    }
                    let at = Instant::now();
                    let result = status_via(&clients, &m.endpoint).await;
                    let now = match &result {
                        Ok(s) => Ok((s.leader, s.raft_term)),
                        Err(_) => Err(String::new()),
                    };
                    let changed = match (&last, &now) {
                        (None, _) => true,
                        (Some(Ok(a)), Ok(b)) => a != b,
                        (Some(Err(_)), Err(_)) => false,
                        _ => true,
                    };
                    if changed {
                        let msg = match &result {
                            Ok(s) => {
                                let ids = history.ids();
                                let leader = if s.leader == 0 {
                                    "no leader".to_string()
                                } else {
                                    let who = ids.iter().find(|(_, id)| **id == s.leader).map(|(n, _)| n.clone());
                                    format!("leader {}", who.unwrap_or_else(|| format!("{:x}", s.leader)))
                                };
                                format!(
                                    "{}: {leader}, term {}, index {}, revision {}",
                                    m.name, s.raft_term, s.raft_index, s.revision
                                )
                            }
                            Err(e) => format!("{}: no status: {e}", m.name),
                        };
                        timeline.record_at(at, "probe:etcd-status", msg);
                    }
                    last = Some(now);
                    history.push(StatusSample {
                        at,
                        member: names.get(&m.endpoint).cloned().unwrap_or_default(),
                        result,
                    });
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// One member's status through its cached client, within the target's request timeout.
pub async fn status_via(clients: &MemberClients, endpoint: &str) -> Result<MemberStatus, String> {
    let deadline = clients.target().request_timeout;
    let fut = async {
        let mut c = clients.client(endpoint).await?;
        let s = c.status().await.map_err(|e| {
            clients.forget(endpoint);
            describe(&e)
        })?;
        MemberStatus::from_response(endpoint, &s)
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no status answer within {deadline:?}")),
    }
}

/// A read of `key` (a prefix when `prefix`) through one member: linearizable unless
/// `serializable`. Returns the header revision and the key-values.
pub async fn read_via(
    clients: &MemberClients,
    endpoint: &str,
    key: &str,
    prefix: bool,
    limit: i64,
    serializable: bool,
    timeout: Duration,
) -> Result<(i64, Vec<(String, String)>), String> {
    let fut = async {
        let mut c = clients.client(endpoint).await?;
        let mut o = GetOptions::new();
        if prefix {
            o = o.with_prefix();
        }
        if limit > 0 {
            o = o.with_limit(limit);
        }
        if serializable {
            o = o.with_serializable();
        }
        let r = c.get(key, Some(o)).await.map_err(|e| {
            if classify_error(&e) == ErrorKind::NotApplied {
                clients.forget(endpoint);
            }
            describe(&e)
        })?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = r
            .kvs()
            .iter()
            .map(|kv| {
                (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect();
        Ok::<_, String>((rev, kvs))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Deletes every key under `prefix` through one member; returns how many were deleted.
pub async fn delete_prefix_via(
    clients: &MemberClients,
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<i64, String> {
    let fut = async {
        let mut c = clients.client(endpoint).await?;
        let r = c.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix())).await.map_err(|e| {
            if classify_error(&e) == ErrorKind::NotApplied {
                clients.forget(endpoint);
            }
            describe(&e)
        })?;
        Ok::<_, String>(r.deleted())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The KV hash of one member at `revision`.
pub async fn hash_kv_via(
    clients: &MemberClients,
    endpoint: &str,
    revision: i64,
    timeout: Duration,
) -> Result<u32, String> {
    let fut = async {
        let mut c = clients.client(endpoint).await?;
        let r = c.hash_kv(revision).await.map_err(|e| describe(&e))?;
        Ok::<_, String>(r.hash())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no hash answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_not_applied_timeouts_may_be() {
        assert_eq!(classify(Some(tonic::Code::Unavailable), "etcdserver: no leader"), ErrorKind::NotApplied);
        assert_eq!(
            classify(None, "transport error: tcp connect error: Connection refused (os error 111)"),
            ErrorKind::NotApplied
        );
        assert_eq!(classify(Some(tonic::Code::Unavailable), "etcdserver: request timed out"), ErrorKind::MaybeApplied);
        assert_eq!(classify(Some(tonic::Code::Unavailable), "etcdserver: leader changed"), ErrorKind::MaybeApplied);
        assert_eq!(classify(Some(tonic::Code::DeadlineExceeded), "context deadline exceeded"), ErrorKind::MaybeApplied);
        assert_eq!(classify(Some(tonic::Code::Unknown), "h2 protocol error"), ErrorKind::MaybeApplied);
    }

    #[test]
    fn rotation_puts_refusing_members_last() {
        let members: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|n| Member { name: n.to_string(), endpoint: format!("https://{n}:2379") })
            .collect();
        let r = Rotation { next: AtomicUsize::new(0), backoff_until: Mutex::new(BTreeMap::new()) };
        assert_eq!(r.order(&members)[0], "https://a:2379");
        assert_eq!(r.order(&members)[0], "https://b:2379");
        r.refused("https://c:2379");
        let o = r.order(&members);
        assert_eq!(o, ["https://a:2379", "https://b:2379", "https://c:2379"], "c is tried last while it backs off");
        r.answered("https://c:2379");
        assert_eq!(r.order(&members)[0], "https://a:2379");
    }
}
