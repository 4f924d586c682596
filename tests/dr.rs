//! The disaster-recovery drill against a real 3-member rig: the snapshot restores to its
//! point in time, and nothing of the drill stays behind: no scratch member, no scratch
//! directory (the snapshot in it holds the cluster's secrets), no marker key; after a
//! SIGKILL, the scratch member dies with hadrill and `hadrill recover` removes the directory.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, poll_until, Rig};

fn scratch_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("hadrill-dr-"))
                .collect()
        })
        .unwrap_or_default()
}

fn scratch_members(tmp: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", "--", &format!("--data-dir={}/hadrill-dr-", tmp.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn keys(rig: &Rig) -> String {
    let target = std::fs::read_to_string(rig.dir().join("target.yaml")).unwrap();
    let ep = target
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .trim_matches(|c| c == ',' || c == '[' || c == ']' || c == '"');
    let pki = rig.dir().join("pki");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!("--cert={}", pki.join("client.crt").display()))
        .arg(format!("--key={}", pki.join("client.key").display()))
        .args(["get", "--prefix", "/hadrill/", "--keys-only"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_snapshot_restores_to_its_point_in_time_and_leaves_nothing_behind() {
    let rig = Rig::up(3);
    let tmp = tempfile::tempdir().unwrap();
    let report = rig.dir().join("dr.json");
    let out = Command::new(bin())
        .env("TMPDIR", tmp.path())
        .arg("--config")
        .arg(rig.dir().join("target.yaml"))
        .arg("--ledger")
        .arg(rig.dir().join("ledger"))
        .args(["run", "dr::", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    let shown = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let c = &r["cases"][0];
    assert_eq!(c["verdict"]["status"], "passed", "{c}");
    let ms: Vec<&str> = c["measurements"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(ms.contains(&"snapshot_bytes") && ms.contains(&"restore_seconds"), "{ms:?}");
    let keys_in_snapshot = c["measurements"].as_array().unwrap().iter().find(|m| m["name"] == "snapshot_keys").unwrap();
    assert!(keys_in_snapshot["value"].as_f64().unwrap() >= 1.0);
    assert!(scratch_dirs(tmp.path()).is_empty(), "scratch directories left: {:?}", scratch_dirs(tmp.path()));
    assert!(scratch_members(tmp.path()).is_empty(), "{:?}", scratch_members(tmp.path()));
    assert_eq!(keys(&rig), "", "marker keys left in the cluster");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn after_a_sigkill_the_scratch_member_dies_and_recover_removes_the_directory() {
    let rig = Rig::up(3);
    let tmp = tempfile::tempdir().unwrap();
    let ledger = rig.dir().join("ledger");
    // kill hadrill while its scratch member runs (it lives a few hundred milliseconds: a
    // run that ends before it is seen is repeated, at most five times)
    let mut caught = false;
    for _ in 0..5 {
        let child = Command::new(bin())
            .env("TMPDIR", tmp.path())
            .arg("--config")
            .arg(rig.dir().join("target.yaml"))
            .arg("--ledger")
            .arg(&ledger)
            .args(["run", "dr::"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // killed even if this test panics: the run and its scratch member go with it
        let mut child = KillOnDrop(child);
        let child = &mut child.0;
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end && child.try_wait().unwrap().is_none() {
            if !scratch_members(tmp.path()).is_empty() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                caught = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        if caught {
            break;
        }
    }
    assert!(caught, "the scratch member was never seen running in five runs");
    assert!(!scratch_dirs(tmp.path()).is_empty(), "the killed run left no scratch directory to recover");
    assert!(
        poll_until(Duration::from_secs(10), || scratch_members(tmp.path()).is_empty()),
        "the scratch member outlived hadrill: {:?}",
        scratch_members(tmp.path())
    );
    let out = Command::new(bin()).arg("--ledger").arg(&ledger).arg("recover").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scratch directory"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        scratch_dirs(tmp.path()).is_empty(),
        "scratch directories left after recover: {:?}",
        scratch_dirs(tmp.path())
    );
}
