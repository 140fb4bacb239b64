//! Guests under VT-x with EPT, in Bochs (the only emulator here with VMX).
//!
//! Each test boots one Bochs and runs several guests in it, so the suite
//! pays for few firmware boots. Guest output reaches the console as
//! `[<vm>] <line>`; the hypervisor's own verdicts are `vm <name>: ...` lines.

mod common;

use common::expect_single_line;
use hv_tests::{Machine, secs};

/// 4 KiB frames per MiB.
const FRAMES_PER_MIB: u64 = 256;
/// Frames a VM holds besides its RAM: its EPT's PML4, PDPT and page
/// directory and its VMCS, 4 for up to 1 GiB of RAM (one more page
/// directory per further GiB); room is left for a few more.
const VM_OVERHEAD: u64 = 8;

/// Free frames, from `mem` (whose numbers `common::mem` checks).
fn free_frames(m: &mut Machine) -> u64 {
    common::mem(m).0.2
}

/// Deletes `name` (`mib` MiB of RAM as the VM holds it) and checks, from
/// `mem`, that the free frames rose by its RAM and at most its few
/// frames of tables.
fn delete_frees_its_ram(m: &mut Machine, name: &str, mib: u64) {
    let before = free_frames(m);
    expect_single_line(
        m,
        &format!("vm delete {name}"),
        &format!("vm {name}: deleted"),
    );
    let after = free_frames(m);
    let ram = mib * FRAMES_PER_MIB;
    m.check(
        after >= before + ram && after <= before + ram + VM_OVERHEAD,
        || {
            format!(
                "deleting {name} ({mib} MiB = {ram} frames) took free frames from {before} \
                 to {after}: expected a rise of {ram} to {}",
                ram + VM_OVERHEAD
            )
        },
    );
}

fn bochs(model: Option<&str>) -> Machine {
    let mut b = Machine::bochs();
    if let Some(model) = model {
        b = b.bochs_model(model);
    }
    let mut m = b.start();
    m.boot_to_prompt();
    m
}

/// Creates and starts `name`, then waits for its exit line.
fn run_to_exit(m: &mut Machine, name: &str, args: &str) -> u32 {
    expect_single_line(
        m,
        &format!("vm create {name} {args}"),
        &format!("vm {name}: created ({})", created(args)),
    );
    m.send_line(&format!("vm start {name}"));
    m.expect(&format!(r"vm {name}: started\r?\n"), m.command_timeout());
    let f = m.expect(
        &format!(r"vm {name}: exited with code (\d+)\r?\n"),
        secs(120),
    );
    // The shell prints its prompt again after output that came on its own.
    m.expect_prompt(m.command_timeout());
    f.num(1) as u32
}

/// What `vm create` echoes: "16 MiB, image hello".
fn created(args: &str) -> String {
    let get = |k: &str| {
        args.split_whitespace()
            .find_map(|a| a.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    format!("{} MiB, image {}", get("mem"), get("image"))
}

#[test]
fn bochs_hello_guest_and_vm_errors() {
    let mut m = bochs(None);
    let t = m.command_timeout();

    let free = free_frames(&mut m);
    m.send_line("vm create h1 mem=16 image=hello");
    m.expect(r"vm h1: created \(16 MiB, image hello\)\r?\n", t);
    m.expect_prompt(t);
    // Its RAM is reserved at once (and, first VM of the host, the VMXON
    // region with it).
    let with_h1 = free_frames(&mut m);
    m.check(
        free - with_h1 >= 16 * FRAMES_PER_MIB
            && free - with_h1 <= 16 * FRAMES_PER_MIB + VM_OVERHEAD,
        || format!("free frames {free} before creating a 16 MiB VM, {with_h1} after"),
    );
    m.send_line("vm start h1");
    m.expect(r"\[h1\] hello: hello from a guest\r?\n", secs(60));
    m.expect(r"\[h1\] hello: hypervisor signature ok\r?\n", secs(30));
    m.expect(r"\[h1\] hello: ram 16 MiB, arg 0\r?\n", secs(30));
    // The same UART through MMIO: EPT violation, decoded MOV, device model.
    m.expect(r"\[h1\] hello: via mmio, lsr 0x60\r?\n", secs(30));
    m.expect(r"vm h1: exited with code 0\r?\n", secs(30));
    m.expect_prompt(t);

    let list = m.cmd("vm list");
    m.check(
        list.lines().any(|l| {
            l.starts_with("h1 ")
                && l.contains("stopped")
                && l.contains("16 MiB")
                && l.contains("code 0")
        }),
        || format!("`vm list`:\n{list}"),
    );
    let stats = m.cmd("vm stats h1");
    m.check(stats.to_lowercase().contains("cpuid"), || {
        format!("`vm stats h1` shows no CPUID exits:\n{stats}")
    });
    m.check(stats.contains("console bytes"), || {
        format!("`vm stats h1`:\n{stats}")
    });

    // Error paths: each one line, and the host goes on.
    let dup = m.cmd("vm create h1 mem=16 image=hello");
    m.check(dup == "error: a VM named 'h1' already exists", || {
        format!("duplicate: {dup:?}")
    });
    let missing = m.cmd("vm create x1 mem=16 image=nosuch");
    m.check(
        missing.starts_with("error: no image 'nosuch' (available: ") && missing.contains("hello"),
        || format!("missing image: {missing:?}"),
    );
    let small = m.cmd("vm create x1 mem=1 image=hello");
    m.check(small.starts_with("error: bad size 'mem=1'"), || {
        format!("bad size: {small:?}")
    });
    let huge = m.cmd("vm create x1 mem=3072 image=hello");
    m.check(
        huge.starts_with("error: not enough memory for 3072 MiB of guest RAM"),
        || format!("too much memory: {huge:?}"),
    );
    let unknown = m.cmd("vm start nosuch");
    m.check(unknown.starts_with("error: no VM named 'nosuch'"), || {
        format!("unknown VM: {unknown:?}")
    });
    let not_running = m.cmd("vm stop h1");
    m.check(
        not_running.starts_with("error: VM 'h1' is not running"),
        || format!("stop: {not_running:?}"),
    );

    // A VM can be run again, and deleted, which frees its RAM; the failed
    // creates above left nothing allocated.
    m.send_line("vm start h1");
    m.expect(r"vm h1: exited with code 0\r?\n", secs(60));
    m.expect_prompt(t);
    let now = free_frames(&mut m);
    m.check(now == with_h1, || {
        format!("free frames {with_h1} after creating h1, {now} after the failed creates")
    });
    delete_frees_its_ram(&mut m, "h1", 16);
    // What create took, delete gave back: all but the VMXON region, which
    // stays while VMX is on.
    let now = free_frames(&mut m);
    m.check(free - now <= 1, || {
        format!("free frames {free} before h1 was created, {now} after it was deleted")
    });
    // RAM comes in 2 MiB runs: 5 MiB are 6.
    m.cmd("vm create odd mem=5 image=hello");
    let list = m.cmd("vm list");
    m.check(
        list.lines()
            .any(|l| l.starts_with("odd ") && l.contains(" 6 MiB ")),
        || format!("`vm list`:\n{list}"),
    );
    delete_frees_its_ram(&mut m, "odd", 6);
    expect_single_line(&mut m, "vm list", "no VMs (create one with 'vm create')");
}

#[test]
fn bochs_rogue_guests_do_not_take_the_host_down() {
    let mut m = bochs(None);
    let t = m.command_timeout();

    // A forbidden MSR write gets #GP, then memory outside RAM stops it.
    m.send_line("vm create r0 mem=16 image=rogue");
    m.expect_prompt(t);
    m.send_line("vm start r0");
    m.expect(r"\[r0\] rogue: #GP as expected\r?\n", secs(60));
    m.expect(r"vm r0: stopped: read of guest-physical 0xc0000000 outside its 16 MiB of RAM at rip 0x[0-9a-f]+\r?\n", secs(30));
    m.expect_prompt(t);

    // A triple fault marks it crashed, with its registers.
    m.send_line("vm create r1 mem=16 image=rogue arg=1");
    m.expect_prompt(t);
    m.send_line("vm start r1");
    m.expect(r"\[r1\] rogue: triple fault\r?\n", secs(60));
    m.expect(
        r"vm r1: crashed: triple fault at rip 0x[0-9a-f]+ rsp 0x[0-9a-f]+",
        secs(30),
    );
    m.expect_prompt(t);

    let list = m.cmd("vm list");
    m.check(
        list.lines()
            .any(|l| l.starts_with("r0 ") && l.contains("faulted"))
            && list
                .lines()
                .any(|l| l.starts_with("r1 ") && l.contains("crashed")),
        || format!("`vm list`:\n{list}"),
    );

    // The host carries on: another guest runs to completion.
    let code = run_to_exit(&mut m, "h2", "mem=8 image=hello");
    m.check(code == 0, || {
        format!("hello after the rogues exited with {code}")
    });
}

#[test]
fn bochs_two_guests_share_the_cpu() {
    let mut m = bochs(None);
    let t = m.command_timeout();

    // A guest that spins with interrupts off and never exits on its own:
    // only the preemption timer gets the CPU back.
    m.send_line("vm create spin mem=8 image=rogue arg=2");
    m.expect_prompt(t);
    m.send_line("vm start spin");
    m.expect(r"\[spin\] rogue: spinning\r?\n", secs(60));

    // A second guest makes progress beside it, and the console answers.
    m.send_line("vm create tk mem=8 image=ticks arg=1");
    m.expect_prompt(t);
    m.send_line("vm start tk");
    m.expect(r"\[tk\] ticks: alive 1\r?\n", secs(60));
    m.expect(r"\[tk\] ticks: alive 2\r?\n", secs(60));
    // A third guest crashes beside them; the ticking one carries on.
    m.send_line("vm create boom mem=8 image=rogue arg=1");
    m.expect(r"vm boom: created", t);
    m.send_line("vm start boom");
    m.expect(
        r"vm boom: crashed: triple fault at rip 0x[0-9a-f]+",
        secs(60),
    );
    m.expect(r"\[tk\] ticks: alive \d+\r?\n", secs(60));
    // Guest output keeps arriving: match the answers, not whole outputs.
    m.send_line("vm list");
    m.expect(r"(?m)^spin +(running|halted) ", t);
    m.expect(r"(?m)^tk +(running|halted) ", t);
    m.expect(r"(?m)^boom +crashed ", t);
    m.send_line("vm stop spin");
    m.expect(r"(?m)^vm spin: stopped\r?$", t);
    m.send_line("vm stop tk");
    m.expect(r"(?m)^vm tk: stopped\r?$", t);
    m.expect_prompt(t);

    // The timer: about 100 interrupts per second of TSC time.
    expect_single_line(
        &mut m,
        "vm create t1 mem=8 image=ticks",
        "vm t1: created (8 MiB, image ticks)",
    );
    m.send_line("vm start t1");
    let f = m.expect(r"\[t1\] ticks: (\d+) interrupts in (\d+) ms", secs(120));
    let n = f.num(1);
    m.check((80..=120).contains(&n), || {
        format!("{n} timer interrupts in a second")
    });
    m.expect(r"vm t1: exited with code 0\r?\n", secs(30));
    m.expect_prompt(t);
}

#[test]
fn bochs_memtest_on_a_cpu_without_pml_or_ad_bits() {
    let mut m = bochs(Some("corei7_sandy_bridge_2600k"));
    let vmx = m.cmd("vmx");
    m.check(
        vmx.contains("pml: no") && vmx.contains("ept a/d: no"),
        || format!("`vmx`:\n{vmx}"),
    );
    m.send_line("vm create mt mem=32 image=memtest");
    m.expect_prompt(m.command_timeout());
    m.send_line("vm start mt");
    m.expect(
        r"\[mt\] memtest: ok \d+ MiB checksum 0x[0-9a-f]{16}\r?\n",
        secs(240),
    );
    m.expect(r"vm mt: exited with code 0\r?\n", secs(30));
    m.expect_prompt(m.command_timeout());
    let code = run_to_exit(&mut m, "h", "mem=8 image=hello");
    m.check(code == 0, || format!("hello exited with {code}"));
}
