//! The pure half of the `dirty` guest: which word it writes next, what it
//! writes, and the memory checksum it keeps up to date as it goes.
//!
//! The guest keeps `expected` = Σ [`term`]`(addr, value)` over every word
//! of its data region, updated on each write (minus the old term, plus the
//! new). Summing the region again must give the same value: a page lost or
//! corrupted by a migration makes them differ.

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
    fn picker_covers_the_region() {
        let mut p = Picker::new(7, 64);
        let mut seen = [false; 64];
        for _ in 0..2000 {
            seen[p.next_page() as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
