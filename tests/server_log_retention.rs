//! The server's log retention (`compaction.retention_bytes`), end to end: a real server with
//! small segments, a snapshot and a retention pass every second takes messages over HTTP; the
//! retention removes the oldest segments until the sealed ones fit the bound, never below what
//! the newest two snapshots cover; reads serve what is retained; a restart starts from its
//! snapshot; stopped, `verify` passes by a rebuild from a snapshot. (With a tier:
//! `server_tier_retention.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ADMIN, Api, Server, listed, metric, page_seqs, tidings};

const BOUND: u64 = 40_000;

/// Small segments, a snapshot and a retention pass every second, a bound of 40 KB.
const ARGS: [&str; 10] = [
    "--log-segment-bytes",
    "16384",
    "--limits-sends-per-second",
    "100000",
    "--projections-snapshot-interval-secs",
    "1",
    "--compaction-retention-bytes",
    "40000",
    "--compaction-retention-interval-secs",
    "1",
];

/// The segment files (`DATA/log/*.log`), oldest first.
fn segment_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Bytes of the sealed segment files (every one but the newest, the active one, whose file is
/// preallocated to the segment size).
fn sealed_bytes(data: &Path) -> u64 {
    let files = segment_files(data);
    files[..files.len() - 1]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// The first offset `/v1/log` has.
async fn log_start(api: &Api) -> u64 {
    let text = api.text("/v1/log?from=0", ADMIN).await;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["offset"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_segments_go_once_snapshots_cover_them_and_reads_serve_the_rest() {
    let server = Server::start(&ARGS);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("h", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    // Three messages bob never reads in h, in the first segment; the version of his list then.
    for i in 1..=3 {
        api.send(&alice, "h", &format!("h{i}"), "early").await;
    }
    let before = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert_eq!(listed(&before, "h").unwrap()["unread"], 3, "{before}");
    let v_before = before["version"].as_u64().unwrap();
    // carol's list holds a group she is then removed from (every message she held there
    // expires), and two she stays in, active before it.
    let carol = api.user("carol").await;
    for k in ["k1", "k2"] {
        api.group(k, &["alice", "carol"]).await;
        api.send(&alice, k, &format!("{k}-1"), "early").await;
    }
    api.group("gone", &["alice", "carol"]).await;
    api.send(&alice, "gone", "gone1", "early").await;
    // dave reads a message longer than a preview (a conversation shows it, read from the log,
    // until it expires): his list's version then.
    api.group("lg", &["alice", "dave"]).await;
    let dave = api.user("dave").await;
    api.send(&alice, "lg", "lg1", &"long ".repeat(200)).await;
    let read = Some(serde_json::json!({"seq": 1}));
    api.ok("POST", "/v1/channels/lg/read", &dave, read).await;
    let his = api.ok("GET", "/v1/conversations", &dave, None).await;
    let lg = listed(&his, "lg").unwrap();
    assert!(
        lg["last_message"]["payload"]["text"]
            .as_str()
            .unwrap()
            .len()
            > 512,
        "{his}"
    );
    assert_eq!(lg["unread"], 0, "{his}");
    let v_dave = his["version"].as_u64().unwrap();
    let hers = api.ok("GET", "/v1/conversations", &carol, None).await;
    assert!(listed(&hers, "gone").is_some(), "{hers}");
    let v_carol = hers["version"].as_u64().unwrap();
    let uids = Some(serde_json::json!({"uids": ["carol"]}));
    api.ok("DELETE", "/v1/channels/gone/members", ADMIN, uids)
        .await;
    const SENT: u64 = 600;
    for i in 1..=SENT {
        api.send(
            &alice,
            "g",
            &format!("c{i}"),
            &format!("m{i} {}", "x".repeat(200)),
        )
        .await;
    }
    // A second snapshot (a second later, past a later write): the retention removes only what
    // the older of the newest two covers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.send(&alice, "g", "c-late", "a later write").await;
    let first_segment = server.data.join("log/00000000000000000000.log");

    // The sealed segments come to fit the bound, segment 0 gone, within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_segment.exists() || sealed_bytes(&server.data) > BOUND {
        assert!(
            Instant::now() < deadline,
            "sealed segments hold {} bytes ({} files)",
            sealed_bytes(&server.data),
            segment_files(&server.data).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&server, "tidings_retention_removed_segments_total").await >= 2);
    assert!(metric(&server, "tidings_retention_removed_bytes_total").await > 60_000);
    assert_eq!(metric(&server, "tidings_retention_failures_total").await, 0);
    // Never past what the newest two snapshots cover: the log starts at or below the older
    // one's offset (a snapshot ends at the record it is anchored to, which stays).
    let start = log_start(&api).await;
    assert!(start > 0);
    let snaps = snapshot_offsets(&server.data);
    assert!(snaps.len() >= 2, "{snaps:?}");
    assert!(
        start <= snaps[snaps.len() - 2],
        "start {start}, snapshots {snaps:?}"
    );

    // Reads serve what is retained: the history from its first retained message to the last,
    // without a gap; bob's sync (he never acked) the same; a send goes on.
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1000",
            &bob,
            None,
        )
        .await;
    let seqs = page_seqs(&page);
    let first = seqs[0];
    assert!(first > 1, "{page}");
    assert_eq!(seqs, (first..=SENT + 1).collect::<Vec<_>>());
    assert_eq!(page["has_more"], false);
    let sync = api.ok("GET", "/v1/sync?limit=1000", &bob, None).await;
    assert_eq!(page_seqs(&sync), seqs, "{sync}");
    // His unread count is what he can still read, not every message since he joined.
    let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert_eq!(convs["conversations"][0]["unread"], seqs.len(), "{convs}");
    // The removal cut his count in h (its messages expired), and the log says so
    // (`log_trimmed`): his incremental list from before it lists h again, with the count a
    // full list has (until 2026-11-30 it left h out — no event had moved h's version — and
    // the client kept 3).
    assert_eq!(listed(&convs, "h").unwrap()["unread"], 0, "{convs}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let since = format!("/v1/conversations?since_version={v_before}");
        let inc = api.ok("GET", &since, &bob, None).await;
        if let Some(h) = listed(&inc, "h") {
            assert_eq!(h["unread"], 0, "{inc}");
            assert!(h["version"].as_u64().unwrap() > v_before, "{inc}");
            assert_eq!(inc["reset"], false, "{inc}");
            break;
        }
        assert!(Instant::now() < deadline, "h never listed again: {inc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // dave's incremental list from before the removal lists lg again, its long last message
    // expired (until 2026-12-02 it was left out: his client kept the payload).
    let since = format!("/v1/conversations?since_version={v_dave}");
    let inc = api.ok("GET", &since, &dave, None).await;
    let full = api.ok("GET", "/v1/conversations", &dave, None).await;
    assert_eq!(
        listed(&full, "lg").unwrap()["last_message"],
        serde_json::Value::Null
    );
    let lg = listed(&inc, "lg").unwrap_or_else(|| panic!("lg not listed again: {inc}"));
    assert_eq!(lg["last_message"], serde_json::Value::Null, "{inc}");
    let log = api.text("/v1/log", ADMIN).await;
    assert!(log.contains(r#""type":"log_trimmed""#), "{log}");
    // The removal let go of carol's removal from "gone" (before the log's start, nothing of the
    // group left to tell her): her incremental list from before it is answered as a first
    // call, said so, a page of the one most recent when asked for one; paged on from its
    // version, incremental again with the other, never reset again (the 2026-12-01 build
    // answered a version below the removal: the next call was reset too, for ever). bob's
    // (who left nothing) was incremental above.
    let since = format!("/v1/conversations?since_version={v_carol}&limit=1");
    let reset = api.ok("GET", &since, &carol, None).await;
    assert_eq!(
        (&reset["reset"], &reset["removed"], &reset["has_more"]),
        (
            &serde_json::json!(true),
            &serde_json::json!([]),
            &serde_json::json!(true)
        ),
        "{reset}"
    );
    assert_eq!(channels_of(&reset).len(), 1, "{reset}");
    let mut seen = channels_of(&reset);
    let mut version = reset["version"].as_u64().unwrap();
    for _ in 0..5 {
        let since = format!("/v1/conversations?since_version={version}&limit=1");
        let next = api.ok("GET", &since, &carol, None).await;
        assert_eq!(next["reset"], false, "{next}");
        seen.extend(channels_of(&next));
        version = next["version"].as_u64().unwrap();
        if next["has_more"] == false {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["k1", "k2"]);
    api.send(&alice, "g", "after", "after the retention").await;

    // A restart starts from a snapshot (the log starts past 0) and answers the same.
    let server = server.restart();
    let api = Api::new(&server);
    // (A pass may have removed one more segment before the stop.)
    assert!(log_start(&api).await >= start);
    let again = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1000",
            &bob,
            None,
        )
        .await;
    let again = page_seqs(&again);
    assert_eq!(again, (again[0]..=SENT + 2).collect::<Vec<_>>());
    assert!(again[0] >= first);
    let data = server.data.clone();
    let _dir = server.stop();
    let (code, out, err) = tidings(&["verify", "--data", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("rebuild") && out.contains("from snapshot"),
        "{out}"
    );
    assert!(out.contains("older segments were removed"), "{out}");

    // A tier turned on afterwards (without the retention settings: nothing is removed from
    // the store here): the removed messages stay expired, not "unavailable" (nothing holds
    // them).
    assert!(data.join("log-trimmed").exists());
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let server = Server::start_on(&data, &["--tier-url", &url]);
    let api = Api::new(&server);
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1000",
            &bob,
            None,
        )
        .await;
    assert_eq!(page_seqs(&page), again, "{page}");
    let sync = api.ok("GET", "/v1/sync?limit=1000", &bob, None).await;
    assert_eq!(page_seqs(&sync), again, "{sync}");
}

/// The channels of a conversation page, in its order.
fn channels_of(page: &serde_json::Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap().to_owned())
        .collect()
}

/// The snapshots' offsets in `data`, oldest first.
fn snapshot_offsets(data: &Path) -> Vec<u64> {
    let mut snaps: Vec<u64> = std::fs::read_dir(data.join("projections/snapshots"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name();
            name.to_str()?.strip_suffix(".snap")?.parse().ok()
        })
        .collect();
    snaps.sort_unstable();
    snaps
}

/// With a bound of 0 bytes the policy lets every sealed segment go, and the snapshots stop
/// it: the log never starts past the older of the newest two snapshots' records. The server
/// takes no more messages, but each removal writes its `log_trimmed` event, after which a
/// newer snapshot lets the next pass go further, until no sealed segment is left below the
/// snapshots (until 2026-11-30, with no such event, the removal stopped at the older
/// snapshot taken after the last message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_removal_stops_below_the_older_of_the_newest_two_snapshots() {
    let mut args = ARGS;
    args[7] = "0";
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let text = "y".repeat(200);
    for i in 0..300 {
        api.send(&alice, "g", &format!("a{i}"), &text).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..150 {
        api.send(&alice, "g", &format!("b{i}"), &text).await;
    }
    // Until the retention has removed what it will: two passes without a change.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, 0);
    let mut same = 0;
    while same < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = (
            metric(&server, "tidings_retention_removed_segments_total").await,
            log_start(&api).await,
        );
        same = if now == last && now.0 > 0 {
            same + 1
        } else {
            0
        };
        last = now;
    }
    let start = last.1;
    let snaps = snapshot_offsets(&server.data);
    let older = snaps[snaps.len() - 2];
    assert!(
        start > 0 && start <= older,
        "start {start}, snapshots {snaps:?}"
    );
    // Every removal is in the log, as a `log_trimmed` event naming its start.
    let log = api.text("/v1/log", ADMIN).await;
    let trims: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "log_trimmed")
        .map(|e| e["start"].as_u64().unwrap())
        .collect();
    assert!(
        !trims.is_empty() && trims.windows(2).all(|w| w[0] < w[1]),
        "{trims:?}"
    );
    assert_eq!(trims.last(), Some(&start));
    let server = server.restart();
    let api = Api::new(&server);
    assert_eq!(log_start(&api).await, start);
}

/// By age (`retention_secs`): the segments whose records are all older go (once two snapshots
/// taken after them cover them), newer ones stay, and the history serves from the first
/// retained message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_older_than_the_age_go() {
    let mut args = ARGS;
    args[6] = "--compaction-retention-secs";
    args[7] = "2";
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let text = "z".repeat(200);
    for i in 0..300 {
        api.send(&alice, "g", &format!("old{i}"), &text).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Two snapshots after the old messages, and newer messages the age keeps.
    for i in 0..2 {
        api.send(&alice, "g", &format!("new{i}"), &text).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server, "tidings_retention_removed_segments_total").await == 0 {
        assert!(Instant::now() < deadline, "nothing removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!server.data.join("log/00000000000000000000.log").exists());
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1000",
            &alice,
            None,
        )
        .await;
    let seqs = page_seqs(&page);
    assert!(seqs[0] > 1, "{page}");
    assert_eq!(seqs, (seqs[0]..=302).collect::<Vec<_>>());
}

/// Segments removed with no `log_trimmed` event written (deleted by hand here, as by a build
/// from before the event, or a stop between a removal and its event): the retention's next
/// pass writes the event for the log's start — also when its policy removes nothing — and an
/// incremental conversation list from before then lists again the group whose unread messages
/// expired, with its new count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_without_its_event_gets_one_at_the_next_pass() {
    let server = Server::start(&[
        "--log-segment-bytes",
        "16384",
        "--limits-sends-per-second",
        "100000",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mut last = 0;
    for i in 1..=3 {
        last = common::sent_offset(&api.send(&alice, "g", &format!("g{i}"), "early").await);
    }
    let before = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert_eq!(listed(&before, "g").unwrap()["unread"], 3, "{before}");
    let v_before = before["version"].as_u64().unwrap();
    // Past g's messages: f (bob is not in it) fills segments.
    common::seal_past(&api, &server, &alice, last).await;
    let data = server.data.clone();
    let dir = server.stop();
    // Every sealed segment, g's messages with them.
    let active = common::active_base(&data);
    for path in segment_files(&data) {
        let base: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        if base < active {
            for ext in ["log", "index", "timeindex"] {
                let _ = std::fs::remove_file(path.with_extension(ext));
            }
        }
    }
    let server = Server::start_on(
        &data,
        &[
            "--log-segment-bytes",
            "16384",
            "--compaction-retention-bytes",
            "1000000000",
            "--compaction-retention-interval-secs",
            "1",
        ],
    );
    let api = Api::new(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let since = format!("/v1/conversations?since_version={v_before}");
        let inc = api.ok("GET", &since, &bob, None).await;
        if let Some(g) = listed(&inc, "g") {
            assert_eq!(g["unread"], 0, "{inc}");
            break;
        }
        if Instant::now() >= deadline {
            let log = api.text("/v1/log", ADMIN).await;
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("g never listed again: {inc}; the log ends {tail:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = api.text("/v1/log", ADMIN).await;
    let start = log_start(&api).await;
    let trimmed = format!(r#""start":{start}"#);
    assert!(
        log.lines()
            .any(|l| l.contains(r#""type":"log_trimmed""#) && l.contains(&trimmed)),
        "{log}"
    );
    assert_eq!(
        metric(&server, "tidings_retention_removed_segments_total").await,
        0
    );
    drop(dir);
}

/// A removal of the retention that lists again many conversations at once (each whose unread
/// count it cut, all at its event's version, which a page keeps together past its `limit`)
/// still answers a page of about 4 MiB: the conversations past the budget come with their
/// long last messages left out (`"truncated": true`, read from history). Before, that page
/// held every one of them whole (here 80 last messages of 64 KiB: 5 MB; with more, any size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_relisting_many_long_conversations_keeps_the_page_bounded() {
    let server = Server::start(&[
        "--log-segment-bytes",
        "1048576",
        "--limits-sends-per-second",
        "100000",
        "--limits-send-bytes-per-second",
        "1000000000",
        "--projections-snapshot-interval-secs",
        "1",
        "--compaction-retention-bytes",
        "7500000",
        "--compaction-retention-interval-secs",
        "1",
    ]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    const GROUPS: usize = 80;
    let groups: Vec<String> = (0..GROUPS).map(|i| format!("g{i:02}")).collect();
    // A short message bob never reads in each group, in the first segment.
    for g in &groups {
        api.group(g, &["alice", "bob"]).await;
        api.send(&alice, g, &format!("{g}-short"), "early").await;
    }
    // Filler elsewhere, then a 64 KiB last message in each group (~6.7 MB in all, below the
    // bound); bob's list then; then more filler, above the bound: the retention removes the
    // first segment (every short message), which cuts every group's count after the version
    // bob holds.
    api.group("filler", &["alice"]).await;
    let big = "x".repeat(63_990);
    for i in 0..25 {
        api.send(&alice, "filler", &format!("f{i}"), &big).await;
    }
    for g in &groups {
        api.send(&alice, g, &format!("{g}-long"), &big).await;
    }
    // bob's client pages to the end of his list (the pages stop at 4 MiB): the version after
    // every long message.
    let mut page = api
        .ok("GET", "/v1/conversations?limit=1000", &bob, None)
        .await;
    while page["has_more"] == true {
        let v = page["version"].as_u64().unwrap();
        let since = format!("/v1/conversations?limit=1000&since_version={v}");
        page = api.ok("GET", &since, &bob, None).await;
    }
    let v_before = page["version"].as_u64().unwrap();
    for i in 25..50 {
        api.send(&alice, "filler", &format!("f{i}"), &big).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.send(&alice, "filler", "late", "a later write").await;
    let first_segment = server.data.join("log/00000000000000000000.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = serde_json::Value::Null;
    let page = loop {
        if !first_segment.exists() {
            let since = format!("/v1/conversations?since_version={v_before}&limit=1");
            let page = api.ok("GET", &since, &bob, None).await;
            if page["conversations"].as_array().unwrap().len() == GROUPS {
                break page;
            }
            last = page;
        }
        assert!(
            Instant::now() < deadline,
            "the removal never re-listed the groups: {} files, sealed {} bytes: {}",
            segment_files(&server.data).len(),
            sealed_bytes(&server.data),
            last.to_string().chars().take(2000).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let size = page.to_string().len();
    assert!(size < (4 << 20) + GROUPS * 1024, "{size} bytes");
    assert_eq!(page["has_more"], false);
    let mut listed = channels_of(&page);
    listed.sort();
    assert_eq!(listed, groups, "each once");
    let convs = page["conversations"].as_array().unwrap();
    let cut: Vec<_> = convs
        .iter()
        .filter(|c| c["last_message"]["truncated"] == true)
        .collect();
    assert!(!cut.is_empty() && cut.len() < GROUPS, "{} cut", cut.len());
    for c in convs {
        let m = &c["last_message"];
        assert_eq!(c["unread"], 1, "{c}");
        if m["truncated"] == true {
            assert!(
                m.get("payload").is_none() && m.get("payload_b64").is_none(),
                "{m}"
            );
            // The message itself, from history.
            let path = format!(
                "/v1/channels/{}/messages?after_seq={}&limit=1",
                c["channel"].as_str().unwrap(),
                m["seq"].as_u64().unwrap() - 1
            );
            let h = api.ok("GET", &path, &bob, None).await;
            assert_eq!(
                h["messages"][0]["payload"],
                serde_json::json!({"text": big})
            );
        } else {
            let whole = serde_json::json!({"text": big});
            assert_eq!(m["payload"], whole, "{}", c["channel"]);
        }
    }
}
