//! Many uploads at once to one real mirror: the group commit acknowledges
//! each share only with its bytes and record in place, refuses past the
//! quota share by share, and leaves no file for a refused share.

mod common;

use std::sync::Arc;

use common::MirrorProc;
use lode::crypto::RootSecret;
use lode::store::{Error, HttpMirror, Storage};

fn mirror_client(m: &MirrorProc, byte: u8) -> Arc<HttpMirror> {
    let key = RootSecret::from_bytes([byte; 32]).account_key();
    Arc::new(HttpMirror::new(&m.url, key).unwrap())
}

/// Put every blob at once; one result per blob, in order.
async fn put_all(client: &Arc<HttpMirror>, blobs: &[Vec<u8>]) -> Vec<Result<(), Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, blob) in blobs.iter().enumerate() {
        let (client, blob) = (client.clone(), blob.clone());
        tasks.spawn(async move {
            (
                i,
                client
                    .put_share(blake3::hash(&blob).as_bytes(), blob.into())
                    .await,
            )
        });
    }
    let mut out: Vec<Option<Result<(), Error>>> = (0..blobs.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.unwrap();
        out[i] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[test]
fn concurrent_uploads_are_all_stored_and_recorded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let client = mirror_client(&mirror, 0x61);
    let mut blobs: Vec<Vec<u8>> = (0..96)
        .map(|i| common::seeded_bytes(&format!("gc{i}"), 200 + 37 * i))
        .collect();
    // The same share several times in the same burst.
    let twice = blobs[0].clone();
    blobs.extend(std::iter::repeat_n(twice, 8));
    let rt = common::runtime();
    for r in rt.block_on(put_all(&client, &blobs)) {
        r.unwrap();
    }
    for blob in &blobs {
        let got = rt
            .block_on(client.get_share(blake3::hash(blob).as_bytes()))
            .unwrap();
        assert_eq!(got.as_deref(), Some(&blob[..]));
    }
    let status = rt.block_on(client.account()).unwrap();
    assert_eq!(status.leases, 96);
    let distinct: u64 = blobs[..96].iter().map(|b| b.len() as u64).sum();
    assert_eq!(status.usage_bytes, distinct);
}

#[test]
fn a_burst_over_quota_is_refused_share_by_share_and_leaves_no_files() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for ten 1000-byte shares; every upload passes the check before
    // its body (nothing is stored yet), so the refusals come at commit.
    let mirror = MirrorProc::start(&tmp.path().join("m"), &["--quota", "10000"]);
    let client = mirror_client(&mirror, 0x62);
    let blobs: Vec<Vec<u8>> = (0..40)
        .map(|i| common::seeded_bytes(&format!("quota{i}"), 1000))
        .collect();
    let rt = common::runtime();
    let results = rt.block_on(put_all(&client, &blobs));
    let mut stored = 0;
    for (blob, r) in blobs.iter().zip(&results) {
        let held = rt
            .block_on(client.has_share(blake3::hash(blob).as_bytes()))
            .unwrap();
        match r {
            Ok(()) => {
                stored += 1;
                assert!(held, "an acknowledged share is missing");
            }
            Err(Error::NoSpace { .. }) => assert!(!held, "a refused share was left on disk"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(stored, 10, "exactly the quota's worth is stored");
    let status = rt.block_on(client.account()).unwrap();
    assert_eq!((status.leases, status.usage_bytes), (10, 10_000));
}

/// Uploads of shares the mirror already holds skip the body and are leased
/// in the group commit: each uploader gets its own durable lease, and a
/// burst past an uploader's quota is refused lease by lease, the others
/// standing.
#[test]
fn a_burst_of_held_shares_is_leased_to_each_uploader() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &["--quota", "20000"]);
    let first = mirror_client(&mirror, 0x63);
    let second = mirror_client(&mirror, 0x64);
    let blobs: Vec<Vec<u8>> = (0..30)
        .map(|i| common::seeded_bytes(&format!("held{i}"), 1000))
        .collect();
    let rt = common::runtime();
    // The first account stores twenty of them.
    for r in rt.block_on(put_all(&first, &blobs[..20])) {
        r.unwrap();
    }
    // Again, all at once: all held, all fine, nothing counted twice.
    for r in rt.block_on(put_all(&first, &blobs[..20])) {
        r.unwrap();
    }
    let status = rt.block_on(first.account()).unwrap();
    assert_eq!((status.leases, status.usage_bytes), (20, 20_000));
    // The second account uploads all thirty at once: twenty are held and
    // leased to it, ten are stored; its quota holds exactly twenty.
    let results = rt.block_on(put_all(&second, &blobs));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::NoSpace { .. }), "unexpected error: {e}");
        }
    }
    assert_eq!(ok, 20, "exactly the quota's worth is leased or stored");
    let status = rt.block_on(second.account()).unwrap();
    assert_eq!((status.leases, status.usage_bytes), (20, 20_000));
    // The first account's leases are untouched.
    let status = rt.block_on(first.account()).unwrap();
    assert_eq!((status.leases, status.usage_bytes), (20, 20_000));
}
