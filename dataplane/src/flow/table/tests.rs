//! The connection table's tests: recency promotion, departures, and
//! the table itself (lookups, timeouts, eviction, peers).

mod clock {
    use super::super::*;
    use crate::wire::IpProtocol;

    fn key(n: u32) -> FlowKey {
        FlowKey::new([198, 18, (n >> 8) as u8, n as u8].into(), [198, 18, 0, 2].into(), 1024, 80, IpProtocol::TCP)
    }

    #[test]
    fn a_hit_writes_its_own_entry_only() {
        let mut t: ConnTable<u8> = ConnTable::new(4, Timeouts::default());
        let (a, b) = (t.insert(key(1), key(1).hash64(), FlowState::Established, 1, 0), t.insert(key(2), key(2).hash64(), FlowState::Established, 2, 0));
        t.link_peers(a, b);
        assert_eq!(t.lookup(&key(1), key(1).hash64(), 700), Some(a));
        assert_eq!((t.entry(a).last_seen(), t.entry(a).referenced), (700, true));
        assert_eq!((t.entry(b).last_seen(), t.entry(b).referenced), (0, false));
        assert_eq!((t.pair_seen(a), t.pair_seen(b)), (700, 700));
    }

    #[test]
    fn the_hand_spares_referenced_entries_once_and_the_newest_always() {
        let mut t: ConnTable<u8> = ConnTable::new(3, Timeouts::default());
        let s: Vec<Slot> = (0..3).map(|n| t.insert(key(n), key(n).hash64(), FlowState::Established, n as u8, 0)).collect();
        t.touch(s[0], 1);
        t.touch(s[1], 1);
        // 0 and 1 referenced, 2 the newest: the hand clears 0 and 1, skips
        // 2, and takes 0 on its second pass.
        t.insert(key(3), key(3).hash64(), FlowState::Established, 3, 2);
        assert!(!t.contains(&key(0), key(0).hash64(), 2));
        assert!((1..4).all(|n| t.contains(&key(n), key(n).hash64(), 2)));
        assert!(!t.entry(s[1]).referenced, "cleared as the hand passed");
    }

    #[test]
    fn a_full_sweep_of_busy_entries_takes_the_longest_idle_of_those_seen() {
        let n = 2 * EVICTION_SCAN as u32;
        let mut t: ConnTable<u8> = ConnTable::new(n as usize, Timeouts::default());
        for i in 0..n {
            let s = t.insert(key(i), key(i).hash64(), FlowState::Established, 0, 0);
            t.touch(s, 1000 + i % 50);
        }
        t.insert(key(n), key(n).hash64(), FlowState::Established, 0, 2000);
        // Slots 0..EVICTION_SCAN were examined; the one last seen earliest goes.
        assert!(!t.contains(&key(0), key(0).hash64(), 2000));
        assert_eq!(t.evictions(), 1);
        assert!((EVICTION_SCAN as u32..n).all(|i| t.entry(i).referenced));
    }

    /// The protection of the hostile-traffic guards: a SYN flood filling
    /// the table evicts the flood's own never-hit entries, not established
    /// flows that keep receiving packets, even when the flood brings many
    /// times the table's capacity between two packets of a flow.
    #[test]
    fn a_syn_flood_does_not_evict_flows_that_keep_receiving_packets() {
        // More active flows than one eviction's scan, in consecutive slots.
        const CAPACITY: u32 = 30_000;
        const ACTIVE: u32 = 2 * EVICTION_SCAN as u32 + 1000;
        let mut t: ConnTable<u8> = ConnTable::new(CAPACITY as usize, Timeouts::default());
        let est = |i: u32| FlowKey::new([198, 18, (i >> 8) as u8, i as u8].into(), [198, 19, 0, 1].into(), 40000, 80, IpProtocol::TCP);
        for i in 0..ACTIVE {
            t.insert(est(i), est(i).hash64(), FlowState::Established, 0, 0);
        }
        // Each round: a flood of half the capacity in new SYNs, then one
        // packet of every active flow.
        let mut now = 0;
        for round in 0..20u32 {
            for j in 0..CAPACITY / 2 {
                now += 1;
                let k = FlowKey::new([198, 19, (j >> 8) as u8, j as u8].into(), [198, 19, 0, 1].into(), round as u16, 80, IpProtocol::TCP);
                t.insert(k, k.hash64(), FlowState::SynSeen, 1, now / 1000);
            }
            let lost = (0..ACTIVE).filter(|&i| t.lookup(&est(i), est(i).hash64(), now / 1000).is_none()).count();
            assert_eq!(lost, 0, "round {round}: {lost} of {ACTIVE} active flows evicted");
            for i in 0..ACTIVE {
                if !t.contains(&est(i), est(i).hash64(), now / 1000) {
                    t.insert(est(i), est(i).hash64(), FlowState::Established, 0, now / 1000);
                }
            }
        }
        assert_eq!(t.len(), CAPACITY as usize);
    }
}

mod departure {
    use super::super::*;
    use crate::wire::IpProtocol;

    #[test]
    fn every_removal_is_reported_once_with_its_state() {
        let key = |n: u16| FlowKey::new([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), n, 53, IpProtocol::UDP);
        let t_out = Timeouts { syn_ms: 10, established_ms: 10, closing_ms: 10, udp_ms: 10 };
        let mut t: ConnTable<u16> = ConnTable::new(2, t_out);
        let a = t.insert(key(1), key(1).hash64(), FlowState::SynSeen, 1, 0);
        let b = t.insert(key(2), key(2).hash64(), FlowState::Udp, 2, 0);
        t.link_peers(a, b);
        t.insert(key(3), key(3).hash64(), FlowState::Established, 3, 0); // evicts the pair
        assert_eq!(t.take_departed().map(|(_, v, s)| (v, s)).collect::<Vec<_>>(), [(1, FlowState::SynSeen), (2, FlowState::Udp)]);
        assert_eq!(t.take_departed().count(), 0);
        t.expire(100, 8);
        assert_eq!(t.take_departed().map(|(_, v, s)| (v, s)).collect::<Vec<_>>(), [(3, FlowState::Established)]);
        let c = t.insert(key(4), key(4).hash64(), FlowState::Closing, 4, 100);
        t.remove(c);
        assert_eq!(t.take_departed().map(|(_, v, s)| (v, s)).collect::<Vec<_>>(), [(4, FlowState::Closing)]);
        assert_eq!(t.lost_departures(), 0);
    }
}

mod table {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::*;
    use crate::wire::IpProtocol;

    fn key(n: u32) -> FlowKey {
        let [a, b, c, d] = n.to_be_bytes();
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, c, d));
        FlowKey::new(src, IpAddr::V4(Ipv4Addr::new(198, 19, a, b)), 1024 + (n % 7) as u16, 80, IpProtocol::TCP)
    }

    const T: Timeouts = Timeouts { syn_ms: 50, established_ms: 500, closing_ms: 20, udp_ms: 200 };

    fn ins(t: &mut ConnTable<u64>, n: u32, now: u32) -> Slot {
        let k = key(n);
        t.insert(k, k.hash64(), FlowState::Established, n as u64, now)
    }

    fn look(t: &mut ConnTable<u64>, n: u32, now: u32) -> Option<Slot> {
        let k = key(n);
        t.lookup(&k, k.hash64(), now)
    }

    fn has(t: &ConnTable<u64>, n: u32, now: u32) -> bool {
        let k = key(n);
        t.contains(&k, k.hash64(), now)
    }

    #[test]
    fn entry_fits_one_cache_line() {
        assert_eq!(size_of::<Entry<[u8; 8]>>(), 64);
        assert_eq!(size_of::<Entry<u64>>(), 64);
    }

    #[test]
    fn default_timeouts() {
        let d = Timeouts::default();
        assert_eq!((d.syn_ms, d.established_ms, d.closing_ms, d.udp_ms), (30_000, 900_000, 60_000, 300_000));
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = ConnTable::<u64>::new(8, T);
        assert!(t.is_empty());
        let s = ins(&mut t, 1, 0);
        ins(&mut t, 2, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(look(&mut t, 1, 5), Some(s));
        assert_eq!(t.entry(s).key(), &key(1));
        assert_eq!(t.entry(s).last_seen(), 5);
        assert_eq!(t.entry(s).value, 1);
        t.entry_mut(s).value = 77;
        t.entry_mut(s).state = FlowState::Closing;
        assert_eq!((t.entry(s).value, t.entry(s).state), (77, FlowState::Closing));
        assert_eq!(look(&mut t, 3, 5), None);
        t.remove(s);
        assert_eq!(look(&mut t, 1, 5), None);
        assert!(look(&mut t, 2, 5).is_some());
        assert_eq!(t.len(), 1);
        // The freed slot is reused.
        assert_eq!(ins(&mut t, 4, 6), s);
        assert_eq!(t.entry(s).value, 4);
        assert_eq!((t.evictions(), t.expirations()), (0, 0));
    }

    #[test]
    fn capacity_is_clamped_to_two() {
        let mut t = ConnTable::<u64>::new(0, T);
        assert_eq!(t.capacity(), 2);
        let a = ins(&mut t, 1, 0);
        let b = ins(&mut t, 2, 0);
        t.link_peers(a, b);
        assert_eq!(t.len(), 2);
        ins(&mut t, 3, 0);
        assert_eq!((t.len(), t.evictions()), (1, 2));
    }

    #[test]
    fn full_table_evicts_an_entry_not_hit_since_the_hand_passed() {
        let mut t = ConnTable::<u64>::new(4, T);
        for n in 0..4 {
            ins(&mut t, n, n);
        }
        // Key 0 is the oldest insert, but a lookup references it: the hand takes 1.
        assert!(look(&mut t, 0, 10).is_some());
        ins(&mut t, 4, 11);
        assert_eq!(t.len(), 4);
        assert_eq!(t.evictions(), 1);
        assert!(!has(&t, 1, 11));
        for n in [0, 2, 3, 4] {
            assert!(has(&t, n, 11), "{n} evicted");
        }
        // A touch rescues too.
        let s2 = look(&mut t, 2, 12).unwrap();
        let s3 = look(&mut t, 3, 12).unwrap();
        t.touch(s2, 13);
        t.touch(s3, 13);
        assert!(look(&mut t, 4, 13).is_some());
        ins(&mut t, 5, 14);
        assert!(!has(&t, 0, 14));
        assert_eq!(t.evictions(), 2);
    }

    #[test]
    fn contains_does_not_reference_or_refresh() {
        let mut t = ConnTable::<u64>::new(3, T);
        for n in 0..3 {
            ins(&mut t, n, 0);
        }
        assert!(has(&t, 0, 400));
        // Not refreshed: still expires 500 ms after the insert.
        assert!(!has(&t, 0, 501));
        ins(&mut t, 3, 1);
        assert!(!has(&t, 0, 1), "contains must not have referenced 0");
        assert!(has(&t, 1, 1));
    }

    #[test]
    fn peers_die_together() {
        // On remove, from either side.
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b, c) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0), ins(&mut t, 3, 0));
        t.link_peers(a, b);
        assert_eq!((t.entry(a).peer(), t.entry(b).peer(), t.entry(c).peer()), (b, a, NO_PEER));
        t.remove(b);
        assert_eq!(t.len(), 1);
        assert!(!has(&t, 1, 0) && !has(&t, 2, 0) && has(&t, 3, 0));

        // On eviction: the hand reaches the pair, never hit, first.
        let mut t = ConnTable::<u64>::new(4, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        ins(&mut t, 3, 1);
        ins(&mut t, 4, 1);
        ins(&mut t, 5, 2);
        assert_eq!((t.len(), t.evictions()), (3, 2));
        assert!(!has(&t, 1, 2) && !has(&t, 2, 2));

        // On expiry through lookup and through expire.
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        assert_eq!(look(&mut t, 2, 501), None);
        assert_eq!((t.len(), t.expirations()), (0, 2));
        let (a, b) = (ins(&mut t, 1, 600), ins(&mut t, 2, 600));
        t.link_peers(a, b);
        ins(&mut t, 3, 1000);
        assert_eq!(t.expire(1101, 100), 2);
        assert_eq!(t.len(), 1);
        assert!(has(&t, 3, 1101));
    }

    #[test]
    fn a_pair_ages_as_one_and_expires_with_its_shortest_timeout() {
        let mut t = ConnTable::<u64>::new(4, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        ins(&mut t, 3, 0);
        ins(&mut t, 4, 0);
        // Traffic on a alone keeps b alive and spared by the hand.
        for now in (100..=1000).step_by(100) {
            assert_eq!(look(&mut t, 1, now), Some(a));
        }
        assert_eq!(t.pair_seen(b), 1000);
        ins(&mut t, 5, 1000);
        assert!(has(&t, 2, 1000), "b was evicted while a was busy");
        // b closing: the pair goes when b's 20 ms run out.
        t.entry_mut(b).state = FlowState::Closing;
        assert!(has(&t, 1, 1020));
        assert!(!has(&t, 1, 1021));
        assert_eq!(look(&mut t, 1, 1021), None);
        assert!(!has(&t, 2, 1021));
    }

    #[test]
    fn relinking_dissolves_the_old_pair() {
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b, c) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0), ins(&mut t, 3, 0));
        t.link_peers(a, b);
        t.link_peers(a, c);
        assert_eq!((t.entry(a).peer(), t.entry(b).peer(), t.entry(c).peer()), (c, NO_PEER, a));
        t.remove(a);
        assert_eq!(t.len(), 1);
        assert!(has(&t, 2, 0));
    }

    #[test]
    fn each_state_times_out_across_the_u32_wrap() {
        for state in [FlowState::SynSeen, FlowState::Established, FlowState::Closing, FlowState::Udp] {
            let timeout = T.for_state(state);
            let start = u32::MAX - timeout / 2;
            let mut t = ConnTable::<u64>::new(4, T);
            let k = key(9);
            let h = k.hash64();
            let s = t.insert(k, h, state, 0, start);
            assert!(t.contains(&k, h, start.wrapping_add(timeout)), "{state:?} gone at its timeout");
            assert!(!t.contains(&k, h, start.wrapping_add(timeout + 1)), "{state:?} alive past its timeout");
            // A lookup just in time refreshes it for another full timeout.
            assert_eq!(t.lookup(&k, h, start.wrapping_add(timeout)), Some(s));
            let last = start.wrapping_add(timeout);
            assert_eq!(t.expire(last.wrapping_add(timeout), 4), 0);
            assert_eq!(t.expire(last.wrapping_add(timeout + 1), 4), 1, "{state:?}");
            assert!(t.is_empty());
            let s = t.insert(k, h, state, 0, last);
            assert_eq!(t.lookup(&k, h, last.wrapping_add(timeout + 1)), None);
            assert_eq!((t.len(), t.expirations()), (0, 2));
            // Re-insert after expiry without a lookup in between (the SNAT probe path).
            t.insert(k, h, state, 0, last);
            assert!(!t.contains(&k, h, last.wrapping_add(timeout + 1)));
            assert_eq!(t.insert(k, h, state, 1, last.wrapping_add(timeout + 1)), s);
            assert_eq!((t.len(), t.expirations()), (1, 3));
            assert_eq!(t.entry(s).value, 1);
        }
    }

    #[test]
    fn expire_works_in_bounded_steps_and_eventually_reaps_everything() {
        const N: u32 = 100;
        const BUDGET: usize = 7;
        let mut t = ConnTable::<u64>::new(N as usize, T);
        for n in 0..N {
            ins(&mut t, n, 0);
        }
        for n in (0..N).step_by(2) {
            look(&mut t, n, 400).unwrap();
        }
        // At 600 the odd keys are expired and the even ones are not.
        let mut removed = 0;
        for call in 0..N as usize / BUDGET + 1 {
            let r = t.expire(600, BUDGET);
            // Each call examines BUDGET slots, half of them expired.
            assert!(r <= BUDGET.div_ceil(2), "call {call} removed {r}");
            removed += r;
        }
        assert_eq!(removed, N as usize / 2);
        assert_eq!(t.expire(600, BUDGET), 0);
        assert_eq!((t.len(), t.expirations()), (N as usize / 2, N as u64 / 2));
        for n in 0..N {
            assert_eq!(has(&t, n, 600), n % 2 == 0);
        }

        // All expired: each call removes exactly BUDGET until none are left.
        let mut calls = 0;
        while !t.is_empty() {
            let before = t.len();
            let r = t.expire(10_000, BUDGET);
            assert!(r <= BUDGET && r == before - t.len());
            calls += 1;
        }
        assert_eq!(calls, (N as usize).div_ceil(BUDGET));
        assert_eq!(t.expire(10_000, BUDGET), 0);
    }

    /// The obvious implementation: a HashMap plus a Vec in recency order.
    struct Model {
        capacity: usize,
        map: HashMap<FlowKey, M>,
        /// Insertion order, for picking a present key.
        present: Vec<FlowKey>,
        evict_hand: usize,
        newest: Option<Slot>,
        prior: Option<Slot>,
        /// Slots handed out so far and the clock hand over them.
        used: usize,
        hand: usize,
        evictions: u64,
        expirations: u64,
    }

    struct M {
        slot: Slot,
        last_seen: u32,
        state: FlowState,
        peer: Option<FlowKey>,
        referenced: bool,
    }

    impl Model {
        /// Idle since the more recent half's hit, past the shorter timeout.
        fn pair_expired(&self, k: &FlowKey, now: u32) -> bool {
            let m = &self.map[k];
            let idle = |m: &M| now.wrapping_sub(m.last_seen);
            match m.peer.map(|p| &self.map[&p]) {
                None => idle(m) > T.for_state(m.state),
                Some(p) => idle(m).min(idle(p)) > T.for_state(m.state).min(T.for_state(p.state)),
            }
        }
        fn at(&self, slot: Slot) -> FlowKey {
            *self.map.iter().find(|(_, m)| m.slot == slot).unwrap().0
        }
        /// CLOCK over the slots, as the table's doc says it works.
        fn victim(&mut self, now: u32) -> FlowKey {
            let mut oldest: Option<(u32, FlowKey)> = None;
            for _ in 0..EVICTION_SCAN.min(2 * self.used) {
                let slot = self.evict_hand as Slot;
                self.evict_hand = (self.evict_hand + 1) % self.used;
                let k = self.at(slot);
                let peer = self.map[&k].peer;
                if Some(slot) == self.newest || peer.is_some_and(|p| self.map[&p].slot < slot) {
                    continue;
                }
                if !self.map[&k].referenced && !peer.is_some_and(|p| self.map[&p].referenced) {
                    return k;
                }
                for x in std::iter::once(k).chain(peer) {
                    self.map.get_mut(&x).unwrap().referenced = false;
                }
                let seen = |m: &M| now.wrapping_sub(m.last_seen);
                let idle = peer.map_or(seen(&self.map[&k]), |p| seen(&self.map[&k]).min(seen(&self.map[&p])));
                if oldest.is_none_or(|(i, _)| idle > i) {
                    oldest = Some((idle, k));
                }
            }
            let prior = self.prior.and_then(|slot| self.map.iter().find(|(_, m)| m.slot == slot)).map(|(k, m)| (*k, m));
            if let Some((k, m)) = prior
                && !m.referenced
                && m.peer.is_none_or(|p| !self.map[&p].referenced)
            {
                return k;
            }
            oldest.map_or_else(|| self.at(self.evict_hand as Slot), |(_, k)| k)
        }
        fn live(&self, k: &FlowKey, now: u32) -> bool {
            self.map.contains_key(k) && !self.pair_expired(k, now)
        }
        fn remove_pair(&mut self, k: &FlowKey) -> u64 {
            let peer = self.map[k].peer;
            let mut n = 0;
            for x in std::iter::once(*k).chain(peer) {
                self.map.remove(&x);
                self.present.retain(|y| *y != x);
                n += 1;
            }
            n
        }
        fn touch(&mut self, k: &FlowKey, now: u32) {
            let m = self.map.get_mut(k).unwrap();
            m.last_seen = now;
            m.referenced = true;
        }
        fn lookup(&mut self, k: &FlowKey, now: u32) -> bool {
            if !self.map.contains_key(k) {
                return false;
            }
            if self.pair_expired(k, now) {
                self.expirations += self.remove_pair(k);
                return false;
            }
            self.touch(k, now);
            true
        }
        fn insert(&mut self, k: FlowKey, state: FlowState, now: u32, slot: Slot) {
            if self.map.contains_key(&k) {
                assert!(self.pair_expired(&k, now));
                self.expirations += self.remove_pair(&k);
            }
            if self.map.len() == self.capacity {
                let victim = self.victim(now);
                self.evictions += self.remove_pair(&victim);
            }
            assert!((slot as usize) < self.capacity);
            assert!(self.map.values().all(|m| m.slot != slot), "slot {slot} handed out twice");
            self.used = self.used.max(slot as usize + 1);
            self.map.insert(k, M { slot, last_seen: now, state, peer: None, referenced: false });
            self.present.push(k);
            self.prior = self.newest.replace(slot);
        }
        fn expire(&mut self, now: u32, budget: usize) -> usize {
            let mut removed = 0;
            for _ in 0..budget.min(self.used) {
                let slot = self.hand as Slot;
                self.hand = (self.hand + 1) % self.used;
                let at = self.map.iter().find(|(_, m)| m.slot == slot).map(|(k, _)| *k);
                if let Some(k) = at.filter(|k| self.pair_expired(k, now)) {
                    removed += self.remove_pair(&k) as usize;
                }
            }
            self.expirations += removed as u64;
            removed
        }
    }

    /// splitmix64: deterministic, no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const STATES: [FlowState; 4] = [FlowState::SynSeen, FlowState::Established, FlowState::Closing, FlowState::Udp];

    #[test]
    fn matches_a_simple_model() {
        for seed in 1..=6u64 {
            let mut rng = Rng(seed);
            let capacity = 2 + rng.below(14) as usize;
            let keys: Vec<FlowKey> = (0..3 * capacity as u32)
                .map(|n| {
                    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, n as u8));
                    FlowKey::new(src, "198.18.1.1".parse().unwrap(), 5000, 53, IpProtocol::UDP)
                })
                .collect();
            let mut t = ConnTable::<u64>::new(capacity, T);
            let mut m = Model {
                capacity,
                map: HashMap::new(),
                present: Vec::new(),
                evict_hand: 0,
                newest: None,
                prior: None,
                used: 0,
                hand: 0,
                evictions: 0,
                expirations: 0,
            };
            // Start close to the wrap so that `now` crosses u32::MAX.
            let mut now = u32::MAX - 20_000;
            for step in 0..15_000 {
                now = now.wrapping_add(if rng.below(50) == 0 { 400 } else { rng.below(8) as u32 });
                let k = keys[rng.below(keys.len() as u64) as usize];
                let h = k.hash64();
                let present: Vec<FlowKey> = m.present.clone();
                let some_present = (!present.is_empty()).then(|| present[rng.below(present.len() as u64) as usize]);
                match rng.below(100) {
                    0..30 => {
                        let got = t.lookup(&k, h, now);
                        assert_eq!(got.is_some(), m.lookup(&k, now), "seed {seed} step {step}: lookup");
                        if let Some(s) = got {
                            assert_eq!(s, m.map[&k].slot);
                        }
                    }
                    30..55 => {
                        if !t.contains(&k, h, now) {
                            let state = STATES[rng.below(4) as usize];
                            let s = t.insert(k, h, state, step, now);
                            m.insert(k, state, now, s);
                            assert_eq!(t.entry(s).value, step);
                        }
                    }
                    55..65 => {
                        let other = (!present.is_empty()).then(|| present[rng.below(present.len() as u64) as usize]);
                        if let (Some(a), Some(b)) = (some_present, other)
                            && a != b
                            && m.map[&a].peer.is_none()
                            && m.map[&b].peer.is_none()
                        {
                            t.link_peers(m.map[&a].slot, m.map[&b].slot);
                            m.map.get_mut(&a).unwrap().peer = Some(b);
                            m.map.get_mut(&b).unwrap().peer = Some(a);
                        }
                    }
                    65..72 => {
                        if let Some(p) = some_present {
                            t.remove(m.map[&p].slot);
                            m.remove_pair(&p);
                        }
                    }
                    72..80 => {
                        if let Some(p) = some_present {
                            t.touch(m.map[&p].slot, now);
                            m.touch(&p, now);
                        }
                    }
                    80..88 => {
                        if let Some(p) = some_present {
                            let state = STATES[rng.below(4) as usize];
                            t.entry_mut(m.map[&p].slot).state = state;
                            m.map.get_mut(&p).unwrap().state = state;
                        }
                    }
                    _ => {
                        let budget = rng.below(6) as usize;
                        assert_eq!(t.expire(now, budget), m.expire(now, budget), "seed {seed} step {step}: expire");
                    }
                }
                assert_eq!(t.len(), m.map.len(), "seed {seed} step {step}: len");
                assert_eq!((t.evictions(), t.expirations()), (m.evictions, m.expirations));
                for k in &keys {
                    assert_eq!(t.contains(k, k.hash64(), now), m.live(k, now), "seed {seed} step {step}");
                }
                for (k, e) in &m.map {
                    let te = t.entry(e.slot);
                    assert_eq!((te.key(), te.last_seen(), te.state, te.referenced), (k, e.last_seen, e.state, e.referenced));
                    assert_eq!(te.peer(), e.peer.map_or(NO_PEER, |p| m.map[&p].slot));
                }
            }
        }
    }
}
