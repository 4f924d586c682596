//! Loading suite files: the built-in ones embedded in the binary and a user's `--suite-dir`.

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};
use serde_json::Value;

use super::model::{Case, Suite};

static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/suites");

/// Why a suite file was refused. Each message names the file, the case and the field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {message}")]
    Shape { file: String, message: String },
    #[error("{file}: case `{case}`: field `{field}`: {message}")]
    Field { file: String, case: String, field: String, message: String },
    #[error("{file}: suite `{suite}` is already defined by {other}")]
    Duplicate { file: String, suite: String, other: String },
}

/// The suites in the order they were loaded (built-in first, then the user's, by file name).
#[derive(Debug, Default, Clone)]
pub struct Suites {
    pub suites: Vec<(String, Suite)>,
}

impl Suites {
    pub fn iter(&self) -> impl Iterator<Item = &Suite> {
        self.suites.iter().map(|(_, s)| s)
    }

    pub fn get(&self, name: &str) -> Option<&Suite> {
        self.iter().find(|s| s.suite == name)
    }

    fn add(&mut self, file: String, suite: Suite) -> Result<(), LoadError> {
        if let Some((other, _)) = self.suites.iter().find(|(_, s)| s.suite == suite.suite) {
            return Err(LoadError::Duplicate { file, suite: suite.suite, other: other.clone() });
        }
        self.suites.push((file, suite));
        Ok(())
    }

    /// Every `suite::case` name.
    pub fn case_names(&self) -> Vec<String> {
        self.iter().flat_map(|s| s.cases.iter().map(move |c| format!("{}::{}", s.suite, c.name))).collect()
    }
}

/// The suites compiled into the binary from `suites/`.
pub fn builtin() -> Result<Suites, LoadError> {
    let mut files: Vec<_> = BUILTIN
        .files()
        .filter(|f| matches!(f.path().extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort_by_key(|f| f.path().to_path_buf());
    let mut out = Suites::default();
    for f in files {
        let name = format!("suites/{}", f.path().display());
        let text =
            f.contents_utf8().ok_or_else(|| LoadError::Syntax { file: name.clone(), message: "not UTF-8".into() })?;
        out.add(name.clone(), parse_suite_with(&name, text, false)?)?;
    }
    Ok(out)
}

/// Adds every `*.yaml` / `*.yml` file of `dir` to `suites`.
pub fn load_dir(suites: &mut Suites, dir: &Path) -> Result<(), LoadError> {
    let shown = dir.display().to_string();
    let rd = std::fs::read_dir(dir).map_err(|source| LoadError::Read { file: shown.clone(), source })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    for p in paths {
        let name = p.display().to_string();
        let text = std::fs::read_to_string(&p).map_err(|source| LoadError::Read { file: name.clone(), source })?;
        let suite = parse_suite(&name, &text)?;
        suites.add(name, suite)?;
    }
    Ok(())
}

/// Parses and validates one suite file. `file` is only used in messages. The test-only
/// `harness_selftest` check is refused unless `HADRILL_SELFTEST=1` is set.
pub fn parse_suite(file: &str, text: &str) -> Result<Suite, LoadError> {
    parse_suite_with(file, text, crate::engine::selftest::enabled())
}

fn parse_suite_with(file: &str, text: &str, allow_selftest: bool) -> Result<Suite, LoadError> {
    let file = file.to_string();
    // YAML → a generic tree first (syntax errors carry line and column), then each case on
    // its own so that a field error can name its case.
    let root: Value = serde_saphyr::from_str(text)
        .map_err(|e| LoadError::Syntax { file: file.clone(), message: one_line(&e.to_string()) })?;
    let Value::Object(mut map) = root else {
        return Err(LoadError::Shape {
            file,
            message: "expected a mapping with `suite`, `description` and `cases`".into(),
        });
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "suite" | "description" | "cases") {
            return Err(LoadError::Shape {
                file,
                message: format!("unknown field `{key}`, expected one of `suite`, `description`, `cases`"),
            });
        }
    }
    let text_field = |map: &serde_json::Map<String, Value>, k: &str| -> Result<String, LoadError> {
        match map.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => {
                Err(LoadError::Shape { file: file.clone(), message: format!("field `{k}` must be a non-empty string") })
            }
            None => Err(LoadError::Shape { file: file.clone(), message: format!("missing field `{k}`") }),
        }
    };
    let suite_name = text_field(&map, "suite")?;
    if !is_ident(&suite_name) {
        return Err(LoadError::Shape {
            file,
            message: format!("suite name `{suite_name}` must be lowercase letters, digits and `_`"),
        });
    }
    let description = text_field(&map, "description")?;
    let Some(Value::Array(raw_cases)) = map.remove("cases") else {
        return Err(LoadError::Shape { file, message: "field `cases` must be a list of cases".into() });
    };
    if raw_cases.is_empty() {
        return Err(LoadError::Shape { file, message: "field `cases` is empty".into() });
    }
    let mut cases: Vec<Case> = Vec::with_capacity(raw_cases.len());
    for (i, raw) in raw_cases.into_iter().enumerate() {
        let case_name =
            raw.get("name").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| format!("#{}", i + 1));
        let case: Case = serde_path_to_error::deserialize(raw).map_err(|e| {
            let field = e.path().to_string();
            LoadError::Field {
                file: file.clone(),
                case: case_name.clone(),
                field: if field == "." { "(case)".into() } else { field },
                message: one_line(&e.into_inner().to_string()),
            }
        })?;
        validate_case(&file, &case)?;
        refuse_selftest(&file, &case, allow_selftest)?;
        if cases.iter().any(|c| c.name == case.name) {
            return Err(field_err(&file, &case.name, "name", "duplicate case name"));
        }
        cases.push(case);
    }
    Ok(Suite { suite: suite_name, description, cases })
}

fn validate_case(file: &str, case: &Case) -> Result<(), LoadError> {
    if !is_ident(&case.name) {
        return Err(field_err(file, &case.name, "name", "must be lowercase letters, digits and `_`"));
    }
    if case.description.trim().is_empty() || case.description.contains('\n') {
        return Err(field_err(file, &case.name, "description", "must be one non-empty line"));
    }
    if case.steps.is_empty() {
        return Err(field_err(file, &case.name, "steps", "a case needs at least one step"));
    }
    if case.faults().next().is_some() && !case.disruptive {
        return Err(field_err(
            file,
            &case.name,
            "disruptive",
            "a case that injects faults must say `disruptive: true`",
        ));
    }
    Ok(())
}

/// The selftest check is for hadrill's own tests: refused unless allowed, named by its step.
fn refuse_selftest(file: &str, case: &Case, allowed: bool) -> Result<(), LoadError> {
    if allowed || !crate::engine::selftest::uses_selftest(case) {
        return Ok(());
    }
    let i = case
        .steps
        .iter()
        .position(|s| matches!(s, crate::suite::Step::Check(crate::suite::CheckSpec::HarnessSelftest(_))))
        .unwrap_or_default();
    Err(field_err(
        file,
        &case.name,
        &format!("steps[{i}].check.harness_selftest"),
        &format!(
            "a test-only check of hadrill's own tests, refused unless {}=1 (never in built-in suites)",
            crate::engine::selftest::ENV
        ),
    ))
}

fn field_err(file: &str, case: &str, field: &str, message: &str) -> LoadError {
    LoadError::Field { file: file.into(), case: case.into(), field: field.into(), message: message.into() }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "suite: demo\ndescription: a demo\ncases:\n  - name: count\n    description: member count\n    steps:\n      - check: { etcd_member_count: { min: 3 } }\n";

    #[test]
    fn builtin_suites_load() {
        let s = builtin().expect("built-in suites must load");
        assert!(s.get("topology").is_some());
        assert!(s.case_names().iter().any(|n| n.starts_with("topology::")));
    }

    #[test]
    fn good_file_parses() {
        let s = parse_suite("demo.yaml", GOOD).unwrap();
        assert_eq!(s.cases[0].name, "count");
    }

    #[test]
    fn unknown_field_names_file_case_and_field() {
        let bad = GOOD.replace("min: 3", "mni: 3");
        let e = parse_suite("demo.yaml", &bad).unwrap_err().to_string();
        assert!(e.starts_with("demo.yaml: case `count`: field `steps[0].check.etcd_member_count"), "{e}");
        assert!(e.contains("mni"), "{e}");
    }

    #[test]
    fn unknown_step_is_refused() {
        let bad = GOOD.replace("check: { etcd_member_count: { min: 3 } }", "chek: etcd_one_leader");
        let e = parse_suite("demo.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("case `count`") && e.contains("chek"), "{e}");
    }

    #[test]
    fn syntax_error_names_file() {
        let e = parse_suite("x.yaml", "suite: [oops\n").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml: not valid YAML"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn fault_without_disruptive_is_refused() {
        let bad = GOOD.replace(
            "      - check: { etcd_member_count: { min: 3 } }\n",
            "      - inject: { member_kill: { role: leader } }\n",
        );
        let e = parse_suite("d.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("field `disruptive`"), "{e}");
    }

    const SELFTEST: &str = "suite: st\ndescription: selftest\ncases:\n  - name: ok\n    description: passes\n    steps:\n      - check: etcd_one_leader\n      - check: { harness_selftest: pass }\n";

    #[test]
    fn selftest_check_is_refused_unless_enabled() {
        let e = parse_suite_with("st.yaml", SELFTEST, false).unwrap_err().to_string();
        assert_eq!(
            e,
            "st.yaml: case `ok`: field `steps[1].check.harness_selftest`: a test-only check of hadrill's own tests, refused unless HADRILL_SELFTEST=1 (never in built-in suites)"
        );
        let s = parse_suite_with("st.yaml", SELFTEST, true).unwrap();
        assert_eq!(
            s.cases[0].steps[1],
            crate::suite::Step::Check(crate::suite::CheckSpec::HarnessSelftest(crate::suite::SelftestOutcome::Pass))
        );
        let bad = SELFTEST.replace("harness_selftest: pass", "harness_selftest: explode");
        let e = parse_suite_with("st.yaml", &bad, true).unwrap_err().to_string();
        assert!(e.contains("case `ok`") && e.contains("explode"), "{e}");
    }

    #[test]
    fn no_builtin_suite_uses_the_selftest_check() {
        for s in builtin().unwrap().iter() {
            for c in &s.cases {
                assert!(!crate::engine::selftest::uses_selftest(c), "{}::{}", s.suite, c.name);
            }
        }
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let e = parse_suite("d.yaml", &format!("{GOOD}extra: 1\n")).unwrap_err().to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
