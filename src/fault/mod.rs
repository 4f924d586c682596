//! Faults: what can be injected, the on-disk ledger, `#[must_use]` guards, and the set of
//! active faults that Ctrl-C, SIGTERM and panics revert.
//!
//! The order is always: ledger entry written (and synced) → fault applied → … → fault
//! reverted → ledger entry removed. A fault is plain data ([`Fault`]) whose revert needs
//! nothing but itself, so `hadrill recover` can revert what a killed run left.

mod active;
mod cert;
mod kinds;
pub mod ledger;
pub mod net;
pub mod node;
pub mod process;

pub use active::{inject, is_cancelled, revert_all_active, FaultGuard};
pub use kinds::Fault;
pub use ledger::{Entry, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("hadrill is shutting down: no new fault is injected")]
    Cancelled,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{what}: {message}")]
    Apply { what: String, message: String },
    #[error("revert of {what} failed: {message}")]
    Revert { what: String, message: String },
}
