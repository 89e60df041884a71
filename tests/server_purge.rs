//! The server's background purge of recalled messages' payloads
//! (`compaction.purge_interval_secs`), end to end: a real server with small segments and a pass
//! every second takes messages over HTTP, recalls some (a group's head by the admin, a person
//! to person one by its sender) and seals their segments with filler. While it runs, no
//! segment file comes to hold a recalled message's bytes while every kept one's stay, and it
//! answers as before; stopped, `verify` and `inspect` pass; restarted, it sets nothing aside
//! and answers the same. Every edit of a recalled message goes with its send (the log written
//! before the server starts, with edits at chosen places). A tiered server purges its local
//! copies and the object store's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    ADMIN, Api, Server, answers_about_g, metric, seal_past, sent_offset, tidings,
    tiered_with_a_sealed_recall, tree,
};
use serde_json::json;
use tidings_log::{Log, LogOptions};
use tidings_projections::{ChannelFlags, Envelope, Event, FLAG_JSON_PAYLOAD};

/// Small segments (a few hundred messages seal some), no send limit in the way, a purge pass
/// every second.
const ARGS: [&str; 6] = [
    "--log-segment-bytes",
    "16384",
    "--limits-sends-per-second",
    "100000",
    "--compaction-purge-interval-secs",
    "1",
];

/// The recalled messages' markers: in a group, the group's head, person to person.
const RECALLED: [&str; 3] = ["RECALLED-1-k3Qd", "RECALLED-HEAD-b5Wy", "RECALLED-DM-v8Ns"];

/// The markers of messages that stay.
const KEPT: [&str; 2] = ["KEPT-ONE-r2Gm", "KEPT-TWO-x7Tc"];

/// A message edited twice, then recalled: the markers of its send and of its two edits.
const EDITED_RECALLED: [&str; 3] = ["GONE-SEND-q4Lz", "GONE-FIRST-n6Jc", "GONE-SECOND-w9Hp"];

/// A message edited twice that stays: the markers of its send and of its two edits.
const EDITED_KEPT: [&str; 3] = ["STAYS-SEND-d3Vr", "STAYS-FIRST-m8Xe", "STAYS-SECOND-t5Bk"];

/// Whether the file at `path` holds `needle` (one the log removed meanwhile does not).
fn holds(path: &Path, needle: &[u8]) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The segment files (`*.log` under `DATA/log`) holding `marker`. A file the log replaces
/// meanwhile (a rewrite's rename) is read as it is then, old or new.
fn segments_holding(data: &Path, marker: &str) -> Vec<PathBuf> {
    tree(&data.join("log"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| holds(p, marker.as_bytes()))
        .collect()
}

/// The segment objects in the `file://` store at `bucket` that hold `marker`.
fn objects_holding(bucket: &Path, marker: &str) -> Vec<PathBuf> {
    tree(&bucket.join("segments"))
        .into_iter()
        .filter(|p| p.is_file() && holds(p, marker.as_bytes()))
        .collect()
}

/// Waits (30 s at most) until no segment file holds any of `markers` and the server counts
/// `records` records purged.
async fn wait_for_purge(server: &Server, markers: &[&str], records: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<&str> = markers
            .iter()
            .copied()
            .filter(|m| !segments_holding(&server.data, m).is_empty())
            .collect();
        let purged = metric(server, "tidings_purged_records_total").await;
        if left.is_empty() && purged == records {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in a segment after 30 s: {left:?}; {purged} records purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (`within`) until a tiered server counts a record purged and no segment file holds
/// `RECALLED[0]` — nor, with `store_too`, any object in the `file://` store at `bucket`.
async fn wait_for_tiered_purge(server: &Server, bucket: &Path, store_too: bool, within: Duration) {
    let in_store = || objects_holding(bucket, RECALLED[0]);
    let deadline = Instant::now() + within;
    loop {
        let purged = metric(server, "tidings_purged_records_total").await;
        if purged >= 1
            && (!store_too || in_store().is_empty())
            && segments_holding(&server.data, RECALLED[0]).is_empty()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "purged {purged}; holding it: local {:?}, store {:?}",
            segments_holding(&server.data, RECALLED[0]),
            in_store()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A JSON payload `{"text": said}`, as the API stores one.
fn json_text(said: &str) -> Bytes {
    Bytes::from(format!(r#"{{"text":"{said}"}}"#))
}

/// Alice's message `seq` in group `g`, saying `said`.
fn sent(seq: u64, said: &str) -> Event {
    Event::MessageSent {
        channel: "g".into(),
        from: "alice".into(),
        client_msg_id: format!("c{seq}"),
        seq,
        message_id: seq,
        payload: json_text(said),
        flags: FLAG_JSON_PAYLOAD,
    }
}

/// Alice's edit of message `seq` of group `g`, to say `said`.
fn edited(seq: u64, said: &str) -> Event {
    Event::MessageEdited {
        channel: "g".into(),
        seq,
        by: "alice".into(),
        payload: json_text(said),
        flags: FLAG_JSON_PAYLOAD,
    }
}

/// Group `id` with `members`.
fn group(id: &str, members: &[&str]) -> [Event; 2] {
    [
        Event::ChannelCreated {
            channel: id.into(),
            flags: ChannelFlags::default(),
        },
        Event::MembersSubscribed {
            channel: id.into(),
            uids: members.iter().map(|m| m.to_string()).collect(),
        },
    ]
}

/// Writes `events` as the log of data directory `data` (no server running): the offset of
/// the last.
async fn write_log(data: &Path, events: Vec<Event>) -> u64 {
    let log = Log::open(data.join("log"), LogOptions::default())
        .await
        .unwrap();
    let mut last = 0;
    for (ts, event) in (1_764_000_000_000u64..).zip(events) {
        last = log
            .append_one(Envelope::new(ts, event).encode())
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_purges_recalled_payloads_from_sealed_segments() {
    let server = Server::start(&ARGS);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mut targets = Vec::new();
    api.send(&alice, "g", "k1", KEPT[0]).await;
    targets.push(sent_offset(&api.send(&alice, "g", "r1", RECALLED[0]).await));
    api.send(&alice, "g", "k2", KEPT[1]).await;
    targets.push(sent_offset(
        &api.send(&alice, "g", "r-head", RECALLED[1]).await,
    ));
    targets.push(sent_offset(
        &api.send(&alice, "@bob", "r-dm", RECALLED[2]).await,
    ));
    api.ok("DELETE", "/v1/channels/g/messages/2", &alice, None)
        .await;
    // The head, by the admin.
    api.ok("DELETE", "/v1/channels/g/messages/4", ADMIN, None)
        .await;
    api.ok("DELETE", "/v1/channels/@bob/messages/1", &alice, None)
        .await;
    // Passes run meanwhile: the first ones find the records in the active segment and leave
    // them for a later pass.
    seal_past(&api, &server, &alice, *targets.iter().max().unwrap()).await;
    let before = answers_about_g(&api, &bob, None, &[2, 3]).await;
    let history = &before["history"];
    assert!(history.contains(KEPT[0]), "{history}");
    assert!(history.contains(r#""recalled":true"#), "{history}");
    for (what, answer) in &before {
        assert!(!answer.contains("RECALLED-"), "{what}: {answer}");
    }

    // Within 30 s, no segment holds a recalled message's bytes, and the counter says so.
    wait_for_purge(&server, &RECALLED, 3).await;
    for marker in KEPT {
        let found = segments_holding(&server.data, marker);
        assert!(!found.is_empty(), "{marker}");
    }
    assert!(metric(&server, "tidings_purge_passes_total").await > 0);
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    assert_eq!(answers_about_g(&api, &bob, None, &[2, 3]).await, before);

    let data = server.data.clone();
    let d = data.to_str().unwrap();
    let _dir = server.stop();
    // The watermark is kept for the next start, past every recall (each made after its send),
    // with the anchor of the record there.
    let kept = std::fs::read_to_string(data.join("projections/purge-watermark")).unwrap();
    let fields: Vec<&str> = kept.split_whitespace().collect();
    assert_eq!(fields.len(), 2, "{kept:?}");
    let watermark: u64 = fields[0].parse().unwrap();
    assert!(watermark > *targets.iter().max().unwrap(), "{kept:?}");
    assert!(u32::from_str_radix(fields[1], 16).is_ok(), "{kept:?}");
    for cmd in ["verify", "inspect"] {
        let (code, out, err) = tidings(&[cmd, "--data", d]);
        assert_eq!(code, 0, "{cmd}: {out}{err}");
    }
    // Restarted: the snapshots are this log's (none set aside), the answers the same, and the
    // first pass finds the records purged already.
    let server = Server::start_on(&data, &ARGS);
    let api = Api::new(&server);
    let snapshots = tree(&data.join("projections/snapshots"));
    assert!(
        snapshots
            .iter()
            .all(|p| !p.to_string_lossy().contains(".snap.")),
        "{snapshots:?}"
    );
    assert_eq!(answers_about_g(&api, &bob, None, &[2, 3]).await, before);
    for marker in RECALLED {
        assert_eq!(segments_holding(&data, marker), Vec::<PathBuf>::new());
    }
    // A retry of a purged message's send is still answered as its duplicate.
    let text = RECALLED[0];
    let retry = json!({"channel": "g", "client_msg_id": "r1", "payload": {"text": text}});
    let (status, again) = api.call("POST", "/v1/messages", &alice, Some(retry)).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["seq"], 2, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
}

/// A pass whose share of records is one byte (`compaction.purge_share_bytes = 1`) reads,
/// plans and rewrites one segment's targets at a time (each recalled message here sealed in a
/// segment of its own): every recalled payload goes, every kept one stays, and the watermark
/// moves past every recall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_purges_share_by_share() {
    let mut args = ARGS.to_vec();
    args.extend(["--compaction-purge-share-bytes", "1"]);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let markers: Vec<String> = (0..6).map(|i| format!("SHARED-OUT-{i}-p3Kw")).collect();
    let mut last = 0;
    for (i, marker) in markers.iter().enumerate() {
        api.send(&alice, "g", &format!("k{i}"), KEPT[i % 2]).await;
        let sent = api.send(&alice, "g", &format!("r{i}"), marker).await;
        last = sent_offset(&sent);
        seal_past(&api, &server, &alice, last).await;
    }
    for seq in (2..=12).step_by(2) {
        api.ok(
            "DELETE",
            &format!("/v1/channels/g/messages/{seq}"),
            &alice,
            None,
        )
        .await;
    }
    seal_past(&api, &server, &alice, last).await;
    let refs: Vec<&str> = markers.iter().map(String::as_str).collect();
    wait_for_purge(&server, &refs, 6).await;
    for marker in KEPT {
        assert!(
            !segments_holding(&server.data, marker).is_empty(),
            "{marker}"
        );
    }
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    // Past the six recalls, written after the last send.
    let watermark = || {
        let kept = std::fs::read_to_string(server.data.join("projections/purge-watermark")).ok()?;
        kept.split_whitespace().next()?.parse::<u64>().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while watermark().is_none_or(|w| w < last + 6) {
        assert!(
            Instant::now() < deadline,
            "watermark {:?}, last send {last}",
            watermark()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}

/// A message edited twice and then recalled has its send and both its edits purged (until
/// 2026-11-30 the earlier edit's payload stayed: the projections kept the latest edit's offset
/// only), while another message edited twice keeps all three records and is read with its
/// latest edit; stopped, `verify` and `inspect` pass. The log is written first (the edits at
/// chosen places), and the server started on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edit_of_a_recalled_message_is_purged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut events = Vec::new();
    events.extend(group("g", &["alice", "bob"]));
    events.extend(group("f", &["alice"]));
    events.extend([
        sent(1, EDITED_RECALLED[0]),
        sent(2, EDITED_KEPT[0]),
        edited(1, EDITED_RECALLED[1]),
        edited(2, EDITED_KEPT[1]),
        edited(1, EDITED_RECALLED[2]),
        edited(2, EDITED_KEPT[2]),
        Event::MessageRecalled {
            channel: "g".into(),
            seq: 1,
            by: "alice".into(),
        },
    ]);
    let recall = write_log(&data, events).await;
    let server = Server::start_on(&data, &ARGS);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    seal_past(&api, &server, &alice, recall).await;

    // The send and both edits: three records.
    wait_for_purge(&server, &EDITED_RECALLED, 3).await;
    for marker in EDITED_KEPT {
        assert!(!segments_holding(&data, marker).is_empty(), "{marker}");
    }
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    let history = api
        .text("/v1/channels/g/messages?after_seq=0&limit=100", &bob)
        .await;
    assert!(history.contains(r#""recalled":true"#), "{history}");
    assert!(history.contains(EDITED_KEPT[2]), "{history}");
    for marker in [EDITED_KEPT[0], EDITED_KEPT[1]] {
        assert!(!history.contains(marker), "{history}");
    }
    assert!(!history.contains("GONE-"), "{history}");

    let d = data.to_str().unwrap();
    server.stop();
    for cmd in ["verify", "inspect"] {
        let (code, out, err) = tidings(&[cmd, "--data", d]);
        assert_eq!(code, 0, "{cmd}: {out}{err}");
    }
}

/// A tiered server keeping no local copy of an uploaded segment purges the store's: the pass
/// (its first one four seconds after the start, by then the segment is uploaded and its local
/// copy deleted) rewrites it from cold reads and uploads the rewrite in place of its objects —
/// no local file holds the recalled bytes afterwards, no pass failed, and once the server
/// stopped (the replaced objects are deleted a minute after the rewrite, or at the stop) no
/// object does either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_server_purges_a_segment_only_in_the_store() {
    let bucket = tempfile::tempdir().unwrap();
    let args = [
        "--log-segment-bytes",
        "16384",
        "--limits-sends-per-second",
        "100000",
        "--compaction-purge-interval-secs",
        "4",
        "--tier-local-retention-bytes",
        "0",
    ];
    let (server, _api, _alice) =
        tiered_with_a_sealed_recall(bucket.path(), &args, RECALLED[0]).await;
    let in_store = || objects_holding(bucket.path(), RECALLED[0]);
    wait_for_tiered_purge(&server, bucket.path(), false, Duration::from_secs(40)).await;
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    // The replaced objects go a minute after the rewrite (a reader of the old segment may
    // still fetch them), or at the stop: then no object holds the bytes.
    server.stop();
    assert_eq!(in_store(), Vec::<PathBuf>::new());
}

/// A tiered server purges too: the sealed segment holding the recalled message, uploaded and
/// kept locally, is rewritten and goes up again under new objects — neither the local copy
/// nor any object in the store holds the recalled bytes afterwards (the old objects are
/// deleted), no pass fails, and history still shows the message as recalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_server_purges_its_copies_and_the_stores() {
    let bucket = tempfile::tempdir().unwrap();
    let (server, api, alice) = tiered_with_a_sealed_recall(bucket.path(), &ARGS, RECALLED[0]).await;
    // Uploaded first: the store holds the recalled bytes until the purge.
    wait_for_tiered_purge(&server, bucket.path(), true, Duration::from_secs(30)).await;
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    assert!(
        !tree(&server.data.join("log"))
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".reupload"))
    );
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=10",
            &alice,
            None,
        )
        .await;
    assert_eq!(page["messages"][0]["recalled"], true, "{page}");
}

/// A recall the object store does not hold yet is not acted on: with the send's segment
/// sealed and uploaded and the recall in the active segment (uploaded only once sealed), the
/// send keeps its bytes, in the directory and in the store, through three passes; once the
/// recall's segment is sealed and uploaded, a pass purges both. Until 2026-12-03 the first
/// pass purged it: a restore from the store then read a send with its words zeroed and no
/// recall after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_server_purges_a_message_once_the_store_holds_its_recall() {
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let mut args = vec![
        "--tier-url",
        url.as_str(),
        "--tier-upload-interval-secs",
        "1",
    ];
    args.extend(ARGS);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let sent = api.send(&alice, "g", "r1", RECALLED[0]).await;
    seal_past(&api, &server, &alice, sent_offset(&sent)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while objects_holding(bucket.path(), RECALLED[0]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the send's segment was never uploaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.ok("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    let after = api.send(&alice, "g", "r2", "after the recall").await;
    let passes = metric(&server, "tidings_purge_passes_total").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server, "tidings_purge_passes_total").await < passes + 3 {
        assert!(Instant::now() < deadline, "no three passes in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, "tidings_purged_records_total").await, 0);
    assert!(!segments_holding(&server.data, RECALLED[0]).is_empty());
    assert!(!objects_holding(bucket.path(), RECALLED[0]).is_empty());
    seal_past(&api, &server, &alice, sent_offset(&after)).await;
    wait_for_tiered_purge(&server, bucket.path(), true, Duration::from_secs(30)).await;
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
}

/// A tiered server started again after a kill -9 waits out the lease of the process before
/// it: its purge passes meanwhile rewrite nothing and count no failure (each counted one,
/// every interval, until 2026-12-03: an alert on the counter fired after every crash); once
/// it holds the prefix, a pass purges what the store holds the recall of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_server_waiting_for_its_lease_counts_no_purge_failure() {
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let tier = [
        "--tier-url",
        url.as_str(),
        "--tier-upload-interval-secs",
        "1",
        "--tier-lease-secs",
        "10",
        "--log-segment-bytes",
        "16384",
        "--limits-sends-per-second",
        "100000",
    ];
    let mut args = tier.to_vec();
    args.extend(["--compaction-purge-interval-secs", "0"]);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    api.send(&alice, "g", "r1", RECALLED[0]).await;
    api.ok("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    let after = api.send(&alice, "g", "r2", "after the recall").await;
    seal_past(&api, &server, &alice, sent_offset(&after)).await;
    let status = || async { api.ok("GET", "/v1/tier", ADMIN, None).await };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status().await["status"]["remote_end"].as_u64().unwrap() <= sent_offset(&after) {
        assert!(
            Instant::now() < deadline,
            "the recall's segment was never uploaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data = server.data.clone();
    let _dir = server.kill();
    let mut args = tier.to_vec();
    args.extend(["--compaction-purge-interval-secs", "1"]);
    let server = Server::start_on(&data, &args);
    let api = Api::new(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server, "tidings_purge_passes_total").await < 3 {
        assert!(Instant::now() < deadline, "no three passes in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tier = api.ok("GET", "/v1/tier", ADMIN, None).await;
    assert_eq!(tier["status"]["claimed"], false, "{tier}");
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
    wait_for_tiered_purge(&server, bucket.path(), true, Duration::from_secs(40)).await;
    assert_eq!(metric(&server, "tidings_purge_failures_total").await, 0);
}

/// A rewrite that fails does not hold back the purge's watermark for what came before it, and
/// damage never holds it (until 2026-11-30 one failed rewrite kept the whole pass's watermark,
/// and a damaged segment failed every pass for good). Three sealed segments hold a recalled
/// message each: the first also holds a batch with a flipped bit (the server started once
/// before it was damaged, so no replay reads it), the second's rewrite fails while a directory
/// stands where its temporary file goes, the third is purged. The watermark kept is then just
/// below the blocked message's recall; once the directory is gone the next pass purges the
/// second segment and the watermark moves past every recall, the damaged segment still
/// unpurged (its recalled bytes stay: nothing can rewrite it) and counted as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rewrite_holds_the_watermark_only_below_it_and_damage_never() {
    const DAMAGED: &str = "DAMAGED-SEGMENT-h2Kw";
    const FLIPPED: &str = "FLIPPED-BATCH-p7Rs";
    const BLOCKED: &str = "BLOCKED-REWRITE-z5Dq";
    const LATER: &str = "LATER-SEGMENT-c9Fn";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let recall = |seq| Event::MessageRecalled {
        channel: "g".into(),
        seq,
        by: "alice".into(),
    };
    // Segments: [0, 6) with the damaged one's send at 4 and the batch to flip at 5; [6, 7);
    // [7, 8); the recalls at 8, 9 and 10.
    let mut segments = vec![group("g", &["alice", "bob"]).to_vec()];
    segments[0].extend(group("f", &["alice"]));
    segments[0].extend([sent(1, DAMAGED), sent(2, FLIPPED)]);
    segments.push(vec![sent(3, BLOCKED)]);
    segments.push(vec![sent(4, LATER)]);
    segments.push(vec![recall(1), recall(3), recall(4)]);
    let log = Log::open(data.join("log"), LogOptions::default())
        .await
        .unwrap();
    for (ts, events) in (1_764_000_000_000u64..).step_by(10).zip(segments) {
        for event in events {
            log.append_one(Envelope::new(ts, event).encode())
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
    }
    log.close().await.unwrap();
    // Started once with the purge off: its snapshot at the stop holds the state, so the next
    // start replays nothing before it.
    let mut args = ARGS;
    args[5] = "0";
    Server::start_on(&data, &args).stop();
    let first = data.join("log").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes
        .windows(FLIPPED.len())
        .position(|w| w == FLIPPED.as_bytes())
        .unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&first, bytes).unwrap();

    args[5] = "2";
    let server = Server::start_on(&data, &args);
    let blocker = data.join("log").join(format!("{:020}.log.rewrite", 6));
    std::fs::create_dir(&blocker).unwrap();
    let watermark = || {
        let kept = std::fs::read_to_string(data.join("projections/purge-watermark")).ok()?;
        kept.split_whitespace().next()?.parse::<u64>().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(segments_holding(&data, LATER).is_empty() && watermark().is_some()) {
        assert!(Instant::now() < deadline, "watermark {:?}", watermark());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Just below the recall of the blocked message (at 9).
    assert_eq!(watermark(), Some(8));
    assert!(metric(&server, "tidings_purge_failures_total").await > 0);
    assert!(!segments_holding(&data, BLOCKED).is_empty());
    std::fs::remove_dir(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(segments_holding(&data, BLOCKED).is_empty() && watermark() >= Some(10)) {
        assert!(Instant::now() < deadline, "watermark {:?}", watermark());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, "tidings_purged_records_total").await, 2);
    assert!(!segments_holding(&data, DAMAGED).is_empty());
    server.stop();
}
