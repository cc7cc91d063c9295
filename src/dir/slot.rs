//! The signed envelope a mirror stores for a directory.
//!
//! Wire form: CBOR map `{v, pk, seq, ct, sig}`. The signature covers
//! `"lode slot v1\0" ‖ pk ‖ seq (u64 BE) ‖ ct`, and the ciphertext binds
//! `pk ‖ seq` as associated data, so that neither can be swapped without
//! detection by either verification path.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Error, Listing, Result};
use crate::caps::{DirReadCap, DirWriteCap};
use crate::crypto;

/// The slot envelope format this code writes and reads.
pub const SLOT_VERSION: u8 = 1;
const SIGN_DOMAIN: &[u8] = b"lode slot v1\0";
/// Mirrors refuse slots larger than this.
pub const MAX_SLOT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    pk: ByteBuf,
    seq: u64,
    ct: ByteBuf,
    sig: ByteBuf,
}

/// A directory slot as stored and served by mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEnvelope {
    pub public_key: [u8; 32],
    pub seq: u64,
    ciphertext: Vec<u8>,
    signature: [u8; 64],
}

fn signed_message(pk: &[u8; 32], seq: u64, ct: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + 40 + ct.len());
    m.extend_from_slice(SIGN_DOMAIN);
    m.extend_from_slice(pk);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(ct);
    m
}

impl SlotEnvelope {
    /// Seal and sign `listing`, whole, as version `seq` of the slot.
    pub fn seal(cap: &DirWriteCap, seq: u64, listing: &Listing) -> SlotEnvelope {
        Self::seal_plaintext(cap, seq, &zeroize::Zeroizing::new(listing.encode()))
    }

    /// Seal and sign an encoded listing (whole, or the index of its pages)
    /// as version `seq` of the slot.
    pub fn seal_plaintext(cap: &DirWriteCap, seq: u64, plaintext: &[u8]) -> SlotEnvelope {
        let public_key = cap.seed.public_key();
        let ciphertext = cap
            .seed
            .read_key()
            .seal(&[&public_key, &seq.to_be_bytes()], plaintext);
        let signature = cap
            .seed
            .signing_key()
            .sign(&signed_message(&public_key, seq, &ciphertext));
        SlotEnvelope {
            public_key,
            seq,
            ciphertext,
            signature,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(&Wire {
            v: SLOT_VERSION,
            pk: ByteBuf::from(self.public_key.to_vec()),
            seq: self.seq,
            ct: ByteBuf::from(self.ciphertext.clone()),
            sig: ByteBuf::from(self.signature.to_vec()),
        })
        .expect("slot envelope always serializes")
    }

    /// Parse the wire form. Checks structure only; call [`Self::verify`].
    pub fn decode(bytes: &[u8]) -> Result<SlotEnvelope> {
        if bytes.len() > MAX_SLOT_BYTES {
            return Err(Error::Malformed("slot too large".into()));
        }
        let w: Wire = serde_cbor::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        if w.v != SLOT_VERSION {
            return Err(Error::SlotVersion(w.v));
        }
        Ok(SlotEnvelope {
            public_key: w
                .pk
                .as_slice()
                .try_into()
                .map_err(|_| Error::Malformed("public key is not 32 bytes".into()))?,
            seq: w.seq,
            ciphertext: w.ct.into_vec(),
            signature: w
                .sig
                .as_slice()
                .try_into()
                .map_err(|_| Error::Malformed("signature is not 64 bytes".into()))?,
        })
    }

    /// The mirror's check: the signature is valid for the envelope's own
    /// public key. Needs no keys.
    pub fn verify(&self) -> Result<()> {
        crypto::verify_signature(
            &self.public_key,
            &signed_message(&self.public_key, self.seq, &self.ciphertext),
            &self.signature,
        )
        .map_err(|_| Error::BadSignature)
    }

    /// The mirror's update rule: accept only a valid envelope for the same
    /// slot with a strictly higher seq than the one it holds.
    pub fn check_update(&self, current: Option<&SlotEnvelope>) -> Result<()> {
        self.verify()?;
        if let Some(cur) = current {
            if cur.public_key != self.public_key {
                return Err(Error::WrongSlot);
            }
            if self.seq <= cur.seq {
                return Err(Error::Stale {
                    offered: self.seq,
                    current: cur.seq,
                });
            }
        }
        Ok(())
    }

    /// The reader's path: check that this is the cap's slot and that the
    /// signature holds, then decrypt and authenticate the listing (pending,
    /// if the slot holds the index of a paged listing).
    pub fn open(&self, cap: &DirReadCap) -> Result<Listing> {
        if self.public_key != cap.public_key {
            return Err(Error::WrongSlot);
        }
        self.verify()?;
        let plaintext = zeroize::Zeroizing::new(
            cap.read_key
                .open(
                    &[&self.public_key, &self.seq.to_be_bytes()],
                    &self.ciphertext,
                )
                .map_err(|_| Error::Unauthentic)?,
        );
        Listing::decode(&plaintext)
    }
}
