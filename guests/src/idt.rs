//! The guest's interrupt descriptor table: vectors 0-47 (the 32 exceptions
//! and the 16 PIC vectors at `pic::VECTOR_BASE`, 0x20).
//!
//! ```text
//!  vector v ──► stub v: push 0 (no CPU error code) ; push v ; jmp common
//!               common: push the 15 GPRs ; call dispatch(&mut Frame) ;
//!                       pop them ; drop vector + error code ; iretq
//!  dispatch:    a handler set with set_handler(v)  → it runs
//!               the timer vector                   → count the tick, EOI
//!               anything else                      → report, exit 0xE0 + v
//! ```
//!
//! A handler may change the [`Frame`] (the rogue guest moves `rip` past the
//! WRMSR that faulted); `iretq` resumes from it. A vector above 47 has no
//! gate, so it arrives as #GP with error code `v * 8 + 2` and is reported as
//! such. Gates are 64-bit interrupt gates (IF cleared on entry), IST 0 (no
//! TSS needed: the guest runs at CPL 0 on its one stack). Reference: Intel
//! SDM Vol. 3A, 6.14.1 (64-bit IDT gate descriptors) and 6.14.2 (stack frame),
//! revision 084.

/// Gates in the table: 32 exceptions and 16 PIC vectors.
pub const VECTORS: usize = 48;

/// The registers saved on an interrupt or exception, lowest address first:
/// what the common entry stub pushes, then what the CPU pushed. The layout
/// is an ABI with the stub in this module.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Pushed by the vector's stub.
    pub vector: u64,
    /// The CPU's error code, or 0 pushed by the stub for vectors without one.
    pub error_code: u64,
    /// From here on: pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The code segment selector of the hypervisor-built GDT.
pub const CODE_SELECTOR: u16 = 0x08;

/// A present, DPL 0, 64-bit interrupt gate to `handler`, as the two
/// quadwords of the descriptor (SDM Vol. 3A, figure 6-8).
pub const fn interrupt_gate(handler: u64, selector: u16) -> [u64; 2] {
    const PRESENT_INTERRUPT_GATE: u64 = 0x8e; // P=1, DPL=0, type 0xE
    let low = (handler & 0xffff)
        | ((selector as u64) << 16)
        | (PRESENT_INTERRUPT_GATE << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Whether the CPU pushes an error code for exception `vector` (SDM Vol. 3A,
/// table 6-1).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The mnemonic of an exception vector, or `"interrupt"` from 32 up.
pub const fn vector_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        9 | 15 | 22..=27 | 31 => "reserved exception",
        32.. => "interrupt",
    }
}

#[cfg(target_os = "none")]
pub use runtime::*;

#[cfg(target_os = "none")]
mod runtime {
    use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

    use super::{CODE_SELECTOR, Frame, VECTORS, interrupt_gate, vector_name};
    use crate::{arch, console, exit_code, pic, say};

    /// A handler for one vector. It runs with interrupts off; a PIC vector's
    /// handler must send the EOI itself ([`pic::eoi`]).
    pub type Handler = fn(&mut Frame);

    /// The table the CPU reads, two quadwords per gate. Atomics make it a
    /// plain `static` the code can fill without `unsafe`; the CPU reads it
    /// as the ordinary memory it is.
    static IDT: [AtomicU64; 2 * VECTORS] = [const { AtomicU64::new(0) }; 2 * VECTORS];

    /// Handlers set with [`set_handler`]: a `Handler` cast to a pointer, or
    /// null for the default.
    static HANDLERS: [AtomicPtr<()>; VECTORS] =
        [const { AtomicPtr::new(core::ptr::null_mut()) }; VECTORS];

    /// Vector `v`'s entry: a zero error code if the CPU pushes none (per
    /// [`has_error_code`](super::has_error_code), so frames all look alike),
    /// then the vector, then the common path. Each is its own naked function.
    macro_rules! stub {
        ($v:literal) => {{
            #[unsafe(naked)]
            extern "sysv64" fn stub() {
                core::arch::naked_asm!(
                    ".if {cpu_pushes_error_code} == 0",
                    "push 0",
                    ".endif",
                    "push {vector}",
                    "jmp {common}",
                    cpu_pushes_error_code = const super::has_error_code($v) as u8,
                    vector = const $v,
                    common = sym common_entry,
                )
            }
            stub as extern "sysv64" fn()
        }};
    }

    /// The stubs, indexed by vector.
    #[rustfmt::skip]
    static STUBS: [extern "sysv64" fn(); VECTORS] = [
        stub!(0), stub!(1), stub!(2), stub!(3), stub!(4), stub!(5), stub!(6), stub!(7),
        stub!(8), stub!(9), stub!(10), stub!(11), stub!(12), stub!(13), stub!(14), stub!(15),
        stub!(16), stub!(17), stub!(18), stub!(19), stub!(20), stub!(21), stub!(22), stub!(23),
        stub!(24), stub!(25), stub!(26), stub!(27), stub!(28), stub!(29), stub!(30), stub!(31),
        stub!(32), stub!(33), stub!(34), stub!(35), stub!(36), stub!(37), stub!(38), stub!(39),
        stub!(40), stub!(41), stub!(42), stub!(43), stub!(44), stub!(45), stub!(46), stub!(47),
    ];

    /// Saves the general registers below the stub's vector and error code,
    /// calls [`dispatch`] with a pointer to the [`Frame`] they make, restores
    /// them and returns from the interrupt. The stack is realigned to 16
    /// bytes for the call (the System V ABI's requirement); RBX, saved in
    /// the frame and callee-saved, keeps the frame pointer across it. CLD:
    /// the ABI wants DF clear and interrupted code may have set it.
    #[unsafe(naked)]
    extern "sysv64" fn common_entry() {
        core::arch::naked_asm!(
            "push rax",
            "push rbx",
            "push rcx",
            "push rdx",
            "push rsi",
            "push rdi",
            "push rbp",
            "push r8",
            "push r9",
            "push r10",
            "push r11",
            "push r12",
            "push r13",
            "push r14",
            "push r15",
            "cld",
            "mov rdi, rsp",
            "mov rbx, rsp",
            "and rsp, -16",
            "call {dispatch}",
            "mov rsp, rbx",
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rbp",
            "pop rdi",
            "pop rsi",
            "pop rdx",
            "pop rcx",
            "pop rbx",
            "pop rax",
            "add rsp, 16",
            "iretq",
            dispatch = sym dispatch,
        )
    }

    extern "sysv64" fn dispatch(frame: *mut Frame) {
        // SAFETY: `common_entry` passes the frame it just pushed on this
        // stack; nothing else refers to it until it is popped after we return.
        let frame = unsafe { &mut *frame };
        let v = frame.vector as usize;
        let raw = HANDLERS
            .get(v)
            .map_or(core::ptr::null_mut(), |h| h.load(Ordering::Relaxed));
        if !raw.is_null() {
            // SAFETY: set_handler stores only `Handler` function pointers
            // cast to `*mut ()`; this casts one back to the same type.
            let handler = unsafe { core::mem::transmute::<*mut (), Handler>(raw) };
            handler(frame);
        } else if v == usize::from(pic::TIMER_VECTOR) {
            pic::on_timer();
        } else {
            report_and_exit(frame);
        }
    }

    /// Runs `handler` for `vector` instead of the default (the timer count,
    /// or report-and-exit).
    ///
    /// # Panics
    /// If `vector` has no gate (47 is the last).
    pub fn set_handler(vector: u8, handler: Handler) {
        assert!(usize::from(vector) < VECTORS, "vector {vector} has no gate");
        HANDLERS[usize::from(vector)].store(handler as *mut (), Ordering::Relaxed);
    }

    /// Prints what arrived, where, and the registers that locate it, then
    /// exits with [`exit_code::exception`].
    pub fn report_and_exit(frame: &Frame) -> ! {
        let v = frame.vector as u8;
        say!(
            "unexpected {} (vector {v}) error code {:#x} at rip {:#x} rsp {:#x} rflags {:#x} cr2 {:#x}",
            vector_name(v),
            frame.error_code,
            frame.rip,
            frame.rsp,
            frame.rflags,
            arch::cr2()
        );
        say!(
            "rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x}",
            frame.rax,
            frame.rbx,
            frame.rcx,
            frame.rdx,
            frame.rsi,
            frame.rdi
        );
        console::exit(exit_code::exception(v))
    }

    /// Fills the table and loads it. Interrupts stay as they are (off at
    /// entry, see the crate docs).
    pub fn install() {
        for (v, stub) in STUBS.iter().enumerate() {
            let [low, high] = interrupt_gate(*stub as usize as u64, CODE_SELECTOR);
            IDT[2 * v].store(low, Ordering::Relaxed);
            IDT[2 * v + 1].store(high, Ordering::Relaxed);
        }
        let limit = (core::mem::size_of_val(&IDT) - 1) as u16;
        // SAFETY: IDT is a static of VECTORS valid interrupt gates, each to
        // a stub of this module; it lives for the whole program.
        unsafe { arch::lidt(IDT.as_ptr() as u64, limit) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_the_push_order() {
        // 15 GPRs pushed by the stub, then vector, error code, then the
        // CPU's five quadwords.
        assert_eq!(core::mem::size_of::<Frame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(Frame, r15), 0);
        assert_eq!(core::mem::offset_of!(Frame, rax), 14 * 8);
        assert_eq!(core::mem::offset_of!(Frame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(Frame, error_code), 16 * 8);
        assert_eq!(core::mem::offset_of!(Frame, rip), 17 * 8);
        assert_eq!(core::mem::offset_of!(Frame, ss), 21 * 8);
    }

    #[test]
    fn gate_encodes_offset_selector_and_type() {
        // Handler 0x0000_1234_0010_5678: offset 15:0 in bits 0-15, the
        // selector in 16-31, 0x8E in 40-47, offset 31:16 in 48-63, offset
        // 63:32 in the second quadword.
        let [low, high] = interrupt_gate(0x0000_1234_0010_5678, 0x08);
        assert_eq!(low, 0x0010_8e00_0008_5678);
        assert_eq!(high, 0x1234);
    }

    #[test]
    fn error_codes_per_the_sdm() {
        let with: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for v in 0..=255u8 {
            assert_eq!(has_error_code(v), with.contains(&v), "vector {v}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(vector_name(13), "#GP");
        assert_eq!(vector_name(14), "#PF");
        assert_eq!(vector_name(6), "#UD");
        assert_eq!(vector_name(15), "reserved exception");
        assert_eq!(vector_name(0x20), "interrupt");
    }
}
