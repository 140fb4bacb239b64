//! The operator's console on COM1: the line editor ([`lineedit`]), the
//! command parser ([`shell`]) and, on the target, the loop that reads
//! lines, runs commands against the services and prints what they report
//! on their own (drained from [`crate::events`]).

pub mod lineedit;
pub mod shell;

#[cfg(target_os = "none")]
mod repl;

#[cfg(target_os = "none")]
pub use repl::*;
