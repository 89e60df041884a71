//! Whether the log can be replayed from offset 0 now: checked before every snapshot is set aside
//! for such a replay (the server's start and `tidings rebuild` under other projections
//! settings). They go aside before the replay, not after it, since the replay rewrites the
//! message index sidecars they name; so a replay that then fails leaves the directory with no
//! snapshot, and every later start, under any settings, needs the whole log (until 2026-11-30
//! a tiered directory started without its store, or with the store down, or a local log with a
//! hole, was left so).

use anyhow::Context;
use tidings_log::{Log, LogError, SegmentInfo};

/// Checks, as far as can be told without reading the whole log, that every offset from 0 can be
/// read now: the log starts at offset 0; the object store answers when some segments are only
/// there (asked directly: the block cache on disk may hold what the probes below read, and not
/// the rest); and the last record before each segment's base reads. Offsets are dense, so a
/// segment that ends before the next one's base (a hole: a segment removed by hand, or left only
/// in the store by the retention of a build before 2026-11-30 and read here without the store)
/// fails there as a gap, and a segment only in the store is read once through the tier.
/// Then every batch of the local segments is read and checked, as the replay would read them:
/// damage inside one (where a start from a snapshot past it never reads) failed the replay
/// after the snapshots went aside, and the directory then started under neither settings
/// (found by a QA round). Segments only in the store are probed, not read whole (the replay
/// meets damage there as it did). Costs a read of the local log, and one GET per segment
/// only in the store, past the block cache.
pub(crate) async fn check(log: &Log) -> anyhow::Result<()> {
    let segments = log.segments()?;
    if let Some(tier) = log.tier()
        && segments.iter().any(|s| s.remote)
    {
        tier.remote_manifest().await.with_context(|| {
            format!(
                "some of the log's segments are only in the object store {}, which does not answer",
                tier.display()
            )
        })?;
    }
    let log = log.clone();
    tokio::task::spawn_blocking(move || read_segment_ends(&log, &segments))
        .await
        .context("checking the log's segments")?
}

/// The blocking part of [`check`]: where the log starts, and the last record before each of
/// `segments`' bases (the log's segments, oldest first).
fn read_segment_ends(log: &Log, segments: &[SegmentInfo]) -> anyhow::Result<()> {
    let start = log.start_offset();
    let which = if log.tier().is_some() {
        "tiered"
    } else {
        "local"
    };
    anyhow::ensure!(
        start == 0,
        "the {which} log starts at offset {start} ({})",
        not_here(log)
    );
    let end = log.next_offset();
    for pair in segments.windows(2) {
        let [before, seg] = pair else { continue };
        let Some(last) = seg.base_offset.checked_sub(1).filter(|&o| o < end) else {
            continue;
        };
        match log.read_blocking(last, 1) {
            Ok(_) => {}
            Err(LogError::Gap { .. }) => anyhow::bail!(
                "offset {last}, the last before the segment at offset {}, is in no segment: the segment at offset {} ends before it ({})",
                seg.base_offset,
                before.base_offset,
                not_here(log)
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading offset {last}, the last before the segment at offset {}",
                    seg.base_offset
                )));
            }
        }
    }
    // Then every local batch, after the probes (whose errors name a hole).
    for seg in segments.iter().filter(|s| !s.remote) {
        log.check_segment(seg.base_offset).with_context(|| {
            format!(
                "reading the segment at offset {} whole (`tidings inspect` names every damaged batch)",
                seg.base_offset
            )
        })?;
    }
    Ok(())
}

/// Where segments the log lacks may be, for messages.
fn not_here(log: &Log) -> String {
    match log.tier() {
        Some(t) => format!(
            "the segments missing are not local, and the object store {} lists none there that this log reads: see `tidings tier status`",
            t.display()
        ),
        None => "the segments missing are only in the object store, which this log is read without, or were removed".into(),
    }
}
