//! UDP and DNS checks: one connected UDP socket per check, one datagram
//! out, the first fitting reply decides. A connected socket also reports
//! the ICMP port unreachable of a closed port (ECONNREFUSED), so a server
//! that is gone fails at once rather than at the timeout.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use fulcrum_config::DnsType;
use fulcrum_io::epoll::{Interest, Poller};
use fulcrum_io::sock;
use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, Question, TYPE};

use super::{Failure, HealthError};

/// Larger than any reply a check accepts: a DNS answer without EDNS is at
/// most 512 bytes, a udp check's expected reply at most 1 KiB.
const MAX_REPLY: usize = 2048;

/// What one slot sends and how it judges a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatagramCheck {
    /// Up on a reply that begins with `expect` (any reply when `None`).
    Udp {
        payload: Box<[u8]>,
        expect: Option<Box<[u8]>>,
    },
    Dns(DnsCheck),
}

/// A DNS query, encoded once; each check patches its own ID in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsCheck {
    query: Box<[u8]>,
    expect_address: Option<IpAddr>,
}

impl DnsCheck {
    /// A recursive query for `name` of type `record`.
    pub fn new(name: &str, record: DnsType, expect_address: Option<IpAddr>) -> Result<DnsCheck, HealthError> {
        let bad = |source| HealthError::DnsQuery { name: name.to_string(), source };
        let mut packet = Packet::new_query(0);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        let qname = Name::new(name).map_err(bad)?;
        packet.questions.push(Question::new(qname, TYPE::from(record.code()).into(), CLASS::IN.into(), false));
        let query = packet.build_bytes_vec().map_err(bad)?.into();
        Ok(DnsCheck { query, expect_address })
    }

    /// The query with ID `id`.
    fn query(&self, id: u16) -> Vec<u8> {
        let mut q = self.query.to_vec();
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// `None` for a datagram that is not the answer to query `id` (it is
    /// ignored, as a resolver would); else the result.
    fn judge(&self, reply: &[u8], id: u16) -> Option<Result<(), Failure>> {
        let Ok(packet) = Packet::parse(reply) else { return Some(Err(Failure::BadDnsReply)) };
        if packet.id() != id || !packet.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        // The header's RCODE nibble; NOERROR is 0.
        let rcode = reply[3] & 0x0f;
        if rcode != 0 {
            return Some(Err(Failure::DnsRcode(rcode)));
        }
        let Some(want) = self.expect_address else { return Some(Ok(())) };
        let found = packet.answers.iter().any(|rr| match &rr.rdata {
            RData::A(a) => IpAddr::from(a.address.to_be_bytes()) == want,
            RData::AAAA(a) => IpAddr::from(a.address.to_be_bytes()) == want,
            _ => false,
        });
        Some(if found { Ok(()) } else { Err(Failure::DnsAddressMissing) })
    }
}

impl DatagramCheck {
    fn request(&self, id: u16) -> std::borrow::Cow<'_, [u8]> {
        match self {
            DatagramCheck::Udp { payload, .. } => payload[..].into(),
            DatagramCheck::Dns(d) => d.query(id).into(),
        }
    }

    fn judge(&self, reply: &[u8], id: u16) -> Option<Result<(), Failure>> {
        match self {
            DatagramCheck::Udp { expect: None, .. } => Some(Ok(())),
            DatagramCheck::Udp { expect: Some(e), .. } => Some(if reply.starts_with(e) { Ok(()) } else { Err(Failure::UnexpectedReply) }),
            DatagramCheck::Dns(d) => d.judge(reply, id),
        }
    }
}

/// The sockets in flight, by slot (also the epoll token), each with the ID
/// its check sent; one receive buffer for all (replies are read one at a
/// time).
pub struct Datagrams {
    socks: Vec<Option<(OwnedFd, u16)>>,
    buf: Box<[u8]>,
}

impl Datagrams {
    pub fn new(slots: usize) -> Datagrams {
        Datagrams { socks: (0..slots).map(|_| None).collect(), buf: Box::default() }
    }

    /// Sends `slot`'s request to `to`; `id` tells this check's answer from
    /// a late one to an earlier check.
    pub fn start(&mut self, slot: usize, to: SocketAddr, check: &DatagramCheck, id: u16, poller: &Poller) -> Result<(), Failure> {
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_REPLY].into();
        }
        let fd = sock::socket(to.is_ipv6(), libc::SOCK_DGRAM, 0)?;
        sock::connect(&fd, to)?;
        sock::write(&fd, &check.request(id))?;
        poller.add(&fd, slot as u64, Interest::Read)?;
        self.socks[slot] = Some((fd, id));
        Ok(())
    }

    /// `slot`'s socket is readable: the result once a reply decides it.
    pub fn ready(&mut self, slot: usize, check: &DatagramCheck) -> Option<Result<(), Failure>> {
        let (fd, id) = self.socks.get(slot)?.as_ref()?;
        let result = loop {
            match sock::read(fd, &mut self.buf) {
                Ok(n) => {
                    if let Some(r) = check.judge(&self.buf[..n], *id) {
                        break r;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => break Err(e.into()),
            }
        };
        self.socks[slot] = None;
        Some(result)
    }

    /// Drops `slot`'s socket (timed out).
    pub fn abandon(&mut self, slot: usize) {
        self.socks[slot] = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with `rcode` and A records `addrs`, as a
    /// server would build it.
    fn answer(query: &[u8], rcode: u8, addrs: &[[u8; 4]]) -> Vec<u8> {
        let q = Packet::parse(query).unwrap();
        let mut reply = Packet::new_reply(q.id());
        reply.questions = q.questions.clone();
        for a in addrs {
            let rdata = RData::A(simple_dns::rdata::A { address: u32::from_be_bytes(*a) });
            reply.answers.push(simple_dns::ResourceRecord::new(q.questions[0].qname.clone(), CLASS::IN, 60, rdata));
        }
        let mut bytes = reply.build_bytes_vec().unwrap();
        bytes[3] = (bytes[3] & 0xf0) | rcode;
        bytes
    }

    #[test]
    fn dns_answers_are_judged_by_rcode_and_address() {
        let want: IpAddr = "198.18.5.5".parse().unwrap();
        let check = DnsCheck::new("www.lab.test", DnsType::A, Some(want)).unwrap();
        let q = check.query(7);
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(check.judge(&answer(&q, 0, &[[198, 18, 9, 9], [198, 18, 5, 5]]), 7), Some(Ok(())));
        assert_eq!(check.judge(&answer(&q, 0, &[[198, 18, 9, 9]]), 7), Some(Err(Failure::DnsAddressMissing)));
        assert_eq!(check.judge(&answer(&q, 3, &[]), 7), Some(Err(Failure::DnsRcode(3))));
        // Another query's answer, or a query, is not this check's answer.
        assert_eq!(check.judge(&answer(&check.query(6), 0, &[[198, 18, 5, 5]]), 7), None);
        assert_eq!(check.judge(&q, 7), None);
        assert_eq!(check.judge(b"\x00\x07garbage", 7), Some(Err(Failure::BadDnsReply)));
        let any = DnsCheck::new("www.lab.test", DnsType::Txt, None).unwrap();
        assert_eq!(any.judge(&answer(&any.query(1), 0, &[]), 1), Some(Ok(())));
    }

    #[test]
    fn udp_replies_must_begin_with_the_expected_bytes() {
        let check = DatagramCheck::Udp { payload: (*b"ping").into(), expect: Some((*b"pong").into()) };
        assert_eq!(check.judge(b"pong 1", 0), Some(Ok(())));
        assert_eq!(check.judge(b"ping", 0), Some(Err(Failure::UnexpectedReply)));
        let any = DatagramCheck::Udp { payload: (*b"ping").into(), expect: None };
        assert_eq!(any.judge(b"", 0), Some(Ok(())));
    }
}
