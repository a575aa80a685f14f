//! Identities every layer of the packet path shares. They sit below
//! everything else in the crate so that no module has to reach upwards
//! (the sticky table, the services and the engine all name VIPs and
//! backends).

/// A VIP's id, stable across reloads for the daemon's lifetime.
pub type VipId = u16;

/// A backend's id, stable across reloads for the daemon's lifetime.
pub type BackendId = u16;

/// Index of an interface in the engine's configuration.
pub type IfIndex = u8;

/// An Ethernet address.
pub type Mac = [u8; 6];
