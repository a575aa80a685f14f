//! UDP header (RFC 768).

use super::{WireError, be16, put16};

pub const UDP_HLEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_AT: usize = 6;

pub struct Udp<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Udp<T> {
    /// Checks the header fits and the length field is within 8..=buffer.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < UDP_HLEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(b, 4));
        if len < UDP_HLEN {
            return Err(WireError::Malformed);
        }
        if b.len() < len {
            return Err(WireError::Truncated);
        }
        Ok(Udp { buf })
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
    pub fn len(&self) -> usize {
        usize::from(be16(self.buf.as_ref(), 4))
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == UDP_HLEN
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), CHECKSUM_AT)
    }
}

/// Writes an 8-byte header into `b[..8]` with a zero checksum.
pub fn write_header(b: &mut [u8], src_port: u16, dst_port: u16, len: u16) {
    put16(b, 0, src_port);
    put16(b, 2, dst_port);
    put16(b, 4, len);
    put16(b, CHECKSUM_AT, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_bounds() {
        let mut b = [0u8; 12];
        write_header(&mut b, 53, 5353, 12);
        let u = Udp::new_checked(&b[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len(), u.checksum()), (53, 5353, 12, 0));
        assert_eq!(Udp::new_checked(&b[..11]).err(), Some(WireError::Truncated));
        write_header(&mut b, 53, 5353, 7);
        assert_eq!(Udp::new_checked(&b[..]).err(), Some(WireError::Malformed));
    }
}
