//! Live heap bytes, counted by a global-allocator wrapper that only test builds carry (cargo
//! feature `heap-stats`, on in `make test`). The soak test reads the count from
//! `/api/v1/stats` (`memory.heapBytes`) to tell a leak from the allocator keeping freed pages:
//! mimalloc holds on to pages it may reuse, so the process's anonymous RSS after a crowd of
//! clients has left says little about what the gateway still references.
//!
//! The count is one shared atomic that every allocation and free on every thread updates (its
//! cost on the send path was not measured; it is kept out of the product binary so that the
//! benchmarks measure what users run): without the feature [`live_bytes`] is `None` and nothing
//! wraps the allocator.

#[cfg(feature = "heap-stats")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);

    /// Wraps an allocator and keeps [`LIVE`] at the bytes allocated and not yet freed.
    pub struct Counting<A>(pub A);

    // SAFETY: every call is forwarded unchanged to the wrapped allocator; the wrapper only
    // counts sizes.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            let p = unsafe { self.0.alloc(layout) };
            if !p.is_null() {
                LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            let p = unsafe { self.0.alloc_zeroed(layout) };
            if !p.is_null() {
                LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's pointer and layout, as allocated through this wrapper.
            unsafe { self.0.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's pointer, layout and size, forwarded unchanged.
            let p = unsafe { self.0.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size >= layout.size() {
                    LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
                } else {
                    LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
                }
            }
            p
        }
    }
}

#[cfg(feature = "heap-stats")]
pub use counting::Counting;

/// Bytes allocated and not freed, when the binary counts them (feature `heap-stats`).
pub fn live_bytes() -> Option<u64> {
    #[cfg(feature = "heap-stats")]
    {
        Some(counting::LIVE.load(std::sync::atomic::Ordering::Relaxed) as u64)
    }
    #[cfg(not(feature = "heap-stats"))]
    {
        None
    }
}

#[cfg(all(test, feature = "heap-stats"))]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::Ordering;

    use super::Counting;
    use super::counting::LIVE;

    #[test]
    fn counts_allocations_reallocations_and_frees() {
        // The library's tests run on the system allocator unwrapped (the wrapper is installed
        // by the binary), so this test's wrapper is the only thing moving the count.
        let a = Counting(System);
        let before = LIVE.load(Ordering::Relaxed);
        let small = Layout::from_size_align(1 << 20, 8).expect("layout");
        // SAFETY: a valid non-zero layout; the block is freed with its final layout below.
        let p = unsafe { a.alloc(small) };
        assert!(!p.is_null());
        assert_eq!(LIVE.load(Ordering::Relaxed), before + (1 << 20));
        // SAFETY: p came from `a` with `small`; the new size is non-zero.
        let p = unsafe { a.realloc(p, small, 3 << 20) };
        assert!(!p.is_null());
        assert_eq!(LIVE.load(Ordering::Relaxed), before + (3 << 20));
        // SAFETY: p is a 3 MiB block from `a`; shrinking keeps the alignment.
        let p = unsafe { a.realloc(p, Layout::from_size_align(3 << 20, 8).expect("layout"), 2 << 20) };
        assert!(!p.is_null());
        assert_eq!(LIVE.load(Ordering::Relaxed), before + (2 << 20));
        // SAFETY: p is a 2 MiB block from `a`.
        unsafe { a.dealloc(p, Layout::from_size_align(2 << 20, 8).expect("layout")) };
        assert_eq!(LIVE.load(Ordering::Relaxed), before);
        let zeroed = Layout::from_size_align(4096, 8).expect("layout");
        // SAFETY: a valid non-zero layout, freed right after.
        let z = unsafe { a.alloc_zeroed(zeroed) };
        assert!(!z.is_null());
        assert_eq!(LIVE.load(Ordering::Relaxed), before + 4096);
        // SAFETY: z came from `a` with `zeroed`.
        unsafe { a.dealloc(z, zeroed) };
        assert_eq!(LIVE.load(Ordering::Relaxed), before);
    }
}
