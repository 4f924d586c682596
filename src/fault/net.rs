//! Network faults inside a member's network namespace: peer partitions (iptables DROP rules
//! tagged `hadrill:<token>`) and peer latency (tc netem), each with a dead-man timer.
//!
//! The dead-man timer is a detached process started in the member's namespace before the
//! rules go in: `setsid -f sh -c 'sleep N; iptables -D …' hadrill-deadman-<token>`. It is in
//! its own session, so it outlives hadrill (SIGKILL included) and removes the rules on its
//! own after N seconds. A revert kills the timer's process group first (found by the exact
//! argument `hadrill-deadman-<token>` in /proc/*/cmdline), then deletes the rules; because
//! every rule carries the fault's unique token, a timer can only ever delete its own rules.
//! (nftables elements with timeouts would make the kernel the timer, but `nft` is not on the
//! machines we target by default and iptables here is iptables-nft anyway.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::NodeAccess;

const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// A member as a network fault addresses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMember {
    pub name: String,
    pub netns: String,
    pub ip: String,
}

/// A fresh token for a fault's rules and timer.
pub fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn deadman_tag(token: &str) -> String {
    format!("hadrill-deadman-{token}")
}

pub fn rule_comment(token: &str) -> String {
    format!("hadrill:{token}")
}

/// The iptables rules (chain, match spec) that cut `m` off from `others` on the peer ports.
pub fn partition_rules(others: &[String], peer_ports: &[u16], token: &str) -> Vec<(String, Vec<String>)> {
    let ports = peer_ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    for ip in others {
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            out.push((
                chain.to_string(),
                [
                    dir,
                    ip,
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "--ports",
                    &ports,
                    "-m",
                    "comment",
                    "--comment",
                    &rule_comment(token),
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ));
        }
    }
    out
}

fn shell_line(argv: &[String]) -> Result<String, String> {
    // every piece is an address, a number, a flag or `hadrill:<hex>`: nothing to quote, and
    // anything else is refused rather than put in a shell line
    for a in argv {
        if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || ":.,-_/".contains(c)) {
            return Err(format!("refusing to put {a:?} in a dead-man script"));
        }
    }
    Ok(argv.join(" "))
}

/// The dead-man script for a partition.
pub fn partition_deadman_script(rules: &[(String, Vec<String>)], secs: u64) -> Result<String, String> {
    let mut s = format!("sleep {secs}");
    for (chain, spec) in rules {
        let mut argv = vec!["iptables".to_string(), "-w".into(), "-D".into(), chain.clone()];
        argv.extend(spec.iter().cloned());
        s.push_str(&format!("; {} 2>/dev/null", shell_line(&argv)?));
    }
    Ok(s)
}

/// Starts the detached timer in `node`.
pub async fn start_deadman(node: &NodeAccess, script: &str, token: &str) -> Result<(), String> {
    let tag = deadman_tag(token);
    let argv = node.wrap(&["setsid", "-f", "sh", "-c", script, &tag]);
    // no pipes: the detached timer must not hold our stdout/stderr open
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(CMD_TIMEOUT, cmd.status())
        .await
        .map_err(|_| format!("{}: starting the dead-man timer took more than {CMD_TIMEOUT:?}", node.describe()))?
        .map_err(|e| format!("{}: cannot start the dead-man timer: {e}", node.describe()))?;
    if !status.success() {
        return Err(format!("{}: starting the dead-man timer exited with {status}", node.describe()));
    }
    // the timer may be between fork and exec (its cmdline briefly unreadable): poll
    let seen = crate::engine::poll(Duration::from_secs(3), Duration::from_millis(20), || async {
        deadman_running(token).then_some(())
    })
    .await;
    if seen.is_none() {
        return Err(format!("{}: the dead-man timer was not running 3s after it was started", node.describe()));
    }
    Ok(())
}

/// Kills every process whose argv holds exactly `hadrill-deadman-<token>` (and its group).
/// Returns how many it killed.
pub fn kill_deadman(token: &str) -> usize {
    let tag = deadman_tag(token);
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else { return 0 };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if cmd.split(|b| *b == 0).any(|a| a == tag.as_bytes()) {
            let pg = nix::unistd::Pid::from_raw(pid);
            // the timer is a session and group leader (setsid): kill its group (sh + sleep)
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
            n += 1;
        }
    }
    n
}

/// Whether a timer for `token` still runs.
pub fn deadman_running(token: &str) -> bool {
    let tag = deadman_tag(token);
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| c.split(|b| *b == 0).any(|a| a == tag.as_bytes()))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn node(netns: &str) -> NodeAccess {
    NodeAccess::Local { netns: Some(netns.to_string()) }
}

/// Inserts the partition rules in every isolated member's namespace, timer first.
pub async fn apply_partition(
    isolated: &[NetMember],
    others: &[String],
    peer_ports: &[u16],
    token: &str,
    dead_man_secs: u64,
) -> Result<(), String> {
    for m in isolated {
        let n = node(&m.netns);
        let rules = partition_rules(others, peer_ports, token);
        start_deadman(&n, &partition_deadman_script(&rules, dead_man_secs)?, token).await?;
        for (chain, spec) in &rules {
            let mut argv: Vec<&str> = vec!["iptables", "-w", "-I", chain];
            argv.extend(spec.iter().map(String::as_str));
            n.exec(&argv, CMD_TIMEOUT).await.map_err(|e| format!("{}: {}", m.name, crate::exit::chain(&e)))?;
        }
    }
    Ok(())
}

/// Kills the timers and deletes every rule of the partition that is still there. A missing
/// namespace (the rig is gone) counts as reverted.
pub async fn revert_partition(
    isolated: &[NetMember],
    others: &[String],
    peer_ports: &[u16],
    token: &str,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for m in isolated {
        if !netns_exists(&m.netns) {
            continue;
        }
        let n = node(&m.netns);
        for (chain, spec) in partition_rules(others, peer_ports, token) {
            // delete while present (-C succeeds): idempotent, and removes duplicates too.
            // Exit status 1 means "no such rule", 2 a rule that cannot even be written (so is
            // not there); the xtables lock timing out (4), a timeout or any other failure is
            // an error, not a rule gone
            for _ in 0..8 {
                let mut check: Vec<&str> = vec!["iptables", "-w", "-C", &chain];
                check.extend(spec.iter().map(String::as_str));
                match n.exec(&check, CMD_TIMEOUT).await {
                    Ok(_) => {}
                    Err(crate::node::NodeError::Failed { status, .. })
                        if status == "exit status: 1" || status == "exit status: 2" =>
                    {
                        break
                    }
                    Err(e) => {
                        errors.push(format!("{}: {}", m.name, crate::exit::chain(&e)));
                        break;
                    }
                }
                let mut del: Vec<&str> = vec!["iptables", "-w", "-D", &chain];
                del.extend(spec.iter().map(String::as_str));
                if let Err(e) = n.exec(&del, CMD_TIMEOUT).await {
                    errors.push(format!("{}: {}", m.name, crate::exit::chain(&e)));
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        // the timer goes only once the rules are known gone: until then it may still heal
        kill_deadman(token);
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The `hadrill:<token>` rules present in a namespace (for tests and `recover` reports).
pub async fn tagged_rules(netns: &str, token: Option<&str>) -> Result<Vec<String>, String> {
    let out = node(netns).exec(&["iptables-save"], CMD_TIMEOUT).await.map_err(|e| crate::exit::chain(&e))?;
    let want = token.map(rule_comment).unwrap_or_else(|| "hadrill".into());
    Ok(out.stdout.lines().filter(|l| l.contains(&want)).map(str::to_string).collect())
}

pub fn netns_exists(netns: &str) -> bool {
    std::path::Path::new("/run/netns").join(netns).exists()
}

/// The tc commands that delay `dev`'s peer traffic (source or destination port in
/// `peer_ports`) by `delay_ms`: a 4-band prio root whose 4th band (fed only by our filters)
/// holds netem.
pub fn latency_commands(dev: &str, peer_ports: &[u16], delay_ms: u64) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = vec![
        vec!["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "prio", "bands", "4"],
        vec![
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "parent",
            "1:4",
            "handle",
            "40:",
            "netem",
            "delay",
            &format!("{delay_ms}ms"),
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for p in peer_ports {
        for dir in ["sport", "dport"] {
            cmds.push(
                [
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    dev,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    dir,
                    &p.to_string(),
                    "0xffff",
                    "flowid",
                    "1:4",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            );
        }
    }
    cmds
}

/// Adds the latency in `m`'s namespace, timer first.
pub async fn apply_latency(
    m: &NetMember,
    dev: &str,
    peer_ports: &[u16],
    delay_ms: u64,
    token: &str,
    dead_man_secs: u64,
) -> Result<(), String> {
    let n = node(&m.netns);
    let del = shell_line(&[
        "tc".into(),
        "qdisc".into(),
        "del".into(),
        "dev".into(),
        dev.into(),
        "root".into(),
        "handle".into(),
        "1:".into(),
    ])?;
    start_deadman(&n, &format!("sleep {dead_man_secs}; {del} 2>/dev/null"), token).await?;
    for c in latency_commands(dev, peer_ports, delay_ms) {
        let argv: Vec<&str> = c.iter().map(String::as_str).collect();
        if let Err(e) = n.exec(&argv, CMD_TIMEOUT).await {
            let text = crate::exit::chain(&e);
            if text.contains("qdisc kind is unknown") {
                return Err(format!(
                    "{}: this kernel has no tc netem/prio support (sch_netem, sch_prio): {text}",
                    m.name
                ));
            }
            return Err(format!("{}: {text}", m.name));
        }
    }
    Ok(())
}

/// Kills the timer and removes our root qdisc if it is still there.
pub async fn revert_latency(m: &NetMember, dev: &str, token: &str) -> Result<(), String> {
    kill_deadman(token);
    if !netns_exists(&m.netns) {
        return Ok(());
    }
    let n = node(&m.netns);
    let shown = n.exec(&["tc", "qdisc", "show", "dev", dev], CMD_TIMEOUT).await.map_err(|e| crate::exit::chain(&e))?;
    if !shown.stdout.lines().any(|l| l.contains("qdisc prio 1: root")) {
        return Ok(());
    }
    n.exec(&["tc", "qdisc", "del", "dev", dev, "root", "handle", "1:"], CMD_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {}", m.name, crate::exit::chain(&e)))
}

/// The interface of `netns` that routes to `ip`.
pub async fn dev_towards(netns: &str, ip: &str) -> Result<String, String> {
    let out =
        node(netns).exec(&["ip", "-o", "route", "get", ip], CMD_TIMEOUT).await.map_err(|e| crate::exit::chain(&e))?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "dev")
        .map(|w| w[1].to_string())
        .ok_or_else(|| format!("no route from {netns} to {ip}: {}", out.stdout.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_drop_both_directions_per_other_member_and_carry_the_token() {
        let r = partition_rules(&["10.0.0.2".into(), "10.0.0.3".into()], &[2380], "ab12");
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].0, "INPUT");
        assert_eq!(r[0].1[..2], ["-s", "10.0.0.2"]);
        assert_eq!(r[1].0, "OUTPUT");
        assert_eq!(r[1].1[..2], ["-d", "10.0.0.2"]);
        assert!(r.iter().all(|(_, s)| s.contains(&"hadrill:ab12".to_string()) && s.contains(&"2380".to_string())));
        let script = partition_deadman_script(&r, 30).unwrap();
        assert!(script.starts_with("sleep 30; iptables -w -D INPUT -s 10.0.0.2"), "{script}");
        assert_eq!(script.matches("iptables -w -D").count(), 4);
    }

    #[test]
    fn a_shell_metacharacter_never_reaches_the_timer() {
        let e =
            partition_deadman_script(&partition_rules(&["10.0.0.2; rm -rf /".into()], &[2380], "x"), 1).unwrap_err();
        assert!(e.contains("refusing") && e.contains("rm -rf"), "{e}");
    }

    #[test]
    fn latency_goes_to_a_band_only_peer_ports_reach() {
        let c = latency_commands("eth0", &[2380], 150);
        assert_eq!(c.len(), 4);
        assert!(c[1].join(" ").ends_with("netem delay 150ms"));
        assert!(c[2].join(" ").contains("match ip sport 2380 0xffff flowid 1:4"));
        assert!(c[3].join(" ").contains("dport 2380"));
    }

    #[tokio::test]
    async fn a_deadman_timer_is_found_and_killed_by_its_token() {
        let token = new_token();
        let n = NodeAccess::Local { netns: None };
        start_deadman(&n, "sleep 30", &token).await.unwrap();
        let seen = crate::engine::poll(Duration::from_secs(5), Duration::from_millis(20), || async {
            deadman_running(&token).then_some(())
        })
        .await;
        assert!(seen.is_some(), "the timer runs detached");
        assert!(!deadman_running(&new_token()), "another token is not matched");
        // the timer, and on a busy machine possibly `setsid` still exiting after its fork
        // (its argv carries the tag too): at least one, and afterwards none
        assert!(kill_deadman(&token) >= 1);
        let gone = crate::engine::poll(Duration::from_secs(5), Duration::from_millis(20), || async {
            (!deadman_running(&token)).then_some(())
        })
        .await;
        assert!(gone.is_some(), "the timer is gone after the kill");
    }
}
