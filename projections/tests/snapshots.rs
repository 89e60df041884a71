//! Snapshots and sidecars on disk: a damaged snapshot is reported and skipped (the next older
//! one, or a full replay, is used) and start-up still reaches the live state; old snapshots are
//! pruned; a damaged message index sidecar is a typed error naming the file, never wrong data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{World, config};
use tidings_projections::messages;
use tidings_projections::snapshot::{self, decode, list};
use tidings_projections::{Origin, ProjectionError, Projections};

async fn busy_world() -> World {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    for i in 0..12 {
        w.send("alice", "g", &format!("m{i}")).await.unwrap();
    }
    w
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_next_older() {
    let mut w = busy_world().await;
    let first = w.p.snapshot().unwrap().unwrap();
    w.ack("bob", "g", Some(5), Some(3)).await;
    let second = w.p.snapshot().unwrap().unwrap();
    w.send("bob", "g", "late").await.unwrap();
    assert_eq!(list(&w.p.snapshot_dir()).unwrap().len(), 2);

    let mut bytes = std::fs::read(&second).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x10;
    std::fs::write(&second, &bytes).unwrap();
    match decode(&second, &bytes) {
        Err(ProjectionError::Corrupt { path, .. }) => assert_eq!(path, second),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    let mut p = Projections::load(dir.path(), config()).unwrap();
    let older = dir
        .path()
        .join("snapshots")
        .join(first.file_name().unwrap());
    assert_eq!(p.origin(), &Origin::Snapshot(older));
    p.catch_up(&w.log, |_, _| {}).await.unwrap();
    assert_eq!(&p.state, w.state());
}

#[tokio::test]
async fn with_every_snapshot_damaged_start_up_replays_the_whole_log() {
    let mut w = busy_world().await;
    w.p.snapshot().unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    for s in list(&dir.path().join("snapshots")).unwrap() {
        // Truncated, bad magic: each way is reported, none is loaded.
        std::fs::write(&s.path, b"TDSN\x01").unwrap();
    }
    let mut p = Projections::load(dir.path(), config()).unwrap();
    assert_eq!(p.origin(), &Origin::Empty);
    p.catch_up(&w.log, |_, _| {}).await.unwrap();
    assert_eq!(&p.state, w.state());
    w.send("alice", "g", "after").await.unwrap();
}

#[tokio::test]
async fn only_the_newest_snapshots_are_kept_and_each_decodes() {
    let mut w = busy_world().await;
    for i in 0..5 {
        w.ack("bob", "g", Some(i + 1), None).await;
        w.p.snapshot().unwrap();
    }
    let snaps = list(&w.p.snapshot_dir()).unwrap();
    assert_eq!(snaps.len(), config().snapshots_keep);
    for s in &snaps {
        let state = decode(&s.path, &std::fs::read(&s.path).unwrap()).unwrap();
        assert_eq!(state.applied, Some(s.applied));
    }
    assert_eq!(snaps[0].applied, w.state().applied.unwrap());
    // Every damaged header byte is caught.
    let good = std::fs::read(&snaps[0].path).unwrap();
    for i in 0..40 {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(decode(&snaps[0].path, &bad).is_err(), "header byte {i}");
    }
    assert!(snapshot::encode(&tidings_projections::State::default()).is_none());
}

#[tokio::test]
async fn a_damaged_sidecar_is_named_and_never_served() {
    let w = busy_world().await;
    // 12 sends with a flush every 5 entries: two sidecars hold seqs 1..10 of "g".
    assert!(w.state().index.sidecars.len() >= 2);
    let side = w.state().index.sidecars[0];
    let path =
        tidings_projections::msgindex::sidecar_path(w.p.index_files().dir(), side.first_offset);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    // A fresh reader (no cached runs) sees the damage.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    let mut p = Projections::empty(dir.path(), config()).unwrap();
    p.state = w.state().clone();
    match messages::plan_range(&p.state, p.index_files(), "g", 1, 12) {
        Err(ProjectionError::Corrupt {
            path: bad,
            position,
            ..
        }) => {
            assert_eq!(bad.file_name(), path.file_name());
            assert!(position >= 32);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let failures = p.check_index_files();
    assert_eq!(failures.len(), 1, "{failures:?}");
    // Messages in the undamaged sidecar and in memory still read.
    let plan = messages::plan_range(&p.state, p.index_files(), "g", 11, 12).unwrap();
    assert_eq!(plan.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![11, 12]);
}

/// A state that has applied offsets the log does not hold (a snapshot newer than what a power
/// cut left of the log) is refused, not silently continued from the log's end.
#[tokio::test]
async fn a_state_ahead_of_the_log_is_refused() {
    let mut w = busy_world().await;
    let applied_to = w.state().next_offset();
    let dir = tempfile::tempdir().unwrap();
    let short = tidings_log::Log::open(dir.path(), tidings_log::LogOptions::default())
        .await
        .unwrap();
    match w.p.catch_up(&short, |_, _| {}).await {
        Err(ProjectionError::AheadOfLog {
            applied_to: a,
            log_end: 0,
        }) => assert_eq!(a, applied_to),
        other => panic!("expected AheadOfLog, got {other:?}"),
    }
    short.close().await.unwrap();
}

/// A busy world's log over several segments, closed, with segment `i` (its three files)
/// removed, and opened again; returns its directory (keep it while the log is open), the log
/// and what the removed segment was.
async fn a_log_without_segment(
    i: usize,
) -> (
    tempfile::TempDir,
    tidings_log::Log,
    tidings_log::SegmentInfo,
) {
    let mut w = busy_world().await;
    for i in 0..200 {
        w.send("alice", "g", &format!("filler {i} {}", "x".repeat(200)))
            .await
            .unwrap();
    }
    let segs = w.log.segments().unwrap();
    assert!(segs.len() >= i + 3, "{} segments", segs.len());
    let gone = segs[i].clone();
    let log_dir = gone.path.parent().unwrap().to_path_buf();
    w.log.close().await.unwrap();
    for ext in ["log", "index", "timeindex"] {
        let _ = std::fs::remove_file(gone.path.with_extension(ext));
    }
    let log = tidings_log::Log::open(&log_dir, tidings_log::LogOptions::default())
        .await
        .unwrap();
    (w.dir, log, gone)
}

/// A log whose oldest segments are gone (a tiered log opened without its object store) cannot
/// rebuild a state from offset 0: a typed error, never a state that silently starts later.
#[tokio::test]
async fn a_log_missing_its_first_segments_is_refused_for_a_rebuild_from_zero() {
    let (_dir, log, _) = a_log_without_segment(0).await;
    let log_start = log.start_offset();
    assert!(log_start > 0);
    let dir = tempfile::tempdir().unwrap();
    let mut p = Projections::empty(dir.path(), config()).unwrap();
    match p.catch_up(&log, |_, _| {}).await {
        Err(ProjectionError::HistoryMissing {
            needed: 0,
            log_start: s,
        }) => assert_eq!(s, log_start),
        other => panic!("expected HistoryMissing, got {other:?}"),
    }
    log.close().await.unwrap();
}

/// A gap inside the log (a middle segment gone, as tiering's retention can leave a tiered log
/// opened without its store) stops a replay with a typed error at the gap: no event after it
/// is applied as if the ones in it had never been.
#[tokio::test]
async fn a_gap_in_the_log_is_refused_not_skipped() {
    let (_dir, log, gap) = a_log_without_segment(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Projections::empty(dir.path(), config()).unwrap();
    match p.catch_up(&log, |_, _| {}).await {
        Err(ProjectionError::HistoryMissing { needed, log_start }) => {
            assert_eq!((needed, log_start), (gap.base_offset, gap.end_offset));
        }
        other => panic!("expected HistoryMissing, got {other:?}"),
    }
    log.close().await.unwrap();
}

/// A snapshot written under the rules of version 1 (a send moved the sender's delivered cursor
/// past messages they never received) is not carried on: it is refused as outdated, not as
/// damage, and the state is rebuilt from the log under the current rules.
#[tokio::test]
async fn a_snapshot_of_an_earlier_format_is_refused_and_the_log_replayed() {
    let mut w = busy_world().await;
    // bob replies without having received anything: current rules keep his delivered at 0.
    w.send("bob", "g", "reply").await.unwrap();
    let snap = w.p.snapshot().unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    let copy = dir.path().join("snapshots").join(snap.file_name().unwrap());
    // What version 1 would have held: bob's delivered cursor at his reply (seq 13).
    let mut state = decode(&copy, &std::fs::read(&copy).unwrap()).unwrap();
    let bob = state.cursors.by_user.get_mut("bob").unwrap();
    bob.get_mut("g").unwrap().delivered = 13;
    let current = snapshot::encode(&state).unwrap();
    let bytes = short_header(1, state.applied.unwrap(), &current[40..]);
    std::fs::write(&copy, &bytes).unwrap();
    match decode(&copy, &bytes) {
        Err(ProjectionError::SnapshotOutdated {
            path,
            version: 1,
            current: 9,
        }) => assert_eq!(path, copy),
        other => panic!("expected SnapshotOutdated, got {other:?}"),
    }
    // An unknown (newer) version is corrupt.
    let mut newer = current.clone();
    newer[4..8].copy_from_slice(&10u32.to_le_bytes());
    assert!(matches!(
        decode(&copy, &newer),
        Err(ProjectionError::Corrupt { position: 4, .. })
    ));

    let mut p = Projections::load(dir.path(), config()).unwrap();
    assert_eq!(p.origin(), &Origin::Empty);
    p.catch_up(&w.log, |_, _| {}).await.unwrap();
    assert_eq!(&p.state, w.state());
    assert_eq!(p.state.cursors.get("bob", "g").delivered, 0);
}

/// The anchor (the CRC of the log's record at the snapshot's offset) goes into the header and
/// comes back with the state; a snapshot written without one loads without one; damage to the
/// anchor is caught by the header's CRC.
#[tokio::test]
async fn a_snapshot_carries_its_anchor() {
    let w = busy_world().await;
    let mut prepared = w.p.prepare_snapshot().unwrap();
    let applied = prepared.applied();
    assert_eq!(Some(applied), w.state().applied);
    let anchor = snapshot::anchor_at(&w.log, applied).await.unwrap().unwrap();
    let record = w.log.read(applied, 0).await.unwrap();
    let record = record.iter().find(|r| r.offset == applied).unwrap();
    assert_eq!(anchor, snapshot::anchor_of(&record.payload));
    assert_eq!(
        snapshot::anchor_at(&w.log, w.log.next_offset())
            .await
            .unwrap(),
        None
    );
    prepared.set_anchor(anchor);
    let path = prepared.write().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    let p = Projections::load(dir.path(), config()).unwrap();
    assert_eq!(p.snapshot_anchor(), Some(anchor));
    assert_eq!(&p.state, w.state());

    let mut bytes = std::fs::read(&path).unwrap();
    bytes[29] ^= 0x01;
    assert!(matches!(
        decode(&path, &bytes),
        Err(ProjectionError::Corrupt { position: 0, .. })
    ));

    // Unanchored (the library's own `snapshot()`): loads, anchor unknown.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Projections::empty(dir.path(), config()).unwrap();
    p.catch_up(&w.log, |_, _| {}).await.unwrap();
    p.snapshot().unwrap().unwrap();
    let p = Projections::load(dir.path(), config()).unwrap();
    assert!(matches!(p.origin(), Origin::Snapshot(_)));
    assert_eq!(p.snapshot_anchor(), None);
}

/// `snapshot::check` (what the server's retention runs before it removes segments a snapshot
/// covers) accepts what loads, with its offset and anchor, and refuses every damaged byte of
/// the header, a damaged body byte and a cut file, without decoding the state.
#[tokio::test]
async fn a_snapshot_is_checked_without_decoding_its_state() {
    let w = busy_world().await;
    let mut prepared = w.p.prepare_snapshot().unwrap();
    let applied = prepared.applied();
    prepared.set_anchor(0xfeed_beef);
    let path = prepared.write().unwrap();
    let good = std::fs::read(&path).unwrap();
    assert_eq!(
        snapshot::check(&path, &good).unwrap(),
        snapshot::Checked {
            applied,
            anchor: Some(0xfeed_beef)
        }
    );
    for i in 0..40 {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(snapshot::check(&path, &bad).is_err(), "header byte {i}");
    }
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    assert!(matches!(
        snapshot::check(&path, &bad),
        Err(ProjectionError::Corrupt { position: 40, .. })
    ));
    assert!(snapshot::check(&path, &good[..good.len() - 1]).is_err());
    assert!(snapshot::check(&path, &good[..20]).is_err());
}

/// A snapshot named for another offset than it covers is not loaded (skipped as damaged): a
/// caller passing over it for an older one was handed it again, and looped.
#[tokio::test]
async fn a_snapshot_named_for_another_offset_is_not_loaded() {
    let w = busy_world().await;
    let path = w.p.prepare_snapshot().unwrap().write().unwrap();
    let applied = w.state().applied.unwrap();
    let dir = path.parent().unwrap();
    assert_eq!(
        snapshot::load_newest(dir).unwrap().unwrap().1.applied,
        applied
    );
    for name in [applied + 5, applied - 1] {
        let misnamed = dir.join(format!("{name:020}.snap"));
        std::fs::rename(snapshot::list(dir).unwrap()[0].path.clone(), &misnamed).unwrap();
        assert!(
            snapshot::load_newest(dir).unwrap().is_none(),
            "named {name}"
        );
        assert!(
            snapshot::load_newest_at_most(dir, Some(name))
                .unwrap()
                .is_none()
        );
    }
}

/// The short header of versions 1 and 2 (no anchor) around `body`.
fn short_header(version: u32, applied: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"TDSN");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&applied.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Versions 1 to 5 are outdated (their states lack rules made since), each recognised by its
/// own header; version 1 only when its short header is intact — a damaged version byte that
/// reads as 1 is damage, not an old format.
#[tokio::test]
async fn earlier_versions_are_outdated_and_a_damaged_version_is_damage() {
    let w = busy_world().await;
    let bytes = snapshot::encode(w.state()).unwrap();
    let body = &bytes[40..];
    let applied = w.state().applied.unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(w.p.dir(), dir.path());
    let path = dir
        .path()
        .join("snapshots")
        .join(format!("{applied:020}.snap"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    for v in [1, 2] {
        assert!(matches!(
            decode(&path, &short_header(v, applied, body)),
            Err(ProjectionError::SnapshotOutdated { version, .. }) if version == v
        ));
        // `check` agrees (it read the long header, and said the file was damaged).
        assert!(matches!(
            snapshot::check(&path, &short_header(v, applied, body)),
            Err(ProjectionError::SnapshotOutdated { version, .. }) if version == v
        ));
    }
    let long_header = |v: u32| {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    };
    for v in [4, 5] {
        assert!(matches!(
            decode(&path, &long_header(v)),
            Err(ProjectionError::SnapshotOutdated { version, .. }) if version == v
        ));
    }
    // Versions 6 to 8 are read as current (6: its edits' shape converts exactly, `heads.rs`;
    // 7: the index's sidecars below a `log_trimmed` start are let go at load, and 8: the
    // recalls and edits made below it, `state.rs`).
    for v in [6, 7, 8] {
        assert_eq!(&decode(&path, &long_header(v)).unwrap(), w.state());
    }
    let v3 = long_header(3);
    assert!(matches!(
        decode(&path, &v3),
        Err(ProjectionError::SnapshotOutdated { version: 3, .. })
    ));
    std::fs::write(&path, &v3).unwrap();
    let p = Projections::load(dir.path(), config()).unwrap();
    assert_eq!(p.origin(), &Origin::Empty);

    // A current file whose version byte was damaged into 1: the short header's CRC fails.
    let mut damaged = bytes.clone();
    damaged[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        decode(&path, &damaged),
        Err(ProjectionError::Corrupt { position: 0, .. })
    ));
}

/// A sidecar deleted, cut short or damaged is made again from the log, byte for byte (two
/// channels interleaved, over several log segments); the reads that failed name it for the
/// server; a state that does not match the log (another history) gets no sidecar written under
/// its name; a range the log no longer holds is a typed error.
#[tokio::test]
async fn a_lost_or_damaged_sidecar_is_made_again_from_the_log() {
    use tidings_projections::index_repair::{rewrite_from_log, unreadable};
    use tidings_projections::msgindex::sidecar_path;
    let mut w = busy_world().await;
    w.create("h").await;
    w.subscribe("h", &["alice", "bob"]).await;
    for i in 0..60 {
        let ch = if i % 3 == 0 { "h" } else { "g" };
        w.send("bob", ch, &format!("n{i} {}", "y".repeat(300)))
            .await
            .unwrap();
    }
    assert!(w.log.segments().unwrap().len() >= 2);
    let sidecars = w.state().index.sidecars.clone();
    assert!(sidecars.len() >= 10, "{}", sidecars.len());
    let dir = w.p.index_files().dir().to_path_buf();
    let never = || false;
    assert!(unreadable(&dir, &sidecars).is_empty());
    let originals: Vec<Vec<u8>> = sidecars
        .iter()
        .map(|s| std::fs::read(sidecar_path(&dir, s.first_offset)).unwrap())
        .collect();

    // Deleted, cut short, damaged in place: each made again with the bytes it had.
    let (a, b, c) = (sidecars[1], sidecars[4], sidecars[7]);
    std::fs::remove_file(sidecar_path(&dir, a.first_offset)).unwrap();
    let cut = &originals[4][..originals[4].len() - 5];
    std::fs::write(sidecar_path(&dir, b.first_offset), cut).unwrap();
    let mut flipped = originals[7].clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0x40;
    std::fs::write(sidecar_path(&dir, c.first_offset), &flipped).unwrap();
    // A stat finds the first two; the damaged one has its length and is found by a read.
    assert_eq!(unreadable(&dir, &sidecars), vec![a, b]);
    // A reader without cached runs.
    let fresh = tidings_projections::msgindex::IndexFiles::open(&dir, 1 << 20).unwrap();
    for side in [a, b, c] {
        // The file's last run (the one the damage is in).
        let run = w
            .state()
            .index
            .runs
            .values()
            .flatten()
            .filter(|r| r.file == side.first_offset)
            .max_by_key(|r| r.first_entry);
        assert!(fresh.read_run(run.unwrap()).is_err());
    }
    let mut failed = fresh.take_failed();
    failed.sort_unstable();
    assert_eq!(failed, vec![a.first_offset, b.first_offset, c.first_offset]);
    assert!(fresh.take_failed().is_empty(), "taken once");
    for (i, side) in [(1, a), (4, b), (7, c)] {
        rewrite_from_log(&w.log, &dir, &side, &never).unwrap();
        assert_eq!(
            std::fs::read(sidecar_path(&dir, side.first_offset)).unwrap(),
            originals[i],
            "sidecar {i}"
        );
    }
    assert!(unreadable(&dir, &sidecars).is_empty());
    assert!(w.p.check_index_files().is_empty());
    // A header byte (here the entry count) is found by the start's check too.
    let d = sidecars[2];
    let mut header_flipped = originals[2].clone();
    header_flipped[8] ^= 0x01;
    std::fs::write(sidecar_path(&dir, d.first_offset), &header_flipped).unwrap();
    assert_eq!(unreadable(&dir, &sidecars), vec![d]);
    rewrite_from_log(&w.log, &dir, &d, &never).unwrap();
    assert!(unreadable(&dir, &sidecars).is_empty());
    let plan = messages::plan_range(&w.p.state, &fresh, "g", 1, 100).unwrap();
    assert_eq!(plan.len() as u64, w.state().heads.last_seq("g"));

    // A record that does not match what this log makes: nothing written.
    std::fs::remove_file(sidecar_path(&dir, a.first_offset)).unwrap();
    let other = tidings_projections::msgindex::Sidecar {
        crc: a.crc ^ 1,
        ..a
    };
    match rewrite_from_log(&w.log, &dir, &other, &never) {
        Err(ProjectionError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, sidecar_path(&dir, a.first_offset));
            assert!(
                reason.contains("not the one the state was built from"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let more = tidings_projections::msgindex::Sidecar {
        entries: a.entries + 1,
        ..a
    };
    assert!(rewrite_from_log(&w.log, &dir, &more, &never).is_err());
    assert!(!sidecar_path(&dir, a.first_offset).exists());
    // Stopped before it reads: nothing written.
    assert!(matches!(
        rewrite_from_log(&w.log, &dir, &a, &|| true),
        Err(ProjectionError::Stopped)
    ));
    assert!(!sidecar_path(&dir, a.first_offset).exists());
    rewrite_from_log(&w.log, &dir, &a, &never).unwrap();
    assert_eq!(
        std::fs::read(sidecar_path(&dir, a.first_offset)).unwrap(),
        originals[1]
    );
}

/// A sidecar whose range the log no longer holds (its first segments gone) cannot be made
/// again: a typed error naming where the log starts, and nothing written.
#[tokio::test]
async fn a_sidecar_below_the_logs_start_is_not_made_again() {
    use tidings_projections::index_repair::rewrite_from_log;
    use tidings_projections::msgindex::{Sidecar, sidecar_path};
    let (_dir, log, _) = a_log_without_segment(0).await;
    let start = log.start_offset();
    let out = tempfile::tempdir().unwrap();
    let side = Sidecar {
        first_offset: 1,
        last_offset: start + 2,
        entries: 3,
        crc: 0,
    };
    match rewrite_from_log(&log, out.path(), &side, &|| false) {
        Err(ProjectionError::HistoryMissing { needed, log_start }) => {
            assert_eq!((needed, log_start), (1, start));
        }
        other => panic!("expected HistoryMissing, got {other:?}"),
    }
    assert!(!sidecar_path(out.path(), 1).exists());
    log.close().await.unwrap();
}
