//! An independent consumer of the JUnit that a real `hadrill run` writes: the binary runs a
//! suite directory of selftest cases (pass, fail, skip, panic, harness error, ignored) with
//! `--junit` and `--json`; `xmllint` and Python's junitparser (the parser that CI tools and
//! many scripts use) must read the file and find exactly the counts the run had, and the
//! JSON report must agree with them.
//!
//! Needs `xmllint` and `python3 -m junitparser` (ci/install-deps.sh installs both).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const MAIN: &str = r#"suite: selftest_main
description: hadrill's own selftest cases (pass, fail, skip, panic)
cases:
  - name: passes
    description: passes and measures a figure
    steps:
      - check: { harness_selftest: pass }
  - name: fails
    description: fails with evidence a hostile cluster could send
    steps:
      - check: { harness_selftest: pass }
      - check: { harness_selftest: fail }
  - name: skips
    description: skipped at run time with a reason
    steps:
      - check: { harness_selftest: skip }
  - name: panics
    description: panics inside a step
    steps:
      - check: { harness_selftest: panic }
"#;

const MORE: &str = r#"suite: selftest_more
description: a second suite, declared after the first
cases:
  - name: errors
    description: the harness could not run it
    steps:
      - check: { harness_selftest: error }
  - name: ignored_one
    description: ignored unless asked for
    ignore: takes too long for a gate
    steps:
      - check: { harness_selftest: pass }
  - name: passes_too
    description: passes
    steps:
      - check: { harness_selftest: pass }
"#;

/// Reads the JUnit with junitparser and prints, per suite, the counts it declares, the
/// counts of the results it finds, and the details the test checks.
const PY: &str = r#"
import json, sys
from junitparser import JUnitXml, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
out = {"declared": {"tests": xml.tests, "failures": xml.failures, "errors": xml.errors, "skipped": xml.skipped}, "suites": []}
for suite in xml:
    counted = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    cases = []
    for case in suite:
        counted["tests"] += 1
        results = []
        for r in case.result:
            kind = {Failure: "failure", Error: "error", Skipped: "skipped"}.get(type(r), type(r).__name__)
            counted[{"failure": "failures", "error": "errors", "skipped": "skipped"}[kind]] += 1
            results.append({"kind": kind, "message": r.message, "type": r.type, "text": r.text})
        props = case._elem.find("properties")
        cases.append({
            "name": case.name, "classname": case.classname, "time": case.time, "results": results,
            "system_out": case.system_out,
            "properties": [[p.get("name"), p.get("value")] for p in (props if props is not None else [])],
        })
    out["suites"].append({
        "name": suite.name,
        "declared": {"tests": suite.tests, "failures": suite.failures, "errors": suite.errors, "skipped": suite.skipped},
        "counted": counted,
        "properties": [[p.name, p.value] for p in suite.properties()],
        "cases": cases,
    })
print(json.dumps(out))
"#;

fn show(cmd: &str, o: &Output) -> String {
    format!(
        "command: {cmd}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Run {
    out: Output,
    junit: String,
    json: Value,
    parsed: Value,
    shown: String,
}

fn run_selftest(dir: &Path, extra: &[&str]) -> Run {
    let suites = dir.join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::write(suites.join("a_main.yaml"), MAIN).unwrap();
    std::fs::write(suites.join("b_more.yaml"), MORE).unwrap();
    let junit = dir.join("report.xml");
    let json = dir.join("report.json");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--suite-dir".into(),
        suites.display().to_string(),
        "--ledger".into(),
        dir.join("ledger").display().to_string(),
        "--junit".into(),
        junit.display().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--seed".into(),
        "7".into(),
        "selftest_".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .args(&args)
        .env("HADRILL_SELFTEST", "1")
        .env_remove("KUBECONFIG")
        .env("HOME", dir)
        .output()
        .unwrap();
    let shown = show(&format!("HADRILL_SELFTEST=1 hadrill {}", args.join(" ")), &out);
    let xml = std::fs::read_to_string(&junit).unwrap_or_else(|e| panic!("no JUnit written ({e})\n{shown}"));

    let lint = Command::new("xmllint").arg("--noout").arg(&junit).output().expect("xmllint must be installed");
    assert!(lint.status.success(), "xmllint refused the JUnit:\n{}\n{xml}", show("xmllint --noout", &lint));

    let py = Command::new("python3").arg("-c").arg(PY).arg(&junit).output().expect("python3 must be installed");
    assert!(
        py.status.success(),
        "junitparser could not read the JUnit:\n{}\n{xml}",
        show("python3 -c <junitparser>", &py)
    );
    let parsed: Value = serde_json::from_slice(&py.stdout).unwrap();
    let json_text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON written ({e})\n{shown}"));
    let json: Value =
        serde_json::from_str(&json_text).unwrap_or_else(|e| panic!("the JSON report does not parse: {e}\n{json_text}"));
    Run { out, junit: xml, json, parsed, shown }
}

fn counts(tests: u64, failures: u64, errors: u64, skipped: u64) -> Value {
    serde_json::json!({"tests": tests, "failures": failures, "errors": errors, "skipped": skipped})
}

#[test]
fn junitparser_reads_exact_counts_of_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_selftest(dir.path(), &[]);
    let (p, shown) = (&r.parsed, &r.shown);

    assert_eq!(r.out.status.code(), Some(1), "a failed case must exit 1\n{shown}");
    let stderr = String::from_utf8_lossy(&r.out.stderr);
    assert!(!stderr.contains("panicked at") && !stderr.to_lowercase().contains("backtrace"), "{shown}");
    let stdout = String::from_utf8_lossy(&r.out.stdout);
    assert!(stdout.contains("hadrill: 2 passed, 3 failed, 2 skipped (2 errors)"), "{shown}");

    // overall and per suite, as declared by the file and as counted from its results
    assert_eq!(p["declared"], counts(7, 1, 2, 2), "{p:#}");
    let suites = p["suites"].as_array().unwrap();
    let names: Vec<&str> = suites.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["selftest_main", "selftest_more"]);
    assert_eq!(suites[0]["declared"], counts(4, 1, 1, 1), "{p:#}");
    assert_eq!(suites[0]["counted"], counts(4, 1, 1, 1), "{p:#}");
    assert_eq!(suites[1]["declared"], counts(3, 0, 1, 1), "{p:#}");
    assert_eq!(suites[1]["counted"], counts(3, 0, 1, 1), "{p:#}");

    // cases in declaration order, classname = suite
    let cases: Vec<(&str, &str)> = suites
        .iter()
        .flat_map(|s| s["cases"].as_array().unwrap().iter())
        .map(|c| (c["classname"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        cases,
        [
            ("selftest_main", "passes"),
            ("selftest_main", "fails"),
            ("selftest_main", "skips"),
            ("selftest_main", "panics"),
            ("selftest_more", "errors"),
            ("selftest_more", "ignored_one"),
            ("selftest_more", "passes_too"),
        ]
    );

    let case = |s: usize, c: usize| &suites[s]["cases"][c];
    // the failure: one-line message, the evidence in the body with controls made visible
    let f = &case(0, 1)["results"][0];
    assert_eq!(f["kind"], "failure");
    assert_eq!(f["type"], "check failed");
    assert_eq!(f["message"], "selftest failed as asked: expected <pass>, observed <fail>");
    let body = f["text"].as_str().unwrap();
    assert!(
        body.contains("selftest evidence: red, NUL:\\u{0}, CDATA end: ]]>, markup: <&>\"', unicode: Größe ✓ 日本語"),
        "{body}"
    );
    assert!(body.contains("--- output\n"), "{body}");
    // the panic is an error, with the panic's text
    let e = &case(0, 3)["results"][0];
    assert_eq!((e["kind"].as_str(), e["type"].as_str()), (Some("error"), Some("harness error")));
    assert_eq!(e["message"], "case panicked: selftest panicked as asked");
    assert_eq!(case(1, 0)["results"][0]["message"], "selftest: the harness could not run this case (as asked)");
    // skips carry their reason
    assert_eq!(case(0, 2)["results"][0]["message"], "selftest: skipped as asked");
    let ign = case(1, 1)["results"][0]["message"].as_str().unwrap();
    assert!(ign.starts_with("ignored: takes too long for a gate"), "{ign}");
    // measurements as testcase properties, facts and seed as suite properties
    assert_eq!(case(0, 0)["properties"], serde_json::json!([["selftest_seconds", "0.25 s (at most 1 s)"]]));
    let props = &suites[0]["properties"];
    assert!(props.as_array().unwrap().contains(&serde_json::json!(["seed", "7"])), "{props}");
    assert!(props.as_array().unwrap().contains(&serde_json::json!(["target", "selftest"])), "{props}");
    // the timeline is in system-out, even for the case that panicked
    let so = case(0, 3)["system_out"].as_str().unwrap();
    assert!(so.contains("--- timeline\n") && so.contains("[probe:selftest] selftest outcome requested: Panic"), "{so}");

    // no raw control characters anywhere in the file
    assert!(!r.junit.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{}", r.junit);

    // the JSON report of the same run agrees
    let j = &r.json;
    assert_eq!(j["schema"], "hadrill.run/v1");
    assert_eq!(j["counts"], serde_json::json!({"passed": 2, "failed": 1, "errors": 2, "skipped": 2}));
    let jcases = j["cases"].as_array().unwrap();
    assert_eq!(jcases.len(), 7);
    for (si, sname) in ["selftest_main", "selftest_more"].iter().enumerate() {
        let mut c = [0u64; 4];
        for jc in jcases.iter().filter(|x| x["suite"] == *sname) {
            c[0] += 1;
            match jc["verdict"]["status"].as_str().unwrap() {
                "failed" => c[1] += 1,
                "error" => c[2] += 1,
                "skipped" => c[3] += 1,
                "passed" => {}
                other => panic!("unknown status {other}"),
            }
        }
        assert_eq!(counts(c[0], c[1], c[2], c[3]), suites[si]["counted"], "JSON and JUnit disagree on {sname}");
    }
    assert_eq!(j["seed"], 7);
    assert_eq!(jcases[1]["verdict"]["evidence"].as_str().unwrap(), hadrill::engine::selftest::FAIL_EVIDENCE);

    // and python's own json module reads it too
    let py = Command::new("python3")
        .arg("-c")
        .arg("import json,sys; d=json.load(open(sys.argv[1])); print(sum(1 for c in d['cases'] if c['verdict']['status']=='failed'), d['counts']['errors'])")
        .arg(dir.path().join("report.json"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "1 2", "{}", show("python3 json", &py));
}

#[test]
fn a_green_selection_exits_0_and_counts_only_what_ran() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_selftest(dir.path(), &["--skip", "fails", "--skip", "panics", "--skip", "errors"]);
    assert_eq!(r.out.status.code(), Some(0), "{}", r.shown);
    assert_eq!(r.parsed["declared"], counts(4, 0, 0, 2), "{:#}", r.parsed);
    assert_eq!(r.json["counts"], serde_json::json!({"passed": 2, "failed": 0, "errors": 0, "skipped": 2}));
}

#[test]
fn without_the_selftest_variable_the_suite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let suites = dir.path().join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::write(suites.join("a_main.yaml"), MAIN).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .args(["run", "--suite-dir"])
        .arg(&suites)
        .arg("selftest_")
        .env_remove("HADRILL_SELFTEST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a_main.yaml: case `passes`: field `steps[0].check.harness_selftest`"), "{err}");
    assert!(err.contains("HADRILL_SELFTEST=1"), "{err}");
}

#[test]
fn selftest_mode_does_not_excuse_a_real_case_from_needing_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let suites = dir.path().join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::write(suites.join("a_main.yaml"), MAIN).unwrap();
    // the built-in topology cases need etcd: no stand-in target for them
    let out = Command::new(env!("CARGO_BIN_EXE_hadrill"))
        .args(["run", "--ledger"])
        .arg(dir.path().join("ledger"))
        .arg("--suite-dir")
        .arg(&suites)
        .env("HADRILL_SELFTEST", "1")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("hadrill: no target:"), "{err}");
}
