//! Suites as data: the case model, the built-in suite files and their validation.
//!
//! A suite file is YAML with typed steps. Every struct refuses unknown fields and every
//! choice is an enum, so a typo is an error naming the file, the case and the field, never a
//! silently ignored setting. The engine ([`crate::engine`]) gives each step its meaning.

mod load;
pub mod model;

pub use load::{builtin, load_dir, parse_suite, LoadError, Suites};
pub use model::*;
