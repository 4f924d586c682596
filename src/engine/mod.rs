//! Runs one case: checks its preconditions, runs its steps in order, keeps the faults it
//! injects on a reverse-order stack that is unwound whatever happens (failed check, error,
//! panic), and turns all of it into a [`Verdict`] with the timeline and measured figures.

mod certs;
pub mod controlplane;
pub mod dr;
pub mod failover;
mod kube;
mod kubecerts;
mod quorum;
pub mod selftest;
mod skew;
mod steps;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::RwLock;

use crate::check::CheckOutcome;
use crate::fault::{FaultGuard, Ledger};
use crate::probe::Timeline;
use crate::report::{CaseRecord, Measurement, Verdict};
use crate::suite::{Case, Requirement, Suite};
use crate::target::Target;

pub use steps::ProbeSet;

/// What every case of a run shares.
#[derive(Clone)]
pub struct RunContext {
    pub target: Arc<Target>,
    pub ledger: Ledger,
    /// Disruptive cases run only when this is set (`--allow-disruption`, or the rig).
    pub allow_disruption: bool,
    /// Why disruption is not allowed, when it is not (shown as the skip reason).
    pub disruption_refusal: String,
    pub seed: u64,
    pub artifacts: Option<PathBuf>,
    /// Read-only cases share it; a disruptive case holds it alone.
    pub exclusive: Arc<RwLock<()>>,
    /// Reports what a case is waiting for (the progress indicator).
    pub progress: Arc<dyn Fn(&str, &str) + Send + Sync>,
}

/// The state of one running case.
pub struct CaseState {
    pub name: String,
    pub timeline: Arc<Timeline>,
    pub output: String,
    pub measurements: Vec<Measurement>,
    /// Faults in force, oldest first; unwound newest first.
    pub guards: Vec<FaultGuard>,
    pub probes: ProbeSet,
    pub rng: rand_chacha::ChaCha8Rng,
    /// The moment the last fault was applied (for failover measurements).
    pub last_fault_at: Option<Instant>,
    /// The leader before the last fault, when it was known.
    pub leader_before_fault: Option<u64>,
    /// Members the last fault acted on (rig member names).
    pub faulted_members: Vec<String>,
}

impl CaseState {
    pub fn log(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        self.output.push_str(&format!("[{:>8.3}s] {line}\n", self.timeline.start().elapsed().as_secs_f64()));
    }
}

/// How a step ended when it did not simply succeed.
pub enum StepEnd {
    /// The cluster failed an assertion.
    Failed(CheckOutcome),
    /// The harness could not do what the step asks.
    Error(String),
    /// A precondition found at run time does not hold.
    Skip(String),
}

/// Runs `case` of `suite` and returns its record. Never panics: a panic inside a step is
/// caught, its faults are reverted, and it is reported as an error.
pub async fn run_case(ctx: &RunContext, suite: &Suite, case: &Case) -> CaseRecord {
    let _in_case = InCase::enter();
    let mut started = Utc::now();
    let mut t0 = Instant::now();
    let mut timeline = Arc::new(Timeline::new());
    let full = format!("{}::{}", suite.suite, case.name);
    let mut st = CaseState {
        name: full.clone(),
        timeline: timeline.clone(),
        output: String::new(),
        measurements: Vec::new(),
        guards: Vec::new(),
        probes: ProbeSet::default(),
        rng: rand::SeedableRng::seed_from_u64(ctx.seed ^ fnv(&full)),
        last_fault_at: None,
        leader_before_fault: None,
        faulted_members: Vec::new(),
    };

    let verdict = match preconditions(ctx, case) {
        Err(reason) => Verdict::Skipped { reason },
        Ok(()) => {
            let _lock = if case.disruptive {
                (ctx.progress)(&full, "waiting for other cases to finish");
                Lock::Write(ctx.exclusive.write().await)
            } else {
                Lock::Read(ctx.exclusive.read().await)
            };
            // the case starts when it holds the lock: its duration and its timeline do not
            // count the time spent waiting for other cases
            let waited = t0.elapsed();
            started = Utc::now();
            t0 = Instant::now();
            timeline = Arc::new(Timeline::new());
            st.timeline = timeline.clone();
            if waited >= Duration::from_millis(100) {
                st.timeline
                    .record("lock", format!("waited {:.1}s for other cases before starting", waited.as_secs_f64()));
            }
            let body = AssertUnwindSafe(run_steps(ctx, case, &mut st)).catch_unwind().await;
            let mut verdict = match body {
                Ok(Ok(())) => Verdict::Passed,
                Ok(Err(StepEnd::Failed(c))) => {
                    Verdict::Failed { message: c.message.clone(), evidence: c.evidence.clone() }
                }
                Ok(Err(StepEnd::Error(m))) => Verdict::Error { message: m, evidence: String::new() },
                Ok(Err(StepEnd::Skip(reason))) => Verdict::Skipped { reason },
                Err(panic) => Verdict::Error {
                    message: format!("case panicked: {}", panic_text(&panic)),
                    evidence: String::new(),
                },
            };
            // whatever happened: stop probes, unwind faults newest first, report every error
            st.probes.stop_all().await;
            let revert_errors = unwind(&mut st).await;
            quorum::cleanup(ctx, &mut st).await;
            if !revert_errors.is_empty() {
                let text = format!(
                    "revert failed (the ledger keeps the fault for `hadrill recover`): {}",
                    revert_errors.join("; ")
                );
                verdict = match verdict {
                    Verdict::Failed { message, evidence } | Verdict::Error { message, evidence } => {
                        Verdict::Error { message: format!("{message}; {text}"), evidence }
                    }
                    _ => Verdict::Error { message: text, evidence: String::new() },
                };
            }
            verdict
        }
    };
    let events = timeline.events();
    CaseRecord {
        suite: suite.suite.clone(),
        case: case.name.clone(),
        description: case.description.clone(),
        disruptive: case.disruptive,
        verdict,
        started,
        duration: t0.elapsed(),
        measurements: st.measurements,
        output: st.output,
        timeline: events,
    }
}

enum Lock<'a> {
    Read(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Write(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
}

async fn run_steps(ctx: &RunContext, case: &Case, st: &mut CaseState) -> Result<(), StepEnd> {
    for (i, step) in case.steps.iter().enumerate() {
        st.timeline.record("step", format!("step {}: {}", i + 1, steps::label(step)));
        steps::run(ctx, step, st).await?;
    }
    Ok(())
}

/// Reverts every fault of the case, newest first; returns the errors.
pub async fn unwind(st: &mut CaseState) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(g) = st.guards.pop() {
        let what = g.description().to_string();
        st.timeline.record("fault", format!("reverting: {what}"));
        match g.revert().await {
            Ok(()) => {
                st.timeline.record("fault", format!("reverted: {what}"));
                st.log(format!("reverted: {what}"));
            }
            Err(e) => {
                let m = crate::exit::chain(&e);
                st.timeline.record("fault", format!("revert failed: {m}"));
                st.log(format!("revert failed: {m}"));
                errors.push(m);
            }
        }
    }
    errors
}

/// Why a case cannot run on this target, if it cannot.
pub fn preconditions(ctx: &RunContext, case: &Case) -> Result<(), String> {
    let t = &ctx.target;
    if case.disruptive && !ctx.allow_disruption {
        return Err(format!("disruptive case: {}", ctx.disruption_refusal));
    }
    for r in &case.requires {
        match r {
            Requirement::Etcd => {
                if t.etcd.is_none() {
                    return Err(
                        "needs etcd: give --etcd-endpoints (with --etcd-cacert, --etcd-cert, --etcd-key) or use --rig"
                            .into(),
                    );
                }
            }
            Requirement::EtcdMembers { min } | Requirement::EtcdMembersExactly(min) => {
                let n = member_count(t);
                let exact = matches!(r, Requirement::EtcdMembersExactly(_));
                match n {
                    None => return Err("needs etcd: give --etcd-endpoints or use --rig".into()),
                    Some(n) if exact && n != *min => {
                        return Err(format!("needs exactly {min} etcd members, the target has {n}"))
                    }
                    Some(n) if n < *min => return Err(format!("needs {min} etcd members, the target has {n}")),
                    _ => {}
                }
            }
            Requirement::MemberProcessAccess => {
                if t.rig.is_none() {
                    return Err("needs node access to the etcd member processes (the local rig; remote node access is configured per target)".into());
                }
            }
            Requirement::MemberNetworkIsolation => match &t.rig {
                Some(rig) if rig.members.iter().all(|m| m.netns.is_some()) => {}
                Some(_) => return Err(
                    "needs members in network namespaces of their own: start the rig as root with --isolation netns"
                        .into(),
                ),
                None => {
                    return Err("needs node access that can drop packets between etcd members (the local rig)".into())
                }
            },
            Requirement::Kubernetes => {
                if t.kube.is_none() {
                    return Err(if t.rig.is_some() {
                        "needs a Kubernetes API: this rig runs etcd only (start it with `--kube-bin DIR` holding kube-apiserver, and kube-controller-manager and kube-scheduler for the cases that need them; or give --kubeconfig)".into()
                    } else {
                        "needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()
                    });
                }
            }
            Requirement::EtcdCaKey => certs::ca_key_available(t)?,
            Requirement::KubeCaKey => kubecerts::ca_key_available(t)?,
            Requirement::Kubelet => failover::kubelet_available(t)?,
        }
    }
    controlplane::rig_case_needs_absent(t, case)
}

/// The number of etcd members known without contacting anyone: the rig's, else the facts'.
fn member_count(t: &Target) -> Option<usize> {
    if let Some(r) = &t.rig {
        return Some(r.members.len());
    }
    t.facts.get("etcd_members").and_then(|s| s.parse().ok())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Polls `f` every `every` until it returns Some, at most `deadline`. The only way hadrill
/// waits for a state.
pub async fn poll<T, F, Fut>(deadline: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        let remaining = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining.max(Duration::from_millis(1)), f()).await {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
    }
}

thread_local! {
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is running a case (its panics are caught and reported by the engine).
pub fn in_case() -> bool {
    IN_CASE.with(|c| c.get()) || std::thread::current().name().is_some_and(|n| n.starts_with("tokio-runtime-worker"))
}

/// Marks this thread as running a case while the guard lives.
pub struct InCase;

impl InCase {
    pub fn enter() -> Self {
        IN_CASE.with(|c| c.set(true));
        InCase
    }
}

impl Drop for InCase {
    fn drop(&mut self) {
        IN_CASE.with(|c| c.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{CheckSpec, Step};

    fn ctx(target: Target, allow: bool) -> RunContext {
        let dir = std::env::temp_dir().join(format!("hadrill-engine-test-{}", std::process::id()));
        RunContext {
            target: Arc::new(target),
            ledger: Ledger::open(&dir).unwrap(),
            allow_disruption: allow,
            disruption_refusal: "pass --allow-disruption to inject faults into this target".into(),
            seed: 1,
            artifacts: None,
            exclusive: Arc::default(),
            progress: Arc::new(|_, _| {}),
        }
    }

    fn case(disruptive: bool, requires: Vec<Requirement>) -> Case {
        Case {
            name: "c".into(),
            description: "d".into(),
            disruptive,
            ignore: None,
            requires,
            steps: vec![Step::Check(CheckSpec::EtcdOneLeader)],
        }
    }

    fn etcd_target(members: usize) -> Target {
        let mut t = Target::default();
        t.etcd = Some(crate::target::EtcdTarget::new(vec!["http://127.0.0.1:2379".into()], None).unwrap());
        t.fact("etcd_members", members.to_string());
        t
    }

    #[test]
    fn missing_etcd_is_a_skip_with_the_reason() {
        let e = preconditions(&ctx(Target::default(), false), &case(false, vec![Requirement::Etcd])).unwrap_err();
        assert!(e.contains("--etcd-endpoints"), "{e}");
    }

    #[test]
    fn member_counts_are_enforced() {
        let c = ctx(etcd_target(3), false);
        assert!(preconditions(&c, &case(false, vec![Requirement::EtcdMembers { min: 3 }])).is_ok());
        let e = preconditions(&c, &case(false, vec![Requirement::EtcdMembers { min: 5 }])).unwrap_err();
        assert_eq!(e, "needs 5 etcd members, the target has 3");
        let e = preconditions(&c, &case(false, vec![Requirement::EtcdMembersExactly(5)])).unwrap_err();
        assert!(e.contains("exactly 5"), "{e}");
    }

    #[test]
    fn disruptive_cases_need_permission() {
        let e = preconditions(&ctx(etcd_target(3), false), &case(true, vec![])).unwrap_err();
        assert!(e.contains("--allow-disruption"), "{e}");
        assert!(preconditions(&ctx(etcd_target(3), true), &case(true, vec![])).is_ok());
    }

    #[test]
    fn process_access_and_isolation_need_the_rig() {
        let c = ctx(etcd_target(3), true);
        assert!(preconditions(&c, &case(true, vec![Requirement::MemberProcessAccess])).is_err());
        assert!(preconditions(&c, &case(true, vec![Requirement::MemberNetworkIsolation])).is_err());
        assert!(preconditions(&c, &case(false, vec![Requirement::Kubernetes])).unwrap_err().contains("--kubeconfig"));
    }

    #[tokio::test]
    async fn a_skipped_case_is_recorded_as_skipped_not_passed() {
        let suite = Suite { suite: "s".into(), description: "d".into(), cases: vec![] };
        let r = run_case(&ctx(Target::default(), false), &suite, &case(false, vec![Requirement::Etcd])).await;
        assert!(matches!(r.verdict, Verdict::Skipped { .. }), "{:?}", r.verdict);
    }

    #[tokio::test]
    async fn time_waiting_for_the_exclusive_lock_is_not_the_cases_duration() {
        let c = ctx(Target::default(), true);
        let suite = Suite { suite: "s".into(), description: "d".into(), cases: vec![] };
        let mut k = case(true, vec![]);
        k.steps = vec![Step::Check(CheckSpec::HarnessSelftest(crate::suite::SelftestOutcome::Pass))];
        // a read-only case holds the lock; the disruptive one waits for it
        let held = c.exclusive.clone().read_owned().await;
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Utc::now();
            drop(held);
            at
        });
        let r = run_case(&c, &suite, &k).await;
        let released_at = release.await.unwrap();
        assert!(matches!(r.verdict, Verdict::Passed), "{:?}", r.verdict);
        assert!(
            r.started >= released_at,
            "the case started at {} before the lock was free at {released_at}",
            r.started
        );
        assert!(r.timeline.iter().any(|e| e.message.starts_with("waited 0.")), "{:?}", r.timeline);
    }

    #[tokio::test]
    async fn poll_respects_its_deadline() {
        let t = Instant::now();
        let r: Option<()> = poll(Duration::from_millis(150), Duration::from_millis(20), || async { None }).await;
        assert!(r.is_none());
        assert!(t.elapsed() < Duration::from_secs(2));
        let mut n = 0;
        let r = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let v = (n >= 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(r, Some(3));
    }
}
