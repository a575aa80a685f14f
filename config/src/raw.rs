//! The file as written: what serde reads before validation. serde matches
//! keys to fields and rejects unknown ones (with their span); every value
//! is kept as a spanned `Scalar` whose type, range and format `validate`
//! checks, so that a wrong value is that field's error (naming what was
//! expected) while the rest of its table is still checked. Each `[[vip]]`
//! and each `[[vip.backend]]` is deserialized on its own, so that one broken
//! entry cannot hide the errors of the others.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::model::Keyword;

pub(crate) type Field = Option<Spanned<Scalar>>;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([daemon])")]
pub(crate) struct RawDaemon {
    pub control_socket: Field,
    pub metrics_listen: Field,
    pub state_file: Field,
    pub xdp_mode: Field,
    pub poll: Field,
    pub workers: Field,
    pub cores: Field,
    pub shutdown_grace: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[interface]])")]
pub(crate) struct RawInterface {
    pub name: Field,
    pub role: Field,
    pub mtu: Field,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([limits])")]
pub(crate) struct RawLimits {
    pub connections_per_worker: Field,
    pub snat_ports: Field,
    pub half_open_per_vip: Field,
    pub syn_proxy_above: Field,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([sync])")]
pub(crate) struct RawSync {
    pub listen: Field,
    pub peers: Field,
    pub group: Field,
    pub key: Field,
    pub role: Field,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([bgp])")]
pub(crate) struct RawBgp {
    pub speaker: Field,
    pub next_hop: Field,
    pub timeout: Field,
    pub snat_own: Field,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([plugins])")]
pub(crate) struct RawPlugins {
    pub max_module_bytes: Field,
    pub max_functions: Field,
    pub compile_timeout: Field,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([timeouts])")]
pub(crate) struct RawTimeouts {
    pub tcp_syn: Field,
    pub tcp_established: Field,
    pub tcp_closing: Field,
    pub udp: Field,
    pub snat_reuse: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[vip]])")]
pub(crate) struct RawVip {
    pub address: Field,
    pub protocol: Field,
    pub port: Field,
    pub mode: Field,
    pub snat: Field,
    pub tunnel_source: Field,
    pub gue_port: Field,
    pub scheduler: Field,
    pub syn_proxy: Field,
    pub persistence: Option<Spanned<RawPersistence>>,
    pub health: Option<Spanned<RawHealth>>,
    /// Declared so that the schema here is whole (and serde's list of
    /// expected fields too); the entries are read one by one.
    #[serde(rename = "backend")]
    _backend: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like { kind = \"source-ip\", timeout = \"10m\" }")]
pub(crate) struct RawPersistence {
    pub kind: Field,
    pub timeout: Field,
}

/// A VIP's `health` table, or a backend's overrides of it: one shape, so
/// the two cannot drift apart; `validate` says which fields belong where.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([vip.health])")]
pub(crate) struct RawHealth {
    pub kind: Field,
    pub interval: Field,
    pub timeout: Field,
    pub rise: Field,
    pub fall: Field,
    pub path: Field,
    pub expect_status: Field,
    pub expect_content: Field,
    pub host: Field,
    pub sni: Field,
    pub verify: Field,
    pub ca_file: Field,
    pub payload: Field,
    pub payload_hex: Field,
    pub expect_reply: Field,
    pub expect_reply_hex: Field,
    pub query_name: Field,
    pub query_type: Field,
    pub expect_address: Field,
    pub address: Field,
    pub port: Field,
    pub on_down: Field,
    pub policy: Field,
    pub through_vip: Field,
}

impl RawHealth {
    /// `self` with every field that `over` sets replaced (spans included,
    /// so messages point at the line that set the value).
    pub fn overridden_by(&self, over: &RawHealth) -> RawHealth {
        let pick = |base: &Field, over: &Field| over.as_ref().or(base.as_ref()).cloned();
        RawHealth {
            kind: pick(&self.kind, &over.kind),
            interval: pick(&self.interval, &over.interval),
            timeout: pick(&self.timeout, &over.timeout),
            rise: pick(&self.rise, &over.rise),
            fall: pick(&self.fall, &over.fall),
            path: pick(&self.path, &over.path),
            expect_status: pick(&self.expect_status, &over.expect_status),
            expect_content: pick(&self.expect_content, &over.expect_content),
            host: pick(&self.host, &over.host),
            sni: pick(&self.sni, &over.sni),
            verify: pick(&self.verify, &over.verify),
            ca_file: pick(&self.ca_file, &over.ca_file),
            payload: pick(&self.payload, &over.payload),
            payload_hex: pick(&self.payload_hex, &over.payload_hex),
            expect_reply: pick(&self.expect_reply, &over.expect_reply),
            expect_reply_hex: pick(&self.expect_reply_hex, &over.expect_reply_hex),
            query_name: pick(&self.query_name, &over.query_name),
            query_type: pick(&self.query_type, &over.query_type),
            expect_address: pick(&self.expect_address, &over.expect_address),
            address: pick(&self.address, &over.address),
            port: pick(&self.port, &over.port),
            on_down: pick(&self.on_down, &over.on_down),
            policy: pick(&self.policy, &over.policy),
            through_vip: pick(&self.through_vip, &over.through_vip),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[vip.backend]])")]
pub(crate) struct RawBackend {
    pub address: Field,
    pub port: Field,
    pub weight: Field,
    pub mac: Field,
    pub health: Option<Spanned<RawHealth>>,
}

/// Interface roles; the topology follows from which are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    OneArm,
    Client,
    Server,
}

impl Keyword for Role {
    const ALL: &[(&str, Self)] = &[("one-arm", Role::OneArm), ("client", Role::Client), ("server", Role::Server)];
}

/// `mode`: what `model::Mode` is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModeName {
    Nat,
    FullNat,
    Dsr,
    Ipip,
    Gue,
}

impl Keyword for ModeName {
    const ALL: &[(&str, Self)] =
        &[("nat", ModeName::Nat), ("full-nat", ModeName::FullNat), ("dsr", ModeName::Dsr), ("ipip", ModeName::Ipip), ("gue", ModeName::Gue)];
}

/// `health.kind`: what `model::Probe` is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckKind {
    Icmp,
    TcpConnect,
    TcpHalfOpen,
    HttpStatus,
    HttpContent,
    HttpsStatus,
    HttpsContent,
    Udp,
    Dns,
}

impl Keyword for CheckKind {
    const ALL: &[(&str, Self)] = &[
        ("icmp", CheckKind::Icmp),
        ("tcp-connect", CheckKind::TcpConnect),
        ("tcp-half-open", CheckKind::TcpHalfOpen),
        ("http-status", CheckKind::HttpStatus),
        ("http-content", CheckKind::HttpContent),
        ("https-status", CheckKind::HttpsStatus),
        ("https-content", CheckKind::HttpsContent),
        ("udp", CheckKind::Udp),
        ("dns", CheckKind::Dns),
    ];
}

macro_rules! display_keyword {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}

display_keyword!(Role, ModeName, CheckKind);

/// A TOML value as written, before its type is checked.
#[derive(Clone, Debug)]
pub(crate) enum Scalar {
    Int(i64),
    Bool(bool),
    Text(String),
    List(Vec<Spanned<Scalar>>),
    /// Of a type no field takes; what it was, for messages.
    Other(&'static str),
}

impl fmt::Display for Scalar {
    /// What was found, for "..., got {}".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Bool(_) => f.write_str("a boolean"),
            Scalar::Text(s) => write!(f, "{s:?}"),
            Scalar::List(_) => f.write_str("an array"),
            Scalar::Other(what) => f.write_str(what),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other("an integer too large"), Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other("a float"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Scalar::List(items))
    }

    /// A table, or a date-time (which `toml` hands over as a map with one
    /// private key).
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        let mut what = "a table";
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with("$__toml_private") {
                what = "a date-time";
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Scalar::Other(what))
    }
}
