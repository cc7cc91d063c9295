//! A mirror reached over HTTP: the client half of docs/PROTOCOL.md.
//!
//! Mutating requests are signed with the account key. Transient failures
//! (connection errors, 5xx other than 507) are retried with exponential
//! backoff; the mirror's answers are never trusted beyond what the caller
//! verifies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use super::{Error, Result, Storage};
use crate::chunk::ShareId;
use crate::crypto::{AccountKey, Hash, sha256};
use crate::protocol::{
    AccountStatus, ErrorBody, Info, RenewRequest, RenewResponse, RequestAuth, hex, unix_now,
};

const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// One mirror, by base URL.
pub struct HttpMirror {
    base: String,
    client: reqwest::Client,
    key: AccountKey,
    /// Smoothed time of successful reads, for fastest-first ordering.
    latency: Mutex<Option<Duration>>,
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
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("lode/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unavailable {
                mirror: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(HttpMirror {
            base,
            client,
            key,
            latency: Mutex::new(None),
        })
    }

    fn unavailable(&self, reason: impl ToString) -> Error {
        Error::Unavailable {
            mirror: self.base.clone(),
            reason: reason.to_string(),
        }
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
        let mut backoff = FIRST_BACKOFF;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            if sign {
                let digest = digest.unwrap_or_else(|| sha256(body.as_deref().unwrap_or_default()));
                let auth =
                    RequestAuth::sign_digest(&self.key, method.as_str(), path, unix_now(), &digest);
                req = req.header(reqwest::header::AUTHORIZATION, auth.header());
            }
            if let Some(b) = &body {
                // Shared, not copied: a retry sends the same bytes.
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success()
                        || status == StatusCode::NOT_FOUND
                        || status == StatusCode::CONFLICT
                    {
                        return Ok(resp);
                    }
                    let message = resp
                        .json::<ErrorBody>()
                        .await
                        .map(|b| b.error)
                        .unwrap_or_else(|_| status.to_string());
                    if status == StatusCode::INSUFFICIENT_STORAGE {
                        return Err(Error::NoSpace {
                            mirror: self.base.clone(),
                        });
                    }
                    if status.is_client_error() {
                        return Err(Error::Rejected {
                            mirror: self.base.clone(),
                            reason: format!("{status}: {message}"),
                        });
                    }
                    last = Some(self.unavailable(format!("{status}: {message}")));
                }
                Err(e) => last = Some(self.unavailable(e)),
            }
        }
        Err(last.expect("at least one attempt"))
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
        resp.json().await.map_err(|e| self.unavailable(e))
    }

    pub async fn account(&self) -> Result<AccountStatus> {
        let resp = self
            .send(Method::GET, "/v1/account", None, None, true)
            .await?;
        resp.json().await.map_err(|e| self.unavailable(e))
    }

    pub async fn info(&self) -> Result<Info> {
        let resp = self
            .send(Method::GET, "/v1/info", None, None, false)
            .await?;
        resp.json().await.map_err(|e| self.unavailable(e))
    }

    /// GET a body, or `None` on 404.
    async fn get_optional(&self, path: &str) -> Result<Option<Bytes>> {
        let resp = self.send(Method::GET, path, None, None, false).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(resp.bytes().await.map_err(|e| self.unavailable(e))?))
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
}

#[async_trait]
impl Storage for HttpMirror {
    fn name(&self) -> &str {
        &self.base
    }

    fn latency(&self) -> Option<Duration> {
        *self.latency.lock().expect("latency lock")
    }

    async fn put_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
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
            let message = resp
                .json::<ErrorBody>()
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

    async fn renew(&self, ids: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        let mut missing = Vec::new();
        for batch in ids.chunks(crate::protocol::MAX_RENEW_IDS) {
            let reply = HttpMirror::renew(self, batch).await?;
            for m in reply.missing {
                missing.push(
                    crate::protocol::parse_hex::<32>(&m)
                        .map_err(|_| self.unavailable("bad id in renew reply"))?,
                );
            }
        }
        Ok(missing)
    }
}
