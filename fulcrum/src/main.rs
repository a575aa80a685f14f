//! The `fulcrum` daemon and its command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use fulcrum::control::api::{BackendChange, Request, Response, flows_table, vips_table};
use fulcrum::control::plugins::Module;
use fulcrum::control::{client, load_config, server};
use fulcrum::{Context, Error};
use fulcrum_dataplane::forward::tunnel::GUE_DEFAULT_PORT;
use fulcrum_io::xdp::DecapProgram;
use fulcrum_io::{XdpMode, netinfo};
use fulcrum_plugin_host::replay::{self, Gates, ReplayOptions};

#[derive(Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "Kernel-bypass L4 load balancer",
    after_help = "Exit codes: 0 done; 1 refused (a reload, a backend change, a request) or failed; 2 a command line clap cannot parse; 3 the configuration (or a file it names) is invalid; 4 no daemon answers on the control socket; 5 `fulcrum plugin test`: the plugin failed a gate."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// How log lines are written to stderr: `text`, or `json` (one object
    /// per line, for log shippers). Under systemd each line carries its
    /// priority for the journal either way.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Writes log lines to stderr, each prefixed with its syslog priority
/// (`<3>` error ... `<7>` debug) when stderr is the journal, which then
/// files it at that priority instead of all at one.
struct LogWriter {
    journal: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = PrefixedStderr;

    fn make_writer(&'a self) -> PrefixedStderr {
        PrefixedStderr(None)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> PrefixedStderr {
        let level = *meta.level();
        let priority = match level {
            tracing::Level::ERROR => b"<3>",
            tracing::Level::WARN => b"<4>",
            tracing::Level::INFO => b"<6>",
            tracing::Level::DEBUG | tracing::Level::TRACE => b"<7>",
        };
        PrefixedStderr(self.journal.then_some(priority))
    }
}

/// Stderr, with a prefix before the first bytes of a line.
struct PrefixedStderr(Option<&'static [u8; 3]>);

impl std::io::Write for PrefixedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if let Some(prefix) = self.0.take() {
            err.write_all(prefix)?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logging to stderr, `log` records of libraries (aya, xsk-rs, wasmtime)
/// included.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // systemd sets JOURNAL_STREAM when stderr is the journal.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let writer = LogWriter { journal };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(!journal && std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the balancer with a configuration file, until SIGINT or SIGTERM
    /// (SIGHUP reloads the file).
    Run {
        /// The TOML configuration file (`fulcrum check-config` checks it).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem in it
    /// (plugin files it names must exist too).
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// The running daemon: configuration file, workers, reloads, VIPs and
    /// their backends.
    Status(Target),
    /// The running daemon's counters: per VIP and backend, drops, workers.
    Stats(StatsArgs),
    /// Make the running daemon re-read its configuration file and apply
    /// what changed; a file that is invalid or needs a restart is refused
    /// (with the reason) and the running configuration stays.
    Reload(Target),
    /// On a tunnel-mode backend: decapsulate IPIP and GUE sent to this
    /// host's addresses on IFACE (for hosts without the ipip / fou modules).
    Decap {
        /// The interface tunnelled packets arrive on.
        #[arg(long)]
        iface: String,
        /// The UDP port GUE packets are sent to (the VIPs' `gue_port`).
        #[arg(long, default_value_t = GUE_DEFAULT_PORT)]
        gue_port: u16,
        /// How to attach the program: native (in the driver), generic, or
        /// auto (native, else generic).
        #[arg(long, default_value = "auto", value_parser = parse_mode)]
        xdp_mode: XdpMode,
    },
    /// Withdraw the VIPs from the routers (`[bgp]`), keep forwarding until
    /// their traffic stops arriving or `daemon.shutdown_grace` (30 s when
    /// unset) is over, then exit. SIGTERM does the same when the grace is
    /// set.
    Drain(Target),
    /// Scale-out: announce the VIPs through a BGP speaker.
    Bgp {
        #[command(subcommand)]
        cmd: BgpCmd,
    },
    /// High availability: this balancer's part in a pair.
    Ha {
        #[command(subcommand)]
        cmd: HaCmd,
    },
    /// WebAssembly scheduling plugins.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Change a running daemon's backends without editing the file. Each
    /// change is validated as the file is, applied as a reload is, and
    /// kept in `daemon.state_file` over reloads and restarts until
    /// `fulcrum backend reset`.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// A VIP's flows in the connection tables, as the workers hold them:
    /// client, backend, state, idle time (bounded by --limit).
    Flows {
        /// The VIP as `fulcrum vip list` names it: 198.18.0.100:80/tcp.
        #[arg(long)]
        vip: String,
        /// Only this client address's flows.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// List at most this many (10,000 at most).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// The running daemon's VIPs.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Print a shell completion script: `fulcrum completions bash >
    /// /etc/bash_completion.d/fulcrum` (zsh: a `_fulcrum` file in $fpath;
    /// fish: ~/.config/fish/completions/fulcrum.fish).
    Completions {
        /// The shell the script is for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `fulcrum man | man -l -`; with --dir,
    /// write fulcrum.1 and a page per subcommand (fulcrum-stats.1, ...)
    /// there instead.
    Man {
        /// A directory to write the pages to, e.g. /usr/local/share/man/man1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Put BACKEND in VIP's pool (checked by the VIP's health check, if
    /// any).
    Add {
        #[command(flatten)]
        which: Which,
        /// Its weight [default: 1].
        #[arg(long)]
        weight: Option<u16>,
        /// A static MAC for it, rather than the kernel's neighbour entry.
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Take BACKEND out of VIP's pool: its established flows are placed
    /// afresh (TCP ones break). Drain it first to let them finish.
    Remove {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        target: Target,
    },
    /// Set BACKEND's weight in VIP's pool (0 drains it).
    Weight {
        #[command(flatten)]
        which: Which,
        /// The new weight, 0 to 65535.
        weight: u16,
        #[command(flatten)]
        target: Target,
    },
    /// No new flows to BACKEND; its established ones continue. Its weight
    /// is kept for `undrain`.
    Drain {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        target: Target,
    },
    /// New flows to BACKEND again, at its weight.
    Undrain {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        target: Target,
    },
    /// Drop every runtime change: the backends as the file has them.
    Reset(Target),
}

/// A backend of a VIP.
#[derive(Args)]
struct Which {
    /// The VIP, as `fulcrum vip list` names it: 198.18.100.1:80/tcp.
    vip: String,
    /// The backend: 198.18.0.11, or with a port 198.18.0.11:8080.
    backend: String,
}

#[derive(Subcommand)]
enum VipCmd {
    /// Each VIP in force: mode, scheduler, backends with their weights
    /// and runtime changes.
    List(Target),
}

#[derive(Subcommand)]
enum BgpCmd {
    /// The process ExaBGP runs (`process fulcrum { run fulcrum bgp exabgp
    /// --config FILE; encoder text; }`): announces each VIP address the
    /// daemon of FILE wants announced, withdraws the others, and withdraws
    /// everything while that daemon is gone or silent past `bgp.timeout`.
    Exabgp {
        /// The configuration file of the daemon whose VIPs to announce.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum HaCmd {
    /// Set the role (keepalived's notify scripts call this): a master
    /// forwards the VIPs and sends its flows to the peer; a backup or
    /// fault forwards nothing for the VIPs and keeps the peer's flows.
    Role {
        /// The role keepalived gave this balancer.
        #[arg(value_parser = ["master", "backup", "fault"])]
        role: String,
        #[command(flatten)]
        target: Target,
    },
    /// Keep FILE at 0 while the daemon answers `status` within --timeout
    /// and is not standing down, and at 1 otherwise, asking every --every:
    /// keepalived tracks FILE (`track_file`, weight 0) and fails over as
    /// soon as it changes, where a `vrrp_script` would take 1-2 s to see a
    /// hang. Writes 1 when stopped (SIGTERM, SIGINT).
    Watch {
        /// The file keepalived's `track_file` reads.
        #[arg(long)]
        file: PathBuf,
        /// How often to ask the daemon.
        #[arg(long, default_value = "100ms", value_parser = parse_interval)]
        every: Duration,
        /// How long an answer may take before the daemon counts as hung.
        #[arg(long, default_value = "250ms", value_parser = parse_interval)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Load FILE.wasm as a daemon would (ABI checks, smoke test), replay
    /// synthetic new flows through it (many clients and ports, flows that
    /// close), and print how they spread over the backends, how many move
    /// when backends fail, what each pick and update costs, and whether it
    /// passes the gates: a deploy gate for CI.
    #[command(
        after_help = "Gates: the plugin fails if it faults or is quarantined, and, when given, if it declines more than --max-declines of the picks, or its p99 pick or update cost is above --max-pick or --max-update.\n\nExit codes: 0 the plugin passed every gate; 1 it cannot be loaded (the ABI checks or the smoke test refuse it) or the options are wrong; 2 a command line clap cannot parse; 3 FILE cannot be read; 5 it loads but failed a gate (each failure is on stderr, and in the report)."
    )]
    Test {
        /// The plugin (.wasm).
        file: PathBuf,
        /// Backends in the replayed pool.
        #[arg(long, default_value_t = 8)]
        backends: usize,
        /// New flows to replay (random 5-tuples).
        #[arg(long, default_value_t = 10_000)]
        flows: usize,
        /// Flows open at once on average: each closes after 1 to 2 × this
        /// many later flows (0: none closes).
        #[arg(long, default_value_t = 1000)]
        open: usize,
        /// Weights in backend order, comma-separated (missing ones are 1).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<u32>,
        /// Established connections of backends before the first flow, as
        /// every worker's together: IDX=N (IDX from 0), comma-separated,
        /// e.g. `--load 1=30,3=500`.
        #[arg(long, value_delimiter = ',', value_parser = parse_load)]
        load: Vec<(usize, u32)>,
        /// Smoothed response times of backends, as health checks or TCP
        /// handshakes measure them: IDX=DURATION, e.g. `--rtt 1=2ms,2=40ms`
        /// (units us, ms, s).
        #[arg(long, value_delimiter = ',', value_parser = parse_rtt)]
        rtt: Vec<(usize, u32)>,
        /// Byte rates of backends, both directions: IDX=RATE, e.g. `--rate
        /// 3=50MB/s` (units B/s, kB/s, MB/s, GB/s; decimal).
        #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
        rate: Vec<(usize, u64)>,
        /// Backends (from 0) that fail in a second replay.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        fail: Vec<usize>,
        /// Fail if the p99 cost of a pick is above this: 5us, 20us, 1ms.
        #[arg(long, value_parser = parse_cost)]
        max_pick: Option<Duration>,
        /// Fail if the p99 CPU time of an lb_update is above this: 1ms.
        #[arg(long, value_parser = parse_cost)]
        max_update: Option<Duration>,
        /// Fail if the plugin declines more than this share of the picks:
        /// 5%, 0.1%.
        #[arg(long, value_parser = parse_share)]
        max_declines: Option<f64>,
        /// Print the report as JSON (for CI) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a scheduler plugin crate DIR/NAME that builds anywhere,
    /// offline: an example scheduler with its unit tests, the release
    /// profile and wasm32 flags of the shipped plugins, and a copy of this
    /// fulcrum's plugin SDK (a path dependency, with no dependencies of its
    /// own).
    New {
        /// The crate's name (lowercase letters, digits, - and _): the
        /// module is then NAME.wasm with - written _.
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check each FILE.wasm against the plugin ABI as a daemon would load
    /// it (imports, exports and signatures, version, state region, a smoke
    /// test); exits non-zero at the first that fails.
    Check {
        /// The plugins (.wasm).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Swap FILE.wasm in as the scheduler of a running daemon's VIP: it is
    /// compiled, checked and smoke-tested off the data path, then every
    /// worker uses it for new flows; established flows keep their backend.
    /// Without --persist it lasts until the daemon restarts (reloads keep
    /// it unless they change the VIP's scheduler).
    Load {
        /// The VIP, as `fulcrum status` names it: 198.18.0.100:80/tcp.
        #[arg(long)]
        vip: String,
        /// The plugin (.wasm), read by the daemon.
        file: PathBuf,
        /// Also record it in daemon.state_file as the VIP's scheduler, in
        /// place of the configuration's: reloads and restarts load it
        /// (from FILE's path) until `fulcrum plugin forget`.
        #[arg(long)]
        persist: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Drop the VIP's persisted plugin (`plugin load --persist`): the
    /// configuration's scheduler runs again, at once.
    Forget {
        /// The VIP, as `fulcrum status` names it: 198.18.0.100:80/tcp.
        #[arg(long)]
        vip: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `fulcrum stats`: which daemon, and a table once or refreshed.
#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    target: Target,
    /// Refresh a table of connections and rates (packets, bytes, new
    /// connections and drops per second) per VIP and backend until
    /// interrupted.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// Time between refreshes of `--watch`: 500ms, 2s, ...
    #[arg(long, default_value = "1s", value_parser = parse_interval, requires = "watch")]
    interval: Duration,
    /// Stop `--watch` after this many refreshes.
    #[arg(long, requires = "watch")]
    count: Option<u32>,
}

/// Which daemon to talk to, and how to print its answer.
#[derive(Args)]
struct Target {
    /// The daemon's control socket [default: /run/fulcrum/control.sock].
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Find the control socket in this configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// `IDX=VALUE`, the value read by `value`.
fn pair<T>(s: &str, what: &str, value: impl Fn(&str) -> Option<T>) -> Result<(usize, T), String> {
    let (idx, v) = s.split_once('=').ok_or_else(|| format!("`{s}`: give IDX={what}"))?;
    let idx = idx.trim().parse().map_err(|_| format!("`{s}`: `{idx}` is no backend index (0, 1, ...)"))?;
    Ok((idx, value(v.trim()).ok_or_else(|| format!("`{s}`: `{v}` is no {what}"))?))
}

fn parse_load(s: &str) -> Result<(usize, u32), String> {
    pair(s, "connection count", |v| v.parse().ok())
}

/// A duration in µs: `500us`, `2ms`, `1.5s`.
fn micros(v: &str) -> Option<f64> {
    let (n, scale) = [("ns", 1e-3), ("us", 1.0), ("µs", 1.0), ("ms", 1e3), ("s", 1e6)].iter().find_map(|(unit, k)| Some((v.strip_suffix(unit)?, *k)))?;
    let us = n.trim().parse::<f64>().ok()? * scale;
    (us.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&us)).then_some(us)
}

fn parse_rtt(s: &str) -> Result<(usize, u32), String> {
    pair(s, "duration like 2ms", |v| micros(v).map(|us| us as u32))
}

/// A cost budget: `5us`, `1ms`.
fn parse_cost(s: &str) -> Result<Duration, String> {
    micros(s.trim()).map(|us| Duration::from_secs_f64(us / 1e6)).ok_or_else(|| format!("`{s}`: give a duration like 5us, 1ms or 0.5s"))
}

/// A share in percent: `5%`, `0.5%` (the sign may be left out).
fn parse_share(s: &str) -> Result<f64, String> {
    let v = s.trim().strip_suffix('%').unwrap_or(s.trim()).trim().parse::<f64>().ok();
    v.filter(|v| (0.0..=100.0).contains(v)).ok_or_else(|| format!("`{s}`: give a share like 5% (0% to 100%)"))
}

/// A rate in bytes per second: `2000B/s`, `1.5kB/s`, `50MB/s`, `1GB/s`.
fn parse_rate(s: &str) -> Result<(usize, u64), String> {
    pair(s, "rate like 50MB/s", |v| {
        let (n, scale) =
            [("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3), ("KB/s", 1e3), ("B/s", 1.0)].iter().find_map(|(unit, k)| Some((v.strip_suffix(unit)?, *k)))?;
        let bytes = n.trim().parse::<f64>().ok()? * scale;
        (bytes.is_finite() && (0.0..=u64::MAX as f64).contains(&bytes)).then_some(bytes as u64)
    })
}

/// IDX=VALUE pairs as a list by index (gaps are the default).
fn by_index<T: Copy + Default>(pairs: &[(usize, T)]) -> Vec<T> {
    let mut out = vec![T::default(); pairs.iter().map(|&(i, _)| i + 1).max().unwrap_or(0)];
    for &(i, v) in pairs {
        out[i] = v;
    }
    out
}

fn parse_mode(s: &str) -> Result<XdpMode, String> {
    s.parse().map_err(|e: fulcrum_io::IoError| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.cmd {
        Cmd::Run { config } => server::run(&config),
        Cmd::CheckConfig { file } => load_config(&file).map(|l| match l.overlay.backends.len() {
            0 => println!("{}: ok ({} VIPs)", file.display(), l.config.vips.len()),
            n => println!(
                "{}: ok ({} VIPs), with runtime changes to {n} backends from {}",
                file.display(),
                l.config.vips.len(),
                l.config.daemon.state_file.display()
            ),
        }),
        Cmd::Status(t) => ask(&t, Request::Status),
        Cmd::Stats(StatsArgs { target, watch: false, .. }) => ask(&target, Request::Stats),
        Cmd::Stats(StatsArgs { target, interval, count, .. }) => watch_stats(&target, interval, count),
        Cmd::Reload(t) => ask(&t, Request::Reload),
        Cmd::Drain(t) => ask(&t, Request::Drain),
        Cmd::Bgp { cmd: BgpCmd::Exabgp { config } } => fulcrum_config::load(&config).map_err(Error::from).and_then(|c| fulcrum::bgp::run_exabgp(&c)),
        Cmd::Ha { cmd: HaCmd::Role { role, target } } => ask(&target, Request::HaRole { role }),
        Cmd::Ha { cmd: HaCmd::Watch { file, every, timeout, target } } => {
            socket_of(&target).and_then(|socket| fulcrum::ha::watch::run(&socket, &file, every, timeout))
        }
        Cmd::Decap { iface, gue_port, xdp_mode } => decap(&iface, gue_port, xdp_mode),
        Cmd::Backend { cmd } => backend(cmd),
        Cmd::Vip { cmd: VipCmd::List(t) } => ask(&t, Request::VipList),
        Cmd::Flows { vip, client, limit, target } => ask(&target, Request::Flows { vip, client, limit }),
        Cmd::Plugin { cmd: PluginCmd::Test { file, backends, flows, open, weights, load, rtt, rate, fail, max_pick, max_update, max_declines, json } } => {
            let opts = ReplayOptions {
                backends,
                flows,
                open: (open > 0).then_some(open),
                weights,
                loads: by_index(&load),
                rtt_us: by_index(&rtt),
                rates: by_index(&rate),
                failures: fail,
                gates: Gates { max_pick, max_update, max_declines },
            };
            Module::read(&file).and_then(|m| replay::run(&m.name, &m.bytes, &opts).context(|| file.display().to_string())).and_then(|report| {
                match json {
                    true => println!("{}", serde_json::to_string_pretty(&report).map_err(|source| Error::Json { what: "the report".into(), source })?),
                    false => print!("{report}"),
                }
                match report.failed_gates.is_empty() {
                    true => Ok(()),
                    false => Err(Error::Gates { plugin: report.plugin, failed: report.failed_gates }),
                }
            })
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "fulcrum", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => man(dir.as_deref()),
        Cmd::Plugin { cmd: PluginCmd::New { name, dir } } => fulcrum::scaffold::new_plugin(&name, &dir).map(|root| {
            println!("created {}: build it with", root.display());
            println!("  cd {} && cargo test && cargo build --release --target wasm32-unknown-unknown", root.display());
            println!("then `fulcrum plugin check` and `fulcrum plugin test` target/wasm32-unknown-unknown/release/{}.wasm", name.replace('-', "_"));
        }),
        Cmd::Plugin { cmd: PluginCmd::Check { files } } => files.iter().try_for_each(|file| {
            let module = Module::read(file)?;
            replay::check(&module.name, &module.bytes).context(|| file.display().to_string())?;
            println!("{}: ok", file.display());
            Ok(())
        }),
        // The daemon runs elsewhere: give it the file's absolute path.
        Cmd::Plugin { cmd: PluginCmd::Load { vip, file, persist, target } } => {
            file.canonicalize().map_err(Error::system(file.display().to_string())).and_then(|path| ask(&target, Request::PluginLoad { vip, path, persist }))
        }
        Cmd::Plugin { cmd: PluginCmd::Forget { vip, target } } => ask(&target, Request::PluginForget { vip }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The manual page of `fulcrum` on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<(), Error> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir).map_err(Error::system(format!("writing manual pages to {}", dir.display()))),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(Error::system("printing the manual page")),
    }
}

fn backend(cmd: BackendCmd) -> Result<(), Error> {
    let (which, target, change) = match cmd {
        BackendCmd::Reset(target) => return ask(&target, Request::BackendReset),
        BackendCmd::Add { which, weight, mac, target } => (which, target, BackendChange::Add { weight, mac }),
        BackendCmd::Remove { which, target } => (which, target, BackendChange::Remove),
        BackendCmd::Weight { which, weight, target } => (which, target, BackendChange::Weight { weight }),
        BackendCmd::Drain { which, target } => (which, target, BackendChange::Drain),
        BackendCmd::Undrain { which, target } => (which, target, BackendChange::Undrain),
    };
    ask(&target, Request::Backend { vip: which.vip, backend: which.backend, change })
}

/// The control socket `t` names.
fn socket_of(t: &Target) -> Result<PathBuf, Error> {
    Ok(match (&t.socket, &t.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => fulcrum_config::load(c)?.daemon.control_socket,
        (None, None) => PathBuf::from(fulcrum_config::DEFAULT_CONTROL_SOCKET),
    })
}

/// `fulcrum stats --watch`: the rates between two answers, every
/// `interval`, on a cleared screen when printing to a terminal.
fn watch_stats(t: &Target, interval: Duration, count: Option<u32>) -> Result<(), Error> {
    let socket = socket_of(t)?;
    let stats = || match client::request(&socket, &Request::Stats)? {
        Response::Stats(s) => Ok(s),
        Response::Error(e) => Err(Error::Refused(e)),
        other => Err(Error::Refused(format!("unexpected answer to stats: {other:?}"))),
    };
    let (mut before, mut at) = (stats()?, std::time::Instant::now());
    let clear = std::io::stdout().is_terminal();
    for _ in 0..count.unwrap_or(u32::MAX) {
        std::thread::sleep(interval);
        let now = stats()?;
        let secs = at.elapsed().as_secs_f64();
        at = std::time::Instant::now();
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        println!("every {interval:?} (Ctrl-C stops)\n{}", now.rates_table(&before, secs));
        before = now;
    }
    Ok(())
}

/// `500ms`, `2s`, `1.5s`.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs = match (s.strip_suffix("ms"), s.strip_suffix('s')) {
        (Some(ms), _) => ms.trim().parse::<f64>().ok().map(|v| v / 1e3),
        (None, Some(sec)) => sec.trim().parse::<f64>().ok(),
        _ => None,
    };
    secs.filter(|v| v.is_finite() && (0.01..=3600.0).contains(v))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}`: give an interval like 500ms or 2s (10ms to 1h)"))
}

fn ask(t: &Target, req: Request) -> Result<(), Error> {
    let socket = socket_of(t)?;
    let response = client::request(&socket, &req)?;
    if let Response::Error(e) = response {
        return Err(Error::Refused(e));
    }
    if t.json {
        println!("{}", serde_json::to_string_pretty(&response).map_err(|source| Error::Json { what: "printing the answer".into(), source })?);
    } else {
        print_answer(&response);
    }
    // keepalived's check runs `fulcrum status`: failing it is how a master
    // demoted by hand makes keepalived hand the addresses to the peer.
    if let Response::Status(s) = &response
        && s.standing_down()
    {
        return Err(Error::Refused("standing down (`fulcrum ha role backup` on the master): fails until keepalived's next notify".into()));
    }
    Ok(())
}

fn print_answer(response: &Response) {
    match response {
        Response::Status(s) => print!("{}", s.table()),
        Response::Stats(s) => print!("{}", s.table()),
        Response::Reloaded(r) => {
            println!("reloaded {}: {}", r.config, r.changes.summary());
            for line in r.changes.details() {
                println!("  {line}");
            }
        }
        Response::HaRole(r) => println!("role {} (was {})", r.role, r.previous),
        Response::Routes(r) => println!("announce: {:?}, backup: {:?}{}", r.announce, r.backup, if r.draining { " (draining)" } else { "" }),
        Response::Draining(d) => println!(
            "draining: {}, exits when the VIPs' traffic stops, within {} s",
            if d.withdrawn { "the VIPs are withdrawn" } else { "withdrawing the VIPs" },
            d.grace_secs
        ),
        Response::BackendsChanged(c) => {
            println!("applied: {}; {} runtime changes kept in {}", c.changes.summary(), c.overrides.len(), c.state_file);
            for line in c.changes.details() {
                println!("  {line}");
            }
        }
        Response::Vips(v) => print!("{}", vips_table(v)),
        Response::Flows(f) => print!("{}", flows_table(f)),
        Response::PluginLoaded(p) => match &p.persisted {
            Some(state) => println!("vip {}: plugin {} published (generation {}), persisted in {state}", p.vip, p.plugin, p.generation),
            None => println!("vip {}: plugin {} published (generation {}) until the daemon restarts", p.vip, p.plugin, p.generation),
        },
        Response::Error(_) => {}
    }
}

/// A flag set by SIGINT or SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(Error::system("installing a signal handler"))?;
    }
    Ok(stop)
}

fn wait(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn decap(iface: &str, gue_port: u16, mode: XdpMode) -> Result<(), Error> {
    let stop = stop_flag()?;
    let mut prog = DecapProgram::attach(iface, mode, gue_port)?;
    for a in netinfo::iface_addrs(iface)? {
        prog.add_local_addr(a)?;
    }
    println!("ready iface={iface} gue_port={gue_port} xdp_mode={}", prog.mode());
    wait(&stop);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_test_inputs_parse_with_their_units_and_name_what_is_wrong() {
        assert_eq!(parse_rtt("1=2ms"), Ok((1, 2_000)));
        assert_eq!(parse_rtt("0=500us"), Ok((0, 500)));
        assert_eq!(parse_rtt("3=1.5s"), Ok((3, 1_500_000)));
        assert_eq!(parse_rate("3=50MB/s"), Ok((3, 50_000_000)));
        assert_eq!(parse_rate("2=1.5kB/s"), Ok((2, 1_500)));
        assert_eq!(parse_load("1=30"), Ok((1, 30)));
        assert_eq!(parse_rtt("1=2"), Err("`1=2`: `2` is no duration like 2ms".into()));
        assert_eq!(parse_rate("x=1MB/s"), Err("`x=1MB/s`: `x` is no backend index (0, 1, ...)".into()));
        assert_eq!(parse_load("30"), Err("`30`: give IDX=connection count".into()));
        assert_eq!(by_index(&[(2, 7u32), (0, 1)]), [1, 0, 7]);
    }

    /// Every argument of every subcommand says what it is in `--help` (and
    /// so in the completions and the manual page).
    #[test]
    fn every_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                // clap's own --help and --version carry their text.
                if matches!(a.get_id().as_str(), "help" | "version") {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", a.get_long().map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"))));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        walk(&cmd, "fulcrum", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn completions_and_the_manual_cover_every_subcommand() {
        let mut cmd = Cli::command();
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "fulcrum", &mut out);
            let script = String::from_utf8(out).expect("UTF-8");
            for name in &names {
                assert!(script.contains(name.as_str()), "{shell}: no {name}");
            }
            assert!(script.contains("through") || script.contains("--vip"), "{shell}: flags of subcommands");
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page).expect("render");
        // roff escapes hyphens.
        let page = String::from_utf8(page).expect("UTF-8").replace("\\-", "-");
        assert!(page.contains(".TH fulcrum 1") && page.contains("Exit codes"), "{page}");
        for name in &names {
            assert!(page.contains(name.as_str()), "manual: no {name}");
        }
    }
}
