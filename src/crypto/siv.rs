//! Deterministic authenticated encryption with AES-SIV (RFC 5297).
//!
//! SIV is used without a nonce on purpose: the same key and plaintext give
//! the same ciphertext, which is what convergent encryption needs, and the
//! synthetic IV doubles as the authentication tag.
//!
//! The output is the RFC's layout, tag then ciphertext. Both directions go
//! through the detached in/out form, so the cipher reads its input where it
//! lies and writes its output where it is wanted: sealing or opening a chunk
//! costs the two AES passes and no extra copy of the data.

use aes::Aes256;
use aes_siv::aead::inout::InOutBuf;
use aes_siv::{KeyInit, siv::Aes256Siv};
use ctr::cipher::{KeyIvInit, StreamCipher};
use zeroize::Zeroizing;

use super::{Error, Result, keys::derive};

/// Bytes the synthetic IV (the tag) adds in front of the ciphertext.
pub const TAG_LEN: usize = 16;

/// What the S2V half of the AES-SIV key is derived under.
pub(super) const MAC_INFO: &[u8] = b"aes-siv mac";
/// What the CTR half of the AES-SIV key is derived under.
pub(super) const CTR_INFO: &[u8] = b"aes-siv ctr";

fn cipher(key: &[u8; 32]) -> Aes256Siv {
    // AES-256-SIV takes 64 bytes of key (one for S2V, one for CTR); both
    // halves are expanded from the 32-byte key.
    let mut full = Zeroizing::new([0u8; 64]);
    full[..32].copy_from_slice(&*derive(key, MAC_INFO));
    full[32..].copy_from_slice(&*derive(key, CTR_INFO));
    Aes256Siv::new_from_slice(&*full).expect("64-byte key is valid for AES-256-SIV")
}

/// Encrypt `plaintext` under `key`, binding `context` as associated data.
/// The output is [`TAG_LEN`] bytes longer than the input.
pub fn seal(key: &[u8; 32], context: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    let mut out = vec![0; TAG_LEN + plaintext.len()];
    let (tag_out, body) = out.split_at_mut(TAG_LEN);
    let buf = InOutBuf::new(plaintext, body).expect("output sized to the input");
    let tag = cipher(key)
        .encrypt_inout_detached(context, buf)
        .expect("AES-SIV encryption fails only for more headers than lode ever passes");
    tag_out.copy_from_slice(&tag);
    out
}

/// Encrypt `buf` where it lies and return the tag (the synthetic IV) to
/// go in front of it: the same bytes [`seal`] gives, with no second buffer
/// to clear or fill. A chunk's sealer owns its plaintext, so it is sealed
/// in place and handed on as ciphertext.
pub fn seal_in_place(key: &[u8; 32], context: &[&[u8]], buf: &mut [u8]) -> [u8; TAG_LEN] {
    cipher(key)
        .encrypt_inout_detached(context, InOutBuf::from(buf))
        .expect("AES-SIV encryption fails only for more headers than lode ever passes")
        .into()
}

/// Decrypt and authenticate. Any change to the ciphertext, the key or the
/// context yields [`Error::Unauthentic`].
pub fn open(key: &[u8; 32], context: &[&[u8]], ciphertext: &[u8]) -> Result<Vec<u8>> {
    if ciphertext.len() < TAG_LEN {
        return Err(Error::Unauthentic);
    }
    let (tag, body) = ciphertext.split_at(TAG_LEN);
    let tag = aes_siv::Tag::try_from(tag).map_err(|_| Error::Unauthentic)?;
    let mut plain = vec![0u8; body.len()];
    let buf = InOutBuf::new(body, &mut plain).expect("output sized to the input");
    cipher(key)
        .decrypt_inout_detached(context, buf, &tag)
        .map_err(|_| Error::Unauthentic)?;
    Ok(plain)
}

/// [`open`] with the tag apart and the body decrypted in place (on failure
/// the body is left as ciphertext). A chunk's reader gets the tag and the
/// body from the erasure decoder separately, so it needs neither a second
/// buffer nor a copy.
pub fn open_in_place(
    key: &[u8; 32],
    context: &[&[u8]],
    tag: &[u8; TAG_LEN],
    body: &mut [u8],
) -> Result<()> {
    let tag = aes_siv::Tag::from(*tag);
    cipher(key)
        .decrypt_inout_detached(context, InOutBuf::from(body), &tag)
        .map_err(|_| Error::Unauthentic)
}

/// The CTR half of AES-SIV alone: turn a body back into plaintext under
/// its tag (the synthetic IV) **without** checking the tag. The body may
/// lie in several buffers, in order: one keystream runs across them, so
/// the result is the same as for the body joined, without joining it.
///
/// Only for a ciphertext whose integrity is already settled by other
/// means: a chunk's data shares, each hashed to the id an authenticated
/// manifest lists (a chunk rebuilt from parity is opened with its tag
/// checked: see `share::open_verified_chunk_parts`). There the S2V pass of [`open_in_place`]
/// (a serial CMAC over every byte, about 1 GB/s here and over 40 % of a
/// cold read's CPU) can only confirm what the hashes proved; what it
/// would still catch, a writer who sealed a chunk under some other key,
/// is a writer who could have stored any content. Everything else goes
/// through [`open`] or [`open_in_place`].
pub fn decrypt_verified_parts<'a>(
    key: &[u8; 32],
    tag: &[u8; TAG_LEN],
    parts: impl IntoIterator<Item = &'a mut [u8]>,
) {
    // RFC 5297 2.6: the counter is the IV with the top bit of each of its
    // last two 32-bit words cleared.
    let mut iv = *tag;
    iv[8] &= 0x7f;
    iv[12] &= 0x7f;
    let ctr_key = derive(key, CTR_INFO);
    let mut ctr = ctr::Ctr128BE::<Aes256>::new((&*ctr_key).into(), (&iv).into());
    for part in parts {
        ctr.apply_keystream(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detached in/out path gives exactly what the crate's own
    /// allocating API gives, so the format did not move.
    #[test]
    fn matches_the_crates_combined_form() {
        let key = [9u8; 32];
        for len in [0usize, 1, 15, 16, 17, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ours = seal(&key, &[b"ctx"], &plain);
            let theirs = cipher(&key).encrypt([b"ctx"], &plain).unwrap();
            assert_eq!(ours, theirs, "len {len}");
            assert_eq!(open(&key, &[b"ctx"], &ours).unwrap(), plain);
            let mut in_place = plain.clone();
            let tag = seal_in_place(&key, &[b"ctx"], &mut in_place);
            assert_eq!(tag[..], theirs[..TAG_LEN], "in place, tag, len {len}");
            assert_eq!(in_place[..], theirs[TAG_LEN..], "in place, body, len {len}");
            let tag: [u8; TAG_LEN] = theirs[..TAG_LEN].try_into().unwrap();
            let mut body = theirs[TAG_LEN..].to_vec();
            open_in_place(&key, &[b"ctx"], &tag, &mut body).unwrap();
            assert_eq!(body, plain, "in place, len {len}");
            // Cut anywhere, even inside a block, the parts decrypt as one.
            for cut in [0, len / 3, (len / 2 + 1).min(len), len] {
                let mut body = theirs[TAG_LEN..].to_vec();
                let (a, b) = body.split_at_mut(cut);
                decrypt_verified_parts(&key, &tag, [a, b]);
                assert_eq!(body, plain, "in parts cut at {cut}, len {len}");
            }
        }
    }

    /// Decrypting alone gives what the full open gives, at every length
    /// and for tags whose cleared bits are set, so the fast path reads
    /// exactly what was sealed.
    #[test]
    fn decrypting_alone_matches_the_full_open() {
        for (round, len) in [0usize, 1, 15, 16, 17, 31, 1000, 70_000]
            .into_iter()
            .enumerate()
        {
            let key = [round as u8 * 17 + 1; 32];
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let sealed = cipher(&key).encrypt([CTX], &plain).unwrap();
            let tag: [u8; TAG_LEN] = sealed[..TAG_LEN].try_into().unwrap();
            let mut body = sealed[TAG_LEN..].to_vec();
            decrypt_verified_parts(&key, &tag, [&mut body[..]]);
            assert_eq!(body, plain, "len {len}");
        }
        // The counter's cleared bits: a body sealed under a tag with them
        // set still decrypts (the tag itself is whatever S2V gave).
        let key = [42u8; 32];
        let plain = vec![0xa5u8; 4096];
        let mut found = 0;
        for salt in 0u8..64 {
            let mut p = plain.clone();
            p[0] = salt;
            let sealed = cipher(&key).encrypt([CTX], &p).unwrap();
            if sealed[8] & 0x80 != 0 && sealed[12] & 0x80 != 0 {
                found += 1;
                let tag: [u8; TAG_LEN] = sealed[..TAG_LEN].try_into().unwrap();
                let mut body = sealed[TAG_LEN..].to_vec();
                decrypt_verified_parts(&key, &tag, [&mut body[..]]);
                assert_eq!(body, p);
            }
        }
        assert!(found > 0, "no tag with both cleared bits set among 64");
    }

    /// Unlike `open`, this path cannot refuse: the caller must have
    /// verified the ciphertext. An altered byte comes out altered.
    #[test]
    fn decrypting_alone_does_not_authenticate() {
        let key = [7u8; 32];
        let sealed = seal(&key, &[CTX], b"the plaintext");
        let tag: [u8; TAG_LEN] = sealed[..TAG_LEN].try_into().unwrap();
        let mut body = sealed[TAG_LEN..].to_vec();
        body[0] ^= 1;
        decrypt_verified_parts(&key, &tag, [&mut body[..]]);
        assert_eq!(body[0], b't' ^ 1);
        assert_eq!(&body[1..], b"he plaintext");
    }

    const CTX: &[u8] = b"ctx";

    #[test]
    fn refuses_short_and_altered_input() {
        let key = [5u8; 32];
        assert_eq!(open(&key, &[], &[0u8; 15]), Err(Error::Unauthentic));
        let mut sealed = seal(&key, &[b"a"], b"some bytes");
        assert_eq!(open(&key, &[b"b"], &sealed), Err(Error::Unauthentic));
        sealed[TAG_LEN] ^= 1;
        assert_eq!(open(&key, &[b"a"], &sealed), Err(Error::Unauthentic));
        // In place, a refused body is left as it came, not half decrypted.
        let tag: [u8; TAG_LEN] = sealed[..TAG_LEN].try_into().unwrap();
        let mut body = sealed[TAG_LEN..].to_vec();
        assert_eq!(
            open_in_place(&key, &[b"a"], &tag, &mut body),
            Err(Error::Unauthentic)
        );
        assert_eq!(body, &sealed[TAG_LEN..]);
    }
}
