//! Integration tests of the storage engines.

mod model;
mod recovery_model;
