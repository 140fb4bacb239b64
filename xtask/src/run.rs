//! `cargo xtask run`: boot the image with its serial console on this
//! terminal.
//!
//! The emulator's console is a TCP port (the same set-up the tests use);
//! this bridges it to the terminal in raw mode, so keys such as Ctrl-C and
//! backspace reach the hypervisor unchanged. Ctrl-] quits.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use hv_tests::{Emulator, Machine, kvm_nested_available};

use crate::{Result, make_image, setup};

/// Ctrl-]: the escape key, as in telnet.
const ESCAPE: u8 = 0x1d;

struct Options {
    emulator: Emulator,
    cpus: u32,
    model: Option<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        emulator: Emulator::Bochs,
        cpus: 1,
        model: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("run: {name} needs a value"))
        };
        match a.as_str() {
            "--emulator" => {
                let v = value("--emulator")?;
                o.emulator = Emulator::from_name(&v).ok_or_else(|| {
                    format!("run: unknown emulator '{v}' (expected bochs, qemu or kvm)")
                })?;
            }
            "--cpus" => {
                let v = value("--cpus")?;
                o.cpus = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("run: bad --cpus '{v}' (expected 1-64)"))?;
            }
            "--model" => o.model = Some(value("--model")?),
            other => return Err(format!("run: unexpected argument '{other}'")),
        }
    }
    Ok(o)
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawTerminal {
    saved: String,
}

fn stty(args: &[&str]) -> io::Result<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(File::open("/dev/tty")?)
        .stderr(Stdio::inherit())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(io::Error::other(format!("stty {} failed", args.join(" "))))
    }
}

impl RawTerminal {
    fn enter() -> io::Result<RawTerminal> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if stty(&[&self.saved]).is_err() {
            let _ = stty(&["sane"]);
        }
    }
}

enum Event {
    Quit,
    ConsoleClosed,
}

/// `cargo xtask run [...]`.
pub fn main(args: &[String]) -> Result {
    let o = parse(args)?;
    if let Some(m) = &o.model
        && !hv_tests::BOCHS_CPU_MODELS.contains(&m.as_str())
    {
        return Err(format!(
            "run: unknown Bochs cpu model '{m}' (Bochs 2.7 has: {})",
            hv_tests::BOCHS_CPU_MODELS.join(", ")
        ));
    }
    if o.emulator == Emulator::QemuKvm {
        kvm_nested_available().map_err(|why| format!("run: kvm is not usable here: {why}"))?;
    }
    setup::setup()?;
    make_image()?;

    let mut b = Machine::builder(o.emulator).cpus(o.cpus).name("run");
    if let Some(m) = &o.model {
        if o.emulator == Emulator::Bochs {
            b = b.bochs_model(m);
        } else {
            eprintln!("xtask: --model applies to bochs only; ignored");
        }
    }
    let what = match o.emulator {
        Emulator::Bochs => format!(
            "Bochs (cpu model {}, {} cpu(s); firmware takes ~8 s)",
            b.spec().bochs_model,
            o.cpus
        ),
        Emulator::Qemu => format!("QEMU TCG ({} cpu(s); no VT-x)", o.cpus),
        Emulator::QemuKvm => format!("QEMU with KVM ({} cpu(s), nested VT-x)", o.cpus),
    };
    let mut inst = b.spawn().map_err(|e| e.to_string())?;
    println!("xtask: running {what}; serial console on this terminal, press Ctrl-] to quit");

    let mut from_vm = inst
        .serial()
        .try_clone()
        .map_err(|e| format!("cannot clone the console socket: {e}"))?;
    let mut to_vm = inst
        .serial()
        .try_clone()
        .map_err(|e| format!("cannot clone the console socket: {e}"))?;

    let raw = if io::stdin().is_terminal() {
        Some(
            RawTerminal::enter()
                .map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?,
        )
    } else {
        None
    };

    let (tx, rx) = mpsc::channel();
    let tx_out = tx.clone();
    std::thread::spawn(move || {
        let mut out = io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_vm.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx_out.send(Event::ConsoleClosed);
    });
    std::thread::spawn(move || {
        let mut input = io::stdin();
        let mut buf = [0u8; 1024];
        // At end of input (stdin not a terminal) keep the console running:
        // the emulator ends with Ctrl-C or when it exits.
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 {
                return;
            }
            let chunk = &buf[..n];
            if let Some(i) = chunk.iter().position(|&b| b == ESCAPE) {
                let _ = to_vm.write_all(&chunk[..i]);
                let _ = tx.send(Event::Quit);
                return;
            }
            if to_vm.write_all(chunk).is_err() {
                return;
            }
        }
    });

    let event = rx.recv().unwrap_or(Event::ConsoleClosed);
    let status = inst.try_wait().ok().flatten();
    inst.kill();
    drop(raw);
    match event {
        Event::Quit => println!("\nxtask: quit; emulator stopped"),
        Event::ConsoleClosed => match status {
            Some(s) => println!("\nxtask: the emulator exited ({s})"),
            None => println!("\nxtask: the console closed; emulator stopped"),
        },
    }
    Ok(())
}
