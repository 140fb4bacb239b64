//! The state a fresh guest starts in: its page tables and GDT in RAM, and
//! every VMCS field (controls, guest state, host state).

use super::prelude::*;

pub(super) fn setup_guest_memory(vm: &mut Vm) -> Result<(), VmError> {
    // Identity map of 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] -> PDs.
    vm.write_u64s(GUEST_PML4, &[GUEST_PDPT | 0x3])?;
    vm.write_u64s(
        GUEST_PDPT,
        &[
            GUEST_PD | 0x3,
            (GUEST_PD + 0x1000) | 0x3,
            (GUEST_PD + 0x2000) | 0x3,
            (GUEST_PD + 0x3000) | 0x3,
        ],
    )?;
    let pds: Vec<u64> = (0..2048u64).map(|i| (i * MIB2) | 0x83).collect();
    vm.write_u64s(GUEST_PD, &pds)?;
    // Null, 64-bit code (0x08), data (0x10).
    vm.write_u64s(
        GUEST_GDT,
        &[0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff],
    )
}

pub(super) fn setup_vmcs(host: &Host, vm: &mut Vm, entry: u64) {
    use Field as F;
    // Controls.
    vmwrite(F::PIN_BASED_CONTROLS, u64::from(host.pin));
    vmwrite(F::PRIMARY_PROC_CONTROLS, u64::from(host.primary));
    vmwrite(F::SECONDARY_PROC_CONTROLS, u64::from(host.secondary));
    vmwrite(F::EXIT_CONTROLS, u64::from(host.exit));
    vmwrite(F::ENTRY_CONTROLS, u64::from(host.entry));
    vmwrite(F::EXCEPTION_BITMAP, 0);
    vmwrite(F::CR3_TARGET_COUNT, 0);
    vmwrite(F::EXIT_MSR_STORE_COUNT, 0);
    vmwrite(F::EXIT_MSR_LOAD_COUNT, 0);
    vmwrite(F::ENTRY_MSR_LOAD_COUNT, 0);
    vmwrite(F::ENTRY_INTERRUPTION_INFO, 0);
    vmwrite(F::EPT_POINTER, vm.ept.eptp(host.ept_ad));
    vmwrite(F::VMCS_LINK_POINTER, u64::MAX);
    // The guest's TSC starts at 0 now, through its clock.
    vm.clock.restart(arch::rdtsc(), 0);
    vmwrite(F::TSC_OFFSET, vm.clock.offset());

    // Guest CR0/CR4: the VMX fixed bits are forced, and hidden from the
    // guest through the read shadows (CR4.VMXE above all).
    let cr0 = 0x8001_0033u64; // PG, WP, NE, ET, MP, PE
    let cr4 = 0x20u64; // PAE
    let cr0_mask = host.cr0_fixed.0 & !(0x8000_0001) | 0x20;
    let cr4_mask = host.cr4_fixed.0 | (1 << 13);
    vmwrite(F::CR0_GUEST_HOST_MASK, cr0_mask);
    vmwrite(F::CR4_GUEST_HOST_MASK, cr4_mask);
    vmwrite(F::CR0_READ_SHADOW, cr0);
    vmwrite(F::CR4_READ_SHADOW, cr4);
    vmwrite(F::GUEST_CR0, (cr0 | host.cr0_fixed.0) & host.cr0_fixed.1);
    vmwrite(F::GUEST_CR4, (cr4 | host.cr4_fixed.0) & host.cr4_fixed.1);
    vmwrite(F::GUEST_CR3, GUEST_PML4);
    vmwrite(F::GUEST_IA32_EFER, 0xd00); // NXE, LMA, LME
    vmwrite(F::GUEST_DR7, 0x400);
    vmwrite(F::GUEST_RSP, GUEST_STACK_TOP);
    vmwrite(F::GUEST_RIP, entry);
    vmwrite(F::GUEST_RFLAGS, 0x2);
    for (sel, base, limit, ar) in [
        (
            F::GUEST_ES_SELECTOR,
            F::GUEST_ES_BASE,
            F::GUEST_ES_LIMIT,
            F::GUEST_ES_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_FS_SELECTOR,
            F::GUEST_FS_BASE,
            F::GUEST_FS_LIMIT,
            F::GUEST_FS_ACCESS_RIGHTS,
        ),
        (
            F::GUEST_GS_SELECTOR,
            F::GUEST_GS_BASE,
            F::GUEST_GS_LIMIT,
            F::GUEST_GS_ACCESS_RIGHTS,
        ),
    ] {
        vmwrite(sel, 0x10);
        vmwrite(base, 0);
        vmwrite(limit, 0xffff_ffff);
        vmwrite(ar, 0xc093);
    }
    vmwrite(F::GUEST_CS_SELECTOR, 0x08);
    vmwrite(F::GUEST_CS_BASE, 0);
    vmwrite(F::GUEST_CS_LIMIT, 0xffff_ffff);
    vmwrite(F::GUEST_CS_ACCESS_RIGHTS, 0xa09b);
    vmwrite(F::GUEST_TR_SELECTOR, 0);
    vmwrite(F::GUEST_TR_BASE, 0);
    vmwrite(F::GUEST_TR_LIMIT, 0xff);
    vmwrite(F::GUEST_TR_ACCESS_RIGHTS, 0x8b);
    vmwrite(F::GUEST_LDTR_SELECTOR, 0);
    vmwrite(F::GUEST_LDTR_BASE, 0);
    vmwrite(F::GUEST_LDTR_LIMIT, 0);
    vmwrite(F::GUEST_LDTR_ACCESS_RIGHTS, 0x1_0000); // unusable
    vmwrite(F::GUEST_GDTR_BASE, GUEST_GDT);
    vmwrite(F::GUEST_GDTR_LIMIT, 23);
    vmwrite(F::GUEST_IDTR_BASE, 0);
    vmwrite(F::GUEST_IDTR_LIMIT, 0);
    vmwrite(F::GUEST_INTERRUPTIBILITY_STATE, 0);
    vmwrite(F::GUEST_ACTIVITY_STATE, 0);
    vmwrite(F::GUEST_PENDING_DEBUG_EXCEPTIONS, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_CS, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_ESP, 0);
    vmwrite(F::GUEST_IA32_SYSENTER_EIP, 0);
    vmwrite(F::GUEST_IA32_DEBUGCTL, 0);
    // PAT after reset: WB, WT, UC-, UC, repeated.
    vmwrite(F::GUEST_IA32_PAT, 0x0007_0406_0007_0406);

    // Host state: what the CPU loads on every VM exit.
    vmwrite(F::HOST_CR0, arch::cr0());
    vmwrite(F::HOST_CR3, arch::cr3());
    vmwrite(F::HOST_CR4, arch::cr4());
    let sel = crate::arch::cpu::selectors();
    vmwrite(F::HOST_CS_SELECTOR, u64::from(sel.code));
    for f in [
        F::HOST_SS_SELECTOR,
        F::HOST_DS_SELECTOR,
        F::HOST_ES_SELECTOR,
    ] {
        vmwrite(f, u64::from(sel.data));
    }
    vmwrite(F::HOST_FS_SELECTOR, 0);
    vmwrite(F::HOST_GS_SELECTOR, 0);
    vmwrite(F::HOST_TR_SELECTOR, u64::from(sel.tss));
    vmwrite(F::HOST_FS_BASE, 0);
    vmwrite(F::HOST_GS_BASE, 0);
    vmwrite(F::HOST_TR_BASE, sel.tss_base);
    vmwrite(F::HOST_GDTR_BASE, sel.gdt_base);
    vmwrite(F::HOST_IDTR_BASE, sel.idt_base);
    vmwrite(F::HOST_IA32_SYSENTER_CS, 0);
    vmwrite(F::HOST_IA32_SYSENTER_ESP, 0);
    vmwrite(F::HOST_IA32_SYSENTER_EIP, 0);
    // SAFETY: IA32_EFER exists on every x86-64 CPU.
    vmwrite(F::HOST_IA32_EFER, unsafe { arch::rdmsr(0xc000_0080) });
    // SAFETY: IA32_PAT exists on every CPU with VMX and EPT.
    vmwrite(F::HOST_IA32_PAT, unsafe { arch::rdmsr(0x277) });
    vmwrite(F::HOST_RIP, insn::vm_exit_rip());
}
