//! `tidings replay`: events as NDJSON, one per line, pipe-friendly.

use std::io::Write;
use std::process::ExitCode;

use tidings_projections::Envelope;

use crate::cli::json::event_line;
use crate::data::DataDir;

/// Options of `tidings replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
    /// First offset to print.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Last offset to print (inclusive).
    #[arg(long)]
    to: Option<u64>,
    /// Only events about this channel, as the admin names it over HTTP: a group id, or a
    /// person channel as p:{uid_a}:{uid_b} (in either order).
    #[arg(long, value_parser = super::trace::parse_channel)]
    channel: Option<String>,
    /// Keep waiting for new events.
    #[arg(long)]
    follow: bool,
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    // A usage error, whatever the log holds (it printed nothing and exited 0, or on a log
    // starting later said the offsets were not in the local log).
    if let Some(to) = args.to
        && to < args.from
    {
        anyhow::bail!(
            "--to {to} is before --from {}: no offsets to print (both are included in the range)",
            args.from
        );
    }
    let data = DataDir::new(&args.data);
    let log = super::open_read_only(&data).await?;
    if let Some(why) = unavailable(&args, log.start_offset(), log.next_offset()) {
        anyhow::bail!("{why}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Older offsets may be only in the object store (tiering) or removed: say where the
    // replay starts instead of starting later silently.
    if args.from < log.start_offset() {
        eprintln!(
            "the local log starts at offset {} (older segments are only in the object store, or were removed): replaying from there, not from {}",
            log.start_offset(),
            args.from
        );
    }
    let mut tail = log.tail(args.from.max(log.start_offset()));
    let mut bad = 0u64;
    let end = log.next_offset();
    let mut end_checked = false;
    'outer: loop {
        let next = tail.position();
        if args.to.is_some_and(|to| next > to) {
            break;
        }
        // The read at the end fails when the active segment's valid data ends at damage that
        // valid data follows (which `serve` refuses to start on): the replay stops with that
        // error, as at damage in a sealed segment, not as at the end of the log. With
        // `--follow` too: it waited in silence for records no server could write.
        if next == end && !end_checked {
            end_checked = true;
            log.read(end, 0).await?;
        }
        if !args.follow && next >= end {
            break;
        }
        let batch = tail.next_batch(4 << 20).await?;
        for rec in batch {
            if args.to.is_some_and(|to| rec.offset > to) || (!args.follow && rec.offset >= end) {
                break 'outer;
            }
            let line = match Envelope::decode(rec.offset, &rec.payload) {
                Ok(env) => {
                    if args
                        .channel
                        .as_deref()
                        .is_some_and(|c| env.event.channel() != Some(c))
                    {
                        continue;
                    }
                    event_line(rec.offset, rec.timestamp_ms, &env)
                }
                Err(e) => {
                    bad += 1;
                    serde_json::json!({"offset": rec.offset, "error": e.to_string()}).to_string()
                }
            };
            let written = out
                .write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => {}
                // The reader went away (`| head`): that is a normal end (a failure still, when
                // an invalid record was printed before it).
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(gone(bad));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if args.follow {
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(gone(bad));
                }
                other => other?,
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(gone(bad)),
        other => other?,
    }
    log.close().await?;
    if bad > 0 {
        eprintln!("{bad} records were not valid events (printed with an \"error\" field)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code when the reader went away after `bad` invalid records were printed.
fn gone(bad: u64) -> ExitCode {
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Why none of the requested range can be printed, if so: it ends before the local log starts,
/// or (without `--follow`, which waits for it) it starts past the log's end. An empty output
/// with exit 0 would read as a range without events. `start` and `end` are the log's first
/// offset and one past its last.
fn unavailable(args: &ReplayArgs, start: u64, end: u64) -> Option<String> {
    if let Some(to) = args.to
        && to < start
    {
        return Some(format!(
            "offsets {} to {to} are not in the local log, which starts at offset {start} (older \
             segments are only in the object store, or were removed)",
            args.from
        ));
    }
    if !args.follow && args.from > end {
        return Some(format!(
            "nothing at offset {}: the log ends at offset {end} (--follow waits for it)",
            args.from
        ));
    }
    None
}
