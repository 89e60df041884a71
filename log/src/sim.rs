//! A simulated disk for crash and fault tests (feature `sim`).
//!
//! Every file has *live* bytes (what reads see: every write lands here at once) and *durable*
//! bytes (what a completed `sync_data` promoted). A directory's entries become durable only at
//! `sync_dir`: a crash leaves each directory's names as they were at its last sync, each naming
//! the file it named then (a file created since is gone, one removed since is back, and a rename
//! since is undone, so a rename over a file leaves the old one). [`SimFs::crash`] throws away
//! everything that was not durable, as a power cut would. Faults can be armed to fail the Nth
//! write, sync, rename, removal or directory sync (a failed write may first apply a torn
//! prefix), and every byte read is counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vfs::{Vfs, VfsFile, VfsLock};

#[derive(Debug, Default)]
struct FileState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// A sync of this file failed: its live bytes past the durable ones are what Linux keeps
    /// cached, marked clean, after a failed writeback — read back until the cache is dropped
    /// ([`VfsFile::drop_clean_cache`]), and never on the disk.
    failed_sync: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Files by path; a file removed from the namespace but still open lives on in its handles.
    files: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    /// Directory entries that survive a crash: each name with the file it named at the last
    /// `sync_dir` of its directory (a file created since is not here; one removed, or renamed
    /// away or over, since is, as it was). Until 2026-11-30 only the names were kept, and a
    /// rename dropped its target's: a rename over a file then a crash kept neither file.
    durable_names: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    /// Held locks, each with the id of its guard.
    locks: BTreeMap<PathBuf, u64>,
    next_lock_id: u64,
    dirs: BTreeSet<PathBuf>,
    /// Directories `create_dir_all` made whose own entry is not durable yet: a crash takes each
    /// with everything under it, until a `sync_dir` of its parent (a directory at the top —
    /// `/x`'s `/`, a relative path's first name — counts as there before).
    fresh_dirs: BTreeSet<PathBuf>,
    /// Fail the write (or sync) when this counter reaches zero; `None` = no fault armed.
    fail_write_in: Option<u64>,
    fail_sync_in: Option<u64>,
    fail_rename_in: Option<u64>,
    fail_dir_sync_in: Option<u64>,
    fail_remove_in: Option<u64>,
    /// A failing write applies this many bytes of its buffer first (a torn write).
    torn_write_bytes: usize,
    /// Every write takes this long first (a slow disk; [`SimFs::set_write_delay`]).
    write_delay: std::time::Duration,
    /// Bumped when the process dies (power cut or kill): files opened before it cannot be
    /// written or synced any more, as the dead process's threads would not run.
    epoch: u64,
}

/// The simulated file system. Cheap to clone; clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    bytes_read: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock only happens in a failing test; keep going with the data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("sim: injected {what} failure"))
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes returned by `read_at` so far, over all files.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Resets the read counter to zero.
    pub fn reset_bytes_read(&self) {
        self.bytes_read.store(0, Ordering::Relaxed);
    }

    /// Successful `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Power cut: the namespace goes back to what the last directory syncs made durable (files
    /// whose entry was never synced disappear, removed or renamed ones are back under their
    /// names), and every file to its durable bytes. Locks are released (the process died).
    pub fn crash(&self) {
        let mut st = lock(&self.state);
        let lost = std::mem::take(&mut st.fresh_dirs);
        let under_lost = |p: &Path| lost.iter().any(|d| p.starts_with(d));
        st.durable_names.retain(|p, _| !under_lost(p));
        st.dirs.retain(|d| !under_lost(d));
        st.files = st.durable_names.clone();
        let files: Vec<_> = st.files.values().cloned().collect();
        for f in files {
            let mut f = lock(&f);
            f.live = f.durable.clone();
        }
        st.locks.clear();
        st.fail_write_in = None;
        st.fail_sync_in = None;
        st.fail_rename_in = None;
        st.fail_dir_sync_in = None;
        st.fail_remove_in = None;
        st.epoch += 1;
    }

    /// Every write from now on sleeps `delay` first (a slow disk: the writer thread is held as
    /// a real write would hold it).
    pub fn set_write_delay(&self, delay: std::time::Duration) {
        lock(&self.state).write_delay = delay;
    }

    /// Releases all locks, as the death of the holding process would, without losing data.
    pub fn kill_process(&self) {
        let mut st = lock(&self.state);
        st.locks.clear();
        st.epoch += 1;
    }

    /// The `n`th write from now (1 = the next one) fails, after applying `torn_bytes` bytes of
    /// its buffer.
    pub fn fail_write_after(&self, n: u64, torn_bytes: usize) {
        let mut st = lock(&self.state);
        st.fail_write_in = Some(n.max(1));
        st.torn_write_bytes = torn_bytes;
    }

    /// The `n`th `sync_data` from now (1 = the next one) fails and promotes nothing.
    pub fn fail_sync_after(&self, n: u64) {
        lock(&self.state).fail_sync_in = Some(n.max(1));
    }

    /// The `n`th rename from now (1 = the next one) fails and changes nothing.
    pub fn fail_rename_after(&self, n: u64) {
        lock(&self.state).fail_rename_in = Some(n.max(1));
    }

    /// The `n`th directory sync from now (1 = the next one) fails and makes nothing durable.
    pub fn fail_dir_sync_after(&self, n: u64) {
        lock(&self.state).fail_dir_sync_in = Some(n.max(1));
    }

    /// The `n`th file removal from now (1 = the next one) fails and removes nothing.
    pub fn fail_remove_after(&self, n: u64) {
        lock(&self.state).fail_remove_in = Some(n.max(1));
    }

    /// Disarms any pending fault.
    pub fn clear_faults(&self) {
        let mut st = lock(&self.state);
        st.fail_write_in = None;
        st.fail_sync_in = None;
        st.fail_rename_in = None;
        st.fail_dir_sync_in = None;
        st.fail_remove_in = None;
    }

    /// The live bytes of a file, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = lock(&self.state);
        st.files.get(path).map(|f| lock(f).live.clone())
    }

    /// Replaces a file's bytes, live and durable (to build a crash image by hand). Creates the
    /// file, durably named, when missing.
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut st = lock(&self.state);
        let f = st.files.entry(path.to_path_buf()).or_default().clone();
        st.durable_names.insert(path.to_path_buf(), f.clone());
        let mut f = lock(&f);
        f.durable = bytes.clone();
        f.live = bytes;
    }

    /// The paths of all files, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.state).files.keys().cloned().collect()
    }

    /// An independent copy of this disk's current live state, all of it durable.
    pub fn fork(&self) -> SimFs {
        let st = lock(&self.state);
        let copy = SimFs::new();
        {
            let mut cst = lock(&copy.state);
            for (path, f) in &st.files {
                let bytes = lock(f).live.clone();
                let copied = Arc::new(Mutex::new(FileState {
                    live: bytes.clone(),
                    durable: bytes,
                    failed_sync: false,
                }));
                cst.files.insert(path.clone(), copied.clone());
                cst.durable_names.insert(path.clone(), copied);
            }
            cst.dirs = st.dirs.clone();
        }
        copy
    }

    fn countdown(slot: &mut Option<u64>) -> bool {
        match slot {
            Some(1) => {
                *slot = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    data: Arc<Mutex<FileState>>,
    /// The process epoch the file was opened in.
    epoch: u64,
}

impl SimFile {
    /// Refuses changes from a process that has died since it opened the file.
    fn alive(&self) -> io::Result<()> {
        if lock(&self.fs.state).epoch == self.epoch {
            Ok(())
        } else {
            Err(io::Error::other(
                "sim: the process that opened this file is dead",
            ))
        }
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let f = lock(&self.data);
        let len = f.live.len() as u64;
        if pos >= len {
            return Ok(0);
        }
        let start = pos as usize;
        let n = buf.len().min(f.live.len() - start);
        buf[..n].copy_from_slice(&f.live[start..start + n]);
        self.fs.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.alive()?;
        let (fail, torn, delay) = {
            let mut st = lock(&self.fs.state);
            let fail = SimFs::countdown(&mut st.fail_write_in);
            (fail, st.torn_write_bytes, st.write_delay)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let apply = if fail { torn.min(buf.len()) } else { buf.len() };
        {
            let mut f = lock(&self.data);
            let start = pos as usize;
            let end = start + apply;
            if f.live.len() < end {
                f.live.resize(end, 0);
            }
            f.live[start..end].copy_from_slice(&buf[..apply]);
        }
        if fail {
            return Err(injected("write"));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        lock(&self.data).live.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.alive()?;
        if SimFs::countdown(&mut lock(&self.fs.state).fail_sync_in) {
            lock(&self.data).failed_sync = true;
            return Err(injected("fsync"));
        }
        // (Optimistic after a failed sync: this writes the bytes Linux would have dropped.
        // The log never syncs a file between a failed sync and the next open's recovery,
        // which drops them first.)
        let mut f = lock(&self.data);
        f.durable = f.live.clone();
        self.fs.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn drop_clean_cache(&self) -> io::Result<()> {
        self.alive()?;
        let mut f = lock(&self.data);
        if f.failed_sync {
            f.live = f.durable.clone();
            f.failed_sync = false;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    id: u64,
}

impl VfsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        // A guard outliving a simulated process death must not release a newer holder's lock.
        let mut st = lock(&self.fs.state);
        if st.locks.get(&self.path) == Some(&self.id) {
            st.locks.remove(&self.path);
        }
    }
}

impl Vfs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        for d in dir.ancestors() {
            let top = d.parent().is_none_or(|p| p.as_os_str().is_empty());
            if !top && !st.dirs.contains(d) && !st.files.keys().any(|f| f.starts_with(d)) {
                st.fresh_dirs.insert(d.to_path_buf());
            }
            if !d.as_os_str().is_empty() && d.parent().is_some() {
                st.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        if !st.dirs.contains(dir) && !st.files.keys().any(|p| p.parent() == Some(dir)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let st = lock(&self.state);
        let data = st
            .files
            .get(path)
            .cloned()
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        let epoch = st.epoch;
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            data,
            epoch,
        }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let mut st = lock(&self.state);
        let data = st.files.entry(path.to_path_buf()).or_default().clone();
        let epoch = st.epoch;
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            data,
            epoch,
        }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(lock(&self.state).files.contains_key(path))
    }

    /// Takes the name out of the namespace (open handles keep the file); until the directory is
    /// synced, a crash brings it back as it was durable.
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        if SimFs::countdown(&mut st.fail_remove_in) {
            return Err(injected("remove"));
        }
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or(io::ErrorKind::NotFound.into())
    }

    /// Moves the file (open handles keep seeing it) to the new name, replacing what `to` named;
    /// until the directory is synced, a crash undoes it: `to` names the file it named at the
    /// last sync (the old one, or nothing) and `from` its file again if its name was durable.
    /// A rename over a file thus leaves the old file or the new one, never neither (what
    /// `log/DESIGN.md` assumes of the disk).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        if SimFs::countdown(&mut st.fail_rename_in) {
            return Err(injected("rename"));
        }
        let data = st
            .files
            .remove(from)
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        st.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        if SimFs::countdown(&mut st.fail_dir_sync_in) {
            return Err(injected("directory sync"));
        }
        let live: Vec<(PathBuf, Arc<Mutex<FileState>>)> = st
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        st.durable_names.extend(live);
        st.fresh_dirs.retain(|d| d.parent() != Some(dir));
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        let mut st = lock(&self.state);
        if st.locks.contains_key(path) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        st.next_lock_id += 1;
        let id = st.next_lock_id;
        st.locks.insert(path.to_path_buf(), id);
        st.files.entry(path.to_path_buf()).or_default();
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            id,
        }))
    }
}

/// Wraps any [`Vfs`] and counts the bytes read through it (to show, on a real disk, what
/// opening a log costs).
#[derive(Debug, Clone)]
pub struct CountingFs {
    inner: Arc<dyn Vfs>,
    bytes_read: Arc<AtomicU64>,
}

impl CountingFs {
    /// Counts reads made through `inner`.
    pub fn new(inner: Arc<dyn Vfs>) -> Self {
        Self {
            inner,
            bytes_read: Arc::new(AtomicU64::new(0)),
        }
    }
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn VfsFile>,
    bytes_read: Arc<AtomicU64>,
}

impl VfsFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, pos)?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn drop_clean_cache(&self) -> io::Result<()> {
        self.inner.drop_clean_cache()
    }
}

impl Vfs for CountingFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open_read(path)?,
            bytes_read: self.bytes_read.clone(),
        }))
    }
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open_write(path)?,
            bytes_read: self.bytes_read.clone(),
        }))
    }
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn VfsFile>>> {
        Ok(self.inner.open_direct(path)?.map(|inner| {
            Arc::new(CountingFile {
                inner,
                bytes_read: self.bytes_read.clone(),
            }) as Arc<dyn VfsFile>
        }))
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        self.inner.try_lock(path)
    }
}
