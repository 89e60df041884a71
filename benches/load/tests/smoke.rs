//! The load generator's smoke run: every scenario at tiny sizes against the real `tidings`
//! binary (built beside this package's binary by the workspace test build), each ending with
//! its exactly-once check. Keeps the harness working; the numbers are not looked at here.
//!
//! The run is bounded: a generator that hangs (waiting for an answer that never comes) is
//! killed with the server it started after [`DEADLINE`], and the test fails with its output,
//! instead of holding CI until the job's own limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Far more than a smoke run takes (tens of seconds in a debug build on two busy cores).
const DEADLINE: Duration = Duration::from_secs(600);

/// Everything `file` holds (the child wrote it through its own descriptor).
fn contents(mut file: &File) -> String {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` until `deadline` from now; past it, kills its process group (the
/// generator and the server it started) and answers `None`.
fn wait_at_most(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let group = format!("-{}", child.id());
    let killed = Command::new("kill")
        .args(["-KILL", "--", group.as_str()])
        .status()
        .is_ok_and(|s| s.success());
    if !killed {
        let _ = child.kill();
    }
    let _ = child.wait();
    None
}

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
    // Files, not pipes: the server inherits the generator's stderr, and a pipe it held open
    // after a kill would block the read for ever.
    let stdout_file = tempfile::tempfile().unwrap();
    let stderr_file = tempfile::tempfile().unwrap();
    let mut child = Command::new(&load)
        .args(["all", "--smoke", "--tidings-bin"])
        .arg(&server)
        .stdout(stdout_file.try_clone().unwrap())
        .stderr(stderr_file.try_clone().unwrap())
        // A process group of its own, so a kill reaches the server it starts too.
        .process_group(0)
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, DEADLINE);
    let stdout = contents(&stdout_file);
    let stderr = contents(&stderr_file);
    let Some(status) = status else {
        panic!("tidings-load still running after {DEADLINE:?}, killed:\n{stdout}\n{stderr}");
    };
    assert!(status.success(), "tidings-load failed:\n{stdout}\n{stderr}");
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
    // Traffic flowed (a run that sent nothing was `correct` too).
    assert!(results[0]["messages"].as_u64() > Some(0), "{stdout}");
    assert!(results[1]["deliveries"].as_u64() > Some(0), "{stdout}");
}
