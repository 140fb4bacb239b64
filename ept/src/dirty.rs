//! Dirty-page tracking for live migration, fault tolerance and the
//! console: which guest frames were written since a consumer's last look,
//! by one of three mechanisms behind one interface, [`DirtyLog`].
//!
//! Several consumers at once: each opens a view ([`DirtyLog::open_view`])
//! and takes from it. The hardware keeps one record (dirty flags, write
//! access, the PML buffer), and re-arming it for one consumer would hide
//! the same writes from the others; so each take first harvests that record
//! into every open view's bitmap, then hands out and clears only its own
//! view's. A page written once is reported once to every view, by that
//! view's next take, whichever view's take harvested it.
//!
//! ```text
//!  guest writes --> dirty flags / write faults / PML buffer
//!  hypervisor writes --+           |
//!                      v           v  harvest (in every take), re-arm
//!                  +--------------------------+
//!                  | view #0 | view #1 | ...  |   at most MAX_VIEWS
//!                  +--------------------------+
//!                      |           |
//!   take(#0) ----------+           +---------- take(#1)
//!   (migration round)                          (FT divergence check)
//! ```
//!
//! - [`Mechanism::Pml`], page-modification logging (SDM 29.3.6): when the
//!   processor sets the dirty flag of a leaf it also logs the 4 KiB aligned
//!   guest-physical address into a 512-entry buffer. The caller drains the
//!   buffer with [`DirtyLog::drain_pml`]; [`DirtyLog::take`] then clears
//!   the dirty flags of the logged pages so their next write is logged
//!   again.
//! - [`Mechanism::EptDirtyFlags`], EPT accessed/dirty flags (29.3.5):
//!   [`DirtyLog::take`] scans the leaves over guest RAM and clears the
//!   dirty flags it finds ([`Ept::take_dirty`]).
//! - [`Mechanism::WriteProtect`], for processors without A/D flags:
//!   every RAM page that was writable loses write access, the first write
//!   to one is an EPT violation that [`DirtyLog::on_write_violation`]
//!   records before giving write access back to that 4 KiB page, and
//!   [`DirtyLog::take`] takes it away again.
//!
//! Precision and 2 MiB pages: for the two A/D mechanisms [`DirtyLog::start`]
//! splits every 2 MiB leaf over guest RAM into 4 KiB leaves (one table
//! frame per 2 MiB), so the bitmaps are exact to the page; if the frame
//! allocator runs dry the remaining 2 MiB leaves stay and are tracked
//! coarsely (a written 2 MiB leaf reports all of its 512 frames), which
//! loses no write. Write protection splits a 2 MiB leaf only when a write
//! faults in it. [`DirtyLog::stop`] merges back every 2 MiB range that was
//! one leaf at start and is uniform again, so the translations (page sizes
//! included) are as they were.
//!
//! Atomicity: every method runs while the vCPU is outside the guest. A
//! write the guest makes is either in the bitmap [`DirtyLog::take`] returns
//! or in a later one, provided the caller executes INVEPT whenever a method
//! says so before the guest runs again and, for PML, drains the buffer
//! before each take.
//!
//! Assumptions: guest RAM is the guest-physical range `[0, pages * 4 KiB)`;
//! while tracking runs nobody else changes the write access of RAM pages
//! (write protection remembers which pages it protected and gives write
//! access back to exactly those).

use alloc::vec::Vec;
use core::fmt;
use core::mem;

use crate::addr::{Gpa, PAGE_SIZE};
use crate::entry::{PageSize, Perm};
use crate::error::EptError;
use crate::mem::{FrameAlloc, PhysMem};
use crate::tables::Ept;

/// 4 KiB frames in a 2 MiB page.
const FRAMES_2M: u64 = 512;

/// Entries in the PML buffer (SDM 29.3.6).
const PML_ENTRIES: usize = 512;

/// Value of the PML index when the buffer is full: the processor
/// decremented it past 0 (SDM 29.3.6).
const PML_INDEX_FULL: u16 = 0xFFFF;

/// Which hardware mechanism tracks writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// Page-modification logging (needs EPT A/D flags too).
    Pml,
    /// EPT dirty flags, scanned at each take.
    EptDirtyFlags,
    /// Write protection: the first write to a page after each take exits.
    WriteProtect,
}

impl Mechanism {
    /// Whether the EPTP must enable accessed and dirty flags (bit 6, see
    /// [`Ept::eptp`]) for this mechanism.
    pub const fn needs_ad_flags(self) -> bool {
        !matches!(self, Mechanism::WriteProtect)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Pml => "pml",
            Mechanism::EptDirtyFlags => "ept dirty flags",
            Mechanism::WriteProtect => "write protection",
        })
    }
}

/// The best mechanism the processor offers: PML if it has both PML and
/// EPT A/D flags (PML logs when it sets a dirty flag), the dirty flags
/// alone if it has those, write protection otherwise.
pub fn choose(has_ad: bool, has_pml: bool) -> Mechanism {
    match (has_ad, has_pml) {
        (true, true) => Mechanism::Pml,
        (true, false) => Mechanism::EptDirtyFlags,
        (false, _) => Mechanism::WriteProtect,
    }
}

/// A bitmap over the guest's 4 KiB frames `0..pages`.
#[derive(Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// An empty bitmap over frames `0..pages`.
    pub fn new(pages: u64) -> DirtyBitmap {
        // One bit per frame; a usize holds any word count a 64-bit host can
        // allocate.
        let words = pages.div_ceil(64) as usize;
        DirtyBitmap {
            words: alloc::vec![0; words],
            pages,
        }
    }

    /// Number of frames the bitmap covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Sets the bit of `gfn`. Returns whether `gfn` is in range (and so is
    /// set now); a frame out of range is ignored.
    pub fn mark(&mut self, gfn: u64) -> bool {
        if gfn >= self.pages {
            return false;
        }
        self.words[(gfn / 64) as usize] |= 1 << (gfn % 64);
        true
    }

    /// Whether the bit of `gfn` is set (false out of range).
    pub fn is_set(&self, gfn: u64) -> bool {
        gfn < self.pages && self.words[(gfn / 64) as usize] & (1 << (gfn % 64)) != 0
    }

    /// Number of frames set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether no frame is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The frames set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let base = i as u64 * 64;
            let mut bits = word;
            core::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(base + u64::from(bit))
            })
        })
    }

    /// Sets every frame set in `other`; frames of `other` beyond
    /// [`DirtyBitmap::pages`] are ignored.
    pub fn union_with(&mut self, other: &DirtyBitmap) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        let tail = self.pages % 64;
        if tail != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1 << tail) - 1;
        }
    }

    /// Sets frames `first..end`, clamped to the bitmap.
    fn mark_range(&mut self, first: u64, end: u64) {
        for gfn in first..end.min(self.pages) {
            self.mark(gfn);
        }
    }

    /// The maximal runs `[first, end)` of frames set here and in `filter`.
    fn runs_in(&self, filter: &DirtyBitmap) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for gfn in self.iter().filter(|&g| filter.is_set(g)) {
            match runs.last_mut() {
                Some((_, end)) if *end == gfn => *end += 1,
                _ => runs.push((gfn, gfn + 1)),
            }
        }
        runs
    }
}

impl fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirtyBitmap({} of {} pages: ", self.count(), self.pages)?;
        f.debug_list().entries(self.iter().take(32)).finish()?;
        f.write_str(")")
    }
}

/// Counters for `vm stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyStats {
    /// Pages reported by [`DirtyLog::take`] so far, over all views (a page
    /// reported by two takes, of one view or of two, counts twice).
    pub pages_reported: u64,
    /// Write-protection faults handled ([`DirtyLog::on_write_violation`]
    /// returned true).
    pub tracking_faults: u64,
    /// Valid PML entries drained, out-of-range ones included.
    pub pml_entries: u64,
    /// PML buffers drained full (index 0xFFFF): one per "PML full" exit.
    pub pml_full_exits: u64,
}

impl fmt::Display for DirtyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pages reported, {} tracking faults, {} PML entries, {} PML-full exits",
            self.pages_reported, self.tracking_faults, self.pml_entries, self.pml_full_exits
        )
    }
}

/// Most views a [`DirtyLog`] keeps open at once: a handful of consumers
/// (migration, fault tolerance, the console), each costing one bitmap of
/// guest RAM and one union per harvest.
pub const MAX_VIEWS: usize = 4;

/// One consumer's handle on a [`DirtyLog`], from [`DirtyLog::open_view`].
///
/// Ids are never reused by the log that issued them, so a closed view's id
/// stays invalid even after another view takes its slot. An id from a
/// different log means nothing to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewId(u64);

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a [`DirtyLog`] view operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirtyError {
    /// The view was closed, or never opened by this log.
    #[error("Dirty view {0} is not open")]
    NoSuchView(ViewId),
    /// [`MAX_VIEWS`] views are open already.
    #[error("Too many dirty views: {MAX_VIEWS} are open already")]
    TooManyViews,
    /// Re-arming the hardware mechanism failed; the view keeps its pages.
    #[error(transparent)]
    Ept(#[from] EptError),
}

/// An open view: its id and the frames written since its last take.
#[derive(Debug)]
struct View {
    id: ViewId,
    pending: DirtyBitmap,
}

/// Dirty-page tracker of one VM; see the module documentation.
#[derive(Debug)]
pub struct DirtyLog {
    mechanism: Mechanism,
    pages: u64,
    active: bool,
    /// Frames recorded since the last harvest and not in the hardware's
    /// own record: hypervisor writes and write faults.
    dirty: DirtyBitmap,
    /// PML: frames drained from the buffer since the last harvest.
    logged: DirtyBitmap,
    /// Write protection: the RAM frames that were writable at start, which
    /// tracking protects and stop makes writable again.
    tracked: DirtyBitmap,
    /// Indexed by frame / 512: the 2 MiB ranges that were one 2 MiB leaf at
    /// start, for stop to merge back.
    huge: DirtyBitmap,
    /// The open views, at most [`MAX_VIEWS`], in the order they opened.
    views: Vec<View>,
    /// The id the next view gets.
    next_view: u64,
    stats: DirtyStats,
}

impl DirtyLog {
    /// The PML index to program when PML is enabled and after each drain:
    /// the processor logs into entry 511 first (SDM 29.3.6).
    pub const PML_INDEX_RESET: u16 = (PML_ENTRIES - 1) as u16;

    /// A tracker for guest RAM `[0, pages * 4 KiB)`, not started.
    pub fn new(mechanism: Mechanism, pages: u64) -> DirtyLog {
        let only = |m: Mechanism| if mechanism == m { pages } else { 0 };
        DirtyLog {
            mechanism,
            pages,
            active: false,
            dirty: DirtyBitmap::new(pages),
            logged: DirtyBitmap::new(only(Mechanism::Pml)),
            tracked: DirtyBitmap::new(only(Mechanism::WriteProtect)),
            huge: DirtyBitmap::new(pages.div_ceil(FRAMES_2M)),
            views: Vec::new(),
            next_view: 0,
            stats: DirtyStats::default(),
        }
    }

    /// The mechanism this tracker uses.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Number of guest RAM frames tracked.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether tracking is on (between [`DirtyLog::start`] and
    /// [`DirtyLog::stop`]).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Counters for `vm stats`.
    pub fn stats(&self) -> DirtyStats {
        self.stats
    }

    /// Starts tracking over guest RAM mapped in `ept`, forgetting anything
    /// recorded before, in the open views too (they stay open, empty).
    /// Write protection removes write access from every
    /// writable RAM page (remembering which); the A/D mechanisms split the
    /// 2 MiB leaves over RAM (as far as frames last) and clear every dirty
    /// flag. Holes in RAM are skipped. If tracking is on already it is
    /// stopped first. For PML the caller programs the PML address, sets the
    /// index to [`DirtyLog::PML_INDEX_RESET`] and enables PML; for both A/D
    /// mechanisms the EPTP must have A/D enabled.
    ///
    /// Returns whether INVEPT is needed before the guest runs again. On
    /// error tracking is off and the rights are as before (as far as the
    /// undo could restore them; conservatively, execute INVEPT), except
    /// when stopping the running tracking failed: then see
    /// [`DirtyLog::stop`].
    pub fn start(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
    ) -> Result<bool, EptError> {
        let mut invept = false;
        if self.active {
            invept |= self.stop(ept, mem, alloc)?;
        }
        self.reset();
        let Some(len) = self.ram_len()? else {
            self.active = true;
            return Ok(invept);
        };

        let protect = self.mechanism == Mechanism::WriteProtect;
        let (huge, tracked) = (&mut self.huge, &mut self.tracked);
        ept.for_each_leaf_in(mem, Gpa::new(0), len, |gpa, leaf| {
            let first = gpa.as_u64() / PAGE_SIZE;
            if leaf.page_size == PageSize::Size2M {
                huge.mark(first / FRAMES_2M);
            }
            if protect && leaf.entry.perm().contains(Perm::WRITE) {
                tracked.mark_range(first, first + leaf.page_size.bytes() / PAGE_SIZE);
            }
        })?;

        let armed = match self.mechanism {
            Mechanism::WriteProtect => protect_runs(ept, mem, alloc, &self.tracked, &self.tracked),
            Mechanism::EptDirtyFlags | Mechanism::Pml => {
                match ept.split_2m(mem, alloc, Gpa::new(0), len, |_| {}) {
                    Ok(n) => invept |= n > 0,
                    // Best effort: the leaves left whole are tracked
                    // coarsely. Some may have been split before it failed.
                    Err(EptError::OutOfFrames) => invept = true,
                    Err(e) => {
                        self.undo_start(ept, mem, alloc);
                        return Err(e);
                    }
                }
                ept.take_dirty(mem, Gpa::new(0), len, |_| {}).map(|n| n > 0)
            }
        };
        match armed {
            Ok(changed) => {
                self.active = true;
                Ok(invept | changed)
            }
            Err(e) => {
                self.undo_start(ept, mem, alloc);
                Err(e)
            }
        }
    }

    /// Stops tracking: write protection gives write access back to the
    /// pages it protected; every 2 MiB range that was one leaf at start is
    /// merged back if uniform. Records not yet taken are dropped, from
    /// every view; the views stay open (with tracking off their takes
    /// report hypervisor writes only). Returns whether INVEPT is needed (before the guest runs
    /// again and before freed table frames are reused). On error tracking
    /// stays on, partly undone; calling stop again finishes the job.
    pub fn stop(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
    ) -> Result<bool, EptError> {
        if !self.active {
            return Ok(false);
        }
        let invept = self.restore(ept, mem, alloc)?;
        self.active = false;
        self.reset();
        Ok(invept)
    }

    /// Records a write the hypervisor itself made into guest frame `gfn`
    /// (device DMA, loaders), which no mechanism sees. Frames beyond RAM
    /// are ignored. Reported by the next [`DirtyLog::take`] of each view.
    pub fn mark_hypervisor_write(&mut self, gfn: u64) {
        self.dirty.mark(gfn);
    }

    /// Write protection: handles an EPT violation for a write at `gpa`.
    ///
    /// If the page is a RAM page that tracking protected and that still
    /// has read access, records it, gives it write access back (splitting
    /// a 2 MiB leaf, or, when no frame is left for the split, giving the
    /// whole 2 MiB leaf write access and recording all of it) and returns
    /// true: the caller resumes the guest at the same instruction (INVEPT
    /// is not required for an added right, SDM 29.4.3.4, but harmless). A
    /// page that is writable already (a stale translation) also gives
    /// true. Returns false when the violation is not tracking's (another
    /// mechanism, tracking off, beyond RAM, a hole, a page that was not
    /// writable at start, or one without read access): the caller handles
    /// it as before.
    pub fn on_write_violation(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        gpa: u64,
    ) -> Result<bool, EptError> {
        if self.mechanism != Mechanism::WriteProtect || !self.active {
            return Ok(false);
        }
        let gfn = gpa / PAGE_SIZE;
        if !self.tracked.is_set(gfn) {
            return Ok(false);
        }
        let page = Gpa::new(gfn * PAGE_SIZE);
        let Some(t) = ept.translate(mem, page) else {
            return Ok(false);
        };
        if !t.perm.contains(Perm::READ) {
            return Ok(false);
        }
        if !t.perm.contains(Perm::WRITE) {
            match ept.allow_write(mem, alloc, page, PAGE_SIZE) {
                Ok(_) => {}
                Err(EptError::OutOfFrames) if t.page_size == PageSize::Size2M => {
                    let first = gfn & !(FRAMES_2M - 1);
                    let end = first + FRAMES_2M;
                    if !(first..end).all(|g| self.tracked.is_set(g)) {
                        return Err(EptError::OutOfFrames);
                    }
                    ept.allow_write(
                        mem,
                        alloc,
                        Gpa::new(first * PAGE_SIZE),
                        FRAMES_2M * PAGE_SIZE,
                    )?;
                    self.dirty.mark_range(first, end);
                }
                Err(e) => return Err(e),
            }
        }
        self.dirty.mark(gfn);
        self.stats.tracking_faults += 1;
        Ok(true)
    }

    /// PML: drains the buffer the processor logs into (`buffer`, the 4 KiB
    /// page of guest-physical addresses) given the guest PML index VMCS
    /// field `index`, and returns the index to write back
    /// ([`DirtyLog::PML_INDEX_RESET`]).
    ///
    /// The processor logs into entry `index` and then decrements it, so
    /// entries `index + 1..=511` are valid, and all 512 when the index has
    /// wrapped to 0xFFFF (the buffer is full: the "PML full" exit, reason
    /// 62, or an exit just before it). Any other value above 511 is not one
    /// the processor writes; the whole buffer is read then, since
    /// reporting a clean page loses nothing. Entries beyond RAM are
    /// ignored. Does nothing unless tracking with PML is on.
    pub fn drain_pml(&mut self, buffer: &[u64; PML_ENTRIES], index: u16) -> u16 {
        if self.mechanism != Mechanism::Pml || !self.active {
            return Self::PML_INDEX_RESET;
        }
        let first = match index {
            PML_INDEX_FULL => {
                self.stats.pml_full_exits += 1;
                0
            }
            i if usize::from(i) < PML_ENTRIES => usize::from(i) + 1,
            _ => 0,
        };
        for &gpa in &buffer[first..] {
            self.stats.pml_entries += 1;
            self.logged.mark(gpa / PAGE_SIZE);
        }
        Self::PML_INDEX_RESET
    }

    /// Opens a view for one more consumer and returns its id.
    ///
    /// A new view starts empty: it claims nothing about writes made before
    /// it opened (a migration sends every page in its first round anyway).
    /// Its first [`DirtyLog::take`] reports the frames written since it
    /// opened plus those written before that no take (of any view) had
    /// harvested yet: a few more than asked for, which loses nothing and
    /// keeps opening cheap (no harvest, no table walk, no INVEPT, and no
    /// EPT to pass in).
    ///
    /// Works with tracking on or off; views stay open across
    /// [`DirtyLog::start`] and [`DirtyLog::stop`].
    pub fn open_view(&mut self) -> Result<ViewId, DirtyError> {
        if self.views.len() >= MAX_VIEWS {
            return Err(DirtyError::TooManyViews);
        }
        let id = ViewId(self.next_view);
        self.next_view += 1;
        self.views.push(View {
            id,
            pending: DirtyBitmap::new(self.pages),
        });
        Ok(id)
    }

    /// Closes `view`, dropping the frames pending in it; the other views
    /// are not touched. Tracking stays on: the caller stops it when
    /// [`DirtyLog::has_views`] says none is left.
    pub fn close_view(&mut self, view: ViewId) -> Result<(), DirtyError> {
        let i = self.view_index(view)?;
        self.views.remove(i);
        Ok(())
    }

    /// Number of open views.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// Whether any view is open.
    pub fn has_views(&self) -> bool {
        !self.views.is_empty()
    }

    /// The frames dirtied since `view`'s last take (or since it opened, see
    /// [`DirtyLog::open_view`]); clears them from `view` only.
    ///
    /// First harvests what the mechanism recorded since the last harvest
    /// into every open view and re-arms it: write protection protects the
    /// harvested pages again, EPT dirty flags are scanned and cleared, and
    /// for PML the dirty flags of the pages drained since the last harvest
    /// are cleared (the caller drains the buffer first). A logged or dirty
    /// 2 MiB leaf reports all of its frames. The other views keep what was
    /// harvested until they take it themselves.
    ///
    /// Returns the bitmap and whether INVEPT is needed before the guest
    /// runs again. With tracking off it returns the hypervisor writes only.
    /// On error nothing is lost: an unknown view changes nothing, and when
    /// re-arming fails the harvested frames are kept for the next take.
    pub fn take(
        &mut self,
        view: ViewId,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
    ) -> Result<(DirtyBitmap, bool), DirtyError> {
        let i = self.view_index(view)?;
        let invept = self.harvest(ept, mem, alloc)?;
        let out = mem::replace(&mut self.views[i].pending, DirtyBitmap::new(self.pages));
        self.stats.pages_reported += out.count();
        Ok((out, invept))
    }

    /// Moves everything recorded since the last harvest (software records
    /// and the hardware's) into every open view and re-arms the mechanism.
    /// Returns whether INVEPT is needed. On error the records stay here for
    /// the next harvest.
    fn harvest(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
    ) -> Result<bool, EptError> {
        let mut out = mem::replace(&mut self.dirty, DirtyBitmap::new(self.pages));
        match self.rearm(ept, mem, alloc, &mut out) {
            Ok(invept) => {
                for view in &mut self.views {
                    view.pending.union_with(&out);
                }
                Ok(invept)
            }
            Err(e) => {
                self.dirty.union_with(&out);
                Err(e)
            }
        }
    }

    /// Where `view` is in [`DirtyLog::views`], if open.
    fn view_index(&self, view: ViewId) -> Result<usize, DirtyError> {
        self.views
            .iter()
            .position(|v| v.id == view)
            .ok_or(DirtyError::NoSuchView(view))
    }

    /// The mechanism-specific part of a harvest: adds what the hardware
    /// recorded to `out` and re-arms it.
    fn rearm(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
        out: &mut DirtyBitmap,
    ) -> Result<bool, EptError> {
        if !self.active {
            return Ok(false);
        }
        let Some(len) = self.ram_len()? else {
            return Ok(false);
        };
        match self.mechanism {
            Mechanism::WriteProtect => protect_runs(ept, mem, alloc, out, &self.tracked),
            Mechanism::EptDirtyFlags => {
                let n = ept.take_dirty(mem, Gpa::new(0), len, |gfn| {
                    out.mark(gfn.as_u64());
                })?;
                Ok(n > 0)
            }
            Mechanism::Pml => {
                let logged = mem::replace(&mut self.logged, DirtyBitmap::new(self.pages));
                let mut invept = false;
                for gfn in logged.iter() {
                    match ept.clear_dirty(mem, Gpa::new(gfn * PAGE_SIZE)) {
                        Some(leaf) => {
                            invept |= leaf.entry.dirty();
                            // The processor logs a 2 MiB leaf once, for the
                            // first write to any of its frames.
                            let frames = leaf.page_size.bytes() / PAGE_SIZE;
                            let first = gfn & !(frames - 1);
                            out.mark_range(first, first + frames);
                        }
                        None => {
                            out.mark(gfn);
                        }
                    }
                }
                Ok(invept)
            }
        }
    }

    /// Undoes what start and tracking changed in the tables: write access
    /// back to the tracked pages, 2 MiB leaves merged back. Returns whether
    /// anything changed.
    fn restore(
        &mut self,
        ept: &mut Ept,
        mem: &mut impl PhysMem,
        alloc: &mut impl FrameAlloc,
    ) -> Result<bool, EptError> {
        let mut changed = false;
        for (first, end) in self.tracked.runs_in(&self.tracked) {
            let n = ept.allow_write(
                mem,
                alloc,
                Gpa::new(first * PAGE_SIZE),
                (end - first) * PAGE_SIZE,
            )?;
            changed |= n > 0;
        }
        for region in self.huge.iter() {
            changed |= ept.merge_2m(mem, alloc, Gpa::new(region * FRAMES_2M * PAGE_SIZE));
        }
        Ok(changed)
    }

    /// After a failed start: best-effort restore, tracking off.
    fn undo_start(&mut self, ept: &mut Ept, mem: &mut impl PhysMem, alloc: &mut impl FrameAlloc) {
        // The start's own error is the one to report; an undo that fails
        // too cannot do better than leave what it could not restore.
        let _ = self.restore(ept, mem, alloc);
        self.active = false;
        self.reset();
    }

    /// Forgets every record, the views' included (not the views
    /// themselves, nor the counters).
    fn reset(&mut self) {
        self.dirty.clear();
        self.logged.clear();
        self.tracked.clear();
        self.huge.clear();
        for view in &mut self.views {
            view.pending.clear();
        }
    }

    /// Bytes of guest RAM, or `None` if there is none.
    fn ram_len(&self) -> Result<Option<u64>, EptError> {
        if self.pages == 0 {
            return Ok(None);
        }
        match self.pages.checked_mul(PAGE_SIZE) {
            Some(len) => Ok(Some(len)),
            None => Err(EptError::GpaOutOfRange {
                gpa: Gpa::new(0),
                len: u64::MAX,
            }),
        }
    }
}

/// Write protection: removes write access from the runs of pages set in
/// both `pages` and `tracked`; returns whether any page lost it.
fn protect_runs(
    ept: &mut Ept,
    mem: &mut impl PhysMem,
    alloc: &mut impl FrameAlloc,
    pages: &DirtyBitmap,
    tracked: &DirtyBitmap,
) -> Result<bool, EptError> {
    let mut changed = false;
    for (first, end) in pages.runs_in(tracked) {
        let n = ept.write_protect_mapped(
            mem,
            alloc,
            Gpa::new(first * PAGE_SIZE),
            (end - first) * PAGE_SIZE,
        )?;
        changed |= n > 0;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hpa;
    use crate::entry::MemType;
    use crate::tables::Translation;
    use crate::testkit::{Access, Arena, hw_access, hw_walk};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    const K4: u64 = 0x1000;
    const RW: Perm = Perm::READ.union(Perm::WRITE);
    const RX: Perm = Perm::READ.union(Perm::EXECUTE);
    const RWX: Perm = Perm::all();

    /// Guest RAM frames in the standard layout.
    const PAGES: u64 = 0x880;
    /// A read-only 4 KiB range inside RAM (a ROM).
    const ROM: core::ops::Range<u64> = 0x10..0x20;
    /// A hole inside RAM.
    const HOLE: core::ops::Range<u64> = 0x20..0x30;
    /// A read-only 2 MiB page inside RAM.
    const ROM_2M: core::ops::Range<u64> = 0x600..0x800;
    /// An MMIO page beyond RAM, writable.
    const MMIO: u64 = 0x900;

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

    /// The processor's side of PML: the buffer and the index.
    struct Pml {
        buf: [u64; 512],
        index: u16,
        full_exits: u64,
    }

    /// One guest: its EPT over an arena, its tracker, and the simulated
    /// processor.
    struct Guest {
        arena: Arena,
        ept: Ept,
        log: DirtyLog,
        /// The view [`Guest::take`] takes from, opened with the guest.
        view: ViewId,
        ad: bool,
        pml: Option<Pml>,
    }

    impl Guest {
        /// The standard layout: 4 KiB pages (with a ROM and a hole) in the
        /// first 2 MiB, two writable 2 MiB pages, a read-only 2 MiB page,
        /// 4 KiB pages to the end of RAM, and MMIO beyond.
        fn new(mechanism: Mechanism) -> Guest {
            let mut g = Guest::empty(mechanism, PAGES, mechanism.needs_ad_flags());
            // hpa out of 2 MiB phase: 4 KiB pages.
            g.map(0, 0x10_0000_1000, ROM.start, RW);
            g.map(ROM.start, 0x10_0001_1000, ROM.end - ROM.start, RX);
            g.map(HOLE.end, 0x10_0003_1000, 0x200 - HOLE.end, RWX);
            g.map(0x200, 0x20_0000_0000, 0x400, RWX);
            g.map(ROM_2M.start, 0x20_0080_0000, 0x200, RX);
            g.map(0x800, 0x30_0000_0000, PAGES - 0x800, RW);
            g.ept
                .map(
                    &mut g.arena.mem(),
                    &mut g.arena.alloc(),
                    Gpa::new(MMIO * K4),
                    Hpa::new(0xfee0_0000),
                    K4,
                    RW,
                    MemType::Uncacheable,
                )
                .unwrap();
            g
        }

        fn empty(mechanism: Mechanism, pages: u64, ad: bool) -> Guest {
            let arena = Arena::new(128);
            let ept = Ept::new(&mut arena.alloc()).unwrap();
            let pml = (mechanism == Mechanism::Pml).then_some(Pml {
                buf: [0; 512],
                index: DirtyLog::PML_INDEX_RESET,
                full_exits: 0,
            });
            let mut log = DirtyLog::new(mechanism, pages);
            let view = log.open_view().unwrap();
            Guest {
                arena,
                ept,
                log,
                view,
                ad,
                pml,
            }
        }

        fn map(&mut self, gfn: u64, hpa: u64, frames: u64, perm: Perm) {
            self.ept
                .map(
                    &mut self.arena.mem(),
                    &mut self.arena.alloc(),
                    Gpa::new(gfn * K4),
                    Hpa::new(hpa),
                    frames * K4,
                    perm,
                    MemType::WriteBack,
                )
                .unwrap();
        }

        fn eptp(&self) -> u64 {
            self.ept.eptp(self.ad)
        }

        /// Starts tracking; for PML, as the kernel does, also resets the
        /// index (entries logged before are stale).
        fn start(&mut self) -> bool {
            if let Some(pml) = &mut self.pml {
                pml.index = DirtyLog::PML_INDEX_RESET;
            }
            let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
            self.log.start(&mut self.ept, &mut mem, &mut alloc).unwrap()
        }

        fn stop(&mut self) -> bool {
            let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
            self.log.stop(&mut self.ept, &mut mem, &mut alloc).unwrap()
        }

        fn violation(&mut self, gpa: u64) -> bool {
            let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
            self.log
                .on_write_violation(&mut self.ept, &mut mem, &mut alloc, gpa)
                .unwrap()
        }

        /// What the kernel does at a PML-full exit or before a take.
        fn drain(&mut self) {
            if let Some(pml) = &mut self.pml {
                pml.index = self.log.drain_pml(&pml.buf, pml.index);
            }
        }

        /// Takes from the guest's own view, draining the PML buffer first;
        /// the bitmap as a set.
        fn take(&mut self) -> (BTreeSet<u64>, bool) {
            self.take_view(self.view).unwrap()
        }

        /// Takes from `view`, draining the PML buffer first, as the kernel
        /// does before every take.
        fn take_view(&mut self, view: ViewId) -> Result<(BTreeSet<u64>, bool), DirtyError> {
            self.drain();
            let (mut mem, mut alloc) = (self.arena.mem(), self.arena.alloc());
            let (bitmap, invept) = self.log.take(view, &mut self.ept, &mut mem, &mut alloc)?;
            assert_eq!(bitmap.pages(), self.log.pages());
            Ok((bitmap.iter().collect(), invept))
        }

        /// A guest write to `gpa` as the processor performs it, with the
        /// kernel's handling of the exits it causes (PML full, write
        /// violations), re-executing the write after each. Returns whether
        /// it completed (false: a violation the tracker says is not its).
        fn write(&mut self, gpa: u64) -> bool {
            for _ in 0..4 {
                let eptp = self.eptp();
                if let Some(pml) = &mut self.pml {
                    let leaf = hw_walk(&self.arena, eptp, gpa);
                    if let Some(leaf) = leaf {
                        let d = self.arena.read(*leaf.slots.last().unwrap()) & (1 << 9) != 0;
                        if leaf.rwx & 2 != 0 && !d {
                            // Logging comes first; a full buffer exits
                            // before the access.
                            if pml.index == PML_INDEX_FULL {
                                pml.full_exits += 1;
                                self.drain();
                                continue;
                            }
                            pml.buf[usize::from(pml.index)] = gpa & !(K4 - 1);
                            pml.index = pml.index.wrapping_sub(1);
                        }
                    }
                }
                if hw_access(&self.arena, eptp, gpa, Access::Write).is_some() {
                    return true;
                }
                if !self.violation(gpa) {
                    return false;
                }
            }
            panic!("write to {gpa:#x} never completed");
        }

        fn read(&mut self, gpa: u64) -> bool {
            hw_access(&self.arena, self.eptp(), gpa, Access::Read).is_some()
        }

        /// The translation of every frame up to past the MMIO page.
        fn translations(&self) -> Vec<Option<Translation>> {
            (0..MMIO + 0x10)
                .map(|gfn| self.ept.translate(&self.arena.mem(), Gpa::new(gfn * K4)))
                .collect()
        }
    }

    /// Whether the standard layout lets the guest write frame `gfn`.
    fn writable(gfn: u64) -> bool {
        gfn < PAGES && !ROM.contains(&gfn) && !HOLE.contains(&gfn) && !ROM_2M.contains(&gfn)
            || gfn == MMIO
    }

    #[test]
    fn choose_picks_the_best_mechanism() {
        assert_eq!(choose(true, true), Mechanism::Pml);
        assert_eq!(choose(true, false), Mechanism::EptDirtyFlags);
        assert_eq!(choose(false, true), Mechanism::WriteProtect);
        assert_eq!(choose(false, false), Mechanism::WriteProtect);
        assert_eq!(Mechanism::Pml.to_string(), "pml");
        assert_eq!(Mechanism::EptDirtyFlags.to_string(), "ept dirty flags");
        assert_eq!(Mechanism::WriteProtect.to_string(), "write protection");
        assert!(Mechanism::Pml.needs_ad_flags() && Mechanism::EptDirtyFlags.needs_ad_flags());
        assert!(!Mechanism::WriteProtect.needs_ad_flags());
    }

    #[test]
    fn bitmap_basics() {
        let mut b = DirtyBitmap::new(130);
        assert_eq!(b.pages(), 130);
        assert!(b.is_empty() && b.count() == 0);
        assert!(b.mark(0) && b.mark(63) && b.mark(64) && b.mark(129));
        assert!(b.mark(64), "marking twice is fine");
        assert!(!b.mark(130) && !b.mark(u64::MAX), "out of range is ignored");
        assert!(b.is_set(63) && !b.is_set(62) && !b.is_set(130));
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);

        let mut big = DirtyBitmap::new(200);
        big.mark(5);
        big.mark(129);
        big.mark(130);
        big.mark(199);
        b.union_with(&big);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 129]);
        let mut small = DirtyBitmap::new(10);
        small.union_with(&b);
        assert_eq!(small.iter().collect::<Vec<_>>(), vec![0, 5]);

        b.clear();
        assert!(b.is_empty() && b.iter().next().is_none());
        assert_eq!(DirtyBitmap::new(0).iter().count(), 0);
        assert!(format!("{:?}", small).starts_with("DirtyBitmap(2 of 10 pages"));

        let mut t = DirtyBitmap::new(100);
        for g in [1, 2, 3, 7, 8, 50] {
            t.mark(g);
        }
        let mut f = DirtyBitmap::new(100);
        for g in [2, 3, 7, 8, 50, 51] {
            f.mark(g);
        }
        assert_eq!(t.runs_in(&f), vec![(2, 4), (7, 9), (50, 51)]);
    }

    /// Random guest writes (and reads, hypervisor writes, writes that are
    /// not RAM's) between takes: each take reports exactly the RAM frames
    /// written since the last one, and stop restores every translation and
    /// frees the tables start and tracking made.
    fn random_writes(mechanism: Mechanism, ad: bool, seed: u64) {
        let mut rng = Rng(seed);
        let mut g = Guest::new(mechanism);
        g.ad = ad;
        let before = g.translations();
        let frames = g.ept.table_frames();
        g.start();
        if mechanism != Mechanism::WriteProtect {
            // Split for precision: every 2 MiB leaf over RAM.
            assert!(
                g.translations()[..PAGES as usize]
                    .iter()
                    .flatten()
                    .all(|t| t.page_size == PageSize::Size4K)
            );
        }
        let hot: Vec<u64> = (0..16).map(|_| rng.below(PAGES)).collect();
        let mut total = 0;
        for round in 0..12 {
            let mut want = BTreeSet::new();
            let mut guest_wrote = false;
            if round % 4 == 3 {
                // A sweep over all of RAM: fills the PML buffer thrice.
                for gfn in (0..PAGES).filter(|&gfn| writable(gfn)) {
                    assert!(g.write(gfn * K4 + 8));
                    want.insert(gfn);
                    guest_wrote = true;
                }
            }
            let writes = rng.below(60);
            for _ in 0..writes {
                let gfn = match rng.below(10) {
                    0..=3 => hot[rng.below(16) as usize],
                    4 => MMIO,
                    5 => ROM.start + rng.below(0x20),
                    _ => rng.below(PAGES),
                };
                let gpa = gfn * K4 + rng.below(512) * 8;
                match rng.below(8) {
                    0 => {
                        assert_eq!(
                            g.read(gpa),
                            gfn < PAGES && !HOLE.contains(&gfn) || gfn == MMIO
                        );
                    }
                    1 => {
                        g.log.mark_hypervisor_write(gfn);
                        if gfn < PAGES {
                            want.insert(gfn);
                        }
                    }
                    _ => {
                        assert_eq!(g.write(gpa), writable(gfn), "gfn {gfn:#x}");
                        if writable(gfn) && gfn < PAGES {
                            want.insert(gfn);
                            guest_wrote = true;
                        }
                    }
                }
            }
            let (got, invept) = g.take();
            assert_eq!(got, want, "{mechanism} seed {seed:#x} round {round}");
            assert!(invept || !guest_wrote, "re-arming needs INVEPT");
            total += got.len() as u64;
        }
        // Nothing written since the last take: nothing reported.
        assert_eq!(g.take().0, BTreeSet::new());
        let stats = g.log.stats();
        assert_eq!(stats.pages_reported, total);
        match mechanism {
            Mechanism::WriteProtect => assert!(stats.tracking_faults > 0),
            Mechanism::Pml => {
                assert!(stats.pml_entries > 0);
                assert_eq!(stats.pml_full_exits, g.pml.as_ref().unwrap().full_exits);
                assert!(stats.pml_full_exits > 0, "the sweeps fill the buffer");
            }
            Mechanism::EptDirtyFlags => assert_eq!(stats.tracking_faults + stats.pml_entries, 0),
        }

        g.stop();
        assert!(!g.log.is_active());
        assert_eq!(g.translations(), before, "stop restores every translation");
        assert_eq!(g.ept.table_frames(), frames, "stop merges the splits back");
        assert_eq!(g.arena.live_frames(), frames);
        // Tracking is off: writes go through without exits.
        for gfn in (0..PAGES).step_by(7) {
            assert_eq!(g.write(gfn * K4), writable(gfn));
        }
        assert_eq!(g.take().0, BTreeSet::new());
    }

    const SEEDS: [u64; 3] = [1, 0x9e37_79b9_7f4a_7c15, 0xdead_beef];

    #[test]
    fn write_protection_reports_exactly_the_written_pages() {
        for seed in SEEDS {
            random_writes(Mechanism::WriteProtect, false, seed);
        }
        // The same with A/D flags on: they change nothing.
        random_writes(Mechanism::WriteProtect, true, 7);
    }

    #[test]
    fn ept_dirty_flags_report_exactly_the_written_pages() {
        for seed in SEEDS {
            random_writes(Mechanism::EptDirtyFlags, true, seed);
        }
    }

    #[test]
    fn pml_reports_exactly_the_written_pages() {
        for seed in SEEDS {
            random_writes(Mechanism::Pml, true, seed);
        }
    }

    /// The log the processor builds (a page is logged when a write finds
    /// its dirty flag clear) gives the same bitmaps as the dirty-flag scan.
    #[test]
    fn pml_log_matches_the_dirty_flag_scan() {
        for seed in SEEDS {
            let mut rng = Rng(seed);
            let mut pml = Guest::new(Mechanism::Pml);
            let mut flags = Guest::new(Mechanism::EptDirtyFlags);
            pml.start();
            flags.start();
            for round in 0..10 {
                let writes = if round == 4 { 1500 } else { rng.below(100) };
                for _ in 0..writes {
                    let gpa = rng.below(PAGES + 0x100) * K4 + rng.below(4096);
                    assert_eq!(pml.write(gpa), flags.write(gpa));
                }
                let (a, _) = pml.take();
                let (b, _) = flags.take();
                assert_eq!(a, b, "seed {seed:#x} round {round}");
            }
            assert!(pml.log.stats().pml_full_exits > 0);
        }
    }

    #[test]
    fn drain_pml_reads_the_valid_entries_only() {
        let mut g = Guest::new(Mechanism::Pml);
        // Before start: nothing recorded.
        assert_eq!(g.log.drain_pml(&[K4; 512], 0xFFFF), 511);
        g.start();

        // Entries 301..=511 are valid; 0..=300 are stale.
        let mut buf = [0x7000; 512];
        for (i, e) in buf.iter_mut().enumerate().skip(301) {
            *e = (i as u64) * K4;
        }
        buf[400] = PAGES * K4; // beyond RAM
        buf[401] = !(K4 - 1); // far beyond
        assert_eq!(g.log.drain_pml(&buf, 300), 511);
        let (got, _) = g.take();
        let want: BTreeSet<u64> = (301..512).filter(|&i| i != 400 && i != 401).collect();
        assert_eq!(got, want);
        assert_eq!(g.log.stats().pml_entries, 211);
        assert_eq!(g.log.stats().pml_full_exits, 0);

        // An empty buffer.
        assert_eq!(g.log.drain_pml(&buf, 511), 511);
        assert_eq!(g.take().0, BTreeSet::new());

        // A full one: all 512 entries.
        let buf: [u64; 512] = core::array::from_fn(|i| (0x100 + i as u64) * K4);
        assert_eq!(g.log.drain_pml(&buf, 0xFFFF), 511);
        assert_eq!(g.take().0, (0x100..0x300).collect());
        assert_eq!(g.log.stats().pml_entries, 211 + 512);
        assert_eq!(g.log.stats().pml_full_exits, 1);

        // Index 0: entries 1..=511 are valid, entry 0 is not yet written.
        let buf: [u64; 512] = core::array::from_fn(|i| i as u64 * K4);
        g.log.drain_pml(&buf, 0);
        assert_eq!(g.take().0, (1..512).collect());
    }

    #[test]
    fn write_violations_that_are_not_tracking_are_passed_on() {
        let mut g = Guest::new(Mechanism::WriteProtect);
        // Not started: not ours.
        assert!(!g.violation(0x1000));
        g.start();
        assert!(
            !g.violation(ROM.start * K4),
            "a ROM page was never writable"
        );
        assert!(!g.violation(ROM_2M.start * K4 + 0x5000));
        assert!(!g.violation(HOLE.start * K4), "a hole");
        assert!(!g.violation(MMIO * K4), "beyond RAM");
        assert!(!g.violation(1 << 47), "far beyond RAM");
        assert_eq!(g.log.stats().tracking_faults, 0);
        // MMIO stays writable, ROM stays read-only.
        assert!(g.write(MMIO * K4));
        assert!(!g.write(ROM.start * K4));

        // A RAM page that the kernel made inaccessible is the kernel's.
        let mut mem = g.arena.mem();
        g.ept
            .protect(
                &mut mem,
                &mut g.arena.alloc(),
                Gpa::new(0x3000),
                K4,
                Perm::empty(),
            )
            .unwrap();
        assert!(!g.violation(0x3000));

        // Ours: records the page and makes it writable, splitting the
        // 2 MiB page.
        assert!(g.violation(0x20_1234));
        let t = g
            .ept
            .translate(&g.arena.mem(), Gpa::new(0x20_1000))
            .unwrap();
        assert_eq!((t.perm, t.page_size), (RWX, PageSize::Size4K));
        let t = g
            .ept
            .translate(&g.arena.mem(), Gpa::new(0x20_2000))
            .unwrap();
        assert_eq!(t.perm, RX, "only the faulting page gets write access back");
        // A stale fault on a page that is writable again is ours too.
        assert!(g.violation(0x20_1000));
        assert_eq!(g.log.stats().tracking_faults, 2);
        assert_eq!(g.take().0, BTreeSet::from([0x201]));

        // Other mechanisms never claim a violation.
        let mut f = Guest::new(Mechanism::EptDirtyFlags);
        f.start();
        assert!(!f.violation(0x1000));
    }

    #[test]
    fn write_protection_without_frames_unprotects_the_whole_2m_page() {
        let mut g = Guest::new(Mechanism::WriteProtect);
        let before = g.translations();
        g.start();
        g.arena.set_budget(Some(0));
        assert!(g.write(0x40_5000));
        g.arena.set_budget(None);
        let t = g
            .ept
            .translate(&g.arena.mem(), Gpa::new(0x40_0000))
            .unwrap();
        assert_eq!((t.perm, t.page_size), (RWX, PageSize::Size2M));
        assert!(g.write(0x40_9000), "no exit: the whole page is writable");
        assert_eq!(g.take().0, (0x400..0x600).collect(), "all of it, coarsely");
        // Protected again as a whole.
        let t = g
            .ept
            .translate(&g.arena.mem(), Gpa::new(0x40_0000))
            .unwrap();
        assert_eq!((t.perm, t.page_size), (RX, PageSize::Size2M));
        assert!(g.write(0x40_9000));
        assert_eq!(
            g.take().0,
            BTreeSet::from([0x409]),
            "precise once frames are back"
        );
        g.stop();
        assert_eq!(g.translations(), before);
    }

    #[test]
    fn dirty_flags_without_frames_to_split_report_whole_2m_pages() {
        for mechanism in [Mechanism::EptDirtyFlags, Mechanism::Pml] {
            let mut g = Guest::new(mechanism);
            let before = g.translations();
            g.arena.set_budget(Some(1));
            g.start();
            g.arena.set_budget(None);
            let sizes: Vec<PageSize> = [0x200, 0x400, 0x600]
                .iter()
                .map(|&gfn| {
                    g.ept
                        .translate(&g.arena.mem(), Gpa::new(gfn * K4))
                        .unwrap()
                        .page_size
                })
                .collect();
            assert_eq!(
                sizes,
                [PageSize::Size4K, PageSize::Size2M, PageSize::Size2M],
                "{mechanism}: one split, then out of frames"
            );
            assert!(g.write(0x20_3000));
            assert!(g.write(0x40_3000));
            assert!(g.write(0x40_7000));
            let mut want: BTreeSet<u64> = (0x400..0x600).collect();
            want.insert(0x203);
            assert_eq!(g.take().0, want, "{mechanism}");
            assert_eq!(g.take().0, BTreeSet::new(), "{mechanism}");
            assert!(g.write(0x5f_f000));
            assert_eq!(g.take().0, (0x400..0x600).collect(), "{mechanism}");
            g.stop();
            assert_eq!(g.translations(), before, "{mechanism}");
        }
    }

    #[test]
    fn a_2m_page_across_the_end_of_ram_is_split_and_merged_back() {
        for mechanism in [
            Mechanism::WriteProtect,
            Mechanism::EptDirtyFlags,
            Mechanism::Pml,
        ] {
            // RAM ends in the middle of a 2 MiB page.
            let mut g = Guest::empty(mechanism, 0x300, mechanism.needs_ad_flags());
            g.map(0, 0x20_0000_0000, 0x400, RW);
            let before = g.translations();
            let frames = g.ept.table_frames();
            g.start();
            assert!(g.write(0x2f_f000));
            assert!(g.write(0x30_0000), "{mechanism}: beyond RAM stays writable");
            assert!(g.write(0x1000));
            assert_eq!(g.take().0, BTreeSet::from([0x1, 0x2ff]), "{mechanism}");
            g.stop();
            assert_eq!(g.translations(), before, "{mechanism}");
            assert_eq!(g.ept.table_frames(), frames, "{mechanism}");
        }
    }

    #[test]
    fn hypervisor_writes_are_always_recorded() {
        for mechanism in [
            Mechanism::WriteProtect,
            Mechanism::EptDirtyFlags,
            Mechanism::Pml,
        ] {
            let mut g = Guest::new(mechanism);
            g.log.mark_hypervisor_write(5);
            g.start();
            assert_eq!(g.take().0, BTreeSet::new(), "start forgets earlier records");
            for gfn in [ROM.start, HOLE.start, 0x700, 0x87f, PAGES, MMIO] {
                g.log.mark_hypervisor_write(gfn);
            }
            let (got, _) = g.take();
            assert_eq!(got, BTreeSet::from([ROM.start, HOLE.start, 0x700, 0x87f]));
            assert_eq!(g.take().0, BTreeSet::new());
            // Still recorded while a guest write to the same page is.
            g.log.mark_hypervisor_write(0x300);
            assert!(g.write(0x30_0000));
            assert!(g.write(0x30_1000));
            assert_eq!(g.take().0, BTreeSet::from([0x300, 0x301]));
        }
    }

    #[test]
    fn starting_twice_restarts_and_stop_still_restores() {
        for mechanism in [
            Mechanism::WriteProtect,
            Mechanism::EptDirtyFlags,
            Mechanism::Pml,
        ] {
            let mut g = Guest::new(mechanism);
            let before = g.translations();
            let frames = g.ept.table_frames();
            assert!(!g.stop(), "stopping when off changes nothing");
            assert!(g.start());
            assert!(g.write(0x20_0000));
            assert!(g.write(0x5000));
            assert!(g.start(), "{mechanism}");
            assert!(g.log.is_active());
            assert_eq!(
                g.take().0,
                BTreeSet::new(),
                "{mechanism}: a restart forgets"
            );
            assert!(g.write(0x5000));
            assert_eq!(g.take().0, BTreeSet::from([5]), "{mechanism}");
            assert!(g.stop());
            assert_eq!(g.translations(), before, "{mechanism}");
            assert_eq!(g.ept.table_frames(), frames, "{mechanism}");
        }
    }

    #[test]
    fn a_failed_start_leaves_the_tables_as_they_were() {
        // RAM ends inside a writable 2 MiB page: protecting it needs a split.
        let mut g = Guest::empty(Mechanism::WriteProtect, 0x300, false);
        g.map(0, 0x20_0000_0000, 0x400, RW);
        let before = g.translations();
        g.arena.set_budget(Some(0));
        let (mut mem, mut alloc) = (g.arena.mem(), g.arena.alloc());
        assert_eq!(
            g.log.start(&mut g.ept, &mut mem, &mut alloc),
            Err(EptError::OutOfFrames)
        );
        assert!(!g.log.is_active());
        assert_eq!(g.translations(), before);
        assert!(!g.violation(0x1000));
    }

    #[test]
    fn no_ram_tracks_hypervisor_writes_only() {
        let mut g = Guest::empty(Mechanism::EptDirtyFlags, 0, true);
        assert!(!g.start());
        g.log.mark_hypervisor_write(0);
        assert_eq!(g.take().0, BTreeSet::new());
        assert!(!g.stop());
    }

    #[test]
    fn merge_only_undoes_a_uniform_split() {
        let mut g = Guest::empty(Mechanism::EptDirtyFlags, 0x600, true);
        g.map(0, 0x20_0000_0000, 0x600, RWX);
        let (mut mem, mut alloc) = (g.arena.mem(), g.arena.alloc());
        let mut split = Vec::new();
        let n = g
            .ept
            .split_2m(&mut mem, &mut alloc, Gpa::new(0x1000), 0x40_0000, |gpa| {
                split.push(gpa.as_u64())
            })
            .unwrap();
        assert_eq!((n, split), (3, vec![0, 0x20_0000, 0x40_0000]));
        // Dirty a part, change the rights of another.
        assert!(hw_access(&g.arena, g.ept.eptp(true), 0x5000, Access::Write).is_some());
        g.ept
            .protect(&mut mem, &mut alloc, Gpa::new(0x20_3000), K4, RX)
            .unwrap();
        assert!(!g.ept.merge_2m(&mut mem, &mut alloc, Gpa::new(0x20_0000)));
        assert!(
            !g.ept.merge_2m(&mut mem, &mut alloc, Gpa::new(0x60_0000)),
            "a hole"
        );
        assert!(g.ept.merge_2m(&mut mem, &mut alloc, Gpa::new(0x1234)));
        assert!(
            !g.ept.merge_2m(&mut mem, &mut alloc, Gpa::new(0)),
            "a leaf already"
        );
        let t = g.ept.translate(&mem, Gpa::new(0x5000)).unwrap();
        assert_eq!((t.page_size, t.perm), (PageSize::Size2M, RWX));
        // The dirty flag of the part carried over to the merged leaf.
        let leaf = g.ept.clear_dirty(&mut mem, Gpa::new(0x1_0000)).unwrap();
        assert!(leaf.entry.dirty() && leaf.page_size == PageSize::Size2M);
        assert!(
            !g.ept
                .clear_dirty(&mut mem, Gpa::new(0))
                .unwrap()
                .entry
                .dirty()
        );
        assert_eq!(g.ept.clear_dirty(&mut mem, Gpa::new(0x60_0000)), None);
    }

    const MECHANISMS: [Mechanism; 3] = [
        Mechanism::WriteProtect,
        Mechanism::EptDirtyFlags,
        Mechanism::Pml,
    ];

    /// Writable RAM frames of the standard layout: 4 KiB pages in the first
    /// 2 MiB, inside both writable 2 MiB pages, and in the 4 KiB tail.
    const SPOTS: [u64; 6] = [0x5, 0x1ff, 0x200, 0x3ff, 0x5ff, 0x87f];

    #[test]
    fn two_views_each_see_every_page_written_since_their_own_last_take() {
        for mechanism in MECHANISMS {
            let mut g = Guest::new(mechanism);
            let a = g.view;
            g.start();
            let b = g.log.open_view().unwrap();
            assert_ne!(a, b);
            assert_eq!(g.log.views(), 2);
            let [p1, p2, p3, p4, p5, p6] = SPOTS;

            assert!(g.write(p1 * K4));
            assert_eq!(
                g.take_view(a).unwrap().0,
                BTreeSet::from([p1]),
                "{mechanism}"
            );
            assert!(g.write(p2 * K4));
            assert!(g.write(p1 * K4), "{mechanism}: re-armed by a's take");
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([p1, p2]),
                "{mechanism}: b keeps what a's take harvested"
            );
            assert_eq!(
                g.take_view(a).unwrap().0,
                BTreeSet::from([p1, p2]),
                "{mechanism}"
            );

            assert!(g.write(p3 * K4 + 0x10));
            g.log.mark_hypervisor_write(p4);
            assert!(g.write(p5 * K4));
            assert_eq!(g.take_view(b).unwrap().0, BTreeSet::from([p3, p4, p5]));
            assert!(g.write(p6 * K4));
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([p6]),
                "{mechanism}"
            );
            assert_eq!(
                g.take_view(a).unwrap().0,
                BTreeSet::from([p3, p4, p5, p6]),
                "{mechanism}"
            );
            assert_eq!(g.take_view(a).unwrap().0, BTreeSet::new());
            assert_eq!(g.take_view(b).unwrap().0, BTreeSet::new());
            // Each view's pages count once per take that reported them.
            assert_eq!(g.log.stats().pages_reported, 1 + 2 + 2 + 3 + 1 + 4);
        }
    }

    #[test]
    fn closing_a_view_does_not_disturb_another() {
        for mechanism in MECHANISMS {
            let mut g = Guest::new(mechanism);
            let before = g.translations();
            let a = g.view;
            g.start();
            let b = g.log.open_view().unwrap();
            assert!(g.write(0x5000));
            assert!(g.write(0x30_0000));
            // a's take harvests into b too; closing a keeps b's pages.
            assert_eq!(g.take_view(a).unwrap().0, BTreeSet::from([0x5, 0x300]));
            assert!(g.write(0x6000));
            g.log.close_view(a).unwrap();
            assert_eq!((g.log.views(), g.log.has_views()), (1, true));
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([0x5, 0x6, 0x300]),
                "{mechanism}"
            );
            assert!(g.write(0x7000));
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([0x7]),
                "{mechanism}"
            );

            // And the other way round: closing the view that harvested last.
            let c = g.log.open_view().unwrap();
            assert!(g.write(0x8000));
            assert_eq!(g.take_view(c).unwrap().0, BTreeSet::from([0x8]));
            assert!(g.write(0x9000));
            g.log.close_view(c).unwrap();
            assert_eq!(g.take_view(b).unwrap().0, BTreeSet::from([0x8, 0x9]));

            // The last view closed: tracking is still on until stopped.
            g.log.close_view(b).unwrap();
            assert!(!g.log.has_views() && g.log.is_active());
            g.stop();
            assert_eq!(g.translations(), before, "{mechanism}");
        }
    }

    #[test]
    fn unknown_views_are_errors_not_panics() {
        let mut g = Guest::new(Mechanism::WriteProtect);
        let a = g.view;
        g.start();
        g.log.close_view(a).unwrap();
        assert_eq!(g.take_view(a), Err(DirtyError::NoSuchView(a)));
        assert_eq!(g.log.close_view(a), Err(DirtyError::NoSuchView(a)));

        // A failed take harvests nothing: the page is still writable (no
        // second fault) and reported to a view opened before it.
        let b = g.log.open_view().unwrap();
        assert!(g.write(0x5000));
        assert_eq!(g.take_view(a), Err(DirtyError::NoSuchView(a)));
        assert!(g.write(0x5008));
        assert_eq!(g.log.stats().tracking_faults, 1);
        assert_eq!(g.log.stats().pages_reported, 0);
        assert_eq!(g.take_view(b).unwrap().0, BTreeSet::from([5]));

        // Fill the slots; ids are never reused, so a stale id stays stale.
        let mut open = vec![b];
        while open.len() < MAX_VIEWS {
            open.push(g.log.open_view().unwrap());
        }
        assert_eq!(g.log.open_view(), Err(DirtyError::TooManyViews));
        assert_eq!(g.log.views(), MAX_VIEWS);
        g.log.close_view(open[1]).unwrap();
        let again = g.log.open_view().unwrap();
        assert!(!open.contains(&again) && again != a);
        assert_eq!(g.take_view(open[1]), Err(DirtyError::NoSuchView(open[1])));
        assert!(g.take_view(again).is_ok());

        assert_eq!(
            DirtyError::NoSuchView(a).to_string(),
            format!("Dirty view #{} is not open", a.0)
        );
        assert_eq!(
            DirtyError::TooManyViews.to_string(),
            "Too many dirty views: 4 are open already"
        );
        assert_eq!(
            DirtyError::from(EptError::OutOfFrames).to_string(),
            "Out of frames for EPT tables"
        );
    }

    /// A new view starts empty; its first take also reports what was
    /// written before it opened that no take had harvested yet.
    #[test]
    fn a_view_opened_later_starts_empty_but_gets_unharvested_writes() {
        for mechanism in MECHANISMS {
            let mut g = Guest::new(mechanism);
            let a = g.view;
            g.start();
            assert!(g.write(0x5000));
            let b = g.log.open_view().unwrap();
            assert!(g.write(0x6000));
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([5, 6]),
                "{mechanism}"
            );
            assert_eq!(
                g.take_view(a).unwrap().0,
                BTreeSet::from([5, 6]),
                "{mechanism}"
            );
            // Harvested before it opened: not reported to c.
            assert!(g.write(0x7000));
            assert_eq!(g.take_view(a).unwrap().0, BTreeSet::from([7]));
            let c = g.log.open_view().unwrap();
            assert_eq!(g.take_view(c).unwrap().0, BTreeSet::new(), "{mechanism}");
            assert!(g.write(0x8000));
            assert_eq!(
                g.take_view(c).unwrap().0,
                BTreeSet::from([8]),
                "{mechanism}"
            );
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([7, 8]),
                "{mechanism}"
            );
        }
    }

    #[test]
    fn views_stay_open_across_start_and_stop_and_are_emptied() {
        for mechanism in MECHANISMS {
            let mut g = Guest::new(mechanism);
            let a = g.view;
            // Before start: hypervisor writes only, then start forgets them.
            let b = g.log.open_view().unwrap();
            g.log.mark_hypervisor_write(3);
            assert_eq!(g.take_view(b).unwrap().0, BTreeSet::from([3]));
            g.log.mark_hypervisor_write(4);
            g.start();
            assert_eq!(g.take_view(a).unwrap().0, BTreeSet::new(), "{mechanism}");
            assert_eq!(g.take_view(b).unwrap().0, BTreeSet::new(), "{mechanism}");

            assert!(g.write(0x5000));
            assert_eq!(g.take_view(a).unwrap().0, BTreeSet::from([5]));
            // b holds 5 now; stop drops it.
            g.stop();
            assert_eq!(g.log.views(), 2);
            assert!(g.write(0x6000), "untracked");
            g.log.mark_hypervisor_write(9);
            assert_eq!(
                g.take_view(b).unwrap().0,
                BTreeSet::from([9]),
                "{mechanism}"
            );
            assert_eq!(
                g.take_view(a).unwrap().0,
                BTreeSet::from([9]),
                "{mechanism}"
            );
        }
    }

    /// One step of a property case (tracking is started once, views 0 and
    /// 1 are open at first).
    #[derive(Debug, Clone)]
    enum Op {
        /// A guest write to a frame (writable or not, in RAM or not).
        Write(u64),
        /// A guest write to 600 consecutive frames: fills a PML buffer.
        Sweep(u64),
        /// A hypervisor write.
        Hypervisor(u64),
        /// A PML drain without a take (a PML-full exit).
        Drain,
        /// A take from view 0 or 1.
        Take(usize),
        /// Closes view 0 or 1 (an error if closed) and, if `reopen`, opens
        /// it again with a new id.
        Reopen(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let gfn = prop_oneof![
            3 => 0..PAGES,
            1 => (MMIO - 0x10)..(MMIO + 0x10),
            1 => Just(0x500u64),
        ];
        prop_oneof![
            12 => gfn.clone().prop_map(Op::Write),
            1 => (0..PAGES).prop_map(Op::Sweep),
            3 => gfn.prop_map(Op::Hypervisor),
            1 => Just(Op::Drain),
            6 => (0..2usize).prop_map(Op::Take),
            1 => ((0..2usize), proptest::bool::weighted(0.8)).prop_map(|(v, r)| Op::Reopen(v, r)),
        ]
    }

    /// Runs `ops` on a guest tracked by `mechanism` with two views and
    /// checks every take against a model: per view, the set of RAM frames
    /// written since its last take; a view opened later starts with the
    /// frames written since the last take of any view (not yet harvested).
    fn run_views(mechanism: Mechanism, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut g = Guest::new(mechanism);
        let before = g.translations();
        g.start();
        let mut ids = [Some(g.view), Some(g.log.open_view().unwrap())];
        let mut model: [BTreeSet<u64>; 2] = Default::default();
        let mut unharvested = BTreeSet::new();
        let mut closed = Vec::new();
        let record = |gfn: u64, model: &mut [BTreeSet<u64>; 2], unharvested: &mut BTreeSet<u64>| {
            if gfn < PAGES {
                model.iter_mut().for_each(|m| {
                    m.insert(gfn);
                });
                unharvested.insert(gfn);
            }
        };
        for op in ops {
            match *op {
                Op::Write(gfn) => {
                    prop_assert_eq!(g.write(gfn * K4 + 8), writable(gfn), "gfn {:#x}", gfn);
                    if writable(gfn) {
                        record(gfn, &mut model, &mut unharvested);
                    }
                }
                Op::Sweep(first) => {
                    for gfn in (first..first + 600).filter(|&gfn| writable(gfn)) {
                        prop_assert!(g.write(gfn * K4));
                        record(gfn, &mut model, &mut unharvested);
                    }
                }
                Op::Hypervisor(gfn) => {
                    g.log.mark_hypervisor_write(gfn);
                    record(gfn, &mut model, &mut unharvested);
                }
                Op::Drain => g.drain(),
                Op::Take(v) => match ids[v] {
                    Some(id) => {
                        let (got, _) = g.take_view(id).unwrap();
                        prop_assert_eq!(&got, &model[v], "view {}", v);
                        model[v].clear();
                        unharvested.clear();
                    }
                    None => {
                        let last = *closed.last().unwrap();
                        prop_assert_eq!(g.take_view(last), Err(DirtyError::NoSuchView(last)));
                    }
                },
                Op::Reopen(v, reopen) => {
                    if let Some(id) = ids[v].take() {
                        g.log.close_view(id).unwrap();
                        closed.push(id);
                    } else {
                        let last = *closed.last().unwrap();
                        prop_assert_eq!(g.log.close_view(last), Err(DirtyError::NoSuchView(last)));
                    }
                    if reopen {
                        ids[v] = Some(g.log.open_view().unwrap());
                        model[v] = unharvested.clone();
                    }
                }
            }
        }
        // Whatever is left is still there for each open view.
        for v in 0..2 {
            if let Some(id) = ids[v] {
                prop_assert_eq!(&g.take_view(id).unwrap().0, &model[v]);
                model[v].clear();
            }
        }
        g.stop();
        prop_assert_eq!(g.translations(), before);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn views_match_a_model_with_write_protection(ops in vec(op(), 0..80)) {
            run_views(Mechanism::WriteProtect, &ops)?;
        }

        #[test]
        fn views_match_a_model_with_ept_dirty_flags(ops in vec(op(), 0..80)) {
            run_views(Mechanism::EptDirtyFlags, &ops)?;
        }

        #[test]
        fn views_match_a_model_with_pml(ops in vec(op(), 0..80)) {
            run_views(Mechanism::Pml, &ops)?;
        }
    }

    #[test]
    fn stats_display() {
        let s = DirtyStats {
            pages_reported: 3,
            tracking_faults: 2,
            pml_entries: 1,
            pml_full_exits: 0,
        };
        assert_eq!(
            s.to_string(),
            "3 pages reported, 2 tracking faults, 1 PML entries, 0 PML-full exits"
        );
    }
}
