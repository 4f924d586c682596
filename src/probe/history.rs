//! The recorded history of the etcd probes of one case: every write the write probe made
//! (acknowledged, failed or unknown, with its start and end) and every member status sample.
//! Shared by the probe tasks that append and the checks that read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The cluster acknowledged the put: it must survive every fault that keeps quorum.
    Acknowledged { revision: i64 },
    /// Refused before it could apply (no leader, connection refused …): known not written.
    Failed { error: String },
    /// No answer within the deadline (or an error after which it may still apply).
    Unknown { error: String },
}

impl Outcome {
    pub fn is_ack(&self) -> bool {
        matches!(self, Outcome::Acknowledged { .. })
    }
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Acknowledged { .. } => "acknowledged",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// One put of the write probe.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOp {
    pub seq: u64,
    pub key: String,
    pub value: String,
    pub start: Instant,
    pub end: Instant,
    pub start_wall: DateTime<Utc>,
    /// The member (name, else endpoint) that gave the final answer.
    pub member: String,
    /// Endpoints tried (a connection refused moves on to the next member).
    pub attempts: u32,
    pub outcome: Outcome,
}

/// Every write of the probe, in the order they finished.
#[derive(Debug)]
pub struct WriteHistory {
    /// The key prefix of this probe: `/hadrill/<run>/<case>/`.
    pub prefix: String,
    ops: Mutex<Vec<WriteOp>>,
    /// How many puts the probe has started (seq numbers below this exist or are in flight).
    started: AtomicU64,
}

impl WriteHistory {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ops: Mutex::new(Vec::new()), started: AtomicU64::new(0) }
    }
    /// Notes that put `seq` has started.
    pub fn started(&self, seq: u64) {
        self.started.fetch_max(seq + 1, Ordering::SeqCst);
    }
    pub fn started_count(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
    /// Whether every put numbered below `seq` has finished (is in the history).
    pub fn finished_below(&self, seq: u64) -> bool {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.iter().filter(|o| o.seq < seq).count() as u64 >= seq
    }
    pub fn push(&self, op: WriteOp) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
    /// A copy of every op, sorted by start.
    pub fn ops(&self) -> Vec<WriteOp> {
        let mut v = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|o| (o.start, o.seq));
        v
    }
    pub fn acknowledged_since(&self, t: Instant) -> usize {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|o| o.outcome.is_ack() && o.end >= t).count()
    }
}

/// One status sample of one member.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSample {
    pub at: Instant,
    pub member: String,
    pub result: Result<crate::probe::etcd::MemberStatus, String>,
}

/// Every status sample of the status probe.
#[derive(Debug, Default)]
pub struct StatusHistory {
    samples: Mutex<Vec<StatusSample>>,
    /// member name → id, learned from the answers.
    ids: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl StatusHistory {
    pub fn push(&self, s: StatusSample) {
        if let Ok(st) = &s.result {
            self.ids.lock().unwrap_or_else(|p| p.into_inner()).insert(s.member.clone(), st.member_id);
        }
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
    pub fn samples(&self) -> Vec<StatusSample> {
        let mut v = self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|s| s.at);
        v
    }
    pub fn ids(&self) -> std::collections::BTreeMap<String, u64> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
