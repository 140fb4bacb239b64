//! The EPT of one guest: a 4-level tree of tables rooted at a PML4
//! (SDM Vol. 3C 29.3.2), and the operations that edit it.
//!
//! Every operation is built on one walker, [`Ept::walk`], which follows a
//! guest-physical address from the root until it meets a leaf, an absent
//! entry (a hole) or the last level. Range operations call it once per leaf
//! or hole, stepping to the end of what it found; a hole high in the tree
//! skips its whole span (512 GiB for an absent PML4 entry). That costs up to
//! four reads per leaf instead of one, for a single walker that stays
//! correct while the loop rewrites entries between steps.
//!
//! Invariants kept between calls:
//! - every non-root table holds at least one present entry (operations that
//!   clear entries free the tables they empty), so a 2 MiB range with no
//!   leaf never hides an empty page table;
//! - no leaf maps a 1 GiB page;
//! - `pages_mapped` is the number of 4 KiB pages the leaves cover, and
//!   `table_frames` the number of frames the tree uses, root included.

use crate::addr::{Gfn, Gpa, Hpa, PAGE_SIZE};
use crate::entry::{ADDR_MASK, EptEntry, Leaf, MemType, PageSize, Perm};
use crate::error::EptError;
use crate::mem::{FrameAlloc, PhysMem};

/// Paging-structure levels: 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT.
const LEVELS: usize = 4;

/// Entries per table.
const ENTRIES: u64 = 512;

/// First guest-physical address a 4-level walk cannot translate: bits 47:0
/// are all it looks at (SDM 29.3.2).
const GPA_LIMIT: u64 = 1 << 48;

/// First host-physical address an entry cannot hold: the address field is
/// bits 51:12.
const HPA_LIMIT: u64 = 1 << 52;

/// Bytes in a 2 MiB page.
const SIZE_2M: u64 = PageSize::Size2M.bytes();

/// EPTP bits 5:3: the page-walk length minus one (SDM 25.6.11).
const EPTP_WALK_LENGTH: u64 = (LEVELS as u64 - 1) << 3;

/// EPTP bit 6: enable accessed and dirty flags (SDM 25.6.11, 29.3.5).
const EPTP_AD: u64 = 1 << 6;

/// Bits 9:8 of a leaf: the accessed and dirty flags (SDM 29.3.5), which
/// the processor sets on its own and a merge must carry over.
const AD_FLAGS: u64 = 0b11 << 8;

/// log2 of the bytes one entry at `level` (1..=4) covers.
const fn span_shift(level: usize) -> usize {
    12 + 9 * (level - 1)
}

/// Bytes one entry at `level` (1..=4) covers: 4 KiB, 2 MiB, 1 GiB, 512 GiB.
const fn entry_span(level: usize) -> u64 {
    1 << span_shift(level)
}

/// Index of the entry for `gpa` in a table at `level` (1..=4).
const fn index(gpa: u64, level: usize) -> u64 {
    (gpa >> span_shift(level)) & (ENTRIES - 1)
}

/// Address of entry `index` of `table`. Tables are 4 KiB aligned and
/// `index` < 512, so the OR is the sum and cannot overflow.
const fn slot(table: Hpa, index: u64) -> Hpa {
    Hpa::new(table.as_u64() | (index * 8))
}

/// What a walk from the root for one guest-physical address found.
struct Walk {
    /// `tables[l - 1]` is the table holding the level-`l` entry used for
    /// the address, for `l` from `level` to 4. Lower ones are meaningless.
    tables: [Hpa; LEVELS],
    /// Level of the entry the walk stopped at.
    level: usize,
    /// Where that entry is.
    slot: Hpa,
    /// The entry: a leaf, or not present (a hole over its whole span).
    entry: EptEntry,
}

impl Walk {
    fn is_leaf(&self) -> bool {
        self.entry.is_present() && (self.level == 1 || (self.level == 2 && self.entry.is_large()))
    }

    fn page_size(&self) -> PageSize {
        if self.level == 1 {
            PageSize::Size4K
        } else {
            PageSize::Size2M
        }
    }

    /// First guest-physical address the stopping entry covers.
    fn base(&self, gpa: u64) -> u64 {
        gpa & !(entry_span(self.level) - 1)
    }

    /// First guest-physical address after the stopping entry's span. At
    /// most 2^48, so no overflow.
    fn end(&self, gpa: u64) -> u64 {
        self.base(gpa) + entry_span(self.level)
    }

    /// Whether the stopping entry's span lies inside `[start, end)`.
    fn inside(&self, gpa: u64, start: u64, end: u64) -> bool {
        self.base(gpa) >= start && self.end(gpa) <= end
    }
}

/// The result of translating one guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address the guest-physical one maps to (page
    /// offset included).
    pub hpa: Hpa,
    /// The guest's access rights (possibly none: see [`Ept::protect`]).
    pub perm: Perm,
    /// The EPT memory type of the page.
    pub memtype: MemType,
    /// Size of the page that maps the address.
    pub page_size: PageSize,
}

/// The extended page tables of one guest.
///
/// Holds no reference to memory: every method that touches the tables takes
/// the [`PhysMem`] (and, when tables may be allocated or freed, the
/// [`FrameAlloc`]) as an argument, so the kernel can keep the `Ept` in its
/// VM structure.
///
/// Concurrency: edits are plain read-modify-writes through [`PhysMem`]. The
/// processor writes only the accessed and dirty flags (29.3.5), and an edit
/// that races with it can lose one of those flags; run edits while no
/// logical processor is in the guest with this EPT, or accept that. After
/// an edit that a method's doc says needs it, execute INVEPT (single
/// context, with [`Ept::eptp`]) on every processor that may have used this
/// EPT before the guest runs again (SDM 29.4.3.4).
///
/// Dropping an `Ept` without [`Ept::destroy`] leaks its table frames.
#[derive(Debug)]
pub struct Ept {
    root: Hpa,
    pages_mapped: u64,
    table_frames: u64,
}

impl Ept {
    /// An empty EPT: one zeroed PML4.
    pub fn new(alloc: &mut impl FrameAlloc) -> Result<Ept, EptError> {
        let root = take_frame(alloc)?;
        Ok(Ept {
            root,
            pages_mapped: 0,
            table_frames: 1,
        })
    }

    /// Host-physical address of the PML4.
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// The extended-page-table pointer for the VMCS (SDM 25.6.11): memory
    /// type WB for the tables in bits 2:0 (the caller checks
    /// IA32_VMX_EPT_VPID_CAP bit 14), page-walk length 4 encoded as 3 in
    /// bits 5:3, `ad_enabled` in bit 6 (only if IA32_VMX_EPT_VPID_CAP bit 21
    /// says the processor supports it), the PML4 address in bits 51:12.
    pub fn eptp(&self, ad_enabled: bool) -> u64 {
        let ad = if ad_enabled { EPTP_AD } else { 0 };
        self.root.as_u64() | MemType::WriteBack as u64 | EPTP_WALK_LENGTH | ad
    }

    /// Number of 4 KiB pages mapped (a 2 MiB page counts 512).
    pub fn pages_mapped(&self) -> u64 {
        self.pages_mapped
    }

    /// Number of frames the tables use, the PML4 included.
    pub fn table_frames(&self) -> u64 {
        self.table_frames
    }

    /// Maps `len` bytes at `gpa` to `len` bytes at `hpa`, with rights `perm`
    /// and memory type `memtype`.
    ///
    /// Uses a 2 MiB page wherever `gpa` and `hpa` are both 2 MiB aligned and
    /// at least 2 MiB remain, 4 KiB pages elsewhere. All three of `gpa`,
    /// `hpa` and `len` must be 4 KiB aligned.
    ///
    /// Refuses with [`EptError::AlreadyMapped`] (naming the first mapped
    /// address) if any page of the range is mapped; the whole range is
    /// checked before anything is written. On any error, including running
    /// out of frames halfway, the tables are left as they were.
    ///
    /// Needs no INVEPT: it only fills entries that were not present, and the
    /// processor caches nothing from those (SDM 29.4.3.4).
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is one fact about the mapping; a struct would only rename them"
    )]
    pub fn map(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        hpa: Hpa,
        len: u64,
        perm: Perm,
        memtype: MemType,
    ) -> Result<(), EptError> {
        let (start, end) = check_range(gpa, len)?;
        if !hpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::UnalignedHpa(hpa));
        }
        match hpa.as_u64().checked_add(len) {
            Some(hpa_end) if hpa_end <= HPA_LIMIT => {}
            _ => return Err(EptError::HpaOutOfRange { hpa, len }),
        }
        check_perm(perm, gpa)?;
        if let Some(g) = self.first_mapped(mem, start, end) {
            return Err(EptError::AlreadyMapped(Gpa::new(g)));
        }

        // Both stay below their limits (checked above), so `+` cannot wrap.
        let mut g = start;
        let mut h = hpa.as_u64();
        while g < end {
            let size =
                if g.is_multiple_of(SIZE_2M) && h.is_multiple_of(SIZE_2M) && end - g >= SIZE_2M {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
            let leaf = EptEntry::leaf(Hpa::new(h), size, perm, memtype);
            if let Err(e) = self.install_leaf(mem, alloc, g, size, leaf) {
                // Everything in [start, g + size) was unmapped before this
                // call, so clearing it restores the old tables, and frees
                // the tables made for this page if they are still empty.
                self.clear(mem, alloc, start, g + size.bytes());
                return Err(e);
            }
            g += size.bytes();
            h += size.bytes();
        }
        Ok(())
    }

    /// Removes every mapping in `len` bytes at `gpa` and frees the tables
    /// that become empty. Holes in the range are skipped; returns the number
    /// of 4 KiB pages that were mapped.
    ///
    /// A 2 MiB page that straddles an end of the range is first split into
    /// 4 KiB pages (which takes a frame), so the part outside stays mapped.
    /// On error no translation has changed, though a 2 MiB page at the start
    /// of the range may have been split.
    ///
    /// Needs INVEPT if it returns non-zero, and before the freed table
    /// frames are reused.
    pub fn unmap(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
    ) -> Result<u64, EptError> {
        let (start, end) = check_range(gpa, len)?;
        self.split_straddling(mem, alloc, start, |_| true)?;
        self.split_straddling(mem, alloc, end, |_| true)?;
        Ok(self.clear(mem, alloc, start, end))
    }

    /// Sets the rights of every page in `len` bytes at `gpa` to `perm`,
    /// keeping host address, memory type and accessed/dirty flags.
    ///
    /// Refuses with [`EptError::NotMapped`] (naming the first hole) unless
    /// every page of the range is mapped. An empty `perm` is allowed: the
    /// mapping stays (for [`Ept::translate`] and later changes) while every
    /// guest access to it causes an EPT violation.
    ///
    /// A 2 MiB page that straddles an end of the range and whose rights
    /// change is split into 4 KiB pages (which takes a frame). On error no
    /// translation has changed, though a 2 MiB page at the start of the
    /// range may have been split.
    ///
    /// Needs INVEPT if any right was removed or a page was split.
    pub fn protect(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
        perm: Perm,
    ) -> Result<(), EptError> {
        check_perm(perm, gpa)?;
        self.change_perm(mem, alloc, gpa, len, |_| perm)
    }

    /// Removes write access from every page in `len` bytes at `gpa`,
    /// keeping each page's other rights: dirty tracking for processors
    /// without EPT A/D flags, where the first write to a page exits.
    /// Otherwise as [`Ept::protect`].
    pub fn write_protect(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
    ) -> Result<(), EptError> {
        self.change_perm(mem, alloc, gpa, len, |p| p - Perm::WRITE)
    }

    /// Removes write access from every mapped page in `len` bytes at `gpa`,
    /// skipping holes (unlike [`Ept::write_protect`], which refuses them),
    /// and returns how many 4 KiB pages lost write access.
    ///
    /// Splitting and errors as [`Ept::protect`]. Needs INVEPT if it returns
    /// non-zero or split a page.
    pub fn write_protect_mapped(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
    ) -> Result<u64, EptError> {
        let (start, end) = check_range(gpa, len)?;
        self.rewrite_perm(mem, alloc, start, end, |p| p - Perm::WRITE)
    }

    /// Gives write access to every mapped page in `len` bytes at `gpa` that
    /// has read access, skipping holes, and returns how many 4 KiB pages
    /// gained it. Pages without read access keep their rights: write
    /// without read is a misconfiguration (SDM 29.3.3.1).
    ///
    /// Splitting and errors as [`Ept::protect`]. Adding a right needs no
    /// INVEPT: a stale cached translation can only cause an EPT violation,
    /// which itself invalidates the translations for the faulting address
    /// (SDM 29.4.3.1, 29.4.3.4). A split is a change of the tables all the
    /// same, and [`Ept::protect`] asks for INVEPT after one.
    pub fn allow_write(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
    ) -> Result<u64, EptError> {
        let (start, end) = check_range(gpa, len)?;
        self.rewrite_perm(mem, alloc, start, end, |p| {
            if p.contains(Perm::READ) {
                p | Perm::WRITE
            } else {
                p
            }
        })
    }

    /// Splits every 2 MiB leaf that overlaps `len` bytes at `gpa` into 512
    /// 4 KiB leaves with the same rights, memory type and accessed/dirty
    /// flags, calling `f` with the first guest-physical address of each
    /// page split, and returns how many it split.
    ///
    /// Takes one frame per split. On error (out of frames) the pages split
    /// so far stay split and were reported to `f`; no translation changes
    /// either way. Needs INVEPT if it returns non-zero (or reported a
    /// split before failing).
    pub fn split_2m(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
        mut f: impl FnMut(Gpa),
    ) -> Result<u64, EptError> {
        let (start, end) = check_range(gpa, len)?;
        let mut split = 0;
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            if w.is_leaf() && w.level == 2 {
                self.split_leaf(mem, alloc, &w)?;
                f(Gpa::new(w.base(g)));
                split += 1;
            }
            g = w.end(g);
        }
        Ok(split)
    }

    /// Replaces the page table under the 2 MiB aligned range that contains
    /// `gpa` by one 2 MiB leaf, if its 512 entries are present leaves that
    /// map one 2 MiB aligned host range in order with identical rights,
    /// memory type and other bits (the undo of a split), and frees the
    /// table. The new leaf's accessed and dirty flags are the OR of the old
    /// ones, so no dirty page is forgotten. Returns whether it merged.
    ///
    /// Needs INVEPT if it returns true, before the guest runs again and
    /// before the freed frame is reused.
    pub fn merge_2m(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
    ) -> bool {
        let g = gpa.as_u64() & !(SIZE_2M - 1);
        if g >= GPA_LIMIT {
            return false;
        }
        let w = self.walk(mem, g);
        if w.level != 1 {
            return false;
        }
        let table = w.tables[0];
        let first = EptEntry::from_raw(mem.read_u64(slot(table, 0)));
        let base = first.addr().as_u64();
        let Some(memtype) = first.memtype() else {
            return false;
        };
        // Only an entry this crate could have written (plus A/D) qualifies,
        // so the merged leaf loses no bit.
        let canonical = EptEntry::leaf(first.addr(), PageSize::Size4K, first.perm(), memtype);
        if !first.is_present()
            || !base.is_multiple_of(SIZE_2M)
            || first.raw() & !AD_FLAGS != canonical.raw()
        {
            return false;
        }
        let mut ad = 0;
        for i in 0..ENTRIES {
            let e = mem.read_u64(slot(table, i));
            let want = canonical.raw() + i * PAGE_SIZE;
            if e & !AD_FLAGS != want {
                return false;
            }
            ad |= e & AD_FLAGS;
        }
        let leaf = EptEntry::leaf(first.addr(), PageSize::Size2M, first.perm(), memtype);
        let pde = slot(w.tables[1], index(g, 2));
        mem.write_u64(pde, leaf.raw() | ad);
        alloc.free(table);
        self.table_frames = self.table_frames.saturating_sub(1);
        true
    }

    /// Clears the dirty flag of the leaf that maps `gpa` and returns that
    /// leaf as it was before (`None` if `gpa` is not mapped). For a 2 MiB
    /// leaf this re-arms all of its 512 frames. Needs INVEPT before the
    /// guest runs again if the returned entry was dirty (as
    /// [`Ept::take_dirty`]).
    pub fn clear_dirty(&mut self, mem: &mut impl PhysMem, gpa: Gpa) -> Option<Leaf> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return None;
        }
        let w = self.walk(mem, g);
        if !w.is_leaf() {
            return None;
        }
        if w.entry.dirty() {
            mem.write_u64(w.slot, w.entry.without_dirty().raw());
        }
        Some(Leaf {
            page_size: w.page_size(),
            entry: w.entry,
        })
    }

    /// The translation of `gpa`, or `None` if it is not mapped (or lies
    /// beyond the 48-bit space, or the leaf holds a reserved memory type,
    /// which the processor would not translate either).
    pub fn translate(&self, mem: &impl PhysMem, gpa: Gpa) -> Option<Translation> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return None;
        }
        let w = self.walk(mem, g);
        if !w.is_leaf() {
            return None;
        }
        Some(Translation {
            hpa: w.entry.addr().checked_add(g - w.base(g))?,
            perm: w.entry.perm(),
            memtype: w.entry.memtype()?,
            page_size: w.page_size(),
        })
    }

    /// Calls `f` with the first guest-physical address and the entry of
    /// every leaf, in address order.
    pub fn for_each_leaf(&self, mem: &impl PhysMem, mut f: impl FnMut(Gpa, Leaf)) {
        let mut g = 0;
        while g < GPA_LIMIT {
            let w = self.walk(mem, g);
            if w.is_leaf() {
                let leaf = Leaf {
                    page_size: w.page_size(),
                    entry: w.entry,
                };
                f(Gpa::new(g), leaf);
            }
            g = w.end(g);
        }
    }

    /// Calls `f` with the first guest-physical address and the entry of
    /// every leaf that overlaps `len` bytes at `gpa`, in address order (a
    /// 2 MiB leaf that straddles the start is reported with its own first
    /// address, below `gpa`).
    pub fn for_each_leaf_in(
        &self,
        mem: &impl PhysMem,
        gpa: Gpa,
        len: u64,
        mut f: impl FnMut(Gpa, Leaf),
    ) -> Result<(), EptError> {
        let (start, end) = check_range(gpa, len)?;
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            if w.is_leaf() {
                let leaf = Leaf {
                    page_size: w.page_size(),
                    entry: w.entry,
                };
                f(Gpa::new(w.base(g)), leaf);
            }
            g = w.end(g);
        }
        Ok(())
    }

    /// Reports every 4 KiB guest frame in `len` bytes at `gpa` whose leaf
    /// has the dirty flag set (all frames of a dirty 2 MiB page that lie in
    /// the range), in address order, clears those flags and returns how many
    /// frames it reported. Meaningful only while the EPTP has A/D enabled.
    ///
    /// A dirty 2 MiB page that straddles an end of the range keeps its flag,
    /// so its frames outside the range are not lost; the frames inside are
    /// reported again next time.
    ///
    /// Needs INVEPT before the guest runs again if it returns non-zero:
    /// until then the processor may write through cached translations
    /// without setting the flags again (SDM 29.4.3.4). Clearing cannot lose
    /// a write that races with it: the flag was already set, so the
    /// processor does not write this entry for that write.
    pub fn take_dirty(
        &mut self,
        mem: &mut impl PhysMem,
        gpa: Gpa,
        len: u64,
        mut f: impl FnMut(Gfn),
    ) -> Result<u64, EptError> {
        let (start, end) = check_range(gpa, len)?;
        let mut reported = 0;
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            let next = w.end(g);
            if w.is_leaf() && w.entry.dirty() {
                let first = Gpa::new(g).gfn().as_u64();
                let last = Gpa::new(next.min(end)).gfn().as_u64();
                for frame in first..last {
                    f(Gfn::new(frame));
                }
                reported += last - first;
                if w.inside(g, start, end) {
                    mem.write_u64(w.slot, w.entry.without_dirty().raw());
                }
            }
            g = next;
        }
        Ok(reported)
    }

    /// Frees every table frame. The mapped host pages are not this crate's
    /// and are left alone. The EPT must no longer be in use by any
    /// processor.
    pub fn destroy(mut self, mem: &mut impl PhysMem, alloc: &mut impl FrameAlloc) {
        // Clearing the whole space frees every table below the root, by the
        // same path unmap takes.
        self.clear(mem, alloc, 0, GPA_LIMIT);
        alloc.free(self.root);
    }

    /// Follows `gpa` (below 2^48) from the root to the first leaf, hole or
    /// level-1 entry.
    fn walk(&self, mem: &impl PhysMem, gpa: u64) -> Walk {
        let mut tables = [self.root; LEVELS];
        let mut table = self.root;
        let mut level = LEVELS;
        loop {
            tables[level - 1] = table;
            let slot = slot(table, index(gpa, level));
            let entry = EptEntry::from_raw(mem.read_u64(slot));
            let is_table = entry.is_present() && level > 1 && !(level == 2 && entry.is_large());
            if !is_table {
                return Walk {
                    tables,
                    level,
                    slot,
                    entry,
                };
            }
            table = entry.addr();
            level -= 1;
        }
    }

    /// First mapped address in `[start, end)`.
    fn first_mapped(&self, mem: &impl PhysMem, start: u64, end: u64) -> Option<u64> {
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            if w.is_leaf() {
                return Some(g);
            }
            g = w.end(g);
        }
        None
    }

    /// First unmapped address in `[start, end)`.
    fn first_unmapped(&self, mem: &impl PhysMem, start: u64, end: u64) -> Option<u64> {
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            if !w.is_leaf() {
                return Some(g);
            }
            g = w.end(g);
        }
        None
    }

    /// Writes `leaf` for the page of `size` at `gpa`, making the tables on
    /// the way. The caller has checked that nothing is mapped there.
    fn install_leaf(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: u64,
        size: PageSize,
        leaf: EptEntry,
    ) -> Result<(), EptError> {
        let target = match size {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
        };
        let w = self.walk(mem, gpa);
        if w.entry.is_present() || w.level < target {
            // A leaf was ruled out by the caller; a page table where a 2 MiB
            // leaf should go would have to be empty, which the invariants
            // rule out too. Refuse rather than orphan it.
            return Err(EptError::AlreadyMapped(Gpa::new(gpa)));
        }
        let mut at = w.slot;
        for level in (target + 1..=w.level).rev() {
            // A fresh table is all zeros, so it is complete before it is
            // linked in and the processor never sees garbage in it.
            let table = self.new_table(alloc)?;
            mem.write_u64(at, EptEntry::table(table).raw());
            at = slot(table, index(gpa, level - 1));
        }
        mem.write_u64(at, leaf.raw());
        self.pages_mapped += size.bytes() / PAGE_SIZE;
        Ok(())
    }

    /// Splits the 2 MiB leaf that contains `boundary`, if there is one, it
    /// starts before `boundary`, and `wanted` says so. After this no 2 MiB
    /// leaf straddles `boundary`.
    fn split_straddling(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        boundary: u64,
        wanted: impl Fn(EptEntry) -> bool,
    ) -> Result<(), EptError> {
        // A 2 MiB aligned boundary (2^48 included) cuts no 2 MiB page, and
        // any other boundary is below 2^48.
        if boundary.is_multiple_of(SIZE_2M) {
            return Ok(());
        }
        let w = self.walk(mem, boundary);
        if !(w.is_leaf() && w.level == 2 && wanted(w.entry)) {
            return Ok(());
        }
        self.split_leaf(mem, alloc, &w)
    }

    /// Replaces the 2 MiB leaf `w` stopped at by a page table of 512 4 KiB
    /// leaves that translate the same.
    fn split_leaf(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        w: &Walk,
    ) -> Result<(), EptError> {
        let table = self.new_table(alloc)?;
        for i in 0..ENTRIES {
            mem.write_u64(slot(table, i), w.entry.split_part(i).raw());
        }
        mem.write_u64(w.slot, EptEntry::table(table).raw());
        Ok(())
    }

    /// Removes every leaf that lies inside `[start, end)` and frees the
    /// tables left empty; returns the number of 4 KiB pages removed. A leaf
    /// that straddles an end is left alone (callers split first).
    fn clear(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        start: u64,
        end: u64,
    ) -> u64 {
        let mut removed = 0;
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            let next = w.end(g);
            if w.is_leaf() && w.inside(g, start, end) {
                mem.write_u64(w.slot, EptEntry::EMPTY.raw());
                let pages = entry_span(w.level) / PAGE_SIZE;
                removed += pages;
                self.pages_mapped = self.pages_mapped.saturating_sub(pages);
            }
            self.prune(mem, alloc, &w, g, next, end);
            g = next;
        }
        removed
    }

    /// After `clear` handled the leaf or hole `w` found for `g`, which ends
    /// at `next`: frees, bottom-up, the tables on `w`'s path that the loop
    /// is done with (their span ends at `next`, or the range does) and that
    /// are empty. Checking only when leaving a table keeps the cost at one
    /// scan per table instead of one per cleared entry.
    fn prune(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        w: &Walk,
        g: u64,
        next: u64,
        end: u64,
    ) {
        // `level` is the level of the entries in the table considered; the
        // root (level 4) is never freed.
        for level in w.level..LEVELS {
            let table_span = entry_span(level + 1);
            if next < end && !next.is_multiple_of(table_span) {
                break;
            }
            let table = w.tables[level - 1];
            let empty = (0..ENTRIES)
                .all(|i| !EptEntry::from_raw(mem.read_u64(slot(table, i))).is_present());
            if !empty {
                break;
            }
            mem.write_u64(
                slot(w.tables[level], index(g, level + 1)),
                EptEntry::EMPTY.raw(),
            );
            alloc.free(table);
            self.table_frames = self.table_frames.saturating_sub(1);
        }
    }

    /// Rewrites the rights of every leaf in `len` bytes at `gpa` to
    /// `f(old)`; see [`Ept::protect`].
    fn change_perm(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: Gpa,
        len: u64,
        f: impl Fn(Perm) -> Perm,
    ) -> Result<(), EptError> {
        let (start, end) = check_range(gpa, len)?;
        if let Some(g) = self.first_unmapped(mem, start, end) {
            return Err(EptError::NotMapped(Gpa::new(g)));
        }
        self.rewrite_perm(mem, alloc, start, end, f).map(|_| ())
    }

    /// Rewrites the rights of every leaf in `[start, end)` to `f(old)`,
    /// skipping holes, and returns how many 4 KiB pages changed rights.
    fn rewrite_perm(
        &mut self,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        start: u64,
        end: u64,
        f: impl Fn(Perm) -> Perm,
    ) -> Result<u64, EptError> {
        // A straddling 2 MiB page whose rights stay the same needs no split.
        let changes = |e: EptEntry| f(e.perm()) != e.perm();
        self.split_straddling(mem, alloc, start, changes)?;
        self.split_straddling(mem, alloc, end, changes)?;
        let mut changed = 0;
        let mut g = start;
        while g < end {
            let w = self.walk(mem, g);
            // The splits leave every leaf that changes inside the range.
            if w.is_leaf() && changes(w.entry) && w.inside(g, start, end) {
                mem.write_u64(w.slot, w.entry.with_perm(f(w.entry.perm())).raw());
                changed += entry_span(w.level) / PAGE_SIZE;
            }
            g = w.end(g);
        }
        Ok(changed)
    }

    /// A zeroed frame for a new table, counted.
    fn new_table(&mut self, alloc: &mut impl FrameAlloc) -> Result<Hpa, EptError> {
        let frame = take_frame(alloc)?;
        self.table_frames += 1;
        Ok(frame)
    }
}

/// A frame from `alloc`, checked to be usable as a table.
fn take_frame(alloc: &mut impl FrameAlloc) -> Result<Hpa, EptError> {
    let frame = alloc.alloc_zeroed().ok_or(EptError::OutOfFrames)?;
    // Outside bits 51:12 means unaligned or too high for an entry.
    if frame.as_u64() & !ADDR_MASK != 0 {
        alloc.free(frame);
        return Err(EptError::BadFrame(frame));
    }
    Ok(frame)
}

/// Checks a guest range and returns it as `[start, end)` with `end <= 2^48`.
fn check_range(gpa: Gpa, len: u64) -> Result<(u64, u64), EptError> {
    if !gpa.is_aligned(PAGE_SIZE) {
        return Err(EptError::UnalignedGpa(gpa));
    }
    if len == 0 {
        return Err(EptError::ZeroLength(gpa));
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(EptError::UnalignedLength(len, gpa));
    }
    match gpa.as_u64().checked_add(len) {
        Some(end) if end <= GPA_LIMIT => Ok((gpa.as_u64(), end)),
        _ => Err(EptError::GpaOutOfRange { gpa, len }),
    }
}

/// Refuses rights the processor would take as a misconfiguration.
fn check_perm(perm: Perm, gpa: Gpa) -> Result<(), EptError> {
    if perm.contains(Perm::WRITE) && !perm.contains(Perm::READ) {
        return Err(EptError::WriteWithoutRead(gpa));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
