//! How long a failed message waits before its next attempt, and how many
//! attempts it gets.

use std::time::Duration;

/// The retry policy of one consumer: its `#[consumer]` arguments over the
/// configured defaults.
///
/// Attempt `n` that fails waits `min_delay × 2^(n-1)`, at most `max_delay`,
/// varied by ±20 % (jitter, so that messages that failed together do not all
/// come back together), then rounded to the nearest step of the E12 series
/// (1.0, 1.2, 1.5, 1.8, 2.2, 2.7, 3.3, 3.9, 4.7, 5.6, 6.8 and 8.2 times a
/// power of ten milliseconds). Each step is one delay queue: the rounding
/// keeps their number small (at most 12 per tenfold range of delays) and
/// changes a delay of 10 ms or more by at most 12 %. The result is kept
/// within `min_delay..=max_delay` (a bound off the grid is one more queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a message is handled before it is dead-lettered (at
    /// least 1: no retries).
    pub max_attempts: u32,
    /// The wait after the first failure.
    pub min_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

/// The steps of the delay grid within one power of ten, in tenths: the E12
/// series, whose steps are evenly spaced by ratio (about 21 % apart).
const STEPS_IN_TENTHS: [u64; 12] = [10, 12, 15, 18, 22, 27, 33, 39, 47, 56, 68, 82];

/// How far the jitter moves a delay either way.
const JITTER: f64 = 0.2;

/// The longest delay a queue can hold a message for: RabbitMQ's
/// `x-message-ttl` is at most 2^32 - 1 milliseconds (about 49 days).
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

impl RetryPolicy {
    /// Whether a message that failed on `attempt` gets another one.
    #[must_use]
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The backoff before the attempt after `failed_attempt`, before jitter:
    /// `min_delay` doubled per earlier attempt, capped at `max_delay`.
    #[must_use]
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        let doublings = failed_attempt.saturating_sub(1).min(40);
        self.min_delay
            .saturating_mul(1 << doublings.min(31))
            .min(self.max_delay)
    }

    /// The delay after `failed_attempt`: the backoff with jitter, on the
    /// delay grid, within the policy's bounds.
    pub(crate) fn delay_after(&self, failed_attempt: u32) -> Duration {
        let factor = 1.0 + JITTER * (2.0 * fastrand::f64() - 1.0);
        let jittered = self.backoff(failed_attempt).mul_f64(factor);
        on_grid(jittered).clamp(self.min_delay, self.max_delay)
    }
}

impl RetryPolicy {
    /// The backoff after each failed attempt that is retried, in order,
    /// until it reaches `max_delay` (every later attempt waits that too).
    pub(crate) fn backoffs(&self) -> Vec<Duration> {
        let mut backoffs = Vec::new();
        for failed_attempt in 1..self.max_attempts {
            let backoff = self.backoff(failed_attempt);
            backoffs.push(backoff);
            if backoff >= self.max_delay {
                break;
            }
        }
        backoffs
    }

    /// Every delay [`delay_after`](Self::delay_after) can return for the
    /// attempts this policy retries, in increasing order: one delay queue
    /// each. Rounding to the grid keeps order (a longer delay never rounds
    /// below a shorter one), so the jittered range of each backoff,
    /// `0.8 ×` to `1.2 ×`, maps onto the grid steps between the roundings
    /// of its ends, clamped as `delay_after` clamps.
    pub(crate) fn possible_delays(&self) -> Vec<Duration> {
        let mut delays = std::collections::BTreeSet::new();
        for failed_attempt in 1..self.max_attempts {
            let backoff = self.backoff(failed_attempt);
            let lowest = on_grid(backoff.mul_f64(1.0 - JITTER));
            let highest = on_grid(backoff.mul_f64(1.0 + JITTER));
            for step in grid_steps().filter(|step| (lowest..=highest).contains(step)) {
                delays.insert(step.clamp(self.min_delay, self.max_delay));
            }
            // The ends themselves, in case rounding capped one at
            // MAX_DELAY, off the grid.
            delays.insert(lowest.clamp(self.min_delay, self.max_delay));
            delays.insert(highest.clamp(self.min_delay, self.max_delay));
            // Every later attempt has this same backoff.
            if backoff >= self.max_delay {
                break;
            }
        }
        delays.into_iter().collect()
    }
}

/// Every step of the delay grid up to [`MAX_DELAY`], in increasing order.
fn grid_steps() -> impl Iterator<Item = Duration> {
    let max = u64::try_from(MAX_DELAY.as_millis()).unwrap_or(u64::MAX);
    let mut decade = 1_u64;
    let mut steps = Vec::new();
    while decade <= max {
        steps.extend(
            STEPS_IN_TENTHS
                .iter()
                .map(|tenths| tenths * decade / 10)
                .filter(|&step| step > 0 && step <= max),
        );
        decade = decade.saturating_mul(10);
    }
    steps.dedup();
    steps.into_iter().map(Duration::from_millis)
}

/// `delay` rounded to the nearest step of the delay grid (at least 1 ms, at
/// most [`MAX_DELAY`]). Explicit delays from
/// [`Decision::retry_after`](crate::Decision::retry_after) are rounded the
/// same way.
pub(crate) fn on_grid(delay: Duration) -> Duration {
    let millis = u64::try_from(delay.min(MAX_DELAY).as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut decade = 1_u64;
    while millis / decade >= 10 {
        decade *= 10;
    }
    // Candidates: every step of this power of ten, and the first of the next.
    let nearest = STEPS_IN_TENTHS
        .iter()
        .map(|tenths| tenths * decade / 10)
        .chain(std::iter::once(decade * 10))
        .filter(|&step| step > 0)
        .min_by(|&a, &b| {
            // Nearest by ratio, so 1.1 s is as near 1 s as 1.2 s is.
            let distance = |step: u64| (step as f64 / millis as f64).ln().abs();
            distance(a).total_cmp(&distance(b))
        })
        .unwrap_or(millis);
    Duration::from_millis(nearest).min(MAX_DELAY)
}

/// Checks a pair of retry delays; the reason names what is wrong.
pub(crate) fn check_delays(min: Duration, max: Duration) -> Result<(), String> {
    if min.is_zero() {
        return Err("the minimum retry delay must be longer than zero".into());
    }
    if min > max {
        return Err(format!(
            "the minimum retry delay {min:?} is above the maximum {max:?}"
        ));
    }
    if max > MAX_DELAY {
        return Err(format!(
            "the maximum retry delay {max:?} is above RabbitMQ's limit for a message TTL ({} ms, about 49 days)",
            MAX_DELAY.as_millis()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, min_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(min_ms),
            max_delay: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = policy(10, 1_000, 60_000);
        let backoffs: Vec<u64> = (1..=8)
            .map(|attempt| policy.backoff(attempt).as_millis() as u64)
            .collect();
        assert_eq!(
            backoffs,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn attempts_are_bounded() {
        let three = policy(3, 1, 1);
        assert!(three.retries_after(1));
        assert!(three.retries_after(2));
        assert!(!three.retries_after(3));
        assert!(!policy(1, 1, 1).retries_after(1));
    }

    #[test]
    fn delays_stay_within_the_policy_and_jitter() {
        let policy = policy(10, 1_000, 65_000);
        for attempt in 1..=8 {
            let backoff = policy.backoff(attempt).as_secs_f64();
            for _ in 0..200 {
                let delay = policy.delay_after(attempt).as_secs_f64();
                assert!((1.0..=65.0).contains(&delay), "attempt {attempt}: {delay}");
                // ±20 % jitter, then at most 12 % rounding.
                assert!(
                    delay >= backoff * 0.8 * 0.88 && delay <= backoff * 1.2 * 1.12,
                    "attempt {attempt}: {delay} vs {backoff}"
                );
            }
        }
    }

    #[test]
    fn every_delay_the_backoff_picks_is_one_of_the_possible_delays() {
        for policy in [
            policy(5, 1_000, 60_000),
            policy(12, 7, 3_000),
            policy(4, 1_500, 1_500),
            policy(1, 1_000, 60_000),
            policy(u32::MAX, 100, 10_000),
            policy(3, 1_000, MAX_DELAY.as_millis() as u64),
        ] {
            let possible = policy.possible_delays();
            assert!(possible.is_sorted(), "{possible:?}");
            let mut seen = std::collections::BTreeSet::new();
            for attempt in 1..policy.max_attempts.min(20) {
                for _ in 0..500 {
                    let delay = policy.delay_after(attempt);
                    assert!(
                        possible.contains(&delay),
                        "{policy:?} attempt {attempt}: {delay:?} not in {possible:?}"
                    );
                    seen.insert(delay);
                }
            }
            // Not padded: a jitter range of ±20 % spans at most four grid
            // steps (they are about 21 % apart).
            assert!(
                possible.len() <= 4 * policy.backoffs().len(),
                "{policy:?}: {possible:?}"
            );
            assert!(seen.len() <= possible.len());
            if policy.max_attempts == 1 {
                assert!(possible.is_empty());
            }
        }
    }

    #[test]
    fn backoffs_stop_at_the_maximum() {
        assert_eq!(
            policy(10, 1_000, 5_000).backoffs(),
            [1_000, 2_000, 4_000, 5_000].map(Duration::from_millis)
        );
        assert_eq!(
            policy(u32::MAX, 1, 1).backoffs(),
            [Duration::from_millis(1)]
        );
        assert!(policy(1, 1, 1).backoffs().is_empty());
    }

    #[test]
    fn the_grid_is_small_and_close() {
        let steps: Vec<u64> = [
            1, 9, 11, 14, 17, 22, 27, 35, 45, 55, 70, 90, 95, 1_100, 7_000,
        ]
        .into_iter()
        .map(|ms| on_grid(Duration::from_millis(ms)).as_millis() as u64)
        .collect();
        assert_eq!(
            steps,
            [
                1, 10, 12, 15, 18, 22, 27, 33, 47, 56, 68, 82, 100, 1_200, 6_800
            ]
        );
        let mut distinct: Vec<u64> = (10..=99_999)
            .map(|ms| on_grid(Duration::from_millis(ms)).as_millis() as u64)
            .collect();
        distinct.dedup();
        assert!(distinct.len() <= 4 * 12 + 1, "{} steps", distinct.len());
        for ms in (10_u64..200_000).step_by(7).chain([3_600_000, 86_400_000]) {
            let rounded = on_grid(Duration::from_millis(ms)).as_millis() as f64;
            let ratio = rounded / ms as f64;
            assert!((0.88..=1.12).contains(&ratio), "{ms} -> {rounded}");
        }
        assert_eq!(on_grid(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(on_grid(Duration::from_secs(u64::MAX)), MAX_DELAY);
    }
}
