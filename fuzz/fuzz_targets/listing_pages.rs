//! A friend's directory may come as an index and pages, all written by the
//! friend: decoding the index and filling it from the pages must refuse
//! bad bytes with an error, never panic, and a listing it accepts must
//! encode to one that decodes to the same entries.
//!
//! Input: a byte `n`, the index's length as two bytes (little-endian), the
//! index, then `n` pages, each its length as two bytes and its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lode::dir::Listing;

fn take<'a>(data: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let (head, rest) = (data.get(..len)?, data.get(len..)?);
    *data = rest;
    Some(head)
}

fn framed<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(data, 2)?;
    take(data, u16::from_le_bytes([len[0], len[1]]) as usize)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(&[n]) = take(&mut data, 1) else {
        return;
    };
    let Some(index) = framed(&mut data) else {
        return;
    };
    let pages: Vec<&[u8]> = (0..n).map_while(|_| framed(&mut data)).collect();
    let Ok(mut listing) = Listing::decode(index) else {
        return;
    };
    if listing.is_pending() && listing.fill(&pages).is_err() {
        return;
    }
    let again = Listing::decode(&listing.encode()).expect("an accepted listing re-encodes");
    assert_eq!(again.entries, listing.entries);
    assert_eq!(again.links, listing.links);
});
