//! The VMX capability MSRs (SDM Vol. 3D appendix A), decoded.
//!
//! [`VmxCapabilities::read`] reads each MSR only when the CPU says it
//! exists: RDMSR of an MSR the CPU does not implement raises #GP, and the
//! whole IA32_VMX_* range faults when CPUID.1:ECX.VMX (bit 5) is clear.
//! The MSR access is a closure so the decoding runs in host tests on dumps
//! taken from Bochs.

use bitflags::bitflags;

use crate::controls::{PinControls, PrimaryControls, SecondaryControls};

/// IA32_VMX_* MSR numbers (SDM Vol. 4, table 2-2; meanings in Vol. 3D
/// appendix A).
pub mod msr {
    /// IA32_VMX_BASIC (A.1).
    pub const BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS (A.3.1).
    pub const PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS (A.3.2).
    pub const PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS (A.4).
    pub const EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS (A.5).
    pub const ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_MISC (A.6).
    pub const MISC: u32 = 0x485;
    /// IA32_VMX_CR0_FIXED0 (A.7).
    pub const CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1 (A.7).
    pub const CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0 (A.8).
    pub const CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1 (A.8).
    pub const CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_VMCS_ENUM (A.9).
    pub const VMCS_ENUM: u32 = 0x48a;
    /// IA32_VMX_PROCBASED_CTLS2 (A.3.3); exists only if the primary
    /// controls allow "activate secondary controls" to be 1.
    pub const PROCBASED_CTLS2: u32 = 0x48b;
    /// IA32_VMX_EPT_VPID_CAP (A.10); exists only if the secondary controls
    /// allow "enable EPT" or "enable VPID" to be 1.
    pub const EPT_VPID_CAP: u32 = 0x48c;
    /// IA32_VMX_TRUE_PINBASED_CTLS (A.3.1); exists only if IA32_VMX_BASIC
    /// bit 55 is 1. Same for the other three TRUE MSRs.
    pub const TRUE_PINBASED_CTLS: u32 = 0x48d;
    /// IA32_VMX_TRUE_PROCBASED_CTLS (A.3.2).
    pub const TRUE_PROCBASED_CTLS: u32 = 0x48e;
    /// IA32_VMX_TRUE_EXIT_CTLS (A.4).
    pub const TRUE_EXIT_CTLS: u32 = 0x48f;
    /// IA32_VMX_TRUE_ENTRY_CTLS (A.5).
    pub const TRUE_ENTRY_CTLS: u32 = 0x490;
    /// IA32_VMX_VMFUNC (A.11); exists only if the secondary controls allow
    /// "enable VM functions" to be 1.
    pub const VMFUNC: u32 = 0x491;
}

/// CPUID.1:ECX bit 5: VMX is supported.
const CPUID1_ECX_VMX: u32 = 1 << 5;

/// Why the capabilities could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// CPUID.1:ECX.VMX is clear; no IA32_VMX_* MSR may be read.
    #[error("CPU does not support VMX (CPUID.1:ECX = {0:#x}, bit 5 clear)")]
    NoVmx(u32),
    /// IA32_VMX_BASIC reports a VMCS region size outside 1..=4096 bytes,
    /// which the SDM (A.1) rules out: the MSR value is not believable.
    #[error("IA32_VMX_BASIC reports a VMCS region of {0} bytes (expected 1 to 4096)")]
    BadVmcsSize(u32),
}

/// IA32_VMX_BASIC (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic {
    /// The raw MSR value.
    pub raw: u64,
    /// VMCS revision identifier (bits 30:0): written to the first 4 bytes
    /// of the VMXON region and of every VMCS region before use.
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and each VMCS region
    /// (bits 44:32; at most 4096).
    pub vmcs_size: u32,
    /// Physical addresses of the VMXON region, VMCS regions and structures
    /// they reference are limited to 32 bits (bit 48; 0 on 64-bit CPUs).
    pub addr_width_32: bool,
    /// Memory type the CPU uses to access the VMCS and referenced
    /// structures (bits 53:50; 0 = UC, 6 = WB).
    pub memory_type: u8,
    /// VM exits due to INS/OUTS report the VM-exit instruction-information
    /// field (bit 54).
    pub ins_outs_info: bool,
    /// The IA32_VMX_TRUE_*_CTLS MSRs exist (bit 55) and some default1
    /// controls may be 0.
    pub true_controls: bool,
}

impl VmxBasic {
    /// Decodes IA32_VMX_BASIC.
    pub fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            revision_id: (raw & 0x7fff_ffff) as u32,
            vmcs_size: ((raw >> 32) & 0x1fff) as u32,
            addr_width_32: raw & (1 << 48) != 0,
            memory_type: ((raw >> 50) & 0xf) as u8,
            ins_outs_info: raw & (1 << 54) != 0,
            true_controls: raw & (1 << 55) != 0,
        }
    }
}

/// Allowed settings of one set of VMX controls (SDM A.3-A.5): a control
/// bit X may be 0 only if bit X of `allowed0` is 0, and may be 1 only if
/// bit X of `allowed1` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllowedSettings {
    /// Bits that must be 1 (the MSR's low half; "default1" bits that the
    /// CPU does not let software clear).
    pub allowed0: u32,
    /// Bits that may be 1 (the MSR's high half).
    pub allowed1: u32,
}

impl AllowedSettings {
    /// Splits a capability MSR value: allowed-0 settings in bits 31:0,
    /// allowed-1 settings in bits 63:32.
    pub fn from_msr(raw: u64) -> Self {
        Self {
            allowed0: raw as u32,
            allowed1: (raw >> 32) as u32,
        }
    }

    /// Whether every bit of `bits` may be 1.
    pub fn allows(&self, bits: u32) -> bool {
        self.allowed1 & bits == bits
    }

    /// Whether every bit of `bits` may be 0.
    pub fn allows_clear(&self, bits: u32) -> bool {
        self.allowed0 & bits == 0
    }
}

/// IA32_VMX_MISC (SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxMisc {
    /// The raw MSR value.
    pub raw: u64,
    /// Bits 4:0: the VMX-preemption timer counts down by 1 every time bit
    /// `rate` of the TSC changes, i.e. once every 2^rate TSC ticks
    /// (SDM 27.5.1).
    pub preemption_timer_rate: u8,
    /// VM exits store EFER.LMA into the "IA-32e mode guest" entry control
    /// (bit 5).
    pub stores_lma: bool,
    /// The HLT activity state is supported (bit 6).
    pub activity_hlt: bool,
    /// The shutdown activity state is supported (bit 7).
    pub activity_shutdown: bool,
    /// The wait-for-SIPI activity state is supported (bit 8).
    pub activity_wait_for_sipi: bool,
    /// Number of CR3-target values supported (bits 24:16).
    pub cr3_targets: u16,
    /// Recommended maximum number of entries in each VM-exit/VM-entry MSR
    /// list: 512 * (N + 1) with N = bits 27:25.
    pub max_msr_list: u32,
    /// VMWRITE may write any supported field, including the VM-exit
    /// information fields (bit 29).
    pub vmwrite_any_field: bool,
    /// VM entry may inject a software interrupt, software exception or
    /// privileged software exception with an instruction length of 0
    /// (bit 30).
    pub inject_zero_length: bool,
}

impl VmxMisc {
    /// Decodes IA32_VMX_MISC.
    pub fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            preemption_timer_rate: (raw & 0x1f) as u8,
            stores_lma: raw & (1 << 5) != 0,
            activity_hlt: raw & (1 << 6) != 0,
            activity_shutdown: raw & (1 << 7) != 0,
            activity_wait_for_sipi: raw & (1 << 8) != 0,
            cr3_targets: ((raw >> 16) & 0x1ff) as u16,
            max_msr_list: 512 * (((raw >> 25) & 0x7) as u32 + 1),
            vmwrite_any_field: raw & (1 << 29) != 0,
            inject_zero_length: raw & (1 << 30) != 0,
        }
    }

    /// TSC ticks per decrement of the VMX-preemption timer (2^rate).
    pub fn tsc_ticks_per_timer_tick(&self) -> u64 {
        1u64 << self.preemption_timer_rate
    }
}

/// A pair of IA32_VMX_CRx_FIXED0/FIXED1 MSRs (SDM A.7, A.8): a bit set in
/// `fixed0` must be 1 in the CR, a bit clear in `fixed1` must be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBits {
    /// IA32_VMX_CRx_FIXED0.
    pub fixed0: u64,
    /// IA32_VMX_CRx_FIXED1.
    pub fixed1: u64,
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM A.10). Empty when the MSR does not exist.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptVpidCaps: u64 {
        /// EPT entries may be execute-only (bits 2:0 = 100b).
        const EXECUTE_ONLY = 1 << 0;
        /// A page-walk length of 4 is supported.
        const PAGE_WALK_4 = 1 << 6;
        /// A page-walk length of 5 is supported.
        const PAGE_WALK_5 = 1 << 7;
        /// The EPT paging structures may be uncacheable (EPTP type 0).
        const MEMORY_TYPE_UC = 1 << 8;
        /// The EPT paging structures may be write-back (EPTP type 6).
        const MEMORY_TYPE_WB = 1 << 14;
        /// EPT PDEs may map 2 MiB pages.
        const PDE_2MB = 1 << 16;
        /// EPT PDPTEs may map 1 GiB pages.
        const PDPTE_1GB = 1 << 17;
        /// INVEPT is supported.
        const INVEPT = 1 << 20;
        /// EPT accessed and dirty flags are supported.
        const ACCESSED_DIRTY = 1 << 21;
        /// EPT violations report advanced VM-exit information.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Supervisor shadow-stack control is supported.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Single-context INVEPT is supported.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// All-context INVEPT is supported.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// INVVPID is supported.
        const INVVPID = 1 << 32;
        /// Individual-address INVVPID is supported.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Single-context INVVPID is supported.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// All-context INVVPID is supported.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Single-context-retaining-globals INVVPID is supported.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

/// What VT-x one CPU offers, from its capability MSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based VM-execution controls (TRUE MSR when present).
    pub pin: AllowedSettings,
    /// Primary processor-based VM-execution controls (TRUE MSR when present).
    pub proc: AllowedSettings,
    /// Secondary processor-based VM-execution controls; all zero (nothing
    /// may be set) when the CPU has no secondary controls.
    pub proc2: AllowedSettings,
    /// VM-exit controls (TRUE MSR when present).
    pub exit: AllowedSettings,
    /// VM-entry controls (TRUE MSR when present).
    pub entry: AllowedSettings,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// IA32_VMX_CR0_FIXED0/1.
    pub cr0_fixed: FixedBits,
    /// IA32_VMX_CR4_FIXED0/1.
    pub cr4_fixed: FixedBits,
    /// Highest index value used in any VMCS field encoding
    /// (IA32_VMX_VMCS_ENUM bits 9:1, SDM A.9).
    pub vmcs_max_index: u16,
    /// IA32_VMX_EPT_VPID_CAP; empty when the MSR does not exist.
    pub ept_vpid: EptVpidCaps,
    /// IA32_VMX_VMFUNC (bit X set: VM function X may be enabled); 0 when
    /// the MSR does not exist.
    pub vmfunc: u64,
}

impl VmxCapabilities {
    /// Reads and decodes the capabilities of the CPU this runs on.
    ///
    /// `cpuid1_ecx` is CPUID.1:ECX. `rdmsr` is called only if it reports
    /// VMX, and only for MSRs that exist according to the ones read before
    /// (SDM appendix A): the TRUE controls only if IA32_VMX_BASIC bit 55,
    /// IA32_VMX_PROCBASED_CTLS2 only if "activate secondary controls" may
    /// be 1, IA32_VMX_EPT_VPID_CAP only if EPT or VPID may be enabled,
    /// IA32_VMX_VMFUNC only if VM functions may be enabled.
    pub fn read(rdmsr: &mut dyn FnMut(u32) -> u64, cpuid1_ecx: u32) -> Result<Self, CapsError> {
        if cpuid1_ecx & CPUID1_ECX_VMX == 0 {
            return Err(CapsError::NoVmx(cpuid1_ecx));
        }
        let basic = VmxBasic::from_raw(rdmsr(msr::BASIC));
        if basic.vmcs_size == 0 || basic.vmcs_size > 4096 {
            return Err(CapsError::BadVmcsSize(basic.vmcs_size));
        }
        // The TRUE MSRs report the same allowed-1 settings but may allow
        // some default1 controls to be 0 (A.2); use them when they exist.
        let (pin, proc, exit, entry) = if basic.true_controls {
            (
                msr::TRUE_PINBASED_CTLS,
                msr::TRUE_PROCBASED_CTLS,
                msr::TRUE_EXIT_CTLS,
                msr::TRUE_ENTRY_CTLS,
            )
        } else {
            (
                msr::PINBASED_CTLS,
                msr::PROCBASED_CTLS,
                msr::EXIT_CTLS,
                msr::ENTRY_CTLS,
            )
        };
        let pin = AllowedSettings::from_msr(rdmsr(pin));
        let proc = AllowedSettings::from_msr(rdmsr(proc));
        let exit = AllowedSettings::from_msr(rdmsr(exit));
        let entry = AllowedSettings::from_msr(rdmsr(entry));
        let misc = VmxMisc::from_raw(rdmsr(msr::MISC));
        let cr0_fixed = FixedBits {
            fixed0: rdmsr(msr::CR0_FIXED0),
            fixed1: rdmsr(msr::CR0_FIXED1),
        };
        let cr4_fixed = FixedBits {
            fixed0: rdmsr(msr::CR4_FIXED0),
            fixed1: rdmsr(msr::CR4_FIXED1),
        };
        let vmcs_max_index = ((rdmsr(msr::VMCS_ENUM) >> 1) & 0x1ff) as u16;

        let mut proc2 = AllowedSettings::default();
        let mut ept_vpid = EptVpidCaps::empty();
        let mut vmfunc = 0;
        if proc.allows(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits()) {
            proc2 = AllowedSettings::from_msr(rdmsr(msr::PROCBASED_CTLS2));
            let ept = SecondaryControls::ENABLE_EPT.bits();
            let vpid = SecondaryControls::ENABLE_VPID.bits();
            if proc2.allows(ept) || proc2.allows(vpid) {
                ept_vpid = EptVpidCaps::from_bits_retain(rdmsr(msr::EPT_VPID_CAP));
            }
            if proc2.allows(SecondaryControls::ENABLE_VM_FUNCTIONS.bits()) {
                vmfunc = rdmsr(msr::VMFUNC);
            }
        }
        Ok(Self {
            basic,
            pin,
            proc,
            proc2,
            exit,
            entry,
            misc,
            cr0_fixed,
            cr4_fixed,
            vmcs_max_index,
            ept_vpid,
            vmfunc,
        })
    }

    /// "Enable EPT" may be 1.
    pub fn ept(&self) -> bool {
        self.proc2.allows(SecondaryControls::ENABLE_EPT.bits())
    }

    /// "Unrestricted guest" may be 1 (it also needs EPT, SDM 26.2.1.1).
    pub fn unrestricted_guest(&self) -> bool {
        self.ept()
            && self
                .proc2
                .allows(SecondaryControls::UNRESTRICTED_GUEST.bits())
    }

    /// "Enable VPID" may be 1.
    pub fn vpid(&self) -> bool {
        self.proc2.allows(SecondaryControls::ENABLE_VPID.bits())
    }

    /// "Enable PML" may be 1 (it also needs EPT, SDM 26.2.1.1).
    pub fn pml(&self) -> bool {
        self.ept() && self.proc2.allows(SecondaryControls::ENABLE_PML.bits())
    }

    /// EPT accessed and dirty flags are supported.
    pub fn ept_ad(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCaps::ACCESSED_DIRTY)
    }

    /// "Activate VMX-preemption timer" may be 1.
    pub fn preemption_timer(&self) -> bool {
        self.pin.allows(PinControls::PREEMPTION_TIMER.bits())
    }

    /// "Monitor trap flag" may be 1. Bochs offers it on some models
    /// without ever delivering the exit (shared/docs/TESTBED.md).
    pub fn mtf(&self) -> bool {
        self.proc.allows(PrimaryControls::MONITOR_TRAP_FLAG.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, SANDY_BRIDGE, SKYLAKE_X};

    #[test]
    fn no_vmx_reads_no_msr() {
        let mut reads = 0;
        let r = VmxCapabilities::read(
            &mut |_| {
                reads += 1;
                0
            },
            0x7ffa_f3bf & !(1 << 5),
        );
        assert_eq!(r, Err(CapsError::NoVmx(0x7ffa_f39f)));
        assert_eq!(reads, 0);
        assert_eq!(
            CapsError::NoVmx(0).to_string(),
            "CPU does not support VMX (CPUID.1:ECX = 0x0, bit 5 clear)"
        );
    }

    #[test]
    fn skylake_basic_and_misc() {
        let c = fixtures::skylake();
        assert_eq!(c.basic.revision_id, 0x2b);
        assert_eq!(c.basic.vmcs_size, 4096);
        assert_eq!(c.basic.memory_type, 6);
        assert!(c.basic.true_controls);
        assert!(c.basic.ins_outs_info);
        assert!(!c.basic.addr_width_32);
        assert_eq!(c.misc.preemption_timer_rate, 0);
        assert_eq!(c.misc.tsc_ticks_per_timer_tick(), 1);
        assert!(c.misc.stores_lma);
        assert!(c.misc.activity_hlt && c.misc.activity_shutdown && c.misc.activity_wait_for_sipi);
        assert_eq!(c.misc.cr3_targets, 4);
        assert_eq!(c.misc.max_msr_list, 512);
        assert!(c.misc.vmwrite_any_field);
        assert!(c.misc.inject_zero_length);
        assert_eq!(c.vmcs_max_index, 0x1a);
        assert_eq!(c.vmfunc, 1);
    }

    #[test]
    fn skylake_uses_the_true_controls() {
        let c = fixtures::skylake();
        assert_eq!(
            c.pin,
            AllowedSettings {
                allowed0: 0x16,
                allowed1: 0x7f
            }
        );
        // TRUE procbased: CR3-load/store exiting (bits 15, 16) may be 0.
        assert_eq!(
            c.proc,
            AllowedSettings {
                allowed0: 0x0400_6172,
                allowed1: 0xf7f9_fffe
            }
        );
        assert!(
            c.proc
                .allows_clear(PrimaryControls::CR3_LOAD_EXITING.bits())
        );
        assert_eq!(
            c.exit,
            AllowedSettings {
                allowed0: 0x0003_6dfb,
                allowed1: 0x007f_ffff
            }
        );
        assert_eq!(
            c.entry,
            AllowedSettings {
                allowed0: 0x11fb,
                allowed1: 0xffff
            }
        );
        assert_eq!(
            c.proc2,
            AllowedSettings {
                allowed0: 0,
                allowed1: 0x0217_7fff
            }
        );
        assert_eq!(
            c.cr0_fixed,
            FixedBits {
                fixed0: 0x8000_0021,
                fixed1: 0xffff_ffff
            }
        );
        assert_eq!(
            c.cr4_fixed,
            FixedBits {
                fixed0: 0x2000,
                fixed1: 0x0037_27ff
            }
        );
    }

    #[test]
    fn skylake_features() {
        let c = fixtures::skylake();
        assert!(c.ept());
        assert!(c.unrestricted_guest());
        assert!(c.vpid());
        assert!(c.pml());
        assert!(c.ept_ad());
        assert!(c.preemption_timer());
        assert!(!c.mtf());
        let e = c.ept_vpid;
        for f in [
            EptVpidCaps::EXECUTE_ONLY,
            EptVpidCaps::PAGE_WALK_4,
            EptVpidCaps::MEMORY_TYPE_UC,
            EptVpidCaps::MEMORY_TYPE_WB,
            EptVpidCaps::PDE_2MB,
            EptVpidCaps::PDPTE_1GB,
            EptVpidCaps::INVEPT,
            EptVpidCaps::ACCESSED_DIRTY,
            EptVpidCaps::INVEPT_SINGLE_CONTEXT,
            EptVpidCaps::INVEPT_ALL_CONTEXT,
            EptVpidCaps::INVVPID,
            EptVpidCaps::INVVPID_INDIVIDUAL_ADDRESS,
            EptVpidCaps::INVVPID_SINGLE_CONTEXT,
            EptVpidCaps::INVVPID_ALL_CONTEXT,
            EptVpidCaps::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS,
        ] {
            assert!(e.contains(f), "{f:?}");
        }
        assert!(!e.contains(EptVpidCaps::PAGE_WALK_5));
        assert!(!e.contains(EptVpidCaps::ADVANCED_EXIT_INFO));
    }

    #[test]
    fn sandy_bridge_features() {
        // The fixture panics on a read of 0x491: proves VMFUNC is skipped.
        let c = fixtures::sandy_bridge();
        assert!(c.ept());
        assert!(c.unrestricted_guest());
        assert!(c.vpid());
        assert!(c.preemption_timer());
        assert!(!c.pml());
        assert!(!c.ept_ad());
        assert!(!c.mtf());
        assert_eq!(c.vmfunc, 0);
        assert!(
            c.ept_vpid
                .contains(EptVpidCaps::PDE_2MB | EptVpidCaps::INVEPT)
        );
        assert!(!c.ept_vpid.contains(EptVpidCaps::PDPTE_1GB));
        assert_eq!(c.misc.cr3_targets, 4);
        assert!(!c.misc.vmwrite_any_field);
        assert_eq!(c.cr4_fixed.fixed1, 0x0006_27ff);
    }

    #[test]
    fn reads_only_msrs_that_exist() {
        let mut read = Vec::new();
        let mut rdmsr = |m: u32| {
            read.push(m);
            SKYLAKE_X.iter().find(|(n, _)| *n == m).unwrap().1
        };
        VmxCapabilities::read(&mut rdmsr, fixtures::CPUID1_ECX_VMX).unwrap();
        read.sort_unstable();
        // TRUE controls instead of the plain ones, everything else once.
        assert_eq!(
            read,
            [
                0x480, 0x485, 0x486, 0x487, 0x488, 0x489, 0x48a, 0x48b, 0x48c, 0x48d, 0x48e, 0x48f,
                0x490, 0x491
            ]
        );
    }

    #[test]
    fn without_true_or_secondary_controls() {
        // A CPU without TRUE MSRs and without secondary controls: plain
        // control MSRs, and nothing from 0x48b on is read.
        let dump: Vec<(u32, u64)> = SANDY_BRIDGE
            .iter()
            .copied()
            .filter(|(m, _)| *m < 0x48b)
            .map(|(m, v)| match m {
                0x480 => (m, v & !(1 << 55)),
                0x482 => (m, v & !(1 << 63)),
                _ => (m, v),
            })
            .collect();
        let c = fixtures::caps(&dump);
        assert!(!c.basic.true_controls);
        assert_eq!(c.proc.allowed0, 0x0401_e172);
        assert_eq!(c.proc2, AllowedSettings::default());
        assert!(!c.ept() && !c.vpid() && !c.unrestricted_guest());
        assert!(c.ept_vpid.is_empty());
    }

    #[test]
    fn rejects_impossible_vmcs_size() {
        for (basic, size) in [(0x0000_2000_0000_0001u64, 0), (0x0000_1001_0000_0001, 4097)] {
            let mut rdmsr = |_| basic;
            assert_eq!(
                VmxCapabilities::read(&mut rdmsr, fixtures::CPUID1_ECX_VMX),
                Err(CapsError::BadVmcsSize(size))
            );
        }
    }
}
