//! Two hosts on one Ethernet link (QEMU `-netdev stream`, Bochs `bxhub`),
//! and a QEMU host reachable from this machine through a port forward.
//!
//! Plumbing only: the kernel has no network commands yet, so these tests
//! check that both emulators run with the link, that the link is connected
//! as the host's socket tables see it, and that each guest sees its e1000.

mod common;

use std::fs;
use std::process::Command;

use common::{check_e1000, pci_lines};
use hv_tests::{BOCHS_LINK_MACS, CAPTURE_FILE, Link, Machine, QEMU_LINK_MACS};

/// `ss -Hn <args>`: one socket per line.
fn ss(args: &[&str]) -> String {
    let out = Command::new("ss")
        .arg("-Hn")
        .args(args)
        .output()
        .expect("cannot run ss (package iproute2)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The name of process `pid` (`/proc/<pid>/comm`).
fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Boots `m` and checks that `pci` lists the e1000.
fn boot_and_check_nic(m: &mut Machine, host: &str) {
    m.boot_to_prompt();
    let status = m.cmd("status");
    m.check(status.lines().any(|l| l == format!("host: {host}")), || {
        format!("`status` does not say `host: {host}`:\n{status}")
    });
    let pci = pci_lines(m);
    check_e1000(m, &pci);
}

#[test]
fn qemu_two_hosts_on_a_stream_link() {
    let link = Link::qemu();
    let port = link.port();
    let mut a = Machine::qemu()
        .config("hostname = a\n")
        .hostname("a")
        .link(&link)
        .start();
    let mut b = Machine::qemu()
        .config("hostname = b\n")
        .hostname("b")
        .link(&link)
        .start();

    // The command lines carry the two ends of the link and distinct MACs.
    let addr = format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    for (m, server, mac) in [
        (&a, "on", QEMU_LINK_MACS[0]),
        (&b, "off", QEMU_LINK_MACS[1]),
    ] {
        let cmdline = fs::read_to_string(m.dir().join("qemu.cmdline")).unwrap();
        let want = [
            format!("-netdev stream,id=n0,server={server},{addr}"),
            format!("-device e1000,netdev=n0,mac={mac},romfile="),
            "-object filter-dump,id=f0,netdev=n0,file=".to_string(),
        ];
        for w in &want {
            m.check(cmdline.contains(w), || format!("{w:?} not in {cmdline}"));
        }
        m.check(m.mac().as_deref() == Some(mac), || {
            format!("mac() is {:?}, expected {mac}", m.mac())
        });
        m.check(m.dir().join(CAPTURE_FILE).is_file(), || {
            format!("no {CAPTURE_FILE} in {}", m.dir().display())
        });
        let pid = m.instance().pid().expect("running");
        m.check(comm(pid).starts_with("qemu-system"), || {
            format!("pid {pid} is {:?}", comm(pid))
        });
    }
    assert_eq!(a.link().map(|(_, i)| i), Some(0));
    assert_eq!(b.link().map(|(_, i)| i), Some(1));

    // The host's view: one established connection on the link port, both
    // ends owned by the two QEMUs.
    assert!(link.is_connected(), "link not connected: {link:?}");
    let server_side = ss(&[
        "-tp",
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ]);
    let client_side = ss(&[
        "-tp",
        "state",
        "established",
        &format!("( dport = :{port} )"),
    ]);
    let pid_a = a.instance().pid().unwrap();
    let pid_b = b.instance().pid().unwrap();
    assert_eq!(
        server_side.lines().count(),
        1,
        "ss server side:\n{server_side}"
    );
    assert_eq!(
        client_side.lines().count(),
        1,
        "ss client side:\n{client_side}"
    );
    assert!(
        server_side.contains(&format!("pid={pid_a},")),
        "{server_side}"
    );
    assert!(
        client_side.contains(&format!("pid={pid_b},")),
        "{client_side}"
    );

    boot_and_check_nic(&mut a, "a");
    boot_and_check_nic(&mut b, "b");
    // Still linked after both booted.
    assert!(
        link.is_connected(),
        "link dropped during the boot: {link:?}"
    );
}

#[test]
fn bochs_two_hosts_on_a_hub() {
    let link = Link::bochs();
    let base = link.port();
    let hub = link.hub_pid().expect("bxhub is running");
    assert_eq!(comm(hub), "bxhub");
    let mut a = Machine::bochs()
        .config("hostname = a\n")
        .hostname("a")
        .link(&link)
        .start();
    let mut b = Machine::bochs()
        .config("hostname = b\n")
        .hostname("b")
        .link(&link)
        .start();

    for (k, m) in [&a, &b].into_iter().enumerate() {
        let mac = BOCHS_LINK_MACS[k];
        let rc = fs::read_to_string(m.dir().join("bochs.bxrc")).unwrap();
        let want = [
            "plugin_ctrl: e1000=true\n".to_string(),
            "pci: enabled=1, chipset=i440fx, slot1=e1000\n".to_string(),
            format!(
                "e1000: enabled=1, mac={mac}, ethmod=socket, ethdev={}\n",
                base + 2 * k as u16
            ),
        ];
        for w in &want {
            m.check(rc.contains(w.as_str()), || format!("{w:?} not in\n{rc}"));
        }
        m.check(m.mac().as_deref() == Some(mac), || {
            format!("mac() is {:?}, expected {mac}", m.mac())
        });
    }

    // The hub listens on B+1 and B+3; each Bochs has bound its own port.
    let udp = ss(&["-ulp"]);
    for p in [base + 1, base + 3] {
        assert!(
            udp.lines()
                .any(|l| l.contains(&format!(":{p} ")) && l.contains(&format!("pid={hub},"))),
            "bxhub not on UDP {p}:\n{udp}"
        );
    }
    assert!(link.is_connected(), "link not connected: {link:?}");

    boot_and_check_nic(&mut a, "a");
    boot_and_check_nic(&mut b, "b");
    assert_eq!(link.hub_pid(), Some(hub), "bxhub died");
}

#[test]
fn qemu_user_net_port_forward() {
    const GUEST_PORT: u16 = 23;
    let mut m = Machine::qemu().user_net_forward(GUEST_PORT).start();
    let port = m.forwarded_port(GUEST_PORT);
    assert_eq!(m.try_forwarded_port(24), None);
    let cmdline = fs::read_to_string(m.dir().join("qemu.cmdline")).unwrap();
    let want = format!("-netdev user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT} ");
    m.check(cmdline.contains(&want), || {
        format!("{want:?} not in {cmdline}")
    });
    // QEMU listens on the forwarded port (a test connects there once the
    // kernel has a TCP service).
    let pid = m.instance().pid().unwrap();
    assert!(
        hv_tests::sockets::tcp_listening(pid, port),
        "QEMU does not listen on 127.0.0.1:{port}:\n{}",
        ss(&["-tlp"])
    );
    assert_eq!(m.mac().as_deref(), Some(hv_tests::QEMU_DEFAULT_MAC));
    boot_and_check_nic(&mut m, "hv");
}
