//! Wire protocol: round trips, fuzzing, size limits.

use migrate::proto::{
    self, MAX_MESSAGE, MAX_PAGES_PER_MESSAGE, Message, PAGE_SIZE, PAGES_HEADER_WIRE, Page, PageRun,
    PageRuns, PagesBuilder, ProtoError, RUN_HEADER_WIRE, decode, encode, encoded_len,
    pages_messages,
};
use proptest::prelude::*;
use vcpu::profile::{FEATURES, FeatureSet, HostOffer, Profile, ProfileError, RandExits};

/// A CPU profile: a baseline as defined, or `host` on a host with any
/// subset of the known features and XCR0 components.
fn profile() -> impl Strategy<Value = Profile> {
    let names: Vec<&'static str> = FEATURES.iter().map(|f| f.name).collect();
    prop_oneof![
        prop::sample::select(vec!["x86-64", "haswell", "skylake-server"])
            .prop_map(|n| Profile::baseline(n).unwrap()),
        (
            prop::sample::subsequence(names, 0..=FEATURES.len()),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(features, xcr0, signature)| {
                let host = HostOffer {
                    features: FeatureSet::from_names(features).unwrap(),
                    xcr0: xcr0 & vcpu::xcr0::OFFERABLE | 3,
                    signature,
                };
                Profile::resolve("host", &host, RandExits::BOTH).unwrap()
            }),
    ]
}

/// A raw page that is not all zeros.
fn raw_page(fill: u8, x: u64) -> [u8; PAGE_SIZE] {
    let mut v = [fill; PAGE_SIZE];
    v[(x % PAGE_SIZE as u64) as usize] = x as u8 | 1;
    v
}

/// Pages to push one by one: `(gfn, None)` a zero page, `(gfn, Some(..))` a
/// raw one. Runs of consecutive frames, sometimes adjacent, sometimes of
/// the same kind, sometimes overlapping.
fn page_list() -> impl Strategy<Value = Vec<(u64, Option<(u8, u64)>)>> {
    prop::collection::vec(
        (
            0u64..64,
            prop::option::weighted(0.3, (any::<u8>(), any::<u64>())),
            1u64..6,
        ),
        0..8,
    )
    .prop_map(|runs| {
        let mut out = Vec::new();
        for (gfn, raw, n) in runs {
            // Start where the previous run ended half the time.
            let start = match out.last() {
                Some(&(g, _)) if gfn % 2 == 0 => g + 1,
                _ => gfn,
            };
            for i in 0..n {
                out.push((start + i, raw.map(|(f, x)| (f, x + i))));
            }
        }
        out
    })
}

fn push_all(list: &[(u64, Option<(u8, u64)>)]) -> PageRuns {
    let mut runs = PageRuns::new();
    for &(gfn, raw) in list {
        let data = raw.map(|(f, x)| raw_page(f, x));
        let page = data.as_ref().map_or(Page::Zero, Page::Raw);
        runs.push(gfn, page).unwrap();
    }
    runs
}

/// What a page list reads back as: `(gfn, contents)`.
fn expected(list: &[(u64, Option<(u8, u64)>)]) -> Vec<(u64, Option<Vec<u8>>)> {
    list.iter()
        .map(|&(g, raw)| (g, raw.map(|(f, x)| raw_page(f, x).to_vec())))
        .collect()
}

fn read_back(runs: &PageRuns) -> Vec<(u64, Option<Vec<u8>>)> {
    runs.pages()
        .map(|(g, p)| (g, p.data().map(|d| d.to_vec())))
        .collect()
}

fn message() -> impl Strategy<Value = Message> {
    // Within the decoder's limits: a char is at most 4 bytes.
    let s = || ".{0,12}";
    let name = || ".{0,4}";
    let device = || ".{0,8}";
    // Hello and Probe carry the same fields. Only our version decodes
    // (the rest of another version's Hello may be laid out differently).
    let intro = || {
        (
            Just(proto::PROTOCOL_VERSION),
            name(),
            any::<u64>(),
            profile(),
            prop::collection::vec(device(), 0..4),
        )
    };
    prop_oneof![
        intro().prop_map(
            |(version, vm, mem_bytes, profile, devices)| Message::Hello {
                version,
                vm,
                mem_bytes,
                profile,
                devices
            }
        ),
        intro().prop_map(
            |(version, vm, mem_bytes, profile, devices)| Message::Probe {
                version,
                vm,
                mem_bytes,
                profile,
                devices
            }
        ),
        Just(Message::Ready),
        prop::collection::vec(s(), 0..4).prop_map(|reasons| Message::Refuse { reasons }),
        prop::collection::vec((any::<u64>(), any::<u64>()), 0..5)
            .prop_map(|regions| Message::MemoryLayout { regions }),
        (any::<u32>(), 0u64..1 << 40, page_list()).prop_map(|(round, base, list)| {
            let list: Vec<_> = list.into_iter().map(|(g, r)| (base + g, r)).collect();
            Message::Pages {
                round,
                runs: push_all(&list),
            }
        }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(round, pages_sent, dirty_left)| {
            Message::RoundEnd {
                round,
                pages_sent,
                dirty_left,
            }
        }),
        Just(Message::Pause),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Message::VcpuState),
        (device(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(name, data)| Message::DeviceState { name, data }),
        Just(Message::Commit),
        Just(Message::Committed),
        s().prop_map(|reason| Message::Abort { reason }),
    ]
}

/// A decoded `Pages` reads back every page it claims, within the limits.
fn check_decoded(r: Result<Message, ProtoError>) -> Result<(), TestCaseError> {
    if let Ok(Message::Pages { runs, .. }) = r {
        prop_assert!(runs.page_count() <= MAX_PAGES_PER_MESSAGE);
        prop_assert_eq!(runs.pages().count(), runs.page_count() as usize);
        prop_assert_eq!(runs.runs().count(), runs.run_count() as usize);
        prop_assert!(runs.runs().all(|r| !r.is_empty()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn roundtrip(msg in message()) {
        let (ty, payload) = encode(&msg);
        prop_assert!(ty >= 32);
        prop_assert_eq!(payload.len(), encoded_len(&msg));
        prop_assert_eq!(decode(ty, &payload), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic(ty in 0u8..64, payload in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decoded(decode(ty, &payload))?;
    }

    #[test]
    fn random_page_runs_never_panic(runs in prop::collection::vec((0u8..3, any::<u64>(), 0u32..4, any::<u8>()), 0..6)) {
        // Plausible run headers followed by some bytes: whatever decodes reads back whole.
        let headers: Vec<_> = runs.iter().map(|&(k, g, n, _)| (k, g, n)).collect();
        let mut p = pages_frame(&headers);
        for &(_, _, n, fill) in &runs {
            p.extend(std::iter::repeat_n(fill, (n as usize * PAGE_SIZE) % (3 * PAGE_SIZE)));
        }
        check_decoded(decode(36, &p))?;
    }

    #[test]
    fn mutated_messages_never_panic(msg in message(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let (ty, mut payload) = encode(&msg);
        if !payload.is_empty() {
            let i = pos % payload.len();
            payload[i] = byte;
            check_decoded(decode(ty, &payload))?;
            payload.truncate(cut % payload.len());
            // A strictly shorter payload never decodes to the same message.
            prop_assert_ne!(decode(ty, &payload), Ok(msg));
        }
    }

    #[test]
    fn page_runs_round_trip_page_by_page(list in page_list(), round in any::<u32>()) {
        let runs = push_all(&list);
        prop_assert_eq!(read_back(&runs), expected(&list));
        prop_assert_eq!(runs.page_count() as usize, list.len());
        // Merged exactly where a page follows the previous one with the same kind.
        let breaks = list
            .iter()
            .enumerate()
            .filter(|&(i, &(g, raw))| {
                i == 0 || {
                    let (pg, praw) = list[i - 1];
                    pg + 1 != g || praw.is_some() != raw.is_some()
                }
            })
            .count();
        prop_assert_eq!(runs.run_count() as usize, breaks);
        prop_assert_eq!(
            runs.runs().map(|r| r.len()).sum::<u64>(),
            list.len() as u64
        );
        let zero_runs = runs.runs().filter(|r| matches!(r, PageRun::Zero { .. })).count();
        let raw = list.iter().filter(|(_, r)| r.is_some()).count();
        prop_assert_eq!(
            runs.wire_len(),
            runs.run_count() as usize * RUN_HEADER_WIRE + raw * PAGE_SIZE
        );
        prop_assert!(zero_runs <= runs.run_count() as usize);
        let msg = Message::Pages { round, runs };
        let (ty, payload) = encode(&msg);
        prop_assert_eq!(payload.len(), encoded_len(&msg));
        let back = decode(ty, &payload);
        prop_assert_eq!(&back, &Ok(msg));
        let Ok(Message::Pages { runs, .. }) = back else { unreachable!() };
        prop_assert_eq!(read_back(&runs), expected(&list));
    }

    #[test]
    fn pages_messages_fit_and_preserve_order(
        gfns in prop::collection::btree_set(0u64..5000, 0..600),
        raw_every in 1usize..5,
    ) {
        let data: Vec<[u8; PAGE_SIZE]> = gfns.iter().map(|&g| [g as u8 | 1; PAGE_SIZE]).collect();
        let pages: Vec<(u64, Page)> = gfns.iter().zip(&data).enumerate().map(|(i, (&g, d))| {
            (g, if i % raw_every == 0 { Page::Raw(d) } else { Page::Zero })
        }).collect();
        let msgs = pages_messages(7, pages.clone().into_iter());
        let mut back = Vec::new();
        for m in &msgs {
            let (ty, payload) = encode(m);
            prop_assert!(payload.len() <= MAX_MESSAGE);
            let Ok(Message::Pages { round: 7, runs }) = decode(ty, &payload) else { panic!() };
            for r in runs.runs() {
                prop_assert!(!r.is_empty());
            }
            back.extend(runs.pages().map(|(g, p)| (g, p.data().map(|d| d.to_vec()))));
        }
        let pages: Vec<_> = pages.iter().map(|(g, p)| (*g, p.data().map(|d| d.to_vec()))).collect();
        prop_assert_eq!(back, pages);
    }
}

#[test]
fn frame_types_are_distinct_and_above_reserved() {
    let all = [
        Message::Hello {
            version: 1,
            vm: String::new(),
            mem_bytes: 0,
            profile: x86_64(),
            devices: vec![],
        },
        Message::Ready,
        Message::Refuse { reasons: vec![] },
        Message::MemoryLayout { regions: vec![] },
        Message::Pages {
            round: 0,
            runs: PageRuns::new(),
        },
        Message::RoundEnd {
            round: 0,
            pages_sent: 0,
            dirty_left: 0,
        },
        Message::Pause,
        Message::VcpuState(vec![]),
        Message::DeviceState {
            name: String::new(),
            data: vec![],
        },
        Message::Commit,
        Message::Committed,
        Message::Abort {
            reason: String::new(),
        },
        Message::Probe {
            version: 1,
            vm: String::new(),
            mem_bytes: 0,
            profile: x86_64(),
            devices: vec![],
        },
    ];
    let types: Vec<u8> = all.iter().map(Message::frame_type).collect();
    assert_eq!(types, (32..=proto::LAST_TYPE).collect::<Vec<u8>>());
    let names: std::collections::BTreeSet<_> = all.iter().map(Message::name).collect();
    assert_eq!(names.len(), all.len());
}

#[test]
fn precise_errors() {
    assert_eq!(decode(5, &[]), Err(ProtoError::UnknownType(5)));
    assert_eq!(decode(45, &[]), Err(ProtoError::UnknownType(45)));
    assert_eq!(decode(60, &[]), Err(ProtoError::UnknownType(60)));
    assert_eq!(decode(33, &[0]), Err(ProtoError::TrailingBytes(1)));
    assert_eq!(
        decode(37, &[0; 19]),
        Err(ProtoError::Truncated {
            what: "RoundEnd dirty_left"
        })
    );
    assert_eq!(
        decode(36, &pages_frame(&[(7, 0, 1)])),
        Err(ProtoError::BadRunKind(7))
    );
    assert_eq!(
        decode(36, &pages_frame(&[(0, 5, 0)])),
        Err(ProtoError::EmptyRun(5))
    );
    let mut short = pages_frame(&[(1, 0, 2)]);
    short.extend_from_slice(&[1; 2 * PAGE_SIZE - 1]);
    assert_eq!(
        decode(36, &short),
        Err(ProtoError::Truncated {
            what: "raw page data"
        })
    );
    short.push(1);
    assert!(decode(36, &short).is_ok());
    assert_eq!(
        decode(43, &[2, 0, 0, 0, 0xff, 0xfe]),
        Err(ProtoError::BadUtf8 {
            what: "Abort reason"
        })
    );
    assert_eq!(
        decode(41, &vec![0; MAX_MESSAGE + 1]),
        Err(ProtoError::TooLarge(MAX_MESSAGE + 1))
    );
    // A huge count with no bytes behind it is refused without allocating.
    assert_eq!(
        decode(35, &u32::MAX.to_le_bytes()),
        Err(ProtoError::Truncated {
            what: "MemoryLayout regions"
        })
    );
    assert_eq!(
        decode(36, &pages_frame(&[(0, u64::MAX, 1)])),
        Err(ProtoError::GfnOverflow {
            first_gfn: u64::MAX,
            pages: 1
        })
    );
    assert_eq!(
        proto::check_version(1).unwrap_err().to_string(),
        "protocol version mismatch: we speak 3, the peer speaks 1"
    );
}

/// A round-0 `Pages` payload of run headers `(kind, first_gfn, count)` (no page data).
fn pages_frame(runs: &[(u8, u64, u32)]) -> Vec<u8> {
    let mut p = 0u32.to_le_bytes().to_vec();
    p.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for &(kind, gfn, n) in runs {
        p.push(kind);
        p.extend_from_slice(&gfn.to_le_bytes());
        p.extend_from_slice(&n.to_le_bytes());
    }
    p
}

#[test]
fn zero_pages_travel_as_runs() {
    let mut one = PageRuns::new();
    one.push(9, Page::Zero).unwrap();
    let mut many = PageRuns::new();
    for g in 9..9 + 1000 {
        assert_eq!(many.cost(g, &Page::Zero), Some(if g == 9 { 13 } else { 0 }));
        many.push(g, Page::Zero).unwrap();
    }
    assert_eq!(one.wire_len(), RUN_HEADER_WIRE);
    assert_eq!(many.wire_len(), RUN_HEADER_WIRE);
    assert_eq!(many.run_count(), 1);
    assert_eq!(
        many.runs().collect::<Vec<_>>(),
        [PageRun::Zero {
            first_gfn: 9,
            count: 1000
        }]
    );
    assert_eq!(Page::from_bytes(&[0; PAGE_SIZE]), Page::Zero);
    let mut p = [0u8; PAGE_SIZE];
    p[4095] = 1;
    assert!(matches!(Page::from_bytes(&p), Page::Raw(_)));
    // A raw page after zero pages starts a new run; the next raw page joins it.
    assert_eq!(
        many.cost(1009, &Page::Raw(&p)),
        Some(RUN_HEADER_WIRE + PAGE_SIZE)
    );
    many.push(1009, Page::Raw(&p)).unwrap();
    assert_eq!(many.cost(1010, &Page::Raw(&p)), Some(PAGE_SIZE));
    assert_eq!(
        many.cost(1011, &Page::Raw(&p)),
        Some(RUN_HEADER_WIRE + PAGE_SIZE)
    );
}

#[test]
fn a_frame_of_zero_runs_decodes_into_bounded_memory() {
    // 256 KiB of single-page zero runs, the worst case for a frame the
    // kernel accepts: version 1 decoded such a frame (of 1-byte markers)
    // into 24 bytes a page, 6 MiB.
    const FRAME: usize = 256 * 1024;
    let n = (FRAME - PAGES_HEADER_WIRE) / RUN_HEADER_WIRE;
    let mut runs = PageRuns::new();
    for i in 0..n as u64 {
        runs.push(2 * i, Page::Zero).unwrap();
    }
    let (ty, payload) = encode(&Message::Pages { round: 0, runs });
    assert!(payload.len() <= FRAME && payload.len() > FRAME - RUN_HEADER_WIRE);
    let Ok(Message::Pages { runs, .. }) = decode(ty, &payload) else {
        panic!()
    };
    assert_eq!(runs.run_count() as usize, n);
    assert_eq!(runs.page_count() as usize, n);
    // Everything the decoded message holds: its runs' wire bytes, no more.
    assert_eq!(runs.wire_len(), payload.len() - PAGES_HEADER_WIRE);
    assert!(std::mem::size_of::<PageRuns>() <= 48);
    assert_eq!(runs.pages().count(), n);
    assert_eq!(runs.pages().last(), Some((2 * (n as u64 - 1), Page::Zero)));

    // Runs covering the most pages a message may: still 13 bytes a run.
    let frame = pages_frame(&[
        (0, 0, MAX_PAGES_PER_MESSAGE / 2),
        (0, 1 << 30, MAX_PAGES_PER_MESSAGE / 2),
    ]);
    let Ok(Message::Pages { runs, .. }) = decode(36, &frame) else {
        panic!()
    };
    assert_eq!(runs.page_count(), MAX_PAGES_PER_MESSAGE);
    assert_eq!(runs.wire_len(), 2 * RUN_HEADER_WIRE);
}

#[test]
fn a_message_covers_at_most_max_pages() {
    let max = MAX_PAGES_PER_MESSAGE;
    fn too_many<T>(count: u64) -> Result<T, ProtoError> {
        Err(ProtoError::TooMany {
            what: "Pages pages",
            count,
            max: MAX_PAGES_PER_MESSAGE.into(),
        })
    }
    assert!(decode(36, &pages_frame(&[(0, 0, max)])).is_ok());
    assert_eq!(
        decode(36, &pages_frame(&[(0, 0, max + 1)])),
        too_many(max as u64 + 1)
    );
    assert_eq!(
        decode(36, &pages_frame(&[(0, 0, max), (0, 1 << 20, 1)])),
        too_many(max as u64 + 1)
    );
    // Checked before the page data is looked for: no overflow, no huge read.
    assert_eq!(
        decode(36, &pages_frame(&[(1, 0, u32::MAX)])),
        too_many(u32::MAX as u64)
    );
    assert_eq!(
        decode(36, &pages_frame(&[(0, 0, 1), (0, 9, u32::MAX)])),
        too_many(u32::MAX as u64 + 1)
    );

    // Building: the page past the cap is refused, by PageRuns and the builder alike.
    let mut runs = PageRuns::new();
    runs.push_zeros(0, max).unwrap();
    assert_eq!(runs.push(max as u64, Page::Zero), too_many(max as u64 + 1));
    assert_eq!(runs.cost(max as u64, &Page::Zero), None);
    let mut b = PagesBuilder::new(0);
    let mut sent = 0;
    for g in 0..2 * max as u64 {
        if b.try_push(g, Page::Zero).is_err() {
            let Some(Message::Pages { runs, .. }) = b.take() else {
                panic!()
            };
            assert_eq!(runs.page_count(), max);
            sent += runs.page_count();
            assert!(b.try_push(g, Page::Zero).is_ok());
        }
    }
    assert_eq!(sent, max);
    assert_eq!(b.encoded_len(), PAGES_HEADER_WIRE + RUN_HEADER_WIRE);
}

#[test]
fn builder_respects_a_small_limit() {
    let raw = [1u8; PAGE_SIZE];
    let mut b = PagesBuilder::with_limit(0, PAGES_HEADER_WIRE + RUN_HEADER_WIRE);
    // Zero pages extend their run for free.
    for g in 0..100 {
        assert!(b.try_push(g, Page::Zero).is_ok());
    }
    assert!(
        b.try_push(200, Page::Zero).is_err(),
        "a second run does not fit"
    );
    assert!(b.try_push(100, Page::Raw(&raw)).is_err());
    assert_eq!(b.encoded_len(), 21);
    let m = b.take().unwrap();
    assert_eq!(encode(&m).1.len(), 21);
    assert!(b.take().is_none());
    assert!(b.try_push(5, Page::Raw(&raw)).is_err());
}

fn x86_64() -> Profile {
    Profile::baseline("x86-64").unwrap()
}

#[test]
fn a_hello_of_another_version_is_refused_by_version() {
    for (ty, what) in [(32, "Hello"), (44, "Probe")] {
        for theirs in [2, 4] {
            // What a version-2 source sent: version, name, RAM, a u64
            // feature mask, no devices.
            let mut p = Vec::new();
            p.extend_from_slice(&u16::to_le_bytes(theirs));
            p.extend_from_slice(&4u32.to_le_bytes());
            p.extend_from_slice(b"web1");
            p.extend_from_slice(&(1u64 << 20).to_le_bytes());
            p.extend_from_slice(&0x1ffu64.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            assert_eq!(
                decode(ty, &p),
                Err(ProtoError::Version { ours: 3, theirs }),
                "{what} v{theirs}"
            );
        }
    }
}

#[test]
fn the_profile_in_hello_is_bounded() {
    let mut p = Vec::new();
    p.extend_from_slice(&proto::PROTOCOL_VERSION.to_le_bytes());
    p.extend_from_slice(&4u32.to_le_bytes());
    p.extend_from_slice(b"web1");
    p.extend_from_slice(&(1u64 << 20).to_le_bytes());
    let mut bad_name = p.clone();
    bad_name.push(33);
    bad_name.extend_from_slice(&[b'a'; 33]);
    assert_eq!(
        decode(32, &bad_name),
        Err(ProtoError::Profile {
            what: "Hello CPU profile",
            err: ProfileError::BadLength {
                what: "profile name",
                len: 33,
                max: 32
            }
        })
    );
    p.push(7);
    p.extend_from_slice(b"haswell");
    p.extend_from_slice(&257u16.to_le_bytes());
    for _ in 0..257 {
        p.extend_from_slice(b"\x03sse");
    }
    assert_eq!(
        decode(44, &p),
        Err(ProtoError::Profile {
            what: "Probe CPU profile",
            err: ProfileError::TooManyFeatures {
                count: 257,
                max: 256
            }
        })
    );
    let hello = hello("web1", vec![]);
    let (ty, p) = encode(&hello);
    for cut in 0..p.len() {
        assert!(decode(ty, &p[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(decode(ty, &p), Ok(hello));
}

#[test]
fn a_single_nonzero_byte_anywhere_makes_a_page_nonzero() {
    let mut page = [0u8; PAGE_SIZE];
    assert!(migrate::proto::is_zero(&page));
    for at in [0, 1, 7, 8, 2047, 4088, 4095] {
        page[at] = 0x80;
        assert!(!migrate::proto::is_zero(&page), "byte {at}");
        assert!(matches!(Page::from_bytes(&page), Page::Raw(_)));
        page[at] = 0;
    }
    assert_eq!(Page::from_bytes(&page), Page::Zero);
}

fn hello(vm: &str, devices: Vec<String>) -> Message {
    Message::Hello {
        version: proto::PROTOCOL_VERSION,
        vm: vm.into(),
        mem_bytes: 1 << 20,
        profile: Profile::baseline("skylake-server").unwrap(),
        devices,
    }
}

#[test]
fn peer_strings_are_bounded() {
    use proto::{MAX_DEVICE_NAME, MAX_DEVICES, MAX_REASON, MAX_REASONS, MAX_REGIONS, MAX_VM_NAME};
    let too_long = |what, len, max| Err(ProtoError::TooLong { what, len, max });
    let too_many = |what, count: usize, max: usize| {
        Err(ProtoError::TooMany {
            what,
            count: count as u64,
            max: max as u64,
        })
    };
    // At the limit: accepted.
    let at = hello(
        &"v".repeat(MAX_VM_NAME),
        vec!["d".repeat(MAX_DEVICE_NAME); MAX_DEVICES],
    );
    let (ty, p) = encode(&at);
    assert_eq!(decode(ty, &p), Ok(at));
    // One past: a typed error, never a silently cut string.
    let (ty, p) = encode(&hello(&"v".repeat(MAX_VM_NAME + 1), vec![]));
    assert_eq!(decode(ty, &p), too_long("Hello vm name", 17, MAX_VM_NAME));
    let (ty, p) = encode(&hello("v", vec!["d".repeat(MAX_DEVICE_NAME + 1)]));
    assert_eq!(
        decode(ty, &p),
        too_long("Hello devices", 33, MAX_DEVICE_NAME)
    );
    let (ty, p) = encode(&hello("v", vec![String::new(); MAX_DEVICES + 1]));
    assert_eq!(decode(ty, &p), too_many("Hello devices", 17, MAX_DEVICES));

    let reasons = |n, len| Message::Refuse {
        reasons: vec!["r".repeat(len); n],
    };
    let (ty, p) = encode(&reasons(MAX_REASONS, MAX_REASON));
    assert_eq!(decode(ty, &p), Ok(reasons(MAX_REASONS, MAX_REASON)));
    let (ty, p) = encode(&reasons(MAX_REASONS + 1, 1));
    assert_eq!(decode(ty, &p), too_many("Refuse reasons", 17, MAX_REASONS));
    let (ty, p) = encode(&reasons(1, MAX_REASON + 1));
    assert_eq!(decode(ty, &p), too_long("Refuse reasons", 257, MAX_REASON));
    // A huge announced count with few bytes behind it: refused before any allocation.
    let mut p = u32::MAX.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 64]);
    assert!(decode(34, &p).is_err());

    let abort = |len| Message::Abort {
        reason: "a".repeat(len),
    };
    let (ty, p) = encode(&abort(MAX_REASON));
    assert_eq!(decode(ty, &p), Ok(abort(MAX_REASON)));
    let (ty, p) = encode(&abort(MAX_REASON + 1));
    assert_eq!(decode(ty, &p), too_long("Abort reason", 257, MAX_REASON));
    // The length is checked before the bytes are even there.
    assert_eq!(
        decode(43, &u32::MAX.to_le_bytes()),
        too_long("Abort reason", u32::MAX as usize, MAX_REASON)
    );

    let (ty, p) = encode(&Message::DeviceState {
        name: "d".repeat(MAX_DEVICE_NAME + 1),
        data: vec![],
    });
    assert_eq!(
        decode(ty, &p),
        too_long("DeviceState name", 33, MAX_DEVICE_NAME)
    );

    let (ty, p) = encode(&Message::MemoryLayout {
        regions: vec![(0, 4096); MAX_REGIONS + 1],
    });
    assert_eq!(
        decode(ty, &p),
        too_many("MemoryLayout regions", 65, MAX_REGIONS)
    );
}

#[test]
fn our_own_reasons_always_fit_the_limits() {
    use proto::{MAX_REASON, MAX_REASONS};
    let m = Message::refuse(
        (0..40)
            .map(|i| format!("{i}{}", "\u{e9}".repeat(300)))
            .collect(),
    );
    let (ty, p) = encode(&m);
    let Ok(Message::Refuse { reasons }) = decode(ty, &p) else {
        panic!("our Refuse does not decode")
    };
    assert_eq!(reasons.len(), MAX_REASONS);
    assert!(reasons.iter().all(|r| r.len() <= MAX_REASON));
    assert!(reasons[0].starts_with("0\u{e9}") && reasons[0].ends_with("..."));
    assert_eq!(reasons[15], "and 25 more");
    assert_eq!(
        Message::refuse(vec!["short".into()]),
        Message::Refuse {
            reasons: vec!["short".into()]
        }
    );
    let Message::Abort { reason } = Message::abort("x".repeat(1000)) else {
        panic!()
    };
    assert_eq!(reason.len(), MAX_REASON);
    assert_eq!(
        Message::abort("why"),
        Message::Abort {
            reason: "why".into()
        }
    );
}
