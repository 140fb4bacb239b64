//! The witness: the arbiter that decides which twin runs a guest when the
//! twins lose each other (VMware FT's atomic test-and-set on shared
//! storage).
//!
//! Per protected VM the witness keeps a *generation* and who holds it.
//! `ft enable` begins a generation ([`WitnessTable::begin`]); when a twin
//! declares the other dead it claims the VM at its generation
//! ([`WitnessTable::claim`]). The first claim wins, every later claim of
//! another twin at that generation loses, and a claim of an older
//! generation (a protection since replaced) always loses. A twin that
//! wins runs the guest; one that loses stops its copy; one that cannot
//! reach the witness runs nothing.
//!
//! Frames (channel types 56..=59, each payload starting with the `u16`
//! [`crate::VERSION`], integers little-endian, a VM name as `u8 len` and
//! that many bytes of UTF-8, at most [`MAX_VM_NAME`]):
//!
//! | type | frame | payload after the version |
//! |------|-------|---------------------------|
//! | 56 | `Begin` | `name` |
//! | 57 | `Claim` | `name, u64 generation, u8 role (0 primary, 1 secondary)` |
//! | 58 | `Begun` | `name, u64 generation` |
//! | 59 | `Verdict` | `name, u64 generation, u8 kind, 4 bytes IPv4, u8 role, u64 current` |
//!
//! Verdict kinds: 0 won, 1 lost (the holder's address and role), 2 stale
//! (`current`: the witness's generation), 3 refused (the table is full).
//! Unused fields are 0 and must be.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::VERSION;
use crate::codec::CodecError;

/// `Begin` (twin to witness).
pub const FRAME_BEGIN: u8 = 56;
/// `Claim` (twin to witness).
pub const FRAME_CLAIM: u8 = 57;
/// `Begun` (witness to twin).
pub const FRAME_BEGUN: u8 = 58;
/// `Verdict` (witness to twin).
pub const FRAME_VERDICT: u8 = 59;

/// Longest VM name in a witness frame.
pub const MAX_VM_NAME: usize = 64;

/// VMs a witness keeps at most.
pub const MAX_ENTRIES: usize = 256;

/// Which twin claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The twin that ran the guest.
    Primary,
    /// The twin that replayed it.
    Secondary,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Primary => 0,
            Role::Secondary => 1,
        }
    }

    fn from_byte(b: u8) -> Result<Role, CodecError> {
        match b {
            0 => Ok(Role::Primary),
            1 => Ok(Role::Secondary),
            _ => Err(CodecError::BadField {
                what: "role",
                value: u64::from(b),
            }),
        }
    }

    /// "primary" / "secondary".
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// The witness's answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The claimant holds the VM: it runs the guest.
    Won,
    /// Another twin holds it.
    Lost {
        /// The holder's address.
        holder: [u8; 4],
        /// The holder's role in the protection.
        role: Role,
    },
    /// The claim's generation was replaced by a later `ft enable`.
    Stale {
        /// The witness's generation.
        current: u64,
    },
    /// The witness keeps [`MAX_ENTRIES`] VMs already.
    Refused,
}

/// A frame to or from the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessFrame {
    /// Begin a new generation of `vm`'s protection.
    Begin {
        /// The VM.
        vm: String,
    },
    /// Claim `vm` at `generation`.
    Claim {
        /// The VM.
        vm: String,
        /// The protection's generation.
        generation: u64,
        /// The claimant's role.
        role: Role,
    },
    /// The generation `Begin` started (0: the table is full).
    Begun {
        /// The VM.
        vm: String,
        /// The new generation.
        generation: u64,
    },
    /// The answer to a claim.
    Verdict {
        /// The VM.
        vm: String,
        /// The claim's generation.
        generation: u64,
        /// The answer.
        verdict: Verdict,
    },
}

fn put_name(out: &mut Vec<u8>, vm: &str) {
    let mut end = vm.len().min(MAX_VM_NAME);
    while !vm.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&vm.as_bytes()[..end]);
}

/// Encodes a witness frame: its channel type and payload.
pub fn encode(f: &WitnessFrame) -> (u8, Vec<u8>) {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let ty = match f {
        WitnessFrame::Begin { vm } => {
            put_name(&mut out, vm);
            FRAME_BEGIN
        }
        WitnessFrame::Claim {
            vm,
            generation,
            role,
        } => {
            put_name(&mut out, vm);
            out.extend_from_slice(&generation.to_le_bytes());
            out.push(role.byte());
            FRAME_CLAIM
        }
        WitnessFrame::Begun { vm, generation } => {
            put_name(&mut out, vm);
            out.extend_from_slice(&generation.to_le_bytes());
            FRAME_BEGUN
        }
        WitnessFrame::Verdict {
            vm,
            generation,
            verdict,
        } => {
            put_name(&mut out, vm);
            out.extend_from_slice(&generation.to_le_bytes());
            let (kind, ip, role, current) = match *verdict {
                Verdict::Won => (0, [0; 4], 0, 0),
                Verdict::Lost { holder, role } => (1, holder, role.byte(), 0),
                Verdict::Stale { current } => (2, [0; 4], 0, current),
                Verdict::Refused => (3, [0; 4], 0, 0),
            };
            out.push(kind);
            out.extend_from_slice(&ip);
            out.push(role);
            out.extend_from_slice(&current.to_le_bytes());
            FRAME_VERDICT
        }
    };
    (ty, out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated("witness"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self) -> Result<String, CodecError> {
        let n = self.u8()? as usize;
        if n == 0 || n > MAX_VM_NAME {
            return Err(CodecError::BadField {
                what: "VM name length",
                value: n as u64,
            });
        }
        let b = self.take(n)?;
        let s = core::str::from_utf8(b).map_err(|_| CodecError::BadField {
            what: "VM name byte",
            value: 0,
        })?;
        if s.chars().any(char::is_control) {
            return Err(CodecError::BadField {
                what: "VM name byte",
                value: 0,
            });
        }
        Ok(String::from(s))
    }
}

fn zero(what: &'static str, v: u64) -> Result<(), CodecError> {
    if v == 0 {
        Ok(())
    } else {
        Err(CodecError::BadField { what, value: v })
    }
}

/// Decodes a witness frame of channel type `ty`. Never panics.
pub fn decode(ty: u8, payload: &[u8]) -> Result<WitnessFrame, CodecError> {
    if !(FRAME_BEGIN..=FRAME_VERDICT).contains(&ty) {
        return Err(CodecError::UnknownType(ty));
    }
    let mut r = Reader(payload);
    let v = r.take(2)?;
    let version = u16::from_le_bytes([v[0], v[1]]);
    if version != VERSION {
        return Err(CodecError::Version {
            got: version,
            want: VERSION,
        });
    }
    let vm = r.name()?;
    let f = match ty {
        FRAME_BEGIN => WitnessFrame::Begin { vm },
        FRAME_CLAIM => WitnessFrame::Claim {
            vm,
            generation: r.u64()?,
            role: Role::from_byte(r.u8()?)?,
        },
        FRAME_BEGUN => WitnessFrame::Begun {
            vm,
            generation: r.u64()?,
        },
        _ => {
            let generation = r.u64()?;
            let kind = r.u8()?;
            let ip: [u8; 4] = r
                .take(4)?
                .try_into()
                .map_err(|_| CodecError::Truncated("witness"))?;
            let role = r.u8()?;
            let current = r.u64()?;
            let ipv = u64::from(u32::from_le_bytes(ip));
            let verdict = match kind {
                0 => {
                    zero("address", ipv)?;
                    zero("role", u64::from(role))?;
                    zero("generation", current)?;
                    Verdict::Won
                }
                1 => {
                    zero("generation", current)?;
                    Verdict::Lost {
                        holder: ip,
                        role: Role::from_byte(role)?,
                    }
                }
                2 => {
                    zero("address", ipv)?;
                    zero("role", u64::from(role))?;
                    Verdict::Stale { current }
                }
                3 => {
                    zero("address", ipv)?;
                    zero("role", u64::from(role))?;
                    zero("generation", current)?;
                    Verdict::Refused
                }
                k => {
                    return Err(CodecError::BadField {
                        what: "verdict",
                        value: u64::from(k),
                    });
                }
            };
            WitnessFrame::Verdict {
                vm,
                generation,
                verdict,
            }
        }
    };
    if !r.0.is_empty() {
        return Err(CodecError::Trailing(r.0.len()));
    }
    Ok(f)
}

/// One VM's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The current generation.
    pub generation: u64,
    /// Who won it, if anyone claimed it yet.
    pub holder: Option<([u8; 4], Role)>,
}

/// The witness's state: per VM, a generation and its holder. The one
/// operation that decides is [`WitnessTable::claim`], an atomic
/// test-and-set (the witness handles one frame at a time).
#[derive(Debug, Default, Clone)]
pub struct WitnessTable {
    entries: BTreeMap<String, Entry>,
}

impl WitnessTable {
    /// An empty table.
    pub const fn new() -> WitnessTable {
        WitnessTable {
            entries: BTreeMap::new(),
        }
    }

    /// Starts a new generation of `vm` (a new protection): nobody holds
    /// it. `None` when the table is full.
    pub fn begin(&mut self, vm: &str) -> Option<u64> {
        if let Some(e) = self.entries.get_mut(vm) {
            e.generation += 1;
            e.holder = None;
            return Some(e.generation);
        }
        if self.entries.len() >= MAX_ENTRIES {
            return None;
        }
        self.entries.insert(
            String::from(vm),
            Entry {
                generation: 1,
                holder: None,
            },
        );
        Some(1)
    }

    /// `who` (address, role) claims `vm` at `generation`. The first claim
    /// of a generation wins and every other claimant's loses; the winner's
    /// repeated claim wins again (an answer lost in flight). A generation
    /// the witness does not know yet (it lost its table) is taken as new.
    pub fn claim(&mut self, vm: &str, generation: u64, who: ([u8; 4], Role)) -> Verdict {
        let fresh = Entry {
            generation,
            holder: Some(who),
        };
        let full = self.entries.len() >= MAX_ENTRIES;
        match self.entries.get_mut(vm) {
            None if full => Verdict::Refused,
            None => {
                self.entries.insert(String::from(vm), fresh);
                Verdict::Won
            }
            Some(e) if e.generation > generation => Verdict::Stale {
                current: e.generation,
            },
            Some(e) if e.generation < generation => {
                *e = fresh;
                Verdict::Won
            }
            Some(e) => match e.holder {
                None => {
                    e.holder = Some(who);
                    Verdict::Won
                }
                Some(h) if h == who => Verdict::Won,
                Some((holder, role)) => Verdict::Lost { holder, role },
            },
        }
    }

    /// The entry of `vm`.
    pub fn get(&self, vm: &str) -> Option<Entry> {
        self.entries.get(vm).copied()
    }

    /// Every entry, by VM name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Answers one request frame from the twin at `from`: the reply, or
    /// `None` for a frame a twin does not send.
    pub fn handle(&mut self, f: WitnessFrame, from: [u8; 4]) -> Option<WitnessFrame> {
        match f {
            WitnessFrame::Begin { vm } => {
                let generation = self.begin(&vm).unwrap_or(0);
                Some(WitnessFrame::Begun { vm, generation })
            }
            WitnessFrame::Claim {
                vm,
                generation,
                role,
            } => {
                let verdict = self.claim(&vm, generation, (from, role));
                Some(WitnessFrame::Verdict {
                    vm,
                    generation,
                    verdict,
                })
            }
            WitnessFrame::Begun { .. } | WitnessFrame::Verdict { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    const P: [u8; 4] = [10, 0, 0, 1];
    const S: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn first_claim_wins_and_the_other_twin_loses() {
        let mut t = WitnessTable::new();
        let g = t.begin("d").unwrap();
        assert_eq!(g, 1);
        assert_eq!(t.claim("d", g, (S, Role::Secondary)), Verdict::Won);
        assert_eq!(
            t.claim("d", g, (P, Role::Primary)),
            Verdict::Lost {
                holder: S,
                role: Role::Secondary
            }
        );
        // The winner asking again (its answer lost) wins again.
        assert_eq!(t.claim("d", g, (S, Role::Secondary)), Verdict::Won);
        // A new protection: a new generation nobody holds; the old one is
        // stale for both.
        let g2 = t.begin("d").unwrap();
        assert_eq!(g2, 2);
        assert_eq!(
            t.claim("d", g, (S, Role::Secondary)),
            Verdict::Stale { current: 2 }
        );
        assert_eq!(t.claim("d", g2, (P, Role::Primary)), Verdict::Won);
    }

    #[test]
    fn a_witness_that_lost_its_table_still_lets_only_one_win() {
        let mut t = WitnessTable::new();
        assert_eq!(t.claim("d", 7, (P, Role::Primary)), Verdict::Won);
        assert!(matches!(
            t.claim("d", 7, (S, Role::Secondary)),
            Verdict::Lost { .. }
        ));
        assert_eq!(t.get("d").unwrap().generation, 7);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = WitnessTable::new();
        for i in 0..MAX_ENTRIES {
            assert!(t.begin(&alloc::format!("vm{i}")).is_some());
        }
        assert_eq!(t.begin("one-more"), None);
        assert_eq!(t.claim("one-more", 1, (P, Role::Primary)), Verdict::Refused);
        // Known VMs still work.
        assert_eq!(t.begin("vm0"), Some(2));
    }

    fn every_frame() -> Vec<WitnessFrame> {
        let vm = String::from("d");
        vec![
            WitnessFrame::Begin { vm: vm.clone() },
            WitnessFrame::Claim {
                vm: vm.clone(),
                generation: 3,
                role: Role::Secondary,
            },
            WitnessFrame::Begun {
                vm: vm.clone(),
                generation: 4,
            },
            WitnessFrame::Verdict {
                vm: vm.clone(),
                generation: 3,
                verdict: Verdict::Won,
            },
            WitnessFrame::Verdict {
                vm: vm.clone(),
                generation: 3,
                verdict: Verdict::Lost {
                    holder: P,
                    role: Role::Primary,
                },
            },
            WitnessFrame::Verdict {
                vm: vm.clone(),
                generation: 3,
                verdict: Verdict::Stale { current: 9 },
            },
            WitnessFrame::Verdict {
                vm,
                generation: 3,
                verdict: Verdict::Refused,
            },
        ]
    }

    #[test]
    fn frames_round_trip_and_every_cut_or_extra_byte_is_refused() {
        for f in every_frame() {
            let (ty, p) = encode(&f);
            assert_eq!(decode(ty, &p), Ok(f.clone()));
            for cut in 0..p.len() {
                assert!(decode(ty, &p[..cut]).is_err(), "{f:?} cut at {cut}");
            }
            let mut longer = p.clone();
            longer.push(0);
            assert_eq!(decode(ty, &longer), Err(CodecError::Trailing(1)));
        }
        assert_eq!(decode(48, &[1, 0]), Err(CodecError::UnknownType(48)));
        // Empty and control-character names are refused.
        assert!(decode(FRAME_BEGIN, &[1, 0, 0]).is_err());
        assert!(decode(FRAME_BEGIN, &[1, 0, 1, 0x1b]).is_err());
    }

    #[test]
    fn replies_only_to_requests() {
        let mut t = WitnessTable::new();
        let r = t.handle(WitnessFrame::Begin { vm: "d".into() }, P);
        assert_eq!(
            r,
            Some(WitnessFrame::Begun {
                vm: "d".into(),
                generation: 1
            })
        );
        assert_eq!(t.handle(r.unwrap(), P), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(ty in 54u8..62, bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(ty, &bytes);
        }

        /// Whatever the order of claims and begins, at most one twin wins
        /// any one generation.
        #[test]
        fn at_most_one_winner_per_generation(ops in proptest::collection::vec((0u8..3, 0u64..4), 1..60)) {
            let mut t = WitnessTable::new();
            let mut winners: BTreeMap<u64, ([u8; 4], Role)> = BTreeMap::new();
            for (op, g) in ops {
                let who = match op {
                    0 => (P, Role::Primary),
                    1 => (S, Role::Secondary),
                    _ => { t.begin("d"); continue; }
                };
                if t.claim("d", g, who) == Verdict::Won {
                    let w = *winners.entry(g).or_insert(who);
                    prop_assert_eq!(w, who, "two winners of generation {}", g);
                }
            }
        }
    }
}
