//! The requests of one channel generation that wait for their answer, by
//! correlation id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;

/// How a request ended, as the channel it was sent on learnt it.
#[derive(Debug)]
pub(super) enum Answer {
    /// Its reply came: the body.
    Reply(Vec<u8>),
    /// The broker returned it: no queue is bound for its routing key.
    Returned,
    /// The broker nacked it: it did not take the request.
    Nacked,
    /// The channel closed before the answer: why.
    Interrupted(String),
}

/// The requests waiting on one channel, by correlation id. Once the channel
/// has ended, closed: every waiting request was told why, and no more can
/// register.
#[derive(Debug, Default)]
pub(super) struct Pending {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<String, oneshot::Sender<Answer>>,
    /// Why the channel ended, once it has.
    closed: Option<String>,
}

impl Pending {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is one map operation: a panicking holder leaves
        // nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a request before it is sent, so that no answer can come
    /// before anyone waits for it. `None` once the channel has ended: the
    /// request must go on another one.
    pub(super) fn register(self: &Arc<Self>, correlation_id: String) -> Option<Waiting> {
        let (sender, answer) = oneshot::channel();
        let mut state = self.state();
        if state.closed.is_some() {
            return None;
        }
        state.waiting.insert(correlation_id.clone(), sender);
        Some(Waiting {
            pending: self.clone(),
            correlation_id,
            answer,
        })
    }

    /// Hands `answer` to the request with `correlation_id`; `false` if none
    /// waits for it (it gave up, or never was).
    pub(super) fn answer(&self, correlation_id: &str, answer: Answer) -> bool {
        let sender = self.state().waiting.remove(correlation_id);
        // A request that gave up just now drops its receiver: as if it had
        // already gone.
        sender.is_some_and(|sender| sender.send(answer).is_ok())
    }

    /// The channel has ended: every waiting request is told `reason`, and
    /// no other can register.
    pub(super) fn close(&self, reason: &str) {
        let waiting = {
            let mut state = self.state();
            state.closed.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut state.waiting)
        };
        for sender in waiting.into_values() {
            let _ = sender.send(Answer::Interrupted(reason.to_owned()));
        }
    }

    /// Whether the channel has ended.
    pub(super) fn is_closed(&self) -> bool {
        self.state().closed.is_some()
    }

    /// How many requests wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().waiting.len()
    }
}

/// A registered request, waiting for its answer. Dropped (answered, timed
/// out, or its caller gone), it is forgotten: an answer that comes later
/// finds no one and is dropped.
#[derive(Debug)]
pub(super) struct Waiting {
    pending: Arc<Pending>,
    correlation_id: String,
    answer: oneshot::Receiver<Answer>,
}

impl Waiting {
    /// The answer, once it comes.
    pub(super) async fn answer(&mut self) -> Answer {
        (&mut self.answer).await.unwrap_or_else(|_| {
            // Only `close` and `answer` take the sender, and both send.
            Answer::Interrupted("the request channel went away".to_owned())
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.pending.state().waiting.remove(&self.correlation_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_of(answer: Answer) -> Vec<u8> {
        match answer {
            Answer::Reply(body) => body,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_answer_goes_to_the_request_it_names() {
        let pending = Arc::new(Pending::default());
        let mut first = pending.register("a".to_owned()).unwrap();
        let mut second = pending.register("b".to_owned()).unwrap();
        assert!(pending.answer("b", Answer::Reply(b"2".to_vec())));
        assert!(pending.answer("a", Answer::Reply(b"1".to_vec())));
        assert_eq!(reply_of(second.answer().await), b"2");
        assert_eq!(reply_of(first.answer().await), b"1");
    }

    #[tokio::test]
    async fn an_answer_for_a_request_that_gave_up_finds_no_one() {
        let pending = Arc::new(Pending::default());
        let gave_up = pending.register("late".to_owned()).unwrap();
        drop(gave_up);
        assert_eq!(pending.len(), 0, "a request that gave up is forgotten");
        assert!(!pending.answer("late", Answer::Reply(b"1".to_vec())));
        assert!(!pending.answer("never-sent", Answer::Reply(b"1".to_vec())));
    }

    #[tokio::test]
    async fn closing_interrupts_every_waiting_request_and_refuses_new_ones() {
        let pending = Arc::new(Pending::default());
        let mut waiting: Vec<_> = (0..3)
            .map(|n| pending.register(n.to_string()).unwrap())
            .collect();
        pending.close("connection lost");
        for request in &mut waiting {
            assert!(
                matches!(request.answer().await, Answer::Interrupted(reason) if reason == "connection lost")
            );
        }
        assert!(pending.is_closed());
        assert!(pending.register("after".to_owned()).is_none());
    }
}
