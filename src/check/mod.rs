//! Checks: assertions over the cluster or a timeline. Each returns a [`CheckOutcome`] whose
//! failure message is one line (expected, observed, where) and whose evidence holds the rest.

pub mod certs;
pub mod dr;
pub mod failover;
pub mod kube_certs;
pub mod kube_topology;
pub mod kubeadm;
pub mod quorum;
pub mod skew;
pub mod topology;

use crate::report::Measurement;

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub name: String,
    pub passed: bool,
    /// One line: what was expected and what was observed.
    pub message: String,
    /// The data the verdict rests on (member table, timeline extract …).
    pub evidence: String,
    pub measurements: Vec<Measurement>,
}

impl CheckOutcome {
    pub fn pass(name: &str, message: impl Into<String>) -> Self {
        Self { name: name.into(), passed: true, message: message.into(), evidence: String::new(), measurements: vec![] }
    }
    pub fn fail(name: &str, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: false,
            message: message.into(),
            evidence: String::new(),
            measurements: vec![],
        }
    }
    pub fn with_evidence(mut self, evidence: impl Into<String>) -> Self {
        self.evidence = evidence.into();
        self
    }
    pub fn with_measurement(mut self, m: Measurement) -> Self {
        self.measurements.push(m);
        self
    }
}

/// Quorum math: how many voting members a cluster of `n` can lose and keep quorum.
pub fn quorum_tolerance(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// The quorum size of `n` voting members.
pub fn quorum_size(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod quorum_tests {
    use super::*;

    #[test]
    fn quorum_math() {
        assert_eq!((quorum_size(1), quorum_tolerance(1)), (1, 0));
        assert_eq!((quorum_size(2), quorum_tolerance(2)), (2, 0));
        assert_eq!((quorum_size(3), quorum_tolerance(3)), (2, 1));
        assert_eq!((quorum_size(4), quorum_tolerance(4)), (3, 1));
        assert_eq!((quorum_size(5), quorum_tolerance(5)), (3, 2));
    }
}
