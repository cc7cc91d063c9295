//! Hostile mirrors: a test double that lies, and what the client makes of it.
//! A lying mirror may make reads slower or impossible, never wrong.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use common::{Client, MirrorProc, TestServer, write_file};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Every share read returns random bytes.
    Garbage,
    /// Every share read returns some other valid share it holds.
    Swap,
    /// Slots never advance past the first version stored.
    StaleSlots,
}

#[derive(Default)]
struct Held {
    shares: HashMap<String, Vec<u8>>,
    slots: HashMap<String, Vec<u8>>,
}

type Shared = Arc<(Lie, Mutex<Held>)>;

async fn put_share(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    s.1.lock().unwrap().shares.insert(id, body.to_vec());
    StatusCode::CREATED
}

async fn get_share(State(s): State<Shared>, Path(id): Path<String>) -> Result<Vec<u8>, StatusCode> {
    let held = s.1.lock().unwrap();
    let real = held.shares.get(&id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(match s.0 {
        Lie::Garbage => (0..real.len()).map(|_| rand::random::<u8>()).collect(),
        Lie::Swap => held
            .shares
            .iter()
            .find(|(other, _)| **other != id)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| real.iter().map(|b| b ^ 1).collect()),
        Lie::StaleSlots => real.clone(),
    })
}

async fn put_slot(State(s): State<Shared>, Path(pk): Path<String>, body: Bytes) -> StatusCode {
    let mut held = s.1.lock().unwrap();
    if s.0 == Lie::StaleSlots && held.slots.contains_key(&pk) {
        return StatusCode::OK; // claims success, keeps the old version
    }
    held.slots.insert(pk, body.to_vec());
    StatusCode::OK
}

async fn get_slot(State(s): State<Shared>, Path(pk): Path<String>) -> Result<Vec<u8>, StatusCode> {
    let held = s.1.lock().unwrap();
    let slot = held.slots.get(&pk).ok_or(StatusCode::NOT_FOUND)?;
    Ok(match s.0 {
        Lie::Garbage => {
            let mut forged = slot.clone();
            let n = forged.len();
            forged[n / 2] ^= 0xff;
            forged
        }
        _ => slot.clone(),
    })
}

async fn renew() -> axum::Json<lode::protocol::RenewResponse> {
    axum::Json(lode::protocol::RenewResponse {
        renewed: 0,
        missing: vec![],
        refused: vec![],
        reason: None,
        expires: 0,
    })
}

/// A mirror that accepts everything and lies on the way back out, on
/// 127.0.0.1:0 until dropped.
fn liar(lie: Lie) -> TestServer {
    let state: Shared = Arc::new((lie, Mutex::new(Held::default())));
    let app = Router::new()
        .route(
            "/v1/share/{id}",
            put(put_share)
                .get(get_share)
                .head(|| async { StatusCode::OK }),
        )
        .route("/v1/slot/{pk}", put(put_slot).get(get_slot))
        .route("/v1/renew", post(renew))
        .route("/v1/info", get(common::stand_in_info))
        .with_state(state);
    TestServer::start(app)
}

#[test]
fn a_liar_among_honest_mirrors_never_changes_the_output() {
    for lie in [Lie::Garbage, Lie::Swap] {
        let tmp = tempfile::tempdir().unwrap();
        let honest: Vec<MirrorProc> = (0..2)
            .map(|i| MirrorProc::start(&tmp.path().join(format!("m{i}")), &[]))
            .collect();
        let liar = liar(lie);
        let client = Client::new(
            &tmp.path().join("home"),
            &[&honest[0].url, &liar.url, &honest[1].url],
        );
        let data = common::seeded_bytes("malice", 5 << 20);
        let src = write_file(tmp.path(), "f.bin", &data);
        let cap = client
            .ok(&["put", src.to_str().unwrap(), "--to", "docs/f.bin"])
            .trim()
            .to_string();

        let out = tmp.path().join("back.bin");
        client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "wrong bytes with a lying mirror"
        );
        let listing = client.ok(&["ls", "docs"]);
        assert!(listing.contains("f.bin"), "{listing}");

        // check --verify names the liar.
        let report = client.fails(&["check", &cap, "--verify"]);
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("mirror {}:", liar.url)))
            .unwrap();
        assert!(line.contains("CORRUPT"), "{report}");
    }
}

#[test]
fn a_lone_liar_yields_an_error_never_wrong_data() {
    for lie in [Lie::Garbage, Lie::Swap] {
        let tmp = tempfile::tempdir().unwrap();
        let liar = liar(lie);
        let client = Client::new(&tmp.path().join("home"), &[&liar.url]);
        client.set_config("k", "1");
        client.set_config("n", "1");
        client.set_config("happy", "1");
        let src = write_file(tmp.path(), "f.bin", &common::seeded_bytes("alone", 300_000));
        // A second file gives the Swap liar something else to serve.
        let other = write_file(tmp.path(), "o.bin", &common::seeded_bytes("other", 1000));
        let cap = client
            .ok(&["put", src.to_str().unwrap()])
            .trim()
            .to_string();
        client.ok(&["put", other.to_str().unwrap()]);
        let out = tmp.path().join("back.bin");
        let err = client.fails(&["get", &cap, "-o", out.to_str().unwrap()]);
        assert!(err.contains("good shares"), "{err}");
        assert!(!out.exists(), "a failed get left a file behind");
        // To stdout: nothing is written either.
        let piped = client.run(&["get", &cap]);
        assert!(!piped.status.success());
        assert!(
            piped.stdout.is_empty(),
            "{} bytes written from a lying mirror",
            piped.stdout.len()
        );
    }
}

#[test]
fn a_client_refuses_to_roll_a_directory_back() {
    let tmp = tempfile::tempdir().unwrap();
    let liar = liar(Lie::StaleSlots);
    let client = Client::new(&tmp.path().join("home"), &[&liar.url]);
    client.set_config("k", "1");
    client.set_config("n", "1");
    client.set_config("happy", "1");
    let a = write_file(tmp.path(), "a.txt", b"first");
    let b = write_file(tmp.path(), "b.txt", b"second");
    client.ok(&["put", a.to_str().unwrap(), "--to", "a.txt"]);
    client.ok(&["put", b.to_str().unwrap(), "--to", "b.txt"]);
    // The mirror still serves the first version of the root: refused, in a
    // new process, because seen seqs persist.
    let err = client.fails(&["ls", "/"]);
    assert!(err.contains("refusing to roll"), "{err}");
}
