//! Fuzz target: the native (Vimond envelope) parser takes any bytes without panicking,
//! and what it accepts is a non-empty batch.
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reelay::catalog::Catalog;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(events) = reelay::ingest::native::parse(&CATALOG, "vimond", &body) {
        assert!(!events.is_empty(), "an accepted batch has events");
    }
});
