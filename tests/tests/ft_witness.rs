//! The FT witness (`ft witness`) on a QEMU host (it needs no VT-x), asked
//! by the test itself over the authenticated channel through QEMU's
//! forward (every request comes from 10.0.2.2).
//!
//! What would be false if the witness were broken:
//! - a generation begun is claimed once: the first claimant wins, every
//!   other claimant of that generation loses, the winner asking again
//!   wins again, an older generation loses;
//! - the table survives `ft witness stop` and `ft witness` (a restarted
//!   witness never lets a second twin win);
//! - garbage, the wrong key, answers sent as requests, unknown types and
//!   names with control characters are refused with a line each, the
//!   connection closed, and the witness goes on answering.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::KEY;
use ft_lockstep::witness::{self, Role, Verdict, WitnessFrame};
use hv_tests::peer::HostPeer;
use hv_tests::{Machine, secs};
use netstack::codec::Key;

const FROM: [u8; 4] = [10, 0, 2, 2];

fn ask(m: &Machine, port: u16, key: &Key, req: &WitnessFrame) -> WitnessFrame {
    let mut p = HostPeer::connect(port, key).unwrap_or_else(|e| m.fail(&e));
    let (ty, payload) = witness::encode(req);
    p.send(ty, &payload).unwrap_or_else(|e| m.fail(&e));
    let (ty, payload) = p.recv().unwrap_or_else(|e| m.fail(&e));
    witness::decode(ty, &payload).unwrap_or_else(|e| m.fail(&format!("bad answer: {e}")))
}

fn claim(m: &Machine, port: u16, key: &Key, generation: u64, role: Role) -> Verdict {
    match ask(
        m,
        port,
        key,
        &WitnessFrame::Claim {
            vm: "g".into(),
            generation,
            role,
        },
    ) {
        WitnessFrame::Verdict {
            vm,
            generation: g,
            verdict,
        } if vm == "g" && g == generation => verdict,
        other => m.fail(&format!("a claim was answered with {other:?}")),
    }
}

#[test]
fn qemu_ft_witness_decides_once_survives_restart_and_bad_input() {
    let port = ft_lockstep::WITNESS_PORT;
    let mut m = Machine::qemu()
        .hostname("wit")
        .config(&format!(
            "hostname = wit\nnet.ip = 10.0.2.15/24\nnet.gw = 10.0.2.2\nnet.key = {KEY}\n"
        ))
        .user_net_forward(port)
        .start();
    m.boot_to_prompt();
    let out = m.cmd("ft witness");
    m.check(out.starts_with("ft: witness on port 7004"), || out.clone());
    let fwd = m.forwarded_port(port);
    let key = Key::from_hex(KEY).unwrap();
    let kernel_from = m.raw_output().len();

    // Begin, then the test-and-set.
    let g = match ask(&m, fwd, &key, &WitnessFrame::Begin { vm: "g".into() }) {
        WitnessFrame::Begun { vm, generation } if vm == "g" && generation >= 1 => generation,
        other => m.fail(&format!("Begin was answered with {other:?}")),
    };
    m.expect_line(
        &format!(r"ft: witness: g: generation {g} begun by 10\.0\.2\.2"),
        secs(30),
    );
    assert_eq!(claim(&m, fwd, &key, g, Role::Secondary), Verdict::Won);
    m.expect_line(
        &format!(r"ft: witness: g: generation {g}: 10\.0\.2\.2 \(secondary\) claims: won"),
        secs(30),
    );
    let lost = Verdict::Lost {
        holder: FROM,
        role: Role::Secondary,
    };
    assert_eq!(claim(&m, fwd, &key, g, Role::Primary), lost);
    m.expect_line(
        r"ft: witness: g: .*claims: lost to 10\.0\.2\.2 \(secondary\)",
        secs(30),
    );
    assert_eq!(claim(&m, fwd, &key, g, Role::Secondary), Verdict::Won);
    // (Each answer is also a console line: wait for it before the next
    // command, so the command's output is its own.)
    m.expect_line(
        &format!(r"ft: witness: g: generation {g}: 10\.0\.2\.2 \(secondary\) claims: won"),
        secs(30),
    );
    m.expect_prompt(secs(30));
    if g > 1 {
        assert!(matches!(
            claim(&m, fwd, &key, g - 1, Role::Primary),
            Verdict::Stale { .. }
        ));
    }

    // A restart keeps the table.
    let out = m.cmd("ft witness stop");
    m.check(out.contains("ft: witness stopped"), || out.clone());
    let out = m.cmd("ft witness");
    m.check(
        out.contains(&format!("g: generation {g}, held by 10.0.2.2 (secondary)")),
        || format!("after a restart: {out}"),
    );
    assert_eq!(claim(&m, fwd, &key, g, Role::Primary), lost);

    // Bad input: each connection dropped with a line, the witness goes on.
    let alive = |m: &mut Machine| {
        m.send_line("status");
        m.expect_line(r"host: wit", secs(30));
    };
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    s.write_all(b"garbage garbage garbage\r\n").unwrap();
    common::expect_closed(&m, "garbage before the handshake", &mut s);
    alive(&mut m);
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    s.set_read_timeout(Some(secs(30))).unwrap();
    common::handshake_with_the_wrong_key(&mut s);
    drop(s);
    alive(&mut m);
    let (claim_ty, mut claim_payload) = witness::encode(&WitnessFrame::Claim {
        vm: "g".into(),
        generation: g,
        role: Role::Primary,
    });
    claim_payload.push(0);
    let cases: Vec<(&str, u8, Vec<u8>, &str)> = vec![
        (
            "garbage as a claim",
            witness::FRAME_CLAIM,
            b"\x01\x00\xff\xffgarbage".to_vec(),
            r"bad request: .*",
        ),
        (
            "a claim with a byte too many",
            claim_ty,
            claim_payload,
            r"bad request: 1 bytes after the end of the frame",
        ),
        (
            "a verdict sent as a request",
            witness::encode(&WitnessFrame::Verdict {
                vm: "g".into(),
                generation: g,
                verdict: Verdict::Won,
            })
            .0,
            witness::encode(&WitnessFrame::Verdict {
                vm: "g".into(),
                generation: g,
                verdict: Verdict::Won,
            })
            .1,
            r"sent an answer, not a request",
        ),
        (
            "an unknown type",
            200,
            vec![1, 0, 1, b'g'],
            r"bad request: frame type 200 is not an FT frame",
        ),
        (
            "a name with an escape",
            witness::FRAME_BEGIN,
            vec![1, 0, 4, 0x1b, b'[', b'2', b'J'],
            r"bad request: bad VM name byte .*",
        ),
    ];
    for (what, ty, payload, why) in cases {
        let mut p = HostPeer::connect(fwd, &key).unwrap_or_else(|e| m.fail(&e));
        p.send(ty, &payload).unwrap();
        let line = m.expect_line(
            r"ft: witness: 10\.0\.2\.2: (.*); connection dropped",
            secs(30),
        );
        m.check(
            hv_tests::regex::Regex::new(why)
                .unwrap()
                .is_match(line.get(1).unwrap_or_default()),
            || format!("{what}: expected /{why}/, got {}", line.text),
        );
        println!("{what}: {}", line.text.trim());
        common::expect_closed(&m, what, &mut p.stream);
        alive(&mut m);
    }
    // Nothing changed: the holder is the same, and no escape reached the
    // console.
    assert_eq!(claim(&m, fwd, &key, g, Role::Primary), lost);
    let raw = m.raw_output();
    m.check(!raw[kernel_from..].contains(&0x1b), || {
        "an escape sequence from the network reached the console".into()
    });
}
