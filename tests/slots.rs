//! The mirror's slot rules over HTTP: signatures, seq, replay window.

mod common;

use common::MirrorProc;
use lode::caps::DirWriteCap;
use lode::crypto::{RootSecret, SlotSeed};
use lode::dir::{Listing, SlotEnvelope};
use lode::protocol::{RequestAuth, hex};

struct Api {
    base: String,
    /// The mirror's id, which signed requests name.
    to: [u8; 32],
    http: reqwest::Client,
    account: lode::crypto::AccountKey,
}

impl Api {
    async fn put_slot(&self, env: &[u8], pk: &[u8; 32], time_offset: i64) -> reqwest::StatusCode {
        let path = format!("/v1/slot/{}", hex(pk));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let time = now + time_offset;
        let auth = RequestAuth::sign(&self.account, &self.to, "PUT", &path, time, env);
        self.http
            .put(format!("{}{path}", self.base))
            .header("authorization", auth.header())
            .body(env.to_vec())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn get_slot(&self, pk: &[u8; 32]) -> Option<Vec<u8>> {
        let r = self
            .http
            .get(format!("{}/v1/slot/{}", self.base, hex(pk)))
            .send()
            .await
            .unwrap();
        if !r.status().is_success() {
            return None;
        }
        Some(r.bytes().await.unwrap().to_vec())
    }
}

#[test]
fn mirror_enforces_signature_seq_and_replay_window() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let rt = common::runtime();
    rt.block_on(async {
        let api = Api {
            base: mirror.url.clone(),
            to: common::mirror_id(&mirror.url).await,
            http: reqwest::Client::new(),
            account: RootSecret::from_bytes([9; 32]).account_key(),
        };
        let dir = DirWriteCap {
            seed: SlotSeed::from_bytes([4; 32]),
        };
        let pk = dir.seed.public_key();
        let v2 = SlotEnvelope::seal(&dir, 2, &Listing::default()).encode();
        assert_eq!(api.put_slot(&v2, &pk, 0).await, 200);

        // Lower or equal seq: conflict, and the stored slot is unchanged.
        let v1 = SlotEnvelope::seal(&dir, 1, &Listing::default()).encode();
        assert_eq!(api.put_slot(&v1, &pk, 0).await, 409);
        assert_eq!(api.put_slot(&v2, &pk, 0).await, 409);
        assert_eq!(api.get_slot(&pk).await.unwrap(), v2);

        // A bad signature: a higher seq signed by someone else's key.
        let other = DirWriteCap {
            seed: SlotSeed::from_bytes([5; 32]),
        };
        let forged = SlotEnvelope::seal(&other, 3, &Listing::default()).encode();
        let mut wire: serde_cbor::Value = serde_cbor::from_slice(&forged).unwrap();
        if let serde_cbor::Value::Map(m) = &mut wire {
            m.insert(
                serde_cbor::Value::Text("pk".into()),
                serde_cbor::Value::Bytes(pk.to_vec()),
            );
        }
        let forged = serde_cbor::to_vec(&wire).unwrap();
        assert_eq!(api.put_slot(&forged, &pk, 0).await, 403);
        // A flipped byte in a valid envelope's ciphertext.
        let mut flipped = SlotEnvelope::seal(&dir, 3, &Listing::default()).encode();
        let n = flipped.len();
        flipped[n - 80] ^= 1;
        assert!(api.put_slot(&flipped, &pk, 0).await.is_client_error());
        assert_eq!(api.get_slot(&pk).await.unwrap(), v2);

        // A request signed outside the replay window.
        let v3 = SlotEnvelope::seal(&dir, 3, &Listing::default()).encode();
        assert_eq!(api.put_slot(&v3, &pk, -1000).await, 401);
        // One signed for another mirror (sent on by it, say), in time.
        let elsewhere = Api {
            to: [0x42; 32],
            base: api.base.clone(),
            http: api.http.clone(),
            account: RootSecret::from_bytes([9; 32]).account_key(),
        };
        assert_eq!(elsewhere.put_slot(&v3, &pk, 0).await, 401);
        assert_eq!(api.get_slot(&pk).await.unwrap(), v2);
        assert_eq!(api.put_slot(&v3, &pk, 1000).await, 401);
        // An envelope for another slot than the path names.
        assert_eq!(api.put_slot(&v3, &other.seed.public_key(), 0).await, 400);
        assert_eq!(api.put_slot(&v3, &pk, 0).await, 200);
        assert_eq!(api.get_slot(&pk).await.unwrap(), v3);

        // A held copy damaged on the mirror's disk protects nothing: the
        // same version, validly signed, replaces it (a repair's put). The
        // mirror refused it as not newer, and no repair could mend it.
        {
            let db = rusqlite::Connection::open(mirror.data.join("ledger.sqlite")).unwrap();
            let mut damaged = v3.clone();
            let n = damaged.len();
            damaged[n - 80] ^= 1;
            db.execute(
                "UPDATE slots SET envelope = ?2 WHERE pk = ?1",
                rusqlite::params![&pk[..], damaged],
            )
            .unwrap();
        }
        assert_ne!(api.get_slot(&pk).await.unwrap(), v3);
        assert_eq!(api.put_slot(&v3, &pk, 0).await, 200);
        assert_eq!(api.get_slot(&pk).await.unwrap(), v3);
        // And a valid held copy still refuses it.
        assert_eq!(api.put_slot(&v3, &pk, 0).await, 409);

        // Shares: a body that does not hash to its id is refused.
        let id = *blake3::hash(b"real").as_bytes();
        let path = format!("/v1/share/{}", hex(&id));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let auth = RequestAuth::sign_digest(&api.account, &api.to, "PUT", &path, now, &id);
        let r = api
            .http
            .put(format!("{}{path}", api.base))
            .header("authorization", auth.header())
            .body(b"fake".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // Unsigned writes are refused.
        let r = api
            .http
            .put(format!("{}{path}", api.base))
            .body(b"real".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
}
