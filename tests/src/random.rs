//! Deterministic noise and random draws for tests and benches, and the
//! one way their figures are summarised.

/// xorshift64 (shifts 13, 7, 17): the same sequence for the same seed, on
/// every machine, so a failing draw can be redone.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (made odd: zero would stay zero).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` bytes of noise (the low byte of each value).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `values` at the given percentiles (0 the least, 100 the most), joined
/// by ` / `; `-` when there are none.
pub fn spread(values: &[u64], percentiles: &[usize]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return String::from("-");
    }
    percentiles
        .iter()
        .map(|&q| v[(v.len() - 1) * q.min(100) / 100].to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_xorshift64() {
        let mut x = XorShift::new(1);
        let mut s = 1u64;
        for _ in 0..5 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            assert_eq!(x.next_u64(), s);
        }
        assert_eq!(XorShift::new(0).next_u64(), XorShift::new(1).next_u64());
    }

    #[test]
    fn spread_takes_percentiles_of_the_sorted_values() {
        assert_eq!(spread(&[], &[0, 50, 100]), "-");
        assert_eq!(spread(&[5, 1, 3], &[0, 50, 100]), "1 / 3 / 5");
        let v: Vec<u64> = (1..=11).collect();
        assert_eq!(spread(&v, &[0, 50, 90, 100]), "1 / 6 / 10 / 11");
    }
}
