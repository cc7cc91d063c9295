//! The memory a mirror gives to bodies it holds whole, and each peer's
//! part of it.
//!
//! A slot, a batch or a renewal is read into memory before it is checked,
//! a share of up to 16 MiB is read whole before it is sent, and an upload
//! gathers up to 4 MiB between writes. Each is bounded, but a client could
//! hold many at once, each for as long as it took to send or to read: 256
//! stalled slot bodies from one address held 4.3 GB, and 200 reads of a
//! 16 MiB share that were never read held 3.3 GB, until the idle timeout
//! (found by a helper's hostile-client sweep). Every such body now takes
//! its bytes from a [`Budget`] first, and gives them back when dropped.
//! One peer address (as `listen.rs` counts them) may hold a quarter of the
//! budget; past that, or with the budget spent for longer than
//! [`WAIT`], a request is answered 503 and the client tries again later
//! (lode's client then reads from, or writes to, the other mirrors).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Error, Result};

/// How long a request waits for the budget before it is refused.
pub const WAIT: Duration = Duration::from_secs(5);

/// The budget counts in units of this many bytes.
const UNIT: u64 = 1024;

/// Bytes for bodies held in memory, shared by the mirror's requests.
pub struct Budget {
    units: Arc<Semaphore>,
    /// Bytes each peer holds now.
    held: Mutex<HashMap<IpAddr, u64>>,
    per_peer: u64,
}

/// Bytes taken from a [`Budget`], given back when dropped.
pub struct Held {
    _part: PeerPart,
    _units: OwnedSemaphorePermit,
}

/// A peer's part of the bytes, given back to it when dropped.
struct PeerPart {
    budget: Arc<Budget>,
    peer: Option<IpAddr>,
    bytes: u64,
}

impl Drop for PeerPart {
    fn drop(&mut self) {
        let Some(ip) = self.peer else {
            return;
        };
        let mut held = self.budget.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = held.get_mut(&ip) {
            *now = now.saturating_sub(self.bytes);
            if *now == 0 {
                held.remove(&ip);
            }
        }
    }
}

impl Budget {
    pub fn new(bytes: u64) -> Arc<Budget> {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        Arc::new(Budget {
            units: Arc::new(Semaphore::new(units as usize)),
            held: Mutex::default(),
            per_peer: (bytes / 4).max(UNIT),
        })
    }

    /// Take `bytes` for a body from `peer` (`None`: a request that did not
    /// come through the listener, as in tests, counted in the total only).
    pub async fn take(self: &Arc<Self>, peer: Option<IpAddr>, bytes: u64) -> Result<Held> {
        self.take_within(peer, bytes, WAIT).await
    }

    /// [`Budget::take`] for bytes already read (an answer's): refused at
    /// once if there is no room, since waiting would hold them uncounted.
    pub async fn take_now(self: &Arc<Self>, peer: Option<IpAddr>, bytes: u64) -> Result<Held> {
        self.take_within(peer, bytes, Duration::ZERO).await
    }

    async fn take_within(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        bytes: u64,
        wait: Duration,
    ) -> Result<Held> {
        let units = bytes.div_ceil(UNIT).max(1);
        if let Some(ip) = peer {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            // Looked at before an entry is made: a refused peer leaves none.
            if held.get(&ip).copied().unwrap_or(0) + bytes > self.per_peer {
                return Err(Error::Busy);
            }
            *held.entry(ip).or_default() += bytes;
        }
        // Given back to the peer if the wait fails.
        let part = PeerPart {
            budget: self.clone(),
            peer,
            bytes,
        };
        let want = u32::try_from(units).map_err(|_| Error::Busy)?;
        let units = match wait.is_zero() {
            true => self
                .units
                .clone()
                .try_acquire_many_owned(want)
                .map_err(|_| Error::Busy)?,
            false => tokio::time::timeout(wait, self.units.clone().acquire_many_owned(want))
                .await
                .map_err(|_| Error::Busy)?
                .expect("the semaphore is never closed"),
        };
        Ok(Held {
            _part: part,
            _units: units,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer gets at most a quarter; the others still get theirs; what is
    /// dropped is given back, to the peer and to the total.
    #[tokio::test]
    async fn a_peer_holds_at_most_a_quarter() {
        let budget = Budget::new(64 << 20);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = budget.take(Some(a), 10 << 20).await.unwrap();
        let _second = budget.take(Some(a), 6 << 20).await.unwrap();
        assert!(matches!(budget.take(Some(a), 1).await, Err(Error::Busy)));
        let _other = budget.take(Some(b), 16 << 20).await.unwrap();
        drop(first);
        let _again = budget.take(Some(a), 10 << 20).await.unwrap();
    }

    /// With the total spent, a request waits, then is refused; one waiting
    /// when bytes come back gets them.
    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_refuses_after_the_wait() {
        let budget = Budget::new(4 << 20);
        let peers: Vec<IpAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let mut held = Vec::new();
        for ip in &peers {
            held.push(budget.take(Some(*ip), 1 << 20).await.unwrap());
        }
        let late: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(matches!(budget.take(Some(late), 1).await, Err(Error::Busy)));
        // The refused request's part is given back to its peer.
        assert!(budget.held.lock().unwrap().get(&late).is_none());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(Some(late), 1 << 20).await.is_ok() }
        });
        tokio::time::sleep(WAIT / 2).await;
        held.pop();
        assert!(waiting.await.unwrap(), "bytes given back went to no one");
    }
}
