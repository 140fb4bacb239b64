//! What CPUID says about the hypervisor (the contract in the crate docs).

/// Leaf 0x4000_0000: the highest hypervisor leaf in EAX, the signature in
/// EBX:ECX:EDX.
pub const LEAF_SIGNATURE: u32 = 0x4000_0000;
/// Guest-physical base of the memory-mapped 16550 (registers 1 byte apart).
pub const MMIO_UART: u64 = 0xfe00_0000;
/// Leaf 0x4000_0010: the TSC frequency in kHz in EAX (as VMware's leaf).
pub const LEAF_TSC_KHZ: u32 = 0x4000_0010;
/// The highest hypervisor leaf the hypervisor reports.
pub const MAX_LEAF: u32 = LEAF_TSC_KHZ;
/// The 12-byte signature, EBX then ECX then EDX, each little-endian (as
/// KVM's "KVMKVMKVM\0\0\0").
pub const SIGNATURE: [u8; 12] = *b"hvhypervisor";

/// CPUID.1:ECX bit 31: running under a hypervisor.
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 5: VMX; the hypervisor hides it from guests.
pub const CPUID1_ECX_VMX: u32 = 1 << 5;

/// The signature bytes of leaf 0x4000_0000's EBX, ECX, EDX.
pub fn signature(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (chunk, reg) in s.chunks_exact_mut(4).zip([ebx, ecx, edx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    s
}

/// Whether CPUID.1:ECX says "hypervisor present" and "no VMX".
pub fn cpuid1_ecx_ok(ecx: u32) -> bool {
    ecx & CPUID1_ECX_HYPERVISOR != 0 && ecx & CPUID1_ECX_VMX == 0
}

/// The signature as printable text: other bytes become `.`, so a wrong
/// signature can be printed whatever it holds.
pub fn printable(sig: &[u8; 12]) -> [u8; 12] {
    sig.map(|b| {
        if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'.'
        }
    })
}

/// The request port: reading it gives a counter (8 bits) the operator
/// bumps with `vm checksum <vm>`; the `dirty` guest prints its memory
/// checksum each time it changes.
pub const REQUEST_PORT: u16 = 0xf5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_signature_like_kvm_does() {
        // The values a correct hypervisor returns.
        let (b, c, d) = (
            u32::from_le_bytes(*b"hvhy"),
            u32::from_le_bytes(*b"perv"),
            u32::from_le_bytes(*b"isor"),
        );
        assert_eq!((b, c, d), (0x7968_7668, 0x7672_6570, 0x726f_7369));
        assert_eq!(signature(b, c, d), SIGNATURE);
        // KVM's, for comparison: "KVMK" "VMKV" "M\0\0\0".
        assert_eq!(
            &signature(0x4b4d_564b, 0x564b_4d56, 0x4d)[..9],
            b"KVMKVMKVM"
        );
    }

    #[test]
    fn cpuid1_bits() {
        assert!(cpuid1_ecx_ok(0x8000_0000));
        assert!(cpuid1_ecx_ok(0xfffe_ffdf));
        assert!(!cpuid1_ecx_ok(0x8000_0020), "VMX visible");
        assert!(!cpuid1_ecx_ok(0x7fff_ffdf), "no hypervisor bit");
    }

    #[test]
    fn printable_masks_control_bytes() {
        let mut s = SIGNATURE;
        s[0] = 0;
        s[11] = 0xff;
        assert_eq!(&printable(&s), b".vhyperviso.");
    }
}
