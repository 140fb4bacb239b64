//! Wire protocol: round trips, fuzzing, size limits.

use migrate::proto::{
    self, CpuFeature, MAX_MESSAGE, Message, PAGE_SIZE, Page, PageRun, PagesBuilder, ProtoError,
    decode, encode, encoded_len, missing_features, pages_messages,
};
use proptest::prelude::*;

fn page() -> impl Strategy<Value = Page> {
    prop_oneof![
        3 => Just(Page::Zero),
        1 => (any::<u8>(), any::<u64>()).prop_map(|(fill, x)| {
            let mut v = vec![fill; PAGE_SIZE];
            v[(x % PAGE_SIZE as u64) as usize] = x as u8;
            Page::Raw(v)
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    // Within the decoder's limits: a char is at most 4 bytes.
    let s = || ".{0,12}";
    let name = || ".{0,4}";
    let device = || ".{0,8}";
    prop_oneof![
        (
            any::<u16>(),
            name(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(device(), 0..4)
        )
            .prop_map(
                |(version, vm, mem_bytes, cpu_features, devices)| Message::Hello {
                    version,
                    vm,
                    mem_bytes,
                    cpu_features,
                    devices
                }
            ),
        Just(Message::Ready),
        prop::collection::vec(s(), 0..4).prop_map(|reasons| Message::Refuse { reasons }),
        prop::collection::vec((any::<u64>(), any::<u64>()), 0..5)
            .prop_map(|regions| Message::MemoryLayout { regions }),
        (
            any::<u32>(),
            prop::collection::vec((0u64..1 << 40, prop::collection::vec(page(), 0..4)), 0..4)
        )
            .prop_map(|(round, runs)| Message::Pages {
                round,
                runs: runs
                    .into_iter()
                    .map(|(first_gfn, pages)| PageRun { first_gfn, pages })
                    .collect(),
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
        let _ = decode(ty, &payload);
    }

    #[test]
    fn mutated_messages_never_panic(msg in message(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let (ty, mut payload) = encode(&msg);
        if !payload.is_empty() {
            let i = pos % payload.len();
            payload[i] = byte;
            let _ = decode(ty, &payload);
            payload.truncate(cut % payload.len());
            // A strictly shorter payload never decodes to the same message.
            prop_assert_ne!(decode(ty, &payload), Ok(msg));
        }
    }

    #[test]
    fn pages_messages_fit_and_preserve_order(
        gfns in prop::collection::btree_set(0u64..5000, 0..600),
        raw_every in 1usize..5,
    ) {
        let pages: Vec<(u64, Page)> = gfns.iter().enumerate().map(|(i, &g)| {
            (g, if i % raw_every == 0 { Page::Raw(vec![g as u8 | 1; PAGE_SIZE]) } else { Page::Zero })
        }).collect();
        let msgs = pages_messages(7, pages.clone().into_iter());
        let mut back = Vec::new();
        for m in &msgs {
            let (ty, payload) = encode(m);
            prop_assert!(payload.len() <= MAX_MESSAGE);
            let Ok(Message::Pages { round: 7, runs }) = decode(ty, &payload) else { panic!() };
            for r in runs {
                prop_assert!(!r.pages.is_empty());
                for (i, p) in r.pages.into_iter().enumerate() {
                    back.push((r.first_gfn + i as u64, p));
                }
            }
        }
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
            cpu_features: 0,
            devices: vec![],
        },
        Message::Ready,
        Message::Refuse { reasons: vec![] },
        Message::MemoryLayout { regions: vec![] },
        Message::Pages {
            round: 0,
            runs: vec![],
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
    ];
    let types: Vec<u8> = all.iter().map(Message::frame_type).collect();
    assert_eq!(types, (32..44).collect::<Vec<u8>>());
}

#[test]
fn precise_errors() {
    assert_eq!(decode(5, &[]), Err(ProtoError::UnknownType(5)));
    assert_eq!(decode(44, &[]), Err(ProtoError::UnknownType(44)));
    assert_eq!(decode(33, &[0]), Err(ProtoError::TrailingBytes(1)));
    assert_eq!(
        decode(37, &[0; 19]),
        Err(ProtoError::Truncated {
            what: "RoundEnd dirty_left"
        })
    );
    // Pages: round 0, 1 run at gfn 0 with 1 page of kind 7.
    let mut p = vec![0, 0, 0, 0, 1, 0, 0, 0];
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&1u32.to_le_bytes());
    let mut bad_kind = p.clone();
    bad_kind.push(7);
    assert_eq!(decode(36, &bad_kind), Err(ProtoError::BadPageKind(7)));
    let mut bad_len = p.clone();
    bad_len.push(1);
    bad_len.extend_from_slice(&4095u32.to_le_bytes());
    bad_len.extend_from_slice(&[0; 4095]);
    assert_eq!(decode(36, &bad_len), Err(ProtoError::BadPageLength(4095)));
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
    let mut overflow = vec![0, 0, 0, 0, 1, 0, 0, 0];
    overflow.extend_from_slice(&u64::MAX.to_le_bytes());
    overflow.extend_from_slice(&1u32.to_le_bytes());
    overflow.push(0);
    assert!(matches!(
        decode(36, &overflow),
        Err(ProtoError::GfnOverflow { .. })
    ));
    assert_eq!(
        proto::check_version(2).unwrap_err().to_string(),
        "protocol version mismatch: we speak 1, the peer speaks 2"
    );
}

#[test]
fn zero_page_is_one_byte() {
    let one = Message::Pages {
        round: 0,
        runs: vec![PageRun {
            first_gfn: 9,
            pages: vec![Page::Zero],
        }],
    };
    let two = Message::Pages {
        round: 0,
        runs: vec![PageRun {
            first_gfn: 9,
            pages: vec![Page::Zero; 2],
        }],
    };
    assert_eq!(encode(&two).1.len() - encode(&one).1.len(), 1);
    assert_eq!(Page::from_bytes(&[0; PAGE_SIZE]), Page::Zero);
    let mut p = [0u8; PAGE_SIZE];
    p[4095] = 1;
    assert!(matches!(Page::from_bytes(&p), Page::Raw(_)));
}

#[test]
fn builder_respects_a_small_limit() {
    let mut b = PagesBuilder::with_limit(0, 8 + 12 + 2);
    assert!(b.try_push(0, Page::Zero).is_ok());
    assert!(b.try_push(1, Page::Zero).is_ok());
    assert!(b.try_push(2, Page::Zero).is_err());
    assert_eq!(b.encoded_len(), 22);
    let m = b.take().unwrap();
    assert_eq!(encode(&m).1.len(), 22);
    assert!(b.take().is_none());
    assert!(b.try_push(5, Page::Raw(vec![1; PAGE_SIZE])).is_err());
}

#[test]
fn missing_features_by_name() {
    let guest = CpuFeature::AVX | CpuFeature::AVX2 | CpuFeature::AES | 1 << 40;
    let host = CpuFeature::AES;
    assert_eq!(missing_features(guest, host), ["AVX", "AVX2", "unknown"]);
    assert!(missing_features(host, guest).is_empty());
    assert_eq!(CpuFeature::name(CpuFeature::PCID), Some("PCID"));
    assert_eq!(
        CpuFeature::ALL.iter().fold(0, |a, (b, _)| a | b),
        CpuFeature::KNOWN
    );
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
        cpu_features: 0,
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
