//! Test doubles: physical memory in a `Vec<u8>` with a frame allocator over
//! it, and a model of how the processor walks EPT tables (used as an oracle
//! independent of [`crate::Ept`]'s own walker, and to set A/D flags the way
//! the hardware does).

use crate::{FrameAlloc, Hpa, PhysMem};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// "Physical" address of the arena's first byte: not zero, so code that
/// mixes an offset with an address fails.
pub const BASE: u64 = 0x1_0000_0000;

const FRAME: u64 = 4096;

/// Memory and frame allocator in one, lent out as a [`Mem`] and an
/// [`Alloc`] handle so both can be passed to one call.
pub struct Arena {
    inner: RefCell<Inner>,
}

struct Inner {
    bytes: Vec<u8>,
    /// Free frames, popped from the end: lowest address first.
    free: Vec<u64>,
    live: BTreeSet<u64>,
    /// Allocations still allowed, when limited.
    budget: Option<usize>,
}

impl Inner {
    /// Byte offset of `pa` in the arena; panics unless it is an aligned
    /// word inside a live frame, so a walk into a freed or foreign frame
    /// fails the test.
    fn offset(&self, pa: u64) -> usize {
        assert!(pa.is_multiple_of(8), "unaligned access at {pa:#x}");
        let frame = pa & !(FRAME - 1);
        assert!(
            self.live.contains(&frame),
            "access to {pa:#x}, not in a live table frame"
        );
        usize::try_from(pa - BASE).unwrap()
    }
}

impl Arena {
    /// An arena of `frames` free frames.
    pub fn new(frames: u64) -> Arena {
        let free = (0..frames).rev().map(|i| BASE + i * FRAME).collect();
        Arena {
            inner: RefCell::new(Inner {
                bytes: vec![0; usize::try_from(frames * FRAME).unwrap()],
                free,
                live: BTreeSet::new(),
                budget: None,
            }),
        }
    }

    pub fn mem(&self) -> Mem<'_> {
        Mem(self)
    }

    pub fn alloc(&self) -> Alloc<'_> {
        Alloc(self)
    }

    pub fn live_frames(&self) -> u64 {
        self.inner.borrow().live.len() as u64
    }

    /// Lets only `n` more allocations succeed (`None`: no limit).
    pub fn set_budget(&self, n: Option<usize>) {
        self.inner.borrow_mut().budget = n;
    }

    /// Contents of every live frame, for "nothing changed" checks.
    pub fn snapshot(&self) -> Vec<(u64, Vec<u8>)> {
        let inner = self.inner.borrow();
        inner
            .live
            .iter()
            .map(|&f| {
                let o = usize::try_from(f - BASE).unwrap();
                (f, inner.bytes[o..o + FRAME as usize].to_vec())
            })
            .collect()
    }

    pub fn read(&self, pa: u64) -> u64 {
        let inner = self.inner.borrow();
        let o = inner.offset(pa);
        u64::from_le_bytes(inner.bytes[o..o + 8].try_into().unwrap())
    }

    pub fn write(&self, pa: u64, v: u64) {
        let mut inner = self.inner.borrow_mut();
        let o = inner.offset(pa);
        inner.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
}

pub struct Mem<'a>(&'a Arena);

impl PhysMem for Mem<'_> {
    fn read_u64(&self, pa: Hpa) -> u64 {
        self.0.read(pa.as_u64())
    }

    fn write_u64(&mut self, pa: Hpa, v: u64) {
        self.0.write(pa.as_u64(), v);
    }
}

pub struct Alloc<'a>(&'a Arena);

impl FrameAlloc for Alloc<'_> {
    fn alloc_zeroed(&mut self) -> Option<Hpa> {
        let mut inner = self.0.inner.borrow_mut();
        if let Some(n) = inner.budget {
            if n == 0 {
                return None;
            }
            inner.budget = Some(n - 1);
        }
        let f = inner.free.pop()?;
        let o = usize::try_from(f - BASE).unwrap();
        inner.bytes[o..o + FRAME as usize].fill(0);
        inner.live.insert(f);
        Some(Hpa::new(f))
    }

    fn free(&mut self, pa: Hpa) {
        let mut inner = self.0.inner.borrow_mut();
        let f = pa.as_u64();
        assert!(
            inner.live.remove(&f),
            "free of {f:#x}, which is not allocated"
        );
        // No need to poison the frame: `Inner::offset` refuses any access to
        // it until it is allocated (and zeroed) again.
        inner.free.push(f);
    }
}

/// Kind of guest access, for [`hw_access`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// What the processor would use for a guest-physical address.
#[derive(Debug, PartialEq, Eq)]
pub struct HwLeaf {
    /// Entries used, root first.
    pub slots: Vec<u64>,
    /// Rights: AND of bits 2:0 over the walk.
    pub rwx: u64,
    pub hpa: u64,
    pub size: u64,
}

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Walks like the processor does (SDM 29.3.2): an entry is present when
/// any of bits 2:0 is set, bit 7 of a PDE maps a 2 MiB page. Panics on
/// what the processor would report as an EPT misconfiguration (29.3.3.1)
/// or on a malformed EPTP (25.6.11).
pub fn hw_walk(arena: &Arena, eptp: u64, gpa: u64) -> Option<HwLeaf> {
    assert_eq!(eptp & 7, 6, "EPTP memory type must be WB");
    assert_eq!((eptp >> 3) & 7, 3, "EPTP walk length must be 4");
    assert_eq!(eptp & 0xf80, 0, "EPTP reserved bits 11:7");
    assert!(gpa < 1 << 48);
    let mut table = eptp & ADDR;
    let mut slots = Vec::new();
    let mut rwx = 7;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let slot = table + ((gpa >> shift) & 511) * 8;
        let e = arena.read(slot);
        if e & 7 == 0 {
            return None;
        }
        assert!(e & 3 != 2, "write without read at level {level}: {e:#x}");
        slots.push(slot);
        rwx &= e & 7;
        let leaf = level == 1 || (level == 2 && e & 0x80 != 0);
        if leaf {
            let memtype = (e >> 3) & 7;
            assert!(
                matches!(memtype, 0 | 1 | 4 | 5 | 6),
                "reserved memory type {memtype}"
            );
            let size = 1u64 << shift;
            assert_eq!(
                e & ADDR & (size - 1),
                0,
                "reserved address bits in a large leaf"
            );
            return Some(HwLeaf {
                slots,
                rwx,
                hpa: (e & ADDR) + (gpa & (size - 1)),
                size,
            });
        }
        assert_eq!(e & 0xf8, 0, "reserved bits 7:3 in a non-leaf entry: {e:#x}");
        table = e & ADDR;
    }
    unreachable!("level 1 is always a leaf")
}

/// A guest access as the processor performs it: `None` on an EPT
/// violation, otherwise the host address, after setting the accessed flag
/// on every entry used and, for a write, the dirty flag on the leaf, when
/// EPTP bit 6 enables them (29.3.5).
pub fn hw_access(arena: &Arena, eptp: u64, gpa: u64, access: Access) -> Option<u64> {
    let leaf = hw_walk(arena, eptp, gpa)?;
    let need = match access {
        Access::Read => 1,
        Access::Write => 2,
        Access::Fetch => 4,
    };
    if leaf.rwx & need == 0 {
        return None;
    }
    if eptp & (1 << 6) != 0 {
        for &s in &leaf.slots {
            arena.write(s, arena.read(s) | 1 << 8);
        }
        if access == Access::Write {
            let last = *leaf.slots.last().unwrap();
            arena.write(last, arena.read(last) | 1 << 9);
        }
    }
    Some(leaf.hpa)
}
