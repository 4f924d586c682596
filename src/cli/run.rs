//! `hadrill run`: build the target (or start a rig), run the selected cases, write reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{load_suites, require_selection, target, Global};
use crate::engine::RunContext;
use crate::exit::{Code, Fatal};
use crate::fault::{self, Fault, FaultGuard, Ledger};
use crate::report::{console, json, junit};
use crate::rig::{Isolation, RigSpec};
use crate::runner::{self, Selection};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sel: Selection,
    /// Start a local etcd rig for this run, run what it supports, and remove it afterwards.
    #[arg(long)]
    pub rig: bool,
    /// Members of the rig started by --rig.
    #[arg(long, default_value_t = 3, value_name = "N", requires = "rig")]
    pub members: usize,
    /// How the members of the --rig rig are separated.
    #[arg(long, value_enum, default_value_t = Isolation::Auto, requires = "rig")]
    pub isolation: Isolation,
    /// Give the --rig rig kube mode too, with the Kubernetes server binaries of this directory.
    #[arg(long, value_name = "DIR", requires = "rig")]
    pub kube_bin: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a JSON report (with every timeline) here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Save what explains each failure (timeline, output, member status) under this directory.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Seed for every random choice (which follower a fault hits …); logged and reported.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Allow cases that inject faults (always allowed on the run's own rig).
    #[arg(long)]
    pub allow_disruption: bool,
}

/// Opens every output path now, so a bad path fails before anything is started. A file
/// that did not exist is removed again: a run that stops early leaves no empty report.
fn check_writable(p: &Option<PathBuf>, what: &str) -> Result<(), Fatal> {
    if let Some(p) = p {
        let existed = p.exists();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| Fatal::usage(format!("cannot write the {what} report {}: {e}", p.display())))?;
        if !existed {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

pub fn run(g: &Global, args: RunArgs) -> Result<Code, Fatal> {
    let resolved = target::resolve(g)?;
    let suites = load_suites(g, Some(&resolved.config))?;
    require_selection(&suites, &args.sel)?;
    if args.sel.list {
        runner::list(&suites, &args.sel);
        return Ok(Code::Ok);
    }
    if args.rig && !(1..=7).contains(&args.members) {
        return Err(Fatal::usage(format!("--members {} is out of range (1 to 7)", args.members)));
    }
    check_writable(&args.junit, "JUnit")?;
    check_writable(&args.json, "JSON")?;
    if let Some(a) = &args.artifacts {
        std::fs::create_dir_all(a)
            .map_err(|e| Fatal::usage(format!("cannot create --artifacts {}: {e}", a.display())))?;
    }
    let ledger_dir = g.ledger.clone().unwrap_or_else(Ledger::default_dir);
    let ledger = Ledger::open(&ledger_dir).map_err(|e| Fatal::usage(e.to_string()))?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let kube = match &args.kube_bin {
        Some(d) => super::rigcmd::kube_binaries(Some(d), false, args.isolation)?,
        None => None,
    };
    for a in kube.iter().flat_map(|b| b.absent()) {
        eprintln!("hadrill: {}", a.note());
    }
    let rt = super::runtime()?;
    crate::signals::install(&rt);

    // the run's own rig: journaled before it exists, removed whatever happens
    let mut rig_guard: Option<FaultGuard> = None;
    let rig_state = if args.rig {
        let dir = std::env::temp_dir().join(format!("hadrill-run-{}", std::process::id()));
        let guard = rt
            .block_on(fault::inject(&ledger, Fault::EphemeralRig { rig_dir: dir.clone() }))
            .map_err(|e| Fatal::usage(crate::exit::chain(&e)))?;
        rig_guard = Some(guard);
        eprintln!("hadrill: starting a {}-member etcd rig in {}", args.members, dir.display());
        let spec = RigSpec { dir, members: args.members, isolation: args.isolation };
        match rt.block_on(crate::rig::up_with_kube(&spec, kube)) {
            Ok(s) => Some(s),
            Err(e) => {
                finish_rig(&rt, rig_guard.take());
                // what the user can fix (no etcd, not root, --kube-bin without namespaces …)
                // is a usage error, as for `rig up`
                let m = format!("the local rig could not start: {}", crate::exit::chain(&e));
                return Err(if e.is_usage() { Fatal::usage(m) } else { Fatal::unreachable(m) });
            }
        }
    } else {
        None
    };
    let result = run_on(&rt, &resolved, &suites, &args, rig_state, ledger, seed);
    finish_rig(&rt, rig_guard);
    result
}

fn finish_rig(rt: &tokio::runtime::Runtime, guard: Option<FaultGuard>) {
    if let Some(g) = guard {
        if let Err(e) = rt.block_on(g.revert()) {
            eprintln!("hadrill: could not remove the run's rig: {} (run `hadrill recover`)", crate::exit::chain(&e));
        }
    }
}

fn run_on(
    rt: &tokio::runtime::Runtime,
    resolved: &target::Resolved,
    suites: &crate::suite::Suites,
    args: &RunArgs,
    rig_state: Option<crate::rig::RigState>,
    ledger: Ledger,
    seed: u64,
) -> Result<Code, Fatal> {
    let on_own_rig = rig_state.is_some();
    // HADRILL_SELFTEST=1 with only selftest cases selected: no target to build or reach
    let mut t = match crate::engine::selftest::target_for(&runner::selected(suites, &args.sel)) {
        Some(t) => t,
        None => {
            let mut t = rt.block_on(target::build(resolved, rig_state))?;
            rt.block_on(target::reach(&mut t))?;
            t
        }
    };
    let (allow, refusal) = disruption(args, &resolved.config, &t, on_own_rig);
    t.fact("seed", seed.to_string());
    t.fact("hadrill_version", env!("CARGO_PKG_VERSION"));
    eprintln!("hadrill: target {} · seed {seed}", t.label);
    let facts = t.facts.clone();
    let ctx = RunContext {
        target: Arc::new(t),
        ledger,
        allow_disruption: allow,
        disruption_refusal: refusal,
        seed,
        artifacts: args.artifacts.clone(),
        exclusive: Arc::default(),
        progress: Arc::new(|_, _| {}),
    };
    let log = args.artifacts.as_ref().map(|a| a.join("libtest.log"));
    let target = ctx.target.clone();
    let record = runner::run(rt, suites, &args.sel, ctx, facts, log.as_deref());
    rt.block_on(crate::node::pod::cleanup_after_run(&target));
    let Some(record) = record else {
        return Ok(Code::Ok);
    };
    print!("{}", console::summary(&record));
    write_report(&args.junit, "JUnit", junit::render(&record))?;
    write_report(&args.json, "JSON", json::render(&record))?;
    let c = record.counts();
    Ok(if c.failed + c.errors > 0 { Code::Failed } else { Code::Ok })
}

fn write_report(path: &Option<PathBuf>, what: &str, body: Result<String, String>) -> Result<(), Fatal> {
    let Some(p) = path else { return Ok(()) };
    let body = body.map_err(|e| Fatal::failed(format!("cannot render the {what} report: {e}")))?;
    write_atomic(p, body.as_bytes())
        .map_err(|e| Fatal::failed(format!("cannot write the {what} report {}: {e}", p.display())))?;
    eprintln!("hadrill: wrote the {what} report to {}", p.display());
    Ok(())
}

fn write_atomic(p: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp-hadrill");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, p)
}

/// Whether disruptive cases may run, and the reason shown when they may not.
fn disruption(
    args: &RunArgs,
    config: &crate::config::Config,
    t: &crate::target::Target,
    own_rig: bool,
) -> (bool, String) {
    if own_rig {
        return (true, String::new());
    }
    if !args.allow_disruption {
        return (false, "pass --allow-disruption to inject faults into this target".into());
    }
    // the rig's own control plane (its admin kubeconfig) is a lab on this machine, not a
    // cluster someone else depends on: --allow-disruption is enough there
    let rig_own = |k: &crate::target::kube::KubeTarget| {
        t.rig.as_ref().and_then(|r| r.kube.as_ref()).is_some_and(|rk| rk.admin_kubeconfig == k.kubeconfig)
    };
    if let Some(k) = t.kube.as_ref().filter(|k| !rig_own(k)) {
        let allowed = config.disruption.as_ref().map(|d| d.allowed_contexts.clone()).unwrap_or_default();
        if !allowed.iter().any(|c| c == &k.context) {
            return (
                false,
                format!("context `{}` is not listed in the config's disruption.allowed_contexts", k.context),
            );
        }
    }
    (true, String::new())
}
