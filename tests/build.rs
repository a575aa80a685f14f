//! Compiles the lab's BPF programs in `bpf/` (XDP pass and sink, tc txq) to objects in
//! OUT_DIR, which `src/xdp.rs` embeds. The sink shares fulcrum-io's
//! `common.h`.

use std::path::Path;

#[path = "../io/bpf/compile.rs"]
mod compile;

fn main() {
    compile::compile(Path::new("bpf"), &["pass", "sink", "txq"], &[Path::new("../io/bpf")]);
}
