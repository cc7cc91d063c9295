//! Variable difficulty: steer each connection toward a target share rate.

use super::Difficulty;

/// Retarget after this many shares, or after three target intervals.
const WINDOW_SHARES: u32 = 8;

/// Per-connection vardiff state. Times are milliseconds.
#[derive(Debug, Clone)]
pub struct Vardiff {
    target_ms: i64,
    min: Difficulty,
    max: Difficulty,
    /// A bound below `max` that may change (a proxy's upstream difficulty).
    ceiling: Option<Difficulty>,
    window_start: i64,
    shares: u32,
}

impl Vardiff {
    pub fn new(target_secs: f64, min: Difficulty, max: Difficulty, now_ms: i64) -> Vardiff {
        Vardiff {
            target_ms: (target_secs * 1000.0).max(1.0) as i64,
            min,
            max,
            ceiling: None,
            window_start: now_ms,
            shares: 0,
        }
    }

    pub fn clamp(&self, d: Difficulty) -> Difficulty {
        let max = self
            .ceiling
            .map_or(self.max, |c| c.min(self.max))
            .max(self.min);
        d.clamp(self.min, max)
    }

    /// Bound the difficulty by `ceiling` too, from the next change on.
    pub fn set_ceiling(&mut self, ceiling: Option<Difficulty>) {
        self.ceiling = ceiling;
    }

    pub fn record_share(&mut self) {
        self.shares += 1;
    }

    /// Whether a whole window of shares came more than 30 % faster than
    /// aimed for, and the difficulty may still rise above `current`: the
    /// next retarget will raise it.
    pub fn too_fast(&self, current: Difficulty, now_ms: i64) -> bool {
        self.shares >= WINDOW_SHARES
            && self.rate(now_ms).is_some_and(|r| r > 1.3)
            && self.clamp(Difficulty::from_micro(u64::MAX)) > current
    }

    /// Shares per target interval in the window so far (1.0 is on
    /// target), once any time has passed.
    fn rate(&self, now_ms: i64) -> Option<f64> {
        let elapsed = now_ms - self.window_start;
        (elapsed > 0).then(|| self.shares as f64 * self.target_ms as f64 / elapsed as f64)
    }

    /// A new difficulty if the observed rate is off by more than 30 %. The
    /// step is at most 4x either way, so one burst cannot swing it wildly.
    pub fn retarget(&mut self, current: Difficulty, now_ms: i64) -> Option<Difficulty> {
        let elapsed = now_ms - self.window_start;
        if self.shares < WINDOW_SHARES && elapsed < 3 * self.target_ms {
            return None;
        }
        let rate = self.rate(now_ms)?;
        self.window_start = now_ms;
        self.shares = 0;
        let factor = rate.clamp(0.25, 4.0);
        if (0.7..=1.3).contains(&factor) {
            return None;
        }
        let next = Difficulty::from_f64(current.as_f64() * factor).map(|d| self.clamp(d))?;
        (next != current).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x: f64) -> Difficulty {
        Difficulty::from_f64(x).unwrap()
    }

    #[test]
    fn too_fast_raises_too_slow_lowers_on_target_keeps() {
        let mut v = Vardiff::new(10.0, d(0.001), d(1e6), 0);
        for _ in 0..8 {
            v.record_share();
        }
        // 8 shares in 8 s against one per 10 s: 10x too fast, capped at 4x.
        assert_eq!(v.retarget(d(1.0), 8_000), Some(d(4.0)));
        // No shares for 30 s: lower, by at most 4x.
        assert_eq!(v.retarget(d(4.0), 38_000), Some(d(1.0)));
        // Three shares in 30 s: on target.
        for _ in 0..3 {
            v.record_share();
        }
        assert_eq!(v.retarget(d(1.0), 68_000), None);
        // Never below the minimum.
        assert_eq!(v.retarget(d(0.001), 200_000), None);
    }

    /// A whole window that came too fast is seen before the next retarget,
    /// and only if the difficulty may still rise.
    #[test]
    fn a_fast_window_is_seen_at_once() {
        let mut v = Vardiff::new(10.0, d(0.001), d(8.0), 0);
        for _ in 0..7 {
            v.record_share();
        }
        assert!(!v.too_fast(d(1.0), 1_000), "seven shares are not a window");
        v.record_share();
        assert!(v.too_fast(d(1.0), 1_000));
        // Eight shares in 70 s against one per 10 s: on target.
        assert!(!v.too_fast(d(1.0), 70_000));
        // At the ceiling there is nowhere to go.
        assert!(!v.too_fast(d(8.0), 1_000));
        v.set_ceiling(Some(d(1.0)));
        assert!(!v.too_fast(d(1.0), 1_000));
        // Seeing it does not use the window up: the retarget does.
        v.set_ceiling(None);
        assert_eq!(v.retarget(d(1.0), 1_000), Some(d(4.0)));
        assert!(!v.too_fast(d(4.0), 1_500));
    }
}
