//! Golden files for the JUnit and JSON reporters over a synthetic run: a passing, a failing
//! (evidence with raw control characters, `]]>`, markup characters and unicode), an erroring
//! (a panicked case) and a skipped case, with measurements and timelines.
//!
//! `UPDATE_GOLDEN=1 cargo test --test report_golden` rewrites the files; review the diff.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hadrill::probe::Event;
use hadrill::report::{console, json, junit, CaseRecord, Measurement, RunRecord, Verdict};
use indexmap::IndexMap;

fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 14, 9, 26, 53).unwrap() + chrono::Duration::milliseconds(ms)
}

fn ev(case_start: i64, offset_ms: u64, source: &str, message: &str) -> Event {
    Event {
        offset: Duration::from_millis(offset_ms),
        wall: at(case_start + offset_ms as i64),
        source: source.into(),
        message: message.into(),
    }
}

fn case(suite: &str, name: &str, start: i64, ms: u64, verdict: Verdict) -> CaseRecord {
    CaseRecord {
        suite: suite.into(),
        case: name.into(),
        description: format!("the {name} case"),
        disruptive: false,
        verdict,
        started: at(start),
        duration: Duration::from_millis(ms),
        measurements: vec![],
        output: String::new(),
        timeline: vec![],
    }
}

/// The synthetic run. Suites are declared `quorum` then `topology` (not alphabetical), so
/// the golden also pins declaration order.
pub fn synthetic() -> RunRecord {
    let mut target = IndexMap::new();
    for (k, v) in [
        ("target", "rig:/tmp/hadrill-rig"),
        ("rig_dir", "/tmp/hadrill-rig"),
        ("etcd_endpoints", "https://10.99.0.11:2379,https://10.99.0.12:2379,https://10.99.0.13:2379"),
        ("etcd_members", "3"),
        ("etcd_version", "3.4.30"),
        ("seed", "42"),
        ("hadrill_version", "0.1.0"),
    ] {
        target.insert(k.to_string(), v.to_string());
    }

    let mut pass = case("quorum", "one_member_lost_writes_continue", 0, 4_321, Verdict::Passed);
    pass.disruptive = true;
    pass.measurements = vec![
        Measurement::new("failover_seconds", 1.234, "s").with_bound(3.0),
        Measurement::new("max_write_gap_seconds", 0.85, "s").with_bound(2.0),
        Measurement::new("acknowledged_writes", 87.0, "writes"),
    ];
    pass.output = "[   0.010s] injected: SIGKILL etcd member m2 (pid 4242)\n[   4.300s] reverted: SIGKILL etcd member m2 (pid 4242)\n".into();
    pass.timeline = vec![
        ev(0, 0, "step", "step 1: {\"probe\":{\"etcd_writes\":{\"per_second\":20,\"timeout\":\"2s\"}}}"),
        ev(0, 10, "fault", "injected: SIGKILL etcd member m2 (pid 4242)"),
        ev(0, 1_244, "probe:etcd-write", "first acknowledged write after the fault: key /hadrill/w/25"),
        ev(0, 4_300, "fault", "reverted: SIGKILL etcd member m2 (pid 4242)"),
    ];

    let nasty = "member m3 answered \u{1b}[31mUNHEALTHY\u{1b}[0m with a NUL here:\u{0}.\n\
                 raw CDATA terminator: ]]> and markup: <&>\"' in the body\n\
                 unicode: Größe ✓ — 日本語 𝄞\n";
    let mut fail = case(
        "quorum",
        "leader_partitioned_steps_down",
        4_400,
        2_500,
        Verdict::Failed {
            message: "the isolated leader m1 still acknowledged 3 writes after 2s (expected none): <&>\"' ]]>".into(),
            evidence: format!("members:\n  m1 leader term=7\n  m2 follower term=7\n{nasty}"),
        },
    );
    fail.disruptive = true;
    fail.measurements = vec![Measurement::new("writes_acknowledged_by_isolated_leader", 3.0, "writes").with_bound(0.0)];
    fail.output = "[   0.020s] injected: partition of m1 \u{1b}[1m(peer ports)\u{1b}[0m\n".into();
    fail.timeline = vec![
        ev(4_400, 20, "fault", "injected: partition of m1 (peer ports 2380)"),
        ev(4_400, 2_100, "probe:etcd-write", "acknowledged by m1 \u{1b}[33m<after partition>\u{1b}[0m \u{0}"),
        ev(4_400, 2_480, "check", "isolated_leader_refuses_writes FAILED"),
    ];

    let mut error = case(
        "topology",
        "etcd_members_reachable",
        6_950,
        12,
        Verdict::Error {
            message: "case panicked: index out of bounds: the len is 0 but the index is 0".into(),
            evidence: String::new(),
        },
    );
    error.timeline = vec![ev(6_950, 0, "step", "step 1: \"etcd_members_reachable\"")];

    let skip = case(
        "topology",
        "etcd_member_count",
        6_962,
        0,
        Verdict::Skipped { reason: "needs 3 etcd members, the target has 1".into() },
    );

    RunRecord {
        started: at(0),
        duration: Duration::from_millis(7_000),
        seed: 42,
        target,
        cases: vec![pass, fail, error, skip],
    }
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs from the rendered report (first differing line: {:?}); run with UPDATE_GOLDEN=1 and review the diff\n--- rendered:\n{actual}",
            path.display(),
            first.map(|i| i + 1)
        );
    }
}

fn xmllint(xml: &str) -> std::process::Output {
    let mut child = Command::new("xmllint")
        .args(["--noout", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmllint must be installed (ci/install-deps.sh)");
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn raw_controls(s: &str) -> Vec<(usize, char)> {
    s.char_indices().filter(|(_, c)| c.is_control() && !matches!(c, '\n' | '\t')).collect()
}

#[test]
fn junit_matches_golden() {
    let xml = junit::render(&synthetic()).unwrap();
    golden("junit.xml", &xml);
}

#[test]
fn junit_is_well_formed_and_clean() {
    let xml = junit::render(&synthetic()).unwrap();
    let out = xmllint(&xml);
    assert!(out.status.success(), "xmllint refused the report: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(raw_controls(&xml), vec![], "raw control characters in the JUnit");
    // the evidence survives, escaped, and says where the controls were
    assert!(xml.contains("raw CDATA terminator: ]]&gt; and markup: &lt;&amp;&gt;&quot;&apos;"), "{xml}");
    assert!(xml.contains("with a NUL here:\\u{0}."), "{xml}");
    assert!(xml.contains("member m3 answered UNHEALTHY with"), "{xml}");
    assert!(xml.contains("unicode: Größe ✓ — 日本語 𝄞"), "{xml}");
}

#[test]
fn junit_is_deterministic() {
    assert_eq!(junit::render(&synthetic()).unwrap(), junit::render(&synthetic()).unwrap());
}

#[test]
fn junit_layout() {
    let xml = junit::render(&synthetic()).unwrap();
    let q = xml
        .find("<testsuite name=\"quorum\" tests=\"2\" skipped=\"0\" errors=\"0\" failures=\"1\"")
        .expect("quorum suite");
    let t = xml
        .find("<testsuite name=\"topology\" tests=\"2\" skipped=\"1\" errors=\"1\" failures=\"0\"")
        .expect("topology suite");
    assert!(q < t, "suites must keep declaration order");
    assert!(
        xml.contains("<testsuites name=\"hadrill\" tests=\"4\" skipped=\"1\" failures=\"1\" errors=\"1\""),
        "{xml}"
    );
    assert!(xml.contains("<property name=\"failover_seconds\" value=\"1.234 s (at most 3 s)\"/>"), "{xml}");
    assert!(xml.contains("<property name=\"seed\" value=\"42\"/>"), "{xml}");
    assert!(xml.contains("<skipped message=\"needs 3 etcd members, the target has 1\"/>"), "{xml}");
    assert!(xml.contains("<error message=\"case panicked: index out of bounds"), "{xml}");
    assert!(xml.contains("type=\"check failed\""), "{xml}");
    // the failure message attribute is one line; the body carries the evidence
    assert!(xml.contains("<failure message=\"the isolated leader m1 still acknowledged 3 writes after 2s (expected none): &lt;&amp;&gt;&quot;&apos; ]]&gt;\""), "{xml}");
    assert!(xml.contains("m1 leader term=7"), "{xml}");
    // the timeline is in the testcase's system-out
    assert!(xml.contains("--- timeline\n+   0.000s 2026-03-14T09:26:53.000Z [step] step 1"), "{xml}");
}

#[test]
fn a_broken_reporter_is_caught() {
    // the checks above can fail: raw text straight into XML is refused by xmllint
    let broken = "<?xml version=\"1.0\"?><testsuites><testsuite><system-out>a\u{0}b ]]> <&></system-out></testsuite></testsuites>";
    assert!(!xmllint(broken).status.success());
    assert!(!raw_controls(broken).is_empty());
}

#[test]
fn json_matches_golden() {
    let s = json::render(&synthetic()).unwrap();
    golden("run.json", &s);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["schema"], "hadrill.run/v1");
    assert_eq!(v["counts"], serde_json::json!({"passed": 1, "failed": 1, "errors": 1, "skipped": 1}));
    assert_eq!(v["cases"][1]["verdict"]["status"], "failed");
    assert_eq!(v["cases"][0]["measurements"][0]["bound"], 3.0);
    assert_eq!(v["target"]["seed"], "42");
}

#[test]
fn console_summary_matches_golden() {
    let run = synthetic();
    let mut text = String::new();
    for c in &run.cases {
        text.push_str(&console::case_line(c));
        text.push('\n');
    }
    text.push_str(&console::summary(&run));
    golden("console.txt", &text);
}
