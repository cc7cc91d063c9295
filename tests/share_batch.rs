//! Small shares travel in batches (`POST /v1/shares`): a real mirror
//! answers each share as it would have answered it alone, refuses bodies
//! that are malformed or not signed for their ids, and the client sends
//! concurrent small uploads together, goes alone to a mirror without
//! batches, and never strands an upload behind a leader that was cancelled.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use common::{MirrorProc, TestServer};
use lode::crypto::RootSecret;
use lode::protocol::{
    BatchReply, BatchResult, RequestAuth, batch_digest, decode_batch, encode_batch, unix_now,
};
use lode::store::{HttpMirror, Storage};

fn share(seed: &str, len: usize) -> ([u8; 32], Vec<u8>) {
    let bytes = common::seeded_bytes(seed, len);
    (*blake3::hash(&bytes).as_bytes(), bytes)
}

/// POST a batch body to a real mirror, signed as `signer` for `ids` (or
/// not signed); the status and body, or the error sending it.
fn try_post(
    url: &str,
    signer: Option<u8>,
    ids: &[[u8; 32]],
    body: Vec<u8>,
) -> Result<(u16, String), reqwest::Error> {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/shares"))
        .body(body);
    common::runtime().block_on(async {
        if let Some(signer) = signer {
            let key = RootSecret::from_bytes([signer; 32]).account_key();
            let digest = batch_digest(ids);
            let to = common::mirror_id(url).await;
            let path = "/v1/shares";
            let auth = RequestAuth::sign_digest(&key, &to, "POST", path, unix_now(), &digest);
            req = req.header("authorization", auth.header());
        }
        let resp = req.send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    })
}

fn post_batch(url: &str, signer: u8, ids: &[[u8; 32]], body: Vec<u8>) -> (u16, String) {
    try_post(url, Some(signer), ids, body).unwrap()
}

/// Post `items` as one well-formed batch signed by `signer`'s account;
/// the mirror's reply (which must be 200) and each share's status.
fn post_items(url: &str, signer: u8, items: &[([u8; 32], Vec<u8>)]) -> (BatchReply, Vec<u16>) {
    let ids: Vec<[u8; 32]> = items.iter().map(|(id, _)| *id).collect();
    let body = encode_batch(items.iter().map(|(id, b)| (id, &b[..])));
    let (status, text) = post_batch(url, signer, &ids, body);
    assert_eq!(status, 200, "{text}");
    let reply: BatchReply = serde_json::from_str(&text).unwrap();
    let statuses = reply.results.iter().map(|r| r.status).collect();
    (reply, statuses)
}

/// A body the mirror refuses with `status`, or stops reading (it may
/// answer and close before the client has sent it all).
fn refused(sent: Result<(u16, String), reqwest::Error>, status: u16) {
    match sent {
        Ok((got, text)) => assert_eq!(got, status, "{text}"),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
}

#[test]
fn a_batch_is_answered_share_by_share() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let key = RootSecret::from_bytes([0x71; 32]).account_key();
    let client = HttpMirror::new(&mirror.url, key).unwrap();
    let rt = common::runtime();
    let (held_id, held) = share("held", 3000);
    // Larger than a batch takes: uploaded alone, then named in no batch.
    rt.block_on(client.put_share(&held_id, held.clone().into()))
        .unwrap();

    let (new_id, new) = share("new", 5000);
    let (_, honest) = share("liar", 800);
    let lying_id = [0x5a; 32];
    let items = [
        (new_id, new.clone()),
        (lying_id, honest),
        (held_id, held.clone()),
    ];
    let (reply, statuses) = post_items(&mirror.url, 0x71, &items);
    assert_eq!(statuses, [201, 400, 200], "{reply:?}");
    assert!(reply.results[1].error.as_deref().unwrap().contains("hash"));

    assert_eq!(
        rt.block_on(client.get_share(&new_id)).unwrap().as_deref(),
        Some(&new[..])
    );
    assert_eq!(rt.block_on(client.get_share(&lying_id)).unwrap(), None);
    let status = rt.block_on(client.account()).unwrap();
    assert_eq!(status.leases, 2);
    assert_eq!(status.usage_bytes, (new.len() + held.len()) as u64);
}

/// A share another account holds is leased, not stored; over the quota
/// that lease is refused for that share alone, as it would be alone.
#[test]
fn a_held_share_over_quota_is_refused_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &["--quota", "4000"]);
    let rt = common::runtime();
    let first = HttpMirror::new(
        &mirror.url,
        RootSecret::from_bytes([0x74; 32]).account_key(),
    )
    .unwrap();
    let second = HttpMirror::new(
        &mirror.url,
        RootSecret::from_bytes([0x75; 32]).account_key(),
    )
    .unwrap();
    let (held_id, held) = share("held-by-first", 3000);
    rt.block_on(first.put_share(&held_id, held.into())).unwrap();
    let (own_id, own) = share("second-own", 2000);
    rt.block_on(second.put_share(&own_id, own.into())).unwrap();

    let (new_id, new) = share("second-new", 1000);
    let (_, held) = share("held-by-first", 3000);
    let items = [(new_id, new), (held_id, held)];
    let (reply, statuses) = post_items(&mirror.url, 0x75, &items);
    assert_eq!(statuses, [201, 507], "{reply:?}");
    let status = rt.block_on(second.account()).unwrap();
    assert_eq!((status.leases, status.usage_bytes), (2, 3000));
}

#[test]
fn malformed_or_missigned_batches_are_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let (a_id, a) = share("a", 100);
    let (b_id, b) = share("b", 200);
    let body = encode_batch([(&a_id, &a[..]), (&b_id, &b[..])].into_iter());

    // Signed for the ids in another order: not this request.
    let (status, _) = post_batch(&mirror.url, 0x72, &[b_id, a_id], body.clone());
    assert_eq!(status, 401);
    // Not a batch.
    let (status, text) = post_batch(&mirror.url, 0x72, &[a_id, b_id], b"\x01\x00".to_vec());
    assert_eq!(status, 400);
    assert!(text.contains("batch"), "{text}");
    // Over the body limit: refused unread.
    refused(
        try_post(&mirror.url, Some(0x72), &[a_id], vec![1; 5 << 20]),
        413,
    );
    // Without a signature the body is not even read.
    refused(try_post(&mirror.url, None, &[a_id], vec![1; 5 << 20]), 401);
    refused(try_post(&mirror.url, None, &[a_id], body.clone()), 401);
    // Nothing of it was stored.
    let key = RootSecret::from_bytes([0x72; 32]).account_key();
    let client = HttpMirror::new(&mirror.url, key).unwrap();
    let rt = common::runtime();
    assert!(!rt.block_on(client.has_share(&a_id)).unwrap());
    // The same body, rightly signed, goes through.
    let (status, text) = post_batch(&mirror.url, 0x72, &[a_id, b_id], body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        rt.block_on(client.get_share(&b_id)).unwrap().as_deref(),
        Some(&b[..])
    );
}

/// How a counting mirror answers batches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batches {
    /// Stores every share.
    Taken,
    /// Has no batch route (an older mirror): 404.
    Missing,
    /// Answers every batch with this status.
    Refused(u16),
}

/// What a counting mirror saw.
#[derive(Default)]
struct Seen {
    singles: AtomicUsize,
    batches: AtomicUsize,
    batched_shares: AtomicUsize,
    /// Batch requests still to hold back for a while.
    slow_batches: AtomicUsize,
    stored: Mutex<Vec<[u8; 32]>>,
}

/// A mirror double that counts requests, on 127.0.0.1:0 until dropped.
struct Counter {
    server: TestServer,
    seen: Arc<Seen>,
}

async fn single(State(s): State<Arc<Seen>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let id = lode::protocol::parse_hex::<32>(&id).unwrap();
    assert_eq!(blake3::hash(&body).as_bytes(), &id);
    s.singles.fetch_add(1, Ordering::SeqCst);
    s.stored.lock().unwrap().push(id);
    StatusCode::CREATED
}

async fn refuse(State((_, status)): State<(Arc<Seen>, u16)>) -> StatusCode {
    StatusCode::from_u16(status).unwrap()
}

async fn batch(State(s): State<Arc<Seen>>, body: Bytes) -> axum::Json<BatchReply> {
    let slow = s
        .slow_batches
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if slow {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let items = decode_batch(&body).unwrap();
    s.batches.fetch_add(1, Ordering::SeqCst);
    s.batched_shares.fetch_add(items.len(), Ordering::SeqCst);
    let mut results = Vec::new();
    for item in items {
        assert_eq!(blake3::hash(item.bytes).as_bytes(), &item.id);
        s.stored.lock().unwrap().push(item.id);
        results.push(BatchResult {
            status: 201,
            error: None,
        });
    }
    axum::Json(BatchReply { results })
}

impl Counter {
    fn start(batches: Batches) -> Counter {
        let seen = Arc::new(Seen::default());
        let singles = Router::new()
            .route("/v1/share/{id}", put(single))
            .route("/v1/info", axum::routing::get(common::stand_in_info))
            .with_state(seen.clone());
        let app = match batches {
            Batches::Taken => singles.merge(
                Router::new()
                    .route("/v1/shares", post(batch))
                    .with_state(seen.clone()),
            ),
            Batches::Missing => singles,
            Batches::Refused(status) => singles.merge(
                Router::new()
                    .route("/v1/shares", post(refuse))
                    .with_state((seen.clone(), status)),
            ),
        };
        Counter {
            server: TestServer::start(app),
            seen,
        }
    }

    fn client(&self) -> Arc<HttpMirror> {
        let key = RootSecret::from_bytes([0x73; 32]).account_key();
        Arc::new(HttpMirror::new(&self.server.url, key).unwrap())
    }
}

/// Put `n` small shares at once; every one must succeed.
async fn put_many(client: &Arc<HttpMirror>, n: usize) -> Vec<[u8; 32]> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let (id, bytes) = share(&format!("many{i}"), 500 + i);
        ids.push(id);
        let client = client.clone();
        tasks.spawn(async move { client.put_share(&id, bytes.into()).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    ids
}

fn sorted(mut ids: Vec<[u8; 32]>) -> Vec<[u8; 32]> {
    ids.sort();
    ids
}

#[test]
fn concurrent_small_uploads_go_out_together() {
    let mirror = Counter::start(Batches::Taken);
    let client = mirror.client();
    let rt = common::runtime();
    let ids = rt.block_on(put_many(&client, 64));
    let seen = &mirror.seen;
    assert_eq!(
        sorted(seen.stored.lock().unwrap().clone()),
        sorted(ids),
        "every share reached the mirror once"
    );
    assert_eq!(seen.singles.load(Ordering::SeqCst), 0);
    assert_eq!(seen.batched_shares.load(Ordering::SeqCst), 64);
    let batches = seen.batches.load(Ordering::SeqCst);
    assert!(batches < 64, "{batches} requests for 64 shares");
    // A large share still goes alone.
    let (id, big) = share("big", 100_000);
    rt.block_on(client.put_share(&id, big.into())).unwrap();
    assert_eq!(seen.singles.load(Ordering::SeqCst), 1);
}

#[test]
fn a_mirror_without_batches_gets_single_uploads() {
    let mirror = Counter::start(Batches::Missing);
    let client = mirror.client();
    let rt = common::runtime();
    let ids = rt.block_on(put_many(&client, 40));
    let seen = &mirror.seen;
    assert_eq!(sorted(seen.stored.lock().unwrap().clone()), sorted(ids));
    assert_eq!(seen.singles.load(Ordering::SeqCst), 40);
    assert_eq!(seen.batches.load(Ordering::SeqCst), 0);
}

#[test]
fn a_batch_refused_whole_is_answered_as_each_share_would_be() {
    let rt = common::runtime();
    // Held to smaller bodies (a proxy, say): no more batches, and every
    // share goes alone.
    let mirror = Counter::start(Batches::Refused(413));
    let client = mirror.client();
    let ids = rt.block_on(put_many(&client, 24));
    assert_eq!(
        sorted(mirror.seen.stored.lock().unwrap().clone()),
        sorted(ids)
    );
    assert_eq!(mirror.seen.singles.load(Ordering::SeqCst), 24);
    // The signature refused: each share alone would be refused the same,
    // so none is sent again.
    let mirror = Counter::start(Batches::Refused(401));
    let client = mirror.client();
    let (id, bytes) = share("unauthorized", 700);
    let result = rt.block_on(client.put_share(&id, bytes.into()));
    assert!(
        matches!(result, Err(lode::store::Error::Rejected { ref reason, .. }) if reason.contains("401")),
        "{result:?}"
    );
    assert_eq!(mirror.seen.singles.load(Ordering::SeqCst), 0);
}

#[test]
fn uploads_behind_a_cancelled_leader_still_go_out() {
    let mirror = Counter::start(Batches::Taken);
    mirror.seen.slow_batches.store(1, Ordering::SeqCst);
    let client = mirror.client();
    let rt = common::runtime();
    rt.block_on(async {
        // The leader's batch is held back by the mirror...
        let (lead_id, lead_bytes) = share("leader", 300);
        let leader = {
            let client = client.clone();
            tokio::spawn(async move { client.put_share(&lead_id, lead_bytes.into()).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...while two more queue behind it...
        let mut followers = tokio::task::JoinSet::new();
        let mut ids = Vec::new();
        for name in ["f1", "f2"] {
            let (id, bytes) = share(name, 400);
            ids.push(id);
            let client = client.clone();
            followers.spawn(async move { client.put_share(&id, bytes.into()).await });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...and the leader is cancelled: they must still be stored.
        leader.abort();
        let _ = leader.await;
        let all = async {
            while let Some(done) = followers.join_next().await {
                done.unwrap().unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("uploads behind a cancelled leader were stranded");
        let stored = mirror.seen.stored.lock().unwrap().clone();
        for id in &ids {
            assert!(stored.contains(id), "a follower's share was never sent");
        }
    });
}
