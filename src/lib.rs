//! Reelay: an event stream and webhook notification service for video platforms.
//!
//! An event travels through the modules in this order:
//!
//! 1. [`http`] receives a publish request and checks the caller's token;
//! 2. [`ingest`] turns the request body into events (one file per wire format: the
//!    Vimond envelope, CloudEvents, Brightcove's Dynamic Ingest notifications); a
//!    CloudEvent's user token is replaced by its verified subject or a keyed hash
//!    ([`ingest::user_token`]) before the event goes further;
//! 3. [`catalog`] says whether each event is known and complete, which topic and entity
//!    key it has, and which video it changes;
//! 4. [`store`] appends the events to the durable log (group commit: concurrent publishes
//!    share one fsync), each event that changes a video followed by the `video-change`
//!    the writer derives in the same transaction, and only then is the publisher answered;
//! 5. [`dispatch`] receives the committed events in memory at once, looks up in its index
//!    which subscriptions want each one (by account, then event name or topic, a job's
//!    callbacks by job: [`model::Subscription::wants`]) and hands it to those
//!    subscriptions' workers only (each with its cursor in the log and a retry set for
//!    failures); a job's callbacks get one delivery at a time, in order;
//! 6. [`sinks`] write the event in the subscription's format (the stored document, or a
//!    CloudEvent: [`sinks::cloudevents`]) and carry it to the destination (signed webhook
//!    POSTs, or batched calls to SNS, SQS and Kinesis: [`sinks::aws`]), and the outcome goes
//!    back to [`dispatch`], which records it and schedules a retry when it failed. A
//!    subscription may ask its endpoint for consent first ([`sinks::handshake`]).
//!
//! [`config`] holds the settings of all of this ([`metrics_scope`]: which accounts and
//! subscriptions get metric series of their own); [`model`] the plain types they share;
//! [`server`] wires the parts together and stops them in order. The benchmark is a binary
//! of its own (`src/bin/reelay-bench/`, run as `reelay bench`), so the library and the
//! server do not carry it.

pub mod catalog;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod ingest;
pub mod metrics_scope;
pub mod model;
pub mod server;
pub mod sinks;
pub mod stats;
pub mod status;
pub mod store;
pub mod tail;
pub mod trace;
