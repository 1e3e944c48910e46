//! Output checksum shared by host and guest.

/// FNV-1a 64-bit over the bytes of a function's output.
///
/// Not cryptographic: it only has to make a wrong page or a wrong computation visible.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A checksum of no bytes.
    pub const fn new() -> Self {
        Self(Self::OFFSET)
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Adds a `u64` in little-endian byte order.
    pub fn update_u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }

    /// Adds an `f64` by its bit pattern.
    pub fn update_f64(&mut self, v: f64) {
        self.update_u64(v.to_bits());
    }

    /// The checksum so far.
    pub const fn value(&self) -> u64 {
        self.0
    }
}
