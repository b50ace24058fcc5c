//! Test support shared by the integration tests.

pub mod moto;
pub mod otlp;
pub mod postgres;
pub mod receiver;
