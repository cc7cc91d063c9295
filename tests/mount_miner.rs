//! The mount mines for an under-funded mirror and reports it over its
//! control socket to `lode status`.

mod common;

use std::time::{Duration, Instant};

use common::Client;
use common::mount::Mounted;

fn status(client: &Client) -> serde_json::Value {
    serde_json::from_str(&client.ok(&["status", "--json"])).unwrap()
}

#[test]
fn the_mount_mines_until_funded_and_status_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirror, client) = common::charging_pool_mirror(tmp.path(), 1 << 20);
    let before = status(&client)["mirrors"][0]["funded_until"]
        .as_i64()
        .expect("storage is charged");

    let mp = tmp.path().join("mnt");
    // Normal priority and one thread: the test must not depend on idle CPU.
    let m = Mounted::with_options(&client, &mp, &["miner_threads=1", "miner_idle=0"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let s = status(&client);
        let mount = &s["mount"];
        assert!(mount.is_object(), "status has no mount section: {s}");
        if mount["accepted"].as_u64().unwrap_or(0) >= 2
            && mount["hashrate"].as_f64().unwrap_or(0.0) > 0.0
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the mount did not mine: {s}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        last["mount"]["mining_for"].as_str(),
        Some(mirror.url.as_str())
    );
    let after = last["mirrors"][0]["funded_until"].as_i64().unwrap();
    assert!(after > before, "funded_until {before} -> {after}");
    drop(m);
}

/// A mount that had nothing to mine for at first (a new account stores
/// nothing, so nothing is charged) mines once its files cost something.
/// The keeper's first round used to drop its channel of finds when it had
/// no target, and the mount never mined again.
#[test]
fn a_mount_with_nothing_to_fund_at_first_mines_once_it_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirror, client) = common::empty_charging_pool_mirror(tmp.path());
    let mp = tmp.path().join("mnt");
    let m = Mounted::with_options(&client, &mp, &["miner_threads=1", "miner_idle=0"]);
    // The keeper's first round has asked the mirror, and found nothing
    // to fund.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&client);
        let asked = &s["mount"]["funded_until"];
        if asked.as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(asked[0]["funded_indefinitely"], true, "{s}");
            assert!(s["mount"]["mining_for"].is_null(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the keeper never asked: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }

    std::fs::write(
        mp.join("now charged.bin"),
        common::seeded_bytes("charged", 1 << 20),
    )
    .unwrap();
    client.ok(&["sync"]);
    // The keeper looks again within a round (60 s).
    let deadline = Instant::now() + Duration::from_secs(150);
    let s = loop {
        let s = status(&client);
        if s["mount"]["accepted"].as_u64().unwrap_or(0) >= 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "the mount never mined: {s}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(s["mount"]["mining_for"].as_str(), Some(mirror.url.as_str()));
    drop(m);
}

/// Leases the keeper could not renew are in plain `lode status`, not only
/// in its JSON: here an account past its grace, with no miner, has its
/// renewals refused.
#[test]
fn refused_renewals_show_in_plain_status() {
    let tmp = tempfile::tempdir().unwrap();
    // Grace of about 4 s, and a price no balance of 0 covers.
    let mirror = common::MirrorProc::start(
        &tmp.path().join("m"),
        &["--price", "1000", "--grace-days", "0.00005"],
    );
    let client = Client::new(&tmp.path().join("home"), &[&mirror.url]);
    for (key, value) in [("k", "1"), ("n", "1"), ("happy", "1")] {
        client.set_config(key, value);
    }
    let f = common::write_file(
        tmp.path(),
        "kept.bin",
        &common::seeded_bytes("kept", 100_000),
    );
    client.ok(&["put", f.to_str().unwrap(), "--to", "kept.bin"]);
    std::thread::sleep(Duration::from_secs(6));

    let mp = tmp.path().join("mnt");
    let m = Mounted::with_options(&client, &mp, &["nominer"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = client.ok(&["status"]);
        if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("leases ")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no renewal in status: {text}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(text.contains("NOT ALL RENEWED"), "{text}");
    assert!(text.contains("leases refused"), "{text}");
    drop(m);
}
