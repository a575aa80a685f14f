//! The SYN proxy of nat and full-NAT VIPs: SYN cookies at the balancer.
//!
//! The balancer answers a client's SYN itself with a SYN-ACK whose sequence
//! number is a cookie: a keyed hash of the flow, the client's ISN and a
//! coarse clock, with the client's MSS (an index into Linux's table) in its
//! low bits. Nothing is stored, so a flood of spoofed SYNs costs no table
//! entry and no backend socket. Only a client that returns the cookie in
//! its ACK has shown it is real; then the balancer opens the backend
//! connection on its behalf (a SYN with the client's ISN and options),
//! completes it when the backend's SYN-ACK comes (the ACK), and from then
//! on shifts the backend's sequence numbers, timestamps and window to what
//! the client was given: the flow's [`Splice`].
//!
//! Options are kept as Linux's syncookies keep them: the MSS in the cookie;
//! window scale and SACK-permitted only when the client sends timestamps,
//! in the low bits of the SYN-ACK's TSval, which the client echoes.

use std::hash::{BuildHasher, RandomState};

use super::segment::{self, Segment};
use crate::flow::FlowKey;
use crate::flow::parse::Parsed;
use crate::flow::sync::SpliceOffsets;
use crate::packet::{DropReason, Packet};
use crate::types::Mac;
use crate::wire::checksum::Incremental;
use crate::wire::tcp::{self, Options, Stamps};
use crate::wire::{be16, be32, put16, put32};

/// The MSS a cookie can carry, as Linux's tables: the largest entry not
/// above the client's MSS is offered to the backend for it.
const MSS_V4: [u16; 4] = [536, 1300, 1440, 1460];
const MSS_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// A cookie is valid in the clock epoch it was made in and the next one:
/// 65 to 131 s, as Linux's two minutes.
const EPOCH_SHIFT: u32 = 16;
const EPOCHS: u32 = u32::MAX >> EPOCH_SHIFT;

/// The window scale offered to clients: Linux's for its default buffers,
/// so that a Linux backend's windows usually need no rescaling.
pub const OFFERED_WSCALE: u8 = 7;

/// What the low bits of the SYN-ACK's TSval say of the client's SYN.
const TS_WSCALE_MASK: u32 = 0x0f;
const TS_NO_WSCALE: u32 = 0x0f;
const TS_SACK: u32 = 0x10;
const TS_OPTION_BITS: u32 = 0x1f;

/// The key of this balancer's cookies, shared by its workers (a SYN and
/// the ACK after it may reach different ones after a reconfiguration).
#[derive(Clone, Debug, Default)]
pub struct Cookies {
    keys: RandomState,
}

impl Cookies {
    /// Cookies under a fresh random key.
    pub fn new() -> Cookies {
        Cookies::default()
    }

    fn mac(&self, key: &FlowKey, client_isn: u32, epoch: u32) -> u32 {
        self.keys.hash_one((key.src, key.dst, key.src_port, key.dst_port, client_isn, epoch)) as u32
    }

    fn make(&self, key: &FlowKey, client_isn: u32, now: u32, mss_index: usize) -> u32 {
        let epoch = now >> EPOCH_SHIFT;
        (self.mac(key, client_isn, epoch) & !7) | ((epoch & 1) << 2) | mss_index as u32
    }

    /// The MSS index `cookie` carries, if this balancer made it for `key`
    /// and `client_isn` in this clock epoch or the last.
    fn check(&self, key: &FlowKey, client_isn: u32, cookie: u32, now: u32) -> Option<usize> {
        let epoch = now >> EPOCH_SHIFT;
        let epoch = if (cookie >> 2) & 1 == epoch & 1 { epoch } else { epoch.wrapping_sub(1) & EPOCHS };
        ((self.mac(key, client_isn, epoch) ^ cookie) & !7 == 0).then_some((cookie & 3) as usize)
    }

    /// Answers a client's SYN (`p`, in `pkt`) in place with the cookie
    /// SYN-ACK, from the VIP, to be sent back out of the ingress interface.
    /// `mtu` is the ingress interface's: it sets the MSS offered.
    pub fn answer_syn(&self, pkt: &mut Packet, p: &Parsed, now: u32, mtu: u16, macs: (Mac, Mac)) -> Result<(), DropReason> {
        let seg = &pkt.frame()[p.l4..p.end];
        let client_isn = be32(seg, 4);
        let theirs = tcp::options(seg);
        let table = if p.v6 { &MSS_V6 } else { &MSS_V4 };
        let client_mss = theirs.mss.unwrap_or(table[0]);
        let mss_index = table.iter().rposition(|&m| m <= client_mss).unwrap_or(0);
        let headers = if p.v6 { 60 } else { 40 };
        let mut ours = Options { mss: Some(mtu.saturating_sub(headers).max(table[0])), ..Options::default() };
        if let Some((tsval, _)) = theirs.timestamp {
            let wscale = theirs.wscale.map_or(TS_NO_WSCALE, u32::from);
            let sack = if theirs.sack_permitted { TS_SACK } else { 0 };
            ours.timestamp = Some(((now & !TS_OPTION_BITS) | wscale | sack, tsval));
            ours.wscale = theirs.wscale.map(|_| OFFERED_WSCALE);
            ours.sack_permitted = theirs.sack_permitted;
        }
        let (client, vip) = (p.key.src, p.key.dst);
        let synack = Segment {
            src: &vip,
            dst: &client,
            src_port: p.key.dst_port,
            dst_port: p.key.src_port,
            seq: self.make(&p.key, client_isn, now, mss_index),
            ack: client_isn.wrapping_add(1),
            flags: tcp::SYN | tcp::ACK,
            window: u16::MAX,
            options: &ours,
            payload: &[],
        };
        segment::write(pkt, p, &synack)?;
        let (own, client_mac) = macs;
        super::rewrite::set_macs(pkt.frame_mut(), own, client_mac);
        Ok(())
    }

    /// The splice of a flow whose client's ACK (`p`, no SYN) returns a
    /// valid cookie; `None` for any other segment.
    pub fn accept(&self, frame: &[u8], p: &Parsed, now: u32) -> Option<Splice> {
        let seg = &frame[p.l4..p.end];
        let client_isn = be32(seg, 4).wrapping_sub(1);
        let cookie = be32(seg, 8).wrapping_sub(1);
        let mss_index = self.check(&p.key, client_isn, cookie, now)?;
        let mut splice = Splice {
            client_isn,
            cookie,
            client_window: be16(seg, 14),
            mss: if p.v6 { MSS_V6[mss_index] } else { MSS_V4[mss_index] },
            pending: true,
            ..Splice::default()
        };
        if let Some((tsval, tsecr)) = tcp::options(seg).timestamp {
            let wscale = tsecr & TS_WSCALE_MASK;
            splice.client_wscale = (wscale != TS_NO_WSCALE).then_some((wscale as u8).min(14));
            splice.sack_permitted = tsecr & TS_SACK != 0;
            splice.timestamps = true;
            splice.client_tsval = tsval;
            splice.our_tsval = tsecr;
        }
        Some(splice)
    }
}

/// What a proxied flow needs beyond its table entry: the two initial
/// sequence numbers the client knows of, and how the backend's side
/// differs from what the client was told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Splice {
    client_isn: u32,
    /// The balancer's ISN towards the client.
    cookie: u32,
    /// The backend's ISN minus the cookie; its TSval clock minus ours.
    seq_delta: u32,
    ts_delta: u32,
    /// The client's TSval and window of its ACK, and the TSval it echoed:
    /// the SYN and ACK the balancer sends the backend speak for it.
    client_tsval: u32,
    our_tsval: u32,
    client_window: u16,
    /// The client's SYN options, as the cookie and TSval kept them.
    mss: u16,
    client_wscale: Option<u8>,
    sack_permitted: bool,
    timestamps: bool,
    /// Bits the backend scales its window by beyond what the client was
    /// offered (negative: fewer).
    window_shift: i8,
    /// The backend has not yet answered the balancer's SYN.
    pub pending: bool,
    /// Where the client's data that came before that answer is held.
    pub early: Option<u16>,
}

/// The first data of clients whose backend connection is not open yet:
/// a client sends its request right after its ACK, before the backend can
/// have answered the balancer's SYN. Dropped, it would wait for the
/// client's retransmission timeout (200 ms or more); held, it goes with
/// the ACK that completes the backend's handshake. A few slots per
/// worker, reused oldest first: a flood of early data only costs the
/// clients whose hold was taken that timeout.
pub struct EarlyData {
    bytes: Vec<u8>,
    /// Per slot: the flow holding it (its forward slot and cookie) and
    /// the length held.
    owners: Vec<Option<((u32, u32), u16)>>,
    next: usize,
}

/// Slots of early data per worker, and the most each holds (a
/// full-sized segment's payload).
const EARLY_SLOTS: usize = 64;
const EARLY_BYTES: usize = 1500;

impl Default for EarlyData {
    fn default() -> Self {
        EarlyData { bytes: vec![0; EARLY_SLOTS * EARLY_BYTES], owners: vec![None; EARLY_SLOTS], next: 0 }
    }
}

impl EarlyData {
    /// Holds the payload of a client segment of a pending flow (`slot`
    /// is its forward entry), if it is the first data (right after the
    /// ISN) and fits; keeps it in `splice.early`.
    pub fn keep(&mut self, splice: &mut Splice, slot: u32, frame: &[u8], p: &Parsed) {
        let seg = &frame[p.l4..p.end];
        let payload = &seg[usize::from(seg[12] >> 4) * 4..];
        if payload.is_empty() || payload.len() > EARLY_BYTES || splice.early.is_some() || be32(seg, 4) != splice.client_isn.wrapping_add(1) {
            return;
        }
        let i = self.next;
        self.next = (i + 1) % EARLY_SLOTS;
        self.bytes[i * EARLY_BYTES..][..payload.len()].copy_from_slice(payload);
        self.owners[i] = Some(((slot, splice.cookie), payload.len() as u16));
        splice.early = Some(i as u16);
    }

    /// The data `splice` (of forward entry `slot`) holds, released: empty
    /// when it holds none or its slot was taken since.
    pub fn take(&mut self, splice: &mut Splice, slot: u32) -> &[u8] {
        let Some(i) = splice.early.take().map(usize::from) else { return &[] };
        match self.owners.get_mut(i) {
            Some(owner) if owner.is_some_and(|(o, _)| o == (slot, splice.cookie)) => {
                let len = owner.take().map_or(0, |(_, len)| usize::from(len));
                &self.bytes[i * EARLY_BYTES..][..len]
            }
            _ => &[],
        }
    }
}

impl Splice {
    /// What a peer needs to carry this flow on, once the backend answered.
    pub fn offsets(&self) -> Option<SpliceOffsets> {
        (!self.pending).then_some(SpliceOffsets {
            seq_delta: self.seq_delta,
            ts_delta: self.ts_delta,
            window_shift: self.window_shift,
            timestamps: self.timestamps,
        })
    }

    /// The splice of a flow a peer opened and synced: established, so only
    /// the translation matters.
    pub fn from_offsets(o: SpliceOffsets) -> Splice {
        Splice { seq_delta: o.seq_delta, ts_delta: o.ts_delta, window_shift: o.window_shift, timestamps: o.timestamps, ..Splice::default() }
    }

    /// Rewrites a client segment of a pending flow, in place, into the SYN
    /// that opens its backend connection (the client's ISN and options),
    /// still addressed client to VIP: the caller NATs it as any segment,
    /// at the offsets returned. Any payload goes (see [`EarlyData`]).
    pub fn backend_syn(&self, pkt: &mut Packet, p: &Parsed) -> Result<Parsed, DropReason> {
        let options = Options {
            mss: Some(self.mss),
            wscale: self.client_wscale,
            sack_permitted: self.sack_permitted,
            timestamp: self.timestamps.then_some((self.client_tsval, 0)),
        };
        let shift = self.client_wscale.unwrap_or(0);
        let window = (u32::from(self.client_window) << shift).min(u32::from(u16::MAX)) as u16;
        let (src, dst) = (p.key.src, p.key.dst);
        let syn = Segment {
            src: &src,
            dst: &dst,
            src_port: p.key.src_port,
            dst_port: p.key.dst_port,
            seq: self.client_isn,
            ack: 0,
            flags: tcp::SYN,
            window,
            options: &options,
            payload: &[],
        };
        segment::write(pkt, p, &syn)
    }

    /// Completes the backend connection on its SYN-ACK (`p`, in `pkt`,
    /// backend to client or SNAT address): learns the backend's ISN,
    /// TSval and window scale, and rewrites the frame in place into the
    /// ACK that answers it, from its destination to its source; the caller
    /// sets the MACs. The ACK carries `early`, the client's first data if
    /// it came before (see [`EarlyData`]). Again on a retransmitted
    /// SYN-ACK, which learns the same. `None` when the SYN-ACK does not
    /// answer the balancer's SYN.
    pub fn complete(&mut self, pkt: &mut Packet, p: &Parsed, early: &[u8]) -> Option<Result<(), DropReason>> {
        let seg = &pkt.frame()[p.l4..p.end];
        if be32(seg, 8) != self.client_isn.wrapping_add(1) {
            return None;
        }
        let backend_isn = be32(seg, 4);
        let theirs = tcp::options(seg);
        self.seq_delta = backend_isn.wrapping_sub(self.cookie);
        let backend_tsval = theirs.timestamp.map(|(val, _)| val);
        self.ts_delta = backend_tsval.map_or(0, |val| val.wrapping_sub(self.our_tsval));
        // Scaling is on only when both SYNs offered it: the client was
        // offered OFFERED_WSCALE if and only if it sent a scale itself.
        self.window_shift = match self.client_wscale {
            Some(_) => theirs.wscale.unwrap_or(0) as i8 - OFFERED_WSCALE as i8,
            None => 0,
        };
        self.pending = false;
        let options = Options { timestamp: backend_tsval.filter(|_| self.timestamps).map(|val| (self.client_tsval, val)), ..Options::default() };
        let (src, dst) = (p.key.dst, p.key.src);
        let ack = Segment {
            src: &src,
            dst: &dst,
            src_port: p.key.dst_port,
            dst_port: p.key.src_port,
            seq: self.client_isn.wrapping_add(1),
            ack: backend_isn.wrapping_add(1),
            flags: if early.is_empty() { tcp::ACK } else { tcp::ACK | tcp::PSH },
            window: self.client_window,
            options: &options,
            payload: early,
        };
        Some(segment::write(pkt, p, &ack).map(drop))
    }

    /// A client segment on its way to the backend: its acknowledgment and
    /// SACK blocks move into the backend's sequence space, its echoed
    /// timestamp onto the backend's clock.
    pub fn to_backend(&self, frame: &mut [u8], p: &Parsed) {
        let seg = &mut frame[p.l4..p.end];
        let mut csum = Incremental::new(be16(seg, tcp::CHECKSUM_AT));
        if p.tcp_flags & tcp::ACK != 0 {
            add32(seg, 8, self.seq_delta, &mut csum);
        }
        if seg.len() > tcp::TCP_MIN_HLEN && seg[12] >> 4 > 5 {
            let stamps = Stamps::find(seg);
            if let Some(at) = stamps.timestamp.filter(|_| self.timestamps) {
                add32(seg, at + 4, self.ts_delta, &mut csum);
            }
            for at in stamps.sack_edges() {
                add32(seg, at, self.seq_delta, &mut csum);
            }
        }
        put16(seg, tcp::CHECKSUM_AT, csum.finish());
    }

    /// A backend segment on its way to the client: its sequence number and
    /// timestamp onto what the client was given, its window rescaled.
    pub fn to_client(&self, frame: &mut [u8], p: &Parsed) {
        let seg = &mut frame[p.l4..p.end];
        let mut csum = Incremental::new(be16(seg, tcp::CHECKSUM_AT));
        add32(seg, 4, self.seq_delta.wrapping_neg(), &mut csum);
        if self.timestamps
            && let Some(at) = Stamps::find(seg).timestamp
        {
            add32(seg, at, self.ts_delta.wrapping_neg(), &mut csum);
        }
        if self.window_shift != 0 {
            let old = be16(seg, 14);
            let shift = u32::from(self.window_shift.unsigned_abs());
            let wide = if self.window_shift > 0 { u32::from(old) << shift } else { u32::from(old) >> shift };
            let new = wide.min(u32::from(u16::MAX)) as u16;
            put16(seg, 14, new);
            csum.replace16(old, new);
        }
        put16(seg, tcp::CHECKSUM_AT, csum.finish());
    }

    /// The backend refused the balancer's SYN (a RST, `p`, to the client):
    /// the client, which holds an established connection, accepts a RST
    /// only at exactly the sequence number it expects next.
    pub fn refused(&self, frame: &mut [u8], p: &Parsed) {
        let seg = &mut frame[p.l4..p.end];
        let mut csum = Incremental::new(be16(seg, tcp::CHECKSUM_AT));
        let old = be32(seg, 4);
        add32(seg, 4, self.cookie.wrapping_add(1).wrapping_sub(old), &mut csum);
        put16(seg, tcp::CHECKSUM_AT, csum.finish());
    }
}

/// Adds `delta` to the 32-bit field at `at`, and to the checksum.
#[inline]
fn add32(seg: &mut [u8], at: usize, delta: u32, csum: &mut Incremental) {
    let old = be32(seg, at);
    let new = old.wrapping_add(delta);
    put32(seg, at, new);
    csum.replace32(old, new);
}
