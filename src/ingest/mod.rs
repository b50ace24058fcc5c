//! Ingest: request bodies to events (to be written).
