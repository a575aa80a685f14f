//! Deliberately broken plugins, only for the host's containment tests: each
//! cargo feature builds one way a plugin can misbehave, and the host must
//! contain every one (fall back to native Maglev, count the fault,
//! quarantine) while forwarding goes on. Without a feature the module is a
//! well-behaved control that always picks row 0.
//!
//! | feature             | misbehaviour                                       | the host must                      |
//! |---------------------|----------------------------------------------------|------------------------------------|
//! | `infinite-loop`     | `lb_pick` never returns                            | stop it (fuel / epoch deadline)    |
//! | `out-of-bounds`     | `lb_pick` loads from beyond the end of memory      | catch the trap                     |
//! | `unreachable`       | `lb_pick` executes `unreachable`                   | catch the trap                     |
//! | `memory-growth`     | `lb_pick` grows memory 1 MiB at a time until refused, then answers 0 | hold its memory cap |
//! | `stack-overflow`    | `lb_pick` recurses without end                     | catch the stack-overflow trap      |
//! | `bad-index`         | `lb_pick(n)` returns `n` (one past the last row)   | reject the index                   |
//! | `bad-abi-version`   | `lb_abi_version` returns the SDK's version + 1     | refuse the module at load          |
//! | `bad-state-region`  | `lb_state_ptr` points 64 bytes before 4 GiB        | refuse the module at load          |
//! | `unexpected-import` | imports `env.host_secret`                          | refuse the module at load          |
//! | `slow-update`       | `lb_update` takes about 10 ms (legal: within its budget) | never run it on a worker     |
//! | `silent-decline`    | `lb_pick` always answers -1                        | count and show the declines        |
//!
//! The exports are written by hand (not with `export_plugin!`) because they
//! are meant to break the ABI's rules. They are those of ABI version 1,
//! without the batch entry point, which the host still speaks: every
//! pick is a call of its own.

#![no_std]

// Natively the crate is empty; linking the SDK still brings the panic
// handler its cdylib needs there.
use fulcrum_plugin_sdk as _;

#[cfg(target_arch = "wasm32")]
mod exports {
    use fulcrum_plugin_sdk::{ABI_VERSION, CAPACITY, Header, rt};

    const VERSION: u32 = 1;

    #[unsafe(no_mangle)]
    extern "C" fn lb_abi_version() -> u32 {
        if cfg!(feature = "bad-abi-version") { ABI_VERSION + 1 } else { VERSION }
    }

    #[unsafe(no_mangle)]
    extern "C" fn lb_state_ptr() -> u32 {
        if cfg!(feature = "bad-state-region") { u32::MAX - 63 } else { rt::state_ptr_with(Header { abi_version: VERSION, ..Header::CURRENT }) }
    }

    #[unsafe(no_mangle)]
    extern "C" fn lb_state_cap() -> u32 {
        CAPACITY as u32
    }

    #[unsafe(no_mangle)]
    extern "C" fn lb_pick(n: u32) -> i32 {
        super::pick(n)
    }

    #[cfg(feature = "slow-update")]
    #[unsafe(no_mangle)]
    extern "C" fn lb_update(n: u32) {
        // A chain of loads, each address depending on the last load, over
        // 8 MiB: about 10 ms, near the most the default update budget of
        // fuel buys (wasmtime charges bulk memory operations per byte).
        const WORDS: usize = 2 << 20;
        static mut AREA: [u32; WORDS] = [0; WORDS];
        let area = core::ptr::addr_of!(AREA).cast::<u32>();
        let mut x = core::hint::black_box(n) as usize;
        for i in 0..2_500_000usize {
            // SAFETY: the index is masked below WORDS.
            let v = unsafe { area.add(x & (WORDS - 1)).read_volatile() } as usize;
            x = x.wrapping_mul(0x9e37_79b9).wrapping_add(v ^ i);
        }
        core::hint::black_box(x);
    }
}

#[cfg(all(target_arch = "wasm32", feature = "infinite-loop"))]
fn pick(_: u32) -> i32 {
    #[allow(clippy::empty_loop)]
    loop {}
}

#[cfg(all(target_arch = "wasm32", feature = "out-of-bounds"))]
fn pick(_: u32) -> i32 {
    // Undefined behaviour for Rust, a guaranteed trap for wasm: the address
    // is past the end of any 32-bit memory. That trap is the point here.
    unsafe { core::ptr::read_volatile(0xffff_fffc_usize as *const i64) as i32 }
}

#[cfg(all(target_arch = "wasm32", feature = "unreachable"))]
fn pick(_: u32) -> i32 {
    core::arch::wasm32::unreachable()
}

#[cfg(all(target_arch = "wasm32", feature = "memory-growth"))]
fn pick(_: u32) -> i32 {
    // memory.grow answers usize::MAX (-1) when the host refuses.
    while core::arch::wasm32::memory_grow(0, 16) != usize::MAX {}
    0
}

#[cfg(all(target_arch = "wasm32", feature = "stack-overflow"))]
fn pick(n: u32) -> i32 {
    // A frame with a buffer on the shadow stack that the optimiser cannot
    // turn into a loop: overflows both the shadow and the native stack.
    fn deeper(d: u32) -> u32 {
        let frame = core::hint::black_box([d; 64]);
        if frame[63] == u32::MAX { d } else { core::hint::black_box(deeper(frame[0] + 1)) + 1 }
    }
    deeper(n) as i32
}

#[cfg(all(target_arch = "wasm32", feature = "bad-index"))]
fn pick(n: u32) -> i32 {
    n as i32
}

#[cfg(all(target_arch = "wasm32", feature = "unexpected-import"))]
fn pick(_: u32) -> i32 {
    unsafe extern "C" {
        fn host_secret() -> i32;
    }
    // SAFETY: none; a host that follows the ABI never instantiates this.
    unsafe { host_secret() }
}

#[cfg(all(target_arch = "wasm32", feature = "silent-decline"))]
fn pick(_: u32) -> i32 {
    -1
}

#[cfg(all(
    target_arch = "wasm32",
    not(any(
        feature = "silent-decline",
        feature = "infinite-loop",
        feature = "out-of-bounds",
        feature = "unreachable",
        feature = "memory-growth",
        feature = "stack-overflow",
        feature = "bad-index",
        feature = "unexpected-import",
    ))
))]
fn pick(n: u32) -> i32 {
    if n > 0 { 0 } else { -1 }
}
