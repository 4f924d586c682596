//! The built-in `certs` suite run by the engine against a real etcd: it passes on an etcd
//! that checks client certificates, and fails, naming the endpoint, the certificate and what
//! happened, on one that does not (no `--client-cert-auth`), on a short-lived serving
//! certificate, and when the CA key at hand is not the one etcd trusts.

mod tls_support;

use std::sync::Arc;

use hadrill::engine::{run_case, RunContext};
use hadrill::fault::Ledger;
use hadrill::report::Verdict;
use hadrill::rig::{Isolation, RigState};
use hadrill::suite::{Suite, Suites};
use hadrill::target::{EtcdTarget, Target, TlsMaterial};
use tls_support::{EtcdOpts, TestEtcd};

fn context(e: &TestEtcd, rig_dir: Option<&std::path::Path>, ledger: &std::path::Path) -> RunContext {
    let tls = TlsMaterial::from_files(&e.ca_crt, Some(&e.client_crt), Some(&e.client_key)).unwrap();
    let etcd = EtcdTarget::new(vec![e.endpoint.clone()], Some(tls)).unwrap();
    // the rig's interface: `<dir>/ca.key` beside the CA certificate that `rig.json` names
    let rig = rig_dir.map(|d| RigState {
        dir: d.to_path_buf(),
        isolation: Isolation::Loopback,
        members: vec![],
        ca_cert: d.join("ca.crt"),
        client_cert: e.client_crt.clone(),
        client_key: e.client_key.clone(),
        election_timeout_ms: 1000,
        heartbeat_interval_ms: 100,
        kube: None,
    });
    let target = Target { label: "test".into(), etcd: Some(etcd), rig, ..Default::default() };
    RunContext {
        target: Arc::new(target),
        ledger: Ledger::open(ledger).unwrap(),
        allow_disruption: false,
        disruption_refusal: "read-only test".into(),
        seed: 1,
        artifacts: None,
        exclusive: Arc::new(tokio::sync::RwLock::new(())),
        progress: Arc::new(|_: &str, _: &str| {}),
    }
}

fn certs_suite() -> Suite {
    let s: Suites = hadrill::suite::builtin().unwrap();
    s.get("certs").expect("suites/certs.yaml is built in").clone()
}

async fn run(ctx: &RunContext, case: &str) -> Verdict {
    let suite = certs_suite();
    let c = suite.cases.iter().find(|c| c.name == case).unwrap_or_else(|| panic!("no case {case}"));
    run_case(ctx, &suite, c).await.verdict
}

fn failed(v: &Verdict) -> &str {
    match v {
        Verdict::Failed { message, .. } => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

const ALL: [&str; 6] = [
    "etcd_refuses_expired_client_cert",
    "etcd_refuses_not_yet_valid_client_cert",
    "etcd_refuses_unknown_ca_client_cert",
    "etcd_accepts_control_client_cert",
    "etcd_refuses_missing_client_cert",
    "etcd_serving_cert_valid_30_days",
];

#[tokio::test]
async fn passes_on_an_etcd_that_checks_client_certificates() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = TestEtcd::start(EtcdOpts::default());
    let ledger = tempfile::tempdir().unwrap();
    let ctx = context(&e, Some(e.dir.path()), ledger.path());
    for case in ALL {
        let v = run(&ctx, case).await;
        assert_eq!(v, Verdict::Passed, "{case}\netcd log:\n{}", e.log());
    }
}

#[tokio::test]
async fn fails_on_an_etcd_without_client_cert_auth_and_a_short_serving_cert() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // no --client-cert-auth and no --trusted-ca-file: etcd does not even ask for a certificate
    let e = TestEtcd::start(EtcdOpts {
        client_cert_auth: false,
        trusted_ca: false,
        serving_days: 10,
        ..Default::default()
    });
    let ledger = tempfile::tempdir().unwrap();
    let ctx = context(&e, Some(e.dir.path()), ledger.path());

    let v = run(&ctx, "etcd_refuses_expired_client_cert").await;
    let m = failed(&v);
    assert!(m.starts_with(&format!("etcd {} ACCEPTED an expired client certificate (notAfter 20", e.endpoint)), "{m}");
    assert!(m.contains("is --client-cert-auth set?"), "{m}");
    let m = failed(&run(&ctx, "etcd_refuses_not_yet_valid_client_cert").await).to_string();
    assert!(m.contains("ACCEPTED a not-yet-valid client certificate (notBefore "), "{m}");
    let m = failed(&run(&ctx, "etcd_refuses_unknown_ca_client_cert").await).to_string();
    assert!(m.contains("ACCEPTED a client certificate signed by an unknown CA"), "{m}");
    // the control still passes: it is the refusals that are missing
    assert_eq!(run(&ctx, "etcd_accepts_control_client_cert").await, Verdict::Passed);

    let m = failed(&run(&ctx, "etcd_refuses_missing_client_cert").await).to_string();
    assert!(m.contains("ACCEPTED a client without a certificate"), "{m}");

    let m = failed(&run(&ctx, "etcd_serving_cert_valid_30_days").await).to_string();
    assert!(m.starts_with(&format!("etcd {} serving certificate expires in 9 days", e.endpoint)), "{m}");
    assert!(m.contains("less than 30"), "{m}");
}

/// Found with etcd 3.4.23: --trusted-ca-file without --client-cert-auth still makes etcd
/// require a client certificate on its client port, so every refusal case passes.
#[tokio::test]
async fn trusted_ca_without_client_cert_auth_still_requires_a_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = TestEtcd::start(EtcdOpts { client_cert_auth: false, ..Default::default() });
    let ledger = tempfile::tempdir().unwrap();
    let ctx = context(&e, Some(e.dir.path()), ledger.path());
    let suite = certs_suite();
    for case in ALL {
        let c = suite.cases.iter().find(|c| c.name == case).unwrap();
        let rec = run_case(&ctx, &suite, c).await;
        eprintln!("{case}: {}", rec.output);
        assert_eq!(rec.verdict, Verdict::Passed, "{case}: {}", rec.output);
    }
}

#[tokio::test]
async fn control_fails_when_the_ca_key_at_hand_is_not_the_one_etcd_trusts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = TestEtcd::start(EtcdOpts::default());
    let ledger = tempfile::tempdir().unwrap();
    let rig = tempfile::tempdir().unwrap();
    let other = hadrill::tls::mint::Ca::generate("not-etcds-ca").unwrap();
    std::fs::write(rig.path().join("ca.crt"), other.cert_pem()).unwrap();
    tls_support::write_secret(&rig.path().join("ca.key"), &other.key_pem());
    let ctx = context(&e, Some(rig.path()), ledger.path());
    let v = run(&ctx, "etcd_accepts_control_client_cert").await;
    let m = failed(&v);
    assert!(
        m.contains(&format!(
            "etcd {} REFUSED a valid client certificate signed by its CA (TLS alert BadCertificate)",
            e.endpoint
        )),
        "{m}"
    );
}

#[tokio::test]
async fn skipped_with_the_reason_without_a_ca_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = TestEtcd::start(EtcdOpts::default());
    let ledger = tempfile::tempdir().unwrap();
    let ctx = context(&e, None, ledger.path());
    for case in &ALL[..4] {
        // (the missing-certificate case needs no key and is not among these)
        match run(&ctx, case).await {
            Verdict::Skipped { reason } => assert!(reason.contains("needs the key of the CA"), "{reason}"),
            other => panic!("{case}: expected skipped, got {other:?}"),
        }
    }
    // the serving certificate needs no key: it still runs
    assert_eq!(run(&ctx, "etcd_serving_cert_valid_30_days").await, Verdict::Passed);

    // a rig directory without ca.key: skipped, naming the missing file
    let rig = tempfile::tempdir().unwrap();
    let ctx = context(&e, Some(rig.path()), ledger.path());
    match run(&ctx, "etcd_refuses_expired_client_cert").await {
        Verdict::Skipped { reason } => assert!(reason.contains("ca.key not found"), "{reason}"),
        other => panic!("expected skipped, got {other:?}"),
    }
}

/// `etcd_serving_cert_valid_for { peers: true }` reads the peer port too (its URL from the
/// member list), and names it when its certificate is short-lived.
#[tokio::test]
async fn the_peer_port_certificate_is_read_and_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = TestEtcd::start(EtcdOpts { peer_tls: true, serving_days: 10, ..Default::default() });
    let ledger = tempfile::tempdir().unwrap();
    let ctx = context(&e, Some(e.dir.path()), ledger.path());
    let v = run(&ctx, "etcd_serving_cert_valid_30_days").await;
    let m = failed(&v);
    assert!(m.contains(&format!("etcd peer {} serving certificate expires in 9 days", e.peer_url)), "{m}\n{}", e.log());
    assert!(m.contains(&format!("etcd {} serving certificate expires in 9 days", e.endpoint)), "{m}");
    let long = TestEtcd::start(EtcdOpts { peer_tls: true, ..Default::default() });
    let ctx = context(&long, Some(long.dir.path()), ledger.path());
    assert_eq!(run(&ctx, "etcd_serving_cert_valid_30_days").await, Verdict::Passed, "{}", long.log());
}
