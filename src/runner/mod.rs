//! Turns cases into libtest-mimic trials (so `FILTER`, `--skip`, `--exact`, `--list`,
//! `--ignored`, `--include-ignored` behave as in `cargo test`), runs them, and records each
//! case's outcome, start, duration, output and timeline in declaration order.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::engine::{self, RunContext};
use crate::report::{console, CaseRecord, RunRecord, Verdict};
use crate::suite::{Case, Suite, Suites};

/// The libtest-style selection options of `hadrill run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Run only cases whose `suite::case` name contains one of these (e.g. `topology::
    /// failover::`); every case when none is given.
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Skip cases whose name contains this (repeatable).
    #[arg(long, value_name = "FILTER")]
    pub skip: Vec<String>,
    /// Match FILTER and --skip exactly instead of as substrings.
    #[arg(long)]
    pub exact: bool,
    /// List the selected cases and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only the cases marked `ignore` in their suite.
    #[arg(long)]
    pub ignored: bool,
    /// Run the cases marked `ignore` as well.
    #[arg(long)]
    pub include_ignored: bool,
    /// How many read-only cases may run at once (disruptive ones always run alone).
    #[arg(long, value_name = "N")]
    pub test_threads: Option<usize>,
}

impl Selection {
    /// Whether `suite::case` is named by the filters (any of them; exactly with `--exact`).
    pub fn names(&self, name: &str) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|f| if self.exact { name == f } else { name.contains(f.as_str()) })
    }

    /// libtest-mimic's arguments; the positional filters are applied by [`Self::names`]
    /// (libtest-mimic takes one), `--skip` and the ignore flags by libtest-mimic.
    pub fn arguments(&self) -> Arguments {
        Arguments {
            filter: None,
            skip: self.skip.clone(),
            exact: self.exact,
            list: self.list,
            ignored: self.ignored,
            include_ignored: self.include_ignored,
            test_threads: Some(self.test_threads.unwrap_or(2).max(1)),
            ..Arguments::default()
        }
    }
}

/// Every case of `suites`, in declaration order.
pub fn all_cases(suites: &Suites) -> Vec<(Suite, Case)> {
    suites.iter().flat_map(|s| s.cases.iter().map(move |c| (s.clone(), c.clone()))).collect()
}

/// The cases `sel` selects (the same rules libtest-mimic applies), in declaration order.
pub fn selected(suites: &Suites, sel: &Selection) -> Vec<(Suite, Case)> {
    let args = sel.arguments();
    named(suites, sel).into_iter().filter(|(s, c)| !args.is_filtered_out(&bare_trial(s, c))).collect()
}

/// The cases the positional filters name, in declaration order.
fn named(suites: &Suites, sel: &Selection) -> Vec<(Suite, Case)> {
    all_cases(suites).into_iter().filter(|(s, c)| sel.names(&format!("{}::{}", s.suite, c.name))).collect()
}

fn bare_trial(s: &Suite, c: &Case) -> Trial {
    Trial::test(format!("{}::{}", s.suite, c.name), || Ok(())).with_ignored_flag(c.ignore.is_some())
}

/// Runs the selected cases; returns the record (None for `--list`).
pub fn run(
    rt: &tokio::runtime::Runtime,
    suites: &Suites,
    sel: &Selection,
    ctx: RunContext,
    facts: indexmap::IndexMap<String, String>,
    libtest_log: Option<&Path>,
) -> Option<RunRecord> {
    let mut args = sel.arguments();
    let cases = named(suites, sel);
    if args.list {
        list(suites, sel);
        return None;
    }
    // libtest-mimic's own lines go to a log file; the console reporter prints ours
    args.logfile = Some(libtest_log.map(|p| p.display().to_string()).unwrap_or_else(|| "/dev/null".into()));

    let started = Utc::now();
    let t0 = Instant::now();
    let slots: Arc<Mutex<Vec<Option<CaseRecord>>>> = Arc::new(Mutex::new(vec![None; cases.len()]));
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let tty = console::is_tty();
    let bars: Arc<Mutex<indexmap::IndexMap<String, ProgressBar>>> = Arc::default();
    let ctx = RunContext {
        progress: {
            let bars = bars.clone();
            Arc::new(move |case: &str, msg: &str| {
                if let Some(b) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(case) {
                    b.set_message(format!("{case}  {msg}"));
                }
            })
        },
        ..ctx
    };

    let mut trials = Vec::new();
    for (i, (suite, case)) in cases.iter().enumerate() {
        let name = format!("{}::{}", suite.suite, case.name);
        let ignored = case.ignore.is_some();
        // cases that libtest-mimic will not run because of their ignore flag are skipped
        // with the suite's reason; filtered-out cases are not reported at all
        let probe = bare_trial(suite, case);
        if !args.is_filtered_out(&probe) && args.is_ignored(&probe) {
            slots.lock().unwrap()[i] = Some(skipped_record(suite, case, case.ignore.clone().unwrap_or_default()));
        }
        let (suite, case) = (suite.clone(), case.clone());
        let slots = slots.clone();
        let ctx = ctx.clone();
        let handle = rt.handle().clone();
        let multi = multi.clone();
        let bars = bars.clone();
        trials.push(
            Trial::ignorable_test(name.clone(), move || {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(name.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), bar.clone());
                let record = handle.block_on(engine::run_case(&ctx, &suite, &case));
                bar.finish_and_clear();
                multi.remove(&bar);
                bars.lock().unwrap_or_else(|p| p.into_inner()).shift_remove(&name);
                let line = console::case_line(&record);
                if tty {
                    let _ = multi.println(&line);
                } else {
                    println!("{line}");
                }
                if let Some(dir) = &ctx.artifacts {
                    save_artifacts(dir, &record);
                }
                let outcome = match &record.verdict {
                    Verdict::Passed => Ok(Completion::Completed),
                    Verdict::Skipped { reason } => Ok(Completion::ignored_with(reason)),
                    Verdict::Failed { message, .. } | Verdict::Error { message, .. } => {
                        Err(Failed::from(message.as_str()))
                    }
                };
                slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(record);
                outcome
            })
            .with_ignored_flag(ignored),
        );
    }
    let _ = libtest_mimic::run(&args, trials);
    let cases: Vec<CaseRecord> = Arc::try_unwrap(slots)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_else(|a| a.lock().unwrap().clone())
        .into_iter()
        .flatten()
        .collect();
    Some(RunRecord { started, duration: t0.elapsed(), seed: ctx.seed, target: facts, cases })
}

/// `--list`: the selected cases, as libtest prints them.
pub fn list(suites: &Suites, sel: &Selection) {
    let args = sel.arguments();
    let _ = libtest_mimic::run(&args, named(suites, sel).iter().map(|(s, c)| bare_trial(s, c)).collect());
}

fn skipped_record(suite: &Suite, case: &Case, reason: String) -> CaseRecord {
    CaseRecord {
        suite: suite.suite.clone(),
        case: case.name.clone(),
        description: case.description.clone(),
        disruptive: case.disruptive,
        verdict: Verdict::Skipped { reason: format!("ignored: {reason} (run with --ignored or --include-ignored)") },
        started: Utc::now(),
        duration: Duration::ZERO,
        measurements: vec![],
        output: String::new(),
        timeline: vec![],
    }
}

/// For a failed case: its record, timeline and output under `<artifacts>/<suite>/<case>/`.
fn save_artifacts(dir: &Path, r: &CaseRecord) {
    if !r.verdict.is_failure() {
        return;
    }
    let d = dir.join(&r.suite).join(&r.case);
    if std::fs::create_dir_all(&d).is_err() {
        return;
    }
    let _ = std::fs::write(d.join("case.json"), serde_json::to_vec_pretty(r).unwrap_or_default());
    let _ = std::fs::write(d.join("timeline.txt"), crate::probe::Timeline::render(&r.timeline));
    let _ = std::fs::write(d.join("output.txt"), &r.output);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(filters: &[&str], exact: bool, skip: &[&str]) -> Selection {
        Selection {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            skip: skip.iter().map(|s| s.to_string()).collect(),
            exact,
            list: false,
            ignored: false,
            include_ignored: false,
            test_threads: None,
        }
    }

    fn names(s: &Selection) -> Vec<String> {
        selected(&crate::suite::builtin().unwrap(), s).iter().map(|(s, c)| format!("{}::{}", s.suite, c.name)).collect()
    }

    #[test]
    fn several_filters_select_the_union_in_declaration_order() {
        let all = names(&sel(&[], false, &[]));
        let two = names(&sel(&["dr::", "topology::etcd_one"], false, &[]));
        assert_eq!(two, ["dr::etcd_snapshot_restores", "topology::etcd_one_leader"]);
        assert!(all.len() > two.len() && all.contains(&two[0]));
        // --skip still applies, and --exact makes each filter a whole name
        assert_eq!(names(&sel(&["dr::", "topology::etcd_one"], false, &["dr::"])), ["topology::etcd_one_leader"]);
        assert_eq!(names(&sel(&["topology::etcd_one"], true, &[])), Vec::<String>::new());
        assert_eq!(names(&sel(&["topology::etcd_one_leader", "dr::x"], true, &[])), ["topology::etcd_one_leader"]);
    }
}
