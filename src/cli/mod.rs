//! Operator subcommands. Errors are `anyhow` here (and only here and in `main`).

pub(crate) mod inspect;
pub(crate) mod json;
pub(crate) mod rebuild;
pub(crate) mod replay;
pub(crate) mod tier;
pub(crate) mod verify;

use tidings_log::{Log, LogError, LogOptions};

use crate::data::DataDir;

/// Opens the log read-only (works while a server is running).
pub(crate) async fn open_read_only(data: &DataDir) -> anyhow::Result<Log> {
    let path = data.log();
    Log::open(&path, LogOptions::default().with_read_only(true))
        .await
        .map_err(|e| anyhow::anyhow!("opening the log in {}: {e}", path.display()))
}

/// Opens the log for writing (the server must be stopped).
pub(crate) async fn open_exclusive(data: &DataDir) -> anyhow::Result<Log> {
    let path = data.log();
    match Log::open(&path, LogOptions::default()).await {
        Ok(log) => Ok(log),
        Err(LogError::Locked { .. }) => anyhow::bail!(
            "the log in {} is in use: stop the server first",
            path.display()
        ),
        Err(e) => Err(anyhow::anyhow!(
            "opening the log in {}: {e}",
            path.display()
        )),
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
