//! The HTTP front of a mirror (axum): routes, authentication, and the one
//! place where mirror errors become status codes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::RwLock;

use super::budget::{Budget, Held};
use super::clock::LedgerClock;
use super::commit::CommitQueue;
use super::ledger::{Renewal, Terms};
use super::listen::Peer;
use super::stratum::{PoolConfig, run_pool};
use super::{DiskShares, Error, Ledger, Result, ShareStore, collect_garbage, unix_now};
use crate::crypto::{Hash, sha256};
use crate::dir::{MAX_SLOT_BYTES, SlotEnvelope};
use crate::protocol::{
    self, AccountStatus, BatchReply, BatchResult, ErrorBody, Info, MAX_RENEW_IDS, MAX_SHARE_BYTES,
    RenewRequest, RenewResponse, RequestAuth, parse_hex,
};

/// How a mirror is run.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub data: PathBuf,
    pub lease_secs: i64,
    /// Bytes per account, or unlimited.
    pub quota: Option<u64>,
    /// Bytes for the whole mirror, or unlimited.
    pub capacity: Option<u64>,
    pub gc_interval: Duration,
    /// Bytes of shares read back and checked against their ids on each
    /// GC pass (see `scrub`); 0 turns the scrubber off.
    pub scrub_bytes: u64,
    /// Difficulty-1 shares per GiB-day.
    pub price: f64,
    pub grace_secs: i64,
    pub free_bytes: u64,
    /// HTTP connections open at once (see `listen.rs`).
    pub max_connections: usize,
    /// How long an HTTP connection may move no byte before it is closed,
    /// and a request's head may take.
    pub limits: super::listen::Limits,
    /// Bytes of bodies held whole in memory, all requests together
    /// (`budget.rs`).
    pub body_memory: u64,
}

struct Mirror {
    id: [u8; 32],
    stratum_port: Option<u16>,
    shares: Arc<DiskShares>,
    ledger: Ledger,
    /// Held shared by uploads while they finalize, exclusively by GC.
    finalize: Arc<RwLock<()>>,
    /// Where staged uploads wait to be made durable together.
    commits: CommitQueue,
    /// The time leases, bills and credits are stamped with.
    clock: LedgerClock,
    /// Memory for bodies held whole.
    budget: Arc<Budget>,
}

impl Error {
    /// The one place a mirror error becomes a status code.
    fn status(&self) -> StatusCode {
        match self {
            Error::Mismatch(_)
            | Error::BadRequest(_)
            | Error::Slot(crate::dir::Error::Malformed(_)) => StatusCode::BAD_REQUEST,
            Error::Slot(crate::dir::Error::Stale { .. }) => StatusCode::CONFLICT,
            Error::Slot(_) => StatusCode::FORBIDDEN,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Quota { .. } | Error::Capacity { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Unfunded { .. } => StatusCode::PAYMENT_REQUIRED,
            Error::Auth(_) => StatusCode::UNAUTHORIZED,
            Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Io(_)
            | Error::Ledger(_)
            | Error::Task(_)
            | Error::Commit(_)
            | Error::Layout(_) => {
                tracing::error!(error = %self, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (
            self.status(),
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The request's `Authorization` header, parsed (not yet verified).
fn request_auth(headers: &HeaderMap) -> Result<RequestAuth> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(protocol::Error::BadAuthHeader)?;
    Ok(RequestAuth::parse(value)?)
}

/// The account `auth` signs this request for, once its signature over the
/// method, path and body `digest` holds.
fn verified(
    m: &Mirror,
    auth: &RequestAuth,
    method: &Method,
    uri: &Uri,
    digest: &Hash,
) -> Result<[u8; 32]> {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    auth.verify(&m.id, method.as_str(), path, digest, unix_now())?;
    Ok(auth.account)
}

fn authenticate(
    m: &Mirror,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    digest: &Hash,
) -> Result<[u8; 32]> {
    verified(m, &request_auth(headers)?, method, uri, digest)
}

/// A share id or slot key in a path: 64 lowercase hex digits, the one
/// spelling lode writes, so that each id has a single URL.
fn id_of(hex: &str) -> Result<[u8; 32]> {
    let bad = || Error::BadRequest("id must be 64 lowercase hex digits".into());
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    parse_hex::<32>(hex).map_err(|_| bad())
}

#[derive(Deserialize)]
struct PutQuery {
    #[serde(default)]
    repair: bool,
}

async fn put_share(
    State(m): State<Arc<Mirror>>,
    Path(id): Path<String>,
    Query(q): Query<PutQuery>,
    request: axum::http::request::Parts,
    body: Body,
) -> Result<StatusCode> {
    let id = id_of(&id)?;
    let headers = &request.headers;
    let account = authenticate(&m, headers, &request.method, &request.uri, &id)?;
    let peer = request.extensions.get::<Peer>().map(|p| p.0);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Room and funding are checked before a byte is stored: for the
    // declared length, or without one (a streamed upload) for any room at
    // all, and again for the real length when the share is recorded
    // (`Ledger::add_shares`). The largest share was assumed, which refused
    // a small streamed upload to an account within 16 MiB of its quota.
    let len = declared.unwrap_or(MAX_SHARE_BYTES);
    let room = declared.unwrap_or(1);
    let (repair, shares) = (q.repair, m.shares.clone());
    // One trip to the blocking pool for the checks before the body.
    let held = {
        let _g = m.finalize.read().await;
        m.ledger
            .run_stamped(&m.clock, move |l, now| {
                // Already held: lease it and skip the body. The file is
                // checked too, so a share lost from disk behind the
                // ledger's back is accepted again rather than acknowledged
                // and still missing.
                if !repair && shares.holds(&id)? && l.lease_existing(&account, &id, now)? {
                    return Ok(true);
                }
                if len > MAX_SHARE_BYTES {
                    return Err(Error::TooLarge {
                        limit: MAX_SHARE_BYTES,
                    });
                }
                l.precheck(&account, &id, room, now)?;
                Ok(false)
            })
            .await?
    };
    if held {
        return Ok(StatusCode::OK);
    }
    // The store gathers up to this much of the body between writes.
    let buffer = len.min(super::disk::WRITE_BUFFER as u64);
    let held = m.budget.take(peer, buffer).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    // At most the declared length: hyper holds the body to it, and the
    // store sizes its buffer by it.
    let staged = m.shares.stage(&id, Box::pin(stream), len).await?;
    // Written out (a small share's bytes are still held, but they are
    // at most 64 KiB): not counted while it waits for its commit.
    drop(held);
    // Renamed into place and recorded together with the other uploads
    // staged by now; only that step holds the lock GC takes.
    m.commits.commit(staged, q.repair, account).await?;
    Ok(StatusCode::CREATED)
}

/// `POST /v1/shares`: many small shares, each answered as it would have
/// been alone (docs/PROTOCOL.md). One signature check and one ledger trip
/// admit them all; the admitted ones are checked against their ids and
/// committed together, in the same group commit.
async fn put_shares(
    State(m): State<Arc<Mirror>>,
    peer: Option<Extension<Peer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<BatchReply>> {
    // The signature covers the ids, which are in the body; the header and
    // its time are checked first, so no one without a well-formed, fresh
    // request makes the mirror hold a batch body.
    let auth = request_auth(&headers)?;
    auth.check_time(unix_now())?;
    let (body, _held) = hold_body(&m, peer, &headers, body, protocol::MAX_BATCH_BYTES).await?;
    let items = protocol::decode_batch(&body).map_err(|e| Error::BadRequest(e.to_string()))?;
    let digest = protocol::batch_digest(items.iter().map(|i| &i.id));
    let account = verified(&m, &auth, &method, &uri, &digest)?;
    let asked: Vec<([u8; 32], u64)> = items.iter().map(|i| (i.id, i.bytes.len() as u64)).collect();
    let shares = m.shares.clone();
    let admitted = {
        let _g = m.finalize.read().await;
        m.ledger
            .run_stamped(&m.clock, move |l, now| {
                let mut with_disk = Vec::with_capacity(asked.len());
                for (id, len) in asked {
                    with_disk.push((id, len, shares.holds(&id)?));
                }
                l.admit_batch(&account, &with_disk, now)
            })
            .await?
    };
    let stores = items.iter().zip(admitted).map(|(item, admitted)| {
        let m = &m;
        let piece = body.slice_ref(item.bytes);
        async move {
            match admitted {
                Ok(true) => Ok(StatusCode::OK),
                Ok(false) => {
                    let len = piece.len() as u64;
                    let stream = futures_util::stream::once(async move { Ok(piece) });
                    let staged = m.shares.stage(&item.id, Box::pin(stream), len).await?;
                    m.commits.commit(staged, false, account).await?;
                    Ok(StatusCode::CREATED)
                }
                Err(refused) => Err(refused),
            }
        }
    });
    let results = futures_util::future::join_all(stores)
        .await
        .into_iter()
        .map(|r: Result<StatusCode>| match r {
            Ok(status) => BatchResult {
                status: status.as_u16(),
                error: None,
            },
            Err(e) => BatchResult {
                status: e.status().as_u16(),
                error: Some(e.to_string()),
            },
        })
        .collect();
    Ok(axum::Json(BatchReply { results }))
}

async fn get_share(
    State(m): State<Arc<Mirror>>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
) -> Result<Response> {
    let id = id_of(&id)?;
    let (len, stream) = m.shares.get(&id).await?.ok_or(Error::NotFound)?;
    // A share is read whole (up to 16 MiB) and held until its reader has
    // taken it: counted until the answer's body is dropped, so readers
    // that read nothing cannot pile copies up. Already read: refused at
    // once if there is no room, not held uncounted while it waits.
    let held = m.budget.take_now(peer.map(|p| p.0.0), len).await?;
    Ok(held_answer(held, len, "application/octet-stream", stream))
}

/// An answer of `len` bytes from `stream`, its bytes counted in the
/// budget (`held`) until the answer's body is dropped: once its reader has
/// taken it, or gone.
fn held_answer<S>(held: Held, len: u64, content_type: &'static str, stream: S) -> Response
where
    S: futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static,
{
    let stream = futures_util::StreamExt::map(stream, move |piece| {
        let _ = &held;
        piece
    });
    (
        [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, content_type.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn head_share(State(m): State<Arc<Mirror>>, Path(id): Path<String>) -> Result<StatusCode> {
    let id = id_of(&id)?;
    if m.shares.contains(&id).await? {
        Ok(StatusCode::OK)
    } else {
        Err(Error::NotFound)
    }
}

async fn put_slot(
    State(m): State<Arc<Mirror>>,
    Path(pk): Path<String>,
    peer: Option<Extension<Peer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let pk = id_of(&pk)?;
    // The header and its time are checked before the body is held, as for
    // a batch: a request with none was read whole first (up to 16 MiB).
    let auth = request_auth(&headers)?;
    auth.check_time(unix_now())?;
    let (body, _held) = hold_body(&m, peer, &headers, body, MAX_SLOT_BYTES).await?;
    let account = verified(&m, &auth, &method, &uri, &sha256(&body))?;
    let envelope = SlotEnvelope::decode(&body)?;
    if envelope.public_key != pk {
        return Err(Error::BadRequest("slot key differs from the path".into()));
    }
    m.ledger
        .run_stamped(&m.clock, move |l, now| {
            l.put_slot(&account, &envelope, &body, now)
        })
        .await?;
    Ok(StatusCode::OK)
}

async fn get_slot(
    State(m): State<Arc<Mirror>>,
    Path(pk): Path<String>,
    peer: Option<Extension<Peer>>,
) -> Result<Response> {
    let pk = id_of(&pk)?;
    let bytes = m
        .ledger
        .run(move |l| l.get_slot(&pk))
        .await?
        .ok_or(Error::NotFound)?;
    // Up to 16 MiB, held until read: counted as a share's answer is.
    let len = bytes.len() as u64;
    let held = m.budget.take_now(peer.map(|p| p.0.0), len).await?;
    let once = futures_util::stream::iter([Ok(axum::body::Bytes::from(bytes))]);
    Ok(held_answer(held, len, "application/cbor", once))
}

/// The largest gap between the wall clock's advance and the monotonic
/// clock's, between two looks (`keep_time`), taken as drift rather than a
/// step; and the longest stop a start does not move leases past.
const CLOCK_STEP_MIN: i64 = 600;

/// The step of the wall clock away from the ledger's (the wall time at
/// the last look carried on by the monotonic clock), in seconds, if it is
/// more than `CLOCK_STEP_MIN` (forward or back).
fn clock_step(ledger_now: i64, wall: i64) -> Option<i64> {
    let step = wall.saturating_sub(ledger_now);
    (step.abs() > CLOCK_STEP_MIN).then_some(step)
}

/// How often a running mirror records in its ledger that it is up, and
/// looks for a step of its wall clock.
const ALIVE_EVERY: Duration = Duration::from_secs(60);

/// Move leases and billing with a step of the wall clock since `clock`
/// was last looked at, then record the mirror up now. False if a step
/// could not be moved: billing and GC then wait.
///
/// All on the ledger's blocking thread, as one look (`LedgerClock::step`):
/// the rows move and the clock is set together, with no stamp in between,
/// even when the task awaiting them is aborted (a stop); or the next look
/// would see the same step and move the leases again.
async fn keep_time(ledger: &Ledger, clock: &LedgerClock) -> bool {
    let clock = clock.clone();
    let kept = ledger
        .run(move |l| {
            let wall = unix_now();
            clock.step(wall, |ledger_now| {
                match clock_step(ledger_now, wall) {
                    Some(step) => {
                        tracing::error!(
                            seconds = step,
                            "the wall clock was stepped; leases and billing move with it"
                        );
                        // With the time up recorded in the same
                        // transaction: a restart between the two took the
                        // step for downtime and moved it again.
                        l.shift_clock(step, wall)?;
                    }
                    None => {
                        if let Err(e) = l.mark_alive(wall) {
                            tracing::warn!(error = %e, "cannot record the mirror up; a restart may excuse more downtime");
                        }
                    }
                }
                Ok(())
            })
        })
        .await;
    if let Err(e) = &kept {
        tracing::error!(error = %e, "cannot move leases with the clock; billing and GC wait");
    }
    kept.is_ok()
}

/// A request body of at most `limit` bytes, whole, in the time an upload
/// of its declared length (or of `limit`) gets: as for shares, a client
/// trickling a byte a minute held a connection and its buffer for good.
/// [`read_body`], its bytes first taken from the mirror's budget for
/// bodies held whole (`budget.rs`): the declared length, or `limit` for
/// one streamed. The body is the caller's, and the bytes counted, until
/// the returned [`Held`] is dropped.
async fn hold_body(
    m: &Mirror,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(axum::body::Bytes, Held)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let len = declared.unwrap_or(limit as u64).min(limit as u64);
    let held = m.budget.take(peer.map(|p| p.0.0), len).await?;
    Ok((read_body(headers, body, limit).await?, held))
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes> {
    let too_large = || Error::TooLarge {
        limit: limit as u64,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let deadline = super::disk::body_deadline(declared.unwrap_or(limit as u64));
    // Piece by piece, each within `BODY_IDLE` as a share's body is: a
    // request in hand keeps its connection past the idle timeout
    // (`listen.rs`), so a client that sent a head and then nothing held
    // its place for the whole deadline (up to 572 s for a slot).
    let mut body = http_body_util::Limited::new(body, limit);
    let mut bytes = Vec::with_capacity(declared.map_or(0, |len| len as usize));
    loop {
        let by = deadline.min(tokio::time::Instant::now() + super::disk::BODY_IDLE);
        match tokio::time::timeout_at(by, http_body_util::BodyExt::frame(&mut body)).await {
            Err(_) => return Err(Error::BadRequest("request body too slow".into())),
            Ok(None) => return Ok(bytes.into()),
            // Past the limit, or the client gone (or sending past its own
            // declared length): only the first is 413.
            Ok(Some(Err(e))) if over_limit(&*e) => return Err(too_large()),
            Ok(Some(Err(_))) => return Err(Error::BadRequest("request body cut short".into())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Whether reading a body failed for its length limit (the limit's error
/// comes wrapped, as a broken connection's does).
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The largest renewal body: [`MAX_RENEW_IDS`] ids of 64 hex digits,
/// quoted and comma-separated, with room to spare.
const RENEW_BODY_MAX: usize = MAX_RENEW_IDS * 80 + 4096;

async fn renew(
    State(m): State<Arc<Mirror>>,
    peer: Option<Extension<Peer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<RenewResponse>> {
    // A renewal's body is at most its ids in hex, quoted: read as a
    // slot's (16 MiB), it took a few hundred MB parsed into strings
    // before the id count was checked.
    let (body, _held) = hold_body(&m, peer, &headers, body, RENEW_BODY_MAX).await?;
    let account = authenticate(&m, &headers, &method, &uri, &sha256(&body))?;
    let req: RenewRequest =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(e.to_string()))?;
    if req.ids.len() > MAX_RENEW_IDS {
        return Err(Error::BadRequest(format!(
            "at most {MAX_RENEW_IDS} ids per renewal"
        )));
    }
    let mut ids = req
        .ids
        .iter()
        .map(|s| id_of(s))
        .collect::<Result<Vec<_>>>()?;
    // An id named twice is one lease: counted once, renewed once.
    let mut named = std::collections::HashSet::new();
    ids.retain(|id| named.insert(*id));
    let lease = m.ledger.terms.lease_secs;
    let asked = ids.clone();
    let Renewal {
        mut renewed,
        mut missing,
        refused,
        reason,
    } = m
        .ledger
        .run_stamped(&m.clock, move |l, now| l.renew(&account, &ids, now))
        .await?;
    // The ledger may list a share whose file is gone (a disk fault, an
    // operator's mistake): call it missing, so the client sends it again.
    // (A set: scanning the lists for each of 10,000 ids held a worker
    // thread for a good part of a second.)
    let settled: std::collections::HashSet<[u8; 32]> =
        missing.iter().chain(&refused).copied().collect();
    for id in asked {
        if settled.contains(&id) || m.shares.contains(&id).await? {
            continue;
        }
        let pk = id;
        if m.ledger.run(move |l| l.get_slot(&pk)).await?.is_none() {
            missing.push(id);
            renewed = renewed.saturating_sub(1);
        }
    }
    Ok(axum::Json(RenewResponse {
        renewed,
        missing: missing.iter().map(|id| protocol::hex(id)).collect(),
        refused: refused.iter().map(|id| protocol::hex(id)).collect(),
        reason,
        // For the client, in the wall time it shares with the mirror: the
        // ledger's own time lags a step of the wall clock until its next
        // look (`clock.rs`), and the lease runs `lease` seconds either way.
        expires: unix_now() + lease,
    }))
}

async fn account(
    State(m): State<Arc<Mirror>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<AccountStatus>> {
    let account = authenticate(&m, &headers, &method, &uri, &sha256(b""))?;
    let (standing, balance) = m
        .ledger
        .run_stamped(&m.clock, move |l, now| {
            Ok((l.standing(&account, now)?, l.balance(&account, now)?))
        })
        .await?;
    Ok(axum::Json(AccountStatus {
        account: protocol::hex(&account),
        usage_bytes: standing.usage,
        quota_bytes: m.ledger.terms.quota,
        leases: standing.leases,
        lease_seconds: m.ledger.terms.lease_secs as u64,
        credit_micro: balance.credit,
        debit_micro: balance.debit,
        daily_cost_micro: balance.daily_cost,
        shares_accepted: balance.shares,
        funded_until: balance.funded_until,
    }))
}

async fn info(State(m): State<Arc<Mirror>>) -> Result<axum::Json<Info>> {
    let used = m.ledger.run(|l| l.used_bytes()).await?;
    Ok(axum::Json(Info {
        protocol: protocol::PROTOCOL_VERSION,
        software: format!("lode {}", env!("CARGO_PKG_VERSION")),
        lease_seconds: m.ledger.terms.lease_secs as u64,
        capacity_bytes: m.ledger.terms.capacity,
        used_bytes: used,
        price: m.ledger.terms.price_micro as f64 / 1e6,
        stratum_port: m.stratum_port,
        mirror_id: Some(protocol::hex(&m.id)),
    }))
}

fn socket_addr_text(socket: &TcpSocket) -> String {
    socket
        .local_addr()
        .map_or_else(|_| "its address".into(), |a| a.to_string())
}

/// Backlog of the mirror's listening socket: connections the kernel
/// accepts before the server takes them.
const BACKLOG: u32 = 1024;

/// Bind `addr` for [`serve`] without listening yet: the address is known
/// (a port of 0 is chosen now), and a connection is refused until the
/// mirror is ready, rather than held unanswered while it opens its store.
/// `SO_REUSEADDR`, as a listener has, so that a mirror started again takes
/// its old port at once; the other side of it is that until `serve`
/// listens, another socket with it may bind the same port, and `serve`
/// then fails at `listen` (a bind of port 0 never picks such a port).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Serve a mirror on `socket` (from [`bind`]) until `shutdown` resolves,
/// with its Stratum pool on `stratum` if given. Runs GC (and billing)
/// every `gc_interval` in the background.
///
/// The socket listens only once the ledger and the share store are open
/// (an older share layout moved forward, which may take a while): until
/// then a client's connection is refused, and it tries another mirror or
/// again later. `ready` is called then, just before requests are answered:
/// callers announce the address there, so that "listening" means ready.
pub async fn serve(
    socket: TcpSocket,
    stratum: Option<(TcpListener, PoolConfig)>,
    config: MirrorConfig,
    ready: impl FnOnce() -> std::io::Result<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&config.data)?;
    if !(config.price.is_finite() && config.price >= 0.0) {
        return Err(Error::BadRequest(
            "price must be a non-negative number".into(),
        ));
    }
    let terms = Terms {
        lease_secs: config.lease_secs,
        quota: config.quota,
        capacity: config.capacity,
        price_micro: (config.price * 1e6).round() as u64,
        grace_secs: config.grace_secs,
        free_bytes: config.free_bytes,
    };
    let ledger = Ledger::open(&config.data.join("ledger.sqlite"), terms)?;
    let stratum_port = match &stratum {
        Some((l, _)) => Some(l.local_addr()?.port()),
        None => None,
    };
    let shares = Arc::new(DiskShares::open(&config.data)?);
    // The port may have been taken meanwhile: a socket bound but not yet
    // listening does not keep another with `SO_REUSEADDR` from binding it.
    let addr = socket_addr_text(&socket);
    let listener = match socket.listen(BACKLOG) {
        Ok(l) => l,
        Err(e) => {
            let why = format!("cannot listen on {addr}: {e}");
            return Err(std::io::Error::new(e.kind(), why).into());
        }
    };
    let id = super::mirror_id(&config.data)?;
    // Once the mirror can serve (a start that fails, over and over, is
    // not time up), and before any billing or GC (the first pass runs at
    // once).
    let start = unix_now();
    // For the sweep: what a crash left is from just before this.
    let last_up = ledger.alive_at()?;
    match ledger.excuse_downtime(start, CLOCK_STEP_MIN)? {
        Some(gap) if gap > 0 => tracing::info!(
            seconds = gap,
            "the mirror was stopped (or its clock stepped forward while it was); \
             leases and billing move past that time"
        ),
        Some(gap) => tracing::error!(
            seconds = gap,
            "the wall clock is behind the last time this mirror was up; leases and billing move back with it"
        ),
        None => {}
    }
    let clock = LedgerClock::new(start);
    let pool = stratum.map(|(listener, pool_config)| {
        tokio::spawn(run_pool(
            listener,
            pool_config,
            ledger.clone(),
            clock.clone(),
        ))
    });
    let finalize = Arc::new(RwLock::new(()));
    let commits = CommitQueue::start(
        shares.clone(),
        ledger.clone(),
        finalize.clone(),
        clock.clone(),
    );
    let mirror = Arc::new(Mirror {
        id,
        stratum_port,
        shares,
        ledger,
        finalize,
        commits,
        clock: clock.clone(),
        budget: Budget::new(config.body_memory),
    });
    let ledger = mirror.ledger.clone();
    let beat = tokio::spawn({
        let (ledger, clock) = (ledger.clone(), clock.clone());
        async move {
            let mut tick = tokio::time::interval(ALIVE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                keep_time(&ledger, &clock).await;
            }
        }
    });
    // What a crash left stored but unrecorded, found while the mirror
    // serves (`sweep.rs`).
    let sweep = tokio::spawn({
        let m = mirror.clone();
        async move {
            if let Err(e) =
                super::sweep::sweep_unrecorded(&m.ledger, &m.shares, &m.finalize, last_up).await
            {
                tracing::error!(error = %e, "the start-up sweep for unrecorded shares failed; the next start tries again");
            }
        }
    });
    let gc_mirror = mirror.clone();
    let gc_clock = clock.clone();
    let gc = tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.gc_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !keep_time(&gc_mirror.ledger, &gc_clock).await {
                continue;
            }
            // The pass's times come from the ledger's clock, which a step
            // of the wall clock meanwhile does not move (see `clock.rs`).
            let ledger = &gc_mirror.ledger;
            let billed = ledger
                .run_stamped(&gc_clock, |l, now| l.charge_all(now))
                .await;
            if let Err(e) = &billed {
                tracing::error!(error = %e, "billing pass failed; GC waits for the next one");
            }
            if let Err(e) = ledger
                .run_stamped(&gc_clock, |l, now| l.prune_leases(now))
                .await
            {
                tracing::error!(error = %e, "lease pruning failed");
            }
            if let Err(e) = ledger
                .run_stamped(&gc_clock, |l, now| l.fold_old_shares(now))
                .await
            {
                tracing::error!(error = %e, "folding old share records failed");
            }
            // GC forgets the lease rows of what it removes, which accounts
            // not billed yet still owe for: it runs after a billing pass
            // that worked. (Pruning keeps what a bill still covers, and
            // folding and scrubbing bill nothing.)
            if billed.is_ok()
                && let Err(e) = collect_garbage(
                    &gc_mirror.ledger,
                    &gc_mirror.shares,
                    &gc_mirror.finalize,
                    &gc_clock,
                )
                .await
            {
                tracing::error!(error = %e, "gc pass failed");
            }
            if config.scrub_bytes > 0 {
                let scrubbed = super::scrub(
                    &gc_mirror.ledger,
                    &*gc_mirror.shares,
                    &gc_mirror.finalize,
                    config.data.join("scrub-cursor"),
                    config.scrub_bytes,
                )
                .await;
                match scrubbed {
                    Ok(r) if r.damaged > 0 => tracing::error!(
                        checked = r.checked,
                        damaged = r.damaged,
                        "scrub removed damaged shares"
                    ),
                    Ok(r) => tracing::debug!(checked = r.checked, bytes = r.bytes, "scrub pass"),
                    Err(e) => tracing::error!(error = %e, "scrub pass failed"),
                }
            }
        }
    });
    let app = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/account", get(account))
        .route("/v1/renew", post(renew))
        .route(
            "/v1/share/{id}",
            put(put_share).get(get_share).head(head_share),
        )
        .route("/v1/shares", post(put_shares))
        .route("/v1/slot/{pk}", put(put_slot).get(get_slot))
        .layer(DefaultBodyLimit::max(MAX_SLOT_BYTES))
        .with_state(mirror);
    let result = match ready() {
        Ok(()) => {
            let listener =
                super::listen::Admission::new(listener, config.max_connections, config.limits);
            let app = app
                .layer(axum::middleware::from_fn(super::listen::track))
                .into_make_service_with_connect_info::<super::listen::Flight>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Err(e) => Err(e),
    };
    gc.abort();
    sweep.abort();
    beat.abort();
    if let Some(pool) = pool {
        pool.abort();
    }
    // Up until now: a clean stop's last minute is not taken for downtime.
    keep_time(&ledger, &clock).await;
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free mirror's settings over `data`, its GC idle for the test.
    fn free_config(data: &std::path::Path) -> MirrorConfig {
        MirrorConfig {
            data: data.to_path_buf(),
            lease_secs: 3600,
            quota: None,
            capacity: None,
            gc_interval: Duration::from_secs(3600),
            scrub_bytes: 0,
            price: 0.0,
            grace_secs: 0,
            free_bytes: 0,
            max_connections: crate::mirror::listen::MAX_CONNECTIONS,
            limits: crate::mirror::listen::Limits {
                idle: crate::mirror::listen::IDLE,
                head: crate::mirror::listen::HEAD,
            },
            body_memory: 2 << 30,
        }
    }

    /// Stop a mirror `serve` runs in `server` and wait for it to end.
    async fn stop_mirror(
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<()>>,
    ) {
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the mirror stops")
            .unwrap()
            .unwrap();
    }

    /// `ready` comes once the share store is open, an older layout moved
    /// forward by then: an address announced there is one that answers
    /// with every share in place.
    #[tokio::test]
    async fn ready_comes_once_the_store_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"a share an older mirror kept two levels down".to_vec();
        let h = crate::protocol::hex(&crate::chunk::share_id(&bytes));
        let shares = dir.path().join("shares");
        let old = shares.join(&h[..2]).join(&h[2..4]);
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(&h), &bytes).unwrap();
        let moved = shares.join(&h[..2]).join(&h);
        let config = free_config(dir.path());
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let refused = std::net::TcpStream::connect(addr).map_err(|e| e.kind());
        assert_eq!(
            refused.err(),
            Some(std::io::ErrorKind::ConnectionRefused),
            "a mirror not yet serving refuses connections"
        );
        let seen = Arc::new(std::sync::Mutex::new(None));
        let saw = seen.clone();
        let ready = move || {
            let store_open = moved.is_file() && shares.join("LAYOUT").is_file();
            let answered = std::net::TcpStream::connect(addr).is_ok();
            *saw.lock().unwrap() = Some((store_open, answered));
            Ok(())
        };
        // Ends the mirror once it serves (it is first polled then).
        let shutdown = tokio::time::sleep(Duration::from_millis(50));
        tokio::time::timeout(
            Duration::from_secs(30),
            serve(socket, None, config, ready, shutdown),
        )
        .await
        .expect("the mirror stops at its shutdown")
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some((true, true)),
            "ready comes with the store open and the socket listening"
        );
    }

    /// While a mirror moves a large old store forward, a connection to its
    /// address is refused, not held: the first one taken finds the move
    /// done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_refused_until_the_store_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        // Enough two-level shares that the move takes a while.
        for i in 0..4000u32 {
            let bytes = i.to_le_bytes();
            let h = crate::protocol::hex(&crate::chunk::share_id(&bytes));
            let old = shares.join(&h[..2]).join(&h[2..4]);
            std::fs::create_dir_all(&old).unwrap();
            std::fs::write(old.join(&h), bytes).unwrap();
        }
        let config = free_config(dir.path());
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        // `LAYOUT` is written last in the move: there once the store is open.
        let layout = shares.join("LAYOUT");
        let ready = || Ok(());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(socket, None, config, ready, async {
            let _ = stopped.await;
        }));
        // Try to connect until one succeeds; none may before `ready`.
        let prober = tokio::task::spawn_blocking(move || {
            let (mut refused, deadline) = (0, std::time::Instant::now() + Duration::from_secs(60));
            loop {
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => return (refused, layout.is_file()),
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                        refused += 1;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "never answered");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let (refused, open) = prober.await.unwrap();
        stop_mirror(stop, server).await;
        assert!(refused > 0, "the move was over before the first try");
        assert!(
            open,
            "a connection was taken before the store was open ({refused} refused first)"
        );
    }

    /// A renewal's body is bounded by what the most ids a renewal may
    /// name take: one past it is refused unread (it was read whole, up to
    /// a slot's 16 MiB, and parsed before the count was checked), and a
    /// renewal of the most ids goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_body_is_bounded_by_the_most_ids() {
        let dir = tempfile::tempdir().unwrap();
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = free_config(dir.path());
        let server = tokio::spawn(serve(socket, None, config, || Ok(()), async {
            let _ = stopped.await;
        }));
        // Listening once the store is open; waited for here so that the
        // timeout below covers the renewal alone.
        let addr = url.trim_start_matches("http://").to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the mirror never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let key = crate::crypto::RootSecret::from_bytes([5; 32]).account_key();
        let mirror = crate::store::HttpMirror::new(&url, key).unwrap();
        let ids: Vec<[u8; 32]> = (0..MAX_RENEW_IDS as u32)
            .map(|i| crate::crypto::sha256(&i.to_le_bytes()))
            .collect();
        let answer = tokio::time::timeout(Duration::from_secs(60), mirror.renew(&ids)).await;
        let answer = answer.expect("the renewal is answered").unwrap();
        assert_eq!((answer.renewed, answer.missing.len()), (0, MAX_RENEW_IDS));
        let big = reqwest::Client::new()
            .post(format!("{url}/v1/renew"))
            .body(vec![b' '; RENEW_BODY_MAX + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        stop_mirror(stop, server).await;
    }

    /// A client's first signed request asks the mirror's id first. Sent
    /// while the mirror is still starting (its socket bound, refusing
    /// connections), that ask is retried like the request itself, and the
    /// request goes through once the mirror listens.
    #[tokio::test]
    async fn a_first_signed_request_waits_out_a_mirror_still_starting() {
        let dir = tempfile::tempdir().unwrap();
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        let key = crate::crypto::RootSecret::from_bytes([6; 32]).account_key();
        let mirror = crate::store::HttpMirror::new(&url, key).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = free_config(dir.path());
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            serve(socket, None, config, || Ok(()), async {
                let _ = stopped.await;
            })
            .await
        });
        let answer = tokio::time::timeout(Duration::from_secs(30), mirror.account()).await;
        let account = answer.expect("answered in time");
        assert!(
            account.is_ok(),
            "{:?}",
            account.err().map(|e| e.to_string())
        );
        stop_mirror(stop, server).await;
    }

    /// A slot, batch or renewal body that keeps coming, but slower than
    /// the slowest upload waited for, is refused once its time is up; one
    /// at that pace in time is read; one declared over the limit is
    /// refused before any of it is read. (Virtual time: no test waits.)
    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_body_is_refused_when_its_time_is_up() {
        use futures_util::StreamExt;
        let trickle = |len: usize, pieces: usize| {
            let piece = axum::body::Bytes::from(vec![b' '; len / pieces]);
            Body::from_stream(futures_util::stream::iter(0..pieces).then(move |_| {
                let piece = piece.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(50)).await;
                    Ok::<_, std::io::Error>(piece)
                }
            }))
        };
        let declaring = |len: usize| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, len.into());
            headers
        };
        // 4 KiB over 200 s: past the 60 s a small body gets.
        let slow = read_body(&declaring(4096), trickle(4096, 4), RENEW_BODY_MAX).await;
        assert!(
            matches!(&slow, Err(Error::BadRequest(m)) if m.contains("too slow")),
            "{:?}",
            slow.map(|b| b.len())
        );
        // 2 MiB in two pieces over 100 s: within 60 s plus 64.
        let fine = read_body(&declaring(2 << 20), trickle(2 << 20, 2), MAX_SLOT_BYTES).await;
        assert_eq!(fine.unwrap().len(), 2 << 20);
        // The same 2 MiB in one piece after 70 s of silence: within the
        // whole body's time, but past the 60 s a piece may take.
        let silent = Body::from_stream(futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(70)).await;
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 2 << 20]))
        }));
        let silent = read_body(&declaring(2 << 20), silent, MAX_SLOT_BYTES).await;
        assert!(
            matches!(&silent, Err(Error::BadRequest(m)) if m.contains("too slow")),
            "{:?}",
            silent.map(|b| b.len())
        );
        let big = read_body(
            &declaring(RENEW_BODY_MAX + 1),
            trickle(4096, 1),
            RENEW_BODY_MAX,
        )
        .await;
        assert!(matches!(big, Err(Error::TooLarge { .. })));
        // Undeclared, it is 413 once it runs past the limit...
        let long = read_body(
            &HeaderMap::new(),
            trickle(2 * RENEW_BODY_MAX, 1),
            RENEW_BODY_MAX,
        )
        .await;
        assert!(matches!(long, Err(Error::TooLarge { .. })));
        // ...and a body whose client went away is not "too large".
        let cut = Body::from_stream(futures_util::stream::iter([
            Ok(axum::body::Bytes::from_static(b"[\"ab")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "gone",
            )),
        ]));
        let cut = read_body(&declaring(4096), cut, RENEW_BODY_MAX).await;
        assert!(
            matches!(&cut, Err(Error::BadRequest(m)) if m.contains("cut short")),
            "{:?}",
            cut.map(|b| b.len())
        );
    }

    /// The ledger's time moves with a step of the wall clock only at a
    /// look (`keep_time`), together with every lease: until then rows are
    /// stamped and GC compares in the frame they were written in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_of_the_wall_clock_reaches_the_ledger_at_a_look() {
        const DAY: i64 = 86_400;
        let dir = tempfile::tempdir().unwrap();
        let terms = Terms {
            lease_secs: 10 * DAY,
            quota: None,
            capacity: None,
            price_micro: 0,
            grace_secs: 0,
            free_bytes: 0,
        };
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), terms).unwrap();
        // Last looked at 40 days behind the wall: the wall was stepped
        // forward by as much since (an NTP correction after boot).
        let wall = unix_now();
        let clock = LedgerClock::new(wall - 40 * DAY);
        ledger
            .add_share(&[1; 32], &[2; 32], 1000, clock.now())
            .unwrap();
        // Read from the wall, this lease had lapsed 30 days ago, and a GC
        // pass now would take the share.
        assert_eq!(ledger.unleased(wall, 10).unwrap().len(), 1);
        assert!(ledger.unleased(clock.now(), 10).unwrap().is_empty());
        assert!(keep_time(&ledger, &clock).await);
        let now = clock.now();
        assert!(
            (wall..wall + 5).contains(&now),
            "the clock is the wall's again"
        );
        assert!(
            ledger.unleased(now, 10).unwrap().is_empty(),
            "the lease moved with the step"
        );
        assert_eq!(ledger.unleased(now + 10 * DAY + 10, 10).unwrap().len(), 1);
        // A second look finds no step: nothing moves again.
        assert!(keep_time(&ledger, &clock).await);
        assert_eq!(ledger.unleased(now + 10 * DAY + 10, 10).unwrap().len(), 1);
    }

    /// A step of the wall clock is told from drift by how far it is from
    /// the ledger's clock, forward or back.
    #[test]
    fn a_clock_step_is_told_from_drift() {
        let ledger_now = 1_700_000_000;
        assert_eq!(clock_step(ledger_now, ledger_now), None);
        assert_eq!(clock_step(ledger_now, ledger_now + 500), None, "drift");
        assert_eq!(clock_step(ledger_now, ledger_now - 500), None, "drift");
        assert_eq!(
            clock_step(ledger_now, ledger_now + 40 * 86_400),
            Some(40 * 86_400)
        );
        assert_eq!(clock_step(ledger_now, ledger_now - 86_400), Some(-86_400));
    }

    #[test]
    fn an_id_has_one_spelling() {
        let id = [0xab; 32];
        assert_eq!(id_of(&crate::protocol::hex(&id)).ok(), Some(id));
        for bad in [
            "AB".repeat(32),
            "ab".repeat(31),
            "xy".repeat(32),
            String::new(),
        ] {
            assert!(
                matches!(id_of(&bad), Err(Error::BadRequest(_))),
                "{bad:?} was taken"
            );
        }
    }
}
