//! VM-execution, VM-exit and VM-entry controls (SDM Vol. 3C 25.6, 25.7,
//! 25.8) and negotiating them against the capability MSRs (Vol. 3D A.3-A.5).
//!
//! A VMM asks for two sets of bits per control field: the ones it cannot
//! work without (`required`) and the ones it uses when present
//! (`optional`). [`negotiate`] fails, naming the missing bits, when a
//! required bit cannot be 1; it drops unsupported optional bits silently;
//! and it always sets the bits the CPU does not allow to be 0 (default1
//! bits, including reserved ones), since VM entry fails otherwise
//! (SDM 26.2.1).

use bitflags::bitflags;

use crate::caps::{AllowedSettings, VmxCapabilities};

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PinControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// NMIs are never blocked; "blocking by NMI" tracks virtual NMIs.
        const VIRTUAL_NMIS = 1 << 5;
        /// Activate the VMX-preemption timer.
        const PREEMPTION_TIMER = 1 << 6;
        /// Process posted interrupts.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        /// Exit at the start of any instruction where RFLAGS.IF = 1 and no
        /// other blocking of interrupts applies.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Add the TSC-offset field to guest reads of the TSC.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// HLT causes VM exits.
        const HLT_EXITING = 1 << 7;
        /// INVLPG causes VM exits.
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT causes VM exits.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC causes VM exits.
        const RDPMC_EXITING = 1 << 11;
        /// RDTSC and RDTSCP cause VM exits.
        const RDTSC_EXITING = 1 << 12;
        /// MOV to CR3 causes VM exits (unless the value is a CR3 target).
        const CR3_LOAD_EXITING = 1 << 15;
        /// MOV from CR3 causes VM exits.
        const CR3_STORE_EXITING = 1 << 16;
        /// Use the tertiary processor-based controls.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// MOV to CR8 causes VM exits.
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 causes VM exits.
        const CR8_STORE_EXITING = 1 << 20;
        /// TPR virtualization through the virtual-APIC page.
        const USE_TPR_SHADOW = 1 << 21;
        /// Exit at the start of any instruction where there is no virtual-NMI
        /// blocking.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// MOV DR causes VM exits.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction causes a VM exit (ignored with I/O bitmaps).
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// The I/O bitmaps decide which ports cause VM exits.
        const USE_IO_BITMAPS = 1 << 25;
        /// Monitor trap flag: exit after each guest instruction. Never fires
        /// under Bochs (shared/docs/TESTBED.md).
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// The MSR bitmaps decide which RDMSR/WRMSR cause VM exits.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR causes VM exits.
        const MONITOR_EXITING = 1 << 29;
        /// PAUSE causes VM exits.
        const PAUSE_EXITING = 1 << 30;
        /// Use the secondary processor-based controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2). They
    /// apply only while the primary "activate secondary controls" is 1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        /// Accesses to the APIC-access page are virtualized.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Enable EPT.
        const ENABLE_EPT = 1 << 1;
        /// LGDT, LIDT, LLDT, LTR, SGDT, SIDT, SLDT, STR cause VM exits.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// RDTSCP does not raise #UD.
        const ENABLE_RDTSCP = 1 << 3;
        /// x2APIC MSR accesses are virtualized.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Tag cached translations with a VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD and WBNOINVD cause VM exits.
        const WBINVD_EXITING = 1 << 6;
        /// The guest may run unpaged or in real mode (needs EPT).
        const UNRESTRICTED_GUEST = 1 << 7;
        /// APIC register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// Exit on PAUSE loops longer than the PLE window.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// RDRAND causes VM exits.
        const RDRAND_EXITING = 1 << 11;
        /// INVPCID does not raise #UD.
        const ENABLE_INVPCID = 1 << 12;
        /// VMFUNC is enabled.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// VMREAD/VMWRITE in the guest may use a shadow VMCS.
        const VMCS_SHADOWING = 1 << 14;
        /// ENCLS consults the ENCLS-exiting bitmap.
        const ENABLE_ENCLS_EXITING = 1 << 15;
        /// RDSEED causes VM exits.
        const RDSEED_EXITING = 1 << 16;
        /// Page-modification logging (needs EPT).
        const ENABLE_PML = 1 << 17;
        /// EPT violations may raise #VE instead of exiting.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Hide VMX non-root operation from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// XSAVES/XRSTORS do not raise #UD.
        const ENABLE_XSAVES = 1 << 20;
        /// ENQCMD/ENQCMDS PASID translation.
        const PASID_TRANSLATION = 1 << 21;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EPT_EXECUTE = 1 << 22;
        /// Sub-page write permissions for EPT.
        const SUBPAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Intel PT uses guest-physical addresses.
        const PT_USES_GUEST_PHYSICAL = 1 << 24;
        /// Use TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// TPAUSE, UMONITOR and UMWAIT do not raise #UD.
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
        /// PCONFIG does not raise #UD.
        const ENABLE_PCONFIG = 1 << 27;
        /// ENCLV consults the ENCLV-exiting bitmap.
        const ENABLE_ENCLV_EXITING = 1 << 28;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM 25.7.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        /// Save DR7 and IA32_DEBUGCTL into the guest-state area.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// The host runs in 64-bit mode after the exit.
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Load IA32_PERF_GLOBAL_CTRL from the host-state area.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12;
        /// Acknowledge the interrupt controller on external-interrupt exits
        /// and store the vector in the exit interruption information.
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Save the guest IA32_PAT.
        const SAVE_IA32_PAT = 1 << 18;
        /// Load the host IA32_PAT.
        const LOAD_IA32_PAT = 1 << 19;
        /// Save the guest IA32_EFER.
        const SAVE_IA32_EFER = 1 << 20;
        /// Load the host IA32_EFER.
        const LOAD_IA32_EFER = 1 << 21;
        /// Save the VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// Clear IA32_BNDCFGS.
        const CLEAR_BNDCFGS = 1 << 23;
        /// Hide the VM exit from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// Clear IA32_RTIT_CTL.
        const CLEAR_RTIT_CTL = 1 << 25;
        /// Clear IA32_LBR_CTL.
        const CLEAR_LBR_CTL = 1 << 26;
        /// Load the host CET state.
        const LOAD_CET_STATE = 1 << 28;
        /// Load the host IA32_PKRS.
        const LOAD_PKRS = 1 << 29;
        /// Save the guest IA32_PERF_GLOBAL_CTRL.
        const SAVE_IA32_PERF_GLOBAL_CTRL = 1 << 30;
        /// Use the secondary VM-exit controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// VM-entry controls (SDM 25.8.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        /// Load DR7 and IA32_DEBUGCTL from the guest-state area.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// The guest runs in IA-32e mode (EFER.LMA = 1) after the entry.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Entry to SMM (dual-monitor treatment only).
        const ENTRY_TO_SMM = 1 << 10;
        /// Deactivate the dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// Load the guest IA32_PERF_GLOBAL_CTRL.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13;
        /// Load the guest IA32_PAT.
        const LOAD_IA32_PAT = 1 << 14;
        /// Load the guest IA32_EFER.
        const LOAD_IA32_EFER = 1 << 15;
        /// Load the guest IA32_BNDCFGS.
        const LOAD_BNDCFGS = 1 << 16;
        /// Hide the VM entry from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// Load the guest IA32_RTIT_CTL.
        const LOAD_RTIT_CTL = 1 << 18;
        /// Load the guest CET state.
        const LOAD_CET_STATE = 1 << 20;
        /// Load the guest IA32_LBR_CTL.
        const LOAD_LBR_CTL = 1 << 21;
        /// Load the guest IA32_PKRS.
        const LOAD_PKRS = 1 << 22;
    }
}

/// Required control bits the CPU does not allow to be 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{set} control bits {missing:#x} required but not supported by this CPU")]
pub struct ControlError {
    /// Which control field ("pin-based", "VM-exit", ...).
    pub set: &'static str,
    /// The required bits whose allowed-1 setting is 0.
    pub missing: u32,
}

/// Computes the value of one control field: `required` bits, the
/// `optional` bits the CPU allows, and every bit the CPU forces to 1.
///
/// Fails when a required bit may not be 1; `name` says which field in the
/// error.
pub fn negotiate(
    name: &'static str,
    caps: AllowedSettings,
    required: u32,
    optional: u32,
) -> Result<u32, ControlError> {
    let missing = required & !caps.allowed1;
    if missing != 0 {
        return Err(ControlError { set: name, missing });
    }
    Ok(required | (optional & caps.allowed1) | caps.allowed0)
}

macro_rules! typed_negotiate {
    ($($ty:ident, $field:ident, $name:literal;)*) => {$(
        impl $ty {
            /// Name of this control field in [`ControlError`].
            pub const NAME: &'static str = $name;

            /// [`negotiate`] against this field's allowed settings in `caps`.
            /// The result may contain bits without a name here (reserved
            /// default1 bits), which must be written as they are.
            pub fn negotiate(
                caps: &VmxCapabilities,
                required: Self,
                optional: Self,
            ) -> Result<Self, ControlError> {
                negotiate($name, caps.$field, required.bits(), optional.bits())
                    .map(Self::from_bits_retain)
            }
        }
    )*};
}

typed_negotiate! {
    PinControls, pin, "pin-based";
    PrimaryControls, proc, "primary processor-based";
    SecondaryControls, proc2, "secondary processor-based";
    ExitControls, exit, "VM-exit";
    EntryControls, entry, "VM-entry";
}

/// CR0.PE (protection enable).
const CR0_PE: u64 = 1 << 0;
/// CR0.PG (paging).
const CR0_PG: u64 = 1 << 31;

/// CR0 bits fixed in VMX operation (SDM A.7): `(must_be_1, must_be_0)`.
/// Apply as `(cr0 | must_be_1) & !must_be_0`.
///
/// With `unrestricted` (the guest uses the "unrestricted guest" control),
/// CR0.PE and CR0.PG need not be 1 in the guest (SDM 26.3.1.1); the host
/// and VMXON always use `false`.
pub fn fixed_cr0(caps: &VmxCapabilities, unrestricted: bool) -> (u64, u64) {
    let mut must_be_1 = caps.cr0_fixed.fixed0;
    if unrestricted {
        must_be_1 &= !(CR0_PE | CR0_PG);
    }
    (must_be_1, !caps.cr0_fixed.fixed1)
}

/// CR4 bits fixed in VMX operation (SDM A.8): `(must_be_1, must_be_0)`.
/// CR4.VMXE is among the must-be-1 bits, for the guest too; a VMM hides it
/// with the CR4 guest/host mask and read shadow.
pub fn fixed_cr4(caps: &VmxCapabilities) -> (u64, u64) {
    (caps.cr4_fixed.fixed0, !caps.cr4_fixed.fixed1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn skylake_ept_unrestricted_pml() {
        let c = fixtures::skylake();
        let want = SecondaryControls::ENABLE_EPT
            | SecondaryControls::UNRESTRICTED_GUEST
            | SecondaryControls::ENABLE_PML;
        let got = SecondaryControls::negotiate(&c, want, SecondaryControls::empty()).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.bits(), 0x0002_0082);
    }

    #[test]
    fn sandy_bridge_has_no_pml() {
        let c = fixtures::sandy_bridge();
        let err = SecondaryControls::negotiate(
            &c,
            SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_PML,
            SecondaryControls::empty(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ControlError {
                set: "secondary processor-based",
                missing: 0x2_0000
            }
        );
        assert_eq!(
            err.to_string(),
            "secondary processor-based control bits 0x20000 required but not supported by this CPU"
        );
    }

    #[test]
    fn optional_pml_dropped_on_sandy_bridge() {
        let c = fixtures::sandy_bridge();
        let got = SecondaryControls::negotiate(
            &c,
            SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST,
            SecondaryControls::ENABLE_PML | SecondaryControls::ENABLE_VPID,
        )
        .unwrap();
        assert_eq!(
            got,
            SecondaryControls::ENABLE_EPT
                | SecondaryControls::UNRESTRICTED_GUEST
                | SecondaryControls::ENABLE_VPID
        );
    }

    #[test]
    fn default1_bits_always_set() {
        let c = fixtures::skylake();
        // Pin-based: bits 1, 2, 4 are reserved default1.
        let pin = PinControls::negotiate(&c, PinControls::empty(), PinControls::empty()).unwrap();
        assert_eq!(pin.bits(), 0x16);
        let pin = PinControls::negotiate(&c, PinControls::PREEMPTION_TIMER, PinControls::empty())
            .unwrap();
        assert_eq!(pin.bits(), 0x56);
        // TRUE procbased: CR3 load/store exiting are not forced on.
        let proc = PrimaryControls::negotiate(
            &c,
            PrimaryControls::HLT_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS,
            PrimaryControls::empty(),
        )
        .unwrap();
        assert_eq!(proc.bits(), 0x8600_6172 | 0x80);
        assert!(!proc.contains(PrimaryControls::CR3_LOAD_EXITING));
        // TRUE exit/entry: "save/load debug controls" (bit 2) may be 0.
        let exit = ExitControls::negotiate(
            &c,
            ExitControls::HOST_ADDRESS_SPACE_SIZE,
            ExitControls::empty(),
        )
        .unwrap();
        assert_eq!(exit.bits(), 0x0003_6dfb | 0x200);
        assert!(!exit.contains(ExitControls::SAVE_DEBUG_CONTROLS));
        let entry = EntryControls::negotiate(
            &c,
            EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_DEBUG_CONTROLS,
            EntryControls::LOAD_IA32_EFER | EntryControls::LOAD_IA32_PAT,
        )
        .unwrap();
        assert_eq!(entry.bits(), 0x11fb | 0x200 | 0x4 | 0xc000);
    }

    #[test]
    fn error_names_the_field() {
        let caps = AllowedSettings {
            allowed0: 0x16,
            allowed1: 0x3f,
        };
        let err = negotiate(
            PinControls::NAME,
            caps,
            PinControls::PREEMPTION_TIMER.bits(),
            0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pin-based control bits 0x40 required but not supported by this CPU"
        );
        // Several missing bits are reported together, optional ones never.
        let err = negotiate("VM-entry", caps, 0x1c0, 0x200).unwrap_err();
        assert_eq!(err.missing, 0x1c0);
    }

    #[test]
    fn no_secondary_controls_means_nothing_allowed() {
        let mut c = fixtures::sandy_bridge();
        c.proc2 = AllowedSettings::default();
        assert_eq!(
            SecondaryControls::negotiate(
                &c,
                SecondaryControls::ENABLE_EPT,
                SecondaryControls::all()
            ),
            Err(ControlError {
                set: "secondary processor-based",
                missing: 0x2
            })
        );
    }

    #[test]
    fn fixed_crs_skylake() {
        let c = fixtures::skylake();
        assert_eq!(fixed_cr0(&c, false), (0x8000_0021, 0xffff_ffff_0000_0000));
        // Unrestricted guest: only CR0.NE stays forced.
        assert_eq!(fixed_cr0(&c, true), (0x20, 0xffff_ffff_0000_0000));
        let (one, zero) = fixed_cr4(&c);
        assert_eq!(one, 0x2000);
        assert_eq!(zero, !0x0037_27ff);
        // A real-mode guest CR0 of 0x10 (ET) becomes 0x30 under unrestricted.
        let (one, zero) = fixed_cr0(&c, true);
        assert_eq!((0x10 | one) & !zero, 0x30);
    }

    #[test]
    fn fixed_cr4_sandy_bridge() {
        let c = fixtures::sandy_bridge();
        // No PKE/CET etc.: bits 18 (OSXSAVE) allowed, bit 20 (SMEP) not.
        let (_, zero) = fixed_cr4(&c);
        assert_eq!(zero & (1 << 18), 0);
        assert_ne!(zero & (1 << 20), 0);
    }
}
