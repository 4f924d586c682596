//! The JSON reporter: the whole [`RunRecord`](super::RunRecord), timelines included, with a
//! schema tag and the counts, so a consumer need not recount.
//!
//! Shape (see docs/reports.md): `schema`, `counts` {passed, failed, errors, skipped},
//! `started`, `duration` (seconds), `seed`, `target` {fact: text, in recorded order},
//! `cases` [{suite, case, description, disruptive, verdict {status, message?, evidence?,
//! reason?}, started, duration, measurements [{name, value, unit, bound, bound_kind: at_most|at_least}], output,
//! timeline [{offset, wall, source, message}]}] in declaration order.

use serde::Serialize;

use super::{Counts, RunRecord};

/// The `schema` field: bumped when a field changes meaning or goes away.
pub const SCHEMA: &str = "hadrill.run/v1";

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    counts: Counts,
    #[serde(flatten)]
    run: &'a RunRecord,
}

pub fn render(run: &RunRecord) -> Result<String, String> {
    let doc = Document { schema: SCHEMA, counts: run.counts(), run };
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
}
