//! Events: what ingest produces ([`NewEvent`]) and what the log hands to dispatch
//! ([`StoredEvent`]).

use bytes::Bytes;

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
    /// The video this event changes (its type's `videoChange` rule in the catalog): the
    /// log writer follows it with a `video-change` carrying the video's next version.
    pub video: Option<String>,
    /// When the event happened, as the publisher said (`timestamp`).
    pub occurred_at: Millis,
    pub body: Document,
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
    pub body: Document,
}

/// An event's JSON text as the publisher wrote it. Cheap to clone: it shares the request
/// buffer it was cut from, so the same bytes go from the publish request to the log and
/// to every webhook without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document(Bytes);

impl Document {
    /// The part of `buffer` that `text` (a slice of it) covers.
    pub fn slice_of(buffer: &Bytes, text: &str) -> Document {
        Document(buffer.slice_ref(text.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Built only from `&str` and `String`, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for Document {
    fn from(text: String) -> Document {
        Document(Bytes::from(text))
    }
}

impl From<&str> for Document {
    fn from(text: &str) -> Document {
        Document(Bytes::copy_from_slice(text.as_bytes()))
    }
}
