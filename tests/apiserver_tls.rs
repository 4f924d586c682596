//! The apiserver side of the `certs` suite over real TLS, against a TEST DOUBLE of the
//! kube-apiserver's front door (no apiserver can run here): a rustls server that, like
//! kube-apiserver (Go `tls.RequestClientCert`), asks for a client certificate without
//! verifying it in the handshake, and then plays the x509 authenticator per request: a
//! certificate that does not verify against the cluster CA gets `401 Unauthorized` with the
//! real Status body; a valid one is authenticated as its CN and gets the RBAC 403 naming that
//! user; no certificate is `system:anonymous` (403). A second double, "careless", takes the
//! CN of any certificate without verifying it: the checks must fail against it.
//!
//! The same double serving an expired certificate drives the lab's detection path: a direct
//! handshake reports `CertificateError::Expired`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as D, Utc};
use hadrill::check::certs::window_pem;
use hadrill::check::kube_certs::{self, PROBE_PATH};
use hadrill::suite::ClientCertKind;
use hadrill::tls::mint::{Ca, LeafSpec, Usage, Window};
use hadrill::tls::{self, HandshakeOutcome, Identity, ServerCertProblem};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

fn forbidden(user: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"namespaces \"kube-system\" is forbidden: User \"{user}\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"kube-system\"","reason":"Forbidden","details":{{"name":"kube-system","kind":"namespaces"}},"code":403}}"#
    )
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
    let name = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    name
}

/// The double: listens on 127.0.0.1, serves `serving` (PEM cert, key); `careless` skips the
/// authenticator's verification. Returns its https URL; the task ends with the test.
async fn apiserver_double(ca: &Ca, serving: (String, String), careless: bool) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut serving.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut serving.1.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(RequestClientCert(provider.clone())))
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut roots = RootCertStore::empty();
    roots
        .add(
            rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
                .next()
                .unwrap()
                .unwrap(),
        )
        .unwrap();
    let authenticator = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, authenticator) = (acceptor.clone(), authenticator.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let version = String::from_utf8_lossy(&buf[..n]).starts_with("GET /version ");
                let chain: Vec<CertificateDer<'static>> = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                let (code, body) = match chain.split_first() {
                    // system:public-info-viewer lets anyone read /version
                    None if version => (
                        200,
                        r#"{"major":"1","minor":"29","gitVersion":"v1.29.2"}"#.to_string(),
                    ),
                    None => (403, forbidden("system:anonymous")),
                    Some((leaf, rest)) => {
                        let ok = careless
                            || authenticator
                                .verify_client_cert(leaf, rest, UnixTime::now())
                                .is_ok();
                        if ok {
                            (403, forbidden(&cn(leaf)))
                        } else {
                            (401, UNAUTHORIZED.to_string())
                        }
                    }
                };
                let reason = match code {
                    200 => "OK",
                    401 => "Unauthorized",
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

fn serving(ca: &Ca, window: (chrono::DateTime<Utc>, chrono::DateTime<Utc>)) -> (String, String) {
    let m = ca
        .issue(&LeafSpec {
            common_name: "kube-apiserver".into(),
            sans: vec!["127.0.0.1".into()],
            usage: Usage::Server,
            not_before: window.0,
            not_after: window.1,
        })
        .unwrap();
    (m.cert_pem, m.key_pem)
}

async fn present(url: &str, ca: &Ca, id: Option<&hadrill::tls::mint::Minted>) -> tls::HttpAnswer {
    let identity = id.map(|m| Identity {
        cert_pem: m.cert_pem.as_bytes(),
        key_pem: m.key_pem.as_bytes(),
    });
    tls::https_get(
        url,
        ca.cert_pem().as_bytes(),
        identity,
        Duration::from_secs(5),
        PROBE_PATH,
    )
    .await
    .unwrap()
}

fn bad_cert(ca: &Ca, kind: ClientCertKind) -> hadrill::tls::mint::Minted {
    let now = Utc::now();
    match kind {
        ClientCertKind::Expired => ca
            .issue(&LeafSpec::client(
                "hadrill-certs-probe",
                Window::Expired,
                now,
            ))
            .unwrap(),
        ClientCertKind::NotYetValid => ca
            .issue(&LeafSpec::client(
                "hadrill-certs-probe",
                Window::NotYetValid,
                now,
            ))
            .unwrap(),
        _ => ca
            .impostor()
            .unwrap()
            .issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now))
            .unwrap(),
    }
}

#[tokio::test]
async fn bad_certificates_get_401_and_the_control_is_authenticated() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(
        &ca,
        serving(&ca, (now - D::hours(1), now + D::days(365))),
        false,
    )
    .await;
    for kind in [
        ClientCertKind::Expired,
        ClientCertKind::NotYetValid,
        ClientCertKind::UnknownCa,
    ] {
        let m = bad_cert(&ca, kind);
        let a = present(&url, &ca, Some(&m)).await;
        assert_eq!(a.status, Some(401), "{kind:?}: {a:?}");
        let w = window_pem(&m.cert_pem).unwrap();
        let (o, untested) =
            kube_certs::refuses_client_cert(kind, Some(&w), &[(format!("apiserver {url}"), a)]);
        assert!(o.passed && untested.is_empty(), "{kind:?}: {}", o.message);
        assert!(
            o.message
                .contains("HTTP 401 Unauthorized (Status reason `Unauthorized`)"),
            "{}",
            o.message
        );
    }
    let none = present(&url, &ca, None).await;
    let (o, _) = kube_certs::refuses_client_cert(
        ClientCertKind::Missing,
        None,
        &[(format!("apiserver {url}"), none)],
    );
    assert!(
        o.passed && o.message.contains("403 Forbidden as system:anonymous"),
        "{}",
        o.message
    );
    let control = ca
        .issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now))
        .unwrap();
    let a = present(&url, &ca, Some(&control)).await;
    let (o, _) = kube_certs::accepts_control_cert(
        "hadrill-certs-probe",
        &window_pem(&control.cert_pem).unwrap(),
        &[(url.clone(), a)],
    );
    assert!(o.passed, "{}", o.message);
    // the control signed by another CA (the key at hand is not the cluster's) is refused: the case fails
    let other = Ca::generate("kubernetes")
        .unwrap()
        .issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now))
        .unwrap();
    let a = present(&url, &ca, Some(&other)).await;
    let (o, _) = kube_certs::accepts_control_cert(
        "hadrill-certs-probe",
        &window_pem(&other.cert_pem).unwrap(),
        &[(url, a)],
    );
    assert!(
        !o.passed && o.message.contains("REFUSED a valid client certificate"),
        "{}",
        o.message
    );
}

#[tokio::test]
async fn a_careless_authenticator_fails_the_refusal_cases() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(
        &ca,
        serving(&ca, (now - D::hours(1), now + D::days(365))),
        true,
    )
    .await;
    let m = bad_cert(&ca, ClientCertKind::Expired);
    let a = present(&url, &ca, Some(&m)).await;
    let (o, _) = kube_certs::refuses_client_cert(
        ClientCertKind::Expired,
        Some(&window_pem(&m.cert_pem).unwrap()),
        &[(format!("apiserver {url}"), a)],
    );
    assert!(!o.passed);
    assert!(
        o.message.contains("ACCEPTED an expired client certificate")
            && o.message.contains("as user `hadrill-certs-probe`"),
        "{}",
        o.message
    );
}

/// The lab's detection path: an apiserver serving an expired certificate is reported as such
/// by a direct handshake, and its window is still readable.
#[tokio::test]
async fn an_expired_serving_certificate_is_named() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(&ca, serving(&ca, Window::Expired.bounds(now)), false).await;
    let o = tls::handshake(&url, ca.cert_pem().as_bytes(), None, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(
            o,
            HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { .. })
        ),
        "{o:?}"
    );
    assert!(o.to_string().contains("it has expired"), "{o}");
    let chain = tls::peer_chain(&url, Some(ca.cert_pem().as_bytes()), Duration::from_secs(5))
        .await
        .unwrap();
    let w = hadrill::check::certs::window(&chain.certs[0]).unwrap();
    let (v, _) = hadrill::check::certs::serving_windows(
        "x",
        "y",
        &[(format!("apiserver {url}"), Ok(w))],
        now,
        30,
    );
    assert!(
        !v.passed && v.message.contains("serving certificate EXPIRED"),
        "{}",
        v.message
    );
}

/// A real HAProxy in TCP mode in front of two apiserver doubles, one of which serves an
/// expired certificate; killed on drop (also when the test panics).
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(backends: &[&str], server_check: &str) -> Option<Haproxy> {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("haproxy not installed (ci/install-deps.sh): skipping");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let h = Haproxy {
        child,
        _dir: dir,
        url: format!("https://127.0.0.1:{port}"),
    };
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "haproxy did not listen within 10s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(h)
}

async fn through_haproxy(server_check: &str) -> Option<hadrill::check::CheckOutcome> {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let good = apiserver_double(
        &ca,
        serving(&ca, (now - D::hours(1), now + D::days(365))),
        false,
    )
    .await;
    let expired = apiserver_double(&ca, serving(&ca, Window::Expired.bounds(now)), false).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.cert_pem()).unwrap();
    let h = haproxy(
        &[&good, &expired],
        &server_check.replace("CA_FILE", &ca_file.path().display().to_string()),
    )?;
    let samples = hadrill::probe::lb::sample(
        &h.url,
        ca.cert_pem().as_bytes(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    Some(kube_certs::lb_verdict(&h.url, &expired, &samples, 2.0, 3.0))
}

/// `check-ssl verify none` completes a handshake with the expired backend and keeps it:
/// requests keep failing, and the case says so.
#[tokio::test]
async fn haproxy_with_an_unverified_tls_check_keeps_the_expired_backend_and_fails() {
    let Some(o) = through_haproxy("verify none").await else {
        return;
    };
    assert!(!o.passed, "{}\n{}", o.message, o.evidence);
    assert!(o.message.contains("check-ssl verify none"), "{}", o.message);
    assert!(o.evidence.contains("it has expired"), "{}", o.evidence);
}

/// A health check that verifies the certificate drops the expired backend: requests through
/// the balancer succeed from then on.
#[tokio::test]
async fn haproxy_with_a_verifying_tls_check_drops_the_expired_backend_and_passes() {
    let Some(o) = through_haproxy("verify required ca-file CA_FILE").await else {
        return;
    };
    assert!(o.passed, "{}\n{}", o.message, o.evidence);
}
