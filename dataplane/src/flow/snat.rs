//! Full-NAT source ports: a worker's share of the range, handed out in
//! turn, and held back after a flow ends. The backend keeps the ended
//! connection in TIME_WAIT (60 s on Linux) and takes a new SYN on the same
//! four-tuple for a stray segment of the old one, so a port is not given
//! again towards the same backend address and port for `reuse_ms` after
//! its flow ended. Other backends may have it at once: the quarantine is
//! per backend, so capacity is ports ÷ quarantine per backend.
//!
//! Each port remembers the last two backends it served and when each
//! flow ended: enough unless a port serves three backends within one
//! quarantine, when the oldest record gives way.

/// When a port's flow to one backend ended.
#[derive(Clone, Copy, Default)]
struct Ended {
    /// The backend's tag (`backend_tag`); 0: no record.
    backend: u32,
    at_ms: u32,
}

/// One worker's full-NAT ports. See the module docs.
pub struct SnatPorts {
    lo: u16,
    span: u16,
    next: u16,
    reuse_ms: u32,
    ended: Box<[[Ended; 2]]>,
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
    /// Ports `lo..lo + span`.
    pub fn new(lo: u16, span: u16, reuse_ms: u32) -> SnatPorts {
        SnatPorts { lo, span, next: 0, reuse_ms, ended: vec![[Ended::default(); 2]; usize::from(span)].into_boxed_slice() }
    }

    /// How many ports this worker has.
    pub fn span(&self) -> u16 {
        self.span
    }

    /// Whether `port` is one of these.
    pub fn owns(&self, port: u16) -> bool {
        port.wrapping_sub(self.lo) < self.span
    }

    /// The next port in turn that the quarantine allows towards `backend`,
    /// looking at no more than `probes` ports; the caller still checks that
    /// the port's return key is free.
    pub fn next_for(&mut self, backend: u32, now: u32, probes: u16) -> impl Iterator<Item = u16> + '_ {
        (0..probes.min(self.span)).filter_map(move |_| {
            let off = self.next;
            self.next = (self.next + 1) % self.span;
            let held = self.ended[usize::from(off)].iter().any(|e| e.backend == backend && now.wrapping_sub(e.at_ms) < self.reuse_ms);
            (!held).then_some(self.lo + off)
        })
    }

    /// Records that `port`'s flow towards `backend` ended at `now`.
    pub fn ended(&mut self, port: u16, backend: u32, now: u32) {
        if !self.owns(port) {
            return;
        }
        let slots = &mut self.ended[usize::from(port - self.lo)];
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

    #[test]
    fn a_port_is_held_back_from_its_backend_only_for_the_quarantine() {
        let (a, b) = (backend_tag(&[1; 16], 80), backend_tag(&[2; 16], 80));
        let mut p = SnatPorts::new(1000, 4, 60_000);
        assert_eq!(p.next_for(a, 0, 4).collect::<Vec<_>>(), [1000, 1001, 1002, 1003]);
        p.ended(1001, a, 10_000);
        // Towards a: 1001 is skipped until 70 s; towards b it is free.
        assert_eq!(p.next_for(a, 20_000, 4).collect::<Vec<_>>(), [1000, 1002, 1003]);
        assert_eq!(p.next_for(b, 20_000, 4).collect::<Vec<_>>(), [1000, 1001, 1002, 1003]);
        assert_eq!(p.next_for(a, 70_000, 4).collect::<Vec<_>>(), [1000, 1001, 1002, 1003]);
        // Ports of another worker are not recorded.
        p.ended(999, a, 70_000);
        p.ended(1004, a, 70_000);
        assert_eq!(p.next_for(a, 70_001, 4).count(), 4);
    }

    #[test]
    fn two_backends_per_port_are_remembered_and_the_older_of_three_gives_way() {
        let tags: Vec<u32> = (1..=3u8).map(|i| backend_tag(&[i; 16], 80)).collect();
        let mut p = SnatPorts::new(1000, 1, 60_000);
        p.ended(1000, tags[0], 1_000);
        p.ended(1000, tags[1], 2_000);
        assert_eq!(p.next_for(tags[0], 3_000, 1).count(), 0);
        assert_eq!(p.next_for(tags[1], 3_000, 1).count(), 0);
        p.ended(1000, tags[2], 3_000);
        // tags[0]'s record, the oldest, went.
        assert_eq!(p.next_for(tags[0], 4_000, 1).count(), 1);
        assert_eq!((p.next_for(tags[1], 4_000, 1).count(), p.next_for(tags[2], 4_000, 1).count()), (0, 0));
    }

    #[test]
    fn the_clock_may_wrap() {
        let a = backend_tag(&[1; 16], 80);
        let mut p = SnatPorts::new(1000, 1, 60_000);
        p.ended(1000, a, u32::MAX - 10_000);
        assert_eq!(p.next_for(a, 5_000, 1).count(), 0);
        assert_eq!(p.next_for(a, 60_000, 1).count(), 1);
    }
}
