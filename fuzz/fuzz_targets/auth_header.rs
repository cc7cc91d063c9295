//! Every signed request to a mirror carries an `Authorization` header that
//! the mirror parses before it checks anything: parsing must refuse bad
//! headers with an error, never panic, and a header it accepts must be the
//! one its parts print back to.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lode::protocol::RequestAuth;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(auth) = RequestAuth::parse(header) {
        let again = RequestAuth::parse(&auth.header()).expect("a printed header parses");
        assert_eq!(again, auth);
    }
});
