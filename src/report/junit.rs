//! The JUnit reporter (quick-junit): one testsuite per suite, one testcase per case, the
//! failure's evidence in its body, the timeline in system-out, the target's facts as
//! properties.
//!
//! Layout (see docs/reports.md):
//!
//! - `<testsuites name="hadrill">` with the run's start and duration;
//! - one `<testsuite>` per suite, in declaration order, with the target's facts (and the seed)
//!   as `<properties>`, its start (the first case's) and its span;
//! - one `<testcase name="case" classname="suite">` per case, with its own start and
//!   duration, one property per measured figure, and `<system-out>` holding the case's log
//!   lines and its rendered timeline;
//! - a failed check is a `<failure message="first line" type="check failed">` whose body is
//!   the whole story (message, evidence, log); the harness failing to run the case is an
//!   `<error type="harness error">`; a skipped case is `<skipped message="reason"/>`.
//!
//! Text is made safe for XML 1.0 before it reaches quick-junit: ANSI escape sequences are
//! dropped, and every other character XML cannot carry (NUL and the other C0 controls but
//! tab, newline and carriage return; U+FFFE, U+FFFF) is written visibly as `\u{..}`, so the
//! evidence keeps saying that it was there. Everything is ordered by the record (no maps
//! with their own order, no uuid), so the same record always renders the same bytes.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{CaseRecord, Measurement, RunRecord, Verdict};
use crate::probe::Timeline;

/// The `type` attribute of a `<failure>`: the cluster failed a check.
pub const FAILURE_TYPE: &str = "check failed";
/// The `type` attribute of an `<error>`: the harness could not run the case.
pub const ERROR_TYPE: &str = "harness error";

/// Renders the run as a JUnit XML document.
pub fn render(run: &RunRecord) -> Result<String, String> {
    let mut report = Report::new("hadrill");
    report.set_timestamp(fixed(run.started));
    report.set_time(run.duration);

    // suites in the order their first case was declared
    let mut order: Vec<&str> = Vec::new();
    for c in &run.cases {
        if !order.contains(&c.suite.as_str()) {
            order.push(&c.suite);
        }
    }
    let properties = suite_properties(run);
    for name in order {
        let cases: Vec<&CaseRecord> = run.cases.iter().filter(|c| c.suite == name).collect();
        let mut suite = TestSuite::new(name);
        suite.add_properties(properties.iter().cloned());
        if let Some((start, span)) = span(&cases) {
            suite.set_timestamp(fixed(start));
            suite.set_time(span);
        }
        suite.add_test_cases(cases.into_iter().map(test_case));
        report.add_test_suite(suite);
    }
    report.to_string().map_err(|e| e.to_string())
}

/// The target's facts in their recorded order, and the seed when the facts lack it.
fn suite_properties(run: &RunRecord) -> Vec<Property> {
    let mut out: Vec<Property> = run.target.iter().map(|(k, v)| Property::new(xml_text(k), xml_text(v))).collect();
    if !run.target.contains_key("seed") {
        out.push(Property::new("seed", run.seed.to_string()));
    }
    out
}

fn test_case(r: &CaseRecord) -> TestCase {
    let status = match &r.verdict {
        Verdict::Passed => TestCaseStatus::success(),
        Verdict::Failed { message, evidence } => {
            non_success(NonSuccessKind::Failure, FAILURE_TYPE, message, evidence, r)
        }
        Verdict::Error { message, evidence } => non_success(NonSuccessKind::Error, ERROR_TYPE, message, evidence, r),
        Verdict::Skipped { reason } => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(xml_text(&one_line(reason)));
            if reason.contains('\n') {
                s.set_description(xml_text(reason));
            }
            s
        }
    };
    let mut tc = TestCase::new(xml_text(&r.case), status);
    tc.set_classname(xml_text(&r.suite));
    tc.set_timestamp(fixed(r.started));
    tc.set_time(r.duration);
    for m in &r.measurements {
        tc.add_property(Property::new(xml_text(&m.name), xml_text(&measurement_value(m))));
    }
    let out = system_out(r);
    if !out.is_empty() {
        tc.set_system_out(xml_text(&out));
    }
    tc
}

fn non_success(kind: NonSuccessKind, ty: &str, message: &str, evidence: &str, r: &CaseRecord) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(kind);
    s.set_message(xml_text(&one_line(message)));
    s.set_type(ty);
    s.set_description(xml_text(&failure_body(message, evidence, &r.output)));
    s
}

/// The body of a `<failure>`/`<error>`: the message, the evidence, then the case's log.
pub fn failure_body(message: &str, evidence: &str, output: &str) -> String {
    let mut body = message.trim_end().to_string();
    body.push('\n');
    if !evidence.trim().is_empty() {
        body.push('\n');
        body.push_str(evidence.trim_end());
        body.push('\n');
    }
    if !output.trim().is_empty() {
        body.push_str("\n--- output\n");
        body.push_str(output.trim_end());
        body.push('\n');
    }
    body
}

/// A testcase's `<system-out>`: its log lines, then its timeline.
pub fn system_out(r: &CaseRecord) -> String {
    let mut out = String::new();
    if !r.output.trim().is_empty() {
        out.push_str("--- output\n");
        out.push_str(r.output.trim_end());
        out.push('\n');
    }
    if !r.timeline.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("--- timeline\n");
        out.push_str(&Timeline::render(&r.timeline));
    }
    out
}

/// `1.234 s (at most 3 s)`, `2 nodes (at least 3 nodes)`. The text starts with the number in Rust's shortest round-trip
/// form, so `float(value.split()[0])` reads it back exactly.
pub fn measurement_value(m: &Measurement) -> String {
    let unit = if m.unit.is_empty() { String::new() } else { format!(" {}", m.unit) };
    match m.bound {
        Some(b) => format!("{}{unit} ({} {b}{unit})", m.value, m.bound_kind.words()),
        None => format!("{}{unit}", m.value),
    }
}

/// The earliest start of `cases` and the time until the last of them ended.
fn span(cases: &[&CaseRecord]) -> Option<(DateTime<Utc>, Duration)> {
    let start = cases.iter().map(|c| c.started).min()?;
    let end = cases.iter().map(|c| c.started + chrono::Duration::from_std(c.duration).unwrap_or_default()).max()?;
    Some((start, (end - start).to_std().unwrap_or_default()))
}

fn fixed(t: DateTime<Utc>) -> DateTime<FixedOffset> {
    t.fixed_offset()
}

/// The first line of `s` (a `message` attribute is one line).
fn one_line(s: &str) -> String {
    s.trim().lines().next().unwrap_or_default().trim_end().to_string()
}

/// Text that XML 1.0 can carry: ANSI escape sequences dropped, other characters outside
/// XML's `Char` production written as `\u{..}`.
pub fn xml_text(s: &str) -> String {
    let s = strip_ansi(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let ok = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}');
        if ok {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// Drops ANSI escape sequences: CSI (`ESC [ … final`), OSC (`ESC ] … BEL|ESC \`) and
/// two-character escapes. A lone ESC at the end is kept (and then escaped visibly).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match it.peek().copied() {
            Some('[') => {
                it.next();
                // parameters and intermediates, then one final byte in @..~
                for d in it.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&d) {
                        break;
                    }
                }
            }
            Some(']') => {
                it.next();
                while let Some(d) = it.next() {
                    if d == '\u{7}' {
                        break;
                    }
                    if d == '\u{1b}' && it.peek() == Some(&'\\') {
                        it.next();
                        break;
                    }
                }
            }
            Some(d) if ('\u{40}'..='\u{5f}').contains(&d) => {
                it.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_drops_colours_and_names_controls() {
        assert_eq!(xml_text("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(xml_text("a\u{0}b"), "a\\u{0}b");
        assert_eq!(xml_text("bell\u{7} ff\u{c} \u{fffe}"), "bell\\u{7} ff\\u{c} \\u{fffe}");
        assert_eq!(xml_text("tab\tnl\ncr\r"), "tab\tnl\ncr\r");
        assert_eq!(xml_text("ünï ✓ 𝄞"), "ünï ✓ 𝄞");
        assert_eq!(xml_text("\u{1b}]0;title\u{7}x"), "x");
        assert_eq!(xml_text("end\u{1b}"), "end\\u{1b}");
    }

    #[test]
    fn measurement_value_reads_back() {
        let m = Measurement::new("failover_seconds", 1.234, "s").with_bound(3.0);
        let v = measurement_value(&m);
        assert_eq!(v, "1.234 s (at most 3 s)");
        let floor = Measurement::new("etcd_members", 2.0, "members").with_min(3.0);
        assert_eq!(measurement_value(&floor), "2 members (at least 3 members)");
        assert!(!floor.within() && Measurement::new("x", 3.0, "").with_min(3.0).within());
        assert!(!Measurement::new("x", 3.5, "s").with_bound(3.0).within());
        assert_eq!(v.split(' ').next().unwrap().parse::<f64>().unwrap(), 1.234);
        assert_eq!(measurement_value(&Measurement::new("n", 0.1, "")), "0.1");
    }

    #[test]
    fn message_is_the_first_line() {
        assert_eq!(one_line("  first\nsecond"), "first");
        assert_eq!(one_line(""), "");
    }
}
