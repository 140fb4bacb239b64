//! `dirty`: dirties memory at a known rate, keeping a running checksum of
//! everything it wrote, and answers the hypervisor's request port (0xF5).
//! Its argument is `mode × 1_000_000 + rate` (see `guests::dirty`):
//!
//! - mode 0 (`arg=<rate>`): writes `rate` pseudo-random pages a second
//!   across its RAM (one word each, at 100 timer ticks a second);
//! - mode 1 (`arg=1<rate, 6 digits>`, e.g. `1002000`): writes nothing until
//!   a request, then `rate` consecutive pages spread over the next 100 ticks,
//!   and prints `dirty: window <w> writes to <p> distinct pages` (so a test
//!   knows exactly which pages were dirtied between two looks);
//! - mode 2 (`arg=2000000`): fills every word of RAM it can reach (all but
//!   the page tables and GDT below 0x10000, its live stack and its image)
//!   with a tagged pattern, prints `dirty: filled <n> pages of <total>` and
//!   exits with code 0: the leftovers a later guest must never see.
//!
//! Modes 0 and 1 print `dirty: count <n> tsc <t> gap <g>` every 50 ticks (a
//! counter that must continue without a gap or repeat across a migration;
//! `g`: the longest stretch in TSC ticks between two of its wake-ups since
//! the previous line, so a pause shows as the guest saw it). Whenever the
//! request port changes they rescan their memory and print
//! `dirty: checksum <sum> expected <sum> ok|MISMATCH after <n> writes`.
//! At start and after each checksum line they print
//! `dirty: scan: <n> stale words in <p> pages`: words a filling guest wrote,
//! found anywhere in RAM but the image (which the hypervisor loads), i.e.
//! memory an earlier guest left behind (this guest never writes such words),
//! and `dirty: scan: first stale word <w> at <addr>` when there are any.
//! RAM must be zero at start (else `dirty: RAM was not zero at start`, exit
//! code 6). They run until stopped; exit with 6 if a rescan ever mismatches.
//!
//! It also boots directly under QEMU (`-kernel dirty -append <rate>`, see
//! the PVH entry in `rt`); with no hypervisor signature in CPUID it zeroes
//! its region itself instead of checking that it starts zeroed (and scans
//! no memory below its image, the firmware's), and it
//! empties its TLB (reloads CR3) after each wake-up and before each write:
//! under QEMU 7.2's TCG a guest that never changes CR3 loses writes across
//! a migration (measured: 9 pages differed between source and destination,
//! the tick counter's among them, so the `count` lines stopped for seconds
//! on the destination). TCG's cached translations let writes to a page
//! through without marking it dirty again after migration cleared its bit;
//! newer QEMU fixes the coherency of that bitmap.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "dirty is a guest program for the hv hypervisor (build it with --target x86_64-unknown-none)"
    );
}

#[cfg(target_os = "none")]
guests::entry!("dirty", main);

#[cfg(target_os = "none")]
fn main(boot: guests::Boot) -> ! {
    use guests::dirty::{
        Mode, Picker, WINDOW_TICKS, is_stale, parse_arg, stale_word, term, window_pages,
        writes_at_tick, zero_sum,
    };
    use guests::{arch, console, exit_code, hv, pic, rt, say};

    /// Where the image is loaded; below it lie the hypervisor's page
    /// tables and GDT (up to 0x10000) and the stack (0x10000-0x80000).
    const IMAGE_BASE: u64 = 0x10_0000;
    const STACK_BOTTOM: u64 = 0x1_0000;
    const STACK_TOP: u64 = 0x8_0000;

    let Some((mode, rate)) = parse_arg(boot.arg) else {
        say!("bad argument {} (mode 0-2 x 1000000 + rate)", boot.arg);
        console::exit(exit_code::DIRTY_FAILED);
    };
    let start = rt::image_end().next_multiple_of(4096);
    let end = boot.ram & !4095;
    if end <= start {
        say!("no RAM above the image");
        console::exit(exit_code::DIRTY_FAILED);
    }
    let pages = (end - start) / 4096;
    let word = |addr: u64| core::ptr::with_exposed_provenance_mut::<u64>(addr as usize);
    let (_, b, c, d) = arch::cpuid(hv::LEAF_SIGNATURE, 0);
    let under_qemu = hv::signature(b, c, d) != hv::SIGNATURE;

    if mode == Mode::Fill {
        // Everything reachable but the page tables and GDT, the live stack
        // (and two pages below it, for the frames of this loop) and the
        // image. Under QEMU only the region above the image: below it lie
        // the firmware's tables and the VGA window.
        let live = (arch::rsp() & !4095).saturating_sub(2 * 4096);
        let low: &[(u64, u64)] = if under_qemu {
            &[]
        } else {
            &[(STACK_BOTTOM, live), (STACK_TOP, IMAGE_BASE)]
        };
        let mut filled = 0u64;
        for &(from, to) in low.iter().chain(&[(start, end)]) {
            let mut a = from;
            while a < to {
                // SAFETY: [from, to) is guest RAM that no Rust object, page
                // table or live stack frame uses (see above); the guest
                // exits right after, so nothing reads it again.
                unsafe { core::ptr::write_volatile(word(a), stale_word(a)) };
                a += 8;
            }
            filled += to.saturating_sub(from) / 4096;
        }
        say!("filled {filled} pages of {}", boot.ram / 4096);
        console::exit(exit_code::OK);
    }

    // The checksum of [start, end), and the words a filling guest left
    // anywhere in RAM but the image.
    let scan = || {
        let low = if under_qemu { IMAGE_BASE } else { 0 };
        let mut stale = 0u64;
        let mut first = None;
        let mut sum = 0u64;
        let mut look = |a: u64, w: u64| {
            if is_stale(w) {
                stale += 1;
                first.get_or_insert((a, w));
            }
        };
        // This guest's own stack (its live frames and two pages below,
        // as the filling guest spares them too) holds values it computed
        // itself, the tag among them: it is not "RAM it has not written".
        let own_stack = ((arch::rsp() & !4095).saturating_sub(2 * 4096))..STACK_TOP;
        let mut skipped = 0;
        let mut a = low;
        while a < IMAGE_BASE {
            if own_stack.contains(&a) {
                skipped += 8;
                a += 8;
                continue;
            }
            // SAFETY: guest RAM below the image, mapped by the guest's page
            // tables; a plain load (address 0 included, hence not a Rust
            // pointer read).
            look(a, unsafe { arch::load_u64(a) });
            a += 8;
        }
        let mut a = start;
        while a < end {
            // SAFETY: [start, end) is guest RAM above the image and below
            // RDI: no Rust object, stack or page table lives there.
            let w = unsafe { core::ptr::read_volatile(word(a)) };
            sum = sum.wrapping_add(term(a, w));
            look(a, w);
            a += 8;
        }
        let scanned = (IMAGE_BASE - low - skipped + end - start) / 4096;
        (sum, stale, first, scanned)
    };
    let report = |stale: u64, first: Option<(u64, u64)>, scanned: u64| {
        say!("scan: {stale} stale words in {scanned} pages");
        if let Some((a, w)) = first {
            say!("scan: first stale word {w:#018x} at {a:#x}");
        }
    };
    // The hypervisor zeroed RAM; check it rather than assume. Without it
    // (booted by QEMU directly, through the PVH entry in `rt`) RAM holds
    // the firmware's leftovers: zero the region instead.
    if under_qemu {
        let mut a = start;
        while a < end {
            // SAFETY: as in scan; nothing else uses the region yet.
            unsafe { core::ptr::write_volatile(word(a), 0) };
            a += 8;
        }
    }
    let mut expected = zero_sum(start, end);
    let (sum, stale, first, scanned) = scan();
    report(stale, first, scanned);
    if sum != expected {
        say!("RAM was not zero at start");
        console::exit(exit_code::DIRTY_FAILED);
    }
    match mode {
        Mode::Windows => {
            say!("{pages} pages, {rate} pages/s for {WINDOW_TICKS} ticks after each request")
        }
        _ => say!("{pages} pages, {rate} pages/s"),
    }
    pic::start_timer(100);
    // SAFETY: rt::start installed the IDT; its timer vector counts ticks.
    unsafe { arch::sti() };

    let mut picker = Picker::new(arch::rdtsc(), pages);
    // SAFETY: reading the hypervisor's request port has no side effect.
    let mut last_request = unsafe { arch::inb(hv::REQUEST_PORT) };
    let mut tick = 0u64;
    let mut count = 0u64;
    let mut writes = 0u64;
    // Mode 1: ticks into the current window (none until a request), its
    // writes so far, and the next page it writes.
    let mut window_tick = WINDOW_TICKS;
    let mut window_writes = 0u64;
    let mut cursor = 0u64;
    // The longest time between two wake-ups since the last counter line:
    // a pause (a migration's switchover) shows up here as the guest saw it.
    let mut last_wake = arch::rdtsc();
    let mut gap = 0u64;
    loop {
        arch::hlt();
        let now = arch::rdtsc();
        gap = gap.max(now.saturating_sub(last_wake));
        last_wake = now;
        if under_qemu {
            arch::flush_tlb();
        }
        while tick < pic::ticks() {
            let (n, window_ends) = match mode {
                Mode::Windows if window_tick < WINDOW_TICKS => {
                    window_tick += 1;
                    (
                        writes_at_tick(rate, window_tick - 1),
                        window_tick == WINDOW_TICKS,
                    )
                }
                Mode::Windows | Mode::Fill => (0, false),
                Mode::Continuous => (writes_at_tick(rate, tick % 100), false),
            };
            for _ in 0..n {
                if under_qemu {
                    arch::flush_tlb();
                }
                let page = if mode == Mode::Windows {
                    cursor = (cursor + 1) % pages;
                    window_writes += 1;
                    cursor
                } else {
                    picker.next_page()
                };
                let addr = start + page * 4096 + (writes % 512) * 8;
                writes += 1;
                let new = writes ^ (tick << 32);
                // SAFETY: as in scan; this loop is the region's only writer.
                let old = unsafe { core::ptr::read_volatile(word(addr)) };
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(word(addr), new) };
                expected = expected
                    .wrapping_sub(term(addr, old))
                    .wrapping_add(term(addr, new));
            }
            if window_ends {
                say!(
                    "window {window_writes} writes to {} distinct pages",
                    window_pages(window_writes, pages)
                );
            }
            tick += 1;
            if tick.is_multiple_of(50) {
                count += 1;
                say!("count {count} tsc {} gap {gap}", arch::rdtsc());
                gap = 0;
            }
        }
        // SAFETY: as above.
        let request = unsafe { arch::inb(hv::REQUEST_PORT) };
        if request != last_request {
            last_request = request;
            let (got, stale, first, scanned) = scan();
            let ok = got == expected;
            say!(
                "checksum {got:016x} expected {expected:016x} {} after {writes} writes",
                if ok { "ok" } else { "MISMATCH" }
            );
            report(stale, first, scanned);
            if !ok {
                console::exit(exit_code::DIRTY_FAILED);
            }
            if mode == Mode::Windows {
                window_tick = 0;
                window_writes = 0;
            }
        }
    }
}
