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
        // A batch: each object parsed once, keeping its own text.
        Some(b'[') => match objects_of_batch(body) {
            Some(items) => items
                .into_iter()
                .enumerate()
                .map(|(index, (fields, text))| {
                    validate(&fields, Document::slice_of(body, text))
                        .map_err(|(field, message)| invalid_item(index, field, message))
                })
                .collect(),
            // Not an array of objects: read again item by item, to say which one is
            // wrong and where (the first wrong one, a malformed or invalid object alike).
            None => {
                let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(malformed)?;
                if items.is_empty() {
                    return Err(IngestError::Empty);
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(index, raw)| {
                        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(raw.get())
                        else {
                            let message = format!("each {item} must be a JSON object");
                            return Err(invalid_item(index, String::new(), message));
                        };
                        validate(&fields, Document::slice_of(body, raw.get()))
                            .map_err(|(field, message)| invalid_item(index, field, message))
                    })
                    .collect()
            }
        },
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

/// A non-empty JSON array of objects, each object's fields with its own text (without the
/// whitespace around it), read in one pass; `None` for any other body. Reading each item
/// first as raw text and then again into fields cost a second parse of every batch.
fn objects_of_batch(body: &[u8]) -> Option<Vec<(Map<String, Value>, &str)>> {
    let text = std::str::from_utf8(body).ok()?;
    let after_whitespace = |at: usize| {
        text[at..]
            .find(|c: char| !matches!(c, ' ' | '\t' | '\n' | '\r'))
            .map_or(text.len(), |skip| at + skip)
    };
    let mut at = after_whitespace(0);
    if text.as_bytes().get(at) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    loop {
        let start = after_whitespace(at + 1);
        // A stream stops after one value and says where it ended.
        let mut stream =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<Map<String, Value>>();
        let fields = stream.next()?.ok()?;
        let end = start + stream.byte_offset();
        items.push((fields, &text[start..end]));
        at = after_whitespace(end);
        match text.as_bytes().get(at) {
            Some(b',') => {}
            Some(b']') => break,
            _ => return None,
        }
    }
    (after_whitespace(at + 1) == text.len()).then_some(items)
}

fn invalid_item(index: usize, field: String, message: String) -> IngestError {
    IngestError::Invalid {
        index: Some(index),
        field,
        message,
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
