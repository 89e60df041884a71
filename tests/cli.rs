//! The operator CLI end to end, running the real binary: replay prints NDJSON (and follows a
//! live log), rebuild writes a snapshot, verify names the difference in a hand-corrupted
//! snapshot, inspect finds a flipped bit, tier status names a bad manifest, offsets only in the
//! data directory and a store holding another history, trace prints what the admin's HTTP trace
//! call answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{ADMIN, Api, Server, Ws, tidings, tree};
use serde_json::{Value, json};
use tidings_log::tier::manifest::{Manifest, RemoteSegment};
use tidings_log::{FsyncPolicy, Log, LogOptions};
use tidings_projections::msgindex::Located;
use tidings_projections::{ChannelFlags, Envelope, Event, FLAG_JSON_PAYLOAD, snapshot};

fn opts() -> LogOptions {
    LogOptions::default()
        .with_fsync(FsyncPolicy::Never)
        .with_segment_bytes(2048)
}

fn events() -> Vec<Event> {
    let s = |x: &str| x.to_string();
    let mut v = vec![
        Event::ChannelCreated {
            channel: s("g"),
            flags: ChannelFlags::default(),
        },
        Event::ChannelCreated {
            channel: s("h"),
            flags: ChannelFlags::default(),
        },
        Event::MembersSubscribed {
            channel: s("g"),
            uids: vec![s("alice"), s("bob")],
        },
        Event::MembersSubscribed {
            channel: s("h"),
            uids: vec![s("alice")],
        },
    ];
    for seq in 1..=20u64 {
        v.push(Event::MessageSent {
            channel: s("g"),
            from: s("alice"),
            client_msg_id: format!("c{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::from(format!("{{\"n\":{seq}}}")),
            flags: FLAG_JSON_PAYLOAD,
        });
    }
    v.push(Event::CursorAdvanced {
        uid: s("bob"),
        channel: s("g"),
        delivered_seq: Some(15),
        read_seq: Some(12),
    });
    v
}

async fn write_log(dir: &Path, evs: &[Event]) {
    append_events(dir, evs, 1_000).await;
}

/// Appends `evs` to the log in `dir` (one batch each, timestamps from `ts`).
async fn append_events(dir: &Path, evs: &[Event], ts: u64) {
    let log = Log::open(dir.join("log"), opts()).await.unwrap();
    for (i, e) in evs.iter().enumerate() {
        log.append_one(Envelope::new(ts + i as u64, e.clone()).encode())
            .await
            .unwrap();
    }
    log.close().await.unwrap();
}

/// Removes segment 0 and its index files (as the retention does), the server stopped.
fn remove_segment_0(dir: &Path) {
    for ext in ["log", "index", "timeindex"] {
        std::fs::remove_file(dir.join(format!("log/{:020}.{ext}", 0))).unwrap();
    }
}

#[tokio::test]
async fn replay_prints_ndjson_with_ranges_and_channel_filter() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "3", "--to", "5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(lines[0]["type"], "members_subscribed");
    assert_eq!(lines[1]["type"], "message_sent");
    assert_eq!(
        lines[1]["payload"],
        serde_json::json!({"n": 1}),
        "JSON payloads stay JSON"
    );
    assert_eq!(lines[1]["seq"], 1);

    let (code, out, _) = tidings(&["replay", "--data", d, "--channel", "h"]);
    assert_eq!(code, 0);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["channel_created", "members_subscribed"]);

    // The channel as the admin names it: a person channel in either order (the other order
    // matched nothing, silently), `@uid` and an invalid id are usage errors (they printed
    // nothing and exited 0).
    let with_person = tempfile::tempdir().unwrap();
    let mut evs = events();
    evs.push(Event::MessageSent {
        channel: "p:alice:bob".into(),
        from: "alice".into(),
        client_msg_id: "p1".into(),
        seq: 1,
        message_id: 21,
        payload: Bytes::from_static(b"{}"),
        flags: FLAG_JSON_PAYLOAD,
    });
    write_log(with_person.path(), &evs).await;
    let p = with_person.path().to_str().unwrap();
    let person = |a: &str, b: &str| {
        let channel = format!("p:{a}:{b}");
        tidings(&["replay", "--data", p, "--channel", &channel])
    };
    let (code, ab, err) = person("alice", "bob");
    assert_eq!((code, ab.lines().count()), (0, 1), "{ab}{err}");
    let (code, ba, err) = person("bob", "alice");
    assert_eq!((code, ba), (0, ab), "{err}");
    for bad in ["@bob", "bad chan"] {
        let (code, out, err) = tidings(&["replay", "--data", d, "--channel", bad]);
        assert_eq!(code, 2, "{bad}: {out}{err}");
        assert!(err.contains("p:{uid_a}:{uid_b}"), "{err}");
    }
}

#[tokio::test]
async fn replay_follow_prints_events_as_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()[..4]).await;
    let log = Log::open(dir.path().join("log"), opts()).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "replay",
            "--data",
            dir.path().to_str().unwrap(),
            "--from",
            "2",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for e in &events()[4..10] {
        log.append_one(Envelope::new(5, e.clone()).encode())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        seen.push(v["offset"].as_u64().unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen, (2..10).collect::<Vec<_>>());
    log.close().await.unwrap();
}

/// A newest snapshot older than the local log's start (the segments between gone: a tiered
/// directory whose local copies go once uploaded, stopped before its next snapshot): verify
/// says there is nothing to verify against and why (it advised starting from a snapshot at or
/// after the start, which did not exist).
#[tokio::test]
async fn verify_says_a_snapshot_older_than_the_local_log_leaves_nothing_to_verify() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events();
    write_log(dir.path(), &evs[..5]).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    append_events(dir.path(), &evs[5..], 2_000).await;
    remove_segment_0(dir.path());
    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("nothing to verify against") && err.contains("needs events from offset 5"),
        "{err}"
    );
}

/// On a log whose start only the live snapshot can be replayed after, `verify` says nothing
/// was rebuilt to compare also when events follow that snapshot: both sides are it plus the
/// same events. It said "ok: … equals a rebuild".
#[tokio::test]
async fn verify_says_so_when_the_rebuild_would_start_from_the_live_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let more: Vec<Event> = (21..=23u64)
        .map(|seq| Event::MessageSent {
            channel: "g".into(),
            from: "alice".into(),
            client_msg_id: format!("c{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::from_static(b"{}"),
            flags: FLAG_JSON_PAYLOAD,
        })
        .collect();
    append_events(dir.path(), &more, 3_000).await;
    remove_segment_0(dir.path());
    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("nothing was rebuilt to compare") && !out.contains("equals a rebuild"),
        "{out}"
    );
}

#[tokio::test]
async fn verify_names_the_difference_in_a_hand_corrupted_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied 25 events"), "{out}");
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok:"), "{out}");

    // A snapshot that loads fine (valid CRC) but says bob read less and is not in "g".
    let snaps = snapshot::list(&dir.path().join("projections/snapshots")).unwrap();
    let path = &snaps[0].path;
    let mut state = snapshot::decode(path, &std::fs::read(path).unwrap()).unwrap();
    state
        .cursors
        .by_user
        .get_mut("bob")
        .unwrap()
        .get_mut("g")
        .unwrap()
        .read = 3;
    state
        .subs
        .channels
        .get_mut("g")
        .unwrap()
        .members
        .remove("bob");
    std::fs::write(path, snapshot::encode(&state).unwrap()).unwrap();

    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            r#"user "bob" cursor in channel "g": read_seq is 3 live, 12 rebuilt from the log"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"channel "g" member: "bob" missing from the live state"#),
        "{out}"
    );

    // A snapshot with a bad checksum is reported too.
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(path, bytes).unwrap();
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1);
    assert!(out.contains("damaged snapshot"), "{out}");
    // Rebuilding writes a fresh snapshot at the same offset over the damaged one, anchored to
    // the log's record at its offset.
    let (code, _, _) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0);
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");
    let (state, anchor) = snapshot::decode_anchored(path, &std::fs::read(path).unwrap()).unwrap();
    assert!(anchor.is_some(), "rebuild anchors its snapshot");

    // The same state anchored to another record: made from another history of the log.
    let mut other = snapshot::Encoded::of(&state).unwrap();
    other.set_anchor(anchor.unwrap() ^ 1);
    other.write(path.parent().unwrap(), 3).unwrap();
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("made from another history of the log"),
        "{out}"
    );
    // Rebuilding from the newest snapshot skips that one instead of carrying its state over
    // under a new anchor; its fresh snapshot then verifies.
    let (code, out, err) = tidings(&["rebuild", "--data", d, "--from-snapshot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("skipping snapshot"), "{err}");
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn inspect_checks_every_crc_and_rebuild_refuses_a_live_log() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("25 records checked"), "{out}");
    assert!(out.matches("sealed").count() >= 1, "{out}");
    // A reader that goes away (`| head -0`): no panic, and the exit code of the check (it was
    // 101, "failed printing to stdout: Broken pipe"), for `verify` too.
    for cmd in ["inspect", "verify"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([cmd, "--data", d])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(0), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        // Output that cannot be written (a full disk: /dev/full) is a failure, said once.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let done = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([cmd, "--data", d])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(
            err.matches("writing to stdout failed").count(),
            1,
            "{cmd}: {err}"
        );
    }

    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[100] ^= 0x20;
    std::fs::write(&segs[0], bytes).unwrap();
    let (code, out, _) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("CORRUPT") && out.contains(&segs[0].display().to_string()),
        "{out}"
    );

    let log = Log::open(dir.path().join("log"), opts()).await.unwrap();
    let (code, _, err) = tidings(&["rebuild", "--data", d]);
    assert_ne!(code, 0);
    assert!(err.contains("stop the server first"), "{err}");
    log.close().await.unwrap();
}

/// The events of [`events`] in one active segment, synced as written (`always`: a gap is not
/// what a power cut leaves), one batch each, no index entry after the segment's start.
async fn write_synced_log(dir: &Path) {
    let opts = LogOptions::default().with_index_interval_bytes(1 << 20);
    let log = Log::open(dir.join("log"), opts).await.unwrap();
    for (i, e) in events().iter().enumerate() {
        log.append_one(Envelope::new(1_000 + i as u64, e.clone()).encode())
            .await
            .unwrap();
    }
    log.close().await.unwrap();
}

/// Flips a bit in batch 20 of the log [`write_synced_log`] wrote (offset 20, before 4 valid
/// batches: damage `serve` refuses to start on); returns the segment's path.
fn damage_batch_20(dir: &Path) -> PathBuf {
    let seg = dir.join("log").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Each batch starts with the magic `TDTG` (which no event here holds); one per append.
    let starts = common::batch_starts(&bytes);
    assert_eq!(starts.len(), events().len());
    // A byte of the record in batch 20 (past its 40-byte header and 4-byte length).
    let flip = starts[20] + 45;
    assert!(flip < starts[21]);
    bytes[flip] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    seg
}

/// A damaged last batch in the active segment (what a crash mid-write leaves, and what the next
/// start cuts) is the end of the data, and `inspect` says so, with the bytes past the last whole
/// batch, still exit 0: it showed the segment `ok` with a shorter length and nothing more (a QA
/// round). An intact log gets no such note.
#[tokio::test]
async fn inspect_tells_a_torn_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_synced_log(dir.path()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("past the last whole batch"), "{out}");
    let seg = dir.path().join("log").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = *common::batch_starts(&bytes).last().unwrap();
    let torn = bytes.len() - last;
    bytes[last + 45] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ok; {torn} bytes past the last whole batch")),
        "{out}"
    );
}

/// Damage in the active segment that valid batches follow (what `serve` refuses to start on):
/// `inspect` reports it and exits 1, `replay` (also `--follow`) prints the events before it and
/// fails naming it,
/// `verify` and `trace` name it and exit 1. They ended quietly at the damaged batch before (the
/// read-only view's end of the valid data): inspect said ok, replay exited 0 short of the last
/// events, verify said ok (its rebuild and its live state both stopped there).
#[tokio::test]
async fn inspect_replay_and_verify_report_damage_that_valid_batches_follow() {
    let dir = tempfile::tempdir().unwrap();
    write_synced_log(dir.path()).await;
    let seg = damage_batch_20(dir.path());
    let d = dir.path().to_str().unwrap();

    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("CORRUPT") && out.contains("valid batches follow a damaged one"),
        "{out}"
    );

    let (code, out, err) = tidings(&["replay", "--data", d]);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().count(),
        20,
        "the events before the damage: {out}"
    );
    assert!(
        err.contains("valid batches follow a damaged one")
            && err.contains(&seg.display().to_string()),
        "{err}"
    );
    // A range that ends before the damage is replayed as before.
    let (code, out, err) = tidings(&["replay", "--data", d, "--to", "19"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 20);
    // `--follow` too: it waited at the damage in silence, for records no server could write.
    let (code, out, err) = common::tidings_within(&["replay", "--data", d, "--follow"], 30);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 20, "{out}");
    assert!(err.contains("valid batches follow a damaged one"), "{err}");

    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("damaged log") && out.contains("valid batches follow a damaged one"),
        "{out}"
    );

    // `trace` too (QA: it answered a message after the damage `message_not_found`, and one
    // before it with a scan it called complete).
    let (code, out, err) = tidings(&["trace", "--data", d, "g", "1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("damaged log") && err.contains(&seg.display().to_string()),
        "{err}"
    );
}

/// The same damage with a snapshot taken before it (a rebuild, as a clean server stop leaves
/// one): `verify` names the damage and exits 1. It compared the snapshot with the log's valid
/// end first, and said only that the log had lost events after the snapshot and to rebuild
/// from the log (which would drop the four valid events after the damage).
#[tokio::test]
async fn verify_names_damage_in_the_active_segment_past_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    write_synced_log(dir.path()).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    // The rebuild's open indexes the segment every 4 KiB: an entry past the damage would make
    // it damage found when read (`serve` starts on that), not at the view's end.
    let seg = dir.path().join("log").join(format!("{:020}.log", 0));
    assert!(std::fs::metadata(&seg).unwrap().len() < 4096);
    let seg = damage_batch_20(dir.path());

    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("damaged log")
            && out.contains("valid batches follow a damaged one")
            && out.contains(&seg.display().to_string()),
        "{out}{err}"
    );
    assert!(!err.contains("the log lost events"), "{err}");
    assert!(
        out.contains("not compared with a rebuild") && out.contains("offset 20"),
        "{out}"
    );
}

/// `verify` and `inspect` create nothing in the data directory (the README: read-only, they
/// change nothing). Both opened the message index through `IndexFiles::open`, which creates its
/// directory: verify made `projections/index` in a directory holding only `log/`, and inspect
/// did when a snapshot was there without it.
#[tokio::test]
async fn verify_and_inspect_create_nothing_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let d = dir.path().to_str().unwrap();
    let unchanged = |what: &str| {
        let before = tree(dir.path());
        for cmd in ["verify", "inspect"] {
            let (code, out, err) = tidings(&[cmd, "--data", d]);
            assert_eq!(code, 0, "{what}: {cmd}: {out}{err}");
            assert_eq!(tree(dir.path()), before, "{what}: {cmd}");
        }
    };
    unchanged("only the log");
    assert!(!dir.path().join("projections").exists());
    // A snapshot (naming no sidecar: 20 messages stay in memory) without its index directory.
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::remove_dir_all(dir.path().join("projections/index")).unwrap();
    unchanged("a snapshot");
    assert!(!dir.path().join("projections/index").exists());

    // An empty log directory (no segment yet): both say so and exit 0 (inspect reported a
    // segment 0 it could not open as CORRUPT, exit 1, where verify said ok).
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("log")).unwrap();
    let e = empty.path().to_str().unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", e]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("empty: no file yet") && !out.contains("CORRUPT"),
        "{out}"
    );
    let (code, out, err) = tidings(&["verify", "--data", e]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A message's JSON payload as stored, byte for byte: a repeated key, keys out of order, a
/// number no f64 holds.
const EXACT_PAYLOAD: &str = r#"{"to":"bob","amount":1,"amount":1000,"id":12345678901234567890123}"#;

/// `replay` prints JSON payloads as the exact stored text (of sends and edits), other bytes as
/// base64. They were parsed into a tree first: keys re-sorted, the first `amount` dropped, the
/// id rounded to 1.2345678901234568e22.
#[tokio::test]
async fn replay_prints_payloads_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = |x: &str| x.to_string();
    let exact = Bytes::from_static(EXACT_PAYLOAD.as_bytes());
    let send = |seq: u64, payload: Bytes, flags: u32| Event::MessageSent {
        channel: s("g"),
        from: s("alice"),
        client_msg_id: format!("c{seq}"),
        seq,
        message_id: seq,
        payload,
        flags,
    };
    let evs = vec![
        Event::ChannelCreated {
            channel: s("g"),
            flags: ChannelFlags::default(),
        },
        send(1, exact.clone(), FLAG_JSON_PAYLOAD),
        Event::MessageEdited {
            channel: s("g"),
            seq: 1,
            by: s("alice"),
            payload: exact,
            flags: FLAG_JSON_PAYLOAD,
        },
        send(2, Bytes::from_static(&[0, 1, 0xff]), 0),
    ];
    write_log(dir.path(), &evs).await;
    let (code, out, err) = tidings(&["replay", "--data", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines[1..3] {
        assert!(
            line.contains(&format!(r#""payload":{EXACT_PAYLOAD}"#)),
            "{line}"
        );
    }
    // The other fields as before.
    let sent: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(sent["offset"], 1, "{}", lines[1]);
    assert_eq!(sent["type"], "message_sent", "{}", lines[1]);
    assert_eq!(sent["seq"], 1, "{}", lines[1]);
    assert_eq!(sent["flags"], FLAG_JSON_PAYLOAD, "{}", lines[1]);
    let bytes: Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(bytes["payload_b64"], "AAH/", "{}", lines[3]);
    assert!(bytes.get("payload").is_none(), "{}", lines[3]);
}

/// `replay` of a range the local log does not hold fails naming why: from past the end of the
/// log (as `GET /v1/log` answers 400), and a range that ends before the local log starts. Both
/// printed nothing and exited 0, as for a range without events. From the end it prints nothing
/// and exits 0, and with `--follow` from past the end it waits, as before. `--to` before
/// `--from` is refused as such (it printed nothing and exited 0, or said the offsets were not
/// in the local log when `--to` was before its start).
#[tokio::test]
async fn replay_refuses_a_range_the_local_log_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await; // offsets 0..=24
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "30"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("nothing at offset 30") && err.contains("the log ends at offset 25"),
        "{err}"
    );
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "25"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    // A reversed range is a usage error (it printed nothing and exited 0).
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "5", "--to", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("--to 3 is before --from 5"), "{err}");

    // `--follow` from past the end waits for the offset.
    let log = Log::open(dir.path().join("log"), opts()).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["replay", "--data", d, "--from", "27", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for e in &events()[..5] {
        log.append_one(Envelope::new(5, e.clone()).encode())
            .await
            .unwrap();
    }
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(first["offset"], 27);
    log.close().await.unwrap();

    // The first segment removed: the local log starts later.
    let log_dir = dir.path().join("log");
    let mut bases: Vec<u64> = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .collect();
    bases.sort_unstable();
    assert!(bases.len() >= 2, "{bases:?}");
    let first_stem = format!("{:020}.", bases[0]);
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&first_stem))
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let start = bases[1];
    assert!(start < 30, "{bases:?}");
    let before = (start - 1).to_string();
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "0", "--to", &before]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("offsets 0 to {before} are not in the local log"))
            && err.contains(&format!("starts at offset {start}")),
        "{err}"
    );
    // Reversed, it is the usage error, not offsets missing from the local log.
    let from = start.to_string();
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", &from, "--to", &before]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("--to {before} is before --from {start}"))
            && !err.contains("not in the local log"),
        "{err}"
    );
    // A range that reaches into the local log is replayed from its start, saying so.
    let to = start.to_string();
    let (code, out, err) = tidings(&["replay", "--data", d, "--from", "0", "--to", &to]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(err.contains("the local log starts at offset"), "{err}");
}

/// `tier status` names a local manifest it cannot read or decode and exits 1 (it said "tiering
/// is not configured, or nothing was uploaded yet" and exited 0), and names the log directory
/// of a data directory that is not there (the error said only "No such file or directory").
#[tokio::test]
async fn tier_status_names_a_bad_manifest_and_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()[..4]).await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["tier", "status", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no tier manifest"), "{out}");

    let manifest = dir.path().join("log/tier-manifest.json");
    std::fs::write(&manifest, br#"{"version":2,"epo"#).unwrap();
    let (code, out, err) = tidings(&["tier", "status", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&manifest.display().to_string()) && err.contains("does not decode"),
        "{err}"
    );
    // Unreadable (a directory in its place).
    std::fs::remove_file(&manifest).unwrap();
    std::fs::create_dir(&manifest).unwrap();
    let (code, out, err) = tidings(&["tier", "status", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("reading the tier manifest {}", manifest.display())),
        "{err}"
    );

    let none = dir.path().join("none");
    let (code, out, err) = tidings(&["tier", "status", "--data", none.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&none.join("log").display().to_string()),
        "{err}"
    );
    assert!(!none.exists());
}

/// `tier status` compares the local segments with the local manifest copy as the log's open
/// does. Offsets only in this directory (the active segment, sealed segments not uploaded) are
/// named; a store that went on from another directory at this one's active segment is reported
/// as divergence (exit 1). It printed the remote range, "lag: 0" and nothing about the records
/// the store does not hold or the other history (a fail-back after a restore elsewhere).
#[tokio::test]
async fn tier_status_names_local_only_offsets_and_divergence() {
    let dir = tempfile::tempdir().unwrap();
    // 100 events in segments of 2 KiB: several sealed segments.
    let evs: Vec<Event> = (0..4).flat_map(|_| events()).collect();
    write_log(dir.path(), &evs).await;
    let d = dir.path().to_str().unwrap();
    let view = Log::open(
        dir.path().join("log"),
        LogOptions::default().with_read_only(true),
    )
    .await
    .unwrap();
    let segs = view.segments().unwrap();
    view.close().await.unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let active = segs.last().unwrap();
    let end = active.end_offset;
    assert!(
        !active.sealed && end == 100 && active.base_offset < end,
        "{segs:?}"
    );
    let sealed = &segs[..segs.len() - 1];
    let entry = |base: u64, to: u64, bytes: u64| RemoteSegment {
        base,
        end: to,
        bytes,
        crc32: 0,
        index_bytes: 0,
        time_bytes: 0,
        object: None,
    };
    let write_manifest = |entries: Vec<RemoteSegment>| {
        let mut m = Manifest::new("node-a", 1);
        m.segments = entries;
        std::fs::write(dir.path().join("log/tier-manifest.json"), m.encode()).unwrap();
    };

    // The first sealed segment uploaded: the rest is local only, and no divergence is seen
    // (this copy is all that was read).
    let first = &sealed[0];
    write_manifest(vec![entry(
        first.base_offset,
        first.end_offset,
        first.bytes,
    )]);
    let (code, out, err) = tidings(&["tier", "status", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let lag = sealed.len() - 1;
    assert!(
        out.contains(&format!(
            "local only: offsets [{}, {end})",
            sealed[1].base_offset
        )) && out.contains(&format!("lag:    {lag} sealed segments"))
            && out.contains("the object store was not consulted")
            && out.contains("diverged: no"),
        "{out}"
    );

    // Every sealed segment uploaded, and another directory restored from the store and wrote
    // on from this one's active segment: its records are in no store.
    let mut entries: Vec<RemoteSegment> = sealed
        .iter()
        .map(|s| entry(s.base_offset, s.end_offset, s.bytes))
        .collect();
    entries.push(entry(active.base_offset, active.base_offset + 5, 300));
    write_manifest(entries);
    let (code, out, err) = tidings(&["tier", "status", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "local only: offsets [{}, {end})",
            active.base_offset
        )) && out.contains("lag:    0 sealed segments")
            && out.contains("DIVERGED")
            && out.contains(&format!(
                "[{}, {})",
                active.base_offset,
                active.base_offset + 5
            )),
        "{out}"
    );
}

/// `rebuild` refuses a directory without a log (it would create one, which a server restoring
/// that directory from the object store would then take for its own history) and one whose
/// lock another process holds; and sets aside snapshots past the log's end first, as the
/// server does (its own snapshot was the oldest among three of them, and pruned).
#[tokio::test]
async fn rebuild_refuses_no_log_and_a_held_directory_and_keeps_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none");
    let (code, out, err) = tidings(&["rebuild", "--data", none.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("nothing to rebuild"), "{err}");
    assert!(!none.join("log").exists());
    // A log directory holding only a file not named as a segment has no segment either (it
    // made segment 0, exiting 0; `compact` named damage that was not there).
    let misnamed = dir.path().join("misnamed");
    std::fs::create_dir_all(misnamed.join("log")).unwrap();
    std::fs::write(misnamed.join("log/notes.log"), b"x").unwrap();
    for cmd in ["rebuild", "compact"] {
        let (code, out, err) = tidings(&[cmd, "--data", misnamed.to_str().unwrap()]);
        assert_ne!(code, 0, "{cmd}: {out}{err}");
        assert!(err.contains("no log segments"), "{cmd}: {err}");
    }
    let files: Vec<_> = std::fs::read_dir(misnamed.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["notes.log"]);

    let data = dir.path().join("data");
    write_log(&data, &events()).await;
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    // Three snapshots past the log's end (25 events: offsets 0..=24), as a power cut under
    // `fsync = never` leaves them.
    let snaps = data.join("projections/snapshots");
    let mine = snapshot::snapshot_path(&snaps, 24);
    let state = snapshot::decode(&mine, &std::fs::read(&mine).unwrap()).unwrap();
    for applied in [30, 31, 32] {
        let mut ahead = state.clone();
        ahead.applied = Some(applied);
        std::fs::write(
            snapshot::snapshot_path(&snaps, applied),
            snapshot::encode(&ahead).unwrap(),
        )
        .unwrap();
    }
    std::fs::remove_file(&mine).unwrap();
    // Written under `always`, the log lost acknowledged records: refused, nothing set aside.
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("acknowledged"), "{err}");
    assert_eq!(snapshot::list(&snaps).unwrap().len(), 3);
    // Under `never` (as the log's policy file records it), what a power cut leaves.
    std::fs::write(data.join("log/fsync-policy"), "never 0 0").unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&mine.display().to_string()), "{out}");
    assert!(mine.exists(), "the rebuilt snapshot is kept");
    let left: Vec<u64> = snapshot::list(&snaps)
        .unwrap()
        .iter()
        .map(|s| s.applied)
        .collect();
    assert_eq!(left, vec![24]);
    assert!(
        snaps
            .join("00000000000000000030.snap.ahead-of-log")
            .exists()
    );
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");

    // The data directory's lock held (a server starting: it restores snapshots before it
    // opens the log).
    let lock = std::fs::File::open(data.join("LOCK")).unwrap();
    lock.try_lock().unwrap();
    let (code, _, err) = tidings(&["rebuild", "--data", d]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another tidings process"), "{err}");
    drop(lock);
}

/// `rebuild` shaped by the server's projections settings (`--config` or the same flags as
/// `serve`): the new snapshot loads at the server's next start instead of being replayed
/// again, and snapshots of other settings go aside first (the rebuild rewrites the sidecars
/// they name). Without settings it is shaped like the newest snapshot, as before.
#[tokio::test]
async fn rebuild_takes_the_server_s_projections_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_log(&data, &events()).await;
    let d = data.to_str().unwrap();
    let snaps = data.join("projections/snapshots");
    let newest_flush = || {
        let s = snapshot::load_newest(&snaps).unwrap().unwrap().0;
        s.index.flush_entries
    };
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(newest_flush(), 262_144);
    let config = dir.path().join("tidings.toml");
    std::fs::write(&config, "[projections]\nindex_flush_entries = 3\n").unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(newest_flush(), 3);
    assert!(
        snaps
            .join("00000000000000000024.snap.other-settings")
            .exists(),
        "the snapshot of the defaults is set aside"
    );
    // Starting from a snapshot of other settings is refused; without settings, the newest
    // snapshot's shape is kept.
    let (code, _, err) = tidings(&[
        "rebuild",
        "--data",
        d,
        "--from-snapshot",
        "--projections-index-flush-entries",
        "5",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("other projections settings"), "{err}");
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(newest_flush(), 3);
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");
    // Settings `serve` refuses, or a config file that is not there, are refused before
    // anything changes: the snapshots stay where they are (they went aside first, and the
    // rebuild then ran with a flush of 1, or failed).
    let listing = || common::names_in(&snaps);
    let before = listing();
    let mark = data.join("cache/conversations/UNTRUSTED");
    let _ = std::fs::remove_file(&mark);
    for bad in [
        vec!["--projections-index-flush-entries", "0"],
        vec!["--projections-idempotency-secs", "2000000000"],
        vec!["--config", "/nonexistent/tidings.toml"],
    ] {
        let mut args = vec!["rebuild", "--data", d];
        args.extend(bad.iter().copied());
        let (code, out, err) = tidings(&args);
        assert_ne!(code, 0, "{bad:?}: {out}{err}");
        assert_eq!(listing(), before, "{bad:?}: {err}");
        assert!(
            !mark.exists(),
            "{bad:?}: the conversation cache was not marked"
        );
    }
}

/// A rebuild under other settings reads the whole log before it sets the snapshots aside:
/// damage inside a sealed segment (where the server, starting from a snapshot past it, never
/// reads) refuses it with every snapshot left in place. It set them aside, then failed at the
/// damage, and the directory started under neither settings.
#[tokio::test]
async fn rebuild_under_other_settings_refuses_a_log_it_cannot_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Segments of many batches with an index entry every 256 bytes: the last record before a
    // segment's end is read from an entry past the damage.
    let mut evs = events()[..4].to_vec();
    evs.extend((1..=300u64).map(|seq| Event::MessageSent {
        channel: "g".into(),
        from: "alice".into(),
        client_msg_id: format!("m{seq}"),
        seq,
        message_id: seq,
        payload: Bytes::from(format!("{{\"n\":{seq}}}")),
        flags: FLAG_JSON_PAYLOAD,
    }));
    let opts = opts()
        .with_segment_bytes(16 << 10)
        .with_index_interval_bytes(256);
    let log = Log::open(data.join("log"), opts).await.unwrap();
    for (i, e) in evs.iter().enumerate() {
        log.append_one(Envelope::new(1_000 + i as u64, e.clone()).encode())
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["rebuild", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let seg = data.join("log").join(format!("{:020}.log", 0));
    let next = common::names_in(&data.join("log"))
        .iter()
        .filter(|n| n.ends_with(".log"))
        .count();
    assert!(next >= 2, "segment 0 is sealed");
    let mut bytes = std::fs::read(&seg).unwrap();
    let starts = common::batch_starts(&bytes);
    assert!(starts.len() >= 3, "{}", starts.len());
    // Batch 1's record: not the segment's last (the check before it reads that one).
    bytes[starts[1] + 45] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let snaps = data.join("projections/snapshots");
    let listing = || common::names_in(&snaps);
    let before = listing();
    let (code, out, err) = tidings(&[
        "rebuild",
        "--data",
        d,
        "--projections-index-flush-entries",
        "3",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("cannot read")
            && err.contains("whole")
            && err.contains(&seg.display().to_string()),
        "{err}"
    );
    assert_eq!(listing(), before, "the snapshots stay in place");
}

/// `tier gc` on a `file://` store that does not exist says so and makes nothing (opening the
/// store made the directory: a mistyped path left a tree behind). Found by a black-box QA.
#[test]
fn tier_gc_on_a_missing_file_store_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/store");
    let url = format!("file://{}", missing.display());
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["tier", "gc", "--data", d, "--tier-url", &url]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no such directory"), "{err}");
    assert!(!dir.path().join("no").exists());
}

/// The bytes of every file under `dir`, by path.
fn file_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    tree(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// `cli` (what `tidings trace` printed) is `http` (what the HTTP call answered) but for
/// `pushes`, the sampled push records a server keeps in its memory only: the HTTP answer has
/// them (every message sampled, a recipient online), `tidings trace` never.
fn same_but_pushes(http: &Value, cli: &Value, what: &str) {
    assert!(
        !http["pushes"].as_array().unwrap().is_empty(),
        "{what}: sampled pushes in {http}"
    );
    assert_eq!(cli["pushes"], json!([]), "{what}: {cli}");
    let without = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("pushes");
        v
    };
    assert_eq!(without(cli), without(http), "{what}");
}

/// `tidings trace --data DIR CHANNEL SEQ` prints the JSON the admin's `GET
/// /v1/channels/{ref}/messages/{seq}/trace` answered, pretty-printed, apart from the sampled
/// pushes: on a stopped server's data directory (a group's messages, a recalled one, a person
/// channel named in either order; message 1 indexed in a sidecar the shutdown snapshot names,
/// which the trace reads from the data directory) and while the server runs. A seq or a channel
/// the data directory does not hold exits 1 naming it (`message_not_found`,
/// `channel_not_found`); `@uid` (a user's form, which the admin's call refuses) and a seq that is
/// not a number are usage errors (2). No file in the data directory changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_prints_what_the_http_trace_answered() {
    // Every message's pushes sampled; a message index sidecar every 3 messages.
    let server = Server::start(&[
        "--trace-sample-every",
        "1",
        "--projections-index-flush-entries",
        "3",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob", "carol"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    // Bob online (the pushes sampled), carol never (never delivered).
    let mut ws = Ws::connect(&server, &bob, "").await;
    for i in 1..=4 {
        api.send(&alice, "g", &format!("a{i}"), &format!("hello {i}"))
            .await;
    }
    let seq = |n: u64| Some(json!({"seq": n}));
    api.ok("POST", "/v1/channels/g/read", &bob, seq(1)).await;
    api.ok("POST", "/v1/channels/g/ack", &bob, seq(2)).await;
    api.ok("DELETE", "/v1/channels/g/messages/2", ADMIN, None)
        .await;
    api.send(&bob, "g", "b1", "a reply: bob has read up to it")
        .await;
    api.send(&alice, "@bob", "d1", "psst").await;
    api.send(&bob, "@alice", "d2", "psst back").await;
    // Pushed to bob (in log order): every push before it is recorded.
    loop {
        let m = ws.next_of("message").await;
        if m["channel"] == "@alice" && m["seq"] == 1 {
            break;
        }
    }
    ws.close().await;

    let cases = [("g", 1), ("g", 2), ("g", 4), ("p:alice:bob", 1)];
    let mut answered = Vec::new();
    for (channel, n) in cases {
        let path = format!("/v1/channels/{channel}/messages/{n}/trace");
        answered.push(api.ok("GET", &path, ADMIN, None).await);
    }
    // What the answers hold (so that the comparison below compares something).
    assert_eq!(answered[0]["delivered"][0]["uid"], "bob", "{}", answered[0]);
    assert_eq!(
        answered[0]["not_delivered"],
        json!(["carol"]),
        "{}",
        answered[0]
    );
    assert_eq!(answered[1]["recalled"], true, "{}", answered[1]);
    assert_eq!(answered[2]["read"][0]["uid"], "bob", "{}", answered[2]);

    let data = server.data.clone();
    let d = data.to_str().unwrap().to_owned();
    let trace = |channel: &str, n: &str| tidings(&["trace", "--data", d.as_str(), channel, n]);
    // While the server runs (read-only, as `verify`).
    let (code, out, err) = trace("g", "1");
    assert_eq!(code, 0, "{out}{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    same_but_pushes(&answered[0], &printed, "g 1, server running");

    let _dir = server.stop();
    // The shutdown snapshot has message 1 of g in a sidecar: the trace must read it from the
    // data directory's `projections/index`.
    let snaps = data.join("projections/snapshots");
    let (state, _) = snapshot::load_newest(&snaps).unwrap().unwrap();
    assert!(
        matches!(state.index.locate("g", 1, 1).as_slice(), [Located::Run(_)]),
        "{:?}",
        state.index.locate("g", 1, 1)
    );

    let before = (tree(&data), file_bytes(&data));
    for ((channel, n), http) in cases.iter().zip(&answered) {
        let (code, out, err) = trace(channel, &n.to_string());
        assert_eq!(code, 0, "{channel} {n}: {out}{err}");
        assert!(out.starts_with("{\n  \""), "pretty-printed: {out}");
        let printed: Value = serde_json::from_str(&out).unwrap();
        same_but_pushes(http, &printed, &format!("{channel} {n}"));
    }
    // A person channel's users in the other order name the same channel.
    let (code, out, err) = trace("p:bob:alice", "1");
    assert_eq!(code, 0, "{out}{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    same_but_pushes(&answered[3], &printed, "p:bob:alice 1");

    // Not held: exit 1, naming it.
    let (code, out, err) = trace("g", "99");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("message_not_found") && err.contains("message 99"),
        "{err}"
    );
    let (code, out, err) = trace("nope", "1");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("channel_not_found") && err.contains("\"nope\""),
        "{err}"
    );
    // Usage errors.
    let (code, _, err) = trace("@bob", "1");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p:{uid_a}:{uid_b}"), "{err}");
    let (code, _, err) = trace("g", "x");
    assert_eq!(code, 2, "{err}");
    // An invalid id: told as the admin names channels (no `@uid`, which it refuses).
    let (code, _, err) = trace("bad chan", "1");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("p:{uid_a}:{uid_b}") && !err.contains("@uid"),
        "{err}"
    );

    assert_eq!((tree(&data), file_bytes(&data)), before, "no file changed");

    // The sidecar damaged: the trace fails naming the data directory's file, not the link to
    // it in a temporary directory gone once the command ends (found by a QA round).
    let located = state.index.locate("g", 1, 1);
    let [Located::Run(run)] = located.as_slice() else {
        unreachable!()
    };
    let sidecar =
        tidings_projections::msgindex::sidecar_path(&data.join("projections/index"), run.file);
    let mut bytes = std::fs::read(&sidecar).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&sidecar, &bytes).unwrap();
    let (code, out, err) = trace("g", "1");
    assert_eq!(code, 1, "{out}{err}");
    let named = std::path::absolute(&sidecar).unwrap();
    assert!(err.contains(&named.display().to_string()), "{err}");
}

/// `verify` on the data directory of a server that takes writes and writes a snapshot every
/// second: a snapshot written after verify's view of the log was opened covers offsets past
/// that view's end, and was taken for a log that lost them ("the log lost events after this
/// snapshot was taken", exit 1: 7 of 25 runs in a QA round on a log of 85k records). The
/// newest snapshot is read before the log is opened now: every run is clean. (The window is
/// a few ms on a state this size: this passed on the old build here too, a check that verify
/// on a live directory stays clean rather than a reproduction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_on_a_running_server_writing_snapshots_finds_nothing_wrong() {
    let server = Server::start(&[
        "--projections-snapshot-interval-secs",
        "1",
        "--limits-sends-per-second",
        "100000",
        "--limits-new-person-channels-per-hour",
        "100000",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    // A state and a log of some size: verify's window between reading the snapshot and
    // opening the log grows with them (snapshots decoded, the log's tail read).
    let mut filling = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (api, alice) = (Api::new(&server), alice.clone());
        filling.spawn(async move {
            for i in 0..250 {
                api.send(&alice, &format!("@u{t}x{i}"), "", "x").await;
            }
        });
    }
    filling.join_all().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sending = {
        let (stop, api, alice) = (stop.clone(), Api::new(&server), alice.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                api.send(&alice, "g", &format!("m{n}"), "x").await;
            }
            n
        })
    };
    let d = server.data.to_str().unwrap().to_owned();
    // Runs for 4 s: across several snapshots (a run takes a few ms).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut runs = 0;
    while std::time::Instant::now() < until {
        runs += 1;
        let d = d.clone();
        let (code, out, err) =
            tokio::task::spawn_blocking(move || tidings(&["verify", "--data", d.as_str()]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("ok"), "{out}");
    }
    stop.cancel();
    let sent = sending.await.unwrap();
    assert!(sent > 8 && runs > 8, "{sent} sends, {runs} runs");
}

/// A running server's data directory stays its own when its `LOCK` files are deleted (a
/// "stale lock" cleanup): the directories are locked too. Before, a second process created
/// new `LOCK` files and took them — a second server on the same directory acknowledged sends
/// under the seqs and offsets the first gave others.
#[tokio::test]
async fn deleting_the_lock_files_of_a_running_server_lets_no_second_writer_in() {
    let server = Server::start(&[]);
    let data = server.data.clone();
    std::fs::remove_file(data.join("LOCK")).unwrap();
    std::fs::remove_file(data.join("log").join("LOCK")).unwrap();
    let d = data.to_str().unwrap();
    let (code, _, err) = tidings(&["rebuild", "--data", d]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another tidings process"), "{err}");
    let (code, _, err) = tidings(&["compact", "--data", d]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another tidings process"), "{err}");
}

/// `inspect` names what a cut-short rewrite, a tier purge, a start under other settings or a
/// cut-short snapshot write left beside the log and the snapshots (it said nothing of them),
/// without counting them as problems or touching them.
#[tokio::test]
async fn inspect_names_the_leftovers_it_finds_and_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &events()).await;
    let log_dir = dir.path().join("log");
    let snaps = dir.path().join("projections/snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    let left = [
        log_dir.join(format!("{:020}.log.rewrite", 0)),
        log_dir.join(format!("{:020}.log.reupload", 0)),
        log_dir.join(format!("{:020}.log.purge", 0)),
        log_dir.join("stray.log"),
        snaps.join(format!("{:020}.snap.other-settings", 3)),
        snaps.join(format!("{:020}.1.snap.ahead-of-log", 3)),
        snaps.join(format!("{:020}.snap.other-history", 3)),
        snaps.join(format!(".{:020}.snap.tmp", 9)),
    ];
    for f in &left {
        std::fs::write(f, b"x").unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let kinds = [
        "rewrite in progress or cut short",
        "not in the object store yet",
        "purge of a segment held only in the object store",
        "not part of the log",
        "other projections settings",
        "events the log no longer held",
        "another history",
        "snapshot write in progress or cut short",
    ];
    for (f, kind) in left.iter().zip(kinds) {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("other file {}:", f.display())))
            .unwrap_or_else(|| panic!("{} not named: {out}", f.display()));
        assert!(line.contains(kind), "{line}");
        assert!(f.exists(), "{}", f.display());
    }
}

/// A segment file removed from between two others: `inspect` names the missing offsets, not
/// the whole segment before them as corrupt ("batch base offset …, expected …" at its end:
/// QA), and still exits 1.
#[tokio::test]
async fn inspect_names_the_offsets_of_a_removed_middle_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions::default().with_segment_bytes(4096);
    let log = Log::open(dir.path().join("log"), opts).await.unwrap();
    for i in 0..200u64 {
        log.append_one(Bytes::from(vec![i as u8; 100]))
            .await
            .unwrap();
    }
    let segs = log.segments().unwrap();
    log.close().await.unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    let (before, gone, after) = (&segs[0], &segs[1], &segs[2]);
    for ext in ["log", "index", "timeindex"] {
        let f = dir
            .path()
            .join("log")
            .join(format!("{:020}.{ext}", gone.base_offset));
        let _ = std::fs::remove_file(f);
    }
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&before.base_offset.to_string()))
        .unwrap();
    assert!(
        line.contains(&format!(
            "offsets {} to {} are missing",
            gone.base_offset, after.base_offset
        )) && !line.contains("CORRUPT"),
        "{out}"
    );
}

/// `rebuild --sidecars` makes again, byte for byte, the message index sidecars that fail their
/// check (one damaged in place, which the server's start does not see; one deleted), from the
/// log alone: no snapshot changes, `inspect` is clean after it, a second run finds nothing,
/// and projections settings given beside it are not read.
#[tokio::test]
async fn rebuild_sidecars_mends_only_the_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_log(&data, &events()).await;
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&[
        "rebuild",
        "--data",
        d,
        "--projections-index-flush-entries",
        "3",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let index = data.join("projections/index");
    let sidecars = file_bytes(&index);
    assert!(sidecars.len() >= 6, "{}", sidecars.len());
    let snapshots = file_bytes(&data.join("projections/snapshots"));
    let mut paths = sidecars.keys();
    let (damaged, deleted) = (paths.next().unwrap(), paths.nth(2).unwrap());
    let mut bytes = sidecars[damaged].clone();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(damaged, bytes).unwrap();
    std::fs::remove_file(deleted).unwrap();
    let (code, out, _) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tidings rebuild --sidecars"), "{out}");
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tidings rebuild --sidecars"), "{out}");

    let (code, out, err) = tidings(&["rebuild", "--data", d, "--sidecars"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("made again: ").count(), 2, "{out}");
    assert!(out.contains("2 of the sidecars"), "{out}");
    assert!(!out.contains("applied"), "no replay: {out}");
    assert_eq!(file_bytes(&index), sidecars);
    assert_eq!(file_bytes(&data.join("projections/snapshots")), snapshots);
    let (code, out, _) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = tidings(&["rebuild", "--data", d, "--sidecars"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 of the sidecars"), "{out}");
    // Projections settings are not read: each sidecar is made as its snapshot records it.
    let (code, out, err) = tidings(&[
        "rebuild",
        "--data",
        d,
        "--sidecars",
        "--projections-index-flush-entries",
        "4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 of the sidecars"), "{out}");
    // But settings `serve` would refuse, or a config file that is not there, are refused (it
    // took them: QA).
    for bad in [
        ["--projections-index-flush-entries", "0"],
        ["--config", "/nonexistent/tidings.toml"],
    ] {
        let mut args = vec!["rebuild", "--data", d, "--sidecars"];
        args.extend(bad);
        let (code, out, err) = tidings(&args);
        assert_ne!(code, 0, "{bad:?}: {out}{err}");
    }
    let (code, _, _) = tidings(&["rebuild", "--data", d, "--sidecars", "--from-snapshot"]);
    assert_eq!(code, 2);

    // A snapshot past the log's end (a power cut's under fsync never: the server sets it
    // aside) naming a sidecar that is not there: inspect says so, and checks the sidecars of
    // the one the server would load (it called this one's missing sidecar corrupt and advised
    // a mend that could not help).
    std::fs::write(data.join("log/fsync-policy"), "never 0 0").unwrap();
    let snaps = data.join("projections/snapshots");
    let mut ahead = snapshot::load_newest(&snaps).unwrap().unwrap().0;
    ahead.applied = Some(1000);
    ahead
        .index
        .sidecars
        .push(tidings_projections::msgindex::Sidecar {
            first_offset: 999,
            last_offset: 999,
            entries: 1,
            crc: 0,
        });
    std::fs::write(
        snapshot::snapshot_path(&snaps, 1000),
        snapshot::encode(&ahead).unwrap(),
    )
    .unwrap();
    let (code, out, _) = tidings(&["inspect", "--data", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("past the log's end"), "{out}");
}

/// `--data` naming a file: every command that reads a data directory refuses it as a usage
/// error (exit 2) naming it, and leaves the file as it was. They failed later naming a path
/// under it (`list FILE/projections/snapshots: Not a directory`, `no log segments in
/// FILE/log`; a QA round).
#[test]
fn a_data_path_that_is_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a data directory").unwrap();
    let f = file.to_str().unwrap();
    for cmd in [
        &["inspect"][..],
        &["verify"],
        &["replay"],
        &["rebuild"],
        &["compact"],
        &["trace", "g", "1"],
        &["tier", "status"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--data", f]);
        let (code, out, err) = tidings(&args);
        assert_eq!(code, 2, "{cmd:?}: {out}{err}");
        assert!(
            err.contains(&format!("{f} is not a directory")),
            "{cmd:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a data directory");
}
