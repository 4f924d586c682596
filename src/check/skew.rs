//! The Kubernetes version-skew policy (`fixtures/skew-policy.yaml`, embedded) and pure
//! functions that check component versions against it, naming the component, the node and
//! both versions of every violation.

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

use super::CheckOutcome;

const POLICY_YAML: &str = include_str!("../../fixtures/skew-policy.yaml");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error("read the skew policy: {0}")]
    Policy(String),
    #[error("{component} on {node}: version `{version}` is not vMAJOR.MINOR[.PATCH…]")]
    BadVersion { component: String, node: String, version: String },
    #[error("{component} on {node}: the skew policy has no rule for this component")]
    UnknownComponent { component: String, node: String },
    #[error("no kube-apiserver version given: skew is measured against the apiservers")]
    NoApiserver,
}

/// The policy file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub source: String,
    pub apiserver: ApiserverRule,
    pub components: Vec<ComponentRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiserverRule {
    pub component: String,
    /// Minor versions between the newest and the oldest apiserver, at most.
    pub max_spread: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentRule {
    pub component: String,
    /// Minor versions newer than an apiserver, at most.
    pub max_newer: u32,
    /// Minor versions older than an apiserver, at most.
    pub max_older: u32,
    #[serde(default)]
    pub exceptions: Vec<Exception>,
}

/// A lower `max_older` for component versions below `below` (`"1.25"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    pub below: String,
    pub max_older: u32,
}

impl ComponentRule {
    /// `max_older` for a component at `v`, and the exception that set it (if any).
    fn max_older_for(&self, v: Minor) -> (u32, Option<&Exception>) {
        let mut best = (self.max_older, None);
        for e in &self.exceptions {
            if let Some(b) = parse_minor(&e.below) {
                if v < b && e.max_older < best.0 {
                    best = (e.max_older, Some(e));
                }
            }
        }
        best
    }
}

/// The policy compiled into hadrill.
pub fn builtin() -> Result<&'static Policy, SkewError> {
    static P: OnceLock<Result<Policy, SkewError>> = OnceLock::new();
    P.get_or_init(|| parse_policy(POLICY_YAML)).as_ref().map_err(Clone::clone)
}

pub fn parse_policy(text: &str) -> Result<Policy, SkewError> {
    let p: Policy = serde_saphyr::from_str(text).map_err(|e| SkewError::Policy(e.to_string().replace('\n', " ")))?;
    for r in &p.components {
        for e in &r.exceptions {
            if parse_minor(&e.below).is_none() {
                return Err(SkewError::Policy(format!(
                    "{}: exception `below: {}` is not MAJOR.MINOR",
                    r.component, e.below
                )));
            }
        }
    }
    Ok(p)
}

/// One component instance as found on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentVersion {
    /// `kube-apiserver`, `kubelet`, `kube-controller-manager`, `kube-scheduler`, `kube-proxy`,
    /// `cloud-controller-manager`, `kubectl`.
    pub component: String,
    /// The node it runs on (for kubectl: where it runs).
    pub node: String,
    /// As the component reports it: `v1.29.3`, `v1.30.0-rc.1`, `v1.28.4+k3s1`.
    pub version: String,
}

impl ComponentVersion {
    pub fn new(component: &str, node: &str, version: &str) -> Self {
        Self { component: component.into(), node: node.into(), version: version.into() }
    }
}

/// `(major, minor)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minor(pub u32, pub u32);

impl Minor {
    /// Minor versions from `self` up to `other` (negative when `other` is older). Across major
    /// versions the distance is counted as 100 minors per major.
    fn to(self, other: Minor) -> i64 {
        (other.0 as i64 - self.0 as i64) * 100 + (other.1 as i64 - self.1 as i64)
    }
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The major and minor of `v1.29.3`, `1.29`, `v1.30.0-rc.1`, `v1.28.4+k3s1`, `v1.27.5-eks-1a2b`.
pub fn parse_minor(version: &str) -> Option<Minor> {
    let v = version.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    if let Some(patch) = parts.next() {
        patch.parse::<u32>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Minor(major, minor))
}

/// A broken rule: the component instance, the apiserver it is measured against, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub component: String,
    pub node: String,
    pub version: String,
    pub apiserver_node: String,
    pub apiserver_version: String,
    /// What the policy allows, in words.
    pub rule: String,
    /// Minor versions apart (positive: newer than the apiserver).
    pub skew: i64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apart = match self.skew {
            s if s > 0 && self.component != "kube-apiserver" => format!("{s} minor version(s) newer than"),
            s if s < 0 && self.component != "kube-apiserver" => format!("{} minor version(s) older than", -s),
            s => format!("{} minor version(s) apart from", s.abs()),
        };
        write!(
            f,
            "{} on {} is {}, {apart} kube-apiserver {} on {} ({})",
            self.component, self.node, self.version, self.apiserver_version, self.apiserver_node, self.rule
        )
    }
}

struct Parsed<'a> {
    c: &'a ComponentVersion,
    v: Minor,
}

/// Every violation of `policy` among `versions`, in the order given (apiservers first).
pub fn check(policy: &Policy, versions: &[ComponentVersion]) -> Result<Vec<Violation>, SkewError> {
    let mut parsed = Vec::with_capacity(versions.len());
    for c in versions {
        let v = parse_minor(&c.version).ok_or_else(|| SkewError::BadVersion {
            component: c.component.clone(),
            node: c.node.clone(),
            version: c.version.clone(),
        })?;
        parsed.push(Parsed { c, v });
    }
    let apis: Vec<&Parsed> = parsed.iter().filter(|p| p.c.component == policy.apiserver.component).collect();
    // ties go to the first instance given, so reports are stable
    let (Some(oldest), Some(newest)) = (apis.iter().min_by_key(|p| p.v), apis.iter().rev().max_by_key(|p| p.v)) else {
        return Err(SkewError::NoApiserver);
    };
    let mut out = Vec::new();
    let spread = oldest.v.to(newest.v);
    if spread > policy.apiserver.max_spread as i64 {
        out.push(Violation {
            component: newest.c.component.clone(),
            node: newest.c.node.clone(),
            version: newest.c.version.clone(),
            apiserver_node: oldest.c.node.clone(),
            apiserver_version: oldest.c.version.clone(),
            rule: format!(
                "the newest and oldest kube-apiserver must be within {} minor version(s)",
                policy.apiserver.max_spread
            ),
            skew: spread,
        });
    }
    for p in parsed.iter().filter(|p| p.c.component != policy.apiserver.component) {
        let rule =
            policy.components.iter().find(|r| r.component == p.c.component).ok_or_else(|| {
                SkewError::UnknownComponent { component: p.c.component.clone(), node: p.c.node.clone() }
            })?;
        // newer: the oldest apiserver is the one it must not outrun
        let newer = oldest.v.to(p.v);
        if newer > rule.max_newer as i64 {
            let allowed = if rule.max_newer == 0 {
                "must not be newer than any kube-apiserver".to_string()
            } else {
                format!("at most {} minor version(s) newer than any kube-apiserver", rule.max_newer)
            };
            out.push(violation(p, oldest, allowed, newer));
        }
        // older: the newest apiserver is the one it must keep up with
        let older = p.v.to(newest.v);
        let (limit, exception) = rule.max_older_for(p.v);
        if older > limit as i64 {
            let allowed = match exception {
                Some(e) => {
                    format!("{} below {} may be at most {limit} minor version(s) older", rule.component, e.below)
                }
                None => format!("at most {limit} minor version(s) older than any kube-apiserver"),
            };
            out.push(violation(p, newest, allowed, -older));
        }
    }
    Ok(out)
}

fn violation(p: &Parsed, api: &Parsed, rule: String, skew: i64) -> Violation {
    Violation {
        component: p.c.component.clone(),
        node: p.c.node.clone(),
        version: p.c.version.clone(),
        apiserver_node: api.c.node.clone(),
        apiserver_version: api.c.version.clone(),
        rule,
        skew,
    }
}

/// The verdict of the built-in policy over `versions`.
pub fn outcome(versions: &[ComponentVersion]) -> Result<CheckOutcome, SkewError> {
    const N: &str = "version_skew";
    let policy = builtin()?;
    let violations = check(policy, versions)?;
    let mut evidence = format!("policy: {}\n", policy.source);
    for v in versions {
        evidence.push_str(&format!("  {:<26} {:<20} {}\n", v.component, v.node, v.version));
    }
    Ok(if violations.is_empty() {
        CheckOutcome::pass(N, format!("{} component versions within the skew policy", versions.len()))
    } else {
        CheckOutcome::fail(N, violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))
    }
    .with_evidence(evidence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(c: &str, n: &str, v: &str) -> ComponentVersion {
        ComponentVersion::new(c, n, v)
    }

    fn violations(vs: &[ComponentVersion]) -> Vec<Violation> {
        check(builtin().unwrap(), vs).unwrap()
    }

    fn ha(a: &str, b: &str, c: &str) -> Vec<ComponentVersion> {
        vec![cv("kube-apiserver", "cp-1", a), cv("kube-apiserver", "cp-2", b), cv("kube-apiserver", "cp-3", c)]
    }

    #[test]
    fn policy_loads_with_its_source() {
        let p = builtin().unwrap();
        assert_eq!(p.source, "https://kubernetes.io/releases/version-skew-policy/");
        assert!(p.components.iter().any(|c| c.component == "kubelet"));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_minor("v1.29.3"), Some(Minor(1, 29)));
        assert_eq!(parse_minor("v1.30.0-rc.1"), Some(Minor(1, 30)));
        assert_eq!(parse_minor("v1.28.4+k3s1"), Some(Minor(1, 28)));
        assert_eq!(parse_minor("1.27"), Some(Minor(1, 27)));
        assert_eq!(parse_minor("v1.27.5-eks-1a2b3c"), Some(Minor(1, 27)));
        assert_eq!(parse_minor("latest"), None);
        assert_eq!(parse_minor("v1"), None);
        assert_eq!(parse_minor("v1.x.3"), None);
    }

    #[test]
    fn a_consistent_cluster_passes() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.29.6");
        vs.push(cv("kubelet", "w-1", "v1.27.9"));
        vs.push(cv("kube-controller-manager", "cp-1", "v1.29.6"));
        vs.push(cv("kube-scheduler", "cp-2", "v1.29.6"));
        vs.push(cv("kubectl", "ci", "v1.30.0"));
        assert_eq!(violations(&vs), vec![]);
        assert!(outcome(&vs).unwrap().passed);
    }

    #[test]
    fn apiservers_more_than_one_minor_apart() {
        let v = violations(&ha("v1.31.0", "v1.30.1", "v1.29.4"));
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].to_string(),
            "kube-apiserver on cp-1 is v1.31.0, 2 minor version(s) apart from kube-apiserver v1.29.4 on cp-3 \
             (the newest and oldest kube-apiserver must be within 1 minor version(s))"
        );
    }

    #[test]
    fn kubelet_newer_than_the_oldest_apiserver() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.29.6");
        vs.push(cv("kubelet", "w-7", "v1.30.2"));
        let v = violations(&vs);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            v[0].to_string(),
            "kubelet on w-7 is v1.30.2, 1 minor version(s) newer than kube-apiserver v1.29.6 on cp-3 \
             (must not be newer than any kube-apiserver)"
        );
    }

    #[test]
    fn kubelet_four_minors_older() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.30.2");
        vs.push(cv("kubelet", "w-1", "v1.27.1"));
        assert_eq!(violations(&vs), vec![], "three older is allowed from 1.28 on");
        vs.push(cv("kubelet", "w-2", "v1.26.15"));
        let v = violations(&vs);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].node.as_str(), v[0].version.as_str(), v[0].skew), ("w-2", "v1.26.15", -4));
        assert!(v[0].to_string().contains("at most 3 minor version(s) older"), "{}", v[0]);
    }

    #[test]
    fn before_1_28_the_kubelet_limit_is_two() {
        // a 1.27 control plane: a 1.24 kubelet is three minors older, one too many
        let mut vs = ha("v1.27.16", "v1.27.16", "v1.27.16");
        vs.push(cv("kubelet", "w-1", "v1.25.16"));
        assert_eq!(violations(&vs), vec![]);
        vs.push(cv("kubelet", "w-2", "v1.24.17"));
        let v = violations(&vs);
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].to_string(),
            "kubelet on w-2 is v1.24.17, 3 minor version(s) older than kube-apiserver v1.27.16 on cp-1 \
             (kubelet below 1.25 may be at most 2 minor version(s) older)"
        );
        // while a 1.25 kubelet on a 1.28 control plane is fine (n-3)
        let mut vs = ha("v1.28.15", "v1.28.15", "v1.28.15");
        vs.push(cv("kubelet", "w-1", "v1.25.16"));
        assert_eq!(violations(&vs), vec![]);
    }

    #[test]
    fn controller_manager_and_scheduler() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.29.6");
        vs.push(cv("kube-controller-manager", "cp-1", "v1.30.2"));
        vs.push(cv("kube-scheduler", "cp-2", "v1.28.9"));
        let v = violations(&vs);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(
            v[0].to_string(),
            "kube-controller-manager on cp-1 is v1.30.2, 1 minor version(s) newer than kube-apiserver v1.29.6 on cp-3 \
             (must not be newer than any kube-apiserver)"
        );
        assert_eq!(
            v[1].to_string(),
            "kube-scheduler on cp-2 is v1.28.9, 2 minor version(s) older than kube-apiserver v1.30.2 on cp-1 \
             (at most 1 minor version(s) older than any kube-apiserver)"
        );
    }

    #[test]
    fn kubectl_within_one_minor_either_way() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.30.2");
        vs.push(cv("kubectl", "laptop", "v1.31.0"));
        vs.push(cv("kubectl", "ci", "v1.29.0"));
        assert_eq!(violations(&vs), vec![]);
        vs.push(cv("kubectl", "old-box", "v1.28.3"));
        vs.push(cv("kubectl", "new-box", "v1.32.0-rc.1"));
        let v = violations(&vs);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].to_string().starts_with("kubectl on old-box is v1.28.3, 2 minor version(s) older"), "{}", v[0]);
        assert!(
            v[1].to_string().starts_with("kubectl on new-box is v1.32.0-rc.1, 2 minor version(s) newer"),
            "{}",
            v[1]
        );
    }

    #[test]
    fn bad_input_is_named() {
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.30.2");
        vs.push(cv("kubelet", "w-1", "banana"));
        assert_eq!(
            check(builtin().unwrap(), &vs).unwrap_err().to_string(),
            "kubelet on w-1: version `banana` is not vMAJOR.MINOR[.PATCH…]"
        );
        let vs = vec![cv("kubelet", "w-1", "v1.30.0")];
        assert_eq!(check(builtin().unwrap(), &vs).unwrap_err(), SkewError::NoApiserver);
        let mut vs = ha("v1.30.2", "v1.30.2", "v1.30.2");
        vs.push(cv("etcd", "cp-1", "v3.5.9"));
        assert!(matches!(check(builtin().unwrap(), &vs), Err(SkewError::UnknownComponent { .. })));
    }

    #[test]
    fn a_policy_file_with_a_typo_is_refused() {
        let bad = POLICY_YAML.replace("max_older: 1\n", "max_olde: 1\n");
        assert!(matches!(parse_policy(&bad), Err(SkewError::Policy(m)) if m.contains("max_olde")));
    }
}
