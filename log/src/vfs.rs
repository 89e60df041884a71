//! The file-system seam: everything the log does to a disk goes through [`Vfs`] and
//! [`VfsFile`], so tests can swap in a simulated disk that separates written bytes from durable
//! ones, fails on demand and counts what is read.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A file opened through a [`Vfs`]. All IO is positional, so one handle can be shared by the
/// writer and any number of readers.
#[allow(clippy::len_without_is_empty)]
pub trait VfsFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the size needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Asks the OS to forget this file's cached pages that are clean, so that reads go to the
    /// disk: pages written back, and pages the kernel marked clean after their writeback
    /// *failed* (Linux does, after reporting the error once) — those hold bytes that are not
    /// on the disk. Dirty pages are kept (and written back). Recovery calls it before it reads
    /// the active segment's tail (`log/DESIGN.md`, "Recovery"). Default: nothing to forget.
    fn drop_clean_cache(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Held while a directory is locked; dropping it releases the lock.
pub trait VfsLock: Send + Sync + Debug {}

/// The file-system operations the log needs.
pub trait Vfs: Send + Sync + Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the regular files directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>>;
    /// Opens a file for reading and writing, creating it when missing.
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>>;
    /// Opens a file for writing past the page cache (`O_DIRECT`), creating it when missing;
    /// `None` where this file system has no such mode. Writes through it must start, end and
    /// sit in memory at multiples of [`DIRECT_ALIGN`]. Only the preallocation thread uses it,
    /// for zeros (`prealloc.rs`).
    fn open_direct(&self, _path: &Path) -> io::Result<Option<Arc<dyn VfsFile>>> {
        Ok(None)
    }
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` (replacing `to`); durable at the next [`Vfs::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created or removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created when missing) without waiting;
    /// `Err(WouldBlock)` when another holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>>;
}

/// Alignment of position, length and memory for writes through [`Vfs::open_direct`]: 4 KiB, a
/// multiple of the logical block size of the disks the log runs on, and the file system's
/// block size (ext4, XFS) — the unit a partial write may have to read first.
pub const DIRECT_ALIGN: usize = 4096;

/// The real file system (`std::fs`, `pread`/`pwrite`, `fdatasync`, `flock`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl VfsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn drop_clean_cache(&self) -> io::Result<()> {
        rustix::fs::fadvise(&self.0, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
    }
}

/// The `LOCK` file, and the directory holding it (see [`lock_dir_of`]), both locked.
#[derive(Debug)]
struct StdLock(#[allow(dead_code)] File, #[allow(dead_code)] Option<File>);
impl VfsLock for StdLock {}

impl Vfs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(StdFile(File::open(path)?)))
    }
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    #[cfg(target_os = "linux")]
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn VfsFile>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(file) => Ok(Some(Arc::new(StdFile(file)))),
            // A file system without O_DIRECT (tmpfs, some FUSE ones) refuses it at open.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock(file, lock_dir_of(path)?))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Locks the directory holding a `LOCK` file as well (`flock` on the directory): a `LOCK`
/// deleted while its holder runs (a "stale lock" cleanup) is created afresh and locked by the
/// next process, while the directory is the same inode for both, and its lock refuses the
/// second. `None` where the file system refuses to lock a directory (some network file
/// systems): the `LOCK` file's lock alone then holds, as before. `WouldBlock` while another
/// process holds it.
pub fn lock_dir_of(lock_file: &Path) -> io::Result<Option<File>> {
    let Some(dir) = lock_file.parent() else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(file) = File::open(dir) else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

/// Reads up to `len` bytes at `pos` (fewer only at end of file).
pub(crate) fn read_up_to(file: &dyn VfsFile, len: usize, mut pos: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], pos)?;
        if n == 0 {
            break;
        }
        done += n;
        pos += n as u64;
    }
    buf.truncate(done);
    Ok(buf)
}
