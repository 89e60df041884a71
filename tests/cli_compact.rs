//! `tidings compact` end to end: a real server process takes messages over real HTTP (JSON,
//! binary, longer than a preview, person to person), recalls some of them (the channel's head
//! too) with a snapshot and cached conversation lists taken between the sends and the recalls;
//! stopped, the directory is compacted, and no file under it holds a recalled message's bytes
//! while every other message's remain. The server then answers as before, byte for byte; a
//! second compact changes nothing; compact is refused while the server runs and on a tiered
//! data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    ADMIN, Api, Server, answers_about_g, seal_past, sent_offset, tidings,
    tiered_with_a_sealed_recall, tree,
};
use serde_json::{Value, json};

/// Small segments, so that a few hundred messages seal some; no send limit in the way; the
/// smallest conversation cache (its files are read whole by the search below).
const ARGS: [&str; 6] = [
    "--log-segment-bytes",
    "16384",
    "--limits-sends-per-second",
    "100000",
    "--cache-conversation-disk-bytes",
    "16777216",
];

/// The recalled messages' markers (JSON, binary, long, the head, person to person).
const RECALLED: [&str; 5] = [
    "RECALLED-JSON-q7Zp",
    "RECALLED-BIN-w3Xk",
    "RECALLED-BIG-m4Rt",
    "RECALLED-HEAD-t8Vn",
    "RECALLED-DM-c2Lj",
];

/// The markers of messages that stay.
const KEPT: [&str; 2] = ["KEPT-ONE-h5Bw", "KEPT-TWO-p9Fy"];

/// The bytes of every file under `dir` that `pick` picks, by path.
fn contents(dir: &Path, pick: impl Fn(&Path) -> bool) -> BTreeMap<PathBuf, Vec<u8>> {
    tree(dir)
        .into_iter()
        .filter(|p| p.is_file() && pick(p.as_path()))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The files (of `files`, as read by [`contents`]) whose bytes hold `needle`.
fn holding<'a>(files: &'a BTreeMap<PathBuf, Vec<u8>>, needle: &str) -> Vec<&'a PathBuf> {
    let needle = needle.as_bytes();
    files
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
        .collect()
}

/// Segment files and snapshot files.
fn segment_or_snapshot(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "log")
        || path
            .parent()
            .is_some_and(|d| d.file_name().is_some_and(|n| n == "snapshots"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_purges_recalled_payloads_from_every_file() {
    let server = Server::start(&ARGS);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    // The sends a compact purges.
    let mut targets = Vec::new();
    api.send(&alice, "g", "k1", KEPT[0]).await;
    targets.push(sent_offset(
        &api.send(&alice, "g", "r-json", RECALLED[0]).await,
    ));
    let mut bin = vec![0u8, 0xff];
    bin.extend_from_slice(RECALLED[1].as_bytes());
    bin.extend_from_slice(&[1, 2, 0xfe]);
    let b64 = B64.encode(&bin);
    let body = json!({"channel": "g", "client_msg_id": "r-bin", "payload_b64": b64});
    let (status, sent) = api.call("POST", "/v1/messages", &alice, Some(body)).await;
    assert_eq!(status, 201, "{sent}");
    targets.push(sent_offset(&sent));
    let big = format!("{} {}", RECALLED[2], "y".repeat(900));
    targets.push(sent_offset(&api.send(&alice, "g", "r-big", &big).await));
    api.send(&alice, "g", "k2", KEPT[1]).await;
    targets.push(sent_offset(
        &api.send(&alice, "g", "r-head", RECALLED[3]).await,
    ));
    targets.push(sent_offset(
        &api.send(&alice, "@bob", "r-dm", RECALLED[4]).await,
    ));
    // Lists showing the markers (the conversation cache holds them), and a snapshot holding the
    // head's preview: the shutdown's.
    let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert!(convs.to_string().contains(RECALLED[3]), "{convs}");
    api.ok("GET", "/v1/conversations", &alice, None).await;
    let server = server.restart();
    let api = Api::new(&server);
    for seq in [2, 3, 4] {
        let path = format!("/v1/channels/g/messages/{seq}");
        api.ok("DELETE", &path, &alice, None).await;
    }
    // The head, by the admin.
    api.ok("DELETE", "/v1/channels/g/messages/6", ADMIN, None)
        .await;
    api.ok("DELETE", "/v1/channels/@bob/messages/1", &alice, None)
        .await;
    api.ok("GET", "/v1/conversations", &bob, None).await;
    seal_past(&api, &server, &alice, *targets.iter().max().unwrap()).await;
    let before = answers_about_g(&api, &bob, Some(&alice), &[2, 5]).await;
    let history = &before["history"];
    assert!(history.contains(KEPT[0]), "{history}");
    assert!(history.contains(r#""recalled":true"#), "{history}");
    for (what, answer) in &before {
        assert!(!answer.contains("RECALLED-"), "{what}: {answer}");
    }
    let data = server.data.clone();
    let d = data.to_str().unwrap();
    let _dir = server.stop();
    // Every file under the data directory, read whole.
    let everything = contents(&data, |_| true);
    for marker in RECALLED {
        let found = holding(&everything, marker);
        assert!(!found.is_empty(), "{marker} is on disk before the compact");
    }

    // A dry run prints the plan and changes nothing.
    let (code, out, err) = tidings(&["compact", "--data", d, "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("to purge: 5 records"), "{out}");
    let after_dry_run = contents(&data, |_| true);
    assert!(after_dry_run == everything, "a dry run changed files");

    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("purged 5 records"), "{out}");
    let everything = contents(&data, |_| true);
    for marker in RECALLED {
        let found = holding(&everything, marker);
        assert_eq!(found, Vec::<&PathBuf>::new(), "{marker}: {out}");
    }
    for marker in KEPT {
        assert!(!holding(&everything, marker).is_empty(), "{marker}");
    }
    for cmd in ["verify", "inspect"] {
        let (code, out, err) = tidings(&[cmd, "--data", d]);
        assert_eq!(code, 0, "{cmd}: {out}{err}");
    }
    let (code, out, err) = tidings(&["replay", "--data", d]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for target in &targets {
        let line = lines.iter().find(|l| l["offset"] == *target).unwrap();
        assert_eq!(line["purged"], true, "{line}");
        assert!(line.get("payload").is_none(), "{line}");
        assert!(line.get("payload_b64").is_none(), "{line}");
    }
    let kept = lines.iter().find(|l| l["client_msg_id"] == "k1").unwrap();
    assert_eq!(kept["payload"]["text"], KEPT[0]);
    assert!(kept.get("purged").is_none(), "{kept}");

    // A second compact finds nothing to do, and changes no segment or snapshot.
    // Nothing left to purge: no file of the directory changes.
    let files = contents(&data, |_| true);
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to purge in sealed segments"), "{out}");
    assert!(out.contains("purged already: 5 records"), "{out}");
    assert!(contents(&data, |_| true) == files, "{out}");

    // The server starts from the fresh snapshot (this log's: nothing set aside) and answers as
    // before.
    let server = Server::start_on(&data, &ARGS);
    let api = Api::new(&server);
    let snapshots = tree(&data.join("projections/snapshots"));
    assert!(
        snapshots
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".other-history")),
        "{snapshots:?}"
    );
    assert_eq!(
        answers_about_g(&api, &bob, Some(&alice), &[2, 5]).await,
        before
    );
    // A retry of a purged message's send is still answered as its duplicate.
    let text = RECALLED[0];
    let retry = json!({"channel": "g", "client_msg_id": "r-json", "payload": {"text": text}});
    let (status, again) = api.call("POST", "/v1/messages", &alice, Some(retry)).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["seq"], 2, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    // Refused while the server runs.
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("in use"), "{err}");
    // Stopped again (the start trusted the conversation cache again and filled it): a run with
    // nothing to purge changes no file (before 2026-11-30 it marked the cache untrusted, and
    // the next start emptied it).
    server.stop();
    let files = contents(&data, |_| true);
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to purge in sealed segments"), "{out}");
    assert!(contents(&data, |_| true) == files, "{out}");
}

/// A tiered data directory is refused (its object store keeps copies the compact would not
/// reach), before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_refuses_a_tiered_data_directory() {
    let bucket = tempfile::tempdir().unwrap();
    let (server, api, _alice) =
        tiered_with_a_sealed_recall(bucket.path(), &ARGS, RECALLED[0]).await;
    api.ok("POST", "/v1/tier/upload", ADMIN, None).await;
    let data = server.data.clone();
    let _dir = server.stop();
    assert!(data.join("log/tier-manifest.json").exists());
    let segments = contents(&data, segment_or_snapshot);
    let (code, out, err) = tidings(&["compact", "--data", data.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("tiered data directory"), "{err}");
    assert!(contents(&data, segment_or_snapshot) == segments);
    // Without the manifest's local copy (a first tiered start killed after its claim, before
    // its first manifest write): the node id still marks it tiered.
    std::fs::remove_file(data.join("log/tier-manifest.json")).unwrap();
    let (code, out, err) = tidings(&["compact", "--data", data.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("node.id"), "{err}");
    assert!(contents(&data, segment_or_snapshot) == segments);
}

/// The server's background purge rewrote the recalled message's record, so a `compact` finds
/// no record left to purge; the snapshots written before the recall and the conversation
/// cache's lists still hold its preview, and the run removes them (it did nothing, exit 0,
/// and left them: found by a QA round). A second run then changes no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_after_the_background_purge_removes_the_old_copies() {
    const SECRET: &str = "TOPSECRET-preview-k8Qd";
    let mut args = ARGS.to_vec();
    args.extend([
        "--compaction-purge-interval-secs",
        "1",
        "--projections-snapshot-interval-secs",
        "1",
    ]);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let offset = sent_offset(&api.send(&alice, "g", "s1", SECRET).await);
    let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert!(convs.to_string().contains(SECRET), "{convs}");
    // A snapshot holding the preview (one is written every second while writes come).
    let snaps = server.data.join("projections/snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut tick = 0;
    while !snaps.exists() || holding(&contents(&snaps, |_| true), SECRET).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot with the preview"
        );
        tick += 1;
        api.send(&alice, "f", &format!("w{tick}"), "tick").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    api.ok("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    seal_past(&api, &server, &alice, offset).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::metric(&server, "tidings_purged_records_total").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the purge never ran");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let data = server.data.clone();
    let _dir = server.stop();
    let files = contents(&data, |_| true);
    let left: Vec<_> = holding(&files, SECRET)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .collect();
    assert!(!left.is_empty(), "the copies this test is about: none");
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to purge in sealed segments"), "{out}");
    let files = contents(&data, |_| true);
    assert!(holding(&files, SECRET).is_empty(), "{out}\n{left:?}");
    // Done: a second run changes no file.
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(contents(&data, |_| true) == files, "{out}");
    let (code, out, _) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}");
}

/// Damage in the active segment that valid batches follow (a recall among them) refuses the
/// compact, a dry run too, naming it, before anything changes. A read-only view ends the log at
/// such damage: a dry run said there was nothing to purge, and a run removed the conversation
/// cache's files, then failed at the writable open (found by a QA round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_refuses_damage_in_the_active_segment_before_changing_anything() {
    let server = Server::start(&ARGS);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.send(&alice, "g", "k1", KEPT[0]).await;
    api.send(&alice, "g", "d1", "DAMAGED-HERE-v6Qs").await;
    api.send(&alice, "g", "r1", RECALLED[0]).await;
    api.ok("DELETE", "/v1/channels/g/messages/3", &alice, None)
        .await;
    api.send(&alice, "g", "k2", KEPT[1]).await;
    api.ok("GET", "/v1/conversations", &bob, None).await;
    let data = server.data.clone();
    let d = data.to_str().unwrap();
    let _dir = server.stop();
    // One byte of the second message's payload, in the active segment (the last one).
    let active = tree(&data.join("log"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&active).unwrap();
    let at = bytes
        .windows(17)
        .position(|w| w == b"DAMAGED-HERE-v6Qs")
        .expect("the message is in the active segment");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&active, &bytes).unwrap();
    let everything = contents(&data, |_| true);
    for args in [
        &["compact", "--data", d, "--dry-run"][..],
        &["compact", "--data", d],
    ] {
        let (code, out, err) = tidings(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("valid batches follow a damaged one") && err.contains(".log"),
            "{args:?}: {err}"
        );
        assert!(!out.contains("nothing to purge"), "{args:?}: {out}");
        assert!(
            contents(&data, |_| true) == everything,
            "{args:?} changed files"
        );
    }
}

/// A dry run says what a run would do with the conversation cache's files, not that it is
/// doing it: it said "removing them" and then "nothing was changed" (QA). Here the recalled
/// message is in the active segment (nothing to purge in sealed segments) and no run removed
/// the cache's files since the recall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_says_what_a_run_would_remove() {
    let server = Server::start(&ARGS);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let (alice, bob) = (api.user("alice").await, api.user("bob").await);
    api.send(&alice, "g", "r1", RECALLED[0]).await;
    api.ok("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    api.ok("GET", "/v1/conversations", &bob, None).await;
    let data = server.data.clone();
    let d = data.to_str().unwrap();
    let _dir = server.stop();
    let said = "the conversation cache's files may hold recalled messages' previews";
    let (code, out, err) = tidings(&["compact", "--data", d, "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{said}: a run removes them")),
        "{out}"
    );
    assert!(!out.contains("removing"), "{out}");
    let (code, out, err) = tidings(&["compact", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{said}: removing them")), "{out}");
}
