//! Cap strings come from users and from directory listings written by
//! others: parsing must never panic, and whatever parses must print back to
//! a string that parses to the same cap.

#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use lode::caps::Cap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cap) = Cap::from_str(text) else {
        return;
    };
    let printed = cap.to_string();
    let reparsed = Cap::from_str(&printed)
        .unwrap_or_else(|e| panic!("printed cap {printed:?} does not parse: {e}"));
    assert_eq!(cap, reparsed, "cap changed across a print/parse round trip");
    // The canonical form is a fixed point.
    assert_eq!(printed, reparsed.to_string());
});
