//! The VMX instructions (SDM Vol. 3C chapter 31), each wrapped once, and
//! the world switch into and out of a guest.
//!
//! Every wrapper is an `unsafe fn`: VMX instructions change what the CPU
//! executes and which memory it owns, and they fault (#UD, #GP) outside
//! the state they expect. Each checks RFLAGS after the instruction (SDM
//! 31.2, "Conventions"): CF = 1 is VMfailInvalid, ZF = 1 is VMfailValid
//! with an error number in the current VMCS, both clear is success.
//!
//! # Calling sequence
//!
//! ```no_run
//! use vmx::insn::{self, vm_enter, vm_exit_rip, vmread, vmwrite};
//! use vmx::{ExitInfo, ExitReason, Field, GuestRegs, VmFail};
//!
//! /// `vmxon_pa`, `vmcs_pa`: 4 KiB-aligned frames holding the VMCS
//! /// revision id (IA32_VMX_BASIC bits 30:0) in their first 4 bytes.
//! unsafe fn run_guest(vmxon_pa: u64, vmcs_pa: u64) -> Result<(), VmFail> {
//!     // SAFETY (for this example): IA32_FEATURE_CONTROL is locked with
//!     // "VMX outside SMX" set, CR0/CR4 satisfy the fixed bits (CR4.VMXE
//!     // = 1), interrupts are off, both frames are owned by the VMM and
//!     // mapped nowhere else, and the elided setup below writes valid
//!     // controls, guest state and this CPU's host state.
//!     unsafe {
//!         insn::vmxon(vmxon_pa)?;
//!         insn::vmclear(vmcs_pa)?; // launch state "clear"
//!         insn::vmptrld(vmcs_pa)?; // now current on this CPU
//!         // ... controls (vmx::controls::negotiate), guest state, host
//!         // CR0/CR3/CR4, selectors, FS/GS/TR/GDTR/IDTR bases, EFER ...
//!         vmwrite(Field::HOST_RIP, vm_exit_rip())?; // once per VMCS
//!         let mut regs = GuestRegs::default();
//!         let mut launched = false;
//!         loop {
//!             // Writes HOST_RSP, loads `regs`, VMLAUNCH/VMRESUME; returns
//!             // at the next VM exit with the guest registers in `regs`.
//!             vm_enter(&mut regs, launched)?;
//!             let exit = ExitInfo::from_raw(vmread(Field::EXIT_REASON)? as u32);
//!             if exit.entry_failure {
//!                 // Invalid guest state or MSR loading: the launch state
//!                 // did not change and the guest never ran.
//!                 break;
//!             }
//!             launched = true;
//!             match exit.reason {
//!                 ExitReason::Hlt => break,
//!                 _ => {
//!                     // Handle, then skip the instruction if needed:
//!                     let len = vmread(Field::EXIT_INSTRUCTION_LENGTH)?;
//!                     let rip = vmread(Field::GUEST_RIP)?;
//!                     vmwrite(Field::GUEST_RIP, rip + len)?;
//!                 }
//!             }
//!         }
//!         insn::vmclear(vmcs_pa)?;
//!         insn::vmxoff()
//!     }
//! }
//! ```

use core::arch::{asm, naked_asm};
use core::mem::offset_of;

pub use crate::regs::GuestRegs;
pub use crate::vmcs::VmFail;
use crate::vmcs::{Field, VmInstructionError};

/// Maps the flags a VMX instruction left to its outcome.
///
/// # Safety
///
/// `cf` and `zf` are RFLAGS.CF and ZF right after a VMX instruction
/// executed in VMX root operation. ZF = 1 (VMfailValid) implies a current
/// VMCS, whose error field this reads.
unsafe fn outcome(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        // SAFETY: VMfailValid is only reported with a current VMCS (SDM
        // 31.2), so the VM-instruction error field is readable.
        Err(VmFail::Valid(unsafe { instruction_error() }))
    } else {
        Ok(())
    }
}

/// Reads the VM-instruction error field of the current VMCS;
/// `Unknown(0)` if even that VMREAD fails (0 is not an error number).
///
/// # Safety
///
/// VMX root operation with a current VMCS (any VMfailValid guarantees it).
unsafe fn instruction_error() -> VmInstructionError {
    let value: u64;
    let failed: u8;
    // SAFETY: the caller guarantees VMX root operation, so VMREAD cannot
    // raise #UD; it only reads the current VMCS into a register.
    unsafe {
        asm!(
            "vmread {value}, {field}",
            "setbe {failed}",
            field = in(reg) u64::from(Field::VM_INSTRUCTION_ERROR.0),
            value = out(reg) value,
            failed = out(reg_byte) failed,
            options(nostack),
        );
    }
    if failed != 0 {
        VmInstructionError::Unknown(0)
    } else {
        VmInstructionError::from_raw(value as u32)
    }
}

/// VMXON: enters VMX root operation (SDM 31.3, VMXON).
///
/// # Safety
///
/// CR4.VMXE = 1 (else #UD); CPL 0, IA32_FEATURE_CONTROL locked with VMX
/// outside SMX enabled, CR0 and CR4 within the IA32_VMX_CRx_FIXED bits
/// (else #GP). `pa` is the physical address of a 4 KiB-aligned VMXON
/// region of IA32_VMX_BASIC's size holding the VMCS revision id; from
/// now until VMXOFF the CPU owns that memory, so nothing may access it.
pub unsafe fn vmxon(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller meets VMXON's preconditions above; the operand is
    // a pointer to `pa` on this stack frame, live for the instruction.
    unsafe {
        asm!(
            "vmxon [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMXON; on VMfailValid the CPU was already
    // in VMX root operation with a current VMCS.
    unsafe { outcome(cf, zf) }
}

/// VMXOFF: leaves VMX operation (SDM 31.3, VMXOFF).
///
/// # Safety
///
/// VMX root operation at CPL 0 (else #UD/#GP). Every VMCS this CPU used
/// should be VMCLEARed first, or its cached state is lost; after this the
/// VMXON region and VMCS regions are ordinary memory again.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation at CPL 0; VMXOFF
    // touches no memory the program can see.
    unsafe {
        asm!(
            "vmxoff",
            "setc {cf}",
            "setz {zf}",
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMXOFF in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// VMCLEAR: writes the VMCS at `pa` back to memory, makes it not current
/// and sets its launch state to clear (SDM 31.3, VMCLEAR).
///
/// # Safety
///
/// VMX root operation at CPL 0. `pa` is the 4 KiB-aligned physical address
/// of a VMCS region owned by the VMM (not the VMXON region); the CPU writes
/// to it.
pub unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation per the caller; the operand points at
    // `pa` on this stack frame, and the VMCS region it names belongs to the
    // VMM, so the CPU's write-back races with nothing.
    unsafe {
        asm!(
            "vmclear [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMCLEAR in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// VMPTRLD: makes the VMCS at `pa` current on this CPU (SDM 31.3,
/// VMPTRLD).
///
/// # Safety
///
/// VMX root operation at CPL 0. `pa` is the 4 KiB-aligned physical address
/// of a VMCS region holding the revision id, owned by the VMM and not
/// current on any other CPU (VMCLEAR it there first).
pub unsafe fn vmptrld(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation per the caller; the operand points at
    // `pa` on this stack frame; the region is this CPU's alone.
    unsafe {
        asm!(
            "vmptrld [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMPTRLD in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// VMREAD: reads a field of the current VMCS, zero-extended (SDM 31.3,
/// VMREAD).
///
/// # Safety
///
/// VMX root operation at CPL 0 (else #UD/#GP).
pub unsafe fn vmread(field: Field) -> Result<u64, VmFail> {
    let value: u64;
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation per the caller; VMREAD with register
    // operands only reads the current VMCS.
    unsafe {
        asm!(
            "vmread {value}, {field}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(field.0),
            value = out(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMREAD in VMX root operation.
    unsafe { outcome(cf, zf) }.map(|()| value)
}

/// VMWRITE: writes a field of the current VMCS (SDM 31.3, VMWRITE).
///
/// # Safety
///
/// VMX root operation at CPL 0. The value must keep the VMM's invariants:
/// host-state fields describe this CPU's real host state, and addresses
/// (bitmaps, EPT pointer, MSR lists, PML) point at memory the VMM owns
/// for as long as the VMCS may be entered.
pub unsafe fn vmwrite(field: Field, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation per the caller; VMWRITE with register
    // operands only writes the current VMCS, and the caller vouches for
    // what the value makes the CPU do at the next entry or exit.
    unsafe {
        asm!(
            "vmwrite {field}, {value}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(field.0),
            value = in(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from VMWRITE in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// INVEPT type (SDM 31.3, INVEPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InveptKind {
    /// Mappings tagged with the given EPTP (needs
    /// `EptVpidCaps::INVEPT_SINGLE_CONTEXT`).
    SingleContext = 1,
    /// All EPT-derived mappings (needs `EptVpidCaps::INVEPT_ALL_CONTEXT`).
    AllContext = 2,
}

/// INVEPT: invalidates cached EPT translations (SDM 31.3, INVEPT; when it
/// is needed: 29.4.3.4).
///
/// # Safety
///
/// VMX root operation at CPL 0; the CPU supports INVEPT and `kind`
/// (IA32_VMX_EPT_VPID_CAP), else #UD or VMfail. Invalidation itself is
/// harmless; the caller is responsible for doing it when needed.
pub unsafe fn invept(kind: InveptKind, eptp: u64) -> Result<(), VmFail> {
    // INVEPT descriptor: EPTP, then 64 reserved bits that must be 0.
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation and support per the caller; the memory
    // operand is the 16-byte descriptor on this stack frame.
    unsafe {
        asm!(
            "invept {kind}, [{desc}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            desc = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from INVEPT in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// INVVPID type (SDM 31.3, INVVPID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InvvpidKind {
    /// One linear address of one VPID.
    IndividualAddress = 0,
    /// Everything tagged with one VPID.
    SingleContext = 1,
    /// Everything tagged with any VPID other than 0.
    AllContext = 2,
    /// One VPID, except global translations.
    SingleContextRetainingGlobals = 3,
}

/// INVVPID: invalidates cached linear translations tagged with VPIDs (SDM
/// 31.3, INVVPID). `addr` is used only by `IndividualAddress`.
///
/// # Safety
///
/// VMX root operation at CPL 0; the CPU supports INVVPID and `kind`
/// (IA32_VMX_EPT_VPID_CAP), else #UD or VMfail.
pub unsafe fn invvpid(kind: InvvpidKind, vpid: u16, addr: u64) -> Result<(), VmFail> {
    // INVVPID descriptor: VPID in bits 15:0 (63:16 reserved, 0), then the
    // linear address.
    let descriptor: [u64; 2] = [u64::from(vpid), addr];
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation and support per the caller; the memory
    // operand is the 16-byte descriptor on this stack frame.
    unsafe {
        asm!(
            "invvpid {kind}, [{desc}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            desc = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the flags come from INVVPID in VMX root operation.
    unsafe { outcome(cf, zf) }
}

/// The value to write to [`Field::HOST_RIP`]: where VM exits land (the
/// second half of [`vm_enter`]). Write it once per VMCS.
pub fn vm_exit_rip() -> u64 {
    vm_exit_landing as *const () as u64
}

/// Enters the guest of the current VMCS with VMLAUNCH (`launched` false)
/// or VMRESUME (`launched` true) and returns at its next VM exit, with the
/// guest's general-purpose registers and CR2 saved in `regs`.
///
/// `Ok(())` means a VM exit happened; read the exit reason. That includes
/// the VM-entry failures reported as exits (exit-reason bit 31: invalid
/// guest state, MSR loading, machine check), after which the launch state
/// is unchanged. `Err` means VMLAUNCH/VMRESUME (or the VMWRITE of
/// HOST_RSP) did not enter the guest: `Invalid` without a current VMCS,
/// `Valid(e)` with the reason, e.g. invalid control or host-state fields
/// (SDM 26.2) or a launch state that does not match `launched`.
///
/// On return RFLAGS is as a VM exit leaves it: all flags clear, so
/// **interrupts are disabled** (SDM 28.5.3); the caller re-enables them.
///
/// # Safety
///
/// - VMX root operation at CPL 0 with the VMCS to run current on this CPU,
///   and `launched` true only if that VMCS was launched since its last
///   VMCLEAR.
/// - Nothing makes another VMCS current on this CPU between the call and
///   the return (run with interrupts disabled or preemption off).
/// - The host-state area describes this CPU as it is during the call:
///   HOST_RIP = [`vm_exit_rip`], host CR0/CR3/CR4, segment selectors, TR
///   (non-zero), FS/GS/TR/GDTR/IDTR bases, SYSENTER MSRs and, when the
///   exit controls load them, EFER/PAT; in 64-bit mode ("host address-space
///   size" = 1). HOST_RSP is written here.
/// - The guest cannot reach memory the host relies on (EPT maps only guest
///   memory), and the host neither uses nor relies on x87/SSE/AVX state,
///   debug registers other than DR7, or MSRs the guest may write
///   (KERNEL_GS_BASE, STAR, LSTAR, ...): none of these are switched here.
pub unsafe fn vm_enter(regs: &mut GuestRegs, launched: bool) -> Result<(), VmFail> {
    // SAFETY: the caller's guarantees above are exactly vm_enter_raw's:
    // the VMCS is current and consistent with `launched`, and its host
    // state returns control to vm_exit_landing on this stack, which writes
    // `regs` (a live, exclusive reference) and returns here.
    let code = unsafe { vm_enter_raw(regs, u64::from(launched)) };
    match code {
        0 => Ok(()),
        1 => Err(VmFail::Invalid),
        // SAFETY: code 2 is VMfailValid of VMWRITE/VMLAUNCH/VMRESUME, so
        // the VMCS is still current and its error field readable.
        _ => Err(VmFail::Valid(unsafe { instruction_error() })),
    }
}

// The world switch. `vm_enter_raw` saves the host's sysv64 callee-saved
// registers and the `regs` pointer on the host stack, makes HOST_RSP point
// at them, loads the guest registers and enters the guest. A VM exit loads
// RSP = HOST_RSP and RIP = HOST_RIP = `vm_exit_landing`, which finds the
// pointer at [rsp], stores the guest registers, pops the host registers
// and returns 0 to `vm_enter_raw`'s caller as if `vm_enter_raw` returned.
//
// Host stack while the guest runs (grows down):
//
//   [HOST_RSP + 56]  return address into vm_enter
//   [HOST_RSP + 48]  rbp
//   [HOST_RSP + 40]  rbx
//   [HOST_RSP + 32]  r12
//   [HOST_RSP + 24]  r13
//   [HOST_RSP + 16]  r14
//   [HOST_RSP +  8]  r15
//   [HOST_RSP +  0]  regs: *mut GuestRegs    <- HOST_RSP
//
// If VMLAUNCH/VMRESUME (or the VMWRITE of HOST_RSP) fails, execution
// falls through with the same stack; the host registers are popped again
// and the function returns 1 (CF, VMfailInvalid) or 2 (ZF, VMfailValid).
// Guest values left in caller-saved registers are allowed by the ABI.
// RFLAGS.DF is 0 after a VM exit (all flags cleared), as the ABI wants.

/// Returns 0 after a VM exit, 1 on VMfailInvalid, 2 on VMfailValid.
///
/// # Safety
///
/// As [`vm_enter`]; `regs` is valid for reads and writes.
#[unsafe(naked)]
unsafe extern "sysv64" fn vm_enter_raw(regs: *mut GuestRegs, launched: u64) -> u64 {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        // CF or ZF: no current VMCS or the write failed; nothing loaded yet.
        "jbe 3f",
        "mov rax, [rdi + {cr2}]",
        "mov cr2, rax",
        // MOV to CR2 leaves the arithmetic flags undefined, so test
        // `launched` after it; the MOVs below preserve the flags.
        "test rsi, rsi",
        "mov rax, [rdi + {rax}]",
        "mov rbx, [rdi + {rbx}]",
        "mov rcx, [rdi + {rcx}]",
        "mov rdx, [rdi + {rdx}]",
        "mov rsi, [rdi + {rsi}]",
        "mov rbp, [rdi + {rbp}]",
        "mov r8, [rdi + {r8}]",
        "mov r9, [rdi + {r9}]",
        "mov r10, [rdi + {r10}]",
        "mov r11, [rdi + {r11}]",
        "mov r12, [rdi + {r12}]",
        "mov r13, [rdi + {r13}]",
        "mov r14, [rdi + {r14}]",
        "mov r15, [rdi + {r15}]",
        "mov rdi, [rdi + {rdi}]",
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        // Only reached when the entry instruction failed (a successful
        // entry continues in the guest and comes back at the landing).
        // JMP and MOV keep the failing instruction's CF/ZF.
        "3:",
        "mov eax, 1",
        "jc 4f",
        "mov eax, 2",
        "4:",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        host_rsp = const Field::HOST_RSP.0,
        cr2 = const offset_of!(GuestRegs, cr2),
        rax = const offset_of!(GuestRegs, rax),
        rbx = const offset_of!(GuestRegs, rbx),
        rcx = const offset_of!(GuestRegs, rcx),
        rdx = const offset_of!(GuestRegs, rdx),
        rsi = const offset_of!(GuestRegs, rsi),
        rdi = const offset_of!(GuestRegs, rdi),
        rbp = const offset_of!(GuestRegs, rbp),
        r8 = const offset_of!(GuestRegs, r8),
        r9 = const offset_of!(GuestRegs, r9),
        r10 = const offset_of!(GuestRegs, r10),
        r11 = const offset_of!(GuestRegs, r11),
        r12 = const offset_of!(GuestRegs, r12),
        r13 = const offset_of!(GuestRegs, r13),
        r14 = const offset_of!(GuestRegs, r14),
        r15 = const offset_of!(GuestRegs, r15),
    );
}

/// HOST_RIP: the VM exit lands here with RSP = HOST_RSP as written by
/// [`vm_enter_raw`]. Never called; only its address is used.
///
/// # Safety
///
/// Entered only by a VM exit from an entry made by `vm_enter_raw`.
#[unsafe(naked)]
unsafe extern "sysv64" fn vm_exit_landing() {
    naked_asm!(
        // Free one register to hold the `regs` pointer.
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rax + {rbx}], rbx",
        "mov [rax + {rcx}], rcx",
        "mov [rax + {rdx}], rdx",
        "mov [rax + {rsi}], rsi",
        "mov [rax + {rdi}], rdi",
        "mov [rax + {rbp}], rbp",
        "mov [rax + {r8}], r8",
        "mov [rax + {r9}], r9",
        "mov [rax + {r10}], r10",
        "mov [rax + {r11}], r11",
        "mov [rax + {r12}], r12",
        "mov [rax + {r13}], r13",
        "mov [rax + {r14}], r14",
        "mov [rax + {r15}], r15",
        "pop rbx",
        "mov [rax + {rax}], rbx",
        "mov rbx, cr2",
        "mov [rax + {cr2}], rbx",
        // Back to vm_enter_raw's frame: drop the pointer, restore the host.
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "xor eax, eax",
        "ret",
        cr2 = const offset_of!(GuestRegs, cr2),
        rax = const offset_of!(GuestRegs, rax),
        rbx = const offset_of!(GuestRegs, rbx),
        rcx = const offset_of!(GuestRegs, rcx),
        rdx = const offset_of!(GuestRegs, rdx),
        rsi = const offset_of!(GuestRegs, rsi),
        rdi = const offset_of!(GuestRegs, rdi),
        rbp = const offset_of!(GuestRegs, rbp),
        r8 = const offset_of!(GuestRegs, r8),
        r9 = const offset_of!(GuestRegs, r9),
        r10 = const offset_of!(GuestRegs, r10),
        r11 = const offset_of!(GuestRegs, r11),
        r12 = const offset_of!(GuestRegs, r12),
        r13 = const offset_of!(GuestRegs, r13),
        r14 = const offset_of!(GuestRegs, r14),
        r15 = const offset_of!(GuestRegs, r15),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_rip_is_the_landing() {
        let rip = vm_exit_rip();
        assert_ne!(rip, 0);
        assert_eq!(rip, vm_exit_landing as *const () as u64);
        assert_ne!(rip, vm_enter_raw as *const () as u64);
    }
}
