//! The in-memory broker's consumer side: takes the next ready message,
//! runs its consumer's handler as a real consumer does (decoding,
//! middleware, panics caught, the timeout), and carries out the same
//! verdict: acknowledged, retried through the delay queue (delivered again
//! at once, with the headers a delay queue's dead-lettering gives it),
//! dead-lettered or requeued.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use tokio_util::sync::CancellationToken;

use super::{
    exchange::{MemoryExchange, Ready},
    records::{DeadLetter, Handled, Received},
};
use crate::{
    Hutch,
    context::ConsumerScope,
    message::{Envelope, Incoming},
    properties::unix_seconds,
    retry::{Failure, HandlerError, Outcome, queues},
    supervisor::consumer::{
        calling::call_alone,
        verdict::{Disposal, Target, dispose},
    },
    telemetry::spans::{self, Settled},
    topology::ConsumerPlan,
};

/// How many times in a row a message may be sent back at once
/// ([`Decision::requeue`](crate::Decision::requeue)) before the broker sets
/// it aside: on RabbitMQ it would go round for ever, here that would hang
/// the test.
pub(super) const MAX_REQUEUES: u32 = 100;

/// One consumer of the in-memory broker.
#[derive(Debug)]
pub(super) struct LocalConsumer {
    pub(super) plan: ConsumerPlan,
    pub(super) name: String,
    pub(super) scope: Arc<ConsumerScope>,
}

impl LocalConsumer {
    pub(super) fn new(plan: ConsumerPlan, hutch: &Hutch) -> Self {
        let name = plan.name();
        let scope = Arc::new(ConsumerScope {
            hutch: hutch.clone(),
            consumer: name.clone(),
            queue: plan.queue.clone(),
        });
        Self { plan, name, scope }
    }
}

/// Delivers messages, one at a time, until `stop` is cancelled.
pub(super) async fn deliver(
    exchange: Arc<MemoryExchange>,
    consumers: Vec<LocalConsumer>,
    stop: CancellationToken,
) {
    let mut tag = 0;
    loop {
        // Subscribed before looking, so that a message queued in between
        // is seen as a change.
        let mut changes = exchange.watch();
        let next = {
            let mut state = exchange.state();
            let next = state.ready.pop_front();
            state.busy = next.is_some();
            next
        };
        let Some(ready) = next else {
            tokio::select! {
                _ = changes.changed() => continue,
                () = stop.cancelled() => return,
            }
        };
        let Some(consumer) = consumers
            .iter()
            .find(|consumer| consumer.plan.queue == ready.queue)
        else {
            // Queues are only made for consumers.
            unreachable!("a message in {} with no consumer", ready.queue);
        };
        tag += 1;
        let settled = tokio::select! {
            settled = handle(consumer, ready, tag) => settled,
            () = stop.cancelled() => return,
        };
        {
            let mut state = exchange.state();
            state.busy = false;
            match settled.again {
                Again::No => {}
                Again::Now(ready) => state.ready.push_front(ready),
                Again::Later(ready) => state.ready.push_back(ready),
                Again::Parked(ready) => state.parked.push(ready),
            }
            if let Some(dead) = settled.dead {
                state.dead.push(dead);
            }
            state.received.push(settled.received);
        }
        exchange.changed();
    }
}

/// What became of one delivery.
struct Settlement {
    received: Received,
    dead: Option<DeadLetter>,
    again: Again,
}

/// Whether, and how, a message goes back into the queue.
enum Again {
    No,
    /// Requeued: at the head, as RabbitMQ puts it back.
    Now(Ready),
    /// A retry, after what is queued already.
    Later(Ready),
    /// Requeued too often in a row.
    Parked(Ready),
}

async fn handle(consumer: &LocalConsumer, ready: Ready, tag: u64) -> Settlement {
    let plan = &consumer.plan;
    let envelope = Envelope::of_delivery(
        &ready.exchange,
        &ready.routing_key,
        ready.redelivered,
        ready.properties.clone(),
        &plan.queue,
    );
    let span = spans::process(&consumer.name, &plan.queue, &envelope, tag);
    let incoming = Arc::new(Incoming {
        body: ready.body.clone(),
        envelope: Arc::new(envelope),
        span,
    });
    let failure = call_alone(
        plan.registration.handler(),
        &consumer.scope,
        &incoming,
        plan.timeout,
    )
    .await;
    let received = |handled| Received {
        consumer: consumer.name.clone(),
        queue: plan.queue.clone(),
        routing_key: incoming.envelope.routing_key.clone(),
        attempt: incoming.envelope.attempt,
        redelivered: incoming.envelope.redelivered,
        properties: incoming.envelope.properties.clone(),
        body: incoming.body.clone(),
        handled,
    };
    let Some(error) = failure else {
        spans::record_settled(&incoming.span, Settled::Acked, None);
        return Settlement {
            received: received(Handled::Acked),
            dead: None,
            again: Again::No,
        };
    };
    let error_text = error.to_string();
    let failed_at = SystemTime::now();
    let disposal = dispose(
        &plan.retry,
        &consumer.name,
        &plan.queue,
        &incoming.envelope,
        &error,
        &error_text,
        failed_at,
    );
    let kind = error.kind();
    let (outcome, dead, again, settled) = match disposal {
        Disposal::Requeue => {
            let requeues = ready.requeues + 1;
            let again = Ready {
                redelivered: true,
                requeues,
                ..ready
            };
            let again = if requeues > MAX_REQUEUES {
                tracing::warn!(consumer = %consumer.name, requeues, "the handler sent the message back {MAX_REQUEUES} times in a row; the in-memory broker sets it aside (TestBroker::parked)");
                Again::Parked(again)
            } else {
                Again::Now(again)
            };
            (Outcome::Requeued, None, again, Settled::Requeued)
        }
        Disposal::Forward {
            target: Target::Delay(delay),
            properties,
            ..
        } => {
            let delay_queue = queues::delay_queue(&plan.queue, delay);
            let outcome = Outcome::Retried {
                attempt: incoming.envelope.attempt.saturating_add(1),
                delay,
                queue: delay_queue.clone(),
            };
            // As RabbitMQ hands it on when its time in the delay queue is
            // up: through the default exchange to the consumer's queue, with
            // the death recorded.
            let headers = properties.headers().clone().unwrap_or_default();
            let properties = properties.with_headers(expired_in(headers, &delay_queue));
            let again = Ready {
                queue: plan.queue.clone(),
                exchange: String::new(),
                routing_key: plan.queue.clone(),
                properties,
                body: ready.body,
                redelivered: false,
                requeues: 0,
            };
            (outcome, None, Again::Later(again), Settled::Retried)
        }
        Disposal::Forward {
            target: Target::Dead,
            properties,
            reason,
        } => {
            let queue = queues::dead_letter_queue(&plan.queue);
            let dead = DeadLetter {
                consumer: consumer.name.clone(),
                queue: queue.clone(),
                properties,
                body: ready.body,
            };
            (
                Outcome::DeadLettered { queue, reason },
                Some(dead),
                Again::No,
                Settled::DeadLettered,
            )
        }
    };
    spans::record_settled(&incoming.span, settled, Some(kind));
    notify_hooks(consumer, &incoming, error, outcome.clone(), failed_at);
    Settlement {
        received: received(Handled::Failed {
            error: error_text,
            outcome,
        }),
        dead,
        again,
    }
}

/// Tells the error hooks, as a consumer does once the outcome is carried
/// out.
fn notify_hooks(
    consumer: &LocalConsumer,
    incoming: &Incoming,
    error: HandlerError,
    outcome: Outcome,
    failed_at: SystemTime,
) {
    let hooks = consumer.scope.hutch.hooks();
    if hooks.is_empty() {
        return;
    }
    hooks.notify(&Failure::new(
        &consumer.name,
        &consumer.plan.queue,
        incoming.envelope.clone(),
        incoming.body.clone(),
        error,
        outcome,
        failed_at,
    ));
}

/// `headers` with the `x-death` entry RabbitMQ adds when a message
/// (published to it through the default exchange) expires from
/// `delay_queue`.
fn expired_in(mut headers: FieldTable, delay_queue: &str) -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert(
        "reason".into(),
        AMQPValue::LongString(LongString::from("expired")),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString(LongString::from(delay_queue)),
    );
    death.insert(
        "time".into(),
        AMQPValue::Timestamp(unix_seconds(SystemTime::now())),
    );
    death.insert(
        "exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from(delay_queue),
        )])),
    );
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers
}

/// How long `TestBroker::settled` waits for the error hooks to report what
/// they were given.
pub(super) const HOOK_DRAIN: Duration = Duration::from_secs(10);
