//! Checking, repairing and renewing what a cap reaches.
//!
//! A verify-cap is enough for all of it: the manifest's location sections
//! name every share, shares are checked against their ids, and a missing or
//! corrupt share is rebuilt from any k good ones by re-encoding the
//! ciphertext (the coding is deterministic, so the rebuilt share has the
//! id the manifest names).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Error, Grid, Result, Vault, hex};
use crate::caps::{Cap, DirReadCap, FileVerifyCap};
use crate::chunk::{self, Node, Params, Share, ShareId, share};
use crate::dir::SlotEnvelope;

/// Requests in flight at once during a check.
const PROBES: usize = 16;

/// One coded object: a chunk, a manifest node, or a manifest root.
#[derive(Debug, Clone)]
pub struct Object {
    pub what: String,
    /// The file it belongs to, by path, when a check came to it through
    /// a directory.
    pub file: Option<String>,
    pub params: Params,
    pub ids: Vec<ShareId>,
}

/// What a mirror said about one share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareState {
    /// Present (and, with `--verify`, matching its id).
    Good,
    Absent,
    /// Served, but the bytes do not match the id.
    Corrupt,
    /// The mirror did not answer.
    Unreachable,
}

/// The health of one object across the grid: `states[i][j]` is what mirror
/// j said about share i.
#[derive(Debug, Clone)]
pub struct ObjectHealth {
    pub object: Object,
    pub states: Vec<Vec<ShareState>>,
    /// The distinct mirrors its good shares should span: one share per
    /// mirror as far as there are mirrors (a replica on as many as it is
    /// copied to). An upload that reached only `happy` of them, with a
    /// mirror away, put two shares on one; losing that mirror would then
    /// lose the object, so until a repair spreads them it is not healthy.
    pub want: usize,
}

impl ObjectHealth {
    /// Share indices with no good copy anywhere.
    pub fn lost(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| !self.states[i].contains(&ShareState::Good))
            .collect()
    }

    /// How many mirrors the good shares span, each mirror counted for a
    /// share of its own: the most shares that can be paired with
    /// distinct mirrors holding them (Tahoe-LAFS's servers of
    /// happiness). Counting every mirror with any good share took A{0,2},
    /// B{1}, D{1} as three mirrors, though losing A leaves one share; it
    /// is two. A single share (a replica) spans every mirror holding it.
    pub fn spread(&self) -> usize {
        spread_of(&self.states, |s| s == ShareState::Good)
    }

    /// What is wrong with it, for a report: each share counted once, by
    /// its best copy (good, corrupt, unreachable or absent), then where
    /// the good ones are against the spread wanted.
    pub fn describe(&self) -> String {
        let best = |copies: &Vec<ShareState>| {
            [
                ShareState::Good,
                ShareState::Corrupt,
                ShareState::Unreachable,
            ]
            .into_iter()
            .find(|s| copies.contains(s))
            .unwrap_or(ShareState::Absent)
        };
        let count = |state| self.states.iter().filter(|c| best(c) == state).count();
        let n = self.states.len();
        let mut parts = Vec::new();
        let (corrupt, unreachable, absent) = (
            count(ShareState::Corrupt),
            count(ShareState::Unreachable),
            count(ShareState::Absent),
        );
        if corrupt + unreachable + absent > 0 {
            let mut why = Vec::new();
            for (k, what) in [
                (corrupt, "corrupt"),
                (unreachable, "on mirrors that did not answer"),
                (absent, "missing"),
            ] {
                if k > 0 {
                    why.push(format!("{k} {what}"));
                }
            }
            parts.push(format!(
                "{} of {n} shares without a good copy ({})",
                corrupt + unreachable + absent,
                why.join(", ")
            ));
        }
        let bad_copies = self
            .states
            .iter()
            .filter(|c| c.contains(&ShareState::Good))
            .flatten()
            .filter(|s| **s == ShareState::Corrupt)
            .count();
        match bad_copies {
            0 => {}
            1 => parts.push("1 corrupt copy beside good ones".into()),
            n => parts.push(format!("{n} corrupt copies beside good ones")),
        }
        let mirrors = self.states.first().map_or(0, Vec::len);
        let spread = self.spread();
        if spread < self.want {
            parts.push(format!(
                "good shares on {spread} of {mirrors} mirrors, {} wanted",
                self.want
            ));
        }
        if !self.recoverable() {
            parts.push("UNRECOVERABLE".into());
        }
        parts.join("; ")
    }

    pub fn recoverable(&self) -> bool {
        self.states.len() - self.lost().len() >= self.object.params.k() as usize
    }

    pub fn healthy(&self) -> bool {
        self.lost().is_empty()
            && !self
                .states
                .iter()
                .flatten()
                .any(|s| *s == ShareState::Corrupt)
            && self.spread() >= self.want
    }
}

/// [`ObjectHealth::spread`] of the copies `counts` takes.
fn spread_of(states: &[Vec<ShareState>], counts: impl Fn(ShareState) -> bool) -> usize {
    let m = states.first().map_or(0, Vec::len);
    if states.len() == 1 {
        return (0..m).filter(|&j| counts(states[0][j])).count();
    }
    // Kuhn's augmenting paths: `owner[j]` is the share mirror j stands for.
    fn place(
        i: usize,
        holds: &dyn Fn(usize, usize) -> bool,
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for j in 0..owner.len() {
            if holds(i, j) && !seen[j] {
                seen[j] = true;
                if owner[j].is_none_or(|other| place(other, holds, seen, owner)) {
                    owner[j] = Some(i);
                    return true;
                }
            }
        }
        false
    }
    let holds = |i: usize, j: usize| counts(states[i][j]);
    let mut owner = vec![None; m];
    (0..states.len())
        .filter(|&i| place(i, &holds, &mut vec![false; m], &mut owner))
        .count()
}

/// What a check's probes share: the bound on requests in flight, and the
/// mirrors that failed to answer one, which are not asked again during
/// that check. A mirror that hangs would otherwise cost a timeout per
/// directory and per share (a check of a small tree ran past two minutes
/// with one mirror stopped).
struct Probes {
    limit: Arc<Semaphore>,
    gone: Arc<Vec<AtomicBool>>,
}

/// What one mirror holds of a directory's slot, for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotHeld {
    Version(u64),
    Nothing,
    /// Something that is not a slot its writer signed.
    Invalid,
    NoAnswer,
}

/// Per-mirror counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorTally {
    pub good: u64,
    pub corrupt: u64,
    pub unreachable: u64,
    /// Directory slots this mirror lacks or holds at an older seq.
    pub stale_slots: u64,
}

/// The result of checking (and maybe repairing) everything under a cap.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub mirrors: Vec<String>,
    pub objects: Vec<ObjectHealth>,
    pub tallies: Vec<MirrorTally>,
    pub slots: u64,
    /// Files holding the pages of large directories' listings (counted
    /// among the objects' files).
    pub pages: u64,
    pub repaired_shares: u64,
    pub repaired_slots: u64,
    pub happy: usize,
    /// Repairs that failed, with the reason.
    pub errors: Vec<String>,
    /// Files whose manifest, and directories whose listing pages, could not
    /// be read: nothing below them was checked.
    pub unreadable: Vec<String>,
    /// Stale names: paths (below the checked directory) that name a
    /// directory whose listing says it lives elsewhere, left by a move
    /// that did not finish. The mount drops such a name when it next lists
    /// the directory.
    pub misplaced: Vec<String>,
    /// Paths naming a directory already reached by another path, neither
    /// name known for stale (see [`Vault::stale_name`]): moves a crash
    /// interrupted left one directory in two places, and a change under
    /// either name shows under both.
    pub twice: Vec<String>,
    /// Directories a mirror lacks or holds at an older version, one line
    /// each, not repaired.
    pub stale: Vec<String>,
    /// Directories whose newest listing on any mirror is older than one
    /// this client has seen: rolled back (by a mirror operator, or a
    /// restored backup), one line each. Nothing here can repair them.
    pub rolled_back: Vec<String>,
    /// Directories rolled back that `accept_rollback` published again as
    /// they now are, one line each.
    pub accepted: Vec<String>,
}

impl CheckReport {
    pub fn healthy(&self) -> bool {
        self.unreadable.is_empty()
            && self.rolled_back.is_empty()
            && self.misplaced.is_empty()
            && self.twice.is_empty()
            && self.objects.iter().all(ObjectHealth::healthy)
            && self
                .tallies
                .iter()
                .all(|t| t.stale_slots == 0 && t.corrupt == 0)
    }
    pub fn unrecoverable(&self) -> usize {
        self.objects.iter().filter(|o| !o.recoverable()).count()
    }
}

impl Grid {
    /// Every coded object of a file, found with its verify-cap alone.
    pub async fn file_objects(&self, cap: &FileVerifyCap) -> Result<Vec<Object>> {
        let root = Object {
            what: "manifest root".into(),
            file: None,
            params: Params::REPLICA,
            ids: vec![cap.root],
        };
        let shares = self
            .fetch(&root.ids, Params::REPLICA, "manifest root")
            .await?;
        let node = Node::open_verify(&share::decode(Params::REPLICA, &shares)?, &cap.verify_key)?;
        if node.size != cap.size {
            return Err(chunk::Error::MalformedManifest(
                "manifest size differs from the cap".into(),
            )
            .into());
        }
        let mut out = vec![root];
        let mut chunk_no = 0usize;
        // Each object once: a chunk repeated in a file (zeros, say) is the
        // same shares, and so is a node repeated (nodes are convergent too:
        // two runs of 512 zero chunks make the same leaf). A hostile
        // writer's tree of one node under itself 512 times, and so on
        // down, had its subtree fetched and listed once per mention, 512
        // to the power of the depth. A repeat counts its chunks, so the
        // chunks after it keep their numbers in the file; one named again
        // with another length or verify key is a new object, checked.
        let mut seen: HashSet<(Vec<ShareId>, u64)> = HashSet::new();
        // Per node's shares: the lengths and verify keys it was met with.
        let mut nodes_seen: HashMap<Vec<ShareId>, Vec<(u64, crate::crypto::VerifyKey)>> =
            HashMap::new();
        let mut chunks_under: HashMap<Vec<ShareId>, usize> = HashMap::new();
        enum Step {
            Visit(Node, Vec<ShareId>),
            /// A node's subtree is done; its chunks began at this number.
            Done(Vec<ShareId>, usize),
            /// A node met again: its chunks are counted, not listed.
            Again(Vec<ShareId>),
        }
        let mut stack = vec![Step::Visit(node, vec![cap.root])];
        while let Some(step) = stack.pop() {
            let (node, ids) = match step {
                Step::Visit(node, ids) => (node, ids),
                Step::Done(ids, first) => {
                    chunks_under.insert(ids, chunk_no.saturating_sub(first));
                    continue;
                }
                Step::Again(ids) => {
                    // Saturating: a hostile tree's zero-length chunks,
                    // named 512 times at each level, pass any count.
                    chunk_no =
                        chunk_no.saturating_add(chunks_under.get(&ids).copied().unwrap_or(0));
                    continue;
                }
            };
            stack.push(Step::Done(ids, chunk_no));
            // Children go on the stack last first, so that leaves are met
            // (and chunks numbered) in file order: a damaged chunk near
            // the end of a file of several leaves was reported as chunk 0.
            let mut children = Vec::new();
            for entry in &node.entries {
                if node.depth == 0 {
                    if seen.insert((entry.shares.clone(), entry.len)) {
                        out.push(Object {
                            what: format!("chunk {chunk_no}"),
                            file: None,
                            params: node.params,
                            ids: entry.shares.clone(),
                        });
                    }
                    chunk_no = chunk_no.saturating_add(1);
                    continue;
                }
                let vk = entry.verify_key.as_ref().ok_or_else(|| {
                    chunk::Error::MalformedManifest("child node without a verify key".into())
                })?;
                let again = nodes_seen
                    .get(&entry.shares)
                    .is_some_and(|met| met.iter().any(|(len, key)| *len == entry.len && key == vk));
                if again {
                    children.push(Step::Again(entry.shares.clone()));
                    continue;
                }
                let shares = self
                    .fetch(&entry.shares, node.params, "manifest node")
                    .await?;
                let child = Node::open_verify(&share::decode(node.params, &shares)?, vk)?;
                child.fits_under(&node, entry)?;
                nodes_seen
                    .entry(entry.shares.clone())
                    .or_default()
                    .push((entry.len, vk.clone()));
                out.push(Object {
                    what: format!("manifest node (depth {})", child.depth),
                    file: None,
                    params: node.params,
                    ids: entry.shares.clone(),
                });
                children.push(Step::Visit(child, entry.shares.clone()));
            }
            stack.extend(children.into_iter().rev());
        }
        Ok(out)
    }

    /// Ask every mirror about every share of `object`.
    async fn probe(&self, object: &Object, verify: bool, probes: &Probes) -> ObjectHealth {
        let m = self.mirrors().len();
        let mut states = vec![vec![ShareState::Absent; m]; object.ids.len()];
        let mut tasks = JoinSet::new();
        // What a share must say of itself to serve this object, as a read
        // wants it (`Grid::fetch`): a valid share at another index or
        // under other erasure parameters cannot rebuild it.
        let (params, count) = (object.params, object.ids.len());
        for (i, id) in object.ids.iter().enumerate() {
            for (j, store) in self.mirrors().iter().enumerate() {
                let (store, id, limit) = (store.clone(), *id, probes.limit.clone());
                let gone = probes.gone.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    if gone[j].load(Ordering::Relaxed) {
                        return (i, j, ShareState::Unreachable);
                    }
                    // A check asks: a mirror only marked down (a read
                    // passed it over as late) failed at once without a
                    // request, and was then taken as gone for the rest of
                    // the check. Only a request that fails makes it so.
                    if store.is_down() {
                        store.revive();
                    }
                    let state = if verify {
                        match store.get_share(&id).await {
                            Ok(Some(bytes)) => match Share::verify(bytes, &id) {
                                Ok(share)
                                    if share.header().index as usize == i
                                        && (share.header().params == params || count == 1) =>
                                {
                                    ShareState::Good
                                }
                                _ => ShareState::Corrupt,
                            },
                            Ok(None) => ShareState::Absent,
                            Err(_) => ShareState::Unreachable,
                        }
                    } else {
                        match store.has_share(&id).await {
                            Ok(true) => ShareState::Good,
                            Ok(false) => ShareState::Absent,
                            Err(_) => ShareState::Unreachable,
                        }
                    };
                    (i, j, state)
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            let (i, j, state) = done.expect("probe task does not panic");
            if state == ShareState::Unreachable {
                probes.gone[j].store(true, Ordering::Relaxed);
            }
            states[i][j] = state;
        }
        let want = match object.ids.len() {
            // A replica is copied to as many mirrors as a put sends it to.
            1 => self.replica_copies(),
            n => n.min(m),
        };
        ObjectHealth {
            object: object.clone(),
            states,
            want,
        }
    }

    /// Rebuild and re-place the shares of an object that are lost or corrupt,
    /// and spread it to `happy` mirrors. Returns the shares restored, or
    /// `None` if the object needed nothing.
    async fn repair(&self, health: &ObjectHealth) -> Result<Option<u64>> {
        let obj = &health.object;
        let lost = health.lost();
        let corrupt: Vec<(usize, usize)> = health
            .states
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.iter()
                    .enumerate()
                    .filter(|(_, st)| **st == ShareState::Corrupt)
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        // Corrupt copies are about to be replaced in place, so they count
        // toward the spread.
        let spread_after = spread_of(&health.states, |s| {
            matches!(s, ShareState::Good | ShareState::Corrupt)
        });
        let under_spread = spread_after < health.want;
        if lost.is_empty() && corrupt.is_empty() && !under_spread {
            return Ok(None);
        }
        let good = self.fetch(&obj.ids, obj.params, &obj.what).await?;
        let payload = share::decode(obj.params, &good)?;
        let version = good.first().map_or(share::SHARE_VERSION, Share::version);
        let all = share::encode_as(version, obj.params, &payload)?;
        if all.iter().map(Share::id).collect::<Vec<_>>() != obj.ids {
            return Err(chunk::Error::Inconsistent.into());
        }
        let mut written = 0;
        // Corrupt copies are replaced where they are, which also restores
        // those shares if no good copy was left anywhere. One mirror that
        // refuses (full, or hostile) does not stop the rest: it stopped
        // the whole repair, and the object's lost shares were never sent
        // to the mirrors that would take them. Its share, if no good copy
        // is left, goes where placement puts it, with the lost ones.
        let mut lost = lost;
        let mut refused = None;
        for (i, j) in corrupt {
            match self.mirrors()[j]
                .repair_share(&obj.ids[i], all[i].shared_bytes())
                .await
            {
                Ok(()) => {
                    lost.retain(|&l| l != i);
                    written += 1;
                }
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        // Lost shares (and too narrow a spread) go where placement wants them.
        if !lost.is_empty() || under_spread {
            // Placement ranks mirrors by the object's first share id, so the
            // whole set goes through it: shares already held are no-ops.
            // Every mirror is asked: what one acknowledged lately is no
            // proof it still holds it.
            self.put_group_asking(&all).await?;
            // Each lost share is restored once; each mirror the object
            // spreads to gets at least one (a replica's new copy, or a
            // share that was doubled up on another mirror).
            let widened = health.want.saturating_sub(spread_after) as u64;
            written += (lost.len() as u64).max(widened);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(Some(written)),
        }
    }

    /// The raw newest slot envelope for `pk` and which mirrors lag behind.
    async fn probe_slot(
        &self,
        pk: &[u8; 32],
        probes: &Probes,
    ) -> (Option<SlotEnvelope>, Vec<SlotHeld>) {
        let mut held = vec![SlotHeld::NoAnswer; self.mirrors().len()];
        let mut best: Option<SlotEnvelope> = None;
        for (j, store) in self.mirrors().iter().enumerate() {
            if probes.gone[j].load(Ordering::Relaxed) {
                continue;
            }
            held[j] = match store.get_slot(pk).await {
                Err(_) => {
                    probes.gone[j].store(true, Ordering::Relaxed);
                    SlotHeld::NoAnswer
                }
                Ok(None) => SlotHeld::Nothing,
                Ok(Some(bytes)) => match SlotEnvelope::decode(&bytes) {
                    Ok(env) if env.public_key == *pk && env.verify().is_ok() => {
                        let seq = env.seq;
                        if best.as_ref().is_none_or(|b| seq > b.seq) {
                            best = Some(env);
                        }
                        SlotHeld::Version(seq)
                    }
                    _ => SlotHeld::Invalid,
                },
            };
        }
        (best, held)
    }

    /// Renew the leases of `ids` on every mirror. Returns, per mirror,
    /// what it lacks and what it refused, or the error it gave; and the ids
    /// no mirror that answered holds (lost shares or slots: nothing renews
    /// them, and `check --repair` is what may bring them back).
    pub async fn renew(&self, ids: &[[u8; 32]]) -> Renewal {
        let mut per_mirror = Vec::new();
        let mut nowhere: Option<HashSet<[u8; 32]>> = None;
        for store in self.mirrors() {
            let result = store.renew(ids).await.map(|renewed| {
                // Not to be skipped as lately placed: the mirror lacks
                // them, or their leases are running out there.
                self.forget_placed(&renewed.missing);
                self.forget_placed(&renewed.refused);
                let tally = MirrorRenewal {
                    missing: renewed.missing.len(),
                    refused: renewed.refused.len(),
                    reason: renewed.reason,
                };
                let missing: HashSet<[u8; 32]> = renewed.missing.into_iter().collect();
                nowhere = Some(match nowhere.take() {
                    None => missing,
                    Some(before) => before.intersection(&missing).copied().collect(),
                });
                tally
            });
            per_mirror.push((store.name().to_string(), result));
        }
        Renewal {
            per_mirror,
            nowhere: nowhere.map_or(0, |n| n.len()),
        }
    }
}

/// What one mirror did with a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRenewal {
    /// Ids it does not hold.
    pub missing: usize,
    /// Ids it holds and would not renew: their leases run out.
    pub refused: usize,
    /// Why, as the mirror put it.
    pub reason: Option<String>,
}

/// What [`Grid::renew`] did.
pub struct Renewal {
    /// Per mirror: what it lacked and refused, or its error.
    pub per_mirror: Vec<(String, Result<MirrorRenewal>)>,
    /// How many ids no mirror that answered holds.
    pub nowhere: usize,
}

/// How far a check goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Download and hash every share instead of asking for it.
    pub verify: bool,
    /// Rebuild missing or corrupt shares and stale slots.
    pub repair: bool,
    /// With `repair`: take a directory rolled back on every mirror as it
    /// now is, publishing its listing again above the version seen, so it
    /// can be read and changed again. What the rollback lost stays lost.
    pub accept_rollback: bool,
}

impl Vault {
    /// Check (and with `repair`, fix) everything `cap` reaches: for a file,
    /// its shares; for a directory, its slot on every mirror and, with a
    /// read-cap, everything below it.
    pub async fn check(&self, cap: &Cap, verify: bool, repair: bool) -> Result<CheckReport> {
        let options = CheckOptions {
            verify,
            repair,
            accept_rollback: false,
        };
        self.check_with(cap, options).await
    }

    /// [`Self::check`], with every option.
    pub async fn check_with(&self, cap: &Cap, options: CheckOptions) -> Result<CheckReport> {
        let CheckOptions {
            verify,
            repair,
            accept_rollback,
        } = options;
        let grid = self.grid();
        let m = grid.mirrors().len();
        let mut report = CheckReport {
            mirrors: grid
                .mirrors()
                .iter()
                .map(|s| s.name().to_string())
                .collect(),
            tallies: vec![MirrorTally::default(); m],
            happy: grid.happy(),
            ..Default::default()
        };
        let probes = Probes {
            limit: Arc::new(Semaphore::new(PROBES)),
            gone: Arc::new(
                (0..grid.mirrors().len())
                    .map(|_| AtomicBool::new(false))
                    .collect(),
            ),
        };
        // A first question to every mirror at once, with a short wait: one
        // that does not answer is left out from the start, rather than
        // holding the first directory's probe for a read's timeout.
        let mut asks = JoinSet::new();
        for (j, store) in grid.mirrors().iter().enumerate() {
            let store = store.clone();
            asks.spawn(async move { (j, store.has_share(&[0; 32]).await.is_err()) });
        }
        while let Some(asked) = asks.join_next().await {
            let (j, silent) = asked.expect("probe task does not panic");
            probes.gone[j].store(silent, Ordering::Relaxed);
        }
        // Each with what to call it in the report: its path, when the
        // walk came to it through one.
        let mut files: Vec<(FileVerifyCap, Option<String>)> = Vec::new();
        // Each with the directory it was named in, and its path.
        let mut dirs: Vec<(Cap, Option<DirReadCap>, String)> =
            vec![(cap.clone(), None, String::new())];
        let mut seen_slots = BTreeSet::new();
        // The home each opened listing names (as far as this tree's root
        // opens it), by slot.
        let mut homes: HashMap<[u8; 32], Option<DirReadCap>> = HashMap::new();
        // Slots a stale name of which was found (their other name is not
        // also reported).
        let mut stale_named = BTreeSet::new();
        let mut first = true;
        while let Some((dir, named_in, path)) = dirs.pop() {
            // Below the top, a directory that cannot be read is reported
            // and the rest of the tree is still checked.
            let top = std::mem::replace(&mut first, false);
            let pk = match &dir {
                Cap::FileRead(f) => {
                    files.push((f.verify_cap(), (!top).then(|| format!("/{path}"))));
                    continue;
                }
                Cap::FileVerify(f) => {
                    files.push((f.clone(), (!top).then(|| format!("/{path}"))));
                    continue;
                }
                Cap::DirWrite(w) => w.read_cap().public_key,
                Cap::DirRead(r) => r.public_key,
                Cap::DirVerify(v) => v.public_key,
            };
            if !seen_slots.insert(pk) {
                // A second name of one directory: one of them is stale.
                if let (Some(parent), Some(Some(home)), Some(read)) =
                    (&named_in, homes.get(&pk), dir.clone().into_dir_read().ok())
                    && self.stale_name(parent, home, &read).await
                {
                    report.misplaced.push(format!("/{path}"));
                } else if named_in.is_some()
                    && dir.clone().into_dir_read().is_ok()
                    && !stale_named.contains(&pk)
                {
                    report.twice.push(format!("/{path}"));
                }
                continue;
            }
            // What this client saw before (the mount's, kept on disk):
            // taken before the probe, which notes what it finds.
            let seen = grid.seen_seq(&pk);
            let (best, seqs) = grid.probe_slot(&pk, &probes).await;
            // A new identity's root, never published: an empty tree, with
            // nothing to check, once enough mirrors say they hold none that
            // none of the happy ones it would be on is silent (as a read
            // takes it, `Grid::new_if_none`). With every mirror away it
            // was taken as empty, and the check said healthy.
            let absent = seqs.iter().filter(|h| **h == SlotHeld::Nothing).count();
            if best.is_none() && top && grid.new_if_none(&pk, absent) {
                continue;
            }
            report.slots += 1;
            let Some(best) = best else {
                if top {
                    return Err(Error::NoSlot(hex(&pk)));
                }
                let what = label(&dir);
                report
                    .unreadable
                    .push(format!("{what}: no mirror holds its slot"));
                continue;
            };
            let rolled_back = seen.filter(|&seen| seen > best.seq).map(|seen| {
                format!(
                    "/{path}: the newest listing any mirror holds is version {}, \
                     older than version {seen}, which this client has seen",
                    best.seq
                )
            });
            // Taken as it is (below, once its listing is whole), or named.
            let accepting = match (&dir, rolled_back) {
                (Cap::DirWrite(w), Some(line)) if repair && accept_rollback => {
                    Some((w.clone(), seen.unwrap_or_default(), line))
                }
                (_, Some(line)) => {
                    report.rolled_back.push(line);
                    None
                }
                (_, None) => None,
            };
            for (j, held) in seqs.iter().enumerate() {
                if *held != SlotHeld::Version(best.seq) {
                    report.tallies[j].stale_slots += 1;
                    // Not sent to a mirror that did not answer the read:
                    // a hung one cost each directory its write timeout.
                    if repair
                        && *held != SlotHeld::NoAnswer
                        && grid.mirrors()[j].put_slot(&best.encode()).await.is_ok()
                    {
                        report.tallies[j].stale_slots -= 1;
                        report.repaired_slots += 1;
                    } else {
                        let mirror = grid.mirrors()[j].name();
                        let newest = best.seq;
                        report.stale.push(match held {
                            SlotHeld::Version(seq) => format!(
                                "/{path}: {mirror} holds version {seq} of its listing, \
                                 the newest is version {newest}"
                            ),
                            SlotHeld::Nothing => format!(
                                "/{path}: {mirror} holds no copy of its listing, \
                                 the newest is version {newest}"
                            ),
                            SlotHeld::Invalid => format!(
                                "/{path}: {mirror} holds a copy of its listing its writer \
                                 did not sign, the newest is version {newest}"
                            ),
                            SlotHeld::NoAnswer => format!(
                                "/{path}: {mirror} did not answer for its listing, \
                                 the newest is version {newest}"
                            ),
                        });
                    }
                }
            }
            let read: Option<DirReadCap> = match &dir {
                Cap::DirWrite(w) => Some(w.read_cap()),
                Cap::DirRead(r) => Some(r.clone()),
                _ => None,
            };
            if let Some(read) = read {
                let mut listing = match best.open(&read) {
                    Ok(listing) => listing,
                    Err(e) if top => return Err(e.into()),
                    Err(e) => {
                        if let Some((_, _, line)) = accepting {
                            report.rolled_back.push(line);
                        }
                        report.unreadable.push(format!("{}: {e}", label(&dir)));
                        continue;
                    }
                };
                let home = listing
                    .home
                    .as_ref()
                    .and_then(|h| h.open(self.root(), &read));
                if let (Some(parent), Some(home)) = (&named_in, &home)
                    && self.stale_name(parent, home, &read).await
                {
                    report.misplaced.push(format!("/{path}"));
                    stale_named.insert(pk);
                }
                homes.insert(pk, home);
                // A paged listing's pages are files of the directory's own,
                // checked (and repaired) even if one cannot be read now.
                let pages_of = format!("listing page of /{path}");
                files.extend(
                    listing
                        .pages
                        .iter()
                        .map(|p| (p.verify_cap(), Some(pages_of.clone()))),
                );
                report.pages += listing.pages.len() as u64;
                if let Err(e) = self.fill(&mut listing).await {
                    if let Some((_, _, line)) = accepting {
                        report.rolled_back.push(line);
                    }
                    report.unreadable.push(format!("{}: {e}", label(&dir)));
                    continue;
                }
                if let Some((write, seen, line)) = accepting {
                    let seq = super::vault::next_seq(Some(seen));
                    match self.publish_dir(&write, seq, &mut listing.clone()).await {
                        Ok(()) => {
                            report.repaired_slots += 1;
                            report.accepted.push(format!("/{path}: now version {seq}"));
                        }
                        Err(e) => {
                            report.rolled_back.push(line);
                            report
                                .errors
                                .push(format!("/{path}: taking it as it is: {e}"));
                        }
                    }
                }
                // The root's link table holds the current cap of every
                // hard-linked file; its names may hold older snapshots.
                let caps = listing
                    .entries
                    .into_iter()
                    .chain(listing.links.into_iter().map(|(id, e)| (hex(&id), e)));
                // Below a write-cap, write-caps (opened from their parent's),
                // so a repair may publish a directory again.
                let write = match &dir {
                    Cap::DirWrite(w) => Some(w.clone()),
                    _ => None,
                };
                dirs.extend(caps.filter_map(|(name, e)| {
                    let own = write
                        .as_ref()
                        .and_then(|w| e.write_cap(w, &name).ok().flatten())
                        .map(Cap::DirWrite);
                    let child = match path.as_str() {
                        "" => name,
                        p => format!("{p}/{name}"),
                    };
                    Some((own.or(e.cap)?, Some(read.clone()), child))
                }));
            }
        }
        for (file, named) in files {
            let objects = match grid.file_objects(&file).await {
                Ok(objects) => objects,
                Err(e) => {
                    let what = named.unwrap_or_else(|| label(&Cap::FileVerify(file.clone())));
                    report.unreadable.push(format!("{what}: {e}"));
                    continue;
                }
            };
            for mut object in objects {
                object.file.clone_from(&named);
                let mut health = grid.probe(&object, verify, &probes).await;
                if repair && health.recoverable() {
                    match grid.repair(&health).await {
                        Ok(None) => {}
                        Ok(Some(written)) => {
                            report.repaired_shares += written;
                            health = grid.probe(&object, verify, &probes).await;
                        }
                        Err(e) => report.errors.push(match &object.file {
                            Some(f) => format!("{f}: {}: {e}", object.what),
                            None => format!("{}: {e}", object.what),
                        }),
                    }
                }
                for row in &health.states {
                    for (j, state) in row.iter().enumerate() {
                        match state {
                            ShareState::Good => report.tallies[j].good += 1,
                            ShareState::Corrupt => report.tallies[j].corrupt += 1,
                            ShareState::Unreachable => report.tallies[j].unreachable += 1,
                            ShareState::Absent => {}
                        }
                    }
                }
                report.objects.push(health);
            }
        }
        Ok(report)
    }

    /// Every object id (share ids and slot keys) reachable from `cap`, and
    /// what could not be read on the way: one file or directory that cannot
    /// be read now does not keep the rest of a tree from its renewal.
    /// Fails only if `cap` itself cannot be read.
    pub async fn reachable_ids(&self, cap: &Cap) -> Result<Reach> {
        let grid = self.grid();
        let mut reach = Reach::default();
        let mut ids = BTreeSet::new();
        let mut stack = vec![cap.clone()];
        let mut first = true;
        while let Some(c) = stack.pop() {
            let top = std::mem::replace(&mut first, false);
            let result = match &c {
                Cap::FileRead(f) => reach_file(grid, &f.verify_cap(), &mut ids).await,
                Cap::FileVerify(f) => reach_file(grid, f, &mut ids).await,
                Cap::DirVerify(v) => {
                    ids.insert(v.public_key);
                    Ok(())
                }
                Cap::DirWrite(_) | Cap::DirRead(_) => {
                    let read = c.clone().into_dir_read()?;
                    if !ids.insert(read.public_key) {
                        continue;
                    }
                    self.reach_dir(&read, &mut stack, &mut reach).await
                }
            };
            match result {
                Err(e) if top => return Err(e),
                Err(e) => {
                    let what = label(&c);
                    tracing::warn!(%what, error = %e, "unreadable: what it holds is not reached");
                    reach.unreadable.push(format!("{what}: {e}"));
                }
                Ok(()) => {}
            }
        }
        reach.ids = ids.into_iter().collect();
        Ok(reach)
    }

    /// Push what directory `read` names (its pages first) onto `stack`.
    /// Fails if its slot cannot be read. A page that cannot be read goes
    /// into `reach`; what the other pages name is still reached (one lost
    /// page had kept a whole directory's subtree from its renewal, and so
    /// from its leases, for good).
    async fn reach_dir(
        &self,
        read: &DirReadCap,
        stack: &mut Vec<Cap>,
        reach: &mut Reach,
    ) -> Result<()> {
        let Some((_, listing)) = self.grid().get_slot(read).await? else {
            return Ok(());
        };
        stack.extend(listing.pages.iter().cloned().map(Cap::FileRead));
        // The root's link table holds the current cap of every
        // hard-linked file; its names may hold older snapshots.
        if !listing.is_pending() {
            let caps = listing
                .entries
                .into_values()
                .chain(listing.links.into_values());
            stack.extend(caps.filter_map(|e| e.cap));
            return Ok(());
        }
        for (i, page) in self.page_entries(&listing).await.into_iter().enumerate() {
            match page {
                Ok(entries) => stack.extend(entries.into_iter().filter_map(|e| e.cap)),
                Err(e) => {
                    let what = label(&Cap::DirRead(read.clone()));
                    tracing::warn!(%what, page = i, error = %e, "a listing page is unreadable: its entries are not reached");
                    reach
                        .unreadable
                        .push(format!("{what}, listing page {i}: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// What [`Vault::reachable_ids`] found.
#[derive(Debug, Default)]
pub struct Reach {
    pub ids: Vec<[u8; 32]>,
    /// Files and directories that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// Add the share ids of `file` to `ids`.
async fn reach_file(grid: &Grid, file: &FileVerifyCap, ids: &mut BTreeSet<[u8; 32]>) -> Result<()> {
    let objects = grid.file_objects(file).await?;
    ids.extend(objects.into_iter().flat_map(|o| o.ids));
    Ok(())
}

/// How a report names what `cap` points at: a file by its root share id, a
/// directory by its slot key.
fn label(cap: &Cap) -> String {
    match cap {
        Cap::FileRead(f) => format!("file {}", hex(&f.root)),
        Cap::FileVerify(f) => format!("file {}", hex(&f.root)),
        Cap::DirWrite(w) => format!("directory {}", hex(&w.read_cap().public_key)),
        Cap::DirRead(r) => format!("directory {}", hex(&r.public_key)),
        Cap::DirVerify(v) => format!("directory {}", hex(&v.public_key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShareState::{Absent as O, Corrupt as X, Good as G};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A grid of `n` in-memory stores coding k-of-n, every upload to all.
    fn memory_grid(k: u8, n: u8) -> (Grid, Vec<Arc<crate::store::MemoryStorage>>) {
        let stores: Vec<Arc<crate::store::MemoryStorage>> = (0..n)
            .map(|i| Arc::new(crate::store::MemoryStorage::named(&format!("m{i}"))))
            .collect();
        let mirrors = stores
            .iter()
            .map(|s| s.clone() as Arc<dyn crate::store::Storage>)
            .collect();
        let config = crate::store::GridConfig {
            k,
            n,
            happy: n as usize,
        };
        (Grid::new(mirrors, config).unwrap(), stores)
    }

    /// The spread pairs each mirror with a share of its own.
    #[test]
    fn the_spread_counts_each_mirror_for_a_share_of_its_own() {
        let spread = |states: &[[ShareState; 4]]| {
            let states: Vec<Vec<ShareState>> = states.iter().map(|s| s.to_vec()).collect();
            spread_of(&states, |s| s == G)
        };
        // Mirrors A B C D; shares 0, 1, 2 by row. A{0,2} B{1} D{1}: losing
        // A leaves share 1 alone, so two, not the three mirrors holding any.
        assert_eq!(spread(&[[G, O, O, O], [O, G, O, G], [G, O, O, O]]), 2);
        // Share 2 back on C: three.
        assert_eq!(spread(&[[G, O, O, O], [O, G, O, G], [G, O, G, O]]), 3);
        // A{0,1}, B{0}: an augmenting path gives each its own.
        assert_eq!(spread(&[[G, G, O, O], [G, O, O, O], [O, O, O, O]]), 2);
        // Corrupt copies count for nothing.
        assert_eq!(spread(&[[X, O, O, O], [O, X, O, O], [O, O, G, O]]), 1);
        // One share (a replica) spans every mirror that holds it.
        assert_eq!(spread_of(&[vec![G, O, G, G]], |s| s == G), 3);
    }

    /// A file of `chunks`, one replica each, stored on a grid of one
    /// in-memory store: the grid, the file's cap, and each chunk's share
    /// ids as its push gave them.
    async fn stored_file(
        chunks: impl Iterator<Item = String>,
    ) -> (Grid, crate::caps::FileReadCap, Vec<Vec<ShareId>>) {
        let secret = crate::crypto::RootSecret::from_bytes([7; 32]);
        let (grid, _) = memory_grid(1, 1);
        let mut encoder =
            crate::chunk::manifest::FileEncoder::new(secret.convergence(), Params::REPLICA);
        let mut chunk_ids = Vec::new();
        for chunk in chunks {
            let groups = encoder.push_chunk(chunk.as_bytes());
            chunk_ids.push(groups[0].iter().map(Share::id).collect());
            for group in &groups {
                grid.put_group(group).await.unwrap();
            }
        }
        let (cap, groups) = encoder.finish();
        for group in &groups {
            grid.put_group(group).await.unwrap();
        }
        (grid, cap, chunk_ids)
    }

    /// A file of more than one leaf: its chunks are numbered in file
    /// order, each name beside the shares of that very chunk (a damaged
    /// chunk near the end of a file of several leaves was reported as
    /// chunk 0, since the leaves were visited last first).
    #[test]
    fn chunks_are_numbered_in_file_order_across_leaves() {
        use crate::chunk::manifest::FANOUT;
        block_on(async {
            // Two leaves and a bit: chunk n is the bytes of n.
            let count = FANOUT * 2 + 3;
            let (grid, cap, chunk_ids) =
                stored_file((0..count).map(|n| format!("chunk {n}"))).await;
            let objects = grid.file_objects(&cap.verify_cap()).await.unwrap();
            let chunks: Vec<&Object> = objects
                .iter()
                .filter(|o| o.what.starts_with("chunk "))
                .collect();
            assert_eq!(chunks.len(), count);
            for (n, object) in chunks.iter().enumerate() {
                assert_eq!(object.what, format!("chunk {n}"));
                assert_eq!(
                    object.ids, chunk_ids[n],
                    "chunk {n} lists the shares of another chunk"
                );
            }
        });
    }

    /// A chunk that repeats in a file is one object, listed at its first
    /// place, and so is a repeated node (nodes are convergent: two runs
    /// of the same chunks make the same leaf), whose chunks are counted
    /// so that the chunks after it keep their numbers in the file. The
    /// walk lists (and a check probes, and a node fetches) each once,
    /// which also bounds a hostile tree that names one node under itself
    /// many times.
    #[test]
    fn a_repeated_chunk_or_node_is_one_object() {
        use crate::chunk::manifest::FANOUT;
        block_on(async {
            // Two leaves alike, each the same three chunks over and over,
            // then three chunks of their own.
            let chunks = (0..FANOUT * 2)
                .map(|n| format!("chunk {}", n % FANOUT % 3))
                .chain((0..3).map(|n| format!("tail {n}")));
            let (grid, cap, _) = stored_file(chunks).await;
            let objects = grid.file_objects(&cap.verify_cap()).await.unwrap();
            let named = |prefix: &str| -> Vec<String> {
                objects
                    .iter()
                    .map(|o| o.what.clone())
                    .filter(|w| w.starts_with(prefix))
                    .collect()
            };
            let tail = FANOUT * 2;
            assert_eq!(
                named("chunk "),
                [0, 1, 2, tail, tail + 1, tail + 2].map(|n| format!("chunk {n}"))
            );
            assert_eq!(named("manifest node").len(), 2, "{:?}", named("manifest"));
        });
    }

    /// An object stored in share format 1 (named by SHA-256, before
    /// BLAKE3) is repaired in format 1: its lost share comes back under
    /// the id its parent lists. Rebuilt in format 2 it was refused as
    /// inconsistent.
    #[test]
    fn a_format_1_object_is_repaired_in_format_1() {
        block_on(async {
            let (grid, stores) = memory_grid(2, 3);
            let params = Params::new(2, 3).unwrap();
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
            let shares = share::encode_as(1, params, &payload).unwrap();
            assert!(shares.iter().all(|s| s.version() == 1));
            assert_eq!(share::decode(params, &shares).unwrap(), payload);
            grid.put_group(&shares).await.unwrap();
            let ids: Vec<ShareId> = shares.iter().map(Share::id).collect();
            let lost = ids[1];
            assert!(stores.iter().any(|s| s.lose(&lost)), "share 1 was stored");
            let object = Object {
                what: "an old chunk".into(),
                file: None,
                params,
                ids: ids.clone(),
            };
            let probes = Probes {
                limit: Arc::new(Semaphore::new(16)),
                gone: Arc::new((0..3).map(|_| AtomicBool::new(false)).collect()),
            };
            let health = grid.probe(&object, false, &probes).await;
            assert_eq!(health.lost(), vec![1]);
            let restored = grid.repair(&health).await.unwrap();
            assert_eq!(restored, Some(1));
            assert!(
                stores.iter().any(|s| s.share_ids().contains(&lost)),
                "the lost share did not come back under its id"
            );
        });
    }
}
