//! The ledger's clock: the time every lease, bill and credit is stamped
//! with.
//!
//! It is the wall time read at the last look (`keep_time` in `http.rs`:
//! at the start, once a minute, before each GC pass and at a clean stop)
//! carried on by the monotonic clock. A step of the wall clock between two
//! looks (an NTP correction, a board without a real-time clock setting its
//! time after boot, a resumed VM) thus reaches the ledger only at the next
//! look, which moves every row by the step in one transaction and sets this
//! clock to the wall time under the same hold of its lock. Read straight
//! from the wall, rows stamped after the step but before the look were
//! moved a second time, and a GC pass that read the wall after the step
//! took every share whose moved lease seemed to have lapsed: with a step
//! of years, all of them.
//!
//! Request signatures are checked against the wall clock, not this one:
//! their freshness is the client's and the mirror's shared time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The ledger's clock; clones share it.
#[derive(Clone)]
pub(super) struct LedgerClock(Arc<Mutex<(Instant, i64)>>);

impl LedgerClock {
    /// A clock that reads `wall` (seconds since the epoch) at `monotonic`.
    pub(super) fn new(monotonic: Instant, wall: i64) -> LedgerClock {
        LedgerClock(Arc::new(Mutex::new((monotonic, wall))))
    }

    /// Now in the ledger's time, seconds since the epoch.
    pub(super) fn now(&self) -> i64 {
        let (at, wall) = *self.reading();
        wall.saturating_add(i64::try_from(at.elapsed().as_secs()).unwrap_or(i64::MAX))
    }

    /// The (monotonic, wall) reading the clock runs from, to look at and
    /// set. Taken only inside a ledger transaction, never held across one:
    /// the lock order is the ledger's connection, then this.
    pub(super) fn reading(&self) -> MutexGuard<'_, (Instant, i64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_runs_from_its_reading_not_from_the_wall() {
        let wall = 1_000_000_000;
        let clock = LedgerClock::new(Instant::now() - Duration::from_secs(90), wall);
        let now = clock.now();
        assert!((wall + 90..wall + 92).contains(&now), "{now}");
        *clock.reading() = (Instant::now(), 2_000_000_000);
        assert!((2_000_000_000..2_000_000_002).contains(&clock.now()));
    }
}
