//! The one place a consumer's channel settles deliveries: every `basic.ack`
//! and `basic.nack` of a channel generation is written from here, in the
//! order it was decided.
//!
//! Why one place: a `basic.ack` with `multiple` settles every outstanding
//! delivery up to its tag. If a `basic.nack` meant to put a message back
//! were still on its way while a later multiple ack left first, the ack
//! would settle that message (it is lost) and the late nack would name a tag
//! the broker no longer knows (406, the channel closes). lapin queues a
//! frame on the first poll of `Channel::basic_ack`/`basic_nack`, but an
//! `Acker` hands it to lapin's internal task first, which queues it later:
//! two paths, no order between them. So nothing here goes through `Acker`:
//! each frame is queued at once, on this task, by a first poll made as the
//! decision is taken, and its future is kept until lapin reports it written.

use std::{future::Future, pin::Pin};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicNackOptions},
};

use crate::supervisor::consumer::ledger::{Ack, AckLedger};

/// One settle frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frame {
    /// `basic.ack`; `multiple` settles every outstanding delivery up to
    /// `tag`.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack` with requeue: back to the head of the queue. Tag 0 with
    /// `multiple` is every outstanding delivery of the channel.
    Requeue { tag: u64, multiple: bool },
}

/// A settle frame being written.
pub(super) type Writing = Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>>;

/// What settles on: lapin's channel, or a recording fake in tests.
pub(super) trait SettleChannel {
    /// Starts writing `frame`. The frame must be queued by the first poll
    /// of the returned future: that poll is what orders it.
    fn settle(&self, frame: Frame) -> Writing;
}

impl SettleChannel for Channel {
    fn settle(&self, frame: Frame) -> Writing {
        let channel = self.clone();
        Box::pin(async move {
            match frame {
                Frame::Ack { tag, multiple } => {
                    channel.basic_ack(tag, BasicAckOptions { multiple }).await
                }
                Frame::Requeue { tag, multiple } => {
                    channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple,
                                requeue: true,
                            },
                        )
                        .await
                }
            }
        })
    }
}

/// A settle frame that could not be written: the channel closed first, so
/// the broker takes the delivery back itself.
#[derive(Debug)]
pub(super) struct Unwritten {
    pub(super) frame: Frame,
    pub(super) error: lapin::Error,
}

/// Settles the deliveries of one channel generation, in decision order.
pub(super) struct Settler<C> {
    channel: C,
    ledger: AckLedger,
    writing: FuturesUnordered<Pin<Box<dyn Future<Output = Option<Unwritten>> + Send>>>,
}

impl<C: SettleChannel> Settler<C> {
    pub(super) fn new(channel: C) -> Self {
        Self {
            channel,
            ledger: AckLedger::default(),
            writing: FuturesUnordered::new(),
        }
    }

    /// A delivery was taken from the channel; it is pending until decided.
    pub(super) fn delivered(&mut self, tag: u64) {
        self.ledger.delivered(tag);
    }

    /// The delivery is to be acknowledged: its handler succeeded, or its
    /// copy was confirmed. Paid later, with its neighbours.
    pub(super) fn ack_later(&mut self, tag: u64) {
        self.ledger.handled(tag);
    }

    /// How many acknowledgements are owed.
    pub(super) fn owed(&self) -> usize {
        self.ledger.owed()
    }

    /// Puts the delivery back at the head of its queue, now.
    pub(super) fn requeue(&mut self, tag: u64) -> Option<Unwritten> {
        self.ledger.settled(tag);
        self.send(Frame::Requeue {
            tag,
            multiple: false,
        })
    }

    /// The delivery needs nothing from this channel any more (its channel
    /// closed: the broker has it back).
    pub(super) fn forget(&mut self, tag: u64) {
        self.ledger.settled(tag);
    }

    /// Sends the acknowledgements owed: a `multiple` one up to the first
    /// delivery still pending, single ones past it.
    pub(super) fn pay(&mut self) -> Vec<Unwritten> {
        let acks = self.ledger.pay();
        acks.into_iter()
            .filter_map(|ack| {
                let frame = match ack {
                    Ack::UpTo(tag) => Frame::Ack {
                        tag,
                        multiple: true,
                    },
                    Ack::One(tag) => Frame::Ack {
                        tag,
                        multiple: false,
                    },
                };
                self.send(frame)
            })
            .collect()
    }

    /// Hands every outstanding delivery of the channel back to the queue,
    /// after paying what is owed.
    pub(super) fn requeue_all(&mut self) -> Vec<Unwritten> {
        let mut unwritten = self.pay();
        unwritten.extend(self.send(Frame::Requeue {
            tag: 0,
            multiple: true,
        }));
        unwritten
    }

    /// Whether frames are still being written.
    pub(super) fn is_writing(&self) -> bool {
        !self.writing.is_empty()
    }

    /// The next frame written, or not: `Some` for one that failed.
    pub(super) async fn written(&mut self) -> Option<Unwritten> {
        self.writing.next().await.flatten()
    }

    /// Queues `frame` now (first poll), and keeps its future until written.
    /// `Some` when it failed at once (the channel is closed).
    fn send(&mut self, frame: Frame) -> Option<Unwritten> {
        let mut writing = self.channel.settle(frame);
        match (&mut writing).now_or_never() {
            Some(Ok(())) => None,
            Some(Err(error)) => Some(Unwritten { frame, error }),
            None => {
                self.writing.push(Box::pin(async move {
                    writing.await.err().map(|error| Unwritten { frame, error })
                }));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records frames in the order they are queued (first poll), and
    /// finishes their writes only later, as lapin's I/O thread would.
    #[derive(Clone, Default)]
    struct Recording {
        queued: Arc<Mutex<Vec<Frame>>>,
    }

    impl SettleChannel for Recording {
        fn settle(&self, frame: Frame) -> Writing {
            let queued = self.queued.clone();
            let mut first_poll = true;
            Box::pin(std::future::poll_fn(move |context| {
                if first_poll {
                    first_poll = false;
                    queued.lock().unwrap().push(frame);
                    // Not written yet: the write completes on a later poll.
                    context.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Ok(()))
            }))
        }
    }

    /// A deterministic pseudo-random sequence (no test dependency needed).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Pending,
        Acked,
        Requeued,
    }

    /// What the broker makes of the frames, in order: every frame must name
    /// outstanding deliveries only, and a multiple ack must cover no
    /// delivery that was still pending or meant to go back.
    fn replay(frames: &[Frame], decided: &std::collections::BTreeMap<u64, Fate>) {
        let mut outstanding: std::collections::BTreeSet<u64> = decided.keys().copied().collect();
        for frame in frames {
            match *frame {
                Frame::Ack {
                    tag,
                    multiple: true,
                } => {
                    assert!(outstanding.contains(&tag), "{frame:?} names a settled tag");
                    let covered: Vec<u64> = outstanding.range(..=tag).copied().collect();
                    for covered in covered {
                        assert_eq!(decided[&covered], Fate::Acked, "{frame:?} covers {covered}");
                        outstanding.remove(&covered);
                    }
                }
                Frame::Ack {
                    tag,
                    multiple: false,
                } => {
                    assert!(outstanding.remove(&tag), "{frame:?} names a settled tag");
                    assert_eq!(decided[&tag], Fate::Acked);
                }
                Frame::Requeue {
                    tag,
                    multiple: false,
                } => {
                    assert!(outstanding.remove(&tag), "{frame:?} names a settled tag");
                    assert_eq!(decided[&tag], Fate::Requeued);
                }
                Frame::Requeue { multiple: true, .. } => outstanding.clear(),
            }
        }
    }

    #[test]
    fn frames_leave_in_decision_order_and_never_cover_what_goes_back() {
        for seed in 0..200 {
            let mut random = Lcg(seed);
            let channel = Recording::default();
            let mut settler = Settler::new(channel.clone());
            let mut decided = std::collections::BTreeMap::new();
            let mut pending: Vec<u64> = Vec::new();
            let mut next_tag = 1;
            for _ in 0..300 {
                match random.below(4) {
                    // A delivery arrives.
                    0 => {
                        settler.delivered(next_tag);
                        decided.insert(next_tag, Fate::Pending);
                        pending.push(next_tag);
                        next_tag += 1;
                    }
                    // One pending delivery is decided, in any order.
                    1 | 2 if !pending.is_empty() => {
                        let tag = pending.swap_remove(random.below(pending.len()));
                        if random.below(3) == 0 {
                            decided.insert(tag, Fate::Requeued);
                            assert!(settler.requeue(tag).is_none());
                        } else {
                            decided.insert(tag, Fate::Acked);
                            settler.ack_later(tag);
                        }
                    }
                    _ => assert!(settler.pay().is_empty()),
                }
                // At every point, what was queued so far is sound.
                replay(&channel.queued.lock().unwrap(), &decided);
            }
            assert!(settler.pay().is_empty());
            // Every decided delivery was settled exactly once.
            let queued = channel.queued.lock().unwrap().clone();
            replay(&queued, &decided);
            let requeued = queued
                .iter()
                .filter(|frame| matches!(frame, Frame::Requeue { .. }))
                .count();
            assert_eq!(
                requeued,
                decided
                    .values()
                    .filter(|fate| **fate == Fate::Requeued)
                    .count()
            );
        }
    }

    #[test]
    fn a_requeue_is_queued_before_a_later_multiple_ack_even_while_unwritten() {
        let channel = Recording::default();
        let mut settler = Settler::new(channel.clone());
        for tag in 1..=3 {
            settler.delivered(tag);
        }
        // 2 goes back; its frame is queued but not yet written when 1 and 3
        // are acknowledged together.
        assert!(settler.requeue(2).is_none());
        assert!(settler.is_writing());
        settler.ack_later(1);
        settler.ack_later(3);
        assert!(settler.pay().is_empty());
        assert_eq!(
            *channel.queued.lock().unwrap(),
            [
                Frame::Requeue {
                    tag: 2,
                    multiple: false
                },
                Frame::Ack {
                    tag: 3,
                    multiple: true
                },
            ]
        );
    }

    #[tokio::test]
    async fn every_frame_is_awaited_until_written() {
        let channel = Recording::default();
        let mut settler = Settler::new(channel);
        settler.delivered(1);
        settler.delivered(2);
        settler.ack_later(1);
        assert!(settler.requeue(2).is_none());
        settler.pay();
        let mut written = 0;
        while settler.is_writing() {
            assert!(settler.written().await.is_none());
            written += 1;
        }
        assert_eq!(written, 2);
    }
}
