//! Helpers shared by the integration tests: one TCP VIP on port 80 over
//! backends 198.18.1.i, whose MAC ends in i, and frames from clients.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::{Backend, Engine, EngineConfig, Interface, Mode, Packet, Services, SynProxy, Verdict, VipSpec};

use crate::frame::{LB_MAC, PacketBuilder};

pub const VIP: &str = "198.18.0.100";
pub const CLIENT: &str = "198.18.0.1";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn backend(i: u8, weight: u32) -> Backend {
    Backend { addr: IpAddr::from([198, 18, 1, i]), port: 0, weight, up: true, next_hop: [2, 0, 0, 0, 1, i], iface: 0 }
}

/// Services with one TCP VIP on port 80 over `backends` (ids in order).
pub fn services(mode: Mode, backends: &[Backend]) -> Arc<Services> {
    let ids = (0..backends.len() as u16).collect();
    let vip =
        VipSpec { addr: ip(VIP), proto: IpProtocol::TCP, port: 80, mode, backends: ids, persistence_ms: None, reset_on_down: false, syn_proxy: SynProxy::Off };
    Arc::new(Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], backends.iter().copied().map(Some).collect()).unwrap())
}

pub fn engine(cfg: EngineConfig, s: Arc<Services>) -> Engine {
    Engine::new(EngineConfig { table_capacity: 4096, ..cfg }, s).unwrap()
}

pub fn frame(client_port: u16, flags: u8) -> Vec<u8> {
    frame_from(ip(CLIENT), client_port, flags)
}

pub fn frame_from(client: IpAddr, client_port: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::tcp(client, client_port, ip(VIP), 80, flags).frame()
}

/// Runs one frame through the engine at `now_ms` (on interface 0, with
/// 256 bytes of headroom for encapsulation); the verdict and the frame as
/// it leaves.
pub fn process(e: &mut Engine, f: &[u8], now_ms: u32) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 256 + f.len().max(2048) + 256];
    buf[256..256 + f.len()].copy_from_slice(f);
    let mut batch = [Packet::new(&mut buf, 256, f.len(), 0)];
    e.process(now_ms, &mut batch);
    (batch[0].verdict, batch[0].frame().to_vec())
}

/// Sends one frame; returns the verdict and the backend it went to (by the
/// last byte of the destination MAC).
pub fn send(e: &mut Engine, f: &[u8]) -> (Verdict, u8) {
    let mut buf = vec![0u8; 2048];
    buf[128..128 + f.len()].copy_from_slice(f);
    let mut batch = [Packet::new(&mut buf, 128, f.len(), 0)];
    e.process(0, &mut batch);
    let out = batch[0].frame();
    (batch[0].verdict, out[5])
}

/// The backend a client packet went to; it must have been forwarded.
pub fn backend_of(e: &mut Engine, client_port: u16, flags: u8) -> u8 {
    let (v, b) = send(e, &frame(client_port, flags));
    assert_eq!(v, Verdict::Tx(0));
    b
}
