//! IPv4 header (RFC 791), options included.

use super::{IpProtocol, WireError, be16, checksum, put16};

pub const IPV4_MIN_HLEN: usize = 20;
/// Where the header checksum and the addresses are in the header.
pub const CHECKSUM_AT: usize = 10;
pub const SRC_AT: usize = 12;
pub const DST_AT: usize = 16;

pub struct Ipv4<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4<T> {
    /// Checks version, IHL and total length against the buffer. Bytes past
    /// the total length (Ethernet padding) are ignored by `payload`.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV4_MIN_HLEN {
            return Err(WireError::Truncated);
        }
        let hlen = usize::from(b[0] & 0x0f) * 4;
        let total = usize::from(be16(b, 2));
        if b[0] >> 4 != 4 || hlen < IPV4_MIN_HLEN || total < hlen {
            return Err(WireError::Malformed);
        }
        if b.len() < total {
            return Err(WireError::Truncated);
        }
        Ok(Ipv4 { buf })
    }

    /// For a buffer that already passed `new_checked`.
    #[inline]
    pub fn new_unchecked(buf: T) -> Self {
        Ipv4 { buf }
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0x0f) * 4
    }

    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), 2))
    }

    #[inline]
    pub fn dont_fragment(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }

    /// True for any fragment: more-fragments set or a non-zero offset.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.b(), 6) & 0x3fff != 0
    }

    /// Where this fragment's data sits in the datagram, in bytes.
    #[inline]
    pub fn fragment_offset(&self) -> usize {
        usize::from(be16(self.b(), 6) & 0x1fff) * 8
    }

    /// The datagram's identification, shared by its fragments.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.b(), 4)
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }

    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.b()[9])
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), CHECKSUM_AT)
    }

    #[inline]
    pub fn src(&self) -> [u8; 4] {
        addr_at(self.b(), SRC_AT)
    }

    #[inline]
    pub fn dst(&self) -> [u8; 4] {
        addr_at(self.b(), DST_AT)
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()], 0) == 0
    }

    /// The bytes after the header up to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// Decrements the TTL, updating the header checksum incrementally: one
    /// check of the header's length, then fixed offsets (every forwarded
    /// NAT packet takes this path).
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let Some(h) = self.bm().first_chunk_mut::<IPV4_MIN_HLEN>() else {
            debug_assert!(false, "an IPv4 header shorter than {IPV4_MIN_HLEN} bytes");
            return;
        };
        let old = u16::from_be_bytes([h[8], h[9]]);
        let new = old.wrapping_sub(0x100);
        let c = checksum::update16(u16::from_be_bytes([h[CHECKSUM_AT], h[CHECKSUM_AT + 1]]), old, new);
        [h[8], h[9]] = new.to_be_bytes();
        [h[CHECKSUM_AT], h[CHECKSUM_AT + 1]] = c.to_be_bytes();
    }

    /// Sets the source address, updating the header checksum.
    #[inline]
    pub fn set_src(&mut self, a: [u8; 4]) {
        self.set_addr(SRC_AT, a);
    }

    /// Sets the destination address, updating the header checksum.
    #[inline]
    pub fn set_dst(&mut self, a: [u8; 4]) {
        self.set_addr(DST_AT, a);
    }

    #[inline]
    fn set_addr(&mut self, at: usize, a: [u8; 4]) {
        let c = checksum::update(self.checksum(), &self.b()[at..at + 4], &a);
        self.bm()[at..at + 4].copy_from_slice(&a);
        put16(self.bm(), CHECKSUM_AT, c);
    }

    #[inline]
    pub fn fill_checksum(&mut self) {
        put16(self.bm(), CHECKSUM_AT, 0);
        let hlen = self.header_len();
        let c = checksum::checksum(&self.b()[..hlen], 0);
        put16(self.bm(), CHECKSUM_AT, c);
    }
}

/// Writes a 20-byte header without options into `b[..20]`, checksum filled.
///
/// Built in a local array and written with one copy, its checksum summed
/// from the fields rather than read back: the tunnels write one per packet.
#[inline]
pub fn write_header(b: &mut [u8], total_len: u16, ttl: u8, proto: IpProtocol, src: [u8; 4], dst: [u8; 4], dont_fragment: bool) {
    let flags: u16 = if dont_fragment { 0x4000 } else { 0 };
    let ttl_proto = u16::from_be_bytes([ttl, proto.0]);
    let word = |a: [u8; 4]| u64::from(u32::from_be_bytes(a));
    let sum = 0x4500 + u64::from(total_len) + u64::from(flags) + u64::from(ttl_proto) + word(src) + word(dst);
    let [t0, t1] = total_len.to_be_bytes();
    let [f0, f1] = flags.to_be_bytes();
    let [c0, c1] = (!checksum::fold(sum)).to_be_bytes();
    let [s0, s1, s2, s3] = src;
    let [d0, d1, d2, d3] = dst;
    b[..IPV4_MIN_HLEN].copy_from_slice(&[0x45, 0, t0, t1, 0, 0, f0, f1, ttl, proto.0, c0, c1, s0, s1, s2, s3, d0, d1, d2, d3]);
}

fn addr_at(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 24] {
        let mut b = [0u8; 24];
        write_header(&mut b, 24, 64, IpProtocol::UDP, [198, 18, 0, 1], [198, 18, 0, 2], true);
        b
    }

    #[test]
    fn fields_and_checksum() {
        let b = header();
        let ip = Ipv4::new_checked(&b[..]).unwrap();
        assert_eq!((ip.header_len(), ip.total_len(), ip.ttl(), ip.protocol()), (20, 24, 64, IpProtocol::UDP));
        assert!(ip.dont_fragment() && !ip.is_fragment() && ip.verify_checksum());
        assert_eq!(ip.payload().len(), 4);
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut b = header();
        let mut ip = Ipv4::new_checked(&mut b[..]).unwrap();
        ip.decrement_ttl();
        ip.set_dst([198, 19, 255, 254]);
        ip.set_src([198, 18, 7, 9]);
        assert_eq!((ip.ttl(), ip.dst(), ip.src()), (63, [198, 19, 255, 254], [198, 18, 7, 9]));
        assert!(ip.verify_checksum());
    }

    #[test]
    fn rejects_bad_lengths() {
        let b = header();
        assert_eq!(Ipv4::new_checked(&b[..19]).err(), Some(WireError::Truncated));
        assert_eq!(Ipv4::new_checked(&b[..23]).err(), Some(WireError::Truncated));
        let mut bad = b;
        bad[0] = 0x44; // IHL 4
        assert_eq!(Ipv4::new_checked(&bad[..]).err(), Some(WireError::Malformed));
        let mut bad = b;
        bad[0] = 0x65; // version 6
        assert_eq!(Ipv4::new_checked(&bad[..]).err(), Some(WireError::Malformed));
        let mut bad = b;
        bad[0] = 0x4f; // 60-byte header, longer than total length
        assert_eq!(Ipv4::new_checked(&bad[..]).err(), Some(WireError::Malformed));
        let mut opts = [0u8; 28];
        write_header(&mut opts, 28, 64, IpProtocol::TCP, [1; 4], [2; 4], false);
        opts[0] = 0x46; // one option word
        let ip = Ipv4::new_checked(&opts[..]).unwrap();
        assert_eq!((ip.header_len(), ip.payload().len()), (24, 4));
    }
}
