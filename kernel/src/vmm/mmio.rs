//! Decoding of the guest instruction behind an MMIO access.
//!
//! An EPT violation tells the hypervisor the guest-physical address and
//! whether it was a read or a write, but not the width, the register or the
//! length of the instruction (SDM Vol. 3C 28.2.1: no instruction information
//! for EPT violations). So the hypervisor fetches the instruction bytes at
//! the guest's RIP and decodes them. Only the plain `MOV` forms that device
//! drivers use for register access are accepted; anything else stops the VM
//! with a clear report instead of being guessed at.
//!
//! Accepted (SDM Vol. 2, MOV and MOVZX): `88/89` (store register),
//! `8A/8B` (load register), `C6 /0` and `C7 /0` (store immediate),
//! `0F B6/B7` (load zero-extended), with an optional `66` operand-size
//! prefix and one REX prefix, any ModRM memory operand (SIB, disp8,
//! disp32, RIP-relative).

/// What the instruction does with the MMIO location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Load into general register `reg` (SDM register number 0-15).
    /// 32-bit loads zero the upper half of the register (as on hardware);
    /// 8- and 16-bit loads leave the other bits alone unless `zero_extend`.
    Load { reg: u8, zero_extend: bool },
    /// Store general register `reg` (its low `size` bytes; for 8-bit
    /// stores without REX, registers 4-7 are AH, CH, DH, BH).
    Store { reg: u8, high_byte: bool },
    /// Store an immediate.
    StoreImm(u64),
}

/// A decoded MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Bytes, to advance RIP by.
    pub len: u8,
    /// Access width in bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub access: Access,
}

/// Why an instruction was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Ran out of bytes (the fetch was shorter than the instruction).
    Truncated,
    /// An opcode this decoder does not emulate (first opcode byte).
    Unsupported(u8),
    /// The ModRM byte names a register, not memory.
    NotMemory,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "instruction bytes truncated"),
            DecodeError::Unsupported(op) => {
                write!(f, "unsupported MMIO instruction (opcode {op:#04x})")
            }
            DecodeError::NotMemory => write!(f, "ModRM without a memory operand"),
        }
    }
}

/// Length of the ModRM memory operand starting at `m[0]` (the ModRM byte),
/// including SIB and displacement; errors if it is a register operand.
fn modrm_len(m: &[u8]) -> Result<usize, DecodeError> {
    let modrm = *m.first().ok_or(DecodeError::Truncated)?;
    let md = modrm >> 6;
    let rm = modrm & 7;
    if md == 3 {
        return Err(DecodeError::NotMemory);
    }
    let mut len = 1;
    let mut base = rm;
    if rm == 4 {
        let sib = *m.get(1).ok_or(DecodeError::Truncated)?;
        base = sib & 7;
        len += 1;
    }
    len += match md {
        0 if rm == 5 => 4,   // RIP-relative disp32
        0 if base == 5 => 4, // SIB with no base: disp32
        0 => 0,
        1 => 1,
        _ => 4,
    };
    if m.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(len)
}

fn imm(bytes: &[u8], size: usize) -> Result<u64, DecodeError> {
    let b = bytes.get(..size).ok_or(DecodeError::Truncated)?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(b);
    Ok(u64::from_le_bytes(v))
}

/// Decodes the instruction at the start of `bytes` (up to 15 fetched bytes).
pub fn decode(bytes: &[u8]) -> Result<Insn, DecodeError> {
    let mut i = 0;
    let mut opsize16 = false;
    // Legacy prefixes this decoder understands; segment overrides do not
    // matter in 64-bit mode for flat segments.
    while let Some(&p) = bytes.get(i) {
        match p {
            0x66 => opsize16 = true,
            0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
    }
    let mut rex = 0u8;
    if let Some(&p) = bytes.get(i)
        && (0x40..=0x4f).contains(&p)
    {
        rex = p;
        i += 1;
    }
    let rex_w = rex & 8 != 0;
    let rex_r = (rex >> 2) & 1;
    let wide = if rex_w {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    let op = *bytes.get(i).ok_or(DecodeError::Truncated)?;
    i += 1;
    let reg_of = |modrm: u8| ((modrm >> 3) & 7) | (rex_r << 3);
    let (size, access, operand_at) = match op {
        0x88..=0x8b => {
            let modrm = *bytes.get(i).ok_or(DecodeError::Truncated)?;
            let size = if op & 1 == 0 { 1 } else { wide };
            let reg = reg_of(modrm);
            let high_byte = size == 1 && rex == 0 && (4..8).contains(&reg);
            let access = if op <= 0x89 {
                Access::Store {
                    reg: if high_byte { reg - 4 } else { reg },
                    high_byte,
                }
            } else {
                Access::Load {
                    reg,
                    zero_extend: false,
                }
            };
            if matches!(access, Access::Load { .. }) && high_byte {
                return Err(DecodeError::Unsupported(op));
            }
            (size, access, i)
        }
        0xc6 | 0xc7 => {
            let modrm = *bytes.get(i).ok_or(DecodeError::Truncated)?;
            if (modrm >> 3) & 7 != 0 {
                return Err(DecodeError::Unsupported(op));
            }
            let size = if op == 0xc6 { 1 } else { wide };
            let mlen = modrm_len(&bytes[i..])?;
            let imm_size = size.min(4) as usize;
            let mut v = imm(&bytes[i + mlen..], imm_size)?;
            if size == 8 && v & 0x8000_0000 != 0 {
                v |= 0xffff_ffff_0000_0000; // sign-extended imm32
            }
            let len = i + mlen + imm_size;
            return Ok(Insn {
                len: len as u8,
                size,
                access: Access::StoreImm(v),
            });
        }
        0x0f => {
            let op2 = *bytes.get(i).ok_or(DecodeError::Truncated)?;
            i += 1;
            let size = match op2 {
                0xb6 => 1,
                0xb7 => 2,
                _ => return Err(DecodeError::Unsupported(op)),
            };
            let modrm = *bytes.get(i).ok_or(DecodeError::Truncated)?;
            (
                size,
                Access::Load {
                    reg: reg_of(modrm),
                    zero_extend: true,
                },
                i,
            )
        }
        other => return Err(DecodeError::Unsupported(other)),
    };
    let mlen = modrm_len(&bytes[operand_at..])?;
    Ok(Insn {
        len: (operand_at + mlen) as u8,
        size,
        access,
    })
}

/// Merges a loaded value into a register as the CPU would.
pub fn merge_load(old: u64, value: u64, size: u8, zero_extend: bool) -> u64 {
    match (size, zero_extend) {
        (8, _) => value,
        (4, _) => value & 0xffff_ffff,
        (s, true) => value & ((1u64 << (8 * u32::from(s))) - 1),
        (s, false) => {
            let mask = (1u64 << (8 * u32::from(s))) - 1;
            (old & !mask) | (value & mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_register_moves() {
        // mov byte [rdi], al
        assert_eq!(
            decode(&[0x88, 0x07]),
            Ok(Insn {
                len: 2,
                size: 1,
                access: Access::Store {
                    reg: 0,
                    high_byte: false
                }
            })
        );
        // mov al, byte [rdi+5]
        assert_eq!(
            decode(&[0x8a, 0x47, 0x05]),
            Ok(Insn {
                len: 3,
                size: 1,
                access: Access::Load {
                    reg: 0,
                    zero_extend: false
                }
            })
        );
        // mov dword [rip+0x1000], ecx
        assert_eq!(
            decode(&[0x89, 0x0d, 0x00, 0x10, 0x00, 0x00]),
            Ok(Insn {
                len: 6,
                size: 4,
                access: Access::Store {
                    reg: 1,
                    high_byte: false
                }
            })
        );
        // mov r9, qword [rax+rbx*4+0x12345678]
        assert_eq!(
            decode(&[0x4c, 0x8b, 0x8c, 0x98, 0x78, 0x56, 0x34, 0x12]),
            Ok(Insn {
                len: 8,
                size: 8,
                access: Access::Load {
                    reg: 9,
                    zero_extend: false
                }
            })
        );
        // mov word [rdx], si
        assert_eq!(
            decode(&[0x66, 0x89, 0x32]),
            Ok(Insn {
                len: 3,
                size: 2,
                access: Access::Store {
                    reg: 6,
                    high_byte: false
                }
            })
        );
        // mov byte [rdi], ah (no REX: register 4 is AH)
        assert_eq!(
            decode(&[0x88, 0x27]),
            Ok(Insn {
                len: 2,
                size: 1,
                access: Access::Store {
                    reg: 0,
                    high_byte: true
                }
            })
        );
        // mov byte [rdi], spl (REX: register 4 is SPL)
        assert_eq!(
            decode(&[0x40, 0x88, 0x27]),
            Ok(Insn {
                len: 3,
                size: 1,
                access: Access::Store {
                    reg: 4,
                    high_byte: false
                }
            })
        );
    }

    #[test]
    fn decodes_immediates_and_movzx() {
        // mov byte [rax], 0x41
        assert_eq!(
            decode(&[0xc6, 0x00, 0x41]),
            Ok(Insn {
                len: 3,
                size: 1,
                access: Access::StoreImm(0x41)
            })
        );
        // mov dword [rax+8], 0x12345678
        assert_eq!(
            decode(&[0xc7, 0x40, 0x08, 0x78, 0x56, 0x34, 0x12]),
            Ok(Insn {
                len: 7,
                size: 4,
                access: Access::StoreImm(0x1234_5678)
            })
        );
        // mov qword [rax], -1 (imm32 sign-extended)
        assert_eq!(
            decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff]),
            Ok(Insn {
                len: 7,
                size: 8,
                access: Access::StoreImm(u64::MAX)
            })
        );
        // movzx eax, byte [rdx+5]
        assert_eq!(
            decode(&[0x0f, 0xb6, 0x42, 0x05]),
            Ok(Insn {
                len: 4,
                size: 1,
                access: Access::Load {
                    reg: 0,
                    zero_extend: true
                }
            })
        );
        // mov byte [abs disp32 via SIB, no base], al: 88 04 25 00 00 c0 fe
        assert_eq!(
            decode(&[0x88, 0x04, 0x25, 0x00, 0x00, 0xc0, 0xfe]),
            Ok(Insn {
                len: 7,
                size: 1,
                access: Access::Store {
                    reg: 0,
                    high_byte: false
                }
            })
        );
    }

    #[test]
    fn refuses_what_it_does_not_emulate() {
        assert_eq!(decode(&[0x01, 0x07]), Err(DecodeError::Unsupported(0x01)));
        assert_eq!(decode(&[0x89, 0xc0]), Err(DecodeError::NotMemory));
        assert_eq!(decode(&[0x89]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc7, 0x00, 0x01]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0x8a, 0x27]),
            Err(DecodeError::Unsupported(0x8a)),
            "load into AH"
        );
        // Never panics on any short input.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            let _ = decode(&bytes[..(x >> 60) as usize % 9]);
        }
    }

    #[test]
    fn merges_loads_like_the_cpu() {
        assert_eq!(
            merge_load(0xffff_ffff_ffff_ffff, 0x12, 1, false),
            0xffff_ffff_ffff_ff12
        );
        assert_eq!(merge_load(0xffff_ffff_ffff_ffff, 0x12, 1, true), 0x12);
        assert_eq!(
            merge_load(0xffff_ffff_ffff_ffff, 0x1234_5678, 4, false),
            0x1234_5678
        );
        assert_eq!(merge_load(0, u64::MAX, 8, false), u64::MAX);
    }
}
