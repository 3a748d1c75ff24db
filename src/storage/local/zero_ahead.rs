//! Zeroing ahead of the writer (`Sync` mode, on ext4 and XFS): a background thread writes
//! zeros into the segment just past the end of the log, so the blocks that records then land in
//! are already allocated and initialised. A group commit's `fdatasync` then writes data pages and
//! flushes the disk cache, without the block-allocation metadata (inode, extent tree) that a
//! write into a hole adds to every sync. PostgreSQL zero-fills its WAL segments for the same
//! reason (`wal_init_zero`). On this project's test machine (ext4), `fdatasync` after a 13 KiB
//! write takes 0.13–0.15 ms on zeroed blocks against 0.20–0.22 ms on a sparse segment
//! (`integration-tests/reference/fsync-probe.py`), and a SYNC_FLUSH gateway at half load
//! answers sends faster (docs/benchmarks.md, "Zeroing ahead of the writer").
//!
//! Zeros never land on a record. The writer announces the end of each write before it writes
//! ([`ZeroAhead::before_write`]); the zeroer claims only ranges at least [`GAP`] above all that
//! was announced, one [`PIECE`] at a time; a write that reaches into the piece being zeroed
//! waits for that piece (a batch or a record bigger than the gap, or a zeroer that fell behind).
//! Zeros past the end of the log are what a sparse segment reads as anyway, so readers and
//! recovery see no difference, and a crash during zeroing leaves nothing to repair. Each piece
//! is written back at once (`sync_file_range`), so a group commit's `fdatasync` finds at most
//! one piece of zeros dirty or in flight. The zeroer writes through its own descriptor of the
//! segment: waiting for write-back consumes the write-back error a descriptor has not yet
//! reported, and the writer's `fdatasync` must still see every error on its pages (an error on
//! zeros fails the writer's next batch, which is the safe side).
//!
//! Costs: the log's bytes reach the disk twice (zeros, then records), which a log bound by disk
//! bandwidth rather than by syncs pays for; 8 MiB ahead of each log are allocated early. Each log
//! (each shard of a cluster node) has its zeroer thread, idle between pieces. Segments smaller
//! than [`GAP`] + [`PIECE`] are not zeroed.
//!
//! It is only an optimisation: a failed zeroing (a full disk) skips the rest of that segment;
//! the writer's own writes and syncs report the disk's state as before.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::Shared;
use super::segment::Segment;

/// Bytes zeroed (and written back) per claim.
pub const PIECE: usize = 256 * 1024;
/// The zeroer stays this far above the writer's announced end, so the writer's next small
/// writes never wait for it; it resumes there when it fell behind (at start, and when the writer
/// enters a new segment). The stretch below stays sparse.
pub const GAP: u64 = 1024 * 1024;

static ZEROS: [u8; PIECE] = [0; PIECE];

/// Whether segments of `segment_size` bytes leave room to zero ahead at all.
pub fn worth_it(segment_size: u64) -> bool {
    segment_size >= GAP + PIECE as u64
}

/// The zeroer's and the writer's shared view; see the module comment.
pub struct ZeroAhead {
    /// How far past the last announced write the zeroer keeps the log zeroed.
    ahead: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// The end of the furthest write the writer announced.
    announced: u64,
    /// Positions below this need no zeroing (zeroed, written, or skipped).
    zeroed_to: u64,
    /// The piece being zeroed now.
    claim: Option<(u64, u64)>,
    /// The zeroer waits for work (the writer wakes it).
    idle: bool,
    /// The zeroer found no segment to zero: it wakes once the writer writes beyond this (the
    /// base of the segment the writer creates next).
    next_segment: u64,
    stop: bool,
}

/// Clears the claim however the piece ends (a panic included), so the writer never waits for
/// a piece that nobody is zeroing.
struct Release<'a>(&'a ZeroAhead);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.lock().claim = None;
        self.0.changed.notify_all();
    }
}

impl ZeroAhead {
    /// A zeroer for a log whose writes resume at `position`, keeping `ahead` bytes zeroed (at
    /// least 2 × [`GAP`]).
    pub fn new(position: u64, ahead: u64) -> Self {
        let state =
            State { announced: position, zeroed_to: position, claim: None, idle: false, next_segment: 0, stop: false };
        Self { ahead: ahead.max(2 * GAP), state: Mutex::new(state), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer, before it writes global positions `[from, to)`: records `to`, so that no
    /// later claim starts below `to + GAP`, then waits while the piece being zeroed overlaps the
    /// write, and wakes the zeroer when the zeroed stretch ahead has shrunk to half.
    pub fn before_write(&self, from: u64, to: u64) {
        let mut s = self.lock();
        s.announced = s.announced.max(to);
        while s.claim.is_some_and(|(a, b)| from < b && to > a) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.idle && s.announced > s.next_segment && s.zeroed_to < s.announced + self.ahead / 2 {
            s.idle = false;
            self.changed.notify_all();
        }
    }

    /// Where the zeroed stretch ahead of the writer ends (tests wait for the zeroer with it).
    #[cfg(test)]
    pub fn zeroed_to(&self) -> u64 {
        self.lock().zeroed_to
    }

    /// Ends [`ZeroAhead::run`] after the piece in progress.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// The next piece to zero (its segment, from, to), claimed; `None` until the writer moves on.
    fn next(&self, s: &mut State, shared: &Shared) -> Option<(Arc<Segment>, u64, u64)> {
        let target = s.announced + self.ahead;
        let start = s.zeroed_to.max(s.announced + GAP);
        if start >= target {
            return None;
        }
        // Only segments the writer created; the next one is zeroed once the writer enters it.
        let Some(seg) = shared.segment_for(start) else {
            s.next_segment = shared.segment_at_or_before(start).map_or(u64::MAX, |g| g.end());
            return None;
        };
        let end = (start + PIECE as u64).min(seg.end());
        s.claim = Some((start, end));
        Some((seg, start, end))
    }

    /// The zeroer thread's loop, until [`ZeroAhead::stop`].
    pub fn run(&self, shared: &Shared) {
        // The zeroer's own descriptor of the segment it zeroes (see the module comment).
        let mut file: Option<(u64, File)> = None;
        let mut s = self.lock();
        loop {
            if s.stop {
                return;
            }
            let Some((seg, from, to)) = self.next(&mut s, shared) else {
                s.idle = true;
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                s.idle = false;
                continue;
            };
            drop(s);
            let release = Release(self);
            let zeroed = zero_piece(&mut file, &seg, from, to);
            if let Err(e) = &zeroed {
                tracing::warn!(error = %e, segment = seg.base, "zeroing ahead of the writer failed; skipping the rest of the segment");
            }
            drop(release);
            s = self.lock();
            s.zeroed_to = s.zeroed_to.max(if zeroed.is_ok() { to } else { seg.end() });
        }
    }
}

/// Writes zeros over global positions `[from, to)` of `seg` through the zeroer's own
/// descriptor (opened on the segment's first piece) and waits until they are on disk; the block
/// allocation itself reaches the disk with the writer's next `fdatasync`.
fn zero_piece(file: &mut Option<(u64, File)>, seg: &Segment, from: u64, to: u64) -> std::io::Result<()> {
    let (_, f) = match file.take() {
        Some((base, f)) if base == seg.base => file.insert((base, f)),
        _ => file.insert((seg.base, OpenOptions::new().write(true).open(&seg.path)?)),
    };
    let (offset, len) = (from - seg.base, (to - from) as usize);
    f.write_all_at(&ZEROS[..len], offset)?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_raises_the_floor_of_later_claims_before_it_waits() {
        let z = ZeroAhead::new(0, 8 << 20);
        z.before_write(5_000, 9_000);
        assert_eq!(z.lock().announced, 9_000);
        // A write that reaches into a claim announces its end first, so the zeroer's next claim
        // starts above it instead of in front of the waiting writer.
        z.lock().claim = Some((GAP, GAP + PIECE as u64));
        let w = std::sync::Arc::new(z);
        let z = w.clone();
        let t = std::thread::spawn(move || w.before_write(9_000, 3 * GAP));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while z.lock().announced != 3 * GAP {
            assert!(std::time::Instant::now() < deadline, "the waiting write did not announce its end");
            std::thread::yield_now();
        }
        drop(Release(&z));
        t.join().unwrap();
    }

    #[test]
    fn a_write_into_a_claimed_piece_waits_for_it() {
        let z = std::sync::Arc::new(ZeroAhead::new(0, 8 << 20));
        z.lock().claim = Some((GAP, GAP + PIECE as u64));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let w = z.clone();
        let t = std::thread::spawn(move || {
            w.before_write(GAP - 10, GAP + 10);
            done_tx.send(()).unwrap();
        });
        assert!(done_rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "the write went through a claim");
        drop(Release(&z));
        done_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the write never resumed");
        t.join().unwrap();
    }
}
