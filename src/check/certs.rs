//! Certificate checks as pure functions: validity windows (notBefore/notAfter, days left at
//! a given moment, the verdict against a threshold) and the verdicts of the `certs` suite
//! over handshake outcomes that the engine gathered.

use chrono::{DateTime, Duration, Utc};
use x509_parser::prelude::*;

use super::CheckOutcome;
use crate::report::Measurement;
use crate::suite::ClientCertKind;
use crate::tls::{ClientCert, HandshakeOutcome};

/// The threshold of "valid for at least N days" when a suite does not give one.
pub const DEFAULT_MIN_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found")]
    NoPem,
    #[error("parse an X.509 certificate: {0}")]
    Parse(String),
}

/// A certificate's identity and validity window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertWindow {
    pub subject: String,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The window of a DER certificate.
pub fn window(der: &[u8]) -> Result<CertWindow, CertError> {
    let (_, c) = parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let v = c.validity();
    let ts = |t: &ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0).ok_or_else(|| CertError::Parse("time out of range".into()))
    };
    Ok(CertWindow {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        not_before: ts(&v.not_before)?,
        not_after: ts(&v.not_after)?,
    })
}

/// The window of the first certificate of a PEM bundle.
pub fn window_pem(pem: &str) -> Result<CertWindow, CertError> {
    let der =
        rustls_pemfile::certs(&mut pem.as_bytes()).next().ok_or(CertError::NoPem)?.map_err(|_| CertError::NoPem)?;
    window(&der)
}

/// Whole days from `now` to notAfter (rounded down; negative once expired).
pub fn days_left(w: &CertWindow, now: DateTime<Utc>) -> i64 {
    (w.not_after - now).num_seconds().div_euclid(86_400)
}

/// Where `now` falls in a certificate's window, against a "valid for ≥ N days" threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    /// Valid now and for at least the threshold.
    Valid {
        days_left: i64,
    },
    /// Valid now, but for less than the threshold.
    ExpiresSoon {
        days_left: i64,
        min_days: i64,
    },
    Expired {
        since: DateTime<Utc>,
    },
    NotYetValid {
        from: DateTime<Utc>,
    },
}

impl Validity {
    pub fn is_ok(&self) -> bool {
        matches!(self, Validity::Valid { .. })
    }
}

/// The verdict on `w` at `now`, when it must stay valid for at least `min_days`.
pub fn verdict(w: &CertWindow, now: DateTime<Utc>, min_days: i64) -> Validity {
    if now < w.not_before {
        Validity::NotYetValid { from: w.not_before }
    } else if now > w.not_after {
        Validity::Expired { since: w.not_after }
    } else if w.not_after - now < Duration::days(min_days) {
        Validity::ExpiresSoon { days_left: days_left(w, now), min_days }
    } else {
        Validity::Valid { days_left: days_left(w, now) }
    }
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// One line of evidence about a certificate.
pub fn describe_window(w: &CertWindow) -> String {
    format!(
        "subject `{}` issuer `{}` notBefore {} notAfter {}",
        w.subject,
        w.issuer,
        stamp(w.not_before),
        stamp(w.not_after)
    )
}

/// Every etcd serving certificate is valid for at least `min_days`. `read` holds what was read
/// per endpoint (or why it could not be). Returns the verdict over the certificates that were
/// read, and the endpoints that could not be read (the harness's problem, not the cluster's).
pub fn serving_certs(
    read: &[(String, Result<CertWindow, String>)],
    now: DateTime<Utc>,
    min_days: i64,
) -> (CheckOutcome, Vec<String>) {
    let labelled: Vec<(String, Result<CertWindow, String>)> =
        read.iter().map(|(ep, r)| (format!("etcd {ep}"), r.clone())).collect();
    serving_windows("etcd_serving_cert_valid_for", "etcd_serving_cert_days_left", &labelled, now, min_days)
}

/// Every serving certificate in `read` is valid for at least `min_days`. Each entry is labelled
/// with what serves it and where (`apiserver https://10.0.0.11:6443 (cp-1)`, `kubelet
/// https://10.0.0.11:10250 (cp-1)`, `etcd peer https://10.0.0.11:2380`); a failure names the
/// label, notAfter, the days left and the bound. Returns the verdict over what was read and
/// the entries that could not be read.
pub fn serving_windows(
    name: &str,
    measurement: &str,
    read: &[(String, Result<CertWindow, String>)],
    now: DateTime<Utc>,
    min_days: i64,
) -> (CheckOutcome, Vec<String>) {
    let mut bad = Vec::new();
    let mut unreadable = Vec::new();
    let mut evidence = format!("threshold: valid for at least {min_days} days from {}\n", stamp(now));
    let mut least: Option<(i64, String)> = None;
    for (label, r) in read {
        match r {
            Err(e) => {
                evidence.push_str(&format!("  {label}: could not read the certificate: {e}\n"));
                unreadable.push(format!("{label}: {e}"));
            }
            Ok(w) => {
                let v = verdict(w, now, min_days);
                let left = days_left(w, now);
                evidence.push_str(&format!("  {label}: {} ({left} days left; {v:?})\n", describe_window(w)));
                if least.as_ref().is_none_or(|(l, _)| left < *l) {
                    least = Some((left, label.clone()));
                }
                match v {
                    Validity::Valid { .. } => {}
                    Validity::ExpiresSoon { days_left, .. } => bad.push(format!(
                        "{label} serving certificate expires in {days_left} days (notAfter {}), less than {min_days}",
                        day(w.not_after)
                    )),
                    Validity::Expired { since } => bad.push(format!(
                        "{label} serving certificate EXPIRED (notAfter {}, {} days ago)",
                        day(since),
                        -left
                    )),
                    Validity::NotYetValid { from } => bad.push(format!(
                        "{label} serving certificate is not valid yet (notBefore {}; clock skew?)",
                        stamp(from)
                    )),
                }
            }
        }
    }
    let read_ok = read.len() - unreadable.len();
    let mut out = if read.is_empty() {
        CheckOutcome::fail(name, "no serving certificate to read: no endpoint was found")
    } else if !bad.is_empty() {
        CheckOutcome::fail(name, bad.join("; "))
    } else {
        CheckOutcome::pass(
            name,
            format!(
                "{read_ok} serving certificate(s) valid for at least {min_days} days (the soonest: {} in {} days)",
                least.as_ref().map(|(_, l)| l.as_str()).unwrap_or("none"),
                least.as_ref().map(|(d, _)| *d).unwrap_or(0)
            ),
        )
    };
    if let Some((l, _)) = least {
        out = out.with_measurement(Measurement::new(measurement, l as f64, "days").with_min(min_days as f64));
    }
    (out.with_evidence(evidence), unreadable)
}

/// How a bad client certificate of `kind` reads in a message.
pub fn describe_kind(kind: ClientCertKind, w: &CertWindow) -> String {
    match kind {
        ClientCertKind::Expired => format!("an expired client certificate (notAfter {})", day(w.not_after)),
        ClientCertKind::NotYetValid => format!("a not-yet-valid client certificate (notBefore {})", day(w.not_before)),
        ClientCertKind::UnknownCa => {
            "a client certificate signed by an unknown CA (same name as etcd's CA, another key)".to_string()
        }
        ClientCertKind::Missing => "a client without a certificate".to_string(),
    }
}

/// etcd refused the bad client certificate at every endpoint, naming the alert. Returns the
/// verdict over the endpoints that could be tested, and those that could not.
/// `cert` is None for [`ClientCertKind::Missing`].
pub fn refuses_client_cert(
    kind: ClientCertKind,
    cert: Option<&CertWindow>,
    tried: &[(String, HandshakeOutcome)],
) -> (CheckOutcome, Vec<String>) {
    const N: &str = "etcd_refuses_client_cert";
    let (what, mut evidence) = match cert {
        Some(c) => (describe_kind(kind, c), format!("presented: {}\n", describe_window(c))),
        None => {
            (describe_kind(ClientCertKind::Missing, &placeholder()), "presented: no client certificate\n".to_string())
        }
    };
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut untested = Vec::new();
    for (ep, o) in tried {
        evidence.push_str(&format!("  {ep}: {o}\n"));
        match o {
            HandshakeOutcome::Accepted { answer, client_cert } => {
                let mut line = format!("etcd {ep} ACCEPTED {what}");
                if let Some(a) = answer {
                    line.push_str(&format!(" and answered `{a}`"));
                }
                if *client_cert == ClientCert::NotRequested {
                    line.push_str(" (it did not ask for a client certificate: is --client-cert-auth set?)");
                }
                accepted.push(line);
            }
            HandshakeOutcome::RefusedByServer { alert, .. } => refused.push(format!("{ep} (TLS alert {alert})")),
            other => untested.push(format!("etcd {ep}: could not present {what}: {other}")),
        }
    }
    let out = if !accepted.is_empty() {
        CheckOutcome::fail(N, accepted.join("; "))
    } else {
        CheckOutcome::pass(N, format!("etcd refused {what}: {}", refused.join(", ")))
    };
    (out.with_evidence(evidence), untested)
}

fn placeholder() -> CertWindow {
    CertWindow {
        subject: String::new(),
        issuer: String::new(),
        not_before: DateTime::UNIX_EPOCH,
        not_after: DateTime::UNIX_EPOCH,
    }
}

/// What presenting the valid control certificate to one endpoint gave: the handshake, and
/// (when it was accepted) a real etcd request with it.
#[derive(Debug, Clone)]
pub struct ControlProbe {
    pub endpoint: String,
    pub handshake: HandshakeOutcome,
    /// `Ok(version)` of a status request through etcd-client with the control certificate.
    pub status: Option<Result<String, String>>,
}

/// etcd accepted the valid control certificate (signed by its CA) at every endpoint and
/// answered a request with it: the refusals of the bad ones are about what is wrong with
/// them, not about the way hadrill presents certificates.
pub fn accepts_control_cert(cert: &CertWindow, probes: &[ControlProbe]) -> (CheckOutcome, Vec<String>) {
    const N: &str = "etcd_accepts_control_cert";
    let mut refused = Vec::new();
    let mut ok = Vec::new();
    let mut untested = Vec::new();
    let mut evidence = format!("presented: {}\n", describe_window(cert));
    for p in probes {
        let ep = &p.endpoint;
        evidence.push_str(&format!("  {ep}: {}", p.handshake));
        if let Some(s) = &p.status {
            evidence.push_str(&format!(
                "; status: {}",
                match s {
                    Ok(v) => format!("ok, version {v}"),
                    Err(e) => e.clone(),
                }
            ));
        }
        evidence.push('\n');
        match (&p.handshake, &p.status) {
            (HandshakeOutcome::RefusedByServer { alert, .. }, _) => refused
                .push(format!("etcd {ep} REFUSED a valid client certificate signed by its CA (TLS alert {alert})")),
            (HandshakeOutcome::Accepted { .. }, Some(Ok(v))) => ok.push(format!("{ep} (etcd {v})")),
            (HandshakeOutcome::Accepted { .. }, Some(Err(e))) => refused.push(format!(
                "etcd {ep} accepted the control certificate's handshake but a status request with it failed: {e}"
            )),
            (HandshakeOutcome::Accepted { .. }, None) => {
                untested.push(format!("etcd {ep}: no status request was made"))
            }
            (other, _) => untested.push(format!("etcd {ep}: could not present the control certificate: {other}")),
        }
    }
    let out = if !refused.is_empty() {
        CheckOutcome::fail(N, refused.join("; "))
    } else {
        CheckOutcome::pass(N, format!("etcd accepted the control certificate and answered status: {}", ok.join(", ")))
    };
    (out.with_evidence(evidence), untested)
}

#[cfg(test)]
mod tests {

    #[test]
    fn no_endpoint_at_all_is_not_a_serving_certificate_pass() {
        let (c, untested) = serving_windows("n", "m", &[], Utc::now(), 30);
        assert!(!c.passed && c.message.contains("no serving certificate"), "{}", c.message);
        assert!(untested.is_empty());
    }
    use super::*;
    use crate::tls::mint::{Ca, LeafSpec, Usage};

    fn minted(nb: DateTime<Utc>, na: DateTime<Utc>) -> CertWindow {
        let ca = Ca::generate("test-ca").unwrap();
        let m = ca
            .issue(&LeafSpec {
                common_name: "leaf".into(),
                sans: vec!["10.0.0.1".into()],
                usage: Usage::Server,
                not_before: nb,
                not_after: na,
            })
            .unwrap();
        window_pem(&m.cert_pem).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
    }

    #[test]
    fn window_reads_both_bounds() {
        let n = now();
        let w = minted(n - Duration::days(1), n + Duration::days(400));
        assert_eq!(w.not_before, n - Duration::days(1));
        assert_eq!(w.not_after, n + Duration::days(400));
        assert_eq!(w.subject, "CN=leaf");
        assert_eq!(w.issuer, "CN=test-ca");
        assert_eq!(days_left(&w, n), 400);
        assert_eq!(days_left(&w, n + Duration::hours(1)), 399);
    }

    #[test]
    fn verdicts() {
        let n = now();
        let valid = minted(n - Duration::days(1), n + Duration::days(365));
        assert_eq!(verdict(&valid, n, DEFAULT_MIN_DAYS), Validity::Valid { days_left: 365 });
        let expired = minted(n - Duration::days(60), n - Duration::days(2));
        assert_eq!(verdict(&expired, n, DEFAULT_MIN_DAYS), Validity::Expired { since: n - Duration::days(2) });
        assert!(days_left(&expired, n) < 0);
        let future = minted(n + Duration::days(2), n + Duration::days(60));
        assert_eq!(verdict(&future, n, DEFAULT_MIN_DAYS), Validity::NotYetValid { from: n + Duration::days(2) });
    }

    #[test]
    fn ten_day_certificate_fails_a_thirty_day_threshold() {
        let n = now();
        let w = minted(n - Duration::hours(1), n + Duration::days(10));
        assert_eq!(verdict(&w, n, 30), Validity::ExpiresSoon { days_left: 10, min_days: 30 });
        assert!(verdict(&w, n, 10).is_ok(), "exactly 10 days left meets a 10-day threshold");
        assert!(!verdict(&w, n + Duration::seconds(1), 10).is_ok());
        let (o, unreadable) = serving_certs(&[("https://10.0.0.1:2379".into(), Ok(w.clone()))], n, 30);
        assert!(!o.passed);
        assert!(unreadable.is_empty());
        assert!(
            o.message.contains("etcd https://10.0.0.1:2379 serving certificate expires in 10 days"),
            "{}",
            o.message
        );
        let (o, _) = serving_certs(&[("https://10.0.0.1:2379".into(), Ok(w))], n, 5);
        assert!(o.passed, "{}", o.message);
    }

    #[test]
    fn unreadable_serving_cert_is_not_a_pass_by_omission() {
        let (o, unreadable) =
            serving_certs(&[("https://10.0.0.9:2379".into(), Err("cannot connect".into()))], now(), 30);
        assert_eq!(unreadable.len(), 1);
        assert!(o.passed, "the verdict covers only what was read; the engine turns `unreadable` into an error");
    }

    #[test]
    fn accepted_bad_certificate_fails_naming_endpoint_kind_and_date() {
        let n = now();
        let w = minted(n - Duration::days(31), DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").unwrap().into());
        let tried = vec![
            (
                "https://10.213.0.11:2379".to_string(),
                HandshakeOutcome::Accepted { answer: Some("HTTP/1.1 200 OK".into()), client_cert: ClientCert::Sent },
            ),
            (
                "https://10.213.0.12:2379".to_string(),
                HandshakeOutcome::RefusedByServer { alert: "BadCertificate".into(), client_cert: ClientCert::Sent },
            ),
        ];
        let (o, untested) = refuses_client_cert(ClientCertKind::Expired, Some(&w), &tried);
        assert!(!o.passed);
        assert!(untested.is_empty());
        assert_eq!(
            o.message,
            "etcd https://10.213.0.11:2379 ACCEPTED an expired client certificate (notAfter 2026-11-20) and answered `HTTP/1.1 200 OK`"
        );
        let (o, _) = refuses_client_cert(ClientCertKind::Expired, Some(&w), &tried[1..]);
        assert!(o.passed);
        assert!(o.message.contains("https://10.213.0.12:2379 (TLS alert BadCertificate)"), "{}", o.message);
    }

    #[test]
    fn server_that_does_not_ask_is_called_out() {
        let n = now();
        let w = minted(n - Duration::days(1), n + Duration::days(1));
        let tried = vec![(
            "https://h:2379".to_string(),
            HandshakeOutcome::Accepted { answer: None, client_cert: ClientCert::NotRequested },
        )];
        let (o, _) = refuses_client_cert(ClientCertKind::UnknownCa, Some(&w), &tried);
        assert!(!o.passed);
        assert!(o.message.contains("unknown CA") && o.message.contains("--client-cert-auth"), "{}", o.message);
        let tried = vec![("https://h:2379".to_string(), HandshakeOutcome::Connect("connection refused".into()))];
        let (o, untested) = refuses_client_cert(ClientCertKind::NotYetValid, Some(&w), &tried);
        assert!(
            o.passed && untested.len() == 1,
            "an endpoint that could not be tested is reported, not passed silently"
        );
        let tried = vec![(
            "https://h:2379".to_string(),
            HandshakeOutcome::Accepted { answer: None, client_cert: ClientCert::RequestedNoneSent },
        )];
        let (o, _) = refuses_client_cert(ClientCertKind::Missing, None, &tried);
        assert_eq!(o.message, "etcd https://h:2379 ACCEPTED a client without a certificate");
    }

    #[test]
    fn control_certificate_verdicts() {
        let n = now();
        let w = minted(n - Duration::hours(1), n + Duration::days(1));
        let acc = HandshakeOutcome::Accepted { answer: Some("HTTP/1.1 200 OK".into()), client_cert: ClientCert::Sent };
        let good = ControlProbe {
            endpoint: "https://a:2379".into(),
            handshake: acc.clone(),
            status: Some(Ok("3.4.23".into())),
        };
        assert!(accepts_control_cert(&w, std::slice::from_ref(&good)).0.passed);
        let refused = ControlProbe {
            endpoint: "https://b:2379".into(),
            handshake: HandshakeOutcome::RefusedByServer {
                alert: "BadCertificate".into(),
                client_cert: ClientCert::Sent,
            },
            status: None,
        };
        let (o, _) = accepts_control_cert(&w, &[good.clone(), refused]);
        assert!(!o.passed);
        assert!(o.message.contains("etcd https://b:2379 REFUSED a valid client certificate"), "{}", o.message);
        let no_status = ControlProbe { status: Some(Err("DeadlineExceeded".into())), ..good };
        assert!(!accepts_control_cert(&w, &[no_status]).0.passed);
    }
}
