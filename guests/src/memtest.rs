//! The `memtest` guest's pattern and checksum, host-testable so a test can
//! predict what a guest prints.
//!
//! Word at guest-physical `addr` (8-byte aligned) = `pattern(addr, seed)`:
//! SplitMix64's finaliser of `addr ^ seed`. It is a bijection of `u64`, so
//! no two addresses get the same word: a page mapped twice, or at the wrong
//! place, shows up as a mismatch. The checksum is 64-bit FNV-1a over the
//! little-endian bytes of the words in address order, the same function
//! that e.g. `python3 -c` can compute.

/// The word `memtest` writes at `addr` for `seed`.
pub const fn pattern(addr: u64, seed: u64) -> u64 {
    // SplitMix64's output function (Steele, Lea, Flood 2014).
    let mut z = addr ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The empty hash.
    pub const fn new() -> Self {
        Fnv1a(Self::OFFSET_BASIS)
    }

    /// Adds bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    /// Adds a word's little-endian bytes.
    pub fn word(&mut self, w: u64) {
        self.bytes(&w.to_le_bytes());
    }

    /// The hash so far.
    pub const fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

/// The checksum `memtest` prints for `[start, end)` (both 8-byte aligned)
/// and `seed`, computed without the memory.
pub fn expected_checksum(start: u64, end: u64, seed: u64) -> u64 {
    let mut h = Fnv1a::new();
    let mut addr = start;
    while addr < end {
        h.word(pattern(addr, seed));
        addr += 8;
    }
    h.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_vectors() {
        let hash = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.bytes(s);
            h.value()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn pattern_is_splitmix64() {
        // SplitMix64 seeded with 0 yields 0xe220a8397b1dcdaf first: the
        // finaliser of 0x9e3779b97f4a7c15.
        assert_eq!(pattern(0x9e37_79b9_7f4a_7c15, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(pattern(0x9e37_79b9_7f4a_7c15 ^ 7, 7), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn neighbouring_words_differ() {
        let words: Vec<u64> = (0..4096u64)
            .map(|i| pattern(0x10_0000 + i * 8, 0))
            .collect();
        let mut sorted = words.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), words.len());
        assert!(words.iter().all(|&w| w != 0 && w != u64::MAX));
    }

    #[test]
    fn checksum_is_fnv_over_the_words() {
        let mut h = Fnv1a::new();
        h.word(pattern(0x1000, 3));
        h.word(pattern(0x1008, 3));
        assert_eq!(expected_checksum(0x1000, 0x1010, 3), h.value());
        assert_eq!(expected_checksum(0x1000, 0x1000, 3), Fnv1a::new().value());
        assert_ne!(
            expected_checksum(0x1000, 0x1010, 3),
            expected_checksum(0x1000, 0x1010, 4)
        );
    }
}
