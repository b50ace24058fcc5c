//! Integration tests: the real `reelay` binary, a real SQLite file (or PostgreSQL
//! database), and a real webhook receiver that checks every signature with the
//! `standardwebhooks` Python package.

mod amqp_sink;
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
mod eventbridge_sink;
mod keys;
mod limits;
mod metrics;
mod nats_sink;
mod ordering;
mod postgres_outage;
mod publish;
mod resync;
mod retention;
mod store_conformance;
mod strict_bodies;
mod subscriptions;
mod tenant_safety;
mod tenants;
mod tracing;

#[path = "../support/mod.rs"]
mod support;
