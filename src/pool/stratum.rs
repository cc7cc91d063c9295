//! Stratum v1 lines: JSON-RPC objects, one per line, both directions.

use serde_json::{Value, json};

use super::difficulty::Difficulty;
use super::{Error, Job, Result};

/// Longest line a pool accepts from a miner; longer input is a protocol
/// error.
pub const MAX_LINE: usize = 16 * 1024;
/// Longest line a miner or a proxy accepts from a pool: a `mining.notify`
/// carries the coinbase, which a pool paying many outputs makes far longer
/// than any request a miner sends.
pub const MAX_SERVER_LINE: usize = 256 * 1024;

/// Standard Stratum error codes.
pub mod code {
    pub const OTHER: i64 = 20;
    pub const STALE: i64 = 21;
    pub const DUPLICATE: i64 = 22;
    pub const LOW_DIFFICULTY: i64 = 23;
    pub const UNAUTHORIZED: i64 = 24;
    pub const NOT_SUBSCRIBED: i64 = 25;
}

/// A share as `mining.submit` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// BIP310 version bits, when version rolling is on.
    pub version_bits: Option<u32>,
}

/// A miner's request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe,
    Authorize {
        worker: String,
    },
    Submit(Submit),
    SuggestDifficulty(f64),
    /// `mining.configure`; the requested version-rolling mask, if any.
    Configure {
        version_mask: Option<u32>,
    },
    ExtranonceSubscribe,
    Unknown(String),
}

/// A request with its JSON-RPC id.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: Value,
    pub request: Request,
}

fn bad(method: &str, reason: &str) -> Error {
    Error::Params {
        method: method.to_string(),
        reason: reason.to_string(),
    }
}

pub fn hex_bytes(s: &str, what: &'static str) -> Result<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .map_err(|_| Error::Hex(what))
}

fn hex_u32(v: Option<&Value>, what: &'static str) -> Result<u32> {
    let s = v.and_then(Value::as_str).ok_or(Error::Hex(what))?;
    if s.len() != 8 {
        return Err(Error::Hex(what));
    }
    mask_hex(s).ok_or(Error::Hex(what))
}

/// Up to 8 hex digits and nothing else (`from_str_radix` alone also takes
/// a leading `+`).
fn mask_hex(s: &str) -> Option<u32> {
    let digits = (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    digits.then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

fn hex32(v: Option<&Value>, what: &'static str) -> Result<[u8; 32]> {
    let s = v.and_then(Value::as_str).ok_or(Error::Hex(what))?;
    hex_bytes(s, what)?.try_into().map_err(|_| Error::Hex(what))
}

fn enc(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn parse_object(line: &str, max: usize) -> Result<serde_json::Map<String, Value>> {
    if line.len() > max {
        return Err(Error::TooLong(max));
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Json("not a JSON object".into())),
        Err(e) => Err(Error::Json(e.to_string())),
    }
}

/// Parse one line from a miner.
pub fn parse_request(line: &str) -> Result<Call> {
    let obj = parse_object(line, MAX_LINE)?;
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Json("no method".into()))?;
    let empty = Vec::new();
    let params = match obj.get("params") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(bad(method, "params is not an array")),
    };
    let request = match method {
        "mining.subscribe" => Request::Subscribe,
        "mining.authorize" => Request::Authorize {
            worker: params
                .first()
                .and_then(Value::as_str)
                .ok_or_else(|| bad(method, "missing worker name"))?
                .to_string(),
        },
        "mining.submit" => {
            if params.len() < 5 {
                return Err(bad(method, "expected 5 or 6 parameters"));
            }
            let s = |i: usize, what: &str| -> Result<String> {
                params[i]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(method, what))
            };
            Request::Submit(Submit {
                worker: s(0, "worker is not a string")?,
                job_id: s(1, "job id is not a string")?,
                extranonce2: hex_bytes(&s(2, "extranonce2 is not a string")?, "extranonce2")?,
                ntime: hex_u32(params.get(3), "ntime")?,
                nonce: hex_u32(params.get(4), "nonce")?,
                version_bits: params
                    .get(5)
                    .map(|v| hex_u32(Some(v), "version bits"))
                    .transpose()?,
            })
        }
        "mining.suggest_difficulty" => Request::SuggestDifficulty(
            params
                .first()
                .and_then(Value::as_f64)
                .ok_or_else(|| bad(method, "difficulty is not a number"))?,
        ),
        "mining.configure" => {
            let wants = params
                .first()
                .and_then(Value::as_array)
                .is_some_and(|exts| exts.iter().any(|e| e.as_str() == Some("version-rolling")));
            let mask = params
                .get(1)
                .and_then(|p| p.get("version-rolling.mask"))
                .and_then(Value::as_str)
                .map(|m| mask_hex(m).ok_or(Error::Hex("version-rolling.mask")))
                .transpose()?;
            Request::Configure {
                version_mask: wants.then_some(mask.unwrap_or(u32::MAX)),
            }
        }
        "mining.extranonce.subscribe" => Request::ExtranonceSubscribe,
        other => Request::Unknown(other.chars().take(64).collect()),
    };
    Ok(Call { id, request })
}

pub fn ok(id: &Value, result: Value) -> String {
    json!({"id": id, "result": result, "error": null}).to_string()
}

pub fn err(id: &Value, code: i64, message: &str) -> String {
    json!({"id": id, "result": null, "error": [code, message, null]}).to_string()
}

pub fn notify(job: &Job) -> String {
    let branch: Vec<String> = job.branch.iter().map(|b| enc(b)).collect();
    json!({"id": null, "method": "mining.notify", "params": [
        job.id, enc(&job.prevhash), enc(&job.coinb1), enc(&job.coinb2), branch,
        format!("{:08x}", job.version), format!("{:08x}", job.nbits), format!("{:08x}", job.ntime), job.clean
    ]})
    .to_string()
}

pub fn set_difficulty(d: Difficulty) -> String {
    json!({"id": null, "method": "mining.set_difficulty", "params": [d.as_f64()]}).to_string()
}

/// A miner's outgoing request line.
pub fn request(id: u64, method: &str, params: Value) -> String {
    json!({"id": id, "method": method, "params": params}).to_string()
}

pub fn submit_params(s: &Submit) -> Value {
    let mut p = vec![
        json!(s.worker),
        json!(s.job_id),
        json!(enc(&s.extranonce2)),
        json!(format!("{:08x}", s.ntime)),
        json!(format!("{:08x}", s.nonce)),
    ];
    if let Some(v) = s.version_bits {
        p.push(json!(format!("{v:08x}")));
    }
    Value::Array(p)
}

/// A line from a pool, as a miner (or a proxying mirror) sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Response {
        id: Option<u64>,
        result: Value,
        error: Option<(i64, String)>,
    },
    Notify(Job),
    SetDifficulty(f64),
    SetExtranonce {
        extranonce1: Vec<u8>,
        extranonce2_size: usize,
    },
    /// `mining.set_version_mask`: the version bits the pool now lets the
    /// miner roll (BIP310).
    SetVersionMask(u32),
    Other(String),
}

/// The parameters of a `mining.configure` that asks to roll the bits of
/// `mask` (BIP310).
pub fn configure_params(mask: u32) -> Value {
    json!([["version-rolling"], {
        "version-rolling.mask": format!("{mask:08x}"),
        "version-rolling.min-bit-count": 2,
    }])
}

/// The ids of a miner's (or a proxy's) opening requests, whose answers it
/// tells apart by them; its own requests start at [`FIRST_FREE_ID`].
pub mod opening_id {
    pub const CONFIGURE: u64 = 1;
    pub const SUBSCRIBE: u64 = 2;
    pub const AUTHORIZE: u64 = 3;
}
/// The first id after the opening requests.
pub const FIRST_FREE_ID: u64 = 4;

/// The lines a miner opens a connection with: `mining.configure` for the
/// version bits of `mask`, `mining.subscribe` as `agent`, and
/// `mining.authorize` as `worker`, with the ids of [`opening_id`].
pub fn opening(mask: u32, agent: &str, worker: &str, password: &str) -> [String; 3] {
    [
        request(
            opening_id::CONFIGURE,
            "mining.configure",
            configure_params(mask),
        ),
        request(opening_id::SUBSCRIBE, "mining.subscribe", json!([agent])),
        request(
            opening_id::AUTHORIZE,
            "mining.authorize",
            json!([worker, password]),
        ),
    ]
}

/// The version bits a pool's answer to `mining.configure` lets us roll,
/// within the `asked` mask: none if it refused the request, does not know
/// the method, or turned version rolling down.
pub fn granted_version_mask(result: &Value, error: Option<&(i64, String)>, asked: u32) -> u32 {
    if error.is_some() || result.get("version-rolling") != Some(&Value::Bool(true)) {
        return 0;
    }
    result
        .get("version-rolling.mask")
        .and_then(Value::as_str)
        .and_then(mask_hex)
        .unwrap_or(0)
        & asked
}

pub fn parse_server(line: &str) -> Result<ServerMessage> {
    let obj = parse_object(line, MAX_SERVER_LINE)?;
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        let error = match obj.get("error") {
            Some(Value::Array(e)) => Some((
                e.first().and_then(Value::as_i64).unwrap_or(code::OTHER),
                e.get(1).and_then(Value::as_str).unwrap_or("").to_string(),
            )),
            _ => None,
        };
        return Ok(ServerMessage::Response {
            id: obj.get("id").and_then(Value::as_u64),
            result: obj.get("result").cloned().unwrap_or(Value::Null),
            error,
        });
    };
    let params = obj
        .get("params")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(match method {
        "mining.notify" => {
            let branch = params
                .get(4)
                .and_then(Value::as_array)
                .ok_or(Error::Hex("merkle branch"))?
                .iter()
                .map(|b| hex32(Some(b), "merkle branch"))
                .collect::<Result<_>>()?;
            let s = |i: usize, what: &'static str| {
                params
                    .get(i)
                    .and_then(Value::as_str)
                    .ok_or(Error::Hex(what))
            };
            ServerMessage::Notify(Job {
                id: s(0, "job id")?.to_string(),
                prevhash: hex32(params.get(1), "prevhash")?,
                coinb1: hex_bytes(s(2, "coinb1")?, "coinb1")?,
                coinb2: hex_bytes(s(3, "coinb2")?, "coinb2")?,
                branch,
                version: hex_u32(params.get(5), "version")?,
                nbits: hex_u32(params.get(6), "nbits")?,
                ntime: hex_u32(params.get(7), "ntime")?,
                clean: params.get(8).and_then(Value::as_bool).unwrap_or(false),
            })
        }
        "mining.set_difficulty" => ServerMessage::SetDifficulty(
            params
                .first()
                .and_then(Value::as_f64)
                .ok_or_else(|| bad(method, "difficulty"))?,
        ),
        "mining.set_extranonce" => ServerMessage::SetExtranonce {
            extranonce1: hex_bytes(
                params.first().and_then(Value::as_str).unwrap_or(""),
                "extranonce1",
            )?,
            extranonce2_size: params.get(1).and_then(Value::as_u64).unwrap_or(4) as usize,
        },
        "mining.set_version_mask" => ServerMessage::SetVersionMask(
            params
                .first()
                .and_then(Value::as_str)
                .and_then(mask_hex)
                .ok_or_else(|| bad(method, "mask is not up to 8 hex digits"))?,
        ),
        other => ServerMessage::Other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_round_trips_and_matches_vector_encoding() {
        let line = r#"{"id": 4, "method": "mining.submit", "params": ["acct.rig", "j1", "00000001", "4d1b2237", "10572b0f"]}"#;
        let call = parse_request(line).unwrap();
        let Request::Submit(s) = &call.request else {
            panic!("{call:?}")
        };
        assert_eq!(s.ntime, 0x4d1b2237);
        assert_eq!(s.nonce, 0x10572b0f);
        assert_eq!(s.extranonce2, vec![0, 0, 0, 1]);
        let again = parse_request(&request(4, "mining.submit", submit_params(s))).unwrap();
        assert_eq!(again.request, call.request);
    }

    #[test]
    fn notify_round_trips() {
        let job = Job {
            id: "ab".into(),
            prevhash: [1; 32],
            coinb1: vec![1, 2, 3],
            coinb2: vec![4],
            branch: vec![[5; 32], [6; 32]],
            version: 0x2000_0000,
            nbits: 0x1b04864c,
            ntime: 0x4d1b2237,
            clean: true,
        };
        assert_eq!(
            parse_server(&notify(&job)).unwrap(),
            ServerMessage::Notify(job.clone())
        );
        // A coinbase paying many outputs: longer than any miner's request
        // may be, still a job.
        let long = Job {
            coinb2: vec![7; 3 * MAX_LINE],
            ..job
        };
        let line = notify(&long);
        assert!(line.len() > MAX_LINE);
        assert_eq!(parse_server(&line).unwrap(), ServerMessage::Notify(long));
        assert_eq!(parse_request(&line), Err(Error::TooLong(MAX_LINE)));
        let too_long = " ".repeat(MAX_SERVER_LINE + 1);
        assert_eq!(
            parse_server(&too_long),
            Err(Error::TooLong(MAX_SERVER_LINE))
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "",
            "{",
            "[]",
            "{\"id\":1}",
            "{\"id\":1,\"method\":\"mining.submit\",\"params\":[1]}",
            r#"{"id":1,"method":"mining.submit","params":["w","j","zz","00000000","00000000"]}"#,
            r#"{"id":1,"method":"mining.submit","params":["w","j","00","0000000","00000000"]}"#,
        ] {
            assert!(parse_request(line).is_err(), "{line:?}");
        }
        assert_eq!(
            parse_request(&"x".repeat(MAX_LINE + 1)),
            Err(Error::TooLong(MAX_LINE))
        );
    }

    #[test]
    fn configure_reads_the_version_mask() {
        let line = r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#;
        assert_eq!(
            parse_request(line).unwrap().request,
            Request::Configure {
                version_mask: Some(0x1fffe000)
            }
        );
    }

    #[test]
    fn a_pools_configure_answer_grants_what_it_says_within_what_was_asked() {
        let asked = 0x1fff_e000;
        let yes = json!({"version-rolling": true, "version-rolling.mask": "00ffe000"});
        assert_eq!(granted_version_mask(&yes, None, asked), 0x00ff_e000);
        let wider = json!({"version-rolling": true, "version-rolling.mask": "ffffffff"});
        assert_eq!(granted_version_mask(&wider, None, asked), asked);
        let off = json!({"version-rolling": false, "version-rolling.mask": "1fffe000"});
        assert_eq!(granted_version_mask(&off, None, asked), 0);
        // A pool that does not know the method answers with an error.
        let unknown = (20, "unknown method".to_string());
        assert_eq!(granted_version_mask(&Value::Null, Some(&unknown), asked), 0);
        let signed = json!({"version-rolling": true, "version-rolling.mask": "+fffe000"});
        assert_eq!(granted_version_mask(&signed, None, asked), 0);
    }

    #[test]
    fn set_version_mask_is_read_and_hex_fields_take_digits_only() {
        let line = r#"{"id":null,"method":"mining.set_version_mask","params":["00ffe000"]}"#;
        assert_eq!(
            parse_server(line).unwrap(),
            ServerMessage::SetVersionMask(0x00ff_e000)
        );
        let bad = r#"{"id":null,"method":"mining.set_version_mask","params":["+0ffe000"]}"#;
        assert!(parse_server(bad).is_err());
        let submit = r#"{"id":4,"method":"mining.submit","params":["w","j","00000001","+d1b2237","10572b0f"]}"#;
        assert!(parse_request(submit).is_err(), "a signed ntime is refused");
    }
}
