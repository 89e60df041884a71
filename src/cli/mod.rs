//! Operator subcommands. Errors are `anyhow` here (and only here and in `main`).

/// Prints a line to stdout as `println!` does, but a reader that went away (`tidings inspect |
/// head`) is not a panic (it was: exit 101 and a message): the line is dropped, and the command
/// goes on to its end and its exit code (a `compact` or `rebuild` must not stop midway for
/// it). Another write error (a full disk under `> report`) is told on stderr once, and the
/// command then exits 1 whatever it found ([`stdout_failed`]): its report is incomplete.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::stdout_error(&e);
        }
    }};
}
pub(crate) use out;

/// Set by [`out!`] at a write error other than a closed pipe.
static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`out!`]'s error: a closed pipe is no failure; another is told once and remembered.
pub(crate) fn stdout_error(e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe
        && !STDOUT_FAILED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!("writing to stdout failed, so the output is incomplete: {e}");
    }
}

/// Whether [`out!`] failed to write (but for a closed pipe).
pub(crate) fn stdout_failed() -> bool {
    STDOUT_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `n` and the word for it: `1 record`, `2 records` (`one` and `many` the two forms).
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

pub(crate) mod compact;
pub(crate) mod inspect;
pub(crate) mod json;
pub(crate) mod rebuild;
pub(crate) mod replay;
pub(crate) mod tier;
pub(crate) mod trace;
pub(crate) mod verify;

use tidings_log::{Log, LogError, LogOptions};
use tidings_projections::{Origin, ProjectionConfig, Projections, snapshot};

use crate::data::DataDir;

/// `--data`'s parser: a path that exists and is not a directory is a usage error naming it (the
/// commands failed later on a path under it: `list /tmp/f/projections/snapshots: Not a
/// directory`, or `no log segments in /tmp/f/log`). One that does not exist is left to the
/// command, which names what it looked for.
pub(crate) fn data_dir(arg: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(arg);
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_dir() => Err(format!("{arg} is not a directory")),
        _ => Ok(path),
    }
}

/// Refuses a data directory whose log has no segment: nothing to `what`. And opening one would
/// create it, which a server about to restore this directory from the object store would then
/// take for a history of its own.
/// A file another name ending in `.log` (`notes.log`, a backup's `old-….log`) is not a segment:
/// counted as one, it let `rebuild` create segment 0 and say it succeeded (review, 2026-12-03).
pub(crate) fn ensure_segments(data: &DataDir, what: &str) -> anyhow::Result<()> {
    let has_segments = std::fs::read_dir(data.log()).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| is_segment_name(&e.file_name().to_string_lossy()))
    });
    anyhow::ensure!(
        has_segments,
        "no log segments in {}: nothing to {what}",
        data.log().display()
    );
    Ok(())
}

/// Whether `name` is a segment's: `{base:020}.log`, its base below 2^63 (the log's rule).
pub(crate) fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(".log").is_some_and(|b| {
        b.len() == 20
            && b.bytes().all(|c| c.is_ascii_digit())
            && b.parse::<u64>().is_ok_and(|base| base < 1 << 63)
    })
}

/// The projections in `dir` from the newest snapshot covering at most offset `max` (any, with
/// `None`) that was made from this log's history, or empty ones when there is none. A snapshot
/// made from another history of the log (its anchor differs from the record `log` holds at its
/// offset) would carry that history's state into a snapshot anchored to this log: it is
/// skipped, saying so, and the next older one tried (the server sets such a snapshot aside).
pub(crate) async fn load_this_history(
    dir: &std::path::Path,
    config: ProjectionConfig,
    log: &Log,
    mut max: Option<u64>,
) -> anyhow::Result<Projections> {
    loop {
        let p = Projections::load_at_most(dir, config.clone(), max)?;
        if p.anchor_matches(log).await? != Some(false) {
            return Ok(p);
        }
        let applied = p.state.applied.unwrap_or(0);
        if let Origin::Snapshot(path) = p.origin() {
            eprintln!(
                "skipping snapshot {}: it was made from another history of the log (the record at offset {applied} differs)",
                path.display()
            );
        }
        match applied.checked_sub(1) {
            Some(m) => max = Some(m),
            None => return Ok(Projections::empty(dir, config)?),
        }
    }
}

/// The projections of the newest snapshot of this log's history that covers at most the log's
/// last record, in the temporary directory `tmp` (the data directory is only read): a snapshot
/// made from another history of the log (its anchor differs from the record `log` holds at its
/// offset) is passed over for the next older one; without one, empty projections. Shaped like
/// the snapshot, and not caught up: [`Projections::catch_up`] brings them to the log's end
/// (writing any message index sidecar due into `tmp`). For `compact`'s plan and `trace`.
pub(crate) async fn load_read_only(
    data: &DataDir,
    log: &Log,
    tmp: &std::path::Path,
) -> anyhow::Result<Projections> {
    let base = ProjectionConfig::default();
    let Some(last) = log.next_offset().checked_sub(1) else {
        return Ok(Projections::empty(tmp, base)?);
    };
    let snapshots = data.projections().join("snapshots");
    let mut max = Some(last);
    loop {
        let Some((state, _, anchor)) = snapshot::load_newest_anchored(&snapshots, max)? else {
            return Ok(Projections::empty(tmp, base)?);
        };
        let applied = state.applied.unwrap_or(0);
        let ours = match anchor {
            Some(anchor) => snapshot::anchor_at(log, applied)
                .await?
                .is_none_or(|found| found == anchor),
            None => true,
        };
        if ours {
            let mut p = Projections::empty(tmp, base.shaped_like(&state))?;
            p.state = state;
            return Ok(p);
        }
        let Some(older) = applied.checked_sub(1) else {
            return Ok(Projections::empty(tmp, base)?);
        };
        max = Some(older);
    }
}

/// Opens the log read-only (works while a server is running); first warns, on stderr, when
/// a newer build's data format is recorded there (`DATA/FORMAT`: the commands that take the
/// lock refuse such a directory; these read it, and may misread it).
pub(crate) async fn open_read_only(data: &DataDir) -> anyhow::Result<Log> {
    if let Some(warning) = data.newer_format() {
        eprintln!("warning: {warning}");
    }
    let path = data.log();
    Log::open(&path, LogOptions::default().with_read_only(true))
        .await
        .map_err(|e| anyhow::anyhow!("opening the log in {}: {e}", path.display()))
}

/// Opens the log for writing (the server must be stopped). Like the server, it refuses to cut
/// a damaged last batch whose records a snapshot says were acknowledged
/// ([`crate::server::acknowledged_through`]): a `rebuild` or `compact` must not do what a
/// start refuses.
pub(crate) async fn open_exclusive(data: &DataDir) -> anyhow::Result<Log> {
    let path = data.log();
    let opts =
        LogOptions::default().with_acknowledged_through(crate::server::acknowledged_through(data)?);
    match Log::open(&path, opts).await {
        Ok(log) => Ok(log),
        Err(LogError::Locked { .. }) => anyhow::bail!(
            "the log in {} is in use: stop the server first",
            path.display()
        ),
        Err(e) => Err(crate::server::log_open_refused(e, data)),
    }
}

/// A projections error in words for an operator: a log whose segments are partly only in the
/// object store cannot be replayed across them by these commands, which read local segments
/// only.
pub(crate) fn explain(e: tidings_projections::ProjectionError) -> anyhow::Error {
    match e {
        tidings_projections::ProjectionError::HistoryMissing { needed, log_start } => {
            anyhow::anyhow!(
                "this needs events from offset {needed}, but the local log's next record is at \
                 offset {log_start}: the segments between are only in the object store \
                 (tiering) or were removed, and this command reads local segments only. Start \
                 from a snapshot at or after offset {log_start} if the local segments run \
                 without a gap from there (`tidings rebuild --from-snapshot`)."
            )
        }
        other => other.into(),
    }
}

/// Whether `e` is a file that is no longer there (a snapshot a running server pruned after it
/// was listed).
pub(crate) fn vanished(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}
