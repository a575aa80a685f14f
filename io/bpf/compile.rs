//! Compiling XDP programs with clang, shared by the build scripts of
//! `fulcrum-io` (the shipped programs) and `fulcrum-tests` (the lab's),
//! which include this file by path.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

/// Compiles `src/NAME.c` for each name to `OUT_DIR/NAME.o`, with
/// `includes` on the header path; exits the build script with a message
/// an operator can act on when clang or a header is missing.
pub fn compile(src: &Path, programs: &[&str], includes: &[&Path]) {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-changed={}", src.display());
    for dir in includes {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    // `-target bpf` does not search the multiarch directory that holds
    // <asm/types.h>, which <linux/bpf.h> includes.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    for name in programs {
        let result = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &multiarch])
            .args(includes.iter().map(|d| format!("-I{}", d.display())))
            .arg("-c")
            .arg(src.join(format!("{name}.c")))
            .arg("-o")
            .arg(out.join(format!("{name}.o")))
            .output();
        match result {
            Err(e) => fail(&format!("cannot run `{clang}` to compile {name}.c ({e}): install clang (scripts/setup.sh)")),
            Ok(o) if !o.status.success() => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let hint = if stderr.contains("file not found") { "\nmissing headers: install libbpf-dev and linux-libc-dev (scripts/setup.sh)" } else { "" };
                fail(&format!("clang failed on {name}.c:\n{stderr}{hint}"));
            }
            Ok(_) => {}
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}
