//! `hadrill plan`: the selected cases, the faults each would inject, where, and how each is
//! reverted. Reads the target's configuration and, for a Kubernetes target, discovers the
//! control plane (list and get only); changes nothing.

use super::{load_suites, require_selection, target, Global};
use crate::exit::{Code, Fatal};
use crate::runner::{self, Selection};
use crate::suite::{FaultSpec, InstancePick, MemberRole, PartitionSide, StopSignal};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sel: Selection,
}

pub fn plan(g: &Global, args: PlanArgs) -> Result<Code, Fatal> {
    let resolved = target::resolve(g)?;
    let suites = load_suites(g, Some(&resolved.config))?;
    require_selection(&suites, &args.sel)?;
    let rt = super::runtime()?;
    // no target at all: the cases only; a target that is given but broken (a malformed
    // kubeconfig, a missing CA file …) is refused like anywhere else
    let t = match rt.block_on(target::build(&resolved, None)) {
        Ok(t) => Some(t),
        Err(e) if e.message == target::NO_TARGET => None,
        Err(e) => return Err(e),
    };
    let access = match t.as_ref().and_then(|t| t.rig.as_ref()) {
        Some(r) => format!("local node access on rig {}", r.dir.display()),
        None => "the target's node access".to_string(),
    };
    match &t {
        Some(t) => {
            println!("target: {}", t.label);
            for (k, v) in &t.facts {
                println!("  {k}: {v}");
            }
        }
        None => println!("target: (none configured; plan shows the cases only)"),
    }
    let mut cluster = None;
    if let Some(k) = t.as_ref().and_then(|t| t.kube.as_ref()) {
        let (text, cp, d) = rt
            .block_on(crate::controlplane::discovered::plan_report(k, resolved.config.node_access.as_ref()))
            .map_err(|e| {
                let m = format!(
                    "Kubernetes API {} (context {}): cannot discover the control plane: {}",
                    k.server,
                    k.context,
                    crate::exit::chain(&e)
                );
                if e.is_permission() {
                    Fatal::usage(m)
                } else {
                    Fatal::unreachable(m)
                }
            })?;
        print!("{text}");
        cluster = Some((cp, d));
    }
    println!();
    let mut faults = 0;
    for (s, c) in runner::selected(&suites, &args.sel) {
        let w = writes(&s.suite, &c);
        let tag = match (c.disruptive, w.is_empty()) {
            (true, _) => " [disruptive]",
            (false, false) => " [no faults; writes]",
            (false, true) => " [read-only]",
        };
        println!("{}::{}{tag}  {}", s.suite, c.name, c.description);
        for f in c.faults() {
            faults += 1;
            println!("    inject: {} via {access}", describe(f));
            println!("    revert: {}", revert(f));
            if let Some((cp, d)) = cluster.as_ref().filter(|_| t.as_ref().is_some_and(|t| t.rig.is_none())) {
                for line in crate::controlplane::discovered::plan_lines(cp, d, f) {
                    println!("      {line}");
                }
            }
        }
        for line in w {
            println!("    writes: {line}");
        }
        if let Some(w) = crate::engine::failover::plan_writes(&c) {
            println!("    writes: {w}");
        }
    }
    println!("\n{faults} fault(s) would be injected; every one is journaled in the ledger before it is applied.");
    Ok(Code::Ok)
}

fn role(r: MemberRole, count: usize) -> String {
    let who = match r {
        MemberRole::Leader => "the etcd leader",
        MemberRole::Follower => "etcd follower(s)",
        MemberRole::Any => "etcd member(s)",
    };
    if count == 1 && r == MemberRole::Leader {
        format!("{who} (chosen at injection)")
    } else {
        format!("{count} {who} (chosen at injection)")
    }
}

/// What a case writes besides its faults (each removed at the end of the case).
pub fn writes(suite: &str, c: &crate::suite::Case) -> Vec<String> {
    use crate::suite::{CheckSpec, ProbeSpec, Step};
    let mut out = Vec::new();
    for s in &c.steps {
        match s {
            Step::Probe(ProbeSpec::EtcdWrites { per_second, .. }) => out.push(format!(
                "etcd keys /hadrill/<run>/{suite}/{}/… at {per_second}/s (deleted at the end of the case)",
                c.name
            )),
            Step::Check(CheckSpec::EtcdSnapshotRestores { .. }) => {
                out.push(format!(
                    "two marker keys /hadrill/<run>/{suite}/{}/… in etcd (deleted at the end of the case)",
                    c.name
                ));
                out.push(
                    "a snapshot of etcd (every Secret of the cluster) into a 0600 file under $TMPDIR/hadrill-dr-…, and a scratch etcd on loopback restored from it (both removed at the end of the case; journaled for `hadrill recover`)"
                        .into(),
                );
            }
            _ => {}
        }
    }
    out
}

/// One line: what a fault does.
pub fn describe(f: &FaultSpec) -> String {
    match f {
        FaultSpec::MemberKill { role: r, count, signal } => format!(
            "{} {}",
            match signal {
                StopSignal::Kill => "SIGKILL",
                StopSignal::Term => "SIGTERM",
            },
            role(*r, *count)
        ),
        FaultSpec::MemberPause { role: r, count } => format!("SIGSTOP {}", role(*r, *count)),
        FaultSpec::Partition { isolate, dead_man } => format!(
            "drop peer traffic both ways around {} (iptables in their namespaces, dead-man timer {}s)",
            match isolate {
                PartitionSide::Leader => "the leader alone".to_string(),
                PartitionSide::LeaderMinority => "the leader and a minority".to_string(),
                PartitionSide::Followers(n) => format!("{n} follower(s)"),
                PartitionSide::FollowerMajority => "a majority of followers".to_string(),
            },
            dead_man.as_secs()
        ),
        FaultSpec::PeerLatency { role: r, count, delay, .. } => {
            format!("add {} ms latency (tc netem) to the peer traffic of {}", delay.as_millis(), role(*r, *count))
        }
        FaultSpec::KubeletStop { pick } => format!("stop the kubelet (systemctl) on {}", node_pick(*pick)),
        FaultSpec::ComponentStop { component, pick, signal } => format!(
            "stop {} {} (static pod: manifest moved aside on its node; rig: {})",
            instance_pick(*pick),
            component.static_pod(),
            match signal {
                StopSignal::Kill => "SIGKILL",
                StopSignal::Term => "SIGTERM",
            }
        ),
        FaultSpec::NodeEtcdPartition { pick, dead_man } => format!(
            "drop the peer traffic of {} etcd member on its node (iptables on the node, dead-man timer {}s on the node)",
            instance_pick(*pick),
            dead_man.as_secs()
        ),
        FaultSpec::ApiserverCertExpired { pick } => format!(
            "replace the serving certificate (apiserver.crt) of {} kube-apiserver by an expired copy signed by the cluster CA",
            instance_pick(*pick)
        ),
        FaultSpec::NodePeerLatency { pick, delay, dead_man } => format!(
            "add {} ms latency (tc netem on the node) to the peer traffic of {} etcd member, dead-man timer {}s on the node",
            delay.as_millis(),
            instance_pick(*pick),
            dead_man.as_secs()
        ),
    }
}

fn instance_pick(p: InstancePick) -> String {
    match p {
        InstancePick::Any => "one instance of".into(),
        InstancePick::Leader => "the leader of".into(),
        InstancePick::NotLeader => "a non-leader instance of".into(),
        InstancePick::LeaderOf(c) => format!("the instance on the node of the {} leader of", c.static_pod()),
    }
}

fn node_pick(p: InstancePick) -> String {
    match p {
        InstancePick::LeaderOf(c) => format!("the control-plane node hosting the {} leader", c.static_pod()),
        _ => "a control-plane node (chosen at injection)".into(),
    }
}

/// One line: how it is reverted.
pub fn revert(f: &FaultSpec) -> String {
    match f {
        FaultSpec::MemberKill { .. } => "restart the member with its flags and data directory".into(),
        FaultSpec::MemberPause { .. } => "SIGCONT".into(),
        FaultSpec::Partition { .. } => "delete the rules (or the dead-man timer does, if hadrill dies)".into(),
        FaultSpec::PeerLatency { .. } => "delete the netem qdisc (or the dead-man timer does)".into(),
        FaultSpec::KubeletStop { .. } => "systemctl start kubelet on the same node".into(),
        FaultSpec::ComponentStop { .. } => {
            "move the manifest back (the kubelet restarts the pod); rig: restart the process with its flags and data"
                .into()
        }
        FaultSpec::NodeEtcdPartition { .. } => {
            "delete the rules on the node (or the dead-man timer on the node does, even if the API is down)".into()
        }
        FaultSpec::ApiserverCertExpired { .. } => {
            "copy the backed-up apiserver.crt back over it, byte for byte (the apiserver reloads it)".into()
        }
        FaultSpec::NodePeerLatency { .. } => {
            "delete the netem qdisc on the node (or the dead-man timer on the node does)".into()
        }
    }
}
