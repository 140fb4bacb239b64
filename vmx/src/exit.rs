//! What a VM exit reports: the exit reason (SDM Vol. 3C 25.9.1, Vol. 3D
//! appendix C), exit qualifications (Vol. 3C 28.2.1) and the
//! interruption-information format shared by event injection (25.8.3) and
//! exit/IDT-vectoring information (25.9.2, 25.9.3).
//!
//! All decoders take the raw field value as read from the VMCS and never
//! fail on values the hardware may produce: unknown numbers become
//! `Unknown`/`Reserved` variants; only combinations the SDM leaves
//! undefined are errors.

use core::fmt;

use bitflags::bitflags;

use crate::regs::Gpr;
use crate::vmcs::{Field, Vmcs};

macro_rules! exit_reasons {
    ($($name:ident = $n:literal, $text:literal;)*) => {
        /// Basic exit reason: bits 15:0 of the exit-reason field (SDM
        /// appendix C).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ExitReason {
            $(#[doc = concat!($text, " (", stringify!($n), ").")] $name,)*
            /// A number this table does not know.
            Unknown(u16),
        }

        impl ExitReason {
            /// Decodes a basic exit reason.
            pub const fn from_raw(n: u16) -> Self {
                match n {
                    $($n => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// The basic exit reason number.
            pub const fn code(self) -> u16 {
                match self {
                    $(Self::$name => $n,)*
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's name for the reason; "unknown" for [`Self::Unknown`].
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => $text,)*
                    Self::Unknown(_) => "unknown",
                }
            }
        }
    };
}

exit_reasons! {
    ExceptionOrNmi = 0, "exception or NMI";
    ExternalInterrupt = 1, "external interrupt";
    TripleFault = 2, "triple fault";
    Init = 3, "INIT signal";
    Sipi = 4, "start-up IPI";
    IoSmi = 5, "I/O SMI";
    OtherSmi = 6, "other SMI";
    InterruptWindow = 7, "interrupt window";
    NmiWindow = 8, "NMI window";
    TaskSwitch = 9, "task switch";
    Cpuid = 10, "CPUID";
    Getsec = 11, "GETSEC";
    Hlt = 12, "HLT";
    Invd = 13, "INVD";
    Invlpg = 14, "INVLPG";
    Rdpmc = 15, "RDPMC";
    Rdtsc = 16, "RDTSC";
    Rsm = 17, "RSM";
    Vmcall = 18, "VMCALL";
    Vmclear = 19, "VMCLEAR";
    Vmlaunch = 20, "VMLAUNCH";
    Vmptrld = 21, "VMPTRLD";
    Vmptrst = 22, "VMPTRST";
    Vmread = 23, "VMREAD";
    Vmresume = 24, "VMRESUME";
    Vmwrite = 25, "VMWRITE";
    Vmxoff = 26, "VMXOFF";
    Vmxon = 27, "VMXON";
    CrAccess = 28, "control-register access";
    MovDr = 29, "MOV DR";
    IoInstruction = 30, "I/O instruction";
    Rdmsr = 31, "RDMSR";
    Wrmsr = 32, "WRMSR";
    InvalidGuestState = 33, "VM-entry failure due to invalid guest state";
    MsrLoading = 34, "VM-entry failure due to MSR loading";
    Mwait = 36, "MWAIT";
    MonitorTrapFlag = 37, "monitor trap flag";
    Monitor = 39, "MONITOR";
    Pause = 40, "PAUSE";
    MachineCheck = 41, "VM-entry failure due to machine-check event";
    TprBelowThreshold = 43, "TPR below threshold";
    ApicAccess = 44, "APIC access";
    VirtualizedEoi = 45, "virtualized EOI";
    GdtrIdtrAccess = 46, "access to GDTR or IDTR";
    LdtrTrAccess = 47, "access to LDTR or TR";
    EptViolation = 48, "EPT violation";
    EptMisconfig = 49, "EPT misconfiguration";
    Invept = 50, "INVEPT";
    Rdtscp = 51, "RDTSCP";
    PreemptionTimer = 52, "VMX-preemption timer expired";
    Invvpid = 53, "INVVPID";
    Wbinvd = 54, "WBINVD or WBNOINVD";
    Xsetbv = 55, "XSETBV";
    ApicWrite = 56, "APIC write";
    Rdrand = 57, "RDRAND";
    Invpcid = 58, "INVPCID";
    Vmfunc = 59, "VMFUNC";
    Encls = 60, "ENCLS";
    Rdseed = 61, "RDSEED";
    PmlFull = 62, "page-modification log full";
    Xsaves = 63, "XSAVES";
    Xrstors = 64, "XRSTORS";
    Pconfig = 65, "PCONFIG";
    SppEvent = 66, "SPP-related event";
    Umwait = 67, "UMWAIT";
    Tpause = 68, "TPAUSE";
    Loadiwkey = 69, "LOADIWKEY";
    Enclv = 70, "ENCLV";
    EnqcmdPasidFailure = 72, "ENQCMD PASID translation failure";
    EnqcmdsPasidFailure = 73, "ENQCMDS PASID translation failure";
    BusLock = 74, "bus lock";
    InstructionTimeout = 75, "instruction timeout";
    Seamcall = 76, "SEAMCALL";
    Tdcall = 77, "TDCALL";
}

impl From<u16> for ExitReason {
    fn from(n: u16) -> Self {
        Self::from_raw(n)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "Unknown exit reason {n}"),
            r => write!(f, "{} ({})", r.name(), r.code()),
        }
    }
}

/// The exit-reason field (SDM 25.9.1): basic reason and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Bits 15:0.
    pub reason: ExitReason,
    /// Bit 31: the VM entry failed (reasons 33, 34, 41); guest state was
    /// not loaded, and host state was loaded as on a VM exit.
    pub entry_failure: bool,
    /// The raw field, for the flags not decoded here (bit 27 enclave mode,
    /// bit 28 pending MTF exit, bit 29 exit from VMX root operation).
    pub raw: u32,
}

impl ExitInfo {
    /// Decodes the exit-reason field.
    pub const fn from_raw(exit_reason_field: u32) -> Self {
        Self {
            reason: ExitReason::from_raw(exit_reason_field as u16),
            entry_failure: exit_reason_field & (1 << 31) != 0,
            raw: exit_reason_field,
        }
    }

    /// Reads and decodes [`Field::EXIT_REASON`].
    pub fn read(vmcs: &dyn Vmcs) -> Self {
        Self::from_raw(vmcs.read(Field::EXIT_REASON) as u32)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry_failure {
            write!(f, "VM-entry failure: {}", self.reason)
        } else {
            write!(f, "{}", self.reason)
        }
    }
}

/// An exit qualification the SDM does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QualificationError {
    /// Size-of-access field (bits 2:0) of an I/O exit is not 0, 1 or 3.
    #[error("I/O exit qualification {0:#x} has an undefined access size")]
    BadIoSize(u64),
}

/// Exit qualification of an I/O instruction exit (reason 30; SDM table
/// 28-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// IN/INS (true) or OUT/OUTS (false).
    pub input: bool,
    /// INS or OUTS.
    pub string: bool,
    /// REP prefix (string instructions only).
    pub rep: bool,
    /// The port was an immediate operand (otherwise DX).
    pub immediate: bool,
    /// Port number.
    pub port: u16,
}

impl IoQualification {
    /// Decodes the qualification.
    pub fn from_raw(q: u64) -> Result<Self, QualificationError> {
        let size = match q & 7 {
            0 => 1,
            1 => 2,
            3 => 4,
            _ => return Err(QualificationError::BadIoSize(q)),
        };
        Ok(Self {
            size,
            input: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        })
    }
}

impl TryFrom<u64> for IoQualification {
    type Error = QualificationError;

    fn try_from(q: u64) -> Result<Self, Self::Error> {
        Self::from_raw(q)
    }
}

/// What a control-register access exit did (bits 5:4 of the
/// qualification, SDM table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessKind {
    /// MOV to CR from `gpr`.
    MovToCr {
        /// Source register.
        gpr: Gpr,
    },
    /// MOV from CR to `gpr`.
    MovFromCr {
        /// Destination register.
        gpr: Gpr,
    },
    /// CLTS.
    Clts,
    /// LMSW.
    Lmsw {
        /// The 16-bit source operand.
        source_data: u16,
        /// The operand was in memory (its linear address is in
        /// [`Field::GUEST_LINEAR_ADDRESS`]), not a register.
        memory_operand: bool,
    },
}

/// Exit qualification of a control-register access (reason 28; SDM table
/// 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrAccess {
    /// Control register number (0, 3, 4 or 8; bits 3:0).
    pub cr: u8,
    /// Access type and operand.
    pub kind: CrAccessKind,
}

impl CrAccess {
    /// Decodes the qualification (every value is defined).
    pub const fn from_raw(q: u64) -> Self {
        let gpr = Gpr::from_field(q >> 8);
        let kind = match (q >> 4) & 3 {
            0 => CrAccessKind::MovToCr { gpr },
            1 => CrAccessKind::MovFromCr { gpr },
            2 => CrAccessKind::Clts,
            _ => CrAccessKind::Lmsw {
                source_data: (q >> 16) as u16,
                memory_operand: q & (1 << 6) != 0,
            },
        };
        Self {
            cr: (q & 0xf) as u8,
            kind,
        }
    }
}

impl From<u64> for CrAccess {
    fn from(q: u64) -> Self {
        Self::from_raw(q)
    }
}

/// Exit qualification of an EPT violation (reason 48; SDM table 28-7).
/// The guest-physical address is in [`Field::GUEST_PHYSICAL_ADDRESS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptViolation {
    /// The access was a data read (bit 0).
    pub read: bool,
    /// The access was a data write (bit 1).
    pub write: bool,
    /// The access was an instruction fetch (bit 2).
    pub fetch: bool,
    /// The translation allowed reads (bit 3; AND of the EPT entries' bit 0).
    pub readable: bool,
    /// The translation allowed writes (bit 4).
    pub writable: bool,
    /// The translation allowed (supervisor) execution (bit 5).
    pub executable: bool,
    /// The translation allowed user-mode execution (bit 6; only with
    /// mode-based execute control).
    pub user_executable: bool,
    /// [`Field::GUEST_LINEAR_ADDRESS`] is valid (bit 7).
    pub gla_valid: bool,
    /// With `gla_valid`: the access was to the translation of the linear
    /// address (true) rather than to a guest paging-structure entry during
    /// the walk (false) (bit 8).
    pub translated_access: bool,
    /// The violation happened during IRET and unblocked NMIs (bit 12);
    /// the VMM must re-block them before resuming.
    pub nmi_unblocking: bool,
    /// The access was a shadow-stack access (bit 13).
    pub shadow_stack: bool,
    /// The raw qualification.
    pub raw: u64,
}

impl EptViolation {
    /// Decodes the qualification.
    pub const fn from_raw(q: u64) -> Self {
        const fn bit_of(q: u64, n: u32) -> bool {
            q & (1 << n) != 0
        }
        Self {
            read: bit_of(q, 0),
            write: bit_of(q, 1),
            fetch: bit_of(q, 2),
            readable: bit_of(q, 3),
            writable: bit_of(q, 4),
            executable: bit_of(q, 5),
            user_executable: bit_of(q, 6),
            gla_valid: bit_of(q, 7),
            translated_access: bit_of(q, 8),
            nmi_unblocking: bit_of(q, 12),
            shadow_stack: bit_of(q, 13),
            raw: q,
        }
    }

    /// The translation allowed no access at all (bits 6:3 clear): in
    /// practice an EPT entry on the path is not present, i.e. the page is
    /// unmapped rather than mapped with fewer rights.
    pub const fn not_present(&self) -> bool {
        !self.readable && !self.writable && !self.executable && !self.user_executable
    }
}

impl From<u64> for EptViolation {
    fn from(q: u64) -> Self {
        Self::from_raw(q)
    }
}

bitflags! {
    /// Exit qualification of a debug exception (#DB intercepted via the
    /// exception bitmap; SDM table 28-1). The same bits form the guest
    /// pending-debug-exceptions field (25.4.2), plus bit 12 there.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DebugQualification: u64 {
        /// Breakpoint 0 condition met.
        const B0 = 1 << 0;
        /// Breakpoint 1 condition met.
        const B1 = 1 << 1;
        /// Breakpoint 2 condition met.
        const B2 = 1 << 2;
        /// Breakpoint 3 condition met.
        const B3 = 1 << 3;
        /// Pending debug exceptions only: an enabled breakpoint was met.
        const ENABLED_BREAKPOINT = 1 << 12;
        /// Debug-register access detected.
        const BD = 1 << 13;
        /// Single step (RFLAGS.TF).
        const BS = 1 << 14;
        /// Inside an RTM region.
        const RTM = 1 << 16;
    }
}

/// Interruption type (bits 10:8 of an interruption-information field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterruptionKind {
    /// 0: external interrupt.
    ExternalInterrupt = 0,
    /// 1: not used; VM entry rejects it.
    Reserved = 1,
    /// 2: non-maskable interrupt.
    Nmi = 2,
    /// 3: hardware exception (faults, traps and aborts other than INT3/INTO/INT1).
    HardwareException = 3,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt = 4,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException = 5,
    /// 6: software exception (INT3, INTO).
    SoftwareException = 6,
    /// 7: other event (pending MTF VM exit on injection).
    Other = 7,
}

impl InterruptionKind {
    const ALL: [Self; 8] = [
        Self::ExternalInterrupt,
        Self::Reserved,
        Self::Nmi,
        Self::HardwareException,
        Self::SoftwareInterrupt,
        Self::PrivilegedSoftwareException,
        Self::SoftwareException,
        Self::Other,
    ];

    /// The 3-bit type number.
    pub const fn code(self) -> u32 {
        self as u32
    }
}

/// An interruption-information field: the VM-entry interruption
/// information used to inject an event (SDM 25.8.3), or the VM-exit
/// interruption / IDT-vectoring information (25.9.2, 25.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptionInfo {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Type (bits 10:8).
    pub kind: InterruptionKind,
    /// An error code is delivered / was pushed (bit 11); the code is in
    /// the matching error-code field.
    pub error_code_valid: bool,
    /// Exit information only: the exit happened during IRET and unblocked
    /// NMIs (bit 12). Never encoded: reserved on VM entry.
    pub nmi_unblocking: bool,
    /// The field is valid (bit 31).
    pub valid: bool,
}

impl InterruptionInfo {
    /// A valid event to inject.
    pub const fn new(kind: InterruptionKind, vector: u8, error_code_valid: bool) -> Self {
        Self {
            vector,
            kind,
            error_code_valid,
            nmi_unblocking: false,
            valid: true,
        }
    }

    /// An external interrupt with `vector`, to inject.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::new(InterruptionKind::ExternalInterrupt, vector, false)
    }

    /// A hardware exception to inject. Pass `error_code` = true only for
    /// vectors that push one ([`exception_has_error_code`]) and only when
    /// the guest is in protected mode (CR0.PE = 1): VM entry fails
    /// otherwise (SDM 26.2.1.3).
    pub const fn hardware_exception(vector: u8, error_code: bool) -> Self {
        Self::new(InterruptionKind::HardwareException, vector, error_code)
    }

    /// Decodes a raw field. When `valid` is false the other fields are
    /// whatever the bits say and mean nothing.
    pub const fn decode(raw: u32) -> Self {
        Self {
            vector: raw as u8,
            kind: InterruptionKind::ALL[((raw >> 8) & 7) as usize],
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
            valid: raw & (1 << 31) != 0,
        }
    }

    /// Encodes for [`Field::ENTRY_INTERRUPTION_INFO`]; bits 30:12 are 0.
    pub const fn encode(self) -> u32 {
        (self.vector as u32)
            | (self.kind.code() << 8)
            | ((self.error_code_valid as u32) << 11)
            | ((self.valid as u32) << 31)
    }
}

/// Whether exception `vector` pushes an error code in protected mode
/// (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP; SDM Vol. 3A 6.13, 26.2.1.3).
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::tests::FakeVmcs;

    #[test]
    fn reasons_round_trip() {
        for n in 0..=200u16 {
            let r = ExitReason::from_raw(n);
            assert_eq!(r.code(), n);
        }
        assert_eq!(ExitReason::from_raw(10), ExitReason::Cpuid);
        assert_eq!(ExitReason::from_raw(12), ExitReason::Hlt);
        assert_eq!(ExitReason::from_raw(30), ExitReason::IoInstruction);
        assert_eq!(ExitReason::from_raw(37), ExitReason::MonitorTrapFlag);
        assert_eq!(ExitReason::from_raw(48), ExitReason::EptViolation);
        assert_eq!(ExitReason::from_raw(52), ExitReason::PreemptionTimer);
        assert_eq!(ExitReason::from_raw(62), ExitReason::PmlFull);
        assert_eq!(ExitReason::from_raw(64), ExitReason::Xrstors);
        // Gaps in appendix C stay unknown.
        assert_eq!(ExitReason::from_raw(35), ExitReason::Unknown(35));
        assert_eq!(ExitReason::from_raw(38), ExitReason::Unknown(38));
        assert_eq!(ExitReason::from_raw(42), ExitReason::Unknown(42));
        assert_eq!(ExitReason::from(1000), ExitReason::Unknown(1000));
    }

    #[test]
    fn reason_display() {
        assert_eq!(ExitReason::EptViolation.to_string(), "EPT violation (48)");
        assert_eq!(
            ExitReason::IoInstruction.to_string(),
            "I/O instruction (30)"
        );
        assert_eq!(
            ExitReason::Unknown(90).to_string(),
            "Unknown exit reason 90"
        );
        assert_eq!(ExitReason::Unknown(90).name(), "unknown");
    }

    #[test]
    fn exit_info() {
        let e = ExitInfo::from_raw(30);
        assert_eq!(e.reason, ExitReason::IoInstruction);
        assert!(!e.entry_failure);
        let e = ExitInfo::from_raw(0x8000_0021);
        assert_eq!(e.reason, ExitReason::InvalidGuestState);
        assert!(e.entry_failure);
        assert_eq!(
            e.to_string(),
            "VM-entry failure: VM-entry failure due to invalid guest state (33)"
        );
        let mut vmcs = FakeVmcs::default();
        vmcs.write(Field::EXIT_REASON, 52);
        assert_eq!(ExitInfo::read(&vmcs).reason, ExitReason::PreemptionTimer);
    }

    #[test]
    fn io_qualifications_seen_under_bochs() {
        // out dx, al with DX = 0x3f8 (COM1 data).
        let q = IoQualification::from_raw(0x03f8_0000).unwrap();
        assert_eq!(
            q,
            IoQualification {
                size: 1,
                input: false,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3f8
            }
        );
        // in al, dx with DX = 0x3fd (COM1 line status).
        let q = IoQualification::from_raw(0x03fd_0008).unwrap();
        assert_eq!((q.size, q.input, q.port), (1, true, 0x3fd));
        assert!(!q.string && !q.rep);
        // out dx, eax with DX = 0xf4 (isa-debug-exit style port).
        let q = IoQualification::try_from(0x00f4_0003).unwrap();
        assert_eq!((q.size, q.input, q.port), (4, false, 0xf4));
    }

    #[test]
    fn io_qualification_other_forms() {
        // rep outsb to 0x3f8 (string + rep), out 0x80, al (immediate).
        let q = IoQualification::from_raw(0x03f8_0030).unwrap();
        assert!(q.string && q.rep && !q.input);
        let q = IoQualification::from_raw(0x0080_0040).unwrap();
        assert!(q.immediate);
        assert_eq!(q.port, 0x80);
        let q = IoQualification::from_raw(0x0cfc_0009).unwrap();
        assert_eq!((q.size, q.input, q.port), (2, true, 0xcfc));
        assert_eq!(
            IoQualification::from_raw(0x03f8_0002),
            Err(QualificationError::BadIoSize(0x03f8_0002))
        );
        assert_eq!(
            QualificationError::BadIoSize(2).to_string(),
            "I/O exit qualification 0x2 has an undefined access size"
        );
    }

    #[test]
    fn cr_access() {
        // Values built from table 28-3.
        // mov cr3, rax
        assert_eq!(
            CrAccess::from_raw(0x3),
            CrAccess {
                cr: 3,
                kind: CrAccessKind::MovToCr { gpr: Gpr::Rax }
            }
        );
        // mov rbx, cr3
        assert_eq!(
            CrAccess::from_raw(0x313),
            CrAccess {
                cr: 3,
                kind: CrAccessKind::MovFromCr { gpr: Gpr::Rbx }
            }
        );
        // mov cr4, r12
        assert_eq!(
            CrAccess::from_raw(0xc04).kind,
            CrAccessKind::MovToCr { gpr: Gpr::R12 }
        );
        // mov cr0, rsp (register 4 is RSP, which lives in the VMCS).
        assert_eq!(
            CrAccess::from_raw(0x400).kind,
            CrAccessKind::MovToCr { gpr: Gpr::Rsp }
        );
        // clts
        assert_eq!(CrAccess::from(0x20).kind, CrAccessKind::Clts);
        // lmsw ax with AX = 1; lmsw [mem] with 0x11.
        assert_eq!(
            CrAccess::from_raw(0x0001_0030).kind,
            CrAccessKind::Lmsw {
                source_data: 1,
                memory_operand: false
            }
        );
        assert_eq!(
            CrAccess::from_raw(0x0011_0070).kind,
            CrAccessKind::Lmsw {
                source_data: 0x11,
                memory_operand: true
            }
        );
    }

    #[test]
    fn ept_violation_write_to_unmapped_page() {
        let v = EptViolation::from(0x182);
        assert!(v.write && !v.read && !v.fetch);
        assert!(!v.readable && !v.writable && !v.executable);
        assert!(v.gla_valid && v.translated_access);
        assert!(v.not_present());
        assert!(!v.nmi_unblocking);
        // Fetch from a readable, non-executable page, during a guest walk.
        let v = EptViolation::from_raw(0x8c);
        assert!(v.fetch && v.readable && !v.executable);
        assert!(v.gla_valid && !v.translated_access);
        assert!(!v.not_present());
    }

    #[test]
    fn interruption_info() {
        // #DB at a hardware breakpoint, seen under Bochs.
        let i = InterruptionInfo::decode(0x8000_0301);
        assert!(i.valid);
        assert_eq!(i.kind, InterruptionKind::HardwareException);
        assert_eq!(i.vector, 1);
        assert!(!i.error_code_valid);
        // #PF with error code.
        let i = InterruptionInfo::decode(0x8000_0b0e);
        assert_eq!(i, InterruptionInfo::hardware_exception(14, true));
        assert_eq!(i.encode(), 0x8000_0b0e);
        // Injection used at a breakpoint in Bochs: external interrupt 0x40.
        assert_eq!(
            InterruptionInfo::external_interrupt(0x40).encode(),
            0x8000_0040
        );
        // NMI, INT3, INT n.
        assert_eq!(
            InterruptionInfo::new(InterruptionKind::Nmi, 2, false).encode(),
            0x8000_0202
        );
        assert_eq!(
            InterruptionInfo::decode(0x8000_0603).kind,
            InterruptionKind::SoftwareException
        );
        assert_eq!(
            InterruptionInfo::decode(0x8000_0480).kind,
            InterruptionKind::SoftwareInterrupt
        );
        // Not valid; NMI unblocking never encoded.
        assert!(!InterruptionInfo::decode(0).valid);
        let i = InterruptionInfo::decode(0x8000_1202);
        assert!(i.nmi_unblocking);
        assert_eq!(i.encode(), 0x8000_0202);
        for raw in [0x8000_0100u32, 0x8000_0700, 0x8000_0500] {
            assert_eq!(InterruptionInfo::decode(raw).encode(), raw);
        }
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..32).filter(|v| exception_has_error_code(*v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21]);
    }

    #[test]
    fn debug_qualifications_seen_under_bochs() {
        assert_eq!(
            DebugQualification::from_bits_retain(0x1),
            DebugQualification::B0
        );
        assert_eq!(
            DebugQualification::from_bits_retain(0x4000),
            DebugQualification::BS
        );
        assert_eq!(
            DebugQualification::from_bits_retain(0x4001),
            DebugQualification::BS | DebugQualification::B0
        );
    }
}
