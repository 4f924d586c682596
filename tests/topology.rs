//! The topology suite can fail: on real rigs of 2 and 4 members it names the member count,
//! and with one member of 3 stopped it names the member that does not answer.

mod rigutil;

use std::time::Duration;

use hadrill::fault::process as proc_;
use hadrill::rig::Isolation;
use nix::sys::signal::Signal;
use rigutil::*;

fn run_topology(d: &RigDir) -> (i32, String, String) {
    hadrill(&["--config", &d.target_yaml(), "run", "topology::"])
}

#[test]
fn two_members_fail_the_member_count() {
    let rt = runtime();
    let d = RigDir::new();
    d.up(&rt, 2, Isolation::Loopback);
    let (code, out, err) = run_topology(&d);
    assert_eq!(code, 1, "{}", show(code, &out, &err));
    assert!(out.contains("FAIL  topology::etcd_member_count"), "{out}");
    assert!(out.contains("2 voting etcd members, expected at least 3"), "{out}");
    // the rest of the suite still passes on a healthy (if small) cluster
    assert!(out.contains("PASS  topology::etcd_one_leader"), "{out}");
}

#[test]
fn four_members_fail_the_member_count() {
    let rt = runtime();
    let d = RigDir::new();
    d.up(&rt, 4, Isolation::Loopback);
    let (code, out, err) = run_topology(&d);
    assert_eq!(code, 1, "{}", show(code, &out, &err));
    assert!(out.contains("FAIL  topology::etcd_member_count"), "{out}");
    assert!(out.contains("4 voting etcd members, expected an odd number"), "{out}");
}

#[test]
fn a_stopped_member_is_named() {
    let rt = runtime();
    let d = RigDir::new();
    let st = d.up(&rt, 3, Isolation::Loopback);
    let m2 = st.member("m2").unwrap().clone();
    assert!(proc_::signal(m2.pid, m2.start_time, Signal::SIGKILL).unwrap());
    assert!(rt.block_on(proc_::wait_gone(m2.pid, m2.start_time, Duration::from_secs(10))));
    let (code, out, err) = run_topology(&d);
    assert_eq!(code, 1, "{}", show(code, &out, &err));
    assert!(out.contains("FAIL  topology::etcd_members_reachable"), "{out}");
    assert!(out.contains("m2 does not answer"), "{out}");
    assert!(out.contains(&m2.client_url), "the evidence names the endpoint\n{out}");
}
