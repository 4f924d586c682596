//! Node access: how a command or a fault reaches a node.
//!
//! `local` runs on this machine, optionally inside a network namespace (the rig's hosts);
//! `docker` runs in a kind node container (`docker exec`); `ssh` runs over OpenSSH in batch
//! mode; `pod` runs through the API's exec in a short-lived privileged pod pinned to the node
//! that enters the host's namespaces with `nsenter`.
//! A node access is plain data so that the ledger can store it and `hadrill recover` can
//! reach the same node after the run that injected a fault was killed.

pub mod pod;
pub mod select;
pub mod ssh;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{node}: cannot run `{command}`: {source}")]
    Spawn {
        node: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{node}: `{command}` did not finish within {timeout:?}")]
    Timeout { node: String, command: String, timeout: Duration },
    #[error("{node}: `{command}` exited with {status}: {stderr}")]
    Failed { node: String, command: String, status: String, stderr: String },
    #[error("{node}: pod node access needs a Kubernetes client (give --kubeconfig)")]
    NeedsKube { node: String },
    #[error("{node}: {message}")]
    Pod { node: String, message: String },
}

/// How to reach a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeAccess {
    /// This machine; inside `netns` when given (`ip netns exec NAME …`).
    Local { netns: Option<String> },
    /// A kind node: `docker exec CONTAINER …` on this machine.
    Docker { container: String },
    /// OpenSSH in batch mode: `ssh -o BatchMode=yes … [-J jump] [user@]host -- …`.
    Ssh {
        host: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        /// Private key file (`-i`); the key itself is never read or logged by hadrill.
        #[serde(default)]
        key: Option<PathBuf>,
        /// Jump host, `[user@]host[:port]` (`-J`).
        #[serde(default)]
        jump: Option<String>,
        #[serde(default)]
        strict_host_key_checking: ssh::StrictHostKeyChecking,
    },
    /// A privileged pod with hostPID and hostNetwork pinned to `node`, running
    /// `nsenter -t 1 -m -u -i -n -p -- …` through the API's exec.
    Pod { node: String, namespace: String, image: String },
}

/// What a command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl NodeAccess {
    pub fn describe(&self) -> String {
        match self {
            NodeAccess::Local { netns: None } => "local".into(),
            NodeAccess::Local { netns: Some(ns) } => format!("local netns {ns}"),
            NodeAccess::Docker { container } => format!("docker container {container}"),
            NodeAccess::Ssh { host, user, port, jump, .. } => format!(
                "ssh {}{host}{}{}",
                user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                jump.as_deref().map(|j| format!(" via {j}")).unwrap_or_default()
            ),
            NodeAccess::Pod { node, namespace, image } => {
                format!("privileged pod on node {node} (namespace {namespace}, image {image})")
            }
        }
    }

    /// The argv that runs `argv` on the node: on this machine for `local`, `docker` and
    /// `ssh`; inside the access pod (sent through the API's exec) for `pod`.
    pub fn wrap(&self, argv: &[&str]) -> Vec<String> {
        match self {
            NodeAccess::Docker { container } => {
                ["docker", "exec", container.as_str()].iter().chain(argv.iter()).map(|s| s.to_string()).collect()
            }
            NodeAccess::Ssh { host, user, port, key, jump, strict_host_key_checking } => ssh::argv(
                &ssh::SshTarget {
                    host,
                    user: user.as_deref(),
                    port: *port,
                    key: key.as_deref(),
                    jump: jump.as_deref(),
                    strict: *strict_host_key_checking,
                },
                argv,
            ),
            NodeAccess::Pod { .. } => pod::nsenter_argv(argv),
            NodeAccess::Local { netns: None } => argv.iter().map(|s| s.to_string()).collect(),
            NodeAccess::Local { netns: Some(ns) } => {
                ["ip", "netns", "exec", ns.as_str()].iter().chain(argv.iter()).map(|s| s.to_string()).collect()
            }
        }
    }

    /// Runs a command on the node and waits for it, at most `timeout`. A non-zero exit is an
    /// error carrying stderr.
    pub async fn exec(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError> {
        self.exec_with(None, argv, timeout).await
    }

    /// Like [`exec`](Self::exec); `kube` is the client the `pod` backend goes through.
    pub async fn exec_with(
        &self,
        kube: Option<&kube::Client>,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<Output, NodeError> {
        if let NodeAccess::Pod { node, namespace, image } = self {
            let Some(client) = kube else {
                return Err(NodeError::NeedsKube { node: self.describe() });
            };
            return pod::exec(client, node, namespace, image, argv, timeout).await;
        }
        let full = self.wrap(argv);
        let command = full.join(" ");
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..]).kill_on_drop(true).stdin(std::process::Stdio::null());
        let node = self.describe();
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => return Err(NodeError::Timeout { node, command, timeout }),
            Ok(Err(source)) => return Err(NodeError::Spawn { node, command, source }),
            Ok(Ok(o)) => o,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            return Err(NodeError::Failed { node, command, status: out.status.to_string(), stderr });
        }
        Ok(Output { stdout, stderr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_wraps_with_ip_netns_exec() {
        let n = NodeAccess::Local { netns: Some("hd-m1".into()) };
        assert_eq!(n.wrap(&["iptables", "-S"]), ["ip", "netns", "exec", "hd-m1", "iptables", "-S"]);
        assert_eq!(NodeAccess::Local { netns: None }.wrap(&["true"]), ["true"]);
    }

    #[tokio::test]
    async fn failing_command_reports_stderr() {
        let n = NodeAccess::Local { netns: None };
        let e = n.exec(&["sh", "-c", "echo nope >&2; exit 3"], Duration::from_secs(5)).await.unwrap_err();
        let s = e.to_string();
        assert!(s.contains("nope") && s.contains("exit status: 3"), "{s}");
    }

    #[tokio::test]
    async fn slow_command_hits_its_deadline() {
        let n = NodeAccess::Local { netns: None };
        let e = n.exec(&["sleep", "5"], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, NodeError::Timeout { .. }), "{e}");
    }
}
