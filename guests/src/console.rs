//! Guest output on COM1 and the exit device.
//!
//! Every line goes out as `<guest name>: <text>\n` (the name is set once by
//! [`crate::rt::start`]), so the host console shows `[<vm>] <guest>: <text>`
//! and tests can wait for a line without caring which guest printed what.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::arch;

/// COM1's transmit holding register.
const COM1: u16 = 0x3f8;
/// COM1's line status register.
const COM1_LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 0x20;
/// LSR polls per byte before writing anyway: the hypervisor's UART is
/// always empty, so one poll is the norm; a UART that never reports empty
/// must not hang the guest.
const LSR_POLLS: u32 = 1000;
/// The exit device: a 32-bit OUT of the exit code stops the VM.
const EXIT_PORT: u16 = 0xf4;

/// Longest guest name kept for the line prefix.
const NAME_MAX: usize = 16;
/// The guest's name, copied byte by byte: atomics keep this `static` free of
/// `unsafe` and readable from an exception handler at any time.
static NAME: [AtomicU8; NAME_MAX] = [const { AtomicU8::new(0) }; NAME_MAX];
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

/// Sets the prefix of every line (truncated to 16 bytes).
pub fn set_name(name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(NAME_MAX)];
    for (slot, &b) in NAME.iter().zip(bytes) {
        slot.store(b, Ordering::Relaxed);
    }
    NAME_LEN.store(bytes.len(), Ordering::Relaxed);
}

/// COM1 as a `fmt::Write` sink.
struct Com1;

impl Com1 {
    fn put(&mut self, b: u8) {
        for _ in 0..LSR_POLLS {
            // SAFETY: COM1 belongs to this guest; reading the LSR has no side
            // effect on transmission.
            if unsafe { arch::inb(COM1_LSR) } & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        // SAFETY: COM1 belongs to this guest; a THR write sends one byte.
        unsafe { arch::outb(COM1, b) };
    }
}

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}

/// Writes one line: the guest name, `": "`, `args`, `"\n"`. Used through
/// [`say!`](crate::say).
pub fn say(args: fmt::Arguments<'_>) {
    let mut out = Com1;
    let len = NAME_LEN.load(Ordering::Relaxed);
    for slot in &NAME[..len] {
        out.put(slot.load(Ordering::Relaxed));
    }
    // Com1 never fails; a formatting error of `args` just ends the line early.
    let _ = out.write_str(": ");
    let _ = out.write_fmt(args);
    out.put(b'\n');
}

/// Prints one line on COM1 as `<guest name>: <formatted text>\n`.
///
/// `say!("ram {} MiB", mib)` in the `hello` guest prints `hello: ram 16 MiB`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say(core::format_args!($($arg)*))
    };
}

/// Stops the VM with `code` (0 is success; see [`crate::exit_code`]).
pub fn exit(code: u32) -> ! {
    // SAFETY: the exit port is the hypervisor's exit device; writing it ends
    // this VM, which is what the caller asks for.
    unsafe { arch::outl(EXIT_PORT, code) };
    // Only reached if there is no exit device: halting with interrupts off
    // makes the hypervisor stop the VM (and say so) instead.
    loop {
        arch::cli();
        arch::hlt();
    }
}
