//! Probes: samplers that run during a case and write the timeline. They measure; they never
//! sleep blindly, and every request has its own deadline.

pub mod etcd;
pub mod history;
pub mod kube;
pub mod lb;
pub mod quorum;
mod timeline;

pub use timeline::{Event, Timeline};
