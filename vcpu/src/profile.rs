//! Named CPU profiles and the CPUID a guest sees under one.
//!
//! A VM must see the same CPU on every host it may run on, or a migration
//! would pull an instruction from under a running guest. So the guest's
//! CPUID is not the host's: it is computed from a [`Profile`], a named
//! baseline (`x86-64`, `haswell`, `skylake-server`) or `host` (every
//! feature this build knows and the host has), resolved once against the
//! host ([`Profile::resolve`]) and then carried with the VM (its wire form,
//! [`Profile::encode`], travels in the migration `Hello`).
//!
//! ```text
//!  host CPUID ──HostOffer::read──> HostOffer ──┐
//!                                              ├─ Profile::resolve(name, host, RandExits)
//!  profile name (config, `vm create`) ─────────┘        │
//!                                                       v
//!   CPUID exit: Profile::cpuid(leaf, sub, &Dynamic, host) -> [eax, ebx, ecx, edx]
//!   migration:  Profile::encode ──wire──> Profile::decode, Profile::missing_on(dest offer)
//! ```
//!
//! Only features in [`FEATURES`] ever reach a guest; every leaf not listed
//! at [`Profile::cpuid`] reads as zeros, so nothing host-specific leaks
//! through. Bit positions are those of SDM Vol. 2A, CPUID: table 3-10
//! (leaf 1 ECX), table 3-11 (leaf 1 EDX) and table 3-8 (leaves 7, 0DH,
//! 80000001H).
//!
//! Never offered, whatever the host has: VMX (no nested virtualization),
//! the hypervisor bit and OSXSAVE (set by [`Profile::cpuid`] itself),
//! x2APIC, TSC-deadline and MONITOR/MWAIT (not emulated), and any feature
//! whose state is not migrated (PKU, XSAVES supervisor state, MPX, AMX).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::xcr0;

/// The host's CPUID, behind a trait so tests can fake a host.
pub trait CpuidSource {
    /// CPUID with EAX = `leaf`, ECX = `sub`: `[eax, ebx, ecx, edx]`.
    fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4];
}

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl Reg {
    fn index(self) -> usize {
        match self {
            Reg::Eax => 0,
            Reg::Ebx => 1,
            Reg::Ecx => 2,
            Reg::Edx => 3,
        }
    }
}

/// One CPU feature flag and where CPUID reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Name as Linux prints it in `/proc/cpuinfo`.
    pub name: &'static str,
    /// CPUID leaf (EAX).
    pub leaf: u32,
    /// CPUID sub-leaf (ECX).
    pub subleaf: u32,
    /// Register holding the flag.
    pub reg: Reg,
    /// Bit in that register.
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

const L1: u32 = 1;
const L7: u32 = 7;
const LD: u32 = 0xd;
const LX: u32 = 0x8000_0001;

/// Every feature a profile may offer (at most 128: [`FeatureSet`] is a
/// `u128`). The order is this build's only: the wire form names features.
pub const FEATURES: &[Feature] = &[
    // CPUID.01H:EDX (SDM Vol. 2A, table 3-11).
    f("fpu", L1, 0, Reg::Edx, 0),
    f("de", L1, 0, Reg::Edx, 2),
    f("pse", L1, 0, Reg::Edx, 3),
    f("tsc", L1, 0, Reg::Edx, 4),
    f("msr", L1, 0, Reg::Edx, 5),
    f("pae", L1, 0, Reg::Edx, 6),
    f("cx8", L1, 0, Reg::Edx, 8),
    f("apic", L1, 0, Reg::Edx, 9),
    f("sep", L1, 0, Reg::Edx, 11),
    f("pge", L1, 0, Reg::Edx, 13),
    f("cmov", L1, 0, Reg::Edx, 15),
    f("pat", L1, 0, Reg::Edx, 16),
    f("pse36", L1, 0, Reg::Edx, 17),
    f("clflush", L1, 0, Reg::Edx, 19),
    f("mmx", L1, 0, Reg::Edx, 23),
    f("fxsr", L1, 0, Reg::Edx, 24),
    f("sse", L1, 0, Reg::Edx, 25),
    f("sse2", L1, 0, Reg::Edx, 26),
    // CPUID.01H:ECX (table 3-10).
    f("sse3", L1, 0, Reg::Ecx, 0),
    f("pclmulqdq", L1, 0, Reg::Ecx, 1),
    f("ssse3", L1, 0, Reg::Ecx, 9),
    f("fma", L1, 0, Reg::Ecx, 12),
    f("cx16", L1, 0, Reg::Ecx, 13),
    f("pcid", L1, 0, Reg::Ecx, 17),
    f("sse4_1", L1, 0, Reg::Ecx, 19),
    f("sse4_2", L1, 0, Reg::Ecx, 20),
    f("movbe", L1, 0, Reg::Ecx, 22),
    f("popcnt", L1, 0, Reg::Ecx, 23),
    f("aes", L1, 0, Reg::Ecx, 25),
    f("xsave", L1, 0, Reg::Ecx, 26),
    f("avx", L1, 0, Reg::Ecx, 28),
    f("f16c", L1, 0, Reg::Ecx, 29),
    f("rdrand", L1, 0, Reg::Ecx, 30),
    // CPUID.(EAX=07H,ECX=0):EBX (table 3-8).
    f("fsgsbase", L7, 0, Reg::Ebx, 0),
    f("bmi1", L7, 0, Reg::Ebx, 3),
    f("avx2", L7, 0, Reg::Ebx, 5),
    f("smep", L7, 0, Reg::Ebx, 7),
    f("bmi2", L7, 0, Reg::Ebx, 8),
    f("erms", L7, 0, Reg::Ebx, 9),
    f("invpcid", L7, 0, Reg::Ebx, 10),
    f("avx512f", L7, 0, Reg::Ebx, 16),
    f("avx512dq", L7, 0, Reg::Ebx, 17),
    f("rdseed", L7, 0, Reg::Ebx, 18),
    f("adx", L7, 0, Reg::Ebx, 19),
    f("smap", L7, 0, Reg::Ebx, 20),
    f("avx512ifma", L7, 0, Reg::Ebx, 21),
    f("clflushopt", L7, 0, Reg::Ebx, 23),
    f("clwb", L7, 0, Reg::Ebx, 24),
    f("avx512cd", L7, 0, Reg::Ebx, 28),
    f("sha_ni", L7, 0, Reg::Ebx, 29),
    f("avx512bw", L7, 0, Reg::Ebx, 30),
    f("avx512vl", L7, 0, Reg::Ebx, 31),
    // CPUID.(EAX=07H,ECX=0):ECX.
    f("avx512vbmi", L7, 0, Reg::Ecx, 1),
    f("avx512_vbmi2", L7, 0, Reg::Ecx, 6),
    f("gfni", L7, 0, Reg::Ecx, 8),
    f("vaes", L7, 0, Reg::Ecx, 9),
    f("vpclmulqdq", L7, 0, Reg::Ecx, 10),
    f("avx512_vnni", L7, 0, Reg::Ecx, 11),
    f("avx512_bitalg", L7, 0, Reg::Ecx, 12),
    f("avx512_vpopcntdq", L7, 0, Reg::Ecx, 14),
    // CPUID.(EAX=07H,ECX=0):EDX.
    f("fsrm", L7, 0, Reg::Edx, 4),
    f("serialize", L7, 0, Reg::Edx, 14),
    // CPUID.(EAX=0DH,ECX=1):EAX (table 3-8, leaf 0DH).
    f("xsaveopt", LD, 1, Reg::Eax, 0),
    f("xsavec", LD, 1, Reg::Eax, 1),
    f("xgetbv1", LD, 1, Reg::Eax, 2),
    // CPUID.80000001H:ECX.
    f("lahf_lm", LX, 0, Reg::Ecx, 0),
    f("abm", LX, 0, Reg::Ecx, 5),
    f("prefetchw", LX, 0, Reg::Ecx, 8),
    // CPUID.80000001H:EDX.
    f("syscall", LX, 0, Reg::Edx, 11),
    f("nx", LX, 0, Reg::Edx, 20),
    f("pdpe1gb", LX, 0, Reg::Edx, 26),
    f("rdtscp", LX, 0, Reg::Edx, 27),
    f("lm", LX, 0, Reg::Edx, 29),
];

/// Index in [`FEATURES`] of a feature name.
fn index_of(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| f.name == name)
}

/// A set of features of [`FEATURES`] (bit `i` is `FEATURES[i]`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FeatureSet(u128);

impl FeatureSet {
    /// No feature.
    pub const fn empty() -> FeatureSet {
        FeatureSet(0)
    }

    /// Every known feature.
    pub fn all() -> FeatureSet {
        FeatureSet(if FEATURES.len() >= 128 {
            u128::MAX
        } else {
            (1u128 << FEATURES.len()) - 1
        })
    }

    /// The features of these names; `Err` with the first unknown name.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<FeatureSet, &'a str> {
        let mut s = FeatureSet::empty();
        for n in names {
            if !s.insert(n) {
                return Err(n);
            }
        }
        Ok(s)
    }

    /// Adds the feature `name`; `false` if no known feature has that name.
    pub fn insert(&mut self, name: &str) -> bool {
        match index_of(name) {
            Some(i) => {
                self.0 |= 1 << i;
                true
            }
            None => false,
        }
    }

    /// Removes the feature `name` (if present).
    pub fn remove(&mut self, name: &str) {
        if let Some(i) = index_of(name) {
            self.0 &= !(1 << i);
        }
    }

    /// Whether the feature `name` is in the set (`false` for unknown names).
    pub fn contains(&self, name: &str) -> bool {
        index_of(name).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Features in both sets.
    pub fn intersection(self, other: FeatureSet) -> FeatureSet {
        FeatureSet(self.0 & other.0)
    }

    /// Features in either set.
    pub fn union(self, other: FeatureSet) -> FeatureSet {
        FeatureSet(self.0 | other.0)
    }

    /// Features of `self` not in `other`.
    pub fn difference(self, other: FeatureSet) -> FeatureSet {
        FeatureSet(self.0 & !other.0)
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The features, in [`FEATURES`] order.
    pub fn iter(&self) -> impl Iterator<Item = &'static Feature> + '_ {
        FEATURES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, f)| f)
    }

    /// The features' names, in [`FEATURES`] order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.iter().map(|f| f.name)
    }

    /// The bits of register `reg` of CPUID leaf `leaf`, sub-leaf `sub`
    /// that the set's features own.
    pub fn bits(&self, leaf: u32, sub: u32, reg: Reg) -> u32 {
        self.iter()
            .filter(|f| f.leaf == leaf && f.subleaf == sub && f.reg == reg)
            .fold(0, |a, f| a | 1 << f.bit)
    }

    /// The known features a CPUID source reports.
    pub fn from_cpuid(src: &dyn CpuidSource) -> FeatureSet {
        let mut s = FeatureSet::empty();
        let max_basic = src.cpuid(0, 0)[0];
        let max_ext = src.cpuid(0x8000_0000, 0)[0];
        let mut cache: Vec<((u32, u32), [u32; 4])> = Vec::new();
        for (i, f) in FEATURES.iter().enumerate() {
            let present = if f.leaf >= 0x8000_0000 {
                f.leaf <= max_ext
            } else {
                f.leaf <= max_basic
            };
            if !present {
                continue;
            }
            let regs = match cache.iter().find(|(k, _)| *k == (f.leaf, f.subleaf)) {
                Some((_, r)) => *r,
                None => {
                    let r = src.cpuid(f.leaf, f.subleaf);
                    cache.push(((f.leaf, f.subleaf), r));
                    r
                }
            };
            if regs[f.reg.index()] & (1 << f.bit) != 0 {
                s.0 |= 1 << i;
            }
        }
        s
    }
}

impl fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// What a host can give its guests: the known features it has and the
/// XCR0 components it supports (within [`xcr0::OFFERABLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOffer {
    /// Known features the host has.
    pub features: FeatureSet,
    /// XCR0 components the host supports, within [`xcr0::OFFERABLE`]
    /// (x87|SSE without XSAVE).
    pub xcr0: u64,
    /// The host's CPUID.01H:EAX (family, model, stepping), which the
    /// `host` profile shows.
    pub signature: u32,
}

impl HostOffer {
    /// Reads the host's offer from its CPUID. Features it has that no
    /// profile may offer (VMX, x2APIC...) are not in [`FEATURES`], so
    /// they are not read.
    pub fn read(host: &dyn CpuidSource) -> HostOffer {
        let features = FeatureSet::from_cpuid(host);
        let xcr0 = if features.contains("xsave") && host.cpuid(0, 0)[0] >= 0xd {
            let [eax, _, _, edx] = host.cpuid(0xd, 0);
            sane_xcr0((u64::from(edx) << 32 | u64::from(eax)) & xcr0::OFFERABLE)
        } else {
            xcr0::X87 | xcr0::SSE
        };
        HostOffer {
            features,
            xcr0,
            signature: host.cpuid(1, 0)[0],
        }
    }

    /// A host with every known feature and every offerable XCR0
    /// component (for tests and tools).
    pub fn everything() -> HostOffer {
        HostOffer {
            features: FeatureSet::all(),
            xcr0: xcr0::OFFERABLE,
            signature: SKYLAKE_SERVER.signature,
        }
    }
}

/// `mask` reduced to a set of components that XSETBV could enable
/// together: x87 and SSE always, AVX-512 all or nothing and only with AVX.
fn sane_xcr0(mask: u64) -> u64 {
    let mut m = mask | xcr0::X87 | xcr0::SSE;
    if m & xcr0::AVX == 0 || m & xcr0::AVX512 != xcr0::AVX512 {
        m &= !xcr0::AVX512;
    }
    m & !xcr0::MPX
}

/// Which of RDRAND and RDSEED the CPU can make exit (the VMX secondary
/// controls "RDRAND exiting" and "RDSEED exiting", SDM Vol. 3C, 25.6.2).
/// A guest is offered either instruction only if it exits: its results
/// must go through the hypervisor (to be logged for fault-tolerant replay
/// and never be a value a replica cannot reproduce), so a guest must not
/// execute it natively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RandExits {
    /// RDRAND causes a VM exit.
    pub rdrand: bool,
    /// RDSEED causes a VM exit.
    pub rdseed: bool,
}

impl RandExits {
    /// Both instructions exit.
    pub const BOTH: RandExits = RandExits {
        rdrand: true,
        rdseed: true,
    };
}

/// A named baseline: what a guest sees on any host that has it.
struct Baseline {
    name: &'static str,
    /// CPUID.01H:EAX.
    signature: u32,
    /// Allowed XCR0 components.
    xcr0: u64,
    /// Names of its features: its own and those of `base`.
    features: &'static [&'static str],
    base: Option<&'static Baseline>,
}

/// CPUID.01H:EAX from family, model and stepping (SDM Vol. 2A, figure 3-6):
/// families below 0xF have no extended family; the model's high nibble is
/// the extended model.
const fn signature(family: u32, model: u32, stepping: u32) -> u32 {
    (model >> 4) << 16 | (family & 0xf) << 8 | (model & 0xf) << 4 | (stepping & 0xf)
}

const X86_64: Baseline = Baseline {
    name: "x86-64",
    signature: signature(6, 0x0f, 1),
    xcr0: xcr0::X87 | xcr0::SSE,
    features: &[
        "fpu", "de", "pse", "tsc", "msr", "pae", "cx8", "apic", "sep", "pge", "cmov", "pat",
        "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "nx", "lm",
    ],
    base: None,
};

const HASWELL: Baseline = Baseline {
    name: "haswell",
    signature: signature(6, 0x3c, 3),
    xcr0: xcr0::X87 | xcr0::SSE | xcr0::AVX,
    features: &[
        "sse3",
        "pclmulqdq",
        "ssse3",
        "fma",
        "cx16",
        "pcid",
        "sse4_1",
        "sse4_2",
        "movbe",
        "popcnt",
        "aes",
        "xsave",
        "avx",
        "f16c",
        "rdrand",
        "fsgsbase",
        "bmi1",
        "avx2",
        "smep",
        "bmi2",
        "erms",
        "invpcid",
        "xsaveopt",
        "lahf_lm",
        "abm",
        "pdpe1gb",
        "rdtscp",
    ],
    base: Some(&X86_64),
};

const SKYLAKE_SERVER: Baseline = Baseline {
    name: "skylake-server",
    signature: signature(6, 0x55, 4),
    xcr0: xcr0::X87 | xcr0::SSE | xcr0::AVX | xcr0::AVX512,
    features: &[
        "rdseed",
        "adx",
        "smap",
        "clflushopt",
        "clwb",
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
        "xsavec",
        "xgetbv1",
        "prefetchw",
    ],
    base: Some(&HASWELL),
};

const BASELINES: [&Baseline; 3] = [&X86_64, &HASWELL, &SKYLAKE_SERVER];

/// The profile that offers every known feature the host has.
pub const HOST: &str = "host";

/// Every profile name [`Profile::resolve`] knows, in order.
pub const PROFILE_NAMES: [&str; 4] = ["x86-64", "haswell", "skylake-server", HOST];

impl Baseline {
    fn features(&self) -> FeatureSet {
        let own = FeatureSet::from_names(self.features.iter().copied()).unwrap_or_default();
        match self.base {
            Some(b) => own.union(b.features()),
            None => own,
        }
    }
}

/// Longest profile name in bytes (its characters are `a-z`, `0-9`, `-`).
pub const MAX_PROFILE_NAME: usize = 32;
/// Longest feature name on the wire, in bytes (`a-z`, `0-9`, `_`, `-`, `.`).
pub const MAX_FEATURE_NAME: usize = 32;
/// Most feature names in a profile's wire form.
pub const MAX_WIRE_FEATURES: usize = 256;

/// Errors resolving or decoding a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// No profile has this name.
    #[error("unknown CPU profile '{name}' (known: {})", PROFILE_NAMES.join(", "))]
    Unknown {
        /// The name asked for (cut to [`MAX_PROFILE_NAME`] characters).
        name: String,
    },
    /// The host lacks features (or XCR0 components, named `xcr0:<name>`)
    /// the named baseline requires.
    #[error("this host cannot offer profile {profile}: missing {}", .features.join(", "))]
    Missing {
        /// The profile.
        profile: &'static str,
        /// What the host lacks.
        features: Vec<&'static str>,
    },
    /// The wire form ended before a field was complete.
    #[error("CPU profile truncated while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A name on the wire is empty or too long.
    #[error("{what} is {len} bytes (must be 1 to {max})")]
    BadLength {
        /// Which name.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name on the wire has a character outside its alphabet.
    #[error("{what} has a byte {byte:#04x} outside its alphabet")]
    BadChar {
        /// Which name.
        what: &'static str,
        /// The first bad byte.
        byte: u8,
    },
    /// The wire form lists more features than [`MAX_WIRE_FEATURES`].
    #[error("CPU profile lists {count} features, more than the {max} allowed")]
    TooManyFeatures {
        /// Features announced.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// A resolved CPU profile: what a VM's CPU is, on whichever host it runs.
///
/// Built by [`Profile::resolve`] on the host that creates the VM, or by
/// [`Profile::decode`] from a migration source (then check it with
/// [`Profile::missing_on`] before running the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    name: String,
    features: FeatureSet,
    /// Feature names from the wire that this build does not know: they
    /// can never be offered here (see [`Profile::missing_on`]).
    unknown: Vec<String>,
    signature: u32,
    xcr0: u64,
}

/// Per-vCPU, per-moment inputs of [`Profile::cpuid`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// Initial APIC ID of the vCPU (`CPUID.01H:EBX[31:24]`).
    pub apic_id: u32,
    /// Guest TSC frequency in kHz (leaf 4000_0010H EAX).
    pub tsc_khz: u32,
    /// The guest's current XCR0 (for CPUID.(0DH,0):EBX).
    pub xcr0: u64,
    /// The guest's CR4.OSXSAVE (mirrored in `CPUID.01H:ECX[27]`).
    pub cr4_osxsave: bool,
}

/// Maximum hypervisor leaf (CPUID.40000000H:EAX).
pub const HV_MAX_LEAF: u32 = 0x4000_0010;
/// Hypervisor signature in EBX, ECX, EDX of leaf 4000_0000H.
pub const HV_SIGNATURE: [&[u8; 4]; 3] = [b"hvhy", b"perv", b"isor"];
/// Highest basic leaf a guest sees.
pub const MAX_BASIC_LEAF: u32 = 0xd;
/// Highest extended leaf a guest sees (if the host has it).
pub const MAX_EXT_LEAF: u32 = 0x8000_0008;
/// Prefix of the brand string (leaves 8000_0002H-8000_0004H); the
/// profile's name follows.
pub const BRAND_PREFIX: &str = "hv virtual CPU ";

/// Hypervisor-present bit, CPUID.01H:ECX[31].
const ECX_HYPERVISOR: u32 = 1 << 31;
/// OSXSAVE, `CPUID.01H:ECX[27]`.
const ECX_OSXSAVE: u32 = 1 << 27;

/// Features that need the XSAVE feature set; without the XCR0 component
/// in their second field, a guest cannot use them.
const XSAVE_DEPENDENT: &[(&str, u64)] = &[
    ("xsaveopt", 0),
    ("xsavec", 0),
    ("xgetbv1", 0),
    ("avx", xcr0::AVX),
    ("avx2", xcr0::AVX),
    ("fma", xcr0::AVX),
    ("f16c", xcr0::AVX),
    ("vaes", xcr0::AVX),
    ("vpclmulqdq", xcr0::AVX),
    ("avx512f", xcr0::AVX512),
    ("avx512dq", xcr0::AVX512),
    ("avx512ifma", xcr0::AVX512),
    ("avx512cd", xcr0::AVX512),
    ("avx512bw", xcr0::AVX512),
    ("avx512vl", xcr0::AVX512),
    ("avx512vbmi", xcr0::AVX512),
    ("avx512_vbmi2", xcr0::AVX512),
    ("avx512_vnni", xcr0::AVX512),
    ("avx512_bitalg", xcr0::AVX512),
    ("avx512_vpopcntdq", xcr0::AVX512),
];

/// XCR0 components as [`Profile::missing_on`] and [`ProfileError::Missing`]
/// name them.
const XCR0_LABELS: [(u64, &str); 8] = [
    (xcr0::X87, "xcr0:x87"),
    (xcr0::SSE, "xcr0:sse"),
    (xcr0::AVX, "xcr0:avx"),
    (xcr0::BNDREGS, "xcr0:bndregs"),
    (xcr0::BNDCSR, "xcr0:bndcsr"),
    (xcr0::OPMASK, "xcr0:opmask"),
    (xcr0::ZMM_HI256, "xcr0:zmm_hi256"),
    (xcr0::HI16_ZMM, "xcr0:hi16_zmm"),
];

/// The label of XCR0 component `i`: `xcr0:<name>`, or `xcr0:bit<i>` for
/// components this build has no name for.
fn component_label(i: u32) -> String {
    match XCR0_LABELS.iter().find(|(b, _)| *b == 1 << i) {
        Some((_, n)) => String::from(*n),
        None => alloc::format!("xcr0:bit{i}"),
    }
}

impl Profile {
    /// Resolves the profile `name` against this host.
    ///
    /// A baseline (`x86-64`, `haswell`, `skylake-server`) must be offered
    /// whole: if the host lacks any of its features or XCR0 components,
    /// [`ProfileError::Missing`] names them all. `host` takes every known
    /// feature the host has, its family/model/stepping and its XCR0
    /// components (within [`xcr0::OFFERABLE`]). Either way the result is
    /// then ANDed with the host's features (defence in depth), stripped
    /// of features whose XSAVE state it does not allow, and stripped of
    /// `rdrand` / `rdseed` unless `exits` says the instruction exits —
    /// that stripping is no error: a baseline stays usable on a CPU
    /// without RDRAND exiting, its guests just do not see RDRAND.
    pub fn resolve(
        name: &str,
        host: &HostOffer,
        exits: RandExits,
    ) -> Result<Profile, ProfileError> {
        let (features, signature, xcr0_mask) = if name == HOST {
            (host.features, host.signature, sane_xcr0(host.xcr0))
        } else {
            let Some(b) = BASELINES.iter().find(|b| b.name == name) else {
                return Err(ProfileError::Unknown {
                    name: name.chars().take(MAX_PROFILE_NAME).collect(),
                });
            };
            let want = b.features();
            let mut missing: Vec<&'static str> = want.difference(host.features).names().collect();
            for i in 0..64 {
                let bit = 1u64 << i;
                if b.xcr0 & bit != 0 && host.xcr0 & bit == 0 {
                    let label = XCR0_LABELS.iter().find(|(b, _)| *b == bit);
                    missing.push(label.map_or("xcr0:unknown", |(_, n)| n));
                }
            }
            if !missing.is_empty() {
                return Err(ProfileError::Missing {
                    profile: b.name,
                    features: missing,
                });
            }
            (want, b.signature, b.xcr0)
        };
        let mut p = Profile {
            name: name.to_string(),
            features: features.intersection(host.features),
            unknown: Vec::new(),
            signature,
            xcr0: sane_xcr0(xcr0_mask & host.xcr0),
        };
        if !exits.rdrand {
            p.features.remove("rdrand");
        }
        if !exits.rdseed {
            p.features.remove("rdseed");
        }
        p.make_consistent();
        Ok(p)
    }

    /// The named baseline as defined, without a host to check it against
    /// (`None` for `host` and unknown names): what a source on a host with
    /// every feature would announce. For tests and tools; a VM's profile
    /// comes from [`Profile::resolve`].
    pub fn baseline(name: &str) -> Option<Profile> {
        let b = BASELINES.iter().find(|b| b.name == name)?;
        Some(Profile {
            name: b.name.to_string(),
            features: b.features(),
            unknown: Vec::new(),
            signature: b.signature,
            xcr0: b.xcr0,
        })
    }

    /// Drops features the allowed XCR0 components cannot back (the
    /// `host` profile of a host whose XSAVE lacks AVX-512 state, say).
    fn make_consistent(&mut self) {
        if !self.features.contains("xsave") {
            self.xcr0 = xcr0::X87 | xcr0::SSE;
        }
        for (name, needs) in XSAVE_DEPENDENT {
            if !self.features.contains("xsave") || self.xcr0 & needs != *needs {
                self.features.remove(name);
            }
        }
    }

    /// The profile's name (`skylake-server`, `host`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The features the guest sees.
    pub fn features(&self) -> FeatureSet {
        self.features
    }

    /// Feature names this profile carried on the wire that this build does
    /// not know (always empty for a profile resolved here).
    pub fn unknown_features(&self) -> &[String] {
        &self.unknown
    }

    /// The XCR0 components the guest may enable (the `allowed` of
    /// [`xcr0::check_xsetbv`]).
    pub fn xcr0_mask(&self) -> u64 {
        self.xcr0
    }

    /// The CPUID.01H:EAX the guest sees.
    pub fn signature(&self) -> u32 {
        self.signature
    }

    /// Display family (SDM Vol. 2A, CPUID, "Family ID").
    pub fn family(&self) -> u32 {
        let family = self.signature >> 8 & 0xf;
        if family == 0xf {
            family + (self.signature >> 20 & 0xff)
        } else {
            family
        }
    }

    /// Display model (with the extended model for families 6 and 0xF).
    pub fn model(&self) -> u32 {
        let family = self.signature >> 8 & 0xf;
        let model = self.signature >> 4 & 0xf;
        if family == 6 || family == 0xf {
            (self.signature >> 16 & 0xf) << 4 | model
        } else {
            model
        }
    }

    /// Stepping.
    pub fn stepping(&self) -> u32 {
        self.signature & 0xf
    }

    /// What `host` lacks to run a guest of this profile: feature names
    /// (including names this build does not know) and XCR0 components as
    /// `xcr0:<component>`. Empty: the host can run it.
    pub fn missing_on(&self, host: &HostOffer) -> Vec<String> {
        let mut out: Vec<String> = self
            .features
            .difference(host.features)
            .names()
            .map(String::from)
            .collect();
        out.extend(self.unknown.iter().cloned());
        let lacking = self.xcr0 & !host.xcr0;
        out.extend(
            (0..64)
                .filter(|i| lacking & (1 << i) != 0)
                .map(component_label),
        );
        out
    }

    /// The CPUID the guest sees for `leaf`, `sub` (`[eax, ebx, ecx, edx]`).
    ///
    /// | leaf          | what the guest sees                                            |
    /// |---------------|----------------------------------------------------------------|
    /// | 0             | max basic leaf min(host, 0DH), the host's vendor               |
    /// | 1             | profile signature; APIC ID, 1 logical CPU, CLFLUSH 64 bytes; profile features, hypervisor bit, OSXSAVE = CR4.OSXSAVE |
    /// | 7             | sub-leaf 0: profile features, EAX = 0 (no further sub-leaf)    |
    /// | 0DH           | (with `xsave`) 0: allowed components and sizes; 1: profile bits; i allowed: the host's |
    /// | 4000_0000H    | max leaf 4000_0010H, "hvhypervisor"                            |
    /// | 4000_0010H    | EAX = guest TSC kHz                                            |
    /// | 8000_0000H    | max extended leaf min(host, 8000_0008H)                        |
    /// | 8000_0001H    | profile features                                               |
    /// | 8000_0002-4H  | brand string `hv virtual CPU <name>`                           |
    /// | 8000_0008H    | the host's address sizes (`EAX[15:0]`)                           |
    ///
    /// Every other leaf and sub-leaf reads as zeros, on every host.
    pub fn cpuid(
        &self,
        leaf: u32,
        sub: u32,
        dynamic: &Dynamic,
        host: &dyn CpuidSource,
    ) -> [u32; 4] {
        // Only leaves 7 and 0DH have sub-leaves here; for every other leaf
        // the CPU ignores ECX, and so must we (guests often leave garbage
        // in it for leaf 1).
        let sub = if matches!(leaf, 7 | 0xd) { sub } else { 0 };
        let bits = |reg| self.features.bits(leaf, sub, reg);
        let max_ext = host.cpuid(0x8000_0000, 0)[0].min(MAX_EXT_LEAF);
        match leaf {
            0 => {
                let [max, ebx, ecx, edx] = host.cpuid(0, 0);
                [max.min(MAX_BASIC_LEAF), ebx, ecx, edx]
            }
            1 => {
                let ebx = (dynamic.apic_id & 0xff) << 24 | 1 << 16 | 8 << 8;
                let mut ecx = bits(Reg::Ecx) | ECX_HYPERVISOR;
                if dynamic.cr4_osxsave && self.features.contains("xsave") {
                    ecx |= ECX_OSXSAVE;
                }
                [self.signature, ebx, ecx, bits(Reg::Edx)]
            }
            7 if sub == 0 => [0, bits(Reg::Ebx), bits(Reg::Ecx), bits(Reg::Edx)],
            0xd if self.features.contains("xsave") => self.leaf_d(sub, dynamic, host),
            0x4000_0000 => {
                let [b, c, d] = HV_SIGNATURE.map(|s| u32::from_le_bytes(*s));
                [HV_MAX_LEAF, b, c, d]
            }
            0x4000_0010 => [dynamic.tsc_khz, 0, 0, 0],
            0x8000_0000 => [max_ext, 0, 0, 0],
            0x8000_0001 if leaf <= max_ext => [0, 0, bits(Reg::Ecx), bits(Reg::Edx)],
            0x8000_0002..=0x8000_0004 if leaf <= max_ext => self.brand(leaf - 0x8000_0002),
            0x8000_0008 if leaf <= max_ext => [host.cpuid(leaf, 0)[0] & 0xffff, 0, 0, 0],
            _ => [0; 4],
        }
    }

    fn leaf_d(&self, sub: u32, dynamic: &Dynamic, host: &dyn CpuidSource) -> [u32; 4] {
        match sub {
            0 => [
                self.xcr0 as u32,
                xcr0::xsave_size(dynamic.xcr0 & self.xcr0, host),
                xcr0::xsave_size(self.xcr0, host),
                (self.xcr0 >> 32) as u32,
            ],
            1 => [self.features.bits(0xd, 1, Reg::Eax), 0, 0, 0],
            2..=63 if self.xcr0 & (1 << sub) != 0 => {
                let [size, offset, flags, _] = host.cpuid(0xd, sub);
                [size, offset, flags, 0]
            }
            _ => [0; 4],
        }
    }

    /// Part `i` (0-2) of the brand string: 16 bytes, NUL-padded.
    fn brand(&self, i: u32) -> [u32; 4] {
        let mut s = [0u8; 48];
        let text = BRAND_PREFIX.bytes().chain(self.name.bytes());
        // 15 + MAX_PROFILE_NAME < 48: at least one NUL always ends it.
        for (d, b) in s[..47].iter_mut().zip(text) {
            *d = b;
        }
        let mut out = [0u32; 4];
        for (j, r) in out.iter_mut().enumerate() {
            let at = i as usize * 16 + j * 4;
            let mut w = [0u8; 4];
            w.copy_from_slice(&s[at..at + 4]);
            *r = u32::from_le_bytes(w);
        }
        out
    }

    /// Bytes [`Profile::encode`] appends.
    pub fn wire_len(&self) -> usize {
        1 + self.name.len()
            + 2
            + self.features.names().map(|n| 1 + n.len()).sum::<usize>()
            + self.unknown.iter().map(|n| 1 + n.len()).sum::<usize>()
            + 4
            + 8
    }

    /// Appends the wire form:
    ///
    /// ```text
    /// u8 name_len (1..=32), name ([a-z0-9-])
    /// u16 n (<= 256), n × (u8 len (1..=32), feature name ([a-z0-9_.-]))
    /// u32 signature (CPUID.01H:EAX: family, model, stepping)
    /// u64 xcr0 mask
    /// ```
    ///
    /// little-endian. Features travel by name, so builds with different
    /// [`FEATURES`] tables understand each other: a name the reader does
    /// not know is kept as a feature its host lacks.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        let n = self.features.len() + self.unknown.len();
        out.extend_from_slice(&(n as u16).to_le_bytes());
        let known = self.features.names().map(|n| -> &str { n });
        for name in known.chain(self.unknown.iter().map(String::as_str)) {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(&self.signature.to_le_bytes());
        out.extend_from_slice(&self.xcr0.to_le_bytes());
    }

    /// Reads a wire form ([`Profile::encode`]) from the start of `buf`:
    /// the profile and the bytes it took. Never panics; every bound is a
    /// typed error. The XCR0 mask is taken as sent (a component this
    /// build does not know shows up in [`Profile::missing_on`]).
    pub fn decode(buf: &[u8]) -> Result<(Profile, usize), ProfileError> {
        let mut r = Reader { buf, at: 0 };
        let name = r.name("profile name", MAX_PROFILE_NAME, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
        })?;
        let n = usize::from(u16::from_le_bytes(r.array("feature count")?));
        if n > MAX_WIRE_FEATURES {
            return Err(ProfileError::TooManyFeatures {
                count: n,
                max: MAX_WIRE_FEATURES,
            });
        }
        let mut features = FeatureSet::empty();
        let mut unknown: Vec<String> = Vec::new();
        for _ in 0..n {
            let f = r.name("feature name", MAX_FEATURE_NAME, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)
            })?;
            if !features.insert(f) && !unknown.iter().any(|u| u == f) {
                unknown.push(f.to_string());
            }
        }
        let signature = u32::from_le_bytes(r.array("signature")?);
        let xcr0 = u64::from_le_bytes(r.array("xcr0 mask")?);
        let p = Profile {
            name: name.to_string(),
            features,
            unknown,
            signature,
            xcr0,
        };
        Ok((p, r.at))
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.features.len() + self.unknown.len();
        write!(f, "{} ({n} features)", self.name)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProfileError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ProfileError::Truncated { what })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProfileError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn name(
        &mut self,
        what: &'static str,
        max: usize,
        ok: impl Fn(u8) -> bool,
    ) -> Result<&'a str, ProfileError> {
        let [len] = self.array(what)?;
        let len = usize::from(len);
        if len == 0 || len > max {
            return Err(ProfileError::BadLength { what, len, max });
        }
        let b = self.take(len, what)?;
        if let Some(&byte) = b.iter().find(|&&c| !ok(c)) {
            return Err(ProfileError::BadChar { what, byte });
        }
        // Only ASCII passed `ok`.
        core::str::from_utf8(b).map_err(|_| ProfileError::BadChar { what, byte: 0 })
    }
}

/// A VM's CPUID answers, computed once from its profile
/// ([`Profile::cpuid`]), so that a CPUID exit costs an array index. The two
/// leaves that depend on the guest's own state (1: its CR4.OSXSAVE; 0DH:
/// its XCR0) are computed on each call ([`CpuidTable::lookup`] leaves
/// them to the caller).
#[derive(Debug, Clone)]
pub struct CpuidTable {
    /// Leaves 0 to [`MAX_BASIC_LEAF`].
    basic: [[u32; 4]; MAX_BASIC_LEAF as usize + 1],
    /// Leaves 4000_0000H to [`HV_MAX_LEAF`].
    hv: [[u32; 4]; (HV_MAX_LEAF - 0x4000_0000) as usize + 1],
    /// Leaves 8000_0000H to [`MAX_EXT_LEAF`].
    ext: [[u32; 4]; (MAX_EXT_LEAF - 0x8000_0000) as usize + 1],
}

impl CpuidTable {
    /// The table of `profile` for a VM whose fixed inputs (APIC ID, TSC
    /// kHz) are those of `fixed`.
    pub fn new(profile: &Profile, fixed: &Dynamic, host: &dyn CpuidSource) -> CpuidTable {
        let mut t = CpuidTable {
            basic: [[0; 4]; MAX_BASIC_LEAF as usize + 1],
            hv: [[0; 4]; (HV_MAX_LEAF - 0x4000_0000) as usize + 1],
            ext: [[0; 4]; (MAX_EXT_LEAF - 0x8000_0000) as usize + 1],
        };
        for (first, slots) in [
            (0, &mut t.basic[..]),
            (0x4000_0000, &mut t.hv[..]),
            (0x8000_0000, &mut t.ext[..]),
        ] {
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = profile.cpuid(first + i as u32, 0, fixed, host);
            }
        }
        t
    }

    /// Leaves computed on every call.
    pub fn is_live(leaf: u32) -> bool {
        matches!(leaf, 1 | 0xd)
    }

    /// CPUID(`leaf`, `sub`) from the table; `None` for a live leaf.
    pub fn lookup(&self, leaf: u32, sub: u32) -> Option<[u32; 4]> {
        if Self::is_live(leaf) {
            return None;
        }
        // Of the cached leaves only 7 has sub-leaves, and only its first
        // is not zeros.
        if leaf == 7 && sub != 0 {
            return Some([0; 4]);
        }
        let slot = match leaf {
            0..=MAX_BASIC_LEAF => self.basic.get(leaf as usize),
            0x4000_0000..=HV_MAX_LEAF => self.hv.get((leaf - 0x4000_0000) as usize),
            0x8000_0000..=MAX_EXT_LEAF => self.ext.get((leaf - 0x8000_0000) as usize),
            _ => None,
        };
        Some(slot.copied().unwrap_or([0; 4]))
    }

    /// CPUID(`leaf`, `sub`) as [`Profile::cpuid`] answers it.
    pub fn get(
        &self,
        profile: &Profile,
        leaf: u32,
        sub: u32,
        dynamic: &Dynamic,
        host: &dyn CpuidSource,
    ) -> [u32; 4] {
        self.lookup(leaf, sub)
            .unwrap_or_else(|| profile.cpuid(leaf, sub, dynamic, host))
    }
}

#[cfg(test)]
mod tests;
