//! Direct TLS handshakes against a real etcd with mutual TLS, and against an in-process
//! rustls server where etcd cannot serve the case (an expired serving certificate): each
//! refusal is named, and `hadrill run` exits 3 with one line when the preflight fails.

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as D, Utc};
use hadrill::tls::mint::{Ca, LeafSpec, Usage, Window};
use hadrill::tls::{handshake, peer_chain, ClientCert, HandshakeOutcome, Identity, ServerCertProblem};
use tls_support::{EtcdOpts, TestEtcd};

const T: Duration = Duration::from_secs(5);

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

async fn present(e: &TestEtcd, cert: &str, key: &str) -> HandshakeOutcome {
    handshake(
        &e.endpoint,
        e.ca.cert_pem().as_bytes(),
        Some(Identity { cert_pem: cert.as_bytes(), key_pem: key.as_bytes() }),
        T,
    )
    .await
    .unwrap()
}

fn assert_refused(o: &HandshakeOutcome, what: &str) -> String {
    match o {
        HandshakeOutcome::RefusedByServer { alert, client_cert } => {
            assert_eq!(
                *client_cert,
                ClientCert::Sent,
                "{what}: etcd with --client-cert-auth must ask for a certificate"
            );
            alert.clone()
        }
        other => panic!("{what}: expected a refusal by the server, got: {other}"),
    }
}

#[tokio::test]
async fn etcd_accepts_good_and_names_every_refusal() {
    let e = TestEtcd::start(EtcdOpts::default());
    let now = Utc::now();

    // the client certificate etcd trusts: accepted, and etcd answers our request
    let (c, k) = (read(&e.client_crt), read(&e.client_key));
    let o = handshake(&e.endpoint, e.ca.cert_pem().as_bytes(), Some(Identity { cert_pem: &c, key_pem: &k }), T)
        .await
        .unwrap();
    match &o {
        HandshakeOutcome::Accepted { answer: Some(a), client_cert: ClientCert::Sent } => {
            assert!(a.starts_with("HTTP/1.1 200"), "{a}")
        }
        other => panic!("expected accepted with an answer, got: {other}\netcd log:\n{}", e.log()),
    }

    // expired, not yet valid, and signed by an impostor CA with the same name: all refused
    let expired = e.ca.issue(&LeafSpec::client("x", Window::Expired, now)).unwrap();
    let alert = assert_refused(&present(&e, &expired.cert_pem, &expired.key_pem).await, "expired");
    assert_eq!(alert, "BadCertificate", "etcd (Go) sends bad_certificate for an expired client certificate");
    let future = e.ca.issue(&LeafSpec::client("x", Window::NotYetValid, now)).unwrap();
    assert_eq!(
        assert_refused(&present(&e, &future.cert_pem, &future.key_pem).await, "not yet valid"),
        "BadCertificate"
    );
    let impostor = e.ca.impostor().unwrap().issue(&LeafSpec::client("x", Window::Valid, now)).unwrap();
    assert_eq!(
        assert_refused(&present(&e, &impostor.cert_pem, &impostor.key_pem).await, "unknown CA"),
        "BadCertificate"
    );

    // no client certificate at all: certificate_required from Go >= 1.21, bad_certificate
    // from the Go that builds Debian's etcd 3.4
    let o = handshake(&e.endpoint, e.ca.cert_pem().as_bytes(), None, T).await.unwrap();
    match &o {
        HandshakeOutcome::RefusedByServer { alert, client_cert: ClientCert::RequestedNoneSent } => {
            assert!(alert == "CertificateRequired" || alert == "BadCertificate", "{alert}")
        }
        other => panic!("expected a refusal for want of a certificate, got {other}"),
    }
    assert!(o.to_string().contains("requires a client certificate and we had none"), "{o}");

    // we refuse etcd: wrong CA, wrong name
    let other = Ca::generate("some-other-ca").unwrap();
    let o = handshake(&e.endpoint, other.cert_pem().as_bytes(), Some(Identity { cert_pem: &c, key_pem: &k }), T)
        .await
        .unwrap();
    assert_eq!(o, HandshakeOutcome::RefusedServerCert(ServerCertProblem::UnknownIssuer));
    assert!(o.to_string().contains("not signed by the given CA (wrong --etcd-cacert?)"));
}

#[tokio::test]
async fn wrong_name_is_named() {
    let e = TestEtcd::start(EtcdOpts { sans: vec!["127.0.0.1".into()], ..Default::default() });
    let port = e.endpoint.rsplit(':').next().unwrap();
    let (c, k) = (read(&e.client_crt), read(&e.client_key));
    let o = handshake(
        &format!("https://localhost:{port}"),
        e.ca.cert_pem().as_bytes(),
        Some(Identity { cert_pem: &c, key_pem: &k }),
        T,
    )
    .await
    .unwrap();
    match o {
        HandshakeOutcome::RefusedServerCert(ServerCertProblem::NotValidForName { expected, presented }) => {
            assert_eq!(expected, "localhost");
            assert!(presented.iter().any(|p| p.contains("127.0.0.1")), "{presented:?}");
        }
        other => panic!("expected NotValidForName, got {other}"),
    }
}

#[tokio::test]
async fn peer_chain_reads_etcd_serving_certificate_without_client_auth() {
    let e = TestEtcd::start(EtcdOpts { serving_days: 10, ..Default::default() });
    let chain = peer_chain(&e.endpoint, Some(e.ca.cert_pem().as_bytes()), T).await.unwrap();
    assert_eq!(chain.verified, Some(Ok(())));
    let w = hadrill::check::certs::window(&chain.certs[0]).unwrap();
    assert_eq!(w.not_after, e.serving_not_after);
    // a 10-day serving certificate fails a 30-day threshold, passes a 5-day one
    assert!(!hadrill::check::certs::verdict(&w, Utc::now(), 30).is_ok());
    assert!(hadrill::check::certs::verdict(&w, Utc::now(), 5).is_ok());
}

#[tokio::test]
async fn closed_port_and_silent_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ca = Ca::generate("x").unwrap();
    let o = handshake(&format!("https://127.0.0.1:{port}"), ca.cert_pem().as_bytes(), None, T).await.unwrap();
    assert!(matches!(o, HandshakeOutcome::Connect(_)), "{o}");

    // accepts TCP, never speaks TLS: the handshake deadline fires
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let o = handshake(&format!("https://{addr}"), ca.cert_pem().as_bytes(), None, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(o, HandshakeOutcome::Timeout { phase: "TLS handshake", after: Duration::from_millis(500) });
    hold.abort();
}

/// A real TLS server (rustls, in process) with a serving certificate of the given window.
async fn rustls_server(
    ca: &Ca,
    not_before: chrono::DateTime<Utc>,
    not_after: chrono::DateTime<Utc>,
) -> (String, tokio::task::JoinHandle<()>) {
    let m = ca
        .issue(&LeafSpec {
            common_name: "srv".into(),
            sans: vec!["127.0.0.1".into()],
            usage: Usage::Server,
            not_before,
            not_after,
        })
        .unwrap();
    let certs = rustls_pemfile::certs(&mut m.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes()).unwrap().unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    (format!("https://{addr}"), task)
}

#[tokio::test]
async fn expired_and_future_serving_certificates_are_named_and_still_readable() {
    let ca = Ca::generate("srv-ca").unwrap();
    let now = Utc::now();
    let (ep, task) = rustls_server(&ca, now - D::days(40), now - D::days(2)).await;
    let o = handshake(&ep, ca.cert_pem().as_bytes(), None, T).await.unwrap();
    match &o {
        HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { not_after: Some(t) }) => {
            assert_eq!(*t, (now - D::days(2)).timestamp())
        }
        other => panic!("expected Expired, got {other}"),
    }
    assert!(o.to_string().contains("it has expired (notAfter "), "{o}");
    let chain = peer_chain(&ep, Some(ca.cert_pem().as_bytes()), T).await.unwrap();
    assert!(matches!(chain.verified, Some(Err(ServerCertProblem::Expired { .. }))), "{:?}", chain.verified);
    let w = hadrill::check::certs::window(&chain.certs[0]).unwrap();
    assert_eq!(w.not_after.timestamp(), (now - D::days(2)).timestamp());
    task.abort();

    let (ep, task) = rustls_server(&ca, now + D::days(2), now + D::days(40)).await;
    let o = handshake(&ep, ca.cert_pem().as_bytes(), None, T).await.unwrap();
    assert!(matches!(o, HandshakeOutcome::RefusedServerCert(ServerCertProblem::NotValidYet { .. })), "{o}");
    task.abort();
}

fn hadrill(args: &[&str], ledger: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .args(args)
        .arg("--ledger")
        .arg(ledger)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn run_exits_3_naming_the_endpoint_and_the_reason() {
    let e = TestEtcd::start(EtcdOpts::default());
    let ledger = tempfile::tempdir().unwrap();
    let wrong = e.dir.path().join("wrong-ca.crt");
    std::fs::write(&wrong, Ca::generate("wrong").unwrap().cert_pem()).unwrap();
    let (ca, cert, key) = (e.ca_crt.to_str().unwrap(), e.client_crt.to_str().unwrap(), e.client_key.to_str().unwrap());

    let out = hadrill(
        &[
            "--etcd-endpoints",
            &e.endpoint,
            "--etcd-cacert",
            wrong.to_str().unwrap(),
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
            "run",
            "topology::",
        ],
        ledger.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&e.endpoint) && err.contains("not signed by the given CA (wrong --etcd-cacert?)"), "{err}");

    // several endpoints, none passing: every endpoint's reason, still one line
    let port = e.endpoint.rsplit(':').next().unwrap();
    let two = format!("{},https://localhost:{port}", e.endpoint);
    let out = hadrill(
        &[
            "--etcd-endpoints",
            &two,
            "--etcd-cacert",
            wrong.to_str().unwrap(),
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
            "run",
            "topology::",
        ],
        ledger.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("not signed by the given CA").count(), 2, "{err}");
    assert!(err.contains(&format!("etcd https://localhost:{port}: ")), "{err}");

    // a client certificate etcd refuses: the alert is named
    let now = Utc::now();
    let expired = e.ca.issue(&LeafSpec::client("x", Window::Expired, now)).unwrap();
    let (xc, xk) = (e.dir.path().join("x.crt"), e.dir.path().join("x.key"));
    std::fs::write(&xc, &expired.cert_pem).unwrap();
    tls_support::write_secret(&xk, &expired.key_pem);
    let out = hadrill(
        &[
            "--etcd-endpoints",
            &e.endpoint,
            "--etcd-cacert",
            ca,
            "--etcd-cert",
            xc.to_str().unwrap(),
            "--etcd-key",
            xk.to_str().unwrap(),
            "run",
            "topology::",
        ],
        ledger.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&e.endpoint) && err.contains("TLS alert BadCertificate"), "{err}");

    // the right material passes the preflight (topology then runs against one member)
    let out = hadrill(
        &[
            "--etcd-endpoints",
            &e.endpoint,
            "--etcd-cacert",
            ca,
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
            "run",
            "topology::etcd_one_leader",
        ],
        ledger.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {so}\nstderr: {err}");
    assert!(so.contains("1 passed"), "{so}");
}
