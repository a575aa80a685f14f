//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) share their first 8 bytes.

use super::{WireError, be16};

pub const ICMP_HLEN: usize = 8;
pub const CHECKSUM_AT: usize = 2;

pub const V4_DEST_UNREACH: u8 = 3;
pub const V4_FRAG_NEEDED_CODE: u8 = 4;
pub const V4_TIME_EXCEEDED: u8 = 11;
pub const V4_PARAM_PROBLEM: u8 = 12;
pub const V6_DEST_UNREACH: u8 = 1;
pub const V6_PACKET_TOO_BIG: u8 = 2;
pub const V6_TIME_EXCEEDED: u8 = 3;
pub const V6_PARAM_PROBLEM: u8 = 4;

pub struct Icmp<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Icmp<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < ICMP_HLEN {
            return Err(WireError::Truncated);
        }
        Ok(Icmp { buf })
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[0]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[1]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), CHECKSUM_AT)
    }

    /// The bytes after the 8-byte header: for error messages, the quoted
    /// packet that caused the error.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ICMP_HLEN..]
    }
}

/// An error message that quotes the packet which caused it.
pub fn is_error(v6: bool, msg_type: u8) -> bool {
    if v6 {
        matches!(msg_type, V6_DEST_UNREACH | V6_PACKET_TOO_BIG | V6_TIME_EXCEEDED | V6_PARAM_PROBLEM)
    } else {
        matches!(msg_type, V4_DEST_UNREACH | V4_TIME_EXCEEDED | V4_PARAM_PROBLEM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_payload() {
        let b = [3u8, 4, 0xab, 0xcd, 0, 0, 5, 0xdc, 0x45];
        let i = Icmp::new_checked(&b[..]).unwrap();
        assert_eq!((i.msg_type(), i.code(), i.checksum(), i.payload()), (3, 4, 0xabcd, &[0x45][..]));
        assert!(is_error(false, i.msg_type()) && !is_error(false, 8) && is_error(true, 2) && !is_error(true, 128));
        assert_eq!(Icmp::new_checked(&b[..7]).err(), Some(WireError::Truncated));
    }
}
