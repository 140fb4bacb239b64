//! Entropy for channel handshake nonces and TCP initial sequence numbers.
//!
//! A SHA-256 pool, seeded at boot from every source the CPU has: RDSEED,
//! RDRAND and the jitter of the TSC against the PIT (the two clocks come
//! from different crystals on real hardware, so the TSC count per PIT tick
//! wanders in its low bits). Each output mixes fresh RDRAND/RDSEED and TSC
//! readings into the pool, hashes it with a counter, and then ratchets the
//! pool forward, so an output says nothing about the ones before it.
//!
//! A source that is absent or fails contributes nothing and is reported:
//! never a silent zero. Without RDRAND the boot log says so, and says how
//! many distinct jitter deltas were seen (on an emulator whose clocks
//! follow the instruction count, such as Bochs with `sync=none`, there are
//! few, and nonces are then predictable from the boot sequence).
//!
//! The pool logic is pure and host-tested; the kernel supplies the
//! [`Sources`] (see `kernel_sources` in this module, kernel target only).

use alloc::format;
use alloc::string::String;

use sha2::{Digest, Sha256};

/// Where randomness comes from: the CPU's generators and its clocks.
pub trait Sources {
    /// A 64-bit RDSEED output, or `None` if the CPU has none or it failed.
    fn rdseed(&mut self) -> Option<u64>;
    /// A 64-bit RDRAND output, or `None` if the CPU has none or it failed.
    fn rdrand(&mut self) -> Option<u64>;
    /// The time-stamp counter.
    fn tsc(&mut self) -> u64;
    /// TSC cycles between consecutive PIT ticks, `n` of them (empty if there
    /// is no usable PIT).
    fn jitter(&mut self, out: &mut [u64]) -> usize;
}

/// What the boot-time seeding found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// RDRAND delivered.
    pub rdrand: bool,
    /// RDSEED delivered.
    pub rdseed: bool,
    /// PIT ticks timed against the TSC.
    pub jitter_samples: usize,
    /// Distinct values among those TSC deltas: a rough measure of how much
    /// they vary (1 means no jitter at all).
    pub jitter_distinct: usize,
}

impl Report {
    /// The boot log line, and whether it is a warning.
    pub fn describe(&self) -> (bool, String) {
        let jitter = format!(
            "TSC jitter against the PIT ({} samples, {} distinct)",
            self.jitter_samples, self.jitter_distinct
        );
        match (self.rdrand, self.rdseed) {
            (true, true) => (false, format!("entropy: RDRAND, RDSEED and {jitter}")),
            (true, false) => (false, format!("entropy: RDRAND and {jitter} (no RDSEED)")),
            (false, true) => (
                true,
                format!(
                    "entropy: this CPU has no RDRAND: handshake nonces and TCP sequence numbers come from RDSEED and {jitter}"
                ),
            ),
            (false, false) => (
                true,
                format!(
                    "entropy: this CPU has neither RDRAND nor RDSEED: handshake nonces and TCP sequence numbers come from {jitter} alone{}",
                    if self.jitter_distinct < 16 {
                        "; that is little: they may be predictable"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }
}

/// PIT ticks timed at boot.
pub const JITTER_SAMPLES: usize = 256;

/// The pool.
pub struct Pool {
    state: [u8; 32],
    counter: u64,
}

impl Pool {
    /// Seeds a pool from every source; says what it found.
    pub fn seed(src: &mut dyn Sources) -> (Pool, Report) {
        let mut pool = Pool {
            state: [0; 32],
            counter: 0,
        };
        let mut rdseed = false;
        let mut rdrand = false;
        for _ in 0..4 {
            if let Some(v) = src.rdseed() {
                pool.mix(b"rdseed", &v.to_le_bytes());
                rdseed = true;
            }
            if let Some(v) = src.rdrand() {
                pool.mix(b"rdrand", &v.to_le_bytes());
                rdrand = true;
            }
        }
        let mut deltas = [0u64; JITTER_SAMPLES];
        let n = src.jitter(&mut deltas).min(JITTER_SAMPLES);
        for d in &deltas[..n] {
            pool.mix(b"jitter", &d.to_le_bytes());
        }
        let mut sorted = deltas;
        let sorted = &mut sorted[..n];
        sorted.sort_unstable();
        let distinct = sorted.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(n > 0);
        let tsc = src.tsc();
        pool.mix(b"tsc", &tsc.to_le_bytes());
        let report = Report {
            rdrand,
            rdseed,
            jitter_samples: n,
            jitter_distinct: distinct,
        };
        (pool, report)
    }

    fn mix(&mut self, label: &[u8], data: &[u8]) {
        self.state = Sha256::new()
            .chain_update(b"hv pool")
            .chain_update(self.state)
            .chain_update([label.len() as u8])
            .chain_update(label)
            .chain_update(data)
            .finalize()
            .into();
    }

    /// 32 fresh bytes: the pool with new readings of every source that
    /// delivers, hashed with a counter; the pool then moves on.
    pub fn next(&mut self, src: &mut dyn Sources) -> [u8; 32] {
        if let Some(v) = src.rdrand() {
            self.mix(b"rdrand", &v.to_le_bytes());
        }
        if let Some(v) = src.rdseed() {
            self.mix(b"rdseed", &v.to_le_bytes());
        }
        let tsc = src.tsc();
        self.mix(b"tsc", &tsc.to_le_bytes());
        self.counter += 1;
        let out: [u8; 32] = Sha256::new()
            .chain_update(b"hv out")
            .chain_update(self.state)
            .chain_update(self.counter.to_le_bytes())
            .finalize()
            .into();
        // Ratchet: the next state does not reveal this output.
        self.mix(b"next", &self.counter.to_le_bytes());
        out
    }
}

#[cfg(target_os = "none")]
mod kernel_sources {
    use super::{Pool, Report, Sources};
    use crate::arch;
    use spin::Mutex;

    /// The CPU's sources (each generator checks CPUID for itself).
    pub struct Cpu;

    impl Sources for Cpu {
        fn rdseed(&mut self) -> Option<u64> {
            arch::rdseed()
        }
        fn rdrand(&mut self) -> Option<u64> {
            arch::rdrand()
        }
        fn tsc(&mut self) -> u64 {
            arch::rdtsc()
        }
        fn jitter(&mut self, out: &mut [u64]) -> usize {
            crate::arch::time::pit_tick_deltas(out)
        }
    }

    static POOL: Mutex<Option<Pool>> = Mutex::new(None);

    /// Seeds the pool (once, at boot) and logs what it found.
    pub fn init() -> Report {
        let (pool, report) = Pool::seed(&mut Cpu);
        *POOL.lock() = Some(pool);
        let (warn, line) = report.describe();
        if warn {
            log::warn!("{line}");
        } else {
            log::info!("{line}");
        }
        report
    }

    /// 32 fresh random bytes.
    pub fn bytes32() -> [u8; 32] {
        let mut guard = POOL.lock();
        let pool = guard.get_or_insert_with(|| Pool::seed(&mut Cpu).0);
        pool.next(&mut Cpu)
    }

    /// A fresh random 64-bit number.
    pub fn u64() -> u64 {
        let b = bytes32();
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_le_bytes(w)
    }
}

#[cfg(target_os = "none")]
pub use kernel_sources::{bytes32, init, u64};

#[cfg(test)]
mod tests {
    use super::*;

    /// Sources with fixed answers.
    struct Fake {
        rdrand: Option<u64>,
        rdseed: Option<u64>,
        tsc: u64,
        jitter: alloc::vec::Vec<u64>,
    }

    impl Sources for Fake {
        fn rdseed(&mut self) -> Option<u64> {
            self.rdseed
        }
        fn rdrand(&mut self) -> Option<u64> {
            self.rdrand
        }
        fn tsc(&mut self) -> u64 {
            self.tsc
        }
        fn jitter(&mut self, out: &mut [u64]) -> usize {
            let n = self.jitter.len().min(out.len());
            out[..n].copy_from_slice(&self.jitter[..n]);
            n
        }
    }

    fn fake(rdrand: Option<u64>, rdseed: Option<u64>, jitter: &[u64]) -> Fake {
        Fake {
            rdrand,
            rdseed,
            tsc: 1000,
            jitter: jitter.to_vec(),
        }
    }

    #[test]
    fn outputs_differ_even_when_every_source_repeats_itself() {
        let mut src = fake(None, None, &[5; 10]);
        let (mut pool, _) = Pool::seed(&mut src);
        let a = pool.next(&mut src);
        let b = pool.next(&mut src);
        assert_ne!(a, b);
    }

    #[test]
    fn every_source_changes_the_output() {
        let out = |mut f: Fake| {
            let (mut p, _) = Pool::seed(&mut f);
            p.next(&mut f)
        };
        let base = out(fake(Some(1), Some(2), &[7, 8, 9]));
        assert_ne!(base, out(fake(Some(3), Some(2), &[7, 8, 9])));
        assert_ne!(base, out(fake(Some(1), Some(4), &[7, 8, 9])));
        assert_ne!(base, out(fake(Some(1), Some(2), &[7, 8, 10])));
        assert_eq!(base, out(fake(Some(1), Some(2), &[7, 8, 9])));
    }

    #[test]
    fn an_absent_generator_is_not_a_zero() {
        // Absent RDRAND must not be mixed in as a value: a CPU whose RDRAND
        // answers 0 is a different pool from one without RDRAND.
        let seed = |f: &mut Fake| Pool::seed(f).0.state;
        assert_ne!(
            seed(&mut fake(None, None, &[1, 2])),
            seed(&mut fake(Some(0), None, &[1, 2]))
        );
    }

    #[test]
    fn the_report_says_what_is_missing() {
        let (_, r) = Pool::seed(&mut fake(Some(1), Some(1), &[1, 2, 2, 3]));
        assert_eq!(
            (r.rdrand, r.rdseed, r.jitter_samples, r.jitter_distinct),
            (true, true, 4, 3)
        );
        assert!(!r.describe().0);

        let (_, r) = Pool::seed(&mut fake(None, Some(1), &[1, 2]));
        let (warn, line) = r.describe();
        assert!(warn);
        assert!(
            line.contains("no RDRAND") && line.contains("RDSEED"),
            "{line}"
        );

        let (_, r) = Pool::seed(&mut fake(None, None, &[4; 256]));
        let (warn, line) = r.describe();
        assert!(warn);
        assert!(line.contains("neither RDRAND nor RDSEED"), "{line}");
        assert!(line.contains("256 samples, 1 distinct"), "{line}");
        assert!(line.contains("predictable"), "{line}");

        let (_, r) = Pool::seed(&mut fake(None, None, &[]));
        assert_eq!(r.jitter_distinct, 0);
    }
}
