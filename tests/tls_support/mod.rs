//! Test support: one real `etcd` on 127.0.0.1 with TLS on its client port (mutual TLS when
//! asked), its PKI minted with rcgen in a temporary directory, killed and removed on drop
//! (also when a test panics).

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Duration as D, Utc};
use hadrill::tls::mint::{Ca, LeafSpec, Usage, Window};

pub struct EtcdOpts {
    /// `--client-cert-auth`: etcd refuses clients without a certificate its CA signed.
    pub client_cert_auth: bool,
    /// `--trusted-ca-file`: without `--client-cert-auth`, etcd then verifies a client
    /// certificate when one is given, and lets clients without one in.
    pub trusted_ca: bool,
    /// Lifetime of the serving certificate, from an hour ago.
    pub serving_days: i64,
    /// SANs of the serving certificate.
    pub sans: Vec<String>,
    /// The peer port speaks TLS too (the serving certificate, peer client-cert auth).
    pub peer_tls: bool,
}

impl Default for EtcdOpts {
    fn default() -> Self {
        Self {
            client_cert_auth: true,
            trusted_ca: true,
            serving_days: 365,
            sans: vec!["127.0.0.1".into(), "localhost".into()],
            peer_tls: false,
        }
    }
}

pub struct TestEtcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub ca: Ca,
    /// `ca.crt`, `ca.key` (0600), `client.crt`, `client.key` (0600), like the rig's files.
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
    pub serving_not_after: chrono::DateTime<Utc>,
    pub peer_url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

use std::os::unix::fs::OpenOptionsExt;

impl TestEtcd {
    pub fn start(opts: EtcdOpts) -> TestEtcd {
        // a port can be taken between probing and binding: try again with other ports
        for _ in 0..3 {
            if let Some(e) = Self::try_start(&opts) {
                return e;
            }
        }
        panic!("etcd did not start listening within 15s, three times");
    }

    fn try_start(opts: &EtcdOpts) -> Option<TestEtcd> {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("hadrill-test-etcd-ca").unwrap();
        let now = Utc::now();
        let serving = ca
            .issue(&LeafSpec {
                common_name: "etcd-test".into(),
                sans: opts.sans.clone(),
                usage: Usage::Both,
                not_before: now - D::hours(1),
                not_after: now - D::hours(1) + D::days(opts.serving_days),
            })
            .unwrap();
        let client = ca.issue(&LeafSpec::client("hadrill-test-client", Window::Valid, now)).unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.crt"), ca.cert_pem()).unwrap();
        write_secret(&p("ca.key"), &ca.key_pem());
        std::fs::write(p("server.crt"), &serving.cert_pem).unwrap();
        write_secret(&p("server.key"), &serving.key_pem);
        std::fs::write(p("client.crt"), &client.cert_pem).unwrap();
        write_secret(&p("client.key"), &client.key_pem);
        assert_eq!(std::fs::metadata(p("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);

        {
            let (cport, pport) = (free_port(), free_port());
            let endpoint = format!("https://127.0.0.1:{cport}");
            let peer = format!("{}://127.0.0.1:{pport}", if opts.peer_tls { "https" } else { "http" });
            let mut cmd = Command::new("etcd");
            cmd.args(["--name", "t", "--data-dir"])
                .arg(p("data"))
                .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("t={peer}"), "--initial-cluster-state", "new"])
                .arg("--cert-file")
                .arg(p("server.crt"))
                .arg("--key-file")
                .arg(p("server.key"))
                .args(["--logger", "zap", "--log-level", "error", "--log-outputs"])
                .arg(p("etcd.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if opts.trusted_ca {
                cmd.arg("--trusted-ca-file").arg(p("ca.crt"));
            }
            if opts.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
            if opts.peer_tls {
                cmd.arg("--peer-cert-file").arg(p("server.crt")).arg("--peer-key-file").arg(p("server.key"));
                cmd.arg("--peer-trusted-ca-file").arg(p("ca.crt")).arg("--peer-client-cert-auth");
            }
            let child = cmd.spawn().expect("etcd must be installed (ci/install-deps.sh)");
            let mut e = TestEtcd {
                child: Some(child),
                endpoint: endpoint.clone(),
                ca_crt: p("ca.crt"),
                ca_key: p("ca.key"),
                client_crt: p("client.crt"),
                client_key: p("client.key"),
                serving_not_after: serving.not_after,
                peer_url: peer.clone(),
                ca,
                dir,
            };
            if e.wait_listening(Duration::from_secs(15)) {
                return Some(e);
            }
            eprintln!("etcd did not listen on {}: {}", e.endpoint, e.log());
            None
        }
    }

    fn wait_listening(&mut self, within: Duration) -> bool {
        let addr = self.endpoint.trim_start_matches("https://").to_string();
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50)); // poll interval of a bounded wait
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
