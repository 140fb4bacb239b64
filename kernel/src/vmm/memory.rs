//! Guest RAM: host memory in 2 MiB runs, mapped by EPT at guest-physical 0;
//! the hypervisor's own reads and writes of it and guest page-table walks.

use super::prelude::*;

impl Vm {
    pub(super) fn ram_bytes(&self) -> u64 {
        self.chunks.len() as u64 * MIB2
    }

    /// Host address of a guest-physical byte range inside one chunk.
    pub(super) fn host_ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let chunk = *self.chunks.get((gpa / MIB2) as usize)?;
        let off = gpa % MIB2;
        (off + len <= MIB2).then_some((chunk + off) as *mut u8)
    }

    /// Copies `data` into guest RAM at `gpa` (the hypervisor's own write).
    pub(super) fn write_guest(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = gpa + done as u64;
            let n = ((MIB2 - at % MIB2) as usize).min(data.len() - done);
            let dst = self.host_ptr(at, n as u64).ok_or(VmError::OutsideRam(at))?;
            // SAFETY: dst..dst+n lies inside one 2 MiB chunk of this VM's RAM,
            // identity-mapped host memory that only this VM uses.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
            if let Some(log) = self.dirty.as_mut() {
                for gfn in at / PAGE_SIZE..(at + n as u64).div_ceil(PAGE_SIZE) {
                    log.mark_hypervisor_write(gfn);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes the RAM unless it is still as [`new_vm`] left it (zeroed,
    /// never run): a second pass over gigabytes costs seconds in Bochs.
    pub(super) fn zero_ram(&mut self) {
        if !core::mem::replace(&mut self.ram_zeroed, false) {
            zero_chunks(&self.chunks);
        }
    }

    pub(super) fn write_u64s(&mut self, gpa: u64, words: &[u64]) -> Result<(), VmError> {
        let mut bytes = Vec::with_capacity(words.len() * 8);
        for w in words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        self.write_guest(gpa, &bytes)
    }
}

/// Translates a guest-virtual address with the guest's own page tables
/// (4-level, 4 KiB/2 MiB/1 GiB pages; SDM Vol. 3A 4.5).
pub(super) fn guest_virt_to_phys(vm: &Vm, gva: u64) -> Option<u64> {
    let cr0 = vmread(Field::GUEST_CR0);
    if cr0 & (1 << 31) == 0 {
        return Some(gva);
    }
    let mut table = vmread(Field::GUEST_CR3) & 0x000f_ffff_ffff_f000;
    for level in (0..4).rev() {
        let index = (gva >> (12 + 9 * level)) & 0x1ff;
        let ptr = vm.host_ptr(table + index * 8, 8)?;
        // SAFETY: host_ptr checked that the 8 bytes lie in this VM's RAM.
        let entry = unsafe { core::ptr::read_unaligned(ptr as *const u64) };
        if entry & 1 == 0 {
            return None;
        }
        let frame = entry & 0x000f_ffff_ffff_f000;
        if level == 0 || (level <= 2 && entry & 0x80 != 0) {
            let page_mask = (1u64 << (12 + 9 * level)) - 1;
            return Some((frame & !page_mask) | (gva & page_mask));
        }
        table = frame;
    }
    None
}
