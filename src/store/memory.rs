//! An in-memory [`Storage`], honest by construction: the reference for
//! tests and examples.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Error, Result, Storage};
use crate::chunk::ShareId;
use crate::dir::SlotEnvelope;

/// Shares and slots in a `HashMap`, with the same checks a mirror makes.
#[derive(Default)]
pub struct MemoryStorage {
    name: String,
    shares: Mutex<HashMap<ShareId, Bytes>>,
    slots: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    refuse_repairs: std::sync::atomic::AtomicBool,
    /// Shares handed out by `get_share`, found or not.
    gets: std::sync::atomic::AtomicUsize,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::named("memory")
    }

    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Ids of every share held.
    pub fn share_ids(&self) -> Vec<ShareId> {
        self.shares.lock().expect("lock").keys().copied().collect()
    }

    /// Total bytes of shares held.
    pub fn share_bytes(&self) -> usize {
        self.shares
            .lock()
            .expect("lock")
            .values()
            .map(Bytes::len)
            .sum()
    }

    /// How many shares were asked for (`get_share`), found or not.
    pub fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What an honest mirror checks on every upload.
    fn check_id(&self, id: &ShareId, bytes: &[u8]) -> Result<()> {
        if &crate::chunk::share_id(bytes) != id {
            return Err(Error::Rejected {
                mirror: self.name.clone(),
                reason: "share bytes do not match their id".into(),
            });
        }
        Ok(())
    }

    /// Drop a share, as a mirror that lost it would: for repair tests.
    pub fn lose(&self, id: &ShareId) -> bool {
        self.shares.lock().expect("lock").remove(id).is_some()
    }

    /// Replace a share's bytes without any check: for tampering tests.
    pub fn tamper(&self, id: &ShareId, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.shares
            .lock()
            .expect("lock")
            .get_mut(id)
            .map(|held| {
                let mut bytes = held.to_vec();
                f(&mut bytes);
                *held = bytes.into();
            })
            .is_some()
    }

    /// Refuse every repair from now on, as a full or hostile mirror
    /// would: for repair tests.
    pub fn refuse_repairs(&self) {
        self.refuse_repairs
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replace a slot's bytes without any check: for tampering tests.
    pub fn tamper_slot(&self, public_key: &[u8; 32], f: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.slots
            .lock()
            .expect("lock")
            .get_mut(public_key)
            .map(f)
            .is_some()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
        self.check_id(id, &bytes)?;
        let mut shares = self.shares.lock().expect("lock");
        shares.entry(*id).or_insert(bytes);
        Ok(())
    }

    async fn repair_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
        if self
            .refuse_repairs
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::Rejected {
                mirror: self.name.clone(),
                reason: "repairs refused".into(),
            });
        }
        self.check_id(id, &bytes)?;
        self.shares.lock().expect("lock").insert(*id, bytes);
        Ok(())
    }

    async fn get_share(&self, id: &ShareId) -> Result<Option<Bytes>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.shares.lock().expect("lock").get(id).cloned())
    }

    async fn has_share(&self, id: &ShareId) -> Result<bool> {
        Ok(self.shares.lock().expect("lock").contains_key(id))
    }

    async fn put_slot(&self, envelope: &[u8]) -> Result<()> {
        let reject = |reason: String| Error::Rejected {
            mirror: self.name.clone(),
            reason,
        };
        let new = SlotEnvelope::decode(envelope).map_err(|e| reject(e.to_string()))?;
        let mut slots = self.slots.lock().expect("lock");
        let current = slots
            .get(&new.public_key)
            .map(|b| SlotEnvelope::decode(b))
            .transpose()
            .map_err(|e| reject(e.to_string()))?;
        new.check_update(current.as_ref())
            .map_err(|e| reject(e.to_string()))?;
        slots.insert(new.public_key, envelope.to_vec());
        Ok(())
    }

    async fn get_slot(&self, public_key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self.slots.lock().expect("lock").get(public_key).cloned())
    }
}
