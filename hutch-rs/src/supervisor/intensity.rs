//! OTP-style restart intensity: at most N restarts within a period.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Counts one consumer's restarts within a sliding window.
#[derive(Debug)]
pub(crate) struct RestartIntensity {
    max_restarts: u32,
    period: Duration,
    recent: VecDeque<Instant>,
    total: u32,
}

impl RestartIntensity {
    pub(crate) fn new(max_restarts: u32, period: Duration) -> Self {
        Self {
            max_restarts,
            period,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Records a failure at `now`; `true` if a restart is still allowed.
    pub(crate) fn allow_restart(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.max_restarts as usize {
            return false;
        }
        self.total += 1;
        true
    }

    /// Restarts within the current window.
    pub(crate) fn recent(&self) -> u32 {
        u32::try_from(self.recent.len()).unwrap_or(u32::MAX)
    }

    /// Restarts so far, over the consumer's whole life.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_within_the_period_then_refuses() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(3, Duration::from_secs(10));
        for second in 0..3 {
            assert!(intensity.allow_restart(start + Duration::from_secs(second)));
        }
        assert!(!intensity.allow_restart(start + Duration::from_secs(3)));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(2, Duration::from_secs(10));
        assert!(intensity.allow_restart(start));
        assert!(intensity.allow_restart(start + Duration::from_secs(1)));
        assert!(intensity.allow_restart(start + Duration::from_secs(10)));
        assert!(intensity.allow_restart(start + Duration::from_secs(11)));
        assert!(!intensity.allow_restart(start + Duration::from_secs(12)));
        assert_eq!(intensity.total(), 4);
    }

    #[test]
    fn zero_restarts_means_the_first_failure_is_final() {
        let mut intensity = RestartIntensity::new(0, Duration::from_secs(1));
        assert!(!intensity.allow_restart(Instant::now()));
    }
}
