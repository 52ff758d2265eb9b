//! The task of one request channel: it takes every reply, confirm and
//! return the broker sends on the channel to the request it belongs to, by
//! correlation id, and interrupts the requests still waiting when the
//! channel ends.
//!
//! Confirms are awaited here, not by the requests: lapin hands a
//! `basic.return` to whichever publisher confirm of the channel completes
//! next (the front of a queue of returned messages, popped for each confirm
//! in the order lapin completes them, which for a multiple ack is the order
//! of a `HashMap`), and a confirm dropped unawaited takes the return it
//! carries with it. So a return can come with another request's confirm;
//! it names its own request by the correlation id it carries, and is sent
//! there. Awaited here, no confirm is dropped while the channel lives, even
//! when its request got its reply first or stopped waiting.

use std::{future::Future, pin::Pin, sync::Arc};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{Confirmation, PublisherConfirm, message::Delivery};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    request::pending::{Answer, Pending},
    supervisor::{connection_manager::ConnectionManager, observer::Observer},
};

/// A request sent on the channel, whose confirm is awaited here.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) correlation_id: String,
    pub(super) confirm: PublisherConfirm,
}

/// A confirm being awaited, and whose it is.
type Confirming = Pin<Box<dyn Future<Output = (String, lapin::Result<Confirmation>)> + Send>>;

/// What one channel's task works with.
pub(super) struct Dispatch {
    pub(super) replies: lapin::Consumer,
    pub(super) sent: mpsc::UnboundedReceiver<Sent>,
    pub(super) pending: Arc<Pending>,
    pub(super) observer: Observer,
    pub(super) manager: ConnectionManager,
    /// The `Hutch`'s root: cancelled once nothing can request any more.
    pub(super) shutdown: CancellationToken,
}

impl Dispatch {
    /// Runs until the channel ends (or the root is cancelled), then
    /// interrupts every request still waiting, with the reason.
    pub(super) async fn run(self) {
        let Dispatch {
            mut replies,
            mut sent,
            pending,
            observer,
            manager,
            shutdown,
        } = self;
        let mut confirming = FuturesUnordered::<Confirming>::new();
        let reason = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break "hutch-rs is shutting down".to_owned(),
                reply = replies.next() => match reply {
                    Some(Ok(delivery)) => route_reply(&pending, &observer, delivery),
                    Some(Err(error)) if error.is_amqp_soft_error() => {
                        break format!("the broker closed the request channel: {error}");
                    }
                    Some(Err(error)) => break format!("the connection was lost: {error}"),
                    None if manager.has_ended() => break manager.ended().to_string(),
                    None => break "the request channel was closed".to_owned(),
                },
                Some((correlation_id, confirmed)) = confirming.next(), if !confirming.is_empty() => {
                    route_confirm(&pending, &correlation_id, confirmed);
                }
                Some(Sent { correlation_id, confirm }) = sent.recv() => {
                    confirming.push(Box::pin(async move { (correlation_id, confirm.await) }));
                }
            }
        };
        tracing::debug!(%reason, "the request channel ended");
        pending.close(&reason);
    }
}

/// A reply: to the request its correlation id names, or dropped and counted
/// if none waits.
fn route_reply(pending: &Pending, observer: &Observer, delivery: Delivery) {
    let Some(correlation_id) = delivery.properties.correlation_id().clone() else {
        tracing::debug!("a reply without a correlation id was dropped");
        observer.late_reply();
        return;
    };
    if !pending.answer(correlation_id.as_str(), Answer::Reply(delivery.data)) {
        tracing::debug!(
            correlation_id = correlation_id.as_str(),
            "a reply came when no request waited for it (it had timed out); dropped"
        );
        observer.late_reply();
    }
}

/// A confirm: a nack fails its request; a return it carries fails the
/// request the returned message names, which need not be this one.
fn route_confirm(pending: &Pending, correlation_id: &str, confirmed: lapin::Result<Confirmation>) {
    // An error: the channel closed, which ends the task and tells every
    // waiting request.
    let Ok(confirmation) = confirmed else {
        return;
    };
    let acked = confirmation.is_ack();
    if let Some(returned) = confirmation.take_message() {
        match returned.delivery.properties.correlation_id() {
            Some(owner) => {
                pending.answer(owner.as_str(), Answer::Returned);
            }
            None => tracing::debug!("a returned message without a correlation id"),
        }
    }
    if !acked {
        pending.answer(correlation_id, Answer::Nacked);
    }
}
