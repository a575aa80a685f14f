//! The `fulcrum` daemon and its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use fulcrum::control::daemon::Daemon;
use fulcrum::control::netinfo;
use fulcrum::io::XdpMode;
use fulcrum::io::xdp::DecapProgram;
use fulcrum::forward::tunnel::GUE_DEFAULT_PORT;

#[derive(Parser)]
#[command(name = "fulcrum", version, about = "Kernel-bypass L4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the balancer with a configuration file, until SIGINT or SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem in it.
    CheckConfig { file: PathBuf },
    /// On a tunnel-mode backend: decapsulate IPIP and GUE sent to this
    /// host's addresses on IFACE (for hosts without the ipip / fou modules).
    Decap {
        #[arg(long)]
        iface: String,
        #[arg(long, default_value_t = GUE_DEFAULT_PORT)]
        gue_port: u16,
        #[arg(long, default_value = "auto", value_parser = parse_mode)]
        xdp_mode: XdpMode,
    },
}

fn parse_mode(s: &str) -> Result<XdpMode, String> {
    s.parse().map_err(|e: fulcrum::io::IoError| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    let result = match Cli::parse().cmd {
        Cmd::Run { config } => run(&config),
        Cmd::CheckConfig { file } => load(&file).map(|c| println!("{}: ok ({} VIPs)", file.display(), c.vips.len())),
        Cmd::Decap { iface, gue_port, xdp_mode } => decap(&iface, gue_port, xdp_mode),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &std::path::Path) -> Result<fulcrum_config::Config, String> {
    fulcrum_config::load(file).map_err(|e| format!("invalid configuration:\n{e}"))
}

/// A flag set by SIGINT or SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    Ok(stop)
}

fn wait(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(file: &std::path::Path) -> Result<(), String> {
    let config = load(file)?;
    let stop = stop_flag()?;
    let daemon = Daemon::start(&config)?;
    println!("ready workers={} xdp_mode={}", daemon.workers, daemon.xdp_mode);
    wait(&stop);
    print!("{}", daemon.summary());
    daemon.stop()
}

fn decap(iface: &str, gue_port: u16, mode: XdpMode) -> Result<(), String> {
    let stop = stop_flag()?;
    let mut prog = DecapProgram::attach(iface, mode, gue_port).map_err(|e| e.to_string())?;
    for a in netinfo::iface_addrs(iface)? {
        prog.add_local_addr(a).map_err(|e| e.to_string())?;
    }
    println!("ready iface={iface} gue_port={gue_port} xdp_mode={}", prog.mode());
    wait(&stop);
    Ok(())
}
