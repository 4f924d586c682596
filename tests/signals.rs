//! Ctrl-C, SIGTERM, SIGHUP and SIGKILL while a fault is in force, against a real etcd rig: the fault
//! (SIGSTOP of a member this test owns) is reverted before hadrill exits, and after a SIGKILL
//! `hadrill recover` reverts it from the ledger.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, member_states, poll_until, Rig};

const SUITE: &str = "suite: sigtest\ndescription: a fault held while hadrill waits\ncases:\n  - name: pause_and_wait\n    description: pause a follower, then observe for two minutes\n    disruptive: true\n    requires: [member_process_access]\n    steps:\n      - inject: { member_pause: { role: follower } }\n      - await: { observe: { duration: 120s } }\n";

struct Running {
    child: Child,
    ledger: std::path::PathBuf,
    _suites: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the case and waits until a member is stopped and the ledger holds the fault.
fn start_with_fault(rig: &Rig) -> Running {
    let suites = tempfile::tempdir().unwrap();
    std::fs::write(suites.path().join("sigtest.yaml"), SUITE).unwrap();
    let ledger = rig.dir().join("ledger");
    let child = Command::new(bin())
        .args(["--config"])
        .arg(rig.dir().join("target.yaml"))
        .arg("--ledger")
        .arg(&ledger)
        .arg("--suite-dir")
        .arg(suites.path())
        .args(["run", "--allow-disruption", "sigtest::"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = Running { child, ledger, _suites: suites };
    let ok = poll_until(Duration::from_secs(30), || {
        let stopped = member_states(rig.dir()).iter().filter(|s| **s == 'T').count() == 1;
        stopped && ledger_len(&r.ledger) == 1
    });
    assert!(ok, "no member was paused with a ledger entry within 30s: states {:?}", member_states(rig.dir()));
    r
}

fn ledger_len(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
        .unwrap_or(0)
}

fn signal_reverts(sig: nix::sys::signal::Signal, code: i32) {
    let rig = Rig::up(3);
    let mut run = start_with_fault(&rig);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.child.id() as i32), sig).unwrap();
    let status = common::wait_exit(&mut run.child, Duration::from_secs(30)).expect("hadrill exits after the signal");
    let out = common::drain(&mut run.child);
    assert_eq!(status.code(), Some(code), "exit code after {sig}; output:\n{out}");
    assert!(out.contains("reverted: pause etcd member"), "hadrill says what it reverted:\n{out}");
    let states = member_states(rig.dir());
    assert!(states.iter().all(|s| *s != 'T'), "a member is still stopped after {sig}: {states:?}");
    assert_eq!(ledger_len(&run.ledger), 0, "the ledger still holds the fault");
}

#[test]
fn sigint_reverts_the_active_fault_before_exit() {
    signal_reverts(nix::sys::signal::Signal::SIGINT, 130);
}

#[test]
fn sigterm_reverts_the_active_fault_before_exit() {
    signal_reverts(nix::sys::signal::Signal::SIGTERM, 143);
}

#[test]
fn sighup_reverts_the_active_fault_before_exit() {
    // a dropped ssh session or a closed terminal
    signal_reverts(nix::sys::signal::Signal::SIGHUP, 129);
}

#[test]
fn sigkill_leaves_the_ledger_and_recover_reverts() {
    let rig = Rig::up(3);
    let mut run = start_with_fault(&rig);
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    // SIGKILL cannot be caught: the member stays paused, the ledger keeps the fault
    assert_eq!(member_states(rig.dir()).iter().filter(|s| **s == 'T').count(), 1);
    assert_eq!(ledger_len(&run.ledger), 1);
    let dry = Command::new(bin()).arg("--ledger").arg(&run.ledger).args(["recover", "--dry-run"]).output().unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would revert: pause etcd member"));
    assert_eq!(ledger_len(&run.ledger), 1, "--dry-run changes nothing");
    let out = Command::new(bin()).arg("--ledger").arg(&run.ledger).arg("recover").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "recover: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("reverted: pause etcd member"), "{text}");
    assert!(member_states(rig.dir()).iter().all(|s| *s != 'T'), "recover resumed the member");
    assert_eq!(ledger_len(&run.ledger), 0);
    // a second recover finds nothing
    let again = Command::new(bin()).arg("--ledger").arg(&run.ledger).arg("recover").output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to revert"));
}
