//! The saved register state of the single vCPU, and its file format.
//!
//! The guest runs with `CR4.OSXSAVE` clear, so its whole floating-point state is the legacy
//! x87/SSE area that `KVM_GET_FPU` returns: general registers, special registers and FPU
//! are everything needed to resume it. There is no interrupt controller, so there is no
//! LAPIC or pending-event state to save.
//!
//! File layout (little-endian):
//! ```text
//! magic "SNBPVCPU" | version u32 | regs_len u32 | sregs_len u32 | fpu_len u32
//! | regs | sregs | fpu | crc32 (IEEE) of everything before it, u32
//! ```

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use std::mem::size_of;

/// File magic.
pub const VCPU_MAGIC: [u8; 8] = *b"SNBPVCPU";
/// Current format version.
pub const VCPU_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 * 4;

/// Errors decoding a saved vCPU state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuStateError {
    /// Shorter than its header says.
    #[error("vCPU state is truncated ({0} bytes)")]
    Truncated(usize),
    /// Wrong magic.
    #[error("not a snapbpf vCPU state file (bad magic)")]
    BadMagic,
    /// Another format version.
    #[error("vCPU state format version {found} is not supported (expected {VCPU_VERSION})")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// Struct sizes differ from this build's KVM ABI.
    #[error("vCPU state was written for another KVM ABI (register block sizes differ)")]
    Abi,
    /// Checksum mismatch.
    #[error("vCPU state is corrupt (checksum mismatch)")]
    Checksum,
}

/// Register state of the vCPU.
#[derive(Clone, Default)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: kvm_fpu,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("rsp", &format_args!("{:#x}", self.regs.rsp))
            .field("cr3", &format_args!("{:#x}", self.sregs.cr3))
            .finish_non_exhaustive()
    }
}

/// Marker for KVM ABI structs that are plain old data: every bit pattern is a valid value
/// and they contain no pointers.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and arrays of integers.
unsafe trait Pod: Default + Copy {}
// SAFETY: kvm_regs is repr(C) with only u64 fields.
unsafe impl Pod for kvm_regs {}
// SAFETY: kvm_sregs is repr(C) of kvm_segment/kvm_dtable (integers) and integer arrays.
unsafe impl Pod for kvm_sregs {}
// SAFETY: kvm_fpu is repr(C) of u8/u16/u32/u64 arrays and integers.
unsafe impl Pod for kvm_fpu {}

fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: T is Pod, so all size_of::<T>() bytes are initialised plain data; the slice
    // borrows `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_bytes<T: Pod>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), size_of::<T>());
    // SAFETY: the length equals size_of::<T>() (asserted), T is Pod so any bit pattern is
    // a valid T, and read_unaligned has no alignment requirement.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

impl VcpuState {
    /// Encodes the state in the file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let parts = [
            bytes_of(&self.regs),
            bytes_of(&self.sregs),
            bytes_of(&self.fpu),
        ];
        let mut out = Vec::with_capacity(HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>());
        out.extend_from_slice(&VCPU_MAGIC);
        out.extend_from_slice(&VCPU_VERSION.to_le_bytes());
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        }
        for p in parts {
            out.extend_from_slice(p);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a state written by [`VcpuState::to_bytes`].
    pub fn from_bytes(data: &[u8]) -> Result<Self, VcpuStateError> {
        if data.len() < HEADER_LEN + 4 {
            if data.len() >= 8 && data[..8] != VCPU_MAGIC {
                return Err(VcpuStateError::BadMagic);
            }
            return Err(VcpuStateError::Truncated(data.len()));
        }
        if data[..8] != VCPU_MAGIC {
            return Err(VcpuStateError::BadMagic);
        }
        let word = |i: usize| {
            u32::from_le_bytes(data[8 + 4 * i..12 + 4 * i].try_into().unwrap_or_default())
        };
        let version = word(0);
        if version != VCPU_VERSION {
            return Err(VcpuStateError::Version { found: version });
        }
        let lens = [word(1) as usize, word(2) as usize, word(3) as usize];
        let expected = [
            size_of::<kvm_regs>(),
            size_of::<kvm_sregs>(),
            size_of::<kvm_fpu>(),
        ];
        let total = HEADER_LEN + lens.iter().sum::<usize>() + 4;
        if lens != expected {
            return Err(if data.len() < total {
                VcpuStateError::Truncated(data.len())
            } else {
                VcpuStateError::Abi
            });
        }
        if data.len() != total {
            return Err(if data.len() < total {
                VcpuStateError::Truncated(data.len())
            } else {
                VcpuStateError::Checksum
            });
        }
        let (body, crc) = data.split_at(total - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err(VcpuStateError::Checksum);
        }
        let mut at = HEADER_LEN;
        let mut take = |len: usize| {
            let s = &body[at..at + len];
            at += len;
            s
        };
        Ok(Self {
            regs: from_bytes(take(lens[0])),
            sregs: from_bytes(take(lens[1])),
            fpu: from_bytes(take(lens[2])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut s = VcpuState::default();
        s.regs.rip = 0x10_1234;
        s.regs.rsp = 0xf_fff0;
        s.sregs.cr3 = 0x1000;
        s.fpu.mxcsr = 0x1f80;
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let back = VcpuState::from_bytes(&s.to_bytes()).expect("decodes");
        assert_eq!(back.regs.rip, s.regs.rip);
        assert_eq!(back.sregs.cr3, s.sregs.cr3);
        assert_eq!(back.fpu.mxcsr, s.fpu.mxcsr);
        assert_eq!(back.to_bytes(), s.to_bytes());
    }

    #[test]
    fn rejects_bad_input() {
        let good = sample().to_bytes();
        assert_eq!(
            VcpuState::from_bytes(&good[..good.len() - 1]).err(),
            Some(VcpuStateError::Truncated(good.len() - 1))
        );
        assert!(matches!(
            VcpuState::from_bytes(&good[..10]),
            Err(VcpuStateError::Truncated(10))
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(
            VcpuState::from_bytes(&bad).err(),
            Some(VcpuStateError::BadMagic)
        );
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(
            VcpuState::from_bytes(&bad).err(),
            Some(VcpuStateError::Version { found: 9 })
        );
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert_eq!(
            VcpuState::from_bytes(&bad).err(),
            Some(VcpuStateError::Checksum)
        );
        assert!(VcpuState::from_bytes(&[]).is_err());
    }
}
