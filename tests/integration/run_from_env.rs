//! `hutch_rs::run()` and `hutch_rs::publish()` take their settings from the
//! `HUTCH_*` environment and stop on SIGTERM. The environment belongs to the
//! whole process, so the application runs as a child process: this test
//! binary again, running only `application_entry_point`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hutch_rs::{BoxError, Message, consumer};
use hutch_rs_tests::{PATIENCE, Scope, await_consumer_count, broker, queue_depth};

/// Set in the child's environment to make it the application.
const ROLE: &str = "HUTCH_RS_TEST_ROLE";

#[consumer(routing_key = "env.ping", group = "from_env")]
async fn env_consumer(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("HANDLED {} {}", msg.routing_key(), msg.body());
    Ok(())
}

/// The application under test when run as the child; does nothing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_entry_point() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    if std::env::var(ROLE).as_deref() == Ok("unreachable") {
        // No subscriber installed, no broker listening: run() must say so.
        let outcome = hutch_rs::run().await;
        println!("STOPPED {outcome:?}");
        return;
    }
    // Declared first, the queue exists when the first message is published:
    // it is not dropped for want of a queue.
    hutch_rs::declare()
        .await
        .expect("declare from the environment's settings");
    hutch_rs::publish("env.ping", &serde_json::json!({ "hello": "env" }))
        .await
        .expect("publish from the environment's settings");
    println!("RUNNING");
    hutch_rs::run().await.expect("run ends cleanly on SIGTERM");
    println!("STOPPED");
}

/// This test binary again, running only `application_entry_point` in `role`.
fn application(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "run_from_env::application_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        // The application is this group's consumers (the binary holds
        // every integration test's).
        .env("HUTCH_GROUP", "from_env");
    command
}

/// A local port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lines `stream` carries, as they come, read on a thread of their own.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, output) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    output
}

#[test]
fn run_and_publish_use_the_environment_and_stop_on_sigterm() {
    let scope = Scope::new("env");
    let mut child = application("application")
        .env("HUTCH_URI", broker().amqp_uri())
        .env("HUTCH_EXCHANGE", &scope.exchange)
        .env("HUTCH_NAMESPACE", &scope.namespace)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the application");
    let output = lines_of(child.stdout.take().unwrap());
    let expect_line = |prefix: &str| loop {
        let line = output
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the application never printed {prefix:?}"));
        // libtest prints the test's name on the same line as its first output.
        if let Some(start) = line.find(prefix) {
            return line[start..].to_owned();
        }
    };

    // The message published before `run()` was declared for: it is the
    // first one handled. Then one more, published now that the consumer runs.
    expect_line("RUNNING");
    let first = expect_line("HANDLED");
    assert_eq!(first, r#"HANDLED env.ping {"hello":"env"}"#);
    let queue = scope.queue("env_consumer");
    await_consumer_count(&queue, 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let hutch = scope.hutch("from_env");
        hutch
            .publish("env.ping", &serde_json::json!({ "n": 2 }))
            .await
            .unwrap();
        hutch.close().await.unwrap();
    });
    let handled = expect_line("HANDLED");
    assert_eq!(handled, r#"HANDLED env.ping {"n":2}"#);

    let exchanges = broker().exchanges().unwrap();
    assert!(
        exchanges
            .iter()
            .any(|x| x.name == scope.exchange && x.kind == "topic")
    );

    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
    expect_line("STOPPED");
    let status = child.wait().unwrap();
    assert!(status.success(), "the application exited with {status}");
    let info = broker().queue(&queue).unwrap().unwrap();
    assert_eq!((info.consumers, queue_depth(&queue)), (0, 0));
}

#[test]
fn run_with_no_broker_and_no_subscriber_says_why_within_two_seconds() {
    // A port nothing listens on.
    let port = closed_port();
    let started = Instant::now();
    let mut child = application("unreachable")
        .env(
            "HUTCH_URI",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the application");
    let output = lines_of(child.stderr.take().unwrap());
    let said = loop {
        let line = output
            .recv_timeout(Duration::from_secs(2).saturating_sub(started.elapsed()))
            .expect("within 2 s the application says it cannot connect");
        if line.contains("could not connect") {
            break line;
        }
    };
    assert!(said.contains("Connection refused"), "{said}");
    assert!(said.contains(&port.to_string()), "names the broker: {said}");
    assert!(!said.contains("guest:guest"), "no password: {said}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "the application exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_times_out_says_why_the_connection_is_down() {
    let port = closed_port();
    let hutch = hutch_rs::Hutch::builder()
        .uri(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .confirm_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let error = hutch
        .publish("a.b", &serde_json::json!({}))
        .await
        .unwrap_err();
    let hutch_rs::Error::PublishTimeout {
        connection_error, ..
    } = &error
    else {
        panic!("expected a publish timeout, got {error:?}");
    };
    assert!(
        connection_error
            .as_deref()
            .is_some_and(|cause| cause.contains("Connection refused")),
        "{error}"
    );
    assert!(error.to_string().contains("Connection refused"), "{error}");
    let status = hutch.status();
    let publish = status.connection("publish").unwrap();
    assert!(
        publish
            .last_error
            .as_deref()
            .is_some_and(|cause| cause.contains("Connection refused")),
        "{publish:?}"
    );
}
