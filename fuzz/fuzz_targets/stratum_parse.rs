//! Stratum lines arrive from anyone who connects to a mirror's pool (a
//! miner's requests) and from the upstream pool a proxying mirror or a
//! miner talks to (notifications): parsing must refuse bad lines with an
//! error, never panic, and a share or a job it accepts must come back the
//! same from the line lode itself would send for it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lode::pool::stratum::{
    Request, ServerMessage, notify, parse_request, parse_server, request, submit_params,
};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(call) = parse_request(line)
        && let Request::Submit(submit) = call.request
    {
        let again = parse_request(&request(1, "mining.submit", submit_params(&submit)))
            .expect("a submit lode encodes parses");
        assert_eq!(again.request, Request::Submit(submit));
    }
    if let Ok(ServerMessage::Notify(job)) = parse_server(line) {
        let again = parse_server(&notify(&job)).expect("a job lode encodes parses");
        assert_eq!(again, ServerMessage::Notify(job));
    }
});
