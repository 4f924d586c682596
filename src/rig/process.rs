//! Member processes: started detached (new session, double fork, so that they outlive
//! `hadrill rig up` and never become zombies of a long-running hadrill), found again by
//! their command line, and stopped only after their start time is checked.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::Signal;

use crate::fault::process as proc_;

/// Starts `argv` as a grandchild in a session of its own, stdout and stderr appended to
/// `log`, stdin from /dev/null, without the caller's `ETCD_*` variables. Returns the pid of
/// the process that runs `argv` (exec keeps it: `ip netns exec` execs its command) and its
/// start time. The intermediate child is reaped here; the grandchild's parent is init.
pub fn spawn_detached(argv: &[String], log: &Path) -> std::io::Result<(i32, u64)> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"));
    };
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let wr_fd = wr.as_raw_fd();
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(k);
        }
    }
    // SAFETY: only async-signal-safe calls (setsid, fork, write, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()), // the grandchild goes on to exec
                pid => {
                    let b = pid.to_ne_bytes();
                    libc::write(wr_fd, b.as_ptr().cast(), b.len());
                    libc::_exit(0)
                }
            }
        });
    }
    // spawn returns once the grandchild has exec'd (or failed to: then it is an error)
    let mut child = cmd.spawn()?;
    drop(wr);
    let _ = child.wait();
    let mut b = [0u8; 4];
    File::from(rd).read_exact(&mut b)?;
    let pid = i32::from_ne_bytes(b);
    let start = proc_::start_time(pid)
        .ok_or_else(|| std::io::Error::other(format!("process {pid} exited at once (see {})", log.display())))?;
    Ok((pid, start))
}

/// The command line of a process, NUL-separated arguments.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// The name of the process's executable (`/proc/PID/comm`).
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// The network namespace of a process (`net:[4026531840]`).
pub fn netns_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().map(|p| p.display().to_string())
}

/// etcd processes of this machine with an argument that starts with `prefix` (the rig uses
/// `--data-dir=<rig>/`): (pid, start time).
pub fn etcd_with_arg_prefix(prefix: &str) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(args) = cmdline(pid) else { continue };
        let is_etcd = comm(pid).as_deref() == Some("etcd")
            || args.first().map(|a| a.rsplit('/').next() == Some("etcd")).unwrap_or(false);
        if is_etcd && args.iter().any(|a| a.starts_with(prefix)) {
            if let Some(start) = proc_::start_time(pid) {
                out.push((pid, start));
            }
        }
    }
    out.sort();
    out
}

/// Processes of this machine running one of `programs` (by `/proc/PID/comm` or the first
/// argument's file name) with an argument that starts with `prefix` or holds `=prefix`
/// (`--tls-cert-file=<rig>/…`): (pid, start time, program).
pub fn programs_with_arg(programs: &[&str], prefix: &str) -> Vec<(i32, u64, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let eq = format!("={prefix}");
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(args) = cmdline(pid) else { continue };
        let c = comm(pid).unwrap_or_default();
        let first = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
        // comm is cut at 15 characters (kube-controller-manager → kube-controller)
        let Some(prog) =
            programs.iter().find(|p| **p == first || (!c.is_empty() && p.starts_with(c.as_str()) && c.len() >= 4))
        else {
            continue;
        };
        if args.iter().skip(1).any(|a| a.starts_with(prefix) || a.contains(&eq)) {
            if let Some(start) = proc_::start_time(pid) {
                out.push((pid, start, prog.to_string()));
            }
        }
    }
    out.sort();
    out
}

/// Stops every process: SIGCONT (a paused one cannot act on SIGTERM), SIGTERM, and SIGKILL
/// for those still running after `grace`. Each is signalled only if its start time matches.
/// Returns the processes that are still there after the SIGKILL.
pub async fn stop_all(procs: &[(i32, u64)], grace: Duration) -> Vec<i32> {
    for (pid, start) in procs {
        let _ = proc_::signal(*pid, *start, Signal::SIGCONT);
        let _ = proc_::signal(*pid, *start, Signal::SIGTERM);
    }
    let mut left = Vec::new();
    for (pid, start) in procs {
        if !proc_::wait_gone(*pid, *start, grace).await {
            left.push((*pid, *start));
        }
    }
    let mut stuck = Vec::new();
    for (pid, start) in left {
        let _ = proc_::signal(pid, start, Signal::SIGKILL);
        if !proc_::wait_gone(pid, start, Duration::from_secs(5)).await {
            stuck.push(pid);
        }
    }
    stuck
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else { return String::new() };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_process_is_a_grandchild_in_its_own_session() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("out.log");
        let marker = d.path().join("marker-arg");
        let argv: Vec<String> = ["sh", "-c", "echo started; exec sleep 30", marker.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (pid, start) = spawn_detached(&argv, &log).unwrap();
        assert!(proc_::alive(pid, start));
        // not our child: its parent is not us, and it leads its own session's successor
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (ppid, sid): (i32, i32) = (f[1].parse().unwrap(), f[3].parse().unwrap());
        assert_ne!(ppid, std::process::id() as i32, "the member must not be our child");
        assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw(), "the member must be in a session of its own");
        // the log receives its output
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !tail(&log, 5).contains("started") {
            assert!(std::time::Instant::now() < deadline, "no output in the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stuck = stop_all(&[(pid, start)], Duration::from_secs(5)).await;
        assert!(stuck.is_empty());
        assert!(!proc_::alive(pid, start));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = spawn_detached(&["/nonexistent/etcd".to_string()], &d.path().join("l")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }

    #[tokio::test]
    async fn programs_are_found_by_a_rig_path_in_their_arguments() {
        let d = tempfile::tempdir().unwrap();
        let prefix = format!("{}/", d.path().display());
        let log = d.path().join("l");
        let arg = |s: &str| s.to_string();
        // `sh -c 'sleep 60; :' x <arg>`: the shell stays (it does not exec its last command)
        let a = spawn_detached(&[arg("sh"), arg("-c"), arg("sleep 60; :"), arg("x"), format!("{prefix}a.cfg")], &log)
            .unwrap();
        let b = spawn_detached(
            &[arg("sh"), arg("-c"), arg("sleep 60; :"), arg("x"), format!("--tls-cert-file={prefix}b.crt")],
            &log,
        )
        .unwrap();
        let other =
            spawn_detached(&[arg("sh"), arg("-c"), arg("sleep 60; :"), arg("x"), arg("/elsewhere/c")], &log).unwrap();
        let found: Vec<i32> = programs_with_arg(&["sh"], &prefix).iter().map(|p| p.0).collect();
        let none = programs_with_arg(&["haproxy"], &prefix);
        stop_all(&[a, b, other], Duration::from_secs(5)).await;
        assert!(found.contains(&a.0) && found.contains(&b.0), "{found:?} lacks {} or {}", a.0, b.0);
        assert!(!found.contains(&other.0), "a process without the rig's path was matched");
        assert!(none.is_empty(), "another program was matched: {none:?}");
    }

    #[tokio::test]
    async fn stop_all_kills_what_ignores_sigterm() {
        let d = tempfile::tempdir().unwrap();
        let argv: Vec<String> =
            ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"].iter().map(|s| s.to_string()).collect();
        let log = d.path().join("l");
        let (pid, start) = spawn_detached(&argv, &log).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !tail(&log, 5).contains("ready") {
            assert!(std::time::Instant::now() < deadline, "no output in the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = std::time::Instant::now();
        let stuck = stop_all(&[(pid, start)], Duration::from_millis(300)).await;
        assert!(stuck.is_empty() && !proc_::alive(pid, start));
        assert!(t.elapsed() >= Duration::from_millis(300), "SIGTERM was ignored, so SIGKILL came after the grace");
    }
}
