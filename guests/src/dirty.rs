//! The pure half of the `dirty` guest: which word it writes next, what it
//! writes, and the memory checksum it keeps up to date as it goes.
//!
//! The guest keeps `expected` = Σ [`term`]`(addr, value)` over every word
//! of its data region, updated on each write (minus the old term, plus the
//! new). Summing the region again must give the same value: a page lost or
//! corrupted by a migration makes them differ.
//!
//! Its argument is `mode × 1_000_000 + rate` ([`parse_arg`]): mode 0 writes
//! `rate` random pages a second for ever, mode 1 writes `rate` consecutive
//! pages in the [`WINDOW_TICKS`] ticks after each request (so it knows
//! exactly how many distinct pages it dirtied, for a tight check of dirty
//! tracking), mode 2 fills its RAM with [`stale_word`]s and exits (what a
//! later guest in the same host frames must never see: see [`is_stale`]).

/// A word's contribution to the checksum (wrapping sum of these).
pub fn term(addr: u64, value: u64) -> u64 {
    (value ^ addr.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (addr >> 3)
}

/// The checksum of a zeroed region `[start, end)` (8-byte words).
pub fn zero_sum(start: u64, end: u64) -> u64 {
    let mut s = 0u64;
    let mut a = start;
    while a < end {
        s = s.wrapping_add(term(a, 0));
        a += 8;
    }
    s
}

/// Pseudo-random page order (xorshift64), so writes spread over the region.
#[derive(Debug, Clone)]
pub struct Picker {
    state: u64,
    pages: u64,
}

impl Picker {
    /// Pages `0..pages` of the region.
    pub fn new(seed: u64, pages: u64) -> Picker {
        Picker {
            state: seed | 1,
            pages: pages.max(1),
        }
    }

    /// The next page index.
    pub fn next_page(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % self.pages
    }
}

/// Spreads `per_second` writes over 100 ticks a second: how many to do at
/// tick `n` (so any rate, even below 100/s, comes out exact over a second).
pub fn writes_at_tick(per_second: u64, n: u64) -> u64 {
    per_second * (n + 1) / 100 - per_second * n / 100
}

/// What the guest does besides answering requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes `rate` pseudo-random pages a second, for ever.
    Continuous,
    /// Writes nothing until a request; then `rate` writes to consecutive
    /// pages spread over the next [`WINDOW_TICKS`] ticks (one second), and
    /// a `window` line saying how many distinct pages that was.
    Windows,
    /// Fills every word of RAM it can reach with [`stale_word`], prints
    /// `filled <n> pages of <total>` and exits with code 0.
    Fill,
}

/// The argument is `mode × MODE_STEP + rate` (decimal-friendly on the
/// console: `arg=1002000` is mode 1 at 2000 pages a second).
pub const MODE_STEP: u64 = 1_000_000;

/// The mode and the rate in pages a second, or `None` for an unknown mode.
pub fn parse_arg(arg: u64) -> Option<(Mode, u64)> {
    let mode = match arg / MODE_STEP {
        0 => Mode::Continuous,
        1 => Mode::Windows,
        2 => Mode::Fill,
        _ => return None,
    };
    Some((mode, arg % MODE_STEP))
}

/// Timer ticks (100 a second) a window of [`Mode::Windows`] lasts.
pub const WINDOW_TICKS: u64 = 100;

/// Distinct pages a window of `writes` consecutive page writes touches in
/// a region of `pages` pages (the cursor wraps around).
pub fn window_pages(writes: u64, pages: u64) -> u64 {
    writes.min(pages)
}

/// The upper half of every word [`Mode::Fill`] writes. Nothing else the
/// guest or the hypervisor puts in guest RAM has it (the guest's own
/// writes carry a tick count below 2^32 there; page tables and the GDT
/// have small upper halves), so a word with it in a guest that did not
/// fill is left over from an earlier guest in the same host frames.
pub const STALE_TAG: u32 = 0x57a1_e5ed;

/// The word [`Mode::Fill`] writes at guest-physical `addr`: the tag, and
/// where the filling guest had it (its page number), so a leftover found
/// later says where it came from.
pub fn stale_word(addr: u64) -> u64 {
    (u64::from(STALE_TAG) << 32) | ((addr >> 12) & 0xffff_ffff)
}

/// Whether `word` was written by [`Mode::Fill`] (at any address).
pub fn is_stale(word: u64) -> bool {
    (word >> 32) as u32 == STALE_TAG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_add_up_over_a_second() {
        for rate in [0, 1, 7, 99, 100, 101, 2500, 100_000] {
            let total: u64 = (0..100).map(|n| writes_at_tick(rate, n)).sum();
            assert_eq!(total, rate);
        }
    }

    #[test]
    fn incremental_sum_matches_a_rescan() {
        let (start, end) = (0x20_0000u64, 0x20_0000 + 64 * 4096);
        let mut mem = vec![0u64; ((end - start) / 8) as usize];
        let mut expected = zero_sum(start, end);
        let mut p = Picker::new(42, (end - start) / 4096);
        for i in 0..5000u64 {
            let page = p.next_page();
            let addr = start + page * 4096 + (i % 512) * 8;
            let idx = ((addr - start) / 8) as usize;
            let new = i.wrapping_mul(0x1234_5678_9abc_def1);
            expected = expected
                .wrapping_sub(term(addr, mem[idx]))
                .wrapping_add(term(addr, new));
            mem[idx] = new;
        }
        let rescan = mem.iter().enumerate().fold(0u64, |s, (i, v)| {
            s.wrapping_add(term(start + i as u64 * 8, *v))
        });
        assert_eq!(rescan, expected);
        // One lost write is noticed.
        mem[3] ^= 1;
        let bad = mem.iter().enumerate().fold(0u64, |s, (i, v)| {
            s.wrapping_add(term(start + i as u64 * 8, *v))
        });
        assert_ne!(bad, expected);
    }

    #[test]
    fn arguments_select_mode_and_rate() {
        assert_eq!(parse_arg(2000), Some((Mode::Continuous, 2000)));
        assert_eq!(parse_arg(0), Some((Mode::Continuous, 0)));
        assert_eq!(parse_arg(1_002_000), Some((Mode::Windows, 2000)));
        assert_eq!(parse_arg(2_000_000), Some((Mode::Fill, 0)));
        assert_eq!(parse_arg(3_000_000), None);
        assert_eq!(window_pages(2000, 3836), 2000);
        assert_eq!(window_pages(5000, 3836), 3836);
    }

    #[test]
    fn stale_words_are_recognised_anywhere_and_nothing_else_is() {
        for addr in [0, 0x1000, 0x7f_f000, 0xbfff_f000, 0xffff_fff8] {
            assert!(is_stale(stale_word(addr)));
        }
        assert_eq!(stale_word(0x12_3456) & 0xffff_ffff, 0x123);
        // What the guest writes itself: `writes ^ (tick << 32)`, tick far
        // below the tag; page-table entries and GDT descriptors.
        assert!(!is_stale(12345 ^ (360_000u64 << 32)));
        assert!(!is_stale(0));
        assert!(!is_stale(0xffe0_0000 | 0x83));
        assert!(!is_stale(0x00af_9b00_0000_ffff));
    }

    #[test]
    fn picker_covers_the_region() {
        let mut p = Picker::new(7, 64);
        let mut seen = [false; 64];
        for _ in 0..2000 {
            seen[p.next_page() as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
