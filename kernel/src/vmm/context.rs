//! The part of a guest's CPU state that VM entry and exit do not switch:
//! x87/SSE/AVX registers (an XSAVE image and the guest's XCR0), DR0-DR3 and
//! DR6, and the SYSCALL MSRs (STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE).
//!
//! Nothing in the hypervisor uses these registers (the kernel is built
//! soft-float, never executes SYSCALL or SWAPGS, and never arms a
//! breakpoint; a VM exit sets DR7 to 0x400), so they are switched lazily:
//! the CPU holds the context of the last guest that ran (its *owner*) until
//! another guest is about to run, and only then is the owner's context
//! saved and the next one's loaded ([`GuestContext::save`],
//! [`GuestContext::load`]). Migration saves
//! the owner's context before it sends it.
//!
//! The save and restore run under the largest XCR0 this host supports, so
//! every component is saved or put in its initial state, whatever the two
//! guests enabled: a component one guest never enabled cannot carry the
//! other guest's values. The guest's own XCR0 is loaded just before each
//! VM entry ([`enter`]).
//!
//! Reference: Intel SDM Vol. 1 chapter 13 (XSAVE), Vol. 3 17.2 (debug
//! registers), Vol. 4 (MSRs).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use vcpu::profile::HostOffer;
use vcpu::xcr0::{MIN_XSAVE_SIZE, xsave_size};

use super::host::HostCpuid;
use crate::arch::{self, xstate};

/// IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK, IA32_KERNEL_GS_BASE.
pub const SYSCALL_MSRS: [u32; 5] = [
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0102,
];

/// Offset of MXCSR in the legacy region of an XSAVE/FXSAVE image.
const MXCSR_OFFSET: usize = 24;
/// MXCSR after reset: every exception masked.
const MXCSR_RESET: u32 = 0x1f80;
/// x87 control word after FNINIT.
const FCW_RESET: u16 = 0x37f;
/// The legacy region and the XSAVE header: the smallest XSAVE image.
const XSAVE_MIN: usize = MIN_XSAVE_SIZE as usize;

/// What this CPU offers for guest extended state; read once when VMX is
/// enabled ([`host_init`]).
#[derive(Debug, Clone, Copy)]
pub struct XstateHost {
    /// XSAVE/XRSTOR (else FXSAVE/FXRSTOR, x87 and SSE only).
    pub xsave: bool,
    /// Every component guests may enable (and the XCR0 the host keeps
    /// while it saves and restores).
    pub xcr0_max: u64,
    /// Bytes of an image holding every component of `xcr0_max`.
    pub area_size: usize,
    /// MXCSR bits this CPU accepts (FXRSTOR/XRSTOR of any other is #GP).
    pub mxcsr_mask: u32,
}

/// What XCR0 holds now (0 before [`host_init`]).
static CURRENT_XCR0: AtomicU64 = AtomicU64::new(0);

/// Turns on SSE and XSAVE for the host CPU (CR4.OSFXSR, OSXMMEXCPT,
/// OSXSAVE) and sets XCR0 to every component guests may use: those of
/// the host's `offer` (x87, SSE, AVX, AVX-512 as the CPU has them, with
/// their dependencies; MPX, PT and AMX are never offered).
pub fn host_init(offer: &HostOffer) -> XstateHost {
    let xsave = offer.features.contains("xsave");
    let mut cr4 = arch::cr4() | xstate::CR4_OSFXSR | xstate::CR4_OSXMMEXCPT;
    if xsave {
        cr4 |= xstate::CR4_OSXSAVE;
    }
    // SAFETY: OSFXSR/OSXMMEXCPT only enable FXSAVE and SSE exceptions, and
    // OSXSAVE is set only when CPUID reports XSAVE; the kernel's own code
    // uses none of these registers.
    unsafe { arch::write_cr4(cr4) };
    let mxcsr_mask = read_mxcsr_mask();
    if !xsave {
        CURRENT_XCR0.store(0, Ordering::Relaxed);
        return XstateHost {
            xsave: false,
            xcr0_max: 0x3,
            area_size: 512,
            mxcsr_mask,
        };
    }
    let xcr0_max = offer.xcr0;
    // SAFETY: OSXSAVE is set above and xcr0_max holds only supported
    // components with their dependencies.
    unsafe { xstate::xsetbv(xcr0_max) };
    CURRENT_XCR0.store(xcr0_max, Ordering::Relaxed);
    // Sizes from CPUID, checked against each other (Bochs' leaf 0xD is not
    // always consistent, TESTBED.md): the end of the furthest component,
    // and never less than what the CPU says XSAVE writes.
    let (_, ebx, _, _) = arch::cpuid(0xd, 0);
    let size = (xsave_size(xcr0_max, &HostCpuid).max(ebx) as usize).next_multiple_of(64);
    XstateHost {
        xsave: true,
        xcr0_max,
        area_size: size,
        mxcsr_mask,
    }
}

/// The MXCSR bits this CPU supports, from an FXSAVE image's MXCSR_MASK
/// field (0 there means the default 0xFFBF; SDM Vol. 1 11.6.6).
fn read_mxcsr_mask() -> u32 {
    let mut area = XsaveArea::reset(512);
    // SAFETY: CR4.OSFXSR is set (host_init); the area is 64-byte aligned
    // and 512 bytes; FXSAVE only stores the registers, it changes none.
    unsafe { xstate::fxsave(area.bytes_mut().as_mut_ptr()) };
    let b = area.bytes();
    match u32::from_le_bytes([b[28], b[29], b[30], b[31]]) {
        0 => 0xffbf,
        m => m,
    }
}

/// One cache line, so that a `Vec` of them is a 64-byte aligned buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A 64-byte aligned XSAVE (or FXSAVE) image.
#[derive(Clone)]
pub struct XsaveArea {
    lines: Vec<Line>,
}

impl XsaveArea {
    /// The image of a CPU after reset: every component in its initial state
    /// (XSTATE_BV zero), MXCSR and the x87 control word at their reset
    /// values (XRSTOR loads MXCSR even for an initial SSE state).
    pub fn reset(size: usize) -> XsaveArea {
        let mut a = XsaveArea {
            lines: alloc::vec![Line([0; 64]); size.div_ceil(64)],
        };
        let b = a.bytes_mut();
        b[0..2].copy_from_slice(&FCW_RESET.to_le_bytes());
        b[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&MXCSR_RESET.to_le_bytes());
        a
    }

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding, so the lines are
        // one contiguous initialised byte buffer of len * 64 bytes.
        unsafe { core::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 64) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and `&mut self` makes the borrow unique.
        unsafe {
            core::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 64)
        }
    }

    /// The image as it travels (migration): only the components of
    /// `allowed` (the VM's profile), so its size is the same on every host
    /// that offers the profile whatever else each host supports, and the
    /// header's XSTATE_BV without components the guest could never have
    /// enabled (a CPU may report them in use, holding initial values).
    pub fn to_image(&self, host: &XstateHost, allowed: u64) -> Vec<u8> {
        let len = image_len(host, allowed).min(self.bytes().len());
        let mut v = self.bytes()[..len].to_vec();
        if host.xsave && len >= XSAVE_MIN {
            let bv = u64::from_le_bytes(v[512..520].try_into().unwrap_or_default()) & allowed;
            v[512..520].copy_from_slice(&bv.to_le_bytes());
        }
        v
    }

    /// Takes an image from a migration stream ([`Self::to_image`] of the
    /// source): exactly this host's size for `allowed`, XSTATE_BV within
    /// it, XCOMP_BV zero (standard format), the rest of the header and
    /// MXCSR's reserved bits clear, or XRSTOR would fault in the
    /// hypervisor. Components outside the image start initialised.
    pub fn from_image(
        host: &XstateHost,
        allowed: u64,
        image: &[u8],
    ) -> Result<XsaveArea, &'static str> {
        if image.len() != image_len(host, allowed) {
            return Err("XSAVE image size differs from this host's for the guest's CPU profile");
        }
        let mxcsr = u32::from_le_bytes([image[24], image[25], image[26], image[27]]);
        if mxcsr & !host.mxcsr_mask != 0 {
            return Err("MXCSR bits this CPU does not support are set");
        }
        if host.xsave {
            let header = &image[512..576];
            let xstate_bv = u64::from_le_bytes(header[0..8].try_into().unwrap_or_default());
            if xstate_bv & !allowed != 0 || header[8..].iter().any(|&b| b != 0) {
                return Err("bad XSAVE header");
            }
        }
        let mut a = XsaveArea::reset(host.area_size);
        a.bytes_mut()[..image.len()].copy_from_slice(image);
        Ok(a)
    }
}

/// A guest's lazily switched context.
#[derive(Clone)]
pub struct GuestContext {
    /// x87/SSE/AVX registers as XSAVE (or FXSAVE) stores them.
    pub xsave: XsaveArea,
    /// The guest's XCR0 (1 after reset: x87 only).
    pub xcr0: u64,
    /// DR0-DR3.
    pub dr: [u64; 4],
    /// DR6 (its reset value 0xFFFF0FF0).
    pub dr6: u64,
    /// The [`SYSCALL_MSRS`], in that order.
    pub msrs: [u64; 5],
    /// DR0-3 and DR6 are virtual (fault tolerance: MOV-DR exits, the
    /// replayer owns the hardware's): not switched with the rest.
    pub dr_virtual: bool,
}

impl GuestContext {
    /// The context of a CPU after reset.
    pub fn reset(host: &XstateHost) -> GuestContext {
        GuestContext {
            xsave: XsaveArea::reset(host.area_size),
            xcr0: 1,
            dr: [0; 4],
            dr6: 0xffff_0ff0,
            msrs: [0; 5],
            dr_virtual: false,
        }
    }

    /// Stores the CPU's registers into this context (its guest owns them;
    /// the CPU keeps them loaded).
    pub fn save(&mut self, host: &XstateHost) {
        let area = self.xsave.bytes_mut().as_mut_ptr();
        if host.xsave {
            set_xcr0(host.xcr0_max);
            // SAFETY: OSXSAVE is on (host_init), the area is 64-byte aligned
            // and area_size bytes, the size of an image of xcr0_max.
            unsafe { xstate::xsave(area) };
        } else {
            // SAFETY: OSFXSR is on; the area is aligned and >= 512 bytes.
            unsafe { xstate::fxsave(area) };
        }
        if !self.dr_virtual {
            (self.dr, self.dr6) = xstate::debug_regs();
        }
        for (v, &msr) in self.msrs.iter_mut().zip(&SYSCALL_MSRS) {
            // SAFETY: the SYSCALL MSRs exist on every x86-64 CPU.
            *v = unsafe { arch::rdmsr(msr) };
        }
    }

    /// Loads this context into the CPU: its guest becomes the owner.
    pub fn load(&self, host: &XstateHost) {
        let area = self.xsave.bytes().as_ptr();
        if host.xsave {
            set_xcr0(host.xcr0_max);
            // SAFETY: OSXSAVE is on; the image is aligned and area_size
            // bytes, and valid: built by `reset`, written by XSAVE, or
            // checked by `from_image`.
            unsafe { xstate::xrstor(area) };
        } else {
            // SAFETY: as above, for FXRSTOR.
            unsafe { xstate::fxrstor(area) };
        }
        if !self.dr_virtual {
            // SAFETY: after a VM exit DR7 is 0x400 (every breakpoint off)
            // and the host never sets it, so guest addresses cannot trap
            // the host.
            unsafe { xstate::set_debug_regs(&self.dr, self.dr6) };
        }
        for (&v, &msr) in self.msrs.iter().zip(&SYSCALL_MSRS) {
            // SAFETY: the host never runs SYSCALL or SWAPGS, so these MSRs
            // only matter to the guest; values were checked on WRMSR
            // (canonical addresses, FMASK's reserved bits clear).
            unsafe { arch::wrmsr(msr, v) };
        }
    }
}

/// Bytes of a standard-format image holding the components of `allowed`
/// on this host: the end of the furthest one (offsets and sizes from
/// CPUID leaf 0xD), at least the legacy region and header; 512 without
/// XSAVE.
pub fn image_len(host: &XstateHost, allowed: u64) -> usize {
    if !host.xsave {
        return 512;
    }
    (xsave_size(allowed & host.xcr0_max, &HostCpuid) as usize).min(host.area_size)
}

fn set_xcr0(v: u64) {
    if CURRENT_XCR0.swap(v, Ordering::Relaxed) != v {
        // SAFETY: OSXSAVE is on (callers check host.xsave) and `v` is either
        // xcr0_max or a guest value accepted by `check_xsetbv` against it.
        unsafe { xstate::xsetbv(v) };
    }
}

/// Points DR0 at guest address `rip` (the replayer's breakpoint; the
/// guest's VMCS DR7 enables it).
pub fn set_breakpoint(rip: u64) {
    // SAFETY: as in `GuestContext::load`: the host's DR7 is 0x400 after
    // every VM exit and never set by the host, so DR0 only matters inside
    // the guest whose VMCS DR7 enables it.
    unsafe { xstate::set_debug_regs(&[rip, 0, 0, 0], 0xffff_0ff0) };
}

/// Loads the guest's XCR0 just before VM entry.
pub fn enter(host: &XstateHost, ctx: &GuestContext) {
    if host.xsave {
        set_xcr0(ctx.xcr0);
    }
}

/// Where `msr` is in [`SYSCALL_MSRS`] (and [`GuestContext::msrs`]).
pub fn syscall_msr_index(msr: u32) -> Option<usize> {
    SYSCALL_MSRS.iter().position(|&m| m == msr)
}

/// Whether a WRMSR value is acceptable for one of the [`SYSCALL_MSRS`]
/// (else #GP): addresses must be canonical, FMASK's upper half is
/// reserved.
pub fn syscall_msr_ok(msr: u32, v: u64) -> bool {
    let canonical = ((v as i64) << 16 >> 16) as u64 == v;
    match msr {
        0xc000_0081 => true,
        0xc000_0084 => v >> 32 == 0,
        _ => canonical,
    }
}
