//! API request bodies are read through their documented types: a member a route does not
//! know is refused with `422 unknown_member` naming it, and nothing is stored; event
//! documents keep their extra members.

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{ADMIN, TestApp};
use crate::publish::asset_event;

/// The (status, code, field) of an answer.
fn refusal(answer: &(u16, Value)) -> (u16, Option<&str>, Option<&str>) {
    let (status, body) = answer;
    (
        *status,
        body["error"]["code"].as_str(),
        body["error"]["field"].as_str(),
    )
}

#[tokio::test]
async fn a_subscription_with_an_unknown_member_is_refused_and_not_stored() {
    let app = TestApp::start().await;
    let path = "/v1/accounts/vimond/subscriptions";
    let refused = [
        (
            json!({"endpoint": "http://127.0.0.1:9/hook", "events": ["asset-updated"], "orderBy": "entity"}),
            "orderBy",
        ),
        // Each destination type knows its own members: a stream name is not a queue's.
        (
            json!({"destination": {"type": "sqs", "queueUrl": "http://127.0.0.1:9/1/q", "streamName": "s"},
                   "events": ["asset-updated"], "skipDestinationCheck": true}),
            "destination.streamName",
        ),
        (
            json!({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "roleArn": "arn:aws:iam::1:role/r"},
                   "events": ["asset-updated"]}),
            "destination.roleArn",
        ),
        (
            json!({"destination": {"type": "kinesis", "streamName": "s", "topicArn": "arn:aws:sns:eu-west-1:1:t"},
                   "topics": ["asset-operations"], "skipDestinationCheck": true}),
            "destination.topicArn",
        ),
    ];
    for (body, field) in refused {
        let answer = app.post(path, &body.to_string()).await;
        assert_eq!(
            refusal(&answer),
            (422, Some("unknown_member"), Some(field)),
            "{body}: {}",
            answer.1
        );
        assert!(
            answer.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{}",
            answer.1
        );
    }
    let (status, listed) = app.get(path).await;
    assert_eq!((status, listed), (200, json!([])), "nothing stored");

    // The existing rules keep their codes, and the AWS options are members of the AWS
    // destinations.
    let answer = app
        .post(path, &json!({"events": ["asset-updated"]}).to_string())
        .await;
    assert_eq!(
        refusal(&answer),
        (422, Some("missing_endpoint"), Some("endpoint"))
    );
    let answer = app
        .post(
            path,
            &json!({"destination": {"type": "sqs"}, "events": ["asset-updated"]}).to_string(),
        )
        .await;
    assert_eq!(
        refusal(&answer),
        (
            422,
            Some("invalid_destination"),
            Some("destination.queueUrl")
        ),
        "a missing member is named: {}",
        answer.1
    );
    let answer = app
        .post(
            path,
            &json!({"destination": {"type": "sqs", "queueUrl": "http://127.0.0.1:9/1/q", "region": "eu-west-1",
                                    "endpointUrl": "http://127.0.0.1:9"},
                    "events": ["asset-updated"], "skipDestinationCheck": true})
            .to_string(),
        )
        .await;
    assert_eq!(answer.0, 201, "{}", answer.1);
}

#[tokio::test]
async fn replay_resync_and_callbacks_refuse_unknown_members() {
    let app = TestApp::start().await;
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"endpoint": "http://127.0.0.1:9/hook", "topics": ["asset-operations"]}),
        )
        .await;
    let one = format!("/v1/accounts/vimond/subscriptions/{id}");
    let (_, before) = app.get(&one).await;

    let answer = app
        .post(
            &format!("{one}/replay"),
            &json!({"fromSequence": 1, "toSequence": 5}).to_string(),
        )
        .await;
    assert_eq!(
        refusal(&answer),
        (422, Some("unknown_member"), Some("toSequence"))
    );
    let answer = app
        .post(
            &format!("{one}/replay"),
            &json!({"fromSequence": "one"}).to_string(),
        )
        .await;
    assert_eq!(
        refusal(&answer),
        (422, Some("invalid_replay"), Some("fromSequence")),
        "a member of the wrong type is named: {}",
        answer.1
    );
    let (_, after) = app.get(&one).await;
    assert_eq!(after["cursor"], before["cursor"], "the cursor did not move");

    let answer = app
        .post(
            &format!("{one}/resync"),
            &json!({"types": ["asset"], "mode": "full"}).to_string(),
        )
        .await;
    assert_eq!(
        refusal(&answer),
        (422, Some("unknown_member"), Some("mode"))
    );
    assert_eq!(
        app.get(&format!("{one}/resync")).await.0,
        404,
        "no run started"
    );

    let callbacks = "/v1/accounts/vimond/jobs/job-1/callbacks";
    let answer = app
        .post(
            callbacks,
            &json!({"callbacks": ["http://127.0.0.1:9/cb"], "secret": "mine"}).to_string(),
        )
        .await;
    assert_eq!(
        refusal(&answer),
        (422, Some("unknown_member"), Some("secret"))
    );
    let (status, listed) = app.get(callbacks).await;
    assert_eq!(
        (status, &listed["callbacks"]),
        (200, &json!([])),
        "{listed}"
    );
}

#[tokio::test]
async fn admin_bodies_refuse_unknown_members() {
    let app = TestApp::start().await;
    let settings = "/v1/accounts/vimond/cloudevents/token-verification";
    let put = |body: Value| {
        let app = &app;
        async move {
            app.request(Method::PUT, settings, Some(ADMIN), Some(&body.to_string()))
                .await
        }
    };
    let answer = put(json!({"hs256Secret": "s3cret", "algorithm": "HS512"})).await;
    assert_eq!(
        refusal(&answer),
        (422, Some("unknown_member"), Some("algorithm"))
    );
    let answer = put(json!({"hs256Secret": "s3cret", "leewaySeconds": "soon"})).await;
    assert_eq!(
        refusal(&answer),
        (422, Some("invalid_settings"), Some("leewaySeconds")),
        "{}",
        answer.1
    );
    assert_eq!(app.get(settings).await.0, 404, "nothing stored");
    assert_eq!(put(json!({"hs256Secret": "s3cret"})).await.0, 200);

    let keys = "/v1/accounts/vimond/keys";
    let answer = app.post(keys, &json!({"scope": "read"}).to_string()).await;
    assert_eq!(
        refusal(&answer),
        (422, Some("unknown_member"), Some("scope"))
    );
    assert!(answer.1.get("key").is_none());
    for body in ["", "{}"] {
        let (status, created) = app.post(keys, body).await;
        assert_eq!(status, 201, "{body:?}: {created}");
    }
}

#[tokio::test]
async fn event_documents_keep_their_extra_members() {
    let app = TestApp::start().await;
    let mut event = asset_event("asset-updated", "strict-1");
    event["producerNote"] = json!("kept");
    let (status, body) = app
        .post("/v1/accounts/vimond/events", &event.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    let stored = app.stored_events("vimond").await;
    assert_eq!(stored[0]["event"]["producerNote"], "kept", "{stored:?}");
}

#[tokio::test]
async fn the_openapi_document_describes_request_bodies_as_they_are_read() {
    let app = TestApp::start().await;
    let (status, spec) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let schemas = &spec["components"]["schemas"];
    for name in [
        "SubscriptionIn",
        "ReplayIn",
        "ResyncIn",
        "CallbacksIn",
        "TokenVerificationIn",
        "KeyIn",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"], false,
            "{name}: {}",
            schemas[name]
        );
    }
    let replay = &spec["paths"]["/v1/accounts/{account}/subscriptions/{id}/replay"]["post"];
    assert_eq!(
        replay["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ReplayIn"
    );
    for status in ["202", "400", "401", "403", "404", "413", "422", "503"] {
        assert!(
            replay["responses"].get(status).is_some(),
            "replay lists {status}"
        );
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
