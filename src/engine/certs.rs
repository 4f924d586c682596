//! The `certs` steps against etcd: mints client certificates with the CA key of the target
//! (in memory only), presents them to every member with direct TLS handshakes, makes a real
//! status request with the control certificate, and reads each member's serving certificate
//! over TLS. The verdicts are pure functions in [`crate::check::certs`].

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;

use super::{CaseState, RunContext, StepEnd};
use crate::check::certs::{self as verdicts, ControlProbe};
use crate::check::CheckOutcome;
use crate::suite::{CheckSpec, ClientCertKind};
use crate::target::{EtcdTarget, Target, TlsMaterial};
use crate::tls::mint::{Ca, LeafSpec, Window};
use crate::tls::{self, HandshakeOutcome, Identity};

/// Common name of every certificate hadrill mints, so that it is recognisable in etcd's logs.
const PROBE_CN: &str = "hadrill-certs-probe";

/// The CA certificate and key that sign etcd's client certificates, when this target has
/// them at hand: the rig's CA certificate and the `ca.key` beside it (or in the rig's
/// directory).
fn ca_files(t: &Target) -> Result<(PathBuf, PathBuf), String> {
    let Some(rig) = &t.rig else {
        return Err("needs the key of the CA that etcd trusts for clients, to sign test certificates (the local rig's ca.key); this target has none".into());
    };
    let candidates = [rig.ca_cert.with_file_name("ca.key"), rig.dir.join("ca.key")];
    match candidates.iter().find(|k| std::fs::metadata(k).is_ok_and(|m| m.is_file())) {
        Some(k) => Ok((rig.ca_cert.clone(), k.clone())),
        None => Err(format!("needs the CA key to sign test certificates: {} not found", candidates[0].display())),
    }
}

/// The `etcd_ca_key` precondition.
pub fn ca_key_available(t: &Target) -> Result<(), String> {
    ca_files(t).map(|_| ())
}

fn load_ca(t: &Target) -> Result<Ca, StepEnd> {
    let (cert, key) = ca_files(t).map_err(StepEnd::Skip)?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| StepEnd::Error(format!("cannot read {}: {e}", p.display())))
    };
    let (c, k) = (read(&cert)?, read(&key)?);
    Ca::from_pem(&c, &k)
        .map_err(|e| StepEnd::Error(format!("cannot sign with {} and {}: {e}", cert.display(), key.display())))
}

fn tls_etcd(ctx: &RunContext) -> Result<(&EtcdTarget, &TlsMaterial), StepEnd> {
    let Some(etcd) = &ctx.target.etcd else {
        return Err(StepEnd::Skip("needs etcd: give --etcd-endpoints or use --rig".into()));
    };
    match &etcd.tls {
        Some(t) if etcd.endpoints.iter().all(|e| e.starts_with("https://")) => Ok((etcd, t)),
        _ => Err(StepEnd::Skip("etcd is reached over plain http: there is no TLS to test".into())),
    }
}

fn deadline(etcd: &EtcdTarget) -> Duration {
    etcd.connect_timeout.max(Duration::from_secs(3))
}

/// Runs one of the certs checks and returns its verdict; endpoints that could not be tested
/// make it an error unless the verdict already failed.
pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let (outcome, untested) = match spec {
        CheckSpec::EtcdRefusesClientCert { kind } => refuses(ctx, *kind, st).await?,
        CheckSpec::EtcdAcceptsControlCert => control(ctx, st).await?,
        CheckSpec::EtcdServingCertValidFor { min_days, peers } => serving(ctx, *min_days, *peers, st).await?,
        other => return Err(StepEnd::Error(format!("not a certs check: {other:?}"))),
    };
    with_untested(outcome, untested)
}

/// A verdict over the endpoints that could be tested: endpoints that could not be are an
/// error when everything else passed (a pass must not hide them), and evidence otherwise.
pub fn with_untested(mut outcome: CheckOutcome, untested: Vec<String>) -> Result<CheckOutcome, StepEnd> {
    if outcome.passed && !untested.is_empty() {
        return Err(StepEnd::Error(untested.join("; ")));
    }
    if !untested.is_empty() {
        outcome.evidence.push_str(&format!("not tested: {}\n", untested.join("; ")));
    }
    Ok(outcome)
}

async fn present_all(
    etcd: &EtcdTarget,
    ca_pem: &[u8],
    id: Option<(&str, &str)>,
) -> Result<Vec<(String, HandshakeOutcome)>, StepEnd> {
    let identity = || id.map(|(c, k)| Identity { cert_pem: c.as_bytes(), key_pem: k.as_bytes() });
    let d = deadline(etcd);
    let results =
        futures::future::join_all(etcd.endpoints.iter().map(|e| tls::handshake(e, ca_pem, identity(), d))).await;
    etcd.endpoints
        .iter()
        .zip(results)
        .map(|(e, r)| r.map(|o| (e.clone(), o)).map_err(|err| StepEnd::Error(format!("etcd {e}: {err}"))))
        .collect()
}

async fn refuses(
    ctx: &RunContext,
    kind: ClientCertKind,
    st: &mut CaseState,
) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let (etcd, material) = tls_etcd(ctx)?;
    if kind == ClientCertKind::Missing {
        (ctx.progress)(
            &st.name,
            &format!("connecting without a client certificate to {} etcd endpoint(s)", etcd.endpoints.len()),
        );
        let tried = present_all(etcd, &material.ca_pem, None).await?;
        for (e, o) in &tried {
            st.timeline.record("tls", format!("{e}: {o}"));
            st.log(format!("{e}: {o}"));
        }
        return Ok(verdicts::refuses_client_cert(kind, None, &tried));
    }
    let ca = load_ca(&ctx.target)?;
    let now = Utc::now();
    let minted = match kind {
        ClientCertKind::Expired => ca.issue(&LeafSpec::client(PROBE_CN, Window::Expired, now)),
        ClientCertKind::NotYetValid => ca.issue(&LeafSpec::client(PROBE_CN, Window::NotYetValid, now)),
        ClientCertKind::UnknownCa | ClientCertKind::Missing => {
            ca.impostor().and_then(|i| i.issue(&LeafSpec::client(PROBE_CN, Window::Valid, now)))
        }
    }
    .map_err(|e| StepEnd::Error(format!("cannot mint the test certificate: {e}")))?;
    let w = verdicts::window_pem(&minted.cert_pem).map_err(|e| StepEnd::Error(e.to_string()))?;
    let what = verdicts::describe_kind(kind, &w);
    (ctx.progress)(&st.name, &format!("presenting {what} to {} etcd endpoint(s)", etcd.endpoints.len()));
    st.log(format!("minted {what}: {}", verdicts::describe_window(&w)));
    let tried = present_all(etcd, &material.ca_pem, Some((&minted.cert_pem, &minted.key_pem))).await?;
    for (e, o) in &tried {
        st.timeline.record("tls", format!("{e}: {o}"));
        st.log(format!("{e}: {o}"));
    }
    Ok(verdicts::refuses_client_cert(kind, Some(&w), &tried))
}

async fn control(ctx: &RunContext, st: &mut CaseState) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let (etcd, material) = tls_etcd(ctx)?;
    let ca = load_ca(&ctx.target)?;
    let minted = ca
        .issue(&LeafSpec::client(PROBE_CN, Window::Valid, Utc::now()))
        .map_err(|e| StepEnd::Error(format!("cannot mint the control certificate: {e}")))?;
    let w = verdicts::window_pem(&minted.cert_pem).map_err(|e| StepEnd::Error(e.to_string()))?;
    (ctx.progress)(
        &st.name,
        &format!("presenting a valid control certificate to {} etcd endpoint(s)", etcd.endpoints.len()),
    );
    st.log(format!("minted the control certificate: {}", verdicts::describe_window(&w)));
    let tried = present_all(etcd, &material.ca_pem, Some((&minted.cert_pem, &minted.key_pem))).await?;
    // the same certificate through etcd-client: a real request, not only a handshake
    let with_control = EtcdTarget {
        tls: Some(TlsMaterial {
            ca_pem: material.ca_pem.clone(),
            cert_pem: Some(minted.cert_pem.clone().into_bytes()),
            key_pem: Some(minted.key_pem.clone().into_bytes()),
        }),
        ..etcd.clone()
    };
    let mut probes = Vec::new();
    for (e, o) in tried {
        let status = if o.is_accepted() { Some(status_with(&with_control, &e).await) } else { None };
        st.timeline.record("tls", format!("{e}: {o}"));
        st.log(format!("{e}: {o}; status: {status:?}"));
        probes.push(ControlProbe { endpoint: e, handshake: o, status });
    }
    Ok(verdicts::accepts_control_cert(&w, &probes))
}

/// A status request through `endpoint` with `etcd`'s TLS material; the etcd version.
async fn status_with(etcd: &EtcdTarget, endpoint: &str) -> Result<String, String> {
    let d = etcd.connect_timeout + etcd.request_timeout;
    let req = async {
        let mut c = etcd.member_client(endpoint).await.map_err(|e| e.to_string())?;
        c.status().await.map(|s| s.version().to_string()).map_err(|e| crate::target::etcd::describe(&e))
    };
    match tokio::time::timeout(d, req).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(d))),
    }
}

async fn serving(
    ctx: &RunContext,
    min_days: i64,
    peers: bool,
    st: &mut CaseState,
) -> Result<(CheckOutcome, Vec<String>), StepEnd> {
    let (etcd, material) = tls_etcd(ctx)?;
    (ctx.progress)(&st.name, &format!("reading the serving certificates of {} etcd endpoint(s)", etcd.endpoints.len()));
    let d = deadline(etcd);
    let chains =
        futures::future::join_all(etcd.endpoints.iter().map(|e| tls::peer_chain(e, Some(&material.ca_pem), d))).await;
    let mut read = Vec::new();
    for (e, c) in etcd.endpoints.iter().zip(chains) {
        let r = match c {
            Ok(chain) => {
                if let Some(Err(p)) = &chain.verified {
                    st.log(format!("{e}: its serving certificate does not verify against the CA bundle: {p}"));
                }
                verdicts::window(&chain.certs[0]).map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        read.push((format!("etcd {e}"), r));
    }
    if peers {
        (ctx.progress)(&st.name, "reading the serving certificates of the etcd peer ports");
        read.extend(super::kubecerts::etcd_peer_windows(ctx, &material.ca_pem, st).await?);
    }
    Ok(verdicts::serving_windows(
        "etcd_serving_cert_valid_for",
        "etcd_serving_cert_days_left",
        &read,
        Utc::now(),
        min_days,
    ))
}
