//! The real `lode` binary against three real mirrors on 127.0.0.1.

mod common;

use common::{Client, MirrorProc, write_file};

fn three_mirrors(dir: &std::path::Path, extra: &[&str]) -> Vec<MirrorProc> {
    (0..3)
        .map(|i| MirrorProc::start(&dir.join(format!("m{i}")), extra))
        .collect()
}

fn urls(m: &[MirrorProc]) -> Vec<&str> {
    m.iter().map(|m| m.url.as_str()).collect()
}

/// Three mirrors and a client that stored a directory `docs` holding one
/// file `f.bin` of `len` bytes seeded by `seed`.
fn docs_stored(dir: &std::path::Path, seed: &str, len: usize) -> (Vec<MirrorProc>, Client) {
    let mirrors = three_mirrors(dir, &[]);
    let client = Client::new(&dir.join("home"), &urls(&mirrors));
    let local = dir.join("docs");
    std::fs::create_dir(&local).unwrap();
    write_file(&local, "f.bin", &common::seeded_bytes(seed, len));
    client.ok(&["put", local.to_str().unwrap(), "--to", "docs"]);
    (mirrors, client)
}

#[test]
fn round_trip_64mib_two_of_three_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("round trip", 64 << 20);
    let src = write_file(tmp.path(), "big.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    assert!(cap.starts_with("lode:file:1:"), "{cap}");
    let out = tmp.path().join("back.bin");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "downloaded bytes differ"
    );

    // Stored 2-of-3: about 1.5x the data in all, spread over all three.
    let stored: u64 = mirrors
        .iter()
        .flat_map(|m| m.share_files())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored > 64 << 20 && stored < 100 << 20,
        "stored {stored} bytes for 64 MiB at 2-of-3"
    );
    for m in &mirrors {
        assert!(!m.share_files().is_empty(), "{} holds no shares", m.url);
    }

    let report = client.ok(&["check", &cap, "--verify"]);
    assert!(report.contains(": healthy"), "{report}");
    assert!(!report.contains("CORRUPT"), "{report}");
    for m in &mirrors {
        assert!(report.contains(&format!("mirror {}: ", m.url)), "{report}");
    }
}

#[test]
fn one_mirror_down_get_works_and_put_needs_happy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("down", 3 << 20);
    let src = write_file(tmp.path(), "f.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap(), "--to", "docs/f.bin"])
        .trim()
        .to_string();

    mirrors[1].stop();
    let out = tmp.path().join("back.bin");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // By path too: the directory slot is read from the two live mirrors.
    let by_path = tmp.path().join("by-path.bin");
    client.ok(&["get", "docs/f.bin", "-o", by_path.to_str().unwrap()]);
    assert_eq!(std::fs::read(&by_path).unwrap(), data);

    // Fewer than happy=3 mirrors: put fails clearly.
    let other = write_file(
        tmp.path(),
        "g.bin",
        &common::seeded_bytes("down 2", 100_000),
    );
    let err = client.fails(&["put", other.to_str().unwrap()]);
    assert!(err.contains("happy=3"), "{err}");
    // With happy lowered, it succeeds, and reads back.
    client.set_config("happy", "2");
    let cap2 = client
        .ok(&["put", other.to_str().unwrap()])
        .trim()
        .to_string();
    let out2 = tmp.path().join("g.back");
    client.ok(&["get", &cap2, "-o", out2.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&out2).unwrap(),
        std::fs::read(&other).unwrap()
    );
}

/// A mirror reads back what it holds on each GC pass (`--scrub`) and
/// removes shares whose bytes no longer match their ids; uploading the
/// same file again then stores them anew. The mirror kept answering
/// "held" for its damaged copies, so a second upload changed nothing and
/// `lode sync` said all was stored while the copies were lost one by one
/// (found by a helper's sweep).
#[test]
fn a_mirror_scrub_removes_damaged_shares_for_a_new_upload_to_heal() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &["--gc-interval", "1"]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("scrubbed", 3 << 20);
    let src = write_file(tmp.path(), "f.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap(), "--to", "f.bin"])
        .trim()
        .to_string();
    let bad = &mirrors[1];
    let files = bad.share_files();
    assert!(!files.is_empty());
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for (f, bytes) in files.iter().zip(&originals) {
        let mut damaged = bytes.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 1;
        std::fs::write(f, damaged).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while files.iter().any(|f| f.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrub did not remove the damaged shares in 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Missing now, not corrupt: the same file put again stores them.
    let report = client.fails(&["check", &cap]);
    assert!(!report.contains("CORRUPT"), "{report}");
    client.ok(&["put", src.to_str().unwrap(), "--to", "g.bin"]);
    for (f, bytes) in files.iter().zip(&originals) {
        assert!(std::fs::read(f).unwrap() == *bytes, "{}", f.display());
    }
    client.ok(&["check", &cap, "--verify"]);
}

#[test]
fn corrupt_mirror_is_named_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("corrupt", 6 << 20);
    let src = write_file(tmp.path(), "f.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap(), "--to", "f.bin"])
        .trim()
        .to_string();

    let bad = &mirrors[2];
    let files = bad.share_files();
    assert!(!files.is_empty());
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        for i in (0..bytes.len()).step_by(997) {
            bytes[i] ^= 0x5a;
        }
        std::fs::write(f, bytes).unwrap();
    }

    let out = tmp.path().join("back.bin");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let report = client.fails(&["check", &cap, "--verify"]);
    let bad_line = report
        .lines()
        .find(|l| l.starts_with(&format!("mirror {}:", bad.url)))
        .unwrap();
    assert!(
        bad_line.contains(&format!("{} CORRUPT", files.len())),
        "{report}"
    );
    for good in &mirrors[..2] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("mirror {}:", good.url)))
            .unwrap();
        assert!(!line.contains("CORRUPT"), "{report}");
    }

    let repaired = client.ok(&["check", &cap, "--verify", "--repair"]);
    assert!(
        repaired.contains(&format!("repaired {} shares", files.len())),
        "{repaired}"
    );
    let again = client.ok(&["check", &cap, "--verify"]);
    assert!(
        again.contains(": healthy") && !again.contains("CORRUPT"),
        "{again}"
    );
    // The repaired files on disk are byte-for-byte what their ids say.
    for f in bad.share_files() {
        let id = f.file_name().unwrap().to_str().unwrap().to_string();
        let hash = blake3::hash(&std::fs::read(&f).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(hash, id);
    }
}

#[test]
fn lost_shares_are_rebuilt_onto_mirrors_that_lack_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let src = write_file(tmp.path(), "f.bin", &common::seeded_bytes("lost", 2 << 20));
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    let lost = mirrors[0].share_files();
    for f in &lost {
        std::fs::remove_file(f).unwrap();
    }
    let report = client.fails(&["check", &cap]);
    assert!(report.contains("NOT healthy"), "{report}");
    assert!(
        report.contains("chunk 0: 1 of 3 shares without a good copy (1 missing)")
            && !report.contains("corrupt"),
        "{report}"
    );
    client.ok(&["check", &cap, "--repair"]);
    client.ok(&["check", &cap, "--verify"]);
}

/// `put --to` a name no directory may hold is refused before anything
/// is sent (it failed after the upload, and the cap was never shown).
#[test]
fn put_to_a_bad_name_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, client) = docs_stored(tmp.path(), "bad name", 1000);
    let held: usize = mirrors.iter().map(|m| m.share_files().len()).sum();
    let src = write_file(tmp.path(), "new.bin", &common::seeded_bytes("new", 3 << 20));
    let err = client.fails(&["put", src.to_str().unwrap(), "--to", "docs/.."]);
    assert!(err.contains("cannot name it \"..\""), "{err}");
    let now: usize = mirrors.iter().map(|m| m.share_files().len()).sum();
    assert_eq!(now, held, "shares were sent");
}

/// A check of a tree names the damaged file by its path, not only by
/// chunk number.
#[test]
fn check_of_a_tree_names_the_damaged_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, client) = docs_stored(tmp.path(), "named", 2 << 20);
    for f in mirrors[0].share_files() {
        std::fs::remove_file(f).unwrap();
    }
    let report = client.fails(&["check", "/"]);
    assert!(report.contains("/docs/f.bin: chunk 0:"), "{report}");
    // Checked by the directory's own path: named from the top all the same.
    for path in ["docs", "./docs/", "docs/../docs"] {
        let report = client.fails(&["check", path]);
        assert!(
            report.contains("  docs/f.bin: chunk 0:"),
            "{path}: {report}"
        );
    }
}

/// A directory that changed while a mirror was away is named, with what
/// that mirror holds, until a repair brings it up to date.
#[test]
fn check_names_a_directory_a_mirror_holds_at_an_older_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut mirrors, client) = docs_stored(tmp.path(), "stale", 1000);
    client.set_config("happy", "2");
    mirrors[2].stop();
    let more = write_file(tmp.path(), "g.txt", b"written while a mirror was away");
    client.ok(&["put", more.to_str().unwrap(), "--to", "docs/g.txt"]);
    mirrors[2].restart();
    let report = client.fails(&["check", "/"]);
    let line = report
        .lines()
        .find(|l| l.contains("STALE DIRECTORY /docs:"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains(&mirrors[2].url), "{report}");
    assert!(
        report.contains("1 directory listing missing or old on a mirror"),
        "{report}"
    );
    client.ok(&["check", "/", "--repair"]);
    let again = client.ok(&["check", "/"]);
    assert!(!again.contains("STALE"), "{again}");
}

/// A directory put back to an older version on every mirror (by their
/// operators, or a restored backup) is named as rolled back, and the check
/// fails: it said "healthy", having checked the old listing alone, while
/// reads refused it.
#[test]
fn check_names_a_directory_rolled_back_on_every_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, client) = docs_stored(tmp.path(), "rolled", 1000);
    let slots = |m: &MirrorProc| -> Vec<(Vec<u8>, i64, Vec<u8>)> {
        let db = rusqlite::Connection::open(m.data.join("ledger.sqlite")).unwrap();
        let mut stmt = db.prepare("SELECT pk, seq, envelope FROM slots").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let before: Vec<_> = mirrors.iter().map(slots).collect();
    let more = write_file(tmp.path(), "g.txt", b"the change a rollback takes away");
    client.ok(&["put", more.to_str().unwrap(), "--to", "docs/g.txt"]);
    client.ok(&["check", "/"]);
    for (m, old) in mirrors.iter().zip(&before) {
        let db = rusqlite::Connection::open(m.data.join("ledger.sqlite")).unwrap();
        for (pk, seq, envelope) in old {
            db.execute(
                "UPDATE slots SET seq = ?2, envelope = ?3 WHERE pk = ?1",
                rusqlite::params![pk, seq, envelope],
            )
            .unwrap();
        }
    }
    let report = client.fails(&["check", "/"]);
    assert!(report.contains("ROLLED BACK /docs:"), "{report}");
    assert!(report.contains("rolled back on every mirror"), "{report}");
    // A repair cannot bring back what it lost, and says so still.
    let repaired = client.fails(&["check", "/", "--repair"]);
    assert!(repaired.contains("ROLLED BACK /docs:"), "{repaired}");
    let err = client.fails(&["ls", "docs"]);
    assert!(!err.is_empty());
    // Taken as it is, on request: readable and changeable again, without
    // what the rollback took.
    let accepted = client.ok(&["check", "/", "--repair", "--accept-rollback"]);
    assert!(accepted.contains("ROLLBACK ACCEPTED /docs:"), "{accepted}");
    let listed = client.ok(&["ls", "docs"]);
    assert!(
        listed.contains("f.bin") && !listed.contains("g.txt"),
        "{listed}"
    );
    client.ok(&["put", more.to_str().unwrap(), "--to", "docs/g.txt"]);
    client.ok(&["check", "/"]);
    assert!(client.ok(&["ls", "docs"]).contains("g.txt"));
    // Only with --repair.
    assert!(
        client
            .fails(&["check", "/", "--accept-rollback"])
            .contains("--repair")
    );
}

/// A file cap with another read key (a valid cap string, put together by
/// hand) fails to download, saying why once, and leaves no file behind.
#[test]
fn a_file_cap_with_another_read_key_fails_once_and_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let src = write_file(tmp.path(), "f.bin", &common::seeded_bytes("key", 3 << 20));
    let cap: lode::caps::Cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap();
    let mut file = cap.into_file_read().unwrap();
    file.read_key = lode::crypto::ReadKey::from_bytes([3; 32]);
    let forged = lode::caps::Cap::FileRead(file).to_string();
    let out = tmp.path().join("out.bin");
    let said = client.fails(&["get", &forged, "-o", out.to_str().unwrap()]);
    assert_eq!(said.matches("wrong key").count(), 1, "{said}");
    assert!(!out.exists());
}

/// The mirror keeps at most `--max-connections` open, and closes one that
/// moves nothing for `--idle-timeout`: two silent peers at a bound of two
/// hold a request off only until they are closed, and then it is served.
#[test]
fn silent_connections_are_closed_and_their_places_given_to_others() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mirror = common::MirrorProc::start(
        &tmp.path().join("m"),
        &["--max-connections", "2", "--idle-timeout", "2"],
    );
    let addr = mirror
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    // One peer may hold half the places: three peers, each a loopback
    // address of its own.
    let connect = |from: &str| {
        let c = common::connect_from(from, addr);
        c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        c
    };
    let mut silent = [connect("127.0.0.2"), connect("127.0.0.3")];
    let mut asking = connect("127.0.0.4");
    asking
        .write_all(b"GET /v1/info HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    asking
        .read_to_string(&mut answer)
        .expect("the request was not answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The silent ones were closed, not kept: their reads end.
    for c in &mut silent {
        let mut byte = [0u8; 1];
        match c.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection was kept: {other:?}"),
        }
    }
}

/// A request head sent a byte at a time is cut off at `--head-timeout`,
/// though its bytes keep coming (the idle timeout alone let a byte every
/// two minutes hold a connection for good); a whole head in time is
/// answered.
#[test]
fn a_trickled_request_head_is_cut_off() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let mirror = common::MirrorProc::start(&tmp.path().join("m"), &["--head-timeout", "1"]);
    let addr = mirror
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let head = b"GET /v1/info HTTP/1.1\r\nHost: mirror\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed = None;
    for b in head {
        // A byte each 200 ms: the whole head would take 13 s.
        let mut byte = [0u8; 1];
        match slow.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("the mirror answered a head not yet whole"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => {
                // Still open: the next byte.
                if slow.write_all(&[*b]).is_ok() {
                    std::thread::sleep(Duration::from_millis(150));
                    continue;
                }
            }
        }
        closed = Some(started.elapsed());
        break;
    }
    let took = closed.expect("a head trickled for 13 s was let through");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    let mut asking = std::net::TcpStream::connect(addr).unwrap();
    asking
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    asking
        .write_all(b"GET /v1/info HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    asking
        .read_to_string(&mut answer)
        .expect("the request was not answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `get`, `ls` and `check` take `-` for a cap on standard input, kept out
/// of the process list: the same bytes, listing and report as with the
/// cap in the arguments. A line that is no cap is refused, and is not
/// taken for a path in the tree (the tree has a `docs`).
#[test]
fn get_ls_and_check_read_a_cap_from_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::seeded_bytes("stdin cap", 200_000);
    let (_mirrors, client) = docs_stored(tmp.path(), "stdin cap", 200_000);
    let dir_cap = client.ok(&["share", "docs"]).trim().to_string();
    let file_cap = client.ok(&["share", "docs/f.bin"]).trim().to_string();
    let fed = |args: &[&str], cap: &str| {
        let out = client.run_with_input(args, format!("{cap}\n").as_bytes());
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {said}");
        out.stdout
    };
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    let out = tmp.path().join("back.bin");
    fed(&["get", "-", "-o", out.to_str().unwrap()], &file_cap);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "get - read other bytes"
    );
    assert!(
        fed(&["get", "-"], &file_cap) == data,
        "get - printed other bytes"
    );
    let listed = text(fed(&["ls", "-"], &dir_cap));
    assert!(listed.contains("f.bin"), "{listed}");
    assert_eq!(listed, client.ok(&["ls", &dir_cap]));
    let checked = text(fed(&["check", "-"], &file_cap));
    assert_eq!(checked, client.ok(&["check", &file_cap]));
    for (input, why) in [
        (&b""[..], "no cap on standard input"),
        (b"docs\n", "holds no cap"),
    ] {
        let out = client.run_with_input(&["ls", "-"], input);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ls - with {input:?} succeeded");
        assert!(said.contains(why), "{said}");
        assert!(out.stdout.is_empty());
    }
}

/// `friend add` looks at the directory: a cap whose read key does not
/// open it is refused, saying so; the true cap is added.
#[test]
fn friend_add_refuses_a_cap_whose_key_does_not_open_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, owner) = docs_stored(tmp.path(), "friend", 1000);
    let cap: lode::caps::Cap = owner.ok(&["share", "docs"]).trim().parse().unwrap();
    let mut read = cap.into_dir_read().unwrap();
    let right = lode::caps::Cap::DirRead(read.clone()).to_string();
    read.read_key = lode::crypto::ReadKey::from_bytes([5; 32]);
    let forged = lode::caps::Cap::DirRead(read).to_string();
    let friend = Client::new(&tmp.path().join("friend"), &urls(&mirrors));
    let said = friend.fails(&["friend", "add", "alice", &forged]);
    assert!(
        said.contains("does not open with this cap's read key"),
        "{said}"
    );
    assert!(!friend.ok(&["friend", "list"]).contains("alice"));
    let out = friend.run(&["friend", "add", "alice", &right]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("warning"), "{said}");
    assert!(friend.ok(&["friend", "list"]).contains("alice"));
    // `-` reads the cap from standard input (kept out of the process
    // list); nothing there is an error, and nothing is added.
    let out = friend.run_with_input(
        &["friend", "add", "carol", "-"],
        format!("{right}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        friend
            .ok(&["friend", "list"])
            .contains(&format!("carol\t{right}"))
    );
    let out = friend.run_with_input(&["friend", "add", "dave", "-"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cap on standard input"));
    assert!(!friend.ok(&["friend", "list"]).contains("dave"));
    friend.ok(&["friend", "remove", "carol"]);
    // A directory no mirror holds (a cap mistyped into another valid one,
    // or never published), pasted as a write-cap: added read-only, and
    // both said.
    let nowhere = lode::caps::Cap::DirWrite(lode::store::Vault::fresh_dir()).to_string();
    let out = friend.run(&["friend", "add", "nobody", &nowhere]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("no mirror of yours that answered holds"),
        "{said}"
    );
    assert!(said.contains("that is a write-cap"), "{said}");
    assert!(
        friend
            .ok(&["friend", "list"])
            .contains("nobody\tlode:dir-ro:")
    );
    friend.ok(&["friend", "remove", "nobody"]);
    // Named as the mount shows it, under friends/.
    assert!(friend.ok(&["ls", "friends/alice"]).contains(" f.bin\n"));
    let listed = friend.ok(&["ls", "./friends/"]);
    assert!(
        listed.starts_with("d0555") && listed.ends_with(" alice\n"),
        "{listed}"
    );
    let said = friend.fails(&["share", "friends"]);
    assert!(said.contains("friends/NAME"), "{said}");
    // Nothing can be put where the mount shows friends.
    let src = write_file(tmp.path(), "friends", b"hidden if linked");
    for to in ["friends/x", "/friends", "./friends/"] {
        let said = friend.fails(&["put", src.to_str().unwrap(), "--to", to]);
        assert!(
            said.contains("where the mount shows your friends"),
            "{said}"
        );
    }
    let said = friend.fails(&["put", src.to_str().unwrap(), "--to", "/"]);
    assert!(
        said.contains("where the mount shows your friends"),
        "{said}"
    );
    let out = tmp.path().join("from-alice.bin");
    friend.ok(&["get", "friends/alice/f.bin", "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == common::seeded_bytes("friend", 1000));
    assert_eq!(friend.ok(&["share", "friends/alice"]).trim(), right);
}

/// `lode get` of one file by its path keeps its mode and mtime, as a get
/// of its directory does (a cap carries neither).
#[test]
fn get_of_a_file_by_path_keeps_its_mode_and_mtime() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let src = write_file(tmp.path(), "private.txt", b"for my eyes");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
    let then = std::time::UNIX_EPOCH + std::time::Duration::new(1_577_934_245, 123_000_000);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(then)
        .unwrap();
    client.ok(&["put", src.to_str().unwrap(), "--to", "docs/"]);
    let out = tmp.path().join("out.txt");
    client.ok(&["get", "docs/private.txt", "-o", out.to_str().unwrap()]);
    let (a, b) = (
        std::fs::metadata(&src).unwrap(),
        std::fs::metadata(&out).unwrap(),
    );
    assert_eq!(b.mode() & 0o7777, 0o600);
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
}

/// `lode get` of a directory by its path gives the new top directory its
/// own mode and mtime, as every directory under it gets them; a file
/// written through a symlink gets them on the file, not the link; and
/// `ls` shows a time before 1970 as a date.
#[test]
fn get_of_a_directory_by_path_keeps_the_top_directorys_mode_and_mtime() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let local = tmp.path().join("tree");
    let sub = local.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let old = write_file(&sub, "old.txt", b"from before the epoch");
    let set_mtime = |path: &std::path::Path, secs: i64| {
        let at = nix::sys::time::TimeSpec::new(secs, 5_000);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &at,
            &at,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    };
    set_mtime(&old, -86_400);
    set_mtime(&sub, 946_684_800);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o750)).unwrap();
    client.ok(&["put", local.to_str().unwrap(), "--to", "tree"]);
    let listed = client.ok(&["ls", "tree/sub"]);
    assert!(listed.contains("1969-12-31T00:00:00Z old.txt"), "{listed}");

    let out = tmp.path().join("out");
    client.ok(&["get", "tree/sub", "-o", out.to_str().unwrap()]);
    let got = std::fs::metadata(&out).unwrap();
    assert_eq!(got.mode() & 0o7777, 0o750);
    assert_eq!((got.mtime(), got.mtime_nsec()), (946_684_800, 5_000));
    let file = std::fs::metadata(out.join("old.txt")).unwrap();
    assert_eq!((file.mtime(), file.mtime_nsec()), (-86_400, 5_000));

    // Through a symlink to an existing file: the file takes them.
    let real = write_file(tmp.path(), "real.txt", b"to be replaced");
    let link = tmp.path().join("link.txt");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    client.ok(&["get", "tree/sub/old.txt", "-o", link.to_str().unwrap()]);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"from before the epoch");
    assert_eq!(std::fs::metadata(&real).unwrap().mtime(), -86_400);
}

/// A file written with one mirror of three away and `happy` 2 has two of
/// its shares on one mirror: losing that one would lose the file. A check
/// says so, and a repair spreads the shares again once the mirror is
/// back, after which the file reads with either of the first two away.
#[test]
fn a_repair_spreads_shares_doubled_up_during_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    client.set_config("happy", "2");
    let data = common::seeded_bytes("doubled", 3 << 20);
    let src = write_file(tmp.path(), "f.bin", &data);
    mirrors[2].stop();
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    mirrors[2].restart();
    assert!(mirrors[2].share_files().is_empty());
    let report = client.fails(&["check", &cap]);
    // The chunk's shares, and the manifest root's copies.
    for what in [
        "chunk 0: good shares on 2",
        "manifest root: good shares on 2",
    ] {
        assert!(report.contains(what), "{report}");
    }
    client.ok(&["check", &cap, "--repair"]);
    assert!(!mirrors[2].share_files().is_empty());
    let again = client.ok(&["check", &cap]);
    assert!(again.contains("healthy"), "{again}");
    for (away, mirror) in mirrors.iter_mut().enumerate().take(2) {
        mirror.stop();
        let out = tmp.path().join(format!("back{away}.bin"));
        client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == data, "mirror {away} away");
        mirror.restart();
    }
}

/// `lode put` of a tree with a symlink whose target is not UTF-8 fails,
/// naming the link, where it stored the target with U+FFFD in place of
/// the bad bytes (a link pointing somewhere else, silently).
#[test]
fn put_of_a_tree_refuses_a_symlink_target_that_is_not_text() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let local = tmp.path().join("old");
    std::fs::create_dir(&local).unwrap();
    write_file(&local, "a.txt", b"text");
    let link = local.join("latin1");
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"caf\xe9"), &link).unwrap();
    let said = client.fails(&["put", local.to_str().unwrap(), "--to", "old"]);
    assert!(
        said.contains(&link.display().to_string()) && said.contains("not valid UTF-8"),
        "{said}"
    );
    client.fails(&["ls", "old"]);
}

/// A mirror that holds the shares but will not renew their leases (an
/// account unfunded past its grace) is reported, with its reason, and
/// `renew` fails: it said "renewed" for every lease the mirror refused,
/// and exited 0, while they ran out.
#[test]
fn renew_reports_leases_a_mirror_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    // A grace of 5 s (not 0): the first upload's own requests, a second or
    // more apart on a loaded machine, must all fall within it.
    let mirror = MirrorProc::start(
        &tmp.path().join("m"),
        &["--price", "1000", "--grace-days", "0.00006"],
    );
    let client = Client::new(&tmp.path().join("home"), &[&mirror.url]);
    client.set_config("k", "1");
    client.set_config("n", "1");
    client.set_config("happy", "1");
    let f = write_file(
        tmp.path(),
        "f.bin",
        &common::seeded_bytes("unpaid", 3 << 20),
    );
    client.ok(&["put", f.to_str().unwrap(), "--to", "f.bin"]);
    // Unfunded from its first bill, and past its grace 6 s on.
    std::thread::sleep(std::time::Duration::from_millis(6100));
    let out = client.run(&["renew"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(": renewed 0 leases"), "{said}");
    assert!(
        said.contains("REFUSED") && said.contains("unfunded"),
        "{said}"
    );
    assert!(err.contains("lode mine"), "{err}");
    // A new upload says why the mirror would not take it.
    let g = write_file(
        tmp.path(),
        "g.bin",
        &common::seeded_bytes("refused", 3 << 20),
    );
    let said = client.fails(&["put", g.to_str().unwrap(), "--to", "g.bin"]);
    assert!(
        said.contains("happy=1") && said.contains("unfunded"),
        "{said}"
    );
}

/// An account within a priced mirror's free allowance owes nothing, so it
/// is never unfunded: past the grace period it still stores and renews.
/// It was taken as unfunded from its first bill (no credit, price above
/// zero), and a user who stayed within `--free` and never mined was
/// refused every lease once the grace ran out.
#[test]
fn an_account_within_the_free_allowance_is_never_unfunded() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(
        &tmp.path().join("m"),
        &["--price", "1000", "--free", "1G", "--grace-days", "0"],
    );
    let client = Client::new(&tmp.path().join("home"), &[&mirror.url]);
    client.set_config("k", "1");
    client.set_config("n", "1");
    client.set_config("happy", "1");
    let f = write_file(tmp.path(), "f.bin", &common::seeded_bytes("free", 3 << 20));
    client.ok(&["put", f.to_str().unwrap(), "--to", "f.bin"]);
    // Past a grace of 0 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g = write_file(
        tmp.path(),
        "g.bin",
        &common::seeded_bytes("free too", 3 << 20),
    );
    client.ok(&["put", g.to_str().unwrap(), "--to", "g.bin"]);
    let said = client.ok(&["renew"]);
    assert!(!said.contains("REFUSED"), "{said}");
}

/// A lost config.toml beside an identity: commands say that `lode init`
/// restores a default one, and it does, keeping the secret; a second
/// `init` still refuses. It used to say "run `lode init` first", and
/// `init` then said to remove the secret: the way to lose the identity.
#[test]
fn init_writes_a_lost_config_around_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let secret = tmp.path().join("home/data/secret");
    let before = std::fs::read(&secret).unwrap();
    let account = |c: &Client| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&c.ok(&["status", "--json"])).unwrap()["account"]
            .clone()
    };
    let was = account(&client);
    assert!(was.is_string());
    std::fs::remove_file(tmp.path().join("home/config/config.toml")).unwrap();
    let said = client.fails(&["mirrors", "list"]);
    assert!(said.contains("writes a default config around it"), "{said}");
    let said = client.ok(&["init"]);
    assert!(said.contains("kept the identity"), "{said}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);
    for m in urls(&mirrors) {
        client.ok(&["mirrors", "add", m]);
    }
    assert_eq!(account(&client), was);
    let said = client.fails(&["init"]);
    assert!(said.contains("already exists"), "{said}");
}

/// A renewal that names one id many times renews it once, and says so.
#[test]
fn a_renewal_counts_an_id_once() {
    use lode::store::Storage;
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let key = lode::crypto::RootSecret::from_bytes([0x42; 32]).account_key();
    let client = lode::store::HttpMirror::new(&mirror.url, key).unwrap();
    let bytes = common::seeded_bytes("renewed once", 4000);
    let id = *blake3::hash(&bytes).as_bytes();
    let rt = common::runtime();
    rt.block_on(client.put_share(&id, bytes.into())).unwrap();
    let reply = rt.block_on(client.renew(&[id; 100])).unwrap();
    assert_eq!(reply.renewed, 1);
    assert!(reply.missing.is_empty() && reply.refused.is_empty());
}

/// A minimum share difficulty above the starting one is refused, not
/// quietly lowered to it.
#[test]
fn serve_refuses_a_minimum_difficulty_above_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::serve_refused(
        &tmp.path().join("m"),
        &["--difficulty", "0.001", "--min-difficulty", "10"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--min-difficulty 10 is above"), "{err}");
}

/// Numbers a mirror cannot work with are refused, each with the flag it
/// is about: NaN slipped past `x <= 0` checks (vardiff then aimed at 1 ms
/// per share), and a price of 1e30 saturated the ledger's arithmetic.
#[test]
fn serve_refuses_numbers_it_cannot_work_with() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--share-interval", "nan"),
        ("--price", "1e30"),
        ("--price", "nan"),
        ("--grace-days", "nan"),
        ("--grace-days", "1e30"),
        ("--max-connections", "0"),
        ("--idle-timeout", "0"),
        ("--head-timeout", "0"),
    ] {
        let out = common::serve_refused(&tmp.path().join("m"), &[flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} taken");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

/// Fewer mirrors than `happy`: adding one says how many uploads need, and
/// a put fails before it sends anything (it uploaded every share first).
#[test]
fn a_put_with_fewer_mirrors_than_happy_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let client = Client::new(&tmp.path().join("home"), &[]);
    let said = client.ok(&["mirrors", "add", &mirror.url]);
    assert!(said.contains("uploads need 3 for happy=3"), "{said}");
    let f = write_file(tmp.path(), "f.bin", &common::seeded_bytes("few", 3 << 20));
    let said = client.fails(&["put", f.to_str().unwrap()]);
    assert!(
        said.contains("happy=3 needs 3 mirrors and 1 are configured"),
        "{said}"
    );
    assert!(mirror.share_files().is_empty());
}

/// With every mirror away, reading a directory already seen says the
/// mirrors did not answer, not that it refuses a rollback.
#[test]
fn with_every_mirror_away_a_listing_is_unavailable_not_a_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut mirrors, client) = docs_stored(tmp.path(), "away", 1000);
    for m in &mut mirrors {
        m.stop();
    }
    let said = client.fails(&["ls", "docs"]);
    assert!(
        said.contains("none of the 3 mirrors answered") && !said.contains("roll"),
        "{said}"
    );
}

/// A check of a tree with one mirror hung (a stopped process) leaves that
/// mirror out after it first fails to answer, and reports it: each of the
/// eight directories used to wait a read's timeout (60 s) for it, past the
/// harness's bound on a command.
#[test]
fn check_of_a_tree_with_a_hung_mirror_reports_it_and_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let local = tmp.path().join("tree");
    let mut dir = local.clone();
    for depth in 0..8 {
        dir = dir.join(format!("d{depth}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_file(&dir, "f", format!("file at depth {depth}").as_bytes());
    }
    client.ok(&["put", local.to_str().unwrap(), "--to", "tree"]);
    mirrors[2].signal("-STOP");
    let out = client.run(&["check", "tree"]);
    mirrors[2].signal("-CONT");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    let line = said
        .lines()
        .find(|l| l.starts_with(&format!("mirror {}:", mirrors[2].url)))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("unreachable"), "{said}");
    assert!(said.contains("did not answer for its listing"), "{said}");
}

/// Small shares (rows, not files) are checked and repaired like the rest:
/// a row lost or rotted behind the mirror's back is reported and put back.
#[test]
fn small_shares_lost_or_corrupt_are_found_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let src = write_file(
        tmp.path(),
        "small.txt",
        &common::seeded_bytes("small", 3000),
    );
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    let bad = &mirrors[1];
    assert!(
        bad.share_files().is_empty(),
        "a 3000-byte file's shares are rows"
    );
    let rows = bad.small_shares();
    assert!(!rows.is_empty());

    // Rotted: reported by a verifying check, then replaced.
    for id in &rows {
        bad.set_small_share(id, Some(b"rotten"));
    }
    let report = client.fails(&["check", &cap, "--verify"]);
    assert!(report.contains("CORRUPT"), "{report}");
    // Said for what it is: the rotten copy beside the good ones, and a
    // mirror short.
    assert!(
        report.contains("manifest root: 1 corrupt copy beside good ones; good shares on 2 of 3 mirrors, 3 wanted"),
        "{report}"
    );
    client.ok(&["check", &cap, "--verify", "--repair"]);
    client.ok(&["check", &cap, "--verify"]);

    // Lost: reported by a plain check, then put back.
    for id in &rows {
        bad.set_small_share(id, None);
    }
    let report = client.fails(&["check", &cap]);
    assert!(report.contains("NOT healthy"), "{report}");
    assert!(
        report.contains("manifest root: good shares on 2 of 3 mirrors, 3 wanted"),
        "{report}"
    );
    client.ok(&["check", &cap, "--repair"]);
    client.ok(&["check", &cap, "--verify"]);
    let mut back = bad.small_shares();
    let mut rows = rows;
    back.sort();
    rows.sort();
    assert_eq!(back, rows);
    let out = tmp.path().join("back.txt");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn quota_and_capacity_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = common::three_mirrors_with(tmp.path(), &["--quota", "1M"]);
    let src = write_file(tmp.path(), "f.bin", &common::seeded_bytes("quota", 4 << 20));
    let err = client.fails(&["put", src.to_str().unwrap()]);
    assert!(err.contains("out of space or over quota"), "{err}");
    let small = write_file(tmp.path(), "s.bin", b"small");
    client.ok(&["put", small.to_str().unwrap()]);
}

/// A share uploaded without a declared length (streamed) is held to the
/// account's quota by its real length: a small one fits where a 16 MiB
/// one would not, and one past the quota is refused and not kept.
#[test]
fn a_streamed_upload_is_held_to_the_quota_by_its_real_length() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &["--quota", "1M"]);
    let key = lode::crypto::RootSecret::from_bytes([0x44; 32]).account_key();
    let rt = common::runtime();
    rt.block_on(async {
        let to = common::mirror_id(&mirror.url).await;
        let http = reqwest::Client::new();
        let put = |body: Vec<u8>| {
            let id = lode::chunk::share_id(&body);
            let path = format!("/v1/share/{}", lode::protocol::hex(&id));
            let auth = lode::protocol::RequestAuth::sign_digest(
                &key,
                &to,
                "PUT",
                &path,
                lode::protocol::unix_now(),
                &id,
            );
            let stream = futures_util::stream::iter(
                body.chunks(4096)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            );
            let request = http
                .put(format!("{}{path}", mirror.url))
                .header("authorization", auth.header())
                .body(reqwest::Body::wrap_stream(stream));
            async move {
                let r = request.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            }
        };
        let small = common::seeded_bytes("streamed small", 64 << 10);
        let (status, text) = put(small.clone()).await;
        assert_eq!(status, 201, "{text}");
        let big = common::seeded_bytes("streamed big", 2 << 20);
        let (status, text) = put(big.clone()).await;
        assert!(
            (400..500).contains(&status) || status == 507,
            "{status} {text}"
        );
        assert!(text.contains("quota"), "{text}");
        let get = |body: &[u8]| {
            let id = lode::protocol::hex(&lode::chunk::share_id(body));
            http.get(format!("{}/v1/share/{id}", mirror.url)).send()
        };
        let r = get(&big).await.unwrap();
        assert_eq!(r.status(), 404, "a refused share is not kept");
        let r = get(&small).await.unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), small);
    });
}

#[test]
fn gc_frees_unleased_shares_and_keeps_renewed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors: Vec<MirrorProc> = (0..3)
        .map(|i| {
            MirrorProc::start(
                &tmp.path().join(format!("m{i}")),
                &["--lease-secs", "12", "--gc-interval", "1"],
            )
        })
        .collect();
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let kept = write_file(
        tmp.path(),
        "kept.bin",
        &common::seeded_bytes("kept", 300_000),
    );
    let dropped = write_file(
        tmp.path(),
        "dropped.bin",
        &common::seeded_bytes("dropped", 300_000),
    );
    let start = std::time::Instant::now();
    let kept_cap = client
        .ok(&["put", kept.to_str().unwrap(), "--to", "kept.bin"])
        .trim()
        .to_string();
    let dropped_cap = client
        .ok(&["put", dropped.to_str().unwrap()])
        .trim()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(6000).saturating_sub(start.elapsed()));
    // Renew reaches everything linked from the root, not the unlinked file.
    let renewed = client.ok(&["renew"]);
    assert!(renewed.contains("renewed"), "{renewed}");
    // The unlinked file's lease runs out (12 s after its put) and GC, every
    // second, frees it; the renewed one is covered until 12 s after renew.
    let deadline = start + std::time::Duration::from_secs(25);
    loop {
        let out = client.run(&["check", &dropped_cap]);
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                text.contains("good shares") || text.contains("NOT healthy"),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GC never freed the unleased file"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    client.ok(&["check", &kept_cap, "--verify"]);
    client.ok(&["ls", "/"]);
}

/// A mirror stopped for longer than its leases (or whose clock stepped
/// forward while it was stopped) keeps the shares whose leases lapsed
/// meanwhile: clients could not renew them, and the first GC pass after
/// the start (which runs at once) took them all. Made here by moving the
/// ledger's record of the mirror last up, the leases and the billing
/// marks two days back while each mirror is stopped, as a clock two days
/// behind would have written them.
#[test]
fn a_stop_longer_than_the_leases_takes_no_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirrors = three_mirrors(tmp.path(), &["--lease-secs", "3600", "--gc-interval", "1"]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let src = write_file(
        tmp.path(),
        "f.bin",
        &common::seeded_bytes("stopped", 300_000),
    );
    let cap = client
        .ok(&["put", src.to_str().unwrap(), "--to", "f.bin"])
        .trim()
        .to_string();
    const BACK: i64 = 2 * 86_400;
    for m in &mut mirrors {
        m.stop();
        let db = rusqlite::Connection::open(m.data.join("ledger.sqlite")).unwrap();
        let alive = db
            .execute(
                "UPDATE meta SET value = value - ?1 WHERE key = 'alive_at'",
                [BACK],
            )
            .unwrap();
        assert_eq!(alive, 1, "the mirror records when it was up");
        let leases = db
            .execute("UPDATE leases SET expires = expires - ?1", [BACK])
            .unwrap();
        assert!(leases > 0);
        db.execute(
            "UPDATE accounts SET charged_at = charged_at - ?1, unfunded_since = unfunded_since - ?1",
            [BACK],
        )
        .unwrap();
        drop(db);
        m.restart();
    }
    // Past a few GC passes of every mirror.
    std::thread::sleep(std::time::Duration::from_secs(3));
    client.ok(&["check", &cap, "--verify"]);
    for m in &mirrors {
        assert!(!m.share_files().is_empty() || !m.small_shares().is_empty());
    }
}

/// `get -o` writes as `cp` does: through a device (its errors are the
/// command's), through a symlink to its target (the link stays), over a
/// regular file keeping its mode; never replacing the node itself.
#[test]
fn get_writes_through_what_the_destination_is() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("get through", 300_000);
    let src = write_file(tmp.path(), "src.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    let get = |out: &std::path::Path| client.run(&["get", &cap, "-o", out.to_str().unwrap()]);

    // A device that is always full: the write fails, and so does the command.
    let full = tmp.path().join("full");
    let made = std::process::Command::new("mknod")
        .args([full.to_str().unwrap(), "c", "1", "7"])
        .status()
        .unwrap();
    assert!(made.success());
    let out = get(&full);
    assert!(!out.status.success(), "a write to a full device succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert!(
        std::fs::metadata(&full)
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // A symlink: its target gets the content, the link stays a link.
    let target = write_file(tmp.path(), "target", b"old");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(get(&link).status.success());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&target).unwrap() == data);
    // A dangling one is refused, as cp refuses it: nothing is created
    // where it points.
    let nowhere = tmp.path().join("nowhere");
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    let out = get(&dangling);
    assert!(!out.status.success(), "wrote through a dangling symlink");
    assert!(!nowhere.exists());
    // A directory that is not there: an error, and no part file left.
    let before = std::fs::read_dir(tmp.path()).unwrap().count();
    let out = get(&tmp.path().join("nodir/"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), before);

    // To a reader that stops early, as `cat` does: quietly.
    let piped = std::process::Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" get \"$1\" | head -c 100 >/dev/null",
        ])
        .args([common::LODE, &cap])
        .env("LODE_HOME", &client.home)
        .output()
        .unwrap();
    assert!(
        piped.status.success() && piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    // Neither a FIFO nor a device is put: one waits for a writer.
    let fifo = tmp.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = client.fails(&["put", fifo.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");

    // A regular file keeps its mode.
    let private = write_file(tmp.path(), "private", b"old");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(get(&private).status.success());
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read(&private).unwrap() == data);
}

/// One mirror per data directory: a second on the same one is refused
/// before it listens, and so is a data path that is a file.
#[test]
fn a_data_directory_serves_one_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let first = MirrorProc::start(&tmp.path().join("m"), &[]);
    let second = |data: &std::path::Path| common::serve_refused(data, &[]);
    let out = second(&tmp.path().join("m"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use by another mirror"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it said it listens");
    let file = write_file(tmp.path(), "plain", b"x");
    let out = second(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a directory"),
        "{err}"
    );
    drop(first);
}

/// `lode share --verify` hands out a verify-cap: it checks a directory's
/// shares, but does not list it.
#[test]
fn a_verify_cap_checks_but_does_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = docs_stored(tmp.path(), "verify cap", 200_000);
    let cap = client.ok(&["share", "--verify", "docs"]).trim().to_string();
    assert!(cap.starts_with("lode:dir-v:"), "{cap}");
    let report = client.ok(&["check", &cap]);
    assert!(report.contains("healthy"), "{report}");
    // And says how far it reached: "healthy" read as the whole tree.
    assert!(report.contains("reaches its own listing only"), "{report}");
    client.fails(&["ls", &cap]);
}

/// One mirror under a second address is refused: it would count twice
/// toward `happy`.
#[test]
fn a_mirror_is_added_once_whatever_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = MirrorProc::start(&tmp.path().join("m"), &[]);
    let other = MirrorProc::start(&tmp.path().join("o"), &[]);
    let client = Client::new(&tmp.path().join("home"), &[&mirror.url]);
    let alias = mirror.url.replace("127.0.0.1", "localhost");
    assert_ne!(alias, mirror.url);
    let err = client.fails(&["mirrors", "add", &alias]);
    assert!(err.contains("already configured"), "{err}");
    // A scheme in capitals is the same scheme; stored as the parser
    // writes it.
    client.ok(&["mirrors", "add", &other.url.replace("http://", "HTTP://")]);
    assert!(
        client
            .ok(&["mirrors", "list"])
            .contains(&format!("{}  up", other.url))
    );
}

/// `lode renew` says when shares are on no mirror at all (nothing renews
/// them), and fails, where it used to count them out and report success.
#[test]
fn renew_names_shares_no_mirror_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, client) = docs_stored(tmp.path(), "renew lost", 3_000_000);
    client.ok(&["renew"]);
    let files = mirrors[0].share_files();
    assert!(!files.is_empty());
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    let out = client.run(&["renew"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "renew passed over lost shares: {said}"
    );
    assert!(said.contains("LOST"), "{said}");
}

/// `lode get DIR -o OUT` as `cp -r`: a new OUT is the copy; an existing
/// directory OUT gets the copy inside, under the directory's name; a copy
/// already there is refused, not merged into, and a cap (no name) into an
/// existing directory asks for one.
#[test]
fn get_of_a_directory_goes_where_cp_would_put_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = docs_stored(tmp.path(), "get dir", 200_000);
    let want = common::seeded_bytes("get dir", 200_000);
    let fresh = tmp.path().join("fresh");
    client.ok(&["get", "docs", "-o", fresh.to_str().unwrap()]);
    assert_eq!(std::fs::read(fresh.join("f.bin")).unwrap(), want);

    let into = tmp.path().join("into");
    std::fs::create_dir(&into).unwrap();
    client.ok(&["get", "docs/", "-o", into.to_str().unwrap()]);
    assert_eq!(std::fs::read(into.join("docs/f.bin")).unwrap(), want);

    let err = client.fails(&["get", "docs", "-o", into.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    let cap = client.ok(&["share", "docs"]).trim().to_string();
    let err = client.fails(&["get", &cap, "-o", into.to_str().unwrap()]);
    assert!(err.contains("NAME"), "{err}");
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), 1);
}

/// A mirror that moves to another address keeps its shares' placement:
/// once `lode mirrors move` gives the new address, storing the same content
/// again sends no share (each is found where the placement looks for it),
/// and the content reads back with the old address gone. Removing the
/// mirror and adding its new address instead ranks it anew, and most
/// chunks would be sent again. A move to a different mirror is refused.
#[test]
fn a_moved_mirror_keeps_its_placement() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    // About six chunks: a new rank keeps a chunk's placement only one time
    // in three, so all six keep theirs by chance once in 729 runs.
    let bytes = common::seeded_bytes("moved mirror", 24 << 20);
    let file = write_file(tmp.path(), "big.bin", &bytes);
    let file = file.to_str().unwrap();
    let cap = client.ok(&["put", file]).trim().to_string();

    let old = mirrors[2].url.clone();
    let stranger = MirrorProc::start(&tmp.path().join("stranger"), &[]);
    let err = client.fails(&["mirrors", "move", &old, &stranger.url]);
    assert!(err.contains("another mirror"), "{err}");
    let err = client.fails(&["mirrors", "move", "http://127.0.0.1:1", &stranger.url]);
    assert!(err.contains("not a configured mirror"), "{err}");

    mirrors[2].stop();
    let moved = MirrorProc::start(&mirrors[2].data, &[]);
    assert_ne!(moved.url, old);
    client.ok(&["mirrors", "move", &old, &moved.url]);
    let list = client.ok(&["mirrors", "list"]);
    assert!(
        list.contains(&format!("{}  up", moved.url)) && list.contains(&format!("placed as {old}")),
        "{list}"
    );
    assert!(!list.contains(&format!("{old}  ")), "{list}");

    let counts = || {
        [&mirrors[0], &mirrors[1], &moved]
            .map(|m| m.share_files().len())
            .to_vec()
    };
    let before = counts();
    client.ok(&["put", file]);
    assert_eq!(counts(), before, "shares sent again after the move");

    let out = tmp.path().join("back.bin");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == bytes, "content differs");
    let report = client.ok(&["check", &cap, "--verify"]);
    assert!(report.contains("healthy"), "{report}");

    // A mirror added later at the old address is another mirror, placed
    // under a name of its own.
    client.ok(&["mirrors", "add", &old]);
    let list = client.ok(&["mirrors", "list"]);
    assert!(list.contains(&format!("placed as {old}#2")), "{list}");
    client.ok(&["mirrors", "remove", &old]);
    assert!(!client.ok(&["mirrors", "list"]).contains("#2"));
}

/// A new identity that stored nothing yet: `renew` and `check /` say so
/// and succeed. They reported the never-published root as lost ("LOST 1",
/// "no mirror has directory slot") and failed.
#[test]
fn a_new_identity_has_nothing_to_renew_or_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let said = client.ok(&["renew"]);
    assert!(said.contains("nothing stored yet"), "{said}");
    let said = client.ok(&["check", "/"]);
    assert!(said.contains("healthy"), "{said}");
    // Not with no mirror answering: nothing says the root is not stored
    // (it was taken as empty, and healthy).
    let ports = [
        "http://127.0.0.1:9",
        "http://127.0.0.1:11",
        "http://127.0.0.1:13",
    ];
    let away = Client::new(&tmp.path().join("away"), &ports);
    let said = away.fails(&["check", "/"]);
    assert!(!said.contains("healthy"), "{said}");
    // Once something is stored, the root is renewed and checked as any.
    let f = write_file(tmp.path(), "f.bin", b"stored");
    client.ok(&["put", f.to_str().unwrap(), "--to", "f.bin"]);
    let said = client.ok(&["renew"]);
    assert!(
        !said.contains("nothing stored") && !said.contains("LOST"),
        "{said}"
    );
}

/// The soft limit on open descriptors, from `/proc/PID/limits`.
fn soft_descriptor_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a descriptor limit");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn a_mirror_raises_its_descriptor_limit_to_the_hard_one() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // prlimit sets the limits and execs the mirror in the same process.
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=64:4096")
        .arg(common::LODE)
        .args(["mirror", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("m"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let soft = soft_descriptor_limit(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line:?}");
    assert_eq!(soft, 4096, "the mirror kept a soft limit of {soft}");
}

/// A mirror whose data directory has the first share layout (two levels,
/// `shares/ab/cd/<id>`, no `shares/LAYOUT`) serves every share after a
/// restart: it moves them up a level as it opens. A layout newer than the
/// binary knows is refused at start, with the reason.
#[test]
fn a_mirror_moves_a_two_level_store_forward_and_refuses_a_newer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = common::seeded_bytes("two levels", 12 << 20);
    let src = write_file(tmp.path(), "f.bin", &data);
    let cap = client
        .ok(&["put", src.to_str().unwrap()])
        .trim()
        .to_string();
    let shares = |m: &MirrorProc| m.data.join("shares");
    for m in &mut mirrors {
        m.stop();
        let files = m.share_files();
        assert!(!files.is_empty(), "{} holds no share files", m.url);
        // Back to the first layout, as an older mirror left it.
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            let old = file.parent().unwrap().join(&name[2..4]);
            std::fs::create_dir_all(&old).unwrap();
            std::fs::rename(&file, old.join(&name)).unwrap();
        }
        std::fs::remove_file(shares(m).join("LAYOUT")).unwrap();
        // A mirror prints its address (which `restart` waits for) once its
        // store is open: the move is done by then.
        m.restart();
        let files = m.share_files();
        assert!(!files.is_empty());
        for file in &files {
            let shard = file.parent().unwrap();
            assert_eq!(shard.parent().unwrap(), shares(m), "{}", file.display());
        }
        let layout = std::fs::read_to_string(shares(m).join("LAYOUT")).unwrap();
        assert_eq!(layout.trim(), "2");
    }
    let report = client.ok(&["check", &cap, "--verify"]);
    assert!(report.contains(": healthy"), "{report}");
    let out = tmp.path().join("back.bin");
    client.ok(&["get", &cap, "-o", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "bytes read back differ"
    );

    mirrors[0].stop();
    std::fs::write(shares(&mirrors[0]).join("LAYOUT"), "3\n").unwrap();
    let refused = common::serve_refused(&mirrors[0].data, &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("version 3 is not supported"), "{said}");
}

/// `mirrors remove` finds a mirror however its URL is spelled: given as
/// `add` would not store it (capitals, a trailing slash), or written by
/// hand in the config in a spelling of its own.
#[test]
fn a_mirror_is_removed_however_its_url_is_spelled() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new(&tmp.path().join("home"), &["http://127.0.0.1:9"]);
    client.ok(&["mirrors", "remove", "HTTP://127.0.0.1:9/"]);
    client.set_config("mirrors", "[\"http://LOCALHOST:9\"]");
    client.ok(&["mirrors", "remove", "http://localhost:9"]);
    let err = client.fails(&["mirrors", "remove", "http://localhost:9"]);
    assert!(err.contains("not a configured mirror"), "{err}");
}

/// Bodies a mirror holds whole are bounded: readers that take nothing
/// of a large share, or writers that stall a slot's body, hold at most
/// their address's part of `--body-memory` (a quarter), and past it are
/// answered 503 at once; what they held is given back when they go.
/// Before, 256 such requests from one address held 4.3 GB.
#[test]
fn bodies_held_whole_are_bounded_per_address() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    // A quarter of 64 MiB: 16 MiB for 127.0.0.1.
    let mirror = MirrorProc::start(&tmp.path().join("m"), &["--body-memory", "64M"]);
    let key = lode::crypto::RootSecret::from_bytes([0x45; 32]).account_key();
    let http = lode::store::HttpMirror::new(&mirror.url, key.clone()).unwrap();
    let rt = common::runtime();
    // Larger than loopback's socket buffers take (4 + 6 MiB by default),
    // so the answer is still being sent while the test looks.
    let bytes = common::seeded_bytes("held whole", 15 << 20);
    let id = lode::chunk::share_id(&bytes);
    rt.block_on(lode::store::Storage::put_share(
        &http,
        &id,
        bytes.clone().into(),
    ))
    .unwrap();
    let addr = mirror.url.trim_start_matches("http://").to_string();
    let status_of = |conn: &mut std::net::TcpStream| -> String {
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head[9..12]).into_owned()
    };
    let get = || {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        let path = format!("/v1/share/{}", lode::protocol::hex(&id));
        write!(conn, "GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").unwrap();
        conn
    };
    // A reader that takes only the answer's first bytes holds its 15 MiB.
    let mut slow = get();
    assert_eq!(status_of(&mut slow), "200");
    let mut second = get();
    assert_eq!(
        status_of(&mut second),
        "503",
        "a second 15 MiB copy was held"
    );
    // Nor does a slot body of 8 MiB, which would be held before a byte
    // of it came.
    let to = rt.block_on(common::mirror_id(&mirror.url));
    let pk = lode::protocol::hex(&[7u8; 32]);
    let path = format!("/v1/slot/{pk}");
    let auth = lode::protocol::RequestAuth::sign_digest(
        &key,
        &to,
        "PUT",
        &path,
        lode::protocol::unix_now(),
        &[0; 32],
    );
    let mut slot = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slot,
        "PUT {path} HTTP/1.1\r\nHost: m\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        auth.header(),
        8 << 20
    )
    .unwrap();
    // The body never comes: it was to be held first.
    assert_eq!(status_of(&mut slot), "503", "a stalled slot body was held");
    // Once the slow reader goes, its bytes are free again.
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut again = get();
        if status_of(&mut again) == "200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first reader's bytes were never given back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `lode renew CAP` adds the renewer's own leases to a tree it does not
/// keep (a friend's): the shares then count in its account on every
/// mirror.
#[test]
fn renew_with_a_cap_leases_a_friends_tree_for_the_renewer() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let alice = Client::new(&tmp.path().join("alice"), &urls(&mirrors));
    let src = write_file(
        tmp.path(),
        "shared.bin",
        &common::seeded_bytes("shared", 300_000),
    );
    alice.ok(&["put", src.to_str().unwrap(), "--to", "docs/shared.bin"]);
    let cap = alice.ok(&["share", "docs"]).trim().to_string();

    let bob = Client::new(&tmp.path().join("bob"), &urls(&mirrors));
    let usage = |client: &Client| -> Vec<u64> {
        let s: serde_json::Value = serde_json::from_str(&client.ok(&["status", "--json"])).unwrap();
        s["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["usage_bytes"].as_u64().unwrap_or(0))
            .collect()
    };
    assert!(usage(&bob).iter().all(|u| *u == 0));
    let said = bob.ok(&["renew", &cap]);
    assert!(said.contains("reachable from the cap"), "{said}");
    let after = usage(&bob);
    // Each mirror holds one share of each 2-of-3 chunk of the file, about
    // 150 kB of it, besides the directory.
    assert!(after.iter().all(|u| *u > 100_000), "{after:?}\n{said}");
    // A cap on standard input, as for `get`, `ls` and `check`.
    let again = bob.run_with_input(&["renew", "-"], cap.as_bytes());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Bad input: a clear error and a failed exit.
    let bad = bob.run(&["renew", "lode:dir-ro:1:nonsense"]);
    assert!(!bad.status.success());
    assert!(!String::from_utf8_lossy(&bad.stderr).trim().is_empty());
}

/// A data directory made by hand (an identity copied from another
/// machine into a fresh `mkdir -p`, 0755) is made private by the first
/// command that reads the secret: it holds the secret, and a mount's
/// staged plaintext, whose files take the default modes.
#[test]
fn a_data_directory_made_by_hand_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = three_mirrors(tmp.path(), &[]);
    let client = Client::new(&tmp.path().join("home"), &urls(&mirrors));
    let data = tmp.path().join("home/data");
    let mode = || std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o700, "as `lode init` made it");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    client.ok(&["status"]);
    assert_eq!(mode(), 0o700);
}
