//! JSON Schemas (draft 2020-12) that operators give their event types in `--catalog`
//! (`"schema"`): compiled once when the catalog loads, checked against every published
//! document of the type beside its field rules.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// An event type's schema: the JSON as the catalog file gave it (what `GET /v1/catalog`
/// shows) and its compiled validator.
#[derive(Clone)]
pub struct EventSchema {
    source: Value,
    validator: Arc<jsonschema::Validator>,
}

impl EventSchema {
    /// Compiles a schema; references to other documents are not fetched (no network or
    /// file access at start-up), so a schema must be self-contained.
    pub fn compile(source: Value) -> Result<EventSchema, String> {
        let validator = jsonschema::draft202012::new(&source).map_err(|error| {
            match error.instance_path().as_str() {
                "" => error.to_string(),
                path => format!("{error} (at {path})"),
            }
        })?;
        Ok(EventSchema {
            source,
            validator: Arc::new(validator),
        })
    }

    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Checks a document; on failure the first error's path, dotted (`metadata.tags.0`;
    /// for a missing member, its path), and the message.
    pub fn check(&self, document: &Value) -> Result<(), (String, String)> {
        let Some(error) = self.validator.iter_errors(document).next() else {
            return Ok(());
        };
        let mut path: Vec<String> = error
            .instance_path()
            .iter()
            .map(|segment| segment.to_string())
            .collect();
        if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind()
            && let Some(property) = property.as_str()
        {
            path.push(property.to_owned());
        }
        Err((path.join("."), error.to_string()))
    }
}

impl PartialEq for EventSchema {
    fn eq(&self, other: &EventSchema) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EventSchema").field(&self.source).finish()
    }
}

impl Serialize for EventSchema {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventSchema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventSchema, D::Error> {
        let source = Value::deserialize(deserializer)?;
        EventSchema::compile(source)
            .map_err(|error| serde::de::Error::custom(format!("not a usable JSON Schema: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> EventSchema {
        EventSchema::compile(json!({
            "type": "object",
            "required": ["score"],
            "properties": {
                "score": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}},
                "meta": {"type": "object", "properties": {"lang": {"enum": ["en", "nb"]}}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_failure_names_the_instance_path() {
        let schema = schema();
        assert_eq!(schema.check(&json!({"score": 3, "tags": ["a"]})), Ok(()));
        let (path, message) = schema.check(&json!({"score": -1})).unwrap_err();
        assert_eq!(path, "score");
        assert!(
            message.contains("minimum") || message.contains("less than"),
            "{message}"
        );
        assert_eq!(
            schema
                .check(&json!({"score": 1, "tags": ["a", 2]}))
                .unwrap_err()
                .0,
            "tags.1"
        );
        assert_eq!(
            schema
                .check(&json!({"score": 1, "meta": {"lang": "sv"}}))
                .unwrap_err()
                .0,
            "meta.lang"
        );
        assert_eq!(
            schema.check(&json!({"tags": []})).unwrap_err().0,
            "score",
            "a missing member"
        );
    }

    #[test]
    fn a_bad_schema_does_not_compile() {
        assert!(EventSchema::compile(json!({"type": "no-such-type"})).is_err());
        assert!(EventSchema::compile(json!({"minimum": "zero"})).is_err());
        assert!(EventSchema::compile(json!({"$ref": "https://example.com/other.json"})).is_err());
    }
}
