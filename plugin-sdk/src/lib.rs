//! Guest side of fulcrum's WebAssembly scheduling plugins (ABI version 1).
//!
//! A plugin decides which backend a new flow goes to, and optionally how
//! health-check results become up/down and a weight. The author writes one
//! function and [`export_plugin!`] turns it into the module's exports:
//!
//! ```
//! use fulcrum_plugin_sdk::{Backends, Choice, Flow};
//!
//! /// Least connections among the backends that are up and not drained.
//! pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
//!     backends.min_by_key(|b| b.active)
//! }
//!
//! fulcrum_plugin_sdk::export_plugin!(pick: pick);
//! ```
//!
//! Plugins that keep state between calls (a cursor, a lookup table) name a
//! type and its initial value; the macro keeps it in a static and hands the
//! functions `&mut` to it:
//!
//! ```
//! use fulcrum_plugin_sdk::{Backends, Choice, Flow};
//!
//! pub struct Cursor(usize);
//!
//! impl Cursor {
//!     pub fn pick(&mut self, _flow: &Flow, backends: &Backends) -> Choice {
//!         let i = self.0 % backends.len().max(1);
//!         self.0 = i + 1;
//!         backends.get(i).filter(|b| b.is_eligible()).map(|_| i).into()
//!     }
//!
//!     pub fn reset(&mut self, _backends: &Backends) {
//!         self.0 = 0;
//!     }
//! }
//!
//! fulcrum_plugin_sdk::export_plugin! {
//!     state: Cursor = Cursor(0),
//!     pick: Cursor::pick,
//!     update: Cursor::reset,
//! }
//! ```
//!
//! The exports exist only when compiling for wasm32; natively the same
//! source is an ordinary library whose functions tests call directly, most
//! simply through `testing::choose` (cargo feature `testing`).
//! `ABI.md` next to this crate is the normative description of the ABI.

#![no_std]

// Natively (tests, the host's tools) std supplies the panic handler, so a
// plugin's cdylib also links on the build machine.
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod abi;
mod backends;
mod health;
#[doc(hidden)]
pub mod rt;
// Test helpers for plugin crates (their dev-dependency enables the feature);
// always built for the SDK's own tests so they cannot rot.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use abi::{ABI_VERSION, BATCH_CAPACITY, Backend, BatchRegion, CAPACITY, Flow, Header, MAGIC, StateRegion};
pub use backends::{Backends, Choice};
pub use health::{HealthInput, HealthVerdict};

/// A fixed 64-bit mixer (the splitmix64 finaliser): a bijection with full
/// avalanche, for hashing ids and addresses in the guest without a
/// dependency. Part of the SDK's stability promise: outputs never change.
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Mutable plugin state in a static. The guest is single threaded, so a
/// `RefCell` is enough; `with` refuses (returns `None`) instead of
/// panicking if it were ever re-entered.
pub struct GuestCell<T>(core::cell::RefCell<T>);

// SAFETY: wasm32-unknown-unknown (without the atomics feature) has exactly
// one thread, so the cell is never touched from two threads. Natively the
// type is not Sync and cannot be put in a static.
#[cfg(target_arch = "wasm32")]
unsafe impl<T> Sync for GuestCell<T> {}

impl<T> GuestCell<T> {
    pub const fn new(value: T) -> GuestCell<T> {
        GuestCell(core::cell::RefCell::new(value))
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut v| f(&mut v))
    }
}

// A panic in the guest becomes a trap: the host contains it (native
// fallback for that flow, fault counter) and discards the instance.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// Generates the module's ABI exports from the plugin's functions.
///
/// Stateless: `export_plugin!(pick: f)` with
/// `fn f(&Flow, &Backends) -> Choice`, optionally `, health: h` with
/// `fn h(&HealthInput) -> HealthVerdict`.
///
/// Stateful: `export_plugin! { state: T = INIT, pick: T::pick }` with
/// `fn pick(&mut T, &Flow, &Backends) -> Choice`, optionally
/// `update: T::update` (`fn(&mut T, &Backends)`, exported as `lb_update`,
/// called by the host whenever the set, weights or health changed) and
/// `health: h`. `INIT` must be a constant expression.
///
/// The signatures are checked on every target; the exports are emitted on
/// wasm32 only.
#[macro_export]
macro_rules! export_plugin {
    (pick: $pick:path $(, health: $health:path)? $(,)?) => {
        const _: fn(&$crate::Flow, &$crate::Backends) -> $crate::Choice = $pick;
        $crate::export_plugin!(@common $($health)?);

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_pick(n: u32) -> i32 {
            $crate::rt::pick(n, $pick)
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_pick_batch(n: u32, flows: u32) -> i32 {
            $crate::rt::pick_batch(n, flows, $pick)
        }
    };

    (state: $ty:ty = $init:expr, pick: $pick:path $(, update: $update:path)? $(, health: $health:path)? $(,)?) => {
        const _: fn(&mut $ty, &$crate::Flow, &$crate::Backends) -> $crate::Choice = $pick;
        $(const _: fn(&mut $ty, &$crate::Backends) = $update;)?
        $crate::export_plugin!(@common $($health)?);

        #[cfg(target_arch = "wasm32")]
        static PLUGIN_STATE: $crate::GuestCell<$ty> = $crate::GuestCell::new($init);

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_pick(n: u32) -> i32 {
            PLUGIN_STATE.with(|s| $crate::rt::pick(n, |f, b| $pick(s, f, b))).unwrap_or(-1)
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_pick_batch(n: u32, flows: u32) -> i32 {
            PLUGIN_STATE.with(|s| $crate::rt::pick_batch(n, flows, |f, b| $pick(s, f, b))).unwrap_or(-1)
        }

        $(
            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            extern "C" fn lb_update(n: u32) {
                PLUGIN_STATE.with(|s| $crate::rt::update(n, |b| $update(s, b)));
            }
        )?
    };

    (@common $($health:path)?) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_state_ptr() -> u32 {
            $crate::rt::state_ptr()
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_state_cap() -> u32 {
            $crate::CAPACITY as u32
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_batch_ptr() -> u32 {
            $crate::rt::batch_ptr()
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        extern "C" fn lb_batch_cap() -> u32 {
            $crate::BATCH_CAPACITY as u32
        }

        $(
            const _: fn(&$crate::HealthInput) -> $crate::HealthVerdict = $health;

            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            extern "C" fn lb_health(
                index: u32,
                ok: u32,
                latency_us: u32,
                successes: u32,
                failures: u32,
                current: u32,
                configured_weight: u32,
            ) -> u32 {
                $crate::rt::health(index, ok, latency_us, successes, failures, current, configured_weight, $health)
            }
        )?
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix64_and_src_hash_never_change() {
        // Changing these values would move every client of every deployed
        // source-hash or Maglev plugin: they are pinned.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        let f = Flow::v4([198, 18, 0, 1], 4000, [198, 18, 0, 100], 80, 6, 0);
        assert_eq!(f.src_hash(), Flow::v4([198, 18, 0, 1], 1, [198, 18, 1, 1], 443, 17, 9).src_hash());
        assert_ne!(f.src_hash(), Flow::v4([198, 18, 0, 2], 4000, [198, 18, 0, 100], 80, 6, 0).src_hash());
        assert_eq!(f.src_hash(), 7243297073154896284);
    }

    #[test]
    fn guest_cell_refuses_reentry() {
        let cell = GuestCell::new(1u32);
        assert_eq!(cell.with(|v| cell.with(|w| *w).is_none() && *v == 1), Some(true));
        assert_eq!(cell.with(|v| core::mem::replace(v, 2)), Some(1));
        assert_eq!(cell.with(|v| *v), Some(2));
    }
}
