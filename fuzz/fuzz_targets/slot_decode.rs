//! A directory slot arrives from a mirror, which may be hostile: decoding,
//! the keyless signature check and the reader's open must reject bad bytes
//! with an error, never a panic. The listing decoder is fuzzed directly too,
//! since a valid signature is out of the fuzzer's reach.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lode::caps::{DirReadCap, DirWriteCap};
use lode::crypto::RootSecret;
use lode::dir::{Listing, SlotEnvelope};

static CAP: LazyLock<DirReadCap> = LazyLock::new(|| {
    let secret = RootSecret::from_bytes([1; 32]);
    DirWriteCap {
        seed: secret.root_dir_seed(),
    }
    .read_cap()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = SlotEnvelope::decode(data) {
        let _ = envelope.verify();
        let _ = envelope.check_update(None);
        let _ = envelope.open(&CAP);
        // Whatever decodes must encode to something that decodes the same.
        let again = SlotEnvelope::decode(&envelope.encode())
            .expect("a decoded envelope re-encodes to a decodable one");
        assert_eq!(envelope, again);
    }
    // An index decodes to a listing waiting for its pages, which is never
    // encoded as it is.
    if let Ok(listing) = Listing::decode(data)
        && !listing.is_pending()
    {
        let again = Listing::decode(&listing.encode())
            .expect("a decoded listing re-encodes to a decodable one");
        assert_eq!(listing, again);
    }
});
