//! Events: what ingest produces ([`NewEvent`]) and what the log hands to dispatch
//! ([`StoredEvent`]).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Millis, TraceContext};

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
    /// The catalog entity this event sets or deletes (its type's `entity` rule): the log
    /// writer records it as the entity's latest state, for mirroring.
    pub entity: Option<EntityChange>,
    /// When the event happened, as the publisher said (`timestamp`).
    pub occurred_at: Millis,
    pub body: Document,
    /// The trace its deliveries continue (see [`TraceContext`]); the events of one
    /// request share it.
    pub trace: Option<Arc<TraceContext>>,
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
    /// The trace its deliveries continue, as stored with it.
    pub trace: Option<Arc<TraceContext>>,
}

impl StoredEvent {
    /// Whether the event was published as a CloudEvent (its log id has the form of
    /// [`cloudevent_id`]): its document is then a structured CloudEvent with attributes
    /// of its own, not a Vimond envelope.
    pub fn arrived_as_cloudevent(&self) -> bool {
        is_cloudevent_id(&self.id)
    }
}

/// The id a CloudEvent has in the log (its `guid`, the `webhook-id` of its deliveries).
///
/// CloudEvents ids are unique per `source` only: two apps may both send id `1`. The log
/// de-duplicates on (account, id), so the stored id is `ce_<h>_<id>`, where `<h>` is the
/// first 16 hex digits of SHA-256 of `source`: fixed-length, so the scheme cannot be
/// read two ways; stable, so the same (source, id) sent again is a duplicate, stored and
/// delivered once; and the publisher's id stays readable at its end. The event itself
/// keeps its own `id` and `source`. Native publishers cannot use ids of this form
/// ([`is_cloudevent_id`]), so the form alone says how an event arrived.
pub fn cloudevent_id(source: &str, id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(source.as_bytes());
    let mut text = String::with_capacity(CLOUDEVENT_ID_PREFIX + id.len());
    text.push_str("ce_");
    for byte in &digest[..8] {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text.push('_');
    text.push_str(id);
    text
}

/// Length of `ce_<16 hex digits>_`.
const CLOUDEVENT_ID_PREFIX: usize = 3 + 16 + 1;

/// Whether `id` has the form of [`cloudevent_id`]: `ce_`, 16 lower-case hex digits, `_`,
/// and a non-empty publisher id.
pub fn is_cloudevent_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() > CLOUDEVENT_ID_PREFIX
        && bytes.starts_with(b"ce_")
        && bytes[CLOUDEVENT_ID_PREFIX - 1] == b'_'
        && bytes[3..CLOUDEVENT_ID_PREFIX - 1]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// An event's JSON text as the publisher wrote it. Cheap to clone: it shares the request
/// buffer it was cut from, so the same bytes go from the publish request to the log and
/// to every webhook without a copy.
///
/// The text is parsed only when something asks for its value (a payload filter), and
/// then once: every subscription that filters the event shares the one parse (the log
/// hands the same `Arc<StoredEvent>` to all of them).
#[derive(Clone)]
pub struct Document {
    bytes: Bytes,
    parsed: OnceLock<Option<Arc<Value>>>,
}

impl Document {
    /// The part of `buffer` that `text` (a slice of it) covers.
    pub fn slice_of(buffer: &Bytes, text: &str) -> Document {
        Document::new(buffer.slice_ref(text.as_bytes()))
    }

    fn new(bytes: Bytes) -> Document {
        Document {
            bytes,
            parsed: OnceLock::new(),
        }
    }

    pub fn as_str(&self) -> &str {
        // Built only from `&str` and `String`, so always UTF-8.
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The document parsed, at the first call only; `None` if it is not JSON (ingest
    /// stores only JSON, so never in practice).
    pub fn value(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.bytes).ok().map(Arc::new))
            .as_deref()
    }
}

#[cfg(test)]
impl Document {
    /// The parse, if something asked for it already.
    pub(crate) fn parsed_yet(&self) -> Option<&Option<Arc<Value>>> {
        self.parsed.get()
    }
}

impl PartialEq for Document {
    fn eq(&self, other: &Document) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Document {}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Document").field(&self.bytes).finish()
    }
}

impl From<String> for Document {
    fn from(text: String) -> Document {
        Document::new(Bytes::from(text))
    }
}

impl From<&str> for Document {
    fn from(text: &str) -> Document {
        Document::new(Bytes::copy_from_slice(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloudevent_id_depends_on_source_and_id_and_is_recognised() {
        let a = cloudevent_id("app://one", "1");
        assert_eq!(a, cloudevent_id("app://one", "1"));
        assert_ne!(a, cloudevent_id("app://two", "1"));
        assert_eq!(
            a, "ce_eb4bf9ce0511b463_1",
            "SHA-256 of the source, in lower-case hex"
        );
        assert_eq!(a.len(), "ce_".len() + 16 + "_1".len());
        assert!(is_cloudevent_id(&a));
        assert!(is_cloudevent_id(&cloudevent_id("s", "x_y")));
        for native in [
            "0ca2f440-feda-4b20-83f0-aa7582afbf4f",
            "ce_",
            "ce_0123456789abcdef_",
            "ce_0123456789ABCDEF_1",
            "ce_0123456789abcdeg_1",
            "ce_0123456789abcde_12",
            "ce-0123456789abcdef_1",
        ] {
            assert!(!is_cloudevent_id(native), "{native}");
        }
    }
}

/// A catalog entity's new state, as an event says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityChange {
    /// `asset`, `category`, `contentPanel`, …
    pub entity_type: String,
    pub id: String,
    /// The event says the entity is gone.
    pub deleted: bool,
}
