//! Guest general-purpose registers: the numbering exit qualifications use
//! and the block the world switch (`insn::vm_enter`) saves and restores.

use crate::vmcs::{Field, Vmcs};

/// A general-purpose register as numbered in exit qualifications and the
/// VM-exit instruction-information field (SDM Vol. 3C table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// 0.
    Rax = 0,
    /// 1.
    Rcx = 1,
    /// 2.
    Rdx = 2,
    /// 3.
    Rbx = 3,
    /// 4: lives in the VMCS (guest RSP), not in [`GuestRegs`].
    Rsp = 4,
    /// 5.
    Rbp = 5,
    /// 6.
    Rsi = 6,
    /// 7.
    Rdi = 7,
    /// 8.
    R8 = 8,
    /// 9.
    R9 = 9,
    /// 10.
    R10 = 10,
    /// 11.
    R11 = 11,
    /// 12.
    R12 = 12,
    /// 13.
    R13 = 13,
    /// 14.
    R14 = 14,
    /// 15.
    R15 = 15,
}

impl Gpr {
    const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with number `n`, or `None` above 15.
    pub const fn from_index(n: u8) -> Option<Self> {
        if n < 16 {
            Some(Self::ALL[n as usize])
        } else {
            None
        }
    }

    /// Decodes a 4-bit register field (only the low 4 bits of `v` count).
    pub(crate) const fn from_field(v: u64) -> Self {
        Self::ALL[(v & 0xf) as usize]
    }

    /// The register's number.
    pub const fn index(self) -> u8 {
        self as u8
    }
}

/// Guest registers the VMCS does not hold, saved on VM exit and loaded on
/// VM entry by `insn::vm_enter`. RSP, RIP and RFLAGS are in the VMCS.
///
/// The layout is fixed (`repr(C)`): the world switch addresses the fields
/// by offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegs {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// CR2: not part of the VMCS guest state, so the VMM switches it
    /// (a guest #PF handler reads it after a VM exit in between).
    pub cr2: u64,
}

impl GuestRegs {
    /// Reads register `r`; RSP comes from the VMCS guest-state area.
    pub fn get(&self, r: Gpr, vmcs: &dyn Vmcs) -> u64 {
        match r {
            Gpr::Rsp => vmcs.read(Field::GUEST_RSP),
            _ => *self.slot(r),
        }
    }

    /// Writes register `r`; RSP goes to the VMCS guest-state area.
    pub fn set(&mut self, r: Gpr, v: u64, vmcs: &mut dyn Vmcs) {
        match r {
            Gpr::Rsp => vmcs.write(Field::GUEST_RSP, v),
            _ => *self.slot_mut(r) = v,
        }
    }

    fn slot(&self, r: Gpr) -> &u64 {
        match r {
            Gpr::Rax => &self.rax,
            Gpr::Rcx => &self.rcx,
            Gpr::Rdx => &self.rdx,
            Gpr::Rbx => &self.rbx,
            // `get` and `set` send RSP to the VMCS before calling this.
            Gpr::Rsp => unreachable!("guest RSP lives in the VMCS"),
            Gpr::Rbp => &self.rbp,
            Gpr::Rsi => &self.rsi,
            Gpr::Rdi => &self.rdi,
            Gpr::R8 => &self.r8,
            Gpr::R9 => &self.r9,
            Gpr::R10 => &self.r10,
            Gpr::R11 => &self.r11,
            Gpr::R12 => &self.r12,
            Gpr::R13 => &self.r13,
            Gpr::R14 => &self.r14,
            Gpr::R15 => &self.r15,
        }
    }

    fn slot_mut(&mut self, r: Gpr) -> &mut u64 {
        match r {
            Gpr::Rax => &mut self.rax,
            Gpr::Rcx => &mut self.rcx,
            Gpr::Rdx => &mut self.rdx,
            Gpr::Rbx => &mut self.rbx,
            Gpr::Rsp => unreachable!("guest RSP lives in the VMCS"),
            Gpr::Rbp => &mut self.rbp,
            Gpr::Rsi => &mut self.rsi,
            Gpr::Rdi => &mut self.rdi,
            Gpr::R8 => &mut self.r8,
            Gpr::R9 => &mut self.r9,
            Gpr::R10 => &mut self.r10,
            Gpr::R11 => &mut self.r11,
            Gpr::R12 => &mut self.r12,
            Gpr::R13 => &mut self.r13,
            Gpr::R14 => &mut self.r14,
            Gpr::R15 => &mut self.r15,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A VMCS in a map, masking values to the field width like VMWRITE.
    #[derive(Default)]
    pub struct FakeVmcs(pub HashMap<u32, u64>);

    impl Vmcs for FakeVmcs {
        fn read(&self, f: Field) -> u64 {
            self.0.get(&f.0).copied().unwrap_or(0)
        }
        fn write(&mut self, f: Field, v: u64) {
            self.0.insert(f.0, v & f.mask());
        }
    }

    #[test]
    fn numbering() {
        assert_eq!(Gpr::from_index(0), Some(Gpr::Rax));
        assert_eq!(Gpr::from_index(3), Some(Gpr::Rbx));
        assert_eq!(Gpr::from_index(4), Some(Gpr::Rsp));
        assert_eq!(Gpr::from_index(15), Some(Gpr::R15));
        assert_eq!(Gpr::from_index(16), None);
        for i in 0..16 {
            assert_eq!(Gpr::from_index(i).unwrap().index(), i);
        }
    }

    #[test]
    fn get_and_set_route_rsp_to_the_vmcs() {
        let mut vmcs = FakeVmcs::default();
        let mut regs = GuestRegs::default();
        for i in 0..16u8 {
            regs.set(Gpr::from_index(i).unwrap(), 0x100 + u64::from(i), &mut vmcs);
        }
        assert_eq!(vmcs.read(Field::GUEST_RSP), 0x104);
        assert_eq!(regs.rax, 0x100);
        assert_eq!(regs.rcx, 0x101);
        assert_eq!(regs.rbx, 0x103);
        assert_eq!(regs.rbp, 0x105);
        assert_eq!(regs.r15, 0x10f);
        assert_eq!(regs.cr2, 0);
        for i in 0..16u8 {
            assert_eq!(
                regs.get(Gpr::from_index(i).unwrap(), &vmcs),
                0x100 + u64::from(i)
            );
        }
    }

    #[test]
    fn layout_is_what_the_world_switch_expects() {
        use core::mem::{offset_of, size_of};
        assert_eq!(offset_of!(GuestRegs, rax), 0);
        assert_eq!(offset_of!(GuestRegs, rbx), 8);
        assert_eq!(offset_of!(GuestRegs, r8), 7 * 8);
        assert_eq!(offset_of!(GuestRegs, r15), 14 * 8);
        assert_eq!(offset_of!(GuestRegs, cr2), 15 * 8);
        assert_eq!(size_of::<GuestRegs>(), 16 * 8);
    }
}
