//! Probes: samplers that run during a case and write the timeline. They measure; they never
//! sleep blindly, and every request has its own deadline.

pub mod etcd;
mod timeline;

pub use timeline::{Event, Timeline};
