//! The POSIX conformance suite (the Rust pjdfstest) on a real mount, run by
//! `scripts/pjdfstest.sh`: at least 95 % of the tests that run must pass.
//! docs/COMPAT.md records the counts.

use std::process::Command;

#[test]
fn pjdfstest_passes_on_the_mount() {
    let have = Command::new("sh")
        .args(["-c", "command -v pjdfstest"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "pjdfstest is not installed: `cargo install --locked pjdfstest` (.ci/run does it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("pjdfstest.out");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/pjdfstest.sh"))
        .arg(&out_file)
        .env("LODE_BIN", env!("CARGO_BIN_EXE_lode"))
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        out.status.success(),
        "pjdfstest.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        report
    );
    let count = |verdict: &str| {
        report
            .lines()
            .filter(|l| {
                let mut words = l.split_whitespace();
                let name = words.next().unwrap_or("");
                name.contains("::") && words.next() == Some(verdict)
            })
            .count()
    };
    let (passed, failed) = (count("ok"), count("FAILED"));
    let failures: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    // A broken run must not pass by running nothing.
    assert!(passed >= 300, "only {passed} tests passed\n{report}");
    assert!(
        failed * 20 <= passed + failed,
        "{failed} of {} failed (more than 5 %):\n{}",
        passed + failed,
        failures.join("\n")
    );
}
