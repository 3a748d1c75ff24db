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
//! was announced, one [`PIECE`] at a time; a write that would reach into a claimed piece waits
//! until it is zeroed (the writer has then caught up with a zeroer kept `ahead` bytes in front).
//! Zeros past the end of the log are what a sparse segment reads as anyway, so readers and
//! recovery see no difference, and a crash during zeroing leaves nothing to repair. Each piece
//! is written back at once (`sync_file_range`), so a group commit's `fdatasync` finds at most
//! one piece of zeros dirty or in flight.
//!
//! It is only an optimisation: a failed zeroing (a full disk) skips the rest of that segment;
//! the writer's own writes report the disk's state as before.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::Shared;
use super::segment::Segment;

/// Bytes zeroed (and written back) per claim.
pub const PIECE: usize = 256 * 1024;
/// A zeroer that fell behind (at start, or when the writer enters a new segment) resumes this
/// far above the writer, so the writer's next writes never wait for it.
pub const GAP: u64 = 1024 * 1024;

static ZEROS: [u8; PIECE] = [0; PIECE];

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
    stop: bool,
}

impl ZeroAhead {
    /// A zeroer for a log whose writes resume at `position`, keeping `ahead` bytes zeroed.
    pub fn new(position: u64, ahead: u64) -> Self {
        let state = State { announced: position, zeroed_to: position, claim: None, idle: false, stop: false };
        Self { ahead: ahead.max(GAP + PIECE as u64), state: Mutex::new(state), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer, before it writes global positions `[from, to)`: waits while a piece inside
    /// them is being zeroed, then records `to` so that no later claim starts below it, and wakes
    /// the zeroer when the zeroed stretch ahead has shrunk to half.
    pub fn before_write(&self, from: u64, to: u64) {
        let mut s = self.lock();
        while s.claim.is_some_and(|(a, b)| from < b && to > a) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.announced = s.announced.max(to);
        if s.idle && s.zeroed_to < s.announced + self.ahead / 2 {
            s.idle = false;
            self.changed.notify_all();
        }
    }

    /// Ends [`ZeroAhead::run`] after the piece in progress.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// The next piece to zero, claimed; `None` when there is nothing to do now.
    fn claim(&self, s: &mut State, shared: &Shared) -> Option<(std::sync::Arc<Segment>, u64, u64)> {
        let target = s.announced + self.ahead;
        let start = s.zeroed_to.max(s.announced + GAP);
        if start >= target {
            return None;
        }
        // Only segments the writer created; the next one is zeroed once it enters it.
        let seg = shared.segment_for(start)?;
        let end = (start + PIECE as u64).min(seg.end());
        s.claim = Some((start, end));
        Some((seg, start, end))
    }

    /// The zeroer thread's loop, until [`ZeroAhead::stop`].
    pub fn run(&self, shared: &Shared) {
        let mut s = self.lock();
        loop {
            if s.stop {
                return;
            }
            let Some((seg, from, to)) = self.claim(&mut s, shared) else {
                s.idle = true;
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                s.idle = false;
                continue;
            };
            drop(s);
            let zeroed = zero_piece(&seg, from, to);
            s = self.lock();
            s.claim = None;
            s.zeroed_to = match zeroed {
                Ok(()) => to,
                Err(e) => {
                    tracing::warn!(error = %e, segment = seg.base, "zeroing ahead of the writer failed; skipping the rest of the segment");
                    seg.end()
                }
            };
            self.changed.notify_all();
        }
    }

    #[cfg(test)]
    fn zeroed_to(&self) -> u64 {
        self.lock().zeroed_to
    }
}

/// Writes zeros over global positions `[from, to)` of `seg` and waits until they are on disk
/// (the block allocation itself reaches the disk with the writer's next `fdatasync`).
fn zero_piece(seg: &Segment, from: u64, to: u64) -> std::io::Result<()> {
    let len = (to - from) as usize;
    seg.write_at(from, &ZEROS[..len])?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on the segment's valid, owned descriptor; no memory is passed.
    let rc = unsafe {
        libc::sync_file_range(seg.as_raw_fd(), (from - seg.base) as libc::off64_t, len as libc::off64_t, flags)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_starts_a_gap_above_the_writer_and_never_below_what_was_announced() {
        let z = ZeroAhead::new(0, 8 << 20);
        let mut s = z.lock();
        s.announced = 5_000;
        let start = s.zeroed_to.max(s.announced + GAP);
        assert_eq!(start, 5_000 + GAP);
        s.zeroed_to = 4 << 20;
        assert_eq!(s.zeroed_to.max(s.announced + GAP), 4 << 20);
        drop(s);
        // A write below any claim goes through and raises the floor.
        z.before_write(5_000, 9_000);
        assert_eq!(z.lock().announced, 9_000);
        assert_eq!(z.zeroed_to(), 4 << 20);
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
        {
            let mut s = z.lock();
            s.claim = None;
            s.zeroed_to = GAP + PIECE as u64;
        }
        z.changed.notify_all();
        done_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the write never resumed");
        t.join().unwrap();
    }
}
