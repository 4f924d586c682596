//! Helpers shared by the integration tests: the binary, a rig that is always taken down
//! (even when the test panics), bounded polls, and output capture.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hadrill")
}

/// Runs hadrill and returns (exit code, stdout, stderr); on a failed expectation the caller
/// prints all three.
pub fn hadrill(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run hadrill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A rig in its own temp dir, taken down on drop.
pub struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    pub fn up(members: usize) -> Self {
        Self::up_with(members, "loopback")
    }

    pub fn up_with(members: usize, isolation: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("hdt-").tempdir().unwrap();
        let rig = Rig { dir };
        let n = members.to_string();
        let d = rig.dir().display().to_string();
        let (code, out, err) = hadrill(&["rig", "up", "--members", &n, "--dir", &d, "--isolation", isolation]);
        assert_eq!(code, 0, "rig up failed\nstdout:\n{out}\nstderr:\n{err}");
        rig
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let d = self.dir().display().to_string();
        let _ = hadrill(&["rig", "down", "--dir", &d]);
    }
}

/// The state letter (R, S, T …) of every member process of the rig, from its rig.json.
pub fn member_states(dir: &Path) -> Vec<char> {
    let text = std::fs::read_to_string(dir.join("rig.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let pid = m["pid"].as_i64().unwrap_or(0) as i32;
                    hadrill::fault::process::stat(pid).map(|(_, s)| s).unwrap_or('-')
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it holds, at most `deadline`.
pub fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Waits for a child to exit, at most `deadline`.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Everything the child wrote (stdout then stderr), after it exited.
pub fn drain(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut s);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
