//! Destination validation: everything a malicious or buggy source may send.

mod common;

use common::{SimHost, desc};
use migrate::dest::{self, Dest, DestAction};
use migrate::proto::{Message, PageRuns};

fn host() -> SimHost {
    common::host_for(&desc(16))
}

fn hello_named(vm: &str) -> Message {
    let mut d = desc(16);
    d.vm = vm.into();
    d.hello()
}

/// Names the console would refuse, and how the reason must show them.
const BAD_NAMES: [(&str, &str); 5] = [
    ("web 1", "'web 1'"),
    ("web\x1b[2J", "'web\\u{1b}[2J'"),
    ("abcdefghijklmnopq", "'abcdefghijklmnopq'"),
    ("", "''"),
    ("caf\u{e9}", "'caf\\u{e9}'"),
];

#[test]
fn bad_names_in_hello_are_refused_escaped() {
    for (name, shown) in BAD_NAMES {
        let hello = hello_named(name);
        let reasons = dest::check(&hello, &host());
        let expected = format!("bad VM name {shown} (1-16 letters, digits, '-' or '_')");
        assert_eq!(reasons, std::slice::from_ref(&expected), "{name:?}");
        let mut dst = Dest::new();
        let out = dst.on_message(hello, None, &host());
        assert!(
            !out.iter().any(|a| matches!(a, DestAction::Reserve { .. })),
            "{name:?}: {out:?}"
        );
        let Some(DestAction::Send(Message::Refuse { reasons })) = out.first() else {
            panic!("{name:?}: {out:?}")
        };
        assert_eq!(reasons, &[expected]);
        assert!(!reasons[0].chars().any(char::is_control));
    }
}

#[test]
fn long_names_are_cut_in_reasons() {
    let reasons = dest::check(&hello_named(&"\x07".repeat(1000)), &host());
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].len() < 400, "{}", reasons[0]);
    assert!(reasons[0].contains("\\u{7}...'"), "{}", reasons[0]);
}

#[test]
fn a_refusal_with_many_blockers_still_decodes() {
    // Every CPU feature missing, 16 unknown devices, a bad name and no RAM.
    let mut d = desc(1 << 20);
    d.vm = "bad name".into();
    d.cpu_features = u64::MAX;
    d.devices = (0..16).map(|i| format!("dev{i}")).collect();
    let host = SimHost {
        free: 0,
        features: 0,
        devices: vec![],
    };
    let mut dst = Dest::new();
    let out = dst.on_message(d.hello(), None, &host);
    let Some(DestAction::Send(refuse)) = out.first() else {
        panic!("{out:?}")
    };
    let (ty, payload) = migrate::proto::encode(refuse);
    let Ok(Message::Refuse { reasons }) = migrate::proto::decode(ty, &payload) else {
        panic!("undecodable {refuse:?}")
    };
    assert_eq!(reasons.len(), migrate::proto::MAX_REASONS);
    assert!(reasons[0].starts_with("bad VM name"), "{reasons:?}");
    assert!(reasons.last().unwrap().ends_with("more"), "{reasons:?}");
}

const PAGE: u64 = migrate::proto::PAGE_SIZE as u64;

/// A destination past a `Hello` for a `pages`-page guest.
fn after_hello(pages: u64) -> (Dest, SimHost) {
    let d = desc(pages);
    let host = common::host_for(&d);
    let mut dst = Dest::new();
    let out = dst.on_message(d.hello(), None, &host);
    assert!(matches!(out[0], DestAction::Reserve { .. }), "{out:?}");
    (dst, host)
}

fn layout(regions: &[(u64, u64)]) -> Message {
    Message::MemoryLayout {
        regions: regions.to_vec(),
    }
}

/// Round-0 `Pages` of `n` zero pages from `first`.
fn zeros(first: u64, n: u32) -> Message {
    let mut runs = PageRuns::new();
    runs.push_zeros(first, n).unwrap();
    Message::Pages { round: 0, runs }
}

/// The destination aborted: it told the source why and freed the RAM.
fn expect_abort(out: &[DestAction], needle: &str) {
    let [
        DestAction::Send(Message::Abort { reason }),
        DestAction::Discard(why),
    ] = out
    else {
        panic!("expected Abort + Discard, got {out:?}")
    };
    assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    assert_eq!(reason, why);
}

#[test]
fn a_layout_must_cover_exactly_the_announced_ram() {
    for (regions, needle) in [
        (
            vec![(0, 15 * PAGE)],
            "covers 61440 bytes, but Hello announced 65536",
        ),
        (
            vec![(0, 17 * PAGE)],
            "region 0 ends at 0x11000, beyond the 65536 bytes",
        ),
        (vec![], "covers 0 bytes, but Hello announced 65536"),
        // The right total, but half of it where no page can be stored.
        (
            vec![(0, 8 * PAGE), (1 << 30, 8 * PAGE)],
            "region 1 ends at 0x40008000, beyond",
        ),
    ] {
        let (mut dst, host) = after_hello(16);
        expect_abort(&dst.on_message(layout(&regions), None, &host), needle);
        assert!(dst.is_closed());
    }
    // Several regions covering it all are fine.
    let (mut dst, host) = after_hello(16);
    let out = dst.on_message(layout(&[(0, 4 * PAGE), (4 * PAGE, 12 * PAGE)]), None, &host);
    assert!(out.is_empty(), "{out:?}");
}

/// Feeds `msgs` then the end of round 0 (`sent` pages), Pause, the state
/// and Commit; returns what Commit produced.
fn commit_after(
    dst: &mut Dest,
    host: &SimHost,
    mem: &mut common::DestMemory,
    msgs: Vec<Message>,
    sent: u64,
) -> Vec<DestAction> {
    for m in msgs {
        let out = dst.on_message(m, Some(mem), host);
        assert!(out.is_empty(), "{out:?}");
    }
    for m in [
        Message::RoundEnd {
            round: 0,
            pages_sent: sent,
            dirty_left: 0,
        },
        Message::Pause,
        Message::VcpuState(vec![1]),
        Message::DeviceState {
            name: "serial".into(),
            data: vec![],
        },
        Message::DeviceState {
            name: "virtio-net".into(),
            data: vec![],
        },
    ] {
        let out = dst.on_message(m, Some(mem), host);
        assert!(out.is_empty(), "{out:?}");
    }
    dst.on_message(Message::Commit, Some(mem), host)
}

#[test]
fn commit_waits_for_every_page_of_the_layout() {
    // Page 15 never sent, page 0 sent twice: 16 pages arrived, 15 distinct.
    let (mut dst, host) = after_hello(16);
    dst.on_message(layout(&[(0, 16 * PAGE)]), None, &host);
    let mut mem = common::DestMemory::new(16);
    let out = commit_after(
        &mut dst,
        &host,
        &mut mem,
        vec![zeros(0, 15), zeros(0, 1)],
        16,
    );
    expect_abort(&out, "Commit with 1 pages never received");

    // With every page: started.
    let (mut dst, host) = after_hello(16);
    dst.on_message(layout(&[(0, 16 * PAGE)]), None, &host);
    let out = commit_after(
        &mut dst,
        &host,
        &mut mem,
        vec![zeros(0, 15), zeros(15, 1)],
        16,
    );
    assert!(matches!(out[0], DestAction::Start { .. }), "{out:?}");
    assert!(dst.is_running());
}

#[test]
fn pages_outside_the_layout_or_the_reservation_abort() {
    let (mut dst, host) = after_hello(16);
    dst.on_message(layout(&[(0, 16 * PAGE)]), None, &host);
    let mut mem = common::DestMemory::new(16);
    // A run that starts inside and ends outside.
    expect_abort(
        &dst.on_message(zeros(10, 10), Some(&mut mem), &host),
        "page gfn 0x10 is outside the memory layout",
    );

    // The kernel reserved fewer pages than announced: the pages past the
    // reservation are refused, so Commit can never come.
    let (mut dst, host) = after_hello(16);
    dst.on_message(layout(&[(0, 16 * PAGE)]), None, &host);
    let mut small = common::DestMemory::new(8);
    expect_abort(
        &dst.on_message(zeros(0, 16), Some(&mut small), &host),
        "page gfn 0x8 is beyond the 8 reserved pages",
    );
    let (mut dst, host) = after_hello(16);
    dst.on_message(layout(&[(0, 16 * PAGE)]), None, &host);
    let out = commit_after(&mut dst, &host, &mut small, vec![zeros(0, 8)], 8);
    expect_abort(&out, "Commit with 8 pages never received");
}
