//! The load balancer of kube mode: HAProxy's configuration (TCP mode in front of the
//! apiservers, each checked with `GET /readyz` over TLS), and reading the backends' states
//! from its admin socket.
//!
//! The settings are those of kubeadm's HA guide, and `option redispatch`: without it, about
//! one write in 240 failed while an apiserver was killed behind HAProxy (1.26); with it,
//! none. `on-marked-down shutdown-sessions` closes the connections (watches) to an apiserver
//! that is marked down, so that clients reconnect through a live one.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// The backend's name in the configuration and in `show stat`.
pub const BACKEND: &str = "kube-apiservers";

/// The configuration: frontend on `lb:port`, one server per `(hostname, address)` apiserver.
pub fn config(lb: Ipv4Addr, port: u16, apiservers: &[(String, Ipv4Addr)], socket: &Path) -> String {
    let mut s = format!(
        "# written by hadrill (rig kube mode)\n\
         global\n\
         \x20   log stderr format raw local0 info\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   stats timeout 30s\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   option tcplog\n\
         \x20   retries 3\n\
         \x20   option redispatch 1\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 2s\n\
         \n\
         frontend kube-apiserver\n\
         \x20   bind {lb}:{port}\n\
         \x20   default_backend {BACKEND}\n\
         \n\
         backend {BACKEND}\n\
         \x20   option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n\
         \x20   balance roundrobin\n",
        socket = socket.display(),
    );
    for (name, addr) in apiservers {
        s.push_str(&format!(
            "    server {name} {addr}:{} check check-ssl verify none inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n",
            super::APISERVER_PORT
        ));
    }
    s
}

/// Per server of the backend: (name, status as HAProxy says it: `UP`, `DOWN`, `MAINT`, …),
/// from the CSV of `show stat`.
pub fn parse_show_stat(csv: &str) -> Vec<(String, String)> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let idx = |n: &str| cols.iter().position(|c| *c == n);
    let (Some(px), Some(sv), Some(st)) = (idx("pxname"), idx("svname"), idx("status")) else { return Vec::new() };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(px) == Some(&BACKEND) && !matches!(f.get(sv), Some(&"BACKEND") | Some(&"FRONTEND") | None))
                .then(|| (f[sv].to_string(), f.get(st).unwrap_or(&"").to_string()))
        })
        .collect()
}

/// Asks HAProxy's admin socket for the backend's servers and their states.
pub async fn backend_states(socket: &Path, timeout: Duration) -> Result<Vec<(String, String)>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(b"show stat\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(format!("HAProxy socket {}: no answer within {timeout:?}", socket.display())),
        Ok(Err(e)) => Err(format!("HAProxy socket {}: {e}", socket.display())),
        Ok(Ok(csv)) => Ok(parse_show_stat(&csv)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let aps: Vec<(String, Ipv4Addr)> =
            (1..=3).map(|i| (format!("apiserver-{i}"), Ipv4Addr::new(10, 213, 7, 100 + i))).collect();
        config(Ipv4Addr::new(10, 213, 7, 100), 6443, &aps, Path::new("/r/kube/lb/haproxy.sock"))
    }

    #[test]
    fn config_has_the_settings_that_keep_writes_alive() {
        let c = sample();
        let lines: Vec<&str> = c.lines().map(str::trim).collect();
        for want in [
            "mode tcp",
            "option httpchk GET /readyz",
            "http-check expect status 200",
            "retries 3",
            "option redispatch 1",
            "bind 10.213.7.100:6443",
            "default_backend kube-apiservers",
            "stats socket /r/kube/lb/haproxy.sock mode 600 level admin",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in\n{c}");
        }
        for i in 1..=3 {
            let want = format!(
                "server apiserver-{i} 10.213.7.{}:6443 check check-ssl verify none inter 1s fall 2 rise 2 on-marked-down shutdown-sessions",
                100 + i
            );
            assert!(lines.contains(&want.as_str()), "missing `{want}` in\n{c}");
        }
    }

    #[test]
    fn haproxy_accepts_the_config() {
        let Some(haproxy) = crate::rig::net::which("haproxy") else {
            eprintln!("skipped: haproxy is not on PATH (bash ci/install-deps.sh installs it)");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("haproxy.cfg");
        std::fs::write(&f, sample()).unwrap();
        let out = std::process::Command::new(&haproxy).arg("-c").arg("-f").arg(&f).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "haproxy -c refused the config:\n{text}");
        assert!(!text.contains("[WARNING]"), "haproxy -c warns:\n{text}");
        // and the check does fail on a broken one (the test can fail)
        std::fs::write(&f, sample().replace("option redispatch 1", "option redispatch-please 1")).unwrap();
        let out = std::process::Command::new(&haproxy).arg("-c").arg("-f").arg(&f).output().unwrap();
        assert!(!out.status.success(), "haproxy -c accepted a broken config");
    }

    #[test]
    fn show_stat_gives_each_servers_state() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
            kube-apiserver,FRONTEND,,,0,0,4096,0,0,0,0,0,0,,,,,OPEN,\n\
            kube-apiservers,apiserver-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1\n\
            kube-apiservers,apiserver-2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\
            kube-apiservers,BACKEND,0,0,0,0,410,0,0,0,0,0,,0,0,0,0,DOWN,0\n";
        assert_eq!(
            parse_show_stat(csv),
            [("apiserver-1".to_string(), "DOWN".to_string()), ("apiserver-2".to_string(), "UP".to_string())]
        );
        assert!(parse_show_stat("").is_empty());
    }
}
