//! Faults on a Kubernetes node, applied through node access (`docker`, `ssh`, `pod`, or
//! `local` for tests): a static pod stopped by parking its manifest, a systemd unit (the
//! kubelet) stopped, the node's etcd member cut off from its peers with iptables rules in the
//! node's root network namespace, and latency on its peer traffic (tc netem).
//!
//! Everything runs on the node as one `sh -c` script per step, built here from words that
//! are checked to need no quoting (addresses, ports, paths, `hadrill:<hex>` tokens), so the
//! same script works through `docker exec`, over ssh and through `nsenter` in an access pod.
//!
//! The dead-man timer runs *on the node* so that a node whose API is unreachable, or a run
//! that was SIGKILLed, still heals: with systemd as the node's init it is a transient timer
//! unit (`systemd-run --on-active=N --unit=hadrill-deadman-<token>`), a process of the host's
//! systemd that outlives the exec session, the ssh connection and the access pod's cgroup;
//! without systemd it is a detached session (`setsid -f sh -c 'sleep N; …'
//! hadrill-deadman-<token>`). A revert stops the timer unit and kills any process whose command
//! line ends in `hadrill-deadman-<token>`, then deletes exactly the rules tagged with the
//! fault's token. Every fault stores its node access (and, for `pod`, the kubeconfig and
//! context to build a client from), so `hadrill recover` reverts it from the ledger alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::net;
use super::Fault;
use crate::node::NodeAccess;

/// The deadline of one command on a node (ssh connection included).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a node is asked whether a component stopped or runs again.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long a static-pod component may take to stop or to run again (image present).
pub const DEFAULT_WAIT_SECS: u64 = 180;
/// The dead-man of a stopped unit (the kubelet): started again on the node after this long.
pub const UNIT_DEAD_MAN_SECS: u64 = 600;
/// The dead-man of a parked static-pod manifest: moved back on the node after this long.
pub const STATIC_POD_DEAD_MAN_SECS: u64 = 600;

/// How a revert builds a Kubernetes client for the `pod` backend: a kubeconfig and context,
/// or the in-cluster service account when `kubeconfig` is None.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRef {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl KubeRef {
    /// The reference to the target's API, as stored in a fault.
    pub fn of(k: &crate::target::kube::KubeTarget) -> Self {
        if k.is_in_cluster() {
            KubeRef { kubeconfig: None, context: None }
        } else {
            // absolute: `hadrill recover` may run from another directory
            let path = std::path::absolute(&k.kubeconfig).unwrap_or_else(|_| k.kubeconfig.clone());
            KubeRef { kubeconfig: Some(path), context: Some(k.context.clone()) }
        }
    }

    pub async fn client(&self) -> Result<kube::Client, String> {
        let config = match &self.kubeconfig {
            Some(p) => {
                crate::target::kube::KubeTarget::load(p, self.context.as_deref())
                    .await
                    .map_err(|e| e.to_string())?
                    .config
            }
            None => kube::Config::incluster().map_err(|e| format!("in-cluster config: {}", crate::exit::chain(&e)))?,
        };
        kube::Client::try_from(config).map_err(|e| format!("build a Kubernetes client: {}", crate::exit::chain(&e)))
    }
}

/// The node a fault acts on and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRef {
    pub node: String,
    pub access: NodeAccess,
    /// Needed by the `pod` backend only.
    #[serde(default)]
    pub kube: Option<KubeRef>,
}

impl NodeRef {
    /// Runs `script` on the node with `sh -c`; `purpose` is its `$0` (shows in `ps`).
    pub async fn sh(&self, purpose: &str, script: &str, timeout: Duration) -> Result<crate::node::Output, String> {
        let client = match (&self.access, &self.kube) {
            (NodeAccess::Pod { .. }, Some(k)) => Some(k.client().await.map_err(|e| format!("{}: {e}", self.node))?),
            _ => None,
        };
        // errors name the step by its purpose, not by the whole script
        self.access.exec_with(client.as_ref(), &["sh", "-c", script, purpose], timeout).await.map_err(|e| match e {
            crate::node::NodeError::Failed { node, status, stderr, .. } => {
                format!("{node}: {purpose} exited with {status}: {stderr}")
            }
            crate::node::NodeError::Timeout { node, timeout, .. } => {
                format!("{node}: {purpose} did not finish within {timeout:?}")
            }
            other => crate::exit::chain(&other),
        })
    }

    /// Deletes the access pod after a revert (the `pod` backend only; others do nothing).
    pub async fn release(&self) -> Result<(), String> {
        let (NodeAccess::Pod { node, namespace, .. }, Some(k)) = (&self.access, &self.kube) else { return Ok(()) };
        let client = k.client().await?;
        crate::node::pod::delete(&client, node, namespace).await.map_err(|e| crate::exit::chain(&e))
    }
}

/// A word that may stand in a script unquoted.
pub fn safe(word: &str) -> Result<&str, String> {
    if word.is_empty() || !word.chars().all(|c| c.is_ascii_alphanumeric() || ":.,-_/@%+=".contains(c)) {
        return Err(format!("refusing to put {word:?} in a script run on a node"));
    }
    Ok(word)
}

fn line(words: &[String]) -> Result<String, String> {
    words.iter().map(|w| safe(w).map(str::to_string)).collect::<Result<Vec<_>, _>>().map(|v| v.join(" "))
}

/// The shell snippet that starts the dead-man timer on the node (`action` after `secs`) and
/// fails unless the timer is then seen running.
pub fn deadman_start(token: &str, secs: u64, action: &str) -> Result<String, String> {
    let tag = net::deadman_tag(safe(token)?);
    if action.contains('\'') {
        return Err("a dead-man action must not contain a single quote".into());
    }
    Ok(format!(
        r#"if [ -z "$HADRILL_NO_SYSTEMD" ] && [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --quiet --collect --unit={tag} --on-active={secs}s --timer-property=AccuracySec=1s /bin/sh -c '{action}' {tag}
  systemctl is-active --quiet {tag}.timer || {{ echo "the dead-man timer {tag}.timer is not active" >&2; exit 1; }}
else
  [ -z "$HADRILL_NEED_SYSTEMD" ] || {{ echo "no systemd on this node: a dead-man timer started from the access pod would die with the pod (use ssh or docker node access)" >&2; exit 3; }}
  setsid -f /bin/sh -c 'sleep {secs}; {action}' {tag} </dev/null >/dev/null 2>&1
  i=0
  until {found}; do
    i=$((i+1)); [ $i -lt 50 ] || {{ echo "the dead-man timer {tag} was not running 5s after it was started" >&2; exit 1; }}
    sleep 0.1
  done
fi
"#,
        found = deadman_found(token)
    ))
}

/// A shell condition: a process whose command line ends in `hadrill-deadman-<token>` runs.
fn deadman_found(token: &str) -> String {
    let tag = net::deadman_tag(token);
    format!(
        r#"(for d in /proc/[0-9]*; do case "$(tr '\000' ' ' < $d/cmdline 2>/dev/null)" in *" {tag} ") exit 0;; esac; done; exit 1)"#
    )
}

/// The shell snippet that stops the dead-man timer of `token` on the node, both kinds.
pub fn deadman_kill(token: &str) -> Result<String, String> {
    let tag = net::deadman_tag(safe(token)?);
    Ok(format!(
        r#"if command -v systemctl >/dev/null 2>&1; then systemctl stop {tag}.timer {tag}.service >/dev/null 2>&1 || true; fi
for d in /proc/[0-9]*; do
  case "$(tr '\000' ' ' < $d/cmdline 2>/dev/null)" in *" {tag} ") p=${{d#/proc/}}; kill -9 -$p 2>/dev/null || kill -9 $p 2>/dev/null || true;; esac
done
"#
    ))
}

// ---------------------------------------------------------------------------------------
// Static pods
// ---------------------------------------------------------------------------------------

/// Where the manifest is parked: `<parking_dir>/<file name>.hadrill-<token>`.
pub fn parked_path(manifest: &Path, parking_dir: &Path, token: &str) -> PathBuf {
    let name = manifest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "manifest".into());
    parking_dir.join(format!("{name}.hadrill-{token}"))
}

fn p(path: &Path) -> Result<String, String> {
    safe(&path.display().to_string()).map(str::to_string)
}

/// Parks the manifest; with `dead_man_secs` > 0 a timer on the node first arranges for it to
/// be moved back after that long (unless something is in its place by then).
pub fn park_script(manifest: &Path, parking_dir: &Path, token: &str, dead_man_secs: u64) -> Result<String, String> {
    let (m, d, k) = (p(manifest)?, p(parking_dir)?, p(&parked_path(manifest, parking_dir, token))?);
    let timer = if dead_man_secs > 0 {
        deadman_start(token, dead_man_secs, &format!("if [ -e {k} ] && [ ! -e {m} ]; then mv {k} {m}; fi"))?
    } else {
        String::new()
    };
    Ok(format!(
        r#"set -e
[ -e {m} ] || {{ echo "the manifest {m} is not there (is the component a static pod of this node?)" >&2; exit 3; }}
[ ! -e {k} ] || {{ echo "{k} exists already" >&2; exit 3; }}
mkdir -p {d}
chmod 700 {d}
{timer}mv {m} {k}
"#
    ))
}

pub fn unpark_script(manifest: &Path, parking_dir: &Path, token: &str) -> Result<String, String> {
    let (m, k) = (p(manifest)?, p(&parked_path(manifest, parking_dir, token))?);
    Ok(format!(
        r#"{kill}if [ -e {k} ]; then
  [ ! -e {m} ] || {{ echo "both {m} and {k} exist: not overwriting the manifest" >&2; exit 3; }}
  mv {k} {m}
fi
[ -e {m} ] || {{ echo "neither {m} nor {k} exists" >&2; exit 3; }}
"#,
        kill = deadman_kill(token)?
    ))
}

/// Prints the ids of the running containers (crictl) or processes (pgrep) of `container`;
/// nothing when it does not run.
pub fn running_script(container: &str) -> Result<String, String> {
    let c = safe(container)?;
    Ok(format!(
        r#"if command -v crictl >/dev/null 2>&1; then crictl ps --name '^{c}$' -q; else pgrep -f '^([^ ]*/)?{c}( |$)' || true; fi
"#
    ))
}

async fn component_running(at: &NodeRef, container: &str) -> Result<bool, String> {
    let out = at.sh("hadrill-running", &running_script(container)?, CMD_TIMEOUT).await?;
    Ok(!out.stdout.trim().is_empty())
}

/// Polls until the component runs (`want`) or is gone, at most `secs`; the last error or state
/// seen is in the message.
async fn wait_component(at: &NodeRef, container: &str, want: bool, secs: u64) -> Result<(), String> {
    let last = std::sync::Mutex::new(String::from("not asked yet"));
    let done = crate::engine::poll(Duration::from_secs(secs), POLL_EVERY, || async {
        match component_running(at, container).await {
            Ok(r) => {
                *last.lock().unwrap() = if r { "running".into() } else { "not running".into() };
                (r == want).then_some(())
            }
            Err(e) => {
                *last.lock().unwrap() = e;
                None
            }
        }
    })
    .await;
    done.ok_or_else(|| {
        format!(
            "{}: {container} {} within {secs}s (last seen: {})",
            at.node,
            if want { "did not run again" } else { "did not stop" },
            last.lock().unwrap()
        )
    })
}

// ---------------------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------------------

pub fn unit_stop_script(unit: &str, token: &str, dead_man_secs: u64) -> Result<String, String> {
    let u = safe(unit)?;
    Ok(format!(
        "set -e\ncommand -v systemctl >/dev/null 2>&1 || {{ echo \"no systemctl on this node: {u} is not a systemd unit here\" >&2; exit 3; }}\n{}systemctl stop {u}\n",
        deadman_start(token, dead_man_secs, &format!("systemctl start {u}"))?
    ))
}

pub fn unit_start_script(unit: &str, token: &str) -> Result<String, String> {
    Ok(format!("{}systemctl start {}\n", deadman_kill(token)?, safe(unit)?))
}

fn unit_state_script(unit: &str) -> Result<String, String> {
    Ok(format!("systemctl is-active {} || true\n", safe(unit)?))
}

async fn wait_unit(at: &NodeRef, unit: &str, want_active: bool, secs: u64) -> Result<(), String> {
    let script = unit_state_script(unit)?;
    let last = std::sync::Mutex::new(String::from("not asked yet"));
    let done = crate::engine::poll(Duration::from_secs(secs), POLL_EVERY, || async {
        match at.sh("hadrill-unit-state", &script, CMD_TIMEOUT).await {
            Ok(o) => {
                let s = o.stdout.trim().to_string();
                let ok = (s == "active") == want_active && (want_active || s != "deactivating");
                *last.lock().unwrap() = s;
                ok.then_some(())
            }
            Err(e) => {
                *last.lock().unwrap() = e;
                None
            }
        }
    })
    .await;
    done.ok_or_else(|| {
        format!(
            "{}: unit {unit} {} within {secs}s (systemctl is-active: {})",
            at.node,
            if want_active { "is not active again" } else { "did not stop" },
            last.lock().unwrap()
        )
    })
}

// ---------------------------------------------------------------------------------------
// Network: the etcd peer partition and peer latency in the node's root namespace
// ---------------------------------------------------------------------------------------

pub fn partition_apply_script(
    others: &[String],
    peer_ports: &[u16],
    token: &str,
    dead_man_secs: u64,
) -> Result<String, String> {
    let rules = net::partition_rules(others, peer_ports, token);
    if rules.is_empty() {
        return Err("no other member to cut the node off from".into());
    }
    let mut action = Vec::new();
    let mut inserts = String::new();
    for (chain, spec) in &rules {
        let mut del = vec!["iptables".to_string(), "-w".into(), "-D".into(), chain.clone()];
        del.extend(spec.iter().cloned());
        action.push(format!("{} 2>/dev/null", line(&del)?));
        let mut ins = vec!["iptables".to_string(), "-w".into(), "-I".into(), chain.clone()];
        ins.extend(spec.iter().cloned());
        inserts.push_str(&line(&ins)?);
        inserts.push('\n');
    }
    Ok(format!(
        "set -e\ncommand -v iptables >/dev/null 2>&1 || {{ echo \"no iptables on this node\" >&2; exit 3; }}\n{}{inserts}",
        deadman_start(token, dead_man_secs, &action.join("; "))?
    ))
}

pub fn partition_revert_script(others: &[String], peer_ports: &[u16], token: &str) -> Result<String, String> {
    // only exit status 1 (no such rule) or 2 (a rule that cannot be written, so is not there)
    // of `iptables -C` means the rule is gone; anything else (the xtables lock) fails the revert, and the dead-man is stopped only once every
    // rule is known gone, so that it can still heal the node
    let mut s = String::from("rc=0\n");
    for (chain, spec) in net::partition_rules(others, peer_ports, token) {
        let mut check = vec!["iptables".to_string(), "-w".into(), "-C".into(), chain.clone()];
        check.extend(spec.iter().cloned());
        let mut del = vec!["iptables".to_string(), "-w".into(), "-D".into(), chain.clone()];
        del.extend(spec.iter().cloned());
        s.push_str(&format!(
            "while :; do {} 2>/dev/null; c=$?; [ $c -eq 1 ] || [ $c -eq 2 ] && break; [ $c -eq 0 ] || {{ echo \"iptables -C exited $c\" >&2; rc=1; break; }}; {} || {{ rc=1; break; }}; done\n",
            line(&check)?,
            line(&del)?
        ));
    }
    s.push_str(&format!("if [ $rc -eq 0 ]; then\n{}fi\nexit $rc\n", deadman_kill(token)?));
    Ok(s)
}

pub fn latency_apply_script(
    dev: &str,
    peer_ports: &[u16],
    delay_ms: u64,
    token: &str,
    dead_man_secs: u64,
) -> Result<String, String> {
    let d = safe(dev)?;
    let mut s = format!(
        "set -e\ncommand -v tc >/dev/null 2>&1 || {{ echo \"no tc on this node\" >&2; exit 3; }}\n{}",
        deadman_start(token, dead_man_secs, &format!("tc qdisc del dev {d} root handle 1: 2>/dev/null"))?
    );
    for c in net::latency_commands(d, peer_ports, delay_ms) {
        s.push_str(&line(&c)?);
        s.push('\n');
    }
    Ok(s)
}

pub fn latency_revert_script(dev: &str, token: &str) -> Result<String, String> {
    let d = safe(dev)?;
    Ok(format!(
        "{}if tc qdisc show dev {d} | grep -q 'qdisc prio 1: root'; then tc qdisc del dev {d} root handle 1:; fi\n",
        deadman_kill(token)?
    ))
}

/// The interface of the node that routes to `ip` (`ip -o route get`).
pub async fn dev_towards(at: &NodeRef, ip: &str) -> Result<String, String> {
    let out = at.sh("hadrill-route", &format!("ip -o route get {}\n", safe(ip)?), CMD_TIMEOUT).await?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "dev")
        .map(|w| w[1].to_string())
        .ok_or_else(|| format!("{}: no route to {ip}: {}", at.node, out.stdout.trim()))
}

// ---------------------------------------------------------------------------------------
// The Fault arms
// ---------------------------------------------------------------------------------------

pub(super) fn describe(f: &Fault) -> String {
    match f {
        Fault::StaticPodStop { at, container, manifest, dead_man_secs, .. } => format!(
            "stop {container} on node {} (static pod: move {} aside, via {}{})",
            at.node,
            manifest.display(),
            at.access.describe(),
            if *dead_man_secs > 0 { format!("; dead-man on the node {dead_man_secs}s") } else { String::new() }
        ),
        Fault::NodeUnitStop { at, unit, dead_man_secs, .. } => format!(
            "stop the {unit} unit on node {} (systemctl stop, via {}; dead-man on the node {dead_man_secs}s)",
            at.node,
            at.access.describe()
        ),
        Fault::NodeEtcdPartition { at, other_names, peer_ports, token, dead_man_secs, .. } => format!(
            "partition the etcd member on node {} from {} (drop peer ports {:?} both ways, iptables rules hadrill:{token} on the node via {}, dead-man {dead_man_secs}s on the node)",
            at.node,
            other_names.join("+"),
            peer_ports,
            at.access.describe()
        ),
        Fault::NodePeerLatency { at, dev, delay_ms, dead_man_secs, .. } => format!(
            "delay the etcd peer traffic of node {} by {delay_ms}ms (tc netem on {dev} via {}, dead-man {dead_man_secs}s on the node)",
            at.node,
            at.access.describe()
        ),
        _ => unreachable!("not a node fault"),
    }
}

pub(super) fn revert_plan(f: &Fault) -> String {
    match f {
        Fault::StaticPodStop { at, manifest, parking_dir, token, container, .. } => format!(
            "stop the dead-man {} on {}, move {} back to {} and wait until {container} runs",
            net::deadman_tag(token),
            at.node,
            parked_path(manifest, parking_dir, token).display(),
            manifest.display()
        ),
        Fault::NodeUnitStop { at, unit, token, .. } => format!(
            "stop the dead-man {} on {}, systemctl start {unit}, wait until it is active",
            net::deadman_tag(token),
            at.node
        ),
        Fault::NodeEtcdPartition { at, token, .. } => format!(
            "stop the dead-man {} on {}, delete every rule tagged hadrill:{token} there",
            net::deadman_tag(token),
            at.node
        ),
        Fault::NodePeerLatency { at, token, dev, .. } => format!(
            "stop the dead-man {} on {}, delete the root qdisc of {dev} there",
            net::deadman_tag(token),
            at.node
        ),
        _ => unreachable!("not a node fault"),
    }
}

/// What a dead-man script needs to know about the backend: through an access pod, only a
/// systemd timer outlives the pod.
fn prelude(at: &NodeRef) -> &'static str {
    match &at.access {
        NodeAccess::Pod { .. } => "HADRILL_NEED_SYSTEMD=1\n",
        // inside a network namespace: a systemd unit would run in the host's root namespace
        // (its iptables and tc act on the wrong stack), so the timer is a process in here
        NodeAccess::Local { netns: Some(_) } => "HADRILL_NO_SYSTEMD=1\n",
        _ => "",
    }
}

pub(super) async fn apply(f: &Fault) -> Result<(), String> {
    match f {
        Fault::StaticPodStop { at, container, manifest, parking_dir, token, wait_secs, dead_man_secs } => {
            let script = format!("{}{}", prelude(at), park_script(manifest, parking_dir, token, *dead_man_secs)?);
            at.sh("hadrill-park", &script, CMD_TIMEOUT).await?;
            wait_component(at, container, false, *wait_secs).await
        }
        Fault::NodeUnitStop { at, unit, token, dead_man_secs, wait_secs } => {
            at.sh(
                "hadrill-unit-stop",
                &format!("{}{}", prelude(at), unit_stop_script(unit, token, *dead_man_secs)?),
                CMD_TIMEOUT,
            )
            .await?;
            wait_unit(at, unit, false, *wait_secs).await
        }
        Fault::NodeEtcdPartition { at, token, others, peer_ports, dead_man_secs, .. } => at
            .sh(
                "hadrill-partition",
                &format!("{}{}", prelude(at), partition_apply_script(others, peer_ports, token, *dead_man_secs)?),
                CMD_TIMEOUT,
            )
            .await
            .map(|_| ()),
        Fault::NodePeerLatency { at, token, dev, peer_ports, delay_ms, dead_man_secs } => {
            let script =
                format!("{}{}", prelude(at), latency_apply_script(dev, peer_ports, *delay_ms, token, *dead_man_secs)?);
            match at.sh("hadrill-latency", &script, CMD_TIMEOUT).await {
                Ok(_) => Ok(()),
                Err(e) if e.contains("qdisc kind is unknown") || e.contains("Specified qdisc not found") => {
                    Err(format!("{}: this kernel has no tc netem/prio support (sch_netem, sch_prio): {e}", at.node))
                }
                Err(e) => Err(e),
            }
        }
        _ => unreachable!("not a node fault"),
    }
}

/// Reverts from the stored form alone; reverting twice succeeds. The access pod, if any, is
/// deleted once the node is healed.
pub(super) async fn revert(f: &Fault) -> Result<(), String> {
    let at = match f {
        Fault::StaticPodStop { at, container, manifest, parking_dir, token, wait_secs, .. } => {
            at.sh("hadrill-unpark", &unpark_script(manifest, parking_dir, token)?, CMD_TIMEOUT).await?;
            wait_component(at, container, true, *wait_secs).await?;
            at
        }
        Fault::NodeUnitStop { at, unit, token, wait_secs, .. } => {
            at.sh("hadrill-unit-start", &unit_start_script(unit, token)?, CMD_TIMEOUT).await?;
            wait_unit(at, unit, true, *wait_secs).await?;
            at
        }
        Fault::NodeEtcdPartition { at, token, others, peer_ports, .. } => {
            at.sh("hadrill-heal", &partition_revert_script(others, peer_ports, token)?, CMD_TIMEOUT).await?;
            at
        }
        Fault::NodePeerLatency { at, token, dev, .. } => {
            at.sh("hadrill-heal", &latency_revert_script(dev, token)?, CMD_TIMEOUT).await?;
            at
        }
        _ => unreachable!("not a node fault"),
    };
    at.release().await
}

#[cfg(test)]
mod tests;
