//! Topology checks over one snapshot of the etcd cluster: member count, reachability, one
//! leader, agreement on leader and term, DB size spread. Pure functions of a [`ClusterView`].

use std::collections::BTreeSet;

use super::CheckOutcome;
use crate::probe::etcd::ClusterView;
use crate::report::Measurement;

/// A table of the members, the evidence of every topology check.
pub fn member_table(v: &ClusterView) -> String {
    let mut out = format!("members (listed by {}):\n", v.listed_by);
    for m in &v.members {
        let name = if m.name.is_empty() { "(unstarted)" } else { m.name.as_str() };
        match &m.status {
            Ok(s) => out.push_str(&format!(
                "  {name:<12} id={:016x} endpoint={} leader={:016x} term={} index={} rev={} db={}B version={}{}\n",
                m.id,
                s.endpoint,
                s.leader,
                s.raft_term,
                s.raft_index,
                s.revision,
                s.db_size,
                s.version,
                if m.is_learner { " learner" } else { "" }
            )),
            Err(e) => out.push_str(&format!("  {name:<12} id={:016x} unreachable: {e}\n", m.id)),
        }
    }
    for (e, err) in &v.unreachable_endpoints {
        out.push_str(&format!("  endpoint {e} unreachable: {err}\n"));
    }
    out
}

pub fn member_count(v: &ClusterView, min: usize, odd: bool) -> CheckOutcome {
    const N: &str = "etcd_member_count";
    let voters = v.members.iter().filter(|m| !m.is_learner).count();
    let m = Measurement::new("etcd_members", voters as f64, "members").with_min(min as f64);
    let out = if voters < min {
        CheckOutcome::fail(N, format!("{voters} voting etcd members, expected at least {min}: the cluster cannot lose a member and keep quorum"))
    } else if odd && voters % 2 == 0 {
        CheckOutcome::fail(
            N,
            format!(
                "{voters} voting etcd members, expected an odd number: {voters} tolerates {} failure(s), no more than {}",
                crate::check::quorum_tolerance(voters),
                voters - 1
            ),
        )
    } else {
        CheckOutcome::pass(
            N,
            format!("{voters} voting etcd members, tolerates {} failure(s)", crate::check::quorum_tolerance(voters)),
        )
    };
    out.with_evidence(member_table(v)).with_measurement(m)
}

pub fn members_reachable(v: &ClusterView) -> CheckOutcome {
    const N: &str = "etcd_members_reachable";
    let mut bad = Vec::new();
    for m in &v.members {
        if m.name.is_empty() || m.client_urls.is_empty() {
            bad.push(format!("member {:x} is not started (no name or client URLs in the member list)", m.id));
        } else if let Err(e) = &m.status {
            bad.push(format!("{} does not answer: {e}", m.name));
        } else if let Ok(s) = &m.status {
            if !s.errors.is_empty() {
                bad.push(format!("{} reports errors: {}", m.name, s.errors.join("; ")));
            }
        }
    }
    let out = if bad.is_empty() {
        CheckOutcome::pass(N, format!("all {} members started and answering", v.members.len()))
    } else {
        CheckOutcome::fail(N, format!("{} of {} members not healthy: {}", bad.len(), v.members.len(), bad.join("; ")))
    };
    out.with_evidence(member_table(v))
}

pub fn one_leader(v: &ClusterView) -> CheckOutcome {
    const N: &str = "etcd_one_leader";
    let answering: Vec<_> = v.members.iter().filter_map(|m| m.status.as_ref().ok().map(|s| (m, s))).collect();
    let leaders: Vec<String> =
        answering.iter().filter(|(m, s)| s.leader == m.id).map(|(m, _)| m.name.clone()).collect();
    let out = match leaders.len() {
        1 => CheckOutcome::pass(N, format!("one leader: {}", leaders[0])),
        0 if answering.is_empty() => CheckOutcome::fail(N, "no member answered, so no leader could be seen"),
        0 => CheckOutcome::fail(N, format!("no leader among the {} answering members", answering.len())),
        n => CheckOutcome::fail(N, format!("{n} members claim to lead: {}", leaders.join(", "))),
    };
    out.with_evidence(member_table(v))
}

pub fn leader_agreement(v: &ClusterView) -> CheckOutcome {
    const N: &str = "etcd_leader_agreement";
    let answering: Vec<_> = v.members.iter().filter_map(|m| m.status.as_ref().ok().map(|s| (m, s))).collect();
    let silent = v.members.len() - answering.len();
    let leaders: BTreeSet<u64> = answering.iter().map(|(_, s)| s.leader).collect();
    let terms: BTreeSet<u64> = answering.iter().map(|(_, s)| s.raft_term).collect();
    let out = if answering.is_empty() {
        CheckOutcome::fail(N, "no member answered")
    } else if leaders.len() > 1 || leaders.contains(&0) {
        let seen: Vec<String> = answering
            .iter()
            .map(|(m, s)| format!("{}→{}", m.name, if s.leader == 0 { "none".into() } else { v.name_of(s.leader) }))
            .collect();
        CheckOutcome::fail(N, format!("members disagree on the leader: {}", seen.join(", ")))
    } else if terms.len() > 1 {
        let seen: Vec<String> = answering.iter().map(|(m, s)| format!("{}={}", m.name, s.raft_term)).collect();
        CheckOutcome::fail(N, format!("members disagree on the raft term: {}", seen.join(", ")))
    } else if silent > 0 {
        CheckOutcome::fail(N, format!("{silent} member(s) did not answer, so agreement cannot be shown"))
    } else {
        let leader = *leaders.iter().next().unwrap_or(&0);
        CheckOutcome::pass(
            N,
            format!(
                "all {} members see leader {} in term {}",
                answering.len(),
                v.name_of(leader),
                terms.iter().next().unwrap_or(&0)
            ),
        )
    };
    out.with_evidence(member_table(v))
}

pub fn db_size_spread(v: &ClusterView, max_ratio: f64) -> CheckOutcome {
    const N: &str = "etcd_db_size_spread";
    let sizes: Vec<(String, i64)> =
        v.members.iter().filter_map(|m| m.status.as_ref().ok().map(|s| (m.name.clone(), s.db_size))).collect();
    if sizes.len() < v.members.len() || sizes.is_empty() {
        return CheckOutcome::fail(
            N,
            format!("{} of {} members answered: DB sizes cannot be compared", sizes.len(), v.members.len()),
        )
        .with_evidence(member_table(v));
    }
    let (min_n, min) = sizes.iter().min_by_key(|(_, s)| *s).cloned().unwrap_or_default();
    let (max_n, max) = sizes.iter().max_by_key(|(_, s)| *s).cloned().unwrap_or_default();
    let ratio = if min <= 0 { f64::INFINITY } else { max as f64 / min as f64 };
    let m = Measurement::new("etcd_db_size_ratio", (ratio * 1000.0).round() / 1000.0, "ratio").with_bound(max_ratio);
    let out = if ratio <= max_ratio {
        CheckOutcome::pass(N, format!("DB sizes {min}..{max} bytes, ratio {ratio:.2} ≤ {max_ratio}"))
    } else {
        CheckOutcome::fail(
            N,
            format!("DB size of {max_n} ({max} B) is {ratio:.2}× that of {min_n} ({min} B), bound {max_ratio}×: defragment or check for a lagging member"),
        )
    };
    out.with_evidence(member_table(v)).with_measurement(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::probe::etcd::{MemberStatus, MemberView};

    pub fn view(members: &[(&str, u64, u64, u64, i64)]) -> ClusterView {
        // (name, id, leader seen, term, db size)
        ClusterView {
            listed_by: "https://127.0.0.1:2379".into(),
            members: members
                .iter()
                .map(|(name, id, leader, term, db)| MemberView {
                    id: *id,
                    name: name.to_string(),
                    client_urls: vec![format!("https://{name}:2379")],
                    peer_urls: vec![format!("https://{name}:2380")],
                    is_learner: false,
                    status: Ok(MemberStatus {
                        endpoint: format!("https://{name}:2379"),
                        member_id: *id,
                        leader: *leader,
                        raft_term: *term,
                        raft_index: 10,
                        revision: 5,
                        db_size: *db,
                        version: "3.4.23".into(),
                        errors: vec![],
                    }),
                })
                .collect(),
            unreachable_endpoints: vec![],
        }
    }

    fn healthy() -> ClusterView {
        view(&[("m1", 1, 1, 2, 20480), ("m2", 2, 1, 2, 20480), ("m3", 3, 1, 2, 24576)])
    }

    #[test]
    fn healthy_cluster_passes_everything() {
        let v = healthy();
        for c in [
            member_count(&v, 3, true),
            members_reachable(&v),
            one_leader(&v),
            leader_agreement(&v),
            db_size_spread(&v, 2.0),
        ] {
            assert!(c.passed, "{}: {}", c.name, c.message);
        }
    }

    #[test]
    fn even_and_small_counts_fail() {
        let two = view(&[("m1", 1, 1, 2, 1), ("m2", 2, 1, 2, 1)]);
        let c = member_count(&two, 3, true);
        assert!(!c.passed && c.message.contains("expected at least 3"), "{}", c.message);
        let four = view(&[("a", 1, 1, 2, 1), ("b", 2, 1, 2, 1), ("c", 3, 1, 2, 1), ("d", 4, 1, 2, 1)]);
        let c = member_count(&four, 3, true);
        assert!(!c.passed && c.message.contains("odd"), "{}", c.message);
    }

    #[test]
    fn unreachable_and_unstarted_members_fail() {
        let mut v = healthy();
        v.members[1].status = Err("connection refused".into());
        let c = members_reachable(&v);
        assert!(!c.passed && c.message.contains("m2 does not answer: connection refused"), "{}", c.message);
        let mut v = healthy();
        v.members[2].name.clear();
        assert!(!members_reachable(&v).passed);
    }

    #[test]
    fn two_leaders_or_none_fail() {
        let v = view(&[("m1", 1, 1, 2, 1), ("m2", 2, 2, 2, 1), ("m3", 3, 1, 2, 1)]);
        let c = one_leader(&v);
        assert!(!c.passed && c.message.contains("2 members claim"), "{}", c.message);
        let v = view(&[("m1", 1, 0, 2, 1), ("m2", 2, 0, 2, 1), ("m3", 3, 0, 2, 1)]);
        assert!(!one_leader(&v).passed);
    }

    #[test]
    fn disagreement_on_leader_or_term_fails() {
        let v = view(&[("m1", 1, 1, 2, 1), ("m2", 2, 1, 3, 1), ("m3", 3, 1, 2, 1)]);
        let c = leader_agreement(&v);
        assert!(!c.passed && c.message.contains("raft term") && c.message.contains("m2=3"), "{}", c.message);
        let v = view(&[("m1", 1, 1, 2, 1), ("m2", 2, 3, 2, 1), ("m3", 3, 1, 2, 1)]);
        let c = leader_agreement(&v);
        assert!(!c.passed && c.message.contains("m2→m3"), "{}", c.message);
    }

    #[test]
    fn db_size_outlier_fails_with_the_ratio() {
        let v = view(&[("m1", 1, 1, 2, 20_000), ("m2", 2, 1, 2, 20_000), ("m3", 3, 1, 2, 90_000)]);
        let c = db_size_spread(&v, 2.0);
        assert!(!c.passed && c.message.contains("m3") && c.message.contains("4.50"), "{}", c.message);
        assert_eq!(c.measurements[0].value, 4.5);
    }
}
