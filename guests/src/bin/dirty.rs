//! `dirty`: dirties `arg` pages a second across its RAM (one word each,
//! at 100 timer ticks a second), keeping a running checksum of everything
//! it wrote; prints `dirty: count <n> tsc <t> gap <g>` every 50 ticks (a
//! counter that must continue without a gap or repeat across a migration;
//! `g`: the longest stretch in TSC ticks between two of its wake-ups since
//! the previous line, so a pause shows as the guest saw it) and,
//! whenever the request port (0xF5) changes, rescans its memory and prints
//! `dirty: checksum <sum> expected <sum> ok|MISMATCH`. Runs until stopped;
//! exits with 6 if a rescan ever mismatches.
//!
//! It also boots directly under QEMU (`-kernel dirty -append <rate>`, see
//! the PVH entry in `rt`); with no hypervisor signature in CPUID it zeroes
//! its region itself instead of checking that it starts zeroed, and it
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
    use guests::dirty::{Picker, term, writes_at_tick, zero_sum};
    use guests::{arch, console, exit_code, hv, pic, rt, say};

    let start = rt::image_end().next_multiple_of(4096);
    let end = boot.ram & !4095;
    if end <= start {
        say!("no RAM above the image");
        console::exit(exit_code::DIRTY_FAILED);
    }
    let pages = (end - start) / 4096;
    let word = |addr: u64| core::ptr::with_exposed_provenance_mut::<u64>(addr as usize);
    let scan = || {
        let mut s = 0u64;
        let mut a = start;
        while a < end {
            // SAFETY: [start, end) is guest RAM above the image and below
            // RDI: no Rust object, stack or page table lives there.
            s = s.wrapping_add(term(a, unsafe { core::ptr::read_volatile(word(a)) }));
            a += 8;
        }
        s
    };
    // The hypervisor zeroed RAM; check it rather than assume. Without it
    // (booted by QEMU directly, through the PVH entry in `rt`) RAM holds
    // the firmware's leftovers: zero the region instead.
    let (_, b, c, d) = arch::cpuid(hv::LEAF_SIGNATURE, 0);
    let under_qemu = hv::signature(b, c, d) != hv::SIGNATURE;
    if under_qemu {
        let mut a = start;
        while a < end {
            // SAFETY: as in scan; nothing else uses the region yet.
            unsafe { core::ptr::write_volatile(word(a), 0) };
            a += 8;
        }
    }
    let mut expected = zero_sum(start, end);
    if scan() != expected {
        say!("RAM was not zero at start");
        console::exit(exit_code::DIRTY_FAILED);
    }
    let rate = boot.arg;
    say!("{pages} pages, {rate} pages/s");
    pic::start_timer(100);
    // SAFETY: rt::start installed the IDT; its timer vector counts ticks.
    unsafe { arch::sti() };

    let mut picker = Picker::new(arch::rdtsc(), pages);
    // SAFETY: reading the hypervisor's request port has no side effect.
    let mut last_request = unsafe { arch::inb(hv::REQUEST_PORT) };
    let mut tick = 0u64;
    let mut count = 0u64;
    let mut writes = 0u64;
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
            for _ in 0..writes_at_tick(rate, tick % 100) {
                if under_qemu {
                    arch::flush_tlb();
                }
                let page = picker.next_page();
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
            let got = scan();
            let ok = got == expected;
            say!(
                "checksum {got:016x} expected {expected:016x} {} after {writes} writes",
                if ok { "ok" } else { "MISMATCH" }
            );
            if !ok {
                console::exit(exit_code::DIRTY_FAILED);
            }
        }
    }
}
