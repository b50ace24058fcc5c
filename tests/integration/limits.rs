//! Limits: what one request may make the server spend (event and body sizes, events per
//! request, page bytes, job callbacks, subscriptions, slow and surplus connections,
//! publish rates), each refused with a JSON error for that account alone.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{ADMIN, TestApp, eventually};
use crate::entities::catalog_event;
use crate::support::receiver::Receiver;

/// An asset event of about `padding` bytes more than the envelope, without a tenant (so
/// any account takes it).
fn padded_asset(guid: &str, asset: u32, padding: usize) -> Value {
    json!({"eventName": "asset-created", "originator": "tests", "guid": guid,
           "timestamp": "2024-06-26T08:52:12Z", "assetId": asset, "padding": "x".repeat(padding)})
}

/// The host and port the server listens on.
fn address(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_owned()
}

/// Sends `request` on a new connection and reads until the server closes it (or 15 s).
async fn raw(app: &TestApp, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(address(app)).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a raw HTTP/1.1 answer.
fn json_body(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON answer: {answer}"))
}

/// Every event of the account, walking the pages of `limit`; returns them with the
/// size of each page.
async fn all_events(app: &TestApp, account: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
    let (mut events, mut pages) = (Vec::new(), Vec::new());
    let mut after = 0;
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/accounts/{account}/events?limit={limit}&after={after}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let got = page["events"].as_array().expect("events").clone();
        pages.push(got.len());
        events.extend(got);
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return (events, pages),
        }
        assert!(pages.len() < 100, "paging never ends: {pages:?}");
    }
}

#[tokio::test]
async fn an_event_over_the_size_limit_gets_413_with_its_index_in_every_ingest_path_and_nothing_is_stored()
 {
    let app = TestApp::start_with(&[("REELAY_MAX_EVENT_BYTES", "2KiB")]).await;
    let small = padded_asset("s-1", 1, 10);
    let big = padded_asset("b-1", 2, 3000);

    // Native events: a batch with the big one second.
    let (status, error) = app
        .post(
            "/v1/accounts/vimond/events",
            &json!([small, big]).to_string(),
        )
        .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "event_too_large");
    assert_eq!(error["error"]["index"], 1);
    // One alone under the limit is fine.
    let (status, _) = app
        .post("/v1/accounts/vimond/events", &small.to_string())
        .await;
    assert_eq!(status, 202);

    // CloudEvents, in batch mode.
    let cloudevent = |id: &str, padding: usize| {
        json!({"specversion": "1.0", "type": "com.applicaster.favorites.added.v1",
               "source": "app://tv", "id": id, "time": "2024-06-07T14:27:16.035Z",
               "data": {"entryId": "entry-7", "padding": "x".repeat(padding)}})
    };
    let response = app
        .http
        .post(format!("{}/v1/accounts/vimond/cloudevents", app.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([cloudevent("c-1", 10), cloudevent("c-2", 3000)]).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["code"], "event_too_large");
    assert_eq!(error["error"]["index"], 1);

    // Dynamic Ingest notifications.
    let job = "d3ef8751-2b88-4141-95d5-83f0393aca07";
    let notification = json!({"entity": "default/audio192", "entityType": "DYNAMIC_RENDITION",
        "version": "1", "action": "CREATE", "jobId": job, "videoId": "5660367449001",
        "accountId": "57838016001", "status": "SUCCESS", "padding": "x".repeat(3000)});
    let (status, error) = app
        .post(
            &format!("/v1/accounts/57838016001/jobs/{job}/notifications"),
            &notification.to_string(),
        )
        .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "event_too_large");
    assert_eq!(error["error"]["index"], 0);

    let (stored, _) = all_events(&app, "vimond", 1000).await;
    // (An asset event is followed by the video-change Reelay derives from it.)
    let ids: Vec<&str> = stored
        .iter()
        .filter(|e| e["name"] == "asset-created")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["s-1"], "only the accepted event is stored");
    let (stored, _) = all_events(&app, "57838016001", 1000).await;
    assert!(stored.is_empty(), "{stored:?}");
}

#[tokio::test]
async fn too_many_events_and_too_large_bodies_get_json_413s() {
    let app = TestApp::start_with(&[
        ("REELAY_MAX_EVENTS_PER_REQUEST", "3"),
        ("REELAY_MAX_REQUEST_BYTES", "8KiB"),
    ])
    .await;
    let batch: Vec<Value> = (0..4)
        .map(|n| padded_asset(&format!("e-{n}"), n, 0))
        .collect();
    let (status, error) = app
        .post("/v1/accounts/vimond/events", &json!(batch).to_string())
        .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "too_many_events");
    let (status, _) = app
        .post("/v1/accounts/vimond/events", &json!(batch[..3]).to_string())
        .await;
    assert_eq!(status, 202);

    // A body over the limit, with its length declared, on two routes.
    let big = json!([padded_asset("big", 9, 10_000)]).to_string();
    for path in [
        "/v1/accounts/vimond/events",
        "/v1/accounts/vimond/subscriptions",
    ] {
        let (status, error) = app.post(path, &big).await;
        assert_eq!(status, 413, "{path}: {error}");
        assert_eq!(error["error"]["code"], "payload_too_large", "{path}");
    }
    // And sent in chunks, without a length.
    let mut request = format!(
        "POST /v1/accounts/vimond/events HTTP/1.1\r\nHost: reelay\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in big.as_bytes().chunks(4000) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    request.push_str("0\r\n\r\n");
    let answer = raw(&app, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "payload_too_large");

    let (stored, _) = all_events(&app, "vimond", 1000).await;
    let published = stored
        .iter()
        .filter(|e| e["name"] == "asset-created")
        .count();
    assert_eq!(published, 3);
}

#[tokio::test]
async fn pages_end_at_the_byte_bound_and_next_walks_every_event_in_the_api_catch_up_and_resync() {
    let app = TestApp::start_with(&[("REELAY_MAX_PAGE_BYTES", "4KiB")]).await;
    let receiver = Receiver::start().await;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/paged",
            json!({"events": ["category-created"]}),
            &[],
        )
        .await;
    // Twelve events of about 1 KiB (categories: no video-change follows them): four fit
    // a 4 KiB page.
    let events: Vec<Value> = (1..=12)
        .map(|n| {
            catalog_event(
                "category-created",
                &format!("a-{n}"),
                json!({"categoryId": n, "padding": "x".repeat(1000)}),
            )
        })
        .collect();
    let (status, answer) = app
        .post("/v1/accounts/vimond/events", &json!(events).to_string())
        .await;
    assert_eq!(status, 202, "{answer}");

    // The API: pages of at most four or five events (the one that reaches the bound
    // ends its page), and every event once, in order.
    let (stored, pages) = all_events(&app, "vimond", 1000).await;
    let ids: Vec<String> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=12).map(|n| format!("a-{n}")).collect();
    assert_eq!(ids, expected);
    assert!(pages.len() >= 3, "{pages:?}");
    assert!(pages.iter().all(|&n| n <= 5), "{pages:?}");
    // NDJSON: the same first page, a line per event.
    let response = app
        .http
        .get(format!("{}/v1/accounts/vimond/events?limit=1000", app.url))
        .bearer_auth(ADMIN)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("body");
    assert_eq!(text.lines().count(), pages[0], "{text}");

    // Entities, by id.
    let mut entity_ids = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/accounts/vimond/entities?type=category&limit=1000&after={after}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let got = page["entities"].as_array().unwrap();
        assert!(got.len() <= 5, "{}", got.len());
        entity_ids.extend(got.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let mut expected_ids: Vec<String> = (1..=12).map(|n| n.to_string()).collect();
    expected_ids.sort();
    assert_eq!(entity_ids, expected_ids);

    // Catch-up: a replay from the start reads the log again in byte-bounded pages.
    eventually(Duration::from_secs(20), "the live deliveries", || async {
        (receiver.deliveries("/paged").await.len() >= 12).then_some(())
    })
    .await;
    let first = stored[0]["sequence"].as_i64().unwrap();
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"fromSequence": first}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let delivered = eventually(Duration::from_secs(30), "every event replayed", || async {
        let got = receiver.deliveries("/paged").await;
        (got.len() >= 24).then_some(got)
    })
    .await;
    let replayed: HashSet<String> = delivered[12..]
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(replayed, expected.iter().cloned().collect::<HashSet<_>>());

    // Resync: every live entity, read in byte-bounded pages.
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/mirror"), "events": ["category-created"], "resync": true})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    receiver
        .hook("/mirror", created["secret"].as_str().unwrap(), &[])
        .await;
    let mirrored = eventually(Duration::from_secs(30), "the resync", || async {
        let got = receiver.deliveries("/mirror").await;
        (got.len() >= 12).then_some(got)
    })
    .await;
    let categories: HashSet<String> = mirrored
        .iter()
        .filter_map(|d| {
            let body: Value = serde_json::from_str(&d.body).ok()?;
            Some(body["categoryId"].to_string())
        })
        .collect();
    assert_eq!(categories.len(), 12, "{categories:?}");
}

#[tokio::test]
async fn a_hundred_thousand_callback_urls_are_refused_at_once() {
    let app = TestApp::start().await;
    let urls: Vec<String> = (0..100_000)
        .map(|n| format!("https://host{n}.example.com/callback"))
        .collect();
    let body = json!({ "callbacks": urls }).to_string();
    let job = "d3ef8751-2b88-4141-95d5-83f0393aca07";
    let path = format!("/v1/accounts/vimond/jobs/{job}/callbacks");
    // Warm the connection, so the time below is the request's.
    let (status, _) = app.get(&path).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let (status, error) = app.post(&path, &body).await;
    let took = started.elapsed();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "too_many_callbacks");
    assert!(
        took < Duration::from_millis(900),
        "refused in {took:?}: counted before any URL is looked at"
    );
    let (_, listed) = app.get(&path).await;
    assert_eq!(listed["callbacks"], json!([]));
}

#[tokio::test]
async fn live_job_callbacks_and_subscriptions_are_bounded_per_account() {
    let app = TestApp::start_with(&[
        ("REELAY_MAX_JOB_CALLBACKS_PER_ACCOUNT", "3"),
        ("REELAY_MAX_SUBSCRIPTIONS_PER_ACCOUNT", "2"),
    ])
    .await;
    let app = &app;
    let register = |account: &str, job: &str, urls: &[&str]| {
        let path = format!("/v1/accounts/{account}/jobs/{job}/callbacks");
        let body = json!({ "callbacks": urls }).to_string();
        async move { app.post(&path, &body).await }
    };
    let (status, answer) = register(
        "vimond",
        "job-1",
        &["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"],
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    // Two more on another job would make four live ones in the account.
    let (status, error) = register(
        "vimond",
        "job-2",
        &["http://127.0.0.1:9/c", "http://127.0.0.1:9/d"],
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "too_many_job_callbacks");
    let (_, listed) = app.get("/v1/accounts/vimond/jobs/job-2/callbacks").await;
    assert_eq!(listed["callbacks"], json!([]), "nothing registered");
    // One fits; a URL already registered costs nothing.
    let (status, answer) = register("vimond", "job-2", &["http://127.0.0.1:9/c"]).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = register("vimond", "job-1", &["http://127.0.0.1:9/a"]).await;
    assert_eq!(status, 201, "{answer}");
    // Another account has its own bound.
    let (status, answer) = register(
        "other",
        "job-1",
        &["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"],
    )
    .await;
    assert_eq!(status, 201, "{answer}");

    // Standing subscriptions (job callbacks are not counted among them).
    for n in 0..2 {
        app.subscribe(
            "vimond",
            json!({"endpoint": format!("http://127.0.0.1:9/s{n}"), "events": ["asset-created"]}),
        )
        .await;
    }
    let (status, error) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": "http://127.0.0.1:9/s2", "topics": ["asset-operations"]})
                .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "too_many_subscriptions");
    let (_, listed) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    app.subscribe(
        "other",
        json!({"endpoint": "http://127.0.0.1:9/s0", "events": ["asset-created"]}),
    )
    .await;
}

#[tokio::test]
async fn a_client_sending_headers_a_byte_a_second_is_disconnected_after_the_header_timeout() {
    let app = TestApp::start_with(&[("REELAY_HEADER_TIMEOUT", "2s")]).await;
    let tcp = TcpStream::connect(address(&app)).await.expect("connect");
    let (mut read, mut write) = tcp.into_split();
    let started = Instant::now();
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: reelay\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let trickle = tokio::spawn(async move {
        for byte in request {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "still connected after 30 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("200 OK"),
        "the slow request was served: {answer}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "disconnected after {took:?}, with a 2 s header timeout"
    );
    // Others are served meanwhile and after.
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = TestApp::start_with(&[("REELAY_BODY_TIMEOUT", "1s")]).await;
    let request = format!(
        "POST /v1/accounts/vimond/events HTTP/1.1\r\nHost: reelay\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{\"eventName\""
    );
    let started = Instant::now();
    let answer = raw(&app, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_and_a_freed_slot_serves_again() {
    let app = TestApp::start_with(&[("REELAY_MAX_CONNECTIONS", "2")]).await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: reelay\r\n\r\n";
    // Two kept-alive connections, each served once.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(address(&app)).await.expect("connect");
        tcp.write_all(healthz).await.expect("write");
        let mut buffer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        open.push(tcp);
    }
    // A third is closed unanswered.
    let mut third = TcpStream::connect(address(&app)).await.expect("connect");
    let _ = third.write_all(healthz).await;
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection over the cap stayed open");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The first two still work.
    for tcp in &mut open {
        tcp.write_all(healthz).await.expect("write");
        let mut buffer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    }
    // Once one closes, a new connection is served.
    drop(open.pop());
    eventually(
        Duration::from_secs(10),
        "a free connection slot",
        || async {
            let answer = raw(
                &app,
                b"GET /healthz HTTP/1.1\r\nHost: reelay\r\nConnection: close\r\n\r\n",
            )
            .await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_key_over_its_publish_rate_gets_429_while_another_accounts_publishes_go_on() {
    let app = TestApp::start_with(&[
        ("REELAY_PUBLISH_RATE_LIMIT", "5"),
        ("REELAY_PUBLISH_BURST", "10"),
    ])
    .await;
    let mut keys = Vec::new();
    for account in ["alpha", "beta"] {
        let (status, created) = app.post(&format!("/v1/accounts/{account}/keys"), "").await;
        assert_eq!(status, 201, "{created}");
        keys.push(created["key"].as_str().unwrap().to_owned());
    }
    let publish = |account: &'static str, key: String, first: u32, count: u32| {
        let batch: Vec<Value> = (first..first + count)
            .map(|n| padded_asset(&format!("{account}-{n}"), n, 0))
            .collect();
        let request = app
            .http
            .post(format!("{}/v1/accounts/{account}/events", app.url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(json!(batch).to_string());
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: Value = response.json().await.expect("JSON");
            (status, retry_after, body)
        }
    };
    // alpha's burst, then one more: refused, with when to come back.
    let (status, _, body) = publish("alpha", keys[0].clone(), 0, 10).await;
    assert_eq!(status, 202, "{body}");
    let (status, retry_after, body) = publish("alpha", keys[0].clone(), 10, 5).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // beta's publishes go on meanwhile, and so do the admin token's (a key of its own).
    for round in 0..2 {
        let (status, _, body) = publish("beta", keys[1].clone(), round * 5, 5).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _, body) = publish("alpha", ADMIN.to_owned(), 100, 5).await;
    assert_eq!(status, 202, "{body}");
    // alpha's key gets through again once it has waited.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, body) = publish("alpha", keys[0].clone(), 10, 5).await;
    assert_eq!(status, 202, "{body}");
    let (alpha, _) = all_events(&app, "alpha", 1000).await;
    let published = alpha
        .iter()
        .filter(|e| e["name"] == "asset-created")
        .count();
    assert_eq!(published, 20, "the refused request stored nothing");
    let (status, _) = app
        .request(
            Method::GET,
            "/v1/accounts/beta/events",
            Some(&keys[1]),
            None,
        )
        .await;
    assert_eq!(status, 200);
}
