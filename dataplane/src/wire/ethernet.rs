//! Ethernet II with at most one 802.1Q tag.

use super::{WireError, be16};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;

pub use crate::types::Mac;

pub struct Ethernet<T> {
    buf: T,
    hlen: usize,
}

impl<T: AsRef<[u8]>> Ethernet<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < ETH_HLEN {
            return Err(WireError::Truncated);
        }
        let hlen = if be16(b, 12) == ETHERTYPE_VLAN { ETH_HLEN + VLAN_HLEN } else { ETH_HLEN };
        if b.len() < hlen {
            return Err(WireError::Truncated);
        }
        Ok(Ethernet { buf, hlen })
    }

    #[inline]
    pub fn dst(&self) -> Mac {
        mac_at(self.buf.as_ref(), 0)
    }

    #[inline]
    pub fn src(&self) -> Mac {
        mac_at(self.buf.as_ref(), 6)
    }

    /// The 802.1Q VLAN id, when tagged.
    #[inline]
    pub fn vlan(&self) -> Option<u16> {
        (self.hlen > ETH_HLEN).then(|| be16(self.buf.as_ref(), 14) & 0x0fff)
    }

    /// The ethertype of the payload (after the tag, if any).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), self.hlen - 2)
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        self.hlen
    }
}

impl<T: AsMut<[u8]>> Ethernet<T> {
    #[inline]
    pub fn set_dst(&mut self, mac: Mac) {
        self.buf.as_mut()[0..6].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_src(&mut self, mac: Mac) {
        self.buf.as_mut()[6..12].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        let at = self.hlen - 2;
        super::put16(self.buf.as_mut(), at, ethertype);
    }
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tagged() {
        let mut f = [0u8; 18];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let e = Ethernet::new_checked(&f[..14]).unwrap();
        assert_eq!((e.ethertype(), e.header_len(), e.vlan()), (ETHERTYPE_IPV6, 14, None));
        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&0x2064u16.to_be_bytes());
        f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let e = Ethernet::new_checked(&f[..]).unwrap();
        assert_eq!((e.ethertype(), e.header_len(), e.vlan()), (ETHERTYPE_IPV4, 18, Some(0x64)));
        assert_eq!(Ethernet::new_checked(&f[..17]).err(), Some(WireError::Truncated));
        assert_eq!(Ethernet::new_checked(&f[..13]).err(), Some(WireError::Truncated));
    }
}
