//! Which deliveries of one channel generation are owed an acknowledgement,
//! and how few `basic.ack` frames can pay them.
//!
//! Acknowledging each message on its own costs a frame, a wake-up of the
//! connection's I/O thread and work in the broker per message. When
//! deliveries arrive faster than one at a time, one `basic.ack` with
//! `multiple` settles all of them at once. It may only cover deliveries
//! that were handled: the ledger lets the acknowledgement reach no further
//! than the oldest delivery still in a handler, and acknowledges handled
//! ones past that gap one by one.

use std::collections::VecDeque;

/// Where one delivery in the ledger stands. Deliveries that need nothing
/// more (settled on their own, or paid for) leave the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Its handler has not finished.
    InHandler,
    /// Handled successfully; an acknowledgement is owed.
    Owed,
}

/// One acknowledgement frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ack {
    /// `basic.ack` with `multiple`: every outstanding delivery up to and
    /// including this tag.
    UpTo(u64),
    /// `basic.ack` of this delivery alone.
    One(u64),
}

/// The deliveries of one channel generation that are in a handler or owed
/// an acknowledgement, in delivery-tag order: at most the channel's
/// prefetch.
#[derive(Debug, Default)]
pub(super) struct AckLedger {
    entries: VecDeque<(u64, Standing)>,
    /// How many entries are `Owed`.
    owed: usize,
}

impl AckLedger {
    /// A delivery was taken from the channel and handed to its handler.
    /// Tags arrive in increasing order on one channel.
    pub(super) fn delivered(&mut self, tag: u64) {
        debug_assert!(self.entries.back().is_none_or(|(last, _)| *last < tag));
        self.entries.push_back((tag, Standing::InHandler));
    }

    /// The delivery's handler succeeded: it is owed an acknowledgement.
    pub(super) fn handled(&mut self, tag: u64) {
        if let Some(index) = self.in_handler(tag) {
            self.entries[index].1 = Standing::Owed;
            self.owed += 1;
        }
    }

    /// The delivery was settled on its own (retried, dead-lettered,
    /// requeued) or left for the broker to redeliver: nothing is owed.
    pub(super) fn settled(&mut self, tag: u64) {
        if let Some(index) = self.in_handler(tag) {
            self.entries.remove(index);
        }
    }

    /// How many handled deliveries wait for their acknowledgement.
    pub(super) fn owed(&self) -> usize {
        self.owed
    }

    /// The frames that pay everything owed, forgetting it: one `multiple`
    /// acknowledgement up to the last owed delivery before the first one
    /// still in a handler, then single ones for those handled after it. A
    /// `multiple` acknowledgement also passes over deliveries settled on
    /// their own, which the broker no longer counts; it never names one.
    pub(super) fn pay(&mut self) -> Vec<Ack> {
        let mut acks = Vec::new();
        if self.owed == 0 {
            return acks;
        }
        let first_in_handler = self
            .entries
            .iter()
            .position(|(_, standing)| *standing == Standing::InHandler)
            .unwrap_or(self.entries.len());
        let up_to = self.entries.range(..first_in_handler).next_back();
        acks.extend(up_to.map(|(tag, _)| Ack::UpTo(*tag)));
        acks.extend(
            self.entries
                .range(first_in_handler..)
                .filter(|(_, standing)| *standing == Standing::Owed)
                .map(|(tag, _)| Ack::One(*tag)),
        );
        self.entries
            .retain(|(_, standing)| *standing == Standing::InHandler);
        self.owed = 0;
        acks
    }

    /// Where `tag` is, if it is in its handler.
    fn in_handler(&self, tag: u64) -> Option<usize> {
        let index = self
            .entries
            .binary_search_by_key(&tag, |(tag, _)| *tag)
            .ok()?;
        (self.entries[index].1 == Standing::InHandler).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl AckLedger {
        fn in_handlers(&self) -> bool {
            self.entries
                .iter()
                .any(|(_, standing)| *standing == Standing::InHandler)
        }
    }

    fn ledger(tags: impl IntoIterator<Item = u64>) -> AckLedger {
        let mut ledger = AckLedger::default();
        for tag in tags {
            ledger.delivered(tag);
        }
        ledger
    }

    #[test]
    fn handled_in_order_are_paid_with_one_multiple_ack() {
        let mut ledger = ledger(1..=5);
        for tag in 1..=5 {
            ledger.handled(tag);
        }
        assert_eq!(ledger.owed(), 5);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(5)]);
        assert_eq!(ledger.owed(), 0);
        assert!(ledger.pay().is_empty());
        assert!(!ledger.in_handlers());
    }

    #[test]
    fn a_delivery_still_in_its_handler_is_never_covered() {
        let mut ledger = ledger(1..=5);
        for tag in [1, 2, 4, 5] {
            ledger.handled(tag);
        }
        assert_eq!(ledger.pay(), vec![Ack::UpTo(2), Ack::One(4), Ack::One(5)]);
        assert!(ledger.in_handlers());
        // 4 and 5 were paid already; only 3 is owed when it finishes.
        ledger.handled(3);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(3)]);
    }

    #[test]
    fn settled_deliveries_are_skipped_over_but_not_paid_for() {
        let mut ledger = ledger(1..=4);
        ledger.settled(1);
        ledger.handled(2);
        ledger.settled(3);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(2)]);
        // Only 4 is left, in its handler: nothing is owed.
        assert!(ledger.pay().is_empty());
        assert!(ledger.in_handlers());
        ledger.settled(4);
        assert!(!ledger.in_handlers());
        assert!(ledger.entries.is_empty());
    }

    #[test]
    fn a_delivery_stuck_in_its_handler_keeps_only_itself_in_the_ledger() {
        // The oldest delivery does not finish; thousands behind it are
        // handled and paid one by one, and none of them stays behind.
        let mut ledger = ledger([1]);
        for tag in 2..5_000 {
            ledger.delivered(tag);
            ledger.handled(tag);
            assert_eq!(ledger.pay(), vec![Ack::One(tag)]);
            assert_eq!(ledger.entries.len(), 1);
        }
        ledger.handled(1);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(1)]);
        assert!(ledger.entries.is_empty());
    }

    #[test]
    fn a_multiple_ack_ends_at_the_last_owed_delivery_not_a_settled_one() {
        // Delivery 3 was dead-lettered and settled on its own; the multiple
        // ack stops at 2 so it never names a tag the broker already forgot.
        let mut ledger = ledger(1..=3);
        ledger.handled(1);
        ledger.handled(2);
        ledger.settled(3);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(2)]);
    }

    #[test]
    fn unknown_or_repeated_marks_change_nothing() {
        let mut ledger = ledger([7]);
        ledger.handled(9);
        assert_eq!(ledger.owed(), 0);
        ledger.handled(7);
        ledger.handled(7);
        assert_eq!(ledger.owed(), 1);
        ledger.settled(7);
        assert_eq!(ledger.pay(), vec![Ack::UpTo(7)]);
    }
}
