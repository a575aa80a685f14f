//! TCP header (RFC 9293).

use super::{IpProtocol, WireError, be16, checksum, put16};

pub const TCP_MIN_HLEN: usize = 20;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
/// Offset of the checksum field.
pub const CHECKSUM_AT: usize = 16;

pub struct Tcp<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Tcp<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < TCP_MIN_HLEN {
            return Err(WireError::Truncated);
        }
        let hlen = usize::from(b[12] >> 4) * 4;
        if hlen < TCP_MIN_HLEN {
            return Err(WireError::Malformed);
        }
        if b.len() < hlen {
            return Err(WireError::Truncated);
        }
        Ok(Tcp { buf })
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[13]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), CHECKSUM_AT)
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[12] >> 4) * 4
    }
}

impl<T: AsMut<[u8]>> Tcp<T> {
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), CHECKSUM_AT, c);
    }
}

/// Writes a 20-byte header without options into `b[..20]`, checksum
/// zero (see [`fill_checksum`]).
pub fn write_header(b: &mut [u8], src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, window: u16) {
    put16(b, 0, src_port);
    put16(b, 2, dst_port);
    b[4..8].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&ack.to_be_bytes());
    b[12] = ((TCP_MIN_HLEN / 4) as u8) << 4;
    b[13] = flags;
    put16(b, 14, window);
    put16(b, CHECKSUM_AT, 0);
    put16(b, 18, 0);
}

/// Computes the checksum of a whole segment (header and payload) between
/// `src` and `dst` (4 or 16 bytes each) into its checksum field.
pub fn fill_checksum(segment: &mut [u8], src: &[u8], dst: &[u8]) {
    put16(segment, CHECKSUM_AT, 0);
    let c = checksum::checksum(segment, checksum::pseudo_header(src, dst, IpProtocol::TCP, segment.len() as u32));
    put16(segment, CHECKSUM_AT, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_bounds() {
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&4000u16.to_be_bytes());
        b[2..4].copy_from_slice(&80u16.to_be_bytes());
        b[12] = 6 << 4;
        b[13] = SYN | ACK;
        let t = Tcp::new_checked(&b[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.flags(), t.header_len()), (4000, 80, SYN | ACK, 24));
        assert_eq!(Tcp::new_checked(&b[..23]).err(), Some(WireError::Truncated));
        b[12] = 4 << 4;
        assert_eq!(Tcp::new_checked(&b[..]).err(), Some(WireError::Malformed));
    }
}
