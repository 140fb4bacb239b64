//! VMCS fields (SDM Vol. 3D appendix B), the access trait and the
//! VM-instruction error numbers (SDM Vol. 3C 31.4).
//!
//! A field encoding is a 32-bit value (SDM 25.11.2):
//!
//! ```text
//!  31        15 14  13 12 11  10 9          1 0
//! +-----------+------+--+------+------------+-+
//! | reserved  |width |0 | type |   index    |A|
//! +-----------+------+--+------+------------+-+
//!  width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural width
//!  type:  0 control, 1 VM-exit information (read-only), 2 guest state, 3 host state
//!  A:     access type, 1 = high 32 bits of a 64-bit field
//! ```

use core::fmt;

/// A VMCS field encoding, the operand of VMREAD and VMWRITE.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Field(pub u32);

/// Width of a VMCS field (encoding bits 14:13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// 16-bit.
    Bits16,
    /// 64-bit (the "full" encoding; bit 0 set means its high half).
    Bits64,
    /// 32-bit.
    Bits32,
    /// Natural width: 64 bits on processors with Intel 64.
    Natural,
}

/// Kind of a VMCS field (encoding bits 11:10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// VM-execution, VM-exit or VM-entry control.
    Control,
    /// VM-exit information; read-only unless IA32_VMX_MISC bit 29.
    ReadOnly,
    /// Guest-state area.
    Guest,
    /// Host-state area.
    Host,
}

impl Field {
    /// Width decoded from bits 14:13.
    pub const fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// Type decoded from bits 11:10.
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ReadOnly,
            2 => FieldType::Guest,
            _ => FieldType::Host,
        }
    }

    /// Access type (bit 0): this encoding names the high 32 bits of a
    /// 64-bit field. Needed only by 32-bit code.
    pub const fn is_high(self) -> bool {
        self.0 & 1 != 0
    }

    /// Largest value the field holds, as a mask (VMWRITE ignores higher
    /// bits of the source for narrower fields, VMREAD zero-extends).
    pub const fn mask(self) -> u64 {
        if self.is_high() {
            return 0xffff_ffff;
        }
        match self.width() {
            FieldWidth::Bits16 => 0xffff,
            FieldWidth::Bits32 => 0xffff_ffff,
            FieldWidth::Bits64 | FieldWidth::Natural => u64::MAX,
        }
    }
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Field::{n}({:#06x})", self.0),
            None => write!(f, "Field({:#06x})", self.0),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

macro_rules! fields {
    ($($(#[doc = $doc:literal])* $name:ident = $enc:literal;)*) => {
        impl Field {
            $($(#[doc = $doc])* pub const $name: Field = Field($enc);)*

            /// Every field named here, in encoding order (e.g. to dump a
            /// VMCS after a failed VM entry).
            pub const ALL: &'static [Field] = &[$(Field::$name),*];

            /// The constant's name for a known encoding.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($enc => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

fields! {
    // B.1.1 16-bit control fields.
    /// Virtual-processor identifier.
    VPID = 0x0000;
    /// Posted-interrupt notification vector.
    POSTED_INTERRUPT_VECTOR = 0x0002;
    /// EPTP index.
    EPTP_INDEX = 0x0004;
    // B.1.2 16-bit guest-state fields.
    /// Guest ES selector.
    GUEST_ES_SELECTOR = 0x0800;
    /// Guest CS selector.
    GUEST_CS_SELECTOR = 0x0802;
    /// Guest SS selector.
    GUEST_SS_SELECTOR = 0x0804;
    /// Guest DS selector.
    GUEST_DS_SELECTOR = 0x0806;
    /// Guest FS selector.
    GUEST_FS_SELECTOR = 0x0808;
    /// Guest GS selector.
    GUEST_GS_SELECTOR = 0x080a;
    /// Guest LDTR selector.
    GUEST_LDTR_SELECTOR = 0x080c;
    /// Guest TR selector.
    GUEST_TR_SELECTOR = 0x080e;
    /// Guest interrupt status (virtual-interrupt delivery).
    GUEST_INTERRUPT_STATUS = 0x0810;
    /// PML index: next free entry of the page-modification log (511 down to 0).
    PML_INDEX = 0x0812;
    // B.1.3 16-bit host-state fields.
    /// Host ES selector.
    HOST_ES_SELECTOR = 0x0c00;
    /// Host CS selector.
    HOST_CS_SELECTOR = 0x0c02;
    /// Host SS selector.
    HOST_SS_SELECTOR = 0x0c04;
    /// Host DS selector.
    HOST_DS_SELECTOR = 0x0c06;
    /// Host FS selector.
    HOST_FS_SELECTOR = 0x0c08;
    /// Host GS selector.
    HOST_GS_SELECTOR = 0x0c0a;
    /// Host TR selector (must not be 0).
    HOST_TR_SELECTOR = 0x0c0c;
    // B.2.1 64-bit control fields.
    /// Address of I/O bitmap A (ports 0x0000-0x7fff).
    IO_BITMAP_A = 0x2000;
    /// Address of I/O bitmap B (ports 0x8000-0xffff).
    IO_BITMAP_B = 0x2002;
    /// Address of the MSR bitmaps.
    MSR_BITMAP = 0x2004;
    /// VM-exit MSR-store address.
    EXIT_MSR_STORE_ADDRESS = 0x2006;
    /// VM-exit MSR-load address.
    EXIT_MSR_LOAD_ADDRESS = 0x2008;
    /// VM-entry MSR-load address.
    ENTRY_MSR_LOAD_ADDRESS = 0x200a;
    /// Executive-VMCS pointer.
    EXECUTIVE_VMCS_POINTER = 0x200c;
    /// PML address.
    PML_ADDRESS = 0x200e;
    /// TSC offset.
    TSC_OFFSET = 0x2010;
    /// Virtual-APIC address.
    VIRTUAL_APIC_ADDRESS = 0x2012;
    /// APIC-access address.
    APIC_ACCESS_ADDRESS = 0x2014;
    /// Posted-interrupt descriptor address.
    POSTED_INTERRUPT_DESC_ADDRESS = 0x2016;
    /// VM-function controls.
    VM_FUNCTION_CONTROLS = 0x2018;
    /// EPT pointer.
    EPT_POINTER = 0x201a;
    /// EPTP-list address.
    EPTP_LIST_ADDRESS = 0x2024;
    /// XSS-exiting bitmap.
    XSS_EXITING_BITMAP = 0x202c;
    /// TSC multiplier.
    TSC_MULTIPLIER = 0x2032;
    // B.2.2 64-bit read-only data field.
    /// Guest-physical address (EPT violations and misconfigurations).
    GUEST_PHYSICAL_ADDRESS = 0x2400;
    // B.2.3 64-bit guest-state fields.
    /// VMCS link pointer (all ones unless VMCS shadowing is used).
    VMCS_LINK_POINTER = 0x2800;
    /// Guest IA32_DEBUGCTL.
    GUEST_IA32_DEBUGCTL = 0x2802;
    /// Guest IA32_PAT.
    GUEST_IA32_PAT = 0x2804;
    /// Guest IA32_EFER.
    GUEST_IA32_EFER = 0x2806;
    /// Guest IA32_PERF_GLOBAL_CTRL.
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808;
    /// Guest PDPTE0 (PAE paging with EPT).
    GUEST_PDPTE0 = 0x280a;
    /// Guest PDPTE1.
    GUEST_PDPTE1 = 0x280c;
    /// Guest PDPTE2.
    GUEST_PDPTE2 = 0x280e;
    /// Guest PDPTE3.
    GUEST_PDPTE3 = 0x2810;
    // B.2.4 64-bit host-state fields.
    /// Host IA32_PAT.
    HOST_IA32_PAT = 0x2c00;
    /// Host IA32_EFER.
    HOST_IA32_EFER = 0x2c02;
    /// Host IA32_PERF_GLOBAL_CTRL.
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04;
    // B.3.1 32-bit control fields.
    /// Pin-based VM-execution controls.
    PIN_BASED_CONTROLS = 0x4000;
    /// Primary processor-based VM-execution controls.
    PRIMARY_PROC_CONTROLS = 0x4002;
    /// Exception bitmap.
    EXCEPTION_BITMAP = 0x4004;
    /// Page-fault error-code mask.
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006;
    /// Page-fault error-code match.
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008;
    /// CR3-target count.
    CR3_TARGET_COUNT = 0x400a;
    /// Primary VM-exit controls.
    EXIT_CONTROLS = 0x400c;
    /// VM-exit MSR-store count.
    EXIT_MSR_STORE_COUNT = 0x400e;
    /// VM-exit MSR-load count.
    EXIT_MSR_LOAD_COUNT = 0x4010;
    /// VM-entry controls.
    ENTRY_CONTROLS = 0x4012;
    /// VM-entry MSR-load count.
    ENTRY_MSR_LOAD_COUNT = 0x4014;
    /// VM-entry interruption-information field (event injection).
    ENTRY_INTERRUPTION_INFO = 0x4016;
    /// VM-entry exception error code.
    ENTRY_EXCEPTION_ERROR_CODE = 0x4018;
    /// VM-entry instruction length.
    ENTRY_INSTRUCTION_LENGTH = 0x401a;
    /// TPR threshold.
    TPR_THRESHOLD = 0x401c;
    /// Secondary processor-based VM-execution controls.
    SECONDARY_PROC_CONTROLS = 0x401e;
    /// PLE_Gap.
    PLE_GAP = 0x4020;
    /// PLE_Window.
    PLE_WINDOW = 0x4022;
    // B.3.2 32-bit read-only data fields.
    /// VM-instruction error (valid after VMfailValid).
    VM_INSTRUCTION_ERROR = 0x4400;
    /// Exit reason.
    EXIT_REASON = 0x4402;
    /// VM-exit interruption information.
    EXIT_INTERRUPTION_INFO = 0x4404;
    /// VM-exit interruption error code.
    EXIT_INTERRUPTION_ERROR_CODE = 0x4406;
    /// IDT-vectoring information.
    IDT_VECTORING_INFO = 0x4408;
    /// IDT-vectoring error code.
    IDT_VECTORING_ERROR_CODE = 0x440a;
    /// VM-exit instruction length.
    EXIT_INSTRUCTION_LENGTH = 0x440c;
    /// VM-exit instruction information.
    EXIT_INSTRUCTION_INFO = 0x440e;
    // B.3.3 32-bit guest-state fields.
    /// Guest ES limit.
    GUEST_ES_LIMIT = 0x4800;
    /// Guest CS limit.
    GUEST_CS_LIMIT = 0x4802;
    /// Guest SS limit.
    GUEST_SS_LIMIT = 0x4804;
    /// Guest DS limit.
    GUEST_DS_LIMIT = 0x4806;
    /// Guest FS limit.
    GUEST_FS_LIMIT = 0x4808;
    /// Guest GS limit.
    GUEST_GS_LIMIT = 0x480a;
    /// Guest LDTR limit.
    GUEST_LDTR_LIMIT = 0x480c;
    /// Guest TR limit.
    GUEST_TR_LIMIT = 0x480e;
    /// Guest GDTR limit.
    GUEST_GDTR_LIMIT = 0x4810;
    /// Guest IDTR limit.
    GUEST_IDTR_LIMIT = 0x4812;
    /// Guest ES access rights.
    GUEST_ES_ACCESS_RIGHTS = 0x4814;
    /// Guest CS access rights.
    GUEST_CS_ACCESS_RIGHTS = 0x4816;
    /// Guest SS access rights.
    GUEST_SS_ACCESS_RIGHTS = 0x4818;
    /// Guest DS access rights.
    GUEST_DS_ACCESS_RIGHTS = 0x481a;
    /// Guest FS access rights.
    GUEST_FS_ACCESS_RIGHTS = 0x481c;
    /// Guest GS access rights.
    GUEST_GS_ACCESS_RIGHTS = 0x481e;
    /// Guest LDTR access rights.
    GUEST_LDTR_ACCESS_RIGHTS = 0x4820;
    /// Guest TR access rights.
    GUEST_TR_ACCESS_RIGHTS = 0x4822;
    /// Guest interruptibility state.
    GUEST_INTERRUPTIBILITY_STATE = 0x4824;
    /// Guest activity state.
    GUEST_ACTIVITY_STATE = 0x4826;
    /// Guest SMBASE.
    GUEST_SMBASE = 0x4828;
    /// Guest IA32_SYSENTER_CS.
    GUEST_IA32_SYSENTER_CS = 0x482a;
    /// VMX-preemption timer value.
    PREEMPTION_TIMER_VALUE = 0x482e;
    // B.3.4 32-bit host-state field.
    /// Host IA32_SYSENTER_CS.
    HOST_IA32_SYSENTER_CS = 0x4c00;
    // B.4.1 natural-width control fields.
    /// CR0 guest/host mask.
    CR0_GUEST_HOST_MASK = 0x6000;
    /// CR4 guest/host mask.
    CR4_GUEST_HOST_MASK = 0x6002;
    /// CR0 read shadow.
    CR0_READ_SHADOW = 0x6004;
    /// CR4 read shadow.
    CR4_READ_SHADOW = 0x6006;
    /// CR3-target value 0.
    CR3_TARGET_0 = 0x6008;
    /// CR3-target value 1.
    CR3_TARGET_1 = 0x600a;
    /// CR3-target value 2.
    CR3_TARGET_2 = 0x600c;
    /// CR3-target value 3.
    CR3_TARGET_3 = 0x600e;
    // B.4.2 natural-width read-only data fields.
    /// Exit qualification.
    EXIT_QUALIFICATION = 0x6400;
    /// I/O RCX (SMIs after I/O instructions).
    IO_RCX = 0x6402;
    /// I/O RSI.
    IO_RSI = 0x6404;
    /// I/O RDI.
    IO_RDI = 0x6406;
    /// I/O RIP.
    IO_RIP = 0x6408;
    /// Guest-linear address.
    GUEST_LINEAR_ADDRESS = 0x640a;
    // B.4.3 natural-width guest-state fields.
    /// Guest CR0.
    GUEST_CR0 = 0x6800;
    /// Guest CR3.
    GUEST_CR3 = 0x6802;
    /// Guest CR4.
    GUEST_CR4 = 0x6804;
    /// Guest ES base.
    GUEST_ES_BASE = 0x6806;
    /// Guest CS base.
    GUEST_CS_BASE = 0x6808;
    /// Guest SS base.
    GUEST_SS_BASE = 0x680a;
    /// Guest DS base.
    GUEST_DS_BASE = 0x680c;
    /// Guest FS base.
    GUEST_FS_BASE = 0x680e;
    /// Guest GS base.
    GUEST_GS_BASE = 0x6810;
    /// Guest LDTR base.
    GUEST_LDTR_BASE = 0x6812;
    /// Guest TR base.
    GUEST_TR_BASE = 0x6814;
    /// Guest GDTR base.
    GUEST_GDTR_BASE = 0x6816;
    /// Guest IDTR base.
    GUEST_IDTR_BASE = 0x6818;
    /// Guest DR7.
    GUEST_DR7 = 0x681a;
    /// Guest RSP.
    GUEST_RSP = 0x681c;
    /// Guest RIP.
    GUEST_RIP = 0x681e;
    /// Guest RFLAGS.
    GUEST_RFLAGS = 0x6820;
    /// Guest pending debug exceptions.
    GUEST_PENDING_DEBUG_EXCEPTIONS = 0x6822;
    /// Guest IA32_SYSENTER_ESP.
    GUEST_IA32_SYSENTER_ESP = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    GUEST_IA32_SYSENTER_EIP = 0x6826;
    // B.4.4 natural-width host-state fields.
    /// Host CR0.
    HOST_CR0 = 0x6c00;
    /// Host CR3.
    HOST_CR3 = 0x6c02;
    /// Host CR4.
    HOST_CR4 = 0x6c04;
    /// Host FS base.
    HOST_FS_BASE = 0x6c06;
    /// Host GS base.
    HOST_GS_BASE = 0x6c08;
    /// Host TR base.
    HOST_TR_BASE = 0x6c0a;
    /// Host GDTR base.
    HOST_GDTR_BASE = 0x6c0c;
    /// Host IDTR base.
    HOST_IDTR_BASE = 0x6c0e;
    /// Host IA32_SYSENTER_ESP.
    HOST_IA32_SYSENTER_ESP = 0x6c10;
    /// Host IA32_SYSENTER_EIP.
    HOST_IA32_SYSENTER_EIP = 0x6c12;
    /// Host RSP (written by `insn::vm_enter` on every entry).
    HOST_RSP = 0x6c14;
    /// Host RIP (`insn::vm_exit_rip()`).
    HOST_RIP = 0x6c16;
}

/// Access to the current VMCS. The kernel implements it with VMREAD and
/// VMWRITE on the VMCS it made current; tests implement it with a map.
///
/// Errors are not part of the interface: with a current VMCS and the field
/// encodings above, VMREAD and VMWRITE of supported fields cannot fail; an
/// implementation should treat a failure as a bug (log and panic).
pub trait Vmcs {
    /// Reads a field, zero-extended.
    fn read(&self, f: Field) -> u64;
    /// Writes a field; bits beyond its width are ignored.
    fn write(&mut self, f: Field, v: u64);
}

macro_rules! instruction_errors {
    ($($(#[doc = $doc:literal])* $name:ident = $n:literal, $msg:literal;)*) => {
        /// VM-instruction error numbers (SDM 31.4, table 31-1), read from
        /// [`Field::VM_INSTRUCTION_ERROR`] after VMfailValid.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum VmInstructionError {
            $($(#[doc = $doc])* $name,)*
            /// A number this table does not know.
            Unknown(u32),
        }

        impl VmInstructionError {
            /// Decodes an error number.
            pub const fn from_raw(n: u32) -> Self {
                match n {
                    $($n => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// The error number.
            pub const fn code(self) -> u32 {
                match self {
                    $(Self::$name => $n,)*
                    Self::Unknown(n) => n,
                }
            }
        }

        impl fmt::Display for VmInstructionError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(Self::$name => write!(f, "{} (VM-instruction error {})", $msg, $n),)*
                    Self::Unknown(n) => write!(f, "Unknown VM-instruction error {n}"),
                }
            }
        }
    };
}

instruction_errors! {
    /// 1.
    VmcallInRoot = 1, "VMCALL executed in VMX root operation";
    /// 2.
    VmclearInvalidAddress = 2, "VMCLEAR with invalid physical address";
    /// 3.
    VmclearVmxonPointer = 3, "VMCLEAR with VMXON pointer";
    /// 4.
    VmlaunchNonClear = 4, "VMLAUNCH with non-clear VMCS";
    /// 5.
    VmresumeNonLaunched = 5, "VMRESUME with non-launched VMCS";
    /// 6.
    VmresumeAfterVmxoff = 6, "VMRESUME after VMXOFF";
    /// 7.
    EntryInvalidControls = 7, "VM entry with invalid control field(s)";
    /// 8.
    EntryInvalidHostState = 8, "VM entry with invalid host-state field(s)";
    /// 9.
    VmptrldInvalidAddress = 9, "VMPTRLD with invalid physical address";
    /// 10.
    VmptrldVmxonPointer = 10, "VMPTRLD with VMXON pointer";
    /// 11.
    VmptrldBadRevision = 11, "VMPTRLD with incorrect VMCS revision identifier";
    /// 12.
    UnsupportedComponent = 12, "VMREAD/VMWRITE from/to unsupported VMCS component";
    /// 13.
    VmwriteReadOnly = 13, "VMWRITE to read-only VMCS component";
    /// 15.
    VmxonInRoot = 15, "VMXON executed in VMX root operation";
    /// 16.
    EntryInvalidExecutivePointer = 16, "VM entry with invalid executive-VMCS pointer";
    /// 17.
    EntryNonLaunchedExecutive = 17, "VM entry with non-launched executive VMCS";
    /// 18.
    EntryExecutiveNotVmxon = 18, "VM entry with executive-VMCS pointer not VMXON pointer";
    /// 19.
    VmcallNonClear = 19, "VMCALL with non-clear VMCS";
    /// 20.
    VmcallInvalidExitControls = 20, "VMCALL with invalid VM-exit control fields";
    /// 22.
    VmcallBadMsegRevision = 22, "VMCALL with incorrect MSEG revision identifier";
    /// 23.
    VmxoffDualMonitor = 23, "VMXOFF under dual-monitor treatment of SMIs and SMM";
    /// 24.
    VmcallInvalidSmmFeatures = 24, "VMCALL with invalid SMM-monitor features";
    /// 25.
    EntryInvalidExecutiveControls = 25, "VM entry with invalid VM-execution control fields in executive VMCS";
    /// 26.
    EntryBlockedByMovSs = 26, "VM entry with events blocked by MOV SS";
    /// 28.
    InvalidInveptInvvpidOperand = 28, "Invalid operand to INVEPT/INVVPID";
}

/// How a VMX instruction failed (SDM 31.2, "Conventions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VmFail {
    /// VMfailInvalid (RFLAGS.CF = 1): there is no current VMCS (or, for
    /// VMXON/VMCLEAR/VMPTRLD, the pointer is unusable), so no error number.
    #[error("VMfailInvalid (no current VMCS or an unusable VMCS pointer)")]
    Invalid,
    /// VMfailValid (RFLAGS.ZF = 1): the error number was stored in the
    /// current VMCS's VM-instruction error field.
    #[error("VMfailValid: {0}")]
    Valid(VmInstructionError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn widths_and_types() {
        assert_eq!(Field::VPID.width(), FieldWidth::Bits16);
        assert_eq!(Field::PML_INDEX.width(), FieldWidth::Bits16);
        assert_eq!(Field::HOST_TR_SELECTOR.field_type(), FieldType::Host);
        assert_eq!(Field::EPT_POINTER.width(), FieldWidth::Bits64);
        assert_eq!(
            Field::GUEST_PHYSICAL_ADDRESS.field_type(),
            FieldType::ReadOnly
        );
        assert_eq!(Field::EXIT_REASON.width(), FieldWidth::Bits32);
        assert_eq!(Field::EXIT_REASON.field_type(), FieldType::ReadOnly);
        assert_eq!(Field::PREEMPTION_TIMER_VALUE.width(), FieldWidth::Bits32);
        assert_eq!(Field::GUEST_RIP.width(), FieldWidth::Natural);
        assert_eq!(Field::GUEST_RIP.field_type(), FieldType::Guest);
        assert_eq!(Field::HOST_RSP.width(), FieldWidth::Natural);
        assert_eq!(Field::HOST_RSP.0, 0x6c14);
        assert_eq!(Field::CR0_GUEST_HOST_MASK.field_type(), FieldType::Control);
        assert_eq!(Field::VPID.mask(), 0xffff);
        assert_eq!(Field(Field::TSC_OFFSET.0 | 1).mask(), 0xffff_ffff);
        assert!(Field(Field::TSC_OFFSET.0 | 1).is_high());
    }

    #[test]
    fn every_field_is_consistent() {
        let mut seen = HashSet::new();
        for f in Field::ALL {
            assert!(seen.insert(f.0), "duplicate {f:?}");
            assert_eq!(f.0 & 1, 0, "{f:?} is a high-half encoding");
            assert_eq!(f.0 & (1 << 12), 0, "{f:?} has bit 12 set");
            assert_eq!(f.0 >> 15, 0, "{f:?} has reserved bits set");
            // Names say guest/host; the type bits must agree.
            let name = f.name().unwrap();
            if name.starts_with("GUEST_")
                && *f != Field::GUEST_PHYSICAL_ADDRESS
                && *f != Field::GUEST_LINEAR_ADDRESS
            {
                assert_eq!(f.field_type(), FieldType::Guest, "{name}");
            }
            if name.starts_with("HOST_") {
                assert_eq!(f.field_type(), FieldType::Host, "{name}");
            }
        }
        assert!(Field::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn names_and_display() {
        assert_eq!(Field::HOST_RIP.name(), Some("HOST_RIP"));
        assert_eq!(Field(0x7fff).name(), None);
        assert_eq!(Field::GUEST_RIP.to_string(), "GUEST_RIP");
        assert_eq!(
            format!("{:?}", Field::EXIT_REASON),
            "Field::EXIT_REASON(0x4402)"
        );
        assert_eq!(Field(0x2812).to_string(), "0x2812");
    }

    #[test]
    fn instruction_errors() {
        assert_eq!(
            VmInstructionError::from_raw(7),
            VmInstructionError::EntryInvalidControls
        );
        assert_eq!(VmInstructionError::from_raw(8).code(), 8);
        assert_eq!(
            VmInstructionError::from_raw(14),
            VmInstructionError::Unknown(14)
        );
        assert_eq!(VmInstructionError::from_raw(99).code(), 99);
        for n in 0..64 {
            assert_eq!(VmInstructionError::from_raw(n).code(), n);
        }
        assert_eq!(
            VmInstructionError::VmlaunchNonClear.to_string(),
            "VMLAUNCH with non-clear VMCS (VM-instruction error 4)"
        );
        assert_eq!(
            VmInstructionError::Unknown(42).to_string(),
            "Unknown VM-instruction error 42"
        );
        assert_eq!(
            VmFail::Valid(VmInstructionError::EntryInvalidHostState).to_string(),
            "VMfailValid: VM entry with invalid host-state field(s) (VM-instruction error 8)"
        );
    }
}
