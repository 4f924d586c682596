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
    fn verify_client_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
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

/// The double: listens on 127.0.0.1, serves `serving` (PEM cert, key); `careless` skips the
/// authenticator's verification. Returns its https URL; the task ends with the test.
async fn apiserver_double(ca: &Ca, serving: (String, String), careless: bool) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut serving.0.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut serving.1.as_bytes()).unwrap().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(RequestClientCert(provider.clone())))
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut roots = RootCertStore::empty();
    roots.add(rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().unwrap().unwrap()).unwrap();
    let authenticator = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, authenticator) = (acceptor.clone(), authenticator.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let chain: Vec<CertificateDer<'static>> =
                    s.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
                let (code, body) = match chain.split_first() {
                    None => (403, forbidden("system:anonymous")),
                    Some((leaf, rest)) => {
                        let ok = careless || authenticator.verify_client_cert(leaf, rest, UnixTime::now()).is_ok();
                        if ok { (403, forbidden(&cn(leaf))) } else { (401, UNAUTHORIZED.to_string()) }
                    }
                };
                let reason = if code == 401 { "Unauthorized" } else { "Forbidden" };
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
        .issue(&LeafSpec { common_name: "kube-apiserver".into(), sans: vec!["127.0.0.1".into()], usage: Usage::Server, not_before: window.0, not_after: window.1 })
        .unwrap();
    (m.cert_pem, m.key_pem)
}

async fn present(url: &str, ca: &Ca, id: Option<&hadrill::tls::mint::Minted>) -> tls::HttpAnswer {
    let identity = id.map(|m| Identity { cert_pem: m.cert_pem.as_bytes(), key_pem: m.key_pem.as_bytes() });
    tls::https_get(url, ca.cert_pem().as_bytes(), identity, Duration::from_secs(5), PROBE_PATH).await.unwrap()
}

fn bad_cert(ca: &Ca, kind: ClientCertKind) -> hadrill::tls::mint::Minted {
    let now = Utc::now();
    match kind {
        ClientCertKind::Expired => ca.issue(&LeafSpec::client("hadrill-certs-probe", Window::Expired, now)).unwrap(),
        ClientCertKind::NotYetValid => ca.issue(&LeafSpec::client("hadrill-certs-probe", Window::NotYetValid, now)).unwrap(),
        _ => ca.impostor().unwrap().issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now)).unwrap(),
    }
}

#[tokio::test]
async fn bad_certificates_get_401_and_the_control_is_authenticated() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(&ca, serving(&ca, (now - D::hours(1), now + D::days(365))), false).await;
    for kind in [ClientCertKind::Expired, ClientCertKind::NotYetValid, ClientCertKind::UnknownCa] {
        let m = bad_cert(&ca, kind);
        let a = present(&url, &ca, Some(&m)).await;
        assert_eq!(a.status, Some(401), "{kind:?}: {a:?}");
        let w = window_pem(&m.cert_pem).unwrap();
        let (o, untested) = kube_certs::refuses_client_cert(kind, Some(&w), &[(format!("apiserver {url}"), a)]);
        assert!(o.passed && untested.is_empty(), "{kind:?}: {}", o.message);
        assert!(o.message.contains("HTTP 401 Unauthorized (Status reason `Unauthorized`)"), "{}", o.message);
    }
    let none = present(&url, &ca, None).await;
    let (o, _) = kube_certs::refuses_client_cert(ClientCertKind::Missing, None, &[(format!("apiserver {url}"), none)]);
    assert!(o.passed && o.message.contains("403 Forbidden as system:anonymous"), "{}", o.message);
    let control = ca.issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now)).unwrap();
    let a = present(&url, &ca, Some(&control)).await;
    let (o, _) = kube_certs::accepts_control_cert("hadrill-certs-probe", &window_pem(&control.cert_pem).unwrap(), &[(url.clone(), a)]);
    assert!(o.passed, "{}", o.message);
    // the control signed by another CA (the key at hand is not the cluster's) is refused: the case fails
    let other = Ca::generate("kubernetes").unwrap().issue(&LeafSpec::client("hadrill-certs-probe", Window::Valid, now)).unwrap();
    let a = present(&url, &ca, Some(&other)).await;
    let (o, _) = kube_certs::accepts_control_cert("hadrill-certs-probe", &window_pem(&other.cert_pem).unwrap(), &[(url, a)]);
    assert!(!o.passed && o.message.contains("REFUSED a valid client certificate"), "{}", o.message);
}

#[tokio::test]
async fn a_careless_authenticator_fails_the_refusal_cases() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(&ca, serving(&ca, (now - D::hours(1), now + D::days(365))), true).await;
    let m = bad_cert(&ca, ClientCertKind::Expired);
    let a = present(&url, &ca, Some(&m)).await;
    let (o, _) = kube_certs::refuses_client_cert(ClientCertKind::Expired, Some(&window_pem(&m.cert_pem).unwrap()), &[(format!("apiserver {url}"), a)]);
    assert!(!o.passed);
    assert!(o.message.contains("ACCEPTED an expired client certificate") && o.message.contains("as user `hadrill-certs-probe`"), "{}", o.message);
}

/// The lab's detection path: an apiserver serving an expired certificate is reported as such
/// by a direct handshake, and its window is still readable.
#[tokio::test]
async fn an_expired_serving_certificate_is_named() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(&ca, serving(&ca, Window::Expired.bounds(now)), false).await;
    let o = tls::handshake(&url, ca.cert_pem().as_bytes(), None, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(o, HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { .. })), "{o:?}");
    assert!(o.to_string().contains("it has expired"), "{o}");
    let chain = tls::peer_chain(&url, Some(ca.cert_pem().as_bytes()), Duration::from_secs(5)).await.unwrap();
    let w = hadrill::check::certs::window(&chain.certs[0]).unwrap();
    let (v, _) = hadrill::check::certs::serving_windows("x", "y", &[(format!("apiserver {url}"), Ok(w))], now, 30);
    assert!(!v.passed && v.message.contains("serving certificate EXPIRED"), "{}", v.message);
}
