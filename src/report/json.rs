//! The JSON reporter: the whole [`RunRecord`](super::RunRecord), timelines included.

use super::RunRecord;

pub fn render(run: &RunRecord) -> Result<String, String> {
    serde_json::to_string_pretty(run).map_err(|e| e.to_string())
}
