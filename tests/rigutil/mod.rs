//! Helpers of the rig and topology tests: a rig (through the library) that is always taken
//! down, even when the test panics; the hadrill binary; and the leftover check every test
//! ends with (no etcd process, namespace or interface of its rig on the machine).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hadrill::rig::{self, Isolation, RigSpec, RigState};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hadrill")
}

/// Runs hadrill; returns (exit code, stdout, stderr).
pub fn hadrill(args: &[&str]) -> (i32, String, String) {
    hadrill_env(args, &[])
}

pub fn hadrill_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run hadrill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory for one test's rig; the rig in it is taken down on drop (panic included),
/// and the drop fails the test if anything of the rig is left on the machine.
pub struct RigDir {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl RigDir {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("hdt-rig-").tempdir().unwrap();
        let dir = tmp.path().join("rig");
        Self { _tmp: tmp, dir }
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn target_yaml(&self) -> String {
        self.dir.join("target.yaml").display().to_string()
    }

    /// Starts a rig here through the library.
    pub fn up(&self, rt: &tokio::runtime::Runtime, members: usize, isolation: Isolation) -> RigState {
        let spec = RigSpec { dir: self.dir.clone(), members, isolation };
        match rt.block_on(rig::up(&spec)) {
            Ok(s) => s,
            Err(e) => panic!("rig up ({members} members, {isolation:?}) failed: {}", hadrill::exit::chain(&e)),
        }
    }
}

impl Drop for RigDir {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        // a runtime of its own on a thread of its own: the test may hold one, or be unwinding
        let down = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(rig::down(&dir)).map_err(|e| hadrill::exit::chain(&e))
        })
        .join();
        let left = leftovers(&self.dir);
        if std::thread::panicking() {
            return;
        }
        if let Ok(Err(e)) = down {
            panic!("rig down {} failed: {e}", self.dir.display());
        }
        assert!(left.is_empty(), "left behind by the rig {}: {left:?}", self.dir.display());
    }
}

/// etcd processes with the rig's directory in their command line, and namespaces and
/// interfaces with its id prefix.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.display().to_string();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let state = hadrill::fault::process::stat(pid).map(|s| s.1).unwrap_or('X');
        let ours = ["etcd", "haproxy", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
            .iter()
            .any(|p| cmd.contains(p));
        if ours && cmd.contains(&needle) && state != 'Z' {
            left.push(format!("pid {pid}: {cmd}"));
        }
    }
    let prefix = format!("{}-", rig::net::rig_id(&dir));
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.starts_with(&prefix) {
                left.push(format!("netns {l}"));
            }
        }
    }
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(name) = l.split(": ").nth(1) {
                if name.starts_with(&prefix) {
                    left.push(format!("link {name}"));
                }
            }
        }
    }
    if let Ok(o) = Command::new("iptables").args(["-S", "FORWARD"]).output() {
        let comment = rig::net::rule_comment(&rig::net::rig_id(&dir));
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.contains(&comment) {
                left.push(format!("iptables {l}"));
            }
        }
    }
    left
}

/// Polls `f` every 50 ms until it holds, at most `deadline`.
pub fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn show(code: i32, out: &str, err: &str) -> String {
    format!("exit {code}\n--- stdout\n{out}\n--- stderr\n{err}")
}
