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

use aes_siv::aead::inout::InOutBuf;
use aes_siv::{KeyInit, siv::Aes256Siv};
use zeroize::Zeroizing;

use super::{Error, Result, keys::derive};

/// Bytes the synthetic IV (the tag) adds in front of the ciphertext.
pub const TAG_LEN: usize = 16;

fn cipher(key: &[u8; 32]) -> Aes256Siv {
    // AES-256-SIV takes 64 bytes of key (one for S2V, one for CTR); both
    // halves are expanded from the 32-byte key.
    let mut full = Zeroizing::new([0u8; 64]);
    full[..32].copy_from_slice(&*derive(key, b"aes-siv mac"));
    full[32..].copy_from_slice(&*derive(key, b"aes-siv ctr"));
    Aes256Siv::new_from_slice(&*full).expect("64-byte key is valid for AES-256-SIV")
}

/// Encrypt `plaintext` under `key`, binding `context` as associated data.
/// The output is [`TAG_LEN`] bytes longer than the input.
pub fn seal(key: &[u8; 32], context: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_LEN + plaintext.len());
    seal_append(key, context, plaintext, &mut out);
    out
}

/// [`seal`], appending the sealed bytes to `out`: a caller that reserved
/// room (for padding, say) gets them without a reallocation.
pub fn seal_append(key: &[u8; 32], context: &[&[u8]], plaintext: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + TAG_LEN + plaintext.len(), 0);
    let (tag_out, body) = out[start..].split_at_mut(TAG_LEN);
    let buf = InOutBuf::new(plaintext, body).expect("output sized to the input");
    let tag = cipher(key)
        .encrypt_inout_detached(context, buf)
        .expect("AES-SIV encryption fails only for more headers than lode ever passes");
    tag_out.copy_from_slice(&tag);
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
            let tag: [u8; TAG_LEN] = theirs[..TAG_LEN].try_into().unwrap();
            let mut body = theirs[TAG_LEN..].to_vec();
            open_in_place(&key, &[b"ctx"], &tag, &mut body).unwrap();
            assert_eq!(body, plain, "in place, len {len}");
        }
    }

    #[test]
    fn appends_after_what_is_there() {
        let key = [3u8; 32];
        let mut out = b"head".to_vec();
        seal_append(&key, &[], b"payload", &mut out);
        assert_eq!(&out[..4], b"head");
        assert_eq!(open(&key, &[], &out[4..]).unwrap(), b"payload");
    }

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
