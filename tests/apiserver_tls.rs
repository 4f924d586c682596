//! The apiserver side of the `certs` suite over real TLS, against the TEST DOUBLE of the
//! kube-apiserver's front door in `apiserver_support` (no apiserver can run here): the pure
//! verdicts over real exchanges, and a careless double (any certificate's CN taken without
//! verification) against which the checks must fail.
//!
//! The same double serving an expired certificate drives the lab's detection path: a direct
//! handshake reports `CertificateError::Expired`.

mod apiserver_support;

use std::time::Duration;

use chrono::{Duration as D, Utc};
use hadrill::check::certs::window_pem;
use hadrill::check::kube_certs::{self, PROBE_PATH};
use hadrill::suite::ClientCertKind;
use hadrill::tls::mint::{Ca, LeafSpec, Window};
use hadrill::tls::{self, HandshakeOutcome, Identity, ServerCertProblem};

async fn apiserver_double(ca: &Ca, serving: (String, String), careless: bool) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    apiserver_support::start(ca, serving, l, careless, "v1.29.2", apiserver_support::no_routes())
}

fn serving(ca: &Ca, window: (chrono::DateTime<Utc>, chrono::DateTime<Utc>)) -> (String, String) {
    apiserver_support::serving(ca, window)
}

async fn present(url: &str, ca: &Ca, id: Option<&hadrill::tls::mint::Minted>) -> tls::HttpAnswer {
    let identity = id.map(|m| Identity { cert_pem: m.cert_pem.as_bytes(), key_pem: m.key_pem.as_bytes() });
    tls::https_get(url, ca.cert_pem().as_bytes(), identity, Duration::from_secs(5), PROBE_PATH).await.unwrap()
}

fn bad_cert(ca: &Ca, kind: ClientCertKind) -> hadrill::tls::mint::Minted {
    let now = Utc::now();
    match kind {
        ClientCertKind::Expired => ca.issue(&LeafSpec::client("hadrill-certs-probe", Window::Expired, now)).unwrap(),
        ClientCertKind::NotYetValid => {
            ca.issue(&LeafSpec::client("hadrill-certs-probe", Window::NotYetValid, now)).unwrap()
        }
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
    let (o, _) =
        kube_certs::accepts_control_cert("hadrill-certs-probe", &window_pem(&other.cert_pem).unwrap(), &[(url, a)]);
    assert!(!o.passed && o.message.contains("REFUSED a valid client certificate"), "{}", o.message);
}

#[tokio::test]
async fn a_careless_authenticator_fails_the_refusal_cases() {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let url = apiserver_double(&ca, serving(&ca, (now - D::hours(1), now + D::days(365))), true).await;
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
    let o = tls::handshake(&url, ca.cert_pem().as_bytes(), None, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(o, HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { .. })), "{o:?}");
    assert!(o.to_string().contains("it has expired"), "{o}");
    let chain = tls::peer_chain(&url, Some(ca.cert_pem().as_bytes()), Duration::from_secs(5)).await.unwrap();
    let w = hadrill::check::certs::window(&chain.certs[0]).unwrap();
    let (v, _) = hadrill::check::certs::serving_windows("x", "y", &[(format!("apiserver {url}"), Ok(w))], now, 30);
    assert!(!v.passed && v.message.contains("serving certificate EXPIRED"), "{}", v.message);
}

async fn through_haproxy(server_check: &str) -> Option<hadrill::check::CheckOutcome> {
    let ca = Ca::generate("kubernetes").unwrap();
    let now = Utc::now();
    let good = apiserver_double(&ca, serving(&ca, (now - D::hours(1), now + D::days(365))), false).await;
    let expired = apiserver_double(&ca, serving(&ca, Window::Expired.bounds(now)), false).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.cert_pem()).unwrap();
    let h = apiserver_support::haproxy(
        &[&good, &expired],
        &server_check.replace("CA_FILE", &ca_file.path().display().to_string()),
    )?;
    let samples = hadrill::probe::lb::sample(&h.url, ca.cert_pem().as_bytes(), Duration::from_secs(5), |_| {}).await;
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
