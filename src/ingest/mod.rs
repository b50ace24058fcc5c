//! Ingest: request bodies to validated events, one file per wire format.

pub mod brightcove;
pub mod cloudevents;
pub mod native;
pub mod user_token;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::model::Document;

/// Why a request body was refused. Nothing of a refused body is stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    /// Not JSON at all (the HTTP layer answers 400).
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON, but an event is not acceptable (422). `index` is the item's position in a
    /// batch, `None` for a single object.
    #[error("{}{message}", index.map(|i| format!("item {i}: ")).unwrap_or_default())]
    Invalid {
        index: Option<usize>,
        field: String,
        message: String,
    },
    #[error("the batch is empty: send one event object or a non-empty array")]
    Empty,
    /// A body of a kind this endpoint does not read (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// Reads a body of one JSON object or a non-empty array of them (the native and the
/// Brightcove formats), and makes each object an event with `validate`, given its
/// fields and its own text (a slice of the body, so it is stored and delivered as sent).
/// The first invalid object refuses the whole body; `item` names one in messages.
fn each_object<T>(
    body: &Bytes,
    item: &str,
    mut validate: impl FnMut(&Map<String, Value>, Document) -> Result<T, (String, String)>,
) -> Result<Vec<T>, IngestError> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        // One object: parsed once, straight into its fields.
        Some(b'{') => {
            let fields: Map<String, Value> = serde_json::from_slice(body).map_err(malformed)?;
            let text = std::str::from_utf8(body).map_err(|_| not_utf8())?.trim();
            let one =
                validate(&fields, Document::slice_of(body, text)).map_err(|(field, message)| {
                    IngestError::Invalid {
                        index: None,
                        field,
                        message,
                    }
                })?;
            Ok(vec![one])
        }
        // A batch: each item keeps its own text, then is parsed into its fields.
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(malformed)?;
            if items.is_empty() {
                return Err(IngestError::Empty);
            }
            items
                .into_iter()
                .enumerate()
                .map(|(index, raw)| {
                    let invalid = |field: String, message: String| IngestError::Invalid {
                        index: Some(index),
                        field,
                        message,
                    };
                    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(raw.get()) else {
                        return Err(invalid(
                            String::new(),
                            format!("each {item} must be a JSON object"),
                        ));
                    };
                    validate(&fields, Document::slice_of(body, raw.get()))
                        .map_err(|(field, message)| invalid(field, message))
                })
                .collect()
        }
        _ => {
            // Malformed JSON gets its position; well-formed JSON of another kind, a 422.
            let _: &RawValue = serde_json::from_slice(body).map_err(malformed)?;
            Err(IngestError::Invalid {
                index: None,
                field: String::new(),
                message: format!("the body must be one {item} object or an array of them"),
            })
        }
    }
}

fn not_utf8() -> IngestError {
    IngestError::Malformed {
        line: 1,
        column: 1,
        message: "the body is not UTF-8".into(),
    }
}

fn malformed(error: serde_json::Error) -> IngestError {
    IngestError::Malformed {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}
