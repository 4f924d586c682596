//! The console reporter: one line per case (verdict, time, reason) and a summary.

use super::{CaseRecord, RunRecord, Verdict};

/// `PASS  topology::etcd_one_leader  0.02s`
pub fn case_line(r: &CaseRecord) -> String {
    let tail = match &r.verdict {
        Verdict::Passed => String::new(),
        Verdict::Failed { message, .. } | Verdict::Error { message, .. } => format!("  {message}"),
        Verdict::Skipped { reason } => format!("  {reason}"),
    };
    let tag = match r.verdict {
        Verdict::Passed => "PASS ",
        Verdict::Failed { .. } => "FAIL ",
        Verdict::Error { .. } => "ERROR",
        Verdict::Skipped { .. } => "SKIP ",
    };
    format!("{tag} {:<44} {:>8.2}s{tail}", r.full_name(), r.duration.as_secs_f64())
}

/// The closing lines: failures with their evidence, then the counts.
pub fn summary(run: &RunRecord) -> String {
    let c = run.counts();
    let mut out = String::new();
    for r in run.cases.iter().filter(|r| r.verdict.is_failure()) {
        if let Verdict::Failed { message, evidence } | Verdict::Error { message, evidence } = &r.verdict {
            out.push_str(&format!("\n--- {} {}\n{message}\n", r.verdict.label(), r.full_name()));
            if !evidence.is_empty() {
                out.push_str(evidence.trim_end());
                out.push('\n');
            }
        }
    }
    out.push_str(&format!(
        "\nhadrill: {} passed, {} failed, {} skipped ({} errors) in {:.2}s, seed {}\n",
        c.passed,
        c.failed + c.errors,
        c.skipped,
        c.errors,
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
