//! The 5-tuple that identifies a flow, for IPv4 and IPv6 alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::IpProtocol;

/// A flow's 5-tuple. IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`)
/// so one fixed-size key serves both families without a tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[repr(C)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: IpProtocol,
}

/// Seed of the flow hash. Fixed, so every node computes the same hash for
/// the same flow and picks the same backend when its table has no entry.
const FLOW_HASH_SEED: u64 = 0x6675_6c63_7275_6d31; // "fulcrum1"

impl FlowKey {
    pub fn new(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, proto: IpProtocol) -> Self {
        FlowKey { src: addr16(src), dst: addr16(dst), src_port, dst_port, proto }
    }

    /// The key of the same flow seen in the opposite direction.
    pub fn reversed(&self) -> Self {
        FlowKey { src: self.dst, dst: self.src, src_port: self.dst_port, dst_port: self.src_port, proto: self.proto }
    }

    pub fn is_v4(&self) -> bool {
        is_v4_mapped(&self.src)
    }

    pub fn src_ip(&self) -> IpAddr {
        ip_from16(&self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        ip_from16(&self.dst)
    }

    /// Deterministic 64-bit hash of the whole 5-tuple (xxh3, fixed seed):
    /// the same on every node and every run.
    #[inline]
    pub fn hash64(&self) -> u64 {
        let mut b = [0u8; 37];
        b[..16].copy_from_slice(&self.src);
        b[16..32].copy_from_slice(&self.dst);
        b[32..34].copy_from_slice(&self.src_port.to_be_bytes());
        b[34..36].copy_from_slice(&self.dst_port.to_be_bytes());
        b[36] = self.proto.0;
        xxhash_rust::xxh3::xxh3_64_with_seed(&b, FLOW_HASH_SEED)
    }

    /// Deterministic hash of the source address alone (source-IP affinity).
    pub fn src_hash64(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(&self.src, FLOW_HASH_SEED)
    }
}

/// An address as 16 bytes, IPv4 v4-mapped.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `::ffff:a.b.c.d`
pub fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

pub fn ip_from16(a: &[u8; 16]) -> IpAddr {
    if is_v4_mapped(a) { IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15])) } else { IpAddr::V6(Ipv6Addr::from(*a)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6_round_trip_and_reverse() {
        let k = FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.0.100".parse().unwrap(), 4000, 80, IpProtocol::TCP);
        assert!(k.is_v4());
        assert_eq!(k.src_ip(), "198.18.0.1".parse::<IpAddr>().unwrap());
        let r = k.reversed();
        assert_eq!(r.dst_ip(), k.src_ip());
        assert_eq!((r.src_port, r.dst_port), (80, 4000));
        assert_eq!(r.reversed(), k);
        let k6 = FlowKey::new("2001:db8::1".parse().unwrap(), "2001:db8::64".parse().unwrap(), 1, 2, IpProtocol::UDP);
        assert!(!k6.is_v4());
        assert_eq!(k6.dst_ip(), "2001:db8::64".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn hash_is_fixed_across_runs() {
        let k = FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.0.100".parse().unwrap(), 4000, 80, IpProtocol::TCP);
        // A changed value here means every deployed node would pick differently.
        assert_eq!(k.hash64(), 17813301258664779163);
        assert_ne!(k.hash64(), k.reversed().hash64());
    }
}
