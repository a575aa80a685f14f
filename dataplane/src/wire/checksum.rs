//! The internet checksum (RFC 1071), full and incremental (RFC 1624).

use super::IpProtocol;

/// Ones'-complement sum of `data` as big-endian 16-bit words, added to
/// `initial`. Not folded: fold with [`fold`].
#[inline]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds a sum into 16 bits (end-around carry).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (the field itself zeroed or skipped).
#[inline]
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(sum(data, initial))
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header for either IP version
/// (addresses of 4 or 16 bytes).
#[inline]
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: IpProtocol, l4_len: u32) -> u64 {
    sum(dst, sum(src, 0)) + u64::from(proto.0) + u64::from(l4_len)
}

/// RFC 1624 eqn. 3: the new checksum after the 16-bit words in `old`
/// changed to those in `new` (equal, even lengths: ports, addresses).
#[inline]
pub fn update(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    // ~HC' = ~HC + ~m + m'; the sum of ~m over words is ~(sum m) per word.
    let mut acc = u64::from(!csum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// [`update`] for one 16-bit word.
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut change = Incremental::changes();
    change.replace16(old, new);
    change.apply(csum)
}

/// [`update`] over several fields of one packet: the sum is kept open
/// until `finish`, so each field costs a few additions.
#[derive(Clone, Copy, Debug)]
pub struct Incremental(u64);

impl Incremental {
    pub fn new(csum: u16) -> Incremental {
        Incremental(u64::from(!csum))
    }

    /// No checksum yet: the changes alone, to `apply` to each checksum
    /// that covers the fields (an address is in the IPv4 header's and in
    /// the L4 pseudo-header's).
    pub fn changes() -> Incremental {
        Incremental(0)
    }

    /// `csum` after the changes recorded.
    #[inline]
    pub fn apply(self, csum: u16) -> u16 {
        !fold(u64::from(!csum) + self.0)
    }

    #[inline]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    #[inline]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
        self.replace16(old as u16, new as u16);
    }

    pub fn finish(self) -> u16 {
        !fold(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 = 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
        assert_eq!(fold(sum(&[1, 2, 3, 4, 5], 0)), 0x0102 + 0x0304 + 0x0500);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37)).collect();
        let before = checksum(&data, 0);
        let old = data[8..24].to_vec();
        let new: Vec<u8> = (0..16u8).map(|b| 0xff - b).collect();
        data[8..24].copy_from_slice(&new);
        assert_eq!(update(before, &old, &new), checksum(&data, 0));
        let w_old = u16::from_be_bytes([data[2], data[3]]);
        let before = checksum(&data, 0);
        data[2..4].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(update16(before, w_old, 0xbeef), checksum(&data, 0));
        let before = checksum(&data, 0);
        let (a, b) = (u32::from_be_bytes([data[4], data[5], data[6], data[7]]), u16::from_be_bytes([data[40], data[41]]));
        data[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        data[40..42].copy_from_slice(&7u16.to_be_bytes());
        let mut inc = Incremental::new(before);
        inc.replace32(a, 0xdead_beef);
        inc.replace16(b, 7);
        assert_eq!(inc.finish(), checksum(&data, 0));
    }

    #[test]
    fn verifying_a_correct_checksum_gives_zero() {
        let mut data = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2];
        let c = checksum(&data, 0);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&data, 0), 0);
    }
}
