//! Runtime changes to the backends (`fulcrum backend ...`): what each
//! request does to the overlay (`fulcrum_config::Overlay`), and the state
//! file that keeps the overlay (with the scheduler plugins loaded with
//! `--persist`) across reloads and restarts.
//!
//! A change is prepared as a reload is (`prepare::backends`): the overlay
//! is laid over the text of the file in force and the result validated
//! as a file is, then built; only if all of that succeeds is the state
//! file written and the result committed.

use std::fs::{self, DirBuilder, File};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use fulcrum_config as cfg;
use fulcrum_config::Overlay;
use fulcrum_dataplane::services::backend_name;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The largest state file read: thousands of overrides fit in far less.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// What a request does to one backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BackendChange {
    /// Put it in the pool (with this weight, default 1, and static MAC).
    Add {
        #[serde(default)]
        weight: Option<u16>,
        #[serde(default)]
        mac: Option<String>,
    },
    /// Take it out of the pool: its flows are placed afresh.
    Remove,
    Weight {
        weight: u16,
    },
    /// No new flows; established ones continue. Its weight is kept.
    Drain,
    Undrain,
}

/// "198.18.100.1:80/tcp", "[2001:db8::1]:*/udp": the parts of a VIP name.
pub fn parse_vip(s: &str) -> Option<(IpAddr, cfg::Protocol, u16)> {
    let (endpoint, proto) = s.rsplit_once('/')?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => cfg::Protocol::Tcp,
        "udp" => cfg::Protocol::Udp,
        _ => return None,
    };
    let (addr, port) = endpoint.rsplit_once(':')?;
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr).parse().ok()?;
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    Some((addr, proto, port))
}

/// "198.18.0.11", "198.18.0.11:8080", "2001:db8::11" or
/// "[2001:db8::11]:8080": a backend's address and port (0: the client's).
pub fn parse_backend(s: &str) -> Option<(IpAddr, u16)> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some((a, 0));
    }
    let (addr, port) = s.rsplit_once(':')?;
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    Some((addr.parse().ok()?, port.parse().ok()?))
}

/// The VIP of `config` that `name` names, however its address is written.
pub fn find_vip<'c>(config: &'c cfg::Config, name: &str) -> Result<&'c cfg::Vip, Error> {
    let key =
        parse_vip(name).ok_or_else(|| Error::Refused(format!("{name:?} is not a VIP name: write it as `fulcrum vip list` does, like 198.18.100.1:80/tcp")))?;
    config.vips.iter().find(|v| (v.address, v.protocol, v.port) == key).ok_or_else(|| Error::Refused(format!("no vip {name} (`fulcrum vip list` shows them)")))
}

/// The overlay after `change` to backend `backend` of VIP `vip`, checked
/// against the configuration in force (`running`, the overlay included)
/// and the file's own (`file`: without the overlay; `None` if the file
/// alone does not validate). Whether the result is a valid configuration
/// is for the validator to say.
pub fn apply(running: &cfg::Config, file: Option<&cfg::Config>, overlay: &Overlay, vip: &str, backend: &str, change: &BackendChange) -> Result<Overlay, Error> {
    let v = find_vip(running, vip)?;
    let (address, port) = parse_backend(backend)
        .ok_or_else(|| Error::Refused(format!("{backend:?} is not a backend: an address, or an address and port like 198.18.0.11:8080")))?;
    let (vip, name) = (v.name(), backend_name(address, port));
    let in_pool = v.backends.iter().any(|b| (b.address, b.port) == (address, port));
    let in_file = file.is_some_and(|f| f.vips.iter().any(|fv| fv.name() == vip && fv.backends.iter().any(|b| (b.address, b.port) == (address, port))));
    match (change, in_pool) {
        (BackendChange::Add { .. }, true) => return Err(Error::Refused(format!("vip {vip} already has backend {name}"))),
        (BackendChange::Add { .. }, false) => {}
        (_, false) => return Err(Error::Refused(format!("vip {vip} has no backend {name} (`fulcrum vip list` shows its pool)"))),
        (_, true) => {}
    }
    let mut next = overlay.clone();
    next.update(&vip, address, port, |o| match change {
        BackendChange::Add { weight, mac } => {
            // Back into the pool: as the file has it, with what is given.
            o.removed = false;
            o.added = !in_file;
            o.weight = *weight;
            o.mac.clone_from(mac);
            o.drained = false;
        }
        BackendChange::Remove => {
            // Nothing else of it matters while it is out; a backend only
            // added at runtime leaves no trace.
            *o = cfg::BackendOverride::new(o.vip.clone(), address, port);
            o.removed = in_file;
        }
        BackendChange::Weight { weight } => o.weight = Some(*weight),
        BackendChange::Drain => o.drained = true,
        BackendChange::Undrain => o.drained = false,
    });
    Ok(next)
}

/// The overlay kept in `path`; empty when there is no such file.
pub fn load(path: &Path) -> Result<Overlay, Error> {
    let what = || format!("state file daemon.state_file {}", path.display());
    let bytes = match cfg::read_regular(path, MAX_STATE_BYTES) {
        Ok(b) => b,
        Err(cfg::FileError::Io(e)) if e.kind() == ErrorKind::NotFound => return Ok(Overlay::default()),
        Err(source) => return Err(Error::File { path: what(), source }),
    };
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: format!("{} (runtime changes by `fulcrum backend`; fix or remove it to start from the configuration alone)", what()),
        source,
    })
}

/// Writes `overlay` to `path` whole or not at all: a new file beside it,
/// synced, then renamed over it. An empty overlay removes the file.
pub fn save(path: &Path, overlay: &Overlay) -> Result<(), Error> {
    let what = || format!("writing the state file daemon.state_file {}", path.display());
    if overlay.is_empty() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::System { what: what(), source: e }),
            _ => Ok(()),
        };
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(Error::system(what()))?;
    let mut json = serde_json::to_vec_pretty(overlay).map_err(|source| Error::Json { what: what(), source })?;
    json.push(b'\n');
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::System { what: what(), source: e }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[interface]]
name = "lb0"
role = "one-arm"

[[vip]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
mode = "dsr"

[vip.health]
kind = "tcp-connect"
interval = "1s"
timeout = "500ms"

[[vip.backend]]
address = "198.18.0.11"

[[vip.backend]]
address = "198.18.0.12"
weight = 3
"#;

    const VIP: &str = "198.18.100.1:80/tcp";

    fn with(overlay: &Overlay) -> Result<cfg::Config, cfg::ConfigErrors> {
        cfg::parse_with(FILE, "/etc/fulcrum/fulcrum.toml", overlay)
    }

    fn change(overlay: &Overlay, backend: &str, c: BackendChange) -> Result<Overlay, Error> {
        let running = with(overlay).unwrap();
        apply(&running, Some(&with(&Overlay::default()).unwrap()), overlay, VIP, backend, &c)
    }

    fn pool(c: &cfg::Config) -> Vec<(String, u16)> {
        c.vips[0].backends.iter().map(|b| (backend_name(b.address, b.port), b.weight)).collect()
    }

    #[test]
    fn added_backends_are_checked_and_built_as_the_files_own() {
        let o = change(&Overlay::default(), "198.18.0.13", BackendChange::Add { weight: Some(2), mac: None }).unwrap();
        let c = with(&o).unwrap();
        assert_eq!(pool(&c), [("198.18.0.11".into(), 1), ("198.18.0.12".into(), 3), ("198.18.0.13".into(), 2)]);
        // The VIP's health check, aimed at the new backend.
        let check = c.vips[0].backends[2].check.as_ref().expect("checked like the others");
        assert_eq!((check.address, &check.probe), ("198.18.0.13".parse().unwrap(), &cfg::Probe::TcpConnect { port: 80 }));

        // Refused as the file would be, the field named.
        for (backend, expected) in [
            ("198.18.100.1", "198.18.100.1 is the VIP's own"),
            ("2001:db8::13", "address 2001:db8::13 is IPv6 but the VIP is IPv4"),
            ("198.18.0.13:8080", "port must be omitted or 80: mode dsr delivers the client's packet unchanged, got 8080"),
        ] {
            let o = change(&Overlay::default(), backend, BackendChange::Add { weight: None, mac: None }).unwrap();
            let e = with(&o).unwrap_err().to_string();
            assert!(e.contains(&format!("/etc/fulcrum/fulcrum.toml:6: vip {VIP}, backend ")) && e.contains("(set by `fulcrum backend`)"), "{e}");
            assert!(e.contains(expected), "{e}");
        }
        let o = change(&Overlay::default(), "198.18.0.13", BackendChange::Add { weight: None, mac: Some("ff:ff:ff:ff:ff:ff".into()) }).unwrap();
        assert!(with(&o).unwrap_err().to_string().contains("mac must be"), "{:?}", with(&o));
        let e = change(&Overlay::default(), "198.18.0.11", BackendChange::Add { weight: None, mac: None }).unwrap_err().to_string();
        assert_eq!(e, "vip 198.18.100.1:80/tcp already has backend 198.18.0.11");
    }

    #[test]
    fn drain_keeps_the_weight_for_undrain_and_remove_forgets_runtime_backends() {
        let o = change(&Overlay::default(), "198.18.0.12", BackendChange::Drain).unwrap();
        assert_eq!(pool(&with(&o).unwrap())[1], ("198.18.0.12".into(), 0));
        assert_eq!(o.get(VIP, "198.18.0.12".parse().unwrap(), 0).map(cfg::BackendOverride::describe).as_deref(), Some("drained"));
        let o = change(&o, "198.18.0.12", BackendChange::Weight { weight: 5 }).unwrap();
        assert_eq!(pool(&with(&o).unwrap())[1].1, 0, "still drained");
        let o = change(&o, "198.18.0.12", BackendChange::Undrain).unwrap();
        assert_eq!(pool(&with(&o).unwrap())[1].1, 5);
        let o = change(&o, "198.18.0.12", BackendChange::Weight { weight: 3 }).unwrap();
        assert_eq!(o.backends.len(), 1, "weight 3 is an override still, even if the file's");

        // A file backend removed stays removed; added back, it is the file's again.
        let o = change(&Overlay::default(), "198.18.0.11", BackendChange::Remove).unwrap();
        assert_eq!(pool(&with(&o).unwrap()), [("198.18.0.12".into(), 3)]);
        let e = change(&o, "198.18.0.11", BackendChange::Drain).unwrap_err().to_string();
        assert!(e.contains("has no backend 198.18.0.11"), "{e}");
        let o = change(&o, "198.18.0.11", BackendChange::Add { weight: None, mac: None }).unwrap();
        assert!(o.is_empty(), "{o:?}");
        // A runtime backend removed leaves nothing behind.
        let o = change(&Overlay::default(), "198.18.0.13", BackendChange::Add { weight: None, mac: None }).unwrap();
        assert!(change(&o, "198.18.0.13", BackendChange::Remove).unwrap().is_empty());
        // VIPs are found however they are written.
        assert!(find_vip(&with(&o).unwrap(), "198.18.100.1:80/TCP").is_ok());
        assert!(find_vip(&with(&o).unwrap(), "198.18.100.1:81/tcp").unwrap_err().to_string().contains("no vip"));
    }

    #[test]
    fn a_persisted_scheduler_replaces_the_files_and_survives_the_state_file() {
        let mut o = change(&Overlay::default(), "198.18.0.13", BackendChange::Add { weight: None, mac: None }).unwrap();
        o.set_scheduler(VIP, Some(Path::new("/opt/plugins/least-connections.wasm")));
        let c = with(&o).unwrap();
        assert_eq!(c.vips[0].scheduler, cfg::Scheduler::Plugin("/opt/plugins/least-connections.wasm".into()));
        assert_eq!(pool(&c).len(), 3, "the backend overrides apply too");
        let dir = std::env::temp_dir().join(format!("fulcrum-state-sched-{}", std::process::id()));
        let path = dir.join("state.json");
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        // A state file from before persisted schedulers reads as it did.
        fs::write(&path, r#"{"backends":[]}"#).unwrap();
        assert_eq!(load(&path).unwrap(), Overlay::default());
        let _ = fs::remove_dir_all(&dir);
        o.set_scheduler(VIP, None);
        assert_eq!(with(&o).unwrap().vips[0].scheduler, cfg::Scheduler::Maglev);
    }

    #[test]
    fn the_state_file_round_trips_and_an_empty_overlay_removes_it() {
        let dir = std::env::temp_dir().join(format!("fulcrum-state-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        assert_eq!(load(&path).unwrap(), Overlay::default());
        let o = change(&Overlay::default(), "198.18.0.13", BackendChange::Add { weight: Some(4), mac: None }).unwrap();
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        save(&path, &Overlay::default()).unwrap();
        assert!(!path.exists());
        fs::write(&path, "{not json").unwrap_or_else(|_| {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "{not json").unwrap();
        });
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state file daemon.state_file") && e.contains("fix or remove it"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
