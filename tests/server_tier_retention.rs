//! The retention of a tiered server (`compaction.retention_bytes` with `tier.url`), end to
//! end: a real server tiered to a `file://` store, with small segments, no local copy kept of
//! an uploaded one, a snapshot and a retention pass every second, takes messages over HTTP; the
//! retention removes the oldest segments from the store (a manifest version starting past 0,
//! their objects deleted), never below what the newest two snapshots cover, locally or in the
//! store (there: the newest two below the end of the uploaded segments, which a restore can
//! use); history and sync serve the rest, and a recall or a trace of a removed message answers
//! 404 `message_expired`. A fresh server on an empty data directory restores from the store
//! (no `log-trimmed` marker there: the manifest's start says it) and answers the same, never
//! 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ADMIN, Api, Server, metric, page_seqs, sent_offset, tidings};
use serde_json::Value;

/// Messages alice sends at least before the pause (one more, the late write, after it).
const SENT: u64 = 600;

/// The flags of a server tiered to a `file://` store in `bucket`: 16 KiB segments uploaded
/// every second and not kept locally once uploaded, a snapshot every second, a message index
/// sidecar every 16 messages.
fn tier_args(bucket: &Path) -> Vec<String> {
    let url = format!("file://{}", bucket.display());
    [
        "--tier-url",
        url.as_str(),
        "--log-segment-bytes",
        "16384",
        "--tier-local-retention-bytes",
        "0",
        "--tier-upload-interval-secs",
        "1",
        "--tier-block-bytes",
        "4096",
        "--tier-cache-disk-bytes",
        "16777216",
        "--limits-sends-per-second",
        "100000",
        "--projections-snapshot-interval-secs",
        "1",
        "--projections-index-flush-entries",
        "16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A retention of 40 KB, a pass every second.
const RETENTION: [&str; 4] = [
    "--compaction-retention-bytes",
    "40000",
    "--compaction-retention-interval-secs",
    "1",
];

/// The first offset `/v1/log` has.
async fn log_start(api: &Api) -> u64 {
    let text = api.text("/v1/log?from=0", ADMIN).await;
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["offset"].as_u64().unwrap()
}

/// The offsets in the names of the files in `dir` named `{offset:020}{suffix}`, ascending.
fn offsets_named(dir: &Path, suffix: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<u64> = entries
        .filter_map(|e| {
            let name = e.unwrap().file_name();
            name.to_str()?.strip_suffix(suffix)?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The base offsets of the segment objects in the store (`segments/{base:020}.{writer}.log`,
/// `.index`, `.timeindex`), one per object, ascending.
fn segment_object_bases(bucket: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(bucket.join("segments"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name();
            let name = name.to_str()?.to_owned();
            let ours = [".log", ".index", ".timeindex"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if !ours {
                return None;
            }
            name.split('.').next()?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The sidecar objects in the store (`projections/index/{first:020}-{crc:08x}.cidx`) whose
/// first offset is below `start`.
fn sidecar_objects_below(bucket: &Path, start: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(bucket.join("projections/index")) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_suffix(".cidx")?.get(..20)?.parse::<u64>().ok()
        })
        .filter(|&first| first < start)
        .count()
}

/// The newest manifest version in the store (`manifest/{epoch:020}.json`).
fn newest_manifest(bucket: &Path) -> Value {
    let epochs = offsets_named(&bucket.join("manifest"), ".json");
    let newest = epochs.last().expect("a manifest version");
    let path: PathBuf = bucket.join(format!("manifest/{newest:020}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A recall (by alice) and a trace (by the admin) of message `seq` of group `g`: each status
/// and error code.
async fn recall_and_trace(api: &Api, alice: &str, seq: u64) -> Vec<(u16, Value)> {
    let path = format!("/v1/channels/g/messages/{seq}");
    let mut out = Vec::new();
    for (method, path, token) in [
        ("DELETE", path.clone(), alice),
        ("GET", format!("{path}/trace"), ADMIN),
    ] {
        let (status, v) = api.call(method, &path, token, None).await;
        out.push((status, v["error"]["code"].clone()));
    }
    out
}

/// The seqs of group `g`'s history as `token` reads it, and those of their sync.
async fn history_and_sync(api: &Api, token: &str) -> (Vec<u64>, Vec<u64>) {
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1000",
            token,
            None,
        )
        .await;
    assert_eq!(page["has_more"], false, "{page}");
    let sync = api.ok("GET", "/v1/sync?limit=1000", token, None).await;
    (page_seqs(&page), page_seqs(&sync))
}

/// The seqs of the messages retained when the log starts at `start`: from the first whose
/// send is at or past it (`offsets[seq - 1]`: each send's offset) to the last.
fn retained(offsets: &[u64], start: u64) -> Vec<u64> {
    let expired = offsets.iter().filter(|o| **o < start).count() as u64;
    (expired + 1..=offsets.len() as u64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_loses_the_oldest_segments_and_a_restore_serves_the_rest() {
    let bucket = tempfile::tempdir().unwrap();
    let tier_flags = tier_args(bucket.path());
    let tier: Vec<&str> = tier_flags.iter().map(String::as_str).collect();
    let mut args = tier.clone();
    args.extend(RETENTION);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    // SENT messages, then more in bursts until the retention has removed two segments: it
    // waits for two snapshots in the store below the end of the uploaded segments (a restore
    // could not use one past it), and those come as segments roll and upload.
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for _ in 0..20 {
            let i = offsets.len() + 1;
            let text = format!("m{i} {}", "x".repeat(200));
            let sent = api.send(&alice, "g", &format!("c{i}"), &text).await;
            offsets.push(sent_offset(&sent));
        }
        if offsets.len() as u64 >= SENT {
            if metric(&server, "tidings_retention_removed_segments_total").await >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "the retention removed nothing");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let sent = offsets.len() as u64;
    // A second snapshot (a second later, past a later write): the retention removes only what
    // the older of the newest two covers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = api.send(&alice, "g", "c-late", "a later write").await;
    offsets.push(sent_offset(&late));

    // Until the retention has removed what it will (no writes: no newer snapshot comes):
    // the log's start past 0 and unchanged over three polls.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, 0);
    let mut same = 0;
    while same < 3 {
        assert!(
            Instant::now() < deadline,
            "the retention did not remove and settle: (removed segments, log start) {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = (
            metric(&server, "tidings_retention_removed_segments_total").await,
            log_start(&api).await,
        );
        same = if now == last && now.1 > 0 {
            same + 1
        } else {
            0
        };
        last = now;
    }
    let start = last.1;
    assert!(last.0 >= 2, "{last:?}");
    assert_eq!(metric(&server, "tidings_retention_failures_total").await, 0);
    assert!(server.data.join("log-trimmed").exists());
    // Never past what the newest two snapshots cover, here and in the store.
    let local = offsets_named(&server.data.join("projections/snapshots"), ".snap");
    let stored = offsets_named(&bucket.path().join("snapshots"), ".snap");
    for snaps in [&local, &stored] {
        assert!(snaps.len() >= 2, "{snaps:?}");
        assert!(
            start <= snaps[snaps.len() - 2],
            "start {start}, snapshots {snaps:?}"
        );
    }
    // The store's manifest starts there, and the objects of the segments below it go.
    assert_eq!(newest_manifest(bucket.path())["start"], start);
    let deadline = Instant::now() + Duration::from_secs(30);
    while segment_object_bases(bucket.path())
        .first()
        .is_some_and(|base| *base < start)
    {
        assert!(
            Instant::now() < deadline,
            "segment objects below the start {start}: {:?}",
            segment_object_bases(bucket.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!segment_object_bases(bucket.path()).is_empty());

    // History and sync serve the retained messages, the newest included, without a gap; the
    // removed ones have expired (a recall or a trace of one: 404 `message_expired`).
    let kept = retained(&offsets, start);
    let first = kept[0];
    assert!(first > 1, "start {start}");
    let (history, sync) = history_and_sync(&api, &bob).await;
    assert_eq!(history, kept);
    assert_eq!(sync, kept);
    let newest = api
        .ok("GET", "/v1/channels/g/messages?limit=1", &bob, None)
        .await;
    assert_eq!(
        newest["messages"][0]["payload"]["text"], "a later write",
        "{newest}"
    );
    let expired = (404_u16, Value::from("message_expired"));
    for seq in [1, first - 1] {
        assert_eq!(
            recall_and_trace(&api, &alice, seq).await,
            [expired.clone(), expired.clone()],
            "seq {seq}"
        );
    }

    // The sidecars the retention let go leave the store once every snapshot kept there follows
    // the latest `log_trimmed` event: started again without the retention (with it, a write
    // here brings another removal and event, and the wait ends only when the passes leave a
    // gap), more writes bring newer snapshots and segments for those a restore could use. At
    // most one is left starting below the start (it reaches past it), and the restore below
    // still finds every sidecar its snapshot names.
    let below = |start| sidecar_objects_below(bucket.path(), start);
    assert!(
        below(start) >= 10,
        "{} sidecars below {start}",
        below(start)
    );
    let data = server.data.clone();
    let _first_dir = server.stop();
    let server = Server::start_on(&data, &tier);
    let api = Api::new(&server);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server, "tidings_tier_sidecars_removed_total").await == 0 {
        assert!(Instant::now() < deadline, "no sidecar left the store");
        for _ in 0..20 {
            let i = offsets.len() + 1;
            let text = format!("m{i} {}", "x".repeat(200));
            let sent = api.send(&alice, "g", &format!("c{i}"), &text).await;
            offsets.push(sent_offset(&sent));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(below(start) <= 1, "{} sidecars below {start}", below(start));
    assert!(metric(&server, "tidings_sidecars_removed_total").await > 0);
    let extra = offsets.len() as u64 - sent - 1;
    server.stop();
    // `tidings trace` (local segments only) says what the server says of a removed message:
    // expired. (Here its index entry went with its sidecar, which says so too; one still in
    // the index is judged by the local manifest copy's start, which this does not reach.)
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["trace", "--data", d, "g", "1"]);
    assert!(code == 1 && err.contains("message_expired"), "{out}{err}");
    // `verify` (local segments only) says that the older segments may be in the store, and
    // never calls a snapshot compared with itself a rebuild.
    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("only in the object store"), "{out}");
    assert!(
        !out.contains("+ 0 events equals a rebuild of all 0 events"),
        "{out}"
    );

    // A new machine: an empty data directory, the same store (no retention set: nothing more
    // is removed). It restores, serves the retained messages, and the removed ones have
    // expired there too (its directory has no `log-trimmed`: the manifest's start says so).
    let fresh = tempfile::tempdir().unwrap();
    let server = Server::start_on(&fresh.path().join("data"), &tier);
    let api = Api::new(&server);
    let restart = log_start(&api).await;
    assert!(restart >= start, "{restart} < {start}");
    let kept = retained(&offsets, restart);
    let (history, sync) = history_and_sync(&api, &bob).await;
    assert_eq!(history, kept);
    assert_eq!(sync, kept);
    for seq in [1, kept[0] - 1] {
        assert_eq!(
            recall_and_trace(&api, &alice, seq).await,
            [expired.clone(), expired.clone()],
            "seq {seq}"
        );
    }
    assert_eq!(
        api.send(&alice, "g", "after", "after the restore").await["seq"],
        sent + extra + 2
    );
    server.stop();
    drop(fresh);
}

/// `tidings trace` on a tiered directory the retention trimmed (local segments only, read
/// without the store) answers a message below where the store's history starts as the server
/// does, `message_expired`, from the local manifest copy's start — here with the message still
/// in the index (no sidecar written, nothing let go). It said `history_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidings_trace_takes_what_the_store_removed_as_expired() {
    let bucket = tempfile::tempdir().unwrap();
    let flags = tier_args(bucket.path());
    // The default sidecar size: every entry stays in memory.
    let at = flags
        .iter()
        .position(|f| f == "--projections-index-flush-entries")
        .unwrap();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.drain(at..at + 2);
    args.extend(RETENTION);
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    while metric(&server, "tidings_retention_removed_segments_total").await < 2 {
        assert!(Instant::now() < deadline, "the retention removed nothing");
        for _ in 0..20 {
            i += 1;
            let text = format!("m{i} {}", "x".repeat(200));
            api.send(&alice, "g", &format!("c{i}"), &text).await;
        }
    }
    let data = server.data.clone();
    let _dir = server.stop();
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["trace", "--data", d, "g", "1"]);
    assert!(code == 1 && err.contains("message_expired"), "{out}{err}");
}
