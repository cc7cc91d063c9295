//! `lode mine` against a mirror's built-in pool: the credit it earns is
//! exactly what the mirror recorded, and it moves funded_until forward.

mod common;

use common::Client;

#[test]
fn mining_credits_the_account_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirror, client) = common::charging_pool_mirror(tmp.path(), 2 << 20);

    let before: serde_json::Value =
        serde_json::from_str(&client.ok(&["status", "--json"])).unwrap();
    let funded_before = before["mirrors"][0]["funded_until"]
        .as_i64()
        .expect("storage is charged");
    assert_eq!(before["mirrors"][0]["funded_indefinitely"], false);

    let out = client.ok(&[
        "mine",
        "--duration",
        "10",
        "--threads",
        "1",
        "--normal-priority",
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("accepted "))
        .unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (shares, micro): (u64, u64) = (words[1].parse().unwrap(), words[4].parse().unwrap());
    assert!(
        shares > 0,
        "no share found in 10 s at difficulty 0.001: {out}"
    );
    // Shares come at 0.001 or more: vardiff raises a miner this quick
    // within seconds (the pool makes new work for it early), so the
    // figure to check is the mirror's own record of them, below.

    // The mirror's own records: the share table and the account balance.
    let db = rusqlite::Connection::open(mirror.data.join("ledger.sqlite")).unwrap();
    let (sum, count): (i64, i64) = db
        .query_row(
            "SELECT COALESCE(SUM(difficulty), 0), COUNT(*) FROM pool_shares",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sum as u64, count as u64), (micro, shares));
    let after: serde_json::Value = serde_json::from_str(&client.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        after["mirrors"][0]["shares_accepted"].as_u64(),
        Some(shares)
    );
    let funded_after = after["mirrors"][0]["funded_until"].as_i64().unwrap();
    assert!(
        funded_after > funded_before + 86_400,
        "funded_until {funded_before} -> {funded_after}"
    );
}

#[test]
fn mine_bench_reports_a_hashrate() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client {
        home: tmp.path().to_path_buf(),
    };
    let out = client.ok(&["mine", "--bench", "1", "--threads", "1"]);
    let total = out
        .lines()
        .find(|l| l.starts_with("total: "))
        .unwrap_or_else(|| panic!("{out}"));
    let mhs: f64 = total.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(mhs > 0.0, "{out}");
    let err = client.fails(&["mine", "--bench", "0"]);
    assert!(err.contains("positive"), "{err}");
}

/// A duration that is no number of seconds is a clear error, not a panic.
#[test]
fn mine_refuses_a_duration_that_is_no_time() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new(&tmp.path().join("home"), &["http://127.0.0.1:9"]);
    for bad in ["-1", "0", "nan", "inf", "99999999999999999999"] {
        let out = client.run(&["mine", &format!("--duration={bad}")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("--duration"), "{bad}: {err}");
    }
}

/// More threads than the machine can use is refused before any starts:
/// 99,999 of them aborted the process (no memory for their stacks).
#[test]
fn mine_refuses_more_threads_than_the_machine_can_use() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new(&tmp.path().join("home"), &["http://127.0.0.1:9"]);
    let out = client.run(&["mine", "--threads", "99999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--threads 99999: at most"), "{err}");
}

/// Figures past any sensible bound are refused with a word, before
/// anything starts: a benchmark longer than a Duration holds (it
/// panicked), a lease long enough to wrap the ledger's clock (leases were
/// born expired, and GC deleted each share as it came).
#[test]
fn out_of_range_durations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mirror");
    for (args, says) in [
        (
            vec!["mine", "--bench", "1e20", "--threads", "1"],
            "at most a day",
        ),
        (
            vec![
                "mirror",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--lease-days",
                "1e300",
            ],
            "at most ten years",
        ),
        (
            vec![
                "mirror",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--lease-secs",
                "9223372036854775807",
            ],
            "at most ten years",
        ),
    ] {
        let mut cmd = std::process::Command::new(common::LODE);
        cmd.args(&args).env("LODE_HOME", tmp.path().join("home"));
        if args[0] == "mirror" {
            cmd.arg("--data").arg(&data);
        }
        // Bounded: a mirror that took the figure would serve for good.
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} was taken");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!data.join("ledger.sqlite").exists(), "a mirror started");
}
