//! The files of a foyer disk cache, which foyer itself never removes (the cold-read block cache
//! here, the conversation cache in `tidings-projections`).
//!
//! foyer 0.22's `FsDevice` keeps one file per engine block in its directory, named
//! `foyer-storage-direct-fs-{id:08}`, and a block engine opens the first `capacity / block
//! size` of them (both rounded to foyer's 4 KiB page; no tombstone log, which our caches do not
//! enable). Files past that count are never opened again, nor removed: a cache reopened smaller
//! left them on disk for good (a 16 GiB block cache shrunk to 1 GiB kept ~15 GiB). And
//! `RecoverMode::None` only skips the scan at open: the blocks a run does not overwrite keep
//! their entries, and the next open that recovers finds them again (the earlier run's higher
//! sequence numbers even win over the later run's entries for the same key). So a cache that
//! must not serve its earlier entries removes its files first.

use std::io;
use std::path::Path;

/// foyer names a partition file this, then its id zero-padded to 8 digits (`FsDevice::filename`).
const PREFIX: &str = "foyer-storage-direct-fs-";

/// foyer aligns a device's capacity down, and an engine block's size up, to this (`PAGE`).
const PAGE: usize = 4096;

/// The files a foyer `FsDevice` of `capacity` bytes uses under a block engine whose blocks are
/// `block_size` bytes (with no tombstone log): as foyer rounds them, the capacity over the
/// block size.
pub fn files_used(capacity: usize, block_size: usize) -> usize {
    let block = block_size.max(1).div_ceil(PAGE) * PAGE;
    (capacity - capacity % PAGE) / block
}

/// Removes the foyer partition files in `dir` numbered `first` or above (`first = 0`: all of
/// them), before the cache is built on it; returns how many it removed. Nothing else is
/// touched: only regular files named exactly as foyer names them (the conversation cache keeps
/// a file of its own beside them, `UNTRUSTED`).
pub fn remove_files_from(dir: &Path, first: usize) -> io::Result<usize> {
    let with_path = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| with_path("listing", dir, e))? {
        let entry = entry.map_err(|e| with_path("listing", dir, e))?;
        let Some(id) = entry.file_name().to_str().and_then(partition_id) else {
            continue;
        };
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(|e| with_path("reading the type of", &path, e))?
            .is_file();
        if id < first as u64 || !is_file {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path("removing", &path, e)),
        }
    }
    if removed > 0 {
        tracing::info!(
            dir = %dir.display(),
            removed,
            kept = first,
            "removed disk-cache files the cache no longer uses"
        );
    }
    Ok(removed)
}

/// The partition id in a file name foyer gives (`{PREFIX}{id:08}`), or `None` for any other.
fn partition_id(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_foyers() {
        // 16 MiB over 2 MiB blocks; over 2 MiB + 8 KiB blocks (7 whole ones); a capacity
        // rounded down to its page first, and a block size rounded up.
        assert_eq!(files_used(16 << 20, 2 << 20), 8);
        assert_eq!(files_used(16 << 20, (2 << 20) + 8192), 7);
        assert_eq!(files_used((16 << 20) + 4095, 2 << 20), 8);
        assert_eq!(files_used(16 << 20, (2 << 20) - 1), 8);
        assert_eq!(files_used(16 << 20, (2 << 20) + 1), 7);
        assert_eq!(files_used(1 << 30, 16 << 20), 64);
    }

    #[test]
    fn only_foyers_files_at_or_past_the_first_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for id in 0..10 {
            std::fs::write(dir.path().join(format!("{PREFIX}{id:08}")), b"x").unwrap();
        }
        let others = [
            "foyer-storage-direct-fs-0000007", // 7 digits
            "foyer-storage-direct-fs-00000007.bak",
            "foyer-storage-direct-fs-",
            "foyer-storage-direct-fs-0000000x",
            "foyer-storage-direct-fs-99999999999999999999999", // past u64
            "notes.txt",
            // The conversation cache's mark of lists not to be reused (tidings-projections).
            "UNTRUSTED",
        ];
        for name in others {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // A directory under a foyer name is not foyer's.
        std::fs::create_dir(dir.path().join(format!("{PREFIX}{:08}", 12))).unwrap();
        assert_eq!(remove_files_from(dir.path(), 4).unwrap(), 6);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = (0..4)
            .map(|id| format!("{PREFIX}{id:08}"))
            .chain(others.iter().map(|s| s.to_string()))
            .chain([format!("{PREFIX}{:08}", 12)])
            .collect();
        want.sort();
        assert_eq!(left, want);
        assert_eq!(remove_files_from(dir.path(), 0).unwrap(), 4);
        assert_eq!(remove_files_from(dir.path(), 0).unwrap(), 0);
    }
}
