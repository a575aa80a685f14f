//! TCP header (RFC 9293).

use super::{IpProtocol, WireError, be16, be32, checksum, put16};

pub const TCP_MIN_HLEN: usize = 20;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
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

/// Writes a 20-byte header without options into `b[..20]`, checksum
/// zero (see [`fill_checksum`]).
pub fn write_header(b: &mut [u8], src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, window: u16) {
    write_header_with_options(b, src_port, dst_port, (seq, ack), flags, window, 0);
}

/// [`write_header`] for a header followed by `options_len` bytes of
/// options (a multiple of 4) that the caller writes at `b[20..]`.
pub fn write_header_with_options(b: &mut [u8], src_port: u16, dst_port: u16, (seq, ack): (u32, u32), flags: u8, window: u16, options_len: usize) {
    put16(b, 0, src_port);
    put16(b, 2, dst_port);
    b[4..8].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&ack.to_be_bytes());
    b[12] = (((TCP_MIN_HLEN + options_len) / 4) as u8) << 4;
    b[13] = flags;
    put16(b, 14, window);
    put16(b, CHECKSUM_AT, 0);
    put16(b, 18, 0);
}

/// Computes the checksum of a whole segment (header and payload) between
/// `src` and `dst` (4 or 16 bytes each) into its checksum field.
pub fn fill_checksum(segment: &mut [u8], src: &[u8], dst: &[u8]) {
    put16(segment, CHECKSUM_AT, 0);
    let c = checksum::checksum(segment, checksum::pseudo_header(src, dst, IpProtocol::TCP, segment.len() as u32));
    put16(segment, CHECKSUM_AT, c);
}

/// Option kinds (RFC 9293, 7323, 2018).
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERMITTED: u8 = 4;
const OPT_SACK: u8 = 5;
const OPT_TIMESTAMP: u8 = 8;

/// The longest option block [`write_options`] writes.
pub const MAX_WRITTEN_OPTIONS: usize = 20;

/// The options of a segment the SYN proxy reads or writes: those a SYN
/// negotiates, and the timestamps every segment of such a flow carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    /// TSval, TSecr.
    pub timestamp: Option<(u32, u32)>,
}

/// Where the options of a checked segment are: `seg[20..header_len]`.
/// Each item is (kind, offset in `seg` of the option's data, data
/// length); a malformed option ends the walk, as a stack ignores the rest.
pub fn walk_options(seg: &[u8]) -> impl Iterator<Item = (u8, usize, usize)> + '_ {
    let end = (usize::from(seg[12] >> 4) * 4).min(seg.len());
    let mut at = TCP_MIN_HLEN;
    std::iter::from_fn(move || {
        loop {
            let kind = *seg.get(at).filter(|_| at < end)?;
            match kind {
                OPT_END => return None,
                OPT_NOP => at += 1,
                _ => {
                    let len = usize::from(*seg.get(at + 1).filter(|_| at + 1 < end)?);
                    if len < 2 || at + len > end {
                        return None;
                    }
                    let item = (kind, at + 2, len - 2);
                    at += len;
                    return Some(item);
                }
            }
        }
    })
}

/// The options of a checked segment (`Tcp::new_checked` passed).
pub fn options(seg: &[u8]) -> Options {
    let mut o = Options::default();
    for (kind, at, len) in walk_options(seg) {
        match (kind, len) {
            (OPT_MSS, 2) => o.mss = Some(be16(seg, at)),
            // RFC 7323 2.3: a shift above 14 is used as 14.
            (OPT_WSCALE, 1) => o.wscale = Some(seg[at].min(14)),
            (OPT_SACK_PERMITTED, 0) => o.sack_permitted = true,
            (OPT_TIMESTAMP, 8) => o.timestamp = Some((be32(seg, at), be32(seg, at + 4))),
            _ => {}
        }
    }
    o
}

/// Writes `o` as Linux lays options out (4-byte aligned, NOP padded) at
/// the start of `b`; returns the length written, at most
/// [`MAX_WRITTEN_OPTIONS`].
pub fn write_options(b: &mut [u8], o: &Options) -> usize {
    let mut at = 0;
    if let Some(mss) = o.mss {
        b[at..at + 2].copy_from_slice(&[OPT_MSS, 4]);
        put16(b, at + 2, mss);
        at += 4;
    }
    match (o.timestamp, o.sack_permitted) {
        (Some((val, ecr)), sack) => {
            let lead = if sack { [OPT_SACK_PERMITTED, 2] } else { [OPT_NOP, OPT_NOP] };
            b[at..at + 4].copy_from_slice(&[lead[0], lead[1], OPT_TIMESTAMP, 10]);
            b[at + 4..at + 8].copy_from_slice(&val.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&ecr.to_be_bytes());
            at += 12;
        }
        (None, true) => {
            b[at..at + 4].copy_from_slice(&[OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2]);
            at += 4;
        }
        (None, false) => {}
    }
    if let Some(shift) = o.wscale {
        b[at..at + 4].copy_from_slice(&[OPT_NOP, OPT_WSCALE, 3, shift]);
        at += 4;
    }
    at
}

/// Where the options that carry sequence numbers and timestamps are in a
/// checked segment: offsets in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    /// The timestamp option's TSval (TSecr follows).
    pub timestamp: Option<usize>,
    /// The SACK blocks: where their edges (32-bit sequence numbers)
    /// start, and how many bytes of them.
    pub sack: Option<(usize, usize)>,
}

impl Stamps {
    /// One walk over the options of a checked segment.
    pub fn find(seg: &[u8]) -> Stamps {
        // Nearly every segment of a flow with timestamps carries them
        // alone, as Linux lays them out: NOP, NOP, TS.
        if seg[12] >> 4 == 8 && seg.get(20..24) == Some(&[OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10]) {
            return Stamps { timestamp: Some(24), sack: None };
        }
        let mut s = Stamps::default();
        for (kind, at, len) in walk_options(seg) {
            match kind {
                OPT_TIMESTAMP if len == 8 => s.timestamp = Some(at),
                OPT_SACK if len > 0 && len.is_multiple_of(8) => s.sack = Some((at, len)),
                _ => {}
            }
        }
        s
    }

    /// Offsets of each SACK edge.
    pub fn sack_edges(&self) -> impl Iterator<Item = usize> + use<> {
        self.sack.into_iter().flat_map(|(at, len)| (at..at + len).step_by(4))
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

    fn segment(opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; TCP_MIN_HLEN];
        b.extend_from_slice(opts);
        while !b.len().is_multiple_of(4) {
            b.push(OPT_END);
        }
        b[12] = ((b.len() / 4) as u8) << 4;
        b
    }

    #[test]
    fn options_round_trip_in_every_combination() {
        for mss in [None, Some(1460)] {
            for wscale in [None, Some(7)] {
                for sack_permitted in [false, true] {
                    for timestamp in [None, Some((0xdead_beef, 7))] {
                        let o = Options { mss, wscale, sack_permitted, timestamp };
                        let mut b = [0u8; MAX_WRITTEN_OPTIONS];
                        let n = write_options(&mut b, &o);
                        assert!(n.is_multiple_of(4));
                        assert_eq!(options(&segment(&b[..n])), o);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_options_end_the_walk_without_panic() {
        // MSS, then an option claiming 40 bytes in a 12-byte block.
        let seg = segment(&[OPT_MSS, 4, 5, 0xb4, OPT_SACK, 40, 0, 0]);
        assert_eq!(options(&seg), Options { mss: Some(1460), ..Options::default() });
        // A zero length would loop forever if taken.
        let seg = segment(&[OPT_TIMESTAMP, 0, 0, 0]);
        assert_eq!(options(&seg), Options::default());
        // The header claims more options than the buffer holds.
        let mut seg = segment(&[OPT_NOP, OPT_NOP, OPT_WSCALE, 3]);
        seg[12] = 15 << 4;
        assert_eq!(options(&seg).wscale, None);
        assert_eq!(Stamps::find(&seg), Stamps::default());
    }

    #[test]
    fn sack_edges_and_timestamp_offsets() {
        let mut opts = vec![OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, 0, 0, 0, 1, 0, 0, 0, 2, OPT_NOP, OPT_NOP, OPT_SACK, 18];
        opts.extend_from_slice(&[0; 16]);
        let seg = segment(&opts);
        let stamps = Stamps::find(&seg);
        assert_eq!(stamps.timestamp, Some(24));
        assert_eq!((be32(&seg, 24), be32(&seg, 28)), (1, 2));
        assert_eq!(stamps.sack_edges().collect::<Vec<_>>(), vec![36, 40, 44, 48]);
    }
}
