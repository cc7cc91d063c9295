//! Secret-key newtypes and their derivation from the root secret.

use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Defines a 32-byte secret newtype: zeroized on drop, compared in constant
/// time, and printed as `Name(****)` so that a stray `{:?}` leaks nothing.
macro_rules! secret32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Zeroizing<[u8; 32]>);

        impl $name {
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(Zeroizing::new(bytes))
            }
            /// The raw key bytes. Callers must not copy them anywhere that
            /// outlives this value.
            pub fn expose(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "(****)"))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&*other.0).into()
            }
        }
        impl Eq for $name {}
    };
}

secret32!(
    /// The identity: 32 random bytes from which every other secret of a user
    /// is derived. Stored in a 0600 file by `lode init`.
    RootSecret
);
secret32!(
    /// Mixed into every convergent key, so that identical data deduplicates
    /// within one identity but cannot be confirmed by anyone else.
    ConvergenceSecret
);
secret32!(
    /// The key that encrypts one chunk (or one manifest node).
    ChunkKey
);
secret32!(
    /// Decrypts a directory listing or a file manifest.
    ReadKey
);
secret32!(
    /// Decrypts a file manifest's share locations, not its chunk keys: what a
    /// verifier or repairer needs and no more.
    VerifyKey
);
secret32!(
    /// The seed of a directory slot's ed25519 signing key: the write-cap.
    SlotSeed
);
secret32!(
    /// Seals child write-caps inside a listing. Only a write-cap derives it,
    /// so a read-cap holder sees read-caps only, transitively.
    WriteSealKey
);

/// Keys that encrypt: sealing and opening go through the key type, so raw
/// key bytes never have to travel through the code.
macro_rules! cipher_key {
    ($($name:ident),*) => {$(
        impl $name {
            /// AES-SIV encrypt, binding `context` as associated data.
            pub fn seal(&self, context: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
                super::siv::seal(&self.0, context, plaintext)
            }
            /// AES-SIV encrypt `buf` in place, returning the tag that goes
            /// in front of it.
            pub fn seal_in_place(&self, context: &[&[u8]], buf: &mut [u8]) -> [u8; super::TAG_LEN] {
                super::siv::seal_in_place(&self.0, context, buf)
            }
            /// AES-SIV decrypt and authenticate.
            pub fn open(&self, context: &[&[u8]], ciphertext: &[u8]) -> super::Result<Vec<u8>> {
                super::siv::open(&self.0, context, ciphertext)
            }
            /// [`Self::open`] of a ciphertext already split into its tag
            /// and body, decrypting the body where it lies.
            pub fn open_in_place(
                &self,
                context: &[&[u8]],
                tag: &[u8; super::TAG_LEN],
                body: &mut [u8],
            ) -> super::Result<()> {
                super::siv::open_in_place(&self.0, context, tag, body)
            }
        }
    )*};
}
cipher_key!(ChunkKey, ReadKey, VerifyKey, WriteSealKey);

impl ChunkKey {
    /// [`Self::seal_in_place`] of several buffers, each under its own key:
    /// the same tags and bytes, with the S2V passes of up to four run in
    /// about the time of one (`lanes`).
    pub fn seal_all_in_place(
        keys: &[&ChunkKey],
        context: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<[u8; super::TAG_LEN]> {
        let keys: Vec<&[u8; 32]> = keys.iter().map(|k| &*k.0).collect();
        super::lanes::seal_all_in_place(&keys, context, bufs)
    }

    /// Decrypt a chunk body that lies in several buffers, in order, without
    /// checking its tag: only for the data shares of a chunk, each
    /// verified against its id (see `siv::decrypt_verified_parts`).
    pub fn decrypt_verified_parts<'a>(
        &self,
        tag: &[u8; super::TAG_LEN],
        parts: impl IntoIterator<Item = &'a mut [u8]>,
    ) {
        super::siv::decrypt_verified_parts(&self.0, tag, parts)
    }
}

/// Keys `dir::Place` tags (see [`SlotSeed::place_key`]).
#[derive(Clone)]
pub struct PlaceKey(Zeroizing<[u8; 32]>);

impl PlaceKey {
    /// The first 16 bytes of HMAC-SHA256 over `parts`, each
    /// length-prefixed (8 bytes, big-endian).
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 16] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(self.0.as_ref())
            .expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes()[..16]
            .try_into()
            .expect("16 bytes")
    }
}

/// HKDF-SHA256 expand of `ikm` under `info`, with lode's fixed salt.
pub(crate) fn derive(ikm: &[u8; 32], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"lode v1 kdf"), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl RootSecret {
    /// A fresh identity from a cryptographic RNG.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    pub fn convergence(&self) -> ConvergenceSecret {
        ConvergenceSecret(derive(&self.0, b"convergence"))
    }

    pub fn account_key(&self) -> AccountKey {
        AccountKey::from_seed(&derive(&self.0, b"account"))
    }

    /// The seed of the root directory's slot, i.e. the root write-cap.
    pub fn root_dir_seed(&self) -> SlotSeed {
        SlotSeed(derive(&self.0, b"root dir"))
    }

    /// Seed for the chunker's gear table. Keyed chunking keeps chunk sizes,
    /// which are visible to mirrors, from fingerprinting known files across
    /// identities.
    pub fn chunker_seed(&self) -> u64 {
        let k = derive(&self.0, b"chunker");
        u64::from_le_bytes(k[..8].try_into().expect("8 bytes"))
    }
}

impl ConvergenceSecret {
    /// `HMAC-SHA256(convergence_secret, domain ‖ hash(plaintext) ‖ params)`
    /// (the hash is the domain's: docs/FORMATS.md).
    ///
    /// `params` names everything that changes the stored form (format version,
    /// k, n), so that data stored under other parameters never shares a key.
    pub fn convergent_key(
        &self,
        domain: &[u8],
        plaintext_hash: &[u8; 32],
        params: &[u8],
    ) -> ChunkKey {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&*self.0).expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(plaintext_hash);
        mac.update(params);
        ChunkKey::from_bytes(mac.finalize().into_bytes().into())
    }
}

impl ReadKey {
    /// A manifest's read key yields its verify key, never the reverse.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey(derive(&self.0, b"file verify"))
    }
}

impl From<ChunkKey> for ReadKey {
    fn from(k: ChunkKey) -> Self {
        ReadKey(k.0)
    }
}

impl SlotSeed {
    /// A fresh slot seed for a new directory. Random, not derived: a
    /// directory keeps its identity when it is renamed, and a new directory
    /// under the old name must not collide with it.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    pub fn signing_key(&self) -> AccountKey {
        AccountKey::from_seed(&self.0)
    }
    pub fn read_key(&self) -> ReadKey {
        ReadKey(derive(&self.0, b"dir read"))
    }
    pub fn write_seal_key(&self) -> WriteSealKey {
        WriteSealKey(derive(&self.0, b"dir child write"))
    }
    /// Seals where each directory of a tree lives, under the tree's root
    /// (see `dir::Home`).
    pub fn home_seal_key(&self) -> WriteSealKey {
        WriteSealKey(derive(&self.0, b"dir home"))
    }
    /// Keys the tags by which a tree's listings say where a file moved
    /// (see `dir::Place`), under the tree's root: only its writer can
    /// tell which directory and name a tag stands for.
    pub fn place_key(&self) -> PlaceKey {
        PlaceKey(derive(&self.0, b"dir moved place"))
    }
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key().public_key()
    }
}

/// An ed25519 signing key: the account key, or a directory slot's key.
/// `ed25519_dalek::SigningKey` zeroizes itself on drop.
#[derive(Clone)]
pub struct AccountKey(SigningKey);

impl AccountKey {
    fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AccountKey(public={})",
            data_encoding::HEXLOWER.encode(&self.public_key())
        )
    }
}
