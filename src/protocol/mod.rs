//! The mirror protocol's wire types and request signing, sans-IO.
//!
//! Both sides speak through this layer: the client's HTTP mirror
//! (`store::http`) and the server (`mirror`). It holds no sockets and no
//! tokio; it is pure data and checks, so it can be unit-tested and fuzzed.
//! See docs/PROTOCOL.md for the HTTP routes that carry these types.

mod batch;

pub use batch::{
    BATCH_VERSION, BatchItem, BatchReply, BatchResult, MAX_BATCH_BYTES, MAX_BATCH_SHARE_BYTES,
    MAX_BATCH_SHARES, batch_digest, batch_len, decode_batch, encode_batch,
};

use serde::{Deserialize, Serialize};

use crate::crypto::{self, AccountKey, Hash, sha256};

/// The protocol version, the `/v1/` in every path.
pub const PROTOCOL_VERSION: u32 = 1;
/// How far a signed request's timestamp may be from the mirror's clock.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// The authorization scheme name.
pub const AUTH_SCHEME: &str = "Lode-Ed25519";
/// Most ids in one renewal request.
pub const MAX_RENEW_IDS: usize = 10_000;
/// Largest share a mirror accepts: a maximum-size chunk (12 MiB) stored
/// 1-of-1, plus AES-SIV tag, padding and header, with room to spare.
pub const MAX_SHARE_BYTES: u64 = 16 * 1024 * 1024;

/// Errors in signed requests and wire bodies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("missing or malformed authorization header")]
    BadAuthHeader,
    #[error(
        "request time is {skew} s away from the mirror's clock (allowed: {REPLAY_WINDOW_SECS} s)"
    )]
    Expired { skew: i64 },
    #[error("request signature is invalid")]
    BadSignature,
    #[error(
        "request was signed for another mirror (a replay, or a client that took this mirror for another)"
    )]
    OtherMirror,
    #[error("malformed hex id")]
    BadId,
    #[error("malformed share batch: {0}")]
    BadBatch(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The bytes a client signs: the mirror it is for (its `mirror_id`),
/// method, path (with query), time, and the SHA-256 of the body. For a
/// share upload the body digest is the share id. Version 2: version 1
/// named no mirror, so any mirror that received a request could send it
/// on to another within the replay window, and have it store (and lease,
/// at the signer's cost) there.
pub fn signed_message(
    to: &[u8; 32],
    method: &str,
    path: &str,
    time: i64,
    body_digest: &Hash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(96 + path.len());
    m.extend_from_slice(b"lode request v2\0");
    m.extend_from_slice(to);
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(time.to_string().as_bytes());
    m.push(0);
    m.extend_from_slice(body_digest);
    m
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    pub account: [u8; 32],
    /// The mirror the request is for.
    pub to: [u8; 32],
    pub time: i64,
    pub signature: [u8; 64],
}

impl RequestAuth {
    /// Sign a request for mirror `to` as `key`.
    pub fn sign(
        key: &AccountKey,
        to: &[u8; 32],
        method: &str,
        path: &str,
        time: i64,
        body: &[u8],
    ) -> RequestAuth {
        Self::sign_digest(key, to, method, path, time, &sha256(body))
    }

    pub fn sign_digest(
        key: &AccountKey,
        to: &[u8; 32],
        method: &str,
        path: &str,
        time: i64,
        digest: &Hash,
    ) -> RequestAuth {
        RequestAuth {
            account: key.public_key(),
            to: *to,
            time,
            signature: key.sign(&signed_message(to, method, path, time, digest)),
        }
    }

    /// The header value:
    /// `Lode-Ed25519 account=<hex>,to=<hex>,time=<secs>,sig=<hex>`.
    pub fn header(&self) -> String {
        format!(
            "{AUTH_SCHEME} account={},to={},time={},sig={}",
            hex(&self.account),
            hex(&self.to),
            self.time,
            hex(&self.signature)
        )
    }

    pub fn parse(header: &str) -> Result<RequestAuth> {
        let rest = header
            .strip_prefix(AUTH_SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(Error::BadAuthHeader)?;
        let (mut account, mut to, mut time, mut sig) = (None, None, None, None);
        for part in rest.split(',') {
            match part.trim().split_once('=') {
                Some(("account", v)) => {
                    account = Some(parse_hex::<32>(v).map_err(|_| Error::BadAuthHeader)?)
                }
                Some(("to", v)) => to = Some(parse_hex::<32>(v).map_err(|_| Error::BadAuthHeader)?),
                Some(("time", v)) => {
                    time = Some(v.parse::<i64>().map_err(|_| Error::BadAuthHeader)?)
                }
                Some(("sig", v)) => {
                    sig = Some(parse_hex::<64>(v).map_err(|_| Error::BadAuthHeader)?)
                }
                _ => return Err(Error::BadAuthHeader),
            }
        }
        Ok(RequestAuth {
            account: account.ok_or(Error::BadAuthHeader)?,
            to: to.ok_or(Error::BadAuthHeader)?,
            time: time.ok_or(Error::BadAuthHeader)?,
            signature: sig.ok_or(Error::BadAuthHeader)?,
        })
    }

    /// The time is within the replay window of `now`: the check a mirror
    /// can make before it has the body the signature covers.
    pub fn check_time(&self, now: i64) -> Result<()> {
        let skew = now.abs_diff(self.time).min(i64::MAX as u64) as i64;
        if skew > REPLAY_WINDOW_SECS {
            return Err(Error::Expired { skew });
        }
        Ok(())
    }

    /// The check of mirror `me`: the request is for it, the time is
    /// within the replay window of `now`, and the signature covers this
    /// request.
    pub fn verify(
        &self,
        me: &[u8; 32],
        method: &str,
        path: &str,
        body_digest: &Hash,
        now: i64,
    ) -> Result<()> {
        self.check_time(now)?;
        crypto::verify_signature(
            &self.account,
            &signed_message(&self.to, method, path, self.time, body_digest),
            &self.signature,
        )
        .map_err(|_| Error::BadSignature)?;
        match self.to == *me {
            true => Ok(()),
            false => Err(Error::OtherMirror),
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it). Request
/// times, leases and funded-until are all in this unit.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Parse exactly `N` bytes of lowercase or uppercase hex.
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .map_err(|_| Error::BadId)?;
    bytes.try_into().map_err(|_| Error::BadId)
}

/// `GET /v1/info`: what a mirror offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Info {
    pub protocol: u32,
    pub software: String,
    pub lease_seconds: u64,
    pub capacity_bytes: Option<u64>,
    pub used_bytes: u64,
    /// Difficulty-1 shares per GiB-day; 0 is free.
    pub price: f64,
    /// The Stratum v1 pool's TCP port, on the mirror's host.
    pub stratum_port: Option<u16>,
    /// The mirror's identity (hex of 32 random bytes, kept in its data
    /// directory): a client tells two URLs of one mirror apart by it. Not
    /// sent by mirrors before 2026-12-03.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_id: Option<String>,
}

/// `GET /v1/account`: the signed-in account's standing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountStatus {
    pub account: String,
    pub usage_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub leases: u64,
    pub lease_seconds: u64,
    /// Accepted proof-of-work, in millionths of a difficulty-1 share.
    pub credit_micro: u64,
    /// Storage charged so far, same unit.
    pub debit_micro: u64,
    /// Cost per day at the current usage, same unit.
    pub daily_cost_micro: u64,
    /// Shares this mirror's pool accepted from the account.
    pub shares_accepted: u64,
    /// Until when the balance pays for the current usage (unix seconds);
    /// `None` when nothing is charged.
    pub funded_until: Option<i64>,
}

/// `POST /v1/renew` body: the objects (share ids or slot keys, hex) whose
/// leases to extend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewRequest {
    pub ids: Vec<String>,
}

/// `POST /v1/renew` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewResponse {
    pub renewed: u64,
    /// Objects this mirror does not hold: the client should repair them.
    pub missing: Vec<String>,
    /// Objects held but not renewed: over quota, or the account unfunded.
    #[serde(default)]
    pub refused: Vec<String>,
    /// Why the first of `refused` was refused, for the user (added after
    /// version 1 shipped: older mirrors leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lease expiry, seconds since the epoch.
    pub expires: i64,
}

/// Any error reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RootSecret;

    #[test]
    fn signed_request_verifies_and_binds_every_field() {
        let key = RootSecret::from_bytes([3; 32]).account_key();
        let (me, other) = ([7; 32], [8; 32]);
        let auth = RequestAuth::sign(&key, &me, "PUT", "/v1/slot/ab", 1000, b"body");
        let parsed = RequestAuth::parse(&auth.header()).unwrap();
        assert_eq!(parsed, auth);
        let d = sha256(b"body");
        fn check(a: &RequestAuth, me: &[u8; 32], m: &str, p: &str, d: &Hash, t: i64) -> Result<()> {
            a.verify(me, m, p, d, t)
        }
        assert!(check(&parsed, &me, "PUT", "/v1/slot/ab", &d, 1000).is_ok());
        let last = 1000 + REPLAY_WINDOW_SECS;
        assert!(check(&parsed, &me, "PUT", "/v1/slot/ab", &d, last).is_ok());
        assert_eq!(
            check(&parsed, &me, "PUT", "/v1/slot/ab", &d, last + 1),
            Err(Error::Expired { skew: 301 })
        );
        for (method, path, digest) in [
            ("GET", "/v1/slot/ab", d),
            ("PUT", "/v1/slot/ac", d),
            ("PUT", "/v1/slot/ab", sha256(b"other")),
        ] {
            assert_eq!(
                check(&parsed, &me, method, path, &digest, 1000),
                Err(Error::BadSignature)
            );
        }
        let mut forged = parsed.clone();
        forged.time += 1;
        assert_eq!(
            check(&forged, &me, "PUT", "/v1/slot/ab", &d, 1000),
            Err(Error::BadSignature)
        );
        // Sent on to another mirror: refused there, and no edit of the
        // mirror it names gets it past.
        assert_eq!(
            check(&parsed, &other, "PUT", "/v1/slot/ab", &d, 1000),
            Err(Error::OtherMirror)
        );
        let mut redirected = parsed.clone();
        redirected.to = other;
        assert_eq!(
            check(&redirected, &other, "PUT", "/v1/slot/ab", &d, 1000),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn malformed_headers_are_rejected() {
        // Version 1's header, naming no mirror.
        let v1 = format!(
            "Lode-Ed25519 account={},time=1,sig={}",
            "ab".repeat(32),
            "cd".repeat(64)
        );
        for h in [
            "",
            "Bearer x",
            "Lode-Ed25519 ",
            "Lode-Ed25519 account=zz,time=1,sig=00",
            "Lode-Ed25519 time=1",
            v1.as_str(),
        ] {
            assert_eq!(RequestAuth::parse(h), Err(Error::BadAuthHeader), "{h:?}");
        }
    }
}
