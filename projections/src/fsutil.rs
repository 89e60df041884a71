//! Small file helpers: atomic writes and positional reads.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{ProjectionError, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a temp
/// file beside it, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |op, e| ProjectionError::io(op, &tmp, e);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_data().map_err(|e| io("sync", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| ProjectionError::io("rename", path, e))
    })();
    if written.is_err() {
        // A part written on a full disk would keep its space taken for good (the next write
        // of this name truncates it, but the name changes with every snapshot).
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ProjectionError::io("sync directory", dir, e))
}

/// Reads up to `len` bytes at `pos` (fewer only at end of file).
pub(crate) fn read_at(path: &Path, pos: u64, len: u64) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| ProjectionError::io("open", path, e))?;
    let file_len = f
        .metadata()
        .map_err(|e| ProjectionError::io("stat", path, e))?
        .len();
    let len = len.min(file_len.saturating_sub(pos));
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], pos + done as u64)
            .map_err(|e| ProjectionError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}
