//! Fuzz target: the CloudEvents parser (structured, batch and binary modes) takes any
//! body under any content type and `ce-*` headers without panicking.
//!
//! The input is a small HTTP-like text, so seeds and crashes stay readable: the first
//! line is the Content-Type (empty: none), then `name: value` header lines up to an
//! empty line, then the body.
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use reelay::catalog::Catalog;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut rest = data;
    let mut line_number = 0;
    while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line_number == 0 {
            if let Ok(value) = HeaderValue::from_bytes(line)
                && !line.is_empty()
            {
                headers.insert(CONTENT_TYPE, value);
            }
        } else if line.is_empty() {
            break;
        } else if let Some(colon) = line.iter().position(|&byte| byte == b':') {
            let value = line[colon + 1..].trim_ascii_start();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        line_number += 1;
    }
    let body = Bytes::copy_from_slice(rest);
    let _ = reelay::ingest::cloudevents::parse(&CATALOG, &headers, &body);
});
