//! The state of one vCPU as it travels: a typed, versioned codec.
//!
//! A migration (and later fault tolerance) moves a paused vCPU as one
//! blob: [`VcpuState::encode`] on the source, [`VcpuState::decode`] on the
//! destination. What the state holds and where it comes from (VMCS reads,
//! XSAVE, MSR reads) is the kernel's business; this module only defines
//! the layout and refuses, with a typed error and never a panic, any blob
//! that does not follow it.
//!
//! Wire layout, version [`VERSION`] (2), little-endian:
//!
//! ```text
//! u8  version = 2
//! 15 × u64  rax rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15
//! u64 cr2
//! u64 guest_tsc
//! u8  halted (0 or 1)
//! u8  rdtsc_exiting (0 or 1)
//! u32 n (<= MAX_VMCS_FIELDS), n × (u32 VMCS field encoding, u64 value)
//! u64 xcr0
//! u32 len (576..=16384), len bytes: standard-format XSAVE area
//! 4 × u64 dr0..dr3, u64 dr6
//! u32 n (<= MAX_MSRS), n × (u32 MSR index, u64 value)
//! u32 entry interruption info, u32 error code, u32 instruction length
//! u64 timer period (guest TSC ticks, 0: off), u64 ticks to the next raise
//! ```
//!
//! Version 1 (kernel builds before this crate) was an ad-hoc blob: 16
//! GPRs with CR2, TSC, halted, requests and VMCS pairs. It is refused
//! with [`StateError::Version`]: both ends of a migration must run a
//! build that speaks version 2.

use alloc::vec::Vec;

/// Version of the layout [`VcpuState::encode`] writes and
/// [`VcpuState::decode`] reads.
pub const VERSION: u8 = 2;
/// Most VMCS fields a state carries.
pub const MAX_VMCS_FIELDS: usize = 256;
/// Most MSRs a state carries.
pub const MAX_MSRS: usize = 64;
/// Smallest XSAVE area (legacy region and header, SDM Vol. 1, 13.4).
pub const MIN_XSAVE: usize = crate::xcr0::MIN_XSAVE_SIZE as usize;
/// Largest XSAVE area accepted (16 KiB: every offerable component fits
/// in less than 3 KiB; this leaves room, never an unbounded allocation).
pub const MAX_XSAVE: usize = 16 * 1024;

/// Bytes of the fixed fields, for the smallest blob: version, GPRs, CR2,
/// TSC, halted, RDTSC exiting, VMCS count, XCR0, XSAVE length, the minimal XSAVE area,
/// DRs, MSR count, pending event, timer.
pub const MIN_WIRE: usize =
    1 + 15 * 8 + 8 + 8 + 1 + 1 + 4 + 8 + 4 + MIN_XSAVE + 5 * 8 + 4 + 12 + 16;

/// An event the vCPU was about to receive on its next VM entry (the
/// VM-entry interruption-information, exception error code and
/// instruction length fields, SDM Vol. 3C, 25.8.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingEvent {
    /// VM-entry interruption information (bit 31: valid; 0: none).
    pub info: u32,
    /// Exception error code (if `info` says it delivers one).
    pub error_code: u32,
    /// VM-entry instruction length (software interrupts and exceptions).
    pub instruction_len: u32,
}

/// Where the vCPU's periodic timer stands, in guest TSC ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerPhase {
    /// Period in guest TSC ticks; 0: the timer is off.
    pub period: u64,
    /// Ticks until the next raise.
    pub next_in: u64,
}

/// Everything that makes a paused vCPU resumable elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    /// rax rbx rcx rdx rsi rdi rbp r8..r15 (RSP and RIP are VMCS fields).
    pub gprs: [u64; 15],
    /// CR2 (not in the VMCS).
    pub cr2: u64,
    /// The guest's TSC when it was paused.
    pub guest_tsc: u64,
    /// The vCPU was halted (HLT) rather than running.
    pub halted: bool,
    /// RDTSC/RDTSCP exit to the guest clock (the VM's `rdtsc=exit`).
    pub rdtsc_exiting: bool,
    /// VMCS guest-state fields: (encoding, value), at most
    /// [`MAX_VMCS_FIELDS`].
    pub vmcs: Vec<(u32, u64)>,
    /// The guest's XCR0.
    pub xcr0: u64,
    /// Standard-format XSAVE area as XSAVE wrote it,
    /// [`MIN_XSAVE`]..=[`MAX_XSAVE`] bytes.
    pub xsave: Vec<u8>,
    /// DR0-DR3 (DR7 is a VMCS field).
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// MSRs not in the VMCS (STAR, LSTAR, CSTAR, SFMASK,
    /// KERNEL_GS_BASE...): (index, value), at most [`MAX_MSRS`].
    pub msrs: Vec<(u32, u64)>,
    /// The event pending injection.
    pub pending: PendingEvent,
    /// The periodic timer.
    pub timer: TimerPhase,
}

/// Why a vCPU state blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The blob is of a layout this build does not read.
    #[error(
        "vCPU state version {found} is not supported (this hypervisor reads version {supported}; the source runs {} build)",
        age(*.found, *.supported)
    )]
    Version {
        /// The blob's version byte.
        found: u8,
        /// The version this build reads ([`VERSION`]).
        supported: u8,
    },
    /// The blob ended inside a field.
    #[error("vCPU state truncated while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the vCPU state")]
    TrailingBytes(usize),
    /// A list is longer than its limit.
    #[error("vCPU state lists {count} {what}, more than the {max} allowed")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its announced length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The XSAVE area is shorter than [`MIN_XSAVE`] or longer than
    /// [`MAX_XSAVE`].
    #[error("XSAVE area of {0} bytes (must be {MIN_XSAVE} to {MAX_XSAVE})")]
    XsaveSize(usize),
    /// A flag (halted, RDTSC exiting) is neither 0 nor 1.
    #[error("flag byte is {0} (must be 0 or 1)")]
    BadBool(u8),
}

fn age(found: u8, supported: u8) -> &'static str {
    if found < supported {
        "an older"
    } else {
        "a newer"
    }
}

impl VcpuState {
    /// Whether the state is within the limits [`VcpuState::decode`]
    /// enforces (a state that is not encodes to a blob that does not
    /// decode).
    pub fn check(&self) -> Result<(), StateError> {
        if self.vmcs.len() > MAX_VMCS_FIELDS {
            return Err(StateError::TooMany {
                what: "VMCS fields",
                count: self.vmcs.len(),
                max: MAX_VMCS_FIELDS,
            });
        }
        if !(MIN_XSAVE..=MAX_XSAVE).contains(&self.xsave.len()) {
            return Err(StateError::XsaveSize(self.xsave.len()));
        }
        if self.msrs.len() > MAX_MSRS {
            return Err(StateError::TooMany {
                what: "MSRs",
                count: self.msrs.len(),
                max: MAX_MSRS,
            });
        }
        Ok(())
    }

    /// Bytes [`VcpuState::encode`] produces.
    pub fn wire_len(&self) -> usize {
        MIN_WIRE - MIN_XSAVE + self.xsave.len() + 12 * (self.vmcs.len() + self.msrs.len())
    }

    /// The blob, version [`VERSION`] (layout in the module docs). Lists
    /// are written whole: check a state built from untrusted parts with
    /// [`VcpuState::check`] first.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(self.wire_len());
        w.push(VERSION);
        for r in self.gprs.iter().chain([&self.cr2, &self.guest_tsc]) {
            w.extend_from_slice(&r.to_le_bytes());
        }
        w.push(u8::from(self.halted));
        w.push(u8::from(self.rdtsc_exiting));
        pairs(&mut w, &self.vmcs);
        w.extend_from_slice(&self.xcr0.to_le_bytes());
        w.extend_from_slice(&len32(self.xsave.len()).to_le_bytes());
        w.extend_from_slice(&self.xsave);
        for r in self.dr.iter().chain([&self.dr6]) {
            w.extend_from_slice(&r.to_le_bytes());
        }
        pairs(&mut w, &self.msrs);
        let p = &self.pending;
        for v in [p.info, p.error_code, p.instruction_len] {
            w.extend_from_slice(&v.to_le_bytes());
        }
        w.extend_from_slice(&self.timer.period.to_le_bytes());
        w.extend_from_slice(&self.timer.next_in.to_le_bytes());
        w
    }

    /// Reads a blob written by [`VcpuState::encode`]. Never panics; never
    /// allocates more than the limits allow.
    pub fn decode(blob: &[u8]) -> Result<VcpuState, StateError> {
        let mut r = Reader(blob);
        let [version] = r.array("version")?;
        if version != VERSION {
            return Err(StateError::Version {
                found: version,
                supported: VERSION,
            });
        }
        let mut s = VcpuState::default();
        for g in &mut s.gprs {
            *g = r.u64("general-purpose registers")?;
        }
        s.cr2 = r.u64("cr2")?;
        s.guest_tsc = r.u64("guest TSC")?;
        s.halted = match r.array("halted")? {
            [0] => false,
            [1] => true,
            [b] => return Err(StateError::BadBool(b)),
        };
        s.rdtsc_exiting = match r.array("RDTSC exiting")? {
            [0] => false,
            [1] => true,
            [b] => return Err(StateError::BadBool(b)),
        };
        s.vmcs = r.pairs("VMCS fields", MAX_VMCS_FIELDS)?;
        s.xcr0 = r.u64("xcr0")?;
        let len = r.u32("XSAVE length")? as usize;
        if !(MIN_XSAVE..=MAX_XSAVE).contains(&len) {
            return Err(StateError::XsaveSize(len));
        }
        s.xsave = r.take(len, "XSAVE area")?.to_vec();
        for d in &mut s.dr {
            *d = r.u64("debug registers")?;
        }
        s.dr6 = r.u64("dr6")?;
        s.msrs = r.pairs("MSRs", MAX_MSRS)?;
        s.pending = PendingEvent {
            info: r.u32("pending event")?,
            error_code: r.u32("pending event")?,
            instruction_len: r.u32("pending event")?,
        };
        s.timer = TimerPhase {
            period: r.u64("timer")?,
            next_in: r.u64("timer")?,
        };
        if !r.0.is_empty() {
            return Err(StateError::TrailingBytes(r.0.len()));
        }
        Ok(s)
    }
}

/// `n` as a wire length; lists are bounded far below `u32::MAX`, and a
/// saturated length fails to decode rather than alias.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn pairs(w: &mut Vec<u8>, list: &[(u32, u64)]) {
    w.extend_from_slice(&len32(list.len()).to_le_bytes());
    for (k, v) in list {
        w.extend_from_slice(&k.to_le_bytes());
        w.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Truncated { what });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u32` count (at most `max`) of `(u32, u64)` pairs.
    fn pairs(&mut self, what: &'static str, max: usize) -> Result<Vec<(u32, u64)>, StateError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(StateError::TooMany {
                what,
                count: n,
                max,
            });
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push((self.u32(what)?, self.u64(what)?));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::collection::vec as pvec;
    use proptest::prelude::*;

    fn sample() -> VcpuState {
        VcpuState {
            gprs: core::array::from_fn(|i| i as u64 * 0x1111),
            cr2: 0xffff_8000_dead_b000,
            guest_tsc: 123_456_789,
            halted: true,
            rdtsc_exiting: true,
            vmcs: vec![(0x681e, 0xffff_ffff_8100_0000), (0x681c, 0x7000)],
            xcr0: 0x7,
            xsave: vec![0x5a; 832],
            dr: [1, 2, 3, 4],
            dr6: 0xffff_0ff0,
            msrs: vec![(0xc000_0081, 0x23_0010_0000_0000), (0xc000_0102, 0)],
            pending: PendingEvent {
                info: 0x8000_0b0e,
                error_code: 2,
                instruction_len: 0,
            },
            timer: TimerPhase {
                period: 1_000_000,
                next_in: 4_242,
            },
        }
    }

    #[test]
    fn a_sample_round_trips_with_the_documented_size() {
        let s = sample();
        let blob = s.encode();
        assert_eq!(blob[0], 2);
        assert_eq!(blob.len(), s.wire_len());
        assert_eq!(blob.len(), MIN_WIRE + (832 - 576) + 4 * 12);
        assert_eq!(VcpuState::decode(&blob), Ok(s));
    }

    #[test]
    fn the_old_format_is_refused_by_version() {
        // What a version-1 kernel wrote: version, 16 GPRs, TSC, halted,
        // requests, one VMCS pair.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[0; 17 * 8 + 2]);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&[0; 12]);
        let err = VcpuState::decode(&v1).unwrap_err();
        assert_eq!(
            err,
            StateError::Version {
                found: 1,
                supported: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "vCPU state version 1 is not supported (this hypervisor reads version 2; the source runs an older build)"
        );
        let err = VcpuState::decode(&[3]).unwrap_err();
        assert!(
            err.to_string().ends_with("the source runs a newer build)"),
            "{err}"
        );
        assert_eq!(
            VcpuState::decode(&[]),
            Err(StateError::Truncated { what: "version" })
        );
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut s = sample();
        s.xsave = vec![0; 575];
        assert_eq!(s.check(), Err(StateError::XsaveSize(575)));
        assert_eq!(
            VcpuState::decode(&s.encode()),
            Err(StateError::XsaveSize(575))
        );
        s.xsave = vec![0; MAX_XSAVE + 1];
        assert_eq!(
            VcpuState::decode(&s.encode()),
            Err(StateError::XsaveSize(MAX_XSAVE + 1))
        );
        s.xsave = vec![0; MAX_XSAVE];
        assert!(VcpuState::decode(&s.encode()).is_ok());
        s.msrs = vec![(0, 0); MAX_MSRS + 1];
        let err = StateError::TooMany {
            what: "MSRs",
            count: 65,
            max: 64,
        };
        assert_eq!(s.check(), Err(err.clone()));
        assert_eq!(VcpuState::decode(&s.encode()), Err(err));
        let mut s = sample();
        s.vmcs = vec![(0, 0); MAX_VMCS_FIELDS + 1];
        assert!(matches!(
            VcpuState::decode(&s.encode()),
            Err(StateError::TooMany {
                what: "VMCS fields",
                ..
            })
        ));
        let mut blob = sample().encode();
        blob.push(0);
        assert_eq!(VcpuState::decode(&blob), Err(StateError::TrailingBytes(1)));
        let mut blob = sample().encode();
        blob[1 + 17 * 8] = 2;
        assert_eq!(VcpuState::decode(&blob), Err(StateError::BadBool(2)));
        let mut blob = sample().encode();
        blob[1 + 17 * 8 + 1] = 3;
        assert_eq!(VcpuState::decode(&blob), Err(StateError::BadBool(3)));
        // A huge announced count is refused before any allocation.
        let mut blob = sample().encode();
        blob[1 + 17 * 8 + 2..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            VcpuState::decode(&blob),
            Err(StateError::TooMany { .. })
        ));
    }

    fn pairs_strategy(max: usize) -> impl Strategy<Value = Vec<(u32, u64)>> {
        pvec((any::<u32>(), any::<u64>()), 0..=max)
    }

    prop_compose! {
        fn states()(
            gprs in any::<[u64; 15]>(),
            cr2 in any::<u64>(),
            guest_tsc in any::<u64>(),
            halted in any::<bool>(),
            rdtsc_exiting in any::<bool>(),
            vmcs in pairs_strategy(40),
            xcr0 in any::<u64>(),
            xsave in pvec(any::<u8>(), MIN_XSAVE..=3000),
            dr in any::<[u64; 4]>(),
            dr6 in any::<u64>(),
            msrs in pairs_strategy(MAX_MSRS),
            pending in any::<(u32, u32, u32)>(),
            timer in any::<(u64, u64)>(),
        ) -> VcpuState {
            VcpuState {
                gprs, cr2, guest_tsc, halted, rdtsc_exiting, vmcs, xcr0, xsave, dr, dr6, msrs,
                pending: PendingEvent { info: pending.0, error_code: pending.1, instruction_len: pending.2 },
                timer: TimerPhase { period: timer.0, next_in: timer.1 },
            }
        }
    }

    proptest! {
        #[test]
        fn any_state_round_trips(s in states()) {
            prop_assert_eq!(s.check(), Ok(()));
            let blob = s.encode();
            prop_assert_eq!(blob.len(), s.wire_len());
            prop_assert_eq!(VcpuState::decode(&blob), Ok(s));
        }

        #[test]
        fn every_truncation_fails(s in states(), cut in any::<prop::sample::Index>()) {
            let blob = s.encode();
            let cut = cut.index(blob.len());
            prop_assert!(VcpuState::decode(&blob[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in pvec(any::<u8>(), 0..2000)) {
            let _ = VcpuState::decode(&bytes);
            let mut v2 = vec![VERSION];
            v2.extend_from_slice(&bytes);
            let _ = VcpuState::decode(&v2);
        }
    }

    #[test]
    fn every_truncation_of_the_sample_fails() {
        let blob = sample().encode();
        for cut in 0..blob.len() {
            assert!(
                matches!(
                    VcpuState::decode(&blob[..cut]),
                    Err(StateError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }
}
