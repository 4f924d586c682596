//! The kind HA cluster and the example pipelines in `ci/kind/` stay consistent with hadrill:
//! the cluster has the advertised shape, hadrill's config there loads with hadrill's own
//! parser, the scripts parse, and the pipelines publish the report `run.sh` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kind_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/kind")
}

fn yaml(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(kind_dir().join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("ci/kind/{name}: {e}"))
}

fn roles(cluster: &serde_json::Value) -> (usize, usize) {
    let nodes = cluster["nodes"].as_array().expect("nodes");
    let count = |r: &str| nodes.iter().filter(|n| n["role"] == r).count();
    (count("control-plane"), count("worker"))
}

#[test]
fn the_kind_clusters_have_three_control_plane_nodes_and_two_workers() {
    for f in ["kind-ha.yaml", "kind-ha-dind.yaml"] {
        let c = yaml(f);
        assert_eq!(c["kind"], "Cluster", "{f}");
        assert_eq!(roles(&c), (3, 2), "{f}: control-plane and worker counts");
        assert_eq!(c["name"], "hadrill", "{f}: run.sh and the pipelines use the name hadrill");
    }
    let dind = yaml("kind-ha-dind.yaml");
    let patch = dind["kubeadmConfigPatches"][0].as_str().unwrap();
    assert!(patch.contains("- docker"), "under dind the apiserver certificate must name the docker host");
}

#[test]
fn the_hadrill_config_for_kind_loads_and_allows_disruption_only_on_its_context() {
    let c = hadrill::config::Config::load(&kind_dir().join("hadrill.yaml")).unwrap();
    let ctx = c.context.clone().expect("a context");
    assert_eq!(ctx, "kind-hadrill");
    assert_eq!(c.disruption.expect("disruption").allowed_contexts, vec![ctx]);
    assert!(c.node_access.is_some(), "node access is configured (auto: docker on kind)");
}

#[test]
fn the_scripts_parse() {
    for s in ["run.sh", "install-kind.sh"] {
        let out = Command::new("bash").arg("-n").arg(kind_dir().join(s)).output().unwrap();
        assert!(out.status.success(), "{s}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_pipelines_publish_the_junit_that_run_sh_writes() {
    let run = std::fs::read_to_string(kind_dir().join("run.sh")).unwrap();
    assert!(run.contains(r#"--junit "$out/hadrill-junit.xml""#) && run.contains("hadrill-report"));
    let gh = yaml("github-actions.yml");
    let steps = gh["jobs"]["kind-ha"]["steps"].as_array().unwrap();
    let junit = steps
        .iter()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("mikepenz/action-junit-report")))
        .unwrap();
    assert_eq!(junit["with"]["report_paths"], "hadrill-report/hadrill-junit.xml");
    assert_eq!(junit["if"], "always()", "the report is published when a case fails too");
    assert!(steps.iter().any(|s| s["run"].as_str().is_some_and(|r| r.contains("kind-ha.yaml"))));
    let gl = yaml("gitlab-ci.yml");
    let job = &gl["hadrill-kind-ha"];
    assert_eq!(job["artifacts"]["reports"]["junit"], "hadrill-report/hadrill-junit.xml");
    assert_eq!(job["artifacts"]["when"], "always");
    // the kubeconfig carries the admin key: never an artifact
    assert!(job["artifacts"]["exclude"].as_array().unwrap().iter().any(|e| e == "hadrill-report/kubeconfig"));
    // nor in GitHub's uploaded artifact: only the reports are listed, not the directory
    let uploads: Vec<_> =
        steps.iter().filter(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("actions/upload-artifact"))).collect();
    assert!(!uploads.is_empty(), "the reports are kept as an artifact");
    for s in uploads {
        for line in s["with"]["path"].as_str().unwrap().lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                line != "hadrill-report/" && line != "hadrill-report" && !line.contains("kubeconfig"),
                "uploads {line}"
            );
        }
    }
}
