//! The exit codes and the one-line errors a user sees.
//!
//! 0: every case passed or was skipped; 1: a case failed; 2: usage or configuration error
//! (nothing was injected); 3: the target could not be reached. No error path panics.

use std::fmt;

/// What the process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    Unreachable = 3,
}

/// An error that ends the command with one readable line and a distinct exit code.
#[derive(Debug)]
pub struct Fatal {
    pub code: Code,
    pub message: String,
}

impl Fatal {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: Code::Usage, message: message.into() }
    }
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { code: Code::Unreachable, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: Code::Failed, message: message.into() }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}

/// Renders an error and its sources on one line: "what: why: deeper why".
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out.replace('\n', " ")
}

/// Makes any error message the one line a user sees: whitespace (newlines included)
/// collapsed, and the source snippet that YAML parsers append (`--> <input>:1:9 | 1 | …`)
/// dropped, since the line and column are already in the message.
pub fn one_line(msg: &str) -> String {
    let flat = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = match flat.find(" --> <input>") {
        Some(i) => flat[..i].to_string(),
        None => flat,
    };
    flat.replace(": error: line ", ": line ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_drops_yaml_snippets_and_newlines() {
        let raw = "kubeconfig k.yaml: failed to parse kubeconfig YAML: error: line 1 column 9: mapping values are not allowed in this context\n  --> <input>:1:9\n   |\n 1 | this: is: [not yaml\n   |         ^ mapping values";
        assert_eq!(
            one_line(raw),
            "kubeconfig k.yaml: failed to parse kubeconfig YAML: line 1 column 9: mapping values are not allowed in this context"
        );
        assert_eq!(one_line("a\nb\tc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
