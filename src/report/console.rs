//! The console reporter: one line per case (verdict, time, reason) and a summary.
//!
//! Text that came from the cluster (messages, evidence) is printed with its control
//! characters made visible (`\u{1b}`), so a report can never drive the terminal.

use super::{CaseRecord, RunRecord, Verdict};

/// `PASS  topology::etcd_one_leader  0.02s`
pub fn case_line(r: &CaseRecord) -> String {
    let tail = match &r.verdict {
        Verdict::Passed => String::new(),
        Verdict::Failed { message, .. } | Verdict::Error { message, .. } => format!("  {}", first_line(message)),
        Verdict::Skipped { reason } => format!("  {}", first_line(reason)),
    };
    let tag = match r.verdict {
        Verdict::Passed => "PASS ",
        Verdict::Failed { .. } => "FAIL ",
        Verdict::Error { .. } => "ERROR",
        Verdict::Skipped { .. } => "SKIP ",
    };
    format!("{tag} {:<44} {:>8.2}s{}", printable(&r.full_name()), r.duration.as_secs_f64(), printable(&tail))
}

/// The closing lines: failures with their evidence, then the counts:
/// `hadrill: 3 passed, 1 failed, 2 skipped (0 errors) in 4.20s, seed 42`.
/// `failed` counts failed checks and harness errors; the errors are repeated in brackets.
pub fn summary(run: &RunRecord) -> String {
    let c = run.counts();
    let mut out = String::new();
    for r in run.cases.iter().filter(|r| r.verdict.is_failure()) {
        if let Verdict::Failed { message, evidence } | Verdict::Error { message, evidence } = &r.verdict {
            out.push_str(&format!(
                "\n--- {} {}\n{}\n",
                r.verdict.label(),
                r.full_name(),
                printable(message.trim_end())
            ));
            if !evidence.trim().is_empty() {
                out.push_str(&printable(evidence.trim_end()));
                out.push('\n');
            }
        }
    }
    out.push_str(&format!(
        "\nhadrill: {} passed, {} failed, {} skipped ({} error{}) in {:.2}s, seed {}\n",
        c.passed,
        c.failed + c.errors,
        c.skipped,
        c.errors,
        if c.errors == 1 { "" } else { "s" },
        run.duration.as_secs_f64(),
        run.seed
    ));
    out
}

/// Whether stderr is a terminal (progress spinners only then).
pub fn is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn first_line(s: &str) -> &str {
    s.trim().lines().next().unwrap_or_default()
}

/// `s` with every control character but newline and tab written as `\u{..}`.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};
    use indexmap::IndexMap;

    use super::*;

    fn rec(name: &str, verdict: Verdict) -> CaseRecord {
        CaseRecord {
            suite: "topology".into(),
            case: name.into(),
            description: String::new(),
            disruptive: false,
            verdict,
            started: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            duration: Duration::from_millis(1_234),
            measurements: vec![],
            output: String::new(),
            timeline: vec![],
        }
    }

    fn run(cases: Vec<CaseRecord>) -> RunRecord {
        RunRecord {
            started: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            duration: Duration::from_millis(4_200),
            seed: 42,
            target: IndexMap::new(),
            cases,
        }
    }

    #[test]
    fn case_lines_name_verdict_time_and_reason() {
        let l = case_line(&rec("etcd_one_leader", Verdict::Passed));
        assert_eq!(l, format!("PASS  {:<44}     1.23s", "topology::etcd_one_leader"));
        let l = case_line(&rec("x", Verdict::Skipped { reason: "needs etcd".into() }));
        assert!(l.starts_with("SKIP  topology::x ") && l.ends_with("1.23s  needs etcd"), "{l}");
        let l = case_line(&rec("x", Verdict::Failed { message: "2 leaders\nmore".into(), evidence: "table".into() }));
        assert!(l.starts_with("FAIL  ") && l.ends_with("  2 leaders"), "{l}");
        let l = case_line(&rec("x", Verdict::Error { message: "case panicked: boom".into(), evidence: String::new() }));
        assert!(l.starts_with("ERROR topology::x") && l.ends_with("case panicked: boom"), "{l}");
    }

    #[test]
    fn case_line_is_one_line_without_controls() {
        let l = case_line(&rec(
            "x",
            Verdict::Failed { message: "\u{1b}[31mred\u{1b}[0m\u{0}".into(), evidence: String::new() },
        ));
        assert!(!l.contains('\n'));
        assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
        assert!(l.ends_with("\\u{1b}[31mred\\u{1b}[0m\\u{0}"), "{l}");
    }

    #[test]
    fn summary_counts_and_lists_failures_with_evidence() {
        let r = run(vec![
            rec("a", Verdict::Passed),
            rec("b", Verdict::Passed),
            rec("c", Verdict::Failed { message: "even member count".into(), evidence: "m1\nm2\n".into() }),
            rec("d", Verdict::Error { message: "cannot read the etcd cluster".into(), evidence: String::new() }),
            rec("e", Verdict::Skipped { reason: "needs etcd".into() }),
        ]);
        let s = summary(&r);
        assert!(s.ends_with("\nhadrill: 2 passed, 2 failed, 1 skipped (1 error) in 4.20s, seed 42\n"), "{s}");
        assert!(s.contains("\n--- FAILED topology::c\neven member count\nm1\nm2\n"), "{s}");
        assert!(s.contains("\n--- ERROR topology::d\ncannot read the etcd cluster\n"), "{s}");
        assert!(!s.contains("topology::a") && !s.contains("topology::e"), "{s}");
    }

    #[test]
    fn summary_of_a_green_run() {
        let s = summary(&run(vec![rec("a", Verdict::Passed), rec("b", Verdict::Skipped { reason: "r".into() })]));
        assert_eq!(s, "\nhadrill: 1 passed, 0 failed, 1 skipped (0 errors) in 4.20s, seed 42\n");
    }

    #[test]
    fn summary_line_format_is_stable() {
        // CI scripts grep this line: `hadrill: N passed, N failed, N skipped`
        let s = summary(&run(vec![rec("c", Verdict::Failed { message: "m".into(), evidence: String::new() })]));
        let last = s.lines().last().unwrap();
        assert!(last.starts_with("hadrill: 0 passed, 1 failed, 0 skipped "), "{last}");
    }
}
