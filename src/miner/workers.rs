//! The pool of mining threads, and the hashrate benchmark built on it.
//!
//! Owns thread lifetime, work hand-off, the duty cycle, OS priority and the
//! hash counters. Hashing itself is [`super::hasher`]; what a header or a
//! tag means is the caller's business.

use super::hasher::{HEADER_LEN, Midstate};
use super::{Error, Result};
use nix::errno::Errno;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

/// Nonces a thread claims at a time: a few milliseconds of hashing, so new
/// work, pause and stop are seen well within 100 ms even without SHA-NI.
const BATCH: u64 = 1 << 14;
/// Every 32-bit nonce.
const NONCE_SPACE: u64 = 1 << 32;
/// Longest single sleep of the duty cycle. It bounds `1 / duty` blowing up;
/// new work and stop still cut any sleep short.
const NAP_MAX: Duration = Duration::from_secs(5);
/// Span that [`Miners::hashrate`] averages over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How the pool runs.
#[derive(Clone, Debug, PartialEq)]
pub struct MinerConfig {
    /// Mining threads; 0 means one per available core.
    pub threads: usize,
    /// Fraction of wall time each thread hashes, in (0, 1]; it sleeps the rest.
    pub duty: f64,
    /// Ask the OS to run the threads only when nothing else wants the CPU.
    pub idle_priority: bool,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            threads: 0,
            duty: 1.0,
            idle_priority: true,
        }
    }
}

/// A header to mine. The nonce field (bytes 76..80) is ignored and overwritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    pub header: [u8; HEADER_LEN],
    /// Little-endian 256-bit target; a hash at or below it is a share.
    pub target: [u8; 32],
    /// Opaque to the miner; echoed in every [`Found`] for this work.
    pub tag: u64,
}

/// What the threads send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// `hash` (as hashed, little-endian) meets the target of work `tag`.
    Share {
        tag: u64,
        nonce: u32,
        hash: [u8; 32],
    },
    /// Every nonce of work `tag` has been tried. Sent once per published
    /// work, after every `Share` for it.
    Exhausted { tag: u64 },
}

/// The scheduling a mining thread ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Lowering was not asked for.
    Normal,
    /// Linux `SCHED_IDLE`: runs only on otherwise idle cores.
    SchedIdle,
    /// `SCHED_IDLE` unavailable; nice 19 instead.
    Nice19,
    /// Lowering was asked for and both calls failed with this error.
    Unchanged(Errno),
}

/// A published work item, shared by all threads. Threads claim nonces from
/// one cursor rather than fixed slices, so a thread the OS starves (likely
/// under `SCHED_IDLE`) cannot hold back the `Exhausted` report.
struct Job {
    work: Work,
    midstate: Midstate,
    cursor: AtomicU64,
    scanned: AtomicU64,
}

#[derive(Default)]
struct ThreadStats {
    hashes: AtomicU64,
    /// Wall time spent inside `scan`, for the effective duty cycle.
    busy_nanos: AtomicU64,
    priority: OnceLock<Priority>,
}

struct Shared {
    /// The current job; `None` while paused. The generation changes only
    /// under this lock, so waiters on `wake` cannot miss an update.
    job: Mutex<Option<Arc<Job>>>,
    generation: AtomicU64,
    wake: Condvar,
    stop: AtomicBool,
    total: AtomicU64,
    per_thread: Vec<ThreadStats>,
    duty: f64,
    idle_priority: bool,
    nonce_space: u64,
    /// (time, total hashes) at least a fiftieth of `RATE_WINDOW` apart,
    /// over the last window: taken by each thread as it ends a batch, and
    /// by each reading of the rate.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Shared {
    /// Take a sample now; returns the hashes per second since the oldest
    /// one kept, about the last `RATE_WINDOW`.
    fn sample(&self) -> f64 {
        let (now, total) = (Instant::now(), self.total.load(Relaxed));
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        // Samples at least a fiftieth of the window apart keep the queue
        // short. The newest keeps up with the count, moved up to now while
        // it is nearer than that to the one before, so no hashes are left
        // out of it (a miner paused just after a skipped sample went on
        // showing the hashes it missed); with no hashes since, it keeps
        // its time, when the count last moved, and a new one goes on.
        let spacing = RATE_WINDOW / 50;
        let n = samples.len();
        let (last_at, last_total) = samples[n - 1];
        let settled = n < 2 || last_at - samples[n - 2].0 >= spacing;
        let moved = total != last_total;
        if moved && !settled {
            samples[n - 1] = (now, total);
        } else if moved || now - last_at >= spacing {
            samples.push_back((now, total));
        }
        while samples.len() > 2 && now - samples[1].0 >= RATE_WINDOW {
            samples.pop_front();
        }
        let (since, base) = samples[0];
        let secs = (now - since).as_secs_f64();
        if secs > 0.0 {
            total.saturating_sub(base) as f64 / secs
        } else {
            0.0
        }
    }
}

/// A running pool of mining threads. Dropping it stops and joins them.
pub struct Miners {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Miners {
    /// Starts the threads, idle until [`Miners::set_work`]; results go to `results`.
    pub fn start(config: MinerConfig, results: Sender<Found>) -> Result<Self> {
        Self::start_with_space(config, results, NONCE_SPACE)
    }

    /// [`Miners::start`] over nonces `0..nonce_space`, so tests can exhaust it.
    fn start_with_space(config: MinerConfig, results: Sender<Found>, space: u64) -> Result<Self> {
        if !(config.duty > 0.0 && config.duty <= 1.0) {
            return Err(Error::Duty(config.duty));
        }
        let threads = match config.threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            total: AtomicU64::new(0),
            per_thread: (0..threads).map(|_| Default::default()).collect(),
            duty: config.duty,
            idle_priority: config.idle_priority,
            nonce_space: space,
            samples: Mutex::new(VecDeque::from([(Instant::now(), 0)])),
        });
        let mut miners = Miners {
            shared,
            handles: Vec::with_capacity(threads),
        };
        for index in 0..threads {
            let (shared, results) = (Arc::clone(&miners.shared), results.clone());
            let handle = thread::Builder::new()
                .name(format!("lode-miner-{index}"))
                .spawn(move || run(&shared, index, &results))
                .map_err(Error::Spawn)?; // dropping `miners` joins those already spawned
            miners.handles.push(handle);
        }
        Ok(miners)
    }

    /// Replaces the work for every thread; `None` pauses them.
    pub fn set_work(&self, work: Option<Work>) {
        let job = work.map(|work| {
            let midstate = Midstate::new(&work.header);
            let (cursor, scanned) = (AtomicU64::new(0), AtomicU64::new(0));
            Arc::new(Job {
                work,
                midstate,
                cursor,
                scanned,
            })
        });
        let mut slot = self.shared.lock();
        *slot = job;
        self.shared.generation.fetch_add(1, Relaxed);
        drop(slot);
        self.shared.wake.notify_all();
    }

    /// The tag of the work the threads have now, if any.
    #[cfg(test)]
    pub(crate) fn work_tag(&self) -> Option<u64> {
        self.shared.lock().as_ref().map(|job| job.work.tag)
    }

    /// Number of mining threads.
    pub fn threads(&self) -> usize {
        self.shared.per_thread.len()
    }

    /// Hashes done by all threads since start.
    pub fn total_hashes(&self) -> u64 {
        self.shared.total.load(Relaxed)
    }

    /// Hashes done by each thread since start.
    pub fn thread_hashes(&self) -> Vec<u64> {
        self.shared
            .per_thread
            .iter()
            .map(|t| t.hashes.load(Relaxed))
            .collect()
    }

    /// Wall time each thread has spent hashing since start; against elapsed
    /// time it gives the duty cycle actually achieved.
    pub fn thread_busy(&self) -> Vec<Duration> {
        let busy = |t: &ThreadStats| Duration::from_nanos(t.busy_nanos.load(Relaxed));
        self.shared.per_thread.iter().map(busy).collect()
    }

    /// Each thread's scheduling; `None` until that thread has started.
    pub fn priorities(&self) -> Vec<Option<Priority>> {
        self.shared
            .per_thread
            .iter()
            .map(|t| t.priority.get().copied())
            .collect()
    }

    /// Hashes per second over about the last ten seconds. The threads
    /// sample as they hash, so this holds however seldom it is asked: it
    /// was sampled only here, and `lode status` (the one caller in a
    /// mount) then showed the average since the last time anyone asked,
    /// or since the mount started, and a miner paused for an hour went on
    /// showing its old rate.
    pub fn hashrate(&self) -> f64 {
        self.shared.sample()
    }

    /// Stops and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Relaxed);
        drop(self.shared.lock()); // a waiter is either parked already or sees `stop`
        self.shared.wake.notify_all();
        for handle in self.handles.drain(..) {
            // A panicked thread has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

impl Drop for Miners {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Job>>> {
        self.job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self, generation: u64) -> bool {
        !self.stop.load(Relaxed) && self.generation.load(Relaxed) == generation
    }

    /// Blocks until a generation newer than `seen` carries a job; `None` on stop.
    fn wait_for_work(&self, mut seen: u64) -> Option<(u64, Arc<Job>)> {
        let mut slot = self.lock();
        loop {
            if self.stop.load(Relaxed) {
                return None;
            }
            let generation = self.generation.load(Relaxed);
            if generation != seen {
                match &*slot {
                    Some(job) => return Some((generation, Arc::clone(job))),
                    None => seen = generation,
                }
            }
            slot = self.wake.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Sleeps `secs` (at most [`NAP_MAX`]), waking early if the work
    /// changes or the pool stops.
    fn nap(&self, secs: f64, generation: u64) {
        let time = Duration::from_secs_f64(secs.min(NAP_MAX.as_secs_f64()));
        let slot = self.lock();
        let _ = self
            .wake
            .wait_timeout_while(slot, time, |_| self.current(generation));
    }
}

fn run(shared: &Shared, index: usize, results: &Sender<Found>) {
    let stats = &shared.per_thread[index];
    let priority = match shared.idle_priority {
        true => lower_priority(),
        false => Priority::Normal,
    };
    if let Priority::Unchanged(e) = priority {
        // Said, not hidden: the thread mines at the priority it had, and
        // competes with the user's work for the CPU.
        tracing::warn!(thread = index, error = %e, "a miner thread could not be put at idle priority (SCHED_IDLE, nor nice 19); it mines at normal priority");
    }
    let _ = stats.priority.set(priority);
    let mut seen = 0;
    while let Some((generation, job)) = shared.wait_for_work(seen) {
        seen = generation;
        let Work { target, tag, .. } = job.work;
        while shared.current(generation) {
            let start = job.cursor.fetch_add(BATCH, Relaxed);
            if start >= shared.nonce_space {
                break; // the rest is claimed; whoever finishes it reports
            }
            let count = BATCH.min(shared.nonce_space - start) as u32;
            let began = Instant::now();
            let done = job
                .midstate
                .scan(start as u32, count, &target, &mut |nonce, hash| {
                    // A closed channel means the caller is tearing us down.
                    let _ = results.send(Found::Share { tag, nonce, hash });
                });
            let busy = began.elapsed();
            stats.hashes.fetch_add(done, Relaxed);
            stats.busy_nanos.fetch_add(busy.as_nanos() as u64, Relaxed);
            shared.total.fetch_add(done, Relaxed);
            shared.sample();
            // AcqRel: whoever completes the count has seen every other
            // thread's shares sent, so `Exhausted` follows them on the channel.
            if job.scanned.fetch_add(done, AcqRel) + done == shared.nonce_space {
                let _ = results.send(Found::Exhausted { tag });
            }
            if shared.duty < 1.0 {
                // Scaling the sleep by the batch's wall time (not a fixed
                // rate) keeps the ratio right when other load slows us.
                let rest = busy.as_secs_f64() * (1.0 / shared.duty - 1.0);
                shared.nap(rest, generation);
            }
        }
    }
}

/// Puts the calling thread at the lowest CPU priority the OS grants without
/// privileges. Both calls act on the calling thread only on Linux, which is
/// what we want: the caller's other threads keep their priority.
#[allow(unsafe_code)]
fn lower_priority() -> Priority {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a live, initialised sched_param for the whole
        // call, and the kernel only reads it. Pid 0 is the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return Priority::SchedIdle;
        }
    }
    // SAFETY: plain integer arguments and no memory is passed; `who` 0 is
    // the calling thread on Linux (the whole process elsewhere).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == 0 {
        return Priority::Nice19;
    }
    Priority::Unchanged(Errno::last())
}

/// Hashrate measured by [`bench()`].
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub per_thread_hps: Vec<f64>,
    pub total_hps: f64,
}

/// Mines random headers against an unreachable target for `secs` seconds on
/// `threads` threads (0 = all cores) at full duty and normal priority.
pub fn bench(threads: usize, secs: f64) -> Result<BenchReport> {
    let (tx, rx) = mpsc::channel();
    let config = MinerConfig {
        threads,
        duty: 1.0,
        idle_priority: false,
    };
    let miners = Miners::start(config, tx)?;
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut tag = 0;
    miners.set_work(Some(random_work(&mut seed, tag)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs.max(0.0));
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Found::Exhausted { tag: done }) if done == tag => {
                tag += 1;
                miners.set_work(Some(random_work(&mut seed, tag)));
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    let (elapsed, counts) = (started.elapsed().as_secs_f64(), miners.thread_hashes());
    miners.stop();
    let per_thread_hps: Vec<f64> = counts.iter().map(|&n| n as f64 / elapsed).collect();
    let total_hps = per_thread_hps.iter().sum();
    Ok(BenchReport {
        per_thread_hps,
        total_hps,
    })
}

/// A header from splitmix64, with an all-zero target no hash can meet in practice.
fn random_work(seed: &mut u64, tag: u64) -> Work {
    let mut header = [0u8; HEADER_LEN];
    for chunk in header.chunks_exact_mut(8) {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    Work {
        header,
        target: [0; 32],
        tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::{meets_target, sha256d};

    const GENESIS: &str = "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c";

    fn genesis() -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&GENESIS[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn config(threads: usize, duty: f64) -> MinerConfig {
        MinerConfig {
            threads,
            duty,
            idle_priority: false,
        }
    }

    fn with_nonce(mut header: [u8; HEADER_LEN], nonce: u32) -> [u8; HEADER_LEN] {
        header[76..].copy_from_slice(&nonce.to_le_bytes());
        header
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn finds_shares_with_the_right_tag() {
        let (tx, rx) = mpsc::channel();
        let miners = Miners::start(
            MinerConfig {
                threads: 2,
                ..MinerConfig::default()
            },
            tx,
        )
        .unwrap();
        // Top byte zero: one hash in 256 is a share.
        let mut target = [0xff; 32];
        target[31] = 0;
        miners.set_work(Some(Work {
            header: genesis(),
            target,
            tag: 41,
        }));
        for _ in 0..20 {
            let found = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let Found::Share { tag, nonce, hash } = found else {
                panic!("{found:?}")
            };
            assert_eq!(tag, 41);
            assert_eq!(hash, sha256d(&with_nonce(genesis(), nonce)));
            assert!(meets_target(&hash, &target));
        }
        // A sandbox may refuse both calls; what matters is that it was tried.
        wait_until("threads started", || {
            miners.priorities().iter().all(Option::is_some)
        });
        for priority in miners.priorities().into_iter().flatten() {
            assert_ne!(priority, Priority::Normal);
            eprintln!("mining thread priority: {priority:?}");
        }
    }

    #[test]
    fn every_nonce_once_then_exhausted_once() {
        let (tx, rx) = mpsc::channel();
        let space = 5 * BATCH / 2; // uneven, so the last claim is short
        let miners = Miners::start_with_space(config(2, 1.0), tx, space).unwrap();
        miners.set_work(Some(Work {
            header: genesis(),
            target: [0xff; 32],
            tag: 7,
        }));
        let mut seen = vec![false; space as usize];
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
                Found::Share { tag: 7, nonce, .. } => {
                    assert!(
                        !std::mem::replace(&mut seen[nonce as usize], true),
                        "{nonce} twice"
                    )
                }
                Found::Exhausted { tag: 7 } => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            seen.iter().all(|&s| s),
            "Exhausted before every nonce was tried"
        );
        assert_eq!(miners.total_hashes(), space);
        assert_eq!(miners.thread_hashes().iter().sum::<u64>(), space);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "one report only"
        );
    }

    /// Wait for the work set to hash, pause, and wait out the batches in
    /// flight (slow in a loaded debug build); the hashes then.
    fn hash_then_pause(miners: &Miners) -> u64 {
        wait_until("hashing", || miners.total_hashes() > 0);
        miners.set_work(None);
        let mut paused = miners.total_hashes();
        wait_until("batches in flight", || {
            thread::sleep(Duration::from_millis(100));
            let now = miners.total_hashes();
            std::mem::replace(&mut paused, now) == now
        });
        paused
    }

    #[test]
    fn pause_stops_hashing_and_new_work_resumes() {
        let (tx, _rx) = mpsc::channel();
        let miners = Miners::start(config(2, 1.0), tx).unwrap();
        let work = Work {
            header: genesis(),
            target: [0; 32],
            tag: 1,
        };
        miners.set_work(Some(work.clone()));
        let paused = hash_then_pause(&miners);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(miners.total_hashes(), paused);
        miners.set_work(Some(work));
        wait_until("resume", || miners.total_hashes() > paused);
        assert!(miners.hashrate() > 0.0);
    }

    /// The rate is of the last window, however long since anyone asked:
    /// a miner paused for longer than the window shows none (it showed
    /// its hashes averaged since it started).
    #[test]
    fn the_hashrate_is_of_the_last_window_however_seldom_asked() {
        let (tx, _rx) = mpsc::channel();
        let miners = Miners::start(config(1, 1.0), tx).unwrap();
        miners.set_work(Some(Work {
            header: genesis(),
            target: [0; 32],
            tag: 1,
        }));
        hash_then_pause(&miners);
        thread::sleep(RATE_WINDOW + Duration::from_secs(1));
        assert_eq!(miners.hashrate(), 0.0);
    }

    #[test]
    fn stop_joins_every_thread() {
        let (tx, rx) = mpsc::channel();
        let miners = Miners::start(config(3, 0.5), tx).unwrap();
        miners.set_work(Some(Work {
            header: genesis(),
            target: [0; 32],
            tag: 1,
        }));
        wait_until("hashing", || miners.total_hashes() > 0);
        let began = Instant::now();
        miners.stop();
        assert!(began.elapsed() < Duration::from_secs(1));
        // Each thread held a sender; all are gone once every thread is joined.
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
    }

    #[test]
    fn duty_cycle_bounds_time_spent_hashing() {
        let (tx, _rx) = mpsc::channel();
        let miners = Miners::start(config(2, 0.1), tx).unwrap();
        let started = Instant::now();
        miners.set_work(Some(Work {
            header: genesis(),
            target: [0; 32],
            tag: 0,
        }));
        thread::sleep(Duration::from_millis(800));
        // Busy time is wall time, so this bound holds however loaded the
        // machine is: each nap is nine times the batch before it. The slack
        // covers the batch in flight.
        let elapsed = started.elapsed();
        for busy in miners.thread_busy() {
            assert!(busy > Duration::ZERO, "thread never hashed");
            assert!(
                busy < elapsed / 4,
                "busy {busy:?} of {elapsed:?} at duty 0.1"
            );
        }
    }

    #[test]
    fn rejects_bad_duty() {
        for duty in [0.0, -1.0, 1.5, f64::NAN] {
            let (tx, _rx) = mpsc::channel();
            assert!(matches!(
                Miners::start(config(1, duty), tx),
                Err(Error::Duty(_))
            ));
        }
    }

    #[test]
    fn bench_reports_each_thread() {
        let report = bench(2, 0.5).unwrap();
        assert_eq!(report.per_thread_hps.len(), 2);
        // Under load one thread may not finish a batch in time; the sum must.
        assert!(report.total_hps > 0.0);
        assert!((report.total_hps - report.per_thread_hps.iter().sum::<f64>()).abs() < 1e-6);
    }
}
