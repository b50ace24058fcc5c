//! Events: what ingest produces ([`NewEvent`]) and what the log hands to dispatch
//! ([`StoredEvent`]).

use std::sync::Arc;

use super::Millis;

/// A validated event on its way into the log. `body` is the publisher's own JSON text for
/// this event, byte for byte, so unknown fields and their order survive to the subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub account: String,
    /// The publisher's id (`guid` in the Vimond envelope); unique per account.
    pub id: String,
    /// The catalog event name (`eventName`).
    pub name: String,
    pub topic: String,
    /// The value of the type's entity key field (`assetId`, `categoryId`, …), as text.
    pub entity_key: Option<String>,
    /// When the event happened, as the publisher said (`timestamp`).
    pub occurred_at: Millis,
    pub body: Arc<str>,
}

/// An event as committed to the log, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the log: strictly increasing in commit order, with possible gaps.
    pub seq: i64,
    pub account: String,
    pub id: String,
    pub name: String,
    pub topic: String,
    pub entity_key: Option<String>,
    pub occurred_at: Millis,
    /// When Reelay committed it.
    pub received_at: Millis,
    pub body: Arc<str>,
}
