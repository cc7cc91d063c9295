//! The printable form of a cap.
//!
//! `lode:<kind>:<version>:<data>`, where `data` is lowercase RFC 4648 base32
//! without padding of `payload ‖ checksum`, and `checksum` is the first four
//! bytes of `SHA-256("lode cap" ‖ kind ‖ ":" ‖ version ‖ ":" ‖ payload)`.
//! The checksum catches typos and truncation; the keys inside are what make a
//! cap unforgeable.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;

use super::{
    Cap, DirReadCap, DirVerifyCap, DirWriteCap, Error, FileReadCap, FileVerifyCap, Result,
};
use crate::crypto::{ReadKey, SlotSeed, VerifyKey, sha256};

/// The cap string version this code writes and reads.
pub const CAP_VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 4;

fn checksum(kind: &str, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut input = Vec::with_capacity(payload.len() + 24);
    input.extend_from_slice(b"lode cap");
    input.extend_from_slice(kind.as_bytes());
    input.push(b':');
    input.extend_from_slice(CAP_VERSION.to_string().as_bytes());
    input.push(b':');
    input.extend_from_slice(payload);
    let h = sha256(&input);
    [h[0], h[1], h[2], h[3]]
}

fn arr32(b: &[u8]) -> [u8; 32] {
    b.try_into().expect("caller checked the length")
}

impl Cap {
    /// The cap's binary payload. It holds key bytes, so it lives in a
    /// zeroizing buffer.
    fn payload(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut p = zeroize::Zeroizing::new(Vec::with_capacity(72));
        match self {
            Cap::DirWrite(c) => p.extend_from_slice(c.seed.expose()),
            Cap::DirRead(c) => {
                p.extend_from_slice(&c.public_key);
                p.extend_from_slice(c.read_key.expose());
            }
            Cap::DirVerify(c) => p.extend_from_slice(&c.public_key),
            Cap::FileRead(c) => {
                p.extend_from_slice(c.read_key.expose());
                p.extend_from_slice(&c.root);
                p.extend_from_slice(&c.size.to_be_bytes());
            }
            Cap::FileVerify(c) => {
                p.extend_from_slice(c.verify_key.expose());
                p.extend_from_slice(&c.root);
                p.extend_from_slice(&c.size.to_be_bytes());
            }
        }
        p
    }

    fn from_payload(kind: &str, p: &[u8]) -> Result<Cap> {
        let want = |kind: &'static str, expected: usize| {
            if p.len() == expected {
                Ok(())
            } else {
                Err(Error::BadLength {
                    kind,
                    expected,
                    got: p.len(),
                })
            }
        };
        let valid_point = |pk: &[u8; 32]| {
            ed25519_dalek::VerifyingKey::from_bytes(pk)
                .map(|_| ())
                .map_err(|_| Error::BadPublicKey)
        };
        Ok(match kind {
            "dir-rw" => {
                want("dir-rw", 32)?;
                Cap::DirWrite(DirWriteCap {
                    seed: SlotSeed::from_bytes(arr32(p)),
                })
            }
            "dir-ro" => {
                want("dir-ro", 64)?;
                let public_key = arr32(&p[..32]);
                valid_point(&public_key)?;
                Cap::DirRead(DirReadCap {
                    public_key,
                    read_key: ReadKey::from_bytes(arr32(&p[32..])),
                })
            }
            "dir-v" => {
                want("dir-v", 32)?;
                let public_key = arr32(p);
                valid_point(&public_key)?;
                Cap::DirVerify(DirVerifyCap { public_key })
            }
            "file" => {
                want("file", 72)?;
                Cap::FileRead(FileReadCap {
                    read_key: ReadKey::from_bytes(arr32(&p[..32])),
                    root: arr32(&p[32..64]),
                    size: u64::from_be_bytes(p[64..].try_into().expect("8 bytes")),
                })
            }
            "file-v" => {
                want("file-v", 72)?;
                Cap::FileVerify(FileVerifyCap {
                    verify_key: VerifyKey::from_bytes(arr32(&p[..32])),
                    root: arr32(&p[32..64]),
                    size: u64::from_be_bytes(p[64..].try_into().expect("8 bytes")),
                })
            }
            other => return Err(Error::UnknownKind(other.to_string())),
        })
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        let mut data = self.payload();
        let sum = checksum(kind, &data);
        data.extend_from_slice(&sum);
        let text = zeroize::Zeroizing::new(BASE32_NOPAD.encode(&data).to_ascii_lowercase());
        write!(f, "lode:{kind}:{CAP_VERSION}:{}", text.as_str())
    }
}

/// Whether `s` begins as a cap does (`lode:`, in any case): for telling a
/// cap from a path.
pub fn is_cap_text(s: &str) -> bool {
    s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("lode:"))
}

impl FromStr for Cap {
    type Err = Error;

    /// Parse a cap string. Never panics; surrounding whitespace is ignored,
    /// and so is case (a cap read aloud or typed in capitals still works).
    fn from_str(s: &str) -> Result<Cap> {
        let s = s.trim();
        if !is_cap_text(s) {
            return Err(Error::MissingPrefix);
        }
        let rest = &s["lode:".len()..];
        let mut parts = rest.splitn(3, ':');
        let (kind, version, data) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), Some(d)) if !k.is_empty() && !d.is_empty() => (k, v, d),
            _ => return Err(Error::Malformed),
        };
        let kind = kind.to_ascii_lowercase();
        let kind = kind.as_str();
        if !matches!(kind, "dir-rw" | "dir-ro" | "dir-v" | "file" | "file-v") {
            return Err(Error::UnknownKind(kind.chars().take(32).collect()));
        }
        if version != CAP_VERSION.to_string() {
            return Err(Error::UnsupportedVersion {
                found: version.chars().take(16).collect(),
                supported: CAP_VERSION,
            });
        }
        // Say which of the two ways it went wrong: a character outside
        // the alphabet (mistyped), or a length no encoding has (cut short).
        if let Some((at, found)) = data
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c.to_ascii_lowercase(), 'a'..='z' | '2'..='7'))
        {
            return Err(Error::BadCharacter { found, at: at + 1 });
        }
        let upper = zeroize::Zeroizing::new(data.to_ascii_uppercase());
        let raw = zeroize::Zeroizing::new(BASE32_NOPAD.decode(upper.as_bytes()).map_err(|e| {
            match e.kind {
                // The last character carries bits past the end of the data,
                // which an encoder leaves zero: a typo there, as any other
                // typo a checksum catches.
                data_encoding::DecodeKind::Trailing => Error::Checksum,
                _ => Error::BadEncodedLength {
                    len: data.chars().count(),
                },
            }
        })?);
        if raw.len() < CHECKSUM_LEN {
            return Err(Error::Checksum);
        }
        let (payload, sum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if checksum(kind, payload) != sum {
            return Err(Error::Checksum);
        }
        Cap::from_payload(kind, payload)
    }
}
