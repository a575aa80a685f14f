//! Compiles the lab's XDP programs in `bpf/` (pass, sink) to BPF objects in
//! OUT_DIR, which `src/xdp.rs` embeds. The sink shares fulcrum-io's
//! `common.h`.

use std::path::Path;

#[path = "../io/bpf/compile.rs"]
mod compile;

fn main() {
    compile::compile(Path::new("bpf"), &["pass", "sink"], &[Path::new("../io/bpf")]);
}
