//! Compiles the XDP programs in `bpf/` to BPF objects in OUT_DIR, which
//! `src/io/xdp.rs` embeds with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

const PROGRAMS: &[&str] = &["steer", "decap", "pass", "sink"];

fn main() {
    let src = Path::new("bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    // `-target bpf` does not search the multiarch directory that holds
    // <asm/types.h>, which <linux/bpf.h> includes.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    for name in PROGRAMS {
        let obj = out.join(format!("{name}.o"));
        let result = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &multiarch, "-c"])
            .arg(src.join(format!("{name}.c")))
            .arg("-o")
            .arg(&obj)
            .output();
        match result {
            Err(e) => fail(&format!("cannot run `{clang}` to compile bpf/{name}.c ({e}): install clang (scripts/setup.sh)")),
            Ok(o) if !o.status.success() => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let hint = if stderr.contains("file not found") { "\nmissing headers: install libbpf-dev and linux-libc-dev (scripts/setup.sh)" } else { "" };
                fail(&format!("clang failed on bpf/{name}.c:\n{stderr}{hint}"));
            }
            Ok(_) => {}
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}
