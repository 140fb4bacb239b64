//! End-to-end migrations between the two engines over a simulated link.

mod common;

use common::{Config, Fault, Sim, SimHost, desc, expect_abort, zero_pages};
use migrate::dest::{self, Dest, DestAction};
use migrate::proto::{Message, PAGE_SIZE, PROTOCOL_VERSION};
use migrate::source::{
    Action, NoConvergence, Policy, RoundReport, STATE_ESTIMATE_BYTES, Source, estimate_downtime_us,
};
use proptest::prelude::*;

fn assert_success(sim: &Sim) {
    assert!(sim.failed.is_none(), "failed: {:?}", sim.failed);
    let summary = sim.done.as_ref().expect("source done");
    assert!(sim.discarded.is_none(), "discarded: {:?}", sim.discarded);
    let snap = sim.snapshot.as_ref().expect("guest paused");
    assert!(
        sim.dmem.data == *snap,
        "destination RAM differs from the source at the pause"
    );
    assert!(
        sim.smem.data == *snap,
        "the source guest ran after the pause"
    );
    let (_, devices) = sim.started.as_ref().expect("started");
    let names: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["serial", "virtio-net"]);
    for ((_, data), dev) in devices.iter().zip(&sim.devices) {
        assert_eq!(data, &dev.value.to_le_bytes().to_vec());
    }
    assert_eq!(summary.rounds as usize, sim.reports.len());
    assert!(summary.pages_sent >= sim.cfg.pages);
    assert_eq!(summary.bytes, sim.wire_bytes);
    let last: &RoundReport = sim.reports.last().expect("rounds");
    assert_eq!(
        summary.last_round_dirty_bytes,
        last.pages_sent * PAGE_SIZE as u64
    );
    assert!(sim.src.rtt_us().is_some());
    for r in &sim.reports {
        assert!(r.lower_bound_us <= r.est_downtime_us, "{r:?}");
    }
}

#[test]
fn idle_guest_migrates_in_two_rounds() {
    let mut sim = Sim::new(Config {
        dirty_per_ms: 0,
        ..Config::default()
    });
    sim.run(5_000);
    assert_success(&sim);
    // Round 0 with nothing dirty converges at once; then the final round.
    assert_eq!(sim.reports.len(), 2);
    assert_eq!(sim.reports[1].pages_sent, 0);
}

#[test]
fn busy_guest_converges_over_several_rounds() {
    let mut sim = Sim::new(Config {
        dirty_per_ms: 6,
        ..Config::default()
    });
    sim.run(5_000);
    assert_success(&sim);
    assert!(sim.reports.len() > 2, "rounds: {:?}", sim.reports);
    let d = sim.done.as_ref().unwrap();
    assert!(d.downtime_us < d.total_us);
}

#[test]
fn mostly_zero_guest_sends_zero_runs() {
    let mut sim = Sim::new(Config {
        pages: 4096,
        initial_nonzero: 40,
        dirty_per_ms: 0,
        ..Config::default()
    });
    sim.run(5_000);
    assert_success(&sim);
    // At most 40 raw pages; the 4056 zero pages cost a few run headers.
    assert!(
        sim.wire_bytes < 40 * PAGE_SIZE as u64 + 8 * 1024,
        "{} bytes on the wire",
        sim.wire_bytes
    );
    assert!(sim.done.as_ref().unwrap().zero_pages >= 4096 - 40);
}

#[test]
fn source_sends_zero_pages_as_runs() {
    let pages = migrate::source::MAX_PAGES_PER_POLL;
    let mut src = Source::new(
        desc(pages),
        vec![(0, pages * PAGE_SIZE as u64)],
        Policy::default(),
        0,
    );
    let mut mem = common::SimMemory::new(pages);
    mem.write(100, 0, &[1]);
    mem.write(101, 0, &[2]);
    let _ = src.poll(&mut mem, 1 << 20, 1_000);
    assert!(src.on_message(Message::Ready, 2_000).is_empty());
    let acts = src.poll(&mut mem, 1 << 20, 3_000);
    let runs: Vec<String> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message::Pages { runs, .. }) => Some(runs),
            _ => None,
        })
        .flat_map(|r| r.runs().map(|r| format!("{r:?}")))
        .collect();
    assert_eq!(runs, ["Zero(0x0 +100)", "Raw(0x64 +2)", "Zero(0x66 +154)"]);
    let r = progress(&src.poll(&mut mem, 1 << 20, 4_000));
    assert_eq!((r.pages_sent, r.zero_pages), (pages, pages - 2));
    // 2 raw pages and 3 run headers, plus Hello, the layout, the Pages
    // header and RoundEnd.
    let hello = migrate::proto::encoded_len(&desc(pages).hello()) as u64;
    assert_eq!(r.bytes, hello + 20 + 8 + 3 * 13 + 2 * 4096 + 20);
}

#[test]
fn hot_guest_is_slowed_then_converges() {
    let mut sim = Sim::new(Config {
        dirty_per_ms: 200,
        hot_pages: 1024,
        policy: Policy {
            downtime_budget_us: 2_000,
            auto_converge_after: 1,
            ..Policy::default()
        },
        ..Config::default()
    });
    sim.run(20_000);
    assert_success(&sim);
    assert!(!sim.slow_seen.is_empty(), "no SlowGuest");
    assert!(sim.slow_seen.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(*sim.slow_seen.last().unwrap() <= 4);
}

#[test]
fn hot_guest_without_auto_converge_aborts_by_policy() {
    let mut sim = Sim::new(Config {
        dirty_per_ms: 200,
        hot_pages: 1024,
        policy: Policy {
            downtime_budget_us: 2_000,
            auto_converge_after: 0,
            max_rounds: 5,
            on_no_convergence: NoConvergence::Abort,
            ..Policy::default()
        },
        ..Config::default()
    });
    sim.run(20_000);
    let why = sim.failed.as_ref().expect("failed");
    assert!(why.contains("no convergence after 5 rounds"), "{why}");
    assert!(sim.discarded.as_ref().unwrap().contains("source aborted"));
    assert!(sim.closed.is_none());
    assert!(sim.running, "the guest resumes on the source");
    assert!(sim.started.is_none());
    assert!(sim.slow_seen.is_empty());
}

#[test]
fn hot_guest_is_forced_by_policy() {
    let mut sim = Sim::new(Config {
        dirty_per_ms: 200,
        hot_pages: 1024,
        policy: Policy {
            downtime_budget_us: 2_000,
            auto_converge_after: 0,
            max_rounds: 3,
            on_no_convergence: NoConvergence::Force,
            ..Policy::default()
        },
        ..Config::default()
    });
    sim.run(20_000);
    assert_success(&sim);
    assert_eq!(sim.reports.len(), 4);
}

#[test]
fn bandwidth_limit_is_respected() {
    let limit = 10_000_000u64; // 10 MB/s = 10 kB per ms, below the link's 50 kB/ms
    let mut sim = Sim::new(Config {
        dirty_per_ms: 1,
        policy: Policy {
            downtime_budget_us: 20_000,
            bandwidth_limit: Some(limit),
            ..Policy::default()
        },
        ..Config::default()
    });
    sim.run(10_000);
    assert_success(&sim);
    let secs_us = sim.now_us;
    let allowed = limit * secs_us / 1_000_000 + 2 * migrate::proto::MAX_MESSAGE as u64;
    assert!(
        sim.wire_bytes <= allowed,
        "{} bytes in {} us",
        sim.wire_bytes,
        secs_us
    );
    // And the measured bandwidth reflects the limit, not the link.
    let r0 = &sim.reports[0];
    assert!(r0.mib_per_s < 12.0, "{r0:?}");
}

#[test]
fn refuse_lists_every_blocker() {
    let d = desc(1024);
    let host = SimHost::new(
        1024 * 1024,
        common::offer_without(&["avx"], 0),
        vec!["serial".into()],
    );
    let mut hello = d.hello();
    if let Message::Hello { version, .. } = &mut hello {
        *version = PROTOCOL_VERSION + 1;
    }
    let reasons = dest::check(&hello, &host);
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("version"));
    assert_eq!(
        reasons[1],
        "not enough memory: the guest needs 4 MiB, 1 MiB free"
    );
    assert_eq!(reasons[2], "CPU profile haswell: this host lacks avx");
    assert_eq!(
        reasons[3],
        "device model virtio-net not available on this host"
    );

    // Through both engines: the source fails listing them.
    let mut src = Source::new(d.clone(), vec![(0, 1024 * 4096)], Policy::default(), 0);
    let mut dst = Dest::new();
    let mut mem = common::SimMemory::new(1024);
    let acts = src.poll(&mut mem, 1 << 20, 0);
    let Some(Action::Send(hello)) = acts.into_iter().next() else {
        panic!("no Hello")
    };
    let out = dst.on_message(hello, None, &host);
    let [DestAction::Send(refuse), DestAction::Close(_)] = &out[..] else {
        panic!("{out:?}")
    };
    let acts = src.on_message(refuse.clone(), 1);
    let [Action::Failed(why)] = &acts[..] else {
        panic!("{acts:?}")
    };
    assert!(
        why.contains("1 MiB free") && why.contains("lacks avx") && why.contains("virtio-net"),
        "{why}"
    );
    assert!(!why.contains("version"));
}

#[test]
fn reservation_failure_refuses() {
    let d = desc(16);
    let host = common::host_for(&d);
    let mut dst = Dest::new();
    let out = dst.on_message(d.hello(), None, &host);
    assert!(matches!(out[0], DestAction::Reserve { .. }));
    let out = dst.refuse("out of contiguous memory");
    assert_eq!(
        out[0],
        DestAction::Send(Message::Refuse {
            reasons: vec!["out of contiguous memory".into()]
        })
    );
    assert!(matches!(out[1], DestAction::Discard(_)));
}

/// Drives a destination through Hello + layout for `pages` pages.
fn ready_dest(pages: u64) -> (Dest, SimHost, common::DestMemory) {
    let d = desc(pages);
    let host = common::host_for(&d);
    let mut dst = Dest::new();
    dst.on_message(d.hello(), None, &host);
    let out = dst.on_message(
        Message::MemoryLayout {
            regions: vec![(0, pages * 4096)],
        },
        None,
        &host,
    );
    assert!(out.is_empty(), "{out:?}");
    (dst, host, common::DestMemory::new(pages))
}

#[test]
fn dest_rejects_out_of_order_and_bad_pages() {
    let d = desc(16);
    let host = common::host_for(&d);
    let page = |gfn| zero_pages(gfn, 1);

    let mut dst = Dest::new();
    let out = dst.on_message(page(0), None, &host);
    assert!(
        matches!(&out[..], [DestAction::Send(Message::Abort { reason }), DestAction::Close(_)] if reason == "Pages before Hello"),
        "{out:?}"
    );

    let mut dst = Dest::new();
    dst.on_message(d.hello(), None, &host);
    expect_abort(
        &dst.on_message(page(0), None, &host),
        "Pages before MemoryLayout",
    );

    let mut dst = Dest::new();
    dst.on_message(d.hello(), None, &host);
    expect_abort(&dst.on_message(d.hello(), None, &host), "second Hello");

    let (mut dst, host, mut mem) = ready_dest(16);
    expect_abort(
        &dst.on_message(page(16), Some(&mut mem), &host),
        "outside the memory layout",
    );

    let (mut dst, host, _) = ready_dest(16);
    expect_abort(
        &dst.on_message(Message::Commit, None, &host),
        "Commit before the guest was paused",
    );

    let (mut dst, host, _) = ready_dest(16);
    expect_abort(
        &dst.on_message(Message::VcpuState(vec![1]), None, &host),
        "VcpuState before Pause",
    );

    let (mut dst, host, mut mem) = ready_dest(16);
    dst.on_message(page(3), Some(&mut mem), &host);
    expect_abort(
        &dst.on_message(
            Message::RoundEnd {
                round: 0,
                pages_sent: 2,
                dirty_left: 0,
            },
            None,
            &host,
        ),
        "the source sent 2 pages, 1 arrived",
    );

    // All pages and state, but Commit before a device's state.
    let (mut dst, host, mut mem) = ready_dest(16);
    let all = zero_pages(0, 16);
    assert!(dst.on_message(all, Some(&mut mem), &host).is_empty());
    assert!(
        dst.on_message(
            Message::RoundEnd {
                round: 0,
                pages_sent: 16,
                dirty_left: 0
            },
            None,
            &host
        )
        .is_empty()
    );
    assert!(dst.on_message(Message::Pause, None, &host).is_empty());
    expect_abort(
        &dst.on_message(Message::Commit, None, &host),
        "Commit before the vCPU state",
    );

    let (mut dst, host, _) = ready_dest(16);
    dst.on_message(Message::Pause, None, &host);
    dst.on_message(Message::VcpuState(vec![]), None, &host);
    expect_abort(
        &dst.on_message(Message::Commit, None, &host),
        "16 pages never received",
    );

    let (mut dst, host, mut mem) = ready_dest(16);
    let all = zero_pages(0, 16);
    dst.on_message(all, Some(&mut mem), &host);
    dst.on_message(
        Message::RoundEnd {
            round: 0,
            pages_sent: 16,
            dirty_left: 0,
        },
        None,
        &host,
    );
    dst.on_message(Message::Pause, None, &host);
    dst.on_message(Message::VcpuState(vec![]), None, &host);
    dst.on_message(
        Message::DeviceState {
            name: "serial".into(),
            data: vec![],
        },
        None,
        &host,
    );
    expect_abort(
        &dst.on_message(Message::Commit, None, &host),
        "state of device virtio-net",
    );
    // After the end, everything is ignored.
    assert!(dst.on_message(Message::Commit, None, &host).is_empty());
    assert!(dst.on_link_lost("x").is_empty());
}

#[test]
fn source_rejects_unexpected_messages_and_cancels() {
    let d = desc(16);
    let mut src = Source::new(d.clone(), vec![(0, 16 * 4096)], Policy::default(), 0);
    let acts = src.on_message(Message::Committed, 5);
    assert!(matches!(&acts[0], Action::Send(Message::Abort { .. })));
    assert!(matches!(&acts[1], Action::Failed(w) if w.contains("unexpected Committed")));
    assert!(src.on_message(Message::Ready, 6).is_empty());

    let mut src = Source::new(d.clone(), vec![(0, 16 * 4096)], Policy::default(), 0);
    let acts = src.cancel("operator");
    assert_eq!(acts.len(), 2);
    assert!(src.cancel("again").is_empty());

    let mut src = Source::new(d, vec![(4096, 4096), (0, 4096)], Policy::default(), 0);
    let mut mem = common::SimMemory::new(16);
    let acts = src.poll(&mut mem, 1 << 20, 0);
    assert!(matches!(&acts[..], [Action::Failed(w)] if w.contains("invalid memory layout")));
}

#[test]
fn source_refuses_a_description_the_protocol_cannot_carry() {
    let bad = |f: fn(&mut migrate::VmDescription)| {
        let mut d = desc(16);
        f(&mut d);
        let mut src = Source::new(d, vec![(0, 16 * 4096)], Policy::default(), 0);
        let acts = src.poll(&mut common::SimMemory::new(16), 1 << 20, 0);
        let [Action::Failed(why)] = &acts[..] else {
            panic!("{acts:?}")
        };
        why.clone()
    };
    assert!(bad(|d| d.vm = "web 1".into()).contains("bad VM name 'web 1'"));
    assert!(bad(|d| d.devices = vec!["x".into(); 17]).contains("17 devices"));
    assert!(bad(|d| d.devices = vec!["x".repeat(33)]).contains("longer than 32 bytes"));
    let mut src = Source::new(desc(16), vec![(0, 4096); 65], Policy::default(), 0);
    let acts = src.poll(&mut common::SimMemory::new(16), 1 << 20, 0);
    assert!(
        matches!(&acts[..], [Action::Failed(w)] if w.contains("65 regions")),
        "{acts:?}"
    );
}

#[test]
fn room_smaller_than_a_page_waits() {
    let d = desc(16);
    let mut src = Source::new(d, vec![(0, 16 * 4096)], Policy::default(), 0);
    let mut mem = common::SimMemory::new(16);
    mem.write(3, 0, &[1]);
    assert!(matches!(
        &src.poll(&mut mem, 1 << 20, 0)[..],
        [Action::Send(Message::Hello { .. })]
    ));
    assert!(src.on_message(Message::Ready, 1).is_empty());
    // Room for the layout and one zero run (pages 0..3) only.
    let acts = src.poll(&mut mem, 20 + 8 + 13, 2);
    assert!(
        matches!(
            &acts[..],
            [
                Action::Send(Message::MemoryLayout { .. }),
                Action::Send(Message::Pages { .. })
            ]
        ),
        "{acts:?}"
    );
    assert!(src.poll(&mut mem, 100, 3).is_empty());
    let acts = src.poll(&mut mem, 1 << 20, 4);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::Send(Message::RoundEnd {
                round: 0,
                pages_sent: 16,
                ..
            })
        )),
        "{acts:?}"
    );
}

/// Bytes of the `Send` actions in `acts`.
fn sent_bytes(acts: &[Action]) -> u64 {
    acts.iter()
        .map(|a| match a {
            Action::Send(m) => migrate::proto::encoded_len(m) as u64,
            _ => 0,
        })
        .sum()
}

/// Bytes of the `Send` actions in `acts` up to the round's end (the
/// `Progress` report), what the engine had handed out when it estimated.
fn sent_until_progress(acts: &[Action]) -> u64 {
    let end = acts
        .iter()
        .position(|a| matches!(a, Action::Progress(_)))
        .unwrap_or(acts.len());
    sent_bytes(&acts[..end])
}

fn progress(acts: &[Action]) -> RoundReport {
    acts.iter()
        .find_map(|a| match a {
            Action::Progress(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Progress in {acts:?}"))
}

/// A 16-page source driven by hand to the end of round 0: `Hello` at 1 ms,
/// `Ready` at 4.5 ms, `MemoryLayout` and a few pages at 10 ms, pages 1 and 5
/// dirtied, the rest of round 0 at 20 ms (after `set_in_flight(in_flight)`
/// if given).
struct Scripted {
    src: Source,
    mem: common::SimMemory,
    /// Bytes handed out since `MemoryLayout` up to the end of round 0 (what
    /// the bandwidth counts there).
    bytes: u64,
    /// The actions of the poll that ended round 0.
    acts: Vec<Action>,
}

const LAYOUT_AT: u64 = 10_000;

fn scripted_round0(budget_us: u64, in_flight: Option<u64>) -> Scripted {
    let mut src = Source::new(
        desc(16),
        vec![(0, 16 * 4096)],
        Policy {
            downtime_budget_us: budget_us,
            ..Policy::default()
        },
        0,
    );
    let mut mem = common::SimMemory::new(16);
    for g in 0..16 {
        mem.write(g, 0, &[g as u8 + 1; 64]);
    }
    assert!(src.poll(&mut mem, 0, 500).is_empty(), "no room for Hello");
    let acts = src.poll(&mut mem, 1 << 20, 1_000);
    assert!(matches!(&acts[..], [Action::Send(Message::Hello { .. })]));
    assert_eq!(src.rtt_us(), None);
    assert!(src.on_message(Message::Ready, 4_500).is_empty());
    assert_eq!(
        src.rtt_us(),
        Some(3_500),
        "Hello handed out at 1 ms, Ready at 4.5 ms"
    );
    let acts = src.poll(&mut mem, 3 * 4096, LAYOUT_AT);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::Send(Message::RoundEnd { .. }))),
        "{acts:?}"
    );
    let mut bytes = sent_bytes(&acts);
    mem.write(1, 8, &[0xAA; 8]);
    mem.write(5, 8, &[0xBB; 8]);
    if let Some(q) = in_flight {
        src.set_in_flight(q);
    }
    let acts = src.poll(&mut mem, 1 << 20, 20_000);
    bytes += sent_until_progress(&acts);
    let r = progress(&acts);
    assert_eq!((r.round, r.pages_sent, r.dirty_left), (0, 16, 2));
    Scripted {
        src,
        mem,
        bytes,
        acts,
    }
}

#[test]
fn rtt_is_measured_from_hello_to_ready() {
    let s = scripted_round0(u64::MAX, None);
    assert_eq!(s.src.rtt_us(), Some(3_500));
    // The estimate is the formula with that round trip and the measured bandwidth.
    let bw = s.bytes * 1_000_000 / (20_000 - LAYOUT_AT);
    let r = progress(&s.acts);
    assert_eq!(
        r.est_downtime_us,
        estimate_downtime_us(2, 0, Some(bw), 3_500)
    );
    assert_eq!(r.lower_bound_us, 2 * PAGE_SIZE as u64 * 1_000_000 / bw);
    assert!(r.est_downtime_us > r.lower_bound_us + 3_500);
}

#[test]
fn in_flight_bytes_delay_the_pause() {
    // Learn the estimate without any in-flight bytes, then make it the budget.
    let est = progress(&scripted_round0(u64::MAX, None).acts).est_downtime_us;
    let fits = scripted_round0(est, None);
    assert!(fits.acts.contains(&Action::PauseGuest), "{:?}", fits.acts);

    // Same dirty set, but 64 KiB still queued in the channel: no pause.
    let queued = scripted_round0(est, Some(64 * 1024));
    assert!(
        !queued.acts.contains(&Action::PauseGuest),
        "{:?}",
        queued.acts
    );
    let r = progress(&queued.acts);
    let bw = queued.bytes * 1_000_000 / (20_000 - LAYOUT_AT);
    assert!(r.est_downtime_us > est);
    // The queue plus what that poll handed out itself, on top of the rest.
    let last_poll = sent_until_progress(&queued.acts);
    assert_eq!(
        r.est_downtime_us,
        estimate_downtime_us(2, 64 * 1024 + last_poll, Some(bw), 3_500)
    );
    // The lower bound ignores in-flight bytes.
    assert_eq!(r.lower_bound_us, progress(&fits.acts).lower_bound_us);

    // Told 0 in flight: the bytes the round-ending poll handed out still count.
    let zero = scripted_round0(est, Some(0));
    assert!(!zero.acts.contains(&Action::PauseGuest));
    assert_eq!(
        progress(&zero.acts).est_downtime_us,
        estimate_downtime_us(2, last_poll, Some(bw), 3_500)
    );
}

#[test]
fn summary_lower_bound_is_final_dirty_bytes_over_bandwidth() {
    let Scripted {
        mut src,
        mut mem,
        mut bytes,
        acts,
    } = scripted_round0(u64::MAX, None);
    assert!(acts.contains(&Action::PauseGuest));
    // The final round: pages 1 and 5, then the state is asked for.
    let acts = src.poll(&mut mem, 1 << 20, 21_000);
    bytes += sent_bytes(&acts);
    let r = progress(&acts);
    assert_eq!((r.round, r.pages_sent), (1, 2));
    assert_eq!(acts.last(), Some(&Action::NeedState));
    src.provide_state(
        vec![7; 512],
        vec![
            ("serial".into(), vec![1; 8]),
            ("virtio-net".into(), vec![2; 8]),
        ],
    );
    let acts = src.poll(&mut mem, 1 << 20, 22_000);
    assert!(matches!(acts.last(), Some(Action::Send(Message::Commit))));
    bytes += sent_bytes(&acts);
    // The state and Commit fit in the estimate's allowance.
    assert!(sent_bytes(&acts) <= STATE_ESTIMATE_BYTES);
    let acts = src.on_message(Message::Committed, 30_000);
    let [Action::Done(s)] = &acts[..] else {
        panic!("{acts:?}")
    };
    let bw = bytes * 1_000_000 / (30_000 - LAYOUT_AT);
    assert_eq!(s.last_round_dirty_bytes, 2 * PAGE_SIZE as u64);
    assert_eq!(s.lower_bound_us, s.last_round_dirty_bytes * 1_000_000 / bw);
    assert_eq!(s.downtime_us, 10_000);
    assert!(s.lower_bound_us < s.downtime_us);
    let hello = migrate::proto::encoded_len(&desc(16).hello()) as u64;
    assert_eq!(s.bytes, bytes + hello);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn destination_equals_source_at_pause(
        seed in any::<u64>(),
        dirty_per_ms in 0u64..40,
        hot_pages in 1u64..1024,
        zero_one_in in 1u64..16,
        buffer in 8_000usize..2_000_000,
        limit in proptest::option::of(20_000_000u64..100_000_000),
    ) {
        let mut sim = Sim::new(Config {
            seed, dirty_per_ms, hot_pages, zero_one_in, buffer,
            policy: Policy {
                downtime_budget_us: 2_000,
                bandwidth_limit: limit,
                auto_converge_after: 2,
                on_no_convergence: NoConvergence::Force,
                ..Policy::default()
            },
            ..Config::default()
        });
        sim.run(20_000);
        assert_success(&sim);
    }

    #[test]
    fn link_loss_anywhere_fails_cleanly(seed in any::<u64>(), at in 0usize..36, dirty_per_ms in 0u64..10) {
        let mut sim = Sim::new(Config { seed, dirty_per_ms, fault: Fault::CutAt(at), ..Config::default() });
        sim.run(20_000);
        prop_assert!(sim.finished());
        if sim.link_cut {
            prop_assert!(sim.done.is_none());
            prop_assert!(sim.failed.as_deref().unwrap().contains("link lost"));
            prop_assert!(sim.dest_end().unwrap().contains("link lost"));
            // Discard exactly when something was reserved (checked by the sim), so
            // once the Hello arrived.
            prop_assert_eq!(sim.discarded.is_some(), at > 0);
            prop_assert!(sim.started.is_none());
            prop_assert!(sim.running, "the guest resumes on the source");
        } else {
            assert_success(&sim);
        }
    }

    #[test]
    fn corrupted_frame_aborts(seed in any::<u64>(), at in 0usize..36) {
        let mut sim = Sim::new(Config { seed, dirty_per_ms: 3, fault: Fault::CorruptAt(at), ..Config::default() });
        sim.run(20_000);
        prop_assert!(sim.finished());
        if sim.delivered > at {
            prop_assert!(sim.dest_end().unwrap().contains("malformed message"));
            let failed = sim.failed.as_deref().unwrap();
            if at == 0 {
                // A broken Hello is refused, with the decoder's reason.
                prop_assert!(sim.closed.is_some());
                prop_assert!(failed.contains("destination refused: malformed message"), "{}", failed);
            } else {
                prop_assert!(sim.dest_sent_abort);
                prop_assert!(sim.discarded.is_some());
                prop_assert!(failed.contains("destination aborted"), "{}", failed);
            }
            prop_assert!(sim.started.is_none());
            prop_assert!(sim.running);
        } else {
            assert_success(&sim);
        }
    }
}

#[test]
fn reported_in_flight_keeps_the_downtime_within_budget() {
    for seed in 1..4 {
        let mut sim = Sim::new(Config {
            seed,
            dirty_per_ms: 6,
            report_in_flight: true,
            policy: Policy {
                downtime_budget_us: 5_000,
                ..Policy::default()
            },
            ..Config::default()
        });
        sim.run(20_000);
        assert_success(&sim);
        let s = sim.done.as_ref().unwrap();
        // The link's queue is in the estimate, so the pause waits for it
        // (one empty round per poll while it drains, not 30 in a row).
        let before = &sim.reports[sim.reports.len() - 2];
        assert!(before.est_downtime_us <= 5_000, "{before:?}");
        assert!(s.downtime_us <= 5_000, "seed {seed}: {s:?}");
        assert!(s.lower_bound_us <= s.downtime_us, "{s:?}");
    }
}

#[test]
fn one_poll_reads_a_bounded_number_of_pages() {
    // All-zero RAM costs the link a marker a page: the cap, not the room,
    // must stop the scan so the guest gets its turn.
    let pages = 4 * migrate::source::MAX_PAGES_PER_POLL;
    let mut src = Source::new(
        desc(pages),
        vec![(0, pages * PAGE_SIZE as u64)],
        Policy::default(),
        0,
    );
    let mut mem = common::SimMemory::new(pages);
    let _ = src.poll(&mut mem, 1 << 20, 1_000);
    assert!(src.on_message(Message::Ready, 2_000).is_empty());
    let mut polls = 0;
    let mut sent = 0u64;
    while sent < pages {
        let acts = src.poll(&mut mem, 1 << 20, 3_000 + polls * 10);
        let n: u64 = acts
            .iter()
            .map(|a| match a {
                Action::Send(Message::Pages { runs, .. }) => u64::from(runs.page_count()),
                _ => 0,
            })
            .sum();
        assert!(
            n <= migrate::source::MAX_PAGES_PER_POLL,
            "{n} pages in one poll"
        );
        sent += n;
        polls += 1;
        assert!(polls < 100, "round 0 never finished");
    }
    assert!(polls >= 4, "{polls} polls");
}

#[test]
fn once_slowed_each_stalled_round_steps_again() {
    // Every page is written again every round: the dirty set never shrinks.
    let mut src = Source::new(
        desc(16),
        vec![(0, 16 * PAGE_SIZE as u64)],
        Policy {
            downtime_budget_us: 0,
            max_rounds: 100,
            ..Policy::default()
        },
        0,
    );
    let mut mem = common::SimMemory::new(16);
    let _ = src.poll(&mut mem, 1 << 20, 1_000);
    assert!(src.on_message(Message::Ready, 2_000).is_empty());
    let mut steps = Vec::new();
    let mut now = 3_000;
    while steps.len() < 4 {
        for g in 0..16 {
            mem.write(g, 0, &[now as u8 | 1; 8]);
        }
        let mut round = None;
        for a in src.poll(&mut mem, 1 << 20, now) {
            match a {
                Action::Progress(r) => round = Some(r.round),
                Action::SlowGuest(level) => steps.push((round.unwrap(), level)),
                _ => {}
            }
        }
        now += 1_000;
        assert!(now < 1_000_000, "no auto-converge: {steps:?}");
    }
    // Three stalled rounds (1, 2, 3 after the first) for the first level,
    // then one per level.
    let rounds: Vec<u32> = steps.iter().map(|s| s.0).collect();
    let levels: Vec<u8> = steps.iter().map(|s| s.1).collect();
    assert_eq!(levels, [1, 2, 3, 4]);
    assert!(
        rounds.windows(2).all(|w| w[1] == w[0] + 1),
        "a level per stalled round once slowed: {steps:?}"
    );
}
