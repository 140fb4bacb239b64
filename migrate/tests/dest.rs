//! Destination validation: everything a malicious or buggy source may send.

mod common;

use common::{SimHost, desc, expect_abort, zero_pages};
use migrate::dest::{self, Dest, DestAction, DestHost};
use migrate::proto::{Message, ProtoError};

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

fn probe_named(vm: &str) -> Message {
    let mut d = desc(16);
    d.vm = vm.into();
    d.probe()
}

#[test]
fn bad_names_in_hello_and_probe_are_refused_escaped() {
    let each = BAD_NAMES.into_iter().flat_map(|(name, shown)| {
        [
            (hello_named(name), name, shown),
            (probe_named(name), name, shown),
        ]
    });
    for (hello, name, shown) in each {
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
    d.profile = vcpu::profile::Profile::baseline("skylake-server").unwrap();
    d.devices = (0..16).map(|i| format!("dev{i}")).collect();
    let host = SimHost::new(0, common::bare_offer(), vec![]);
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

/// [`after_hello`], then a layout of one region covering all `pages`.
fn after_layout(pages: u64) -> (Dest, SimHost) {
    let (mut dst, host) = after_hello(pages);
    dst.on_message(layout(&[(0, pages * PAGE)]), None, &host);
    (dst, host)
}

fn layout(regions: &[(u64, u64)]) -> Message {
    Message::MemoryLayout {
        regions: regions.to_vec(),
    }
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
    let (mut dst, host) = after_layout(16);
    let mut mem = common::DestMemory::new(16);
    let out = commit_after(
        &mut dst,
        &host,
        &mut mem,
        vec![zero_pages(0, 15), zero_pages(0, 1)],
        16,
    );
    expect_abort(&out, "Commit with 1 pages never received");

    // With every page: started.
    let (mut dst, host) = after_layout(16);
    let out = commit_after(
        &mut dst,
        &host,
        &mut mem,
        vec![zero_pages(0, 15), zero_pages(15, 1)],
        16,
    );
    assert!(matches!(out[0], DestAction::Start { .. }), "{out:?}");
    assert!(dst.is_running());
}

#[test]
fn pages_outside_the_layout_or_the_reservation_abort() {
    let (mut dst, host) = after_layout(16);
    let mut mem = common::DestMemory::new(16);
    // A run that starts inside and ends outside.
    expect_abort(
        &dst.on_message(zero_pages(10, 10), Some(&mut mem), &host),
        "page gfn 0x10 is outside the memory layout",
    );

    // The kernel reserved fewer pages than announced: the pages past the
    // reservation are refused, so Commit can never come.
    let (mut dst, host) = after_layout(16);
    let mut small = common::DestMemory::new(8);
    expect_abort(
        &dst.on_message(zero_pages(0, 16), Some(&mut small), &host),
        "page gfn 0x8 is beyond the 8 reserved pages",
    );
    let (mut dst, host) = after_layout(16);
    let out = commit_after(&mut dst, &host, &mut small, vec![zero_pages(0, 8)], 8);
    expect_abort(&out, "Commit with 8 pages never received");
}

#[test]
fn a_probe_before_hello_is_answered_and_reserves_nothing() {
    let mut dst = Dest::new();
    let out = dst.on_message(desc(16).probe(), None, &host());
    assert!(
        matches!(
            &out[..],
            [DestAction::Send(Message::Ready), DestAction::Close(_)]
        ),
        "{out:?}"
    );
    assert!(dst.is_closed() && !dst.has_reservation() && dst.vm().is_empty());
    // The channel served its purpose: a Hello on it now is ignored.
    assert!(dst.on_message(desc(16).hello(), None, &host()).is_empty());

    let mut dst = Dest::new();
    let poor = SimHost::new(
        4096,
        vcpu::profile::HostOffer::everything(),
        desc(16).devices,
    );
    let out = dst.on_message(desc(16).probe(), None, &poor);
    let [
        DestAction::Send(Message::Refuse { reasons }),
        DestAction::Close(_),
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        reasons,
        &["not enough memory: the guest needs 1 MiB, 0 MiB free"]
    );
    assert!(dst.is_closed() && !dst.has_reservation());
}

#[test]
fn a_probe_after_hello_aborts_and_frees_the_reservation() {
    let (mut dst, host) = after_hello(16);
    assert!(dst.has_reservation());
    expect_abort(
        &dst.on_message(desc(16).probe(), None, &host),
        "probe after Hello",
    );
    assert!(!dst.has_reservation());

    let (mut dst, host) = after_layout(16);
    let mut mem = common::DestMemory::new(16);
    dst.on_message(zero_pages(0, 4), Some(&mut mem), &host);
    expect_abort(
        &dst.on_message(desc(16).probe(), None, &host),
        "probe after Hello",
    );
}

#[test]
fn host_blockers_refuse_hello_and_probe() {
    let mut host = host();
    host.vms = vec!["web1".into()];
    host.migrations = 2;
    let expected = [
        "a VM named 'web1' already exists here",
        "this host already runs 2 migrations (the limit is 2)",
    ];
    for msg in [desc(16).hello(), desc(16).probe()] {
        assert_eq!(dest::check(&msg, &host), expected);
        let mut dst = Dest::new();
        let out = dst.on_message(msg, None, &host);
        let [
            DestAction::Send(Message::Refuse { reasons }),
            DestAction::Close(_),
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(reasons, &expected);
    }
    // A bad name is not handed to the host.
    struct Strict;
    impl DestHost for Strict {
        fn free_bytes(&self) -> u64 {
            u64::MAX
        }
        fn cpu_offer(&self) -> vcpu::profile::HostOffer {
            vcpu::profile::HostOffer::everything()
        }
        fn devices(&self) -> Vec<String> {
            desc(16).devices
        }
        fn blockers(&self, vm: &str) -> Vec<String> {
            assert!(migrate::names::is_valid_vm_name(vm), "asked about {vm:?}");
            vec![]
        }
    }
    assert_eq!(dest::check(&hello_named("a\x1b"), &Strict).len(), 1);
    assert!(dest::check(&desc(16).hello(), &Strict).is_empty());
}

#[test]
fn a_silent_source_times_out() {
    let mut dst = Dest::new();
    let out = dst.on_timeout("no Hello within 10 s");
    assert!(
        matches!(&out[..], [DestAction::Send(Message::Abort { reason }), DestAction::Close(_)] if reason == "timed out: no Hello within 10 s"),
        "{out:?}"
    );
    let (mut dst, _) = after_hello(16);
    expect_abort(
        &dst.on_timeout("silent for 10 s"),
        "timed out: silent for 10 s",
    );
    assert!(dst.on_timeout("again").is_empty());
}

/// Counts of the actions that matter for the kernel's bookkeeping.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    reserve: usize,
    discard: usize,
    close: usize,
    start: usize,
}

impl Tally {
    fn add(&mut self, out: &[DestAction]) {
        for a in out {
            match a {
                DestAction::Reserve { .. } => self.reserve += 1,
                DestAction::Discard(_) => self.discard += 1,
                DestAction::Close(_) => self.close += 1,
                DestAction::Start { .. } => self.start += 1,
                DestAction::Send(_) => {}
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    AwaitHello,
    AwaitLayout,
    Receiving,
    Final,
    Running,
}

/// A destination driven to `stage`, with the tally of what it asked so far.
fn dest_at(stage: Stage) -> (Dest, SimHost, common::DestMemory, Tally) {
    let host = host();
    let mut mem = common::DestMemory::new(16);
    let mut dst = Dest::new();
    let mut t = Tally::default();
    let mut script = vec![];
    let n = match stage {
        Stage::AwaitHello => 0,
        Stage::AwaitLayout => 1,
        Stage::Receiving => 2,
        Stage::Final => 5,
        Stage::Running => 9,
    };
    script.extend([
        desc(16).hello(),
        layout(&[(0, 16 * PAGE)]),
        zero_pages(0, 16),
        Message::RoundEnd {
            round: 0,
            pages_sent: 16,
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
        Message::Commit,
    ]);
    for m in script.into_iter().take(n) {
        t.add(&dst.on_message(m, Some(&mut mem), &host));
    }
    assert_eq!(t.discard + t.close, 0, "{stage:?}: {t:?}");
    (dst, host, mem, t)
}

type Event = (
    &'static str,
    fn(&mut Dest, &SimHost, &mut common::DestMemory) -> Vec<DestAction>,
);

/// Everything that may happen to a destination, ending it or not.
const EVENTS: [Event; 13] = [
    ("reservation failed", |d, _, _| d.refuse("out of memory")),
    ("source aborted", |d, h, m| {
        d.on_message(Message::abort("bye"), Some(m), h)
    }),
    ("link lost", |d, _, _| d.on_link_lost("cable")),
    ("timeout", |d, _, _| d.on_timeout("silent")),
    ("probe", |d, h, m| {
        d.on_message(desc(16).probe(), Some(m), h)
    }),
    ("second Hello", |d, h, m| {
        d.on_message(desc(16).hello(), Some(m), h)
    }),
    ("bad frame", |d, _, _| {
        d.on_bad_frame(&ProtoError::UnknownType(99))
    }),
    ("bad layout", |d, h, m| {
        d.on_message(layout(&[(0, PAGE)]), Some(m), h)
    }),
    ("page outside", |d, h, m| {
        d.on_message(zero_pages(99, 1), Some(m), h)
    }),
    ("early Commit", |d, h, m| {
        d.on_message(Message::Commit, Some(m), h)
    }),
    ("start failed", |d, _, _| d.start_failed("no vCPU")),
    ("Committed from the source", |d, h, m| {
        d.on_message(Message::Committed, Some(m), h)
    }),
    ("Refuse from the source", |d, h, m| {
        d.on_message(Message::refuse(vec![]), Some(m), h)
    }),
];

#[test]
fn every_end_before_running_discards_exactly_once() {
    // Every event, then every event again, at every stage: once reserved,
    // exactly one Discard and no Close; before, at most one Close and no
    // Discard; once running, nothing but a failed start ends it.
    for stage in [
        Stage::AwaitHello,
        Stage::AwaitLayout,
        Stage::Receiving,
        Stage::Final,
        Stage::Running,
    ] {
        for (first, event) in EVENTS {
            let (mut dst, host, mut mem, mut t) = dest_at(stage);
            t.add(&event(&mut dst, &host, &mut mem));
            let ended = t.discard + t.close == 1;
            for (_, event) in EVENTS {
                t.add(&event(&mut dst, &host, &mut mem));
            }
            let ctx = format!("{stage:?}, {first} first: {t:?}");
            assert!(t.reserve <= 1 && t.start <= 1, "{ctx}");
            if t.reserve == 1 {
                assert_eq!(t.close, 0, "{ctx}");
            } else {
                assert_eq!(t.discard, 0, "{ctx}");
            }
            match stage {
                Stage::Running => {
                    // Only a failed start undoes a started guest.
                    assert_eq!(t.discard, 1, "{ctx}");
                    assert!(!dst.has_reservation());
                }
                _ => {
                    assert_eq!(t.discard + t.close, 1, "{ctx}");
                    assert!(dst.is_closed(), "{ctx}");
                    assert!(!dst.has_reservation(), "{ctx}");
                }
            }
            // Whether the first event ended it: an early `refuse` or
            // `start_failed` is ignored; in AwaitHello, "second Hello" is
            // the first one, accepted.
            let ends = match (stage, first) {
                (Stage::Running, f) => f == "start failed",
                (_, "start failed") => false,
                (Stage::AwaitLayout, "reservation failed") => true,
                (_, "reservation failed") => false,
                (Stage::AwaitHello, "second Hello") => false,
                _ => true,
            };
            assert_eq!(ended, ends, "{ctx}");
        }
    }
}

#[test]
fn an_over_long_name_on_the_wire_is_refused_with_the_decoders_reason() {
    for msg in [hello_named(&"x".repeat(17)), probe_named(&"x".repeat(17))] {
        let (ty, payload) = migrate::proto::encode(&msg);
        let mut dst = Dest::new();
        let out = dst.on_frame(ty, &payload, None, &host());
        let [
            DestAction::Send(Message::Refuse { reasons }),
            DestAction::Close(_),
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            reasons[0],
            format!(
                "malformed message from the source: {} vm name is 17 bytes, longer than the 16-byte limit",
                msg.name()
            )
        );
    }
}

#[test]
fn an_older_protocol_is_refused_by_its_version() {
    for mut msg in [desc(16).hello(), desc(16).probe()] {
        if let Message::Hello { version, .. } | Message::Probe { version, .. } = &mut msg {
            *version = 1;
        }
        let mut dst = Dest::new();
        let out = dst.on_message(msg, None, &host());
        let [
            DestAction::Send(Message::Refuse { reasons }),
            DestAction::Close(_),
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            reasons,
            &["protocol version mismatch: we speak 3, the peer speaks 1"]
        );
    }
}

#[test]
fn a_host_without_avx512f_refuses_skylake_server_naming_it() {
    let mut d = desc(16);
    d.profile = vcpu::profile::Profile::baseline("skylake-server").unwrap();
    let mut host = host();
    host.offer = common::offer_without(&["avx512f", "avx512bw"], 0);
    for msg in [d.hello(), d.probe()] {
        // Through the codec, as it arrives.
        let (ty, payload) = migrate::proto::encode(&msg);
        let mut dst = Dest::new();
        let out = dst.on_frame(ty, &payload, None, &host);
        let [
            DestAction::Send(Message::Refuse { reasons }),
            DestAction::Close(_),
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            reasons,
            &["CPU profile skylake-server: this host lacks avx512f, avx512bw"]
        );
    }
    // Missing XSAVE state is named too.
    host.offer = common::offer_without(&[], vcpu::xcr0::AVX512);
    let reasons = dest::check(&d.hello(), &host);
    assert_eq!(
        reasons,
        ["CPU profile skylake-server: this host lacks xcr0:opmask, xcr0:zmm_hi256, xcr0:hi16_zmm"]
    );
    // A host that has it all takes it.
    host.offer = vcpu::profile::HostOffer::everything();
    assert!(dest::check(&d.hello(), &host).is_empty());
}

#[test]
fn a_source_of_another_version_is_refused_by_version() {
    // A version-2 Hello: version, name, RAM, a u64 feature mask, no devices.
    let mut p = Vec::new();
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&4u32.to_le_bytes());
    p.extend_from_slice(b"web1");
    p.extend_from_slice(&(1u64 << 16).to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    let mut dst = Dest::new();
    let out = dst.on_frame(32, &p, None, &host());
    let [
        DestAction::Send(Message::Refuse { reasons }),
        DestAction::Close(_),
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        reasons,
        &["protocol version mismatch: we speak 3, the peer speaks 2"]
    );
}
