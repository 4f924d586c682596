//! Quorum checks over the recorded history: write gaps, failover time, writes refused
//! without quorum, an isolated leader refusing writes, a new leader on the majority side, no
//! acknowledged write lost, convergence of revisions and KV hashes, reads with and without
//! quorum. Pure functions: the engine gathers the data, these judge it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{quorum_size, quorum_tolerance, CheckOutcome};
use crate::probe::history::{Outcome, WriteOp};
use crate::report::Measurement;

fn s(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The failover bound: `factor` election timeouts.
pub fn failover_bound(election_timeout: Duration, factor: f64) -> Duration {
    election_timeout.mul_f64(factor.max(0.0))
}

/// A few lines of the ops around an instant, for evidence.
pub fn ops_table(ops: &[WriteOp], base: Instant, around: Option<(Instant, Instant)>, max: usize) -> String {
    let mut out = String::new();
    let chosen: Vec<&WriteOp> = match around {
        Some((a, b)) => ops.iter().filter(|o| o.end >= a && o.start <= b).collect(),
        None => ops.iter().collect(),
    };
    let total = chosen.len();
    for o in chosen.iter().take(max) {
        let detail = match &o.outcome {
            Outcome::Acknowledged { revision } => format!("rev {revision}"),
            Outcome::Failed { error } | Outcome::Unknown { error } => error.clone(),
        };
        out.push_str(&format!(
            "  +{:>8.3}s..+{:>8.3}s {:<12} {:<12} {} ({detail})\n",
            o.start.saturating_duration_since(base).as_secs_f64(),
            o.end.saturating_duration_since(base).as_secs_f64(),
            o.outcome.label(),
            o.member,
            o.key
        ));
    }
    if total > max {
        out.push_str(&format!("  … {} more\n", total - max));
    }
    out
}

/// The longest stretch of `[from, to]` without an acknowledgement (by end time), with where
/// it lies.
pub fn longest_ack_gap(ops: &[WriteOp], from: Instant, to: Instant) -> (Duration, Instant, Instant) {
    let mut ends: Vec<Instant> =
        ops.iter().filter(|o| o.outcome.is_ack() && o.end >= from && o.end <= to).map(|o| o.end).collect();
    ends.sort();
    let mut prev = from;
    let mut best = (Duration::ZERO, from, from);
    for e in ends.into_iter().chain(std::iter::once(to)) {
        let g = e.saturating_duration_since(prev);
        if g > best.0 {
            best = (g, prev, e);
        }
        prev = e;
    }
    best
}

/// Writes kept being acknowledged over `[from, to]`: no gap longer than `max_gap`.
pub fn writes_continue(ops: &[WriteOp], base: Instant, from: Instant, to: Instant, max_gap: Duration) -> CheckOutcome {
    const N: &str = "writes_continue";
    let acks = ops.iter().filter(|o| o.outcome.is_ack() && o.end >= from && o.end <= to).count();
    let other = ops.iter().filter(|o| !o.outcome.is_ack() && o.end >= from && o.end <= to).count();
    let tried = ops.iter().filter(|o| o.start <= to && o.end >= from).count();
    let (gap, a, b) = longest_ack_gap(ops, from, to);
    let m = Measurement::new("write_gap_max", r3(gap.as_secs_f64()), "s").with_bound(max_gap.as_secs_f64());
    let at = |t: Instant| t.saturating_duration_since(base).as_secs_f64();
    let out = if tried == 0 {
        CheckOutcome::fail(
            N,
            format!("the write probe made no put in the {} window: nothing shows writes continued", s(to - from)),
        )
    } else if gap > max_gap {
        CheckOutcome::fail(
            N,
            format!(
                "no write acknowledged for {} (from +{:.3}s to +{:.3}s), bound {}: in the {} window {acks} puts acknowledged, {other} refused or unanswered",
                s(gap),
                at(a),
                at(b),
                s(max_gap),
                s(to - from)
            ),
        )
    } else {
        CheckOutcome::pass(
            N,
            format!(
                "in {} {acks} puts acknowledged, {other} refused or unanswered; longest gap {} ≤ {}",
                s(to - from),
                s(gap),
                s(max_gap)
            ),
        )
    };
    out.with_measurement(m).with_evidence(ops_table(ops, base, Some((a, b)), 40))
}

/// Fault → first acknowledged write (of a put started after the fault), against `bound`.
/// `observed_until` is how long the history was watched.
pub fn failover(
    ops: &[WriteOp],
    base: Instant,
    fault_at: Instant,
    observed_until: Instant,
    bound: Duration,
    bound_why: &str,
) -> CheckOutcome {
    const N: &str = "failover";
    let first = ops.iter().filter(|o| o.outcome.is_ack() && o.start >= fault_at).min_by_key(|o| o.end);
    match first {
        None => {
            let waited = observed_until.saturating_duration_since(fault_at);
            CheckOutcome::fail(
                N,
                format!("no write acknowledged in the {} after the fault, bound {} ({bound_why})", s(waited), s(bound)),
            )
            .with_measurement(
                Measurement::new("failover", r3(waited.as_secs_f64()), "s").with_bound(bound.as_secs_f64()),
            )
            .with_evidence(ops_table(ops, base, Some((fault_at, observed_until)), 40))
        }
        Some(o) => {
            let t = o.end.saturating_duration_since(fault_at);
            let m = Measurement::new("failover", r3(t.as_secs_f64()), "s").with_bound(bound.as_secs_f64());
            let out = if t <= bound {
                CheckOutcome::pass(
                    N,
                    format!(
                        "first write acknowledged {} after the fault via {} ≤ bound {} ({bound_why})",
                        s(t),
                        o.member,
                        s(bound)
                    ),
                )
            } else {
                CheckOutcome::fail(
                    N,
                    format!(
                        "first write acknowledged {} after the fault via {}, bound {} ({bound_why})",
                        s(t),
                        o.member,
                        s(bound)
                    ),
                )
            };
            out.with_measurement(m).with_evidence(ops_table(ops, base, Some((fault_at, o.end)), 40))
        }
    }
}

/// No put started in `[from, to]` was acknowledged, and some were tried.
pub fn writes_fail(
    ops: &[WriteOp],
    base: Instant,
    from: Instant,
    to: Instant,
    members: usize,
    alive: usize,
) -> CheckOutcome {
    const N: &str = "writes_fail";
    let window: Vec<&WriteOp> = ops.iter().filter(|o| o.start >= from && o.start <= to).collect();
    let acked: Vec<&&WriteOp> = window.iter().filter(|o| o.outcome.is_ack()).collect();
    let quorum = quorum_size(members);
    let out = if window.is_empty() {
        CheckOutcome::fail(
            N,
            format!("the write probe made no put in the {} window: nothing shows writes fail", s(to - from)),
        )
    } else if let Some(first) = acked.first() {
        CheckOutcome::fail(
            N,
            format!(
                "{} of {} puts acknowledged with {alive} of {members} members up (quorum {quorum}); first: {} via {} at +{:.3}s",
                acked.len(),
                window.len(),
                first.key,
                first.member,
                first.end.saturating_duration_since(base).as_secs_f64()
            ),
        )
    } else {
        let failed = window.iter().filter(|o| matches!(o.outcome, Outcome::Failed { .. })).count();
        CheckOutcome::pass(
            N,
            format!(
                "0 of {} puts acknowledged in {} with {alive} of {members} members up (quorum {quorum}): {failed} refused, {} unanswered",
                window.len(),
                s(to - from),
                window.len() - failed
            ),
        )
    };
    out.with_measurement(
        Measurement::new("writes_acknowledged_without_quorum", acked.len() as f64, "puts").with_bound(0.0),
    )
    .with_evidence(ops_table(ops, base, Some((from, to)), 40))
}

/// What one member answered to a read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadResult {
    pub member: String,
    /// Whether the member answers at all (a status request), so its refusal counts.
    pub reachable: bool,
    pub answer: Result<i64, String>,
}

fn reads_table(rs: &[ReadResult]) -> String {
    rs.iter()
        .map(|r| {
            let a = match &r.answer {
                Ok(rev) => format!("answered at revision {rev}"),
                Err(e) => format!("refused: {e}"),
            };
            format!("  {:<10} {} {a}\n", r.member, if r.reachable { "reachable  " } else { "unreachable" })
        })
        .collect()
}

/// Linearizable reads fail through every reachable member (at least one must be reachable).
pub fn linearizable_reads_fail(rs: &[ReadResult], members: usize) -> CheckOutcome {
    const N: &str = "linearizable_reads_fail";
    let reachable: Vec<&ReadResult> = rs.iter().filter(|r| r.reachable).collect();
    let answered: Vec<String> = reachable
        .iter()
        .filter_map(|r| r.answer.as_ref().ok().map(|rev| format!("{} (revision {rev})", r.member)))
        .collect();
    let out = if reachable.is_empty() {
        CheckOutcome::fail(N, "no member is reachable, so no member was shown to refuse a linearizable read")
    } else if !answered.is_empty() {
        CheckOutcome::fail(
            N,
            format!(
                "linearizable read answered through {} with {} of {members} members reachable (quorum {})",
                answered.join(", "),
                reachable.len(),
                quorum_size(members)
            ),
        )
    } else {
        CheckOutcome::pass(
            N,
            format!("all {} reachable member(s) refused linearizable reads without quorum", reachable.len()),
        )
    };
    out.with_evidence(reads_table(rs))
}

/// Serializable reads answer through every reachable member.
pub fn serializable_reads_answer(rs: &[ReadResult]) -> CheckOutcome {
    const N: &str = "serializable_reads_answer";
    let reachable: Vec<&ReadResult> = rs.iter().filter(|r| r.reachable).collect();
    let refused: Vec<String> =
        reachable.iter().filter_map(|r| r.answer.as_ref().err().map(|e| format!("{}: {e}", r.member))).collect();
    let out = if reachable.is_empty() {
        CheckOutcome::fail(N, "no member is reachable: no serializable read could answer")
    } else if !refused.is_empty() {
        CheckOutcome::fail(
            N,
            format!(
                "serializable read refused by {} of {} reachable member(s): {}",
                refused.len(),
                reachable.len(),
                refused.join("; ")
            ),
        )
    } else {
        CheckOutcome::pass(N, format!("serializable reads answered by all {} reachable member(s)", reachable.len()))
    };
    out.with_evidence(reads_table(rs))
}

/// The isolated old leader acknowledged no put after `settle` past the fault (puts sent to
/// it directly, and the probe's puts that it answered), and stepped down within `bound`.
pub fn isolated_leader_refuses(
    ops: &[WriteOp],
    base: Instant,
    member: &str,
    fault_at: Instant,
    settle: Duration,
    stepped_down_after: Option<Duration>,
    bound: Duration,
) -> CheckOutcome {
    const N: &str = "isolated_leader_refuses_writes";
    let from = fault_at + settle;
    let mine: Vec<&WriteOp> = ops.iter().filter(|o| o.member == member && o.start >= from).collect();
    let acked: Vec<&&WriteOp> = mine.iter().filter(|o| o.outcome.is_ack()).collect();
    let mut out = if mine.is_empty() {
        CheckOutcome::fail(
            N,
            format!("no put reached the isolated leader {member} after the fault: its refusal is not shown"),
        )
    } else if let Some(a) = acked.first() {
        CheckOutcome::fail(
            N,
            format!(
                "the isolated old leader {member} acknowledged {} of {} puts started ≥ {} after it was cut off; first {} at +{:.3}s",
                acked.len(),
                mine.len(),
                s(settle),
                a.key,
                a.end.saturating_duration_since(base).as_secs_f64()
            ),
        )
    } else {
        match stepped_down_after {
            Some(d) if d <= bound => CheckOutcome::pass(
                N,
                format!("the isolated old leader {member} acknowledged none of {} puts and stepped down {} after the fault (bound {})", mine.len(), s(d), s(bound)),
            ),
            Some(d) => CheckOutcome::fail(N, format!("the isolated old leader {member} stepped down {} after the fault, bound {}", s(d), s(bound))),
            None => CheckOutcome::fail(N, format!("the isolated old leader {member} still called itself leader {} after the fault, bound {}", s(bound), s(bound))),
        }
    };
    if let Some(d) = stepped_down_after {
        out = out.with_measurement(
            Measurement::new("isolated_leader_step_down", r3(d.as_secs_f64()), "s").with_bound(bound.as_secs_f64()),
        );
    }
    out.with_evidence(ops_table(&mine.into_iter().cloned().collect::<Vec<_>>(), base, None, 40))
}

/// What one member said about the leader at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderSample {
    pub at: Instant,
    pub member: String,
    /// 0 when the member knows no leader.
    pub leader: u64,
    pub term: u64,
}

/// The first moment a majority of all members (counted among `side`) agreed on one leader
/// other than `old`, that leader being on `side`.
pub fn new_leader_elected(
    samples: &[LeaderSample],
    ids: &BTreeMap<String, u64>,
    side: &BTreeSet<String>,
    members: usize,
    old: u64,
    fault_at: Instant,
) -> Option<(Instant, u64, u64)> {
    let quorum = quorum_size(members);
    let side_ids: BTreeSet<u64> = side.iter().filter_map(|n| ids.get(n).copied()).collect();
    let mut latest: BTreeMap<&str, &LeaderSample> = BTreeMap::new();
    let mut sorted: Vec<&LeaderSample> =
        samples.iter().filter(|x| x.at >= fault_at && side.contains(&x.member)).collect();
    sorted.sort_by_key(|x| x.at);
    for x in sorted {
        latest.insert(&x.member, x);
        let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for l in latest.values() {
            if l.leader != 0 && l.leader != old && side_ids.contains(&l.leader) {
                *votes.entry((l.leader, l.term)).or_default() += 1;
            }
        }
        if let Some(((leader, term), _)) = votes.into_iter().find(|(_, n)| *n >= quorum) {
            return Some((x.at, leader, term));
        }
    }
    None
}

/// The majority side elected a new leader within `bound` (from the status samples).
pub fn majority_elects(
    found: Option<(Instant, u64, u64)>,
    name_of: impl Fn(u64) -> String,
    old: u64,
    fault_at: Instant,
    observed_until: Instant,
    bound: Duration,
    side: &BTreeSet<String>,
) -> CheckOutcome {
    const N: &str = "majority_elects_new_leader";
    let side_list = side.iter().cloned().collect::<Vec<_>>().join(", ");
    match found {
        Some((at, leader, term)) => {
            let t = at.saturating_duration_since(fault_at);
            let m = Measurement::new("leader_election", r3(t.as_secs_f64()), "s").with_bound(bound.as_secs_f64());
            let msg = format!(
                "the majority ({side_list}) elected {} in term {term} {} after the fault (old leader {}), bound {}",
                name_of(leader),
                s(t),
                name_of(old),
                s(bound)
            );
            if t <= bound { CheckOutcome::pass(N, msg) } else { CheckOutcome::fail(N, msg) }.with_measurement(m)
        }
        None => CheckOutcome::fail(
            N,
            format!(
                "the majority ({side_list}) did not agree on a new leader other than {} in the {} after the fault, bound {}",
                name_of(old),
                s(observed_until.saturating_duration_since(fault_at)),
                s(bound)
            ),
        ),
    }
}

/// Acknowledged writes missing from (or changed in) what a linearizable read returned.
pub fn lost_writes<'a>(ops: &'a [WriteOp], present: &BTreeMap<String, String>) -> Vec<(&'a WriteOp, Option<&'a str>)> {
    ops.iter()
        .filter(|o| o.outcome.is_ack())
        .filter_map(|o| match present.get(&o.key) {
            None => Some((o, None)),
            Some(v) if v != &o.value => Some((o, Some("changed"))),
            Some(_) => None,
        })
        .collect()
}

/// Every acknowledged write is still there with its value.
pub fn no_lost_writes(
    ops: &[WriteOp],
    base: Instant,
    present: &BTreeMap<String, String>,
    read_at_revision: i64,
) -> CheckOutcome {
    const N: &str = "no_lost_writes";
    let acked = ops.iter().filter(|o| o.outcome.is_ack()).count();
    let unknown = ops.iter().filter(|o| matches!(o.outcome, Outcome::Unknown { .. })).count();
    let unknown_present =
        ops.iter().filter(|o| matches!(o.outcome, Outcome::Unknown { .. }) && present.contains_key(&o.key)).count();
    let lost = lost_writes(ops, present);
    let m = Measurement::new("lost_writes", lost.len() as f64, "writes").with_bound(0.0);
    if acked == 0 {
        return CheckOutcome::fail(N, "the write probe has no acknowledged write: nothing shows writes survive")
            .with_measurement(m);
    }
    if lost.is_empty() {
        return CheckOutcome::pass(
            N,
            format!("all {acked} acknowledged writes readable at revision {read_at_revision} ({unknown_present} of {unknown} unanswered puts applied too)"),
        )
        .with_measurement(m);
    }
    let mut evidence = String::new();
    for (o, why) in lost.iter().take(40) {
        evidence.push_str(&format!(
            "  {} acknowledged at +{:.3}s via {} ({}) {}\n",
            o.key,
            o.end.saturating_duration_since(base).as_secs_f64(),
            o.member,
            match &o.outcome {
                Outcome::Acknowledged { revision } => format!("revision {revision}"),
                _ => String::new(),
            },
            match why {
                None => "is MISSING".to_string(),
                Some(_) => format!("has another value: {:?}", present.get(&o.key).map(String::as_str).unwrap_or("")),
            }
        ));
    }
    let (first, _) = lost[0];
    CheckOutcome::fail(
        N,
        format!(
            "{} of {acked} acknowledged writes lost at revision {read_at_revision}, expected 0; first: {} (acknowledged via {})",
            lost.len(),
            first.key,
            first.member
        ),
    )
    .with_measurement(m)
    .with_evidence(evidence)
}

/// One member's revision and KV hash at the compared revision.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberHash {
    pub member: String,
    pub revision: Result<i64, String>,
    pub hash: Option<Result<u32, String>>,
}

/// Every member reached `target_rev` and reports the same KV hash at it.
pub fn converged(hs: &[MemberHash], target_rev: i64, waited: Duration) -> CheckOutcome {
    const N: &str = "converged";
    let table: String = hs
        .iter()
        .map(|h| {
            format!(
                "  {:<10} revision {:<24} hash@{target_rev} {}\n",
                h.member,
                match &h.revision {
                    Ok(r) => r.to_string(),
                    Err(e) => format!("? ({e})"),
                },
                match &h.hash {
                    Some(Ok(x)) => format!("{x:#010x}"),
                    Some(Err(e)) => format!("? ({e})"),
                    None => "-".into(),
                }
            )
        })
        .collect();
    let silent: Vec<String> =
        hs.iter().filter_map(|h| h.revision.as_ref().err().map(|e| format!("{}: {e}", h.member))).collect();
    let behind: Vec<String> = hs
        .iter()
        .filter_map(|h| match h.revision {
            Ok(r) if r < target_rev => Some(format!("{} at {r}", h.member)),
            _ => None,
        })
        .collect();
    let hashes: BTreeSet<u32> =
        hs.iter().filter_map(|h| h.hash.as_ref().and_then(|x| x.as_ref().ok().copied())).collect();
    let no_hash: Vec<String> = hs
        .iter()
        .filter_map(|h| h.hash.as_ref().and_then(|x| x.as_ref().err()).map(|e| format!("{}: {e}", h.member)))
        .collect();
    let out = if !silent.is_empty() {
        CheckOutcome::fail(
            N,
            format!("after {} {} member(s) do not answer: {}", s(waited), silent.len(), silent.join("; ")),
        )
    } else if !behind.is_empty() {
        CheckOutcome::fail(
            N,
            format!("after {} not every member reached revision {target_rev}: {}", s(waited), behind.join(", ")),
        )
    } else if !no_hash.is_empty() {
        CheckOutcome::fail(N, format!("KV hash at revision {target_rev} not given by: {}", no_hash.join("; ")))
    } else if hashes.len() != 1 {
        let each: Vec<String> = hs
            .iter()
            .filter_map(|h| h.hash.as_ref().and_then(|x| x.as_ref().ok()).map(|x| format!("{}={x:#010x}", h.member)))
            .collect();
        CheckOutcome::fail(N, format!("members disagree on the KV hash at revision {target_rev}: {}", each.join(", ")))
    } else {
        CheckOutcome::pass(
            N,
            format!(
                "all {} members reached revision {target_rev} and agree on KV hash {:#010x} there",
                hs.len(),
                hashes.iter().next().unwrap_or(&0)
            ),
        )
    };
    out.with_measurement(Measurement::new("convergence", r3(waited.as_secs_f64()), "s")).with_evidence(table)
}

/// What `n` members promise: how many may fail with writes going on.
pub fn tolerance_line(n: usize) -> String {
    format!("{n} members: quorum {}, tolerates {} failure(s)", quorum_size(n), quorum_tolerance(n))
}

/// How many members a partition side holds, by kind, for `n` members: the leader alone (1),
/// the leader in the largest minority (`tolerance`), `k` followers, or a majority of followers.
pub fn partition_size(n: usize, side: &crate::suite::PartitionSide) -> Result<usize, String> {
    use crate::suite::PartitionSide as P;
    let tol = quorum_tolerance(n);
    let k = match side {
        P::Leader => 1,
        P::LeaderMinority => tol.max(1),
        P::Followers(k) => *k,
        P::FollowerMajority => quorum_size(n),
    };
    let followers_needed = match side {
        P::Leader | P::LeaderMinority => k - 1,
        _ => k,
    };
    if followers_needed > n.saturating_sub(1) || k == 0 || k >= n {
        return Err(format!(
            "a partition of {k} of {n} members cannot be made ({} follower(s) available)",
            n.saturating_sub(1)
        ));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn ms(base: Instant, x: u64) -> Instant {
        base + Duration::from_millis(x)
    }

    /// (start ms, end ms, outcome 'a' ack / 'f' failed / 'u' unknown, member)
    fn ops(base: Instant, spec: &[(u64, u64, char, &str)]) -> Vec<WriteOp> {
        spec.iter()
            .enumerate()
            .map(|(i, (a, b, k, m))| WriteOp {
                seq: i as u64,
                key: format!("/hadrill/r/c/{i:08}"),
                value: format!("{i}@x"),
                start: ms(base, *a),
                end: ms(base, *b),
                start_wall: Utc::now(),
                member: m.to_string(),
                attempts: 1,
                outcome: match k {
                    'a' => Outcome::Acknowledged { revision: 10 + i as i64 },
                    'f' => Outcome::Failed { error: "etcdserver: no leader".into() },
                    _ => Outcome::Unknown { error: "no answer within 2s".into() },
                },
            })
            .collect()
    }

    #[test]
    fn quorum_math_for_partitions() {
        use crate::suite::PartitionSide as P;
        assert_eq!(partition_size(3, &P::Leader), Ok(1));
        assert_eq!(partition_size(3, &P::LeaderMinority), Ok(1));
        assert_eq!(partition_size(5, &P::LeaderMinority), Ok(2));
        assert_eq!(partition_size(5, &P::FollowerMajority), Ok(3));
        assert_eq!(partition_size(3, &P::Followers(1)), Ok(1));
        assert_eq!(partition_size(3, &P::FollowerMajority), Ok(2), "both followers: the leader is left alone");
        assert!(partition_size(3, &P::Followers(3)).is_err());
        assert_eq!(tolerance_line(5), "5 members: quorum 3, tolerates 2 failure(s)");
        assert_eq!(failover_bound(Duration::from_millis(1000), 3.0), Duration::from_secs(3));
    }

    #[test]
    fn steady_acks_continue_and_a_long_gap_fails_with_the_figure() {
        let b = Instant::now();
        let good = ops(b, &[(0, 10, 'a', "m1"), (100, 110, 'a', "m2"), (200, 210, 'a', "m1"), (300, 310, 'a', "m2")]);
        let c = writes_continue(&good, b, b, ms(b, 400), Duration::from_millis(200));
        assert!(c.passed, "{}", c.message);
        let bad =
            ops(b, &[(0, 10, 'a', "m1"), (100, 2100, 'u', "m3"), (150, 1500, 'a', "m2"), (1600, 1610, 'a', "m1")]);
        let c = writes_continue(&bad, b, b, ms(b, 1700), Duration::from_millis(500));
        assert!(!c.passed);
        assert!(c.message.contains("1.490s") && c.message.contains("bound 0.500s"), "{}", c.message);
        assert_eq!(c.measurements[0].value, 1.49);
        assert_eq!(c.measurements[0].bound, Some(0.5));
        // a silent probe proves nothing
        assert!(!writes_continue(&[], b, b, ms(b, 1000), Duration::from_secs(1)).passed);
    }

    #[test]
    fn failover_is_fault_to_first_ack_of_a_later_put() {
        let b = Instant::now();
        let f = ms(b, 1000);
        // an ack of a put started before the fault does not count
        let h = ops(
            b,
            &[(900, 1100, 'a', "m1"), (1050, 3050, 'u', "m2"), (1500, 2000, 'f', "m3"), (2100, 2350, 'a', "m2")],
        );
        let c = failover(&h, b, f, ms(b, 4000), Duration::from_secs(3), "3 × election timeout 1000ms");
        assert!(c.passed, "{}", c.message);
        assert_eq!(c.measurements[0].value, 1.35);
        let c = failover(&h, b, f, ms(b, 4000), Duration::from_secs(1), "1 × election timeout 1000ms");
        assert!(!c.passed);
        assert!(c.message.contains("1.350s") && c.message.contains("bound 1.000s"), "{}", c.message);
        let none = ops(b, &[(1100, 3100, 'u', "m2")]);
        let c = failover(&none, b, f, ms(b, 7000), Duration::from_secs(3), "x");
        assert!(!c.passed && c.message.contains("no write acknowledged in the 6.000s"), "{}", c.message);
    }

    #[test]
    fn writes_without_quorum_must_not_be_acknowledged() {
        let b = Instant::now();
        let h = ops(b, &[(0, 10, 'a', "m1"), (100, 2100, 'u', "m1"), (200, 210, 'f', "m1")]);
        let c = writes_fail(&h, b, ms(b, 50), ms(b, 300), 3, 1);
        assert!(c.passed, "{}", c.message);
        let h = ops(b, &[(100, 2100, 'u', "m1"), (200, 260, 'a', "m1")]);
        let c = writes_fail(&h, b, ms(b, 50), ms(b, 300), 3, 1);
        assert!(
            !c.passed && c.message.contains("1 of 2 puts acknowledged with 1 of 3 members up (quorum 2)"),
            "{}",
            c.message
        );
        assert!(!writes_fail(&[], b, b, ms(b, 10), 3, 1).passed);
    }

    #[test]
    fn reads_without_quorum() {
        let r = |m: &str, reach: bool, a: Result<i64, &str>| ReadResult {
            member: m.into(),
            reachable: reach,
            answer: a.map_err(String::from),
        };
        let lone = vec![
            r("m1", true, Err("context deadline exceeded")),
            r("m2", false, Err("connection refused")),
            r("m3", false, Err("refused")),
        ];
        assert!(linearizable_reads_fail(&lone, 3).passed);
        let bad = vec![r("m1", true, Ok(42)), r("m2", false, Err("refused"))];
        let c = linearizable_reads_fail(&bad, 3);
        assert!(!c.passed && c.message.contains("m1 (revision 42)") && c.message.contains("quorum 2"), "{}", c.message);
        assert!(!linearizable_reads_fail(&[r("m1", false, Err("x"))], 3).passed, "nobody reachable proves nothing");
        assert!(serializable_reads_answer(&[r("m1", true, Ok(40)), r("m2", false, Err("x"))]).passed);
        let c = serializable_reads_answer(&[r("m1", true, Err("no answer within 2s"))]);
        assert!(!c.passed && c.message.contains("m1: no answer"), "{}", c.message);
    }

    #[test]
    fn isolated_leader_must_not_ack_and_must_step_down() {
        let b = Instant::now();
        let f = ms(b, 1000);
        let h = ops(b, &[(1200, 3200, 'u', "m1"), (1300, 1310, 'a', "m2"), (1400, 3400, 'u', "m1")]);
        let c = isolated_leader_refuses(
            &h,
            b,
            "m1",
            f,
            Duration::from_millis(100),
            Some(Duration::from_millis(1500)),
            Duration::from_secs(5),
        );
        assert!(c.passed, "{}", c.message);
        let h2 = ops(b, &[(1200, 1250, 'a', "m1")]);
        let c = isolated_leader_refuses(
            &h2,
            b,
            "m1",
            f,
            Duration::from_millis(100),
            Some(Duration::from_millis(1500)),
            Duration::from_secs(5),
        );
        assert!(!c.passed && c.message.contains("acknowledged 1 of 1"), "{}", c.message);
        let c = isolated_leader_refuses(&h, b, "m1", f, Duration::from_millis(100), None, Duration::from_secs(5));
        assert!(!c.passed && c.message.contains("still called itself leader"), "{}", c.message);
        let c = isolated_leader_refuses(
            &h,
            b,
            "m1",
            f,
            Duration::from_millis(100),
            Some(Duration::from_secs(7)),
            Duration::from_secs(5),
        );
        assert!(!c.passed && c.message.contains("7.000s") && c.message.contains("bound 5.000s"), "{}", c.message);
    }

    #[test]
    fn majority_election_needs_a_quorum_of_all_members_on_the_majority_side() {
        let b = Instant::now();
        let ids: BTreeMap<String, u64> =
            [("m1", 1), ("m2", 2), ("m3", 3)].iter().map(|(n, i)| (n.to_string(), *i)).collect();
        let side: BTreeSet<String> = ["m2", "m3"].iter().map(|s| s.to_string()).collect();
        let smp = |at, m: &str, leader, term| LeaderSample { at: ms(b, at), member: m.into(), leader, term };
        let samples = vec![
            smp(900, "m2", 1, 2),
            smp(1100, "m2", 1, 2),
            smp(1100, "m1", 1, 2), // the isolated one still thinks it leads: not on the side
            smp(2100, "m2", 0, 3),
            smp(2300, "m2", 3, 3),
            smp(2400, "m3", 3, 3),
        ];
        let got = new_leader_elected(&samples, &ids, &side, 3, 1, ms(b, 1000));
        assert_eq!(got, Some((ms(b, 2400), 3, 3)));
        let c = majority_elects(got, |i| format!("m{i}"), 1, ms(b, 1000), ms(b, 3000), Duration::from_secs(3), &side);
        assert!(c.passed && c.message.contains("elected m3 in term 3 1.400s"), "{}", c.message);
        let c = majority_elects(got, |i| format!("m{i}"), 1, ms(b, 1000), ms(b, 3000), Duration::from_secs(1), &side);
        assert!(!c.passed && c.message.contains("bound 1.000s"), "{}", c.message);
        // one vote is not a quorum of 3
        let got = new_leader_elected(&samples[..5], &ids, &side, 3, 1, ms(b, 1000));
        assert_eq!(got, None);
        let c = majority_elects(None, |i| format!("m{i}"), 1, ms(b, 1000), ms(b, 6000), Duration::from_secs(3), &side);
        assert!(!c.passed && c.message.contains("did not agree") && c.message.contains("5.000s"), "{}", c.message);
    }

    #[test]
    fn an_acknowledged_write_deleted_behind_our_back_is_lost() {
        let b = Instant::now();
        let h = ops(b, &[(0, 10, 'a', "m1"), (100, 110, 'a', "m2"), (200, 2200, 'u', "m3"), (300, 310, 'f', "m1")]);
        let mut present: BTreeMap<String, String> =
            h.iter().filter(|o| o.outcome.is_ack()).map(|o| (o.key.clone(), o.value.clone())).collect();
        let c = no_lost_writes(&h, b, &present, 99);
        assert!(c.passed, "{}", c.message);
        present.remove(&h[1].key);
        let c = no_lost_writes(&h, b, &present, 99);
        assert!(!c.passed);
        assert!(
            c.message.starts_with("1 of 2 acknowledged writes lost") && c.message.contains(&h[1].key),
            "{}",
            c.message
        );
        assert!(c.evidence.contains("MISSING"), "{}", c.evidence);
        assert_eq!(c.measurements[0].value, 1.0);
        present.insert(h[1].key.clone(), "tampered".into());
        let c = no_lost_writes(&h, b, &present, 99);
        assert!(!c.passed && c.evidence.contains("tampered"), "{}", c.evidence);
        assert!(!no_lost_writes(&[], b, &present, 1).passed, "no acknowledged write proves nothing");
    }

    #[test]
    fn convergence_needs_every_member_caught_up_with_one_hash() {
        let h = |m: &str, rev: Result<i64, &str>, hash: Option<Result<u32, &str>>| MemberHash {
            member: m.into(),
            revision: rev.map_err(String::from),
            hash: hash.map(|x| x.map_err(String::from)),
        };
        let good = vec![h("m1", Ok(120), Some(Ok(7))), h("m2", Ok(121), Some(Ok(7))), h("m3", Ok(120), Some(Ok(7)))];
        assert!(converged(&good, 120, Duration::from_millis(300)).passed);
        let behind = vec![h("m1", Ok(120), Some(Ok(7))), h("m2", Ok(90), None), h("m3", Ok(120), Some(Ok(7)))];
        let c = converged(&behind, 120, Duration::from_secs(10));
        assert!(!c.passed && c.message.contains("m2 at 90") && c.message.contains("10.000s"), "{}", c.message);
        let split = vec![h("m1", Ok(120), Some(Ok(7))), h("m2", Ok(120), Some(Ok(8))), h("m3", Ok(120), Some(Ok(7)))];
        let c = converged(&split, 120, Duration::from_secs(1));
        assert!(!c.passed && c.message.contains("m2=0x00000008"), "{}", c.message);
        let silent = vec![h("m1", Err("connection refused"), None)];
        assert!(!converged(&silent, 120, Duration::from_secs(1)).passed);
    }
}
