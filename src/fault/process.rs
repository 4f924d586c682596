//! Processes of this machine: identity by pid *and* start time (so a reused pid is never
//! signalled), signals, and bounded waits for a process to go away.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`),
/// and its state letter. None when there is no such process.
pub fn stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: split after the last ')'
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(s, _)| s)
}

/// Whether the process `pid` started at `start` still runs (a zombie counts as gone).
pub fn alive(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some((s, state)) if s == start && state != 'Z' && state != 'X')
}

/// Whether it exists and is stopped by a signal.
pub fn stopped(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some((s, 'T')) if s == start)
}

/// Sends `sig` to the process only if it is still the one that started at `start`.
pub fn signal(pid: i32, start: u64, sig: Signal) -> Result<bool, String> {
    if !alive(pid, start) {
        return Ok(false);
    }
    kill(Pid::from_raw(pid), sig).map_err(|e| format!("kill -{} {pid}: {e}", sig.as_str()))?;
    Ok(true)
}

/// Polls until the process is gone, at most `deadline`.
pub async fn wait_gone(pid: i32, start: u64, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if !alive(pid, start) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the process is in state T (stopped), at most `deadline`.
pub async fn wait_stopped(pid: i32, start: u64, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if stopped(pid, start) {
            return true;
        }
        if Instant::now() >= end || !alive(pid, start) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time() {
        let me = std::process::id() as i32;
        let s = start_time(me).expect("own stat");
        assert!(alive(me, s));
        assert!(!alive(me, s + 1), "a different start time is a different process");
    }

    #[tokio::test]
    async fn stop_and_kill_a_real_child() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        assert!(signal(pid, start, Signal::SIGSTOP).unwrap());
        assert!(wait_stopped(pid, start, Duration::from_secs(5)).await);
        assert!(signal(pid, start, Signal::SIGKILL).unwrap());
        let _ = child.wait();
        assert!(wait_gone(pid, start, Duration::from_secs(5)).await);
        assert!(!signal(pid, start, Signal::SIGCONT).unwrap(), "a gone process is not signalled");
    }
}
