//! Fuzz target: the Brightcove Dynamic Ingest notification parser takes any bytes (and
//! any job id) without panicking, and what it accepts is a non-empty batch. The input's
//! first line is the job id, the rest the body.
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reelay::catalog::Catalog;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|data: &[u8]| {
    let split = data
        .iter()
        .position(|&byte| byte == b'\n')
        .unwrap_or(data.len());
    let job = String::from_utf8_lossy(&data[..split]);
    let body = Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    let now = 1_719_391_932_250;
    if let Ok(events) = reelay::ingest::brightcove::parse(&CATALOG, "57838016001", &job, &body, now)
    {
        assert!(!events.is_empty(), "an accepted batch has events");
    }
});
