//! The timeline of one case: every probe sample, fault and check with a monotonic offset and
//! a wall-clock timestamp.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One thing that happened during a case.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Monotonic time since the case started.
    #[serde(with = "crate::report::secs")]
    pub offset: Duration,
    /// Wall-clock time (UTC), for lining up with logs of the cluster.
    pub wall: DateTime<Utc>,
    /// Who wrote it: `fault`, `probe:etcd-write`, `check`, `step` …
    pub source: String,
    pub message: String,
}

/// Shared by every probe, fault and check of one case.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    start_wall: DateTime<Utc>,
    events: Mutex<Vec<Event>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self { start: Instant::now(), start_wall: Utc::now(), events: Mutex::new(Vec::new()) }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn start_wall(&self) -> DateTime<Utc> {
        self.start_wall
    }

    /// Records an event now.
    pub fn record(&self, source: impl Into<String>, message: impl Into<String>) {
        self.record_at(Instant::now(), source, message);
    }

    /// Records an event that happened at `at` (a probe's own measurement).
    pub fn record_at(&self, at: Instant, source: impl Into<String>, message: impl Into<String>) {
        let offset = at.saturating_duration_since(self.start);
        let wall = self.wall_at(at);
        let ev = Event { offset, wall, source: source.into(), message: message.into() };
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        // keep the timeline ordered by monotonic time even when probes report late
        let pos = events.partition_point(|e| e.offset <= ev.offset);
        events.insert(pos, ev);
    }

    /// The wall-clock time of a monotonic instant, derived from the case's start.
    pub fn wall_at(&self, at: Instant) -> DateTime<Utc> {
        let off = at.saturating_duration_since(self.start);
        self.start_wall + chrono::Duration::from_std(off).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The events as text, one a line: `+12.345s 2026-11-21T10:00:00.123Z [source] message`.
    pub fn render(events: &[Event]) -> String {
        let mut out = String::new();
        for e in events {
            out.push_str(&format!(
                "+{:>8.3}s {} [{}] {}\n",
                e.offset.as_secs_f64(),
                e.wall.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.source,
                e.message
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_reports_are_placed_in_order() {
        let t = Timeline::new();
        let early = Instant::now();
        t.record_at(early + Duration::from_millis(20), "b", "second");
        t.record_at(early, "a", "first");
        let ev = t.events();
        assert_eq!(ev[0].message, "first");
        assert_eq!(ev[1].message, "second");
        assert!(ev[0].wall <= ev[1].wall);
        let text = Timeline::render(&ev);
        assert!(text.lines().next().unwrap().contains("[a] first"), "{text}");
    }
}
