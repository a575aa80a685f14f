//! Runtime changes to the backends (`fulcrum backend add|remove|weight|
//! drain|undrain`) and the scheduler plugins loaded with `fulcrum plugin
//! load --persist`, kept beside the file rather than in it: the daemon
//! persists them in its state file (`daemon.state_file`) and lays them
//! over the file's text at start, at every reload and at every change.
//!
//! They are laid over the file's *document*, before validation, so that a
//! runtime backend is checked by exactly the code that checks one written
//! in the file (its VIP's family, mode and port rules, duplicates, health
//! checks resolved from the VIP's template). Their errors point at the
//! VIP's `[[vip]]` line and name the backend "set by `fulcrum backend`".

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::model::{Keyword, Protocol, vip_name};

/// The backends changed at runtime, in the order they were first changed,
/// and the VIPs' persisted scheduler plugins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub backends: Vec<BackendOverride>,
    /// They replace the file's `scheduler` of their VIP, as if written
    /// there: checked, loaded and reloaded as the file's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedulers: Vec<SchedulerOverride>,
}

/// A VIP's scheduler plugin, loaded and persisted at runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerOverride {
    /// The VIP as `Vip::name` writes it: "198.18.100.1:80/tcp".
    pub vip: String,
    /// Absolute.
    pub path: PathBuf,
}

/// One backend of one VIP as changed at runtime. A backend the file has
/// keeps every setting not overridden here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendOverride {
    /// The VIP as `Vip::name` writes it: "198.18.100.1:80/tcp".
    pub vip: String,
    pub address: IpAddr,
    /// 0: the client's port, as in the file.
    #[serde(default)]
    pub port: u16,
    /// Added at runtime: put in the pool when the file lacks it.
    #[serde(default)]
    pub added: bool,
    /// Removed at runtime: taken out of the pool when the file has it.
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub weight: Option<u16>,
    /// A static MAC for a backend added at runtime ("02:00:00:00:00:0b").
    #[serde(default)]
    pub mac: Option<String>,
    /// No new flows, whatever its weight, until undrained: the weight is
    /// kept for then.
    #[serde(default)]
    pub drained: bool,
}

impl BackendOverride {
    /// An override for this backend that changes nothing yet.
    pub fn new(vip: String, address: IpAddr, port: u16) -> BackendOverride {
        BackendOverride { vip, address, port, added: false, removed: false, weight: None, mac: None, drained: false }
    }

    /// Whether it still changes anything.
    pub fn is_empty(&self) -> bool {
        !self.added && !self.removed && self.weight.is_none() && self.mac.is_none() && !self.drained
    }

    /// "added, weight 3, drained", for `fulcrum status`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.added {
            parts.push("added".to_string());
        }
        if self.removed {
            parts.push("removed".to_string());
        }
        if let Some(w) = self.weight {
            parts.push(format!("weight {w}"));
        }
        if let Some(m) = &self.mac {
            parts.push(format!("mac {m}"));
        }
        if self.drained {
            parts.push("drained".to_string());
        }
        parts.join(", ")
    }

    fn is(&self, vip: &str, address: IpAddr, port: u16) -> bool {
        self.vip == vip && self.address == address && self.port == port
    }
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty() && self.schedulers.is_empty()
    }

    /// The persisted scheduler plugin of `vip`, if any.
    pub fn scheduler(&self, vip: &str) -> Option<&Path> {
        self.schedulers.iter().find(|s| s.vip == vip).map(|s| s.path.as_path())
    }

    /// Persists `path` as `vip`'s scheduler (`None`: back to the file's).
    pub fn set_scheduler(&mut self, vip: &str, path: Option<&Path>) {
        self.schedulers.retain(|s| s.vip != vip);
        if let Some(path) = path {
            self.schedulers.push(SchedulerOverride { vip: vip.to_string(), path: path.to_path_buf() });
        }
    }

    /// The override of a backend, if any.
    pub fn get(&self, vip: &str, address: IpAddr, port: u16) -> Option<&BackendOverride> {
        self.backends.iter().find(|b| b.is(vip, address, port))
    }

    /// Changes the override of a backend (created if missing) with `f`;
    /// one that then changes nothing is dropped.
    pub fn update(&mut self, vip: &str, address: IpAddr, port: u16, f: impl FnOnce(&mut BackendOverride)) {
        let i = match self.backends.iter().position(|b| b.is(vip, address, port)) {
            Some(i) => i,
            None => {
                self.backends.push(BackendOverride::new(vip.to_string(), address, port));
                self.backends.len() - 1
            }
        };
        f(&mut self.backends[i]);
        if self.backends[i].is_empty() {
            self.backends.remove(i);
        }
    }

    /// Each backend override as an inline TOML table of the fields it sets
    /// on its backend (address and port too, for one added at runtime), in
    /// order, then each scheduler's path as a TOML string: the values
    /// `apply` lays over the file, made by the TOML parser itself.
    pub(crate) fn snippets(&self) -> Vec<String> {
        let schedulers = self.schedulers.iter().map(|s| toml_string(&s.path.to_string_lossy()));
        self.backends
            .iter()
            .map(|o| {
                let mut fields = Vec::new();
                if o.added {
                    fields.push(format!("address = \"{}\"", o.address));
                    if o.port != 0 {
                        fields.push(format!("port = {}", o.port));
                    }
                }
                // A drained backend's own weight is kept for its undrain.
                match (o.drained, o.weight) {
                    (true, _) => fields.push("weight = 0".to_string()),
                    (false, Some(w)) => fields.push(format!("weight = {w}")),
                    (false, None) => {}
                }
                if let Some(m) = &o.mac {
                    fields.push(format!("mac = {}", toml_string(m)));
                }
                format!("{{ {} }}", fields.join(", "))
            })
            .chain(schedulers)
            .collect()
    }

    /// Lays the overrides (with their `snippets`) over the `[[vip]]`
    /// entries of a parsed file. Returns, per VIP entry, the indexes of
    /// the backend entries an override added or changed, for the
    /// validator's messages. Overrides of VIPs the file lacks, and of
    /// backends neither in the file nor added, change nothing.
    pub(crate) fn apply<'i>(&self, doc: &mut DeTable<'i>, snippets: &'i [String]) -> Vec<(usize, Vec<usize>)> {
        let mut marks = Vec::new();
        let Some(DeValue::Array(vips)) = doc.get_mut("vip").map(Spanned::get_mut) else { return marks };
        for (i, entry) in vips.iter_mut().enumerate() {
            let span = entry.span();
            let DeValue::Table(vip) = entry.get_mut() else { continue };
            let Some(name) = raw_vip_name(vip) else { continue };
            let scheduler_snippets = &snippets[self.backends.len().min(snippets.len())..];
            for (_, snippet) in self.schedulers.iter().zip(scheduler_snippets).filter(|(s, _)| s.vip == name) {
                if let Ok(path) = DeValue::parse(snippet) {
                    vip.insert(Spanned::new(span.clone(), "scheduler".into()), Spanned::new(span.clone(), path.into_inner()));
                }
            }
            let Some(DeValue::Array(pool)) = vip.get_mut("backend").map(Spanned::get_mut) else { continue };
            let mut changed: Vec<usize> = Vec::new();
            for (o, snippet) in self.backends.iter().zip(snippets).filter(|(o, _)| o.vip == name) {
                let found = pool.iter().position(|b| b.get_ref().as_table().and_then(raw_backend) == Some((o.address, o.port)));
                let fields = || match DeValue::parse(snippet).map(Spanned::into_inner) {
                    Ok(DeValue::Table(t)) => t,
                    _ => DeTable::new(),
                };
                match found {
                    Some(j) if o.removed => {
                        // DeArray has no `remove`: the pool without it.
                        let rest = pool.iter().enumerate().filter(|(k, _)| *k != j).map(|(_, b)| b.clone());
                        *pool = rest.fold(DeArray::new(), |mut a, b| {
                            a.push(b);
                            a
                        });
                        changed.retain(|&k| k != j);
                        changed.iter_mut().filter(|k| **k > j).for_each(|k| *k -= 1);
                    }
                    Some(j) => {
                        if let Some(DeValue::Table(t)) = pool.get_mut(j).map(Spanned::get_mut) {
                            for (k, v) in fields() {
                                t.insert(Spanned::new(span.clone(), k.into_inner()), Spanned::new(span.clone(), v.into_inner()));
                            }
                        }
                        changed.push(j);
                    }
                    None if o.added && !o.removed => {
                        let t = fields().into_iter().map(|(k, v)| (Spanned::new(span.clone(), k.into_inner()), Spanned::new(span.clone(), v.into_inner())));
                        pool.push(Spanned::new(span.clone(), DeValue::Table(t.collect())));
                        changed.push(pool.len() - 1);
                    }
                    None => {}
                }
            }
            if !changed.is_empty() {
                marks.push((i, changed));
            }
        }
        marks
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The name of a `[[vip]]` entry as written, if its address, protocol
/// and port are well-formed (the validator reports them otherwise).
fn raw_vip_name(vip: &DeTable<'_>) -> Option<String> {
    let address = vip.get("address")?.get_ref().as_str()?.parse::<IpAddr>().ok()?;
    let protocol = Protocol::from_name(vip.get("protocol")?.get_ref().as_str()?)?;
    Some(vip_name(address, protocol, raw_port(vip)?))
}

/// A `[[vip.backend]]` entry's address and port as written.
fn raw_backend(b: &DeTable<'_>) -> Option<(IpAddr, u16)> {
    let address = b.get("address")?.get_ref().as_str()?.parse::<IpAddr>().ok()?;
    Some((address, raw_port(b)?))
}

/// A table's `port` as written; 0 when it has none.
fn raw_port(t: &DeTable<'_>) -> Option<u16> {
    match t.get("port") {
        None => Some(0),
        Some(p) => {
            let i = p.get_ref().as_integer()?;
            u16::from_str_radix(i.as_str(), i.radix()).ok()
        }
    }
}
