//! What VT-x this CPU offers, decoded from CPUID and the VMX capability MSRs.
//!
//! Probing is safe: CPUID.1:ECX.VMX[bit 5] is checked before any VMX MSR is
//! read (RDMSR of an absent MSR faults), and nothing is written: enabling
//! VMX (IA32_FEATURE_CONTROL, VMXON) is the VM manager's job.
//! Reference: SDM Vol. 3D, appendix A (VMX capability reporting), 24.6 (VM-
//! execution controls), 25.5.1 (preemption timer), 28.2.4 (EPT A/D), 28.2.6
//! (PML); revision 084.

/// IA32_FEATURE_CONTROL.
pub const MSR_FEATURE_CONTROL: u32 = 0x3a;
/// IA32_VMX_BASIC.
pub const MSR_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_PINBASED_CTLS.
pub const MSR_VMX_PINBASED: u32 = 0x481;
/// IA32_VMX_PROCBASED_CTLS.
pub const MSR_VMX_PROCBASED: u32 = 0x482;
/// IA32_VMX_PROCBASED_CTLS2.
pub const MSR_VMX_PROCBASED2: u32 = 0x48b;
/// IA32_VMX_EPT_VPID_CAP.
pub const MSR_VMX_EPT_VPID_CAP: u32 = 0x48c;
/// IA32_VMX_TRUE_PINBASED_CTLS.
pub const MSR_VMX_TRUE_PINBASED: u32 = 0x48d;
/// IA32_VMX_TRUE_PROCBASED_CTLS.
pub const MSR_VMX_TRUE_PROCBASED: u32 = 0x48e;

/// VT-x capabilities of the boot CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmxCaps {
    /// CPUID reports VMX.
    pub vmx: bool,
    /// Firmware locked IA32_FEATURE_CONTROL with VMX outside SMX disabled.
    pub disabled_by_firmware: bool,
    /// VMCS revision identifier (bits 30:0 of IA32_VMX_BASIC).
    pub vmcs_revision: u32,
    /// Extended page tables.
    pub ept: bool,
    /// Unrestricted guest.
    pub unrestricted_guest: bool,
    /// EPT accessed and dirty flags.
    pub ept_ad: bool,
    /// Page-modification logging.
    pub pml: bool,
    /// VMX-preemption timer.
    pub preemption_timer: bool,
    /// Virtual-processor identifiers.
    pub vpid: bool,
    /// Secondary processor-based controls exist (IA32_VMX_PROCBASED_CTLS2 readable).
    pub has_secondary: bool,
    /// VM functions exist (IA32_VMX_VMFUNC readable).
    pub has_vmfunc: bool,
    /// Monitor trap flag (offered; Bochs offers it on some models and never fires it).
    pub mtf: bool,
}

/// Allowed-1 settings of a VMX control capability MSR (bits 63:32).
fn allowed1(msr: u64) -> u32 {
    (msr >> 32) as u32
}

impl VmxCaps {
    /// Decodes the capabilities. `cpuid1_ecx` is CPUID.1:ECX; `rdmsr` is only
    /// called when VMX is present, and only for the MSRs the previous ones
    /// say exist.
    pub fn probe(cpuid1_ecx: u32, rdmsr: &mut dyn FnMut(u32) -> u64) -> VmxCaps {
        let mut c = VmxCaps {
            vmx: cpuid1_ecx & (1 << 5) != 0,
            ..VmxCaps::default()
        };
        if !c.vmx {
            return c;
        }
        let fc = rdmsr(MSR_FEATURE_CONTROL);
        // Bit 0 lock, bit 2 VMX outside SMX (SDM Vol. 3C 24.7).
        c.disabled_by_firmware = fc & 1 != 0 && fc & (1 << 2) == 0;
        let basic = rdmsr(MSR_VMX_BASIC);
        c.vmcs_revision = (basic & 0x7fff_ffff) as u32;
        let true_ctls = basic & (1 << 55) != 0;
        let pin = rdmsr(if true_ctls {
            MSR_VMX_TRUE_PINBASED
        } else {
            MSR_VMX_PINBASED
        });
        let proc = rdmsr(if true_ctls {
            MSR_VMX_TRUE_PROCBASED
        } else {
            MSR_VMX_PROCBASED
        });
        c.preemption_timer = allowed1(pin) & (1 << 6) != 0;
        c.mtf = allowed1(proc) & (1 << 27) != 0;
        if allowed1(proc) & (1 << 31) != 0 {
            c.has_secondary = true;
            let proc2 = allowed1(rdmsr(MSR_VMX_PROCBASED2));
            c.has_vmfunc = proc2 & (1 << 13) != 0;
            c.ept = proc2 & (1 << 1) != 0;
            c.vpid = proc2 & (1 << 5) != 0;
            c.unrestricted_guest = proc2 & (1 << 7) != 0;
            c.pml = proc2 & (1 << 17) != 0;
            if c.ept || c.vpid {
                let cap = rdmsr(MSR_VMX_EPT_VPID_CAP);
                c.ept_ad = c.ept && cap & (1 << 21) != 0;
            }
        }
        c
    }

    /// (label, value) pairs in the order the `vmx` command prints them.
    pub fn rows(&self) -> [(&'static str, bool); 8] {
        [
            ("vmx", self.vmx),
            ("ept", self.ept),
            ("unrestricted guest", self.unrestricted_guest),
            ("ept a/d", self.ept_ad),
            ("pml", self.pml),
            ("preemption timer", self.preemption_timer),
            ("vpid", self.vpid),
            ("mtf", self.mtf),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_vmx_reads_no_msr() {
        let mut reads = 0;
        let c = VmxCaps::probe(0, &mut |_| {
            reads += 1;
            0
        });
        assert_eq!(reads, 0);
        assert_eq!(c, VmxCaps::default());
    }

    #[test]
    fn decodes_a_full_featured_cpu() {
        let mut read = |m: u32| -> u64 {
            match m {
                MSR_FEATURE_CONTROL => 0,
                MSR_VMX_BASIC => (1 << 55) | 0x2b,
                MSR_VMX_TRUE_PINBASED => (1u64 << 6 | 1) << 32,
                MSR_VMX_TRUE_PROCBASED => (1u64 << 31) << 32,
                MSR_VMX_PROCBASED2 => ((1u64 << 1) | (1 << 5) | (1 << 7) | (1 << 17)) << 32,
                MSR_VMX_EPT_VPID_CAP => 1 << 21,
                other => panic!("unexpected MSR {other:#x}"),
            }
        };
        let c = VmxCaps::probe(1 << 5, &mut read);
        assert!(c.vmx && c.ept && c.vpid && c.unrestricted_guest && c.pml && c.ept_ad);
        assert!(c.preemption_timer && !c.mtf && !c.disabled_by_firmware);
        assert_eq!(c.vmcs_revision, 0x2b);
    }

    #[test]
    fn no_secondary_controls_means_no_ept() {
        let mut read = |m: u32| -> u64 {
            match m {
                MSR_FEATURE_CONTROL => 0b1, // locked, VMX outside SMX off
                MSR_VMX_BASIC => 4,
                MSR_VMX_PINBASED => 0,
                MSR_VMX_PROCBASED => (1u64 << 27) << 32,
                other => panic!("unexpected MSR {other:#x}"),
            }
        };
        let c = VmxCaps::probe(1 << 5, &mut read);
        assert!(c.vmx && c.mtf && c.disabled_by_firmware);
        assert!(!c.ept && !c.pml && !c.ept_ad && !c.vpid);
    }
}

/// Reads a VMX capability MSR on the running CPU.
#[cfg(target_os = "none")]
pub fn read_msr(msr: u32) -> u64 {
    // SAFETY: callers only pass MSRs that VmxCaps::probe found to exist.
    unsafe { crate::arch::rdmsr(msr) }
}
