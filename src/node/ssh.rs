//! The `ssh` node access backend: the OpenSSH command line that runs a command on a node,
//! in batch mode (never a password prompt), host keys checked as configured, through a
//! jump host when one is given. Pure: builds argv, runs nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// `StrictHostKeyChecking`: `strict` (ssh's `yes`, the default: the host key must already be
/// in known_hosts), `accept_new` (`accept-new`: trust on first use), `off` (`no`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrictHostKeyChecking {
    #[default]
    Strict,
    AcceptNew,
    Off,
}

impl StrictHostKeyChecking {
    pub fn ssh_value(self) -> &'static str {
        match self {
            StrictHostKeyChecking::Strict => "yes",
            StrictHostKeyChecking::AcceptNew => "accept-new",
            StrictHostKeyChecking::Off => "no",
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, Copy)]
pub struct SshTarget<'a> {
    pub host: &'a str,
    pub user: Option<&'a str>,
    pub port: Option<u16>,
    pub key: Option<&'a Path>,
    pub jump: Option<&'a str>,
    pub strict: StrictHostKeyChecking,
}

/// Seconds ssh waits for the TCP connection (the caller bounds the whole command too).
pub const CONNECT_TIMEOUT_SECS: u32 = 10;

/// The ssh argv that runs `remote` on the node. The remote side's shell sees each word
/// quoted, so arguments with spaces or shell characters arrive as they were given.
pub fn argv(t: &SshTarget<'_>, remote: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "ssh".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("StrictHostKeyChecking={}", t.strict.ssh_value()),
        "-o".into(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
        "-o".into(),
        "ServerAliveInterval=5".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
    ];
    if let Some(p) = t.port {
        a.extend(["-p".into(), p.to_string()]);
    }
    if let Some(k) = t.key {
        a.extend(["-i".into(), k.display().to_string(), "-o".into(), "IdentitiesOnly=yes".into()]);
    }
    if let Some(j) = t.jump {
        a.extend(["-J".into(), j.to_string()]);
    }
    a.push(match t.user {
        Some(u) => format!("{u}@{}", t.host),
        None => t.host.to_string(),
    });
    a.push("--".into());
    a.push(remote.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "));
    a
}

/// POSIX shell quoting: words of safe characters stay as they are, others are single-quoted.
pub fn quote(w: &str) -> String {
    let safe = !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if safe {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_command_line() {
        let key = Path::new("/home/ci/.ssh/id_ed25519");
        let t = SshTarget {
            host: "10.0.0.11",
            user: Some("root"),
            port: Some(2222),
            key: Some(key),
            jump: Some("ops@bastion.example.com:22"),
            strict: StrictHostKeyChecking::AcceptNew,
        };
        assert_eq!(
            argv(&t, &["systemctl", "stop", "kubelet"]),
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-p",
                "2222",
                "-i",
                "/home/ci/.ssh/id_ed25519",
                "-o",
                "IdentitiesOnly=yes",
                "-J",
                "ops@bastion.example.com:22",
                "root@10.0.0.11",
                "--",
                "systemctl stop kubelet",
            ]
        );
    }

    #[test]
    fn minimal_command_line_checks_host_keys_strictly() {
        let t = SshTarget { host: "cp-1", user: None, port: None, key: None, jump: None, strict: Default::default() };
        assert_eq!(
            argv(&t, &["true"]),
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "cp-1",
                "--",
                "true",
            ]
        );
    }

    #[test]
    fn remote_words_survive_the_remote_shell() {
        let t = SshTarget { host: "h", user: None, port: None, key: None, jump: None, strict: Default::default() };
        let a = argv(&t, &["sh", "-c", "echo it's $HOME; rm -rf x", ""]);
        assert_eq!(a.last().unwrap(), r"sh -c 'echo it'\''s $HOME; rm -rf x' ''");
        // the quoted string, run by a real shell, gives back the original words
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {}", a.last().unwrap())])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "sh\n-c\necho it's $HOME; rm -rf x\n\n");
    }
}
