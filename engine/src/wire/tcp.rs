//! TCP header (RFC 9293).

use super::{WireError, be16, put16};

pub const TCP_MIN_HLEN: usize = 20;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
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
