//! Integration tests: the real `reelay` binary, a real SQLite file (or PostgreSQL
//! database), and a real webhook receiver that checks every signature with the
//! `standardwebhooks` Python package.

mod app;
mod auth;
mod aws_sinks;
mod brightcove;
mod cloudevents;
mod cluster;
mod console_api;
mod delivery;
mod delivery_controls;
mod delivery_formats;
mod destination_guard;
mod durability;
mod entities;
mod keys;
mod limits;
mod nats_sink;
mod postgres_outage;
mod publish;
mod resync;
mod retention;
mod strict_bodies;
mod subscriptions;
mod tenant_safety;
mod tenants;
mod tracing;

#[path = "../support/mod.rs"]
mod support;
