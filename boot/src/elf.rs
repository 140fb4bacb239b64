//! Validation of the kernel ELF before the loader copies a byte of it.
//!
//! The kernel is a statically linked ELF64 executable (`ET_EXEC`, x86-64) whose
//! `PT_LOAD` segments all live in the higher half at or above
//! [`crate::KERNEL_BASE`] (see `kernel/linker.ld`). Anything else, a truncated
//! file, a segment that points past the end of the file, overlapping segments,
//! is refused with a reason the operator can act on.
//!
//! Reference: System V ABI, "ELF-64 Object File Format" 1.5, sections 3-6.

/// A `PT_LOAD` segment, checked against the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte (page aligned).
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file_len` is zeroed).
    pub mem_len: u64,
    /// Offset of the segment's bytes in the file.
    pub file_offset: u64,
    /// Bytes present in the file.
    pub file_len: u64,
    /// Segment is writable (`PF_W`).
    pub writable: bool,
    /// Segment is executable (`PF_X`).
    pub executable: bool,
}

/// A kernel image that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Entry point (virtual).
    pub entry: u64,
    /// Lowest segment address (page aligned).
    pub virt_start: u64,
    /// One past the highest segment byte, rounded up to a page.
    pub virt_end: u64,
    /// The loadable segments, sorted by address.
    pub segments: [Option<Segment>; MAX_SEGMENTS],
}

impl KernelImage {
    /// The segments present.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().flatten()
    }
}

/// Most `PT_LOAD` segments accepted (text, rodata, data+bss and some slack).
pub const MAX_SEGMENTS: usize = 8;

/// Why a kernel file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF header, or a header field points past the end.
    Truncated,
    /// Does not start with `\x7fELF`.
    BadMagic,
    /// Not ELFCLASS64 / little-endian / x86-64 / ET_EXEC.
    WrongKind(&'static str),
    /// Program header entry size is not 56.
    BadProgramHeaderSize(u16),
    /// No `PT_LOAD` segment at all.
    NoSegments,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// A segment below [`crate::KERNEL_BASE`], unaligned, with `filesz > memsz`,
    /// wrapping, or overlapping another.
    BadSegment(u64),
    /// The entry point is not inside an executable segment.
    BadEntry(u64),
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ElfError::Truncated => write!(f, "file is truncated"),
            ElfError::BadMagic => write!(f, "no ELF magic (not an ELF file)"),
            ElfError::WrongKind(what) => write!(f, "not a {what}"),
            ElfError::BadProgramHeaderSize(n) => write!(f, "program header size {n}, expected 56"),
            ElfError::NoSegments => write!(f, "no loadable segment"),
            ElfError::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} loadable segments")
            }
            ElfError::BadSegment(va) => write!(f, "bad loadable segment at {va:#x}"),
            ElfError::BadEntry(va) => {
                write!(f, "entry point {va:#x} is not in an executable segment")
            }
        }
    }
}

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Checks a kernel `file` (segments in the higher half) and describes what
/// to load.
pub fn parse(file: &[u8]) -> Result<KernelImage, ElfError> {
    parse_range(file, crate::KERNEL_BASE, u64::MAX)
}

/// Checks an ELF whose segments must all lie in `[lo, hi)` (a guest image:
/// its guest-physical load range) and describes what to load.
pub fn parse_range(file: &[u8], lo: u64, hi: u64) -> Result<KernelImage, ElfError> {
    if file.len() < 64 {
        return Err(if file.len() >= 4 && &file[..4] != b"\x7fELF" {
            ElfError::BadMagic
        } else {
            ElfError::Truncated
        });
    }
    if &file[..4] != b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    if file[4] != 2 {
        return Err(ElfError::WrongKind("64-bit ELF"));
    }
    if file[5] != 1 {
        return Err(ElfError::WrongKind("little-endian ELF"));
    }
    if u16_at(file, 16)? != 2 {
        return Err(ElfError::WrongKind("static executable (ET_EXEC)"));
    }
    if u16_at(file, 18)? != 0x3e {
        return Err(ElfError::WrongKind("x86-64 executable"));
    }
    let entry = u64_at(file, 24)?;
    let phoff = u64_at(file, 32)?;
    let phentsize = u16_at(file, 54)?;
    let phnum = u16_at(file, 56)?;
    if phentsize != 56 {
        return Err(ElfError::BadProgramHeaderSize(phentsize));
    }
    let table_len = u64::from(phnum) * 56;
    let table_end = phoff.checked_add(table_len).ok_or(ElfError::Truncated)?;
    if table_end > file.len() as u64 {
        return Err(ElfError::Truncated);
    }

    let mut segments: [Option<Segment>; MAX_SEGMENTS] = [None; MAX_SEGMENTS];
    let mut count = 0;
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * 56;
        if u32_at(file, ph)? != PT_LOAD {
            continue;
        }
        let flags = u32_at(file, ph + 4)?;
        let file_offset = u64_at(file, ph + 8)?;
        let vaddr = u64_at(file, ph + 16)?;
        let file_len = u64_at(file, ph + 32)?;
        let mem_len = u64_at(file, ph + 40)?;
        if mem_len == 0 {
            continue;
        }
        let bad = ElfError::BadSegment(vaddr);
        let vend = vaddr.checked_add(mem_len).ok_or(bad)?;
        if vaddr < lo || vend > hi || vaddr % PAGE != 0 || file_len > mem_len {
            return Err(bad);
        }
        // Rounding the end up to a page must not wrap either.
        vend.checked_add(PAGE - 1).ok_or(bad)?;
        let fend = file_offset
            .checked_add(file_len)
            .ok_or(ElfError::Truncated)?;
        if fend > file.len() as u64 {
            return Err(ElfError::Truncated);
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        segments[count] = Some(Segment {
            vaddr,
            mem_len,
            file_offset,
            file_len,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        });
        count += 1;
    }
    if count == 0 {
        return Err(ElfError::NoSegments);
    }
    segments[..count].sort_unstable_by_key(|s| s.map(|s| s.vaddr));
    let round_up = |v: u64| (v + PAGE - 1) & !(PAGE - 1);
    // Page-granular overlap check: two segments may not share a page, since
    // each page gets one set of permissions.
    for pair in segments[..count].windows(2) {
        if let [Some(a), Some(b)] = pair
            && round_up(a.vaddr + a.mem_len) > b.vaddr
        {
            return Err(ElfError::BadSegment(b.vaddr));
        }
    }
    let first = segments[0].ok_or(ElfError::NoSegments)?;
    let last = segments[count - 1].ok_or(ElfError::NoSegments)?;
    let in_exec = segments[..count]
        .iter()
        .flatten()
        .any(|s| s.executable && entry >= s.vaddr && entry < s.vaddr + s.mem_len);
    if !in_exec {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(KernelImage {
        entry,
        virt_start: first.vaddr,
        virt_end: round_up(last.vaddr + last.mem_len),
        segments,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    struct Ph {
        kind: u32,
        flags: u32,
        off: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn elf(entry: u64, phs: &[Ph], total: usize) -> Vec<u8> {
        let mut b = std::vec![0u8; total.max(64 + 56 * phs.len())];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        for (i, p) in phs.iter().enumerate() {
            let o = 64 + i * 56;
            b[o..o + 4].copy_from_slice(&p.kind.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&p.off.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            b[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
        }
        b
    }

    const B: u64 = crate::KERNEL_BASE;

    fn good() -> Vec<u8> {
        elf(
            B + 0x10,
            &[
                Ph {
                    kind: PT_LOAD,
                    flags: 5,
                    off: 0x1000,
                    vaddr: B,
                    filesz: 0x800,
                    memsz: 0x800,
                },
                Ph {
                    kind: 4,
                    flags: 4,
                    off: 0,
                    vaddr: 0,
                    filesz: 0,
                    memsz: 0x10,
                },
                Ph {
                    kind: PT_LOAD,
                    flags: 6,
                    off: 0x2000,
                    vaddr: B + 0x1000,
                    filesz: 0x100,
                    memsz: 0x3000,
                },
            ],
            0x3000,
        )
    }

    #[test]
    fn accepts_a_well_formed_kernel() {
        let k = parse(&good()).unwrap();
        assert_eq!(k.entry, B + 0x10);
        assert_eq!(k.virt_start, B);
        assert_eq!(k.virt_end, B + 0x4000);
        let segs: Vec<_> = k.segments().collect();
        assert_eq!(segs.len(), 2);
        assert!(segs[0].executable && !segs[0].writable);
        assert!(segs[1].writable && !segs[1].executable);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(
            parse(b"hello world, this is not an elf file at all, no no no no no no no"),
            Err(ElfError::BadMagic)
        );
        assert_eq!(parse(b"\x7fEL"), Err(ElfError::Truncated));
        let g = good();
        assert_eq!(parse(&g[..0x2050]), Err(ElfError::Truncated));
        assert_eq!(parse(&g[..100]), Err(ElfError::Truncated));
    }

    #[test]
    fn rejects_wrong_kind() {
        let mut g = good();
        g[4] = 1;
        assert_eq!(parse(&g), Err(ElfError::WrongKind("64-bit ELF")));
        let mut g = good();
        g[18] = 3;
        assert!(matches!(parse(&g), Err(ElfError::WrongKind(_))));
    }

    #[test]
    fn rejects_bad_segments_and_entry() {
        let low = elf(
            0x1000,
            &[Ph {
                kind: PT_LOAD,
                flags: 5,
                off: 0,
                vaddr: 0x1000,
                filesz: 0,
                memsz: 0x10,
            }],
            0x100,
        );
        assert_eq!(parse(&low), Err(ElfError::BadSegment(0x1000)));
        let overlap = elf(
            B,
            &[
                Ph {
                    kind: PT_LOAD,
                    flags: 5,
                    off: 0,
                    vaddr: B,
                    filesz: 0,
                    memsz: 0x1800,
                },
                Ph {
                    kind: PT_LOAD,
                    flags: 6,
                    off: 0,
                    vaddr: B + 0x1000,
                    filesz: 0,
                    memsz: 0x10,
                },
            ],
            0x100,
        );
        assert_eq!(parse(&overlap), Err(ElfError::BadSegment(B + 0x1000)));
        let wrap = elf(
            B,
            &[Ph {
                kind: PT_LOAD,
                flags: 5,
                off: 0,
                vaddr: B,
                filesz: 0,
                memsz: u64::MAX,
            }],
            0x100,
        );
        assert_eq!(parse(&wrap), Err(ElfError::BadSegment(B)));
        let mut g = good();
        g[24..32].copy_from_slice(&(B + 0x1000).to_le_bytes());
        assert_eq!(parse(&g), Err(ElfError::BadEntry(B + 0x1000)));
    }

    #[test]
    fn range_limits_where_segments_may_go() {
        let g = elf(
            0x100010,
            &[Ph {
                kind: PT_LOAD,
                flags: 5,
                off: 0x1000,
                vaddr: 0x100000,
                filesz: 0x10,
                memsz: 0x2000,
            }],
            0x2000,
        );
        assert_eq!(
            parse_range(&g, 0x100000, 0x200000).unwrap().virt_end,
            0x102000
        );
        assert_eq!(
            parse_range(&g, 0x100000, 0x101000),
            Err(ElfError::BadSegment(0x100000))
        );
        assert_eq!(parse(&g), Err(ElfError::BadSegment(0x100000)));
    }

    #[test]
    fn never_panics_on_mutations() {
        let g = good();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut m = g.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % m.len();
                m[i] = (x >> 32) as u8;
            }
            let cut = (x >> 40) as usize % (m.len() + 1);
            let _ = parse(&m[..cut]);
            let _ = parse(&m);
        }
    }
}
