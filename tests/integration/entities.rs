//! Catalog mirroring, first part: the latest state of every catalog entity, from the
//! events that feed it (catalog data), through `GET /v1/accounts/{account}/entities`.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::TestApp;

/// A Vimond catalog event: the envelope with `fields` added.
pub fn catalog_event(name: &str, guid: &str, fields: Value) -> Value {
    let mut event = json!({"eventName": name, "originator": "tests", "tenant": "vimond",
                           "timestamp": "2024-06-26T08:52:12Z", "guid": guid});
    for (key, value) in fields.as_object().unwrap() {
        event[key] = value.clone();
    }
    event
}

/// Publishes `events` in one request to the account "vimond"; it must be accepted.
pub async fn publish(app: &TestApp, events: Vec<Value>) {
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// Every entity of a type, walking the pages.
async fn all_entities(app: &TestApp, entity_type: &str, page: usize) -> Vec<Value> {
    let mut entities = Vec::new();
    let mut after = String::new();
    loop {
        let (status, body) = app
            .get(&format!(
                "/v1/accounts/vimond/entities?type={entity_type}&limit={page}&after={after}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        entities.extend(body["entities"].as_array().unwrap().iter().cloned());
        match body["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return entities,
        }
    }
}

#[tokio::test]
async fn each_entity_is_its_latest_event_with_deletions_marked() {
    let app = TestApp::start().await;
    // Assets 1..=30 created, 1..=10 updated, 21..=30 deleted; asset 11 deleted and 12
    // updated through the platform's catalog events (eventType); 5 categories, one deleted.
    let mut events = Vec::new();
    for n in 1..=30 {
        events.push(catalog_event(
            "asset-created",
            &format!("c-{n}"),
            json!({"assetId": n}),
        ));
    }
    for n in 1..=10 {
        events.push(catalog_event(
            "asset-updated",
            &format!("u-{n}"),
            json!({"assetId": n}),
        ));
    }
    publish(&app, events).await;
    let mut events = Vec::new();
    for n in 21..=30 {
        events.push(catalog_event(
            "asset-deleted",
            &format!("d-{n}"),
            json!({"assetId": n}),
        ));
    }
    events.push(catalog_event(
        "asset-event",
        "ae-11",
        json!({"assetId": "11", "eventType": "asset-deleted"}),
    ));
    events.push(catalog_event(
        "asset-event",
        "ae-12",
        json!({"assetId": 12, "eventType": "asset-updated"}),
    ));
    for n in 1..=5 {
        events.push(catalog_event(
            "category-created",
            &format!("cc-{n}"),
            json!({"categoryId": n}),
        ));
    }
    events.push(catalog_event(
        "category-deleted",
        "cd-5",
        json!({"categoryId": 5}),
    ));
    publish(&app, events).await;

    let assets = all_entities(&app, "asset", 7).await;
    assert_eq!(assets.len(), 30, "every asset once, across pages");
    let ids: Vec<&str> = assets.iter().map(|a| a["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "pages in id order");
    let by_id: HashMap<&str, &Value> = assets
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a))
        .collect();
    for n in 1..=30 {
        let asset = by_id[n.to_string().as_str()];
        let (name, guid, deleted) = match n {
            1..=10 => ("asset-updated", format!("u-{n}"), false),
            11 => ("asset-event", "ae-11".to_owned(), true),
            12 => ("asset-event", "ae-12".to_owned(), false),
            21..=30 => ("asset-deleted", format!("d-{n}"), true),
            _ => ("asset-created", format!("c-{n}"), false),
        };
        assert_eq!(asset["event"]["name"], name, "asset {n}");
        assert_eq!(asset["event"]["id"], guid.as_str(), "asset {n}");
        assert_eq!(asset["deleted"], deleted, "asset {n}");
        assert_eq!(asset["sequence"], asset["event"]["sequence"]);
        assert_eq!(
            asset["event"]["event"]["guid"],
            guid.as_str(),
            "the event as published"
        );
    }

    let categories = all_entities(&app, "category", 100).await;
    assert_eq!(categories.len(), 5);
    let deleted: Vec<&str> = categories
        .iter()
        .filter(|c| c["deleted"] == true)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, vec!["5"]);

    // One entity; and the same id published again changes nothing (a duplicate guid).
    publish(
        &app,
        vec![catalog_event("asset-updated", "u-3", json!({"assetId": 3}))],
    )
    .await;
    let (status, asset) = app.get("/v1/accounts/vimond/entities/asset/3").await;
    assert_eq!(status, 200, "{asset}");
    assert_eq!(asset["event"]["id"], "u-3");
    assert_eq!(asset["sequence"], by_id["3"]["sequence"]);
    // A type the catalog keeps but nothing was published of: an empty page, not an error.
    assert!(all_entities(&app, "contentPanel", 100).await.is_empty());
}

#[tokio::test]
async fn bad_entity_requests_get_clear_answers() {
    let app = TestApp::start().await;
    publish(
        &app,
        vec![catalog_event("asset-created", "c-1", json!({"assetId": 1}))],
    )
    .await;

    let (status, body) = app.get("/v1/accounts/vimond/entities/asset/999").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.get("/v1/accounts/vimond/entities?type=planet").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_entity_type")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("asset"));
    let (status, body) = app.get("/v1/accounts/vimond/entities/planet/1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_entity_type")),
        "{body}"
    );
    let (status, body) = app.get("/v1/accounts/vimond/entities").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("missing_entity_type")),
        "{body}"
    );

    // Another account's key reaches nothing here; this account's key does.
    let (_, other) = app.post("/v1/accounts/another/keys", "").await;
    let other = other["key"].as_str().expect("a key");
    let (status, _) = app
        .request(
            Method::GET,
            "/v1/accounts/vimond/entities/asset/1",
            Some(other),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .request(
            Method::GET,
            "/v1/accounts/another/entities?type=asset",
            Some(other),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["entities"],
        json!([]),
        "accounts never see each other's entities"
    );
}
