//! Physical frame allocator: hands out 4 KiB host frames, tracked in a bitmap.
//!
//! The storage is a caller-provided slice of words (the kernel carves it out
//! of usable memory before it has a heap; tests use a `Vec`), so the
//! allocator itself never allocates. It holds two bitmaps of one bit per
//! frame, from physical address 0 up to `max_addr`:
//!
//! ```text
//! storage: [ used bitmap: n words ][ usable bitmap: n words ]   n = ceil(frames / 64)
//!           bit set = not free       bit set = frame lies in a usable range
//! ```
//!
//! The second bitmap is what lets [`FrameAllocator::free`] reject an address
//! that was never usable memory (MMIO, ACPI NVS, the memory hole) instead of
//! quietly adding it to the free pool, where the next allocation would hand
//! out a device's registers as RAM. Invariant: a clear "used" bit implies a
//! set "usable" bit, and `free` equals the number of clear "used" bits.
//!
//! Not for: sub-page allocation (the heap's job) or guest memory accounting.

use crate::mm::addr::{Hpa, PAGE_SIZE};
use core::fmt;

/// Frames tracked per bitmap word.
const BITS: u64 = u64::BITS as u64;

/// Why a frame allocator operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The storage slice is smaller than [`bitmap_words`] says it must be.
    StorageTooSmall {
        /// Words required for this `max_addr`.
        needed: usize,
        /// Words provided.
        got: usize,
    },
    /// The address is not at the start of a 4 KiB frame.
    Unaligned(Hpa),
    /// The address is at or beyond the `max_addr` the allocator covers.
    OutOfRange(Hpa),
    /// The frame is not in any usable range, so it was never allocated.
    NotUsable(Hpa),
    /// The frame is already free: a double free, or a free of memory that
    /// was never allocated.
    AlreadyFree(Hpa),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::StorageTooSmall { needed, got } => {
                write!(
                    f,
                    "Frame bitmap storage too small: {got} words, need {needed}"
                )
            }
            FrameError::Unaligned(a) => write!(f, "Frame address {a} is not 4 KiB aligned"),
            FrameError::OutOfRange(a) => {
                write!(
                    f,
                    "Frame address {a} is beyond the memory the allocator covers"
                )
            }
            FrameError::NotUsable(a) => write!(f, "Frame {a} is not in usable memory"),
            FrameError::AlreadyFree(a) => write!(f, "Frame {a} is already free (double free?)"),
        }
    }
}

/// Number of frames from 0 to `max_addr` (exclusive), a partial last frame
/// included.
fn frame_count(max_addr: Hpa) -> u64 {
    max_addr.as_u64().div_ceil(PAGE_SIZE)
}

/// Words per bitmap for `frames` frames.
fn words_per_map(frames: u64) -> usize {
    // Saturating: a count that does not fit in usize cannot be provided, so
    // `new` reports it as storage too small rather than wrapping.
    usize::try_from(frames.div_ceil(BITS)).unwrap_or(usize::MAX)
}

/// Words of storage [`FrameAllocator::new`] needs to cover physical
/// addresses `0..max_addr` (both bitmaps together).
pub fn bitmap_words(max_addr: Hpa) -> usize {
    words_per_map(frame_count(max_addr)).saturating_mul(2)
}

/// A bitmap frame allocator over `0..max_addr`.
pub struct FrameAllocator<'a> {
    /// Bit set: frame not free (allocated, reserved, or not usable memory).
    used: &'a mut [u64],
    /// Bit set: frame lies in a usable range.
    usable: &'a mut [u64],
    /// Frames covered (bits beyond this in the last word are used, not usable).
    frames: u64,
    usable_frames: u64,
    free_frames: u64,
    /// Frame where the next single-frame search starts (next fit): one past
    /// the last frame `alloc` returned, so a run of `alloc` calls does not
    /// rescan the full words below it each time, and a frame just freed is
    /// not handed out again at once (a stale pointer to it then hits
    /// different data later rather than immediately).
    hint: u64,
}

impl fmt::Debug for FrameAllocator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bitmaps can be megabytes; show the counters only.
        f.debug_struct("FrameAllocator")
            .field("frames", &self.frames)
            .field("usable", &self.usable_frames)
            .field("free", &self.free_frames)
            .finish_non_exhaustive()
    }
}

impl<'a> FrameAllocator<'a> {
    /// Builds an allocator covering `0..max_addr` whose free frames are those
    /// inside the `usable` ranges `(start, length in bytes)`.
    ///
    /// Ranges are shrunk inwards to whole frames and clipped to `max_addr`;
    /// they may overlap. Everything else starts used and never becomes
    /// usable. The storage must hold at least [`bitmap_words`]`(max_addr)`
    /// words; only that prefix is used. If the storage lies in usable memory
    /// itself, [`reserve`](Self::reserve) it next.
    pub fn new(
        storage: &'a mut [u64],
        max_addr: Hpa,
        usable: impl Iterator<Item = (Hpa, u64)>,
    ) -> Result<Self, FrameError> {
        let frames = frame_count(max_addr);
        // Usable ranges stop at the last whole frame below max_addr; a partial
        // frame at the top is tracked (as used) but never handed out.
        let whole_frames = max_addr.frame_number();
        let n = words_per_map(frames);
        let needed = bitmap_words(max_addr);
        if storage.len() < needed {
            return Err(FrameError::StorageTooSmall {
                needed,
                got: storage.len(),
            });
        }
        let (used_map, rest) = storage.split_at_mut(n);
        let usable_map = &mut rest[..n];
        used_map.fill(u64::MAX);
        usable_map.fill(0);

        let mut fa = FrameAllocator {
            used: used_map,
            usable: usable_map,
            frames,
            usable_frames: 0,
            free_frames: 0,
            hint: 0,
        };
        for (start, len) in usable {
            // Inwards: a partial frame at either end is not wholly usable.
            let Some(first) = start.align_up(PAGE_SIZE) else {
                continue;
            };
            let end = start.as_u64().saturating_add(len);
            let first = first.frame_number();
            let last = Hpa::new(end).frame_number().min(whole_frames);
            if first < last {
                fa.set_range(first, last, true);
            }
        }
        // Counted once at the end so overlapping ranges are not counted twice.
        let count = fa.usable.iter().map(|w| u64::from(w.count_ones())).sum();
        fa.usable_frames = count;
        fa.free_frames = count;
        Ok(fa)
    }

    /// Frames that lie in usable memory (free or not).
    pub fn usable_frames(&self) -> u64 {
        self.usable_frames
    }

    /// Usable frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free_frames
    }

    /// Usable frames currently allocated or reserved.
    pub fn used_frames(&self) -> u64 {
        self.usable_frames - self.free_frames
    }

    /// Allocates one frame, or `None` when memory is exhausted.
    ///
    /// Next fit: the search resumes where the last one ended, so a series
    /// of allocations costs O(1) amortised instead of rescanning the full
    /// words at the bottom of memory each time.
    pub fn alloc(&mut self) -> Option<Hpa> {
        if self.free_frames == 0 {
            return None;
        }
        let frame = self
            .first_matching(self.hint, self.frames, false)
            .or_else(|| self.first_matching(0, self.hint, false))?;
        self.set_used(frame, frame + 1, true);
        self.free_frames -= 1;
        self.hint = frame + 1;
        // Below `frames`, which came from an Hpa, so always representable.
        Hpa::from_frame_number(frame)
    }

    /// Allocates `count` physically contiguous frames whose first address is
    /// a multiple of `align` bytes, or `None` if no such run is free (also
    /// for `count == 0` or an `align` that is not a power of two of at
    /// least 4096).
    ///
    /// First fit from address 0: contiguous runs are rare (DMA buffers,
    /// large tables) and low memory is where they are most likely to fit.
    pub fn alloc_contiguous(&mut self, count: usize, align: u64) -> Option<Hpa> {
        if count == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return None;
        }
        let count = u64::try_from(count).ok()?;
        if count > self.free_frames {
            return None;
        }
        let step = align / PAGE_SIZE;
        let mut start = 0u64;
        loop {
            let end = start.checked_add(count)?;
            if end > self.frames {
                return None;
            }
            match self.first_matching(start, end, true) {
                // Skip past the obstacle to the next aligned candidate: any
                // start at or before it would include it.
                Some(used) => start = (used + 1).checked_next_multiple_of(step)?,
                None => {
                    self.set_used(start, end, true);
                    self.free_frames -= count;
                    return Hpa::from_frame_number(start);
                }
            }
        }
    }

    /// Returns one frame obtained from [`alloc`](Self::alloc),
    /// [`alloc_contiguous`](Self::alloc_contiguous) or
    /// [`reserve`](Self::reserve).
    pub fn free(&mut self, frame: Hpa) -> Result<(), FrameError> {
        self.free_contiguous(frame, 1)
    }

    /// Returns `count` frames starting at `first`. All or nothing: if any of
    /// them cannot be freed, none is, and the error names the first bad one.
    pub fn free_contiguous(&mut self, first: Hpa, count: usize) -> Result<(), FrameError> {
        if !first.is_aligned(PAGE_SIZE) {
            return Err(FrameError::Unaligned(first));
        }
        let start = first.frame_number();
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        // Check everything before changing anything.
        for f in start..start.saturating_add(count) {
            // `f` is at most 2^52 (frame numbers come from an Hpa) plus a
            // count clamped below, so a failed conversion means "beyond".
            let addr = Hpa::from_frame_number(f).ok_or(FrameError::OutOfRange(first))?;
            if f >= self.frames {
                return Err(FrameError::OutOfRange(addr));
            }
            if !self.test(self.usable, f) {
                return Err(FrameError::NotUsable(addr));
            }
            if !self.test(self.used, f) {
                return Err(FrameError::AlreadyFree(addr));
            }
        }
        self.set_used(start, start.saturating_add(count), false);
        self.free_frames += count;
        Ok(())
    }

    /// Marks every frame touching `start..start + len` as used (the range is
    /// widened outwards to whole frames, and the part beyond `max_addr` is
    /// ignored). Frames already used stay used and are not counted again, and
    /// frames outside usable memory are unaffected, so reserving is
    /// idempotent. Returns how many free frames were taken.
    pub fn reserve(&mut self, start: Hpa, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = start.frame_number().min(self.frames);
        let end = start.as_u64().saturating_add(len);
        let last = Hpa::new(end)
            .align_up(PAGE_SIZE)
            .map_or(1 << 52, Hpa::frame_number);
        let last = last.min(self.frames);
        if first >= last {
            return 0;
        }
        let taken = (last - first) - self.count_used(first, last);
        self.set_used(first, last, true);
        self.free_frames -= taken;
        taken
    }

    fn test(&self, map: &[u64], frame: u64) -> bool {
        let (w, b) = split(frame);
        map[w] & (1 << b) != 0
    }

    /// First frame in `start..end` whose used bit is `used`, scanning a word
    /// at a time.
    fn first_matching(&self, start: u64, end: u64, used: bool) -> Option<u64> {
        let mut f = start;
        while f < end {
            let (w, b) = split(f);
            let bits_here = (BITS - u64::from(b)).min(end - f);
            let word = if used { self.used[w] } else { !self.used[w] };
            let word = (word >> b) & low_mask(bits_here);
            if word != 0 {
                return Some(f + u64::from(word.trailing_zeros()));
            }
            f += bits_here;
        }
        None
    }

    /// Number of used frames in `start..end`.
    fn count_used(&self, start: u64, end: u64) -> u64 {
        let mut f = start;
        let mut n = 0;
        while f < end {
            let (w, b) = split(f);
            let bits_here = (BITS - u64::from(b)).min(end - f);
            n += u64::from(((self.used[w] >> b) & low_mask(bits_here)).count_ones());
            f += bits_here;
        }
        n
    }

    fn set_used(&mut self, start: u64, end: u64, value: bool) {
        set_bits(self.used, start, end, value);
    }

    fn set_range(&mut self, start: u64, end: u64, usable: bool) {
        set_bits(self.usable, start, end, usable);
        set_bits(self.used, start, end, !usable);
    }
}

/// Word index and bit index of a frame. Frame numbers passed here are below
/// `frames`, whose word count fits in usize (checked in `new`).
fn split(frame: u64) -> (usize, u32) {
    ((frame / BITS) as usize, (frame % BITS) as u32)
}

/// The low `n` bits set, for `n` in 1..=64.
fn low_mask(n: u64) -> u64 {
    if n >= BITS { u64::MAX } else { (1 << n) - 1 }
}

fn set_bits(map: &mut [u64], start: u64, end: u64, value: bool) {
    let mut f = start;
    while f < end {
        let (w, b) = split(f);
        let bits_here = (BITS - u64::from(b)).min(end - f);
        let mask = low_mask(bits_here) << b;
        if value {
            map[w] |= mask;
        } else {
            map[w] &= !mask;
        }
        f += bits_here;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    const MIB: u64 = 1 << 20;

    fn h(a: u64) -> Hpa {
        Hpa::new(a)
    }

    fn storage(max_addr: u64) -> Vec<u64> {
        vec![0xdead_beef; bitmap_words(h(max_addr))]
    }

    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    /// Checks the invariants against the bitmaps directly.
    fn check(fa: &FrameAllocator<'_>) {
        let free = (0..fa.frames).filter(|&f| !fa.test(fa.used, f)).count() as u64;
        let usable = (0..fa.frames).filter(|&f| fa.test(fa.usable, f)).count() as u64;
        assert_eq!(fa.free_frames(), free);
        assert_eq!(fa.usable_frames(), usable);
        assert_eq!(fa.used_frames(), usable - free);
        for f in 0..fa.frames {
            assert!(
                fa.test(fa.used, f) || fa.test(fa.usable, f),
                "free frame {f} not usable"
            );
        }
    }

    #[test]
    fn bitmap_words_covers_both_maps() {
        assert_eq!(bitmap_words(h(0)), 0);
        assert_eq!(bitmap_words(h(1)), 2);
        assert_eq!(bitmap_words(h(64 * PAGE_SIZE)), 2);
        assert_eq!(bitmap_words(h(64 * PAGE_SIZE + 1)), 4);
        // 4 GiB = 2^20 frames = 2^14 words per map.
        assert_eq!(bitmap_words(h(4 << 30)), 2 << 14);
        assert_eq!(bitmap_words(h(u64::MAX)), 2 << 46);
    }

    #[test]
    fn storage_too_small_is_an_error() {
        let mut s = vec![0u64; bitmap_words(h(MIB)) - 1];
        let err = FrameAllocator::new(&mut s, h(MIB), [(h(0), MIB)].into_iter()).unwrap_err();
        assert_eq!(err, FrameError::StorageTooSmall { needed: 8, got: 7 });
        assert_eq!(
            err.to_string(),
            "Frame bitmap storage too small: 7 words, need 8"
        );
        // Larger storage is fine; only the prefix is used.
        let mut s = vec![0u64; 100];
        let fa = FrameAllocator::new(&mut s, h(MIB), [(h(0), MIB)].into_iter()).unwrap();
        assert_eq!(fa.usable_frames(), 256);
    }

    #[test]
    fn usable_ranges_are_aligned_inwards_and_clipped() {
        let max = 2 * MIB;
        let mut s = storage(max);
        let ranges = [
            (h(0x1800), 0x3000),           // 0x1800..0x4800 -> frames 2, 3
            (h(0x10000), 0xfff),           // less than a frame after alignment: nothing
            (h(0x20000), 0x2000),          // frames 0x20, 0x21
            (h(0x21000), 0x2000),          // overlaps: adds 0x22 only
            (h(max - 0x1000), 0x5000),     // clipped at max_addr: one frame
            (h(u64::MAX - 0x100), 0x1000), // beyond max and would overflow
            (h(0x40000), 0),               // empty
        ];
        let fa = FrameAllocator::new(&mut s, h(max), ranges.into_iter()).unwrap();
        check(&fa);
        let usable: Vec<u64> = (0..fa.frames).filter(|&f| fa.test(fa.usable, f)).collect();
        assert_eq!(usable, [2, 3, 0x20, 0x21, 0x22, 0x1ff]);
        assert_eq!(fa.usable_frames(), 6);
        assert_eq!(fa.free_frames(), 6);
        assert_eq!(fa.used_frames(), 0);
    }

    #[test]
    fn unaligned_max_addr_covers_the_partial_frame() {
        let mut s = storage(0x2800);
        let fa = FrameAllocator::new(&mut s, h(0x2800), [(h(0), 0x10000)].into_iter()).unwrap();
        // Frames 0 and 1 are whole; frame 2 is only half below max_addr and
        // is clipped out of the usable range.
        assert_eq!(fa.frames, 3);
        assert_eq!(fa.usable_frames(), 2);
    }

    #[test]
    fn alloc_hands_out_every_usable_frame_once() {
        let mut s = storage(MIB);
        let ranges = [(h(0x3000), 0x5000), (h(0x80000), 0x42000)];
        let mut fa = FrameAllocator::new(&mut s, h(MIB), ranges.into_iter()).unwrap();
        let total = fa.usable_frames();
        assert_eq!(total, 5 + 0x42);
        let mut got = Vec::new();
        while let Some(a) = fa.alloc() {
            assert!(a.is_aligned(PAGE_SIZE));
            let a = a.as_u64();
            assert!(
                (0x3000..0x8000).contains(&a) || (0x80000..0xc2000).contains(&a),
                "{a:#x}"
            );
            got.push(a);
        }
        assert_eq!(got.len() as u64, total);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len() as u64, total, "a frame was handed out twice");
        assert_eq!(fa.free_frames(), 0);
        assert_eq!(fa.used_frames(), total);
        assert_eq!(fa.alloc(), None);
        check(&fa);
    }

    #[test]
    fn next_fit_resumes_after_the_last_allocation() {
        let mut s = storage(MIB);
        let mut fa = FrameAllocator::new(&mut s, h(MIB), [(h(0), MIB)].into_iter()).unwrap();
        let a = fa.alloc().unwrap();
        let b = fa.alloc().unwrap();
        assert_eq!((a, b), (h(0), h(0x1000)));
        fa.free(a).unwrap();
        // Next fit: does not go back to the frame just freed...
        assert_eq!(fa.alloc(), Some(h(0x2000)));
        // ...until it wraps around.
        for _ in 3..256 {
            fa.alloc().unwrap();
        }
        assert_eq!(fa.alloc(), Some(h(0)));
        assert_eq!(fa.alloc(), None);
    }

    #[test]
    fn free_errors() {
        let mut s = storage(MIB);
        let ranges = [(h(0x10000), 0x10000)];
        let mut fa = FrameAllocator::new(&mut s, h(MIB), ranges.into_iter()).unwrap();
        let a = fa.alloc().unwrap();
        assert_eq!(
            fa.free(h(a.as_u64() + 8)),
            Err(FrameError::Unaligned(h(0x10008)))
        );
        assert_eq!(fa.free(h(MIB)), Err(FrameError::OutOfRange(h(MIB))));
        assert_eq!(
            fa.free(h(0xffff_ffff_ffff_f000)),
            Err(FrameError::OutOfRange(h(0xffff_ffff_ffff_f000)))
        );
        assert_eq!(fa.free(h(0x5000)), Err(FrameError::NotUsable(h(0x5000))));
        assert_eq!(
            fa.free(h(0x11000)),
            Err(FrameError::AlreadyFree(h(0x11000)))
        );
        fa.free(a).unwrap();
        assert_eq!(fa.free(a), Err(FrameError::AlreadyFree(a)));
        assert_eq!(fa.free_frames(), 16);
        check(&fa);

        assert_eq!(
            FrameError::Unaligned(h(0x10008)).to_string(),
            "Frame address 0x10008 is not 4 KiB aligned"
        );
        assert_eq!(
            FrameError::OutOfRange(h(MIB)).to_string(),
            "Frame address 0x100000 is beyond the memory the allocator covers"
        );
        assert_eq!(
            FrameError::NotUsable(h(0x5000)).to_string(),
            "Frame 0x5000 is not in usable memory"
        );
        assert_eq!(
            FrameError::AlreadyFree(h(0x11000)).to_string(),
            "Frame 0x11000 is already free (double free?)"
        );
    }

    #[test]
    fn contiguous_respects_alignment_and_skips_holes() {
        let max = 8 * MIB;
        let mut s = storage(max);
        // Usable: 0x1000..0x1f0000 and 0x200000..0x800000 with a hole at
        // 0x1f0000..0x200000.
        let ranges = [(h(0x1000), 0x1ef000), (h(0x20_0000), 0x60_0000)];
        let mut fa = FrameAllocator::new(&mut s, h(max), ranges.into_iter()).unwrap();

        // 16 KiB aligned to 16 KiB: frame 0 is unusable so the first fit is 0x4000.
        assert_eq!(fa.alloc_contiguous(4, 0x4000), Some(h(0x4000)));
        // 2 MiB aligned: 0 is taken by the hole at frame 0, so 0x200000.
        assert_eq!(fa.alloc_contiguous(512, 0x20_0000), Some(h(0x20_0000)));
        // A run that does not fit below the hole (0x1f0000 - 0x8000 is less
        // than 2 MiB) and must not straddle it.
        let a = fa.alloc_contiguous(0x200, PAGE_SIZE).unwrap();
        assert_eq!(a, h(0x40_0000));
        // Plain 4 KiB alignment fills the first gap.
        assert_eq!(fa.alloc_contiguous(3, PAGE_SIZE), Some(h(0x1000)));
        assert_eq!(fa.free_frames(), fa.usable_frames() - 4 - 512 - 0x200 - 3);
        check(&fa);

        // Every frame handed out is usable and marked used.
        for f in 0x400..0x600 {
            assert!(fa.test(fa.used, f) && fa.test(fa.usable, f));
        }
        fa.free_contiguous(a, 0x200).unwrap();
        check(&fa);
        assert_eq!(fa.alloc_contiguous(0x200, 0x20_0000), Some(a));
    }

    #[test]
    fn contiguous_rejects_bad_arguments_and_impossible_requests() {
        let mut s = storage(MIB);
        let mut fa = FrameAllocator::new(&mut s, h(MIB), [(h(0), MIB)].into_iter()).unwrap();
        assert_eq!(fa.alloc_contiguous(0, PAGE_SIZE), None);
        assert_eq!(fa.alloc_contiguous(1, 0), None);
        assert_eq!(fa.alloc_contiguous(1, 0x800), None);
        assert_eq!(fa.alloc_contiguous(1, 0x3000), None);
        assert_eq!(fa.alloc_contiguous(257, PAGE_SIZE), None);
        assert_eq!(fa.alloc_contiguous(usize::MAX, PAGE_SIZE), None);
        assert_eq!(fa.alloc_contiguous(1, 1 << 63), Some(h(0)));
        assert_eq!(fa.alloc_contiguous(1, 1 << 63), None);
        assert_eq!(fa.alloc_contiguous(255, PAGE_SIZE), Some(h(0x1000)));
        assert_eq!(fa.free_frames(), 0);
        check(&fa);
    }

    #[test]
    fn contiguous_with_fragmentation() {
        let mut s = storage(MIB);
        let mut fa = FrameAllocator::new(&mut s, h(MIB), [(h(0), MIB)].into_iter()).unwrap();
        let all: Vec<Hpa> = core::iter::from_fn(|| fa.alloc()).collect();
        // Free every other frame: 128 free frames but no run of 2.
        for a in all.iter().step_by(2) {
            fa.free(*a).unwrap();
        }
        assert_eq!(fa.free_frames(), 128);
        assert_eq!(fa.alloc_contiguous(2, PAGE_SIZE), None);
        fa.free(h(0x65000)).unwrap();
        // 0x64000..0x67000 is now the only free run longer than one frame.
        assert_eq!(fa.alloc_contiguous(3, PAGE_SIZE), Some(h(0x64000)));
        check(&fa);
    }

    #[test]
    fn free_contiguous_is_all_or_nothing() {
        let mut s = storage(MIB);
        let ranges = [(h(0), 0x8000)];
        let mut fa = FrameAllocator::new(&mut s, h(MIB), ranges.into_iter()).unwrap();
        let a = fa.alloc_contiguous(4, PAGE_SIZE).unwrap();
        assert_eq!(a, h(0));
        // Frame 4 is free: the whole call fails, frames 0..4 stay allocated.
        assert_eq!(
            fa.free_contiguous(a, 5),
            Err(FrameError::AlreadyFree(h(0x4000)))
        );
        assert_eq!(fa.free_frames(), 4);
        // Runs past usable memory / max_addr.
        fa.alloc_contiguous(4, PAGE_SIZE).unwrap();
        assert_eq!(
            fa.free_contiguous(h(0x6000), 3),
            Err(FrameError::NotUsable(h(0x8000)))
        );
        assert_eq!(
            fa.free_contiguous(h(0x6000), usize::MAX),
            Err(FrameError::NotUsable(h(0x8000)))
        );
        assert_eq!(fa.free_frames(), 0);
        fa.free_contiguous(a, 8).unwrap();
        assert_eq!(fa.free_frames(), 8);
        fa.free_contiguous(a, 0).unwrap();
        check(&fa);
    }

    #[test]
    fn reserve_marks_used_and_is_idempotent() {
        let mut s = storage(MIB);
        let mut fa =
            FrameAllocator::new(&mut s, h(MIB), [(h(0x10000), 0x10000)].into_iter()).unwrap();
        assert_eq!(fa.free_frames(), 16);
        // 0xf800..0x11001 touches frames 0xf (not usable), 0x10 and 0x11.
        assert_eq!(fa.reserve(h(0xf800), 0x1801), 2);
        assert_eq!(fa.free_frames(), 14);
        assert_eq!(fa.used_frames(), 2);
        assert_eq!(fa.reserve(h(0xf800), 0x1801), 0);
        assert_eq!(fa.reserve(h(0x10000), 0x3000), 1);
        assert_eq!(fa.used_frames(), 3);
        assert_eq!(fa.usable_frames(), 16);
        // Outside usable memory or beyond max_addr: nothing happens.
        assert_eq!(fa.reserve(h(0), 0x1000), 0);
        assert_eq!(fa.reserve(h(MIB), 0x10000), 0);
        assert_eq!(fa.reserve(h(u64::MAX - 5), 100), 0);
        assert_eq!(fa.reserve(h(0x18000), 0), 0);
        check(&fa);
        // Reserved frames are never allocated...
        while let Some(a) = fa.alloc() {
            assert!(a >= h(0x13000), "{a}");
        }
        // ...but can be freed (memory handed back after boot).
        fa.free(h(0x11000)).unwrap();
        assert_eq!(fa.alloc(), Some(h(0x11000)));
        // Reserving the whole space takes whatever is left.
        fa.free(h(0x1f000)).unwrap();
        assert_eq!(fa.reserve(h(0), u64::MAX), 1);
        assert_eq!(fa.free_frames(), 0);
        check(&fa);
    }

    #[test]
    fn empty_allocator() {
        let mut s: Vec<u64> = Vec::new();
        let mut fa = FrameAllocator::new(&mut s, h(0), [(h(0), MIB)].into_iter()).unwrap();
        assert_eq!(fa.usable_frames(), 0);
        assert_eq!(fa.alloc(), None);
        assert_eq!(fa.alloc_contiguous(1, PAGE_SIZE), None);
        assert_eq!(fa.free(h(0)), Err(FrameError::OutOfRange(h(0))));
        assert_eq!(fa.reserve(h(0), PAGE_SIZE), 0);
    }

    #[test]
    fn random_alloc_free_keeps_counters_consistent() {
        let max = 4 * MIB + 0x5000;
        let mut s = storage(max);
        let ranges = [
            (h(0x1000), 0x9e000),
            (h(0x10_0000), 0x1f_0000),
            (h(0x30_0000), 0x10_5000),
            (h(0x2f_f000), 0x2000), // overlaps the next range
        ];
        let mut fa = FrameAllocator::new(&mut s, h(max), ranges.into_iter()).unwrap();
        let usable: Vec<bool> = (0..fa.frames).map(|f| fa.test(fa.usable, f)).collect();
        // Model: which frames we hold, and as what (single or run length).
        let mut held: Vec<bool> = vec![false; fa.frames as usize];
        let mut runs: Vec<(Hpa, usize)> = Vec::new();
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let take = |a: Hpa, n: usize, held: &mut [bool]| {
            let f = a.frame_number() as usize;
            for i in f..f + n {
                assert!(usable[i], "frame {i:#x} outside usable memory handed out");
                assert!(!held[i], "frame {i:#x} handed out twice");
                held[i] = true;
            }
        };
        for step in 0..20_000 {
            let r = xorshift(&mut seed);
            match r % 8 {
                0..=3 => {
                    if let Some(a) = fa.alloc() {
                        take(a, 1, &mut held);
                        runs.push((a, 1));
                    } else {
                        assert_eq!(fa.free_frames(), 0);
                    }
                }
                4 => {
                    let n = 1 + (r >> 8) as usize % 20;
                    let align = PAGE_SIZE << ((r >> 16) % 6);
                    if let Some(a) = fa.alloc_contiguous(n, align) {
                        assert!(a.is_aligned(align));
                        take(a, n, &mut held);
                        runs.push((a, n));
                    }
                }
                _ => {
                    if !runs.is_empty() {
                        let i = (r >> 8) as usize % runs.len();
                        let (a, n) = runs.swap_remove(i);
                        fa.free_contiguous(a, n).unwrap();
                        let f = a.frame_number() as usize;
                        held[f..f + n].fill(false);
                        // And a double free is caught.
                        assert_eq!(fa.free(a), Err(FrameError::AlreadyFree(a)));
                    }
                }
            }
            let held_count = held.iter().filter(|&&x| x).count() as u64;
            assert_eq!(fa.used_frames(), held_count);
            assert_eq!(fa.free_frames() + held_count, fa.usable_frames());
            if step % 1000 == 0 {
                check(&fa);
            }
        }
        check(&fa);
    }
}
