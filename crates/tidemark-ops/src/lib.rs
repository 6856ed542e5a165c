//! The Tidemark operation system (OpS): journals service orders durably,
//! numbers them per source, and submits them to the DB server (P3); after a
//! restore it drives recovery (P6, P10).
//!
//! # Layout
//! - [`input`]: parsing service orders given as JSON lines.
//! - [`journal`]: the append-only, fsynced journal of numbered orders.
//! - [`sealed`]: JSON lines that carry their checksum (journal, acknowledgements).
//! - [`recover`]: `tidemark ops recover`: schedule list, replay, complete.
//! - [`schedule`]: sending the schedule list, chunks in flight together.
//! - [`submit`]: `tidemark ops submit`: journal first, then submit in batches.

pub mod input;
pub mod journal;
pub mod recover;
pub mod schedule;
pub mod sealed;
pub mod submit;

pub use journal::Journal;
pub use recover::{recover, RecoverOptions, RecoverReport};
pub use submit::{submit, SubmitOptions, SubmitReport};
