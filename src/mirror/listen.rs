//! Who gets a connection to the mirror's HTTP server, and for how long.
//!
//! A mirror faces clients it cannot trust. Left to itself, the server took
//! every connection offered and kept each for as long as its peer liked:
//! one that sent nothing (not even a request line) was held for good, and
//! each such costs a descriptor and hyper's buffers. [`Admission`] is the
//! server's listener instead of the bare socket:
//!
//! - at most `max` connections are open at once; past that the mirror
//!   stops accepting, so newcomers wait in the kernel's backlog (and, once
//!   that is full, are refused) while the ones it has are served;
//! - one peer address holds at most a quarter of those places, or
//!   [`PEER_FLOOR`] if that is more, but an eighth is always left to the
//!   others ([`per_peer`]; with a bound of one, that one place is all);
//!   a connection past that
//!   is closed as soon as it is taken, so that one host cannot lock every
//!   other out;
//! - a connection that moves no byte either way for `idle`, with no
//!   request in hand, is closed ([`Admitted`]). A client's pooled
//!   connection is idle so, and reqwest drops its own after 90 s. A
//!   request being answered is not idle even when no byte moves (a
//!   handler waiting for GC's lock): the [`track`] layer counts the
//!   requests each connection has in hand, and [`Flight`] hands the count
//!   from the connection to the layer.
//!
//! - a request's head (its request line and header fields) must come
//!   whole within `head` of its first byte, however steadily its bytes
//!   trickle in ([`HEAD`]); hyper has this deadline too, but `axum::serve`
//!   gives it no timer, so there it never runs. Bodies have deadlines of
//!   their own (`disk::body_deadline`, `http::read_body`).
//!
//! - HTTP/2 is refused: a connection whose first bytes are its preface is
//!   closed. The server would speak it (reqwest's `http2` feature turns on
//!   hyper-util's), with 200 requests at once on one connection and pings
//!   that keep it from ever being idle; lode's client speaks HTTP/1.1.
//!
//! Not bounded here: many peers at once; a peer that reads an answer a
//! little at a time, each piece within `idle`; a chain of slow uploads,
//! each body within its deadline. A peer is an IPv4 address, or an IPv6
//! /64.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections open at once, by default.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a connection may move nothing, by default: past the 90 s
/// after which reqwest, the mount's client, drops an idle pooled one, so
/// that the client, not the mirror, is the one to close it.
pub const IDLE: Duration = Duration::from_secs(120);

/// How long a request's head may take from its first byte, by default:
/// hyper's own default. lode's client sends a head of a few hundred bytes
/// in one write.
pub const HEAD: Duration = Duration::from_secs(30);

/// Places one peer address may hold, at least (or all but an eighth, if
/// fewer). A
/// mount untarring 10,000 files and then writing 1 GiB kept at most 6
/// connections to one mirror (`ss`, every 0.25 s); readahead (16 fetches)
/// and `lode check` (16 probes) add bursts, and a `lode sync` of many
/// small files up to 96, when their shares are not batched (see
/// `SYNC_SMALL_UPLOAD_THREADS` in `fuse/fs.rs`). Several mounts behind one
/// address, with a wide margin: one cut off mid-upload would take the
/// mirror for down.
pub const PEER_FLOOR: usize = 128;

/// The places one peer address may hold of `max`: a quarter, or
/// [`PEER_FLOOR`] if that is more, but never the last eighth (at least
/// one place), so that with a small `max` one peer still cannot take
/// every place; and at least one. A lone mount on a small private mirror
/// keeps nearly all of it: past its share a connection is closed, not
/// kept waiting, and the mount would take the mirror for down.
pub fn per_peer(max: usize) -> usize {
    let others = (max / 8).max(1);
    (max / 4)
        .max(PEER_FLOOR.min(max.saturating_sub(others)))
        .max(1)
}

/// How long to wait after an accept failed for want of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// The mirror's listener: a bound on open connections, and on idleness.
pub struct Admission {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    /// Whether the bound was met since it was last said.
    full: bool,
    peers: PeerPlaces,
    /// When a peer past its share was last said to be.
    said_peer: Option<Instant>,
}

/// Connections open per peer address, and the most one may have of a
/// listener's `max` ([`per_peer`]). The Stratum pool keeps one too.
#[derive(Clone)]
pub struct PeerPlaces {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    most: usize,
}

impl PeerPlaces {
    pub fn new(max: usize) -> PeerPlaces {
        PeerPlaces {
            open: Arc::default(),
            most: per_peer(max),
        }
    }

    /// The most places one peer may hold.
    pub fn most(&self) -> usize {
        self.most
    }

    /// A place for a connection from `ip`, unless its peer has its share.
    pub fn take(&self, ip: IpAddr) -> Option<PeerPlace> {
        let ip = peer_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(ip).or_default();
        if *held >= self.most {
            return None;
        }
        *held += 1;
        Some(PeerPlace {
            peers: self.open.clone(),
            ip,
        })
    }
}

/// How long a connection may stay silent, and a request's head take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub head: Duration,
}

impl Admission {
    pub fn new(listener: TcpListener, max: usize, limits: Limits) -> Admission {
        Admission {
            listener,
            permits: Arc::new(Semaphore::new(max.max(1))),
            limits,
            full: false,
            peers: PeerPlaces::new(max),
            said_peer: None,
        }
    }

    /// A place for a connection from `ip`, unless its peer has its share.
    fn peer_place(&mut self, ip: IpAddr) -> Option<PeerPlace> {
        let place = self.peers.take(ip);
        if place.is_none() && said_long_ago(&mut self.said_peer) {
            let (ip, most) = (peer_of(ip), self.peers.most());
            tracing::warn!(%ip, most, "a peer has every connection it may; closing its new ones");
        }
        place
    }
}

/// Whether a warning last said at `said` may be said again (once a
/// minute at most); if so, it counts as said now.
pub fn said_long_ago(said: &mut Option<Instant>) -> bool {
    let again = said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
    if again {
        *said = Some(Instant::now());
    }
    again
}

/// The peer an address belongs to: an IPv4 address (also written as an
/// IPv4-mapped IPv6 one) on its own; an IPv6 address by its /64, the
/// block one host is usually given whole, so that it cannot take a place
/// per address.
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// One connection counted against its peer address until dropped.
pub struct PeerPlace {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = peers.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for Admission {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Admitted, SocketAddr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.full {
                    self.full = true;
                    tracing::warn!(
                        "every connection the mirror allows is open; new ones wait until one closes"
                    );
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        if self.permits.available_permits() > 0 {
            self.full = false;
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // Past its share: closed now, the place kept.
                    let Some(peer) = self.peer_place(addr.ip()) else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return (Admitted::new(stream, permit, peer, self.limits), addr);
                }
                // Gone before it was taken: the next one.
                Err(e) if is_per_connection(&e) => {}
                // Out of descriptors, most likely: some close meanwhile.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; trying again shortly");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection: it holds its place among the open ones until
/// dropped, and fails its reads and writes once it has been idle too long
/// with no request in hand, or a request's head took too long.
pub struct Admitted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    peer: PeerPlace,
    limits: Limits,
    /// When a byte last moved.
    last: Instant,
    /// Fires at `last + idle`, or at the head's deadline, or later; moved
    /// on only when it fires or a head begins, not at every read and write.
    deadline: Pin<Box<Sleep>>,
    /// Requests on this connection being answered, and begun.
    flight: Arc<Counts>,
    /// A request head being read: when its first byte came, and how many
    /// requests had begun then (once one more has, the head is whole).
    head_since: Option<(Instant, u64)>,
    /// The connection's first bytes, while fewer than `PREFACE` have come.
    preface: Vec<u8>,
}

/// What the [`track`] layer counts on one connection.
#[derive(Default)]
pub struct Counts {
    /// Requests in hand.
    busy: AtomicUsize,
    /// Answers whose bodies are being written.
    sending: AtomicUsize,
    /// Requests begun, ever.
    begun: AtomicU64,
}

/// How an HTTP/2 connection begins (RFC 9113, 3.4); no HTTP/1 request
/// does.
const PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl Admitted {
    fn new(
        stream: TcpStream,
        place: OwnedSemaphorePermit,
        peer: PeerPlace,
        limits: Limits,
    ) -> Admitted {
        Admitted {
            stream,
            _place: place,
            peer,
            limits,
            last: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(limits.idle)),
            flight: Arc::default(),
            head_since: None,
            preface: Vec::new(),
        }
    }

    /// Look at `new`, bytes just read: an error if the connection begins
    /// as HTTP/2 does.
    fn look_at(&mut self, new: &[u8]) -> io::Result<()> {
        if self.preface.len() >= PREFACE.len() {
            return Ok(());
        }
        let take = new.len().min(PREFACE.len() - self.preface.len());
        self.preface.extend_from_slice(&new[..take]);
        let n = self.preface.len();
        if self.preface[..] == PREFACE[..n] && n == PREFACE.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP/2 is not served",
            ));
        }
        if self.preface[..] != PREFACE[..n] {
            // Not HTTP/2: looked at enough.
            self.preface = vec![0; PREFACE.len()];
        }
        Ok(())
    }

    /// Bytes moved: the idle time starts over.
    fn moved(&mut self) {
        self.last = Instant::now();
    }

    /// Bytes came in. With no request in hand and no answer being sent
    /// they are a request's head (or the start of one), whose deadline
    /// runs from its first byte.
    fn received(&mut self) {
        self.moved();
        if self.flight.busy.load(Ordering::Acquire) > 0
            || self.flight.sending.load(Ordering::Acquire) > 0
        {
            self.head_since = None;
            return;
        }
        let begun = self.flight.begun.load(Ordering::Acquire);
        if self.head_since.is_none_or(|(_, at)| at != begun) {
            self.head_since = Some((self.last, begun));
            let due = self.last + self.limits.head;
            if due < self.deadline.deadline() {
                self.deadline.as_mut().reset(due);
            }
        }
    }

    /// When the head being read must be whole, if one is.
    fn head_due(&mut self) -> Option<Instant> {
        let (since, at) = self.head_since?;
        if self.flight.busy.load(Ordering::Acquire) > 0
            || self.flight.begun.load(Ordering::Acquire) != at
        {
            self.head_since = None;
            return None;
        }
        Some(since + self.limits.head)
    }

    /// What a write of the stream came to: bytes moved, or nothing to do
    /// now (see [`Self::waiting`]).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }

    /// Nothing to do now: an error if the idle time is up with no request
    /// in hand, or a request's head is late; else pending, the timer set to
    /// wake this task when it may be.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let head = self.head_due();
            if head.is_some_and(|due| due <= now) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head too slow",
                )));
            }
            let mut due = self.last + self.limits.idle;
            if due <= now {
                if self.flight.busy.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle too long",
                    )));
                }
                self.last = now;
                due = now + self.limits.idle;
            }
            self.deadline
                .as_mut()
                .reset(head.map_or(due, |h| h.min(due)));
        }
        Poll::Pending
    }
}

/// The counts of requests on one connection, and its peer, as the
/// [`track`] layer finds them among a request's extensions (axum's
/// connect info).
#[derive(Clone)]
pub struct Flight(Arc<Counts>, IpAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Admission>> for Flight {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Admission>) -> Flight {
        let io = stream.io();
        Flight(io.flight.clone(), io.peer.ip)
    }
}

/// The peer a request came from (as [`PeerPlaces`] counts them), for the
/// handlers: put among its extensions by [`track`].
#[derive(Clone, Copy)]
pub struct Peer(pub IpAddr);

/// A request begun, counted in hand until dropped.
struct InHand(Arc<Counts>);

impl InHand {
    fn begin(counts: Arc<Counts>) -> InHand {
        counts.begun.fetch_add(1, Ordering::AcqRel);
        counts.busy.fetch_add(1, Ordering::AcqRel);
        InHand(counts)
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response's body being written, counted until dropped: hyper reads
/// the socket meanwhile, and bytes it gets then are the next request
/// sent early (pipelined), not a head held to [`HEAD`] while the answer
/// before it goes out at the peer's pace.
struct Sending {
    body: axum::body::Body,
    counts: Arc<Counts>,
}

impl Sending {
    fn new(body: axum::body::Body, counts: Arc<Counts>) -> Sending {
        counts.sending.fetch_add(1, Ordering::AcqRel);
        Sending { body, counts }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.counts.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl http_body::Body for Sending {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Middleware: count the request as in hand on its connection until its
/// answer is made, and its answer as being sent until its body is written
/// (a streamed body moves bytes from then on, so it is not in hand: a
/// peer that reads nothing is closed once idle).
pub async fn track(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut request = request;
    let flight = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Flight>>()
        .map(|info| (info.0.0.clone(), info.0.1));
    let counts = flight.as_ref().map(|(counts, _)| counts.clone());
    if let Some((_, ip)) = flight {
        request.extensions_mut().insert(Peer(ip));
    }
    let in_hand = counts.clone().map(InHand::begin);
    let response = next.run(request).await;
    let Some(counts) = counts else {
        return response;
    };
    let response = response.map(|body| axum::body::Body::new(Sending::new(body, counts)));
    drop(in_hand);
    response
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    me.received();
                    me.look_at(&buf.filled()[before..])?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => me.waiting(cx),
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.stream).poll_write(cx, buf);
        me.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.stream).poll_write_vectored(cx, bufs);
        me.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn admission(max: usize, idle: Duration) -> (Admission, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            Admission::new(listener, max, Limits { idle, head: HEAD }),
            addr,
        )
    }

    /// Past the bound, the next connection is not taken until one of
    /// those open closes.
    #[tokio::test]
    async fn past_the_bound_a_connection_waits_for_one_to_close() {
        let (mut admission, addr) = admission(2, IDLE).await;
        // All from one address here: let it have every place.
        admission.peers.most = 2;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = admission.accept().await.0;
        let _second = admission.accept().await.0;
        let _c = TcpStream::connect(addr).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(300), admission.accept()).await;
        assert!(
            third.is_err(),
            "a third connection was taken past the bound of 2"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), admission.accept()).await;
        assert!(third.is_ok(), "the third was not taken once one closed");
    }

    /// A connection that moves nothing is closed once idle for the time
    /// allowed; one that keeps moving bytes is not.
    #[tokio::test]
    async fn an_idle_connection_fails_and_a_busy_one_does_not() {
        let idle = Duration::from_millis(400);
        let (mut admission, addr) = admission(4, idle).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        served.limits.head = Duration::from_secs(3600);
        // Busy: a byte each 100 ms, for five times the idle time.
        let talk = tokio::spawn(async move {
            for _ in 0..20 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let mut got = 0;
        let mut byte = [0u8; 1];
        while got < 20 {
            served
                .read_exact(&mut byte)
                .await
                .expect("a busy connection failed");
            got += 1;
        }
        // The last byte came now; the client stays, silent from here on:
        // the next read fails once the idle time is up.
        let started = Instant::now();
        let _client = talk.await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), served.read(&mut byte))
            .await
            .expect("an idle connection was kept")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= idle - Duration::from_millis(50));
    }

    /// A peer past its share of the places has its new connections
    /// closed at once; the others' stay, and once one of its own closes it
    /// may open another.
    #[tokio::test]
    async fn a_peer_past_its_share_is_closed() {
        assert_eq!(
            [
                per_peer(1),
                per_peer(2),
                per_peer(8),
                per_peer(64),
                per_peer(200),
                per_peer(256),
                per_peer(1024),
                per_peer(4096)
            ],
            [1, 1, 7, 56, 128, 128, 256, 1024]
        );
        let (mut admission, addr) = admission(8, IDLE).await;
        admission.peers.most = 2;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let first = admission.accept().await.0;
        let _second = admission.accept().await.0;
        // The third is taken and closed within the next accept, which then
        // waits for a fourth.
        let fourth = tokio::time::timeout(Duration::from_millis(300), admission.accept()).await;
        assert!(
            fourth.is_err(),
            "a third connection from one peer was let in"
        );
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), c.read(&mut byte))
            .await
            .expect("the third connection was left open");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert_eq!(
            admission.peers.open.lock().unwrap().values().sum::<usize>(),
            2
        );
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(10), admission.accept()).await;
        assert!(again.is_ok(), "no place once one of its own closed");
    }

    /// A connection that opens as HTTP/2 does (even a byte at a time) is
    /// refused; one that opens as HTTP/1 does is read as it comes.
    #[tokio::test]
    async fn http2_is_refused() {
        let (mut admission, addr) = admission(4, IDLE).await;
        let mut h2 = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            h2.write_all(&[*b]).await.unwrap();
        }
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let err = loop {
            match served.read(&mut byte).await {
                Ok(n) => got.extend_from_slice(&byte[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(got.len() < PREFACE.len(), "read past the preface: {got:?}");
        let mut h1 = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        h1.write_all(b"PRI-ish\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(h1);
        let mut all = Vec::new();
        served.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI-ish\r\nGET / HTTP/1.1\r\n");
    }

    /// Peers: IPv4 addresses each their own, also IPv4-mapped; IPv6 ones
    /// by their /64.
    #[test]
    fn an_ipv6_peer_is_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            peer_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            peer_of(ip("2001:db8:1:3::1")),
            peer_of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(peer_of(ip("::1")), ip("::"));
    }

    /// A connection with a request in hand is not idle, though no byte
    /// moves (a handler waiting on a lock); once the answer is made, the
    /// idle time runs again.
    #[tokio::test]
    async fn a_request_in_hand_keeps_a_silent_connection() {
        let idle = Duration::from_millis(300);
        let (mut admission, addr) = admission(4, idle).await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        let in_hand = InHand::begin(served.flight.clone());
        let mut byte = [0u8; 1];
        let kept = tokio::time::timeout(idle * 4, served.read(&mut byte)).await;
        assert!(kept.is_err(), "closed with a request in hand: {kept:?}");
        drop(in_hand);
        let err = tokio::time::timeout(Duration::from_secs(10), served.read(&mut byte))
            .await
            .expect("idle once answered, and kept")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// A request head trickled in is cut off at its deadline, though its
    /// bytes keep the connection from being idle; once a request is in
    /// hand its body's bytes are not held to it, and the next request's
    /// head gets a deadline of its own.
    #[tokio::test]
    async fn a_trickled_head_is_cut_off() {
        let head = Duration::from_millis(500);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            idle: Duration::from_secs(60),
            head,
        };
        let mut admission = Admission::new(listener, 4, limits);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        // A head whose bytes come at 100 ms apiece, for ten times its time.
        let talk = tokio::spawn(async move {
            for b in b"GET /a-long-path-for-a-slow-head HTTP/1.1\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(10), served.read(&mut byte))
                .await
                .expect("a trickled head was kept")
            {
                Ok(n) => assert!(n > 0, "the client closed first"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= head - Duration::from_millis(50) && took < head * 3,
            "cut off after {took:?}"
        );
        talk.abort();

        // A request in hand: its body may trickle past the head's time.
        // Each read waits for its byte, so the deadline is looked at.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut served = admission.accept().await.0;
        client.write_all(b"PUT / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = [0u8; 18];
        served.read_exact(&mut got).await.unwrap();
        // Ten bytes from `client` at 100 ms apiece, each read waiting for
        // its byte; the client back once they all came.
        async fn trickled(served: &mut Admitted, mut client: TcpStream, what: &str) -> TcpStream {
            let talk = tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client.write_all(b"x").await.unwrap();
                }
                client
            });
            let mut byte = [0u8; 1];
            for _ in 0..10 {
                served.read_exact(&mut byte).await.expect(what);
            }
            talk.await.unwrap()
        }
        let request = InHand::begin(served.flight.clone());
        let client = trickled(
            &mut served,
            client,
            "a body was held to the head's deadline",
        )
        .await;
        drop(request);

        // An answer being sent: the next request's head, sent early, is
        // not held to the deadline while the answer goes out.
        let sending = Sending::new(axum::body::Body::empty(), served.flight.clone());
        let what = "a head sent during an answer was held to the deadline";
        let mut client = trickled(&mut served, client, what).await;
        drop(sending);

        // The next head starts its own clock at its first byte: silent
        // for longer than the head's time first, then cut off in time.
        tokio::time::sleep(head * 2).await;
        client.write_all(b"G").await.unwrap();
        served.read_exact(&mut byte).await.unwrap();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), served.read(&mut byte))
            .await
            .expect("the second head was kept")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= head - Duration::from_millis(50) && took < head * 3,
            "cut off after {took:?}"
        );
    }
}
