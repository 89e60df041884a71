//! The load generator's smoke run: every scenario at tiny sizes against the real `tidings`
//! binary (built beside this package's binary by the workspace test build), each ending with
//! its exactly-once check. Keeps the harness working; the numbers are not looked at here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_scenario_runs_and_passes_its_correctness_check() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_tidings-load"));
    let server = load.with_file_name("tidings");
    // A test that passed without running would hide a broken harness: without the server
    // binary (`cargo test -p tidings-load` alone builds none), fail and say what to run.
    assert!(
        server.exists(),
        "{} not built: run the workspace tests (bash scripts/test.sh, or cargo test --workspace)",
        server.display()
    );
    let out = Command::new(&load)
        .args(["all", "--smoke", "--tidings-bin"])
        .arg(&server)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tidings-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names: Vec<&str> = results
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "send",
            "fanout",
            "large-group",
            "offline-sync",
            "idle",
            "cold"
        ]
    );
    assert!(results.iter().all(|r| r["correct"] == true), "{stdout}");
}
