//! `moto_server` for the tests: the benchmark's own helper ([`reelay::bench::moto`]).

pub use reelay::bench::moto::{Moto, REGION};
