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
