//! The `shop` example's binary, run as a user runs it, against a RabbitMQ
//! node: every subcommand of its command line, and the round trip of a
//! message that fails, is dead-lettered, looked at, and replayed once the
//! bug is fixed.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use hutch_rs::testing::Broker;

const PATIENCE: Duration = Duration::from_secs(30);

fn shop(broker: &Broker) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command
        .env("HUTCH_URI", broker.amqp_uri())
        .env("HUTCH_NAMESPACE", "shop")
        .env_remove("SHOP_RECEIPTS_FIXED")
        .env_remove("HUTCH_GROUP");
    command
}

/// Runs `shop <args>` to its end; its standard output, which must be a
/// success.
fn run(broker: &Broker, args: &[&str]) -> String {
    let output: Output = shop(broker).args(args).output().expect("run shop");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "shop {}: {}\nstdout: {stdout}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what} within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn depth(broker: &Broker, queue: &str) -> u64 {
    broker
        .queue(queue)
        .expect("the broker's queues")
        .map_or(0, |queue| queue.messages)
}

/// Starts `shop` (run) and waits until both consumers consume.
fn start_run(broker: &Broker, fixed: bool) -> Child {
    let mut command = shop(broker);
    if fixed {
        command.env("SHOP_RECEIPTS_FIXED", "1");
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shop");
    wait_until("both consumers consuming", || {
        broker
            .consumers()
            .map(|consumers| consumers.len() == 2)
            .unwrap_or(false)
    });
    child
}

/// SIGTERM, as a service manager stops it; its standard output.
fn stop(broker: &Broker, mut child: Child) -> String {
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let output = child.wait().expect("wait");
    assert!(output.success(), "shop run ended with {output}");
    wait_until("no consumers left", || {
        broker
            .consumers()
            .map(|consumers| consumers.is_empty())
            .unwrap_or(false)
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    stdout
}

#[test]
fn the_shop_binary_runs_and_repairs_its_dead_letters() {
    let node = Broker::shared();
    let broker = node.isolated().expect("a vhost");

    let consumers = run(&broker, &["consumers"]);
    assert!(consumers.contains("shop::send_receipt"), "{consumers}");
    assert!(consumers.contains("shop:order_audit"), "{consumers}");
    let topology = run(&broker, &["topology"]);
    assert!(
        topology.contains("dead-letter queue shop:send_receipt:dead"),
        "{topology}"
    );
    let asyncapi: serde_json::Value =
        serde_json::from_str(&run(&broker, &["asyncapi"])).expect("JSON");
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert!(asyncapi.to_string().contains("total_cents"));

    // Run it; order 0 fails twice and is dead-lettered, order 7 is fine.
    let running = start_run(&broker, false);
    for order in [
        r#"{"order_id": 0, "total_cents": 100}"#,
        r#"{"order_id": 7, "total_cents": 250}"#,
    ] {
        let published = run(&broker, &["publish", "orders.placed", order]);
        assert!(published.starts_with("published "), "{published}");
    }
    wait_until("order 0 dead-lettered", || {
        depth(&broker, "shop:send_receipt:dead") == 1
    });
    let output = stop(&broker, running);
    assert!(output.contains("receipt: order 7"), "{output}");
    assert!(!output.contains("receipt: order 0"), "{output}");

    let list = run(&broker, &["dead", "list", "send_receipt"]);
    assert!(
        list.starts_with("1 message(s) in the dead-letter queue"),
        "{list}"
    );
    assert!(list.contains("attempts-exhausted"), "{list}");
    let message_id = list
        .lines()
        .nth(2)
        .and_then(|row| row.split_whitespace().next())
        .expect("a row")
        .to_owned();
    let shown = run(&broker, &["dead", "show", "send_receipt", &message_id]);
    assert!(shown.contains("order 0 has no customer"), "{shown}");
    assert!(shown.contains("\"order_id\": 0"), "{shown}");
    let dry = run(&broker, &["dead", "replay", "send_receipt", "--dry-run"]);
    assert!(
        dry.starts_with("dry run: would replay 1 message(s)"),
        "{dry}"
    );
    let replayed = run(&broker, &["dead", "replay", "send_receipt"]);
    assert!(
        replayed.starts_with("replayed 1 message(s) to shop:send_receipt"),
        "{replayed}"
    );
    assert_eq!(depth(&broker, "shop:send_receipt"), 1);
    assert_eq!(
        depth(&broker, "shop:order_audit"),
        0,
        "audit gets no second copy"
    );

    // The bug fixed: the replayed order gets its receipt.
    let running = start_run(&broker, true);
    wait_until("the replayed order handled", || {
        depth(&broker, "shop:send_receipt") == 0
    });
    let output = stop(&broker, running);
    assert!(output.contains("receipt: order 0"), "{output}");

    let purged = run(&broker, &["dead", "purge", "send_receipt", "--yes"]);
    assert!(purged.starts_with("purged 0 message(s)"), "{purged}");
}
