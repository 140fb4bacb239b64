//! A guest never sees what an earlier guest left in host memory: a filling
//! guest (`dirty` in mode 2) writes a tagged pattern over nearly all the
//! free memory of a host and is deleted; the next guest in those frames,
//! started there or arriving by live migration, scans all of its RAM but
//! its image for the tag (`dirty: scan: <n> stale words in <p> pages`,
//! printed at its start and on each `vm checksum`) and must find none.
//!
//! The frames are the same ones: guest RAM comes in aligned 2 MiB runs of
//! frames, and the filling guest is as big as the host allows (a guest one
//! run bigger is refused for lack of memory), so no free run was left
//! outside it: every run a later guest gets was the filling guest's. (The
//! free frames outside it are fragments, reported, never filled.)

mod common;

use hv_tests::{Link, Machine, secs};

/// 4 KiB frames in a 2 MiB run of guest RAM.
const RUN: u64 = 512;
/// Frames a VM holds besides its RAM: the EPT's PML4, PDPT and page
/// directory, and the VMCS (4 for up to 1 GiB of RAM, one more page
/// directory per further GiB); the first VM also takes the VMXON region.
const VM_OVERHEAD: u64 = 8;
/// Pages of its RAM the scanning guest does not scan: its image (the
/// `dirty` ELF is under 30 KiB, loaded at 1 MiB) and its own stack (its
/// live frames and two pages below, which hold values it computed itself,
/// the tag among them).
const IMAGE_PAGES: u64 = 16;

/// The free-frame count from `mem`, matching the line rather than the
/// prompt (guests may be printing).
fn free_frames(m: &mut Machine) -> u64 {
    m.send_line("mem");
    let f = m.expect_line(
        r"frames: usable (\d+) \(\d+ MiB\), used (\d+) \(\d+ MiB\), free (\d+) \(\d+ MiB\)",
        secs(30),
    );
    f.num(3)
}

/// Fills every free 2 MiB run of `m` with the tagged pattern through a
/// guest `fill`, then deletes it. Returns the frames that stayed free
/// outside it while it existed (fragments smaller than a run).
fn fill_and_delete(m: &mut Machine) -> u64 {
    let t = m.command_timeout();
    let free = free_frames(m);
    m.expect_prompt(t);
    // As many 2 MiB runs as there are free: from one more than the free
    // frames could hold down to the first size that fits. A VM one run
    // bigger did not fit, so no free run was left outside it.
    let mut mib = (free / RUN * 2 + 2).min(3072);
    let mut refused = 0;
    loop {
        let out = m.cmd(&format!("vm create fill mem={mib} image=dirty arg=2000000"));
        // (The first VM of a host also logs that VMX is on.)
        if out.lines().any(|l| l.starts_with("vm fill: created")) {
            break;
        }
        m.check(
            out.lines().any(|l| {
                l.starts_with(&format!(
                    "error: not enough memory for {mib} MiB of guest RAM"
                ))
            }) && mib > 16,
            || format!("creating the filling guest ({mib} MiB, {free} frames free): {out}"),
        );
        refused += 1;
        mib -= 2;
    }
    m.check(refused > 0, || {
        format!("a {mib} MiB guest fit in {free} free frames at the first try")
    });
    let outside = free_frames(m);
    m.expect_prompt(t);
    let frames = mib * 256;
    m.check(
        free - outside >= frames && free - outside <= frames + VM_OVERHEAD,
        || {
            format!(
                "a {mib} MiB guest took {} of {free} free frames: expected its {frames} \
                 frames of RAM and at most {VM_OVERHEAD} more",
                free - outside
            )
        },
    );
    m.send_line("vm start fill");
    let f = m.expect_line(r"\[fill\] dirty: filled (\d+) pages of (\d+)", secs(120));
    m.check(
        f.num(2) == frames && f.num(1) + IMAGE_PAGES + 32 >= frames,
        || format!("{mib} MiB guest: {}", f.text),
    );
    m.expect_line(r"vm fill: exited with code 0", secs(30));
    m.expect_prompt(t);
    m.cmd("vm delete fill");
    let after = free_frames(m);
    m.expect_prompt(t);
    // Deleting it frees its RAM and tables; only the VMXON region, taken
    // with the host's first VM, stays.
    m.check(
        after - outside >= frames && after - outside <= frames + VM_OVERHEAD && free - after <= 1,
        || {
            format!(
                "free frames: {free} before the filling guest, {outside} with it, {after} after"
            )
        },
    );
    println!(
        "filled {} of {frames} pages ({mib} MiB) with the tag; {outside} frames stayed free outside them",
        f.num(1)
    );
    outside
}

/// Waits for a `scan` line of guest `vm` and checks it found nothing in
/// (almost) all of its `mib` MiB.
fn no_stale_words(m: &mut Machine, vm: &str, mib: u64) {
    let s = m.expect_line(
        &format!(r"\[{vm}\] dirty: scan: (\d+) stale words in (\d+) pages"),
        secs(120),
    );
    let (stale, scanned, pages) = (s.num(1), s.num(2), mib * 256);
    m.check(stale == 0, || {
        format!("{vm} found memory of the deleted guest: {}", s.text)
    });
    m.check(scanned <= pages && scanned + IMAGE_PAGES >= pages, || {
        format!("{vm} scanned {scanned} pages of its {pages}: {}", s.text)
    });
}

#[test]
fn bochs_a_new_guest_never_sees_the_memory_of_a_deleted_one() {
    let mut m = Machine::bochs().start();
    m.boot_to_prompt();
    let outside = fill_and_delete(&mut m);

    // A guest of 16 MiB in the freed frames: it scans at its start...
    m.cmd("vm create s mem=16 image=dirty arg=100");
    let free = free_frames(&mut m);
    m.expect_prompt(m.command_timeout());
    m.send_line("vm start s");
    no_stale_words(&mut m, "s", 16);
    m.expect_line(r"\[s\] dirty: count 1 .*", secs(60));
    // ... and on request, after writes of its own.
    m.send_line("vm checksum s");
    let c = m.expect_line(
        r"\[s\] dirty: checksum [0-9a-f]+ expected [0-9a-f]+ (\w+) after (\d+) writes",
        secs(60),
    );
    m.check(c.get(1) == Some("ok") && c.num(2) > 0, || c.text.clone());
    no_stale_words(&mut m, "s", 16);
    println!(
        "the new guest's RAM came from a pool where {outside} frames were never filled; {free} frames free beside it"
    );
}

fn host(link: &Link, name: &str, ip: &str) -> Machine {
    common::linked_bochs(link, name, ip, |b| b)
}

#[test]
fn bochs_a_migrated_guest_never_sees_the_memory_of_a_deleted_one() {
    let link = Link::bochs();
    let mut a = host(&link, "srca", "10.0.0.1/24");
    let mut b = host(&link, "dstb", "10.0.0.2/24");
    b.cmd("migrate listen");
    let outside = fill_and_delete(&mut b);
    let free = free_frames(&mut b);
    b.expect_prompt(b.command_timeout());

    // The guest starts only now: the longer it runs, the more of its pages
    // hold data, and the Bochs link moves about 0.6 MiB/s.
    a.cmd("vm create d mem=16 image=dirty arg=100");
    a.send_line("vm start d");
    a.expect_line(r"\[d\] dirty: count 1 .*", secs(60));
    a.expect_prompt(a.command_timeout());

    a.send_line("migrate d 10.0.0.2");
    let done = a.expect_line(
        r"(migrate: d now runs on 10\.0\.0\.2: .*|error: migrate: .*)",
        secs(300),
    );
    a.check(done.text.starts_with("migrate: d now runs"), || {
        done.text.clone()
    });
    b.expect_line(r"migrate: d from [\d.:]+ now runs here.*", secs(60));
    // It took its RAM from the frames the filling guest had.
    let now = free_frames(&mut b);
    b.check(
        free - now >= 16 * 256 && free - now <= 16 * 256 + VM_OVERHEAD,
        || format!("free frames {free} before the guest arrived, {now} after"),
    );
    b.send_line("vm checksum d");
    let c = b.expect_line(
        r"\[d\] dirty: checksum [0-9a-f]+ expected [0-9a-f]+ (\w+) after (\d+) writes",
        secs(60),
    );
    // The scan line follows the checksum line either way; it names the
    // cause of a mismatch if leftovers are it.
    no_stale_words(&mut b, "d", 16);
    b.check(c.get(1) == Some("ok") && c.num(2) > 0, || c.text.clone());
    println!(
        "{}; the guest arrived in a pool where {outside} frames were never filled",
        done.text.trim()
    );
}
