//! The active faults of this process and the gate that lets a signal handler revert them all
//! without racing an inject or a revert in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use tokio::sync::RwLock;

use super::{Fault, FaultError, Ledger};

struct Active {
    id: String,
    fault: Fault,
    ledger: Ledger,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());
/// Injects and reverts hold it shared; the shutdown path takes it exclusively (and keeps it).
static GATE: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));
static CANCELLED: AtomicBool = AtomicBool::new(false);

fn active() -> std::sync::MutexGuard<'static, Vec<Active>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether shutdown has begun (no new fault will be injected).
pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// A fault in force. Dropping it does not revert it (`Drop` cannot await): call
/// [`FaultGuard::revert`]; the runner keeps guards on a reverse-order stack.
#[must_use = "an injected fault must be reverted: keep the guard and call revert()"]
#[derive(Debug)]
pub struct FaultGuard {
    id: String,
    description: String,
}

impl FaultGuard {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Reverts the fault and clears its ledger entry. If the shutdown path already reverted
    /// it, this does nothing. On failure the ledger entry stays for `hadrill recover`.
    pub async fn revert(self) -> Result<(), FaultError> {
        revert_id(&self.id).await
    }
}

/// Journals `fault` in `ledger`, then applies it. If applying fails, whatever part of it took
/// effect is reverted before the error is returned.
pub async fn inject(ledger: &Ledger, fault: Fault) -> Result<FaultGuard, FaultError> {
    let _gate = GATE.read().await;
    if is_cancelled() {
        return Err(FaultError::Cancelled);
    }
    let entry = ledger.write(&fault)?;
    active().push(Active { id: entry.id.clone(), fault: fault.clone(), ledger: ledger.clone() });
    match fault.apply().await {
        Ok(()) => Ok(FaultGuard { id: entry.id, description: entry.description }),
        Err(e) => {
            if let Some(a) = take(&entry.id) {
                match a.fault.revert().await {
                    Ok(()) => {
                        let _ = a.ledger.remove(&a.id);
                    }
                    Err(r) => {
                        // part of it may be in force: it stays active (a signal still reverts
                        // it) and journaled (`hadrill recover`), and the caller hears of both
                        let m = format!(
                            "{e}; undoing what took effect also failed ({}): it stays in the ledger for `hadrill recover`",
                            crate::exit::chain(&r)
                        );
                        active().push(a);
                        return Err(FaultError::Apply { what: fault.describe(), message: m });
                    }
                }
            }
            Err(e)
        }
    }
}

fn take(id: &str) -> Option<Active> {
    let mut list = active();
    let pos = list.iter().position(|a| a.id == id)?;
    Some(list.remove(pos))
}

async fn revert_id(id: &str) -> Result<(), FaultError> {
    let _gate = GATE.read().await;
    let Some(a) = take(id) else { return Ok(()) };
    if let Err(e) = a.fault.revert().await {
        // still (partly) in force: a signal's shutdown path tries it again
        active().push(a);
        return Err(e);
    }
    a.ledger.remove(&a.id)?;
    Ok(())
}

/// Reverts every active fault, newest first, and refuses any new inject from now on. Waits
/// for injects and reverts in flight to finish first. Returns one line per fault.
pub async fn revert_all_active() -> Vec<(String, Result<(), FaultError>)> {
    let gate = GATE.write().await;
    CANCELLED.store(true, Ordering::SeqCst);
    let all: Vec<Active> = std::mem::take(&mut *active());
    let mut out = Vec::new();
    for a in all.into_iter().rev() {
        let mut res = a.fault.revert().await;
        if res.is_ok() {
            res = a.ledger.remove(&a.id).map_err(Into::into);
        }
        out.push((a.fault.describe(), res));
    }
    // the gate stays closed: the process is about to exit
    std::mem::forget(gate);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_apply_whose_undo_also_fails_says_both_and_stays_journaled() {
        let d = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&d.path().join("ledger")).unwrap();
        // no manifest to park (apply fails), nothing to move back either (its undo fails too)
        let f = Fault::StaticPodStop {
            at: super::super::node::NodeRef {
                node: "cp-1".into(),
                access: crate::node::NodeAccess::Local { netns: None },
                kube: None,
            },
            container: "kube-scheduler".into(),
            manifest: d.path().join("manifests/kube-scheduler.yaml"),
            parking_dir: d.path().join("parked"),
            token: crate::fault::net::new_token(),
            wait_secs: 5,
            dead_man_secs: 0,
        };
        let e = inject(&ledger, f).await.unwrap_err().to_string();
        assert!(e.contains("undoing what took effect also failed"), "{e}");
        assert_eq!(ledger.entries().unwrap().len(), 1, "the entry stays for `hadrill recover`");
    }

    #[tokio::test]
    async fn stopping_a_process_of_a_rig_that_is_gone_reverts_as_nothing_to_restart() {
        let d = tempfile::tempdir().unwrap();
        let f = Fault::RigProcessStop {
            rig_dir: d.path().join("gone"),
            name: "apiserver-1".into(),
            pid: 1,
            start_time: 1,
            signal: crate::suite::StopSignal::Term,
        };
        f.revert().await.expect("nothing to restart");
        f.revert().await.expect("twice");
    }
}
