//! Integration tests: the real `tidemark` program, started as processes on
//! free ports in temporary folders, driven over HTTP.

mod auth;
mod backup;
mod bad_input;
mod cdp;
mod cli;
mod console;
mod data_path;
mod faults;
mod front_door;
mod ha;
mod harness;
mod history;
mod postgres;
mod quiesce;
mod recovery;
mod schema;
mod slow_link;
mod tls;
