//! The test-only `harness_selftest` check and the target-less mode it allows: hadrill's own
//! tests use it to make cases pass, fail, error, panic or skip on demand, so the runner, the
//! exit codes and the reporters can be tested end to end on the real binary without a
//! cluster.
//!
//! Gated twice: the suite loader refuses the check unless `HADRILL_SELFTEST=1` is set (and
//! always in built-in suites), and `hadrill run` skips building and reaching a target only
//! when that variable is set AND every selected case consists of nothing but selftest checks
//! with no `requires`. Any other selection still needs a real target.

use super::{CaseState, StepEnd};
use crate::check::CheckOutcome;
use crate::report::Measurement;
use crate::suite::{Case, CheckSpec, SelftestOutcome, Step, Suite};
use crate::target::Target;

/// The environment variable that enables the selftest check.
pub const ENV: &str = "HADRILL_SELFTEST";

/// Whether `HADRILL_SELFTEST=1` is set.
pub fn enabled() -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == "1")
}

/// The evidence of a failing selftest case: what a hostile cluster could send back (ANSI
/// colours, a NUL, a CDATA terminator, markup characters, non-ASCII text), so every reporter
/// is exercised on it.
pub const FAIL_EVIDENCE: &str =
    "selftest evidence: \u{1b}[31mred\u{1b}[0m, NUL:\u{0}, CDATA end: ]]>, markup: <&>\"', unicode: Größe ✓ 日本語";

/// Runs one `harness_selftest` check: the outcome its suite file names.
pub fn check(outcome: SelftestOutcome, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    const N: &str = "harness_selftest";
    st.timeline.record("probe:selftest", format!("selftest outcome requested: {outcome:?}"));
    st.log(format!("selftest: {outcome:?}"));
    match outcome {
        SelftestOutcome::Pass => Ok(CheckOutcome::pass(N, "selftest passed as asked")
            .with_measurement(Measurement::new("selftest_seconds", 0.25, "s").with_bound(1.0))),
        SelftestOutcome::Fail => {
            Ok(CheckOutcome::fail(N, "selftest failed as asked: expected <pass>, observed <fail>")
                .with_evidence(FAIL_EVIDENCE)
                .with_measurement(Measurement::new("selftest_seconds", 2.5, "s").with_bound(1.0)))
        }
        SelftestOutcome::Error => {
            Err(StepEnd::Error("selftest: the harness could not run this case (as asked)".into()))
        }
        SelftestOutcome::Panic => panic!("selftest panicked as asked"),
        SelftestOutcome::Skip => Err(StepEnd::Skip("selftest: skipped as asked".into())),
    }
}

/// Whether `case` needs nothing of a target: no `requires`, only selftest checks.
pub fn is_selftest_only(case: &Case) -> bool {
    case.requires.is_empty()
        && !case.disruptive
        && !case.steps.is_empty()
        && case.steps.iter().all(|s| matches!(s, Step::Check(CheckSpec::HarnessSelftest(_))))
}

/// Whether `case` uses the selftest check anywhere (the loader refuses it unless enabled).
pub fn uses_selftest(case: &Case) -> bool {
    case.steps.iter().any(|s| matches!(s, Step::Check(CheckSpec::HarnessSelftest(_))))
}

/// The stand-in target of a selftest run: when the selftest mode is enabled and every
/// selected case is selftest-only, a target with no etcd, no Kubernetes API and no rig,
/// which nothing contacts. `None` otherwise: the run needs a real target.
pub fn target_for(selected: &[(Suite, Case)]) -> Option<Target> {
    if !enabled() || selected.is_empty() || !selected.iter().all(|(_, c)| is_selftest_only(c)) {
        return None;
    }
    let mut t = Target { label: "selftest (no cluster)".into(), ..Target::default() };
    t.fact("target", "selftest");
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(steps: Vec<Step>) -> Case {
        Case { name: "c".into(), description: "d".into(), disruptive: false, ignore: None, requires: vec![], steps }
    }

    #[test]
    fn selftest_only_means_nothing_but_selftest_checks() {
        let st = Step::Check(CheckSpec::HarnessSelftest(SelftestOutcome::Pass));
        assert!(is_selftest_only(&case(vec![st.clone()])));
        assert!(!is_selftest_only(&case(vec![st.clone(), Step::Check(CheckSpec::EtcdOneLeader)])));
        let mut needs = case(vec![st.clone()]);
        needs.requires = vec![crate::suite::Requirement::Etcd];
        assert!(!is_selftest_only(&needs));
        assert!(!is_selftest_only(&case(vec![Step::Check(CheckSpec::EtcdOneLeader)])));
        assert!(uses_selftest(&case(vec![Step::Heal, st])));
        assert!(!uses_selftest(&case(vec![Step::Heal])));
    }
}
