//! The Kubernetes checks of a case: discover the control plane through the target's
//! kubeconfig (read-only), record what was found in the timeline, and apply the pure check.

use chrono::Utc;

use super::{CaseState, RunContext, StepEnd};
use crate::check::{kube_topology, CheckOutcome};
use crate::suite::CheckSpec;
use crate::target::discovery::{self, Discovery};

/// Runs a `kube_*` check against the target's Kubernetes API.
pub async fn check(ctx: &RunContext, spec: &CheckSpec, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let Some(k) = &ctx.target.kube else {
        return Err(StepEnd::Skip("needs a Kubernetes API: give --kubeconfig (or KUBECONFIG)".into()));
    };
    // a rig that runs no controller-manager or scheduler (kube-apiserver alone) has no lease
    // of theirs: that lease is not checked, and with neither the case is skipped
    let absent = match spec {
        CheckSpec::KubeLeasesRenewed => super::controlplane::rig_absent_leases(&ctx.target),
        _ => Vec::new(),
    };
    if !absent.is_empty() && absent.len() == discovery::LEASES.len() {
        let why: Vec<String> = absent.into_iter().map(|(_, why)| why).collect();
        return Err(StepEnd::Skip(why.join("; ")));
    }
    let client = kube::Client::try_from(k.config.clone())
        .map_err(|e| StepEnd::Error(format!("kubeconfig {}: {}", k.kubeconfig.display(), crate::exit::chain(&e))))?;
    (ctx.progress)(&st.name, "discovering the control plane");
    let d = discover(&client, &k.server, st).await?;
    if !absent.is_empty() {
        let names: Vec<&str> = discovery::LEASES.into_iter().filter(|l| absent.iter().all(|(a, _)| a != l)).collect();
        let why: Vec<String> = absent.into_iter().map(|(_, why)| why).collect();
        return Ok(kube_topology::leases_renewed_of(&d, Utc::now(), &names, &why));
    }
    Ok(apply(spec, &d, Utc::now()))
}

async fn discover(client: &kube::Client, server: &str, st: &mut CaseState) -> Result<Discovery, StepEnd> {
    let d = discovery::discover(client, server)
        .await
        .map_err(|e| StepEnd::Error(format!("cannot discover the control plane: {}", crate::exit::chain(&e))))?;
    st.timeline.record(
        "probe:kube-discovery",
        format!(
            "{} control-plane nodes, {} apiserver endpoints, etcd {:?}, server {}",
            d.nodes.len(),
            d.apiservers.len(),
            d.etcd.topology,
            d.server
        ),
    );
    Ok(d)
}

/// The pure part: a check spec over a discovery at `now`.
pub fn apply(spec: &CheckSpec, d: &Discovery, now: chrono::DateTime<Utc>) -> CheckOutcome {
    match spec {
        CheckSpec::KubeControlPlaneCount { min, odd } => kube_topology::control_plane_count(d, *min, *odd),
        CheckSpec::KubeServerIsLoadBalancer => kube_topology::server_is_load_balancer(d),
        CheckSpec::KubeLeasesRenewed => kube_topology::leases_renewed(d, now),
        other => CheckOutcome::fail(
            "unsupported",
            format!("check `{}` is not a Kubernetes topology check", serde_json::to_string(other).unwrap_or_default()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Timeline;
    use crate::target::discovery::tests::{fixture, kubeadm_routes, mock_client, route};
    use std::sync::Arc;

    fn state() -> CaseState {
        CaseState {
            name: "topology::kube".into(),
            timeline: Arc::new(Timeline::new()),
            output: String::new(),
            measurements: vec![],
            guards: vec![],
            probes: Default::default(),
            rng: rand::SeedableRng::seed_from_u64(1),
            last_fault_at: None,
            leader_before_fault: None,
            faulted_members: vec![],
        }
    }

    #[tokio::test]
    async fn checks_run_over_a_discovery_through_the_api() {
        let (client, _, _t) = mock_client(kubeadm_routes("pods-kube-system-stacked.json"));
        let mut st = state();
        let d = discover(&client, "https://10.0.0.12:6443", &mut st).await.ok().unwrap();
        assert!(st
            .timeline
            .events()
            .iter()
            .any(|e| e.message.contains("3 control-plane nodes, 3 apiserver endpoints")));
        assert!(apply(&CheckSpec::KubeControlPlaneCount { min: 3, odd: true }, &d, Utc::now()).passed);
        let lb = apply(&CheckSpec::KubeServerIsLoadBalancer, &d, Utc::now());
        assert!(!lb.passed && lb.message.contains("cp-2"), "{}", lb.message);
        // the fixture's leases were renewed in 2024: stale now
        let leases = apply(&CheckSpec::KubeLeasesRenewed, &d, Utc::now());
        assert!(!leases.passed, "{}", leases.message);
    }

    #[tokio::test]
    async fn a_forbidden_discovery_is_a_harness_error_naming_the_permission() {
        let mut routes = kubeadm_routes("pods-kube-system-stacked.json");
        routes.retain(|r| r.path != "/api/v1/nodes");
        routes.push(route("/api/v1/nodes", None, 403, fixture("status-403-nodes.json")));
        let (client, _, _t) = mock_client(routes);
        let mut st = state();
        match discover(&client, "https://10.0.0.10:6443", &mut st).await {
            Err(StepEnd::Error(m)) => assert!(m.contains("grant `list` on `nodes`"), "{m}"),
            _ => panic!("expected a harness error"),
        }
    }

    /// Against a real cluster when HADRILL_E2E_KUBECONFIG is set; skipped (with the reason
    /// printed) otherwise.
    #[tokio::test]
    async fn e2e_discovery_on_a_real_cluster() {
        let Some(path) = std::env::var_os("HADRILL_E2E_KUBECONFIG") else {
            eprintln!("skipped: HADRILL_E2E_KUBECONFIG is not set (no real cluster to discover)");
            return;
        };
        let k = crate::target::kube::KubeTarget::load(std::path::Path::new(&path), None).await.unwrap();
        let client = kube::Client::try_from(k.config.clone()).unwrap();
        let d = discovery::discover(&client, &k.server).await.unwrap();
        eprintln!("{}", discovery::render(&d, Utc::now()));
        assert!(!d.nodes.is_empty(), "a cluster has at least one control-plane node");
        assert!(!d.apiservers.is_empty(), "the kubernetes EndpointSlice lists at least one apiserver");
        assert!(d.leases.iter().any(|l| l.exists), "leader election leases exist on a live control plane");
    }
}
