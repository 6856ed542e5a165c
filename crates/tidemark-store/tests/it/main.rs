//! Integration tests of the storage engines.

mod model;
mod pg;
mod recovery_model;
