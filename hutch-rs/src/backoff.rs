//! The one backoff that every retry loop of hutch-rs waits with: the
//! connection manager between connection attempts, a consumer between
//! restarts, the forwarding of failed messages between rounds that could not
//! get through, and a publish between attempts on failing channels.
//!
//! The delays come from `backon`'s exponential backoff; this type adds what
//! the loops share: a reset after a success, and a wait that shutdown cuts
//! short.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

type Delays = <ExponentialBuilder as BackoffBuilder>::Backoff;

/// Delays that start at a minimum and double after each one, up to a
/// maximum; with jitter, each delay gets a random addition of up to itself
/// (so at most twice the maximum). [`reset`](Self::reset) starts over.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: Delays,
    max: Duration,
}

impl Backoff {
    /// `min`, `2 × min`, `4 × min`, … up to `max`, without jitter.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The same delays, each plus a random jitter of up to itself, so that
    /// many clients that failed together do not retry together.
    #[must_use]
    pub(crate) fn with_jitter(mut self) -> Self {
        self.builder = self.builder.with_jitter();
        self.delays = self.builder.build();
        self
    }

    /// The next delay; each call moves one step along.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a limit on the number of delays there always is a next
        // one; the maximum is the safe answer if not.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts over at the minimum: after a success.
    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// Waits the next delay, or until `cancel` is cancelled; `false` if it
    /// was (already cancelled: no wait at all).
    pub(crate) async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delays_double_from_the_minimum_up_to_the_maximum() {
        // Powers of two of a quarter second: exact in backon's f32 steps.
        let mut backoff = Backoff::new(ms(250), ms(3_000));
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [
                ms(250),
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(3_000),
                ms(3_000),
                ms(3_000)
            ]
        );
    }

    #[test]
    fn a_minimum_equal_to_the_maximum_is_a_fixed_delay() {
        let mut backoff = Backoff::new(ms(500), ms(500));
        for _ in 0..5 {
            assert_eq!(backoff.next_delay(), ms(500));
        }
    }

    #[test]
    fn reset_starts_over_at_the_minimum() {
        let mut backoff = Backoff::new(ms(250), ms(60_000));
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.next_delay(), ms(8_000));
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(250));
        assert_eq!(backoff.next_delay(), ms(500));
    }

    #[test]
    fn jitter_adds_up_to_the_delay_itself_and_varies() {
        let mut spread = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(ms(250), ms(1_000)).with_jitter();
            for base in [250, 500, 1_000, 1_000, 1_000] {
                let delay = backoff.next_delay();
                assert!(
                    delay >= ms(base) && delay <= ms(2 * base),
                    "{delay:?} outside [{base} ms, {} ms]",
                    2 * base
                );
                spread.insert(delay);
            }
            backoff.reset();
            let first = backoff.next_delay();
            assert!(
                first >= ms(250) && first <= ms(500),
                "{first:?} after reset"
            );
        }
        assert!(spread.len() > 10, "jitter hardly varies: {spread:?}");
    }

    #[tokio::test]
    async fn a_wait_lasts_the_delay_and_moves_on() {
        let mut backoff = Backoff::new(ms(125), ms(1_000));
        let never = CancellationToken::new();
        let started = tokio::time::Instant::now();
        assert!(backoff.wait(&never).await);
        assert!(started.elapsed() >= ms(125));
        assert_eq!(backoff.next_delay(), ms(250));
    }

    #[tokio::test]
    async fn cancellation_cuts_a_wait_short() {
        let mut backoff = Backoff::new(ms(30_000), ms(60_000));
        let cancel = CancellationToken::new();
        let cancelling = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(50)).await;
            cancelling.cancel();
        });
        let started = tokio::time::Instant::now();
        assert!(!backoff.wait(&cancel).await);
        assert!(started.elapsed() < ms(5_000), "{:?}", started.elapsed());
        // Already cancelled: no wait at all.
        let started = tokio::time::Instant::now();
        assert!(!backoff.wait(&cancel).await);
        assert!(started.elapsed() < ms(1_000));
    }
}
