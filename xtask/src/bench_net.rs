//! `cargo xtask bench net [--mib N]`: `net bench` throughput between two
//! hypervisor hosts on one link (QEMU `-netdev stream`; Bochs through
//! `bxhub`), and beside it the same sink fed by a host program through a
//! QEMU user-net port forward.
//!
//! The hypervisor measures with its TSC: under QEMU (TCG) that follows the
//! wall clock; under Bochs (`clock: sync=none`) it is emulated time, so the
//! Bochs figure is also given per wall-clock second.

use std::time::{Duration, Instant};

use hv_tests::netstack::codec::Key;
use hv_tests::peer::HostPeer;
use hv_tests::regex::Regex;
use hv_tests::{Builder, Link, Machine};

use crate::{Result, make_image, setup};

const KEY: &str = "00112233445566778899aabbccddeeff";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn host(b: Builder, name: &str, ip: &str) -> Result<Machine> {
    let mut m = b
        .name(&format!("bench-net-{name}"))
        .config(&format!(
            "hostname = {name}\nnet.ip = {ip}\nnet.key = {KEY}\n"
        ))
        .hostname(name)
        .try_start()
        .map_err(err)?;
    m.try_boot_to_prompt().map_err(err)?;
    Ok(m)
}

/// Boots two hosts on `link`, benches `mib` MiB from the first to the
/// second; returns (MiB/s as the hypervisor measured, wall seconds).
fn two_hosts(link: &Link, b: fn() -> Builder, mib: u64) -> Result<(f64, f64)> {
    let mut a = host(b().link(link), "benchah", "10.0.0.1/24")?;
    let mut s = host(b().link(link), "benchbh", "10.0.0.2/24")?;
    let t = Duration::from_secs(30);
    s.try_command("net sink", t).map_err(err)?;
    // Resolve the peer first, so ARP is not part of the figure.
    a.try_command("net ping 10.0.0.2 1", t).map_err(err)?;
    let start = Instant::now();
    let out = a
        .try_command(
            &format!("net bench 10.0.0.2 {mib}"),
            Duration::from_secs(1800),
        )
        .map_err(err)?;
    let wall = start.elapsed().as_secs_f64();
    let re = Regex::new(r"= ([\d.]+) MiB/s, checksum ok").expect("static regex");
    let rate = re
        .captures(&out)
        .and_then(|c| c[1].parse().ok())
        .ok_or_else(|| format!("bench net: no result in:\n{out}"))?;
    eprintln!(
        "xtask: {}: {}",
        link.emulator(),
        out.lines().last().unwrap_or_default()
    );
    Ok((rate, wall))
}

/// A QEMU host with a sink on a port forward, fed from the host.
fn host_program(mib: u64) -> Result<(f64, f64)> {
    let mut m = Machine::qemu()
        .name("bench-net-fwd")
        .config(&format!(
            "net.ip = 10.0.2.15/24\nnet.gw = 10.0.2.2\nnet.key = {KEY}\n"
        ))
        .user_net_forward(netstack_sink_port())
        .try_start()
        .map_err(err)?;
    m.try_boot_to_prompt().map_err(err)?;
    m.try_command("net sink", Duration::from_secs(30))
        .map_err(err)?;
    let port = m.forwarded_port(netstack_sink_port());
    let key = Key::from_hex(KEY).map_err(err)?;
    let mut peer = HostPeer::connect(port, &key)?;
    let r = peer.bench(mib << 20)?;
    if !r.ok {
        return Err("bench net: the sink reported a checksum mismatch".into());
    }
    // The sink's own figure (from its TSC) for the same transfer.
    let line = m
        .try_expect(
            r"net sink: \S+ sent \d+ bytes in (\d+) ms, checksum ok",
            Duration::from_secs(60),
        )
        .map_err(err)?;
    let sink_ms: f64 = line.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let sink_rate = if sink_ms > 0.0 {
        mib as f64 / (sink_ms / 1000.0)
    } else {
        0.0
    };
    Ok((r.mib_per_s(), sink_rate))
}

fn netstack_sink_port() -> u16 {
    hv_tests::netstack::bench::SINK_PORT
}

/// `cargo xtask bench net [--mib N]`.
pub fn main(args: &[String]) -> Result {
    let mib: u64 = match args {
        [] => 64,
        [flag, n] if flag == "--mib" => n
            .parse()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| format!("bench net: bad --mib '{n}' (expected 1 to 4096)"))?,
        _ => {
            return Err(format!(
                "bench net: unexpected arguments {args:?} (expected --mib N)"
            ));
        }
    };
    setup::setup()?;
    make_image()?;
    let bochs_mib = (mib / 16).max(1);

    let (q_rate, q_wall) = two_hosts(&Link::qemu(), Machine::qemu, mib)?;
    let (h_rate, h_sink) = host_program(mib)?;
    let (b_rate, b_wall) = two_hosts(&Link::bochs(), Machine::bochs, bochs_mib)?;

    println!();
    println!(
        "net bench: encrypted channel (ChaCha20-Poly1305 per frame, protocol 2), 32 KiB frames, checksum verified by the sink"
    );
    println!();
    println!(
        "{:<52} {:>6} {:>12} {:>12}",
        "link", "MiB", "MiB/s (hv)", "MiB/s wall"
    );
    println!(
        "{:<52} {:>6} {:>12.2} {:>12.2}",
        "QEMU TCG host -> QEMU TCG host, -netdev stream",
        mib,
        q_rate,
        mib as f64 / q_wall
    );
    println!(
        "{:<52} {:>6} {:>12.2} {:>12.2}",
        "host program -> QEMU TCG host, user-net port forward", mib, h_sink, h_rate
    );
    println!(
        "{:<52} {:>6} {:>12.2} {:>12.2}",
        "Bochs host -> Bochs host, bxhub",
        bochs_mib,
        b_rate,
        bochs_mib as f64 / b_wall
    );
    println!();
    println!(
        "MiB/s (hv): measured by the hypervisor's TSC (Bochs: emulated time); wall: the whole command, host clock."
    );
    Ok(())
}
