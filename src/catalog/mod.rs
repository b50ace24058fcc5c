//! The event catalog: topics and event types as data, with each type's fields and entity
//! key. The built-in catalog (`builtin.json`) holds every topic and event of the seeds;
//! operators add their own from a file of the same shape, without rebuilding.

mod schema;

pub use schema::EventSchema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::EntityChange;

const BUILTIN: &str = include_str!("builtin.json");

/// The event Reelay derives from every event that changes a video (seed 004).
pub const VIDEO_CHANGE: &str = "video-change";

/// A named group of event types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Topic {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A VIA 1.x topic that 2.x no longer produces, kept for old publishers.
    #[serde(default)]
    pub legacy: bool,
    /// How long the log keeps this topic's events (`1d`, `30d`), instead of the
    /// server's `--retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// What a field's value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// A non-empty string or an integer (publishers send ids both ways).
    Id,
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    /// An RFC 3339 time, `Z` or an offset.
    Timestamp,
    /// A number, or a string that holds one: apps send seconds both ways (`"0"` and `0`
    /// in seed 002's `secondsFromStart`).
    Numeric,
    Any,
}

impl FieldKind {
    /// Whether `value` is of this kind.
    pub fn fits(self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match self {
            FieldKind::Id => match value {
                Value::String(text) => !text.trim().is_empty(),
                Value::Number(number) => number.is_u64() || number.is_i64(),
                _ => false,
            },
            FieldKind::String => value.is_string(),
            FieldKind::Integer => value.is_i64() || value.is_u64(),
            FieldKind::Number => value.is_number(),
            FieldKind::Boolean => value.is_boolean(),
            FieldKind::Array => value.is_array(),
            FieldKind::Object => value.is_object(),
            FieldKind::Timestamp => value
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            FieldKind::Numeric => match value {
                Value::Number(_) => true,
                Value::String(text) => text.trim().parse::<f64>().is_ok_and(f64::is_finite),
                _ => false,
            },
            FieldKind::Any => true,
        }
    }

    /// What a value of this kind looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            FieldKind::Id => "a non-empty string or an integer",
            FieldKind::String => "a string",
            FieldKind::Integer => "an integer",
            FieldKind::Number => "a number",
            FieldKind::Boolean => "true or false",
            FieldKind::Array => "an array",
            FieldKind::Object => "an object",
            FieldKind::Timestamp => "an RFC 3339 time",
            FieldKind::Numeric => "a number or a string holding a number",
            FieldKind::Any => "anything",
        }
    }
}

/// How events of a type are published, and so where its fields are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The Vimond envelope (`POST …/events`): the fields are members of the event object.
    #[default]
    Vimond,
    /// CloudEvents only (`POST …/cloudevents`): the fields are members of the event's
    /// `data`. Such types carry user tokens (`data.userIdentifier`) that only the
    /// CloudEvents endpoint knows to keep out of the log, so the native endpoint refuses
    /// them.
    Cloudevents,
    /// Brightcove Dynamic Ingest notifications, as Brightcove writes them (no envelope:
    /// the fields are members of the notification), published to
    /// `POST …/jobs/{job}/notifications` only: the job in the path decides which
    /// callbacks receive them.
    Brightcove,
    /// Made by Reelay itself (`video-change`); no endpoint accepts them, or a publisher
    /// could forge a video's version.
    Derived,
}

impl Envelope {
    fn is_vimond(&self) -> bool {
        *self == Envelope::Vimond
    }

    /// Where events of this type are published, for the error an endpoint of another
    /// wire format answers with.
    pub fn how_published(self) -> &'static str {
        match self {
            Envelope::Vimond => "publish it to POST /v1/accounts/{account}/events",
            Envelope::Cloudevents => {
                "publish it as a CloudEvent to POST /v1/accounts/{account}/cloudevents"
            }
            Envelope::Brightcove => {
                "publish it to POST /v1/accounts/{account}/jobs/{job}/notifications"
            }
            Envelope::Derived => {
                "Reelay derives it from the events that cause it; it cannot be published"
            }
        }
    }
}

/// Seed 004's `video-change`: every event of a type with this rule changes the video
/// named by its `idField`, and is followed in the log by a `video-change` for that video
/// with the video's next version. Data, so operators mark their own types too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VideoChange {
    /// The field holding the video's id (`assetId`, `videoId`); an event without it
    /// changes no video.
    pub id_field: String,
}

/// Catalog mirroring (seed 001): every event of a type with this rule is the latest
/// state of a catalog entity (an asset, a category, a content panel) named by its
/// `idField`, or says the entity is gone. Reelay keeps, per account, the latest such event
/// of every entity. Data, so operators mark their own types too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// The entity type (`asset`, `category`, `contentPanel`).
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The field holding the entity's id; an event without it changes no entity.
    pub id_field: String,
    /// Every event of the type deletes the entity (`asset-deleted`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletes: bool,
    /// Events whose `field` has one of `values` delete it (`eventType: asset-deleted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_when: Option<FieldValues>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldValues {
    pub field: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    /// Other spellings publishers use (`subProfileId` for `subprofileId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl FieldSpec {
    /// The field's value in `event`, under its name or an alias.
    pub fn find<'a>(
        &self,
        event: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Option<(&'a str, &'a serde_json::Value)> {
        std::iter::once(&self.name)
            .chain(&self.aliases)
            .find_map(|name| event.get_key_value(name.as_str()))
            .map(|(name, value)| (name.as_str(), value))
    }

    /// Checks this field of `payload`: present when `required`, and of its kind. On
    /// failure: the field (as spelled in the payload) and why.
    pub fn check(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
        required: bool,
        event: &str,
    ) -> Result<(), (String, String)> {
        match self.find(payload) {
            None if required => Err((
                self.name.clone(),
                format!("field {:?} is required for event {event:?}", self.name),
            )),
            None => Ok(()),
            Some((_, value)) if self.kind.fits(value) => Ok(()),
            Some((found_as, value)) => Err((
                found_as.to_owned(),
                format!(
                    "field {found_as:?} must be {}, not {value}",
                    self.kind.expected()
                ),
            )),
        }
    }
}

/// One event name, its topic, and what a valid event of it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventType {
    pub name: String,
    pub topic: String,
    #[serde(default)]
    pub description: String,
    /// Defaults to the topic's `legacy`.
    #[serde(default)]
    pub legacy: Option<bool>,
    #[serde(default)]
    pub required: Vec<FieldSpec>,
    #[serde(default)]
    pub optional: Vec<FieldSpec>,
    /// The field that names the entity the event is about (`assetId`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_key: Option<String>,
    /// The values `eventType` may take, when the type has sub-kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// How the type is published (shown only when not the Vimond envelope).
    #[serde(default, skip_serializing_if = "Envelope::is_vimond")]
    pub envelope: Envelope,
    /// Set when each event of the type changes a video (seed 004's `video-change`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_change: Option<VideoChange>,
    /// Set when each event of the type is the state of a catalog entity (mirroring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<EntityRule>,
    /// A JSON Schema (draft 2020-12) every document of the type must satisfy (the event
    /// object; for CloudEvents types, its `data`), beside the field rules. Compiled when
    /// the catalog loads: a schema that does not compile stops the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<EventSchema>,
}

impl EventType {
    /// The spec of the entity key field, if the type has one.
    pub fn entity_key_spec(&self) -> Option<&FieldSpec> {
        self.field(self.entity_key.as_deref()?)
    }

    /// Checks an event's payload (the event object for the Vimond envelope, `data` for
    /// CloudEvents) against the type's fields and `eventType` values. On failure: the
    /// field at fault and why.
    pub fn check_fields(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), (String, String)> {
        for field in &self.required {
            field.check(payload, true, &self.name)?;
        }
        for field in &self.optional {
            field.check(payload, false, &self.name)?;
        }
        if let Some(schema) = &self.schema {
            schema
                .check(&serde_json::Value::Object(payload.clone()))
                .map_err(|(path, message)| {
                    let at = match path.as_str() {
                        "" => "the document".to_owned(),
                        path => format!("{path:?}"),
                    };
                    (
                        path,
                        format!("{at} breaks the schema of event {:?}: {message}", self.name),
                    )
                })?;
        }
        if self.event_types.is_empty() {
            return Ok(());
        }
        match payload.get("eventType").and_then(serde_json::Value::as_str) {
            Some(value) if !self.event_types.iter().any(|allowed| allowed == value) => Err((
                "eventType".to_owned(),
                format!(
                    "{value:?} is not an eventType of {:?} (one of: {})",
                    self.name,
                    self.event_types.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The entity key's value in `payload`, as text (ids come as strings or numbers).
    pub fn entity_key_of(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        id_text(self.entity_key_spec()?, payload)
    }

    fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.required
            .iter()
            .chain(&self.optional)
            .find(|field| field.name == name)
    }

    /// The video an event of this type changes (its `videoChange` field, as text), if
    /// the type changes videos and the event names one.
    pub fn changed_video(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        let rule = self.video_change.as_ref()?;
        id_text(self.field(&rule.id_field)?, payload)
    }
}

impl EventType {
    /// The catalog entity an event of this type sets or deletes, if the type has an
    /// entity rule and the event names one.
    pub fn entity_change(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<EntityChange> {
        let rule = self.entity.as_ref()?;
        let id = id_text(self.field(&rule.id_field)?, payload)?;
        let deleted = rule.deletes
            || rule.deletes_when.as_ref().is_some_and(|when| {
                payload
                    .get(&when.field)
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|value| when.values.iter().any(|v| v == value))
            });
        Some(EntityChange {
            entity_type: rule.entity_type.clone(),
            id,
            deleted,
        })
    }
}

/// An id field's value as text: ids come as strings or numbers.
fn id_text(
    spec: &FieldSpec,
    payload: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    match spec.find(payload)?.1 {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The catalog: lookups by name, serialized in file order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// Fields every event has: `eventName`, `guid`, `timestamp` (required); `tenant`,
    /// `originator` (or `originatorId`), `versions` (optional).
    pub base_fields: Vec<FieldSpec>,
    pub topics: Vec<Topic>,
    pub event_types: Vec<EventType>,
    #[serde(skip)]
    topic_index: HashMap<String, usize>,
    #[serde(skip)]
    type_index: HashMap<String, usize>,
}

/// The file shape: the same as the catalog's JSON, without the base fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    topics: Vec<Topic>,
    #[serde(default)]
    event_types: Vec<EventType>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog file {path} is not a valid catalog: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("event type {event:?} names topic {topic:?}, which is not in the catalog")]
    UnknownTopic { event: String, topic: String },
    #[error("event type {event:?} has entity key {key:?}, which is not one of its fields")]
    UnknownEntityKey { event: String, key: String },
    #[error(
        "event type {event:?} changes the video named by {field:?}, which is not one of its fields"
    )]
    UnknownVideoField { event: String, field: String },
    #[error(
        "event type {event:?} is the state of the entity named by {field:?}, which is not one of its fields"
    )]
    UnknownEntityField { event: String, field: String },
    #[error("the catalog has no {VIDEO_CHANGE:?} event type, which Reelay derives")]
    NoVideoChange,
    #[error("topic {topic:?} has retention {retention:?}: {message}")]
    Retention {
        topic: String,
        retention: String,
        message: String,
    },
}

impl Catalog {
    /// The topics whose events have a retention of their own (see [`Topic::retention`]),
    /// checked when the catalog was loaded.
    pub fn topic_retentions(&self) -> std::collections::HashMap<String, std::time::Duration> {
        self.topics
            .iter()
            .filter_map(|topic| {
                let retention = crate::config::parse_duration(topic.retention.as_deref()?).ok()?;
                Some((topic.name.clone(), retention))
            })
            .collect()
    }

    /// The built-in catalog. Its JSON is checked by a unit test, so this cannot fail.
    pub fn builtin() -> Catalog {
        let file: CatalogFile =
            serde_json::from_str(BUILTIN).expect("the built-in catalog is valid JSON");
        let mut catalog = Catalog::empty();
        catalog
            .add(file)
            .expect("the built-in catalog is consistent");
        catalog
    }

    /// The built-in catalog plus an operator's file. A topic or type of the file with a
    /// name already known replaces it.
    pub fn from_file(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: CatalogFile =
            serde_json::from_str(&text).map_err(|source| CatalogError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut catalog = Catalog::builtin();
        catalog.add(file)?;
        Ok(catalog)
    }

    fn empty() -> Catalog {
        let base = |name: &str, kind, aliases: &[&str]| FieldSpec {
            name: name.to_owned(),
            kind,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        };
        Catalog {
            base_fields: vec![
                base("eventName", FieldKind::String, &[]),
                base("guid", FieldKind::String, &[]),
                base("timestamp", FieldKind::Timestamp, &[]),
                base("tenant", FieldKind::String, &[]),
                base("originator", FieldKind::Id, &["originatorId"]),
                base("versions", FieldKind::Array, &[]),
            ],
            topics: Vec::new(),
            event_types: Vec::new(),
            topic_index: HashMap::new(),
            type_index: HashMap::new(),
        }
    }

    fn add(&mut self, file: CatalogFile) -> Result<(), CatalogError> {
        for topic in file.topics {
            if let Some(retention) = &topic.retention
                && let Err(message) = crate::config::parse_duration(retention)
                    .and_then(|d| (!d.is_zero()).then_some(d).ok_or("zero".to_owned()))
            {
                return Err(CatalogError::Retention {
                    topic: topic.name.clone(),
                    retention: retention.clone(),
                    message,
                });
            }
            match self.topic_index.get(&topic.name) {
                Some(&at) => self.topics[at] = topic,
                None => {
                    self.topic_index
                        .insert(topic.name.clone(), self.topics.len());
                    self.topics.push(topic);
                }
            }
        }
        for event_type in file.event_types {
            let legacy_topic = match self.topic(&event_type.topic) {
                Some(topic) => topic.legacy,
                None => {
                    return Err(CatalogError::UnknownTopic {
                        event: event_type.name,
                        topic: event_type.topic,
                    });
                }
            };
            if let Some(key) = &event_type.entity_key
                && event_type.entity_key_spec().is_none()
            {
                return Err(CatalogError::UnknownEntityKey {
                    event: event_type.name.clone(),
                    key: key.clone(),
                });
            }
            if let Some(rule) = &event_type.video_change
                && event_type.field(&rule.id_field).is_none()
            {
                return Err(CatalogError::UnknownVideoField {
                    event: event_type.name.clone(),
                    field: rule.id_field.clone(),
                });
            }
            if let Some(rule) = &event_type.entity
                && event_type.field(&rule.id_field).is_none()
            {
                return Err(CatalogError::UnknownEntityField {
                    event: event_type.name.clone(),
                    field: rule.id_field.clone(),
                });
            }
            let event_type = EventType {
                legacy: Some(event_type.legacy.unwrap_or(legacy_topic)),
                ..event_type
            };
            match self.type_index.get(&event_type.name) {
                Some(&at) => self.event_types[at] = event_type,
                None => {
                    self.type_index
                        .insert(event_type.name.clone(), self.event_types.len());
                    self.event_types.push(event_type);
                }
            }
        }
        Ok(())
    }

    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter()
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topic_index.get(name).map(|&at| &self.topics[at])
    }

    pub fn event_type(&self, name: &str) -> Option<&EventType> {
        self.type_index.get(name).map(|&at| &self.event_types[at])
    }

    /// The catalog entity types events keep the state of (`asset`, `category`, …), in
    /// catalog order.
    pub fn entity_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = Vec::new();
        for rule in self.event_types.iter().filter_map(|t| t.entity.as_ref()) {
            if !types.contains(&rule.entity_type.as_str()) {
                types.push(&rule.entity_type);
            }
        }
        types
    }

    /// The topic of [`VIDEO_CHANGE`], the event the log writer derives. An operator's
    /// file may move it to another topic, but not remove it.
    pub fn video_change_topic(&self) -> Result<&str, CatalogError> {
        self.event_type(VIDEO_CHANGE)
            .map(|event_type| event_type.topic.as_str())
            .ok_or(CatalogError::NoVideoChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_has_every_topic_and_name_of_seed_000() {
        let catalog = Catalog::builtin();
        let seed_000 = [
            (
                "user-service-domain-events",
                &["user-domain-event", "order-domain-event"][..],
            ),
            (
                "asset-operations",
                &[
                    "asset-created",
                    "asset-updated",
                    "asset-deleted",
                    "asset-published",
                    "asset-unpublished",
                ],
            ),
            (
                "category-operations",
                &[
                    "category-created",
                    "category-updated",
                    "category-deleted",
                    "category-published",
                    "category-unpublished",
                ],
            ),
            ("api-internal-order-capture", &["capture-order"]),
            (
                "content-panel-operations",
                &[
                    "content-panel-created",
                    "content-panel-updated",
                    "content-panel-deleted",
                ],
            ),
            (
                "media-content-events",
                &[
                    "mce-ingest-started",
                    "mce-ingest-failed",
                    "mce-ingest-cancelled",
                    "mce-ingest-completed",
                ],
            ),
            ("asset-playback", &["user-asset_playback-event"]),
            (
                "player-events",
                &["player_log_event", "next_episode", "player-events"],
            ),
            (
                "playlist-operations",
                &[
                    "userplaylist-created",
                    "userplaylist-massdelete",
                    "editorialplaylist-overwritten",
                ],
            ),
            (
                "vimond_media_file_management",
                &[
                    "asset-media-import-queued",
                    "vmfm-transcoder-progress",
                    "vmfm-video-file-deleted",
                ],
            ),
        ];
        for (topic, names) in seed_000 {
            assert!(catalog.topic(topic).is_some(), "{topic}");
            for name in names {
                assert_eq!(
                    catalog.event_type(name).map(|t| t.topic.as_str()),
                    Some(topic),
                    "{name}"
                );
            }
        }
        assert_eq!(
            catalog
                .event_types
                .iter()
                .filter(|t| t.topic == "playlist-operations")
                .count(),
            14
        );
        assert_eq!(
            catalog
                .event_types
                .iter()
                .filter(|t| t.topic == "vimond_media_file_management")
                .count(),
            15
        );
        assert!(catalog.topic("asset-playback").unwrap().legacy);
        assert!(!catalog.topic("asset-operations").unwrap().legacy);
        assert_eq!(
            catalog.event_type("vmfm-archive-started").unwrap().legacy,
            Some(true)
        );
        // A current platform event (seed 001), though its topic is a 1.x one.
        assert_eq!(
            catalog.event_type("player_log_event").unwrap().legacy,
            Some(false)
        );
        for name in [
            "subprofile-event",
            "playlist-event",
            "device-event",
            "asset-event",
            "category-event",
            "contentPanel-event",
            "VUMCompletedEvent",
        ] {
            assert!(catalog.event_type(name).is_some(), "{name}");
        }
        assert_eq!(
            catalog
                .event_type("asset-updated")
                .unwrap()
                .entity_key
                .as_deref(),
            Some("assetId")
        );
    }

    #[test]
    fn the_builtin_catalog_has_the_zapp_cloudevents_types_of_seed_002() {
        let catalog = Catalog::builtin();
        let seed_002 = [
            (
                "com.applicaster.video.started.v1",
                "app-playback",
                "videoId",
            ),
            (
                "com.applicaster.video.stopped.v1",
                "app-playback",
                "videoId",
            ),
            (
                "com.applicaster.video.progress.v1",
                "app-playback",
                "videoId",
            ),
            ("com.applicaster.video.paused.v1", "app-playback", "videoId"),
            (
                "com.applicaster.video.interval.v1",
                "app-playback",
                "videoId",
            ),
            (
                "com.applicaster.favorites.added.v1",
                "app-favorites",
                "entryId",
            ),
            (
                "com.applicaster.favorites.removed.v1",
                "app-favorites",
                "entryId",
            ),
        ];
        for (name, topic, key) in seed_002 {
            let event_type = catalog.event_type(name).expect(name);
            assert_eq!(event_type.topic, topic, "{name}");
            assert_eq!(event_type.envelope, Envelope::Cloudevents, "{name}");
            assert_eq!(event_type.entity_key.as_deref(), Some(key), "{name}");
            // Optional as far as the catalog goes: an account that verifies user
            // tokens refuses an event without one (401), the others need none.
            assert!(
                event_type
                    .optional
                    .iter()
                    .any(|f| f.name == "userIdentifier"),
                "{name}"
            );
        }
        // The seed's quirks: seconds as text or number, extra continue-watching keys.
        let paused = catalog
            .event_type("com.applicaster.video.paused.v1")
            .unwrap();
        let data = serde_json::json!({"userIdentifier": "t", "videoId": "12345",
            "secondsFromStart": "0", "progress": 0.5, "status": "VIDEO_PAUSED",
            "sessionStartAt": 30, "key1": "some info1"});
        assert_eq!(paused.check_fields(data.as_object().unwrap()), Ok(()));
        let data =
            serde_json::json!({"userIdentifier": "t", "entryId": 12345, "secondsFromStart": 7});
        assert_eq!(paused.check_fields(data.as_object().unwrap()), Ok(()));
        assert_eq!(
            paused.entity_key_of(data.as_object().unwrap()).as_deref(),
            Some("12345")
        );
        // Shown as CloudEvents types; the others carry no envelope.
        let shown = serde_json::to_value(&catalog).unwrap();
        let types = shown["eventTypes"].as_array().unwrap();
        let envelope = |name: &str| {
            types
                .iter()
                .find(|t| t["name"] == name)
                .map(|t| t.get("envelope").cloned())
        };
        assert_eq!(
            envelope("com.applicaster.favorites.added.v1"),
            Some(Some(serde_json::json!("cloudevents")))
        );
        assert_eq!(envelope("asset-updated"), Some(None));
    }

    #[test]
    fn the_builtin_catalog_has_brightcove_and_says_which_events_change_videos() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.video_change_topic().unwrap(), "cms-notifications");
        let change = catalog.event_type(VIDEO_CHANGE).unwrap();
        assert_eq!(change.envelope, Envelope::Derived);
        assert_eq!(change.video_change, None, "a change is not itself a change");
        let notification = catalog.event_type("dynamic-ingest-notification").unwrap();
        assert_eq!(notification.topic, "dynamic-ingest");
        assert_eq!(notification.envelope, Envelope::Brightcove);
        assert_eq!(notification.entity_key.as_deref(), Some("jobId"));
        let rule = |name: &str| {
            catalog
                .event_type(name)
                .unwrap_or_else(|| panic!("{name}"))
                .video_change
                .as_ref()
                .map(|rule| rule.id_field.as_str())
        };
        assert_eq!(rule("dynamic-ingest-notification"), Some("videoId"));
        for name in [
            "asset-created",
            "asset-updated",
            "asset-deleted",
            "asset-published",
            "asset-unpublished",
            "mce-ingest-started",
            "mce-ingest-completed",
            "mce-ingest-failed",
            "mce-ingest-cancelled",
            "asset-media-import-queued",
            "vmfm-transcoder-completed",
            "vmfm-video-file-deleted",
            "asset-event",
        ] {
            assert_eq!(rule(name), Some("assetId"), "{name}");
        }
        // Progress reports and what is not a video change nothing.
        for name in [
            "vmfm-transcoder-progress",
            "category-updated",
            "player_log_event",
            "playlist-event",
            "com.applicaster.video.started.v1",
        ] {
            assert_eq!(rule(name), None, "{name}");
        }
        // The seed 003 example: the video is named by videoId, as text.
        let example = serde_json::json!({"entity": "default/audio192", "entityType": "DYNAMIC_RENDITION",
            "version": "1", "action": "CREATE", "jobId": "d3ef8751-2b88-4141-95d5-83f0393aca07",
            "videoId": "5660367449001", "dynamicRenditionId": "default/audio192", "language": "en",
            "variant": "main", "accountId": "57838016001", "status": "SUCCESS"});
        let example = example.as_object().unwrap();
        assert_eq!(notification.check_fields(example), Ok(()));
        assert_eq!(
            notification.changed_video(example).as_deref(),
            Some("5660367449001")
        );
    }

    #[test]
    fn numeric_fields_take_numbers_and_numbers_as_text() {
        for (value, fits) in [
            (serde_json::json!(0), true),
            (serde_json::json!(12.5), true),
            (serde_json::json!("0"), true),
            (serde_json::json!(" 42.5 "), true),
            (serde_json::json!("soon"), false),
            (serde_json::json!("NaN"), false),
            (serde_json::json!(null), false),
            (serde_json::json!([1]), false),
        ] {
            assert_eq!(FieldKind::Numeric.fits(&value), fits, "{value}");
        }
    }

    #[test]
    fn a_topic_may_keep_its_events_for_a_retention_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.json");
        std::fs::write(
            &path,
            r#"{"topics": [{"name": "player-events", "retention": "1d"}]}"#,
        )
        .unwrap();
        let retentions = Catalog::from_file(&path).unwrap().topic_retentions();
        assert_eq!(
            retentions,
            HashMap::from([(
                "player-events".to_owned(),
                std::time::Duration::from_secs(86_400)
            )])
        );
        assert!(Catalog::builtin().topic_retentions().is_empty());
        for refused in ["soon", "0s"] {
            std::fs::write(
                &path,
                format!(r#"{{"topics": [{{"name": "player-events", "retention": "{refused}"}}]}}"#),
            )
            .unwrap();
            assert!(
                matches!(
                    Catalog::from_file(&path),
                    Err(CatalogError::Retention { .. })
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_operator_file_adds_types_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.json");
        std::fs::write(
            &path,
            r#"{"topics": [{"name": "live-events", "description": "Live channels"}],
                "eventTypes": [{"name": "live-started", "topic": "live-events",
                                "required": [{"name": "channelId", "kind": "id"}], "entityKey": "channelId"}]}"#,
        )
        .unwrap();
        let catalog = Catalog::from_file(&path).unwrap();
        assert_eq!(
            catalog.event_type("live-started").unwrap().topic,
            "live-events"
        );
        assert!(
            catalog.event_type("asset-updated").is_some(),
            "the built-in types stay"
        );

        std::fs::write(
            &path,
            r#"{"eventTypes": [{"name": "x", "topic": "nowhere"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Catalog::from_file(&path),
            Err(CatalogError::UnknownTopic { .. })
        ));
        std::fs::write(
            &path,
            r#"{"eventTypes": [{"name": "x", "topic": "asset-operations", "entityKey": "nope"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Catalog::from_file(&path),
            Err(CatalogError::UnknownEntityKey { .. })
        ));
        std::fs::write(
            &path,
            r#"{"eventTypes": [{"name": "x", "topic": "asset-operations", "videoChange": {"idField": "nope"}}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Catalog::from_file(&path),
            Err(CatalogError::UnknownVideoField { .. })
        ));
        std::fs::write(
            &path,
            r#"{"eventTypes": [{"name": "x", "topic": "asset-operations", "entity": {"type": "asset", "idField": "nope"}}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Catalog::from_file(&path),
            Err(CatalogError::UnknownEntityField { .. })
        ));
        // Operators mark their own types as changing videos.
        std::fs::write(
            &path,
            r#"{"eventTypes": [{"name": "clip-trimmed", "topic": "asset-operations",
                                "required": [{"name": "clipId", "kind": "id"}], "videoChange": {"idField": "clipId"}}]}"#,
        )
        .unwrap();
        let catalog = Catalog::from_file(&path).unwrap();
        let trimmed = catalog.event_type("clip-trimmed").unwrap();
        let payload = serde_json::json!({"clipId": 42});
        assert_eq!(
            trimmed
                .changed_video(payload.as_object().unwrap())
                .as_deref(),
            Some("42")
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            Catalog::from_file(&path),
            Err(CatalogError::Parse { .. })
        ));
        assert!(matches!(
            Catalog::from_file(&dir.path().join("missing.json")),
            Err(CatalogError::Read { .. })
        ));
    }

    #[test]
    fn catalog_events_set_or_delete_their_entity() {
        let catalog = Catalog::builtin();
        assert_eq!(
            catalog.entity_types(),
            vec!["asset", "category", "contentPanel"]
        );
        let change = |name: &str, payload: serde_json::Value| {
            catalog
                .event_type(name)
                .unwrap()
                .entity_change(payload.as_object().unwrap())
        };
        let asset = |id: &str, deleted: bool| {
            Some(EntityChange {
                entity_type: "asset".into(),
                id: id.into(),
                deleted,
            })
        };
        assert_eq!(
            change("asset-updated", serde_json::json!({"assetId": 7})),
            asset("7", false)
        );
        assert_eq!(
            change("asset-deleted", serde_json::json!({"assetId": "7"})),
            asset("7", true)
        );
        // Seed 001's catalog events say it in eventType.
        let event = |kind: &str| serde_json::json!({"assetId": 7, "eventType": kind});
        assert_eq!(
            change("asset-event", event("asset-updated")),
            asset("7", false)
        );
        assert_eq!(
            change("asset-event", event("content-deleted")),
            asset("7", true)
        );
        assert_eq!(
            change("player_log_event", serde_json::json!({"assetId": 7})),
            None
        );
    }
}
