//! No input makes the engine panic, and what comes out keeps the
//! invariants `common::process_checked` lists: arbitrary bytes and mutated
//! valid frames, in batches with random ingress interfaces, buffer room and
//! clock, through an engine of every mode.
//!
//! Cases default to 64 (two seconds or so in debug); set PROPTEST_CASES for a
//! longer run. The fuzz target (`dataplane/fuzz`) runs the same harness; its
//! seed corpus is made by `write_fuzz_corpus` below and replayed here.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{Batch, Frame, Kind, MODES, OWN_SNAT_PORTS, Recipe, Shape, Traffic, drive};
use fulcrum_dataplane::DropReason;
use fulcrum_dataplane::stats::Stats;
use fulcrum_dataplane::wire::tcp::{ACK, FIN, RST, SYN};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// How a frame of generated traffic comes to be.
#[derive(Clone, Debug)]
enum Source {
    Bytes(Vec<u8>),
    Built(Recipe, Vec<Mutation>),
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
}

impl Source {
    fn bytes(&self) -> Vec<u8> {
        let (recipe, mutations) = match self {
            Source::Bytes(b) => return b.clone(),
            Source::Built(r, m) => (r, m),
        };
        let mut f = recipe.frame();
        for m in mutations {
            match m {
                Mutation::Set(at, byte) if !f.is_empty() => {
                    let at = at.index(f.len());
                    f[at] = *byte;
                }
                Mutation::Set(..) => {}
                Mutation::Truncate(at) => f.truncate(at.index(f.len() + 1)),
                Mutation::Extend(more) => f.extend(more),
            }
        }
        f
    }
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let kind = prop_oneof![
        4 => Just(Kind::ToVip),
        1 => Just(Kind::ToAlienVip),
        2 => Just(Kind::Reply),
        2 => Just(Kind::ReplyToSnat),
        2 => Just(Kind::IcmpError),
        1 => Just(Kind::Echo),
        1 => Just(Kind::Stray),
    ];
    // Few client ports, so that flows repeat and replies find them.
    let port = prop_oneof![4 => 40000..40004u16, 1 => any::<u16>()];
    let vip_port = prop_oneof![3 => Just(80u16), 1 => Just(443), 1 => Just(53), 1 => any::<u16>()];
    // Mostly the SNAT ports this worker owns.
    let snat_port = prop_oneof![3 => OWN_SNAT_PORTS, 1 => 1020..1040u16];
    let flags = prop_oneof![Just(SYN), Just(ACK), Just(SYN | ACK), Just(FIN | ACK), Just(RST), any::<u8>()];
    let payload = prop_oneof![4 => 0..64usize, 1 => 0..1500usize];
    let ttl = prop_oneof![4 => Just(64u8), 1 => 0..3u8];
    let shape = prop_oneof![
        6 => Just(Shape::Plain),
        1 => (0..10u8).prop_map(Shape::Ext),
        1 => any::<bool>().prop_map(|first| Shape::Fragment { first }),
    ];
    (any::<bool>(), kind, any::<bool>(), 0..4u8, port, vip_port, snat_port, flags, payload, ttl, prop::bool::weighted(0.2), shape).prop_map(
        |(v6, kind, tcp, host, port, vip_port, snat_port, flags, payload, ttl, vlan, shape)| Recipe {
            v6,
            kind,
            tcp,
            host,
            port,
            vip_port,
            snat_port,
            flags,
            payload,
            ttl,
            vlan,
            shape,
        },
    )
}

fn source() -> impl Strategy<Value = Source> {
    let mutation = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
    ];
    // Most built frames stay valid, to reach past the parser.
    let mutations = prop_oneof![3 => Just(Vec::new()), 2 => vec(mutation, 1..4)];
    prop_oneof![
        1 => vec(any::<u8>(), 0..1600).prop_map(Source::Bytes),
        4 => (recipe(), mutations).prop_map(|(r, m)| Source::Built(r, m)),
    ]
}

/// A frame with its ingress interface and buffer room.
type FrameGen = (Source, u8, usize, usize);

fn frame() -> impl Strategy<Value = FrameGen> {
    // Every engine has interfaces 0 and 1; any other ingress is a counted
    // drop (the engine once panicked on it: see `unconfigured_ingress`).
    let ingress = prop_oneof![8 => 0..2u8, 1 => 2..4u8, 1 => any::<u8>()];
    (source(), ingress, 0..300usize, 0..300usize)
}

fn traffic() -> impl Strategy<Value = (u32, Vec<(u32, Vec<FrameGen>)>)> {
    (any::<u32>(), vec((0..3000u32, vec(frame(), 1..64)), 1..6))
}

fn build((start_ms, batches): &(u32, Vec<(u32, Vec<FrameGen>)>)) -> Traffic {
    let batches = batches
        .iter()
        .map(|(advance_ms, frames)| Batch {
            advance_ms: *advance_ms,
            frames: frames
                .iter()
                .map(|(s, ingress, headroom, tailroom)| Frame { bytes: s.bytes(), ingress: *ingress, headroom: *headroom, tailroom: *tailroom })
                .collect(),
        })
        .collect();
    Traffic { start_ms: *start_ms, batches }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn no_input_panics_or_breaks_invariants(t in traffic()) {
        let traffic = build(&t);
        for mode in 0..MODES.len() {
            drive(mode, &traffic);
        }
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/process")
}

/// The committed seed corpus runs clean (so will fixed crash inputs
/// added to it).
#[test]
fn fuzz_corpus_replays_clean() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let (mode, traffic) = Traffic::decode(&std::fs::read(entry.unwrap().path()).unwrap());
        drive(mode, &traffic);
        n += 1;
    }
    assert!(n >= MODES.len(), "corpus has {n} files");
}

#[test]
fn fuzz_format_round_trips() {
    for (name, t) in seed_traffic() {
        let (mode, back) = Traffic::decode(&t.encode(2));
        assert_eq!(mode, 2);
        assert_eq!(back.start_ms, t.start_ms, "{name}");
        assert_eq!(back.batches.len(), t.batches.len(), "{name}");
        for (a, b) in back.batches.iter().zip(&t.batches) {
            assert_eq!(a.advance_ms, b.advance_ms, "{name}");
            let frames = |b: &Batch| b.frames.iter().map(|f| (f.bytes.clone(), f.ingress, f.headroom, f.tailroom)).collect::<Vec<_>>();
            assert_eq!(frames(a), frames(b), "{name}");
        }
    }
}

/// An ingress index that names no interface is a counted drop. The fuzz
/// target found the engine indexing `Services::interfaces` with it
/// unchecked; these are its two minimised crashes.
fn unconfigured_ingress(mode: usize, frames: &[(Recipe, u8)]) -> Arc<Stats> {
    let frames = frames.iter().map(|(r, ingress)| Frame { bytes: r.frame(), ingress: *ingress, headroom: 64, tailroom: 0 }).collect();
    drive(mode, &Traffic { start_ms: 0, batches: vec![Batch { advance_ms: 0, frames }] })
}

/// Once `Flows::reverse` sent NAT return traffic out of the ingress the
/// forward packet came in on, unchecked. A UDP datagram on ingress 2 would
/// open a full-NAT flow; the backend's replies to its SNAT port follow.
#[test]
fn nat_traffic_on_an_unconfigured_ingress_is_dropped() {
    let udp = Recipe { tcp: false, vip_port: 53, ..Recipe::tcp(false, 5000, 0) };
    let reply = |host| Recipe { kind: Kind::ReplyToSnat, snat_port: OWN_SNAT_PORTS.start, host, ..udp.clone() };
    let stats = unconfigured_ingress(1, &[(udp.clone(), 2), (reply(0), 0), (reply(1), 0)]);
    assert_eq!(stats.drops.get(DropReason::UnknownInterface), 1);
}

/// Once `Flows::send_to_backend` took the source MAC of an ICMP "too big"
/// answer from the ingress interface, unchecked.
#[test]
fn a_too_big_frame_on_an_unconfigured_ingress_is_dropped() {
    let big = Recipe { payload: 1460, ..Recipe::tcp(false, 40000, SYN) };
    let stats = unconfigured_ingress(3, &[(big, 2)]);
    assert_eq!(stats.drops.get(DropReason::UnknownInterface), 1);
}

/// Regenerates the seed corpus of the fuzz target:
/// `cargo test -p fulcrum-dataplane --test no_panic -- --ignored write_fuzz_corpus`.
/// Every scenario of `seed_traffic` for every mode, one file each.
#[test]
#[ignore = "writes dataplane/fuzz/corpus/process"]
fn write_fuzz_corpus() {
    let dir = corpus_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (mode, mode_name) in MODES.iter().enumerate() {
        for (name, t) in seed_traffic() {
            std::fs::write(dir.join(format!("{mode_name}-{name}")), t.encode(mode)).unwrap();
        }
    }
}

/// Frames of one batch, with room for encapsulation in front.
fn batch(advance_ms: u32, frames: impl IntoIterator<Item = Vec<u8>>) -> Batch {
    Batch { advance_ms, frames: frames.into_iter().map(|bytes| Frame { bytes, ingress: 0, headroom: 64, tailroom: 0 }).collect() }
}

fn one_batch(recipes: &[Recipe]) -> Traffic {
    Traffic { start_ms: 1000, batches: vec![batch(0, recipes.iter().map(Recipe::frame))] }
}

/// The seed scenarios: small, each aimed at one part of the packet path.
fn seed_traffic() -> Vec<(&'static str, Traffic)> {
    let tcp = Recipe::tcp;
    let with = |r: Recipe, f: &dyn Fn(&mut Recipe)| {
        let mut r = r;
        f(&mut r);
        r
    };
    let handshake = |v6| {
        vec![
            tcp(v6, 40000, SYN),
            with(tcp(v6, 40000, SYN | ACK), &|r| r.kind = Kind::Reply),
            with(tcp(v6, 40000, SYN | ACK), &|r| (r.kind, r.snat_port) = (Kind::ReplyToSnat, OWN_SNAT_PORTS.start)),
            tcp(v6, 40000, ACK),
            with(tcp(v6, 40000, ACK), &|r| r.payload = 100),
            tcp(v6, 40000, FIN | ACK),
            with(tcp(v6, 40000, FIN | ACK), &|r| r.kind = Kind::Reply),
            tcp(v6, 40001, RST),
        ]
    };
    let udp = |v6| {
        let u = with(tcp(v6, 5000, 0), &|r| (r.tcp, r.vip_port, r.payload) = (false, 53, 20));
        vec![
            u.clone(),
            with(u.clone(), &|r| r.vip_port = 9999),
            with(u.clone(), &|r| r.kind = Kind::Reply),
            with(u, &|r| (r.kind, r.snat_port) = (Kind::ReplyToSnat, OWN_SNAT_PORTS.start + 1)),
        ]
    };
    let all = |v6: bool, f: &dyn Fn(bool) -> Vec<Recipe>| [f(v6), f(!v6)].concat();
    let mut s = vec![
        ("tcp-v4", one_batch(&handshake(false))),
        ("tcp-v6", one_batch(&handshake(true))),
        ("udp", one_batch(&all(false, &udp))),
        ("vlan", one_batch(&all(false, &|v6| handshake(v6).into_iter().take(3).map(|r| with(r, &|r| r.vlan = true)).collect()))),
        ("ext-headers", one_batch(&all(false, &|v6| [1, 3, 9].map(|n| with(tcp(v6, 40002, SYN), &|r| r.shape = Shape::Ext(n))).to_vec()))),
        (
            "icmp-errors",
            one_batch(&all(false, &|v6| {
                let err = |flags| with(tcp(v6, 40000, flags), &|r| (r.kind, r.payload) = (Kind::IcmpError, 40));
                vec![tcp(v6, 40000, SYN), err(0), err(1), err(2), with(tcp(v6, 0, 0), &|r| r.kind = Kind::Echo)]
            })),
        ),
        (
            "fragments",
            one_batch(&all(false, &|v6| {
                let frag = |first, kind| with(tcp(v6, 40000, SYN), &|r| (r.shape, r.kind, r.payload) = (Shape::Fragment { first }, kind, 32));
                vec![frag(true, Kind::ToVip), frag(false, Kind::ToVip), frag(true, Kind::Stray)]
            })),
        ),
        (
            "truncated",
            Traffic {
                start_ms: 1000,
                batches: vec![batch(
                    0,
                    [(false, 0), (false, 10), (false, 14), (false, 20), (false, 33), (false, 40), (false, 53), (true, 54), (true, 60), (true, 73)].map(
                        |(v6, len)| {
                            let mut f = with(tcp(v6, 40000, SYN), &|r| r.payload = 8).frame();
                            f.truncate(len);
                            f
                        },
                    ),
                )],
            },
        ),
        (
            "too-big",
            Traffic {
                start_ms: 1000,
                batches: vec![Batch {
                    advance_ms: 0,
                    // IP packets of the MTU and just under what fits after
                    // encapsulation; then one without headroom.
                    frames: [(false, 1460, 64), (false, 1440, 64), (true, 1440, 64), (true, 1400, 64), (false, 100, 0)]
                        .map(|(v6, payload, headroom)| Frame {
                            bytes: with(tcp(v6, 40003, SYN), &|r| r.payload = payload).frame(),
                            ingress: 0,
                            headroom,
                            tailroom: 0,
                        })
                        .to_vec(),
                }],
            },
        ),
        (
            "expiry",
            // SYN state times out after 2 s, UDP after 5 s; the clock wraps.
            {
                let u = with(tcp(false, 5000, 0), &|r| r.tcp = false);
                let frames = || [tcp(false, 40000, SYN).frame(), u.frame()];
                let ack = tcp(false, 40000, ACK).frame();
                Traffic {
                    start_ms: u32::MAX - 3000,
                    batches: vec![batch(0, frames()), batch(2500, [ack.clone(), u.frame()]), batch(6000, frames()), batch(100, [ack])],
                }
            },
        ),
        (
            "churn",
            // More flows than the 16-entry table holds, and for full-NAT
            // more than the worker's 4 source ports to one backend.
            one_batch(&(0..40).map(|i| with(tcp(i % 2 == 1, 41000 + i, SYN), &|r| r.host = (i % 2) as u8)).collect::<Vec<_>>()),
        ),
        ("not-balanced", {
            let mut frames: Vec<Vec<u8>> = [Kind::Stray, Kind::ToAlienVip, Kind::Echo]
                .iter()
                .flat_map(|&k| [false, true].map(|v6| with(tcp(v6, 40000, SYN), &|r| r.kind = k).frame()))
                .collect();
            frames.push(with(tcp(false, 40000, SYN), &|r| r.vip_port = 443).frame()); // only a draining backend
            frames.push(with(tcp(true, 40000, SYN), &|r| r.ttl = 1).frame());
            let mut arp = tcp(false, 0, 0).frame();
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            frames.push(arp);
            Traffic { start_ms: 1000, batches: vec![batch(0, frames)] }
        }),
    ];
    // A flow opened from the server side (interface 1). No seed uses an
    // ingress without an interface while that panics the engine: a seed
    // must not crash, and the fuzzer reaches such bytes by itself.
    let mut server_side = one_batch(&handshake(false)[..2]);
    server_side.batches[0].frames[0].ingress = 1;
    s.push(("ingress", server_side));
    s
}
