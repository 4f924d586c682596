//! The JUnit reporter (quick-junit): one testsuite per suite, one testcase per case.

use super::RunRecord;

pub fn render(run: &RunRecord) -> Result<String, String> {
    let _ = run;
    Err("JUnit reporter not built yet".into())
}
