//! Ctrl-C, SIGTERM and SIGHUP (a dropped ssh session, a closed terminal): revert every active
//! fault (and the run's own rig), then exit with 130, 143 or 129. A second signal while
//! reverting is ignored: the reverts are bounded.

use tokio::signal::unix::{signal, SignalKind};

/// Starts the handler on the runtime. Call once, before the first fault.
pub fn install(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::warn!("cannot install signal handlers: faults are reverted only at the end of each case");
            return;
        };
        let (code, name) = tokio::select! {
            _ = int.recv() => (130, "SIGINT"),
            _ = term.recv() => (143, "SIGTERM"),
            _ = hup.recv() => (129, "SIGHUP"),
        };
        eprintln!("\nhadrill: {name} received: reverting every active fault before exiting");
        let results = crate::fault::revert_all_active().await;
        let mut failed = false;
        for (what, r) in results {
            match r {
                Ok(()) => eprintln!("hadrill: reverted: {what}"),
                Err(e) => {
                    failed = true;
                    eprintln!("hadrill: revert FAILED: {what}: {} (run `hadrill recover`)", crate::exit::chain(&e));
                }
            }
        }
        if failed {
            eprintln!("hadrill: some faults remain in the ledger: run `hadrill recover`");
        }
        std::process::exit(code);
    });
}
