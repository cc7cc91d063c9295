//! A share batch arrives at a mirror from anyone: decoding must refuse bad
//! bytes with an error, never panic or read past the body, and whatever it
//! accepts must be exactly what encoding those shares gives back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lode::protocol::{MAX_BATCH_SHARE_BYTES, MAX_BATCH_SHARES, decode_batch, encode_batch};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = decode_batch(data) {
        assert!((1..=MAX_BATCH_SHARES).contains(&items.len()));
        assert!(items.iter().all(|i| i.bytes.len() <= MAX_BATCH_SHARE_BYTES));
        let again = encode_batch(items.iter().map(|i| (&i.id, i.bytes)));
        assert_eq!(again, data, "a decoded batch re-encodes to its body");
    }
});
