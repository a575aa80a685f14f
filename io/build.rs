//! Compiles the XDP programs in `bpf/` to BPF objects in OUT_DIR, which
//! `src/xdp.rs` embeds with `include_bytes!`.

use std::path::Path;

#[path = "bpf/compile.rs"]
mod compile;

fn main() {
    compile::compile(Path::new("bpf"), &["steer", "decap"], &[]);
}
