//! The event catalog: topics and event types as data, with each type's fields and entity
//! key. The built-in catalog (`builtin.json`) holds every topic and event of the seeds;
//! operators add their own from a file of the same shape, without rebuilding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const BUILTIN: &str = include_str!("builtin.json");

/// A named group of event types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Topic {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A VIA 1.x topic that 2.x no longer produces, kept for old publishers.
    #[serde(default)]
    pub legacy: bool,
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
    Any,
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
}

impl EventType {
    /// The spec of the entity key field, if the type has one.
    pub fn entity_key_spec(&self) -> Option<&FieldSpec> {
        let key = self.entity_key.as_deref()?;
        self.required
            .iter()
            .chain(&self.optional)
            .find(|field| field.name == key)
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
}

impl Catalog {
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
}
