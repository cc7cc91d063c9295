//! AES-SIV sealing of several buffers at once, each under its own key.
//!
//! The output is byte for byte what [`super::siv::seal_in_place`] gives for
//! each buffer alone (the tests check it against the `aes-siv` crate); only
//! the order of the work differs.
//!
//! Why: S2V, AES-SIV's first pass, is a CMAC, and a CMAC is one chain in
//! which each block's AES waits for the one before. On one core that chain
//! runs at the AES unit's latency (about 1 GB/s here) while the unit could
//! start a new block every cycle or two. Several buffers' chains, stepped
//! together one block each in turn, are independent, so the CPU overlaps
//! them: four chains take about the time of one (docs/PERFORMANCE.md,
//! "Sealing four chunks at once"). The second pass, CTR, is already
//! parallel within a buffer and goes through the `ctr` crate as before.
//!
//! No crate offers CMAC over several keys at once, so S2V (RFC 5297,
//! section 2.4) and CMAC (RFC 4493) are spelled out here, over the `aes`
//! crate's block cipher.

use aes::Aes256;
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, KeyInit,
};
use ctr::cipher::{KeyIvInit, StreamCipher};
use zeroize::Zeroize;

use super::TAG_LEN;
use super::keys::derive;
use super::siv::{CTR_INFO, MAC_INFO};

/// Buffers stepped together at most. Measured on this project's 2-core
/// hosts (a scratch bench of 4 MiB buffers): 2 chains ran in 1.0×, 4 in
/// 1.0× and 8 in 1.2× the time of one.
pub const LANES: usize = 8;

const BLOCK: usize = 16;

/// One AES block encryption under a key set up once. The `aes` crate sets
/// its backend up on every call of `encrypt_block` (with VAES, copying each
/// round key four times over), which for one block at a time cost more
/// than the block: each lane's chain runs inside its own backend instead
/// ([`with_backends`]).
trait Encrypt {
    fn encrypt(&self, block: &mut [u8; BLOCK]);
}

struct Backend<'a, B>(&'a B);

impl<B: BlockCipherEncBackend<BlockSize = U16>> Encrypt for Backend<'_, B> {
    #[inline]
    fn encrypt(&self, block: &mut [u8; BLOCK]) {
        let block: &mut aes::Block = block.into();
        self.0.encrypt_block(InOut::from(block));
    }
}

/// The backends set up so far, innermost first.
struct Held<'a> {
    this: &'a dyn Encrypt,
    outer: Option<&'a Held<'a>>,
}

/// Run `f` with each cipher's backend set up, in order.
fn with_backends(ciphers: &[Aes256], f: &mut dyn FnMut(&[&dyn Encrypt])) {
    fn nest(ciphers: &[Aes256], held: Option<&Held<'_>>, f: &mut dyn FnMut(&[&dyn Encrypt])) {
        let Some((first, rest)) = ciphers.split_first() else {
            let mut all = Vec::new();
            let mut at = held;
            while let Some(h) = at {
                all.push(h.this);
                at = h.outer;
            }
            all.reverse();
            return f(&all);
        };
        struct Next<'a, 'b> {
            rest: &'a [Aes256],
            held: Option<&'a Held<'a>>,
            f: &'b mut dyn FnMut(&[&dyn Encrypt]),
        }
        impl BlockSizeUser for Next<'_, '_> {
            type BlockSize = U16;
        }
        impl BlockCipherEncClosure for Next<'_, '_> {
            fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
                let this = Backend(backend);
                let held = Held {
                    this: &this,
                    outer: self.held,
                };
                nest(self.rest, Some(&held), self.f);
            }
        }
        first.encrypt_with_backend(Next { rest, held, f });
    }
    nest(ciphers, None, f);
}

/// One buffer's S2V in progress: its CMAC subkeys and the chain.
struct Lane {
    k1: [u8; BLOCK],
    k2: [u8; BLOCK],
    chain: [u8; BLOCK],
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
        self.chain.zeroize();
    }
}

impl Lane {
    fn new(mac: &dyn Encrypt) -> Self {
        let mut l = [0u8; BLOCK];
        mac.encrypt(&mut l);
        let k1 = dbl(&l);
        let k2 = dbl(&k1);
        l.zeroize();
        Self {
            k1,
            k2,
            chain: [0; BLOCK],
        }
    }

    /// One block into the chain. The xor is one 16-byte operation, so the
    /// chain's store and the cipher's load of it are one of each (bytewise
    /// stores under a 16-byte load stall the chain).
    #[inline(always)]
    fn step(&mut self, mac: &dyn Encrypt, block: &[u8]) {
        let block: &[u8; BLOCK] = block.try_into().expect("a whole block");
        self.chain = (u128::from_ne_bytes(self.chain) ^ u128::from_ne_bytes(*block)).to_ne_bytes();
        mac.encrypt(&mut self.chain);
    }

    /// End the chain with `last`, the message's final 1..=16 bytes (or
    /// none, for an empty message), and start a new one.
    fn finish(&mut self, mac: &dyn Encrypt, last: &[u8]) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        block[..last.len()].copy_from_slice(last);
        if last.len() == BLOCK {
            xor_into(&mut block, &self.k1);
        } else {
            block[last.len()] = 0x80;
            xor_into(&mut block, &self.k2);
        }
        self.step(mac, &block);
        block.zeroize();
        std::mem::take(&mut self.chain)
    }

    /// The CMAC of a whole (short) message.
    fn cmac(&mut self, mac: &dyn Encrypt, msg: &[u8]) -> [u8; BLOCK] {
        let body = msg.len().saturating_sub(1) / BLOCK * BLOCK;
        for block in msg[..body].chunks_exact(BLOCK) {
            self.step(mac, block);
        }
        self.finish(mac, &msg[body..])
    }

    /// S2V's value before the last string: the CMAC of a zero block, then
    /// each header doubled in.
    fn headers(&mut self, mac: &dyn Encrypt, headers: &[&[u8]]) -> [u8; BLOCK] {
        let mut d = self.cmac(mac, &[0; BLOCK]);
        for h in headers {
            d = dbl(&d);
            xor_into(&mut d, &self.cmac(mac, h));
        }
        d
    }
}

/// Doubling in GF(2^128), RFC 5297 section 2.3.
fn dbl(block: &[u8; BLOCK]) -> [u8; BLOCK] {
    let x = u128::from_be_bytes(*block);
    ((x << 1) ^ if x >> 127 == 1 { 0x87 } else { 0 }).to_be_bytes()
}

fn xor_into(acc: &mut [u8; BLOCK], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Seal each buffer in `bufs` where it lies under the key beside it, with
/// `headers` as associated data, and return the tags in order: for each,
/// what [`super::siv::seal_in_place`] returns and leaves.
pub fn seal_all_in_place(
    keys: &[&[u8; 32]],
    headers: &[&[u8]],
    bufs: &mut [&mut [u8]],
) -> Vec<[u8; TAG_LEN]> {
    assert_eq!(keys.len(), bufs.len(), "one key per buffer");
    if let ([key], [buf]) = (keys, &mut *bufs) {
        // One buffer alone gains nothing here: the crate's own pass.
        return vec![super::siv::seal_in_place(key, headers, buf)];
    }
    let mut tags = Vec::with_capacity(bufs.len());
    for (keys, bufs) in keys.chunks(LANES).zip(bufs.chunks_mut(LANES)) {
        let macs = s2v_lanes(keys, headers, bufs);
        for ((key, buf), tag) in keys.iter().zip(bufs.iter_mut()).zip(macs) {
            ctr_in_place(key, &tag, buf);
            tags.push(tag);
        }
    }
    tags
}

/// S2V of up to [`LANES`] buffers, their long chains stepped together.
fn s2v_lanes(keys: &[&[u8; 32]], headers: &[&[u8]], bufs: &[&mut [u8]]) -> Vec<[u8; BLOCK]> {
    let ciphers: Vec<Aes256> = keys
        .iter()
        .map(|k| Aes256::new((&*derive(k, MAC_INFO)).into()))
        .collect();
    let mut tags = Vec::with_capacity(bufs.len());
    with_backends(&ciphers, &mut |macs| {
        let mut lanes: Vec<Lane> = macs.iter().map(|m| Lane::new(*m)).collect();
        let mut ds: Vec<[u8; BLOCK]> = lanes
            .iter_mut()
            .zip(macs)
            .map(|(l, m)| l.headers(*m, headers))
            .collect();
        // For a buffer of 16 bytes or more, S2V's last string is the
        // buffer with D xored into its final 16 bytes. Every block before
        // the one those bytes start in is the buffer's own: that prefix is
        // the long chain, stepped here for every lane together.
        let prefix: Vec<usize> = bufs
            .iter()
            .map(|b| b.len().saturating_sub(BLOCK) / BLOCK * BLOCK)
            .collect();
        let longest = prefix.iter().copied().max().unwrap_or(0);
        let mut at = 0;
        while at < longest {
            for (((lane, mac), buf), &end) in lanes.iter_mut().zip(macs).zip(bufs).zip(&prefix) {
                if at < end {
                    lane.step(*mac, &buf[at..at + BLOCK]);
                }
            }
            at += BLOCK;
        }
        for ((((lane, mac), buf), &start), d) in lanes
            .iter_mut()
            .zip(macs)
            .zip(bufs)
            .zip(&prefix)
            .zip(&mut ds)
        {
            let tag = if buf.len() >= BLOCK {
                // The rest, 16 to 31 bytes, with D xored into its end.
                let mut tail = [0u8; 2 * BLOCK];
                let n = buf.len() - start;
                tail[..n].copy_from_slice(&buf[start..]);
                for (t, d) in tail[n - BLOCK..n].iter_mut().zip(d.iter()) {
                    *t ^= d;
                }
                let tag = lane.cmac(*mac, &tail[..n]);
                tail.zeroize();
                tag
            } else {
                // A short buffer: D doubled, xored with the padded buffer.
                let mut t = dbl(d);
                xor_into(&mut t, buf);
                t[buf.len()] ^= 0x80;
                let tag = lane.cmac(*mac, &t);
                t.zeroize();
                tag
            };
            d.zeroize();
            tags.push(tag);
        }
    });
    tags
}

/// AES-SIV's second pass: CTR from the tag with two bits cleared (RFC 5297
/// section 2.6), under the key's CTR half.
fn ctr_in_place(key: &[u8; 32], tag: &[u8; TAG_LEN], buf: &mut [u8]) {
    let mut iv = *tag;
    iv[8] &= 0x7f;
    iv[12] &= 0x7f;
    let ctr_key = derive(key, CTR_INFO);
    ctr::Ctr128BE::<Aes256>::new((&*ctr_key).into(), (&iv).into()).apply_keystream(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block edges, and buffers of different
    /// lengths stepped together, seal exactly as one at a time does.
    #[test]
    fn seals_as_one_at_a_time_does() {
        let lens: Vec<usize> = (0..=48).chain([255, 256, 257, 4096, 70_001]).collect();
        for headers in [
            &[][..],
            &[&b"lode chunk"[..]][..],
            &[&b"a"[..], &[0u8; 40][..]][..],
        ] {
            for group in lens.chunks(5) {
                let keys: Vec<[u8; 32]> = group.iter().map(|&n| [n as u8 ^ 0x5c; 32]).collect();
                let plain: Vec<Vec<u8>> = group
                    .iter()
                    .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
                    .collect();
                let mut bufs = plain.clone();
                let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                let key_refs: Vec<&[u8; 32]> = keys.iter().collect();
                let tags = seal_all_in_place(&key_refs, headers, &mut views);
                for (((key, plain), sealed), tag) in keys.iter().zip(&plain).zip(&bufs).zip(&tags) {
                    let alone = super::super::siv::seal(key, headers, plain);
                    assert_eq!(&alone[..TAG_LEN], tag, "tag, len {}", plain.len());
                    assert_eq!(&alone[TAG_LEN..], &sealed[..], "body, len {}", plain.len());
                }
            }
        }
    }

    /// More buffers than lanes, and one key for all of them: each buffer
    /// is still sealed on its own.
    #[test]
    fn more_buffers_than_lanes() {
        let key = [3u8; 32];
        let plain: Vec<Vec<u8>> = (0..LANES * 2 + 3)
            .map(|i| vec![i as u8; 1000 + i])
            .collect();
        let mut bufs = plain.clone();
        let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let keys = vec![&key; views.len()];
        let tags = seal_all_in_place(&keys, &[b"ctx"], &mut views);
        assert_eq!(tags.len(), plain.len());
        for ((plain, sealed), tag) in plain.iter().zip(&bufs).zip(&tags) {
            let alone = super::super::siv::seal(&key, &[b"ctx"], plain);
            assert_eq!(&alone[..TAG_LEN], tag);
            assert_eq!(&alone[TAG_LEN..], &sealed[..]);
        }
    }

    /// The doubling agrees with the standard itself, not only with the
    /// crate: RFC 5297 appendix A.1 doubles its CMAC of the zero block.
    #[test]
    fn doubling_matches_the_rfc() {
        // RFC 5297 A.1: CMAC(zero) and its doubling.
        let d = hex::decode("0e04dfafc1efbf040140582859bf073a").unwrap();
        let doubled = hex::decode("1c09bf5f83df7e080280b050b37e0e74").unwrap();
        assert_eq!(dbl(&d.try_into().unwrap())[..], doubled[..]);
        // A top bit set folds 0x87 back in.
        let mut top = [0u8; BLOCK];
        top[0] = 0x80;
        let mut want = [0u8; BLOCK];
        want[BLOCK - 1] = 0x87;
        assert_eq!(dbl(&top), want);
    }
}
