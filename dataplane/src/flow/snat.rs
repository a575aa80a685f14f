//! Full-NAT sources: (address, port) pairs from a VIP's SNAT addresses and
//! the worker's share of the port range, handed out in turn, and held back
//! after a flow ends. The backend keeps the ended connection in TIME_WAIT
//! (60 s on Linux) and takes a new SYN on the same four-tuple for a stray
//! segment of the old one, so a pair is not given again towards the same
//! backend address and port for `reuse_ms` after its flow ended. Other
//! backends may have it at once: the quarantine is per backend, so the
//! capacity towards one backend is addresses × ports ÷ quarantine.
//!
//! Each pair remembers the last two backends it served and when each flow
//! ended (16 bytes per address and port of the share): enough unless a
//! pair serves three backends within one quarantine, when the oldest
//! record gives way.

use hashbrown::HashMap;

/// When a pair's flow to one backend ended.
#[derive(Clone, Copy, Default)]
struct Ended {
    /// The backend's tag (`backend_tag`); 0: no record.
    backend: u32,
    at_ms: u32,
}

/// One SNAT address and the records of its ports.
struct Address {
    addr: [u8; 16],
    ended: Box<[[Ended; 2]]>,
}

/// One worker's full-NAT sources. See the module docs.
pub struct SnatPorts {
    lo: u16,
    span: u16,
    /// Turns through the pairs of whichever VIP asks: pair `c` of a VIP
    /// with `n` addresses is its address `c % n` and port `c / n`, so
    /// one VIP's pairs all come round before any comes again.
    next: u32,
    reuse_ms: u32,
    /// The services' SNAT addresses (`Services::snat_addrs`), in their
    /// order: a VIP names its addresses by position here.
    addrs: Vec<Address>,
    by_addr: HashMap<[u8; 16], u16>,
}

/// A backend address and port as the quarantine tells them apart: 32 bits
/// of their hash, never 0.
pub fn backend_tag(addr: &[u8; 16], port: u16) -> u32 {
    let mut b = [0u8; 18];
    b[..16].copy_from_slice(addr);
    b[16..].copy_from_slice(&port.to_be_bytes());
    (xxhash_rust::xxh3::xxh3_64(&b) as u32) | 1
}

impl SnatPorts {
    /// Ports `lo..lo + span` of no address yet (see `set_addrs`).
    pub fn new(lo: u16, span: u16, reuse_ms: u32) -> SnatPorts {
        SnatPorts { lo, span, next: 0, reuse_ms, addrs: Vec::new(), by_addr: HashMap::new() }
    }

    /// How many ports this worker has.
    pub fn span(&self) -> u16 {
        self.span
    }

    /// Whether `port` is one of these.
    pub fn owns(&self, port: u16) -> bool {
        port.wrapping_sub(self.lo) < self.span
    }

    /// Takes the addresses of a new services snapshot, in its order. An
    /// address kept keeps its records, so a reload does not lift the
    /// quarantine; records of addresses no longer in use go. Allocates
    /// for new addresses only: call it off the packet path.
    pub fn set_addrs(&mut self, addrs: &[[u8; 16]]) {
        if self.addrs.iter().map(|a| &a.addr).eq(addrs) {
            return;
        }
        let mut old: HashMap<[u8; 16], Box<[[Ended; 2]]>> = self.addrs.drain(..).map(|a| (a.addr, a.ended)).collect();
        let span = usize::from(self.span);
        self.addrs = addrs
            .iter()
            .map(|&addr| Address { addr, ended: old.remove(&addr).unwrap_or_else(|| vec![[Ended::default(); 2]; span].into_boxed_slice()) })
            .collect();
        self.by_addr = addrs.iter().enumerate().map(|(i, &a)| (a, i as u16)).collect();
    }

    /// The next pairs in turn, of the addresses at positions `addrs`
    /// (see `set_addrs`), that the quarantine allows towards `backend`,
    /// looking at no more than `probes` pairs; the caller still checks
    /// that a pair's return key is free.
    pub fn next_for<'a>(&'a mut self, addrs: &'a [u16], backend: u32, now: u32, probes: u16) -> impl Iterator<Item = ([u8; 16], u16)> + 'a {
        let n = addrs.len() as u32;
        let pairs = u32::from(self.span) * n;
        (0..u32::from(probes).min(pairs)).filter_map(move |_| {
            let c = self.next % pairs;
            self.next = self.next.wrapping_add(1);
            let off = (c / n) as u16;
            let a = self.addrs.get(usize::from(addrs[(c % n) as usize]))?;
            let held = a.ended[usize::from(off)].iter().any(|e| e.backend == backend && now.wrapping_sub(e.at_ms) < self.reuse_ms);
            (!held).then_some((a.addr, self.lo + off))
        })
    }

    /// Records that the flow from `addr` and `port` towards `backend`
    /// ended at `now`; a pair that is not one of these is ignored.
    pub fn ended(&mut self, addr: &[u8; 16], port: u16, backend: u32, now: u32) {
        let Some(&i) = self.by_addr.get(addr) else { return };
        if !self.owns(port) {
            return;
        }
        let slots = &mut self.addrs[usize::from(i)].ended[usize::from(port - self.lo)];
        let way = slots.iter().position(|e| e.backend == backend).unwrap_or_else(|| {
            // An empty record, else the older one (on a wrapping clock).
            let second_is_newer = slots[1].at_ms.wrapping_sub(slots[0].at_ms) as i32 > 0;
            if slots[0].backend == 0 || (slots[1].backend != 0 && second_is_newer) { 0 } else { 1 }
        });
        slots[way] = Ended { backend, at_ms: now };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [0xa; 16];
    const B: [u8; 16] = [0xb; 16];
    const C: [u8; 16] = [0xc; 16];

    /// Ports `lo..lo + span` of the one address A.
    fn one_address(lo: u16, span: u16) -> SnatPorts {
        let mut p = SnatPorts::new(lo, span, 60_000);
        p.set_addrs(&[A]);
        p
    }

    fn ports(p: &mut SnatPorts, backend: u32, now: u32, probes: u16) -> Vec<u16> {
        p.next_for(&[0], backend, now, probes).map(|(_, port)| port).collect()
    }

    #[test]
    fn a_port_is_held_back_from_its_backend_only_for_the_quarantine() {
        let (a, b) = (backend_tag(&[1; 16], 80), backend_tag(&[2; 16], 80));
        let mut p = one_address(1000, 4);
        assert_eq!(ports(&mut p, a, 0, 4), [1000, 1001, 1002, 1003]);
        p.ended(&A, 1001, a, 10_000);
        // Towards a: 1001 is skipped until 70 s; towards b it is free.
        assert_eq!(ports(&mut p, a, 20_000, 4), [1000, 1002, 1003]);
        assert_eq!(ports(&mut p, b, 20_000, 4), [1000, 1001, 1002, 1003]);
        assert_eq!(ports(&mut p, a, 70_000, 4), [1000, 1001, 1002, 1003]);
        // Ports of another worker, and other addresses, are not recorded.
        p.ended(&A, 999, a, 70_000);
        p.ended(&A, 1004, a, 70_000);
        p.ended(&B, 1000, a, 70_000);
        assert_eq!(ports(&mut p, a, 70_001, 4).len(), 4);
    }

    #[test]
    fn two_backends_per_port_are_remembered_and_the_older_of_three_gives_way() {
        let tags: Vec<u32> = (1..=3u8).map(|i| backend_tag(&[i; 16], 80)).collect();
        let mut p = one_address(1000, 1);
        p.ended(&A, 1000, tags[0], 1_000);
        p.ended(&A, 1000, tags[1], 2_000);
        assert_eq!(ports(&mut p, tags[0], 3_000, 1).len(), 0);
        assert_eq!(ports(&mut p, tags[1], 3_000, 1).len(), 0);
        p.ended(&A, 1000, tags[2], 3_000);
        // tags[0]'s record, the oldest, went.
        assert_eq!(ports(&mut p, tags[0], 4_000, 1).len(), 1);
        assert_eq!((ports(&mut p, tags[1], 4_000, 1).len(), ports(&mut p, tags[2], 4_000, 1).len()), (0, 0));
    }

    #[test]
    fn the_clock_may_wrap() {
        let a = backend_tag(&[1; 16], 80);
        let mut p = one_address(1000, 1);
        p.ended(&A, 1000, a, u32::MAX - 10_000);
        assert_eq!(ports(&mut p, a, 5_000, 1).len(), 0);
        assert_eq!(ports(&mut p, a, 60_000, 1).len(), 1);
    }

    #[test]
    fn every_pair_of_a_vips_addresses_comes_round_before_one_comes_again() {
        let mut p = SnatPorts::new(1000, 3, 60_000);
        p.set_addrs(&[A, B, C]);
        // This VIP has addresses C and A: 2 × 3 pairs.
        let vip = [2, 0];
        let first: Vec<([u8; 16], u16)> = p.next_for(&vip, 1, 0, 64).collect();
        let expected = [(C, 1000), (A, 1000), (C, 1001), (A, 1001), (C, 1002), (A, 1002)];
        assert_eq!(first, expected);
        assert_eq!(p.next_for(&vip, 1, 0, 2).collect::<Vec<_>>(), expected[..2]);
        // With every pair of one address held back from a backend, the
        // other's still serve it: capacity is addresses × ports.
        let b = backend_tag(&[1; 16], 80);
        for port in 1000..1003 {
            p.ended(&C, port, b, 5_000);
        }
        let free: Vec<([u8; 16], u16)> = p.next_for(&vip, b, 6_000, 64).collect();
        assert_eq!(free.len(), 3);
        assert!(free.iter().all(|&(addr, _)| addr == A), "{free:?}");
        assert_eq!(p.next_for(&[], b, 6_000, 64).count(), 0);
    }

    #[test]
    fn records_follow_their_address_across_new_address_lists() {
        let b = backend_tag(&[1; 16], 80);
        let mut p = SnatPorts::new(1000, 1, 60_000);
        p.set_addrs(&[A, B]);
        p.ended(&B, 1000, b, 1_000);
        // B moves to position 0 and A goes: B's record stays with B.
        p.set_addrs(&[B, C]);
        assert_eq!(p.next_for(&[0], b, 2_000, 4).count(), 0);
        assert_eq!(p.next_for(&[1], b, 2_000, 4).collect::<Vec<_>>(), [(C, 1000)]);
        // A is back, without the records it had.
        p.ended(&C, 1000, b, 2_000);
        p.set_addrs(&[A, C]);
        assert_eq!(p.next_for(&[0], b, 3_000, 4).collect::<Vec<_>>(), [(A, 1000)]);
        assert_eq!(p.next_for(&[1], b, 3_000, 4).count(), 0);
    }
}
