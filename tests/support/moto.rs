//! `moto_server` for the tests: the benchmark's own helper, the same file compiled into
//! the test binary (the bench is a binary of its own, so the library does not carry it).

#[path = "../../src/bin/reelay-bench/moto.rs"]
mod launcher;

pub use launcher::{Moto, REGION};
