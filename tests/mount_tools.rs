//! Everyday tools on a real mount: rsync, git and sqlite3.

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::Mounted;

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rsync_git_and_sqlite_on_the_mount() {
    for tool in ["rsync", "git", "sqlite3"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is needed (.ci/run installs it)"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = common::three_mirrors_and_client(tmp.path());
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mounted = Mounted::new(&client, &mp);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");

    // rsync -a twice: the second run transfers nothing.
    sh(
        tmp.path(),
        &format!("rsync -a {}/ {}/src/", src.display(), mp.display()),
    );
    let second = sh(
        tmp.path(),
        &format!(
            "rsync -a --itemize-changes {}/ {}/src/",
            src.display(),
            mp.display()
        ),
    );
    assert!(
        second.trim().is_empty(),
        "second rsync changed things:\n{second}"
    );
    sh(
        tmp.path(),
        &format!("diff -r {} {}/src", src.display(), mp.display()),
    );

    // git clone of a local repository into the mount; fsck; clean status.
    let repo = tmp.path().join("repo");
    sh(
        tmp.path(),
        &format!(
            "git init -q {r} && cd {r} && cp -a {s} ./src && git add -A && \
             git -c user.name=t -c user.email=t@example.invalid commit -qm init",
            r = repo.display(),
            s = src.display()
        ),
    );
    sh(
        tmp.path(),
        &format!("git clone -q {} {}/clone", repo.display(), mp.display()),
    );
    let clone = mp.join("clone");
    sh(&clone, "git fsck --full --no-progress");
    let status = sh(&clone, "git status --porcelain");
    assert!(status.trim().is_empty(), "git status not clean:\n{status}");

    // A sqlite3 database: created, 1,000 rows in transactions, read back.
    let db = mp.join("data.db");
    let mut sql = String::from("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n");
    for batch in 0..10 {
        sql.push_str("BEGIN;\n");
        for i in 0..100 {
            sql.push_str(&format!(
                "INSERT INTO t (v) VALUES ('row {}');\n",
                batch * 100 + i
            ));
        }
        sql.push_str("COMMIT;\n");
    }
    std::fs::write(tmp.path().join("load.sql"), sql).unwrap();
    sh(tmp.path(), &format!("sqlite3 {} < load.sql", db.display()));
    let count = sh(
        tmp.path(),
        &format!("sqlite3 {} 'SELECT COUNT(*), MAX(v) FROM t'", db.display()),
    );
    assert_eq!(count.trim(), "1000|row 999");
    let check = sh(
        tmp.path(),
        &format!("sqlite3 {} 'PRAGMA integrity_check'", db.display()),
    );
    assert_eq!(check.trim(), "ok");

    mounted.unmount();
}
