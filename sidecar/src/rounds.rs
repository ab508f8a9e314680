//! A periodic job that runs once more when it is stopped. The usage reporter
//! and the usage file both persist on every tick and a last time after the
//! servers drained, so what they leave holds every request that finished.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The rounds of such a job: `while rounds.next().await { ... }`.
pub struct Rounds {
    ticks: Interval,
    stop: CancellationToken,
    last_given: bool,
}

impl Rounds {
    /// A round now, then every `interval` (a late tick is not caught up),
    /// until `stop` is cancelled.
    pub fn new(interval: Duration, stop: CancellationToken) -> Self {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Rounds {
            ticks,
            stop,
            last_given: false,
        }
    }

    /// Waits for the next round: `true` at every tick, `true` once more when
    /// `stop` is cancelled (the last round), then `false`.
    pub async fn next(&mut self) -> bool {
        if self.last_given {
            return false;
        }
        tokio::select! {
            _ = self.stop.cancelled() => self.last_given = true,
            _ = self.ticks.tick() => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_round_per_tick_then_one_last_round_after_stop() {
        let stop = CancellationToken::new();
        let mut rounds = Rounds::new(Duration::from_secs(1), stop.clone());
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(rounds.next().await);
        }
        // The first tick is immediate, then one a second.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        stop.cancel();
        assert!(rounds.next().await, "the last round after stop");
        assert!(!rounds.next().await);
        assert!(!rounds.next().await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
