//! kubeadm's own reports, parsed and judged as pure functions: the tables of `kubeadm certs
//! check-expiration`, the plan of `kubeadm upgrade plan`, and what `kubeadm upgrade apply
//! vX.(Y+2).0 --dry-run` answered (refused with its one-minor-at-a-time error, accepted, or
//! failed for another reason).
//!
//! kubeadm prints its tables with Go's tabwriter (columns padded with spaces), so the columns
//! are found from the header line's column starts, which also copes with cells that contain
//! spaces (`Dec 30, 2025 23:36 UTC`, `3 x v1.28.2`).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::certs::DEFAULT_MIN_DAYS;
use super::CheckOutcome;
use crate::report::Measurement;

/// The words kubeadm's version policy uses when an upgrade skips a minor version
/// (`cmd/kubeadm/app/phases/upgrade/policy.go`): `Specified version to upgrade to "v1.31.0"
/// is too high; kubeadm can upgrade only 1 minor version at a time`.
pub const ONE_MINOR_ERROR: (&str, &str) = ("kubeadm can upgrade only", "minor version at a time");

/// A table: its header's column names and each row's cells, by column.
fn tables(text: &str, is_header: impl Fn(&str) -> bool) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if !is_header(line) {
            continue;
        }
        // column starts: a header word that follows two or more spaces (or the line start)
        let mut starts = vec![0usize];
        let b = line.as_bytes();
        for i in 2..b.len() {
            if b[i] != b' ' && b[i - 1] == b' ' && b[i - 2] == b' ' {
                starts.push(i);
            }
        }
        let names: Vec<String> = starts
            .iter()
            .enumerate()
            .map(|(k, s)| line[*s..starts.get(k + 1).copied().unwrap_or(line.len())].trim().to_string())
            .collect();
        let mut rows = Vec::new();
        while let Some(row) = lines.peek() {
            if row.trim().is_empty() || row.starts_with('[') || is_header(row) {
                break;
            }
            let cells = starts
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let end = starts.get(k + 1).copied().unwrap_or(usize::MAX).min(row.len());
                    row.get((*s).min(row.len())..end).unwrap_or("").trim().to_string()
                })
                .collect();
            rows.push(cells);
            lines.next();
        }
        out.push((names, rows));
    }
    out
}

fn cell<'a>(names: &[String], row: &'a [String], name: &str) -> Option<&'a str> {
    names.iter().position(|n| n == name).and_then(|i| row.get(i)).map(|s| s.as_str())
}

/// One row of `kubeadm certs check-expiration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpirationRow {
    /// `apiserver`, `admin.conf`, `etcd-peer`; for CAs `ca`, `etcd-ca`, `front-proxy-ca`.
    pub name: String,
    pub is_ca: bool,
    /// None when kubeadm printed no date (a missing certificate).
    pub expires: Option<DateTime<Utc>>,
    /// As kubeadm prints it: `364d`, `9y`, `<invalid>` once expired.
    pub residual: String,
    /// The CA that signed it (empty for CAs).
    pub authority: String,
    pub externally_managed: bool,
    /// kubeadm marks a certificate it expected and did not find `!MISSING!` (on an HA
    /// cluster, `super-admin.conf` exists only on the node that ran `kubeadm init`).
    pub missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeadmParseError {
    #[error("no certificate table in the output of `kubeadm certs check-expiration`")]
    NoExpirationTable,
    #[error("`kubeadm certs check-expiration`: cannot read the date `{date}` of {name}")]
    Date { name: String, date: String },
}

/// Parses the two tables of `kubeadm certs check-expiration` (kubeadm 1.20 and later).
pub fn parse_check_expiration(text: &str) -> Result<Vec<ExpirationRow>, KubeadmParseError> {
    let mut out = Vec::new();
    let found = tables(text, |l| l.starts_with("CERTIFICATE") && l.contains("EXPIRES") && l.contains("RESIDUAL TIME"));
    if found.is_empty() {
        return Err(KubeadmParseError::NoExpirationTable);
    }
    for (names, rows) in found {
        let is_ca = names.first().is_some_and(|n| n == "CERTIFICATE AUTHORITY");
        for r in rows {
            let raw_name = r.first().cloned().unwrap_or_default();
            let missing = raw_name.starts_with("!MISSING!");
            let name = raw_name.trim_start_matches("!MISSING!").trim().to_string();
            let date = cell(&names, &r, "EXPIRES").unwrap_or("").to_string();
            let expires = if date.is_empty() {
                None
            } else {
                Some(parse_kubeadm_date(&date).ok_or_else(|| KubeadmParseError::Date { name: name.clone(), date })?)
            };
            out.push(ExpirationRow {
                name,
                is_ca,
                expires,
                residual: cell(&names, &r, "RESIDUAL TIME").unwrap_or("").to_string(),
                authority: if is_ca {
                    String::new()
                } else {
                    cell(&names, &r, "CERTIFICATE AUTHORITY").unwrap_or("").to_string()
                },
                externally_managed: cell(&names, &r, "EXTERNALLY MANAGED").is_some_and(|v| v == "yes"),
                missing,
            });
        }
    }
    Ok(out)
}

/// kubeadm prints expiry as Go's `Jan 02, 2006 15:04 MST` in UTC.
fn parse_kubeadm_date(s: &str) -> Option<DateTime<Utc>> {
    let core = s.trim().strip_suffix("UTC")?.trim();
    NaiveDateTime::parse_from_str(core, "%b %d, %Y %H:%M").ok().map(|n| n.and_utc())
}

/// Every certificate that kubeadm lists on every node it was run on stays valid for at
/// least `min_days`. `per_node` holds the rows per node or why they could not be read.
pub fn expiration_verdict(
    per_node: &[(String, Result<Vec<ExpirationRow>, String>)],
    now: DateTime<Utc>,
    min_days: i64,
) -> (CheckOutcome, Vec<String>) {
    const N: &str = "kubeadm_certs_valid_for";
    let mut evidence = format!("threshold: valid for at least {min_days} days (default {DEFAULT_MIN_DAYS})\n");
    let (mut bad, mut unreadable) = (Vec::new(), Vec::new());
    let mut least: Option<i64> = None;
    let mut counted = 0;
    for (node, rows) in per_node {
        let rows = match rows {
            Err(e) => {
                evidence.push_str(&format!("  {node}: {e}\n"));
                unreadable.push(format!("{node}: {e}"));
                continue;
            }
            Ok(r) => r,
        };
        for r in rows {
            let kind = if r.is_ca { "CA" } else { "certificate" };
            let Some(exp) = r.expires else {
                evidence.push_str(&format!("  {node}: {kind} {} missing (not checked)\n", r.name));
                continue;
            };
            counted += 1;
            let days = (exp - now).num_seconds().div_euclid(86_400);
            least = Some(least.map_or(days, |l| l.min(days)));
            evidence.push_str(&format!(
                "  {node}: {kind} {} expires {} (residual {}, {days} days){}\n",
                r.name,
                exp.format("%Y-%m-%d %H:%M UTC"),
                r.residual,
                if r.externally_managed { ", externally managed" } else { "" }
            ));
            if exp < now {
                bad.push(format!(
                    "{node}: kubeadm {kind} {} EXPIRED on {} (residual time `{}`)",
                    r.name,
                    exp.format("%Y-%m-%d"),
                    r.residual
                ));
            } else if exp - now < chrono::Duration::days(min_days) {
                bad.push(format!(
                    "{node}: kubeadm {kind} {} expires in {days} days ({}), less than {min_days}{}",
                    r.name,
                    exp.format("%Y-%m-%d"),
                    if r.externally_managed { " (externally managed: renew it where it is made)" } else { "" }
                ));
            }
        }
    }
    let mut out = if !bad.is_empty() {
        CheckOutcome::fail(N, bad.join("; "))
    } else {
        CheckOutcome::pass(
            N,
            format!(
                "{counted} kubeadm certificate(s) on {} node(s) valid for at least {min_days} days (the soonest in {} days)",
                per_node.len() - unreadable.len(),
                least.unwrap_or(0)
            ),
        )
    };
    if let Some(l) = least {
        out = out
            .with_measurement(Measurement::new("kubeadm_cert_days_left", l as f64, "days").with_bound(min_days as f64));
    }
    (out.with_evidence(evidence), unreadable)
}

/// A row of a `kubeadm upgrade plan` table (kubeadm 1.29 and later add a NODE column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub component: String,
    pub node: Option<String>,
    pub current: String,
    pub target: String,
}

/// What `kubeadm upgrade plan` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradePlan {
    pub cluster_version: Option<String>,
    pub kubeadm_version: Option<String>,
    /// The versions it suggests: each `kubeadm upgrade apply vX.Y.Z` line.
    pub suggested: Vec<String>,
    pub rows: Vec<PlanRow>,
}

/// Parses `kubeadm upgrade plan` output (stdout and stderr together).
pub fn parse_upgrade_plan(text: &str) -> UpgradePlan {
    let mut p = UpgradePlan::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.split_once("Cluster version:").map(|(_, v)| v.trim()) {
            p.cluster_version = Some(v.to_string());
        } else if let Some(v) = l.split_once("kubeadm version:").map(|(_, v)| v.trim()) {
            p.kubeadm_version = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("kubeadm upgrade apply ") {
            if let Some(v) = v.split_whitespace().next() {
                if !p.suggested.iter().any(|s| s == v) {
                    p.suggested.push(v.to_string());
                }
            }
        }
    }
    for (names, rows) in tables(text, |l| l.starts_with("COMPONENT") && l.contains("CURRENT") && l.contains("TARGET")) {
        for r in rows {
            p.rows.push(PlanRow {
                component: r.first().cloned().unwrap_or_default(),
                node: cell(&names, &r, "NODE").map(str::to_string),
                current: cell(&names, &r, "CURRENT").unwrap_or("").to_string(),
                target: cell(&names, &r, "TARGET").unwrap_or("").to_string(),
            });
        }
    }
    p
}

/// The version that skips a minor: `v1.29.4` → `v1.31.0`.
pub fn skipping_target(cluster_version: &str) -> Option<String> {
    let m = super::skew::parse_minor(cluster_version)?;
    Some(format!("v{}.{}.0", m.0, m.1 + 2))
}

/// What `kubeadm upgrade apply <skipping> --dry-run --yes` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyAnswer {
    /// Refused with the one-minor-at-a-time error (the line that says so).
    RefusedOneMinor(String),
    /// It would have gone ahead (exit 0).
    WouldAccept(String),
    /// It failed for another reason (the line that says why).
    OtherError(String),
}

/// Reads the exit status and the output (stdout and stderr) of the dry-run apply.
pub fn classify_apply(succeeded: bool, output: &str) -> ApplyAnswer {
    let (a, b) = ONE_MINOR_ERROR;
    if let Some(line) = output.lines().find(|l| l.contains(a) && l.contains(b)) {
        return ApplyAnswer::RefusedOneMinor(line.trim().trim_start_matches("- ").to_string());
    }
    let last = |pred: &dyn Fn(&str) -> bool| {
        output.lines().map(str::trim).filter(|l| !l.is_empty() && pred(l)).last().map(str::to_string)
    };
    if succeeded {
        return ApplyAnswer::WouldAccept(last(&|_| true).unwrap_or_else(|| "exit status 0".into()));
    }
    let why = last(&|l| l.contains("FATAL") || l.starts_with("error") || l.contains("error execution phase"))
        .or_else(|| last(&|l| !l.starts_with("To see the stack trace")))
        .unwrap_or_else(|| "no output".into());
    ApplyAnswer::OtherError(why)
}

/// The verdict of the upgrade-path case: Ok(outcome) for a pass or a failure, Err(reason)
/// when kubeadm failed for a reason that says nothing about the policy (an error verdict).
pub fn upgrade_verdict(
    node: &str,
    plan: &UpgradePlan,
    target: &str,
    answer: &ApplyAnswer,
) -> Result<CheckOutcome, String> {
    const N: &str = "kubeadm_refuses_skipping_a_minor";
    let evidence = format!(
        "node: {node}\nkubeadm upgrade plan: cluster {}, kubeadm {}, suggests {}\n{}asked: kubeadm upgrade apply {target} --dry-run --yes\nanswer: {answer:?}\n",
        plan.cluster_version.as_deref().unwrap_or("?"),
        plan.kubeadm_version.as_deref().unwrap_or("?"),
        if plan.suggested.is_empty() { "nothing".to_string() } else { plan.suggested.join(", ") },
        plan.rows.iter().map(|r| format!("  {} {} {} -> {}\n", r.component, r.node.as_deref().unwrap_or(""), r.current, r.target)).collect::<String>()
    );
    match answer {
        ApplyAnswer::RefusedOneMinor(line) => Ok(CheckOutcome::pass(
            N,
            format!("kubeadm on {node} refused to upgrade {} to {target}: {line}", plan.cluster_version.as_deref().unwrap_or("the cluster")),
        )
        .with_evidence(evidence)),
        ApplyAnswer::WouldAccept(last) => Ok(CheckOutcome::fail(
            N,
            format!(
                "kubeadm on {node} would ACCEPT an upgrade from {} to {target}, skipping a minor version (dry run; it ended with `{last}`)",
                plan.cluster_version.as_deref().unwrap_or("the cluster's version")
            ),
        )
        .with_evidence(evidence)),
        ApplyAnswer::OtherError(why) => Err(format!(
            "kubeadm upgrade apply {target} --dry-run on {node} failed without the one-minor-at-a-time error, so the policy was not tested: {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubeadm certs check-expiration` of kubeadm 1.29 on the second control-plane node of an
    /// HA cluster: super-admin.conf only exists where `kubeadm init` ran; apiserver expired.
    const EXPIRATION: &str = "\
[check-expiration] Reading configuration from the cluster...
[check-expiration] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'

CERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED
admin.conf                 Dec 30, 2026 23:36 UTC   364d            ca                      no
apiserver                  Nov 01, 2026 10:00 UTC   <invalid>       ca                      no
apiserver-etcd-client      Dec 30, 2026 23:36 UTC   364d            etcd-ca                 no
apiserver-kubelet-client   Dec 30, 2026 23:36 UTC   364d            ca                      no
controller-manager.conf    Dec 10, 2026 23:36 UTC   19d             ca                      no
etcd-healthcheck-client    Dec 30, 2026 23:36 UTC   364d            etcd-ca                 no
etcd-peer                  Dec 30, 2026 23:36 UTC   364d            etcd-ca                 no
etcd-server                Dec 30, 2026 23:36 UTC   364d            etcd-ca                 no
front-proxy-client         Dec 30, 2026 23:36 UTC   364d            front-proxy-ca          no
scheduler.conf             Dec 30, 2026 23:36 UTC   364d            ca                      no
!MISSING! super-admin.conf                                                                  

CERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED
ca                      Dec 28, 2035 23:36 UTC   9y              no
etcd-ca                 Dec 28, 2035 23:36 UTC   9y              no
front-proxy-ca          Dec 28, 2035 23:36 UTC   9y              no
";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().into()
    }

    #[test]
    fn check_expiration_tables_parse() {
        let rows = parse_check_expiration(EXPIRATION).unwrap();
        assert_eq!(rows.len(), 14);
        let api = rows.iter().find(|r| r.name == "apiserver").unwrap();
        assert_eq!(api.residual, "<invalid>");
        assert_eq!(api.authority, "ca");
        assert_eq!(api.expires, Some(DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z").unwrap().into()));
        let sa = rows.iter().find(|r| r.name == "super-admin.conf").unwrap();
        assert!(sa.missing && sa.expires.is_none());
        let ca = rows.iter().find(|r| r.name == "etcd-ca").unwrap();
        assert!(ca.is_ca && ca.residual == "9y" && !ca.externally_managed);
        assert_eq!(parse_check_expiration("error: no kubeadm here"), Err(KubeadmParseError::NoExpirationTable));
    }

    #[test]
    fn expired_and_soon_expiring_rows_fail_naming_node_and_certificate() {
        let rows = parse_check_expiration(EXPIRATION).unwrap();
        let (o, unreadable) = expiration_verdict(&[("cp-2".into(), Ok(rows.clone()))], now(), 30);
        assert!(!o.passed);
        assert!(unreadable.is_empty());
        assert_eq!(
            o.message,
            "cp-2: kubeadm certificate apiserver EXPIRED on 2026-11-01 (residual time `<invalid>`); \
             cp-2: kubeadm certificate controller-manager.conf expires in 19 days (2026-12-10), less than 30"
        );
        // with the two bad rows renewed, it passes; the missing super-admin.conf is not a failure
        let good: Vec<ExpirationRow> =
            rows.into_iter().filter(|r| r.name != "apiserver" && r.name != "controller-manager.conf").collect();
        let (o, _) = expiration_verdict(&[("cp-2".into(), Ok(good))], now(), 30);
        assert!(o.passed, "{}", o.message);
        assert!(o.evidence.contains("super-admin.conf missing"));
    }

    /// kubeadm 1.29 `upgrade plan` (NODE column) on a 1.28 cluster.
    const PLAN: &str = "\
[upgrade/config] Making sure the configuration is correct:
[preflight] Running pre-flight checks.
[upgrade] Running cluster health checks
[upgrade] Fetching available versions to upgrade to
[upgrade/versions] Cluster version: v1.28.9
[upgrade/versions] kubeadm version: v1.29.4
[upgrade/versions] Target version: v1.29.4
[upgrade/versions] Latest version in the v1.28 series: v1.28.9

Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':
COMPONENT   NODE   CURRENT   TARGET
kubelet     cp-1   v1.28.9   v1.29.4
kubelet     cp-2   v1.28.9   v1.29.4

Upgrade to the latest stable version:

COMPONENT                 NODE   CURRENT    TARGET
kube-apiserver            cp-1   v1.28.9    v1.29.4
kube-controller-manager   cp-1   v1.28.9    v1.29.4
etcd                      cp-1   3.5.12-0   3.5.12-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.29.4

_____________________________________________________________________
";

    #[test]
    fn upgrade_plan_parses_with_and_without_a_node_column() {
        let p = parse_upgrade_plan(PLAN);
        assert_eq!(p.cluster_version.as_deref(), Some("v1.28.9"));
        assert_eq!(p.kubeadm_version.as_deref(), Some("v1.29.4"));
        assert_eq!(p.suggested, vec!["v1.29.4"]);
        assert_eq!(p.rows.len(), 5);
        assert_eq!(
            p.rows[2],
            PlanRow {
                component: "kube-apiserver".into(),
                node: Some("cp-1".into()),
                current: "v1.28.9".into(),
                target: "v1.29.4".into()
            }
        );
        // kubeadm before 1.29: no NODE column, kubelets counted
        let old = "COMPONENT   CURRENT       TARGET\nkubelet     3 x v1.27.6   v1.27.13\n";
        let p = parse_upgrade_plan(old);
        assert_eq!(
            p.rows,
            vec![PlanRow {
                component: "kubelet".into(),
                node: None,
                current: "3 x v1.27.6".into(),
                target: "v1.27.13".into()
            }]
        );
        assert_eq!(skipping_target("v1.28.9").as_deref(), Some("v1.30.0"));
    }

    /// What kubeadm 1.29 prints when asked to skip a minor (stderr, exit 1).
    const REFUSED: &str = "\
[upgrade/config] Making sure the configuration is correct:
[preflight] Running pre-flight checks.
[upgrade] Running cluster health checks
[upgrade/version] You have chosen to change the cluster version to \"v1.30.0\"
[upgrade/versions] Cluster version: v1.28.9
[upgrade/versions] kubeadm version: v1.29.4
[upgrade/version] FATAL: the --version argument is invalid due to these fatal errors:

\t- Specified version to upgrade to \"v1.30.0\" is too high; kubeadm can upgrade only 1 minor version at a time
\t- Specified version to upgrade to \"v1.30.0\" is at least one minor release higher than the kubeadm minor release (30 > 29). Such an upgrade is not supported

Please fix the misalignments highlighted above and try upgrading again
To see the stack trace of this error execute with --v=5 or higher
";

    #[test]
    fn a_refusal_with_the_one_minor_error_passes() {
        let a = classify_apply(false, REFUSED);
        assert_eq!(
            a,
            ApplyAnswer::RefusedOneMinor(
                "Specified version to upgrade to \"v1.30.0\" is too high; kubeadm can upgrade only 1 minor version at a time".into()
            )
        );
        let o = upgrade_verdict("cp-1", &parse_upgrade_plan(PLAN), "v1.30.0", &a).unwrap();
        assert!(o.passed, "{}", o.message);
    }

    #[test]
    fn a_kubeadm_that_would_accept_fails_the_case() {
        let out = "[upgrade/version] You have chosen to change the cluster version to \"v1.30.0\"\n\
                   [dryrun] Finished dryrunning successfully!\n";
        let a = classify_apply(true, out);
        assert_eq!(a, ApplyAnswer::WouldAccept("[dryrun] Finished dryrunning successfully!".into()));
        let o = upgrade_verdict("cp-1", &parse_upgrade_plan(PLAN), "v1.30.0", &a).unwrap();
        assert!(!o.passed);
        assert!(
            o.message.starts_with("kubeadm on cp-1 would ACCEPT an upgrade from v1.28.9 to v1.30.0"),
            "{}",
            o.message
        );
    }

    #[test]
    fn another_error_is_a_harness_error_naming_it() {
        let out = "[upgrade/config] FATAL: failed to get config map: Get \"https://10.0.0.10:6443/api/v1/namespaces/kube-system/configmaps/kubeadm-config?timeout=10s\": dial tcp 10.0.0.10:6443: connect: connection refused\nTo see the stack trace of this error execute with --v=5 or higher\n";
        let a = classify_apply(false, out);
        assert!(matches!(&a, ApplyAnswer::OtherError(l) if l.contains("connection refused")), "{a:?}");
        let e = upgrade_verdict("cp-1", &UpgradePlan::default(), "v1.30.0", &a).unwrap_err();
        assert!(e.contains("the policy was not tested") && e.contains("connection refused"), "{e}");
    }
}
