//! The failover suite and the Kubernetes part of `hadrill recover` on the real binary, against
//! a kubeconfig whose server refuses connections (no apiserver can run here): the suite is
//! listed, a run exits 3 with one line naming the server, and `recover` reports that it could
//! not look for leftover scratch namespaces (exit 1) instead of claiming all is clean.

use std::process::{Command, Output};

fn hadrill(dir: &std::path::Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .args(args)
        .env("HOME", dir)
        .env("HADRILL_LEDGER", dir.join("ledger"))
        .env_remove("KUBECONFIG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let shown = format!(
        "command: hadrill {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, shown)
}

/// A kubeconfig whose server is a closed port on 127.0.0.1.
fn refusing_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{ server: \"https://127.0.0.1:{port}\" }}\nusers:\n- name: u\n  user: {{ token: abc }}\ncontexts:\n- name: lab\n  context: {{ cluster: c, user: u }}\ncurrent-context: lab\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn the_failover_suite_is_listed_disruptive() {
    let d = tempfile::tempdir().unwrap();
    let (out, shown) = hadrill(d.path(), &["list"]);
    assert!(out.status.success(), "{shown}");
    let text = String::from_utf8_lossy(&out.stdout);
    for case in [
        "failover::kubelet_stop_node_not_ready",
        "failover::apiserver_stop_lb_routes_around",
        "failover::controller_manager_leader_takeover",
        "failover::scheduler_leader_takeover",
        "failover::etcd_member_partitioned_on_node",
    ] {
        let line = text.lines().find(|l| l.contains(case)).unwrap_or_else(|| panic!("{case} missing\n{shown}"));
        assert!(line.contains("[disruptive]"), "{line}");
    }
    assert!(
        text.contains("topology::kube_apiservers_live_and_ready")
            && text.contains("topology::kube_server_cert_covers_server"),
        "{shown}"
    );
}

#[test]
fn a_run_against_an_unreachable_api_exits_3_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let kc = refusing_kubeconfig(d.path());
    let (out, shown) =
        hadrill(d.path(), &["--kubeconfig", kc.to_str().unwrap(), "run", "failover::", "--allow-disruption"]);
    assert_eq!(out.status.code(), Some(3), "{shown}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{shown}");
    assert!(err.contains("Kubernetes API https://127.0.0.1:") && err.contains("(context lab)"), "{shown}");
}

#[test]
fn recover_says_when_it_cannot_look_for_leftover_namespaces() {
    let d = tempfile::tempdir().unwrap();
    let kc = refusing_kubeconfig(d.path());
    let (out, shown) = hadrill(d.path(), &["--kubeconfig", kc.to_str().unwrap(), "recover"]);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot look for leftover scratch namespaces in context lab: list namespaces labelled app.kubernetes.io/managed-by=hadrill,hadrill.io/role=scratch:"),
        "{shown}"
    );
    // without a kubeconfig, recover does not touch any cluster
    let (out, shown) = hadrill(d.path(), &["recover"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("namespace"), "{shown}");
}

#[test]
fn plan_names_the_scratch_namespace_a_case_writes() {
    let d = tempfile::tempdir().unwrap();
    let (out, shown) = hadrill(d.path(), &["plan", "failover::"]);
    assert!(out.status.success(), "{shown}");
    let text = String::from_utf8_lossy(&out.stdout);
    let writes = text
        .lines()
        .filter(|l| l.trim_start().starts_with("writes: ConfigMaps probe-reused, probe-fresh in a scratch namespace"))
        .count();
    // the two cases with an API probe: kubelet stop and apiserver stop
    assert_eq!(writes, 2, "{shown}");
}
