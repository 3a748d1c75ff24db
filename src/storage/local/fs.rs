//! Small file-system helpers shared by the local log: error mapping (ENOSPC → `DiskFull`),
//! directory fsync, atomic file replacement, zeroing a byte range, disk usage, the data-dir
//! lock, and the test-only fault injector used to exercise failed writes and fsyncs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::storage::StorageError;

/// Maps an I/O error to a [`StorageError`]; "no space" and "quota exceeded" become
/// [`StorageError::DiskFull`] so the broker can answer with the right code.
pub fn io_error(context: impl Into<String>, source: io::Error) -> StorageError {
    let context = context.into();
    if is_disk_full(&source) {
        return StorageError::DiskFull(format!("{context}: {source}"));
    }
    StorageError::Io { context, source }
}

pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

/// An equivalent error, for reporting one failure to every append of a batch
/// (`StorageError` is not `Clone` because `io::Error` is not).
pub fn replicate_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Io { context, source } => {
            StorageError::Io { context: context.clone(), source: io::Error::new(source.kind(), source.to_string()) }
        }
        StorageError::DiskFull(m) => StorageError::DiskFull(m.clone()),
        StorageError::Corrupted { position, reason } => {
            StorageError::Corrupted { position: *position, reason: reason.clone() }
        }
        StorageError::RecordTooLarge { size, segment_size } => {
            StorageError::RecordTooLarge { size: *size, segment_size: *segment_size }
        }
        StorageError::ShuttingDown => StorageError::ShuttingDown,
        StorageError::RemoteNotCached { topic, queue_id, offset } => {
            StorageError::RemoteNotCached { topic: topic.clone(), queue_id: *queue_id, offset: *offset }
        }
        StorageError::Remote(m) => StorageError::Remote(m.clone()),
        StorageError::NotOwner { topic, queue_id } => {
            StorageError::NotOwner { topic: topic.clone(), queue_id: *queue_id }
        }
        StorageError::Fenced(m) => StorageError::Fenced(m.clone()),
    }
}

/// An invalid-argument error (bad configuration or a message storage cannot represent).
pub fn invalid_input(context: impl Into<String>) -> StorageError {
    let context = context.into();
    StorageError::Io { source: io::Error::new(io::ErrorKind::InvalidInput, context.clone()), context }
}

/// The size of a memory page, what one fault through a map covers (4 KiB where `sysconf`
/// cannot tell).
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `contents` atomically: temp file, fsync, rename, fsync of the parent.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Creates `path` with `size` bytes (sparse, zero-filled) so that a crash never leaves it
/// half-made: the file is sized under a temporary name and then linked into place (failing
/// if `path` exists). The caller fsyncs the directory when the entry must be durable.
pub fn create_sized_file(path: &Path, size: u64) -> io::Result<File> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    file.set_len(size)?;
    fs::hard_link(&tmp, path)?;
    fs::remove_file(&tmp)?;
    Ok(file)
}

/// `<path>.tmp`: where in-progress files live until they are renamed into place. Leftovers
/// are removed on open.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Zeroes `[from, to)` of a file without changing its size. Punches a hole (needs no free
/// space, so it works on a full disk); falls back to writing zeros where the file system
/// cannot punch holes.
pub fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    match fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, from, to) {
        Err(e) if unsupported(&e) => {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(zeros.len());
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        result => result,
    }
}

/// `fallocate(2)` with `mode` on `[from, to)` of `file`.
pub fn fallocate(file: &File, mode: libc::c_int, from: u64, to: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, from as libc::off_t, (to - from) as libc::off_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether `e` says the file system does not support the call (`EOPNOTSUPP`, `ENOSYS`).
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS))
}

#[allow(clippy::unnecessary_cast)]
pub mod magic {
    //! `statfs.f_type` of the file systems the log treats specially (the field's and libc's
    //! constants' integer types differ between targets, hence one type here).
    pub const EXT4: i64 = libc::EXT4_SUPER_MAGIC as i64;
    pub const XFS: i64 = libc::XFS_SUPER_MAGIC as i64;
    pub const TMPFS: i64 = libc::TMPFS_MAGIC as i64;
}

/// Whether the open file `fd` is on one of the file systems `magics` names ([`magic`]);
/// `false` when `fstatfs` fails.
pub fn on_file_system(fd: std::os::fd::RawFd, magics: &[i64]) -> bool {
    // SAFETY: `statfs` is plain data, filled in by the kernel for a valid, open descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    magics.contains(&(st.f_type as i64))
}

/// Fraction of the file system holding `dir` that is in use, RocketMQ-style
/// (`(total - free) / total`).
pub fn disk_used_ratio(dir: &Path) -> io::Result<f64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let total = st.f_blocks as f64;
    if total <= 0.0 {
        return Ok(0.0);
    }
    Ok((total - st.f_bfree as f64) / total)
}

/// An exclusive `flock` on `<dir>/LOCK`, held for the life of the log: two processes writing
/// the same directory would corrupt it. Released by the kernel when the process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        // SAFETY: plain syscall on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{} is in use by another process ({e})", dir.display())));
        }
        Ok(Self { _file: file })
    }
}

impl Drop for DirLock {
    /// Unlocks explicitly: a `flock` belongs to the open file description, and a child process
    /// forked elsewhere in this process (between its fork and its exec) may hold a copy of the
    /// descriptor, which would otherwise keep the directory locked after this lock is gone.
    fn drop(&mut self) {
        // SAFETY: plain syscall on a valid, owned descriptor.
        unsafe { libc::flock(self._file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Test-only fault injection for the write and fsync paths. In non-test builds it is empty
/// and every check compiles to "no fault".
#[derive(Debug, Default)]
pub struct Faults {
    #[cfg(test)]
    pub fail_writes: std::sync::atomic::AtomicU32,
    #[cfg(test)]
    pub fail_syncs: std::sync::atomic::AtomicU32,
    /// Milliseconds each fsync sleeps first (how long a group commit's `fdatasync` lasts).
    #[cfg(test)]
    pub sync_delay_ms: std::sync::atomic::AtomicU64,
    /// When set, injected write failures are ENOSPC instead of EIO.
    #[cfg(test)]
    pub disk_full: std::sync::atomic::AtomicBool,
}

impl Faults {
    #[cfg(test)]
    fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        use std::sync::atomic::Ordering;
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// An injected failure for the next log write, if one is armed.
    #[inline]
    pub fn write_fault(&self) -> Option<io::Error> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            if Self::take(&self.fail_writes) {
                let code = if self.disk_full.load(Ordering::SeqCst) { libc::ENOSPC } else { libc::EIO };
                return Some(io::Error::from_raw_os_error(code));
            }
        }
        None
    }

    /// An injected failure for the next fsync, if one is armed.
    #[inline]
    pub fn sync_fault(&self) -> Option<io::Error> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let delay = self.sync_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(std::time::Duration::from_millis(delay));
            }
            if Self::take(&self.fail_syncs) {
                return Some(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_disk_full() {
        let e = io_error("writing", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, StorageError::DiskFull(_)));
        let e = io_error("writing", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, StorageError::Io { .. }));
    }

    #[test]
    fn zero_range_zeroes_only_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let f =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("f")).unwrap();
        f.write_all_at(&[7u8; 10_000], 0).unwrap();
        zero_range(&f, 100, 9_000).unwrap();
        let mut buf = vec![0u8; 10_000];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 7));
        assert!(buf[100..9_000].iter().all(|&b| b == 0));
        assert!(buf[9_000..].iter().all(|&b| b == 7));
        assert_eq!(f.metadata().unwrap().len(), 10_000);
    }

    #[test]
    fn dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        assert!(DirLock::acquire(dir.path()).is_err());
        drop(lock);
        DirLock::acquire(dir.path()).unwrap();
    }
}
