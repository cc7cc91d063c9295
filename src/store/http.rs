//! A mirror reached over HTTP: the client half of docs/PROTOCOL.md.
//!
//! Mutating requests are signed with the account key. Transient failures
//! (connection errors, 5xx other than 507) are retried with exponential
//! backoff; the mirror's answers are never trusted beyond what the caller
//! verifies.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::sync::oneshot;

use super::{Error, Renewed, Result, Storage};
use crate::chunk::ShareId;
use crate::crypto::{AccountKey, Hash, sha256};
use crate::protocol::{
    AccountStatus, BatchReply, ErrorBody, Info, MAX_BATCH_BYTES, MAX_BATCH_SHARE_BYTES,
    MAX_BATCH_SHARES, RenewRequest, RenewResponse, RequestAuth, batch_digest, batch_len,
    encode_batch, hex, unix_now,
};

const ATTEMPTS: u32 = 4;
/// Largest batch body this client sends: a quarter of what a mirror
/// takes, so that one batch on a slow uplink stays well inside the
/// request timeout and holds up few uploads.
const BATCH_BYTES: usize = MAX_BATCH_BYTES / 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a mirror that could not be reached is passed over by reads:
/// they fail at once, without touching the network, so one mirror down
/// costs a k-of-n read nothing and a directory lookup no retries. The
/// first read after that tries it again, once. Writes always try it, but
/// once, without retries: a mirror wrongly taken as down (a loaded
/// machine) answers that one try, and one that is down does not cost
/// every upload and publish a round of backoff (an unmount's final flush
/// with one mirror of three down took 44 s that way, now under a second).
const DOWN_FOR: Duration = Duration::from_secs(30);
/// Longest wait for a write: this, plus its body's length at
/// [`SLOWEST_UPLINK`] (a 2 MiB share: 94 s; a directory slot: 30 s).
/// A hung mirror (a stopped process, a disk stuck in I/O) holds a write
/// that long before it is taken as down.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest uplink a write is given time for, in bytes per second.
const SLOWEST_UPLINK: u64 = 32 << 10;
/// Longest wait for a write to a mirror taken as down (see [`DOWN_FOR`]),
/// which holds until the mirror answers anything: a hung mirror then costs
/// each upload and publish this, not the full timeout.
const DOWN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request without a body (reads of shares, slots and
/// accounts: 6 MiB at most at k = 2). Uploads keep the client's longer timeout, for
/// slow uplinks. A request that timed out is not sent again: a hung
/// mirror holds its caller one timeout, not one per attempt.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a read waits for the next bytes of an answer (its head, then
/// each part of its body). A mirror that has stopped (a frozen process, a
/// network that drops packets) is given up on after this, not after all
/// of [`READ_TIMEOUT`], while a slow link that keeps sending gets its
/// time. With all three mirrors stopped, a read took two read timeouts,
/// about two minutes, to fail (a helper's sweep).
const READ_IDLE: Duration = Duration::from_secs(20);
/// Longest wait for a request whose answer is small (see `small_answer`):
/// no slow link needs more. `lode check` asks whether a share is held once
/// per share and mirror.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a mirror's answer may carry: a share or a directory slot
/// (16 MiB each at most) with room to spare. A mirror is not trusted, and
/// one that streamed without end (or claimed a terabyte) had the client
/// buffer all of it: gigabytes, in a helper's sweep.
const MAX_ANSWER_BYTES: usize = (16 << 20) + (64 << 10);
/// The most a JSON answer may carry: a renewal's reply names at most
/// `MAX_RENEW_IDS` ids twice (about 1.3 MB).
const MAX_JSON_BYTES: usize = 4 << 20;
/// The most an error's body may carry.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// An error and its sources, joined: reqwest's top-level text says only
/// "error sending request", the cause (refused, reset) is below it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether a request without a body gets a small answer, a few hundred
/// bytes at most (`PROBE_TIMEOUT` then): whether a share is held, the
/// account, the mirror's info. `lode mirrors list` with one mirror stopped
/// waited the full read timeout for its account.
fn small_answer(method: &Method, path: &str) -> bool {
    *method == Method::HEAD || path == "/v1/account" || path == "/v1/info"
}

/// One mirror, by base URL.
pub struct HttpMirror {
    base: String,
    /// The name the placement ranks it under, if not `base` (it moved).
    placed_as: Option<String>,
    client: reqwest::Client,
    /// For requests without a body: `client`, plus [`READ_IDLE`]. (Not
    /// for writes: a mirror may rightly be silent while it makes an
    /// upload durable.)
    reader: reqwest::Client,
    key: AccountKey,
    /// Smoothed time of successful reads, for fastest-first ordering.
    latency: Mutex<Option<Duration>>,
    /// Small share uploads waiting to go out together (see `put_batched`).
    pending: Mutex<Pending>,
    /// Whether the mirror takes `POST /v1/shares`; cleared at its first 404.
    batches: AtomicBool,
    /// Until when the mirror is taken as down (see [`DOWN_FOR`]).
    down_until: Mutex<Option<Instant>>,
    /// Writes out to the mirror while it is taken as down, unanswered
    /// ([`Storage::write_waiting`]).
    probing: AtomicUsize,
    /// The mirror's `mirror_id`, which every signed request names (see
    /// `protocol::signed_message`): asked once, before the first.
    id: tokio::sync::OnceCell<[u8; 32]>,
}

/// How one try at a request failed, where that matters to the next.
enum Attempt {
    /// No answer: not reached, or not in time.
    Transport(reqwest::Error),
    /// An answer that a retry may get past (a server error, a garbled body).
    Answer(Error),
    /// An answer that settles it: the request is not tried again.
    Final(Error),
}

/// Counts a write in [`HttpMirror::probing`] until it is done or dropped.
struct Probe<'a>(&'a AtomicUsize);

impl<'a> Probe<'a> {
    fn new(count: &'a AtomicUsize) -> Probe<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Probe(count)
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Small share uploads to one mirror that wait for the batch in flight.
/// While `sending` is false the queue is empty.
#[derive(Default)]
struct Pending {
    /// Whether some upload leads: sends the next batch.
    sending: bool,
    queue: VecDeque<Waiting>,
}

impl Pending {
    /// Pass the lead to the oldest waiting upload still there, or, with
    /// none left, let it lapse.
    fn hand_on(&mut self) {
        while let Some(next) = self.queue.pop_front() {
            // A waiter whose caller is gone refuses it.
            if next.answer.send(Answer::Lead).is_ok() {
                return;
            }
        }
        self.sending = false;
    }
}

/// One small share waiting for a batch.
struct Waiting {
    id: ShareId,
    bytes: Bytes,
    answer: oneshot::Sender<Answer>,
}

/// What a waiting upload is told.
enum Answer {
    /// The mirror's answer for this share.
    Done(Result<()>),
    /// Upload alone: the mirror has no batches, or the batch failed in a
    /// way a single upload may retry.
    Alone,
    /// Lead: the upload, already out of the queue, sends the next batch.
    Lead,
}

/// The lead, held while the leader's batch is out. If the leader's future
/// is dropped, the lead passes on (the shares of the batch it dropped
/// find their answer channels closed and go alone).
struct Leading<'a> {
    pending: &'a Mutex<Pending>,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock_pending(self.pending).hand_on();
        }
    }
}

/// A waiting upload. If its future is dropped just as the lead reaches
/// it, the lead passes on rather than being lost with it.
struct Following<'a> {
    pending: &'a Mutex<Pending>,
    answered: Option<oneshot::Receiver<Answer>>,
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.answered.take() {
            // After `close`, no send can succeed: whatever was sent is here.
            rx.close();
            if let Ok(Answer::Lead) = rx.try_recv() {
                lock_pending(self.pending).hand_on();
            }
        }
    }
}

fn lock_pending(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

impl HttpMirror {
    pub fn new(url: &str, key: AccountKey) -> Result<HttpMirror> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Rejected {
                mirror: url.to_string(),
                reason: "mirror URL must start with http:// or https://".into(),
            });
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(120))
                .user_agent(concat!("lode/", env!("CARGO_PKG_VERSION")))
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build().map_err(|e| Error::Unavailable {
                mirror: base.clone(),
                reason: e.to_string(),
            })
        };
        let client = built(builder())?;
        let reader = built(builder().read_timeout(READ_IDLE))?;
        Ok(HttpMirror {
            base,
            placed_as: None,
            client,
            reader,
            key,
            latency: Mutex::new(None),
            pending: Mutex::new(Pending::default()),
            batches: AtomicBool::new(true),
            down_until: Mutex::new(None),
            probing: AtomicUsize::new(0),
            id: tokio::sync::OnceCell::new(),
        })
    }

    /// The mirror's id, asked with one `info` request unless already
    /// known. A mirror that names none (older than 2026-12-03) cannot
    /// check a request is for it, and is refused: a request it could send
    /// on to another mirror is not signed for it.
    ///
    /// Part of an attempt in [`Self::send_with`], so that a mirror that
    /// cannot be reached when first asked is retried and taken as down
    /// like any other failed request, and asked again once it is back.
    async fn ask_id(&self) -> std::result::Result<[u8; 32], Attempt> {
        if let Some(id) = self.id.get() {
            return Ok(*id);
        }
        let resp = self
            .reader
            .get(format!("{}/v1/info", self.base))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(Attempt::Transport)?;
        if !resp.status().is_success() {
            return Err(Attempt::Answer(
                self.unavailable(format!("info: {}", resp.status())),
            ));
        }
        let info: Info = self
            .json(resp, MAX_JSON_BYTES)
            .await
            .map_err(Attempt::Answer)?;
        let id = info.mirror_id.ok_or_else(|| {
            Attempt::Final(Error::Rejected {
                mirror: self.base.clone(),
                reason: "the mirror names no mirror_id (a version before 2026-12-03): \
                         update it to store here"
                    .into(),
            })
        })?;
        let id = crate::protocol::parse_hex::<32>(&id).map_err(|_| {
            Attempt::Final(Error::Rejected {
                mirror: self.base.clone(),
                reason: format!("the mirror's id {id:?} is not 64 hex digits"),
            })
        })?;
        // Two asking at once get the same answer from the same mirror; the
        // first one kept stands.
        Ok(*self.id.get_or_init(|| async { id }).await)
    }

    /// Rank this mirror in the placement under `name`, the address it
    /// was added under before it moved to this one.
    pub fn placed_as(mut self, name: Option<&str>) -> HttpMirror {
        self.placed_as = name.map(str::to_string);
        self
    }

    fn unavailable(&self, reason: impl ToString) -> Error {
        Error::Unavailable {
            mirror: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    /// The body of `resp`, refused past `limit` bytes: by its declared
    /// length before any of it is read, else as it streams in.
    async fn body(&self, mut resp: reqwest::Response, limit: usize) -> Result<Bytes> {
        let over = |n: u64| {
            self.unavailable(format!(
                "answered with {n} bytes or more, over the {limit}-byte bound"
            ))
        };
        let declared = resp.content_length();
        if let Some(n) = declared.filter(|&n| n > limit as u64) {
            return Err(over(n));
        }
        let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unavailable(e))? {
            if buf.len() + chunk.len() > limit {
                return Err(over((buf.len() + chunk.len()) as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// The JSON body of `resp`, bounded as [`Self::body`] is.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<T> {
        let body = self.body(resp, limit).await?;
        serde_json::from_slice(&body).map_err(|e| self.unavailable(e))
    }

    /// Send a request, signed when `sign` is set, retrying transient
    /// failures. Returns the response for any status the caller handles
    /// (2xx, 404, 409); turns the rest into errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        digest: Option<Hash>,
        sign: bool,
    ) -> Result<reqwest::Response> {
        let handled = |s: StatusCode| {
            s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::CONFLICT
        };
        self.send_with(method, path, body, digest, sign, handled)
            .await
    }

    /// [`Self::send`], returning the response for every status `handled`
    /// accepts.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        digest: Option<Hash>,
        sign: bool,
        handled: impl Fn(StatusCode) -> bool,
    ) -> Result<reqwest::Response> {
        // A read from a mirror taken as down fails at once; once that
        // lapses, it gets one try before it counts as back.
        let read = method == Method::GET || method == Method::HEAD;
        let mut write_to_down = false;
        let mut _probe = None;
        let attempts = {
            let mut down = self.down_until.lock().expect("down lock");
            match *down {
                // A write goes out to a mirror that just failed only once,
                // and with a shorter wait: each retry, or each full timeout
                // of a hung mirror, would cost every upload and publish
                // (and an unmount's final flush) again. While one is out
                // unanswered, writes that can do without this mirror skip
                // it (`write_waiting`). Lapsed or not: for writes the mark
                // lasts until the mirror answers something (a write, or a
                // read's probe).
                Some(_) if !read => {
                    _probe = Some(Probe::new(&self.probing));
                    write_to_down = true;
                    1
                }
                None if !read => ATTEMPTS,
                Some(until) if Instant::now() < until => {
                    return Err(self.unavailable(format!(
                        "not answering (passed over for {} s after a failed request)",
                        DOWN_FOR.as_secs()
                    )));
                }
                Some(_) => {
                    // Half open: whoever comes next probes, the rest wait
                    // out another period rather than pile onto a dead link.
                    *down = Some(Instant::now() + DOWN_FOR);
                    1
                }
                None => ATTEMPTS,
            }
        };
        let mut backoff = FIRST_BACKOFF;
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            let to = match sign {
                false => None,
                true => match self.ask_id().await {
                    Ok(id) => Some(id),
                    Err(Attempt::Final(e)) => return Err(e),
                    Err(Attempt::Answer(e)) => {
                        *self.down_until.lock().expect("down lock") = None;
                        last = Some(e);
                        continue;
                    }
                    Err(Attempt::Transport(e)) => {
                        let (error, stop) = self.not_answered(&e, attempt + 1 == attempts);
                        last = Some(error);
                        match stop {
                            true => break,
                            false => continue,
                        }
                    }
                },
            };
            let client = match body {
                None => &self.reader,
                Some(_) => &self.client,
            };
            let mut req = client.request(method.clone(), format!("{}{path}", self.base));
            req = req.timeout(match &body {
                None if small_answer(&method, path) => PROBE_TIMEOUT,
                None => READ_TIMEOUT,
                Some(_) if write_to_down => DOWN_WRITE_TIMEOUT,
                Some(b) => WRITE_TIMEOUT + Duration::from_secs(b.len() as u64 / SLOWEST_UPLINK),
            });
            if let Some(to) = &to {
                let digest = digest.unwrap_or_else(|| sha256(body.as_deref().unwrap_or_default()));
                let time = unix_now();
                let auth =
                    RequestAuth::sign_digest(&self.key, to, method.as_str(), path, time, &digest);
                req = req.header(reqwest::header::AUTHORIZATION, auth.header());
            }
            if let Some(b) = &body {
                // Shared, not copied: a retry sends the same bytes.
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    *self.down_until.lock().expect("down lock") = None;
                    let status = resp.status();
                    if handled(status) {
                        return Ok(resp);
                    }
                    let message = self
                        .json::<ErrorBody>(resp, MAX_ERROR_BYTES)
                        .await
                        .map(|b| b.error)
                        .unwrap_or_else(|_| status.to_string());
                    if let Some(refused) = self.refusal(status, &message) {
                        return Err(refused);
                    }
                    last = Some(self.unavailable(format!("{status}: {message}")));
                }
                Err(e) => {
                    let (error, stop) = self.not_answered(&e, attempt + 1 == attempts);
                    last = Some(error);
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// A request that got no answer: the error it is, and whether to stop
    /// trying, in which case the mirror is taken as down.
    ///
    /// Not reached, or no answer in time: down for a while (for reads). A
    /// timed-out request is not sent again: a hung mirror would hold its
    /// caller for every attempt (4 x 120 s for an upload). A connect
    /// timeout is not such a case: nothing was sent, so a write tries again
    /// as for any unreachable mirror.
    fn not_answered(&self, e: &reqwest::Error, last_attempt: bool) -> (Error, bool) {
        let timed_out = e.is_timeout() && !e.is_connect();
        // reqwest's own text names neither: "error sending request for
        // url (...)".
        let error = self.unavailable(if timed_out {
            "no answer in time (a stopped or stuck mirror, or a link that drops packets)"
                .to_string()
        } else if e.is_connect() {
            format!("cannot connect ({})", error_chain(e))
        } else {
            error_chain(e)
        });
        let stop = timed_out || last_attempt;
        if stop {
            *self.down_until.lock().expect("down lock") = Some(Instant::now() + DOWN_FOR);
        }
        (error, stop)
    }

    /// The error a final answer of `status` is: out of space (507) or
    /// refused (another 4xx). `None` for a server error, which a retry may
    /// get past.
    fn refusal(&self, status: StatusCode, message: &str) -> Option<Error> {
        if status == StatusCode::INSUFFICIENT_STORAGE {
            return Some(Error::NoSpace {
                mirror: self.base.clone(),
            });
        }
        status.is_client_error().then(|| Error::Rejected {
            mirror: self.base.clone(),
            reason: format!("{status}: {message}"),
        })
    }

    /// Extend the leases of `ids` on this mirror.
    pub async fn renew(&self, ids: &[[u8; 32]]) -> Result<RenewResponse> {
        let body = serde_json::to_vec(&RenewRequest {
            ids: ids.iter().map(|id| hex(id)).collect(),
        })
        .expect("renew request serializes");
        let resp = self
            .send(Method::POST, "/v1/renew", Some(body.into()), None, true)
            .await?;
        self.json(resp, MAX_JSON_BYTES).await
    }

    pub async fn account(&self) -> Result<AccountStatus> {
        let resp = self
            .send(Method::GET, "/v1/account", None, None, true)
            .await?;
        self.json(resp, MAX_JSON_BYTES).await
    }

    pub async fn info(&self) -> Result<Info> {
        let resp = self
            .send(Method::GET, "/v1/info", None, None, false)
            .await?;
        self.json(resp, MAX_JSON_BYTES).await
    }

    /// GET a body, or `None` on 404.
    async fn get_optional(&self, path: &str) -> Result<Option<Bytes>> {
        let resp = self.send(Method::GET, path, None, None, false).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(self.body(resp, MAX_ANSWER_BYTES).await?))
    }

    fn record_latency(&self, took: Duration) {
        let mut l = self.latency.lock().expect("latency lock");
        *l = Some(match *l {
            Some(prev) => (prev * 3 + took) / 4,
            None => took,
        });
    }

    async fn put_share_inner(&self, id: &ShareId, bytes: Bytes, repair: bool) -> Result<()> {
        let path = format!(
            "/v1/share/{}{}",
            hex(id),
            if repair { "?repair=true" } else { "" }
        );
        let resp = self
            .send(Method::PUT, &path, Some(bytes), Some(*id), true)
            .await?;
        if !resp.status().is_success() {
            return Err(Error::Rejected {
                mirror: self.base.clone(),
                reason: format!("share upload answered {}", resp.status()),
            });
        }
        Ok(())
    }

    /// Upload a small share together with the others that arrive while a
    /// batch is in flight. Callers must poll the returned future to the
    /// end or drop it (as any spawned task does): a waiting upload handed
    /// the lead sends the next batch only when polled.
    ///
    /// The first upload to find no batch in flight leads: it sends its
    /// own share with everything queued behind it (up to a batch), then
    /// hands the lead to the oldest upload still waiting, so no caller is
    /// held back sending for others. Nothing waits for a batch to fill: a
    /// lone share goes at once. `None` means: upload alone.
    async fn put_batched(&self, id: &ShareId, bytes: Bytes) -> Option<Result<()>> {
        let (answer, mut answered) = oneshot::channel();
        let waiting = Waiting {
            id: *id,
            bytes: bytes.clone(),
            answer,
        };
        let lead = {
            let mut p = lock_pending(&self.pending);
            p.queue.push_back(waiting);
            !std::mem::replace(&mut p.sending, true)
        };
        if !lead {
            let mut following = Following {
                pending: &self.pending,
                answered: Some(answered),
            };
            let got = following.answered.as_mut().expect("just set").await;
            following.answered = None;
            match got {
                Ok(Answer::Done(result)) => return Some(result),
                Ok(Answer::Alone) | Err(_) => return None,
                Ok(Answer::Lead) => {
                    let (answer, again) = oneshot::channel();
                    answered = again;
                    let waiting = Waiting {
                        id: *id,
                        bytes,
                        answer,
                    };
                    lock_pending(&self.pending).queue.push_front(waiting);
                }
            }
        }
        let mut leading = Leading {
            pending: &self.pending,
            done: false,
        };
        if !self.batches.load(Ordering::Relaxed) {
            // Batching was turned off meanwhile: everyone goes alone.
            let mut p = lock_pending(&self.pending);
            for w in p.queue.drain(..) {
                let _ = w.answer.send(Answer::Alone);
            }
            p.sending = false;
            leading.done = true;
            return None;
        }
        // Our share is at the front (the queue was empty, or we were put
        // back there), so it is in this batch.
        let batch: Vec<Waiting> = {
            let mut p = lock_pending(&self.pending);
            let mut batch = Vec::new();
            let mut bytes = batch_len([]);
            while let Some(next) = p.queue.front() {
                let more = batch_len([next.bytes.len()]) - batch_len([]);
                if batch.len() == MAX_BATCH_SHARES || bytes + more > BATCH_BYTES {
                    break;
                }
                let next = p.queue.pop_front().expect("just seen");
                // A waiter whose caller is gone needs no upload.
                if !next.answer.is_closed() {
                    bytes += more;
                    batch.push(next);
                }
            }
            batch
        };
        self.send_batch(batch).await;
        lock_pending(&self.pending).hand_on();
        leading.done = true;
        match answered.try_recv() {
            Ok(Answer::Done(result)) => Some(result),
            _ => None,
        }
    }

    /// Send one batch and answer each share in it.
    async fn send_batch(&self, batch: Vec<Waiting>) {
        let body = encode_batch(batch.iter().map(|w| (&w.id, &w.bytes[..])));
        let digest = batch_digest(batch.iter().map(|w| &w.id));
        let handled = |s: StatusCode| {
            s.is_success()
                || s == StatusCode::NOT_FOUND
                || s == StatusCode::PAYLOAD_TOO_LARGE
                || s == StatusCode::BAD_REQUEST
        };
        let sent = self
            .send_with(
                Method::POST,
                "/v1/shares",
                Some(body.into()),
                Some(digest),
                true,
                handled,
            )
            .await;
        let all = |batch: Vec<Waiting>, answer: &dyn Fn() -> Answer| {
            for w in batch {
                let _ = w.answer.send(answer());
            }
        };
        let resp = match sent {
            Ok(resp) if resp.status().is_success() => resp,
            // An older mirror, or something in front of it that holds
            // bodies to less: single uploads from now on.
            Ok(resp) if resp.status() != StatusCode::BAD_REQUEST => {
                tracing::info!(
                    mirror = %self.base,
                    status = %resp.status(),
                    "no share batches here; uploading one by one"
                );
                self.batches.store(false, Ordering::Relaxed);
                return all(batch, &|| Answer::Alone);
            }
            // A batch the mirror cannot read is the batch's fault, not
            // the shares': they go alone.
            Ok(_) => return all(batch, &|| Answer::Alone),
            // Refused whole (the signature, its time, funding, room) or
            // unreachable after the retries: each share alone would get
            // the same answer.
            Err(e) => {
                let same = || match &e {
                    Error::Rejected { reason, .. } => Answer::Done(Err(Error::Rejected {
                        mirror: self.base.clone(),
                        reason: reason.clone(),
                    })),
                    Error::NoSpace { .. } => Answer::Done(Err(Error::NoSpace {
                        mirror: self.base.clone(),
                    })),
                    Error::Unavailable { reason, .. } => {
                        Answer::Done(Err(self.unavailable(reason)))
                    }
                    _ => Answer::Alone,
                };
                return all(batch, &same);
            }
        };
        let reply = self
            .json::<BatchReply>(resp, MAX_JSON_BYTES)
            .await
            .ok()
            .filter(|r| r.results.len() == batch.len());
        let Some(reply) = reply else {
            return all(batch, &|| Answer::Alone);
        };
        for (w, r) in batch.into_iter().zip(reply.results) {
            let outcome = match StatusCode::from_u16(r.status) {
                Ok(s) if s.is_success() => Answer::Done(Ok(())),
                // A server error (or nonsense): the upload alone retries it.
                Ok(s) => self
                    .refusal(s, &r.error.unwrap_or_default())
                    .map_or(Answer::Alone, |e| Answer::Done(Err(e))),
                Err(_) => Answer::Alone,
            };
            let _ = w.answer.send(outcome);
        }
    }
}

#[async_trait]
impl Storage for HttpMirror {
    fn name(&self) -> &str {
        &self.base
    }

    fn placement_name(&self) -> &str {
        self.placed_as.as_deref().unwrap_or(&self.base)
    }

    fn latency(&self) -> Option<Duration> {
        *self.latency.lock().expect("latency lock")
    }

    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .expect("down lock")
            .is_some_and(|until| Instant::now() < until)
    }

    fn revive(&self) {
        *self.down_until.lock().expect("down lock") = None;
    }

    fn pass_over(&self) {
        // Lifted by the next answer from this mirror, late or not.
        *self.down_until.lock().expect("down lock") = Some(Instant::now() + DOWN_FOR);
    }

    fn write_waiting(&self) -> bool {
        self.down_until.lock().expect("down lock").is_some()
            && self.probing.load(Ordering::Acquire) > 0
    }

    async fn put_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
        if bytes.len() <= MAX_BATCH_SHARE_BYTES
            && self.batches.load(Ordering::Relaxed)
            && let Some(result) = self.put_batched(id, bytes.clone()).await
        {
            return result;
        }
        self.put_share_inner(id, bytes, false).await
    }

    async fn repair_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
        self.put_share_inner(id, bytes, true).await
    }

    async fn get_share(&self, id: &ShareId) -> Result<Option<Bytes>> {
        let start = Instant::now();
        let bytes = self.get_optional(&format!("/v1/share/{}", hex(id))).await?;
        if bytes.is_some() {
            self.record_latency(start.elapsed());
        }
        Ok(bytes)
    }

    async fn has_share(&self, id: &ShareId) -> Result<bool> {
        let resp = self
            .send(
                Method::HEAD,
                &format!("/v1/share/{}", hex(id)),
                None,
                None,
                false,
            )
            .await?;
        Ok(resp.status().is_success())
    }

    async fn put_slot(&self, envelope: &[u8]) -> Result<()> {
        let env = crate::dir::SlotEnvelope::decode(envelope)?;
        let path = format!("/v1/slot/{}", hex(&env.public_key));
        let resp = self
            .send(
                Method::PUT,
                &path,
                Some(Bytes::copy_from_slice(envelope)),
                None,
                true,
            )
            .await?;
        if resp.status() == StatusCode::CONFLICT {
            // A retried upload may have landed the first time: the same
            // envelope being there already is success.
            if self.get_slot(&env.public_key).await?.as_deref() == Some(envelope) {
                return Ok(());
            }
            let message = self
                .json::<ErrorBody>(resp, MAX_ERROR_BYTES)
                .await
                .map(|b| b.error)
                .unwrap_or_default();
            return Err(Error::Rejected {
                mirror: self.base.clone(),
                reason: message,
            });
        }
        if !resp.status().is_success() {
            return Err(Error::Rejected {
                mirror: self.base.clone(),
                reason: format!("slot upload answered {}", resp.status()),
            });
        }
        Ok(())
    }

    async fn get_slot(&self, public_key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_optional(&format!("/v1/slot/{}", hex(public_key)))
            .await?
            .map(|b| b.to_vec()))
    }

    async fn claim(&self, ids: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        let mut unclaimed = Vec::new();
        for batch in ids.chunks(crate::protocol::MAX_RENEW_IDS) {
            let reply = HttpMirror::renew(self, batch).await?;
            for m in reply.missing.iter().chain(&reply.refused) {
                unclaimed.push(
                    crate::protocol::parse_hex::<32>(m)
                        .map_err(|_| self.unavailable("bad id in renew reply"))?,
                );
            }
        }
        Ok(unclaimed)
    }

    async fn renew(&self, ids: &[[u8; 32]]) -> Result<Renewed> {
        let mut out = Renewed::default();
        let parse = |m: &String| {
            crate::protocol::parse_hex::<32>(m)
                .map_err(|_| self.unavailable("bad id in renew reply"))
        };
        for batch in ids.chunks(crate::protocol::MAX_RENEW_IDS) {
            let reply = HttpMirror::renew(self, batch).await?;
            for m in &reply.missing {
                out.missing.push(parse(m)?);
            }
            for m in &reply.refused {
                out.refused.push(parse(m)?);
            }
            if out.reason.is_none() && !reply.refused.is_empty() {
                out.reason = Some(
                    reply
                        .reason
                        .unwrap_or_else(|| "no reason given (quota, capacity or funding)".into()),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// A "mirror" on loopback that takes each connection and never
    /// answers: it closes each at once (`hold` false), or keeps each open
    /// (a stopped process). Counts the connections.
    async fn silent_mirror(hold: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                if hold {
                    held.push(conn);
                }
            }
        });
        (url, count)
    }

    /// A read from a mirror that takes the connection and then says
    /// nothing (a stopped process) gives up after `READ_IDLE`, not the
    /// whole read timeout.
    #[tokio::test]
    async fn a_silent_mirror_is_given_up_on_after_the_idle_wait() {
        let (url, _) = silent_mirror(true).await;
        let mirror = HttpMirror::new(
            &url,
            crate::crypto::RootSecret::from_bytes([5; 32]).account_key(),
        )
        .unwrap();
        let started = Instant::now();
        let got = tokio::time::timeout(READ_TIMEOUT / 2, mirror.get_share(&[2; 32])).await;
        assert!(
            matches!(got, Ok(Err(Error::Unavailable { .. }))),
            "still waiting after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() >= READ_IDLE / 2);
    }

    /// A "mirror" on loopback that answers every request with 200 and a
    /// body of `declared` bytes (chunked, if `None`) that it streams
    /// without end. Returns its URL and how many bytes it got out.
    async fn endless_mirror(declared: Option<u64>) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = conn.read(&mut req).await;
                    let head = match declared {
                        Some(n) => format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n"),
                        None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                    };
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![7u8; 64 << 10];
                    let chunk = match declared {
                        Some(_) => block,
                        None => [
                            format!("{:x}\r\n", block.len()).into_bytes(),
                            block,
                            b"\r\n".to_vec(),
                        ]
                        .concat(),
                    };
                    // Until the client hangs up.
                    while conn.write_all(&chunk).await.is_ok() {
                        counted.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                });
            }
        });
        (url, sent)
    }

    /// A mirror that answers a read with more than any share or slot can
    /// be, or says it will, is cut off at the bound: the client buffered
    /// whatever it streamed (gigabytes, in a helper's sweep).
    #[tokio::test]
    async fn an_answer_past_the_bound_is_refused_not_buffered() {
        let key = crate::crypto::RootSecret::from_bytes([4; 32]).account_key();
        for declared in [None, Some(1u64 << 40)] {
            let (url, sent) = endless_mirror(declared).await;
            let mirror = HttpMirror::new(&url, key.clone()).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(30), mirror.get_share(&[1; 32]))
                .await
                .expect("refused, not waited out");
            match got {
                Err(Error::Unavailable { reason, .. }) => {
                    assert!(reason.contains("bound"), "{declared:?}: {reason}")
                }
                other => panic!("{declared:?}: {:?}", other.map(|b| b.map(|b| b.len()))),
            }
            // What the mirror got out (into socket buffers, too) stays near
            // the bound, not the minutes of streaming a timeout allows.
            let out = sent.load(Ordering::SeqCst);
            assert!(
                out < MAX_ANSWER_BYTES + (32 << 20),
                "{declared:?}: {out} bytes sent"
            );
            let account = tokio::time::timeout(Duration::from_secs(30), mirror.account()).await;
            assert!(
                matches!(account, Ok(Err(Error::Unavailable { .. }))),
                "{declared:?}"
            );
        }
    }

    /// While a write to a mirror taken as down is out unanswered, the
    /// mirror says so ([`Storage::write_waiting`]), for writes that can do
    /// without it to skip it; once that write is given up, it does not.
    #[tokio::test]
    async fn a_write_waiting_on_a_mirror_taken_as_down_is_known() {
        let (url, connections) = silent_mirror(true).await;
        let mirror = Arc::new(
            HttpMirror::new(
                &url,
                crate::crypto::RootSecret::from_bytes([3; 32]).account_key(),
            )
            .unwrap(),
        );
        let share = Bytes::from(vec![5u8; 200 << 10]);
        let write = |id: u8| {
            let (mirror, share) = (mirror.clone(), share.clone());
            tokio::spawn(async move { mirror.put_share(&[id; 32], share).await })
        };
        // Not taken as down: a write out is no sign of anything.
        let first = write(1);
        while connections.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!mirror.write_waiting());
        first.abort();
        let _ = first.await;
        mirror.pass_over();
        assert!(!mirror.write_waiting(), "down, but nothing out");
        let second = write(2);
        while connections.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(mirror.write_waiting());
        second.abort();
        let _ = second.await;
        assert!(!mirror.write_waiting(), "the write was given up");
    }

    /// A mirror that cannot be reached costs one round of retries; after
    /// that, requests to it fail at once without touching the network,
    /// so a lookup with one mirror of three down is not 2 s of backoff
    /// each time.
    #[tokio::test]
    async fn a_mirror_that_fails_is_passed_over_for_a_while() {
        let (url, connections) = silent_mirror(false).await;
        let mirror = HttpMirror::new(
            &url,
            crate::crypto::RootSecret::from_bytes([3; 32]).account_key(),
        )
        .unwrap();
        let id = [7u8; 32];
        assert!(matches!(
            mirror.get_share(&id).await,
            Err(Error::Unavailable { .. })
        ));
        let first = connections.load(Ordering::SeqCst);
        assert_eq!(first, ATTEMPTS as usize, "one connection per attempt");
        for _ in 0..5 {
            let err = mirror.get_slot(&[1; 32]).await.unwrap_err();
            assert!(err.to_string().contains("passed over"), "{err}");
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            first,
            "no new connection"
        );
        // Writes still try, once each while the mirror is down.
        let share = Bytes::from_static(b"not a share");
        assert!(mirror.put_share(&id, share.clone()).await.is_err());
        let first = first + 1;
        assert_eq!(connections.load(Ordering::SeqCst), first, "a write tries");
        let cap = crate::store::Vault::fresh_dir();
        let slot = crate::dir::SlotEnvelope::seal(&cap, 1, &crate::dir::Listing::default());
        assert!(mirror.put_slot(&slot.encode()).await.is_err());
        let first = first + 1;
        assert_eq!(connections.load(Ordering::SeqCst), first, "once");
        // Once the period lapses, one request tries again, once.
        *mirror.down_until.lock().unwrap() = Some(Instant::now() - Duration::from_secs(1));
        assert!(mirror.get_share(&id).await.is_err());
        assert_eq!(connections.load(Ordering::SeqCst), first + 1);
        assert!(
            mirror
                .get_share(&id)
                .await
                .unwrap_err()
                .to_string()
                .contains("passed over")
        );
    }
}
