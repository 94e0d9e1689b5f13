//! The device's allocator: small and middling blocks from an allocator that keeps freed memory
//! for reuse (dlmalloc on the device), rare huge ones mapped on their own and unmapped when
//! freed. dlmalloc keeps what it once held: without this, the 19 MiB of one passphrase hash
//! stayed in the web's RSS for good (24 MiB idle instead of 5). The storage node's buffers (a
//! chunk is at most 4 MiB) stay below [`HUGE`], so they keep the reuse.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Blocks from this size up are mapped on their own (the KDF's 19 MiB; nothing per request).
pub const HUGE: usize = 16 * 1024 * 1024;

/// The mapping's alignment; a larger one goes to the inner allocator.
const PAGE: usize = 4096;

/// `A` for blocks below [`HUGE`], anonymous mappings for the rest.
pub struct HugeMapped<A>(pub A);

fn mapped(layout: Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is freed by the path that made it: the choice depends only on the
// layout, which the caller passes unchanged to `dealloc` (and `realloc` moves a block between
// the paths by copying).
unsafe impl<A: GlobalAlloc> GlobalAlloc for HugeMapped<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: a new mapping of the layout's size (page-aligned, so aligned enough).
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { self.0.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: as in `alloc`; anonymous mappings come zeroed.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { self.0.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `block` is a mapping of `layout.size()` bytes made by `map`.
            unsafe { libc::munmap(block.cast(), layout.size()) };
        } else {
            // SAFETY: `block` came from the inner allocator with this layout.
            unsafe { self.0.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new)) {
            // SAFETY: `block` came from the inner allocator with `layout`.
            (false, false) => unsafe { self.0.realloc(block, layout, new_size) },
            (true, true) => {
                // SAFETY: `block` is a mapping of `layout.size()` bytes; the kernel moves it
                // if it cannot grow in place.
                let p = unsafe {
                    libc::mremap(block.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // SAFETY: `new` is a valid layout (above).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and do not overlap.
                    unsafe {
                        ptr::copy_nonoverlapping(block, p, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    const A: HugeMapped<System> = HugeMapped(System);

    /// Whether `addr` lies in a mapping of this process.
    fn is_mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
            .any(|(a, b)| {
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                (a..b).contains(&addr)
            })
    }

    #[test]
    fn a_huge_block_goes_back_to_the_kernel_when_freed() {
        let layout = Layout::from_size_align(HUGE + 12345, 8).unwrap();
        // SAFETY: each block is used within its size and freed with its layout.
        unsafe {
            let p = A.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0);
            let s = std::slice::from_raw_parts_mut(p, layout.size());
            assert!(s.iter().all(|&b| b == 0));
            s.fill(7);
            assert!(is_mapped(p as usize + layout.size() - 1));
            A.dealloc(p, layout);
            assert!(!is_mapped(p as usize), "the huge block is still mapped");
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_the_threshold_both_ways() {
        let small = Layout::from_size_align(1000, 16).unwrap();
        // SAFETY: each block is used within its size and freed with its layout.
        unsafe {
            let p = A.alloc(small);
            for i in 0..small.size() {
                *p.add(i) = i as u8;
            }
            // Small → huge (mapped), huge → bigger huge (mremap), huge → small again.
            let p = A.realloc(p, small, HUGE + 1);
            assert!(!p.is_null());
            let huge = Layout::from_size_align(HUGE + 1, 16).unwrap();
            let p = A.realloc(p, huge, 2 * HUGE);
            assert!(!p.is_null());
            *p.add(2 * HUGE - 1) = 0xAB;
            let bigger = Layout::from_size_align(2 * HUGE, 16).unwrap();
            let p = A.realloc(p, bigger, 500);
            assert!(!p.is_null());
            let kept = std::slice::from_raw_parts(p, 500);
            assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8));
            A.dealloc(p, Layout::from_size_align(500, 16).unwrap());
        }
    }

    #[test]
    fn a_block_aligned_beyond_a_page_is_the_inner_allocators() {
        let layout = Layout::from_size_align(HUGE, 2 * PAGE).unwrap();
        assert!(!mapped(layout));
        // SAFETY: the block is freed with its layout.
        unsafe {
            let p = A.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % (2 * PAGE), 0);
            A.dealloc(p, layout);
        }
    }
}
