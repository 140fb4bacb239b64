//! Tests of the profile table, resolution, the guest CPUID and the wire form.

use super::*;
use alloc::vec;
use proptest::prelude::*;
use std::collections::HashMap;

/// A fake host CPU: CPUID answers from a table, zeros elsewhere.
#[derive(Clone, Default)]
struct FakeCpu(HashMap<(u32, u32), [u32; 4]>);

impl CpuidSource for FakeCpu {
    fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        self.0.get(&(leaf, sub)).copied().unwrap_or([0; 4])
    }
}

impl FakeCpu {
    fn set_bit(&mut self, leaf: u32, sub: u32, reg: Reg, bit: u8) {
        self.0.entry((leaf, sub)).or_default()[reg.index()] |= 1 << bit;
    }

    /// A Skylake-SP: every feature of `features`, plus host-only bits a
    /// guest must never see (VMX, x2APIC, TSC-deadline, MONITOR,
    /// OSXSAVE, HTT, PKU), XCR0 components 0-7 and PKRU.
    fn skylake(features: FeatureSet) -> FakeCpu {
        let mut c = FakeCpu::default();
        c.0.insert((0, 0), [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        c.0.insert((1, 0), [0x50654, 0x0040_0800, 0, 0]);
        c.0.insert((0x8000_0000, 0), [0x8000_0008, 0, 0, 0]);
        c.0.insert((0x8000_0008, 0), [0x3_302e, 0x100, 0, 0]);
        for f in features.iter() {
            c.set_bit(f.leaf, f.subleaf, f.reg, f.bit);
        }
        for bit in [3, 5, 21, 24, 27] {
            c.set_bit(1, 0, Reg::Ecx, bit);
        }
        c.set_bit(1, 0, Reg::Edx, 28);
        c.set_bit(7, 0, Reg::Ecx, 3);
        c.0.insert((0xd, 0), [0x2ff, 2696, 2696, 0]);
        for (i, size, offset) in [
            (2, 256, 576),
            (3, 64, 960),
            (4, 64, 1024),
            (5, 64, 1088),
            (6, 512, 1152),
            (7, 1024, 1664),
            (9, 8, 2688),
        ] {
            c.0.insert((0xd, i), [size, offset, 0, 0]);
        }
        c
    }
}

fn all_cpu() -> FakeCpu {
    FakeCpu::skylake(FeatureSet::all())
}

fn set(names: &[&str]) -> FeatureSet {
    FeatureSet::from_names(names.iter().copied()).unwrap()
}

#[test]
fn the_table_is_sound() {
    assert!(FEATURES.len() <= 128);
    for (i, a) in FEATURES.iter().enumerate() {
        assert!(a.name.len() <= MAX_FEATURE_NAME && !a.name.is_empty());
        assert!(
            a.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)),
            "{}",
            a.name
        );
        assert!(a.bit < 32);
        for b in &FEATURES[i + 1..] {
            assert_ne!(a.name, b.name);
            assert!(
                (a.leaf, a.subleaf, a.reg, a.bit) != (b.leaf, b.subleaf, b.reg, b.bit),
                "{} and {} share a bit",
                a.name,
                b.name
            );
        }
    }
    // Never offered: VMX (1.ECX[5]), MONITOR (1.ECX[3]), x2APIC
    // (1.ECX[21]), TSC-deadline (1.ECX[24]), OSXSAVE (1.ECX[27]), the
    // hypervisor bit (1.ECX[31]), HTT (1.EDX[28]), PKU/OSPKE (7.ECX[3,4]),
    // XSAVES (0DH.1.EAX[3]).
    let never = [
        (1, 0, Reg::Ecx, [3, 5, 21, 24, 27, 31].as_slice()),
        (1, 0, Reg::Edx, &[28]),
        (7, 0, Reg::Ecx, &[3, 4]),
        (0xd, 1, Reg::Eax, &[3]),
    ];
    for (leaf, sub, reg, bits) in never {
        assert_eq!(
            FeatureSet::all().bits(leaf, sub, reg) & bits.iter().fold(0, |a, b| a | 1 << b),
            0
        );
    }
}

#[test]
fn feature_bits_match_the_sdm() {
    let at = |name: &str| {
        let f = FEATURES.iter().find(|f| f.name == name).unwrap();
        (f.leaf, f.subleaf, f.reg, f.bit)
    };
    use Reg::*;
    for (name, want) in [
        ("sse3", (1, 0, Ecx, 0)),
        ("pclmulqdq", (1, 0, Ecx, 1)),
        ("ssse3", (1, 0, Ecx, 9)),
        ("fma", (1, 0, Ecx, 12)),
        ("cx16", (1, 0, Ecx, 13)),
        ("pcid", (1, 0, Ecx, 17)),
        ("sse4_1", (1, 0, Ecx, 19)),
        ("sse4_2", (1, 0, Ecx, 20)),
        ("movbe", (1, 0, Ecx, 22)),
        ("popcnt", (1, 0, Ecx, 23)),
        ("aes", (1, 0, Ecx, 25)),
        ("xsave", (1, 0, Ecx, 26)),
        ("avx", (1, 0, Ecx, 28)),
        ("f16c", (1, 0, Ecx, 29)),
        ("rdrand", (1, 0, Ecx, 30)),
        ("fpu", (1, 0, Edx, 0)),
        ("tsc", (1, 0, Edx, 4)),
        ("msr", (1, 0, Edx, 5)),
        ("pae", (1, 0, Edx, 6)),
        ("cx8", (1, 0, Edx, 8)),
        ("apic", (1, 0, Edx, 9)),
        ("sep", (1, 0, Edx, 11)),
        ("pge", (1, 0, Edx, 13)),
        ("cmov", (1, 0, Edx, 15)),
        ("pat", (1, 0, Edx, 16)),
        ("clflush", (1, 0, Edx, 19)),
        ("mmx", (1, 0, Edx, 23)),
        ("fxsr", (1, 0, Edx, 24)),
        ("sse", (1, 0, Edx, 25)),
        ("sse2", (1, 0, Edx, 26)),
        ("fsgsbase", (7, 0, Ebx, 0)),
        ("bmi1", (7, 0, Ebx, 3)),
        ("avx2", (7, 0, Ebx, 5)),
        ("smep", (7, 0, Ebx, 7)),
        ("bmi2", (7, 0, Ebx, 8)),
        ("erms", (7, 0, Ebx, 9)),
        ("invpcid", (7, 0, Ebx, 10)),
        ("avx512f", (7, 0, Ebx, 16)),
        ("avx512dq", (7, 0, Ebx, 17)),
        ("rdseed", (7, 0, Ebx, 18)),
        ("adx", (7, 0, Ebx, 19)),
        ("smap", (7, 0, Ebx, 20)),
        ("clflushopt", (7, 0, Ebx, 23)),
        ("clwb", (7, 0, Ebx, 24)),
        ("avx512cd", (7, 0, Ebx, 28)),
        ("avx512bw", (7, 0, Ebx, 30)),
        ("avx512vl", (7, 0, Ebx, 31)),
        ("xsaveopt", (0xd, 1, Eax, 0)),
        ("xsavec", (0xd, 1, Eax, 1)),
        ("xgetbv1", (0xd, 1, Eax, 2)),
        ("lahf_lm", (0x8000_0001, 0, Ecx, 0)),
        ("abm", (0x8000_0001, 0, Ecx, 5)),
        ("prefetchw", (0x8000_0001, 0, Ecx, 8)),
        ("syscall", (0x8000_0001, 0, Edx, 11)),
        ("nx", (0x8000_0001, 0, Edx, 20)),
        ("pdpe1gb", (0x8000_0001, 0, Edx, 26)),
        ("rdtscp", (0x8000_0001, 0, Edx, 27)),
        ("lm", (0x8000_0001, 0, Edx, 29)),
    ] {
        assert_eq!(at(name), want, "{name}");
    }
}

#[test]
fn baselines_name_only_known_features_and_nest() {
    for b in BASELINES {
        for n in b.features {
            assert!(index_of(n).is_some(), "{}: unknown feature {n}", b.name);
        }
    }
    let x = Profile::baseline("x86-64").unwrap().features();
    let h = Profile::baseline("haswell").unwrap().features();
    let s = Profile::baseline("skylake-server").unwrap().features();
    assert!(x.difference(h).is_empty() && h.difference(s).is_empty());
    assert!(x.contains("lm") && x.contains("sse2") && !x.contains("sse3"));
    assert!(h.contains("avx2") && !h.contains("avx512f"));
    assert!(s.contains("avx512vl") && s.contains("xgetbv1"));
    assert!(Profile::baseline("host").is_none());
}

#[test]
fn the_host_offer_keeps_known_features_and_offerable_state() {
    let want = set(&["sse2", "avx", "xsave", "avx512f", "lm", "xsaveopt"]);
    let offer = HostOffer::read(&FakeCpu::skylake(want));
    assert_eq!(offer.features, want);
    // 0x2ff: MPX and PKRU are not offerable.
    assert_eq!(offer.xcr0, 0xe7);
    assert_eq!(offer.signature, 0x50654);
    // Without XSAVE, CPUID.0DH is not read.
    let offer = HostOffer::read(&FakeCpu::skylake(set(&["sse2"])));
    assert_eq!(offer.xcr0, 0x3);
}

#[test]
fn skylake_server_on_a_full_host() {
    let host = HostOffer::read(&all_cpu());
    let p = Profile::resolve("skylake-server", &host, RandExits::BOTH).unwrap();
    assert_eq!(p.name(), "skylake-server");
    assert_eq!(
        p.features(),
        Profile::baseline("skylake-server").unwrap().features()
    );
    assert_eq!((p.family(), p.model(), p.stepping()), (6, 0x55, 4));
    assert_eq!(p.xcr0_mask(), 0xe7);
    assert_eq!(
        p.to_string(),
        format!("skylake-server ({} features)", p.features().len())
    );
    assert!(p.missing_on(&host).is_empty());
    let h = Profile::resolve("haswell", &host, RandExits::BOTH).unwrap();
    assert_eq!(
        (h.family(), h.model(), h.stepping(), h.xcr0_mask()),
        (6, 0x3c, 3, 7)
    );
    let x = Profile::resolve("x86-64", &host, RandExits::BOTH).unwrap();
    assert_eq!((x.family(), x.model(), x.xcr0_mask()), (6, 0x0f, 3));
}

#[test]
fn a_baseline_the_host_lacks_names_what_is_missing() {
    let haswell = Profile::baseline("haswell").unwrap().features();
    let mut host = HostOffer::read(&FakeCpu::skylake(haswell));
    host.xcr0 = 0x7;
    let err = Profile::resolve("skylake-server", &host, RandExits::BOTH).unwrap_err();
    let ProfileError::Missing { profile, features } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*profile, "skylake-server");
    assert!(
        features.starts_with(&["avx512f", "avx512dq", "rdseed"]),
        "{features:?}"
    );
    for f in [
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
        "xcr0:opmask",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    let text = err.to_string();
    assert!(
        text.starts_with(
            "this host cannot offer profile skylake-server: missing avx512f, avx512dq, rdseed"
        ),
        "{text}"
    );
    // Just avx512f missing.
    let mut host = HostOffer::everything();
    host.features.remove("avx512f");
    let err = Profile::resolve("skylake-server", &host, RandExits::BOTH).unwrap_err();
    assert_eq!(
        err.to_string(),
        "this host cannot offer profile skylake-server: missing avx512f"
    );
}

#[test]
fn an_unknown_profile_lists_the_known_ones() {
    let err = Profile::resolve("pentium", &HostOffer::everything(), RandExits::BOTH).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown CPU profile 'pentium' (known: x86-64, haswell, skylake-server, host)"
    );
}

#[test]
fn rdrand_and_rdseed_need_exits() {
    let host = HostOffer::everything();
    let p = Profile::resolve("skylake-server", &host, RandExits::default()).unwrap();
    assert!(!p.features().contains("rdrand") && !p.features().contains("rdseed"));
    let p = Profile::resolve(
        "skylake-server",
        &host,
        RandExits {
            rdrand: true,
            rdseed: false,
        },
    )
    .unwrap();
    assert!(p.features().contains("rdrand") && !p.features().contains("rdseed"));
    let p = Profile::resolve("host", &host, RandExits::BOTH).unwrap();
    assert!(p.features().contains("rdrand") && p.features().contains("rdseed"));
}

#[test]
fn the_host_profile_is_the_host_and_consistent() {
    let cpu = all_cpu();
    let host = HostOffer::read(&cpu);
    let p = Profile::resolve("host", &host, RandExits::BOTH).unwrap();
    assert_eq!(p.features(), FeatureSet::all());
    assert_eq!(p.signature(), 0x50654);
    assert_eq!(p.xcr0_mask(), 0xe7);
    // A host whose XSAVE has no AVX-512 state: no AVX-512 feature.
    let mut host = HostOffer::everything();
    host.xcr0 = 0x67;
    let p = Profile::resolve("host", &host, RandExits::BOTH).unwrap();
    assert_eq!(p.xcr0_mask(), 0x7);
    assert!(p.features().contains("avx2") && !p.features().contains("avx512f"));
    // No XSAVE at all: no AVX either.
    host.features.remove("xsave");
    let p = Profile::resolve("host", &host, RandExits::BOTH).unwrap();
    assert_eq!(p.xcr0_mask(), 0x3);
    assert!(!p.features().contains("avx") && !p.features().contains("xsaveopt"));
    assert!(p.features().contains("sse4_2"));
}

fn dynamic() -> Dynamic {
    Dynamic {
        apic_id: 3,
        tsc_khz: 2_100_000,
        xcr0: 0x7,
        cr4_osxsave: true,
    }
}

#[test]
fn the_guest_cpuid_of_skylake_server() {
    let cpu = all_cpu();
    let p = Profile::resolve("skylake-server", &HostOffer::read(&cpu), RandExits::BOTH).unwrap();
    let d = dynamic();
    let id = |leaf, sub| p.cpuid(leaf, sub, &d, &cpu);
    assert_eq!(id(0, 0), [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
    let [eax, ebx, ecx, edx] = id(1, 0);
    assert_eq!(eax, 0x50654);
    assert_eq!(ebx, 0x0301_0800);
    // sse3 pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 movbe popcnt aes
    // xsave OSXSAVE avx f16c rdrand hypervisor; no VMX/x2APIC/MONITOR.
    assert_eq!(ecx, 0xfeda_3203);
    // fpu de pse tsc msr pae cx8 apic sep pge cmov pat pse36 clflush mmx
    // fxsr sse sse2; no HTT.
    assert_eq!(edx, 0x078b_ab7d);
    let [eax, ebx, ecx, edx] = id(7, 0);
    assert_eq!((eax, ecx, edx), (0, 0, 0));
    assert_eq!(ebx, 0xd19f_07a9);
    assert_eq!(id(7, 1), [0; 4]);
    // XSAVE: allowed 0xe7; current XCR0 7 → 832 bytes; all → 2688.
    assert_eq!(id(0xd, 0), [0xe7, 832, 2688, 0]);
    assert_eq!(id(0xd, 1), [0x7, 0, 0, 0]);
    assert_eq!(id(0xd, 2), [256, 576, 0, 0]);
    assert_eq!(id(0xd, 3), [0; 4]);
    assert_eq!(id(0xd, 7), [1024, 1664, 0, 0]);
    assert_eq!(id(0xd, 9), [0; 4]);
    let hv = id(0x4000_0000, 0);
    assert_eq!(hv[0], 0x4000_0010);
    let sig: Vec<u8> = hv[1..].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(sig, b"hvhypervisor");
    assert_eq!(id(0x4000_0010, 0), [2_100_000, 0, 0, 0]);
    assert_eq!(id(0x4000_0001, 0), [0; 4]);
    assert_eq!(id(0x8000_0000, 0), [0x8000_0008, 0, 0, 0]);
    // lahf_lm abm prefetchw; syscall nx pdpe1gb rdtscp lm.
    assert_eq!(id(0x8000_0001, 0), [0, 0, 0x121, 0x2c10_0800]);
    let brand: Vec<u8> = (0x8000_0002..=0x8000_0004)
        .flat_map(|l| id(l, 0))
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let mut want = b"hv virtual CPU skylake-server".to_vec();
    want.resize(48, 0);
    assert_eq!(brand, want);
    assert_eq!(id(0x8000_0008, 0), [0x302e, 0, 0, 0]);
    for leaf in [
        2,
        3,
        4,
        5,
        6,
        0xb,
        0xe,
        0x16,
        0x8000_0006,
        0x8000_0007,
        0x8000_0009,
    ] {
        assert_eq!(id(leaf, 0), [0; 4], "leaf {leaf:#x}");
    }
}

#[test]
fn osxsave_follows_cr4_and_xsave() {
    let cpu = all_cpu();
    let p = Profile::resolve("haswell", &HostOffer::read(&cpu), RandExits::BOTH).unwrap();
    let mut d = dynamic();
    assert_ne!(p.cpuid(1, 0, &d, &cpu)[2] & 1 << 27, 0);
    d.cr4_osxsave = false;
    assert_eq!(p.cpuid(1, 0, &d, &cpu)[2] & 1 << 27, 0);
    let x = Profile::resolve("x86-64", &HostOffer::read(&cpu), RandExits::BOTH).unwrap();
    d.cr4_osxsave = true;
    assert_eq!(x.cpuid(1, 0, &d, &cpu)[2], 1 << 31);
    assert_eq!(x.cpuid(0xd, 0, &d, &cpu), [0; 4]);
    // The APIC ID keeps to its 8 bits.
    d.apic_id = 0x1ff;
    assert_eq!(x.cpuid(1, 0, &d, &cpu)[1] >> 24, 0xff);
}

#[test]
fn feature_leaves_are_the_same_on_every_host() {
    let p = Profile::baseline("haswell").unwrap();
    let small = FakeCpu::skylake(p.features());
    let big = all_cpu();
    for (leaf, sub) in [
        (1, 0),
        (7, 0),
        (0xd, 1),
        (0x8000_0001, 0),
        (0x8000_0002, 0),
        (5, 0),
    ] {
        assert_eq!(
            p.cpuid(leaf, sub, &dynamic(), &small),
            p.cpuid(leaf, sub, &dynamic(), &big),
            "leaf {leaf:#x}.{sub}"
        );
    }
}

#[test]
fn the_wire_form_round_trips() {
    let host = HostOffer::everything();
    for name in PROFILE_NAMES {
        let p = Profile::resolve(name, &host, RandExits::BOTH).unwrap();
        let mut out = vec![0xaa];
        p.encode(&mut out);
        assert_eq!(out.len(), 1 + p.wire_len());
        out.push(0x55);
        let (q, used) = Profile::decode(&out[1..]).unwrap();
        assert_eq!((q, used), (p.clone(), p.wire_len()));
    }
}

fn wire(name: &str, features: &[&[u8]], signature: u32, xcr0: u64) -> Vec<u8> {
    let mut v = vec![name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(features.len() as u16).to_le_bytes());
    for f in features {
        v.push(f.len() as u8);
        v.extend_from_slice(f);
    }
    v.extend_from_slice(&signature.to_le_bytes());
    v.extend_from_slice(&xcr0.to_le_bytes());
    v
}

#[test]
fn unknown_features_from_a_newer_build_are_missing_here() {
    let blob = wire(
        "future",
        &[b"avx512f", b"amx_tile", b"sse2", b"amx_tile"],
        0x806f8,
        0x6_00e7,
    );
    let (p, used) = Profile::decode(&blob).unwrap();
    assert_eq!(used, blob.len());
    assert_eq!(p.unknown_features(), ["amx_tile"]);
    assert_eq!(p.to_string(), "future (3 features)");
    assert_eq!(
        p.missing_on(&HostOffer::everything()),
        ["amx_tile", "xcr0:bit17", "xcr0:bit18"]
    );
    let mut host = HostOffer::everything();
    host.features.remove("avx512f");
    host.xcr0 = 0x7;
    assert_eq!(
        p.missing_on(&host),
        [
            "avx512f",
            "amx_tile",
            "xcr0:opmask",
            "xcr0:zmm_hi256",
            "xcr0:hi16_zmm",
            "xcr0:bit17",
            "xcr0:bit18"
        ]
    );
    // Re-encoded, the unknown name travels on.
    let mut again = Vec::new();
    p.encode(&mut again);
    assert_eq!(Profile::decode(&again).unwrap().0, p);
}

#[test]
fn the_decoder_bounds_every_field() {
    let long = "a".repeat(33);
    assert_eq!(
        Profile::decode(&wire(&long, &[], 0, 3)),
        Err(ProfileError::BadLength {
            what: "profile name",
            len: 33,
            max: 32
        })
    );
    assert!(matches!(
        Profile::decode(&wire("", &[], 0, 3)),
        Err(ProfileError::BadLength { len: 0, .. })
    ));
    assert_eq!(
        Profile::decode(&wire("Haswell", &[], 0, 3)),
        Err(ProfileError::BadChar {
            what: "profile name",
            byte: b'H'
        })
    );
    assert_eq!(
        Profile::decode(&wire("x", &[b"a b"], 0, 3)),
        Err(ProfileError::BadChar {
            what: "feature name",
            byte: b' '
        })
    );
    assert!(matches!(
        Profile::decode(&wire("x", &[long.as_bytes()], 0, 3)),
        Err(ProfileError::BadLength {
            what: "feature name",
            len: 33,
            ..
        })
    ));
    let many: Vec<&[u8]> = vec![b"sse"; 257];
    assert_eq!(
        Profile::decode(&wire("x", &many, 0, 3)),
        Err(ProfileError::TooManyFeatures {
            count: 257,
            max: 256
        })
    );
    let ok: Vec<&[u8]> = vec![b"sse"; 256];
    assert!(Profile::decode(&wire("x", &ok, 0, 3)).is_ok());
    let blob = wire("haswell", &[b"sse", b"avx"], 0x306c3, 7);
    for cut in 0..blob.len() {
        assert!(
            matches!(
                Profile::decode(&blob[..cut]),
                Err(ProfileError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((p, used)) = Profile::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            let mut again = Vec::new();
            p.encode(&mut again);
            prop_assert_eq!(Profile::decode(&again).map(|(q, _)| q), Ok(p));
        }
    }

    #[test]
    fn any_feature_subset_round_trips(bits in any::<u128>(), signature in any::<u32>(), xcr0 in any::<u64>()) {
        let p = Profile {
            name: "x".into(),
            features: FeatureSet(bits).intersection(FeatureSet::all()),
            unknown: Vec::new(),
            signature,
            xcr0,
        };
        let mut out = Vec::new();
        p.encode(&mut out);
        prop_assert_eq!(Profile::decode(&out), Ok((p.clone(), out.len())));
    }

    #[test]
    fn resolved_profiles_stay_within_the_host(bits in any::<u128>(), xcr0 in any::<u64>(), name in 0..4usize) {
        let host = HostOffer {
            features: FeatureSet(bits).intersection(FeatureSet::all()),
            xcr0: xcr0 & crate::xcr0::OFFERABLE | 3,
            signature: 0,
        };
        if let Ok(p) = Profile::resolve(PROFILE_NAMES[name], &host, RandExits::BOTH) {
            prop_assert!(p.missing_on(&host).is_empty());
            prop_assert!(crate::xcr0::check_xsetbv(0, p.xcr0_mask(), p.xcr0_mask()).is_ok());
        }
    }
}

#[test]
fn the_cpuid_table_answers_as_the_profile_does() {
    let host = all_cpu();
    let offer = HostOffer::read(&host);
    for name in PROFILE_NAMES {
        let p = Profile::resolve(name, &offer, RandExits::BOTH).unwrap();
        let fixed = Dynamic {
            apic_id: 3,
            tsc_khz: 2_100_000,
            xcr0: 1,
            cr4_osxsave: false,
        };
        let table = CpuidTable::new(&p, &fixed, &host);
        for xcr0 in [1, 7, 0xe7] {
            for osxsave in [false, true] {
                let d = Dynamic {
                    xcr0,
                    cr4_osxsave: osxsave,
                    ..fixed
                };
                let leaves = (0..0x20)
                    .chain(0x4000_0000..0x4000_0020)
                    .chain(0x8000_0000..0x8000_0020)
                    .chain([0x1234_5678, u32::MAX]);
                for leaf in leaves {
                    for sub in [0, 1, 2, 5, 63, 64, u32::MAX] {
                        assert_eq!(
                            table.get(&p, leaf, sub, &d, &host),
                            p.cpuid(leaf, sub, &d, &host),
                            "{name}: leaf {leaf:#x} sub {sub} xcr0 {xcr0:#x} osxsave {osxsave}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn leaves_without_sub_leaves_ignore_ecx() {
    let host = all_cpu();
    let p = Profile::resolve("skylake-server", &HostOffer::read(&host), RandExits::BOTH).unwrap();
    let d = Dynamic::default();
    for leaf in [1, 0x8000_0001, 0x8000_0002, 0x4000_0010] {
        assert_eq!(
            p.cpuid(leaf, 0xdead_beef, &d, &host),
            p.cpuid(leaf, 0, &d, &host)
        );
    }
    assert_ne!(p.cpuid(1, 0xdead_beef, &d, &host)[2] & (1 << 28), 0, "avx");
}
