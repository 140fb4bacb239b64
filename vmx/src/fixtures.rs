//! Real VMX capability MSR values for the unit tests.
//!
//! Values read from Bochs 2.7 (Debian 12 package), one run per
//! `cpu: model=...`, in the form the kernel's `vmx msrs` console command
//! prints them (MSR, raw 64-bit value; MSRs the CPU does not have are
//! absent). See the "VMX features per Bochs CPU model" table in
//! shared/docs/TESTBED.md for what each model does when exercised.

use crate::caps::VmxCapabilities;

/// `cpu: model=corei7_skylake_x` (MSR, value).
pub const SKYLAKE_X: &[(u32, u64)] = &[
    (0x480, 0x00d8_1000_0000_002b),
    (0x481, 0x0000_007f_0000_0016),
    (0x482, 0xf7f9_fffe_0401_e172),
    (0x483, 0x007f_ffff_0003_6dff),
    (0x484, 0x0000_ffff_0000_11ff),
    (0x485, 0x0000_0000_6004_01e0),
    (0x486, 0x0000_0000_8000_0021),
    (0x487, 0x0000_0000_ffff_ffff),
    (0x488, 0x0000_0000_0000_2000),
    (0x489, 0x0000_0000_0037_27ff),
    (0x48a, 0x0000_0000_0000_0034),
    (0x48b, 0x0217_7fff_0000_0000),
    (0x48c, 0x0000_0f01_0633_4141),
    (0x48d, 0x0000_007f_0000_0016),
    (0x48e, 0xf7f9_fffe_0400_6172),
    (0x48f, 0x007f_ffff_0003_6dfb),
    (0x490, 0x0000_ffff_0000_11fb),
    (0x491, 0x0000_0000_0000_0001),
];

/// `cpu: model=corei7_sandy_bridge_2600k` (MSR, value). IA32_VMX_VMFUNC
/// (0x491) does not exist on this model: reading it would fault.
pub const SANDY_BRIDGE: &[(u32, u64)] = &[
    (0x480, 0x00d8_1000_0000_002b),
    (0x481, 0x0000_007f_0000_0016),
    (0x482, 0xf7f9_fffe_0401_e172),
    (0x483, 0x007f_ffff_0003_6dff),
    (0x484, 0x0000_ffff_0000_11ff),
    (0x485, 0x0000_0000_0004_01e0),
    (0x486, 0x0000_0000_8000_0021),
    (0x487, 0x0000_0000_ffff_ffff),
    (0x488, 0x0000_0000_0000_2000),
    (0x489, 0x0000_0000_0006_27ff),
    (0x48a, 0x0000_0000_0000_0034),
    (0x48b, 0x0000_00ff_0000_0000),
    (0x48c, 0x0000_0f01_0611_4141),
    (0x48d, 0x0000_007f_0000_0016),
    (0x48e, 0xf7f9_fffe_0400_6172),
    (0x48f, 0x007f_ffff_0003_6dfb),
    (0x490, 0x0000_ffff_0000_11fb),
];

/// CPUID.1:ECX with only the VMX bit (5) set.
pub const CPUID1_ECX_VMX: u32 = 1 << 5;

/// Parses a dump, panicking if the parser reads an MSR the dump lacks
/// (on hardware that read would be a #GP).
pub fn caps(dump: &[(u32, u64)]) -> VmxCapabilities {
    let mut rdmsr = |msr: u32| -> u64 {
        dump.iter()
            .find(|(m, _)| *m == msr)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("read of absent MSR {msr:#x}"))
    };
    VmxCapabilities::read(&mut rdmsr, CPUID1_ECX_VMX).expect("fixture has VMX")
}

pub fn skylake() -> VmxCapabilities {
    caps(SKYLAKE_X)
}

pub fn sandy_bridge() -> VmxCapabilities {
    caps(SANDY_BRIDGE)
}
