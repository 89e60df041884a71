//! Expired messages, end to end: a real server with 16 KiB segments takes messages in two
//! groups and a person channel; bob acks some and goes offline; the server is stopped (its
//! shutdown writes a snapshot at the log's end) and the oldest segments are deleted by hand,
//! as the retention deletes them, keeping messages of each channel in the rest. Started again,
//! the messages in the deleted segments have expired, and every read treats them as gone,
//! never as an error: history pages start after them or end at them, sync and WebSocket
//! catch-up bring exactly the retained messages after bob's cursors, `/v1/changes` tells the
//! changes to them as notices alone (but, once a `log_trimmed` event let go of them, those
//! made before the cut, saying so), the conversation list does not read them, and a recall,
//! an edit or a trace of one (over HTTP and by `tidings trace`) answers 404 `message_expired`.
//! Sends go on, and a second restart answers the same. Without a snapshot covering the deleted
//! offsets the start is refused, naming them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use common::{
    ADMIN, Api, Server, Ws, active_base, answers_about_g, metric, page_seqs, refused_start,
    seal_past, sent_offset, tidings,
};
use serde_json::{Value, json};

/// Small segments (a few hundred messages fill several), no send limit in the way.
const ARGS: [&str; 4] = [
    "--log-segment-bytes",
    "16384",
    "--limits-sends-per-second",
    "100000",
];

/// Alice's messages in group `g`: 1 to 30 before the cut (expired once their segments are
/// deleted), 31 to 40 after it. Bob acked 5 of them before the cut.
const G_OLD: u64 = 30;
const G_LAST: u64 = 40;
/// In group `h`: 1 to 20 before the cut, 21 to 30 after; bob acks 25 after it.
const H_OLD: u64 = 20;
const H_LAST: u64 = 30;
const H_ACKED: u64 = 25;
/// Alice to bob: 1 to 10 before the cut, 11 to 15 after.
const P_OLD: u64 = 10;
const P_LAST: u64 = 15;

/// Alice's messages `seqs` to `channel`, each saying `"{tag} {seq}"`.
async fn send_all(api: &Api, alice: &str, channel: &str, tag: &str, seqs: RangeInclusive<u64>) {
    for seq in seqs {
        let (cid, text) = (format!("{tag}{seq}"), format!("{tag} {seq}"));
        let sent = api.send(alice, channel, &cid, &text).await;
        assert_eq!(sent["seq"], seq, "{sent}");
    }
}

/// A page of `channel`'s history as `token` reads it with `query`: its seqs, in the page's
/// order (a descending page's newest first), and `has_more`.
async fn page(api: &Api, token: &str, channel: &str, query: &str) -> (Vec<u64>, bool) {
    let path = format!("/v1/channels/{channel}/messages?{query}");
    let v = api.ok("GET", &path, token, None).await;
    (page_seqs(&v), v["has_more"].as_bool().unwrap())
}

/// The seqs of `range`, ascending.
fn up(range: RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

/// The seqs of `range`, descending.
fn down(range: RangeInclusive<u64>) -> Vec<u64> {
    range.rev().collect()
}

/// `(channel, seq)` of a message or a message frame.
/// `got`, its channels in `owed`'s order, each channel's messages in the order they came: a
/// page puts the channels with fewer messages first, and only the order within a channel is
/// promised.
fn by_channel(got: Vec<(String, u64)>, owed: &[(String, u64)]) -> Vec<(String, u64)> {
    let rank = |c: &str| owed.iter().position(|(o, _)| o == c).unwrap_or(usize::MAX);
    let mut got = got;
    got.sort_by_key(|(c, _)| rank(c));
    got
}

fn channel_seq(m: &Value) -> (String, u64) {
    let channel = m["channel"].as_str().unwrap().to_owned();
    (channel, m["seq"].as_u64().unwrap())
}

/// What bob is owed after the cut, as sync and catch-up bring it: `g` after its expired
/// messages (his cursor, 5, is below them), `h` after his cursor, person to person after the
/// expired ones; channels in id order (`l`'s one message has expired).
fn owed_to_bob() -> Vec<(String, u64)> {
    let mut owed = Vec::new();
    owed.extend((G_OLD + 1..=G_LAST).map(|s| ("g".to_owned(), s)));
    owed.extend((H_ACKED + 1..=H_LAST).map(|s| ("h".to_owned(), s)));
    owed.extend((P_OLD + 1..=P_LAST).map(|s| ("@alice".to_owned(), s)));
    owed
}

/// A recall and an edit (by alice) and a trace (by the admin) of message `seq` of group `g`:
/// each status and error code.
async fn single(api: &Api, alice: &str, seq: u64) -> Vec<(u16, Value)> {
    let path = format!("/v1/channels/g/messages/{seq}");
    let edit = json!({"payload": {"text": "too late"}});
    let mut out = Vec::new();
    for (method, path, token, body) in [
        ("DELETE", path.clone(), alice, None),
        ("PATCH", path.clone(), alice, Some(edit)),
        ("GET", format!("{path}/trace"), ADMIN, None),
    ] {
        let (status, v) = api.call(method, &path, token, body).await;
        out.push((status, v["error"]["code"].clone()));
    }
    out
}

/// What the server answers bob (and alice, for the recall and edit), as text, to compare
/// across a restart.
async fn answers(api: &Api, bob: &str, alice: &str) -> BTreeMap<String, String> {
    let mut out = answers_about_g(api, bob, None, &[G_LAST - 4]).await;
    for query in ["after_seq=0&limit=5", "limit=5", "before_seq=36&limit=5"] {
        let path = format!("/v1/channels/g/messages?{query}");
        out.insert(query.to_owned(), api.text(&path, bob).await);
    }
    let h = "/v1/channels/h/messages?after_seq=0";
    out.insert("h".into(), api.text(h, bob).await);
    let refused = format!("{:?}", single(api, alice, 10).await);
    out.insert("single".into(), refused);
    out
}

/// Deletes the files (`.log`, `.index`, `.timeindex`) of every segment of data directory
/// `data` whose base offset is below `before`, as the retention does; returns how many
/// segments.
fn delete_segments_below(data: &Path, before: u64) -> usize {
    let mut deleted = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(data.join("log")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = stem.parse::<u64>() else {
            continue;
        };
        if base < before && ["log", "index", "timeindex"].contains(&ext) {
            std::fs::remove_file(&path).unwrap();
            deleted.insert(base);
        }
    }
    deleted.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_deleted_segments_have_expired() {
    expired_messages(false).await;
}

/// The same, with a message index sidecar every 4 entries and, after the deletion, a
/// retention (bounded far above the log) whose pass writes the `log_trimmed` event the
/// deletion by hand lacks: the index lets go of the sidecars below the log's start, their
/// files go once the snapshots on disk all follow the event, and every answer is the same
/// (fails without the index's dropped seqs: a history page of messages only in sidecars let
/// go came back empty, with more to read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_deleted_segments_have_expired_once_the_index_lets_them_go() {
    expired_messages(true).await;
}

/// Sidecar files (`DATA/projections/index/*.cidx`) starting below offset `below`.
fn sidecars_below(data: &Path, below: u64) -> usize {
    std::fs::read_dir(data.join("projections/index"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".cidx")?.parse::<u64>().ok()
        })
        .filter(|&first| first < below)
        .count()
}

async fn expired_messages(let_go: bool) {
    let mut args = ARGS.to_vec();
    if let_go {
        args.extend(["--projections-index-flush-entries", "4"]);
    }
    let server = Server::start(&args);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("h", &["alice", "bob"]).await;
    api.group("l", &["alice", "bob"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let v0 = api.ok("GET", "/v1/changes", &bob, None).await["version"]
        .as_u64()
        .unwrap();

    // Before the cut: messages in every channel (in `l` one, longer than a preview), an ack,
    // a recall.
    send_all(&api, &alice, "g", "g", 1..=G_OLD).await;
    send_all(&api, &alice, "h", "h", 1..=H_OLD).await;
    send_all(&api, &alice, "@bob", "p", 1..=P_OLD).await;
    api.send(&alice, "l", "long", &"long ".repeat(120)).await;
    api.ok("POST", "/v1/channels/g/ack", &bob, Some(json!({"seq": 5})))
        .await;
    api.ok("DELETE", "/v1/channels/g/messages/2", &alice, None)
        .await;
    let marker = api.send(&alice, "f", "marker", "the cut").await;
    seal_past(&api, &server, &alice, sent_offset(&marker)).await;
    // Every record before the cut is in a sealed segment; those after it are in later ones.
    let cut = active_base(&server.data);

    // After the cut: messages in every channel, an edit of an old message (its send goes, the
    // edit stays), a recall of another, an edit of a new one, bob's ack in `h`.
    send_all(&api, &alice, "g", "g", G_OLD + 1..=G_LAST).await;
    send_all(&api, &alice, "h", "h", H_OLD + 1..=H_LAST).await;
    send_all(&api, &alice, "@bob", "p", P_OLD + 1..=P_LAST).await;
    for (method, seq, body) in [
        ("PATCH", 3, Some(json!({"payload": {"text": "edited 3"}}))),
        ("DELETE", 4, None),
        ("PATCH", 35, Some(json!({"payload": {"text": "edited 35"}}))),
    ] {
        let path = format!("/v1/channels/g/messages/{seq}");
        api.ok(method, &path, &alice, body).await;
    }
    let ack = json!({"seq": H_ACKED});
    api.ok("POST", "/v1/channels/h/ack", &bob, Some(ack)).await;

    let data = server.data.clone();
    let dir = server.stop();
    assert!(delete_segments_below(&data, cut) >= 1);

    // With no snapshot covering the deleted offsets, the start is refused, naming them.
    let snapshots = data.join("projections/snapshots");
    let aside = data.with_file_name("snapshots-aside");
    std::fs::create_dir(&aside).unwrap();
    let names: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        std::fs::rename(snapshots.join(name), aside.join(name)).unwrap();
    }
    let (started, err) = refused_start(&data, ARGS);
    assert!(!started, "{err}");
    assert!(
        err.contains(&format!("the log starts at offset {cut}"))
            && err.contains("no snapshot covers the offsets before it")
            && err.contains("needs the log from offset 0"),
        "{err}"
    );
    for name in &names {
        std::fs::rename(aside.join(name), snapshots.join(name)).unwrap();
    }

    // The shutdown's snapshot covers them: the server starts.
    let below_cut = sidecars_below(&data, cut);
    if let_go {
        args.extend([
            "--compaction-retention-bytes",
            "1000000000",
            "--compaction-retention-interval-secs",
            "1",
            "--projections-snapshot-interval-secs",
            "1",
        ]);
    }
    let server = Server::start_on(&data, &args);
    let api = Api::new(&server);
    if let_go {
        // The pass writes the event; the next three snapshots (alice's messages to herself
        // in `f` give each something new) leave none from before it, and the files go.
        assert!(below_cut >= 10, "{below_cut} sidecars below the cut");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while metric(&server, "tidings_sidecars_removed_total").await == 0 {
            assert!(std::time::Instant::now() < deadline, "no sidecar removed");
            n += 1;
            api.send(&alice, "f", &format!("tick{n}"), "tick").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let removed = metric(&server, "tidings_sidecars_removed_total").await;
        // One may start below the cut and reach past it.
        assert!(
            sidecars_below(&data, cut) <= 1,
            "{}",
            sidecars_below(&data, cut)
        );
        assert!(
            removed as usize >= below_cut - 1,
            "{removed} of {below_cut}"
        );
    }

    // History: an ascending page from below the expired messages starts after them (not an
    // empty page with more to read), also between two bounds; descending pages end at them.
    let g = |query: &'static str| page(&api, &bob, "g", query);
    assert_eq!(g("after_seq=0&limit=5").await, (up(31..=35), true));
    assert_eq!(g("after_seq=0&limit=100").await, (up(31..=G_LAST), false));
    assert_eq!(g("after_seq=28&before_seq=34").await, (up(31..=33), false));
    assert_eq!(g("limit=5").await, (down(36..=G_LAST), true));
    assert_eq!(g("before_seq=36&limit=5").await, (down(31..=35), false));
    assert_eq!(g("before_seq=31&limit=5").await, (Vec::<u64>::new(), false));
    assert_eq!(g("before_seq=20").await, (Vec::<u64>::new(), false));
    let h = page(&api, &bob, "h", "after_seq=0").await;
    assert_eq!(h, (up(H_OLD + 1..=H_LAST), false));
    let p = page(&api, &bob, "@alice", "after_seq=0").await;
    assert_eq!(p, (up(P_OLD + 1..=P_LAST), false));

    // Sync: exactly the retained messages after bob's cursors, paged from the expired floor.
    let owed = owed_to_bob();
    let sync = api.ok("GET", "/v1/sync?limit=100", &bob, None).await;
    let synced: Vec<_> = sync["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(channel_seq)
        .collect();
    assert_eq!(by_channel(synced, &owed), owed, "{sync}");
    assert_eq!(sync["has_more"], false);
    // A page shared between the channels (since 2026-12-03): each one's first retained
    // messages, from its expired floor.
    let first = api.ok("GET", "/v1/sync?limit=5", &bob, None).await;
    let got: Vec<_> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(channel_seq)
        .collect();
    assert!(got.len() <= 5, "{first}");
    for ch in ["g", "h", "@alice"] {
        let mine: Vec<_> = got.iter().filter(|(c, _)| c == ch).collect();
        let owed_first: Vec<_> = owed
            .iter()
            .filter(|(c, _)| c == ch)
            .take(mine.len())
            .collect();
        assert!(!mine.is_empty() && mine == owed_first, "{ch}: {first}");
    }
    assert_eq!(first["has_more"], true);

    // WebSocket catch-up: the same, and then nothing more.
    let mut ws = Ws::connect(&server, &bob, "").await;
    let frames = ws.messages(owed.len()).await;
    let caught_up: Vec<_> = frames.iter().map(channel_seq).collect();
    assert_eq!(by_channel(caught_up, &owed), owed);
    ws.quiet(Duration::from_millis(500)).await;
    ws.close().await;

    // Changes: the recall before the cut (but once a `log_trimmed` event let go of the
    // changes made below the start: then the answer says it was told less), the edit of a
    // message whose send expired, and the recall of another as notices alone; the edit of a
    // retained message with it.
    let changes = api
        .ok("GET", &format!("/v1/changes?since={v0}"), &bob, None)
        .await;
    let mut told = changes["messages"].as_array().unwrap().clone();
    if !let_go {
        assert_eq!(told[0], json!({"channel": "g", "seq": 2, "recalled": true}));
        told.remove(0);
    }
    assert_eq!(told.len(), 3, "{changes}");
    assert_eq!(told[0], json!({"channel": "g", "seq": 3, "edited": true}));
    assert_eq!(told[1], json!({"channel": "g", "seq": 4, "recalled": true}));
    assert_eq!(
        (&told[2]["seq"], &told[2]["edited"], &told[2]["payload"]),
        (&json!(35), &json!(true), &json!({"text": "edited 35"})),
        "{changes}"
    );
    assert_eq!(changes["has_more"], false);
    assert_eq!(changes["forgotten"], let_go, "{changes}");
    // From a version past the start, nothing is forgotten.
    let since = changes["version"].as_u64().unwrap();
    let later = api
        .ok("GET", &format!("/v1/changes?since={since}"), &bob, None)
        .await;
    assert_eq!(
        (&later["messages"], &later["forgotten"]),
        (&json!([]), &json!(false)),
        "{later}"
    );

    // The conversation list: `l`'s last message, longer than its preview, is not read.
    let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
    let list = convs["conversations"].as_array().unwrap();
    let long = list.iter().find(|c| c["channel"] == "l").unwrap();
    assert_eq!(long["last_message"], Value::Null, "{long}");

    // A recall, an edit and a trace of an expired message: 404 `message_expired`; `tidings
    // trace` says the same, and traces a retained message.
    let expired = (404_u16, json!("message_expired"));
    assert_eq!(single(&api, &alice, 10).await, vec![expired; 3]);
    let d = data.to_str().unwrap();
    let (code, out, err) = tidings(&["trace", "--data", d, "g", "12"]);
    assert!(code == 1 && err.contains("message_expired"), "{out}{err}");
    let (code, out, err) = tidings(&["trace", "--data", d, "g", "36"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"seq\": 36"), "{out}");

    // Sends go on.
    let sent = api.send(&alice, "g", "after", "after the restart").await;
    assert_eq!(sent["seq"], G_LAST + 1, "{sent}");
    let next = g("after_seq=40").await;
    assert_eq!(next, (vec![G_LAST + 1], false));

    // A second restart answers the same.
    let before = answers(&api, &bob, &alice).await;
    let server = server.restart();
    let api = Api::new(&server);
    assert_eq!(answers(&api, &bob, &alice).await, before);
    server.stop();
    // Stopped, `verify` finds the state the log gives (the index's sidecars let go included).
    let (code, out, err) = tidings(&["verify", "--data", d]);
    assert_eq!(code, 0, "{out}\n{err}");
    drop(dir);
}
