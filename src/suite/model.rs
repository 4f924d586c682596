//! The typed model of a suite file: cases, requirements, steps, faults, probes and checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One suite file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Short name, used as the trial prefix: `topology::member_count`.
    pub suite: String,
    pub description: String,
    pub cases: Vec<Case>,
}

/// One case: what it needs, what it does, what it asserts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// One line, shown by `hadrill list`.
    pub description: String,
    /// Injects faults: runs only with `--allow-disruption` (or on the rig), one at a time.
    #[serde(default)]
    pub disruptive: bool,
    /// Not run unless `--ignored` or `--include-ignored` is given, like `#[ignore = "…"]`.
    #[serde(default)]
    pub ignore: Option<String>,
    /// Preconditions: when one does not hold the case is skipped with the reason.
    #[serde(default)]
    pub requires: Vec<Requirement>,
    pub steps: Vec<Step>,
}

/// A precondition on the target.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Requirement {
    /// An etcd cluster reachable with client credentials.
    Etcd,
    /// At least this many etcd members.
    EtcdMembers { min: usize },
    /// Exactly this many etcd members.
    EtcdMembersExactly(usize),
    /// Node access that can signal and restart etcd members (the rig's `local` access).
    MemberProcessAccess,
    /// Members in network namespaces of their own, so packets can be dropped between them.
    MemberNetworkIsolation,
    /// A Kubernetes API through a kubeconfig.
    Kubernetes,
    /// The key of the CA that etcd trusts for clients is at hand (the rig's `ca.key`), so
    /// client certificates can be minted for the `certs` suite.
    EtcdCaKey,
    /// The key of the cluster CA (the one the apiservers trust for clients) can be had: from
    /// `kube_ca_key` in the config, the rig's kube PKI, or a control-plane node through node
    /// access (read into memory, never written here).
    KubeCaKey,
    /// Control-plane nodes that run a kubelet (a Kubernetes cluster; not the local rig).
    Kubelet,
}

/// A step of a case, run in order. Faults injected by earlier steps stay until a `heal` step
/// or the end of the case, whichever comes first; they are reverted even when a step fails.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Start a background probe; it runs until the end of the case.
    Probe(ProbeSpec),
    /// Inject a fault (journaled first, reverted at `heal` or at the end).
    Inject(FaultSpec),
    /// Wait for a condition, bounded by a deadline; failing to see it fails the case.
    Await(AwaitSpec),
    /// Assert something; a failed check fails the case, later steps still revert faults.
    Check(CheckSpec),
    /// Revert every fault injected so far, in reverse order.
    Heal,
}

/// Which member a fault is aimed at, resolved at the moment of injection.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Leader,
    Follower,
    Any,
}

/// How a member process is stopped.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    #[default]
    Kill,
    Term,
}

/// A fault to inject.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Stop etcd member processes (SIGKILL by default); revert restarts them on their data.
    MemberKill {
        role: MemberRole,
        #[serde(default = "one")]
        count: usize,
        #[serde(default)]
        signal: StopSignal,
    },
    /// Freeze member processes with SIGSTOP; revert sends SIGCONT.
    MemberPause {
        role: MemberRole,
        #[serde(default = "one")]
        count: usize,
    },
    /// Drop the peer traffic of the chosen members in both directions.
    Partition {
        /// Members cut off together, chosen by role at injection.
        isolate: PartitionSide,
        /// The dead-man timer: the rules remove themselves after this long even if hadrill
        /// dies.
        #[serde(default = "default_dead_man", with = "humantime_serde")]
        dead_man: Duration,
    },
    /// Delay the peer traffic of the chosen members (tc netem).
    PeerLatency {
        role: MemberRole,
        #[serde(default = "one")]
        count: usize,
        #[serde(with = "humantime_serde")]
        delay: Duration,
        #[serde(default = "default_dead_man", with = "humantime_serde")]
        dead_man: Duration,
    },
    /// Stop the kubelet on a control-plane node (`systemctl stop kubelet` through node
    /// access); revert starts it. Needs nodes with a kubelet (not the rig).
    KubeletStop {
        /// Which node: `any`, or the node hosting the leader of `leader_of`.
        #[serde(default)]
        pick: InstancePick,
    },
    /// Stop one instance of a control-plane component: on kubeadm/kind its static-pod
    /// manifest is moved aside on its node; on the rig its process gets `signal`. Revert
    /// brings it back with the same flags and data.
    ComponentStop {
        component: Component,
        #[serde(default)]
        pick: InstancePick,
        #[serde(default)]
        signal: StopSignal,
    },
    /// Cut the etcd member on one control-plane node off from its peers with iptables rules
    /// *on that node* (tagged hadrill), with a dead-man timer that also runs on the node.
    NodeEtcdPartition {
        #[serde(default)]
        pick: InstancePick,
        #[serde(default = "default_dead_man", with = "humantime_serde")]
        dead_man: Duration,
    },
    /// Lab: the serving certificate of one apiserver (`apiserver.crt` on its node) is replaced
    /// by an expired copy (same names, same key) signed by the cluster CA; the original is
    /// backed up on the node and put back byte for byte on revert.
    ApiserverCertExpired {
        #[serde(default)]
        pick: InstancePick,
    },
    /// Delay the etcd peer traffic of the member on one control-plane node (tc netem *on that
    /// node*), with a dead-man timer on the node.
    NodePeerLatency {
        #[serde(default)]
        pick: InstancePick,
        #[serde(with = "humantime_serde")]
        delay: Duration,
        #[serde(default = "default_dead_man", with = "humantime_serde")]
        dead_man: Duration,
    },
}

/// A control-plane component.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Apiserver,
    ControllerManager,
    Scheduler,
    Etcd,
    Kubelet,
}

impl Component {
    /// The kubeadm static pod's container and manifest name (`kube-apiserver` …).
    pub fn static_pod(self) -> &'static str {
        match self {
            Component::Apiserver => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Etcd => "etcd",
            Component::Kubelet => "kubelet",
        }
    }
    /// The leader-election lease in kube-system, for the components that elect a leader.
    pub fn lease(self) -> Option<&'static str> {
        match self {
            Component::ControllerManager => Some("kube-controller-manager"),
            Component::Scheduler => Some("kube-scheduler"),
            _ => None,
        }
    }
}

/// Which instance a fault is aimed at, decided at injection.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InstancePick {
    /// Any instance (chosen with the run's seed).
    #[default]
    Any,
    /// The current leader: the lease holder for the controller-manager and the scheduler,
    /// the raft leader for etcd. For the kubelet: the node hosting that component's leader.
    Leader,
    /// Any instance that is not the leader.
    NotLeader,
    /// The kubelet only: the node that hosts the leader of this component.
    LeaderOf(Component),
}

/// The side of a partition that is cut off from the rest.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PartitionSide {
    /// The leader alone (a minority of one).
    Leader,
    /// The leader and enough followers to stay a minority.
    LeaderMinority,
    /// This many followers.
    Followers(usize),
    /// A majority of members that does not include the leader.
    FollowerMajority,
}

/// A background probe.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeSpec {
    /// Puts unique keys at a steady rate; records each as acknowledged, failed or unknown.
    EtcdWrites {
        #[serde(default = "default_rate")]
        per_second: u32,
        #[serde(default = "default_request_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
    /// Polls every member's status (leader, term, raft index, revision).
    EtcdStatus {
        #[serde(default = "default_interval", with = "humantime_serde")]
        interval: Duration,
    },
    /// Updates and reads a ConfigMap in a scratch namespace through the kubeconfig server (the
    /// load balancer) at a steady rate, with one reused client and one new connection per
    /// request; records every outcome.
    KubeApi {
        #[serde(default = "default_kube_rate")]
        per_second: u32,
        #[serde(default = "default_request_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
    /// Watches the controller-manager and scheduler leases and the control-plane nodes' Ready
    /// conditions; records holder changes and Ready transitions.
    KubeWatch,
    /// Asks every apiserver for `/readyz` on its own address at this interval; records when
    /// each stops and starts answering 200 (timeline evidence for the load balancer's view).
    KubeApiserverHealth {
        #[serde(default = "default_health_interval", with = "humantime_serde")]
        interval: Duration,
    },
}

/// A condition to wait for, with its deadline.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AwaitSpec {
    /// The write probe has this many acknowledged writes since the step began.
    AcknowledgedWrites {
        count: usize,
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// A leader is known to a majority of the reachable members.
    Leader {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Let the probes run for this long (a measurement window, not a wait for a state).
    Observe {
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Both clients of the API probe have this many successful requests since the step began.
    KubeApiAnswers {
        count: usize,
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// The node the last fault hit turns NotReady (Ready `False` or `Unknown`) within the
    /// controller-manager's node-monitor grace period plus `slack` (or `within`, when given),
    /// measured from the fault.
    NodeNotReady {
        #[serde(default, with = "humantime_serde")]
        within: Option<Duration>,
        #[serde(default = "default_slack", with = "humantime_serde")]
        slack: Duration,
    },
    /// Every control-plane node is Ready again.
    NodesReady {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Another instance holds the component's lease within leaseDurationSeconds + its
    /// `--leader-elect-retry-period` + `slack`, measured from the fault.
    LeaseTakeover {
        component: Component,
        #[serde(default = "default_slack", with = "humantime_serde")]
        slack: Duration,
    },
}

/// An assertion.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckSpec {
    /// The member count is at least `min`, and odd when `odd` is set.
    EtcdMemberCount {
        #[serde(default = "three")]
        min: usize,
        #[serde(default = "yes")]
        odd: bool,
    },
    /// Every member is started (has a name and client URLs) and answers a status request.
    EtcdMembersReachable,
    /// Exactly one member is leader.
    EtcdOneLeader,
    /// Every member reports the same leader and the same raft term.
    EtcdLeaderAgreement,
    /// The largest DB is at most `max_ratio` times the smallest.
    EtcdDbSizeSpread {
        #[serde(default = "default_ratio")]
        max_ratio: f64,
    },
    /// The write probe kept getting acknowledgements during the window: no gap longer than
    /// `max_gap` between acknowledged writes.
    WritesContinue {
        #[serde(with = "humantime_serde")]
        max_gap: Duration,
    },
    /// After the last fault, a new leader is elected and the first write is acknowledged
    /// within `within` (or `election_timeouts` times the election timeout, when given).
    Failover {
        #[serde(default, with = "humantime_serde")]
        within: Option<Duration>,
        #[serde(default)]
        election_timeouts: Option<f64>,
    },
    /// Writes fail (none acknowledged) for a window after the fault.
    WritesFail {
        #[serde(with = "humantime_serde")]
        window: Duration,
    },
    /// Linearizable reads fail through every reachable member.
    LinearizableReadsFail,
    /// Serializable reads still answer through the surviving members.
    SerializableReadsAnswer,
    /// The isolated old leader stops acknowledging writes sent to it.
    IsolatedLeaderRefusesWrites,
    /// The majority side elected a leader other than the isolated one.
    MajorityElectsNewLeader {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Every acknowledged write of the probe is readable (linearizable read).
    NoLostWrites,
    /// Every member reaches the same revision and the same KV hash.
    Converged {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Writes succeed right now (a put through the cluster is acknowledged).
    WritesSucceed {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Test-only: ends the case with the named outcome, so hadrill's own tests can drive the
    /// runner and the reporters without a cluster. Refused when loading unless
    /// `HADRILL_SELFTEST=1`; never allowed in a built-in suite.
    HarnessSelftest(SelftestOutcome),
    /// Every etcd member refuses a client certificate of this kind (signed for the occasion),
    /// or a client without one (`missing`), with a TLS alert that is named.
    EtcdRefusesClientCert { kind: ClientCertKind },
    /// Every etcd member accepts a valid client certificate signed by its CA, and answers a
    /// status request made with it (the control for the refusals).
    EtcdAcceptsControlCert,
    /// Every etcd member's serving certificate (client port, read over TLS) stays valid for
    /// at least `min_days`.
    EtcdServingCertValidFor {
        #[serde(default = "default_min_days")]
        min_days: i64,
        /// Also read each member's peer port (its peer URL from the member list).
        #[serde(default)]
        peers: bool,
    },
    /// The Kubernetes control-plane node count is at least `min`, and odd when `odd` is set.
    KubeControlPlaneCount {
        #[serde(default = "three")]
        min: usize,
        #[serde(default = "yes")]
        odd: bool,
    },
    /// The kubeconfig server is a load balancer, not one control-plane node's address.
    KubeServerIsLoadBalancer,
    /// The controller-manager and scheduler leases are held and renewed within their duration.
    KubeLeasesRenewed,
    /// The disaster-recovery drill: a marker, a snapshot streamed from a member (within
    /// `within`), `snapshot status`, a second marker, the snapshot restored into a scratch
    /// member on this machine: the first marker is there, the second is not.
    EtcdSnapshotRestores {
        #[serde(default = "default_snapshot_within", with = "humantime_serde")]
        within: Duration,
    },
    /// Every apiserver (each address and the load balancer) refuses a client certificate of
    /// this kind signed for the occasion (or a request without one), naming how: a TLS alert
    /// or `401 Unauthorized`.
    ApiserverRefusesClientCert { kind: ClientCertKind },
    /// Every apiserver (and the load balancer) authenticates a valid client certificate signed
    /// by the cluster CA as its own user (the control for the refusals).
    ApiserverAcceptsControlCert,
    /// Every Kubernetes serving certificate read over TLS (each apiserver, the load balancer,
    /// each control-plane kubelet on 10250, etcd client and peer ports) stays valid for at
    /// least `min_days`.
    KubeServingCertsValidFor {
        #[serde(default = "default_min_days")]
        min_days: i64,
    },
    /// On every control-plane node reachable through node access, every certificate in
    /// `kubeadm certs check-expiration` stays valid for at least `min_days`.
    KubeadmCertsValidFor {
        #[serde(default = "default_min_days")]
        min_days: i64,
    },
    /// The live versions (each apiserver's `/version`, kubelets, kube-proxy, controller-manager,
    /// scheduler, local kubectl) obey the version-skew policy in `fixtures/skew-policy.yaml`.
    VersionSkew,
    /// `kubeadm upgrade apply vX.(Y+2).0 --dry-run` on a control-plane node is refused with
    /// kubeadm's one-minor-at-a-time error (after `kubeadm upgrade plan`). Nothing else runs.
    KubeadmRefusesSkippingAMinor,
    /// After `apiserver_cert_expired`: a direct TLS connection to that apiserver reports its
    /// certificate as expired within `within` (the apiserver reloads it from disk by itself).
    ApiserverServesExpiredCert {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// After `apiserver_cert_expired`: requests through the load balancer keep succeeding once
    /// its health check has dropped that backend: from at most `within` after the expired
    /// certificate is served, every request during `window` succeeds.
    LbRoutesAroundExpiredCert {
        #[serde(with = "humantime_serde")]
        within: Duration,
        #[serde(with = "humantime_serde")]
        window: Duration,
    },
    /// After the heal of `apiserver_cert_expired`: that apiserver serves a certificate that
    /// verifies again within `within` (it reloads the restored file), so later cases find it
    /// as it was.
    ApiserverServesValidCert {
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// Through the load balancer, the API probe's longest run of failed requests (each
    /// client: reused and new connections) lasted at most `max_disruption` since the fault.
    KubeApiAvailable {
        #[serde(default = "default_max_disruption", with = "humantime_serde")]
        max_disruption: Duration,
    },
    /// Every apiserver answers `/livez` and `/readyz` 200 on its own address (verified with the
    /// cluster CA, as the kubeconfig user); with `within`, waits until they all do.
    KubeApiserversReady {
        #[serde(default, with = "humantime_serde")]
        within: Option<Duration>,
    },
    /// The certificate served at the kubeconfig server has a SAN that covers its host.
    KubeServerCertCoversServer,
}

/// How a `harness_selftest` check ends its case.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SelftestOutcome {
    Pass,
    Fail,
    Error,
    Panic,
    Skip,
}

/// What is wrong with a client certificate that the `certs` suite presents.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertKind {
    /// Signed by the right CA; its notAfter has passed.
    Expired,
    /// Signed by the right CA; its notBefore is in the future.
    NotYetValid,
    /// Valid dates, signed by a CA with the same name as the right one and another key.
    UnknownCa,
    /// No client certificate at all.
    Missing,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn default_ratio() -> f64 {
    2.0
}
fn default_rate() -> u32 {
    20
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_min_days() -> i64 {
    crate::check::certs::DEFAULT_MIN_DAYS
}
fn default_snapshot_within() -> Duration {
    Duration::from_secs(300)
}
fn default_kube_rate() -> u32 {
    5
}
fn default_health_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_slack() -> Duration {
    Duration::from_secs(10)
}
fn default_max_disruption() -> Duration {
    Duration::from_secs(3)
}
fn default_dead_man() -> Duration {
    Duration::from_secs(120)
}

impl Case {
    /// The faults this case would inject, for `plan`.
    pub fn faults(&self) -> impl Iterator<Item = &FaultSpec> {
        self.steps.iter().filter_map(|s| match s {
            Step::Inject(f) => Some(f),
            _ => None,
        })
    }
}
