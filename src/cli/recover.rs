//! `hadrill recover`: revert, newest first, every fault the ledger still holds from runs that
//! are no longer alive.

use super::Global;
use crate::exit::{Code, Fatal};
use crate::fault::Ledger;

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Only list what would be reverted.
    #[arg(long)]
    pub dry_run: bool,
    /// Also revert faults of runs that still seem alive.
    #[arg(long)]
    pub force: bool,
}

pub fn recover(g: &Global, args: RecoverArgs) -> Result<Code, Fatal> {
    let dir = g.ledger.clone().unwrap_or_else(Ledger::default_dir);
    let ledger = Ledger::open(&dir).map_err(|e| Fatal::usage(e.to_string()))?;
    let entries = ledger.entries().map_err(|e| Fatal::usage(e.to_string()))?;
    let rt = super::runtime()?;
    // the ledger's faults first: nothing about the Kubernetes API may stand in their way
    let mut failed = 0;
    if entries.is_empty() {
        println!("hadrill recover: the ledger {} holds no fault: nothing to revert", dir.display());
        failed += cluster_side(g, &args, &rt);
        return Ok(if failed > 0 { Code::Failed } else { Code::Ok });
    }
    let mut reverted = 0;
    // runs whose faults were reverted here: their keys in etcd go too (a run that started
    // its own rig took its cluster with it)
    let mut runs = std::collections::BTreeSet::new();
    let mut own_rig_runs = std::collections::BTreeSet::new();
    for e in entries.into_iter().rev() {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                failed += 1;
                println!("cannot read: {err}");
                continue;
            }
        };
        if e.owner_alive() && !args.force {
            println!("left alone (run {} is still alive as pid {}): {}", e.run_id, e.pid, e.description);
            continue;
        }
        if args.dry_run {
            println!("would revert: {} → {}", e.description, e.revert);
            continue;
        }
        match rt.block_on(e.fault.revert()) {
            Ok(()) => match ledger.remove(&e.id) {
                Ok(()) => {
                    reverted += 1;
                    runs.insert(e.run_id.clone());
                    if matches!(e.fault, crate::fault::Fault::EphemeralRig { .. }) {
                        own_rig_runs.insert(e.run_id.clone());
                    }
                    println!("reverted: {} ({})", e.description, e.revert);
                }
                Err(err) => {
                    failed += 1;
                    println!("reverted but the ledger entry stays: {err}");
                }
            },
            Err(err) => {
                failed += 1;
                println!("revert FAILED: {}: {}", e.description, crate::exit::chain(&err));
            }
        }
    }
    runs.retain(|r| !own_rig_runs.contains(r));
    failed += rt.block_on(run_keys(g, &runs));
    failed += cluster_side(g, &args, &rt);
    println!("hadrill recover: {reverted} reverted, {failed} failed");
    Ok(if failed > 0 { Code::Failed } else { Code::Ok })
}

/// Deletes the etcd keys (`/hadrill/<run>/…`: probe keys, markers) of the runs whose faults
/// were reverted, when the etcd target is given (flags, config, rig); otherwise says how.
/// Returns how many deletions failed.
async fn run_keys(g: &Global, runs: &std::collections::BTreeSet<String>) -> usize {
    if runs.is_empty() {
        return 0;
    }
    let etcd = match super::target::resolve(g) {
        Ok(r) => super::target::build(&r, None).await.ok().and_then(|t| t.etcd),
        Err(_) => None,
    };
    let Some(etcd) = etcd else {
        for r in runs {
            println!(
                "keys the killed run may have written stay under /hadrill/{r}/ (no etcd target given): `etcdctl del --prefix /hadrill/{r}/` removes them"
            );
        }
        return 0;
    };
    let mut failed = 0;
    for r in runs {
        let prefix = format!("/hadrill/{r}/");
        match crate::probe::etcd::delete_prefix(&etcd, &prefix).await {
            Ok(n) => println!("deleted {n} etcd keys under {prefix}"),
            Err(e) => {
                failed += 1;
                println!("could not delete the etcd keys under {prefix}: {e}");
            }
        }
    }
    failed
}

/// The Kubernetes API recover cleans up through (scratch namespaces, access pods):
/// `--kubeconfig`, the config's, else the first path of `$KUBECONFIG`. A kubeconfig that
/// cannot be loaded is reported and counted as a failure; it never stops `recover`.
fn kube_target(g: &Global, rt: &tokio::runtime::Runtime) -> (Option<crate::target::kube::KubeTarget>, usize) {
    let Ok(r) = super::target::resolve(g) else { return (None, 0) };
    let path = r.kubeconfig.clone().or_else(|| {
        std::env::var_os("KUBECONFIG")
            .and_then(|k| std::env::split_paths(&k).next())
            .filter(|p| !p.as_os_str().is_empty())
    });
    let Some(path) = path else { return (None, 0) };
    match rt.block_on(crate::target::kube::KubeTarget::load(&path, r.context.as_deref())) {
        Ok(k) => (Some(k), 0),
        Err(e) => {
            println!("cannot clean up scratch namespaces and access pods: {e}");
            (None, 1)
        }
    }
}

/// The cluster-side cleanups after the ledger: leftover scratch namespaces, then (unless
/// `--dry-run`) leftover node access pods. Returns how many failed.
fn cluster_side(g: &Global, args: &RecoverArgs, rt: &tokio::runtime::Runtime) -> usize {
    let (k, mut failed) = kube_target(g, rt);
    let Some(k) = k else { return failed };
    match rt.block_on(crate::engine::failover::recover_namespaces(&k, args.dry_run, args.force)) {
        Ok((lines, f)) => {
            for l in lines {
                println!("{l}");
            }
            failed += f;
        }
        Err(e) => {
            println!("cannot look for leftover scratch namespaces in context {}: {e}", k.context);
            failed += 1;
        }
    }
    if !args.dry_run {
        failed += rt.block_on(access_pods(g, &k));
    }
    failed
}

/// Deletes the node access pods hadrill left (found by label) in the namespaces a config may
/// have used. Returns how many namespaces could not be cleaned.
async fn access_pods(g: &Global, k: &crate::target::kube::KubeTarget) -> usize {
    let client = match kube::Client::try_from(k.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            println!("cannot delete the node access pods: {}", crate::exit::chain(&e));
            return 1;
        }
    };
    // every namespace a config may have used: the configured one and the default
    let cfg = super::target::resolve(g).ok().and_then(|r| r.config.node_access).unwrap_or_default();
    let mut namespaces = vec![crate::node::pod::namespace(&cfg)];
    if !namespaces.iter().any(|n| n == crate::node::pod::DEFAULT_NAMESPACE) {
        namespaces.push(crate::node::pod::DEFAULT_NAMESPACE.into());
    }
    let mut failed = 0;
    for ns in namespaces {
        match crate::node::pod::delete_all(&client, &ns).await {
            Ok(names) => {
                for n in names {
                    println!("deleted the node access pod {ns}/{n}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("could not delete the node access pods in {ns}: {}", crate::exit::chain(&e));
            }
        }
    }
    failed
}
