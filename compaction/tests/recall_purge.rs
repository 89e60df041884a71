//! A purge of recalled messages on a real log in a temporary directory: exactly the sends and
//! edits of recalled messages in sealed segments lose their payload (in place: same offsets,
//! same lengths, every other record byte for byte), the snapshots that could hold a preview go,
//! a fresh anchored one stays, the log rebuilds into the state it had, and no file holds a
//! purged payload's bytes. A second run rewrites nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tidings_compaction::{CompactionError, Plan, Report, plan_recall_purge, run};
use tidings_log::{FsyncPolicy, Log, LogOptions};
use tidings_projections::{
    ChannelFlags, Envelope, Event, FLAG_JSON_PAYLOAD, FLAG_PURGED, ProjectionConfig, Projections,
    snapshot,
};

fn opts() -> LogOptions {
    LogOptions::default()
        .with_fsync(FsyncPolicy::Never)
        .with_segment_bytes(2048)
}

/// A log and the projections applied as it is written.
struct World {
    log: Log,
    p: Projections,
    ts: u64,
}

impl World {
    async fn emit(&mut self, event: Event) -> u64 {
        self.ts += 1;
        let env = Envelope::new(self.ts, event);
        let offset = self.log.append_one(env.encode()).await.unwrap();
        self.p.apply(offset, &env).unwrap();
        offset
    }

    async fn send(&mut self, seq: u64, payload: &[u8], flags: u32) -> u64 {
        self.emit(Event::MessageSent {
            channel: "g".into(),
            from: "ann".into(),
            client_msg_id: format!("c{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::copy_from_slice(payload),
            flags,
        })
        .await
    }

    /// A send of `{"text": text}`.
    async fn say(&mut self, seq: u64, text: &str) -> u64 {
        let json = format!(r#"{{"text":"{text}"}}"#);
        self.send(seq, json.as_bytes(), FLAG_JSON_PAYLOAD).await
    }

    /// An edit to `{"text": text}`.
    async fn edit(&mut self, seq: u64, text: &str) -> u64 {
        self.emit(Event::MessageEdited {
            channel: "g".into(),
            seq,
            by: "ann".into(),
            payload: Bytes::from(format!(r#"{{"text":"{text}"}}"#)),
            flags: FLAG_JSON_PAYLOAD,
        })
        .await
    }

    async fn recall(&mut self, seq: u64) -> u64 {
        self.emit(Event::MessageRecalled {
            channel: "g".into(),
            seq,
            by: "ann".into(),
        })
        .await
    }
}

/// Every record of the log, in offset order.
async fn records(log: &Log) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    while next < log.next_offset() {
        let chunk = log.read(next, 1 << 20).await.unwrap();
        next = chunk.last().unwrap().offset + 1;
        out.extend(chunk.into_iter().map(|r| (r.offset, r.payload)));
    }
    out
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// A log of a group whose recalled messages' sends and edits sit in sealed segments (and one
/// in the active segment), a snapshot taken between a send and its recall, set-aside and temp
/// snapshot files; the projections caught up with it. Returns the world, the offsets a purge
/// must rewrite, and the send left in the active segment.
async fn world(dir: &Path) -> (World, BTreeSet<u64>, u64) {
    let log = Log::open(dir.join("log"), opts()).await.unwrap();
    let p = Projections::empty(&dir.join("projections"), ProjectionConfig::default()).unwrap();
    let mut w = World {
        log,
        p,
        ts: 1_764_000_000_000,
    };
    w.emit(Event::ChannelCreated {
        channel: "g".into(),
        flags: ChannelFlags::default(),
    })
    .await;
    w.emit(Event::MembersSubscribed {
        channel: "g".into(),
        uids: vec!["ann".into(), "bob".into()],
    })
    .await;
    let mut targets = BTreeSet::new();
    w.say(1, "KEPT-ONE").await;
    targets.insert(w.say(2, "SECRET-SEND").await);
    targets.insert(w.edit(2, "SECRET-EDIT").await);
    // Longer than a preview, and not JSON; the channel's head when the snapshot is taken.
    let mut long = b"SECRET-LONG".to_vec();
    long.resize(700, 0xee);
    targets.insert(w.send(3, &long, 0).await);
    let mid = w.p.snapshot().unwrap().unwrap();
    w.recall(3).await;
    w.say(4, "KEPT-TWO").await;
    w.recall(2).await;
    // What other runs leave in the snapshot directory: a set-aside snapshot, a write's temp
    // file, and a file that is not a snapshot's.
    let snaps = mid.parent().unwrap().to_path_buf();
    std::fs::copy(&mid, snaps.join("00000000000000000003.snap.other-history")).unwrap();
    std::fs::copy(&mid, snaps.join(".00000000000000000004.snap.tmp")).unwrap();
    std::fs::write(snaps.join("notes.txt"), b"kept").unwrap();
    for seq in 5..=40 {
        w.say(seq, "filler filler filler filler").await;
    }
    w.log.roll().await.unwrap();
    let active = w.say(41, "SECRET-ACTIVE").await;
    w.recall(41).await;
    w.say(42, "KEPT-LAST").await;
    (w, targets, active)
}

/// The plan for the world's log, protecting the state's last offset.
fn plan_of(w: &World) -> Plan {
    let (recalled, protect) = (&w.p.state.heads.recalled, w.p.state.applied);
    plan_recall_purge(&w.log, recalled, protect).unwrap()
}

#[tokio::test]
async fn a_run_purges_the_recalled_payloads_in_place_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (w, targets, active) = world(dir.path()).await;
    let snaps = w.p.snapshot_dir();
    for secret in ["SECRET-SEND", "SECRET-EDIT", "SECRET-LONG", "SECRET-ACTIVE"] {
        assert!(
            !files_holding(dir.path(), secret.as_bytes()).is_empty(),
            "{secret} is on disk before the run"
        );
    }
    let before = records(&w.log).await;
    let last = w.log.next_offset() - 1;

    let plan = plan_of(&w);
    let planned: BTreeSet<u64> = plan.sealed.values().flatten().copied().collect();
    assert_eq!(planned, targets);
    assert_eq!(plan.active, vec![active]);
    assert_eq!(plan.protect, Some(last));
    assert!(!plan.kept_protected);
    assert_eq!(plan.already_purged, 0);

    let mut steps = Vec::new();
    let report = run(&w.log, &w.p, &plan, |step| steps.push(format!("{step:?}")))
        .await
        .unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.segments as usize, plan.sealed.len());
    assert_eq!(steps.len(), 1 + report.removed.len() + plan.sealed.len());
    let fresh = snapshot::snapshot_path(&snaps, last);
    assert_eq!(report.snapshot.as_deref(), Some(fresh.as_path()));

    // In place: the same offsets and lengths; the targets purged, every other record as it was.
    let after = records(&w.log).await;
    assert_eq!(after.len(), before.len());
    for ((offset, old), (at, new)) in before.iter().zip(&after) {
        assert_eq!(offset, at);
        if !targets.contains(offset) {
            assert_eq!(old, new, "offset {offset}");
            continue;
        }
        assert_eq!(old.len(), new.len(), "offset {offset}");
        let (payload, flags) = match Envelope::decode(*offset, new).unwrap().event {
            Event::MessageSent { payload, flags, .. } => (payload, flags),
            Event::MessageEdited { payload, flags, .. } => (payload, flags),
            other => panic!("offset {offset}: {other:?}"),
        };
        assert!(payload.iter().all(|&b| b == 0), "offset {offset}");
        assert_ne!(flags & FLAG_PURGED, 0, "offset {offset}");
    }
    for seg in w.log.segments().unwrap() {
        w.log.check_segment(seg.base_offset).unwrap();
    }

    // The snapshots: the fresh one, anchored to the last record, and the file that is not one.
    assert_eq!(
        names(&snaps),
        vec![
            fresh.file_name().unwrap().to_string_lossy().into_owned(),
            "notes.txt".to_string()
        ]
    );
    let (_, _, anchor) = snapshot::load_newest_anchored(&snaps, None)
        .unwrap()
        .unwrap();
    let (_, last_record) = after.last().unwrap();
    assert_eq!(anchor, Some(snapshot::anchor_of(last_record)));

    // The purged log rebuilds into the state it had.
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let mut rebuilt = Projections::empty(rebuilt_dir.path(), ProjectionConfig::default()).unwrap();
    rebuilt.catch_up(&w.log, |_, _| {}).await.unwrap();
    assert_eq!(rebuilt.state, w.p.state);

    // No file holds a purged payload; what the active segment holds waits for a later run.
    for secret in ["SECRET-SEND", "SECRET-EDIT", "SECRET-LONG"] {
        assert_eq!(
            files_holding(dir.path(), secret.as_bytes()),
            Vec::<PathBuf>::new(),
            "{secret}"
        );
    }
    assert!(!files_holding(dir.path(), b"SECRET-ACTIVE").is_empty());
    assert!(!files_holding(dir.path(), b"KEPT-ONE").is_empty());

    // Again: nothing to purge in sealed segments, and nothing done.
    let again = plan_of(&w);
    assert!(again.is_empty());
    assert_eq!(again.already_purged, 3);
    assert_eq!(again.active, vec![active]);
    let snapshot_bytes = std::fs::read(&fresh).unwrap();
    let report = run(&w.log, &w.p, &again, |_| panic!("a step of an empty plan"))
        .await
        .unwrap();
    assert_eq!(report, Report::default());
    assert_eq!(std::fs::read(&fresh).unwrap(), snapshot_bytes);
    assert_eq!(records(&w.log).await, after);

    // And after a reopen.
    w.log.close().await.unwrap();
    let log = Log::open(dir.path().join("log"), opts()).await.unwrap();
    assert_eq!(records(&log).await, after);
    log.close().await.unwrap();
}

/// A plan made before the log grew is refused, before anything is written.
#[tokio::test]
async fn a_stale_plan_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _, _) = world(dir.path()).await;
    let plan = plan_of(&w);
    assert!(!plan.is_empty());
    w.say(43, "one more").await;
    let snaps = names(&w.p.snapshot_dir());
    let before = records(&w.log).await;
    let err = run(&w.log, &w.p, &plan, |_| {}).await.unwrap_err();
    assert!(
        matches!(err, CompactionError::Stale { what: "plan", .. }),
        "{err}"
    );
    assert_eq!(names(&w.p.snapshot_dir()), snaps);
    assert_eq!(records(&w.log).await, before);
    w.log.close().await.unwrap();
}
