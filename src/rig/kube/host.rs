//! One host of kube mode: a program that runs in a network namespace of its own (its own
//! address on the rig's bridge) and a UTS namespace of its own (its own hostname), with the
//! recorded pid being the program's own.
//!
//! The command is `ip netns exec NS unshare --uts -- sh -c 'hostname "$0" && exec "$@"' NAME
//! PROGRAM ARGS…`: `ip netns exec` and `unshare` (without `--fork`) exec their command, and
//! the shell sets the hostname in the new UTS namespace and execs the program, so the pid
//! that starts the chain is the program's pid. The hostname and arguments are passed as
//! arguments, never spliced into the shell text.

use std::path::Path;

/// The shell text that names the host and becomes the program.
pub const SET_HOSTNAME_AND_EXEC: &str = "hostname \"$0\" && exec \"$@\"";

/// The full command that runs `program args…` as host `hostname` in namespace `netns`.
pub fn argv(ip: &Path, unshare: &Path, netns: &str, hostname: &str, program: &Path, args: &[String]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        ip.display().to_string(),
        "netns".into(),
        "exec".into(),
        netns.into(),
        unshare.display().to_string(),
        "--uts".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        SET_HOSTNAME_AND_EXEC.into(),
        hostname.into(),
        program.display().to_string(),
    ];
    v.extend(args.iter().cloned());
    v
}

/// The hostname a process sees (its UTS namespace's), read by entering that namespace with
/// `nsenter --uts` (needs root).
pub async fn hostname_of(pid: i32) -> Option<String> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::process::Command::new("nsenter").arg("-t").arg(pid.to_string()).args(["--uts", "hostname"]).output(),
    )
    .await
    .ok()?
    .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The UTS namespace of a process (`uts:[4026531838]`).
pub fn uts_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/uts")).ok().map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_and_hostname_are_arguments_not_shell_text() {
        let a = argv(
            Path::new("/sbin/ip"),
            Path::new("/usr/bin/unshare"),
            "hd123456-as1",
            "apiserver-1",
            Path::new("/k/kube-apiserver"),
            &["--a=$(reboot)".into()],
        );
        assert_eq!(&a[..4], ["/sbin/ip", "netns", "exec", "hd123456-as1"]);
        assert_eq!(&a[4..7], ["/usr/bin/unshare", "--uts", "--"]);
        assert_eq!(a[9], SET_HOSTNAME_AND_EXEC);
        assert_eq!(&a[10..], ["apiserver-1", "/k/kube-apiserver", "--a=$(reboot)"]);
    }

    #[test]
    fn the_shell_names_the_host_and_becomes_the_program() {
        // without the namespaces (tests/rig_kube.rs runs the real thing as root): the shell
        // text passes $0 to hostname and execs "$@" unchanged
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &SET_HOSTNAME_AND_EXEC.replace("hostname", "echo"),
                "apiserver-7",
                "printf",
                "%s|",
                "a b",
                "$x",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "apiserver-7\na b|$x|");
    }
}
