//! `tidings inspect`: list segments, offsets and sizes, check every CRC; list snapshots and
//! check the message index sidecars; name the other files a crash, a rewrite or a start under
//! other settings left beside them (rewrite leftovers, re-upload markers, purge temp files,
//! set-aside snapshots, cut-short snapshot writes), which are not problems and which it leaves
//! in place (it changes nothing).

use std::path::Path;
use std::process::ExitCode;

use tidings_projections::snapshot;

use crate::data::DataDir;

/// Options of `tidings inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
}

/// The bytes past `valid` (where the active segment's whole batches end) in `path` that are
/// not the zeros a preallocated segment holds there (`None`: none). A torn or damaged last
/// batch is the end of the data to every reader, and the next start cuts it: `inspect`
/// showed the segment `ok` and its shorter length without a word (found by a QA round).
/// The first 4 KiB past `valid` are looked at: a batch begins with its non-zero magic.
fn torn_tail(path: &std::path::Path, valid: u64) -> Option<u64> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len <= valid {
        return None;
    }
    file.seek(std::io::SeekFrom::Start(valid)).ok()?;
    let mut head = Vec::with_capacity(4096);
    (&mut file).take(4096).read_to_end(&mut head).ok()?;
    if head.iter().all(|&b| b == 0) {
        return None;
    }
    // Up to the zeros after it (the rest of a preallocated segment), or the file's end.
    let mut rest = Vec::new();
    file.seek(std::io::SeekFrom::Start(valid)).ok()?;
    file.take(64 << 20).read_to_end(&mut rest).ok()?;
    let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    Some(end as u64)
}

pub(crate) async fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let data = DataDir::new(&args.data);
    let log = super::open_read_only(&data).await?;
    let mut problems = 0;
    super::out!("log {}", data.log().display());
    super::out!(
        "{:>20} {:>20} {:>12} {:>8} {:>9}  status",
        "base",
        "end",
        "bytes",
        "state",
        "batches"
    );
    let (mut total_bytes, mut total_records) = (0u64, 0u64);
    for seg in log.segments()? {
        let state = if seg.sealed { "sealed" } else { "active" };
        // A log directory with no segment yet (a server stopped before its log opened, or
        // one made by hand): the view lists the active segment a first open would create.
        if !seg.sealed && seg.bytes == 0 && !seg.path.exists() {
            super::out!(
                "{:>20} {:>20} {:>12} {:>8} {:>9}  empty: no file yet (the first open creates it)",
                seg.base_offset,
                seg.end_offset,
                0,
                state,
                0
            );
            continue;
        }
        let l = log.clone();
        let base = seg.base_offset;
        let check = tokio::task::spawn_blocking(move || l.check_segment(base)).await?;
        let (batches, status) = match check {
            Ok(c) if !seg.sealed => {
                total_records += c.records;
                let status = match torn_tail(&seg.path, seg.bytes) {
                    Some(n) => format!(
                        "ok; {} past the last whole batch are no batch (a write a crash cut \
                         short, or a damaged last batch: the next start cuts them — or refuses, \
                         when a snapshot covers them under fsync always — and a server writing \
                         right now may be writing them)",
                        super::count(n, "byte", "bytes")
                    ),
                    None => "ok".to_string(),
                };
                (c.batches.to_string(), status)
            }
            Ok(c) => {
                total_records += c.records;
                (c.batches.to_string(), "ok".to_string())
            }
            // The offsets after the segment's last record are in no file (a segment removed,
            // or this one cut short at a batch's end).
            Err(e @ tidings_log::LogError::Gap { .. }) => {
                problems += 1;
                ("-".into(), format!("GAP after it: {e}"))
            }
            Err(e) => {
                problems += 1;
                ("-".into(), format!("CORRUPT: {e}"))
            }
        };
        total_bytes += seg.bytes;
        super::out!(
            "{:>20} {:>20} {:>12} {:>8} {:>9}  {status}",
            seg.base_offset,
            seg.end_offset,
            seg.bytes,
            state,
            batches
        );
    }
    super::out!(
        "offsets [{}, {}), {} checked, {}",
        log.start_offset(),
        log.next_offset(),
        super::count(total_records, "record", "records"),
        super::count(total_bytes, "byte", "bytes")
    );
    let log_end = log.next_offset();
    log.close().await?;
    for (name, what) in other_files(&data.log(), log_file_kind) {
        super::out!("other file {}: {what}", data.log().join(name).display());
    }

    let snap_dir = data.projections().join("snapshots");
    // The snapshot the server would load (the newest that decodes within the log's end) names
    // the sidecars checked below.
    let mut newest = None;
    for s in snapshot::list(&snap_dir)? {
        let len = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        let status = match std::fs::read(&s.path)
            .map_err(anyhow::Error::from)
            .and_then(|b| snapshot::decode(&s.path, &b).map_err(anyhow::Error::from))
        {
            // Looked at again first: a running server's snapshot may be newer than the look.
            Ok(_) if s.applied >= log_end && s.applied >= now_end(&log, log_end) => {
                if crate::server::last_run_unsynced(&data) {
                    format!(
                        "ok, but past the log's end (offset {log_end}): the log was last written \
                         under fsync every/never, so a power cut took those records; the server \
                         sets it aside and loads an older one"
                    )
                } else {
                    problems += 1;
                    format!(
                        "past the log's end (offset {log_end}), and the log was last written under \
                         fsync always: acknowledged records are missing, and the server refuses \
                         to start (README: \"The log lost acknowledged records\")"
                    )
                }
            }
            Ok(state) => {
                newest.get_or_insert(state);
                "ok".to_string()
            }
            Err(e)
                if matches!(
                    e.downcast_ref(),
                    Some(tidings_projections::ProjectionError::SnapshotOutdated { .. })
                ) =>
            {
                format!("outdated (not used): {e}")
            }
            // Pruned by a running server between the listing and the read: not damage.
            Err(e) if super::vanished(&e) => "gone (pruned while this ran)".to_string(),
            Err(e) => {
                problems += 1;
                format!("CORRUPT: {e}")
            }
        };
        super::out!(
            "snapshot {} (offset {}, {len} bytes): {status}",
            s.path.display(),
            s.applied
        );
    }
    for (name, what) in other_files(&snap_dir, snapshot_file_kind) {
        super::out!("other file {}: {what}", snap_dir.join(name).display());
    }
    if let Some(state) = newest {
        // Read in place: `IndexFiles::open` would create the directory, and inspect changes
        // nothing.
        let index_dir = data.projections().join("index");
        let mut ok = 0;
        let mut bad = 0;
        for side in &state.index.sidecars {
            match side.check_file(&index_dir) {
                Ok(()) => ok += 1,
                Err(e) => {
                    bad += 1;
                    super::out!("message index sidecar: CORRUPT: {e}");
                }
            }
        }
        super::out!(
            "message index: {} ok, {} in memory",
            super::count(ok as u64, "sidecar", "sidecars"),
            super::count(state.index.mem_len, "entry", "entries")
        );
        if bad > 0 {
            problems += bad;
            super::out!(
                "  (derived from the log: `tidings rebuild --sidecars` with the server stopped, or the server itself, makes them again)"
            );
        }
    }
    if problems > 0 {
        super::out!(
            "{} found",
            super::count(problems as u64, "problem", "problems")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The files in `dir` that `kind` names, by name, with what each is; none when `dir` cannot
/// be listed (a missing directory, or one the checks above already reported).
fn other_files(dir: &Path, kind: fn(&str) -> Option<&'static str>) -> Vec<(String, &'static str)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let what = kind(&name)?;
            Some((name, what))
        })
        .collect();
    out.sort();
    out
}

/// The log's end as a fresh look finds it (`end` when the look fails).
fn now_end(log: &tidings_log::Log, end: u64) -> u64 {
    log.refresh().map_or(end, |w| w.next_offset)
}

/// What a file in the log directory that is not a segment or its index is, if it is one a
/// rewrite, a purge or a hand left (`{base:020}.log.rewrite`, `.log.reupload`, `.log.purge`,
/// a `.log` not named `{base:020}.log`).
fn log_file_kind(name: &str) -> Option<&'static str> {
    let seg = |suffix: &str| {
        name.strip_suffix(suffix)
            .and_then(|n| n.strip_suffix(".log"))
            .is_some_and(|b| b.len() == 20 && b.bytes().all(|c| c.is_ascii_digit()))
    };
    if seg(".rewrite") {
        Some(
            "a segment rewrite in progress or cut short before its rename (the segment is whole under its own name; the next start removes it)",
        )
    } else if seg(".reupload") {
        Some(
            "marks a rewritten segment whose new bytes are not in the object store yet (the server's uploader finishes it)",
        )
    } else if seg(".purge") {
        Some(
            "a purge of a segment held only in the object store, in progress or cut short (the server's uploader finishes or removes it)",
        )
    } else if name.ends_with(".log") && !super::is_segment_name(name) {
        // The log's own rule: a base past 2^63 is not a segment either.
        Some("not named {base:020}.log (base below 2^63): not part of the log (ignored)")
    } else {
        None
    }
}

/// What a file in the snapshots directory that is not a snapshot is, if it is a set-aside
/// snapshot (`….snap.{why}`, kept for a post-mortem, the newest 3 of each kind) or a snapshot
/// write cut short (`.{offset:020}.snap.tmp`).
fn snapshot_file_kind(name: &str) -> Option<&'static str> {
    if name.starts_with('.') && name.ends_with(".snap.tmp") {
        Some("a snapshot write in progress or cut short (never loaded; the next start removes it)")
    } else if name.ends_with(".snap.ahead-of-log") {
        Some(
            "set aside: it covered events the log no longer held (never loaded again; kept for a post-mortem)",
        )
    } else if name.ends_with(".snap.other-history") {
        Some(
            "set aside: it described another history than this log's (never loaded again; kept for a post-mortem)",
        )
    } else if name.ends_with(".snap.other-settings") {
        Some(
            "set aside: made under other projections settings (never loaded again; kept for a post-mortem)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::log_file_kind;

    #[test]
    fn a_log_file_the_log_ignores_is_named_as_such() {
        assert_eq!(log_file_kind("00000000000000000000.log"), None);
        assert_eq!(log_file_kind("09223372036854775807.log"), None);
        for ignored in [
            "notes.log",
            "0.log",
            "09223372036854775808.log",
            "99999999999999999999.log",
        ] {
            let what = log_file_kind(ignored).unwrap_or_default();
            assert!(what.contains("not part of the log"), "{ignored}: {what}");
        }
        assert!(log_file_kind("00000000000000000000.log.rewrite").is_some());
    }
}
