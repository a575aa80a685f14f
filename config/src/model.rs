//! The validated configuration: fully typed, every default filled in,
//! every relative path resolved. The control plane converts it into the
//! engine's services without checking it again, and diffs two of them on
//! reload (hence `PartialEq` throughout).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::time::Duration;

use fulcrum_dataplane::wire::IpProtocol;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: Daemon,
    pub topology: Topology,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub plugins: Plugins,
    /// In file order.
    pub vips: Vec<Vip>,
    /// Flow sync with the other balancer of a pair; `None`: standalone.
    pub sync: Option<Sync>,
    /// Announcing the VIPs to routers through a BGP speaker; `None`: the
    /// VIPs are routed to this balancer some other way.
    pub bgp: Option<Bgp>,
}

/// `[plugins]`: what compiling one plugin module may cost. Compiling runs
/// on a thread of its own, never on a worker or the control thread; these
/// bound how long a reload or `fulcrum plugin load` waits on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plugins {
    /// Largest `.wasm` file accepted, in bytes.
    pub max_module_bytes: u64,
    /// Most functions a module may define (compile time grows with them).
    pub max_functions: u32,
    /// Longest a compile may take before the load is refused.
    pub compile_timeout: Duration,
}

impl Plugins {
    /// The shipped plugins are 20-200 KiB and define at most a few hundred
    /// functions, compiled in 3-14 ms. 8 MiB refuses a wrong file before it
    /// is compiled; 10,000 functions compile in about a second (release
    /// build, one core); 5 s is far above that, short enough that a reload
    /// never waits long on a hostile module.
    pub const DEFAULT: Plugins = Plugins { max_module_bytes: 8 << 20, max_functions: 10_000, compile_timeout: Duration::from_secs(5) };
}

impl Default for Plugins {
    fn default() -> Plugins {
        Plugins::DEFAULT
    }
}

/// `[bgp]`: which speaker announces the VIPs, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    pub speaker: Speaker,
    /// The next hop the routes carry; `None`: the speaker's own address
    /// on the session ("self").
    pub next_hop: Option<IpAddr>,
    /// How long the daemon may leave the speaker's helper without an
    /// answer before the helper takes it for hung and withdraws every VIP.
    pub timeout: Duration,
    /// The full-NAT source addresses this node opens new flows from and
    /// announces as their best route; the VIPs' other SNAT addresses are
    /// its peers', announced here as a backup for when their owner is
    /// gone. Empty: every address is this node's, none is announced.
    pub snat_own: Vec<IpAddr>,
}

/// The BGP speakers fulcrum drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// ExaBGP runs `fulcrum bgp exabgp` as an API process and reads its
    /// `announce route` / `withdraw route` lines.
    ExaBgp,
}

/// `[sync]`: where this balancer sends its flows and hears its peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sync {
    /// Local address and port the sync socket binds (and sends from).
    pub listen: SocketAddr,
    /// Peers sent to by unicast, each an address and port.
    pub peers: Vec<SocketAddr>,
    /// Or one IPv4 multicast group (sent to on `listen`'s port, joined on
    /// the interface holding `listen`'s address).
    pub group: Option<std::net::Ipv4Addr>,
    /// Shared by the pair: authenticates every datagram (HMAC-SHA256).
    pub key: Vec<u8>,
    /// The role the daemon starts in, until `fulcrum ha role` says
    /// otherwise.
    pub role: HaRole,
}

/// What a balancer of a pair does with VIP traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HaRole {
    /// Forwards the VIPs' traffic and sends its flows to the peer.
    Master,
    /// Keeps the peer's flows warm and forwards nothing for the VIPs.
    #[default]
    Backup,
    /// Like backup: keepalived saw a fault (a tracked script or process).
    Fault,
}

impl Config {
    /// Every plugin file named: the VIP, the field ("scheduler",
    /// "health.policy") and the path.
    pub fn plugins(&self) -> impl Iterator<Item = (&Vip, &'static str, &PathBuf)> {
        self.vips.iter().flat_map(|v| {
            let scheduler = match &v.scheduler {
                Scheduler::Plugin(p) => Some((v, "scheduler", p)),
                Scheduler::Maglev => None,
            };
            let policy = v.health.as_ref().and_then(|h| h.plugin.as_ref()).map(|p| (v, "health.policy", p));
            scheduler.into_iter().chain(policy)
        })
    }

    /// Every CA file an https check names: the VIP and the path (once per
    /// backend that uses it).
    pub fn ca_files(&self) -> impl Iterator<Item = (&Vip, &PathBuf)> {
        self.vips.iter().flat_map(|v| {
            v.backends.iter().filter_map(move |b| match &b.check.as_ref()?.probe {
                Probe::Http(HttpProbe { tls: Some(Tls { verify: TlsVerify::CaFile(path), .. }), .. }) => Some((v, path)),
                _ => None,
            })
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// Absolute, and short enough for a Unix socket address.
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Absolute: the runtime changes to the backends (`Overlay`), kept
    /// across reloads and restarts.
    pub state_file: PathBuf,
    pub xdp_mode: XdpMode,
    pub poll: Poll,
    pub workers: Workers,
    /// On SIGTERM: withdraw the VIPs, keep forwarding until their traffic
    /// stops or this long, then exit; `None`: SIGTERM exits at once.
    pub shutdown_grace: Option<Duration>,
}

/// How the XDP program that steers frames to the AF_XDP sockets attaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver; fails if the driver lacks XDP support.
    Native,
    /// In the kernel's generic (skb) path: works everywhere, slower.
    Generic,
    /// Native, falling back to generic.
    #[default]
    Auto,
}

/// How a worker waits for frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Poll {
    /// Poll while frames come; after an empty round, sleep in `poll(2)`
    /// until a frame or 1 ms passes.
    #[default]
    Adaptive,
    /// Never sleep: spin on the rings, with the kernel's preferred busy
    /// polling of the sockets where the driver has it. Lowest latency;
    /// each worker takes a whole core.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workers {
    /// The daemon decides (one per receive queue it binds).
    Auto,
    /// This many workers, placed by the scheduler of the OS.
    Count(NonZeroU16),
    /// One worker pinned to each of these CPUs (distinct).
    Pinned(Vec<u16>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One interface faces clients and backends alike (full-NAT, DSR and
    /// tunnels return traffic without routing it through the balancer).
    OneArm(Interface),
    /// The balancer is the backends' router: clients on one side, backends
    /// on the other (the two names differ).
    Inline { client: Interface, server: Interface },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// A valid Linux interface name (1 to 15 bytes).
    pub name: String,
    /// `None`: the device's own MTU.
    pub mtu: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections_per_worker: u32,
    /// Half-open (SYN seen) entries one worker keeps per dsr or tunnel
    /// VIP; beyond it SYNs are forwarded by Maglev without an entry.
    pub half_open_per_vip: u32,
    /// Half-open entries one worker holds for a nat or full-nat VIP with
    /// `syn_proxy = "auto"` from which on its SYN proxy engages.
    pub syn_proxy_above: u32,
    pub snat_ports: PortRange,
}

/// Inclusive; `first` is at least 1 and at most `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// How many ports: at least 1.
    pub fn count(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Idle timeouts of connection-table entries, each between 1s and 7 days
/// (so they fit the engine's u32 milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    /// How long a full-NAT source port is held back from the backend its
    /// flow went to after the flow ended (the backend's TIME_WAIT).
    pub snat_reuse: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    pub protocol: Protocol,
    /// 0: every port.
    pub port: u16,
    pub mode: Mode,
    pub scheduler: Scheduler,
    /// Off for every VIP but TCP ones in nat and full-nat modes, where it
    /// is `Auto` unless set.
    pub syn_proxy: SynProxy,
    pub persistence: Option<Persistence>,
    /// `Some` exactly when backends are health checked; then every
    /// backend's `check` is `Some`.
    pub health: Option<HealthPolicy>,
    /// In file order; no two with the same address and effective port.
    pub backends: Vec<Backend>,
}

impl Vip {
    /// "198.18.0.100:80/tcp" or "[2001:db8::1]:*/udp", as in messages.
    pub fn name(&self) -> String {
        vip_name(self.address, self.protocol, self.port)
    }
}

pub(crate) fn vip_name(address: IpAddr, protocol: Protocol, port: u16) -> String {
    fulcrum_dataplane::services::vip_name(address, protocol.into(), port)
}

impl From<Protocol> for IpProtocol {
    fn from(p: Protocol) -> IpProtocol {
        match p {
            Protocol::Tcp => IpProtocol::TCP,
            Protocol::Udp => IpProtocol::UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a VIP forwards. Every address in it is of the VIP's family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// DNAT; backends route replies back through the balancer.
    Nat,
    /// DNAT plus SNAT to one of `snat` (1 to 64 addresses, each once):
    /// balancer addresses that are no VIP's.
    FullNat { snat: Vec<IpAddr> },
    /// L2 direct server return: only the MACs change.
    Dsr,
    /// IP-in-IP to the backend; outer sources taken from `source`.
    Ipip { source: Prefix },
    /// GUE (variant 1, UDP to `port`) to the backend; outer sources taken
    /// from `source`.
    Gue { source: Prefix, port: NonZeroU16 },
}

/// An address prefix; the bits after `len` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Native consistent hashing (Maglev, M = 65537).
    Maglev,
    /// A WebAssembly scheduler; the path is absolute or relative to the
    /// working directory, already resolved against the config file's.
    Plugin(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub kind: PersistenceKind,
    /// How long an idle client keeps its backend.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistenceKind {
    /// A client (source address) keeps its backend across connections.
    SourceIp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    pub on_down: OnDown,
    /// A WebAssembly health policy replacing the built-in rise/fall one
    /// (path resolved as for `Scheduler::Plugin`).
    pub plugin: Option<PathBuf>,
}

/// When a VIP answers SYNs with SYN cookies itself (nat and full-nat TCP
/// VIPs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynProxy {
    Off,
    /// While its half-open flows reach `limits.syn_proxy_above` on a
    /// worker and as long as most cookies then go unanswered.
    Auto,
    Always,
}

/// What happens to the established flows of a backend that goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDown {
    /// They stay on it (it may still answer them).
    #[default]
    Keep,
    /// The client gets a TCP RST at its next packet (TCP VIPs only).
    Reset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// 0: the port the client connected to.
    pub port: u16,
    /// 0 drains: no new flows, established ones continue.
    pub weight: u16,
    /// A static neighbour entry (unicast, not all zero).
    pub mac: Option<[u8; 6]>,
    /// The VIP's check with this backend's overrides, resolved.
    pub check: Option<HealthCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The backend's own address unless overridden.
    pub address: IpAddr,
    pub probe: Probe,
    /// The probe is addressed to the VIP (and its port) and sent through
    /// the data path, as a client's packets are (dsr, ipip and gue VIPs;
    /// kind tcp-half-open, or icmp): a backend that would drop them fails.
    pub through_vip: bool,
    /// `timeout` < `interval`.
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to go up, failures to go down; both >= 1.
    pub rise: u8,
    pub fall: u8,
}

/// What a check sends and expects. Ports are the backend's serving port
/// unless overridden, never 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// ICMP or ICMPv6 echo.
    Icmp,
    /// Three-way handshake, then FIN.
    TcpConnect { port: u16 },
    /// SYN, expect SYN-ACK, answer RST.
    TcpHalfOpen { port: u16 },
    /// GET `path` (over TLS when `tls` is set); up when the status is in
    /// `status` and, if `content` is set (kinds http-content and
    /// https-content), the body contains it.
    Http(HttpProbe),
    /// `payload` in one datagram; up when a reply comes and, if `expect`
    /// is set, begins with it.
    Udp { port: u16, payload: Vec<u8>, expect: Option<Vec<u8>> },
    /// A DNS query over UDP; up when the answer's rcode is NOERROR and, if
    /// `expect_address` is set, that address is among the answers.
    Dns { port: u16, name: String, record: DnsType, expect_address: Option<IpAddr> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub port: u16,
    pub path: String,
    pub status: StatusRange,
    pub content: Option<String>,
    /// The Host header; the checked address and port when `None`.
    pub host: Option<String>,
    pub tls: Option<Tls>,
}

/// How an https check speaks TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// Sent as SNI and verified against the certificate; without it no SNI
    /// is sent and the certificate must name the checked address.
    pub server_name: Option<String>,
    pub verify: TlsVerify,
}

/// What the server's certificate is verified against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlsVerify {
    /// The system's trusted roots.
    SystemRoots,
    /// The PEM certificates of this file (resolved as plugin paths are).
    CaFile(PathBuf),
    /// Not verified (`verify = false`): any certificate passes, the
    /// handshake's signatures are still checked.
    Off,
}

/// The record type a DNS check asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsType {
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Ptr,
    Soa,
    Srv,
    Txt,
}

impl DnsType {
    /// The type's number on the wire (RFC 1035, 3596, 2782).
    pub fn code(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Ptr => 12,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
            DnsType::Srv => 33,
        }
    }
}

/// HTTP status codes, inclusive, within 100..=599.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    pub first: u16,
    pub last: u16,
}

/// An enum written as one of a fixed set of words; one table per enum
/// serves parsing, messages and `Display`.
pub(crate) trait Keyword: Copy + PartialEq + 'static {
    /// Every variant with its word, in the order messages list them.
    const ALL: &[(&str, Self)];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, v)| *v == self).map_or("", |(word, _)| word)
    }

    fn from_name(word: &str) -> Option<Self> {
        Self::ALL.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
    }

    /// "\"tcp\", \"udp\"", for messages.
    fn choices() -> String {
        Self::ALL.iter().map(|(word, _)| format!("{word:?}")).collect::<Vec<_>>().join(", ")
    }
}

impl Keyword for XdpMode {
    const ALL: &[(&str, Self)] = &[("native", XdpMode::Native), ("generic", XdpMode::Generic), ("auto", XdpMode::Auto)];
}

impl Keyword for Poll {
    const ALL: &[(&str, Self)] = &[("adaptive", Poll::Adaptive), ("busy", Poll::Busy)];
}

impl Keyword for Protocol {
    const ALL: &[(&str, Self)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
}

impl Keyword for PersistenceKind {
    const ALL: &[(&str, Self)] = &[("source-ip", PersistenceKind::SourceIp)];
}

impl Keyword for SynProxy {
    const ALL: &[(&str, Self)] = &[("off", SynProxy::Off), ("auto", SynProxy::Auto), ("always", SynProxy::Always)];
}

impl Keyword for HaRole {
    const ALL: &[(&str, Self)] = &[("master", HaRole::Master), ("backup", HaRole::Backup), ("fault", HaRole::Fault)];
}

impl HaRole {
    /// "master", "backup", "fault".
    pub fn as_str(self) -> &'static str {
        self.name()
    }

    /// Parses "master", "backup" or "fault".
    pub fn parse(word: &str) -> Option<HaRole> {
        HaRole::from_name(word)
    }
}

impl Keyword for Speaker {
    const ALL: &[(&str, Self)] = &[("exabgp", Speaker::ExaBgp)];
}

impl Keyword for DnsType {
    const ALL: &[(&str, Self)] = &[
        ("A", DnsType::A),
        ("AAAA", DnsType::Aaaa),
        ("CNAME", DnsType::Cname),
        ("MX", DnsType::Mx),
        ("NS", DnsType::Ns),
        ("PTR", DnsType::Ptr),
        ("SOA", DnsType::Soa),
        ("SRV", DnsType::Srv),
        ("TXT", DnsType::Txt),
    ];
}

impl fmt::Display for DnsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Keyword for OnDown {
    const ALL: &[(&str, Self)] = &[("keep", OnDown::Keep), ("reset", OnDown::Reset)];
}
