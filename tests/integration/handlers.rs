//! Handlers with state and context against the real broker: `State<T>`,
//! `Context` and an application's own extractor reach the handler; follow-up
//! messages published from a handler go to the exchange the application's
//! builder set (through `ctx.hutch()` and through `hutch_rs::publish`); an
//! extractor's refusal is the message's failure; a missing state value stops
//! `start` before anything is declared; middleware wraps every call.

use std::sync::{Arc, Mutex};

use hutch_rs::{
    BoxError, CallResult, Context, Error, FromDelivery, HandlerError, Message, Next,
    PublishOptions, RequiredState, State, amqp::AMQPValue, consumer, headers,
};
use hutch_rs_tests::{
    JOURNAL, PATIENCE, Scope, Seen, await_depth, broker, header_text, init_logging, queue_depth,
    take_all,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
}

/// A resource shared by every call: what a connection pool is to a real
/// service.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<(String, u64)>>>);

/// The tenant a message belongs to, from its `x-tenant` header; a message
/// without one is refused.
struct Tenant(String);

impl FromDelivery for Tenant {
    type Rejection = BoxError;

    async fn from_delivery(ctx: &Context) -> Result<Self, BoxError> {
        let tenant = ctx
            .header_text("x-tenant")
            .ok_or("the message has no x-tenant header")?;
        Ok(Tenant(tenant.to_owned()))
    }
}

/// Reads the ledger through the context, and declares that it does.
struct LedgerSize(usize);

impl FromDelivery for LedgerSize {
    type Rejection = &'static str;

    async fn from_delivery(ctx: &Context) -> Result<Self, &'static str> {
        let ledger = ctx.state::<Ledger>().ok_or("no ledger")?;
        let size = ledger.0.lock().map_err(|_| "poisoned")?.len();
        Ok(LedgerSize(size))
    }

    fn required_state(required: &mut RequiredState) {
        required.state::<Ledger>();
    }
}

#[consumer(routing_key = "orders.placed", group = "state")]
async fn place(
    msg: Message<Order>,
    State(ledger): State<Ledger>,
    tenant: Tenant,
    ctx: Context,
    LedgerSize(before): LedgerSize,
) -> Result<(), BoxError> {
    assert!(
        before < 3,
        "the ledger held {before} orders before this one"
    );
    ledger
        .0
        .lock()
        .map_err(|_| "poisoned")?
        .push((tenant.0, msg.id));
    // The documented way: the instance running this consumer.
    ctx.hutch().publish("orders.receipt", &msg.id).await?;
    // The global function, inside a handler, goes through it too.
    hutch_rs::publish("orders.audit", &msg.id).await?;
    Ok(())
}

#[consumer(routing_key = "orders.receipt", group = "state")]
async fn receipt(msg: Message<u64>, ctx: Context) -> Result<(), BoxError> {
    assert!(ctx.consumer().ends_with("::receipt"), "{}", ctx.consumer());
    assert!(ctx.queue().ends_with(":receipt"), "{}", ctx.queue());
    assert_eq!(ctx.exchange(), ctx.hutch().exchange());
    JOURNAL.record(Seen::of("receipt", &msg));
    Ok(())
}

#[consumer(routing_key = "orders.audit", group = "state")]
async fn audit(msg: Message<u64>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("handlers_audit", &msg));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_context_and_extractors_reach_the_handler_and_follow_ups_use_the_builders_exchange() {
    init_logging();
    let scope = Scope::new("state");
    let ledger = Ledger::default();
    let hutch = scope
        .builder("state")
        .state(ledger.clone())
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");

    for id in 1..=3 {
        hutch
            .publish_with(
                "orders.placed",
                &Order { id },
                PublishOptions::new().header("x-tenant", "acme"),
            )
            .await
            .unwrap();
    }
    // The follow-ups reach consumers bound only to this test's exchange:
    // an instance built from the environment would have published them to
    // another exchange, on another broker.
    let receipts = JOURNAL.wait_for("receipt", 3).await;
    let audits = JOURNAL.wait_for("handlers_audit", 3).await;
    for seen in receipts.iter().chain(&audits) {
        assert!(seen.attempt == 1, "{seen:?}");
    }
    let mut ids: Vec<_> = receipts.iter().map(|seen| seen.body.clone()).collect();
    ids.sort_by_key(|id| id.as_u64());
    assert_eq!(ids, [1, 2, 3]);

    let mut recorded = ledger.0.lock().unwrap().clone();
    recorded.sort();
    assert_eq!(
        recorded,
        [
            ("acme".to_owned(), 1),
            ("acme".to_owned(), 2),
            ("acme".to_owned(), 3)
        ]
    );
    running.shutdown().await.unwrap();
    hutch.close().await.unwrap();
}

static TENANTED_CALLS: Mutex<u32> = Mutex::new(0);

#[consumer(
    routing_key = "tenanted.#",
    group = "refused",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn tenanted(_msg: Message<Order>, _tenant: Tenant) -> Result<(), BoxError> {
    *TENANTED_CALLS.lock().unwrap() += 1;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractor_that_refuses_fails_the_message_which_is_retried_then_dead_lettered() {
    init_logging();
    let scope = Scope::new("refused");
    let hutch = scope.hutch("refused");
    let running = hutch.start().await.expect("start");
    hutch
        .publish("tenanted.order", &Order { id: 9 })
        .await
        .unwrap();

    let dead_queue = format!("{}:dead", scope.queue("tenanted"));
    await_depth(&dead_queue, 1).await;
    let dead = take_all(&dead_queue).await;
    assert_eq!(dead.len(), 1);
    let error = header_text(&dead[0].properties, headers::ERROR);
    let headers = dead[0].properties.headers().clone().unwrap_or_default();
    assert!(error.contains("no x-tenant header"), "{error}");
    // Retried once, like a handler's `Err`, then dead-lettered.
    let attempts = match headers.inner().get(headers::ATTEMPTS) {
        Some(AMQPValue::LongLongInt(attempts)) => *attempts,
        other => panic!("no attempt count in the dead letter: {other:?}"),
    };
    assert_eq!(attempts, 2);
    assert_eq!(*TENANTED_CALLS.lock().unwrap(), 0, "the handler never ran");
    running.shutdown().await.unwrap();
    hutch.close().await.unwrap();
}

#[derive(Clone)]
struct Prices;

#[derive(Clone)]
struct Mailer;

#[consumer(routing_key = "needs.prices", group = "missing")]
async fn needs_prices(_msg: Message<u64>, _prices: State<Prices>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "needs.both", group = "missing")]
async fn needs_both(
    _msg: Message<u64>,
    _mailer: State<Mailer>,
    _ledger: LedgerSize,
    _prices: State<Prices>,
) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "needs.nothing", group = "missing")]
async fn needs_nothing(_msg: Message<u64>, _ctx: Context) -> Result<(), BoxError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_state_fails_start_and_run_naming_every_consumer_and_type_before_any_declaration() {
    init_logging();
    let scope = Scope::new("missing");
    // Prices is given; the mailer and the ledger are not.
    let hutch = scope.builder("missing").state(Prices).build().unwrap();

    let Err(Error::MissingState { missing }) = hutch.start().await else {
        panic!("start must fail with MissingState");
    };
    let mut missing: Vec<(String, String)> = missing
        .into_iter()
        .map(|(consumer, type_name)| {
            let function = consumer.rsplit("::").next().unwrap().to_owned();
            let type_name = type_name.rsplit("::").next().unwrap().to_owned();
            (function, type_name)
        })
        .collect();
    missing.sort();
    assert_eq!(
        missing,
        [
            ("needs_both".to_owned(), "Ledger".to_owned()),
            ("needs_both".to_owned(), "Mailer".to_owned()),
        ]
    );
    let message = hutch.run_until(std::future::pending()).await.unwrap_err();
    let text = message.to_string();
    assert!(text.contains("needs_both takes State<"), "{text}");
    assert!(text.contains("HutchBuilder::state"), "{text}");

    // Nothing was declared, nothing connected.
    for queue in ["needs_prices", "needs_both", "needs_nothing"] {
        let queue = scope.queue(queue);
        assert!(broker().queue(&queue).unwrap().is_none(), "{queue} exists");
    }
    assert!(
        !broker()
            .exchanges()
            .unwrap()
            .iter()
            .any(|exchange| exchange.name == scope.exchange),
        "the exchange was declared"
    );
    assert!(
        hutch.status().connections.is_empty(),
        "{:?}",
        hutch.status()
    );
}

/// What the middleware of the next test saw, in order.
static LAYERS: std::sync::LazyLock<tokio::sync::watch::Sender<Vec<String>>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(Vec::new()));

fn log(entry: String) {
    LAYERS.send_modify(|log| log.push(entry));
}

/// The last word of the routing key: what each message asks for.
fn asks(ctx: &Context) -> String {
    ctx.routing_key()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn outcome_kind(outcome: &CallResult) -> &'static str {
    match outcome {
        Ok(()) => "Ok",
        Err(HandlerError::Failed(_)) => "Failed",
        Err(HandlerError::Panicked(_)) => "Panicked",
        Err(_) => "Other",
    }
}

#[consumer(routing_key = "layers.#", group = "layers", max_attempts = 1)]
async fn layered(msg: Message<u64>, ctx: Context) -> Result<(), BoxError> {
    let asks = asks(&ctx);
    log(format!("handler:{asks}"));
    match asks.as_str() {
        "fail" => Err("the handler failed".into()),
        "panic" => panic!("the handler panicked on {}", *msg),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_wraps_every_call_in_order_sees_each_outcome_and_can_answer_alone() {
    init_logging();
    let scope = Scope::new("layers");
    let hutch = scope
        .builder("layers")
        // Outermost: refuses one message without calling anything inside.
        .middleware(|ctx: Context, next: Next| async move {
            let asks = asks(&ctx);
            log(format!("outer>{asks}"));
            if asks == "refuse" {
                return Err(HandlerError::Failed("refused by middleware".into()));
            }
            let outcome = next.run(ctx).await;
            log(format!("outer<{asks}:{}", outcome_kind(&outcome)));
            outcome
        })
        // Inner: answers one message itself (a duplicate, say): acked, the
        // handler never called.
        .middleware(|ctx: Context, next: Next| async move {
            let asks = asks(&ctx);
            log(format!("inner>{asks}"));
            if asks == "skip" {
                return Ok(());
            }
            let outcome = next.run(ctx).await;
            log(format!("inner<{asks}:{}", outcome_kind(&outcome)));
            outcome
        })
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    for (n, asks) in ["ok", "fail", "panic", "skip", "refuse"].iter().enumerate() {
        hutch
            .publish(&format!("layers.{asks}"), &(n as u64))
            .await
            .unwrap();
    }

    let expected: Vec<(&str, Vec<&str>)> = vec![
        (
            "ok",
            vec![
                "outer>ok",
                "inner>ok",
                "handler:ok",
                "inner<ok:Ok",
                "outer<ok:Ok",
            ],
        ),
        (
            "fail",
            vec![
                "outer>fail",
                "inner>fail",
                "handler:fail",
                "inner<fail:Failed",
                "outer<fail:Failed",
            ],
        ),
        (
            "panic",
            vec![
                "outer>panic",
                "inner>panic",
                "handler:panic",
                "inner<panic:Panicked",
                "outer<panic:Panicked",
            ],
        ),
        ("skip", vec!["outer>skip", "inner>skip", "outer<skip:Ok"]),
        ("refuse", vec!["outer>refuse"]),
    ];
    let of = |log: &[String], asks: &str| -> Vec<String> {
        log.iter()
            .filter(|entry| entry.split([':', '>', '<']).nth(1) == Some(asks))
            .cloned()
            .collect()
    };
    let mut seen = LAYERS.subscribe();
    let log = tokio::time::timeout(PATIENCE, async {
        seen.wait_for(|log| {
            expected
                .iter()
                .all(|(asks, entries)| of(log, asks).len() >= entries.len())
        })
        .await
        .unwrap()
        .clone()
    })
    .await
    .unwrap_or_else(|_| panic!("the middleware saw too little: {:?}", *LAYERS.borrow()));
    for (asks, entries) in &expected {
        assert_eq!(of(&log, asks), *entries, "{asks}");
    }

    // Failed, panicked and refused are dead-lettered; ok and skip acked.
    let dead_queue = format!("{}:dead", scope.queue("layered"));
    await_depth(&dead_queue, 3).await;
    running.shutdown().await.unwrap();
    assert_eq!(queue_depth(&scope.queue("layered")), 0);
    let mut errors: Vec<String> = take_all(&dead_queue)
        .await
        .iter()
        .map(|dead| header_text(&dead.properties, headers::ERROR))
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|error| error.contains("refused by middleware")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.contains("the handler failed")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.contains("the handler panicked on 2")),
        "{errors:?}"
    );
    hutch.close().await.unwrap();
}
