//! The kernel's own GDT (with a TSS) and IDT.
//!
//! The firmware's GDT and IDT live in boot-services memory, which the frame
//! allocator hands out, so these are installed before anything else. The TSS
//! gives the double-fault, NMI and machine-check handlers their own stacks
//! (IST), so a kernel stack overflow is reported instead of triple-faulting;
//! a valid TR is also what the VMCS host state needs later (SDM Vol. 3C,
//! 26.2.3: the host TR selector must not be null).
//!
//! Exception entry stubs are naked functions (stable Rust has no
//! `extern "x86-interrupt"`): each pushes a dummy error code where the CPU
//! does not, then the vector, and jumps to one common stub that saves the
//! general registers and calls `trap` with a pointer to the [`TrapFrame`].

use core::arch::naked_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector the local APIC uses for spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut MCE_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();
static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Timer interrupts taken since boot.
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

fn stack_top(s: *mut Stack) -> VirtAddr {
    VirtAddr::from_ptr(s) + IST_STACK_SIZE as u64
}

/// Installs the GDT, TSS and IDT on this CPU.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut t = TaskStateSegment::new();
        t.interrupt_stack_table[0] = stack_top(&raw mut DOUBLE_FAULT_STACK);
        t.interrupt_stack_table[1] = stack_top(&raw mut NMI_STACK);
        t.interrupt_stack_table[2] = stack_top(&raw mut MCE_STACK);
        t
    });
    let gdt = GDT.call_once(|| {
        let mut g = GlobalDescriptorTable::new();
        let code = g.append(Descriptor::kernel_code_segment());
        let data = g.append(Descriptor::kernel_data_segment());
        let tss_sel = g.append(Descriptor::tss_segment(tss));
        (g, code, data, tss_sel)
    });
    gdt.0.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which
    // is 'static; the code segment is a 64-bit kernel code segment.
    unsafe {
        CS::set_reg(gdt.1);
        DS::set_reg(gdt.2);
        ES::set_reg(gdt.2);
        SS::set_reg(gdt.2);
        load_tss(gdt.3);
    }

    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        for (vector, stub) in EXCEPTION_STUBS.iter().enumerate() {
            let addr = VirtAddr::new(*stub as *const () as u64);
            // SAFETY: each stub is a naked entry routine that saves all state
            // and returns with IRETQ; the IST indexes name stacks set above.
            unsafe {
                let opts = idt_entry(&mut idt, vector as u8).set_handler_addr(addr);
                match vector {
                    2 => {
                        opts.set_stack_index(1);
                    }
                    8 => {
                        opts.set_stack_index(0);
                    }
                    18 => {
                        opts.set_stack_index(2);
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            idt[TIMER_VECTOR].set_handler_addr(VirtAddr::new(stub_timer as *const () as u64));
            idt[SPURIOUS_VECTOR].set_handler_addr(VirtAddr::new(stub_spurious as *const () as u64));
        }
        idt
    });
    idt.load();
}

/// The IDT entry of an exception vector (the `x86_64` crate types the
/// entries of vectors with an error code differently; the stubs do not care).
fn idt_entry(
    idt: &mut InterruptDescriptorTable,
    vector: u8,
) -> &mut x86_64::structures::idt::Entry<x86_64::structures::idt::HandlerFunc> {
    let p: *mut InterruptDescriptorTable = idt;
    // SAFETY: every IDT entry has the same 16-byte layout whatever handler
    // type the crate attaches to it (repr(C) Entry<F> with F only a
    // PhantomData marker); vector < 32 is inside the table.
    unsafe {
        &mut *(p as *mut x86_64::structures::idt::Entry<x86_64::structures::idt::HandlerFunc>)
            .add(usize::from(vector))
    }
}

/// Registers as saved by the common stub, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
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
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "NMI",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved (15)",
    "x87 floating point (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating point (#XM)",
    "virtualization (#VE)",
    "control protection (#CP)",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security (#SX)",
    "reserved (31)",
];

/// Called by the common stub for every vector.
extern "sysv64" fn trap(f: &mut TrapFrame) {
    match f.vector {
        v if v == u64::from(TIMER_VECTOR) => {
            TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
            crate::arch::apic::eoi();
        }
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v => fatal(v, f),
    }
}

fn fatal(vector: u64, f: &TrapFrame) -> ! {
    let mut w = crate::drivers::serial::emergency();
    let name = EXCEPTION_NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unexpected interrupt");
    let _ = writeln!(
        w,
        "\n!!! kernel exception: vector {vector} {name}, error code {:#x}",
        f.error_code
    );
    let _ = writeln!(
        w,
        "rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    );
    let _ = writeln!(
        w,
        "cr2 {:#018x} cr3 {:#018x}",
        crate::arch::cr2(),
        crate::arch::cr3()
    );
    let _ = writeln!(
        w,
        "rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        f.rax, f.rbx, f.rcx, f.rdx
    );
    let _ = writeln!(
        w,
        "rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        f.rsi, f.rdi, f.rbp, f.r8
    );
    let _ = writeln!(
        w,
        "r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        f.r9, f.r10, f.r11, f.r12
    );
    let _ = writeln!(
        w,
        "r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        f.r13, f.r14, f.r15
    );
    let _ = writeln!(w, "!!! system halted");
    crate::arch::halt_forever()
}

/// Saves the general registers, calls `trap`, restores, and returns.
/// On entry the stack holds (from the top) vector, error code and the CPU's
/// interrupt frame; the CPU aligned RSP to 16 before pushing that frame, and
/// 7 + 15 pushed quadwords keep it aligned for the call.
#[unsafe(naked)]
extern "sysv64" fn common_stub() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "cld",
        "call {trap}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "iretq",
        trap = sym trap,
    );
}

macro_rules! stub {
    ($name:ident, $vector:expr, error_code) => {
        #[unsafe(naked)]
        extern "sysv64" fn $name() {
            naked_asm!("push {v}", "jmp {common}", v = const $vector, common = sym common_stub);
        }
    };
    ($name:ident, $vector:expr) => {
        #[unsafe(naked)]
        extern "sysv64" fn $name() {
            naked_asm!("push 0", "push {v}", "jmp {common}", v = const $vector, common = sym common_stub);
        }
    };
}

stub!(stub0, 0);
stub!(stub1, 1);
stub!(stub2, 2);
stub!(stub3, 3);
stub!(stub4, 4);
stub!(stub5, 5);
stub!(stub6, 6);
stub!(stub7, 7);
stub!(stub8, 8, error_code);
stub!(stub9, 9);
stub!(stub10, 10, error_code);
stub!(stub11, 11, error_code);
stub!(stub12, 12, error_code);
stub!(stub13, 13, error_code);
stub!(stub14, 14, error_code);
stub!(stub15, 15);
stub!(stub16, 16);
stub!(stub17, 17, error_code);
stub!(stub18, 18);
stub!(stub19, 19);
stub!(stub20, 20);
stub!(stub21, 21, error_code);
stub!(stub22, 22);
stub!(stub23, 23);
stub!(stub24, 24);
stub!(stub25, 25);
stub!(stub26, 26);
stub!(stub27, 27);
stub!(stub28, 28);
stub!(stub29, 29, error_code);
stub!(stub30, 30, error_code);
stub!(stub31, 31);
stub!(stub_timer, 0x20);
stub!(stub_spurious, 0xff);

static EXCEPTION_STUBS: [extern "sysv64" fn(); 32] = [
    stub0, stub1, stub2, stub3, stub4, stub5, stub6, stub7, stub8, stub9, stub10, stub11, stub12,
    stub13, stub14, stub15, stub16, stub17, stub18, stub19, stub20, stub21, stub22, stub23, stub24,
    stub25, stub26, stub27, stub28, stub29, stub30, stub31,
];

/// Timer ticks so far.
pub fn timer_ticks() -> u64 {
    TIMER_TICKS.load(Ordering::Relaxed)
}

/// Host segment state the VMCS needs (SDM Vol. 3C 25.5: host-state area).
pub struct HostSelectors {
    pub code: u16,
    pub data: u16,
    pub tss: u16,
    pub tss_base: u64,
    pub gdt_base: u64,
    pub idt_base: u64,
}

/// The selectors and table bases installed by [`init`].
pub fn selectors() -> HostSelectors {
    let (code, data, tss) = GDT
        .get()
        .map(|g| (g.1.0, g.2.0, g.3.0))
        .unwrap_or((0, 0, 0));
    HostSelectors {
        code,
        data,
        tss,
        tss_base: TSS
            .get()
            .map(|t| t as *const TaskStateSegment as u64)
            .unwrap_or(0),
        // What the CPU has loaded, not a guess at the crate's struct layout.
        gdt_base: x86_64::instructions::tables::sgdt().base.as_u64(),
        idt_base: x86_64::instructions::tables::sidt().base.as_u64(),
    }
}
