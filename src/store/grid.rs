//! The grid: the set of mirrors, where shares go, and how they come back.
//!
//! Placement is rendezvous hashing: for each coded object, mirrors are ranked
//! by `SHA-256(first share id ‖ mirror name)`, and share i goes to the i-th
//! ranked mirror (wrapping when there are fewer mirrors than shares). A
//! reader ranks the same way, so it asks the right mirror first, and falls
//! back to every other mirror, so a changed mirror list costs time, never
//! data. The name is [`Storage::placement_name`]: a mirror's URL when it
//! was added, kept when it moves to another address (`lode mirrors move`),
//! so that a move changes no object's placement.
//!
//! The grid remembers, for a few minutes, which mirrors acknowledged which
//! shares (`Placed`), and does not send those again: writing content the
//! client stored moments ago (a directory copied within the mount, the
//! same archive unpacked twice, a file saved unchanged) then costs no
//! requests for its shares. Each of those acknowledgements left a lease
//! that runs for the mirror's lease period (days; the brief's default is
//! 31), far past the few minutes this memory lasts, and the keeper renews
//! whatever is reachable, so nothing the grid skips can lapse meanwhile.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Error, Result, Storage, hex};
use crate::caps::DirReadCap;
use crate::chunk::{Params, Share, ShareId};
use crate::crypto::sha256;
use crate::dir::{Listing, SlotEnvelope};

/// Erasure and placement settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridConfig {
    pub k: u8,
    pub n: u8,
    /// Distinct mirrors an upload must reach to succeed.
    pub happy: usize,
}

impl Default for GridConfig {
    fn default() -> Self {
        Self {
            k: 2,
            n: 3,
            happy: 3,
        }
    }
}

/// The mirrors a client stores to, with its placement rules.
/// Shares at least this large are claimed (lease extended if held) before
/// they are sent; smaller ones cost less to send than to ask about.
const CLAIM_MIN_BYTES: usize = 64 << 10;

/// How much slower than twice the fastest mirror a mirror must answer
/// before a read prefers other mirrors' parity shares to its data shares.
const SLOW_MARGIN: Duration = Duration::from_millis(100);

/// How long a slot read waits for the other mirrors once one has answered
/// (or three times as long as that first answer took, if more).
const SLOT_GRACE: Duration = Duration::from_secs(2);

/// How long a slot read that has an answer waits for more, short of a
/// quorum (see `Grid::get_slot`): mirrors that hang are passed over after
/// it, and the next reads do not wait for them.
const SLOT_QUORUM_WAIT: Duration = Duration::from_secs(10);

/// How long a slot read waits for mirrors it had passed over and now needs
/// (no other answer had the slot, or only an older one than seen).
const DOWN_SLOT_WAIT: Duration = Duration::from_secs(10);

/// When a request to several mirrors that has what it needs at the moment
/// this is called (a write on `happy` of them, a slot read's first
/// answer), having started at `started`, stops waiting for the rest:
/// three times as long as it took so far, and at least [`SLOT_GRACE`].
/// Without it, one mirror that hangs (a stopped process, a link that drops
/// packets) held every upload and every directory update for its request
/// timeout, 10-30 s, though `happy` mirrors had answered in milliseconds.
fn grace_after(started: tokio::time::Instant) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now + (now - started).mul_f32(3.0).max(SLOT_GRACE)
}

/// The next of `tasks` to finish (`Some(None)` once none is left), or
/// `None` if `deadline`, when there is one, passes first.
async fn join_by<T: 'static>(
    tasks: &mut JoinSet<T>,
    deadline: Option<tokio::time::Instant>,
) -> Option<Option<std::result::Result<T, tokio::task::JoinError>>> {
    match deadline {
        None => Some(tasks.join_next().await),
        Some(at) => tokio::time::timeout_at(at, tasks.join_next()).await.ok(),
    }
}

/// Whether the shares placed so far (mirror positions per share) are on
/// `happy` distinct mirrors.
fn reaches_happy(holders: &[HashSet<usize>], happy: usize) -> bool {
    holders.iter().flatten().collect::<HashSet<_>>().len() >= happy
}

/// Add to `wanted` a new place for each share in `retry` (indexes into
/// `holders`): the mirror not in `failed` holding the fewest shares of the
/// object, among those without this share. False if a share has no place
/// and no holder.
fn move_failed(
    m: usize,
    holders: &[HashSet<usize>],
    failed: &HashSet<usize>,
    wanted: &mut Vec<(usize, usize)>,
    retry: Vec<usize>,
) -> bool {
    for i in retry {
        // Shares held there, and shares on their way there: shares moved
        // before any is placed would otherwise all go to one mirror.
        let load = |pos: &usize| {
            holders.iter().filter(|h| h.contains(pos)).count()
                + wanted.iter().filter(|(_, q)| q == pos).count()
        };
        let next = (0..m)
            .filter(|p| !failed.contains(p) && !holders[i].contains(p))
            .filter(|p| !wanted.contains(&(i, *p)))
            .min_by_key(|p| (load(p), *p));
        match next {
            Some(pos) => wanted.push((i, pos)),
            // Every live mirror has this share, or is about to be sent it
            // (a replica's extra copy had nowhere new to go): enough, if
            // happy holds.
            None if !holders[i].is_empty() || wanted.iter().any(|&(j, _)| j == i) => {}
            None => return false,
        }
    }
    true
}

/// Slot repairs remembered as tried before the memory starts over.
const SLOT_REPAIRS_REMEMBERED: usize = 16 * 1024;

/// A share read still unanswered after this many times its mirror's usual
/// response time (and at least [`HEDGE_MIN`]) is hedged: another mirror
/// is asked for a share that can stand in, and the late mirror is passed
/// over by reads for a while ([`Storage::pass_over`]). A mirror that hangs
/// (a stopped process, a link that drops packets) then costs a read about
/// a second, not the request timeout.
const HEDGE_FACTOR: u32 = 4;
const HEDGE_MIN: Duration = Duration::from_secs(1);
/// The hedge delay before any mirror has answered a read: long enough for
/// a first large share over a slow uplink.
const HEDGE_UNKNOWN: Duration = Duration::from_secs(5);

pub struct Grid {
    mirrors: Vec<Arc<dyn Storage>>,
    params: Params,
    happy: usize,
    /// Highest slot seq seen per directory: the client never goes below it.
    seen: Mutex<HashMap<[u8; 32], u64>>,
    /// Bumped whenever `seen` changes.
    seen_changes: std::sync::atomic::AtomicU64,
    /// Per directory, the highest seq known to be on `happy` mirrors: this
    /// client published it there, or that many answered a read with it.
    confirmed: Mutex<HashMap<[u8; 32], u64>>,
    placed: Mutex<Placed>,
    /// Slot versions already sent to a mirror that lagged (slot, mirror,
    /// seq): each is tried once.
    slot_repairs: Mutex<HashSet<([u8; 32], usize, u64)>>,
    /// Directories this client made and, by its own record, never saw
    /// published (a new identity's root): see [`Self::note_fresh`].
    fresh: Mutex<HashSet<[u8; 32]>>,
}

/// How long, at most, an acknowledged share counts as placed without
/// asking again; never more than an eighth of the shortest lease the
/// mirrors grant (`Grid::set_lease_floor`), and nothing until that is known.
const PLACED_FOR: Duration = Duration::from_secs(10 * 60);
/// Shares remembered: about 3 MiB of memory.
const PLACED_ENTRIES: usize = 64 * 1024;

/// Recently acknowledged shares: for each, when, and which mirrors (by
/// index in the grid's list, as a bit set; a grid of more than 64 mirrors
/// remembers the first 64).
struct Placed {
    recent: lru::LruCache<ShareId, (Instant, u64)>,
    /// How long an acknowledgement counts; zero (nothing counts) until
    /// the mirrors' lease is known.
    window: Duration,
}

impl Placed {
    fn new() -> Placed {
        Placed {
            recent: lru::LruCache::new(NonZeroUsize::new(PLACED_ENTRIES).expect("nonzero")),
            window: Duration::ZERO,
        }
    }

    /// Whether `mirror` acknowledged `id` within the window.
    fn holds(&mut self, id: &ShareId, mirror: usize) -> bool {
        let window = self.window;
        match self.recent.get(id) {
            Some(&(at, set)) if at.elapsed() < window => mirror < 64 && set & (1 << mirror) != 0,
            _ => false,
        }
    }

    /// Forget `id`: a mirror was seen without it.
    fn forget(&mut self, id: &ShareId) {
        self.recent.pop(id);
    }

    /// Remember that `mirrors` acknowledged `id` just now. Only mirrors
    /// that really answered are passed in, never ones skipped thanks to
    /// this memory, so an entry's time is always that of a real
    /// acknowledgement (and so of a fresh lease), however often the same
    /// share is written again.
    fn record(&mut self, id: ShareId, mirrors: impl Iterator<Item = usize>) {
        let set = mirrors.filter(|&m| m < 64).fold(0u64, |s, m| s | 1 << m);
        if set != 0 {
            self.recent.put(id, (Instant::now(), set));
        }
    }
}

impl Grid {
    pub fn new(mirrors: Vec<Arc<dyn Storage>>, config: GridConfig) -> Result<Grid> {
        if mirrors.is_empty() {
            return Err(Error::NoMirrors);
        }
        Ok(Grid {
            mirrors,
            params: Params::new(config.k, config.n)?,
            happy: config.happy.max(1),
            seen: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(HashMap::new()),
            seen_changes: std::sync::atomic::AtomicU64::new(0),
            placed: Mutex::new(Placed::new()),
            slot_repairs: Mutex::new(HashSet::new()),
            fresh: Mutex::new(HashSet::new()),
        })
    }

    /// Record that the directory `public_key` was made by this client and,
    /// as far as it has recorded, never published: a read that no mirror
    /// answering gives it, with enough of them saying they hold none for
    /// no publish to have reached `happy` without them, takes it as new
    /// though a mirror is silent (see `new_if_none`). Without this record,
    /// which only a new identity's root has, such a read is unavailable:
    /// the directory may have been published when the mirrors or `happy`
    /// were other than now, or lost by mirrors that dropped it.
    pub fn note_fresh(&self, public_key: &[u8; 32]) {
        self.fresh.lock().expect("lock").insert(*public_key);
    }

    pub fn params(&self) -> Params {
        self.params
    }

    pub fn happy(&self) -> usize {
        self.happy
    }

    pub fn mirrors(&self) -> &[Arc<dyn Storage>] {
        &self.mirrors
    }

    /// The mirrors a replicated object (a manifest root) is copied to:
    /// `max(n, happy)`, as far as there are mirrors.
    pub fn replica_copies(&self) -> usize {
        (self.params.n() as usize)
            .max(self.happy)
            .min(self.mirrors.len())
    }

    /// Mirror indices in rendezvous order for an object.
    fn ranked(&self, key: &ShareId) -> Vec<usize> {
        let mut scored: Vec<([u8; 32], usize)> = self
            .mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut input = key.to_vec();
                input.extend_from_slice(m.placement_name().as_bytes());
                (sha256(&input), i)
            })
            .collect();
        scored.sort();
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// Store one coded object (a chunk's or a node's shares, or a replicated
    /// root). Succeeds once every share is placed and the shares span at
    /// least `happy` distinct mirrors. A replica goes to `max(n, happy)`
    /// mirrors.
    pub async fn put_group(&self, shares: &[Share]) -> Result<()> {
        self.place_group(shares, true).await
    }

    fn placed(&self) -> std::sync::MutexGuard<'_, Placed> {
        self.placed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop `ids` from the memory of lately placed shares: a mirror was
    /// seen without them.
    pub fn forget_placed(&self, ids: &[ShareId]) {
        let mut placed = self.placed();
        for id in ids {
            placed.forget(id);
        }
    }

    /// Tell the grid the shortest lease its mirrors grant (their `info`).
    /// Shares acknowledged within an eighth of it, and at most ten
    /// minutes, are not sent again; until this is called, all are.
    pub fn set_lease_floor(&self, lease: Duration) {
        self.placed().window = PLACED_FOR.min(lease / 8);
    }

    /// How long an acknowledged upload counts as placed without asking
    /// again (zero until [`Self::set_lease_floor`] is called).
    pub fn placed_window(&self) -> Duration {
        self.placed().window
    }

    /// For each stored object (each given by its share ids, in index
    /// order), whether it is held where [`Self::put_group`] places it.
    /// Each mirror is asked once, for all its part of every object (a
    /// claim, which extends those leases), unless it acknowledged a share
    /// moments ago; the mirrors are asked at once, those passed over as
    /// down too (an answer revives them; a truly down one answers at once
    /// or within the shorter timeout of a write to it). A file's chunks
    /// reused from its last version are confirmed so instead of being sent
    /// again. An object is not held if a mirror says it lacks one of its
    /// shares (the object is then placed afresh, which repairs it), nor if
    /// a mirror that did not answer leaves it on fewer than `happy`
    /// mirrors known to hold it, or with fewer than `k` of its shares
    /// known held (the objects are chunks coded under this grid's
    /// parameters): the durability an upload of it would have needed.
    /// With `happy` below `k`, two mirrors of three silent, one holder
    /// passed `happy` = 1 with one share of a 2-of-3 chunk, where an
    /// upload would have put every share on it (found by a review
    /// helper). One request per mirror for a whole file, not one per
    /// chunk: over a WAN a chunk confirmed at a time cost a round trip
    /// each.
    pub async fn holding(&self, objects: &[&[ShareId]]) -> Vec<bool> {
        // Per object: a share known missing, a mirror that did not
        // answer, and the mirrors known to hold its shares.
        let mut missing = vec![false; objects.len()];
        let mut unanswered = vec![false; objects.len()];
        let mut holders: Vec<HashSet<usize>> = vec![HashSet::new(); objects.len()];
        // Per object: the indexes of its shares known held.
        let mut held: Vec<HashSet<usize>> = vec![HashSet::new(); objects.len()];
        // Per mirror: the ids to ask it for, each with its object and
        // its index there.
        let mut asks: std::collections::BTreeMap<usize, Vec<(ShareId, usize, usize)>> =
            Default::default();
        {
            let mut placed = self.placed();
            for (object, ids) in objects.iter().enumerate() {
                let Some(first) = ids.first() else {
                    missing[object] = true;
                    continue;
                };
                let (order, wanted) = self.placement(first, ids.len());
                for (i, pos) in wanted {
                    let mirror = order[pos];
                    if placed.holds(&ids[i], mirror) {
                        holders[object].insert(mirror);
                        held[object].insert(i);
                    } else {
                        asks.entry(mirror).or_default().push((ids[i], object, i));
                    }
                }
            }
        }
        let answers = futures_util::future::join_all(asks.into_iter().map(|(mirror, asked)| {
            let store = self.mirrors[mirror].clone();
            async move {
                let ids: Vec<ShareId> = asked.iter().map(|(id, ..)| *id).collect();
                (mirror, store.claim(&ids).await.ok(), asked)
            }
        }))
        .await;
        let mut acknowledged: HashMap<ShareId, Vec<usize>> = HashMap::new();
        for (mirror, answer, asked) in answers {
            let unclaimed: HashSet<ShareId> = match answer {
                Some(unclaimed) => unclaimed.into_iter().collect(),
                None => {
                    asked
                        .iter()
                        .for_each(|&(_, object, _)| unanswered[object] = true);
                    continue;
                }
            };
            for (id, object, index) in asked {
                if unclaimed.contains(&id) {
                    missing[object] = true;
                } else {
                    holders[object].insert(mirror);
                    held[object].insert(index);
                    acknowledged.entry(id).or_default().push(mirror);
                }
            }
        }
        let mut placed = self.placed();
        for (id, mirrors) in acknowledged {
            placed.record(id, mirrors.into_iter());
        }
        let k = usize::from(self.params.k());
        (0..objects.len())
            .map(|o| {
                !missing[o]
                    && (!unanswered[o] || (holders[o].len() >= self.happy && held[o].len() >= k))
            })
            .collect()
    }

    /// [`Self::put_group`] that asks every mirror, whatever was
    /// acknowledged lately: for repair, which is called exactly because a
    /// mirror may have lost what it once acknowledged.
    pub async fn put_group_asking(&self, shares: &[Share]) -> Result<()> {
        let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
        self.forget_placed(&ids);
        self.place_group(shares, false).await
    }

    /// Where an object of `count` shares whose first share is `first`
    /// goes: the mirrors in rendezvous order, and each (share index,
    /// position in that order) to place. A lone share (a replicated root)
    /// goes to [`Self::replica_copies`] mirrors, every other share to one.
    fn placement(&self, first: &ShareId, count: usize) -> (Vec<usize>, Vec<(usize, usize)>) {
        let order = self.ranked(first);
        let m = order.len();
        let copies = if count == 1 { self.replica_copies() } else { 1 };
        let wanted = (0..count)
            .flat_map(|i| (0..copies).map(move |c| (i, (i + c) % m)))
            .collect();
        (order, wanted)
    }

    async fn place_group(&self, shares: &[Share], remembered_ok: bool) -> Result<()> {
        let (order, mut wanted) = self.placement(&shares[0].id(), shares.len());
        let m = order.len();
        let mut failed: HashSet<usize> = HashSet::new();
        let mut holders: Vec<HashSet<usize>> = vec![HashSet::new(); shares.len()];
        let mut last_err: Option<Error> = None;
        // Acknowledged moments ago: placed, leased, nothing to send.
        let mut remembered = false;
        if remembered_ok {
            let mut placed = self.placed();
            wanted.retain(|&(i, pos)| {
                let held = placed.holds(&shares[i].id(), order[pos]);
                if held {
                    holders[i].insert(pos);
                    remembered = true;
                }
                !held
            });
        }
        if !wanted.is_empty() && shares[0].as_bytes().len() >= CLAIM_MIN_BYTES {
            self.claim_held(shares, &order, &mut wanted, &mut holders)
                .await;
        }
        // Mirrors left out for now (`left_out`): their part goes to the
        // others at once, rather than after a grace on every upload (with
        // one mirror of three stopped and happy at 2, each fsync waited
        // 2 s for its shares and 2 s for its slot).
        let left_out = self.left_out();
        let skipped: Vec<usize> = (0..m).filter(|&pos| left_out[order[pos]]).collect();
        if !skipped.is_empty() {
            failed.extend(skipped);
            let retry = wanted
                .iter()
                .filter(|(_, pos)| failed.contains(pos))
                .map(|&(i, _)| i)
                .collect();
            wanted.retain(|(_, pos)| !failed.contains(pos));
            if !move_failed(m, &holders, &failed, &mut wanted, retry) {
                return Err(self.placement_error(&holders, last_err));
            }
        }
        while !wanted.is_empty() {
            let mut tasks = JoinSet::new();
            for &(i, pos) in &wanted {
                let mirror = self.mirrors[order[pos]].clone();
                let share = shares[i].clone();
                tasks.spawn(async move {
                    let result = mirror.put_share(&share.id(), share.shared_bytes()).await;
                    (i, pos, result)
                });
            }
            let mut pending: HashSet<(usize, usize)> = wanted.iter().copied().collect();
            let mut retry = Vec::new();
            let started = tokio::time::Instant::now();
            let mut late_after: Option<tokio::time::Instant> = None;
            loop {
                let Some(joined) = join_by(&mut tasks, late_after).await else {
                    // Durable already, on `happy` mirrors: one that has not
                    // answered within the grace is passed over, as a late
                    // read is, and its shares go to the mirrors that
                    // answer. Its requests go on in the background; a share
                    // they still deliver is only a spare copy.
                    for &(i, pos) in &pending {
                        let mirror = &self.mirrors[order[pos]];
                        tracing::debug!(mirror = mirror.name(), "share upload is late");
                        mirror.pass_over();
                        failed.insert(pos);
                        retry.push(i);
                    }
                    tasks.detach_all();
                    break;
                };
                let Some(joined) = joined else { break };
                let (i, pos, result) = joined.expect("put task does not panic");
                pending.remove(&(i, pos));
                match result {
                    Ok(()) => {
                        holders[i].insert(pos);
                    }
                    Err(e) => {
                        tracing::debug!(mirror = self.mirrors[order[pos]].name(), error = %e, "share upload failed");
                        failed.insert(pos);
                        retry.push(i);
                        if !matches!(last_err, Some(Error::NoSpace { .. })) {
                            last_err = Some(e);
                        }
                    }
                }
                if late_after.is_none() && reaches_happy(&holders, self.happy) {
                    late_after = Some(grace_after(started));
                }
            }
            wanted = Vec::new();
            if !move_failed(m, &holders, &failed, &mut wanted, retry) {
                return Err(self.placement_error(&holders, last_err));
            }
        }
        let distinct: HashSet<usize> = holders.iter().flatten().copied().collect();
        if distinct.len() < self.happy {
            return Err(self.placement_error(&holders, last_err));
        }
        // Remember what the mirrors just acknowledged; a group that was
        // wholly remembered leaves its entries (and their times) alone.
        if !remembered {
            let mut placed = self.placed();
            for (share, at) in shares.iter().zip(&holders) {
                placed.record(share.id(), at.iter().map(|&pos| order[pos]));
            }
        }
        Ok(())
    }

    /// Before sending large shares, ask each mirror (one request each)
    /// to extend its lease on those it already holds, and drop them from
    /// `wanted`: re-uploading an edited file then sends only the changed
    /// chunks. Any failure here just means uploading as usual.
    async fn claim_held(
        &self,
        shares: &[Share],
        order: &[usize],
        wanted: &mut Vec<(usize, usize)>,
        holders: &mut [HashSet<usize>],
    ) {
        let mut by_mirror: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for &(i, pos) in wanted.iter() {
            by_mirror.entry(pos).or_default().push(i);
        }
        let mut asks = JoinSet::new();
        for (pos, indices) in by_mirror {
            let mirror = self.mirrors[order[pos]].clone();
            // A mirror passed over is sent its shares (within the write's
            // grace) rather than asked first.
            if mirror.is_down() {
                continue;
            }
            let ids: Vec<[u8; 32]> = indices.iter().map(|&i| shares[i].id()).collect();
            asks.spawn(async move {
                let unclaimed = mirror.claim(&ids).await;
                (pos, indices, ids, unclaimed)
            });
        }
        // Once one mirror has answered, the others get the grace a write
        // gets; a late one's shares are sent as usual.
        let started = tokio::time::Instant::now();
        let mut late_after: Option<tokio::time::Instant> = None;
        loop {
            let Some(joined) = join_by(&mut asks, late_after).await else {
                asks.detach_all();
                break;
            };
            let Some(joined) = joined else { break };
            late_after.get_or_insert_with(|| grace_after(started));
            let (pos, indices, ids, result) = joined.expect("claim task does not panic");
            let Ok(unclaimed) = result else { continue };
            for (i, id) in indices.into_iter().zip(ids) {
                if !unclaimed.contains(&id) {
                    holders[i].insert(pos);
                    wanted.retain(|&w| w != (i, pos));
                }
            }
        }
    }

    /// Per mirror, whether writes leave it out for now: it is taken as
    /// down with a write to it still unanswered, and the mirrors not taken
    /// as down can reach `happy` without it (with another one down too, it
    /// may be needed after all). Read once per upload or slot update.
    fn left_out(&self) -> Vec<bool> {
        let down: Vec<bool> = self.mirrors.iter().map(|s| s.is_down()).collect();
        let live = down.iter().filter(|&&d| !d).count();
        self.mirrors
            .iter()
            .zip(down)
            .map(|(s, down)| down && live >= self.happy && s.write_waiting())
            .collect()
    }

    fn placement_error(&self, holders: &[HashSet<usize>], last: Option<Error>) -> Error {
        match last {
            Some(e @ Error::NoSpace { .. }) => e,
            last => Error::NotHappy {
                placed: holders.iter().flatten().collect::<HashSet<_>>().len(),
                happy: self.happy,
                why: last.map(|e| format!(" (last: {e})")).unwrap_or_default(),
            },
        }
    }

    /// Which mirrors to ask after the others: those whose recent response
    /// time is more than twice the fastest mirror's plus [`SLOW_MARGIN`].
    ///
    /// Asking a fast mirror for a parity share instead of a slower one for
    /// a data share trades waiting for a decode, which costs this machine's
    /// CPU (a Reed-Solomon rebuild of a 1 MiB chunk, and the zeroed buffers
    /// around it). Response times are noisy: they include the transfer and
    /// the queue of this client's own requests, so on a busy machine even
    /// loopback mirrors drift tens of milliseconds apart. Ordered by them
    /// in 50 ms steps, as before, a cold read of local mirrors on a loaded
    /// machine spent 14 % of the mount's `perf` samples in Reed-Solomon
    /// decoding (and none on an idle one).
    fn slow_mirrors(&self) -> Vec<bool> {
        let latency: Vec<Option<Duration>> = self.mirrors.iter().map(|m| m.latency()).collect();
        let Some(fastest) = latency.iter().flatten().min().copied() else {
            return vec![false; latency.len()];
        };
        latency
            .iter()
            .map(|l| l.is_some_and(|l| l > fastest * 2 + SLOW_MARGIN))
            .collect()
    }

    /// How long a share read from `mirror` may go unanswered before it is
    /// hedged (see [`HEDGE_FACTOR`]).
    /// A mirror that has not answered a read yet is measured by the
    /// fastest one that has.
    fn hedge_after(&self, mirror: usize) -> Duration {
        let usual = self.mirrors[mirror]
            .latency()
            .or_else(|| self.mirrors.iter().filter_map(|m| m.latency()).min());
        match usual {
            Some(usual) => (usual * HEDGE_FACTOR).max(HEDGE_MIN),
            None => HEDGE_UNKNOWN,
        }
    }

    /// Fetch any `params.k` verified shares of the object whose shares are
    /// `ids` (in index order). Data shares are preferred (no decoding), each
    /// from its ranked mirror first; a missing or corrupt share is skipped
    /// and another copy or index is tried, as is a read gone late (a hedge,
    /// see [`HEDGE_FACTOR`]).
    pub async fn fetch(&self, ids: &[ShareId], params: Params, what: &str) -> Result<Vec<Share>> {
        let need = params.k() as usize;
        let order = self.ranked(&ids[0]);
        let m = order.len();
        // Attempts in preference order: round r asks index i's r-th mirror.
        // Within a round, data shares go before parity, which saves a
        // decode, unless a data share's mirror is clearly slower than the
        // fastest (see `slow_mirrors`).
        let slow = self.slow_mirrors();
        // A mirror that just failed to answer goes last of all, and is
        // asked (for real) only if the others cannot do without it.
        let down: Vec<bool> = self.mirrors.iter().map(|s| s.is_down()).collect();
        let mut attempts: Vec<(bool, usize, bool, usize, usize)> = Vec::new();
        for r in 0..m {
            for i in 0..ids.len() {
                let j = order[(i + r) % m];
                attempts.push((down[j], r, slow[j], i, j));
            }
        }
        attempts.sort();
        let attempts: Vec<(usize, usize)> =
            attempts.into_iter().map(|(_, _, _, i, j)| (i, j)).collect();
        let mut tried = vec![false; attempts.len()];
        let mut got: Vec<Share> = Vec::with_capacity(need);
        let mut have: HashSet<usize> = HashSet::new();
        // Requests not yet late, by attempt: when they become late, and
        // how to cancel them once the fetch is done. A late request is
        // left to finish (or time out) on its own, so that its mirror's
        // fate is still recorded, but no longer holds a place.
        let mut live: HashMap<usize, (tokio::time::Instant, tokio::task::AbortHandle)> =
            HashMap::new();
        let mut tasks = JoinSet::new();
        let done = |live: HashMap<usize, (tokio::time::Instant, tokio::task::AbortHandle)>,
                    mut tasks: JoinSet<_>| {
            for (_, abort) in live.values() {
                abort.abort();
            }
            tasks.detach_all();
        };
        loop {
            // An index already held is not "asked for" by a request for it
            // still running (a hedge whose late twin answered first): it
            // kept a place, and no request went out for a missing index.
            let mut asking: HashSet<usize> = live
                .keys()
                .map(|&a| attempts[a].0)
                .filter(|i| !have.contains(i))
                .collect();
            while got.len() + asking.len() < need {
                // The first untried attempt for an index neither held nor
                // asked for; attempts skipped now stay available for later.
                let next = (0..attempts.len()).find(|&a| {
                    !tried[a] && !have.contains(&attempts[a].0) && !asking.contains(&attempts[a].0)
                });
                let Some(a) = next else { break };
                tried[a] = true;
                let (i, mirror) = attempts[a];
                asking.insert(i);
                let store = self.mirrors[mirror].clone();
                if down[mirror] {
                    store.revive();
                }
                let late_at = tokio::time::Instant::now() + self.hedge_after(mirror);
                let id = ids[i];
                let abort = tasks.spawn(async move {
                    let result = store.get_share(&id).await;
                    // It answered: a mirror passed over for being late is
                    // up, even when the fetch it was late for is over
                    // (this request left to finish on its own). Only the
                    // headers of a later answer lifted the mark before,
                    // and `lode check` took such a mirror for gone.
                    if result.is_ok() && store.is_down() {
                        store.revive();
                    }
                    (a, result)
                });
                live.insert(a, (late_at, abort));
            }
            let late_at = live.values().map(|(at, _)| *at).min();
            let Some(next) = join_by(&mut tasks, late_at).await else {
                let now = tokio::time::Instant::now();
                live.retain(|&a, (at, _)| {
                    let late = *at <= now;
                    if late {
                        let store = &self.mirrors[attempts[a].1];
                        tracing::debug!(mirror = %store.name(), what, "share read is late; asking another mirror");
                        store.pass_over();
                    }
                    !late
                });
                continue;
            };
            let Some(joined) = next else { break };
            let (a, result) = joined.expect("fetch task does not panic");
            live.remove(&a);
            let (i, j) = attempts[a];
            let mirror = self.mirrors[j].name();
            // Passed over after its task had answered (and lifted it).
            if result.is_ok() && self.mirrors[j].is_down() {
                self.mirrors[j].revive();
            }
            if have.contains(&i) {
                // A late request that answered after all.
                continue;
            }
            match result {
                Ok(Some(bytes)) => match Share::verify(bytes, &ids[i]) {
                    Ok(share)
                        if share.header().index as usize == i
                            && (share.header().params == params || ids.len() == 1) =>
                    {
                        have.insert(i);
                        got.push(share);
                        if got.len() == need {
                            done(live, tasks);
                            return Ok(got);
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(%mirror, what, "share header does not match the manifest")
                    }
                    Err(e) => tracing::warn!(%mirror, what, error = %e, "discarding bad share"),
                },
                // Whatever it acknowledged, this mirror lacks it now.
                Ok(None) => self.forget_placed(&ids[i..=i]),
                Err(e) => tracing::debug!(%mirror, what, error = %e, "share fetch failed"),
            }
        }
        Err(Error::Unrecoverable {
            what: what.to_string(),
            need,
            found: got.len(),
        })
    }

    /// The newest valid version of a directory any mirror offers, or `None`
    /// if no mirror has the slot. Refuses to go below a seq already seen.
    ///
    /// A mirror that answered with an older version, or none, is sent the
    /// newest one in the background (read repair, see [`Self::repair_slot`]).
    pub async fn get_slot(&self, cap: &DirReadCap) -> Result<Option<(u64, Listing)>> {
        let mut tasks = JoinSet::new();
        // Mirrors that just failed to answer are asked only if no other
        // one has the slot.
        let (down, up): (Vec<usize>, Vec<usize>) =
            (0..self.mirrors.len()).partition(|&j| self.mirrors[j].is_down());
        // Mirrors asked and not yet answered.
        let mut waiting: HashSet<usize> = HashSet::new();
        let ask = |tasks: &mut JoinSet<_>, waiting: &mut HashSet<usize>, j: usize| {
            let store = self.mirrors[j].clone();
            waiting.insert(j);
            let pk = cap.public_key;
            tasks.spawn(async move { (j, store.get_slot(&pk).await) });
        };
        for &j in &up {
            ask(&mut tasks, &mut waiting, j);
        }
        let mut down = Some(down);
        let mut best: Option<(u64, Listing, Vec<u8>)> = None;
        // What each mirror that answered holds: a seq, or nothing usable.
        let mut held: Vec<(usize, Option<u64>)> = Vec::new();
        // Mirrors that answered that they hold no copy at all.
        let mut absent = 0;
        let mut failed = 0;
        // Copies that are the writer's but do not open with the cap's key.
        let mut wrong_key = 0;
        // Once some mirror has answered, the others get a grace period,
        // not their full timeout: a hung mirror must not hold up every
        // directory listing (they go on in the background, and a timeout
        // passes the mirror over for a while). If no answer had the slot,
        // the read then fails as unavailable; it never takes a silent
        // mirror's share of the answer as "none".
        //
        // Not before a quorum has answered, though: enough mirrors to
        // include one of every `happy` set a publish that returned reached
        // (with three mirrors and `happy` two, two of them). The first
        // answer alone, with the grace after it, read an older version
        // whenever the mirrors holding the newest were busy for longer
        // than the grace: a slow mirror answered first. Short of a quorum
        // (the rest hung, or passed over), the read waits for them up to
        // `SLOT_QUORUM_WAIT`, then takes what it has.
        let quorum = (self.mirrors.len() + 1)
            .saturating_sub(self.happy.min(self.mirrors.len()))
            .max(1);
        let started = tokio::time::Instant::now();
        let grace = || grace_after(started);
        let mut late_after: Option<tokio::time::Instant> = None;
        // After an answer (or a failure once some mirror answered): when
        // to stop waiting for the rest.
        let wait_for_rest = |late_after: &mut Option<tokio::time::Instant>,
                             answered: usize,
                             waiting: usize| {
            if answered >= quorum || answered + waiting < quorum {
                let at = grace();
                *late_after = Some(late_after.map_or(at, |t| t.min(at)));
            } else {
                late_after.get_or_insert_with(|| tokio::time::Instant::now() + SLOT_QUORUM_WAIT);
            }
        };
        loop {
            let Some(next) = join_by(&mut tasks, late_after).await else {
                // Past the grace: passed over by reads, as a share read
                // gone late is, until it answers again.
                for &j in &waiting {
                    let store = &self.mirrors[j];
                    tracing::debug!(mirror = %store.name(), "slot read is late");
                    store.pass_over();
                }
                failed += tasks.len();
                tasks.detach_all();
                waiting.clear();
                // On to the mirrors passed over, if they are needed.
                late_after = None;
                continue;
            };
            let joined = match next {
                Some(joined) => joined,
                None => match down.take().filter(|d| {
                    let seen = self
                        .seen
                        .lock()
                        .expect("lock")
                        .get(&cap.public_key)
                        .copied();
                    !d.is_empty()
                        && match &best {
                            // Stored nowhere yet, by this client's own count.
                            None => seen != Some(0),
                            Some((seq, ..)) => seen.is_some_and(|s| *seq < s),
                        }
                }) {
                    Some(down) => {
                        for j in down {
                            self.mirrors[j].revive();
                            ask(&mut tasks, &mut waiting, j);
                        }
                        late_after = Some(tokio::time::Instant::now() + DOWN_SLOT_WAIT);
                        continue;
                    }
                    None => break,
                },
            };
            let (j, result) = joined.expect("slot task does not panic");
            waiting.remove(&j);
            let mirror = self.mirrors[j].name();
            let bytes = match result {
                Ok(Some(b)) => b,
                Ok(None) => {
                    held.push((j, None));
                    absent += 1;
                    wait_for_rest(&mut late_after, held.len(), waiting.len());
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%mirror, error = %e, "slot fetch failed");
                    failed += 1;
                    if !held.is_empty() {
                        wait_for_rest(&mut late_after, held.len(), waiting.len());
                    }
                    continue;
                }
            };
            wait_for_rest(&mut late_after, held.len() + 1, waiting.len());
            let opened = SlotEnvelope::decode(&bytes).and_then(|env| Ok((env.seq, env.open(cap)?)));
            match opened {
                Ok((seq, listing)) => {
                    held.push((j, Some(seq)));
                    if best.as_ref().is_none_or(|(s, ..)| seq > *s) {
                        best = Some((seq, listing, bytes));
                    }
                }
                // Signed by the writer, so as the writer made it: the
                // reader's key is what is wrong, not this mirror.
                Err(crate::dir::Error::Unauthentic) => {
                    held.push((j, None));
                    wrong_key += 1;
                }
                Err(e) => {
                    held.push((j, None));
                    tracing::warn!(%mirror, error = %e, "discarding invalid directory slot")
                }
            }
        }
        if best.is_none() && wrong_key > 0 {
            return Err(Error::WrongReadKey {
                slot: hex(&cap.public_key),
            });
        }
        let seen = self
            .seen
            .lock()
            .expect("lock")
            .get(&cap.public_key)
            .copied();
        match (&best, seen) {
            (Some((seq, ..)), Some(seen)) if *seq < seen => Err(Error::Rollback {
                slot: hex(&cap.public_key),
                seen,
                offered: *seq,
            }),
            // Seen at version 0: a directory made here and not yet
            // published anywhere. It is empty, whoever failed to answer.
            (None, Some(0)) => Ok(None),
            // Some mirror did not answer, and it may hold the version seen:
            // unavailable, not a rollback (every mirror away said "refusing
            // to roll back").
            (None, Some(_)) if failed > 0 => Err(Error::ListingUnavailable {
                failed,
                mirrors: self.mirrors.len(),
            }),
            (None, Some(seen)) => Err(Error::Rollback {
                slot: hex(&cap.public_key),
                seen,
                offered: 0,
            }),
            // A mirror that failed may hold the slot. Unless this client
            // made the directory and never saw it published (`fresh`), and
            // too many mirrors said they have none for any publish to have
            // reached `happy` without them: then nothing was ever stored
            // that a write returned for, and the directory is new. (Without
            // this, a new identity could not publish its root while any
            // mirror was away. A publish that reached only the silent
            // mirrors lost its writer's fsync; the next publish's seq
            // outruns it, see `Vault::next_seq`.)
            (None, None)
                if held.is_empty()
                    || (failed > 0 && !self.new_if_none(&cap.public_key, absent)) =>
            {
                Err(Error::ListingUnavailable {
                    failed,
                    mirrors: self.mirrors.len(),
                })
            }
            _ => Ok(best.map(|(seq, listing, bytes)| {
                self.note_seen(&cap.public_key, seq);
                let holding = held.iter().filter(|(_, h)| *h == Some(seq)).count();
                if holding >= self.happy.min(self.mirrors.len()) {
                    self.note_confirmed(&cap.public_key, seq);
                }
                let behind: Vec<usize> = held
                    .iter()
                    .filter(|(_, h)| h.is_none_or(|h| h < seq))
                    .map(|(j, _)| *j)
                    .collect();
                self.repair_slot(cap.public_key, seq, bytes, behind);
                (seq, listing)
            })),
        }
    }

    /// Send the newest version of a slot (`seq`, as `envelope`) to the
    /// mirrors that answered a read with an older one or none, in the
    /// background. A mirror that was down while the directory changed
    /// (and the writer unmounted or crashed before it came back) would
    /// otherwise keep the old listing until `lode check --repair`, and a
    /// later read that reached only that mirror would fail as a rollback.
    /// The envelope is signed by the directory's writer, so any reader can
    /// pass it on, as any Tahoe-LAFS client may repair a mutable file;
    /// each mirror keeps only a seq above the one it holds. A push is
    /// tried once per mirror and version.
    fn repair_slot(&self, public_key: [u8; 32], seq: u64, envelope: Vec<u8>, behind: Vec<usize>) {
        if behind.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let behind: Vec<usize> = {
            let mut tried = self.slot_repairs.lock().expect("lock");
            if tried.len() > SLOT_REPAIRS_REMEMBERED {
                tried.clear();
            }
            behind
                .into_iter()
                .filter(|&j| tried.insert((public_key, j, seq)))
                .collect()
        };
        let envelope = Arc::new(envelope);
        for j in behind {
            let store = self.mirrors[j].clone();
            let envelope = envelope.clone();
            runtime.spawn(async move {
                match store.put_slot(&envelope).await {
                    Ok(()) => tracing::info!(
                        mirror = %store.name(),
                        slot = %hex(&public_key),
                        seq,
                        "brought a mirror's stale directory slot up to date"
                    ),
                    Err(e) => tracing::debug!(
                        mirror = %store.name(),
                        slot = %hex(&public_key),
                        error = %e,
                        "slot repair failed"
                    ),
                }
            });
        }
    }

    /// Publish a new version of a slot to every mirror; succeeds once
    /// `happy` mirrors hold it.
    pub async fn put_slot(&self, envelope: &SlotEnvelope) -> Result<()> {
        self.put_encoded_slot(envelope, envelope.encode()).await
    }

    /// [`Self::put_slot`] with `envelope` already in its wire form,
    /// `encoded` (a large listing is megabytes: encoded once, not once to
    /// check and again to send).
    pub async fn put_encoded_slot(&self, envelope: &SlotEnvelope, encoded: Vec<u8>) -> Result<()> {
        let bytes = Arc::new(encoded);
        let mut tasks = JoinSet::new();
        // As for shares (`left_out`; a mirror takes only a seq above the
        // one it holds, and reads repair one left behind).
        for (store, left_out) in self.mirrors.iter().zip(self.left_out()) {
            if left_out {
                continue;
            }
            let store = store.clone();
            let bytes = bytes.clone();
            tasks.spawn(async move { (store.name().to_string(), store.put_slot(&bytes).await) });
        }
        let mut ok = 0;
        let mut last_err = None;
        let started = tokio::time::Instant::now();
        let mut late_after: Option<tokio::time::Instant> = None;
        loop {
            // On `happy` mirrors already: the others get the grace, then
            // go on in the background (a mirror takes only a seq above the
            // one it holds, so a late one is harmless).
            let Some(joined) = join_by(&mut tasks, late_after).await else {
                tracing::debug!(late = tasks.len(), "slot update is late on some mirrors");
                tasks.detach_all();
                break;
            };
            let Some(joined) = joined else { break };
            match joined.expect("slot task does not panic") {
                (_, Ok(())) => ok += 1,
                (mirror, Err(e)) => {
                    // A mirror away shows in `lode status`; the log does
                    // not repeat it on every publish.
                    if matches!(e, Error::Unavailable { .. }) {
                        tracing::debug!(%mirror, error = %e, "slot update failed");
                    } else {
                        tracing::warn!(%mirror, error = %e, "slot update failed");
                    }
                    last_err = Some(e);
                }
            }
            if late_after.is_none() && ok >= self.happy.min(self.mirrors.len()) {
                late_after = Some(grace_after(started));
            }
        }
        // Once any mirror holds this version it exists: no later read may
        // go below it, and "seen at 0" keeps meaning "stored nowhere".
        if ok > 0 {
            self.note_seen(&envelope.public_key, envelope.seq);
        }
        if ok < self.happy.min(self.mirrors.len()) || ok == 0 {
            return Err(match last_err {
                Some(e @ (Error::NoSpace { .. } | Error::Rejected { .. })) if ok == 0 => e,
                _ => Error::SlotNotHappy {
                    placed: ok,
                    happy: self.happy,
                },
            });
        }
        self.note_seen(&envelope.public_key, envelope.seq);
        self.note_confirmed(&envelope.public_key, envelope.seq);
        Ok(())
    }

    /// Whether the slot `public_key` is one this client made and has not
    /// seen published (see [`Self::note_fresh`]): none on the mirrors is
    /// no loss.
    pub fn is_fresh(&self, public_key: &[u8; 32]) -> bool {
        self.fresh.lock().expect("lock").contains(public_key)
    }

    /// Whether `absent` mirrors saying they hold no copy of the slot
    /// `public_key`, and none holding one, make it new: it is `fresh` (see
    /// [`Self::note_fresh`]), and they are too many for any publish to have
    /// reached `happy` mirrors without them.
    pub(super) fn new_if_none(&self, public_key: &[u8; 32], absent: usize) -> bool {
        self.fresh.lock().expect("lock").contains(public_key)
            && absent > self.mirrors.len() - self.happy.min(self.mirrors.len())
    }

    fn note_confirmed(&self, public_key: &[u8; 32], seq: u64) {
        let mut confirmed = self.confirmed.lock().expect("lock");
        let at = confirmed.entry(*public_key).or_insert(seq);
        *at = (*at).max(seq);
    }

    /// Whether the newest version of a directory this client knows of is
    /// known to be on `happy` mirrors. Not so for one read from fewer (a
    /// publish that reached only some, by a session that then ended): an
    /// fsync beneath it must publish it again.
    pub fn confirmed(&self, public_key: &[u8; 32]) -> bool {
        let seen = self.seen.lock().expect("lock").get(public_key).copied();
        let confirmed = self
            .confirmed
            .lock()
            .expect("lock")
            .get(public_key)
            .copied();
        matches!((seen, confirmed), (Some(s), Some(c)) if c >= s)
    }

    /// Record that `seq` of a slot exists, so no older version is accepted.
    pub fn note_seen(&self, public_key: &[u8; 32], seq: u64) {
        let mut seen = self.seen.lock().expect("lock");
        let raised = match seen.entry(*public_key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(seq);
                true
            }
            std::collections::hash_map::Entry::Occupied(mut o) if *o.get() < seq => {
                o.insert(seq);
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        };
        if raised {
            self.seen_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many times [`Self::seen_seqs`] has changed: a caller that keeps
    /// them on disk saves again when this moves.
    pub fn seen_changes(&self) -> u64 {
        self.seen_changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The highest seq seen of the slot `public_key`, if any.
    pub fn seen_seq(&self, public_key: &[u8; 32]) -> Option<u64> {
        self.seen.lock().expect("lock").get(public_key).copied()
    }

    /// The highest seq seen of every slot (for persisting between runs).
    pub fn seen_seqs(&self) -> HashMap<[u8; 32], u64> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Room for file data on the grid, as `df` shows it: bytes of files, not
/// of shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub free: u64,
}

/// One mirror's standing, for [`Space::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes of shares this account holds there.
    pub used: u64,
    /// Bytes it may still add (`None`: no limit): the least of what the
    /// account's quota and the mirror's capacity leave.
    pub left: Option<u64>,
}

impl Room {
    /// From a mirror's `GET /v1/info` and `GET /v1/account` answers.
    pub fn from_reports(
        info: &crate::protocol::Info,
        account: &crate::protocol::AccountStatus,
    ) -> Room {
        let quota = account
            .quota_bytes
            .map(|q| q.saturating_sub(account.usage_bytes));
        let capacity = info
            .capacity_bytes
            .map(|c| c.saturating_sub(info.used_bytes));
        Room {
            used: account.usage_bytes,
            left: match (quota, capacity) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// What `df` shows free when no mirror sets a limit: 4 PiB.
pub const UNBOUNDED_FREE: u64 = 1 << 52;

impl Space {
    /// The space of a grid of `mirrors` mirrors coding files `params`,
    /// from the rooms of those that answered. A file's bytes spread over
    /// the mirrors at n/k times their size, a share of n/(k·mirrors) on
    /// each, so the grid is full when its fullest mirror is: free is the
    /// least room left times k·mirrors/n. With no limit set anywhere,
    /// [`UNBOUNDED_FREE`] is free, beside what is used. `None` when no
    /// mirror answered.
    pub fn of(params: Params, mirrors: usize, rooms: &[Room]) -> Option<Space> {
        if rooms.is_empty() {
            return None;
        }
        let (k, n) = (u128::from(params.k()), u128::from(params.n()));
        let spread = mirrors.max(rooms.len()).max(1) as u128;
        let files = |shares: u128, per: u128| shares * k * per / n;
        let used: u128 = rooms.iter().map(|r| u128::from(r.used)).sum();
        let free = match rooms.iter().filter_map(|r| r.left).min() {
            Some(least) => files(u128::from(least), spread),
            None => u128::from(UNBOUNDED_FREE),
        };
        let used = files(used, 1);
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Some(Space {
            total: clamp(used + free),
            free: clamp(free),
        })
    }
}

#[cfg(test)]
mod space_tests {
    use super::*;

    #[test]
    fn space_is_bounded_by_the_fullest_mirror_in_file_bytes() {
        let p = Params::new(2, 3).unwrap();
        let room = |used, left| Room { used, left };
        // Three mirrors, 2-of-3: a file of B bytes puts B/2 on each.
        let s = Space::of(
            p,
            3,
            &[room(300, Some(1000)), room(300, Some(400)), room(300, None)],
        )
        .unwrap();
        assert_eq!(
            s.free, 800,
            "the fullest mirror takes 400 more, i.e. 800 of files"
        );
        assert_eq!(s.total, 800 + 600, "900 of shares is 600 of files");
        // No limits anywhere: unbounded, beside what is used (300 of
        // shares on each of three mirrors is 600 of files).
        let s = Space::of(p, 3, &[room(300, None), room(300, None), room(300, None)]).unwrap();
        assert_eq!((s.free, s.total), (UNBOUNDED_FREE, UNBOUNDED_FREE + 600));
        // Nobody answered: unknown.
        assert_eq!(Space::of(p, 3, &[]), None);
    }

    #[test]
    fn room_takes_the_tighter_of_quota_and_capacity() {
        let info = |capacity_bytes, used_bytes| crate::protocol::Info {
            protocol: 1,
            software: String::new(),
            lease_seconds: 1,
            capacity_bytes,
            used_bytes,
            price: 0.0,
            stratum_port: None,
            mirror_id: None,
        };
        let account = |quota_bytes, usage_bytes| crate::protocol::AccountStatus {
            account: String::new(),
            usage_bytes,
            quota_bytes,
            leases: 0,
            lease_seconds: 1,
            credit_micro: 0,
            debit_micro: 0,
            daily_cost_micro: 0,
            shares_accepted: 0,
            funded_until: None,
        };
        let r = Room::from_reports(&info(Some(10_000), 9_000), &account(Some(5_000), 100));
        assert_eq!(
            r,
            Room {
                used: 100,
                left: Some(1_000)
            }
        );
        let r = Room::from_reports(&info(None, 9_000), &account(Some(5_000), 100));
        assert_eq!(r.left, Some(4_900));
        let r = Room::from_reports(&info(None, 0), &account(None, 7));
        assert_eq!(
            r,
            Room {
                used: 7,
                left: None
            }
        );
    }
}

#[cfg(test)]
mod placed_tests {
    use super::*;

    #[test]
    fn remembers_which_mirrors_and_forgets() {
        let mut placed = Placed::new();
        placed.window = PLACED_FOR;
        let id = [1u8; 32];
        assert!(!placed.holds(&id, 0));
        placed.record(id, [0, 2, 70].into_iter());
        assert!(placed.holds(&id, 0) && placed.holds(&id, 2));
        assert!(!placed.holds(&id, 1), "a mirror not named");
        assert!(!placed.holds(&id, 70), "beyond the bit set");
        placed.forget(&id);
        assert!(!placed.holds(&id, 0));
        // Nothing named, nothing remembered.
        placed.record(id, std::iter::empty());
        assert!(!placed.holds(&id, 0));
    }

    #[test]
    fn an_old_acknowledgement_does_not_count() {
        let mut placed = Placed::new();
        placed.window = PLACED_FOR;
        let id = [2u8; 32];
        let old = Instant::now()
            .checked_sub(PLACED_FOR + Duration::from_secs(1))
            .expect("the clock is past the window");
        placed.recent.put(id, (old, 1));
        assert!(!placed.holds(&id, 0));
    }

    /// Nothing counts before the lease is known, and the window is an
    /// eighth of a short lease.
    #[test]
    fn the_window_follows_the_shortest_lease() {
        let grid = Grid::new(
            vec![Arc::new(crate::store::MemoryStorage::new())],
            GridConfig::default(),
        )
        .unwrap();
        let id = [3u8; 32];
        let held = |grid: &Grid| grid.placed.lock().unwrap().holds(&id, 0);
        grid.placed.lock().unwrap().record(id, [0].into_iter());
        assert!(!held(&grid), "before any lease is known");
        grid.set_lease_floor(Duration::from_secs(31 * 86_400));
        assert!(held(&grid));
        assert_eq!(grid.placed.lock().unwrap().window, PLACED_FOR);
        grid.set_lease_floor(Duration::from_secs(12));
        assert_eq!(
            grid.placed.lock().unwrap().window,
            Duration::from_millis(1500)
        );
    }
}

#[cfg(test)]
mod fetch_tests {
    use super::*;
    use crate::store::MemoryStorage;
    use async_trait::async_trait;
    use bytes::Bytes;

    /// An in-memory store for the grid's tests: a fixed response time, and
    /// optionally "down" (reads fail at once, as an `HttpMirror` passing a
    /// mirror over does, until revived) or hung (reads never answer).
    /// Counts the reads that reached it.
    struct Fake {
        inner: MemoryStorage,
        latency: Option<Duration>,
        down: std::sync::atomic::AtomicBool,
        hung: bool,
        /// Slot reads answered only after this long.
        slow_slot: Option<Duration>,
        /// Share reads answered only after this long.
        slow_share: Option<Duration>,
        /// Uploads (shares and slots) never answered.
        hung_writes: bool,
        reads: std::sync::atomic::AtomicUsize,
        /// Uploads asked of it.
        writes: std::sync::atomic::AtomicUsize,
    }

    impl Fake {
        fn new(inner: MemoryStorage) -> Fake {
            Fake {
                inner,
                latency: None,
                down: false.into(),
                hung: false,
                slow_slot: None,
                slow_share: None,
                hung_writes: false,
                reads: 0.into(),
                writes: 0.into(),
            }
        }

        fn writes(&self) -> usize {
            self.writes.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn read(&self) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.down.load(SeqCst) {
                return Err(Error::Unavailable {
                    mirror: self.inner.name().into(),
                    reason: "passed over".into(),
                });
            }
            self.reads.fetch_add(1, SeqCst);
            Ok(())
        }
    }

    #[async_trait]
    impl Storage for Fake {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn put_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.hung_writes {
                std::future::pending::<()>().await;
            }
            self.inner.put_share(id, bytes).await
        }
        async fn get_share(&self, id: &ShareId) -> Result<Option<Bytes>> {
            self.read()?;
            if self.hung {
                std::future::pending::<()>().await;
            }
            if let Some(wait) = self.slow_share {
                tokio::time::sleep(wait).await;
            }
            self.inner.get_share(id).await
        }
        async fn has_share(&self, id: &ShareId) -> Result<bool> {
            self.inner.has_share(id).await
        }
        async fn put_slot(&self, envelope: &[u8]) -> Result<()> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.hung_writes {
                std::future::pending::<()>().await;
            }
            self.inner.put_slot(envelope).await
        }
        async fn get_slot(&self, public_key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
            if self.hung {
                std::future::pending::<()>().await;
            }
            if let Some(wait) = self.slow_slot {
                tokio::time::sleep(wait).await;
            }
            self.read()?;
            self.inner.get_slot(public_key).await
        }
        fn latency(&self) -> Option<Duration> {
            self.latency
        }
        fn is_down(&self) -> bool {
            self.down.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn revive(&self) {
            self.down.store(false, std::sync::atomic::Ordering::SeqCst)
        }
        fn pass_over(&self) {
            self.down.store(true, std::sync::atomic::Ordering::SeqCst)
        }
        fn write_waiting(&self) -> bool {
            // A hung upload, once asked, is out for good.
            self.is_down() && self.hung_writes && self.writes() > 0
        }
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// The mirrors (indexes into `NAMES`) in the order a fetch of the
    /// object whose first share is `id` asks them: it follows the names.
    fn ranking(id: &ShareId) -> Vec<usize> {
        let plain: Vec<Arc<dyn Storage>> = NAMES
            .iter()
            .map(|n| Arc::new(MemoryStorage::named(n)) as Arc<dyn Storage>)
            .collect();
        Grid::new(plain, GridConfig::default()).unwrap().ranked(id)
    }

    /// Fakes named `NAMES`, each holding every one of `shares`, the j-th
    /// made by `shape(j, a plain fake)`.
    fn holding(
        rt: &tokio::runtime::Runtime,
        shares: &[Share],
        shape: impl Fn(usize, Fake) -> Fake,
    ) -> Vec<Arc<Fake>> {
        NAMES
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let inner = MemoryStorage::named(n);
                for s in shares {
                    rt.block_on(inner.put_share(&s.id(), s.shared_bytes()))
                        .unwrap();
                }
                Arc::new(shape(j, Fake::new(inner)))
            })
            .collect()
    }

    fn grid_of(stores: &[Arc<Fake>]) -> Grid {
        let mirrors = stores
            .iter()
            .map(|s| s.clone() as Arc<dyn Storage>)
            .collect();
        Grid::new(mirrors, GridConfig::default()).unwrap()
    }

    /// The share indexes a fetch returns when the mirror first asked for
    /// share i answers in `ms[i]` milliseconds. Every mirror holds every
    /// share, so only the order of asking decides.
    fn fetched_indexes(ms: [u64; 3]) -> Vec<u8> {
        let params = Params::new(2, 3).unwrap();
        let shares = crate::chunk::share::encode(params, &[7u8; 5000]);
        let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
        let order = ranking(&ids[0]);
        let mut latency = [Duration::ZERO; 3];
        for (i, &j) in order.iter().enumerate() {
            latency[j] = Duration::from_millis(ms[i]);
        }
        let rt = runtime();
        let stores = holding(&rt, &shares, |j, fake| Fake {
            latency: Some(latency[j]),
            ..fake
        });
        let grid = grid_of(&stores);
        let got = rt.block_on(grid.fetch(&ids, params, "test")).unwrap();
        let mut indexes: Vec<u8> = got.iter().map(|s| s.header().index).collect();
        indexes.sort();
        indexes
    }

    #[test]
    fn data_shares_are_preferred_over_a_slightly_faster_parity_mirror() {
        assert_eq!(fetched_indexes([60, 80, 1]), vec![0, 1]);
        assert_eq!(fetched_indexes([10, 10, 10]), vec![0, 1]);
    }

    /// A mirror passed over while a read of it was late is up again once
    /// that read answers, even after the fetch it was late for finished
    /// without it. (Virtual time.)
    #[test]
    fn a_late_answer_lifts_the_pass_over() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let params = Params::new(2, 3).unwrap();
        let shares = crate::chunk::share::encode(params, &[5u8; 5000]);
        let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
        let first = ranking(&ids[0])[0];
        let stores = holding(&rt, &shares, |j, fake| Fake {
            latency: Some(Duration::from_millis(10)),
            slow_share: (j == first).then_some(Duration::from_secs(3)),
            ..fake
        });
        let grid = grid_of(&stores);
        let got = rt.block_on(grid.fetch(&ids, params, "test")).unwrap();
        assert_eq!(got.len(), 2);
        assert!(stores[first].is_down(), "passed over while late");
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(5)).await });
        assert!(!stores[first].is_down(), "its late answer lifts the mark");
    }

    #[test]
    fn a_clearly_slow_mirror_is_asked_last() {
        assert_eq!(fetched_indexes([500, 10, 10]), vec![1, 2]);
        assert_eq!(fetched_indexes([10, 500, 10]), vec![0, 2]);
    }

    /// A mirror that just failed is not asked while the others suffice,
    /// and is asked (revived) when they do not: for shares and for slots.
    #[test]
    fn a_down_mirror_is_asked_only_when_needed() {
        use std::sync::atomic::Ordering::SeqCst;
        let rt = runtime();
        let params = Params::new(2, 3).unwrap();
        let shares = crate::chunk::share::encode(params, &[9u8; 5000]);
        let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
        let stores = holding(&rt, &shares, |_, fake| fake);
        let grid = grid_of(&stores);
        // The mirror first in line for share 0 is down: the other two
        // give shares 1 and 2, and it is never asked.
        let first = grid.ranked(&ids[0])[0];
        stores[first].down.store(true, SeqCst);
        let got = rt.block_on(grid.fetch(&ids, params, "test")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(stores[first].reads.load(SeqCst), 0);
        assert!(stores[first].is_down());
        // Two down: one of them must be asked, and is.
        let second = (0..3).find(|&j| j != first).unwrap();
        stores[second].down.store(true, SeqCst);
        let got = rt.block_on(grid.fetch(&ids, params, "test")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            stores[first].reads.load(SeqCst) + stores[second].reads.load(SeqCst),
            1
        );

        // Slots: one held only by a down mirror is still found.
        let cap = crate::store::Vault::fresh_dir();
        let env = crate::dir::SlotEnvelope::seal(&cap, 3, &crate::dir::Listing::default());
        rt.block_on(stores[first].inner.put_slot(&env.encode()))
            .unwrap();
        for s in &stores {
            s.down.store(false, SeqCst);
        }
        stores[first].down.store(true, SeqCst);
        let before = stores[first].reads.load(SeqCst);
        let found = rt.block_on(grid.get_slot(&cap.read_cap())).unwrap();
        assert_eq!(found.map(|(seq, _)| seq), Some(3));
        assert_eq!(stores[first].reads.load(SeqCst), before + 1);
        // Held by an up mirror too: the down one is not asked.
        for (j, s) in stores.iter().enumerate() {
            if j != first {
                rt.block_on(s.inner.put_slot(&env.encode())).unwrap();
            }
        }
        stores[first].down.store(true, SeqCst);
        let found = rt.block_on(grid.get_slot(&cap.read_cap())).unwrap();
        assert_eq!(found.map(|(seq, _)| seq), Some(3));
        assert_eq!(stores[first].reads.load(SeqCst), before + 1);
    }

    /// A publish that returned is on `happy` mirrors; a read that hears
    /// first from the one left behind waits for a second answer, though
    /// the two holding the newest version are slower than the grace (the
    /// read took the old version, and a directory's last change was
    /// missing from it).
    #[test]
    fn a_slot_read_waits_for_a_quorum_before_it_takes_the_newest() {
        let rt = runtime();
        let cap = crate::store::Vault::fresh_dir();
        let old = crate::dir::SlotEnvelope::seal(&cap, 5, &crate::dir::Listing::default());
        let new = crate::dir::SlotEnvelope::seal(&cap, 6, &crate::dir::Listing::default());
        let slow = |name| Fake {
            slow_slot: Some(SLOT_GRACE + Duration::from_secs(1)),
            ..Fake::new(MemoryStorage::named(name))
        };
        let (b, c) = (slow("b"), slow("c"));
        let a = MemoryStorage::named("a");
        rt.block_on(async {
            a.put_slot(&old.encode()).await.unwrap();
            b.put_slot(&new.encode()).await.unwrap();
            c.put_slot(&new.encode()).await.unwrap();
        });
        let stores: Vec<Arc<dyn Storage>> = vec![Arc::new(a), Arc::new(b), Arc::new(c)];
        let config = GridConfig {
            happy: 2,
            ..GridConfig::default()
        };
        let grid = Grid::new(stores, config).unwrap();
        let found = rt.block_on(grid.get_slot(&cap.read_cap())).unwrap();
        assert_eq!(found.map(|(seq, _)| seq), Some(6));
    }

    /// A slot read waits out a hung mirror only for the grace period once
    /// the others have given the slot; with no other answer it waits.
    #[test]
    fn a_slot_read_does_not_wait_for_a_hung_mirror() {
        let rt = runtime();
        let cap = crate::store::Vault::fresh_dir();
        let env = crate::dir::SlotEnvelope::seal(&cap, 5, &crate::dir::Listing::default());
        let stores: Vec<Arc<dyn Storage>> = vec![
            Arc::new(MemoryStorage::named("a")),
            Arc::new(Fake {
                hung: true,
                ..Fake::new(MemoryStorage::named("hung"))
            }),
            Arc::new(MemoryStorage::named("c")),
        ];
        for s in [&stores[0], &stores[2]] {
            rt.block_on(s.put_slot(&env.encode())).unwrap();
        }
        let grid = Grid::new(stores, GridConfig::default()).unwrap();
        let read = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), grid.get_slot(&cap.read_cap())).await
        });
        let found = read.expect("the hung mirror held the read").unwrap();
        assert_eq!(found.map(|(seq, _)| seq), Some(5));
        // Nobody that answers has the slot. A publish that returned is on
        // `happy` mirrors, so with two of three saying they have none, the
        // silent one cannot hold a version anyone relied on: the directory
        // is new (a new identity's root can be made with a mirror away).
        let other = crate::store::Vault::fresh_dir();
        let hung = |name| -> Arc<dyn Storage> {
            Arc::new(Fake {
                hung: true,
                ..Fake::new(MemoryStorage::named(name))
            })
        };
        let answer = |grid: &Grid| {
            let read = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), grid.get_slot(&other.read_cap()))
                    .await
            });
            read.expect("a hung mirror held the read")
                .map(|found| found.map(|(seq, _)| seq))
        };
        for happy in [2, 3] {
            let stores = vec![
                Arc::new(MemoryStorage::named("a")) as Arc<dyn Storage>,
                hung("hung"),
                Arc::new(MemoryStorage::named("c")),
            ];
            let grid = Grid::new(stores, GridConfig { k: 2, n: 3, happy }).unwrap();
            // Only for a directory this client made and never saw
            // published: any other may have been published when the
            // mirrors or `happy` were other than now.
            let got = answer(&grid);
            assert!(
                matches!(got, Err(Error::ListingUnavailable { .. })),
                "happy {happy}, not fresh: {got:?}"
            );
            grid.note_fresh(&other.read_cap().public_key);
            let got = answer(&grid);
            assert!(matches!(got, Ok(None)), "happy {happy}: {got:?}");
        }
        // With two silent, the one answer "none" proves nothing: a publish
        // may be on the two others. The read fails as unavailable after
        // the grace; it does not answer "empty", nor wait for a timeout.
        let stores = vec![
            Arc::new(MemoryStorage::named("a")) as Arc<dyn Storage>,
            hung("hung"),
            hung("hung 2"),
        ];
        let grid = Grid::new(
            stores,
            GridConfig {
                k: 2,
                n: 3,
                happy: 2,
            },
        )
        .unwrap();
        grid.note_fresh(&other.read_cap().public_key);
        let got = answer(&grid);
        assert!(
            matches!(got, Err(Error::ListingUnavailable { .. })),
            "an answer while two mirrors are silent: {got:?}"
        );
    }

    /// A directory taken as new while a mirror was silent is published at
    /// a seq that outruns what that mirror may hold from an earlier
    /// publish that never reached `happy` (seq 5 here): once it answers
    /// again, the new version is the one read.
    #[test]
    fn a_first_publish_outruns_a_version_a_silent_mirror_held() {
        let rt = runtime();
        let cap = crate::store::Vault::fresh_dir();
        let stale = crate::dir::SlotEnvelope::seal(&cap, 5, &crate::dir::Listing::default());
        let (a, c) = (
            Arc::new(MemoryStorage::named("a")),
            Arc::new(MemoryStorage::named("c")),
        );
        let silent = Arc::new(Fake {
            hung: true,
            hung_writes: true,
            ..Fake::new(MemoryStorage::named("silent"))
        });
        let config = GridConfig {
            k: 2,
            n: 3,
            happy: 2,
        };
        let stores: Vec<Arc<dyn Storage>> = vec![a.clone(), silent, c.clone()];
        let grid = Grid::new(stores, config).unwrap();
        grid.note_fresh(&cap.read_cap().public_key);
        let read = rt.block_on(grid.get_slot(&cap.read_cap())).unwrap();
        assert!(read.is_none(), "taken as new");
        let mut listing = crate::dir::Listing::default();
        let entry = crate::dir::Entry::symlink("there", (0, 0));
        listing.entries.insert("new".into(), entry);
        let seq = crate::store::vault::next_seq(None);
        let env = crate::dir::SlotEnvelope::seal(&cap, seq, &listing);
        rt.block_on(grid.put_slot(&env)).unwrap();
        // The silent mirror answers again, holding seq 5 of an earlier
        // publish that reached only it.
        let back = Arc::new(MemoryStorage::named("silent"));
        rt.block_on(back.put_slot(&stale.encode())).unwrap();
        let later = Grid::new(vec![a, back, c], config).unwrap();
        let (got, read) = rt
            .block_on(later.get_slot(&cap.read_cap()))
            .unwrap()
            .expect("found");
        assert_eq!(got, seq);
        assert!(read.entries.contains_key("new"), "the new listing is read");
    }

    /// With `happy` mirrors holding an upload, one that never answers is
    /// waited for only the grace: the shares and the slot update complete
    /// on the others (each share still somewhere), and the hung mirror is
    /// passed over. With `happy` needing it, the upload waits for it.
    #[test]
    fn an_upload_on_happy_mirrors_does_not_wait_for_a_hung_one() {
        let rt = runtime();
        let params = Params::new(2, 3).unwrap();
        let shares = crate::chunk::share::encode(params, &[9u8; 5000]);
        let live = [
            Arc::new(MemoryStorage::named("a")),
            Arc::new(MemoryStorage::named("c")),
        ];
        let hung = Arc::new(Fake {
            hung_writes: true,
            ..Fake::new(MemoryStorage::named("hung"))
        });
        let stores: Vec<Arc<dyn Storage>> = vec![live[0].clone(), hung.clone(), live[1].clone()];
        let config = |happy| GridConfig { k: 2, n: 3, happy };
        let grid = Grid::new(stores.clone(), config(2)).unwrap();
        let put = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), grid.put_group(&shares)).await
        });
        put.expect("the hung mirror held the upload").unwrap();
        assert!(hung.is_down(), "the hung mirror is passed over");
        for (i, share) in shares.iter().enumerate() {
            let held = live
                .iter()
                .filter(|m| rt.block_on(m.has_share(&share.id())).unwrap())
                .count();
            assert!(held > 0, "share {i} is on no live mirror");
        }
        let cap = crate::store::Vault::fresh_dir();
        let env = crate::dir::SlotEnvelope::seal(&cap, 1, &crate::dir::Listing::default());
        let put = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), grid.put_slot(&env)).await
        });
        put.expect("the hung mirror held the slot update").unwrap();
        // Passed over, with writes out unanswered: the next upload and
        // slot update leave it out (no grace waited), and the shares still
        // span happy mirrors.
        let asked = hung.writes();
        let more = crate::chunk::share::encode(params, &[8u8; 5000]);
        rt.block_on(grid.put_group(&more)).unwrap();
        let env = crate::dir::SlotEnvelope::seal(&cap, 2, &crate::dir::Listing::default());
        rt.block_on(grid.put_slot(&env)).unwrap();
        assert_eq!(hung.writes(), asked, "the hung mirror was asked again");
        let spanned = live
            .iter()
            .filter(|m| {
                more.iter()
                    .any(|s| rt.block_on(m.has_share(&s.id())).unwrap())
            })
            .count();
        assert_eq!(spanned, 2);
        // Happy at 3 needs the hung mirror: no grace starts.
        hung.revive();
        let strict = Grid::new(stores, config(3)).unwrap();
        let put = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), strict.put_group(&shares)).await
        });
        assert!(put.is_err(), "an upload short of happy returned");
    }

    /// A share read from a mirror that never answers is hedged: the fetch
    /// completes from the other two, and the hung mirror is passed over by
    /// the next read.
    #[test]
    fn a_share_read_does_not_wait_for_a_hung_mirror() {
        use std::sync::atomic::Ordering::SeqCst;
        let rt = runtime();
        let params = Params::new(2, 3).unwrap();
        let shares = crate::chunk::share::encode(params, &[3u8; 5000]);
        let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
        let first = ranking(&ids[0])[0];
        let stores = holding(&rt, &shares, |j, fake| Fake {
            latency: Some(Duration::from_millis(10)),
            hung: j == first,
            ..fake
        });
        let grid = grid_of(&stores);
        let read = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), grid.fetch(&ids, params, "test")).await
        });
        let got = read.expect("the hung mirror held the read").unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            got.iter().all(|s| s.header().index != 0),
            "share 0 came from the hung mirror"
        );
        assert_eq!(stores[first].reads.load(SeqCst), 1);
        assert!(stores[first].is_down(), "the late mirror is passed over");
        // The next read does not ask it.
        let read = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), grid.fetch(&ids, params, "test")).await
        });
        assert_eq!(read.expect("held again").unwrap().len(), 2);
        assert_eq!(stores[first].reads.load(SeqCst), 1);
    }

    /// A slot read sends the newest version to the mirrors that answered
    /// with an older one or none (read repair), once per version.
    #[test]
    fn a_slot_read_brings_lagging_mirrors_up_to_date() {
        use std::sync::atomic::Ordering::SeqCst;
        let rt = runtime();
        let cap = crate::store::Vault::fresh_dir();
        let old = crate::dir::SlotEnvelope::seal(&cap, 3, &crate::dir::Listing::default());
        let new = crate::dir::SlotEnvelope::seal(&cap, 4, &crate::dir::Listing::default());
        let stores = holding(&rt, &[], |_, fake| fake);
        // a: the new version; b: the old one; c: none.
        rt.block_on(stores[0].put_slot(&new.encode())).unwrap();
        rt.block_on(stores[1].put_slot(&old.encode())).unwrap();
        let grid = grid_of(&stores);
        let held = |j: usize| {
            rt.block_on(stores[j].inner.get_slot(&cap.read_cap().public_key))
                .unwrap()
                .map(|b| crate::dir::SlotEnvelope::decode(&b).unwrap().seq)
        };
        let found = rt.block_on(async {
            let found = grid.get_slot(&cap.read_cap()).await.unwrap();
            // The repair runs in the background.
            tokio::time::sleep(Duration::from_millis(200)).await;
            found
        });
        assert_eq!(found.map(|(seq, _)| seq), Some(4));
        assert_eq!((held(0), held(1), held(2)), (Some(4), Some(4), Some(4)));
        // A down mirror is not asked, so not repaired; nor is a version
        // sent twice to a mirror that refuses or loses it.
        let newer = crate::dir::SlotEnvelope::seal(&cap, 5, &crate::dir::Listing::default());
        rt.block_on(stores[0].put_slot(&newer.encode())).unwrap();
        stores[2].down.store(true, SeqCst);
        rt.block_on(async {
            grid.get_slot(&cap.read_cap()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert_eq!((held(0), held(1), held(2)), (Some(5), Some(5), Some(4)));
        stores[1]
            .inner
            .tamper_slot(&cap.read_cap().public_key, |b| *b = old.encode());
        rt.block_on(async {
            grid.get_slot(&cap.read_cap()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert_eq!(held(1), Some(3), "seq 5 was sent to b once already");
    }
}
