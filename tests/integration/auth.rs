//! Who may call what: the admin token, account keys, and no token.

use reqwest::Method;
use serde_json::json;

use crate::app::TestApp;
use crate::publish::asset_event;

#[tokio::test]
async fn account_keys_reach_only_their_own_account() {
    let app = TestApp::start().await;
    let event = asset_event("asset-updated", "k-1").to_string();

    // No token, or a wrong one: 401.
    let (status, error) = app
        .request(
            Method::POST,
            "/v1/accounts/vimond/events",
            None,
            Some(&event),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(
        app.request(
            Method::GET,
            "/v1/accounts/vimond/events",
            Some("wrong"),
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        app.request(Method::GET, "/v1/catalog", None, None).await.0,
        401
    );

    let (status, created) = app.post("/v1/accounts/vimond/keys", "").await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();

    // Its own account: publish, query, subscribe.
    let (status, _) = app
        .request(
            Method::POST,
            "/v1/accounts/vimond/events",
            Some(&key),
            Some(&event),
        )
        .await;
    assert_eq!(status, 202);
    let (status, page) = app
        .request(
            Method::GET,
            "/v1/accounts/vimond/events?topic=asset-operations",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, page["events"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let body = json!({"endpoint": "http://127.0.0.1:9/h", "events": ["asset-updated"]}).to_string();
    assert_eq!(
        app.request(
            Method::POST,
            "/v1/accounts/vimond/subscriptions",
            Some(&key),
            Some(&body)
        )
        .await
        .0,
        201
    );

    // Another account: refused, and none of its data comes back.
    let other = asset_event("asset-updated", "k-2")
        .to_string()
        .replace("\"vimond\"", "\"other\"");
    let (status, answer) = app
        .request(
            Method::POST,
            "/v1/accounts/other/events",
            Some(&key),
            Some(&other),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = app
        .request(Method::GET, "/v1/accounts/other/events", Some(&key), None)
        .await;
    assert_eq!(status, 403);
    assert!(answer.get("events").is_none());
    assert_eq!(
        app.request(
            Method::GET,
            "/v1/accounts/other/subscriptions",
            Some(&key),
            None
        )
        .await
        .0,
        403
    );
    // Only the admin makes keys.
    assert_eq!(
        app.request(Method::POST, "/v1/accounts/vimond/keys", Some(&key), None)
            .await
            .0,
        403
    );
    assert!(app.stored_events("other").await.is_empty());
}

#[tokio::test]
async fn health_metrics_catalog_and_openapi() {
    let app = TestApp::start().await;
    assert_eq!(
        app.request(Method::GET, "/healthz", None, None).await.0,
        200
    );

    assert_eq!(
        app.post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "m-1").to_string()
        )
        .await
        .0,
        202
    );
    let (status, metrics) = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("reelay_events_published_total 1"),
        "{metrics}"
    );

    let (status, catalog) = app.get("/v1/catalog").await;
    assert_eq!(status, 200);
    let types = catalog["eventTypes"]
        .as_array()
        .or(catalog["types"].as_array())
        .expect("event types");
    let asset_updated = types
        .iter()
        .find(|t| t["name"] == "asset-updated")
        .expect("asset-updated");
    assert_eq!(asset_updated["topic"], "asset-operations");

    let (status, spec) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    for route in [
        "/healthz",
        "/metrics",
        "/v1/catalog",
        "/v1/accounts/{account}/keys",
        "/v1/accounts/{account}/events",
        "/v1/accounts/{account}/subscriptions",
        "/v1/accounts/{account}/subscriptions/{id}",
        "/v1/accounts/{account}/subscriptions/{id}/deliveries",
        "/v1/accounts/{account}/subscriptions/{id}/replay",
        "/v1/accounts/{account}/subscriptions/{id}/enable",
        "/v1/accounts/{account}/jobs/{job}/callbacks",
        "/v1/accounts/{account}/jobs/{job}/notifications",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} missing from the OpenAPI document"
        );
    }
    let one = &paths["/v1/accounts/{account}/subscriptions/{id}"];
    for method in ["get", "delete", "put", "patch"] {
        assert!(one.get(method).is_some(), "{method} of a subscription");
    }
    let callbacks = &paths["/v1/accounts/{account}/jobs/{job}/callbacks"];
    assert!(callbacks.get("post").is_some() && callbacks.get("get").is_some());
    // The catalog says which events change videos, and shows video-change itself.
    let video_change = types
        .iter()
        .find(|t| t["name"] == "video-change")
        .expect("video-change");
    assert_eq!(video_change["topic"], "cms-notifications");
    assert_eq!(asset_updated["videoChange"]["idField"], "assetId");
}
