//! The mirror's Stratum pool: share validation, credit, crash safety, proxy.

mod common;

use common::MirrorProc;
use common::stratum_client::{TestMiner, error_code};
use lode::crypto::RootSecret;
use lode::store::HttpMirror;
use serde_json::json;

const LOW: &[&str] = &[
    "--difficulty",
    "0.000001",
    "--min-difficulty",
    "0.000001",
    "--share-interval",
    "1000",
];

fn pool_mirror(dir: &std::path::Path, extra: &[&str]) -> MirrorProc {
    let mut args = vec!["--stratum", "127.0.0.1:0"];
    args.extend_from_slice(LOW);
    args.extend_from_slice(extra);
    MirrorProc::start(dir, &args)
}

fn account(byte: u8) -> (lode::crypto::AccountKey, String) {
    let key = RootSecret::from_bytes([byte; 32]).account_key();
    let hex = lode::protocol::hex(&key.public_key());
    (key, hex)
}

fn status(url: &str, key: &lode::crypto::AccountKey) -> lode::protocol::AccountStatus {
    common::runtime()
        .block_on(HttpMirror::new(url, key.clone()).unwrap().account())
        .unwrap()
}

/// Sum of the credited difficulty in the mirror's own share records.
fn recorded_credit(mirror: &MirrorProc, account: &[u8; 32]) -> (u64, u64) {
    let db = rusqlite::Connection::open(mirror.data.join("ledger.sqlite")).unwrap();
    db.query_row(
        "SELECT COALESCE(SUM(difficulty), 0), COUNT(*) FROM pool_shares WHERE account = ?1",
        [&account[..]],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}

/// Past `--max-connections`, the pool takes no new miner until one of
/// those it has leaves; then the waiting one is served.
#[test]
fn past_the_connection_bound_a_miner_waits_for_a_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = pool_mirror(&tmp.path().join("m"), &["--max-connections", "1"]);
    let addr = mirror.stratum.clone().unwrap();
    let mut first = TestMiner::connect(&addr);
    first.subscribe();
    let mut second = TestMiner::connect(&addr);
    second
        .send_raw(b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}\n")
        .unwrap();
    second.set_read_timeout(std::time::Duration::from_secs(1));
    assert!(
        second.read_line().is_none(),
        "a second miner was served past a bound of one"
    );
    drop(first);
    second.set_read_timeout(std::time::Duration::from_secs(20));
    let reply = second
        .read_line()
        .expect("the waiting miner was not served");
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply["result"].is_array(), "{reply}");
}

/// A miner whose shares come far faster than vardiff aims for (here
/// one per 1,000 s) gets new work at a raised difficulty within seconds,
/// not at the next 30 s job: until then each share costs the ledger a
/// commit.
#[test]
fn a_burst_of_shares_brings_new_work_at_a_higher_difficulty() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = pool_mirror(&tmp.path().join("m"), &["--job-interval", "300"]);
    let addr = mirror.stratum.clone().unwrap();
    let (key, acct) = account(0x53);
    let mut m = TestMiner::connect(&addr);
    m.subscribe();
    assert_eq!(m.authorize(&acct)["result"], json!(true));
    let job = m.wait_job();
    let first = m.difficulty_of(&job);
    let mut nonce = 0;
    for _ in 0..8 {
        nonce = m.grind(&job, &[0; 4], nonce, true);
        let r = m.submit(&acct, &job.id, &[0; 4], job.ntime, nonce).unwrap();
        assert_eq!(r["result"], json!(true), "{r}");
        nonce += 1;
    }
    m.set_read_timeout(std::time::Duration::from_secs(60));
    let next = m
        .wait_new_job(&job)
        .expect("no new job within 60 s of a burst (jobs every 300 s)");
    assert!(
        m.difficulty_of(&next) > first,
        "new work at {} after a burst at {first}",
        m.difficulty_of(&next)
    );
    // Its shares are taken, and credited, at the raised difficulty.
    let (before, _) = recorded_credit(&mirror, &key.public_key());
    let nonce = m.grind(&next, &[0; 4], 0, true);
    let r = m
        .submit(&acct, &next.id, &[0; 4], next.ntime, nonce)
        .unwrap();
    assert_eq!(r["result"], json!(true), "{r}");
    let (after, _) = recorded_credit(&mirror, &key.public_key());
    assert_eq!(
        after - before,
        (m.difficulty_of(&next) * 1e6).round() as u64,
        "credited at the raised difficulty"
    );
}

#[test]
fn bad_shares_are_rejected_with_the_right_code_and_earn_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = pool_mirror(&tmp.path().join("m"), &[]);
    let addr = mirror.stratum.clone().unwrap();
    let (key, acct) = account(0x51);
    let worker = format!("{acct}.rig1");

    // Not subscribed.
    let mut early = TestMiner::connect(&addr);
    let r = early.submit(&worker, "1", &[0; 4], 0, 0).unwrap();
    assert_eq!(error_code(&r), Some(25));

    // A bystander who keeps mining throughout.
    let mut other = TestMiner::connect(&addr);
    other.subscribe();
    let (_, other_acct) = account(0x52);
    assert_eq!(other.authorize(&other_acct)["result"], json!(true));

    let mut m = TestMiner::connect(&addr);
    m.subscribe();
    // Unauthorized: submitting before authorize, and for another account.
    let job = m.wait_job();
    let nonce = m.grind(&job, &[0, 0, 0, 1], 0, true);
    assert_eq!(
        error_code(
            &m.submit(&worker, &job.id, &[0, 0, 0, 1], job.ntime, nonce)
                .unwrap()
        ),
        Some(24)
    );
    assert_eq!(m.authorize(&worker)["result"], json!(true));
    assert_eq!(
        error_code(
            &m.submit(&other_acct, &job.id, &[0, 0, 0, 1], job.ntime, nonce)
                .unwrap()
        ),
        Some(24)
    );
    assert_eq!(error_code(&m.authorize("not-an-account")), Some(24));

    // One good share, accepted; the same again is a duplicate.
    let r = m
        .submit(&worker, &job.id, &[0, 0, 0, 1], job.ntime, nonce)
        .unwrap();
    assert_eq!(r["result"], json!(true), "{r}");
    assert_eq!(
        error_code(
            &m.submit(&worker, &job.id, &[0, 0, 0, 1], job.ntime, nonce)
                .unwrap()
        ),
        Some(22)
    );
    // Unknown job.
    assert_eq!(
        error_code(
            &m.submit(&worker, "ffffffff", &[0, 0, 0, 1], job.ntime, nonce)
                .unwrap()
        ),
        Some(21)
    );
    // Below the difficulty.
    let low = m.grind(&job, &[0, 0, 0, 2], 0, false);
    assert_eq!(
        error_code(
            &m.submit(&worker, &job.id, &[0, 0, 0, 2], job.ntime, low)
                .unwrap()
        ),
        Some(23)
    );
    // ntime out of bounds, both ways.
    let early_ntime = m.grind(&job, &[0, 0, 0, 3], 0, true);
    assert_eq!(
        error_code(
            &m.submit(&worker, &job.id, &[0, 0, 0, 3], job.ntime - 1, early_ntime)
                .unwrap()
        ),
        Some(20)
    );
    assert_eq!(
        error_code(
            &m.submit(
                &worker,
                &job.id,
                &[0, 0, 0, 3],
                job.ntime + 100_000,
                early_ntime
            )
            .unwrap()
        ),
        Some(20)
    );
    // Wrong extranonce2 size.
    assert_eq!(
        error_code(
            &m.submit(&worker, &job.id, &[0, 1], job.ntime, nonce)
                .unwrap()
        ),
        Some(20)
    );

    // Malformed JSON, an over-long line and random bytes each end a
    // connection, with an error saying why (it closed without a word);
    // the pool keeps serving everyone else.
    for (garbage, why) in [
        (b"{not json\n".to_vec(), "malformed JSON-RPC line"),
        (vec![b'a'; 17 * 1024], "line length"),
        ((0..2000).map(|i| (i * 7919 % 251) as u8).collect(), ""),
    ] {
        let mut bad = TestMiner::connect(&addr);
        bad.subscribe();
        let _ = bad.send_raw(&garbage);
        let _ = bad.send_raw(b"\n");
        let mut said = Vec::new();
        while let Some(line) = bad.read_line() {
            said.push(line);
        }
        let last = said
            .last()
            .unwrap_or_else(|| panic!("no answer to {why:?}"));
        assert_eq!(error_code(last), Some(20), "{last}");
        assert!(last["error"][1].as_str().unwrap().contains(why), "{last}");
    }
    let job = other.wait_job();
    let n = other.grind(&job, &[9, 9, 9, 9], 0, true);
    let r = other
        .submit(&other_acct, &job.id, &[9, 9, 9, 9], job.ntime, n)
        .unwrap();
    assert_eq!(r["result"], json!(true), "{r}");

    // Exactly one share credited, at difficulty 0.000001.
    let st = status(&mirror.url, &key);
    assert_eq!((st.credit_micro, st.shares_accepted), (1, 1));
    assert_eq!(recorded_credit(&mirror, &key.public_key()), (1, 1));
}

#[test]
fn acknowledged_credit_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirror = pool_mirror(&tmp.path().join("m"), &[]);
    let (key, acct) = account(0x61);
    let (mut acked, mut biggest) = (0u64, 0u64);
    for round in 0..3 {
        let addr = mirror.stratum.clone().unwrap();
        let mut m = TestMiner::connect(&addr);
        m.subscribe();
        m.authorize(&acct);
        let job = m.wait_job();
        // The kill lands while shares are in flight, once this round has
        // some acknowledged: by count, not by time, so a loaded machine
        // still gives enough shares to mean something.
        let pid = mirror_pid(&mirror);
        let mut killer = None;
        let mut round_shares = 0;
        let mut en2 = 0u32;
        let mut nonce = 0;
        loop {
            nonce = m.grind(&job, &en2.to_be_bytes(), nonce, true);
            match m.submit(&acct, &job.id, &en2.to_be_bytes(), job.ntime, nonce) {
                Some(r) if r["result"] == json!(true) => {
                    // Credited at the difficulty the job came at.
                    let credit = (m.difficulty_of(&job) * 1e6).round() as u64;
                    acked += credit;
                    biggest = biggest.max(credit);
                    round_shares += 1;
                    if round_shares == 5 + round {
                        killer = Some(std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(20 * round));
                            let _ = std::process::Command::new("kill")
                                .args(["-9", &pid.to_string()])
                                .status();
                        }));
                    }
                }
                Some(r) => panic!("unexpected rejection {r}"),
                None => break, // the mirror died mid-stream
            }
            nonce += 1;
            if nonce > 1 << 30 {
                en2 += 1;
                nonce = 0;
            }
        }
        killer.expect("killed after its shares").join().unwrap();
        mirror.restart();
    }
    assert!(acked > 10, "too few shares to mean anything: {acked}");
    // Every acknowledged share is credited. A kill between a credit's
    // commit and its answer leaves that one share credited but never
    // acknowledged: at most one per kill, the miner's loss, not the
    // user's.
    let st = status(&mirror.url, &key);
    assert!(
        (acked..=acked + 3 * biggest).contains(&st.credit_micro),
        "ledger credit {} against {acked} acknowledged (shares up to {biggest})",
        st.credit_micro
    );
    assert_eq!(
        recorded_credit(&mirror, &key.public_key()).0,
        st.credit_micro
    );
}

fn mirror_pid(m: &MirrorProc) -> u32 {
    m.pid().expect("mirror is running")
}

#[test]
fn proxy_chain_credits_downstream_and_forwards_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let b = pool_mirror(&tmp.path().join("b"), &[]);
    let (op_key, op_acct) = account(0x71);
    let upstream = b.stratum.clone().unwrap();
    let a = pool_mirror(
        &tmp.path().join("a"),
        &["--upstream", &upstream, "--upstream-user", &op_acct],
    );
    let (key, acct) = account(0x72);
    let mut m = TestMiner::connect(a.stratum.as_ref().unwrap());
    m.subscribe();
    assert_eq!(
        m.extranonce2_size, 2,
        "upstream's 4 bytes less the proxy's 2"
    );
    m.authorize(&acct);
    let job = m.wait_job();
    let mut nonce = 0;
    for i in 0..5u16 {
        nonce = m.grind(&job, &i.to_be_bytes(), 0, true);
        let r = m
            .submit(&acct, &job.id, &i.to_be_bytes(), job.ntime, nonce)
            .unwrap();
        assert_eq!(r["result"], json!(true), "{r}");
    }
    let _ = nonce;
    assert_eq!(status(&a.url, &key).shares_accepted, 5);
    // B credits the operator for the forwarded shares (all meet B's
    // difficulty here), once they arrive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = status(&b.url, &op_key);
        if st.shares_accepted == 5 {
            assert_eq!(st.credit_micro, 5);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B saw {} forwarded shares",
            st.shares_accepted
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // And A recorded B's verdicts.
    let db = rusqlite::Connection::open(a.data.join("ledger.sqlite")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let accepted: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM pool_shares WHERE upstream = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if accepted == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A recorded {accepted} upstream accepts"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `lode mine` through a proxy: the proxy asks the upstream which version
/// bits it takes before offering them, so every share lode's miner rolls
/// is one the upstream accepts. The proxy offered lode's whole mask without
/// asking, and the upstream rejected each forwarded share that rolled a bit
/// (a miner behind a proxy gets a 2-byte extranonce2 and rolls version bits
/// on nearly every job).
#[test]
fn shares_mined_through_a_proxy_roll_only_bits_the_upstream_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let b = pool_mirror(&tmp.path().join("b"), &[]);
    let (op_key, op_acct) = account(0x73);
    let a = MirrorProc::start(
        &tmp.path().join("a"),
        &[
            "--stratum",
            "127.0.0.1:0",
            "--difficulty",
            "0.001",
            "--min-difficulty",
            "0.001",
            "--upstream",
            b.stratum.as_ref().unwrap(),
            "--upstream-user",
            &op_acct,
        ],
    );
    // What the proxy now offers a miner that asks for every bit.
    let mut m = TestMiner::connect(a.stratum.as_ref().unwrap());
    let granted = m
        .call(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "ffffffff"}]),
        )
        .expect("configure reply");
    assert_eq!(
        granted["result"]["version-rolling"],
        json!(true),
        "{granted}"
    );
    drop(m);

    let client = common::Client::new(&tmp.path().join("home"), &[&a.url]);
    let out = client.ok(&[
        "mine",
        "--duration",
        "6",
        "--threads",
        "1",
        "--normal-priority",
    ]);
    assert!(out.contains("accepted "), "{out}");
    // The proxy forwards the shares that meet B's difficulty (which B's
    // vardiff raises) and records B's verdicts; wait until they settle.
    let db = rusqlite::Connection::open(a.data.join("ledger.sqlite")).unwrap();
    let verdicts = || -> (i64, i64, i64) {
        db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(upstream = 2), 0), COALESCE(SUM(upstream = 3), 0) FROM pool_shares",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut last = verdicts();
    let (credited, accepted, rejected) = loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = verdicts();
        if now == last && now.1 + now.2 > 0 || std::time::Instant::now() > deadline {
            break now;
        }
        last = now;
    };
    assert!(credited > 0, "the proxy credited no share: {out}");
    assert!(
        accepted > 0 && rejected == 0,
        "of {credited} shares credited, the upstream accepted {accepted} and rejected {rejected}"
    );
    assert_eq!(status(&b.url, &op_key).shares_accepted as i64, accepted);
}

/// The pool outlives running out of file descriptors: with the mirror's
/// limit lowered and more connections held than it can take, accepts
/// fail; once they close, a new miner is served again. The first failed
/// accept ended the pool for good, with no word, while the mirror went on
/// advertising its Stratum port.
#[test]
fn the_pool_outlives_running_out_of_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = pool_mirror(&tmp.path().join("m"), &[]);
    let addr = mirror.stratum.clone().unwrap();
    let (key, acct) = account(0x61);
    // Wholly up (its stores open) before its descriptors run short.
    status(&mirror.url, &key);
    let pid = mirror_pid(&mirror).to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit");
    // Held open: the first few take the descriptors left, the rest wait
    // in the listen queue while accept fails.
    let held: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(held);
    // Served again, within the retries.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut miner = TestMiner::connect(&addr);
    miner.subscribe();
    let r = miner.authorize(&format!("{acct}.after"));
    assert_eq!(r["result"], json!(true), "{r}");
    assert!(status(&mirror.url, &key).account == acct);
}

/// An upstream that stops talking is taken for dead after
/// `--upstream-silence` and dialled again: with no read deadline, a
/// stalled link kept its last jobs live, credited, for good.
#[test]
fn a_silent_upstream_is_dialled_again() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    // Takes connections, reads what comes, answers nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in silent.incoming() {
            let Ok(mut conn) = conn else { return };
            if tx.send(()).is_err() {
                return;
            }
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while conn.read(&mut sink).is_ok_and(|n| n > 0) {}
            });
        }
    });
    let (_, op_acct) = account(0x73);
    let _a = pool_mirror(
        &tmp.path().join("a"),
        &[
            "--upstream",
            &addr,
            "--upstream-user",
            &op_acct,
            "--upstream-silence",
            "2",
        ],
    );
    let wait = std::time::Duration::from_secs(30);
    rx.recv_timeout(wait)
        .expect("the proxy dialled its upstream");
    rx.recv_timeout(wait)
        .expect("the proxy dialled again after the upstream's silence");
}

/// A scripted upstream pool on loopback for one proxy link: it grants no
/// version bits, gives extranonce1 `aabbccdd` with 4 bytes of extranonce2,
/// sends job `a` at difficulty 0.000001 and then raises the difficulty for
/// jobs after it, and answers the authorization only after `authorize_after`.
/// Sends on the channel the time it answered the authorization, then the
/// job id of each share submitted to it.
fn scripted_upstream(
    authorize_after: std::time::Duration,
) -> (
    String,
    std::sync::mpsc::Receiver<(std::time::Instant, String)>,
) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut out = conn.try_clone().unwrap();
        let mut send = |v: serde_json::Value| out.write_all(format!("{v}\n").as_bytes());
        for line in std::io::BufReader::new(conn).lines() {
            let Ok(line) = line else { return };
            let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = msg["id"].clone();
            let sent = match msg["method"].as_str().unwrap_or_default() {
                "mining.configure" => send(json!({"id": id, "result": {"version-rolling": false}, "error": null})),
                "mining.subscribe" => send(json!({"id": id, "result": [[], "aabbccdd", 4], "error": null}))
                    .and_then(|_| send(json!({"id": null, "method": "mining.set_difficulty", "params": [0.000001]})))
                    .and_then(|_| send(json!({"id": null, "method": "mining.notify", "params": [
                        "a", "00".repeat(32), "01000000", "ffffffff", [], "20000000", "1d00ffff", "5f5e1000", true
                    ]})))
                    .and_then(|_| send(json!({"id": null, "method": "mining.set_difficulty", "params": [1e9]}))),
                "mining.authorize" => {
                    std::thread::sleep(authorize_after);
                    let _ = tx.send((std::time::Instant::now(), String::new()));
                    send(json!({"id": id, "result": true, "error": null}))
                }
                "mining.submit" => {
                    let _ = tx.send((std::time::Instant::now(), msg["params"][1].as_str().unwrap_or_default().to_string()));
                    send(json!({"id": id, "result": true, "error": null}))
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A proxy serves the upstream's jobs only once the upstream took its
/// credentials (before, shares were credited for jobs the upstream never
/// meant for the link), and forwards a share at the difficulty of the job
/// it was found on: Stratum's set_difficulty applies from the next job, and
/// the proxy checked every share against the latest, so a raise dropped
/// shares the upstream would have taken for the jobs before it.
#[test]
fn a_proxy_serves_jobs_once_authorized_and_forwards_at_each_jobs_difficulty() {
    let tmp = tempfile::tempdir().unwrap();
    let wait = std::time::Duration::from_secs(30);
    let (upstream, heard) = scripted_upstream(std::time::Duration::from_millis(1500));
    let (_, op_acct) = account(0x74);
    let a = pool_mirror(
        &tmp.path().join("a"),
        &["--upstream", &upstream, "--upstream-user", &op_acct],
    );
    let (key, acct) = account(0x75);
    let mut m = TestMiner::connect(a.stratum.as_ref().unwrap());
    m.subscribe();
    let served = std::time::Instant::now();
    let (authorized, _) = heard.recv_timeout(wait).expect("the proxy authorized");
    assert!(
        served > authorized,
        "the proxy served a miner before the upstream took its credentials"
    );
    m.authorize(&acct);
    let job = m.wait_job();
    assert_eq!(job.id, "a");
    let nonce = m.grind(&job, &[0, 1], 0, true);
    let r = m.submit(&acct, &job.id, &[0, 1], job.ntime, nonce).unwrap();
    assert_eq!(r["result"], json!(true), "{r}");
    assert_eq!(status(&a.url, &key).shares_accepted, 1);
    let (_, forwarded) = heard
        .recv_timeout(wait)
        .expect("the share was forwarded at its job's difficulty");
    assert_eq!(forwarded, "a");
}
