//! One miner's connection: subscription, authorization, difficulty, and the
//! full validation of every share it submits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use super::stratum::{self, Call, Request, Submit, code};
use super::{Difficulty, Job, JobBook, Vardiff, build_header, hash_meets, sha256d};

/// The BIP310 version bits a mirror lets miners roll.
pub const VERSION_ROLLING_MASK: u32 = 0x1fff_e000;
/// How far past a job's time (or now, if later) ntime may go. Bitcoin
/// allows two hours; a pool that forwards shares upstream must stay well
/// inside that.
pub const NTIME_SLACK: u32 = 600;
/// Bound on remembered shares per connection (duplicate detection).
const MAX_SEEN: usize = 200_000;

/// Works whose difficulty a session remembers (an upstream sends some
/// dozens an hour; the same work sent again adds none).
const MAX_WORKS: usize = 256;

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub initial: Difficulty,
    pub min: Difficulty,
    pub max: Difficulty,
    /// Seconds per share that vardiff steers toward.
    pub target_interval: f64,
    /// The version bits this session may let its miner roll: normally
    /// `VERSION_ROLLING_MASK`; behind a proxy, only what the upstream pool
    /// granted (a share with bits it did not grant is worthless there).
    pub version_mask: u32,
}

/// A share that passed every check. Credit it, then answer `id`.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: Value,
    pub account: [u8; 32],
    pub worker: String,
    pub difficulty: Difficulty,
    pub hash: [u8; 32],
    pub job: Arc<Job>,
    pub submit: Submit,
    pub version: u32,
    /// The session's extranonce1 (a proxy forwards the share with it).
    pub extranonce1: Vec<u8>,
}

/// Why a share was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: i64,
    pub message: &'static str,
}

/// What to do after handling a line.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Send these lines.
    Reply(Vec<String>),
    /// A valid share: credit it atomically, then answer it.
    Accepted(Box<Accepted>),
}

type ShareKey = (String, Vec<u8>, u32, u32, u32);

/// Per-connection protocol state.
pub struct Session {
    cfg: SessionConfig,
    subscribed: bool,
    authorized: Option<([u8; 32], String)>,
    /// The difficulty the next job is sent at, unless its work went out
    /// before ([`Session::send_job`]).
    difficulty: Difficulty,
    /// The difficulty last said to the miner (`mining.set_difficulty`).
    told: Difficulty,
    /// The work ([`Job::work`]) of each job still in the book that was
    /// sent on this connection.
    sent: HashMap<String, [u8; 32]>,
    /// The difficulty each work went out at, the first time: a share is
    /// checked and credited at its work's, never at one set after (see
    /// [`Session::send_job`], [`Session::validate`]). Kept past the book
    /// (an upstream may send the same work again as a clean job), the
    /// [`MAX_WORKS`] newest, in `work_order`, oldest first.
    works: HashMap<[u8; 32], Difficulty>,
    work_order: VecDeque<[u8; 32]>,
    version_mask: u32,
    seen: HashSet<ShareKey>,
    vardiff: Vardiff,
    pub accepted: u64,
    pub rejected: u64,
}

/// The longest worker name a session takes: the account's 64 hex digits,
/// a dot and a rig name of up to 95 bytes (lode's own miner sends the
/// account alone). Every accepted share records its worker in the ledger,
/// which had no other bound on it: a name of 16,000 bytes made each
/// share's row 16 KB (found by a helper's sweep).
pub const MAX_WORKER_BYTES: usize = 160;

/// The account a worker name names: `<64 hex>` or `<64 hex>.<rig>`.
pub fn account_of(worker: &str) -> Option<[u8; 32]> {
    let hex = worker.split('.').next()?;
    crate::protocol::parse_hex::<32>(hex).ok()
}

impl Session {
    pub fn new(cfg: SessionConfig, now_ms: i64) -> Session {
        Session {
            vardiff: Vardiff::new(cfg.target_interval, cfg.min, cfg.max, now_ms),
            difficulty: cfg.initial.clamp(cfg.min, cfg.max),
            told: cfg.initial.clamp(cfg.min, cfg.max),
            cfg,
            subscribed: false,
            authorized: None,
            sent: HashMap::new(),
            works: HashMap::new(),
            work_order: VecDeque::new(),
            version_mask: 0,
            seen: HashSet::new(),
            accepted: 0,
            rejected: 0,
        }
    }

    pub fn difficulty(&self) -> Difficulty {
        self.difficulty
    }

    pub fn account(&self) -> Option<[u8; 32]> {
        self.authorized.as_ref().map(|(a, _)| *a)
    }

    /// Set the difficulty of the jobs sent from now on; jobs sent before
    /// keep theirs.
    fn set_difficulty(&mut self, d: Difficulty) -> Option<String> {
        let d = self.vardiff.clamp(d);
        if d == self.difficulty {
            return None;
        }
        self.difficulty = d;
        self.tell(d, false)
    }

    /// `mining.set_difficulty` for `d`, if the miner was told another (or
    /// `always`).
    fn tell(&mut self, d: Difficulty, always: bool) -> Option<String> {
        if d == self.told && !always {
            return None;
        }
        self.told = d;
        Some(stratum::set_difficulty(d))
    }

    /// `job`'s notification, remembering the difficulty it goes out at,
    /// and that difficulty said first if the miner was told another.
    ///
    /// A job whose work went out before (the same job again, after a second
    /// `mining.subscribe`; or another job of the same work with only a
    /// fresh ntime, as pools send) goes out at the difficulty that work
    /// first went out at. A share found on one such job, with an ntime as
    /// late as the other's, is a share of both: the work has one price, or
    /// the miner picks the better one after seeing its hashes. Raised for
    /// the second job, a miner held back its best hashes, raised its
    /// difficulty (`suggest_difficulty`, or a burst for vardiff) and was
    /// paid them at the raised price; lowered, it sent its rich hashes at
    /// once at the first price and the rest later at the second (found by
    /// three reviews). The session's own difficulty holds from the next
    /// new work on.
    fn send_job(&mut self, job: &Job, book: &JobBook, always_tell: bool) -> Vec<String> {
        self.sent.retain(|id, _| book.get(id).is_some());
        let work = job.work();
        let at = match self.works.get(&work) {
            Some(&d) => d,
            None => {
                self.remember_work(work);
                self.difficulty
            }
        };
        self.sent.insert(job.id.clone(), work);
        let mut lines: Vec<String> = self.tell(at, always_tell).into_iter().collect();
        lines.push(stratum::notify(job));
        lines
    }

    /// The works of the jobs in `book` and the difficulty each went out at
    /// here: what a connection that gets this one's extranonce part next
    /// must keep ([`Session::inherit`]).
    pub fn works_in(&self, book: &JobBook) -> Vec<([u8; 32], Difficulty)> {
        let live: HashSet<[u8; 32]> = book.jobs().map(|j| j.work()).collect();
        self.works
            .iter()
            .filter(|(w, _)| live.contains(*w))
            .map(|(w, d)| (*w, *d))
            .collect()
    }

    /// Keep the prices an earlier connection with the same extranonce part
    /// set: its headers are this one's, so a work it priced has that price
    /// here too. Were it priced afresh, a miner that hashed the running
    /// work for every part could cycle connections and choose each part's
    /// price after seeing its hashes.
    pub fn inherit(&mut self, works: &[([u8; 32], Difficulty)]) {
        for &(work, d) in works {
            if let std::collections::hash_map::Entry::Vacant(e) = self.works.entry(work) {
                e.insert(d);
                self.work_order.push_back(work);
            }
        }
    }

    /// Remember `work` at the session's difficulty, forgetting the oldest
    /// work past [`MAX_WORKS`] unless a job in the book still has it.
    fn remember_work(&mut self, work: [u8; 32]) {
        self.works.insert(work, self.difficulty);
        self.work_order.push_back(work);
        let mut turns = self.work_order.len();
        while self.work_order.len() > MAX_WORKS && turns > 0 {
            turns -= 1;
            let oldest = self.work_order.pop_front().expect("longer than the bound");
            if self.sent.values().any(|w| *w == oldest) {
                self.work_order.push_back(oldest);
            } else {
                self.works.remove(&oldest);
            }
        }
    }

    /// Whether this miner's shares come so much faster than vardiff aims
    /// for that its difficulty should rise now, not at the next job: the
    /// pool may then make new work early (a mirror's own job source does).
    pub fn wants_new_work(&self, now_ms: i64) -> bool {
        self.vardiff.too_fast(self.difficulty, now_ms)
    }

    /// Bound this session's difficulty by `cap` from its next job on: a
    /// proxy's upstream difficulty. Above it, shares the upstream would
    /// pay for were refused here as too easy and never forwarded, while
    /// the miner was credited the higher difficulty for the fewer it sent.
    pub fn cap_difficulty(&mut self, cap: Option<Difficulty>) {
        self.vardiff.set_ceiling(cap);
    }

    /// Lines to send for a new job: difficulty first if vardiff moved it,
    /// a cap ([`Session::cap_difficulty`]) now holds it lower, or the job's
    /// work went out before at a lower one ([`Session::send_job`]).
    pub fn on_job(&mut self, job: &Job, book: &JobBook, now_ms: i64) -> Vec<String> {
        if job.clean || self.seen.len() > MAX_SEEN {
            self.seen.retain(|k| book.get(&k.0).is_some());
        }
        let wanted = self
            .vardiff
            .retarget(self.told, now_ms)
            .unwrap_or(self.difficulty);
        self.difficulty = self.vardiff.clamp(wanted);
        self.send_job(job, book, false)
    }

    /// Handle one request.
    pub fn handle(&mut self, call: Call, book: &JobBook, now_ms: i64) -> Outcome {
        let id = call.id.clone();
        let reply = |lines: Vec<String>| Outcome::Reply(lines);
        match call.request {
            Request::Subscribe => {
                self.subscribed = true;
                // Told in full below, so any cap may take hold at once.
                self.difficulty = self.vardiff.clamp(self.difficulty);
                let en1 = data_encoding::HEXLOWER.encode(&self.cfg.extranonce1);
                let result = json!([
                    [["mining.set_difficulty", en1], ["mining.notify", en1]],
                    en1,
                    self.cfg.extranonce2_size
                ]);
                let mut lines = vec![stratum::ok(&id, result)];
                match book.current() {
                    Some(job) => lines.extend(self.send_job(&job, book, true)),
                    None => lines.extend(self.tell(self.difficulty, true)),
                }
                reply(lines)
            }
            Request::Authorize { worker } if worker.len() > MAX_WORKER_BYTES => {
                reply(vec![stratum::err(
                    &id,
                    code::UNAUTHORIZED,
                    &format!("worker name longer than {MAX_WORKER_BYTES} bytes"),
                )])
            }
            Request::Authorize { worker } => match account_of(&worker) {
                Some(account) if self.subscribed => {
                    self.authorized = Some((account, worker));
                    reply(vec![stratum::ok(&id, json!(true))])
                }
                Some(_) => reply(vec![stratum::err(
                    &id,
                    code::NOT_SUBSCRIBED,
                    "not subscribed",
                )]),
                None => reply(vec![stratum::err(
                    &id,
                    code::UNAUTHORIZED,
                    "worker must be <account hex>[.rig]",
                )]),
            },
            Request::Configure { version_mask } => {
                let mut result = serde_json::Map::new();
                if let Some(asked) = version_mask {
                    self.version_mask = asked & self.cfg.version_mask & VERSION_ROLLING_MASK;
                    result.insert("version-rolling".into(), json!(self.version_mask != 0));
                    result.insert(
                        "version-rolling.mask".into(),
                        json!(format!("{:08x}", self.version_mask)),
                    );
                }
                reply(vec![stratum::ok(&id, Value::Object(result))])
            }
            Request::SuggestDifficulty(d) => {
                let mut lines = vec![stratum::ok(&id, json!(true))];
                // A suggestion may only raise difficulty: lowering it would
                // let one miner flood the ledger with tiny shares; vardiff
                // lowers it when shares are really too rare. It holds from
                // the next job on, like any change: a share already found
                // does not become worth more by asking after.
                // Compared once bounded (a proxy's cap may have fallen
                // since the last job): a raise must never lower it.
                let raise = Difficulty::from_f64(d)
                    .map(|d| self.vardiff.clamp(d))
                    .filter(|&d| d > self.difficulty);
                if let Some(line) = raise.and_then(|d| self.set_difficulty(d)) {
                    lines.push(line);
                }
                reply(lines)
            }
            Request::ExtranonceSubscribe => reply(vec![stratum::ok(&id, json!(true))]),
            Request::Unknown(_) => reply(vec![stratum::err(&id, code::OTHER, "unknown method")]),
            Request::Submit(submit) => match self.validate(id.clone(), submit, book, now_ms) {
                Ok(accepted) => {
                    self.accepted += 1;
                    self.vardiff.record_share();
                    Outcome::Accepted(Box::new(accepted))
                }
                Err(r) => {
                    self.rejected += 1;
                    reply(vec![stratum::err(&id, r.code, r.message)])
                }
            },
        }
    }

    fn validate(
        &mut self,
        id: Value,
        s: Submit,
        book: &JobBook,
        now_ms: i64,
    ) -> Result<Accepted, Reject> {
        let reject = |code, message| Err(Reject { code, message });
        if !self.subscribed {
            return reject(code::NOT_SUBSCRIBED, "not subscribed");
        }
        let Some((account, worker)) = self.authorized.clone() else {
            return reject(code::UNAUTHORIZED, "not authorized");
        };
        if account_of(&s.worker) != Some(account) {
            return reject(
                code::UNAUTHORIZED,
                "worker not authorized on this connection",
            );
        }
        let Some(job) = book.get(&s.job_id) else {
            return reject(code::STALE, "job not found or stale");
        };
        // Checked and credited at the difficulty the job was sent at. The
        // current one let a miner with a hash far above it raise the
        // difficulty (`mining.suggest_difficulty`) before submitting, and
        // be paid the share's whole worth; and work done at a difficulty
        // vardiff then lowered was paid at the lower one.
        // At its work's difficulty: one price for every job of that work
        // ([`Session::send_job`]).
        let Some(&difficulty) = self.sent.get(&s.job_id).and_then(|w| self.works.get(w)) else {
            return reject(code::STALE, "job not sent on this connection");
        };
        if s.extranonce2.len() != self.cfg.extranonce2_size {
            return reject(code::OTHER, "extranonce2 has the wrong size");
        }
        let now = (now_ms / 1000).clamp(0, u32::MAX as i64) as u32;
        if s.ntime < job.ntime || s.ntime > job.ntime.max(now).saturating_add(NTIME_SLACK) {
            return reject(code::OTHER, "ntime out of range");
        }
        let version = match s.version_bits {
            None => job.version,
            Some(bits) if bits & !self.version_mask == 0 => {
                (job.version & !self.version_mask) | bits
            }
            Some(_) => return reject(code::OTHER, "version bits outside the negotiated mask"),
        };
        let key: ShareKey = (
            s.job_id.clone(),
            s.extranonce2.clone(),
            s.ntime,
            s.nonce,
            version,
        );
        if self.seen.contains(&key) {
            return reject(code::DUPLICATE, "duplicate share");
        }
        let header = build_header(
            &job,
            &self.cfg.extranonce1,
            &s.extranonce2,
            s.ntime,
            s.nonce,
            version,
        );
        let hash = sha256d(&header);
        if !hash_meets(&hash, &difficulty.target()) {
            return reject(code::LOW_DIFFICULTY, "low difficulty share");
        }
        self.seen.insert(key);
        Ok(Accepted {
            id,
            account,
            worker,
            difficulty,
            hash,
            job,
            submit: s,
            version,
            extranonce1: self.cfg.extranonce1.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BuiltinJobs;

    const ACCOUNT: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn setup() -> (Session, JobBook, Arc<Job>) {
        let cfg = SessionConfig {
            extranonce1: vec![0, 0, 0, 7],
            extranonce2_size: 4,
            initial: Difficulty::from_micro(1),
            min: Difficulty::from_micro(1),
            max: Difficulty::from_f64(1e9).unwrap(),
            target_interval: 10.0,
            version_mask: VERSION_ROLLING_MASK,
        };
        let mut book = JobBook::default();
        let job = book.push(source().next(1_000_000, true));
        (Session::new(cfg, 0), book, job)
    }

    /// The built-in source of the jobs in these tests.
    fn source() -> BuiltinJobs {
        BuiltinJobs::new([3; 32], [9; 32])
    }

    /// [`source`] past the first job [`setup`] takes from it: what it
    /// makes next is new work in `setup`'s block.
    fn source_past_first() -> BuiltinJobs {
        let mut jobs = source();
        jobs.next(1_000_000, true);
        jobs
    }

    fn call(line: &str) -> Call {
        stratum::parse_request(line).unwrap()
    }

    /// The miner asks for difficulty `d` (`mining.suggest_difficulty`).
    fn suggest(s: &mut Session, book: &JobBook, d: f64, now: i64) -> Outcome {
        let line = format!(r#"{{"id":3,"method":"mining.suggest_difficulty","params":[{d}]}}"#);
        s.handle(call(&line), book, now)
    }

    fn login(s: &mut Session, book: &JobBook) {
        s.handle(
            call(r#"{"id":1,"method":"mining.subscribe","params":[]}"#),
            book,
            0,
        );
        let auth =
            format!(r#"{{"id":2,"method":"mining.authorize","params":["{ACCOUNT}.rig","x"]}}"#);
        s.handle(call(&auth), book, 0);
    }

    /// Grind nonces from `from` until one meets `d` (and misses `miss`).
    fn find_nonce(job: &Job, from: u32, d: Difficulty, miss: Option<Difficulty>) -> u32 {
        find_nonce_at(job, job.ntime, from, d, miss)
    }

    /// [`find_nonce`] with the header's time at `ntime`.
    fn find_nonce_at(
        job: &Job,
        ntime: u32,
        from: u32,
        d: Difficulty,
        miss: Option<Difficulty>,
    ) -> u32 {
        (from..)
            .find(|&n| {
                let h = sha256d(&build_header(
                    job,
                    &[0, 0, 0, 7],
                    &[0; 4],
                    ntime,
                    n,
                    job.version,
                ));
                hash_meets(&h, &d.target()) && miss.is_none_or(|m| !hash_meets(&h, &m.target()))
            })
            .unwrap()
    }

    fn submit(job: &str, ntime: u32, nonce: u32) -> Call {
        call(&format!(
            r#"{{"id":9,"method":"mining.submit","params":["{ACCOUNT}.rig","{job}","00000000","{ntime:08x}","{nonce:08x}"]}}"#
        ))
    }

    /// A worker name past the bound is refused, so no share carries it
    /// into the ledger; one at the bound is taken.
    #[test]
    fn a_worker_name_past_the_bound_is_refused() {
        let (mut s, book, _) = setup();
        s.handle(
            call(r#"{"id":1,"method":"mining.subscribe","params":[]}"#),
            &book,
            0,
        );
        let named = |rig: usize| {
            let worker = format!("{ACCOUNT}.{}", "r".repeat(rig));
            call(&format!(
                r#"{{"id":2,"method":"mining.authorize","params":["{worker}","x"]}}"#
            ))
        };
        let too_long = s.handle(named(MAX_WORKER_BYTES - 64), &book, 0);
        assert_eq!(code_of(&too_long), Some(code::UNAUTHORIZED));
        assert!(s.account().is_none());
        let at_bound = s.handle(named(MAX_WORKER_BYTES - 65), &book, 0);
        assert_eq!(code_of(&at_bound), None);
        assert!(s.account().is_some());
    }

    /// A session grants only the version bits its pool allows (behind a
    /// proxy: what the upstream granted), and refuses shares that roll
    /// others. A proxy granted every bit it knew, and the upstream then
    /// rejected each share of a miner that rolled them.
    #[test]
    fn version_rolling_is_granted_within_the_pools_mask() {
        let configure = call(
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"ffffffff"}]}"#,
        );
        let answer = |o: Outcome| match o {
            Outcome::Reply(lines) => {
                serde_json::from_str::<Value>(&lines[0]).unwrap()["result"].clone()
            }
            Outcome::Accepted(_) => panic!("configure is answered"),
        };
        for (allowed, granted) in [
            (VERSION_ROLLING_MASK, VERSION_ROLLING_MASK),
            (0x00ff_e000, 0x00ff_e000),
            (0, 0),
        ] {
            let (mut s, book, job) = setup();
            s.cfg.version_mask = allowed;
            let result = answer(s.handle(configure.clone(), &book, 0));
            assert_eq!(result["version-rolling"], json!(granted != 0), "{result}");
            assert_eq!(
                result["version-rolling.mask"],
                json!(format!("{granted:08x}"))
            );
            login(&mut s, &book);
            // A share rolling bit 28, which only the full mask grants.
            let bits = 0x1000_0000;
            let version = (job.version & !VERSION_ROLLING_MASK) | bits;
            let nonce = (0..)
                .find(|&n| {
                    let h = sha256d(&build_header(
                        &job,
                        &[0, 0, 0, 7],
                        &[0; 4],
                        job.ntime,
                        n,
                        version,
                    ));
                    hash_meets(&h, &Difficulty::from_micro(1).target())
                })
                .unwrap();
            let rolled = call(&format!(
                r#"{{"id":9,"method":"mining.submit","params":["{ACCOUNT}.rig","{}","00000000","{:08x}","{nonce:08x}","{bits:08x}"]}}"#,
                job.id, job.ntime
            ));
            let outcome = s.handle(rolled, &book, job.ntime as i64 * 1000);
            let expected = if granted & bits != 0 {
                None
            } else {
                Some(code::OTHER)
            };
            assert_eq!(code_of(&outcome), expected, "pool mask {allowed:08x}");
        }
    }

    fn code_of(o: &Outcome) -> Option<i64> {
        match o {
            Outcome::Accepted(_) => None,
            Outcome::Reply(lines) => {
                let v: Value = serde_json::from_str(&lines[0]).unwrap();
                v["error"][0].as_i64()
            }
        }
    }

    #[test]
    fn every_rule_is_enforced() {
        let (mut s, book, job) = setup();
        let now = job.ntime as i64 * 1000;
        let good = find_nonce(&job, 0, Difficulty::from_micro(1), None);
        // Before subscribing and authorizing.
        assert_eq!(
            code_of(&s.handle(submit(&job.id, job.ntime, good), &book, now)),
            Some(code::NOT_SUBSCRIBED)
        );
        s.handle(
            call(r#"{"id":1,"method":"mining.subscribe","params":[]}"#),
            &book,
            0,
        );
        assert_eq!(
            code_of(&s.handle(submit(&job.id, job.ntime, good), &book, now)),
            Some(code::UNAUTHORIZED)
        );
        login(&mut s, &book);
        // Accepted once, credited at the session difficulty.
        match s.handle(submit(&job.id, job.ntime, good), &book, now) {
            Outcome::Accepted(a) => {
                assert_eq!(a.difficulty, Difficulty::from_micro(1));
                assert_eq!(hex_account(&a.account), ACCOUNT);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code_of(&s.handle(submit(&job.id, job.ntime, good), &book, now)),
            Some(code::DUPLICATE)
        );
        assert_eq!(
            code_of(&s.handle(submit("nope", job.ntime, good), &book, now)),
            Some(code::STALE)
        );
        assert_eq!(
            code_of(&s.handle(submit(&job.id, job.ntime - 1, good), &book, now)),
            Some(code::OTHER)
        );
        assert_eq!(
            code_of(&s.handle(
                submit(&job.id, job.ntime + NTIME_SLACK + 1, good),
                &book,
                now
            )),
            Some(code::OTHER)
        );
        // Low difficulty: a nonce that meets 1e-6 but not 0.01, for a job
        // sent at 0.01.
        let mut book = book;
        suggest(&mut s, &book, 0.01, now);
        let mut jobs = source_past_first();
        let job = book.push(jobs.next(1_000_000, false));
        // At the session's start, so that vardiff has no reason to move.
        s.on_job(&job, &book, 0);
        assert_eq!(s.difficulty(), Difficulty::from_f64(0.01).unwrap());
        let low = find_nonce(
            &job,
            0,
            Difficulty::from_micro(1),
            Some(Difficulty::from_f64(0.01).unwrap()),
        );
        let later = now + 1000;
        assert_eq!(
            code_of(&s.handle(submit(&job.id, job.ntime, low), &book, later)),
            Some(code::LOW_DIFFICULTY)
        );
        // Version bits outside the (unnegotiated) mask.
        let line = format!(
            r#"{{"id":9,"method":"mining.submit","params":["{ACCOUNT}","{}","00000000","{:08x}","{low:08x}","00002000"]}}"#,
            job.id, job.ntime
        );
        assert_eq!(
            code_of(&s.handle(call(&line), &book, later)),
            Some(code::OTHER)
        );
        assert_eq!(s.accepted, 1);
    }

    /// A share is checked and credited at the difficulty its job was
    /// sent at. Before, it was the difficulty at submission: a miner
    /// holding a hash far above it asked for a higher difficulty
    /// (`mining.suggest_difficulty`) and was credited the share's whole
    /// worth, and work done before vardiff lowered the difficulty was
    /// credited at the lower one.
    #[test]
    fn a_share_is_credited_at_its_jobs_difficulty() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(20));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        // A hash worth 20x the first job's difficulty, then a raise to it.
        let rich = find_nonce(&first, 0, high, None);
        let raised = suggest(&mut s, &book, 0.00002, now);
        assert!(
            matches!(raised, Outcome::Reply(ref l) if l.len() == 2),
            "raise sent"
        );
        match s.handle(submit(&first.id, first.ntime, rich), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, low, "paid at its job's"),
            other => panic!("{other:?}"),
        }
        // The next job goes out at the raised difficulty; work on the
        // first still counts at the first's.
        let mut jobs = source_past_first();
        let second = book.push(jobs.next(1_000_000, false));
        // At the session's start, so that vardiff has no reason to move.
        s.on_job(&second, &book, 0);
        assert_eq!(s.difficulty(), high);
        let cheap = find_nonce(&first, rich + 1, low, Some(high));
        match s.handle(submit(&first.id, first.ntime, cheap), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, low),
            other => panic!("{other:?}"),
        }
        let cheap2 = find_nonce(&second, 0, low, Some(high));
        assert_eq!(
            code_of(&s.handle(submit(&second.id, second.ntime, cheap2), &book, now)),
            Some(code::LOW_DIFFICULTY)
        );
        let good2 = find_nonce(&second, 0, high, None);
        match s.handle(submit(&second.id, second.ntime, good2), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, high),
            other => panic!("{other:?}"),
        }
        // A job in the book that this connection was never sent.
        let third = book.push(jobs.next(1_000_000, false));
        let any = find_nonce(&third, 0, high, None);
        assert_eq!(
            code_of(&s.handle(submit(&third.id, third.ntime, any), &book, now)),
            Some(code::STALE)
        );
    }

    #[test]
    fn a_job_sent_again_keeps_its_first_difficulty() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(20));
        let (mut s, book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        // A hash worth the raised difficulty, found at the job's first one
        // and held back while the miner raises its difficulty and has the
        // same job sent again by subscribing a second time.
        let rich = find_nonce(&first, 0, high, None);
        suggest(&mut s, &book, 0.00002, now);
        assert_eq!(s.difficulty(), high);
        let again = s.handle(
            call(r#"{"id":4,"method":"mining.subscribe","params":[]}"#),
            &book,
            now,
        );
        assert!(
            matches!(again, Outcome::Reply(ref l) if l.iter().any(|l| l.contains("mining.notify") && l.contains(&first.id))),
            "the job went out again: {again:?}"
        );
        match s.handle(submit(&first.id, first.ntime, rich), &book, now) {
            Outcome::Accepted(a) => {
                assert_eq!(a.difficulty, low, "paid at the job's first difficulty")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A hash found on one job, with an ntime as late as the next job's,
    /// and held back while the miner raises its difficulty, is not paid
    /// the raised price on that next job. With the built-in source the next
    /// job is new work, so it is no share of it at all; a job of the same
    /// work (an upstream's, with only a fresh ntime) goes out at the first
    /// job's difficulty, said to the miner, and pays that. New work after
    /// it goes out at the raised difficulty again.
    #[test]
    fn a_hash_held_back_for_a_later_job_is_not_paid_the_raised_price() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(20));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        let later = first.ntime + 30;
        let rich = find_nonce_at(&first, later, 0, high, None);
        suggest(&mut s, &book, 0.00002, now);
        assert_eq!(s.difficulty(), high);

        // The built-in source's next job: new work.
        let mut jobs = source_past_first();
        let second = book.push(jobs.next(later, false));
        let lines = s.on_job(&second, &book, 0);
        assert!(!lines[0].contains("mining.set_difficulty"), "{lines:?}");
        match s.handle(submit(&second.id, later, rich), &book, now) {
            Outcome::Reply(l) => assert!(l[0].contains("low difficulty"), "{l:?}"),
            other => panic!("paid on a job it was not found on: {other:?}"),
        }

        // The same work as the first job, with a fresh ntime.
        let same = book.push(Job {
            id: "same".into(),
            ntime: later,
            clean: false,
            ..(*first).clone()
        });
        let lines = s.on_job(&same, &book, 0);
        assert_eq!(lines[0], stratum::set_difficulty(low), "{lines:?}");
        match s.handle(submit(&same.id, later, rich), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, low, "paid at the work's first"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.difficulty(), high, "the session's own is kept");

        let fourth = book.push(jobs.next(later + 30, false));
        let lines = s.on_job(&fourth, &book, 0);
        assert_eq!(lines[0], stratum::set_difficulty(high), "{lines:?}");
        let fair = find_nonce(&fourth, 0, high, None);
        match s.handle(submit(&fourth.id, fourth.ntime, fair), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, high),
            other => panic!("{other:?}"),
        }
    }

    /// The same work sent at a high difficulty and again once the
    /// session's difficulty fell (a proxy's cap fell) keeps the high one:
    /// a hash that fits both jobs is worth one price, so rich hashes sent
    /// at once and the rest held for the cheaper job earn nothing extra.
    /// New work after it goes out at the fallen difficulty.
    #[test]
    fn the_same_work_sent_again_keeps_its_price_when_the_difficulty_falls() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(20));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        suggest(&mut s, &book, 0.00002, now);
        let mut jobs = source_past_first();
        let dear = book.push(jobs.next(1_000_000, false));
        s.on_job(&dear, &book, 0);
        s.cap_difficulty(Some(low));
        let again = book.push(Job {
            id: "again".into(),
            ntime: dear.ntime + 30,
            ..(*dear).clone()
        });
        let lines = s.on_job(&again, &book, 0);
        assert!(!lines[0].contains("mining.set_difficulty"), "{lines:?}");
        assert_eq!(s.difficulty(), low);
        let rich = find_nonce_at(&dear, again.ntime, 0, high, None);
        match s.handle(submit(&dear.id, again.ntime, rich), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, high),
            other => panic!("{other:?}"),
        }
        let poor = find_nonce_at(&dear, again.ntime, 0, low, Some(high));
        match s.handle(submit(&again.id, again.ntime, poor), &book, now) {
            Outcome::Reply(l) => assert!(l[0].contains("low difficulty"), "{l:?}"),
            other => panic!("held back for the cheaper job and paid: {other:?}"),
        }
        let new_work = book.push(jobs.next(1_000_060, false));
        let lines = s.on_job(&new_work, &book, 0);
        assert_eq!(lines[0], stratum::set_difficulty(low), "{lines:?}");
    }

    /// Subscribing again and again sends the running job again and again:
    /// it adds no work to remember. Many works are remembered up to the
    /// bound, but never one a job in the book still has.
    #[test]
    fn works_are_remembered_within_a_bound() {
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        for _ in 0..10 {
            s.handle(
                call(r#"{"id":5,"method":"mining.subscribe","params":[]}"#),
                &book,
                now,
            );
        }
        assert_eq!(s.works.len(), 1);
        let mut jobs = source();
        for i in 0..2 * MAX_WORKS {
            let job = book.push(jobs.next(1_000_000 + i as u32, false));
            s.on_job(&job, &book, 0);
            assert!(s.works.len() <= MAX_WORKS, "{}", s.works.len());
        }
        let current = book.current().unwrap();
        let nonce = find_nonce(&current, 0, s.difficulty(), None);
        assert!(matches!(
            s.handle(submit(&current.id, current.ntime, nonce), &book, now),
            Outcome::Accepted(_)
        ));
    }

    /// A connection with an earlier one's extranonce part keeps that one's
    /// prices for the works still in the book, whatever difficulty it asks
    /// for; a work the book dropped is not handed on.
    #[test]
    fn a_part_handed_on_keeps_its_prices() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(20));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let mut jobs = source();
        let gone = jobs.next(999_000, false);
        let handed = s.works_in(&book);
        assert_eq!(handed, vec![(first.work(), low)]);
        let mut next = Session::new(s.cfg.clone(), 0);
        next.inherit(&handed);
        next.inherit(&[(gone.work(), low)]);
        let now = first.ntime as i64 * 1000;
        suggest(&mut next, &book, 0.00002, now);
        login(&mut next, &book);
        assert_eq!(next.told, low, "the inherited price is told");
        let rich = find_nonce(&first, 0, high, None);
        match next.handle(submit(&first.id, first.ntime, rich), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, low),
            other => panic!("{other:?}"),
        }
        let fresh = book.push(jobs.next(1_000_030, false));
        next.on_job(&fresh, &book, 0);
        assert_eq!(next.told, high, "new work at the asked difficulty");
        assert!(!next.works_in(&book).iter().any(|(w, _)| *w == gone.work()));
    }

    /// Work that comes again as a clean job (the book forgot the jobs it
    /// went out with) still goes out at the difficulty it first went out
    /// at. Vardiff then steps from the difficulty the miner was told, the
    /// one its shares really came at, not from the one the session was
    /// raised to meanwhile.
    #[test]
    fn work_sent_again_as_a_clean_job_keeps_its_first_difficulty() {
        let (low, high) = (Difficulty::from_micro(1), Difficulty::from_micro(1000));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        let later = first.ntime + 30;
        let rich = find_nonce_at(&first, later, 0, Difficulty::from_micro(20), None);
        suggest(&mut s, &book, 0.001, now);
        assert_eq!(s.difficulty(), high);
        let again = book.push(Job {
            id: "again".into(),
            ntime: later,
            clean: true,
            ..(*first).clone()
        });
        assert!(
            book.get(&first.id).is_none(),
            "a clean job retires the rest"
        );
        let lines = s.on_job(&again, &book, 0);
        assert_eq!(lines[0], stratum::set_difficulty(low), "{lines:?}");
        match s.handle(submit(&again.id, later, rich), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, low),
            other => panic!("{other:?}"),
        }
        // Seven more shares at the low difficulty, quickly: a window.
        let mut nonce = rich + 1;
        for _ in 0..7 {
            nonce = find_nonce_at(&again, later, nonce, low, None);
            assert!(matches!(
                s.handle(submit(&again.id, later, nonce), &book, now),
                Outcome::Accepted(_)
            ));
            nonce += 1;
        }
        let mut jobs = source_past_first();
        let new_work = book.push(jobs.next(later, false));
        s.on_job(&new_work, &book, 1);
        assert_eq!(
            s.difficulty(),
            Difficulty::from_micro(4),
            "four times the difficulty the shares came at"
        );
    }

    /// A burst of shares far faster than vardiff aims for asks for new work
    /// at once; the job that comes goes out at a raised difficulty.
    #[test]
    fn a_burst_of_shares_asks_for_new_work() {
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        let t0 = 0;
        let mut nonce = 0;
        for i in 0..8 {
            assert!(!s.wants_new_work(t0 + i), "only a whole window tells");
            nonce = find_nonce(&first, nonce, Difficulty::from_micro(1), None);
            match s.handle(submit(&first.id, first.ntime, nonce), &book, now) {
                Outcome::Accepted(_) => {}
                other => panic!("{other:?}"),
            }
            nonce += 1;
        }
        assert!(s.wants_new_work(t0 + 8));
        let mut jobs = source_past_first();
        let second = book.push(jobs.next(first.ntime, false));
        let lines = s.on_job(&second, &book, t0 + 8);
        assert!(lines[0].contains("mining.set_difficulty"), "{lines:?}");
        assert!(s.difficulty() > Difficulty::from_micro(1));
        assert!(!s.wants_new_work(t0 + 9));
    }

    /// A proxy's session goes no higher than the upstream's difficulty:
    /// a share that meets the upstream's target is accepted (and so
    /// forwarded), not refused as too easy for a session vardiff or a
    /// suggestion had raised above it.
    #[test]
    fn a_capped_session_takes_what_the_upstream_would() {
        let (cap, high) = (Difficulty::from_micro(2), Difficulty::from_micro(20));
        let (mut s, mut book, first) = setup();
        login(&mut s, &book);
        let now = first.ntime as i64 * 1000;
        suggest(&mut s, &book, 0.00002, now);
        assert_eq!(s.difficulty(), high);
        // The upstream's difficulty is below the session's: the next job
        // goes out at it, with the difficulty said first.
        s.cap_difficulty(Some(cap));
        let mut jobs = source_past_first();
        let second = book.push(jobs.next(1_000_000, false));
        let lines = s.on_job(&second, &book, 0);
        assert_eq!(s.difficulty(), cap);
        assert!(lines[0].contains("mining.set_difficulty"), "{lines:?}");
        // Worth the upstream's difficulty but not the raised one.
        let fair = find_nonce(&second, 0, cap, Some(high));
        match s.handle(submit(&second.id, second.ntime, fair), &book, now) {
            Outcome::Accepted(a) => assert_eq!(a.difficulty, cap),
            other => panic!("{other:?}"),
        }
        // A suggestion above the cap holds at the cap.
        suggest(&mut s, &book, 0.00002, now);
        assert_eq!(s.difficulty(), cap);
        // The cap falls before the next job: a suggestion to raise does
        // not lower the difficulty meanwhile (the next job will).
        s.cap_difficulty(Some(Difficulty::from_micro(1)));
        let reply = suggest(&mut s, &book, 0.00002, now);
        assert!(
            matches!(reply, Outcome::Reply(ref l) if l.len() == 1),
            "{reply:?}"
        );
        assert_eq!(s.difficulty(), cap);
    }

    fn hex_account(a: &[u8; 32]) -> String {
        data_encoding::HEXLOWER.encode(a)
    }
}
