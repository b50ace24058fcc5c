//! The destination guard from a tenant's side: private addresses refused at creation
//! and at every connection (webhooks and AWS endpoints, names and literals) with no
//! connection made, the operator's allowlists for AWS overrides given with an account
//! key, the ExternalId of assumed roles, and a destination check that a black hole
//! cannot hold up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{TestApp, eventually, scratch_database};
use crate::support::moto::{Moto, REGION};

/// What the [`Recorder`] does with a request.
#[derive(Clone, Copy)]
enum Answer {
    /// Reads it and never answers (a black hole).
    Never,
    /// Answers this raw HTTP response.
    With(&'static str),
}

/// A listener on 127.0.0.1 that records, in arrival order, the peer port of every
/// connection it accepts and every request it reads.
struct Recorder {
    port: u16,
    connections: Arc<Mutex<Vec<u16>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(answer: Answer) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, read) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer.port());
                let read = read.clone();
                tokio::spawn(serve(socket, answer, read));
            }
        });
        Recorder {
            port,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Asserts that nothing connected so far: a connection of the test's own is made,
    /// and once the listener has accepted it (it accepts in arrival order), it must be
    /// the only one it ever saw.
    async fn assert_no_connection(&self) {
        let own = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let own_port = own.local_addr().unwrap().port();
        eventually(Duration::from_secs(20), "the listener accepts", || async {
            self.connections
                .lock()
                .unwrap()
                .contains(&own_port)
                .then_some(())
        })
        .await;
        assert_eq!(
            *self.connections.lock().unwrap(),
            vec![own_port],
            "the server connected to the listener"
        );
    }
}

/// Reads requests (head and `Content-Length` body) off one connection and answers them.
async fn serve(mut socket: TcpStream, answer: Answer, read: Arc<Mutex<Vec<String>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..head_end]
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if buffer.len() < head_end + 4 + length {
            continue;
        }
        let request: Vec<u8> = buffer.drain(..head_end + 4 + length).collect();
        read.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        match answer {
            Answer::Never => {}
            Answer::With(response) => {
                if socket.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A raw HTTP/1.1 response (kept for the test's whole run).
fn http_response(status: &str, body: &str) -> &'static str {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    Box::leak(response.into_boxed_str())
}

/// Static AWS credentials and a region, and no other source of either.
fn static_aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "AKIDREELAYTEST"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

async fn account_key(app: &TestApp, account: &str) -> String {
    let (status, created) = app.post(&format!("/v1/accounts/{account}/keys"), "").await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_owned()
}

async fn create(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    app.request(
        Method::POST,
        "/v1/accounts/vimond/subscriptions",
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

/// The three AWS destination types with `aws` merged in.
fn aws_destinations(aws: &Value) -> Vec<Value> {
    let mut destinations = vec![
        json!({"type": "sqs", "queueUrl": "http://sqs.eu-west-1.amazonaws.com/123456789012/q"}),
        json!({"type": "sns", "topicArn": "arn:aws:sns:eu-west-1:123456789012:t"}),
        json!({"type": "kinesis", "streamName": "s"}),
    ];
    for destination in &mut destinations {
        for (name, value) in aws.as_object().unwrap() {
            destination[name] = value.clone();
        }
    }
    destinations
}

fn assert_refused(answer: &(u16, Value), code: &str, field: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 422, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

async fn standing_subscriptions(app: &TestApp) -> usize {
    let (status, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(status, 200, "{list}");
    list["subscriptions"]
        .as_array()
        .or(list.as_array())
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn an_aws_endpoint_on_a_private_address_is_refused_before_any_connection() {
    let listener = Recorder::start(Answer::Never).await;
    let port = listener.port;
    // The operator allows account keys these endpoints; the private-address rule still
    // applies to them (and to the admin's).
    let allowed =
        format!("http://127.0.0.1:{port},http://localhost:{port},http://[::ffff:127.0.0.1]:{port}");
    let mut env = static_aws_env();
    env.push(("REELAY_ALLOW_PRIVATE_DESTINATIONS", "false"));
    env.push(("REELAY_ALLOW_AWS_ENDPOINTS", &allowed));
    let app = TestApp::start_with(&env).await;
    let key = account_key(&app, "vimond").await;

    for endpoint in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ] {
        for destination in aws_destinations(&json!({"endpointUrl": endpoint})) {
            for token in [key.as_str(), crate::app::ADMIN] {
                let body = json!({"destination": destination, "topics": ["asset-operations"]});
                let answer = create(&app, token, &body).await;
                assert_refused(&answer, "destination_refused", "destination.endpointUrl");
                let message = answer.1["error"]["message"].as_str().unwrap().to_owned();
                assert!(message.contains("127.0.0.0/8"), "{message}");
                // Skipping the reachability check skips no rule.
                let mut skipping = body.clone();
                skipping["skipDestinationCheck"] = json!(true);
                let answer = create(&app, token, &skipping).await;
                assert_refused(&answer, "destination_refused", "destination.endpointUrl");
            }
        }
    }
    // Webhooks: the same rule, and the member at fault named.
    let answer = create(
        &app,
        &key,
        &json!({"endpoint": format!("http://10.0.0.1:{port}/hook"), "topics": ["asset-operations"]}),
    )
    .await;
    assert_refused(&answer, "destination_refused", "endpoint");
    let answer = create(
        &app,
        &key,
        &json!({"destination": {"type": "webhook", "url": format!("http://[64:ff9b::7f00:1]:{port}/")},
                "topics": ["asset-operations"]}),
    )
    .await;
    assert_refused(&answer, "destination_refused", "destination.url");

    assert_eq!(standing_subscriptions(&app).await, 0);
    listener.assert_no_connection().await;
}

#[tokio::test]
async fn aws_overrides_from_an_account_key_need_the_operators_allowlist() {
    let moto = Moto::start().await.expect("moto_server");
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let queue_url = sqs
        .create_queue()
        .queue_name("tenant-queue")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let role = "arn:aws:iam::123456789012:role/reelay-vimond";
    let sqs_with = |aws: Value| {
        let mut destination = json!({"type": "sqs", "queueUrl": queue_url});
        for (name, value) in aws.as_object().unwrap() {
            destination[name] = value.clone();
        }
        json!({"destination": destination, "topics": ["asset-operations"]})
    };
    let moto_env = moto.env();
    let mut env: Vec<(&str, &str)> = moto_env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // By default an account key gives none of them; the admin token any.
    let app = TestApp::start_with(&env).await;
    let key = account_key(&app, "vimond").await;
    for (aws, field) in [
        (json!({"roleArn": role}), "destination.roleArn"),
        (json!({"region": REGION}), "destination.region"),
        (
            json!({"endpointUrl": moto.endpoint}),
            "destination.endpointUrl",
        ),
    ] {
        let answer = create(&app, &key, &sqs_with(aws.clone())).await;
        assert_refused(&answer, "destination_not_allowed", field);
    }
    assert_eq!(standing_subscriptions(&app).await, 0);
    let (status, created) =
        create(&app, crate::app::ADMIN, &sqs_with(json!({"roleArn": role}))).await;
    assert_eq!(status, 201, "{created}");
    drop(app);

    // Allowed by the operator: a matching role, the region and the endpoint pass, and
    // events go out as the role; another role is still refused.
    let endpoints = moto.endpoint.clone();
    env.push((
        "REELAY_ALLOW_ROLE_ARNS",
        "arn:aws:iam::123456789012:role/reelay-*",
    ));
    env.push(("REELAY_ALLOW_AWS_REGIONS", "us-*,eu-*"));
    env.push(("REELAY_ALLOW_AWS_ENDPOINTS", &endpoints));
    let app = TestApp::start_with(&env).await;
    let key = account_key(&app, "vimond").await;
    let answer = create(
        &app,
        &key,
        &sqs_with(json!({"roleArn": "arn:aws:iam::123456789012:role/admin"})),
    )
    .await;
    assert_refused(&answer, "destination_not_allowed", "destination.roleArn");
    let answer = create(&app, &key, &sqs_with(json!({"region": "ap-south-1"}))).await;
    assert_refused(&answer, "destination_not_allowed", "destination.region");
    let (status, created) = create(
        &app,
        &key,
        &sqs_with(json!({"roleArn": role, "region": REGION, "endpointUrl": moto.endpoint})),
    )
    .await;
    assert_eq!(status, 201, "{created}");

    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &json!([{"eventName": "asset-updated", "originator": "tests", "tenant": "vimond",
                     "timestamp": "2022-09-19T08:36:30.321Z", "guid": "as-role-1", "assetId": 7}])
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let body = eventually(
        Duration::from_secs(30),
        "the event in the queue",
        || async {
            let received = sqs
                .receive_message()
                .queue_url(&queue_url)
                .wait_time_seconds(1)
                .send()
                .await
                .ok()?;
            received
                .messages()
                .first()
                .and_then(|message| message.body().map(str::to_owned))
        },
    )
    .await;
    assert!(body.contains("as-role-1"), "{body}");
}

#[tokio::test]
async fn an_assumed_role_carries_the_accounts_external_id_and_sts_answer_is_shown() {
    // An STS that refuses every AssumeRole, as AWS does when the trust policy's
    // ExternalId does not match.
    let sts = Recorder::start(Answer::With(http_response(
        "403 Forbidden",
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
         <Code>AccessDenied</Code><Message>not authorized to perform sts:AssumeRole</Message></Error>\
         <RequestId>4f6f1f4e-0000-4000-8000-000000000000</RequestId></ErrorResponse>",
    )))
    .await;
    let app = TestApp::start_with(&static_aws_env()).await;
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"destination": {"type": "sqs", "queueUrl": format!("{}/123456789012/q", sts.url()),
                                    "endpointUrl": sts.url(),
                                    "roleArn": "arn:aws:iam::123456789012:role/reelay-vimond"},
                    "topics": ["asset-operations"]})
            .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_unreachable",
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("AccessDenied: not authorized to perform sts:AssumeRole"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "{message}");

    let requests = sts.requests.lock().unwrap().clone();
    let assume = requests
        .iter()
        .find(|request| request.contains("AssumeRole"))
        .unwrap_or_else(|| panic!("no AssumeRole request: {requests:?}"));
    assert!(
        assume.contains("ExternalId=reelay%3Avimond") || assume.contains("\"reelay:vimond\""),
        "{assume}"
    );
}

#[tokio::test]
async fn a_black_hole_endpoint_is_answered_within_the_checks_timeout() {
    let hole = Recorder::start(Answer::Never).await;
    // The admin, on a server that allows private destinations: the request reaches it.
    let app = TestApp::start_with(&static_aws_env()).await;
    for destination in [
        json!({"type": "sqs", "queueUrl": format!("{}/123456789012/q", hole.url()), "endpointUrl": hole.url()}),
        json!({"type": "kinesis", "streamName": "s", "endpointUrl": hole.url()}),
    ] {
        let started = Instant::now();
        let (status, answer) = app
            .post(
                "/v1/accounts/vimond/subscriptions",
                &json!({"destination": destination, "topics": ["asset-operations"]}).to_string(),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(status, 422, "{answer}");
        assert_eq!(
            answer["error"]["code"], "destination_unreachable",
            "{answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("no answer within 5s"), "{message}");
        // 5 s, plus what a loaded machine adds to answering.
        assert!(took < Duration::from_secs(9), "took {took:?}");
    }
    assert!(
        !hole.requests.lock().unwrap().is_empty(),
        "the hole was not asked"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_described_without_the_connectors_internals() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = TestApp::start_with(&static_aws_env()).await;
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"destination": {"type": "sns", "topicArn": "arn:aws:sns:us-east-1:123456789012:t",
                                    "endpointUrl": format!("http://127.0.0.1:{port}")},
                    "topics": ["asset-operations"]})
            .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not connect to the endpoint"),
        "{message}"
    );
    for internal in ["127.0.0.1", "tcp connect", "os error", "dispatch failure"] {
        assert!(!message.contains(internal), "{message}");
    }
}

#[tokio::test]
async fn destinations_stored_under_an_older_rule_are_refused_at_every_connection() {
    let listener = Recorder::start(Answer::With(http_response("200 OK", ""))).await;
    let port = listener.port;
    // Created on a server that allowed private destinations…
    let first_dir = tempfile::tempdir().unwrap();
    let database = scratch_database(first_dir.path()).await;
    let mut first = TestApp::start_on(database.clone(), &static_aws_env(), first_dir).await;
    let mut ids = Vec::new();
    for destination in [
        json!({"type": "webhook", "url": format!("http://127.0.0.1:{port}/literal")}),
        json!({"type": "webhook", "url": format!("http://localhost:{port}/name")}),
        json!({"type": "webhook", "url": format!("http://[::ffff:127.0.0.1]:{port}/mapped")}),
        json!({"type": "sqs", "queueUrl": format!("http://127.0.0.1:{port}/123456789012/q"),
               "endpointUrl": format!("http://127.0.0.1:{port}")}),
        json!({"type": "kinesis", "streamName": "s", "endpointUrl": format!("http://localhost:{port}")}),
    ] {
        let (id, _) = first
            .subscribe(
                "vimond",
                json!({"destination": destination, "topics": ["asset-operations"],
                       "skipDestinationCheck": true}),
            )
            .await;
        ids.push(id);
    }
    first.kill().await;

    // …delivered by one that does not: every attempt is refused, none connects.
    let mut env = static_aws_env();
    env.push(("REELAY_ALLOW_PRIVATE_DESTINATIONS", "false"));
    let second_dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_on(database, &env, second_dir).await;
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &json!([{"eventName": "asset-updated", "originator": "tests", "tenant": "vimond",
                     "timestamp": "2022-09-19T08:36:30.321Z", "guid": "late-1", "assetId": 7}])
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    for id in &ids {
        let error = eventually(Duration::from_secs(30), "a refused attempt", || async {
            let (_, log) = app
                .get(&format!(
                    "/v1/accounts/vimond/subscriptions/{id}/deliveries"
                ))
                .await;
            log["attempts"]
                .as_array()?
                .iter()
                .find_map(|attempt| attempt["error"].as_str().map(str::to_owned))
        })
        .await;
        assert!(error.contains("refused:"), "{id}: {error}");
    }
    listener.assert_no_connection().await;
    drop(first);
}
