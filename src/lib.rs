//! hadrill: conformance and chaos suites for highly-available Kubernetes control planes.
//!
//! The map (each module says in its first line what it is responsible for):
//!
//! - [`cli`]: the `hadrill` command line and its dispatch to the engine.
//! - [`config`]: the YAML config file (`--config`) and how it merges with flags.
//! - [`exit`]: the exit codes and the one-line errors a user sees.
//! - [`suite`]: suites as data: the case model, the built-in suite files, loading and validation.
//! - [`target`]: the cluster under test: etcd members, the Kubernetes API, node access per node.
//! - [`controlplane`]: which component instances run where, and how each is stopped.
//! - [`node`]: node access: how a fault or a command reaches a node (`local` on the rig).
//! - [`fault`]: faults, the on-disk ledger, guards and the revert stack.
//! - [`probe`]: samplers that run during a case and write the timeline.
//! - [`check`]: assertions over the cluster or a timeline (pure where possible).
//! - [`engine`]: runs one case: preconditions, steps, reverts, verdict.
//! - [`runner`]: turns cases into libtest-mimic trials and records every outcome.
//! - [`report`]: console, JUnit and JSON reporters over the recorded run.
//! - [`rig`]: the local rig: real etcd members on this machine, with their PKI.
//! - [`tls`]: direct TLS handshakes that name why a certificate was refused.
//! - [`signals`]: Ctrl-C, SIGTERM and SIGHUP: revert every active fault before exiting.

pub mod check;
pub mod cli;
pub mod config;
pub mod controlplane;
pub mod engine;
pub mod exit;
pub mod fault;
pub mod node;
pub mod probe;
pub mod report;
pub mod rig;
pub mod runner;
pub mod signals;
pub mod suite;
pub mod target;
pub mod tls;
