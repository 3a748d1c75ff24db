//! One commit-log segment: a pre-sized (sparse) file named after the global log position of
//! its first byte, written with `pwrite` by the writer thread and read through a read-only
//! memory map, so readers get bodies as zero-copy [`Bytes`] slices.
//!
//! Invariants: a segment file keeps its size for its whole life (it is never truncated while
//! mapped; tails are zeroed by punching holes), and segments are contiguous: the next one
//! starts at `base + size`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::Mmap;

use super::fs::{create_sized_file, page_size, zero_range};

/// File-name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".log";

/// `{base:020}.log`: fixed-width so lexical order is log order.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// The base position encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug)]
pub struct Segment {
    /// Global log position of the first byte.
    pub base: u64,
    /// File size: the segment holds positions `[base, base + size)`.
    pub size: u64,
    pub path: PathBuf,
    file: File,
    /// The whole file, mapped read-only. Slices of it are handed to readers.
    data: Bytes,
}

impl Segment {
    /// Creates a new, zero-filled (sparse) segment. The caller fsyncs the directory.
    pub fn create(dir: &Path, base: u64, size: u64) -> io::Result<Self> {
        let path = dir.join(segment_file_name(base));
        let file = create_sized_file(&path, size)?;
        Self::map(path, file, base, size)
    }

    /// Opens an existing segment; its size is the file size.
    pub fn open(path: PathBuf, base: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        if size == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "segment file is empty"));
        }
        Self::map(path, file, base, size)
    }

    fn map(path: PathBuf, file: File, base: u64, size: u64) -> io::Result<Self> {
        // SAFETY: the map is read-only and the file is never truncated while mapped (tails are
        // zeroed with hole punching, deletion only unlinks). Readers only receive slices of
        // complete records below the published position, and those bytes are never rewritten
        // while this process runs: recovery rewrites the tail before anything is readable,
        // and failed writes are cleaned only above the published position. Another process
        // truncating our files could fault readers, as with any mmap-based store; the data
        // directory is protected by an exclusive lock against a second gateway.
        let map = unsafe { memmap2::MmapOptions::new().len(size as usize).map(&file)? };
        Ok(Self { base, size, path, file, data: Bytes::from_owner(MapOwner(map)) })
    }

    /// One past the last position this segment can hold.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    pub fn contains(&self, position: u64) -> bool {
        position >= self.base && position < self.end()
    }

    /// Writes `buf` at global `position`.
    pub fn write_at(&self, position: u64, buf: &[u8]) -> io::Result<()> {
        debug_assert!(position >= self.base && position + buf.len() as u64 <= self.end());
        self.file.write_all_at(buf, position - self.base)
    }

    /// The segment file's descriptor (for `sync_file_range`, `fstatfs`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// `fdatasync`: the file size never changes, so data and block allocation suffice.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Zeroes global positions `[from, to)` (clipped to this segment).
    pub fn zero(&self, from: u64, to: u64) -> io::Result<()> {
        let from = from.clamp(self.base, self.end());
        let to = to.clamp(self.base, self.end());
        zero_range(&self.file, from - self.base, to - self.base)
    }

    /// Drops global positions `[from, to)` (clipped to this segment, in whole pages, the page
    /// holding `to` kept unless `to` is the segment's end) from memory: this process's mapping
    /// of them first, so that pages a reader has touched can go too, then the cached pages. For
    /// fsynced positions only (the kernel keeps dirty pages). The bytes stay in the file: a read
    /// afterwards faults them in again, from the disk.
    pub fn drop_cached(&self, from: u64, to: u64) -> io::Result<()> {
        let page = page_size();
        let start = (from.clamp(self.base, self.end()) - self.base) / page * page;
        let end = match to.clamp(self.base, self.end()) - self.base {
            whole if whole == self.size => whole,
            part => part / page * page,
        };
        if end <= start {
            return Ok(());
        }
        let len = (end - start) as usize;
        // SAFETY: `start` is a page-aligned offset inside the mapping (which starts on a page
        // boundary) and `len` does not run past its end. The map is a shared read-only file
        // mapping, so MADV_DONTNEED changes no byte a reader sees: a later access maps the
        // file's unchanged contents again (see `map` for why they do not change).
        let rc = unsafe {
            libc::madvise(self.data.as_ptr().add(start as usize).cast_mut().cast(), len, libc::MADV_DONTNEED)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a plain system call on a descriptor this segment owns.
        let rc = unsafe {
            libc::posix_fadvise(self.as_raw_fd(), start as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Bytes from global `position` to the end of the segment (zero copy).
    pub fn tail_from(&self, position: u64) -> Bytes {
        let start = (position.saturating_sub(self.base) as usize).min(self.data.len());
        self.data.slice(start..)
    }

    /// `len` bytes at global `position`, or `None` if that is outside the segment.
    pub fn slice(&self, position: u64, len: usize) -> Option<Bytes> {
        let start = usize::try_from(position.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.data.len()).then(|| self.data.slice(start..end))
    }

    /// Last modification time, used for time-based retention like RocketMQ.
    pub fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.file.metadata()?.modified()
    }
}

/// Owns the map inside the `Bytes`, so the mapping lives until the last slice is dropped
/// (also after the segment is deleted).
struct MapOwner(Mmap);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(1 << 30), "00000000001073741824.log");
        assert_eq!(parse_segment_file_name("00000000001073741824.log"), Some(1 << 30));
        assert_eq!(parse_segment_file_name("1073741824.log"), None);
        assert_eq!(parse_segment_file_name("00000000001073741824.log.tmp"), None);
    }

    #[test]
    fn written_bytes_are_visible_through_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 4096, 4096).unwrap();
        seg.write_at(4100, b"hello").unwrap();
        assert_eq!(&seg.slice(4100, 5).unwrap()[..], b"hello");
        assert_eq!(seg.slice(8190, 10), None);
        seg.zero(4101, 4103).unwrap();
        assert_eq!(&seg.slice(4100, 5).unwrap()[..], b"h\0\0lo");
        let reopened = Segment::open(seg.path.clone(), 4096).unwrap();
        assert_eq!(reopened.size, 4096);
        assert_eq!(&reopened.slice(4103, 2).unwrap()[..], b"lo");
    }
}
