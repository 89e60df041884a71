//! Preallocated segments (`log/DESIGN.md`, "Preallocation"): a thread of the writer's writes
//! the next segment's file ahead of time as zeros and syncs them, so that the writer then
//! overwrites blocks the file already has. `fdatasync` of an overwrite has no file size or
//! block allocation to journal; on this project's disk it is ~35% cheaper than one that grows
//! the file.
//!
//! The spare is a file named [`SPARE_NAME`] in the log directory. The writer takes it at a roll
//! and renames it to the new segment's name, then asks for the next one. A spare is only ever
//! zeros, written by this thread; a leftover from an earlier run is removed and written again,
//! never trusted.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use crate::vfs::Vfs;

/// The spare's name in the log directory (not a segment name, so nothing else reads it).
pub(crate) const SPARE_NAME: &str = "next-segment.zeros";

/// Zeros are written and synced this much at a time, so that the disk never has more than
/// this of them queued ahead of the log's own `fdatasync`.
const CHUNK: usize = 256 << 10;

const IDLE: u8 = 0;
const FILLING: u8 = 1;
const READY: u8 = 2;

/// A file of zeros, synced, ready to become the next segment (the writer renames it and opens
/// it by its new name).
pub(crate) struct Spare {
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

struct Shared {
    state: AtomicU8,
    spare: Mutex<Option<Spare>>,
    stop: AtomicBool,
}

fn lock(m: &Mutex<Option<Spare>>) -> MutexGuard<'_, Option<Spare>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread that makes spares, owned by the writer: stopped and joined when dropped.
pub(crate) struct Preallocator {
    path: PathBuf,
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts the thread and asks it for a first spare of `bytes` bytes.
    pub(crate) fn start(vfs: Arc<dyn Vfs>, dir: &Path, bytes: u64) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            spare: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<()>();
        let path = dir.join(SPARE_NAME);
        let (sh, spare_path) = (shared.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("tidings-log-prealloc".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    match make_spare(vfs.as_ref(), &path, bytes, &sh.stop) {
                        Ok(Some(spare)) => {
                            *lock(&sh.spare) = Some(spare);
                            sh.state.store(READY, Ordering::Release);
                        }
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, file = %path.display(), "could not preallocate the next segment; it will grow as it is written");
                            // A partial spare would hold disk space (perhaps what ran out).
                            let _ = vfs.remove(&path);
                            sh.state.store(IDLE, Ordering::Release);
                        }
                    }
                }
            })?;
        let mut p = Self {
            path: spare_path,
            shared,
            requests: Some(tx),
            thread: Some(thread),
        };
        p.request();
        Ok(p)
    }

    /// Where the spare is made.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a spare is ready to take.
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == READY
    }

    /// The ready spare, if any. The caller renames it away before it calls [`request`]
    /// (which would otherwise start writing the next spare under the same name).
    ///
    /// [`request`]: Preallocator::request
    pub(crate) fn take(&mut self) -> Option<Spare> {
        if !self.is_ready() {
            return None;
        }
        let spare = lock(&self.shared.spare).take();
        self.shared.state.store(IDLE, Ordering::Release);
        spare
    }

    /// Asks for the next spare unless one is being made or ready.
    pub(crate) fn request(&mut self) {
        if self
            .shared
            .state
            .compare_exchange(IDLE, FILLING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && let Some(tx) = &self.requests
            && tx.send(()).is_err()
        {
            self.shared.state.store(IDLE, Ordering::Release);
        }
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `path` afresh as `bytes` zeros, synced; `None` if stopped on the way.
fn make_spare(
    vfs: &dyn Vfs,
    path: &Path,
    bytes: u64,
    stop: &AtomicBool,
) -> io::Result<Option<Spare>> {
    match vfs.remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = vfs.open_write(path)?;
    let zeros = vec![0u8; CHUNK.min(bytes as usize).max(1)];
    let mut pos = 0u64;
    while pos < bytes {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        let n = (bytes - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        file.sync_data()?;
        pos += n as u64;
    }
    Ok(Some(Spare {
        path: path.to_path_buf(),
        len: bytes,
    }))
}
