use super::*;
use crate::invept_descriptor;
use crate::testkit::{Access, Arena, BASE, hw_access, hw_walk};
use std::collections::BTreeMap;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const R: Perm = Perm::READ;
const RW: Perm = Perm::READ.union(Perm::WRITE);
const RX: Perm = Perm::READ.union(Perm::EXECUTE);
const RWX: Perm = Perm::all();

/// An EPT over an arena, with shorthands taking raw addresses.
struct Vm {
    arena: Arena,
    ept: Ept,
}

impl Vm {
    fn new() -> Vm {
        Vm::with_frames(256)
    }

    fn with_frames(frames: u64) -> Vm {
        let arena = Arena::new(frames);
        let ept = Ept::new(&mut arena.alloc()).unwrap();
        Vm { arena, ept }
    }

    fn map_type(
        &mut self,
        gpa: u64,
        hpa: u64,
        len: u64,
        perm: Perm,
        memtype: MemType,
    ) -> Result<(), EptError> {
        let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
        self.ept.map(
            &mut mem,
            &mut alloc,
            Gpa::new(gpa),
            Hpa::new(hpa),
            len,
            perm,
            memtype,
        )
    }

    fn map(&mut self, gpa: u64, hpa: u64, len: u64, perm: Perm) -> Result<(), EptError> {
        self.map_type(gpa, hpa, len, perm, MemType::WriteBack)
    }

    fn unmap(&mut self, gpa: u64, len: u64) -> Result<u64, EptError> {
        let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
        self.ept.unmap(&mut mem, &mut alloc, Gpa::new(gpa), len)
    }

    fn protect(&mut self, gpa: u64, len: u64, perm: Perm) -> Result<(), EptError> {
        let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
        self.ept
            .protect(&mut mem, &mut alloc, Gpa::new(gpa), len, perm)
    }

    fn write_protect(&mut self, gpa: u64, len: u64) -> Result<(), EptError> {
        let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
        self.ept
            .write_protect(&mut mem, &mut alloc, Gpa::new(gpa), len)
    }

    fn translate(&self, gpa: u64) -> Option<Translation> {
        self.ept.translate(&self.arena.mem(), Gpa::new(gpa))
    }

    fn take_dirty(&mut self, gpa: u64, len: u64) -> Result<Vec<u64>, EptError> {
        let mut gfns = Vec::new();
        let n = self
            .ept
            .take_dirty(&mut self.arena.mem(), Gpa::new(gpa), len, |g| {
                gfns.push(g.as_u64())
            })?;
        assert_eq!(n, gfns.len() as u64);
        Ok(gfns)
    }

    fn leaves(&self) -> Vec<(u64, PageSize, EptEntry)> {
        let mut v = Vec::new();
        self.ept.for_each_leaf(&self.arena.mem(), |g, l| {
            v.push((g.as_u64(), l.page_size, l.entry))
        });
        v
    }

    /// A guest access through the processor model, A/D enabled.
    fn access(&self, gpa: u64, access: Access) -> Option<u64> {
        hw_access(&self.arena, self.ept.eptp(true), gpa, access)
    }

    /// `translate` and the processor model agree on `gpa`.
    fn check_hw(&self, gpa: u64) {
        let hw = hw_walk(&self.arena, self.ept.eptp(false), gpa);
        match self.translate(gpa) {
            Some(t) if !t.perm.is_empty() => {
                let hw = hw
                    .unwrap_or_else(|| panic!("{gpa:#x}: translate {t:?}, processor sees nothing"));
                assert_eq!(hw.hpa, t.hpa.as_u64(), "{gpa:#x}");
                assert_eq!(hw.rwx, u64::from(t.perm.bits()), "{gpa:#x}");
                assert_eq!(hw.size, t.page_size.bytes(), "{gpa:#x}");
            }
            other => assert_eq!(hw, None, "{gpa:#x}: translate {other:?}"),
        }
    }

    /// The tree's frame count is what the arena has handed out.
    fn check_frames(&self) {
        assert_eq!(self.ept.table_frames(), self.arena.live_frames());
    }
}

fn t(hpa: u64, perm: Perm, page_size: PageSize) -> Option<Translation> {
    Some(Translation {
        hpa: Hpa::new(hpa),
        perm,
        memtype: MemType::WriteBack,
        page_size,
    })
}

#[test]
fn map_then_translate_every_page() {
    let mut vm = Vm::new();
    // Two head pages, two 2 MiB pages, three tail pages.
    let gpa = M2 - 2 * K4;
    let hpa = 0x8_0000_0000 + M2 - 2 * K4;
    let len = 2 * M2 + 5 * K4;
    vm.map(gpa, hpa, len, RW).unwrap();
    assert_eq!(vm.ept.pages_mapped(), len / K4);
    for off in (0..len).step_by(K4 as usize) {
        let size = if (M2..3 * M2).contains(&(gpa + off)) {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        };
        assert_eq!(
            vm.translate(gpa + off + 0x123),
            t(hpa + off + 0x123, RW, size),
            "{off:#x}"
        );
        vm.check_hw(gpa + off);
    }
    assert_eq!(vm.translate(gpa - K4), None);
    assert_eq!(vm.translate(gpa + len), None);
    // PML4, PDPT, PD, and one page table each for the head and the tail.
    assert_eq!(vm.ept.table_frames(), 5);
    vm.check_frames();
}

#[test]
fn a_host_range_out_of_2m_phase_gets_4k_pages() {
    let mut vm = Vm::new();
    vm.map_type(G1, 0x9_0000_1000, 2 * M2, RX, MemType::Uncacheable)
        .unwrap();
    for off in (0..2 * M2).step_by(K4 as usize) {
        let tr = vm.translate(G1 + off).unwrap();
        assert_eq!(tr.hpa, Hpa::new(0x9_0000_1000 + off));
        assert_eq!(tr.page_size, PageSize::Size4K);
        assert_eq!(tr.memtype, MemType::Uncacheable);
    }
    assert_eq!(vm.ept.table_frames(), 5);
    vm.check_frames();
}

#[test]
fn the_last_page_of_the_48_bit_space_can_be_mapped() {
    let mut vm = Vm::new();
    let top = (1 << 48) - K4;
    vm.map(top, 0xf_ffff_ffff_f000, K4, R).unwrap();
    assert_eq!(
        vm.translate(top + 8),
        t(0xf_ffff_ffff_f008, R, PageSize::Size4K)
    );
    vm.check_hw(top);
    assert_eq!(vm.unmap(top, K4), Ok(1));
    assert_eq!(vm.arena.live_frames(), 1);
}

#[test]
fn overlapping_map_is_refused_and_changes_nothing() {
    let mut vm = Vm::new();
    vm.map(G1 + M2, 0x10_0000_0000, M2, RW).unwrap();
    let before = vm.arena.snapshot();
    // Starts in a 1 GiB region with no tables yet: only the up-front check
    // keeps map from building tables there before it meets the overlap.
    assert_eq!(
        vm.map(G1 - K4, 0x20_0000_0000, 3 * M2, RW),
        Err(EptError::AlreadyMapped(Gpa::new(G1 + M2)))
    );
    assert_eq!(
        vm.map(G1 + M2 + 0x1_0000, 0x20_0000_0000, K4, RW),
        Err(EptError::AlreadyMapped(Gpa::new(G1 + M2 + 0x1_0000)))
    );
    assert_eq!(
        vm.map(G1 + 2 * M2 - K4, 0x20_0000_0000, 2 * K4, RW),
        Err(EptError::AlreadyMapped(Gpa::new(G1 + 2 * M2 - K4)))
    );
    assert_eq!(vm.arena.snapshot(), before);
    assert_eq!(vm.ept.pages_mapped(), 512);
    vm.check_frames();
}

#[test]
fn bad_arguments_are_errors_that_change_nothing() {
    let mut vm = Vm::new();
    vm.map(0, 0x10_0000_0000, M2, RW).unwrap();
    let before = vm.arena.snapshot();
    let g = Gpa::new;
    let top = 1 << 48;
    let cases = [
        (
            vm.map(0x40_0001, 0x1000, K4, R),
            EptError::UnalignedGpa(g(0x40_0001)),
        ),
        (
            vm.map(0x40_0000, 0x1800, K4, R),
            EptError::UnalignedHpa(Hpa::new(0x1800)),
        ),
        (
            vm.map(0x40_0000, 0x1000, 0x1800, R),
            EptError::UnalignedLength(0x1800, g(0x40_0000)),
        ),
        (
            vm.map(0x40_0000, 0x1000, 0, R),
            EptError::ZeroLength(g(0x40_0000)),
        ),
        (
            vm.map(top - K4, 0x1000, 2 * K4, R),
            EptError::GpaOutOfRange {
                gpa: g(top - K4),
                len: 2 * K4,
            },
        ),
        (
            vm.map(top, 0x1000, K4, R),
            EptError::GpaOutOfRange {
                gpa: g(top),
                len: K4,
            },
        ),
        (
            vm.map(u64::MAX - 0xfff, 0x1000, 2 * K4, R),
            EptError::GpaOutOfRange {
                gpa: g(u64::MAX - 0xfff),
                len: 2 * K4,
            },
        ),
        (
            vm.map(0x40_0000, (1 << 52) - K4, 2 * K4, R),
            EptError::HpaOutOfRange {
                hpa: Hpa::new((1 << 52) - K4),
                len: 2 * K4,
            },
        ),
        (
            vm.map(0x40_0000, u64::MAX - 0xfff, 2 * K4, R),
            EptError::HpaOutOfRange {
                hpa: Hpa::new(u64::MAX - 0xfff),
                len: 2 * K4,
            },
        ),
        (
            vm.map(0x40_0000, 0x1000, K4, Perm::WRITE),
            EptError::WriteWithoutRead(g(0x40_0000)),
        ),
        (
            vm.map(0x40_0000, 0x1000, K4, Perm::WRITE | Perm::EXECUTE),
            EptError::WriteWithoutRead(g(0x40_0000)),
        ),
        (
            vm.unmap(0x800, K4).map(|_| ()),
            EptError::UnalignedGpa(g(0x800)),
        ),
        (vm.unmap(0, 0).map(|_| ()), EptError::ZeroLength(g(0))),
        (
            vm.unmap(0, K4 + 1).map(|_| ()),
            EptError::UnalignedLength(K4 + 1, g(0)),
        ),
        (
            vm.unmap(0, u64::MAX - 0xfff).map(|_| ()),
            EptError::GpaOutOfRange {
                gpa: g(0),
                len: u64::MAX - 0xfff,
            },
        ),
        (
            vm.protect(0, K4, Perm::WRITE),
            EptError::WriteWithoutRead(g(0)),
        ),
        (vm.protect(0x10, K4, R), EptError::UnalignedGpa(g(0x10))),
        (vm.protect(0, M2 + K4, R), EptError::NotMapped(g(M2))),
        (
            vm.write_protect(top - K4, M2),
            EptError::GpaOutOfRange {
                gpa: g(top - K4),
                len: M2,
            },
        ),
        (vm.take_dirty(0, 0).map(|_| ()), EptError::ZeroLength(g(0))),
        (
            vm.take_dirty(0x4, K4).map(|_| ()),
            EptError::UnalignedGpa(g(0x4)),
        ),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
    assert_eq!(vm.arena.snapshot(), before);
    assert_eq!(vm.translate(top), None);
    assert_eq!(vm.translate(u64::MAX), None);
}

#[test]
fn unmap_frees_the_tables_it_empties() {
    let mut vm = Vm::new();
    // In three PML4 entries, across a 1 GiB boundary, and mixed sizes.
    vm.map(G1 - 3 * K4, 0x10_0000_0000, 3 * K4 + M2, RW)
        .unwrap();
    vm.map(3 << 39, 0x20_0000_0000, 4 * M2 + K4, RX).unwrap();
    vm.map((1 << 48) - M2, 0x30_0000_0000, M2, R).unwrap();
    vm.check_frames();
    assert!(vm.ept.table_frames() > 5);

    assert_eq!(vm.unmap(0, 2 * G1), Ok(3 + 512));
    assert_eq!(vm.unmap(0, 2 * G1), Ok(0), "unmapping holes is allowed");
    assert_eq!(vm.unmap(3 << 39, 4 * M2 + K4), Ok(4 * 512 + 1));
    vm.check_frames();
    assert_eq!(
        vm.ept.table_frames(),
        3,
        "PML4 and the top region's PDPT and PD"
    );
    assert_eq!(vm.unmap((1 << 48) - G1, G1), Ok(512));

    assert_eq!(vm.ept.pages_mapped(), 0);
    assert_eq!(vm.ept.table_frames(), 1);
    assert_eq!(vm.arena.live_frames(), 1, "only the PML4 is left");
    assert!(vm.arena.snapshot()[0].1.iter().all(|&b| b == 0));
}

#[test]
fn unmapping_part_of_a_2m_page_splits_it() {
    let mut vm = Vm::new();
    let h = 0x10_0000_0000;
    vm.map(M2, h, M2, RWX).unwrap();
    assert_eq!(vm.unmap(M2 + K4, 2 * K4), Ok(2));
    assert_eq!(vm.ept.pages_mapped(), 510);
    assert_eq!(vm.translate(M2), t(h, RWX, PageSize::Size4K));
    assert_eq!(vm.translate(M2 + K4), None);
    assert_eq!(vm.translate(M2 + 2 * K4), None);
    for off in (3 * K4..M2).step_by(K4 as usize) {
        assert_eq!(vm.translate(M2 + off), t(h + off, RWX, PageSize::Size4K));
        vm.check_hw(M2 + off);
    }
    vm.check_frames();
    // The rest goes too, and with it the split-off page table.
    assert_eq!(vm.unmap(0, 2 * M2), Ok(510));
    assert_eq!(vm.arena.live_frames(), 1);
}

#[test]
fn a_range_across_two_2m_pages_splits_both() {
    let mut vm = Vm::new();
    let h = 0x10_0000_0000;
    vm.map(G1, h, 2 * M2, RW).unwrap();
    let cut = G1 + M2 - 2 * K4..G1 + M2 + 3 * K4;
    vm.protect(cut.start, cut.end - cut.start, RX).unwrap();
    assert_eq!(vm.ept.table_frames(), 3 + 2, "both 2 MiB pages split");
    for off in (0..2 * M2).step_by(K4 as usize) {
        let perm = if cut.contains(&(G1 + off)) { RX } else { RW };
        assert_eq!(
            vm.translate(G1 + off),
            t(h + off, perm, PageSize::Size4K),
            "{off:#x}"
        );
    }

    let mut vm = Vm::new();
    vm.map(G1, h, 2 * M2, RW).unwrap();
    assert_eq!(vm.unmap(cut.start, cut.end - cut.start), Ok(5));
    for off in (0..2 * M2).step_by(K4 as usize) {
        let want = if cut.contains(&(G1 + off)) {
            None
        } else {
            t(h + off, RW, PageSize::Size4K)
        };
        assert_eq!(vm.translate(G1 + off), want, "{off:#x}");
    }
    vm.check_frames();
}

#[test]
fn a_split_that_runs_out_of_frames_changes_no_translation() {
    let mut vm = Vm::new();
    vm.map(0, 0x10_0000_0000, 2 * M2, RW).unwrap();
    let frames = vm.ept.table_frames();
    vm.arena.set_budget(Some(0));
    assert_eq!(vm.unmap(K4, K4), Err(EptError::OutOfFrames));
    assert_eq!(vm.protect(M2 + K4, K4, R), Err(EptError::OutOfFrames));
    for off in (0..2 * M2).step_by(K4 as usize) {
        assert_eq!(
            vm.translate(off),
            t(0x10_0000_0000 + off, RW, PageSize::Size2M)
        );
    }
    assert_eq!(vm.ept.table_frames(), frames);
    vm.check_frames();
}

#[test]
fn protect_changes_exactly_the_requested_pages() {
    let mut vm = Vm::new();
    let h = 0x10_0000_0000;
    // 4 KiB pages below 2 MiB, then two 2 MiB pages.
    vm.map(M2 - 4 * K4, h - 4 * K4, 4 * K4 + 2 * M2, RW)
        .unwrap();
    let frames = vm.ept.table_frames();

    // Three pages in the middle of the first 2 MiB page.
    vm.protect(M2 + 5 * K4, 3 * K4, R).unwrap();
    assert_eq!(vm.ept.table_frames(), frames + 1, "one split");
    for off in (0..M2).step_by(K4 as usize) {
        let perm = if (5 * K4..8 * K4).contains(&off) {
            R
        } else {
            RW
        };
        assert_eq!(
            vm.translate(M2 + off),
            t(h + off, perm, PageSize::Size4K),
            "{off:#x}"
        );
        vm.check_hw(M2 + off);
    }
    // The second 2 MiB page and the low pages are untouched.
    assert_eq!(
        vm.translate(2 * M2 + 0x5000),
        t(h + M2 + 0x5000, RW, PageSize::Size2M)
    );
    assert_eq!(vm.translate(M2 - K4), t(h - K4, RW, PageSize::Size4K));

    // Across 4 KiB pages and into the second 2 MiB page, all of it.
    vm.protect(M2 - 2 * K4, 2 * K4 + 2 * M2, RX).unwrap();
    assert_eq!(
        vm.translate(M2 - 3 * K4),
        t(h - 3 * K4, RW, PageSize::Size4K)
    );
    assert_eq!(
        vm.translate(M2 - 2 * K4),
        t(h - 2 * K4, RX, PageSize::Size4K)
    );
    assert_eq!(
        vm.translate(M2 + 6 * K4),
        t(h + 6 * K4, RX, PageSize::Size4K)
    );
    assert_eq!(
        vm.translate(2 * M2 + 0x5000),
        t(h + M2 + 0x5000, RX, PageSize::Size2M)
    );
    assert_eq!(
        vm.ept.table_frames(),
        frames + 1,
        "a whole 2 MiB page needs no split"
    );

    // Part of a 2 MiB page, to the rights it already has: no split.
    vm.protect(2 * M2 + K4, K4, RX).unwrap();
    assert_eq!(
        vm.translate(2 * M2 + K4),
        t(h + M2 + K4, RX, PageSize::Size2M)
    );
    assert_eq!(vm.ept.table_frames(), frames + 1);

    // A hole in the range: refused, nothing changed.
    let before = vm.arena.snapshot();
    assert_eq!(
        vm.protect(M2 - 8 * K4, 8 * K4, RWX),
        Err(EptError::NotMapped(Gpa::new(M2 - 8 * K4)))
    );
    assert_eq!(
        vm.protect(2 * M2, M2 + K4, RWX),
        Err(EptError::NotMapped(Gpa::new(3 * M2)))
    );
    assert_eq!(vm.arena.snapshot(), before);
    vm.check_frames();
}

#[test]
fn no_access_keeps_the_mapping_but_traps_every_access() {
    let mut vm = Vm::new();
    vm.map(G1, 0x10_0000_0000, M2, RWX).unwrap();
    vm.protect(G1 + K4, K4, Perm::empty()).unwrap();
    assert_eq!(
        vm.translate(G1 + K4),
        t(0x10_0000_1000, Perm::empty(), PageSize::Size4K)
    );
    assert_eq!(vm.access(G1 + K4, Access::Read), None);
    assert_eq!(vm.access(G1, Access::Read), Some(0x10_0000_0000));
    vm.check_hw(G1 + K4);
    assert_eq!(vm.ept.pages_mapped(), 512);
    vm.protect(G1 + K4, K4, RW).unwrap();
    assert_eq!(vm.access(G1 + K4, Access::Write), Some(0x10_0000_1000));
    assert_eq!(vm.access(G1 + K4, Access::Fetch), None);
    assert_eq!(vm.unmap(G1, M2), Ok(512));
    assert_eq!(vm.arena.live_frames(), 1);
}

#[test]
fn write_protect_removes_only_write() {
    let mut vm = Vm::new();
    vm.map(0, 0x10_0000_0000, M2, RWX).unwrap();
    vm.map(M2, 0x20_0000_0000, 4 * K4, RW).unwrap();
    vm.map(M2 + 4 * K4, 0x30_0000_0000, K4, R).unwrap();
    vm.write_protect(M2 - K4, 6 * K4).unwrap();
    assert_eq!(vm.translate(M2 - 2 * K4).unwrap().perm, RWX);
    assert_eq!(vm.translate(M2 - K4).unwrap().perm, RX);
    assert_eq!(vm.translate(M2).unwrap().perm, R);
    assert_eq!(vm.translate(M2 + 4 * K4).unwrap().perm, R);
    assert_eq!(vm.access(M2, Access::Write), None);
    assert_eq!(vm.access(0, Access::Write), Some(0x10_0000_0000));
}

#[test]
fn eptp_for_a_known_root() {
    let vm = Vm::new();
    // The arena hands out its lowest frame first.
    assert_eq!(vm.ept.root(), Hpa::new(BASE));
    // WB (6) in 2:0, walk length 4 - 1 = 3 in 5:3, A/D in bit 6.
    assert_eq!(vm.ept.eptp(false), 0x1_0000_001e);
    assert_eq!(vm.ept.eptp(true), 0x1_0000_005e);
    assert_eq!(invept_descriptor(vm.ept.eptp(true)), [0x1_0000_005e, 0]);
}

#[test]
fn take_dirty_reports_and_clears_exactly_the_dirty_pages() {
    let mut vm = Vm::new();
    vm.map(M2, 0x10_0000_0000, M2, RW).unwrap();
    vm.map(2 * M2, 0x20_0000_1000, 16 * K4, RW).unwrap();
    assert_eq!(vm.take_dirty(0, G1), Ok(vec![]));

    vm.access(M2 + 0x1234, Access::Write).unwrap();
    vm.access(2 * M2 + 3 * K4, Access::Write).unwrap();
    vm.access(2 * M2 + 7 * K4 + 8, Access::Write).unwrap();
    vm.access(2 * M2 + 5 * K4, Access::Read).unwrap();

    let mut want: Vec<u64> = (0x200..0x400).collect();
    want.extend([0x403, 0x407]);
    assert_eq!(vm.take_dirty(0, G1), Ok(want));
    assert_eq!(vm.take_dirty(0, G1), Ok(vec![]), "flags were cleared");
    // Only D was cleared: the processor's accessed flags stay.
    let leaves = vm.leaves();
    assert!(leaves.iter().all(|(_, _, e)| !e.dirty()));
    assert!(
        leaves
            .iter()
            .find(|(g, _, _)| *g == 2 * M2 + 5 * K4)
            .unwrap()
            .2
            .accessed()
    );

    // A range that cuts a dirty 2 MiB page reports its part and leaves the
    // flag for the rest.
    vm.access(M2, Access::Write).unwrap();
    assert_eq!(vm.take_dirty(M2 + K4, 2 * K4), Ok(vec![0x201, 0x202]));
    assert_eq!(vm.take_dirty(0, G1).unwrap().len(), 512);
    vm.check_frames();
}

#[test]
fn splitting_keeps_dirty_flags() {
    let mut vm = Vm::new();
    vm.map(0, 0x10_0000_0000, M2, RW).unwrap();
    vm.access(0x1_0000, Access::Write).unwrap();
    vm.protect(K4, K4, R).unwrap();
    assert_eq!(
        vm.take_dirty(0, M2).unwrap(),
        (0..512).collect::<Vec<u64>>()
    );
}

#[test]
fn map_out_of_frames_leaves_the_tables_as_they_were() {
    let mut vm = Vm::new();
    // PML4, PDPT and PD exist for the first GiB.
    vm.map(G1 - 2 * M2, 0x10_0000_0000, M2, RW).unwrap();
    let before = vm.arena.snapshot();
    let frames = vm.ept.table_frames();

    // Needs a page table.
    vm.arena.set_budget(Some(0));
    assert_eq!(
        vm.map(0, 0x20_0000_0000, K4, RW),
        Err(EptError::OutOfFrames)
    );
    assert_eq!(vm.arena.snapshot(), before);

    // Across 1 GiB: the two pages below map (one new page table), the ones
    // above need a PD and a PT, and only one frame is left for them.
    vm.arena.set_budget(Some(2));
    assert_eq!(
        vm.map(G1 - 2 * K4, 0x20_0000_0000, 4 * K4, RW),
        Err(EptError::OutOfFrames)
    );
    assert_eq!(vm.arena.snapshot(), before);
    // Same in a fresh 512 GiB region: PDPT, PD, PT for the first page.
    vm.arena.set_budget(Some(2));
    assert_eq!(
        vm.map(5 << 39, 0x20_0000_0000, K4, RW),
        Err(EptError::OutOfFrames)
    );
    assert_eq!(vm.arena.snapshot(), before);

    assert_eq!(vm.ept.table_frames(), frames);
    assert_eq!(vm.ept.pages_mapped(), 512);
    vm.check_frames();
    vm.arena.set_budget(None);
    vm.map(G1 - 2 * K4, 0x20_0000_0000, 4 * K4, RW).unwrap();
}

/// Hands out one unusable frame and records what it gets back.
struct BadAlloc {
    frame: Hpa,
    freed: Vec<Hpa>,
}

impl FrameAlloc for BadAlloc {
    fn alloc_zeroed(&mut self) -> Option<Hpa> {
        Some(self.frame)
    }

    fn free(&mut self, pa: Hpa) {
        self.freed.push(pa);
    }
}

#[test]
fn unusable_frames_from_the_allocator_are_refused_and_returned() {
    for frame in [Hpa::new(0x1234), Hpa::new(1 << 52), Hpa::new(u64::MAX)] {
        let mut alloc = BadAlloc {
            frame,
            freed: vec![],
        };
        assert_eq!(Ept::new(&mut alloc).unwrap_err(), EptError::BadFrame(frame));
        assert_eq!(alloc.freed, vec![frame]);
    }
}

#[test]
fn destroy_frees_every_table() {
    let mut vm = Vm::new();
    vm.map(0, 0x10_0000_0000, 3 * M2 + 5 * K4, RW).unwrap();
    vm.map(7 << 39, 0x20_0000_0000, K4, RW).unwrap();
    vm.protect(K4, K4, R).unwrap();
    assert!(vm.arena.live_frames() > 1);
    let Vm { arena, ept } = vm;
    ept.destroy(&mut arena.mem(), &mut arena.alloc());
    assert_eq!(arena.live_frames(), 0);
}

#[test]
fn for_each_leaf_walks_in_address_order() {
    let mut vm = Vm::new();
    vm.map(9 << 39, 0x30_0000_0000, K4, R).unwrap();
    vm.map(M2 - K4, 0x10_0000_0000 - K4, K4 + M2, RW).unwrap();
    let got: Vec<(u64, PageSize, u64)> = vm
        .leaves()
        .into_iter()
        .map(|(g, s, e)| (g, s, e.addr().as_u64()))
        .collect();
    assert_eq!(
        got,
        vec![
            (M2 - K4, PageSize::Size4K, 0x10_0000_0000 - K4),
            (M2, PageSize::Size2M, 0x10_0000_0000),
            (9 << 39, PageSize::Size4K, 0x30_0000_0000),
        ]
    );
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_operations_agree_with_a_model() {
    // 8 MiB straddling the boundary between PML4 entries 0 and 1.
    const WIN: u64 = (1 << 39) - 4 * M2;
    const PAGES: u64 = 8 * M2 / K4;
    const PERMS: [Perm; 7] = [R, RW, RX, RWX, Perm::EXECUTE, Perm::empty(), Perm::WRITE];

    for seed in [1, 0x9e37_79b9_7f4a_7c15, 0xdead_beef] {
        let mut rng = Rng(seed);
        let mut vm = Vm::with_frames(1024);
        // gfn -> (hfn, perm)
        let mut model: BTreeMap<u64, (u64, Perm)> = BTreeMap::new();
        let mut stats = [0u32; 3];

        for step in 0..300 {
            let op = rng.below(4);
            let (first, count) = if op == 3 && !model.is_empty() && rng.below(2) == 0 {
                // Protect works on mapped ranges only: often pick one.
                let g = *model
                    .keys()
                    .nth(rng.below(model.len() as u64) as usize)
                    .unwrap();
                let mut run = 1;
                while model.contains_key(&(g + run)) {
                    run += 1;
                }
                (g - WIN / K4, 1 + rng.below(run))
            } else if rng.below(3) == 0 {
                let block = rng.below(8);
                (block * 512, (1 + rng.below(8 - block)) * 512)
            } else {
                let s = rng.below(PAGES);
                (s, 1 + rng.below((PAGES - s).min(700)))
            };
            let gpa = WIN + first * K4;
            let gfns = gpa / K4..gpa / K4 + count;
            let perm = PERMS[rng.below(PERMS.len() as u64) as usize];

            match op {
                0 | 1 => {
                    let hpa = if rng.below(2) == 0 {
                        0x40_0000_0000 + rng.below(64) * M2 + gpa % M2
                    } else {
                        0x40_0000_0000 + rng.below(1 << 20) * K4
                    };
                    let got = vm.map(gpa, hpa, count * K4, perm);
                    let want = if perm == Perm::WRITE {
                        Err(EptError::WriteWithoutRead(Gpa::new(gpa)))
                    } else if let Some((&g, _)) = model.range(gfns.clone()).next() {
                        Err(EptError::AlreadyMapped(Gpa::new(g * K4)))
                    } else {
                        for (i, gfn) in gfns.clone().enumerate() {
                            model.insert(gfn, (hpa / K4 + i as u64, perm));
                        }
                        Ok(())
                    };
                    assert_eq!(
                        got, want,
                        "seed {seed:#x} step {step}: map {gpa:#x}+{count} pages"
                    );
                    stats[0] += u32::from(got.is_ok());
                }
                2 => {
                    let before = model.len();
                    model.retain(|g, _| !gfns.contains(g));
                    let want = (before - model.len()) as u64;
                    assert_eq!(
                        vm.unmap(gpa, count * K4),
                        Ok(want),
                        "seed {seed:#x} step {step}: unmap"
                    );
                    stats[1] += 1;
                }
                _ => {
                    let got = vm.protect(gpa, count * K4, perm);
                    let want = if perm == Perm::WRITE {
                        Err(EptError::WriteWithoutRead(Gpa::new(gpa)))
                    } else if let Some(g) = gfns.clone().find(|g| !model.contains_key(g)) {
                        Err(EptError::NotMapped(Gpa::new(g * K4)))
                    } else {
                        for gfn in gfns.clone() {
                            model.get_mut(&gfn).unwrap().1 = perm;
                        }
                        Ok(())
                    };
                    assert_eq!(
                        got, want,
                        "seed {seed:#x} step {step}: protect {gpa:#x}+{count} pages"
                    );
                    stats[2] += u32::from(got.is_ok());
                }
            }

            assert_eq!(
                vm.ept.pages_mapped(),
                model.len() as u64,
                "seed {seed:#x} step {step}"
            );
            vm.check_frames();
            if step % 10 == 9 {
                for gfn in WIN / K4..WIN / K4 + PAGES {
                    let got = vm.translate(gfn * K4);
                    match model.get(&gfn) {
                        None => assert_eq!(got, None, "seed {seed:#x} step {step}: gfn {gfn:#x}"),
                        Some(&(hfn, perm)) => {
                            let got = got.unwrap_or_else(|| {
                                panic!("seed {seed:#x} step {step}: gfn {gfn:#x} lost")
                            });
                            assert_eq!(
                                (got.hpa.as_u64(), got.perm),
                                (hfn * K4, perm),
                                "gfn {gfn:#x}"
                            );
                            if got.page_size == PageSize::Size2M {
                                // A 2 MiB leaf must stand for 512 contiguous,
                                // equally protected model pages.
                                let first = gfn & !511;
                                let head = model[&first];
                                for i in 0..512 {
                                    assert_eq!(
                                        model.get(&(first + i)),
                                        Some(&(head.0 + i, head.1))
                                    );
                                }
                            }
                        }
                    }
                    vm.check_hw(gfn * K4);
                }
            }
        }
        assert!(
            stats.iter().all(|&n| n > 10),
            "seed {seed:#x}: too few successful operations {stats:?}"
        );
        assert_eq!(vm.unmap(WIN, PAGES * K4), Ok(model.len() as u64));
        assert_eq!(vm.arena.live_frames(), 1, "seed {seed:#x}");
    }
}

/// Memory in which every word not yet written reads as noise: a corrupt
/// tree, with "tables" anywhere in the address space.
struct Noise {
    seed: u64,
    written: std::collections::HashMap<u64, u64>,
}

impl PhysMem for Noise {
    fn read_u64(&self, pa: Hpa) -> u64 {
        self.written.get(&pa.as_u64()).copied().unwrap_or_else(|| {
            // splitmix64 of the address.
            let mut z = pa.as_u64() ^ self.seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    fn write_u64(&mut self, pa: Hpa, v: u64) {
        self.written.insert(pa.as_u64(), v);
    }
}

/// Hands out ascending frames, never runs out, ignores frees.
struct Endless(u64);

impl FrameAlloc for Endless {
    fn alloc_zeroed(&mut self) -> Option<Hpa> {
        self.0 += K4;
        Some(Hpa::new(self.0))
    }

    fn free(&mut self, _: Hpa) {}
}

#[test]
fn corrupt_tables_give_errors_or_garbage_but_never_panic() {
    let mut rng = Rng(7);
    for seed in 0..200 {
        let mut mem = Noise {
            seed,
            written: Default::default(),
        };
        let mut alloc = Endless(0x1_0000_0000);
        // The root reads as noise as well: nothing was written yet.
        let mut ept = Ept::new(&mut alloc).unwrap();
        for _ in 0..20 {
            let gpa = Gpa::new(rng.below(1 << 36) * K4);
            let len = (1 + rng.below(64)) * K4;
            let _ = ept.translate(&mem, gpa);
            let _ = ept.map(
                &mut mem,
                &mut alloc,
                gpa,
                Hpa::new(0x5000),
                len,
                RW,
                MemType::WriteBack,
            );
            let _ = ept.protect(&mut mem, &mut alloc, gpa, len, R);
            let _ = ept.take_dirty(&mut mem, gpa, len, |_| ());
            let _ = ept.unmap(&mut mem, &mut alloc, gpa, len);
        }
    }
}
