//! Ingest: request bodies to validated events, one file per wire format.

pub mod cloudevents;
pub mod native;
pub mod user_token;

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
