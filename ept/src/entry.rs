//! EPT paging-structure entry layout (SDM Vol. 3C 29.3.2, Tables 29-1 to 29-6)
//! and the small types that describe one mapping: [`Perm`], [`MemType`],
//! [`PageSize`].
//!
//! The bits this crate writes:
//!
//! ```text
//!  63      52 51                       12 11 10  9  8  7  6  5   3  2  1  0
//! +----------+---------------------------+--+--+--+--+--+--+------+--+--+--+
//! | 0        | table or page address     |SW| 0| D| A| L|IP| type | X| W| R|
//! +----------+---------------------------+--+--+--+--+--+--+------+--+--+--+
//!  SW = software "present" (bit 11, ignored by the processor in every EPT entry)
//!  L  = large page (PDE only), IP = ignore PAT, type = EPT memory type (leaves only)
//!  A/D = accessed/dirty, set by the processor when EPTP bit 6 is 1 (29.3.5)
//! ```
//!
//! Why a software present bit: the processor treats an entry whose bits 2:0
//! are all 0 as not present (29.3.2). A mapping whose permissions were
//! taken away (to trap every access to it) must stay a mapping for this
//! crate, with its host address and memory type, so presence is bit 11.
//! Every entry this crate writes is either 0 or has bit 11 set.

use crate::addr::{Hpa, PAGE_SIZE};
use bitflags::bitflags;

bitflags! {
    /// Guest access rights of a mapping: bits 2:0 of an EPT entry
    /// (SDM 29.3.2). Without the "mode-based execute control" bit 2 means
    /// execute for all linear addresses, which is how this crate uses it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Perm: u8 {
        /// Reads allowed.
        const READ = 1 << 0;
        /// Writes allowed. Without [`Perm::READ`] this is an EPT
        /// misconfiguration (SDM 29.3.3.1), which this crate refuses.
        const WRITE = 1 << 1;
        /// Instruction fetches allowed.
        const EXECUTE = 1 << 2;
    }
}

/// EPT memory type of a page: bits 5:3 of a leaf entry (SDM 29.3.7), and
/// bits 2:0 of the EPTP for the tables themselves (SDM 25.6.11).
///
/// Values 2, 3 and 7 are reserved; a leaf holding one is an EPT
/// misconfiguration (SDM 29.3.3.1), so they have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemType {
    /// UC: for MMIO.
    Uncacheable = 0,
    /// WC: for frame buffers.
    WriteCombining = 1,
    /// WT.
    WriteThrough = 4,
    /// WP.
    WriteProtected = 5,
    /// WB: for ordinary RAM.
    WriteBack = 6,
}

impl TryFrom<u8> for MemType {
    /// The value, when it is a reserved encoding.
    type Error = u8;

    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(MemType::Uncacheable),
            1 => Ok(MemType::WriteCombining),
            4 => Ok(MemType::WriteThrough),
            5 => Ok(MemType::WriteProtected),
            6 => Ok(MemType::WriteBack),
            other => Err(other),
        }
    }
}

/// Size of the page a leaf maps. This crate never creates 1 GiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// Mapped by an EPT PTE (SDM Table 29-6).
    Size4K,
    /// Mapped by an EPT PDE with bit 7 set (SDM Table 29-4).
    Size2M,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_SIZE,
            PageSize::Size2M => 512 * PAGE_SIZE,
        }
    }
}

/// Bits 2:0: read, write, execute.
const PERM_MASK: u64 = 0b111;
/// Bits 5:3: EPT memory type (leaves only).
const MEMTYPE_SHIFT: u32 = 3;
const MEMTYPE_MASK: u64 = 0b111 << MEMTYPE_SHIFT;
/// Bit 6: ignore PAT (leaves only). Set on every leaf so the memory type
/// this crate is given is the one the guest gets, whatever the guest's PAT
/// says (SDM 29.3.7).
const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDE: the entry maps a 2 MiB page instead of referencing a
/// page table.
const LARGE: u64 = 1 << 7;
/// Bit 8: accessed (SDM 29.3.5).
const ACCESSED: u64 = 1 << 8;
/// Bit 9 of a leaf: dirty (SDM 29.3.5).
const DIRTY: u64 = 1 << 9;
/// Bit 11: ignored by the processor in every EPT entry; this crate's
/// "present" (see the module doc).
const SW_PRESENT: u64 = 1 << 11;
/// Bits 51:12: physical address of the next table or of the page. Bits
/// 51:N (N = MAXPHYADDR) must be 0; the caller only hands in addresses the
/// machine has.
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One 64-bit EPT paging-structure entry, as read from a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptEntry(u64);

impl EptEntry {
    /// The absent entry.
    pub(crate) const EMPTY: EptEntry = EptEntry(0);

    /// Wraps a value read from a table.
    pub(crate) const fn from_raw(raw: u64) -> Self {
        EptEntry(raw)
    }

    /// An entry that references the next-level table at `table`. Non-leaf
    /// entries get all of R/W/X: the effective rights are the AND over the
    /// walk (SDM 29.3.3.2), so leaves alone decide.
    pub(crate) const fn table(table: Hpa) -> Self {
        EptEntry((table.as_u64() & ADDR_MASK) | PERM_MASK | SW_PRESENT)
    }

    /// A leaf that maps `page`, with bit 7 set when it is a 2 MiB page.
    pub(crate) fn leaf(page: Hpa, size: PageSize, perm: Perm, memtype: MemType) -> Self {
        let large = match size {
            PageSize::Size4K => 0,
            PageSize::Size2M => LARGE,
        };
        EptEntry(
            (page.as_u64() & ADDR_MASK)
                | u64::from(perm.bits())
                | (u64::from(memtype as u8) << MEMTYPE_SHIFT)
                | IGNORE_PAT
                | large
                | SW_PRESENT,
        )
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether this crate wrote a mapping or a table reference here.
    pub const fn is_present(self) -> bool {
        self.0 & SW_PRESENT != 0
    }

    /// Bit 7. Meaningful in a PDE only.
    pub(crate) const fn is_large(self) -> bool {
        self.0 & LARGE != 0
    }

    /// The table or page address, bits 51:12.
    pub const fn addr(self) -> Hpa {
        Hpa::new(self.0 & ADDR_MASK)
    }

    /// The guest access rights, bits 2:0.
    pub const fn perm(self) -> Perm {
        // Masked to 3 bits first, so the cast drops nothing.
        Perm::from_bits_truncate((self.0 & PERM_MASK) as u8)
    }

    /// The EPT memory type of a leaf, or `None` for a reserved encoding.
    pub fn memtype(self) -> Option<MemType> {
        // The mask keeps 3 bits, so the value fits in u8.
        MemType::try_from(((self.0 & MEMTYPE_MASK) >> MEMTYPE_SHIFT) as u8).ok()
    }

    /// Whether the ignore-PAT bit is set.
    pub const fn ignores_pat(self) -> bool {
        self.0 & IGNORE_PAT != 0
    }

    /// The accessed flag (only maintained while EPTP bit 6 is 1).
    pub const fn accessed(self) -> bool {
        self.0 & ACCESSED != 0
    }

    /// The dirty flag of a leaf (only maintained while EPTP bit 6 is 1).
    pub const fn dirty(self) -> bool {
        self.0 & DIRTY != 0
    }

    /// The same entry with the dirty flag cleared.
    pub(crate) const fn without_dirty(self) -> Self {
        EptEntry(self.0 & !DIRTY)
    }

    /// The same entry with rights `perm`: address, memory type and A/D
    /// flags are kept (dropping D would lose a guest write).
    pub(crate) const fn with_perm(self, perm: Perm) -> Self {
        EptEntry((self.0 & !PERM_MASK) | perm.bits() as u64)
    }

    /// The entry for 4 KiB page `index` of the 2 MiB leaf `self`: same
    /// rights, memory type and A/D flags, so splitting neither changes a
    /// translation nor forgets a dirty page.
    pub(crate) const fn split_part(self, index: u64) -> Self {
        let page = (self.0 & ADDR_MASK) + index * PAGE_SIZE;
        EptEntry((self.0 & !(ADDR_MASK | LARGE)) | page)
    }
}

/// A leaf met by [`crate::Ept::for_each_leaf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Size of the page the entry maps.
    pub page_size: PageSize,
    /// The entry as read from the table.
    pub entry: EptEntry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_encoding_matches_the_sdm_tables() {
        let e = EptEntry::leaf(
            Hpa::new(0x1234_5000),
            PageSize::Size4K,
            Perm::READ | Perm::EXECUTE,
            MemType::WriteBack,
        );
        // R=1 W=0 X=1, type 6 in 5:3, IPAT bit 6, SW bit 11, address.
        assert_eq!(
            e.raw(),
            0x1234_5000 | 0b101 | (6 << 3) | (1 << 6) | (1 << 11)
        );
        assert!(e.is_present() && !e.is_large() && e.ignores_pat());
        assert_eq!(e.perm(), Perm::READ | Perm::EXECUTE);
        assert_eq!(e.memtype(), Some(MemType::WriteBack));
        assert_eq!(e.addr(), Hpa::new(0x1234_5000));

        let big = EptEntry::leaf(
            Hpa::new(0x4020_0000),
            PageSize::Size2M,
            Perm::all(),
            MemType::Uncacheable,
        );
        assert_eq!(
            big.raw(),
            0x4020_0000 | 0b111 | (1 << 6) | (1 << 7) | (1 << 11)
        );
    }

    #[test]
    fn table_entries_grant_everything() {
        let e = EptEntry::table(Hpa::new(0xabc_d000));
        assert_eq!(e.raw(), 0xabc_d000 | 0b111 | (1 << 11));
        assert_eq!(e.addr(), Hpa::new(0xabc_d000));
    }

    #[test]
    fn memtype_rejects_reserved_encodings() {
        for (v, ok) in [
            (0, true),
            (1, true),
            (2, false),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
            (7, false),
        ] {
            assert_eq!(MemType::try_from(v).is_ok(), ok, "type {v}");
        }
        assert_eq!(MemType::try_from(6), Ok(MemType::WriteBack));
        assert_eq!(MemType::try_from(9), Err(9));
        assert_eq!(EptEntry::from_raw(7 << 3).memtype(), None);
    }

    #[test]
    fn split_and_perm_changes_keep_dirty_and_type() {
        let big = EptEntry::from_raw(
            EptEntry::leaf(
                Hpa::new(0x60_0000),
                PageSize::Size2M,
                Perm::READ,
                MemType::WriteThrough,
            )
            .raw()
                | ACCESSED
                | DIRTY,
        );
        let part = big.split_part(3);
        assert_eq!(part.addr(), Hpa::new(0x60_3000));
        assert!(!part.is_large() && part.dirty() && part.accessed());
        assert_eq!(part.memtype(), Some(MemType::WriteThrough));
        let rw = part.with_perm(Perm::READ | Perm::WRITE);
        assert_eq!(rw.perm(), Perm::READ | Perm::WRITE);
        assert!(rw.dirty());
        assert!(!rw.without_dirty().dirty());
        assert!(rw.without_dirty().accessed());
    }
}
