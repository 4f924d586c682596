//! What a run recorded: the target's facts, the seed, and per case its verdict, times,
//! measured figures, captured output and timeline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;

use crate::probe::Event;

/// The whole run, as every reporter sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub started: DateTime<Utc>,
    #[serde(with = "super::secs")]
    pub duration: Duration,
    pub seed: u64,
    /// Facts about the target (context, server, etcd endpoints, versions when known), in a
    /// stable order. Written as JUnit properties.
    pub target: IndexMap<String, String>,
    /// Cases in declaration order (suite files order, then case order), whatever order they
    /// finished in.
    pub cases: Vec<CaseRecord>,
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRecord {
    pub suite: String,
    pub case: String,
    pub description: String,
    pub disruptive: bool,
    pub verdict: Verdict,
    pub started: DateTime<Utc>,
    #[serde(with = "super::secs")]
    pub duration: Duration,
    /// Every figure the case measured, with the bound it was held to.
    pub measurements: Vec<Measurement>,
    /// Log lines the case wrote (steps, faults, reverts), not the timeline.
    pub output: String,
    pub timeline: Vec<Event>,
}

impl CaseRecord {
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.suite, self.case)
    }
}

/// How a case ended. `Failed` is the cluster failing a check; `Error` is the harness failing
/// to run the case (a JUnit `<error>`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed { message: String, evidence: String },
    Error { message: String, evidence: String },
    Skipped { reason: String },
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed { .. } => "FAILED",
            Verdict::Error { .. } => "ERROR",
            Verdict::Skipped { .. } => "skipped",
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Failed { .. } | Verdict::Error { .. })
    }
}

/// A measured figure and the bound it was held to: "failover 1.23 s (at most 3 s)",
/// "control_plane_nodes 3 nodes (at least 3 nodes)".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measurement {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub bound: Option<f64>,
    /// Which side of the bound passes.
    pub bound_kind: BoundKind,
}

/// Whether a measured figure must stay at or below its bound, or at or above it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BoundKind {
    /// A ceiling: durations, lost writes, disruption.
    #[default]
    AtMost,
    /// A floor: member counts, days of certificate validity left.
    AtLeast,
}

impl BoundKind {
    pub fn words(self) -> &'static str {
        match self {
            BoundKind::AtMost => "at most",
            BoundKind::AtLeast => "at least",
        }
    }
}

impl Measurement {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self { name: name.into(), value, unit: unit.into(), bound: None, bound_kind: BoundKind::AtMost }
    }
    /// A ceiling: the figure passes at or below `bound`.
    pub fn with_bound(mut self, bound: f64) -> Self {
        self.bound = Some(bound);
        self.bound_kind = BoundKind::AtMost;
        self
    }
    /// A floor: the figure passes at or above `bound`.
    pub fn with_min(mut self, bound: f64) -> Self {
        self.bound = Some(bound);
        self.bound_kind = BoundKind::AtLeast;
        self
    }
    /// Whether the figure is within its bound (true when it has none).
    pub fn within(&self) -> bool {
        match (self.bound, self.bound_kind) {
            (None, _) => true,
            (Some(b), BoundKind::AtMost) => self.value <= b,
            (Some(b), BoundKind::AtLeast) => self.value >= b,
        }
    }
}

/// Counts for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl RunRecord {
    pub fn counts(&self) -> Counts {
        counts(self.cases.iter())
    }
}

pub fn counts<'a>(cases: impl Iterator<Item = &'a CaseRecord>) -> Counts {
    let mut c = Counts::default();
    for r in cases {
        match r.verdict {
            Verdict::Passed => c.passed += 1,
            Verdict::Failed { .. } => c.failed += 1,
            Verdict::Error { .. } => c.errors += 1,
            Verdict::Skipped { .. } => c.skipped += 1,
        }
    }
    c
}
