//! A frame in a batch and what the engine decided for it.

use crate::types::IfIndex;

/// One frame of a batch. `buf` is the whole buffer (for AF_XDP, the UMEM
/// chunk); the frame is `buf[start..start + len]`. The bytes before `start`
/// are headroom, so encapsulation can prepend headers in place.
#[derive(Debug, Default)]
pub struct Packet<'a> {
    pub buf: &'a mut [u8],
    pub start: usize,
    pub len: usize,
    /// The interface the frame arrived on.
    pub ingress: IfIndex,
    /// Every other worker has looked for the frame's flow already (it was
    /// handed round): one without state here is dropped, not handed on.
    pub handed_round: bool,
    pub verdict: Verdict,
}

impl<'a> Packet<'a> {
    pub fn new(buf: &'a mut [u8], start: usize, len: usize, ingress: IfIndex) -> Self {
        Packet { buf, start, len, ingress, handed_round: false, verdict: Verdict::Pass }
    }

    pub fn frame(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Room after the frame's end.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }
}

/// What to do with a frame after processing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the rewritten frame on this interface.
    Tx(IfIndex),
    /// Not balanced traffic: hand it to the kernel unchanged.
    #[default]
    Pass,
    Drop(DropReason),
    /// A NAT flow's frame this worker holds no state for: another
    /// worker's, that one if known (full-NAT source ports are split by
    /// worker), else unknown (inline DNAT return traffic, a synced flow's
    /// client segment: ask the others in turn).
    Handoff(Option<u16>),
}

macro_rules! drop_reasons {
    ($($name:ident => $label:literal: $doc:literal,)*) => {
        /// Why a frame was dropped; each reason has its own counter.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $name,)* }

        impl DropReason {
            pub const ALL: &[DropReason] = &[$(DropReason::$name,)*];
            pub const COUNT: usize = DropReason::ALL.len();

            /// Stable snake_case name for counters and metrics.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated": "A header is cut short.",
    Malformed => "malformed": "A header field holds an impossible value.",
    Fragment => "fragment": "An IP fragment after the first, for a VIP, whose first fragment (the one with the ports) this worker did not see, or saw too long ago.",
    TtlExceeded => "ttl_exceeded": "TTL or hop limit would reach zero when routed.",
    NoBackend => "no_backend": "The VIP has no backend that can take a new flow.",
    NoState => "no_state": "A packet that needs a flow this worker does not know: NAT return traffic, or a TCP segment other than a SYN opening a NAT flow.",
    InvalidFlags => "invalid_flags": "A TCP SYN that also carries FIN or RST: no stack sends it.",
    SnatExhausted => "snat_exhausted": "No free source port for full-NAT.",
    IcmpNoFlow => "icmp_no_flow": "An ICMP error to a VIP quotes no known flow.",
    NoRoom => "no_room": "The buffer lacks head- or tailroom for the rewrite.",
    UnknownInterface => "unknown_interface": "The frame came in on an interface the services do not have.",
    BackendDown => "backend_down": "A client's RST for a flow reset because its backend is down: nothing to answer.",
}
