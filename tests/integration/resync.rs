//! Catalog mirroring, second part: a full resync of a subscription (the latest event of
//! every live entity, marked `"resyncType": "full"`), then incremental changes, so a
//! receiver that keeps the highest sequence per entity ends exactly at Reelay's catalog.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::entities::{catalog_event, publish};
use crate::support::moto::{Moto, REGION};
use crate::support::receiver::{Delivery, Receiver};

type Entity = (String, String);

/// The entity a catalog event of these tests is about, and whether it deletes it.
fn entity_of(body: &Value) -> Option<(Entity, bool)> {
    let name = body["eventName"].as_str()?;
    let (entity_type, field) = if name.starts_with("asset") {
        ("asset", "assetId")
    } else if name.starts_with("category") {
        ("category", "categoryId")
    } else {
        return None;
    };
    let id = match &body[field] {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return None,
    };
    let deleted = name.ends_with("-deleted")
        || body["eventType"]
            .as_str()
            .is_some_and(|t| t.ends_with("-deleted"));
    Some(((entity_type.to_owned(), id), deleted))
}

fn sequence(delivery: &Delivery) -> i64 {
    delivery.headers["reelay-sequence"].parse().unwrap()
}

/// What a mirror holds after applying `deliveries` in any order: per entity, the event
/// with the highest sequence (its sequence, and whether it deleted the entity).
fn mirror(deliveries: &[Delivery]) -> HashMap<Entity, (i64, bool)> {
    let mut mirror: HashMap<Entity, (i64, bool)> = HashMap::new();
    for delivery in deliveries {
        let body: Value = serde_json::from_str(&delivery.body).unwrap();
        let Some((entity, deleted)) = entity_of(&body) else {
            continue;
        };
        let seq = sequence(delivery);
        let held = mirror.entry(entity).or_insert((seq, deleted));
        if seq > held.0 {
            *held = (seq, deleted);
        }
    }
    mirror
}

/// The live entities of a state, with their sequence.
fn live(state: &HashMap<Entity, (i64, bool)>) -> HashMap<Entity, i64> {
    state
        .iter()
        .filter(|(_, (_, deleted))| !deleted)
        .map(|(entity, (seq, _))| (entity.clone(), *seq))
        .collect()
}

/// Reelay's catalog: every entity of the types, through the paged entities API.
async fn catalog(app: &TestApp, types: &[&str]) -> HashMap<Entity, (i64, bool)> {
    let mut state = HashMap::new();
    for entity_type in types {
        let mut after = String::new();
        loop {
            let (status, page) = app
                .get(&format!(
                    "/v1/accounts/vimond/entities?type={entity_type}&limit=1000&after={after}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            for entity in page["entities"].as_array().unwrap() {
                state.insert(
                    (
                        entity_type.to_string(),
                        entity["id"].as_str().unwrap().to_owned(),
                    ),
                    (
                        entity["sequence"].as_i64().unwrap(),
                        entity["deleted"].as_bool().unwrap(),
                    ),
                );
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
    }
    state
}

async fn resync_state(app: &TestApp, subscription: &str) -> Value {
    let (status, run) = app
        .get(&format!(
            "/v1/accounts/vimond/subscriptions/{subscription}/resync"
        ))
        .await;
    assert_eq!(status, 200, "{run}");
    run
}

async fn until_completed(app: &TestApp, subscription: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        "the resync to complete",
        || async {
            let run = resync_state(app, subscription).await;
            (run["state"] == "completed").then_some(run)
        },
    )
    .await
}

/// The deliveries of run `resync_id`.
fn of_run<'a>(deliveries: &'a [Delivery], resync_id: &str) -> Vec<(&'a Delivery, Value)> {
    deliveries
        .iter()
        .filter_map(|delivery| {
            let body: Value = serde_json::from_str(&delivery.body).ok()?;
            (body["resyncId"] == resync_id).then_some((delivery, body))
        })
        .collect()
}

/// Assets 1..=300 and categories 1..=100 created; some updated (some through seed 001's
/// `asset-event`, published as `incremental`), some deleted both ways.
fn initial_catalog() -> Vec<Vec<Value>> {
    let mut batches = Vec::new();
    let asset =
        |name: &str, guid: String, n: u32| catalog_event(name, &guid, json!({"assetId": n}));
    batches.push(
        (1..=300)
            .map(|n| asset("asset-created", format!("ac-{n}"), n))
            .collect(),
    );
    let mut changes: Vec<Value> = (1..=100)
        .map(|n| asset("asset-updated", format!("au-{n}"), n))
        .collect();
    changes.extend((101..=130).map(|n| {
        catalog_event(
            "asset-event",
            &format!("ae-{n}"),
            json!({"assetId": n.to_string(), "eventType": "asset-updated", "resyncType": "incremental"}),
        )
    }));
    changes.extend((241..=250).map(|n| {
        catalog_event(
            "asset-event",
            &format!("aed-{n}"),
            json!({"assetId": n, "eventType": "asset-deleted", "resyncType": "incremental"}),
        )
    }));
    changes.extend((251..=300).map(|n| asset("asset-deleted", format!("ad-{n}"), n)));
    batches.push(changes);
    let category =
        |name: &str, guid: String, n: u32| catalog_event(name, &guid, json!({"categoryId": n}));
    let mut categories: Vec<Value> = (1..=100)
        .map(|n| category("category-created", format!("cc-{n}"), n))
        .collect();
    categories.extend((1..=30).map(|n| category("category-updated", format!("cu-{n}"), n)));
    categories.extend((81..=100).map(|n| category("category-deleted", format!("cd-{n}"), n)));
    batches.push(categories);
    batches
}

/// One round of the changes that keep arriving during a resync: a new asset, an update,
/// a deletion, a deleted asset created again, a category updated and one deleted.
fn changes(round: u32) -> Vec<Value> {
    let asset = |name: &str, suffix: &str, n: u32| {
        catalog_event(name, &format!("p-{round}-{suffix}"), json!({"assetId": n}))
    };
    let category = |name: &str, suffix: &str, n: u32| {
        catalog_event(
            name,
            &format!("p-{round}-{suffix}"),
            json!({"categoryId": n}),
        )
    };
    vec![
        asset("asset-created", "new", 1_000 + round),
        asset("asset-updated", "up", (round * 7) % 300 + 1),
        asset("asset-deleted", "del", (round * 13) % 240 + 1),
        asset("asset-created", "again", 251 + round % 50),
        catalog_event(
            "asset-event",
            &format!("p-{round}-ae"),
            json!({"assetId": ((round * 11) % 300 + 1).to_string(), "eventType": "asset-updated", "resyncType": "incremental"}),
        ),
        category("category-updated", "cup", round % 80 + 1),
        category("category-deleted", "cdel", (round * 3) % 100 + 1),
    ]
}

const MIRRORED_TOPICS: [&str; 3] = ["asset-operations", "category-operations", "catalog-events"];

#[tokio::test]
async fn a_resync_while_changes_arrive_gives_the_receiver_exactly_the_catalog() {
    let app = Arc::new(TestApp::start().await);
    let receiver = Receiver::start().await;
    for batch in initial_catalog() {
        publish(&app, batch).await;
    }

    // Changes keep arriving, before, during and a little after the resync.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (app, stop, rounds) = (app.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && round < 3_000 {
                publish(&app, changes(round)).await;
                round += 1;
                rounds.store(round as usize, Ordering::Relaxed);
            }
        })
    };
    eventually(Duration::from_secs(10), "some changes", || async {
        (rounds.load(Ordering::Relaxed) >= 5).then_some(())
    })
    .await;

    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/mirror"), "topics": MIRRORED_TOPICS, "resync": true})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let subscription = created["id"].as_str().unwrap().to_owned();
    receiver
        .hook("/mirror", created["secret"].as_str().unwrap(), &[])
        .await;
    let resync_id = created["resync"]["resyncId"].as_str().unwrap().to_owned();
    assert!(resync_id.starts_with("rs_"), "{created}");
    assert_eq!(
        created["resync"]["types"],
        json!(["asset", "category", "contentPanel"])
    );
    assert!(
        created["resync"]["total"].as_u64().unwrap() > 300,
        "{created}"
    );

    let run = until_completed(&app, &subscription).await;
    let at_completion = rounds.load(Ordering::Relaxed);
    // A few more changes after the run, then the publisher stops.
    eventually(Duration::from_secs(10), "changes after the run", || async {
        (rounds.load(Ordering::Relaxed) >= at_completion + 3).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    assert!(
        rounds.load(Ordering::Relaxed) > 10,
        "changes arrived during the run"
    );

    // Once the stream is drained, the mirror is the catalog: no entity missing, none
    // extra, none resurrected, each at its latest sequence.
    let types = ["asset", "category"];
    let truth = catalog(&app, &types).await;
    let deliveries = eventually(
        Duration::from_secs(30),
        "the mirror to converge",
        || async {
            let deliveries = receiver.deliveries("/mirror").await;
            (live(&mirror(&deliveries)) == live(&truth)).then_some(deliveries)
        },
    )
    .await;
    let mirrored = mirror(&deliveries);
    for (entity, (seq, deleted)) in &truth {
        if *deleted && let Some(held) = mirrored.get(entity) {
            assert_eq!(held, &(*seq, true), "{entity:?} is deleted");
        }
    }
    // Deliveries that came before the test gave the receiver the secret are not checked.
    assert!(deliveries.iter().all(|d| d.verified != Some(false)));
    assert!(deliveries.iter().any(|d| d.verified == Some(true)));

    // The run: one delivery per live entity at most, each marked, with its own id.
    let copies = of_run(&deliveries, &resync_id);
    assert_eq!(copies.len() as u64, run["sent"].as_u64().unwrap(), "{run}");
    let mut seen = HashMap::new();
    for (delivery, body) in &copies {
        assert_eq!(body["resyncType"], "full");
        let (entity, deleted) = entity_of(body).unwrap();
        assert!(!deleted, "a resync never sends a deleted entity: {body}");
        let guid = body["guid"].as_str().unwrap();
        assert_eq!(
            delivery.webhook_id.as_deref(),
            Some(format!("{guid}.{resync_id}").as_str())
        );
        *seen.entry(entity).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "entities sent twice in one run: {twice:?}"
    );
    // Incremental deliveries of seed 001's events keep the resyncType they were published with.
    let incremental = deliveries.iter().filter(|d| {
        let body: Value = serde_json::from_str(&d.body).unwrap();
        body["eventName"] == "asset-event" && body.get("resyncId").is_none()
    });
    for delivery in incremental {
        let body: Value = serde_json::from_str(&delivery.body).unwrap();
        assert_eq!(body["resyncType"], "incremental", "{body}");
    }

    // The subscription shows the run.
    let (_, shown) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{subscription}"))
        .await;
    assert_eq!(shown["resync"]["state"], "completed", "{shown}");
    assert_eq!(shown["resync"]["resyncId"], resync_id.as_str());
}

#[tokio::test]
async fn a_resync_interrupted_by_sigkill_resumes_after_restart_and_completes() {
    // Few deliveries at once to a slow receiver: the run is still going when killed.
    let mut app = TestApp::start_with(&[("REELAY_MAX_IN_FLIGHT", "8")]).await;
    let receiver = Receiver::start().await;
    for first in (1..=2_000).step_by(500) {
        publish(
            &app,
            (first..first + 500)
                .map(|n| catalog_event("asset-created", &format!("ac-{n}"), json!({"assetId": n})))
                .collect(),
        )
        .await;
    }
    publish(
        &app,
        (1..=500)
            .map(|n| {
                catalog_event(
                    "category-created",
                    &format!("cc-{n}"),
                    json!({"categoryId": n}),
                )
            })
            .collect(),
    )
    .await;
    let (subscription, _) = app
        .subscribe_receiver(
            &receiver,
            "/mirror",
            json!({"topics": MIRRORED_TOPICS}),
            &[],
        )
        .await;
    receiver.delay("/mirror", 20).await;
    let (status, run) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{subscription}/resync"),
            "",
        )
        .await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(
        (run["state"].as_str(), run["total"].as_u64()),
        (Some("running"), Some(2_500))
    );
    let resync_id = run["resyncId"].as_str().unwrap().to_owned();

    // Killed once some progress is saved, well before the end.
    let saved = eventually(Duration::from_secs(30), "a saved page", || async {
        let run = resync_state(&app, &subscription).await;
        (run["sent"].as_u64().unwrap() >= 500).then_some(run)
    })
    .await;
    assert_eq!(saved["state"], "running", "{saved}");
    app.kill_and_restart().await;
    let before_restart = of_run(&receiver.deliveries("/mirror").await, &resync_id).len();
    assert!(before_restart < 2_500, "the run was cut short");
    receiver.delay("/mirror", 0).await;

    let run = until_completed(&app, &subscription).await;
    assert_eq!(
        (run["sent"].as_u64(), run["total"].as_u64()),
        (Some(2_500), Some(2_500)),
        "{run}"
    );
    let deliveries = receiver.deliveries("/mirror").await;
    let copies = of_run(&deliveries, &resync_id);
    let mut sent: HashMap<Entity, usize> = HashMap::new();
    for (_, body) in &copies {
        *sent.entry(entity_of(body).unwrap().0).or_insert(0) += 1;
    }
    let truth = live(&catalog(&app, &["asset", "category"]).await);
    let missing: Vec<_> = truth.keys().filter(|e| !sent.contains_key(*e)).collect();
    assert!(missing.is_empty(), "entities never sent: {missing:?}");
    assert_eq!(sent.len(), truth.len(), "nothing but the catalog");
    // What was resent is the pages after the last save: a few pages at most.
    let resent = sent.values().filter(|count| **count > 1).count();
    assert!(resent <= 2_000, "{resent} entities sent again");
    assert!(deliveries.iter().all(|d| d.verified == Some(true)));
}

#[tokio::test]
async fn bad_resync_requests_get_clear_answers() {
    // One delivery at a time to a slow receiver: a run lasts long enough to be asked twice.
    let app = TestApp::start_with(&[("REELAY_MAX_IN_FLIGHT", "1")]).await;
    let receiver = Receiver::start().await;
    publish(
        &app,
        (1..=50)
            .map(|n| catalog_event("asset-created", &format!("ac-{n}"), json!({"assetId": n})))
            .collect(),
    )
    .await;
    let (subscription, _) = app
        .subscribe_receiver(
            &receiver,
            "/slow",
            json!({"topics": ["asset-operations"]}),
            &[],
        )
        .await;
    receiver.delay("/slow", 300).await;
    let resync = format!("/v1/accounts/vimond/subscriptions/{subscription}/resync");

    let (status, body) = app.get(&resync).await;
    assert_eq!(status, 404, "no run yet: {body}");
    let (status, body) = app
        .post("/v1/accounts/vimond/subscriptions/sub_nope/resync", "")
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.post(&resync, r#"{"types": ["planet"]}"#).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (422, Some("unknown_entity_type"), Some("types")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("asset"));
    let (status, body) = app.post(&resync, r#"{"types": "asset"}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_resync")),
        "{body}"
    );

    // Another account's subscription is not found through this account, even by id.
    let (status, other) = app
        .post(
            "/v1/accounts/another/subscriptions",
            &json!({"endpoint": receiver.url("/other"), "topics": ["asset-operations"]})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    let other_id = other["id"].as_str().unwrap();
    let (_, key) = app.post("/v1/accounts/vimond/keys", "").await;
    let key = key["key"].as_str().unwrap();
    let (status, body) = app
        .request(
            Method::POST,
            &format!("/v1/accounts/vimond/subscriptions/{other_id}/resync"),
            Some(key),
            Some("{}"),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app
        .request(
            Method::POST,
            &format!("/v1/accounts/another/subscriptions/{other_id}/resync"),
            Some(key),
            Some("{}"),
        )
        .await;
    assert_eq!(status, 403, "an account key reaches its own account only");

    // One run at a time.
    let (status, first) = app.post(&resync, r#"{"types": ["asset"]}"#).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        (first["types"].clone(), first["total"].as_u64()),
        (json!(["asset"]), Some(50))
    );
    let (status, body) = app.post(&resync, "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("resync_running")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(first["resyncId"].as_str().unwrap())
    );
    let running = resync_state(&app, &subscription).await;
    assert_eq!(running["state"], "running");
    assert_eq!(running["resyncId"], first["resyncId"]);

    // Creation checks its resync options before storing anything.
    let (status, body) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/new"), "topics": ["category-operations"],
                    "resync": true, "resyncTypes": ["planet"]})
            .to_string(),
        )
        .await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (422, Some("unknown_entity_type"), Some("resyncTypes")),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/new"), "topics": ["category-operations"], "resync": "yes"})
                .to_string(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_resync")),
        "{body}"
    );
    let (_, listed) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test]
async fn a_cloudevents_subscription_gets_the_marking_in_its_data_and_ids_of_its_own() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    publish(
        &app,
        (1..=20)
            .map(|n| {
                catalog_event(
                    "asset-event",
                    &format!("ae-{n}"),
                    json!({"assetId": n.to_string(), "eventType": "asset-updated", "resyncType": "incremental"}),
                )
            })
            .collect(),
    )
    .await;
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/ce"), "events": ["asset-event"], "format": "cloudevents"})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The receiver learns the secret before the first delivery, so it verifies them all.
    receiver
        .hook("/ce", created["secret"].as_str().unwrap(), &[])
        .await;
    let subscription = created["id"].as_str().unwrap();
    let (status, started) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{subscription}/resync"),
            &json!({"types": ["asset"]}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let resync_id = started["resyncId"].as_str().unwrap();
    until_completed(&app, subscription).await;
    let deliveries = eventually(Duration::from_secs(10), "20 deliveries", || async {
        let got = receiver.deliveries("/ce").await;
        (got.len() >= 20).then_some(got)
    })
    .await;
    let ids: Vec<_> = deliveries
        .iter()
        .map(|d| {
            (
                d.webhook_id.clone(),
                d.headers.get("reelay-sequence").cloned(),
            )
        })
        .collect();
    assert_eq!(deliveries.len(), 20, "{ids:?}");
    let truth = catalog(&app, &["asset"]).await;
    for delivery in &deliveries {
        assert_eq!(delivery.verified, Some(true));
        assert_eq!(delivery.cloudevent_error, None);
        let cloudevent = delivery.cloudevent.as_ref().expect("read by the SDK");
        let data = &cloudevent["data"];
        assert_eq!(data["resyncType"], "full", "{cloudevent}");
        assert_eq!(data["resyncId"], resync_id);
        let guid = data["guid"].as_str().unwrap();
        let id = format!("{guid}.{resync_id}");
        assert_eq!(cloudevent["attributes"]["id"], id.as_str());
        assert_eq!(delivery.webhook_id.as_deref(), Some(id.as_str()));
        let (entity, _) = entity_of(data).unwrap();
        assert_eq!(
            cloudevent["attributes"]["reelaysequence"],
            truth[&entity].0.to_string(),
            "the event's own sequence"
        );
    }
}

#[tokio::test]
async fn an_sqs_fifo_queue_gets_resync_copies_of_events_it_already_got() {
    let moto = Moto::start().await.expect("moto_server");
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let queue_url = crate::aws_sinks::create_fifo_queue(&sqs, "mirror.fifo").await;
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::start_with(&env).await;
    let (subscription, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "sqs", "queueUrl": queue_url, "endpointUrl": moto.endpoint,
                                   "region": REGION},
                   "topics": ["asset-operations"]}),
        )
        .await;
    publish(
        &app,
        (1..=15)
            .map(|n| catalog_event("asset-updated", &format!("au-{n}"), json!({"assetId": n})))
            .collect(),
    )
    .await;
    let incremental = crate::aws_sinks::receive(&moto, &queue_url, 15).await;
    assert_eq!(incremental.len(), 15);

    // The same events again, as a resync: the queue's deduplication (5 minutes, on the
    // deduplication id) must not take them for the ones it already delivered.
    let (status, run) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{subscription}/resync"),
            r#"{"types": ["asset"]}"#,
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let resync_id = run["resyncId"].as_str().unwrap();
    let copies = crate::aws_sinks::receive(&moto, &queue_url, 15).await;
    assert_eq!(copies.len(), 15);
    let by_guid =
        |messages: &[(String, HashMap<String, String>)]| -> HashMap<String, (Value, String)> {
            messages
                .iter()
                .map(|(body, attributes)| {
                    let body: Value = serde_json::from_str(body).unwrap();
                    let guid = body["guid"].as_str().unwrap().to_owned();
                    (guid, (body, attributes["reelaySequence"].clone()))
                })
                .collect()
        };
    let (incremental, copies) = (by_guid(&incremental), by_guid(&copies));
    assert_eq!(copies.len(), 15, "a copy of each asset's event");
    for (guid, (body, sequence)) in &copies {
        assert_eq!(
            (&body["resyncType"], &body["resyncId"]),
            (&json!("full"), &json!(resync_id))
        );
        assert_eq!(sequence, &incremental[guid].1, "the event's own sequence");
    }
    until_completed(&app, &subscription).await;
}

#[tokio::test]
async fn failed_resync_deliveries_are_retried_as_resync_copies() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    publish(
        &app,
        (1..=5)
            .map(|n| catalog_event("asset-updated", &format!("au-{n}"), json!({"assetId": n})))
            .collect(),
    )
    .await;
    // The first three deliveries fail, then the receiver recovers.
    let failing = [500, 500, 500, 200].map(crate::support::receiver::Response::status);
    let (subscription, _) = app
        .subscribe_receiver(
            &receiver,
            "/flaky",
            json!({"topics": ["asset-operations"]}),
            &failing,
        )
        .await;
    let (status, run) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{subscription}/resync"),
            "{}",
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let resync_id = run["resyncId"].as_str().unwrap().to_owned();
    let deliveries = eventually(
        Duration::from_secs(20),
        "every entity delivered",
        || async {
            let got = receiver.deliveries("/flaky").await;
            let mut ok: Vec<_> = got
                .iter()
                .filter(|d| d.headers.contains_key("reelay-sequence") && d.verified == Some(true))
                .collect();
            ok.sort_by_key(|d| d.webhook_id.clone());
            ok.dedup_by_key(|d| d.webhook_id.clone());
            (got.len() >= 8 && ok.len() == 5).then_some(got)
        },
    )
    .await;
    // Every attempt, first or retry, is the marked copy with the run's id.
    for (delivery, body) in of_run(&deliveries, &resync_id) {
        assert_eq!(body["resyncType"], "full");
        let guid = body["guid"].as_str().unwrap();
        assert_eq!(
            delivery.webhook_id.as_deref(),
            Some(format!("{guid}.{resync_id}").as_str())
        );
    }
    assert_eq!(of_run(&deliveries, &resync_id).len(), deliveries.len());
    let (_, log) = app
        .get(&format!(
            "/v1/accounts/vimond/subscriptions/{subscription}/deliveries"
        ))
        .await;
    let attempts = log["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{log}");
    assert!(
        attempts.iter().all(|a| a["resyncId"] == resync_id.as_str()),
        "{log}"
    );
    until_completed(&app, &subscription).await;
}
