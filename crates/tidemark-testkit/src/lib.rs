//! The test kit: what the integration tests, `tidemark demo` and the benches
//! share to drive real `tidemark` processes and to judge their answers.
//!
//! Each of these exists once, so the three users cannot drift apart (they
//! did: three starters, and two oracles that disagreed on what "latest"
//! means). Everything returns errors instead of panicking, because the demo
//! and the benches ship in the program; the integration tests' harness turns
//! the errors into test failures that print the process log.
//!
//! # Layout
//! - [`affinity`]: pinning processes to cores (`sched_setaffinity`) for
//!   the benchmarks, and the CPU time a process used.
//! - [`process`]: [`Program`] and [`Proc`]: the one way to start a `tidemark`
//!   process, read the address it bound, wait until it answers, and stop it.
//! - [`model`]: [`Model`]: the one oracle of what the latest data is.
//! - [`postgres`]: [`postgres::PgCluster`], a temporary PostgreSQL cluster for tests.
//! - [`orders`]: order builders (`ops submit` input lines, API orders) and
//!   record URLs for the default schema's table.

pub mod affinity;
pub mod model;
pub mod orders;
pub mod postgres;
pub mod process;

pub use model::Model;
pub use process::{Proc, Program};
