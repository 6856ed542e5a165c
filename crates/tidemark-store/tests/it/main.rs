//! Integration tests of the storage engines.

mod model;
