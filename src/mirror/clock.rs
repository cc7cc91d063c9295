//! The ledger's clock: the time every lease, bill and credit is stamped
//! with.
//!
//! It is the wall time read at the last look (`keep_time` in `http.rs`:
//! at the start, once a minute, before each GC pass and at a clean stop)
//! carried on by the monotonic clock. A step of the wall clock between two
//! looks (an NTP correction, a board without a real-time clock setting its
//! time after boot, a resumed VM) thus reaches the ledger only at the next
//! look, which moves every row by the step and sets this clock to the wall
//! time together. Read straight from the wall, rows stamped after the step
//! but before the look were moved a second time, and a GC pass that read
//! the wall after a step of years took every share whose moved lease
//! seemed to have lapsed.
//!
//! A time that is written into the ledger, or compared with what it holds,
//! is read and used under [`LedgerClock::stamp`]; the look moves the rows
//! and the clock under [`LedgerClock::step`], which waits for every stamp
//! in progress and holds off new ones. So no row is stamped in one frame
//! and kept in the other. A plain [`LedgerClock::now`] (a check before an
//! upload's body comes in) takes no lock.
//!
//! Request signatures are checked against the wall clock, not this one:
//! their freshness is the client's and the mirror's shared time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// The ledger's clock; clones share it.
#[derive(Clone)]
pub(super) struct LedgerClock(Arc<Inner>);

struct Inner {
    /// The monotonic time the clock counts from.
    base: Instant,
    /// The ledger's time at `base`, in seconds since the epoch.
    offset: AtomicI64,
    /// Held shared by stamps, exclusively by a look.
    gate: RwLock<()>,
}

impl LedgerClock {
    /// A clock that reads `wall` (seconds since the epoch) now.
    pub(super) fn new(wall: i64) -> LedgerClock {
        LedgerClock(Arc::new(Inner {
            base: Instant::now(),
            offset: AtomicI64::new(wall),
            gate: RwLock::new(()),
        }))
    }

    fn since_base(&self) -> i64 {
        i64::try_from(self.0.base.elapsed().as_secs()).unwrap_or(i64::MAX)
    }

    /// Now in the ledger's time, seconds since the epoch.
    pub(super) fn now(&self) -> i64 {
        self.0
            .offset
            .load(Ordering::Acquire)
            .saturating_add(self.since_base())
    }

    /// Run `f` with the ledger's time now, no look moving the clock (or the
    /// rows) until it returns: for a time `f` writes into the ledger or
    /// compares with it. `f` must not await or look (`step`) itself.
    pub(super) fn stamp<T>(&self, f: impl FnOnce(i64) -> T) -> T {
        let _gate = self.0.gate.read().unwrap_or_else(|p| p.into_inner());
        f(self.now())
    }

    /// A look: with no stamp in progress, `f` is given the ledger's time
    /// and the wall's; the clock then reads the wall's, if `f` succeeded
    /// (it moves the rows by any step between the two).
    pub(super) fn step<E>(&self, wall: i64, f: impl FnOnce(i64) -> Result<(), E>) -> Result<(), E> {
        let _gate = self.0.gate.write().unwrap_or_else(|p| p.into_inner());
        f(self.now())?;
        self.0
            .offset
            .store(wall.saturating_sub(self.since_base()), Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_from_its_reading_not_from_the_wall() {
        let wall = 1_000_000_000;
        let clock = LedgerClock::new(wall);
        assert!((wall..wall + 2).contains(&clock.now()));
        assert_eq!(clock.stamp(|now| now / 10), clock.now() / 10);
        // A failed look leaves the clock as it was; one that succeeds
        // sets it to the wall.
        let failed: Result<(), ()> = clock.step(2_000_000_000, |_| Err(()));
        assert!(failed.is_err());
        assert!((wall..wall + 2).contains(&clock.now()));
        clock
            .step(2_000_000_000, |before| {
                assert!((wall..wall + 2).contains(&before));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!((2_000_000_000..2_000_000_002).contains(&clock.now()));
    }
}
