//! Test support shared by the integration tests.

pub mod moto;
pub mod postgres;
pub mod receiver;
