//! IPv6 header (RFC 8200) and the walk over its extension headers.

use super::{IpProtocol, WireError, be16, put16};

pub const IPV6_HLEN: usize = 40;
/// Where the addresses are in the header.
pub const SRC_AT: usize = 8;
pub const DST_AT: usize = 24;
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_DEST_OPTS: u8 = 60;
/// More extension headers than this is treated as malformed: the walk
/// must stay bounded on hostile input.
const MAX_EXT_HEADERS: usize = 8;

pub struct Ipv6<T> {
    buf: T,
    upper: usize,
    upper_proto: IpProtocol,
    /// Where the fragment header starts; 0: none.
    fragment: usize,
}

impl<T: AsRef<[u8]>> Ipv6<T> {
    /// Checks version and payload length, then walks hop-by-hop, routing,
    /// destination-options and fragment headers to the upper-layer header.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV6_HLEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let end = IPV6_HLEN + usize::from(be16(b, 4));
        if b.len() < end {
            return Err(WireError::Truncated);
        }
        let (mut next, mut at, mut fragment) = (b[6], IPV6_HLEN, 0);
        for _ in 0..MAX_EXT_HEADERS {
            let len = match next {
                NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                    if at + 2 > end {
                        return Err(WireError::Truncated);
                    }
                    (usize::from(b[at + 1]) + 1) * 8
                }
                NH_FRAGMENT => {
                    fragment = at;
                    8
                }
                _ => return Ok(Ipv6 { buf, upper: at, upper_proto: IpProtocol(next), fragment }),
            };
            if at + len > end {
                return Err(WireError::Truncated);
            }
            next = b[at];
            at += len;
        }
        Err(WireError::Malformed)
    }

    /// For the fixed header of a buffer that already passed `new_checked`;
    /// the extension-header walk is not repeated, so `upper_*` describe
    /// the fixed header only.
    #[inline]
    pub fn new_unchecked(buf: T) -> Self {
        let upper_proto = IpProtocol(buf.as_ref()[6]);
        Ipv6 { buf, upper: IPV6_HLEN, upper_proto, fragment: 0 }
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), 4))
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[7]
    }

    #[inline]
    pub fn src(&self) -> [u8; 16] {
        addr_at(self.b(), SRC_AT)
    }

    #[inline]
    pub fn dst(&self) -> [u8; 16] {
        addr_at(self.b(), DST_AT)
    }

    /// Offset of the upper-layer header from the start of the IPv6 header.
    #[inline]
    pub fn upper_offset(&self) -> usize {
        self.upper
    }

    /// The upper-layer protocol after any extension headers.
    #[inline]
    pub fn upper_proto(&self) -> IpProtocol {
        self.upper_proto
    }

    /// A fragment header was present.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.fragment != 0
    }

    /// Where this fragment's data sits in the datagram, in bytes (0 for a
    /// packet that is not a fragment).
    #[inline]
    pub fn fragment_offset(&self) -> usize {
        if self.fragment == 0 { 0 } else { usize::from(be16(self.buf.as_ref(), self.fragment + 2) & 0xfff8) }
    }

    /// The datagram's identification from the fragment header (0 for a
    /// packet that is not a fragment).
    #[inline]
    pub fn ident(&self) -> u32 {
        if self.fragment == 0 {
            return 0;
        }
        let b = self.buf.as_ref();
        let at = self.fragment + 4;
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[inline]
    pub fn total_len(&self) -> usize {
        IPV6_HLEN + self.payload_len()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6<T> {
    #[inline]
    pub fn decrement_hop_limit(&mut self) {
        let b = self.buf.as_mut();
        b[7] = b[7].wrapping_sub(1);
    }

    #[inline]
    pub fn set_src(&mut self, a: [u8; 16]) {
        self.buf.as_mut()[SRC_AT..SRC_AT + 16].copy_from_slice(&a);
    }

    #[inline]
    pub fn set_dst(&mut self, a: [u8; 16]) {
        self.buf.as_mut()[DST_AT..DST_AT + 16].copy_from_slice(&a);
    }
}

/// Writes a 40-byte header into `b[..40]`.
pub fn write_header(b: &mut [u8], payload_len: u16, next_header: IpProtocol, hop_limit: u8, src: [u8; 16], dst: [u8; 16]) {
    b[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    put16(b, 4, payload_len);
    b[6] = next_header.0;
    b[7] = hop_limit;
    b[8..24].copy_from_slice(&src);
    b[24..40].copy_from_slice(&dst);
}

fn addr_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(exts: &[(u8, usize)], upper: u8) -> Vec<u8> {
        // exts: (header type, length in bytes); each points to the next.
        let mut b = vec![0u8; IPV6_HLEN];
        let plen: usize = exts.iter().map(|e| e.1).sum::<usize>() + 8;
        write_header(&mut b, plen as u16, IpProtocol(exts.first().map_or(upper, |e| e.0)), 64, [1; 16], [2; 16]);
        for (i, &(_, len)) in exts.iter().enumerate() {
            let mut h = vec![0u8; len];
            h[0] = exts.get(i + 1).map_or(upper, |e| e.0);
            h[1] = (len / 8 - 1) as u8;
            b.extend(h);
        }
        b.extend([0u8; 8]);
        b
    }

    #[test]
    fn walks_extension_headers() {
        let p = packet(&[(NH_HOP_BY_HOP, 8), (NH_ROUTING, 24), (NH_DEST_OPTS, 16)], 17);
        let ip = Ipv6::new_checked(&p[..]).unwrap();
        assert_eq!((ip.upper_proto(), ip.upper_offset(), ip.is_fragment()), (IpProtocol::UDP, 88, false));
        let p = packet(&[(NH_FRAGMENT, 8)], 6);
        let ip = Ipv6::new_checked(&p[..]).unwrap();
        assert_eq!((ip.upper_proto(), ip.upper_offset(), ip.is_fragment()), (IpProtocol::TCP, 48, true));
    }

    #[test]
    fn rejects_bad_input() {
        let p = packet(&[], 6);
        assert_eq!(Ipv6::new_checked(&p[..39]).err(), Some(WireError::Truncated));
        assert_eq!(Ipv6::new_checked(&p[..47]).err(), Some(WireError::Truncated));
        let mut v4 = p.clone();
        v4[0] = 0x45;
        assert_eq!(Ipv6::new_checked(&v4[..]).err(), Some(WireError::Malformed));
        // An extension header longer than the payload.
        let mut long = packet(&[(NH_DEST_OPTS, 8)], 6);
        long[IPV6_HLEN + 1] = 200;
        assert_eq!(Ipv6::new_checked(&long[..]).err(), Some(WireError::Truncated));
        // An endless chain of extension headers.
        let chain: Vec<(u8, usize)> = (0..MAX_EXT_HEADERS + 1).map(|_| (NH_DEST_OPTS, 8)).collect();
        let p = packet(&chain, 6);
        assert_eq!(Ipv6::new_checked(&p[..]).err(), Some(WireError::Malformed));
    }
}
