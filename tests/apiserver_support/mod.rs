//! A TEST DOUBLE of kube-apiserver's front door over real TLS (no apiserver can run here):
//! like kube-apiserver (Go `tls.RequestClientCert`) it asks for a client certificate without
//! verifying it in the handshake, then plays the x509 authenticator per request — a
//! certificate that does not verify against the cluster CA gets `401 Unauthorized` with the
//! real Status body; a valid one is the user named by its CN; no certificate is
//! `system:anonymous`. `/version` answers anyone (`system:public-info-viewer`); other paths
//! answer from `routes` for authenticated users, else the RBAC 403 naming the user. With
//! `careless`, any certificate's CN is taken without verification (a broken front door that
//! the checks must catch). Payloads are shaped like the real API's.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use hadrill::tls::mint::{Ca, LeafSpec, Usage};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

pub fn forbidden(user: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"namespaces \"kube-system\" is forbidden: User \"{user}\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"kube-system\"","reason":"Forbidden","details":{{"name":"kube-system","kind":"namespaces"}},"code":403}}"#
    )
}

pub fn not_found(what: &str) -> String {
    serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message": format!("{what} not found"),"reason":"NotFound","code":404})
    .to_string()
}

pub fn version_json(git: &str) -> String {
    let minor = hadrill::check::skew::parse_minor(git).map(|m| m.1).unwrap_or(0);
    format!(
        r#"{{"major":"1","minor":"{minor}","gitVersion":"{git}","gitCommit":"4b8e819355d791d96b7e9d9efe4cbafae2311c88","gitTreeState":"clean","buildDate":"2024-02-14T10:32:40Z","goVersion":"go1.21.7","compiler":"gc","platform":"linux/amd64"}}"#
    )
}

/// `(path?query, user) → (status, body)` for authenticated users; None → RBAC 403.
pub type Routes = Arc<dyn Fn(&str, &str) -> Option<(u16, String)> + Send + Sync>;

pub fn no_routes() -> Routes {
    Arc::new(|_, _| None)
}

/// Asks for a client certificate and accepts whatever comes (Go's RequestClientCert); checks
/// only the proof of possession (the handshake signature), as Go does.
#[derive(Debug)]
struct RequestClientCert(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn cn(der: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let name = c.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    name
}

/// A serving certificate for the doubles, valid for `window`, with the loopback SANs.
pub fn serving(ca: &Ca, window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)) -> (String, String) {
    let m = ca
        .issue(&LeafSpec {
            common_name: "kube-apiserver".into(),
            sans: vec!["127.0.0.1".into(), "127.0.0.2".into(), "127.0.0.3".into(), "localhost".into()],
            usage: Usage::Server,
            not_before: window.0,
            not_after: window.1,
        })
        .unwrap();
    (m.cert_pem, m.key_pem)
}

/// Serves the certificate and key in two files, read again for every handshake: like
/// kube-apiserver's dynamic serving-certificate controller, a replaced file takes effect.
#[derive(Debug)]
struct FromFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::ResolvesServerCert for FromFiles {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let cert = std::fs::read_to_string(&self.cert).ok()?;
        let key = std::fs::read_to_string(&self.key).ok()?;
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>().ok()?;
        let key = rustls_pemfile::private_key(&mut key.as_bytes()).ok()??;
        let signer = self.provider.key_provider.load_private_key(key).ok()?;
        Some(Arc::new(rustls::sign::CertifiedKey::new(certs, signer)))
    }
}

/// Starts a double on `listener`; returns its https URL. The task lives as long as the test.
pub fn start(
    ca: &Ca,
    serving: (String, String),
    listener: std::net::TcpListener,
    careless: bool,
    git_version: &str,
    routes: Routes,
) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut serving.0.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut serving.1.as_bytes()).unwrap().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(RequestClientCert(provider.clone())))
        .with_single_cert(certs, key)
        .unwrap();
    serve(ca, config, listener, careless, git_version, routes)
}

/// Like [`start`], serving `cert` and `key` from files re-read at every handshake.
pub fn start_from_files(
    ca: &Ca,
    cert: &std::path::Path,
    key: &std::path::Path,
    listener: std::net::TcpListener,
    git_version: &str,
    routes: Routes,
) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = FromFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), provider: provider.clone() };
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(RequestClientCert(provider.clone())))
        .with_cert_resolver(Arc::new(resolver));
    serve(ca, config, listener, false, git_version, routes)
}

fn serve(
    ca: &Ca,
    config: rustls::ServerConfig,
    listener: std::net::TcpListener,
    careless: bool,
    git_version: &str,
    routes: Routes,
) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut roots = RootCertStore::empty();
    roots.add(rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().unwrap().unwrap()).unwrap();
    let authenticator = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let url = format!("https://{}:{}", addr.ip(), addr.port());
    let version = version_json(git_version);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, authenticator, routes, version) =
                (acceptor.clone(), authenticator.clone(), routes.clone(), version.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let chain: Vec<CertificateDer<'static>> =
                    s.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
                let user = match chain.split_first() {
                    None => Ok("system:anonymous".to_string()),
                    Some((leaf, rest)) => {
                        if careless || authenticator.verify_client_cert(leaf, rest, UnixTime::now()).is_ok() {
                            Ok(cn(leaf))
                        } else {
                            Err(())
                        }
                    }
                };
                let (code, body) = match user {
                    Err(()) => (401, UNAUTHORIZED.to_string()),
                    Ok(_) if target == "/version" || target.starts_with("/version?") => (200, version),
                    Ok(u) if u == "system:anonymous" => (403, forbidden(&u)),
                    Ok(u) => routes(&target, &u).unwrap_or_else(|| (403, forbidden(&u))),
                };
                let reason = match code {
                    200 => "OK",
                    401 => "Unauthorized",
                    404 => "Not Found",
                    _ => "Forbidden",
                };
                let answer = format!(
                    "HTTP/1.1 {code} {reason}\r\nAudit-Id: 4a1c\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    url
}

/// A real HAProxy in TCP mode (TLS passed through) in front of the doubles, with a TLS health
/// check (`check-ssl` + `server_check`, e.g. `verify none`); killed on drop (also when the
/// test panics). None when haproxy is not installed.
pub struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn haproxy(backends: &[&str], server_check: &str) -> Option<Haproxy> {
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("haproxy not installed (ci/install-deps.sh): skipping");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server api{i} {}\n", b.trim_start_matches("https://")))
        .collect();
    let cfg = format!(
        "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  default-server inter 300ms fall 2 rise 2 check check-ssl {server_check}\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let check = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap();
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let h = Haproxy { child, _dir: dir, url: format!("https://127.0.0.1:{port}") };
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "haproxy did not listen within 10s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(h)
}
