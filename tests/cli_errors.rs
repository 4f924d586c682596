//! Bad input on the real binary: each case must end with its distinct exit code and ONE line
//! on stderr that starts with `hadrill: ` and names what is wrong and where; never a panic,
//! never a backtrace, and nothing run (stdout empty).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `hadrill ARGS` with a private HOME and ledger, no KUBECONFIG, no selftest mode.
    fn hadrill(&self, args: &[&str]) -> (Output, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hadrill"));
        cmd.args(args)
            .env("HOME", self.dir.path())
            .env("HADRILL_LEDGER", self.path("ledger"))
            .env_remove("KUBECONFIG")
            .env_remove("HADRILL_SELFTEST")
            .env_remove("RUST_BACKTRACE");
        let out = cmd.output().unwrap();
        let shown = format!(
            "command: hadrill {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, shown)
    }

    /// Asserts the exit code and the one-line error; returns the line.
    fn fails(&self, args: &[&str], code: i32, names: &[&str]) -> String {
        let (out, shown) = self.hadrill(args);
        assert_eq!(out.status.code(), Some(code), "wrong exit code\n{shown}");
        let line = one_error_line(&String::from_utf8_lossy(&out.stderr)).unwrap_or_else(|why| panic!("{why}\n{shown}"));
        for n in names {
            assert!(line.contains(n), "the error does not name `{n}`\n{shown}");
        }
        assert!(out.stdout.is_empty(), "nothing may run on bad input\n{shown}");
        line
    }
}

/// The stderr of a failed command must be exactly one `hadrill: ` line, with no trace of a
/// panic or a backtrace.
fn one_error_line(stderr: &str) -> Result<String, String> {
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 {
        return Err(format!("stderr has {} lines, expected one", lines.len()));
    }
    let l = lines[0];
    if !l.starts_with("hadrill: ") {
        return Err("stderr does not start with `hadrill: `".into());
    }
    let lower = l.to_lowercase();
    if lower.contains("panicked") || lower.contains("backtrace") || lower.contains("internal error") {
        return Err("stderr shows a panic".into());
    }
    Ok(l.to_string())
}

#[test]
fn the_line_check_itself_can_fail() {
    assert!(one_error_line("hadrill: fine").is_ok());
    assert!(one_error_line("hadrill: a\nsecond line").is_err());
    assert!(one_error_line("error: unexpected argument").is_err());
    assert!(one_error_line("hadrill: internal error in thread main: x").is_err());
    assert!(one_error_line("thread 'main' panicked at src/x.rs:1:1").is_err());
    assert!(one_error_line("").is_err());
}

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster: {server: 'https://127.0.0.1:6443'}
contexts:
- name: ctx1
  context: {cluster: c1, user: u1}
current-context: ctx1
users:
- name: u1
  user: {token: not-a-secret}
";

#[test]
fn garbage_kubeconfig_is_a_usage_error_naming_the_file_and_position() {
    let e = Env::new();
    let kc = e.write("kube/garbage.yaml", "this: is: [not yaml\n");
    let line = e.fails(
        &["run", "--kubeconfig", kc.to_str().unwrap(), "topology::"],
        2,
        &[kc.to_str().unwrap(), "line 1 column"],
    );
    assert!(line.starts_with("hadrill: kubeconfig "), "{line}");
    // the parser's source snippet is noise on one line: the position is already named
    assert!(!line.contains("-->") && !line.contains(" | "), "{line}");
}

#[test]
fn plan_refuses_a_broken_kubeconfig_instead_of_planning_without_it() {
    let e = Env::new();
    let kc = e.write("kc", "garbage\n");
    e.fails(&["--kubeconfig", kc.to_str().unwrap(), "plan", "failover::"], 2, &[kc.to_str().unwrap()]);
}

#[test]
fn recover_with_a_broken_kubeconfig_says_so_and_does_not_stop() {
    let e = Env::new();
    let kc = e.write("kc", "garbage\n");
    let ledger = e.path("ledger");
    let (o, shown) =
        e.hadrill(&["--kubeconfig", kc.to_str().unwrap(), "--ledger", ledger.to_str().unwrap(), "recover"]);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("nothing to revert") && out.contains("cannot clean up") && out.contains(kc.to_str().unwrap()),
        "{shown}"
    );
}

#[test]
fn kubeconfig_whose_current_context_is_missing() {
    let e = Env::new();
    let kc = e.write("kube/ghost.yaml", &KUBECONFIG.replace("current-context: ctx1", "current-context: ghost"));
    e.fails(
        &["run", "--kubeconfig", kc.to_str().unwrap(), "topology::"],
        2,
        &[kc.to_str().unwrap(), "context `ghost` not found", "ctx1"],
    );
}

#[test]
fn kubeconfig_without_the_context_given_by_flag() {
    let e = Env::new();
    let kc = e.write("kube/config.yaml", KUBECONFIG);
    e.fails(
        &["run", "--kubeconfig", kc.to_str().unwrap(), "--context", "nope", "topology::"],
        2,
        &[kc.to_str().unwrap(), "context `nope` not found"],
    );
}

#[test]
fn kubeconfig_that_does_not_exist() {
    let e = Env::new();
    let kc = e.path("kube/absent.yaml");
    e.fails(&["run", "--kubeconfig", kc.to_str().unwrap(), "topology::"], 2, &["absent.yaml", "No such file"]);
}

#[test]
fn unknown_suite_is_refused_not_a_green_run() {
    let e = Env::new();
    e.fails(&["run", "nosuch::"], 2, &["no case matches `nosuch::`", "topology"]);
}

#[test]
fn malformed_suite_file_is_named() {
    let e = Env::new();
    e.write("suites/ok.yaml", "suite: fine\ndescription: d\ncases:\n  - name: c\n    description: d\n    steps:\n      - check: etcd_one_leader\n");
    let bad = e.write("suites/bad.yaml", "suite: x\ncases: [oops\n");
    let dir = e.path("suites");
    let line = e.fails(
        &["run", "--suite-dir", dir.to_str().unwrap(), "x::"],
        2,
        &[bad.to_str().unwrap(), "not valid YAML", "line 2"],
    );
    assert!(!line.contains("-->") && !line.contains(" | "), "{line}");
    // `list` loads the same files and says the same
    e.fails(&["list", "--suite-dir", dir.to_str().unwrap()], 2, &[bad.to_str().unwrap(), "not valid YAML"]);
}

#[test]
fn unknown_field_in_a_case_names_file_case_and_field() {
    let e = Env::new();
    let f = e.write(
        "suites/u.yaml",
        "suite: x\ndescription: d\ncases:\n  - name: good_case\n    description: d\n    stepz: []\n",
    );
    let dir = e.path("suites");
    e.fails(
        &["run", "--suite-dir", dir.to_str().unwrap(), "x::"],
        2,
        &[f.to_str().unwrap(), "case `good_case`", "field `stepz`", "unknown field"],
    );
}

#[test]
fn unknown_field_deep_in_a_step() {
    let e = Env::new();
    let f = e.write(
        "suites/u.yaml",
        "suite: x\ndescription: d\ncases:\n  - name: c\n    description: d\n    steps:\n      - check: { etcd_member_count: { mni: 3 } }\n",
    );
    let dir = e.path("suites");
    e.fails(
        &["run", "--suite-dir", dir.to_str().unwrap(), "x::"],
        2,
        &[f.to_str().unwrap(), "case `c`", "steps[0].check.etcd_member_count", "mni"],
    );
}

#[test]
fn unknown_fault_kind() {
    let e = Env::new();
    let f = e.write(
        "suites/f.yaml",
        "suite: x\ndescription: d\ncases:\n  - name: boom\n    description: d\n    disruptive: true\n    steps:\n      - inject: { member_explode: { role: leader } }\n",
    );
    let dir = e.path("suites");
    e.fails(
        &["run", "--suite-dir", dir.to_str().unwrap(), "x::"],
        2,
        &[f.to_str().unwrap(), "case `boom`", "steps[0].inject", "member_explode", "member_kill"],
    );
}

/// A CA certificate minted for the test (rcgen): valid PEM, trusted by nobody.
fn ca_pem(e: &Env) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "hadrill-test-ca");
    let cert = params.self_signed(&key).unwrap();
    e.write("pki/ca.crt", &cert.pem())
}

/// A loopback port that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

#[test]
fn unreachable_etcd_exits_3_naming_the_endpoint() {
    let e = Env::new();
    let ca = ca_pem(&e);
    let ep = format!("https://127.0.0.1:{}", closed_port());
    let t0 = std::time::Instant::now();
    let line =
        e.fails(&["run", "--etcd-endpoints", &ep, "--etcd-cacert", ca.to_str().unwrap(), "topology::"], 3, &[&ep]);
    assert!(line.contains("etcd"), "{line}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "reaching a closed port must fail fast, took {:?}",
        t0.elapsed()
    );
}

#[test]
fn etcd_ca_that_is_not_pem() {
    let e = Env::new();
    let ca = e.write("pki/ca.crt", "not a certificate\n");
    let ep = format!("https://127.0.0.1:{}", closed_port());
    e.fails(
        &["run", "--etcd-endpoints", &ep, "--etcd-cacert", ca.to_str().unwrap(), "topology::"],
        2,
        &[ca.to_str().unwrap()],
    );
}

#[test]
fn bad_flag_is_one_line_with_the_usage() {
    let e = Env::new();
    e.fails(&["run", "--bogus"], 2, &["unexpected argument '--bogus'", "usage: hadrill run"]);
    e.fails(&["run", "--seed", "abc"], 2, &["invalid value 'abc'", "--seed"]);
    e.fails(&["rig", "explode"], 2, &["unrecognized subcommand 'explode'"]);
    e.fails(&["completions", "tcsh"], 2, &["invalid value 'tcsh'", "bash"]);
}

#[test]
fn malformed_config_file() {
    let e = Env::new();
    let c = e.write("hadrill.yaml", "etcd:\n  endpoint: [x]\n");
    e.fails(&["run", "--config", c.to_str().unwrap(), "topology::"], 2, &[c.to_str().unwrap(), "endpoint"]);
    // `list` reads the config too: refused the same way, and its suite_dirs are listed
    e.fails(&["list", "--config", c.to_str().unwrap()], 2, &[c.to_str().unwrap(), "endpoint"]);
    e.write("more/s.yaml", "suite: extra\ndescription: d\ncases:\n  - name: c\n    description: d\n    steps:\n      - check: etcd_one_leader\n");
    let good = e.write("good.yaml", "suite_dirs: [more]\n");
    let (o, shown) = e.hadrill(&["list", "--config", good.to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("extra::c"), "{shown}");
}

#[test]
fn junit_in_a_missing_directory_fails_before_anything_runs() {
    let e = Env::new();
    let ca = ca_pem(&e);
    // the target is unreachable (exit 3 if contacted): exit 2 proves the path was checked first
    let ep = format!("https://127.0.0.1:{}", closed_port());
    let json = e.path("report.json");
    e.fails(
        &[
            "run",
            "--etcd-endpoints",
            &ep,
            "--etcd-cacert",
            ca.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--junit",
            "/nonexistent-dir/x.xml",
            "topology::",
        ],
        2,
        &["JUnit report", "/nonexistent-dir/x.xml"],
    );
    assert!(!json.exists(), "a run that stopped early must not leave an empty report");
    assert!(!Path::new("/nonexistent-dir").exists());
}

#[test]
fn a_report_path_checked_early_is_not_left_empty_when_the_target_is_down() {
    let e = Env::new();
    let ca = ca_pem(&e);
    let ep = format!("https://127.0.0.1:{}", closed_port());
    let junit = e.path("report.xml");
    e.fails(
        &[
            "run",
            "--etcd-endpoints",
            &ep,
            "--etcd-cacert",
            ca.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "topology::",
        ],
        3,
        &[&ep],
    );
    assert!(!junit.exists(), "no JUnit file may be left behind by a run that never started");
}

#[test]
fn completions_and_version_work() {
    let e = Env::new();
    let (out, shown) = e.hadrill(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_hadrill()") && script.contains("complete -F _hadrill"), "{shown}");
    assert!(out.stderr.is_empty(), "{shown}");

    let (out, shown) = e.hadrill(&["version"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hadrill {}\n", env!("CARGO_PKG_VERSION")));

    let (out, shown) = e.hadrill(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hadrill "), "{shown}");
}

#[test]
fn bare_hadrill_prints_the_help_and_exits_2() {
    let e = Env::new();
    let (out, shown) = e.hadrill(&[]);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: hadrill"), "{shown}");
}
