//! A real process killed with SIGKILL while appending: every append it acknowledged is in the
//! log after reopen, byte for byte, and the log keeps working across repeated kills.
//!
//! The child is this test binary re-run with `--exact child_writer --ignored`, so no extra
//! binary is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use bytes::Bytes;
use tidings_log::{Log, LogOptions};

const DIR_ENV: &str = "TIDINGS_LOG_KILL9_DIR";
const ROUND_ENV: &str = "TIDINGS_LOG_KILL9_ROUND";

fn payload(round: u64, task: u64, seq: u64) -> Bytes {
    let mut s = format!("kill9 r{round} t{task} s{seq} ");
    while s.len() < 120 + (seq % 50) as usize {
        s.push('#');
    }
    Bytes::from(s)
}

fn opts() -> LogOptions {
    // Preallocated segments, as the server runs the log.
    LogOptions::default()
        .with_segment_bytes(256 << 10)
        .with_preallocate_bytes(256 << 10)
}

#[test]
#[ignore = "the child process of kill_9_mid_write_loses_nothing_acknowledged"]
fn child_writer() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let log = Log::open(&dir, opts()).await.unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..16u64 {
            let (log, out) = (log.clone(), out.clone());
            tasks.spawn(async move {
                for seq in 0.. {
                    let off = log.append_one(payload(round, task, seq)).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {off} {round} {task} {seq}").unwrap();
                    o.flush().unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

#[tokio::test]
async fn kill_9_mid_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        let want = 1500 + round * 700;
        while this_round < want {
            let line = lines.next().expect("child ended early").unwrap();
            if let Some(rest) = line.strip_prefix("ack ") {
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                acked.push((v[0], payload(v[1], v[2], v[3])));
                this_round += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        // Acknowledgements printed before the kill are still in the pipe: they count too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ack ") {
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                acked.push((v[0], payload(v[1], v[2], v[3])));
            }
        }
        child.wait().unwrap();

        let log = Log::open(dir.path(), opts()).await.unwrap();
        for (off, p) in &acked {
            let recs = log.read(*off, 0).await.unwrap();
            assert_eq!(
                recs.first().map(|r| &r.payload),
                Some(p),
                "round {round}: offset {off}"
            );
        }
        log.close().await.unwrap();
    }
    assert!(acked.len() > 5000);
}
