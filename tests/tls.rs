//! `amqps://`: a round trip over TLS with a client certificate, a
//! certificate-only login (EXTERNAL), certificate problems that end `start`
//! at once with an error that says so, and TLS settings checked by
//! `build()`.
//!
//! One private node with a TLS listener that requires a client certificate
//! serves the whole binary; its certificates are made here with rcgen.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use hutch_rs::{
    BoxError, Error, Hutch, HutchBuilder, Message, consumer,
    testing::{Broker, TlsNodeFiles},
};
use hutch_rs_tests::{
    JOURNAL, Scope, Seen, init_logging,
    pki::{CERT_USER, Pki},
    unique,
};
use serde_json::Value;

/// How long a certificate problem may take to end `start`: it is known
/// after one handshake (and one read, with TLS 1.3), far below the retry
/// loop's pace.
const FATAL_WITHIN: Duration = Duration::from_secs(10);

#[consumer(routing_key = "tls.password", group = "tls_password")]
async fn over_tls(msg: Message<Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("over_tls", &msg));
    Ok(())
}

#[consumer(routing_key = "tls.external", group = "tls_external")]
async fn as_certificate(msg: Message<Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("as_certificate", &msg));
    Ok(())
}

#[consumer(routing_key = "tls.deep.#", group = "tls_deep")]
async fn deep_over_tls(msg: Message<Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("deep_over_tls", &msg));
    Ok(())
}

/// Never reached: the certificate tests fail before it consumes.
#[consumer(routing_key = "tls.refused", group = "tls_refused")]
async fn never_connected(msg: Message<Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("never_connected", &msg));
    Ok(())
}

/// The TLS node of this binary and the certificates around it: `trusted`
/// is the node's own CA, `stranger` a CA that has nothing to do with it.
struct TlsNode {
    broker: Broker,
    trusted: Pki,
    stranger: Pki,
}

/// Started on first use; a watchdog stops the node (and removes its
/// directory, where the certificates are) when the binary exits.
fn node() -> &'static TlsNode {
    static NODE: OnceLock<TlsNode> = OnceLock::new();
    NODE.get_or_init(|| {
        let scratch = tempfile::tempdir().unwrap();
        let trusted = Pki::make(&scratch.path().join("trusted"), "hutch test CA");
        let broker = Broker::start_tls(&TlsNodeFiles {
            ca_cert: trusted.ca_cert.clone(),
            cert: trusted.server_cert.clone(),
            key: trusted.server_key.clone(),
        })
        .expect("start a node with a TLS listener");
        // Kept in the node's directory, which lives as long as the node.
        let keep = broker.dir().join("test-pki");
        let trusted = trusted.copy_to(&keep.join("trusted"));
        let stranger = Pki::make(&keep.join("stranger"), "stranger CA");
        TlsNode {
            broker,
            trusted,
            stranger,
        }
    })
}

async fn tls_node() -> &'static TlsNode {
    tokio::task::spawn_blocking(node)
        .await
        .expect("the node start does not panic")
}

fn amqps_uri(node: &TlsNode) -> String {
    node.broker.amqps_uri().expect("a node with a TLS listener")
}

/// The node's client connections, as rabbitmqctl sees them now.
fn connections(broker: &Broker) -> Vec<Value> {
    let out = broker
        .rabbitmqctl(&[
            "-q",
            "list_connections",
            "--formatter",
            "json",
            "name",
            "ssl",
            "auth_mechanism",
            "user",
            "peer_cert_subject",
        ])
        .expect("rabbitmqctl list_connections");
    serde_json::from_str(&out).expect("JSON from rabbitmqctl")
}

/// A builder for the TLS node with the trusted CA, this scope and group.
fn tls_builder(node: &TlsNode, scope: &Scope, uri: String, group: &str) -> HutchBuilder {
    Hutch::builder()
        .uri(uri)
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group(group)
        .tls_ca_cert(&node.trusted.ca_cert)
}

/// Starts `hutch` and expects it to fail within [`FATAL_WITHIN`]; returns
/// the error's text.
async fn fatal_start(hutch: &Hutch) -> (Error, String) {
    let began = Instant::now();
    let error = match tokio::time::timeout(FATAL_WITHIN, hutch.start()).await {
        Ok(Err(error)) => error,
        Ok(Ok(_running)) => panic!("started although the certificate is wrong"),
        Err(_) => panic!("still retrying after {FATAL_WITHIN:?}: not taken as fatal"),
    };
    let text = error.to_string();
    eprintln!("start failed after {:?}: {text}", began.elapsed());
    (error, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_over_tls_with_a_client_certificate_and_a_password() {
    init_logging();
    let node = tls_node().await;
    // A user of this test's own, to tell its connections from the others'.
    let user = unique("tls-password-user");
    let broker = &node.broker;
    broker
        .rabbitmqctl(&["add_user", &user, "pw-of-the-test"])
        .unwrap();
    broker
        .rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"])
        .unwrap();
    let port = broker.amqps_port().unwrap();
    let uri = format!("amqps://{user}:pw-of-the-test@127.0.0.1:{port}/%2f");
    let scope = Scope::new("tls-password");
    let hutch = tls_builder(node, &scope, uri, "tls_password")
        .tls_client_cert(&node.trusted.client_cert)
        .tls_client_key(&node.trusted.client_key)
        .build()
        .expect("valid TLS settings");
    let running = hutch.start().await.expect("start over amqps");
    hutch
        .publish("tls.password", &serde_json::json!({"order": 1}))
        .await
        .expect("publish over amqps");
    let seen = JOURNAL.wait_for("over_tls", 1).await;
    assert_eq!(seen[0].body["order"], 1);

    // Both of hutch-rs's connections are TLS ones, logged in with the
    // password, with our client certificate.
    let ours: Vec<Value> = connections(&node.broker)
        .into_iter()
        .filter(|connection| connection["user"] == user.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    for connection in &ours {
        assert_eq!(connection["ssl"], true, "{connection}");
        assert_eq!(connection["auth_mechanism"], "PLAIN", "{connection}");
        assert!(
            connection["peer_cert_subject"]
                .as_str()
                .is_some_and(|subject| subject.contains(CERT_USER)),
            "{connection}"
        );
    }
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_alone_logs_in_with_external() {
    init_logging();
    let node = tls_node().await;
    let broker = &node.broker;
    // A user named after the certificate's common name, without a password.
    let vhost = unique("tls-external");
    let ctl = |args: &[&str]| {
        broker
            .rabbitmqctl(args)
            .unwrap_or_else(|error| panic!("rabbitmqctl {args:?}: {error}"))
    };
    if !ctl(&["-q", "list_users"]).contains(CERT_USER) {
        ctl(&["add_user", CERT_USER, "unused-password"]);
        ctl(&["clear_password", CERT_USER]);
    }
    ctl(&["add_vhost", &vhost]);
    ctl(&["set_permissions", "-p", &vhost, CERT_USER, ".*", ".*", ".*"]);

    let port = broker.amqps_port().unwrap();
    let uri = format!("amqps://127.0.0.1:{port}/{vhost}?auth_mechanism=external");
    let scope = Scope::new("tls-external");
    let hutch = tls_builder(node, &scope, uri, "tls_external")
        .tls_client_cert(&node.trusted.client_cert)
        .tls_client_key(&node.trusted.client_key)
        .build()
        .expect("valid TLS settings");
    let running = hutch.start().await.expect("start with EXTERNAL");
    hutch
        .publish("tls.external", &serde_json::json!({"order": 2}))
        .await
        .expect("publish as the certificate's user");
    let seen = JOURNAL.wait_for("as_certificate", 1).await;
    assert_eq!(seen[0].body["order"], 2);

    let ours: Vec<Value> = connections(broker)
        .into_iter()
        .filter(|connection| connection["user"] == CERT_USER)
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    for connection in &ours {
        assert_eq!(connection["ssl"], true, "{connection}");
        assert_eq!(connection["auth_mechanism"], "EXTERNAL", "{connection}");
    }
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_fatal_and_says_so() {
    init_logging();
    let node = tls_node().await;
    let port = node.broker.amqps_port().unwrap();
    let uri = format!("amqps://someone:s3cret-pw@127.0.0.1:{port}/%2f");
    let scope = Scope::new("tls-untrusted");
    let hutch = tls_builder(node, &scope, uri, "tls_refused")
        // The stranger's CA did not sign the broker's certificate.
        .tls_ca_cert(&node.stranger.ca_cert)
        .tls_client_cert(&node.trusted.client_cert)
        .tls_client_key(&node.trusted.client_key)
        .build()
        .expect("valid TLS settings");
    let (error, text) = fatal_start(&hutch).await;
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("not trusted"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!format!("{error:?}").contains("s3cret"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_fatal_and_says_so() {
    init_logging();
    let node = tls_node().await;
    let port = node.broker.amqps_port().unwrap();
    let uri = format!("amqps://guest:s3cret-pw@127.0.0.1:{port}/%2f");
    let scope = Scope::new("tls-no-client-cert");
    let hutch = tls_builder(node, &scope, uri, "tls_refused")
        .build()
        .expect("valid TLS settings");
    let (error, text) = fatal_start(&hutch).await;
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(text.contains("certificate problem"), "{text}");
    assert!(text.contains("none was given"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_broker_does_not_trust_is_fatal_and_says_so() {
    init_logging();
    let node = tls_node().await;
    let scope = Scope::new("tls-stranger-client");
    let hutch = tls_builder(node, &scope, amqps_uri(node), "tls_refused")
        .tls_client_cert(&node.stranger.client_cert)
        .tls_client_key(&node.stranger.client_key)
        .build()
        .expect("valid TLS settings");
    let (error, text) = fatal_start(&hutch).await;
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(text.contains("certificate problem"), "{text}");
    assert!(text.contains("client certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_ends_with_the_certificate_problem() {
    init_logging();
    let node = tls_node().await;
    let scope = Scope::new("tls-run-until");
    let hutch = tls_builder(node, &scope, amqps_uri(node), "tls_refused")
        .build()
        .expect("valid TLS settings");
    let outcome = tokio::time::timeout(FATAL_WITHIN, hutch.run_until(std::future::pending()))
        .await
        .expect("run_until ends on its own");
    let error = outcome.expect_err("a certificate problem is an error");
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
}

/// A header `deep` nested `depth` arrays deep, as the management API's
/// JSON.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::from("bottom"), |inner, _| Value::Array(vec![inner]))
}

/// Waits until the TLS node's `queue` holds `messages`; the broker's
/// queues can only be polled, the deadline turns a hang into a failure.
fn await_depth_on(broker: &Broker, queue: &str, messages: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let depth = broker
            .queue(queue)
            .expect("rabbitmqctl list_queues")
            .map_or(0, |queue| queue.messages);
        if depth == messages {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {depth} messages, never {messages}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The header sanitizer sits above TLS: it reads the decrypted frames, so a
/// message whose headers nest past its limit is dead-lettered as poison
/// over amqps too (below TLS it would have seen ciphertext, and the
/// handler the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_nested_past_the_limit_are_caught_over_tls() {
    init_logging();
    let node = tls_node().await;
    let scope = Scope::new("tls-deep");
    let hutch = tls_builder(node, &scope, amqps_uri(node), "tls_deep")
        .tls_client_cert(&node.trusted.client_cert)
        .tls_client_key(&node.trusted.client_key)
        .build()
        .expect("valid TLS settings");
    let running = hutch.start().await.expect("start over amqps");
    let exchange = scope.exchange.clone();
    let publish = move |id: &str, depth: usize| {
        let answer = node
            .broker
            .management_request(
                "POST",
                &format!("exchanges/%2f/{exchange}/publish"),
                Some(serde_json::json!({
                    "routing_key": "tls.deep.nested",
                    "properties": {
                        "message_id": id,
                        "content_type": "application/json",
                        "headers": { "deep": nested(depth) },
                    },
                    "payload": "{\"nested\":true}",
                    "payload_encoding": "string",
                })),
            )
            .expect("publish through the management API")
            .expect("an answer");
        assert_eq!(answer["routed"], true, "{answer}");
    };
    tokio::task::spawn_blocking(move || {
        publish("depth-65", 65);
        publish("depth-10", 10);
    })
    .await
    .unwrap();
    hutch
        .publish("tls.deep.after", &serde_json::json!({ "normal": true }))
        .await
        .unwrap();

    let seen = JOURNAL.wait_for("deep_over_tls", 2).await;
    let ids: Vec<_> = seen.iter().map(|seen| seen.message_id.clone()).collect();
    assert_eq!(ids[0].as_deref(), Some("depth-10"), "{ids:?}");
    assert_eq!(seen[1].body, serde_json::json!({ "normal": true }));
    let dead = format!("{}:dead", scope.queue("deep_over_tls"));
    tokio::task::spawn_blocking(move || await_depth_on(&node.broker, &dead, 1))
        .await
        .unwrap();
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        JOURNAL.by("deep_over_tls").len(),
        2,
        "depth 65 never reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_gets_the_certificate_problem() {
    init_logging();
    let node = tls_node().await;
    let scope = Scope::new("tls-publish");
    let hutch = tls_builder(node, &scope, amqps_uri(node), "tls_refused")
        .build()
        .expect("valid TLS settings");
    let published = tokio::time::timeout(
        FATAL_WITHIN,
        hutch.publish("tls.refused", &serde_json::json!({})),
    )
    .await
    .expect("the publish fails at once, not at its confirm timeout");
    let error = published.expect_err("no client certificate, no publish");
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("certificate problem"), "{error}");
}

/// The setting an `Error::Config` names.
fn config_error(builder: HutchBuilder) -> (String, String) {
    match builder.build() {
        Err(Error::Config { setting, reason }) => (setting, reason),
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("expected a configuration error, got a Hutch"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_named_by_build() {
    init_logging();
    let node = tls_node().await;
    let pki = &node.trusted;
    let base = || Hutch::builder().uri(amqps_uri(node));

    let (setting, reason) = config_error(base().tls_ca_cert("/nonexistent/ca.pem"));
    assert_eq!(setting, "HutchBuilder::tls_ca_cert");
    assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");

    // A key is not a certificate.
    let (setting, reason) = config_error(base().tls_ca_cert(&pki.client_key));
    assert_eq!(setting, "HutchBuilder::tls_ca_cert");
    assert!(reason.contains("no PEM certificate"), "{reason}");

    let (setting, reason) = config_error(base().tls_client_key(&pki.client_key));
    assert_eq!(setting, "HutchBuilder::tls_client_key");
    assert!(reason.contains("needs its certificate"), "{reason}");

    let (setting, reason) = config_error(base().tls_client_cert(&pki.client_cert));
    assert_eq!(setting, "HutchBuilder::tls_client_cert");
    assert!(reason.contains("needs its key"), "{reason}");

    let (setting, _) = config_error(
        base()
            .tls_client_cert(&pki.client_cert)
            .tls_client_key("/nonexistent/client.key"),
    );
    assert_eq!(setting, "HutchBuilder::tls_client_key");

    // The key of another certificate.
    let (setting, reason) = config_error(
        base()
            .tls_client_cert(&pki.client_cert)
            .tls_client_key(&node.stranger.client_key),
    );
    assert_eq!(setting, "HutchBuilder::tls_client_key");
    assert!(reason.contains("does not go with"), "{reason}");

    let (setting, _) = config_error(base().tls_server_name("not a name!"));
    assert_eq!(setting, "HutchBuilder::tls_server_name");
}
