//! COM1: the operator's console and the kernel log.
//!
//! One UART behind one lock. The log lines and the shell share it; exception
//! and panic reports use [`emergency`], which writes without taking the lock
//! (the interrupted code may hold it) so a crash report always gets out.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::Uart16550;
use uart_16550::backend::PioBackend;

const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Initialises COM1 at 115200 8N1. Output before this is dropped.
pub fn init() {
    // SAFETY: 0x3F8..0x3FF is COM1 on the PC platform and only this module
    // drives it (the firmware is gone).
    if let Ok(mut u) = unsafe { Uart16550::new_port(COM1) }
        && u.init(uart_16550::Config {
            baud_rate: uart_16550::BaudRate::Baud115200,
            ..uart_16550::Config::default()
        })
        .is_ok()
    {
        *PORT.lock() = Some(u);
    }
}

fn put(u: &mut Uart16550<PioBackend>, s: &[u8]) {
    for &b in s {
        if b == b'\n' {
            u.send_bytes_exact(b"\r");
        }
        u.send_bytes_exact(&[b]);
    }
}

/// Writes raw bytes (no newline translation), e.g. shell echo.
pub fn write_bytes(b: &[u8]) {
    if let Some(u) = PORT.lock().as_mut() {
        u.send_bytes_exact(b);
    }
}

/// Bytes typed while a command ran, kept for the shell (see
/// [`interrupt_pending`]).
static TYPE_AHEAD: Mutex<TypeAhead> = Mutex::new(TypeAhead {
    buf: [0; TYPE_AHEAD_LEN],
    start: 0,
    len: 0,
});

const TYPE_AHEAD_LEN: usize = 256;

struct TypeAhead {
    buf: [u8; TYPE_AHEAD_LEN],
    start: usize,
    len: usize,
}

impl TypeAhead {
    fn push(&mut self, b: u8) {
        if self.len < TYPE_AHEAD_LEN {
            self.buf[(self.start + self.len) % TYPE_AHEAD_LEN] = b;
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.start];
        self.start = (self.start + 1) % TYPE_AHEAD_LEN;
        self.len -= 1;
        Some(b)
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Reads one byte if one is waiting (typed-ahead bytes first).
pub fn try_read() -> Option<u8> {
    if let Some(b) = TYPE_AHEAD.lock().pop() {
        return Some(b);
    }
    PORT.lock().as_mut().and_then(|u| u.try_receive_byte().ok())
}

/// For a command that runs a while: true if the operator pressed Ctrl-C
/// (what was typed before it is dropped with it). Any other byte is kept
/// for the shell, so a line typed ahead is not lost.
pub fn interrupt_pending() -> bool {
    let mut port = PORT.lock();
    let Some(u) = port.as_mut() else {
        return false;
    };
    let mut ahead = TYPE_AHEAD.lock();
    while let Ok(b) = u.try_receive_byte() {
        if b == 0x03 {
            ahead.clear();
            return true;
        }
        ahead.push(b);
    }
    false
}

/// `core::fmt` sink for COM1 that turns `\n` into `\r\n`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(u) = PORT.lock().as_mut() {
            put(u, s.as_bytes());
        }
        Ok(())
    }
}

/// A writer that bypasses the lock, for exception and panic reports only.
pub struct Emergency;

impl Write for Emergency {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                raw_put(b'\r');
            }
            raw_put(b);
        }
        Ok(())
    }
}

fn raw_put(b: u8) {
    // SAFETY: COM1 ports; a crash report may interleave with an interrupted
    // write, which is acceptable for a dying kernel. LSR bit 5 = THR empty.
    unsafe {
        let mut spins = 0u32;
        while crate::arch::inb(COM1 + 5) & 0x20 == 0 && spins < 1_000_000 {
            spins += 1;
            crate::arch::pause();
        }
        crate::arch::outb(COM1, b);
    }
}

/// The lock-free writer for crash reports.
pub fn emergency() -> Emergency {
    Emergency
}

/// `print!` to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::drivers::serial::Console, $($arg)*);
    }};
}

/// `println!` to the console (`\r\n` line ends).
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::drivers::serial::Console, $($arg)*);
    }};
}

/// The `log` backend: `[    1.234] INFO  message`.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ms = crate::arch::time::uptime_ms();
        let mut c = Console;
        let _ = writeln!(
            c,
            "[{:5}.{:03}] {:<5} {}",
            ms / 1000,
            ms % 1000,
            r.level(),
            r.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the serial logger at `level`.
pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
