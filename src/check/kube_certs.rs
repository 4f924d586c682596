//! The verdicts of the `certs` suite on the Kubernetes API side, as pure functions over the
//! answers the engine gathered: what an apiserver did with a client certificate (refused it
//! in the TLS handshake, answered 401, let the request in as the certificate's user, or
//! ignored the certificate and served it as `system:anonymous`).
//!
//! A real kube-apiserver *requests* a client certificate (Go's `tls.RequestClientCert`) but
//! does not verify it in the handshake: its x509 authenticator verifies it against
//! `--client-ca-file` for each request. A certificate that does not verify (expired, not yet
//! valid, unknown CA) makes the authenticator return an error, and the error is final even
//! with anonymous auth on (`union.NewFailOnError(authenticator, anonymous)`): the answer is
//! `401 Unauthorized` with a `Status` body (`"reason":"Unauthorized"`). A request without a
//! certificate falls through to the anonymous authenticator: `403 Forbidden` for
//! `system:anonymous` (or 401 when `--anonymous-auth=false`).

use serde::Deserialize;

use super::certs::{describe_window, CertWindow};
use super::CheckOutcome;
use crate::probe::lb::LbSample;
use crate::suite::ClientCertKind;
use crate::tls::{HandshakeOutcome, HttpAnswer};

/// The request every certificate is presented with: it needs an authenticated user
/// (anonymous users may not read namespaces under the default RBAC), and a 403 for an
/// authenticated user names that user, which proves whom the apiserver took us for.
pub const PROBE_PATH: &str = "/api/v1/namespaces/kube-system";

/// The `Status` object the API answers errors with.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ApiStatus {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub code: u16,
}

/// What an apiserver did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAnswer {
    /// Refused before any authorization: a TLS alert, or `401 Unauthorized`. The text names it.
    Refused(String),
    /// Served as `system:anonymous` (403 naming it, or a 2xx): the certificate was not used.
    Anonymous { status: u16, message: String },
    /// The certificate's user was authenticated: a 2xx, or a 403 that names the user.
    Authenticated { user: Option<String>, status: u16, message: String },
    /// Not tested: unreachable, we refused the server's certificate, an answer we cannot read.
    Untested(String),
}

/// The user a 403 message names: `… is forbidden: User "NAME" cannot get resource …`.
pub fn forbidden_user(message: &str) -> Option<String> {
    let rest = &message[message.find("User \"")? + 6..];
    Some(rest[..rest.find('"')?].to_string())
}

/// How one answer reads.
pub fn classify(a: &HttpAnswer) -> ApiAnswer {
    match &a.handshake {
        HandshakeOutcome::RefusedByServer { alert, .. } => {
            return ApiAnswer::Refused(format!("TLS alert {alert} in the handshake"))
        }
        HandshakeOutcome::Accepted { .. } => {}
        other => return ApiAnswer::Untested(other.to_string()),
    }
    let Some(code) = a.status else {
        return ApiAnswer::Untested("the TLS handshake completed but no HTTP answer came".into());
    };
    let st: ApiStatus = serde_json::from_str(&a.body).unwrap_or_default();
    let message = if st.message.is_empty() { a.body.chars().take(200).collect() } else { st.message.clone() };
    match code {
        401 => ApiAnswer::Refused(format!(
            "HTTP 401 {} (Status reason `{}`)",
            if st.reason.is_empty() { "Unauthorized" } else { st.reason.as_str() },
            if st.reason.is_empty() { "none" } else { st.reason.as_str() }
        )),
        403 => match forbidden_user(&message) {
            Some(u) if u == "system:anonymous" => ApiAnswer::Anonymous { status: 403, message },
            user => ApiAnswer::Authenticated { user, status: 403, message },
        },
        200..=299 => ApiAnswer::Authenticated { user: None, status: code, message: String::new() },
        other => ApiAnswer::Untested(format!("HTTP {other}: {message}")),
    }
}

/// How a bad certificate of `kind` reads in a message (apiserver side).
fn what(kind: ClientCertKind, cert: Option<&CertWindow>) -> String {
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d").to_string();
    match (kind, cert) {
        (ClientCertKind::Expired, Some(w)) => format!("an expired client certificate (notAfter {})", day(w.not_after)),
        (ClientCertKind::NotYetValid, Some(w)) => {
            format!("a not-yet-valid client certificate (notBefore {})", day(w.not_before))
        }
        (ClientCertKind::UnknownCa, _) => {
            "a client certificate signed by an unknown CA (same name as the cluster CA, another key)".into()
        }
        _ => "a request without a client certificate".into(),
    }
}

/// Every apiserver (and the load balancer) refused the bad certificate of `kind` (or, for
/// `missing`, the request without one), naming how. `tried` holds a label per address
/// (`apiserver https://10.0.0.11:6443 (cp-1)`) and its answer. Returns the verdict and the
/// addresses that could not be tested.
pub fn refuses_client_cert(
    kind: ClientCertKind,
    cert: Option<&CertWindow>,
    tried: &[(String, HttpAnswer)],
) -> (CheckOutcome, Vec<String>) {
    const N: &str = "apiserver_refuses_client_cert";
    let what = what(kind, cert);
    let mut evidence = match cert {
        Some(c) => format!("presented: {} with GET {PROBE_PATH}\n", describe_window(c)),
        None => format!("presented: no client certificate, GET {PROBE_PATH}\n"),
    };
    let (mut bad, mut refused, mut untested) = (Vec::new(), Vec::new(), Vec::new());
    for (label, a) in tried {
        let c = classify(a);
        evidence.push_str(&format!("  {label}: {}; HTTP {:?}; {c:?}\n", a.handshake, a.status));
        match (kind, c) {
            (_, ApiAnswer::Refused(how)) => refused.push(format!("{label} ({how})")),
            (ClientCertKind::Missing, ApiAnswer::Anonymous { status: 403, .. }) => {
                refused.push(format!("{label} (HTTP 403 Forbidden as system:anonymous)"))
            }
            (ClientCertKind::Missing, ApiAnswer::Anonymous { status, .. })
            | (ClientCertKind::Missing, ApiAnswer::Authenticated { status, .. }) => bad
                .push(format!("{label} ANSWERED {what} with HTTP {status}: anonymous requests may read {PROBE_PATH}")),
            (_, ApiAnswer::Anonymous { status, .. }) => bad.push(format!(
                "{label} served {what} as system:anonymous (HTTP {status}) instead of refusing it with 401: \
                 the certificate was not verified (no --client-ca-file, or a proxy in front that terminates TLS?)"
            )),
            (_, ApiAnswer::Authenticated { user, status, .. }) => bad.push(format!(
                "{label} ACCEPTED {what}: authenticated {} (HTTP {status})",
                user.map(|u| format!("as user `{u}`")).unwrap_or_else(|| "the request".into())
            )),
            (_, ApiAnswer::Untested(why)) => untested.push(format!("{label}: could not present {what}: {why}")),
        }
    }
    let out = if !bad.is_empty() {
        CheckOutcome::fail(N, bad.join("; "))
    } else {
        CheckOutcome::pass(N, format!("refused {what}: {}", refused.join(", ")))
    };
    (out.with_evidence(evidence), untested)
}

/// Every apiserver (and the load balancer) authenticated the valid control certificate as
/// its own user (`user`): the refusals of the bad ones are about what is wrong with them.
pub fn accepts_control_cert(
    user: &str,
    cert: &CertWindow,
    tried: &[(String, HttpAnswer)],
) -> (CheckOutcome, Vec<String>) {
    const N: &str = "apiserver_accepts_control_cert";
    let mut evidence = format!("presented: {} with GET {PROBE_PATH}\n", describe_window(cert));
    let (mut bad, mut ok, mut untested) = (Vec::new(), Vec::new(), Vec::new());
    for (label, a) in tried {
        let c = classify(a);
        evidence.push_str(&format!("  {label}: {}; HTTP {:?}; {c:?}\n", a.handshake, a.status));
        match c {
            ApiAnswer::Authenticated { user: Some(u), status, .. } if u == user => {
                ok.push(format!("{label} (HTTP {status} for user `{u}`)"))
            }
            ApiAnswer::Authenticated { user: None, status, .. } => ok.push(format!("{label} (HTTP {status})")),
            ApiAnswer::Authenticated { user: Some(u), status, .. } => {
                bad.push(format!("{label} took the control certificate for user `{u}`, not `{user}` (HTTP {status})"))
            }
            ApiAnswer::Refused(how) => {
                bad.push(format!("{label} REFUSED a valid client certificate signed by the cluster CA ({how})"))
            }
            ApiAnswer::Anonymous { status, .. } => bad.push(format!(
                "{label} served the valid control certificate as system:anonymous (HTTP {status}): it does not \
                 authenticate client certificates (no --client-ca-file, or a TLS-terminating proxy in front?)"
            )),
            ApiAnswer::Untested(why) => {
                untested.push(format!("{label}: could not present the control certificate: {why}"))
            }
        }
    }
    let out = if !bad.is_empty() {
        CheckOutcome::fail(N, bad.join("; "))
    } else {
        CheckOutcome::pass(N, format!("authenticated the control certificate: {}", ok.join(", ")))
    };
    (out.with_evidence(evidence), untested)
}

/// The verdict over the samples: once the health check has dropped the backend (at most
/// `within` seconds in), every request during the following `window` seconds succeeds.
pub fn lb_verdict(lb: &str, backend: &str, samples: &[LbSample], within: f64, window: f64) -> CheckOutcome {
    const N: &str = "lb_routes_around_expired_cert";
    let failed: Vec<&LbSample> = samples.iter().filter(|s| !s.ok).collect();
    let in_window: Vec<&&LbSample> = failed.iter().filter(|s| s.at >= within).collect();
    let mut evidence = format!("load balancer {lb}; backend with the expired certificate {backend}\n");
    for s in samples.iter().filter(|s| !s.ok) {
        evidence.push_str(&format!("  {:>7.2}s FAILED {}\n", s.at, s.what));
    }
    evidence.push_str(&format!("{} requests, {} failed\n", samples.len(), failed.len()));
    let after = samples.iter().filter(|s| s.at >= within).count();
    if after == 0 {
        return CheckOutcome::fail(
            N,
            format!("no request through {lb} was made after {within:.0}s: the window {window:.0}s is empty"),
        )
        .with_evidence(evidence);
    }
    if in_window.is_empty() {
        let last_fail = failed
            .last()
            .map(|s| format!("the last failure at {:.1}s", s.at))
            .unwrap_or_else(|| "no failure at all".into());
        CheckOutcome::pass(
            N,
            format!("through {lb}: all {after} request(s) from {within:.0}s to {:.0}s succeeded ({last_fail}; {} failed in all)", within + window, failed.len()),
        )
        .with_evidence(evidence)
    } else {
        CheckOutcome::fail(
            N,
            format!(
                "through {lb}, {} of {after} request(s) still failed after {within:.0}s (first: `{}` at {:.1}s): the load balancer keeps sending traffic to {backend}, whose certificate expired — \
                 a TLS health check that does not verify the certificate (HAProxy `check-ssl verify none`) does not drop it",
                in_window.len(),
                in_window[0].what,
                in_window[0].at
            ),
        )
        .with_evidence(evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClientCert;

    /// The body a kube-apiserver answers a request whose client certificate does not verify.
    const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

    fn forbidden(user: &str) -> String {
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message": format!("namespaces \"kube-system\" is forbidden: User \"{user}\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"kube-system\""),
            "reason":"Forbidden","details":{"name":"kube-system","kind":"namespaces"},"code":403})
        .to_string()
    }

    fn http(status: u16, body: &str) -> HttpAnswer {
        HttpAnswer {
            handshake: HandshakeOutcome::Accepted {
                answer: Some(format!("HTTP/1.1 {status}")),
                client_cert: ClientCert::Sent,
            },
            status: Some(status),
            body: body.into(),
        }
    }

    fn window() -> CertWindow {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").unwrap().into();
        CertWindow {
            subject: "CN=hadrill-certs-probe".into(),
            issuer: "CN=kubernetes".into(),
            not_before: t,
            not_after: t,
        }
    }

    #[test]
    fn answers_classify() {
        assert_eq!(
            classify(&http(401, UNAUTHORIZED)),
            ApiAnswer::Refused("HTTP 401 Unauthorized (Status reason `Unauthorized`)".into())
        );
        assert!(matches!(
            classify(&http(403, &forbidden("system:anonymous"))),
            ApiAnswer::Anonymous { status: 403, .. }
        ));
        assert!(matches!(
            classify(&http(403, &forbidden("hadrill-certs-probe"))),
            ApiAnswer::Authenticated { user: Some(u), status: 403, .. } if u == "hadrill-certs-probe"
        ));
        assert!(matches!(classify(&http(200, "{}")), ApiAnswer::Authenticated { user: None, status: 200, .. }));
        let alert = HttpAnswer {
            handshake: HandshakeOutcome::RefusedByServer {
                alert: "BadCertificate".into(),
                client_cert: ClientCert::Sent,
            },
            status: None,
            body: String::new(),
        };
        assert_eq!(classify(&alert), ApiAnswer::Refused("TLS alert BadCertificate in the handshake".into()));
        let down =
            HttpAnswer { handshake: HandshakeOutcome::Connect("refused".into()), status: None, body: String::new() };
        assert!(matches!(classify(&down), ApiAnswer::Untested(_)));
    }

    #[test]
    fn a_401_for_an_expired_certificate_passes_and_names_it() {
        let tried = vec![
            ("apiserver https://10.0.0.11:6443 (cp-1)".to_string(), http(401, UNAUTHORIZED)),
            ("load balancer https://10.0.0.10:6443".to_string(), http(401, UNAUTHORIZED)),
        ];
        let (o, untested) = refuses_client_cert(ClientCertKind::Expired, Some(&window()), &tried);
        assert!(o.passed, "{}", o.message);
        assert!(untested.is_empty());
        assert!(o.message.contains("(cp-1) (HTTP 401 Unauthorized"), "{}", o.message);
    }

    #[test]
    fn an_apiserver_that_authenticates_an_expired_certificate_fails() {
        let tried = vec![
            ("apiserver https://10.0.0.11:6443 (cp-1)".to_string(), http(401, UNAUTHORIZED)),
            ("apiserver https://10.0.0.12:6443 (cp-2)".to_string(), http(403, &forbidden("hadrill-certs-probe"))),
        ];
        let (o, _) = refuses_client_cert(ClientCertKind::Expired, Some(&window()), &tried);
        assert!(!o.passed);
        assert_eq!(
            o.message,
            "apiserver https://10.0.0.12:6443 (cp-2) ACCEPTED an expired client certificate (notAfter 2026-11-20): \
             authenticated as user `hadrill-certs-probe` (HTTP 403)"
        );
    }

    #[test]
    fn a_certificate_served_as_anonymous_fails_with_the_likely_cause() {
        let tried =
            vec![("load balancer https://10.0.0.10:6443".to_string(), http(403, &forbidden("system:anonymous")))];
        let (o, _) = refuses_client_cert(ClientCertKind::UnknownCa, Some(&window()), &tried);
        assert!(!o.passed);
        assert!(o.message.contains("as system:anonymous (HTTP 403) instead of refusing it with 401"), "{}", o.message);
    }

    #[test]
    fn missing_certificate_refused_as_anonymous_or_401_and_fails_when_served() {
        let ok = vec![
            ("apiserver a".to_string(), http(403, &forbidden("system:anonymous"))),
            ("apiserver b".to_string(), http(401, UNAUTHORIZED)),
        ];
        let (o, _) = refuses_client_cert(ClientCertKind::Missing, None, &ok);
        assert!(o.passed, "{}", o.message);
        assert!(o.message.contains("HTTP 403 Forbidden as system:anonymous"));
        let served = vec![("apiserver a".to_string(), http(200, "{}"))];
        let (o, _) = refuses_client_cert(ClientCertKind::Missing, None, &served);
        assert!(!o.passed);
        assert!(o.message.contains("anonymous requests may read"), "{}", o.message);
    }

    #[test]
    fn unreachable_addresses_are_untested_not_passed() {
        let down = HttpAnswer {
            handshake: HandshakeOutcome::Connect("Connection refused".into()),
            status: None,
            body: String::new(),
        };
        let (o, untested) =
            refuses_client_cert(ClientCertKind::Expired, Some(&window()), &[("apiserver a".into(), down)]);
        assert!(o.passed, "the verdict covers only what was tested; the engine turns `untested` into an error");
        assert_eq!(untested.len(), 1);
    }

    #[test]
    fn control_certificate() {
        let tried = vec![("apiserver a".to_string(), http(403, &forbidden("hadrill-certs-probe")))];
        let (o, _) = accepts_control_cert("hadrill-certs-probe", &window(), &tried);
        assert!(o.passed, "{}", o.message);
        let tried = vec![("apiserver a".to_string(), http(401, UNAUTHORIZED))];
        let (o, _) = accepts_control_cert("hadrill-certs-probe", &window(), &tried);
        assert!(!o.passed);
        assert!(
            o.message.contains("REFUSED a valid client certificate signed by the cluster CA (HTTP 401"),
            "{}",
            o.message
        );
        let tried = vec![("apiserver a".to_string(), http(403, &forbidden("system:anonymous")))];
        let (o, _) = accepts_control_cert("hadrill-certs-probe", &window(), &tried);
        assert!(!o.passed && o.message.contains("system:anonymous"), "{}", o.message);
    }

    fn samples(fails_at: &[f64], until: f64) -> Vec<LbSample> {
        let mut v = Vec::new();
        let mut t = 0.0;
        while t < until {
            let ok = !fails_at.iter().any(|f| (f - t).abs() < 0.05);
            v.push(LbSample {
                at: t,
                ok,
                what: if ok { "HTTP 200".into() } else { "we refused the server's certificate: it has expired".into() },
            });
            t += 0.5;
        }
        v
    }

    #[test]
    fn a_balancer_that_drops_the_backend_passes() {
        let s = samples(&[0.5, 1.5, 3.0], 20.0);
        let o = lb_verdict("https://10.0.0.10:6443", "https://10.0.0.12:6443", &s, 10.0, 10.0);
        assert!(o.passed, "{}", o.message);
        assert!(o.message.contains("the last failure at 3.0s"), "{}", o.message);
    }

    /// HAProxy with `check-ssl verify none` keeps the backend: one request in three keeps failing.
    #[test]
    fn a_balancer_that_keeps_the_backend_fails_and_says_why() {
        let fails: Vec<f64> = (0..40).map(|i| i as f64 * 1.5).collect();
        let s = samples(&fails, 20.0);
        let o = lb_verdict("https://10.0.0.10:6443", "https://10.0.0.12:6443", &s, 10.0, 10.0);
        assert!(!o.passed);
        assert!(o.message.contains("keeps sending traffic to https://10.0.0.12:6443"), "{}", o.message);
        assert!(o.message.contains("check-ssl verify none"), "{}", o.message);
    }
}
