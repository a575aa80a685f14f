//! The line-rate comparison: every peer on its own namespace lab,
//! all up at once; RFC 2544 searches interleaved trial by trial across the
//! peers; latency at half each zero-loss rate; new connections per second;
//! then markdown tables and PNG plots. Root only. `scripts/bench.sh` runs
//! it with the engine micro-benchmarks.
//!
//! linerate [--trial-ms N] [--trials N] [--flows N] [--frame N]
//!          [--out DIR] [--only SUBSTRING]... [--font TTF]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use fulcrum_io::XdpMode;
use fulcrum_linerate::generator::Profile;
use fulcrum_linerate::peers::{Dut, Peer, topology_name};
use fulcrum_linerate::report::{self, Check, PeerResult};
use fulcrum_linerate::search::Search;
use fulcrum_linerate::sink;
use fulcrum_tests::daemon::LabMode;
use fulcrum_tests::{LabError, Topology, require_root};

#[derive(Parser)]
#[command(about = "Line-rate comparison of fulcrum and its peers on the namespace lab")]
struct Args {
    /// Length of one trial.
    #[arg(long, default_value_t = 700)]
    trial_ms: u64,
    /// Rates tried per RFC 2544 search (a failing rate takes two trials).
    #[arg(long, default_value_t = 6)]
    trials: u32,
    /// Established TCP flows of the main profile.
    #[arg(long, default_value_t = 1024)]
    flows: u32,
    /// Frame length (raised to fit headers and the 16-byte stamp).
    #[arg(long, default_value_t = 64)]
    frame: usize,
    /// Where the plots and linerate.md go.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Only peers whose name contains one of these (the no-device peer
    /// always runs: it sets the search range).
    #[arg(long)]
    only: Vec<String>,
    /// How the AF_XDP devices (fulcrum, the null forwarder) wait when
    /// idle: "adaptive" sleeps in poll(2), "busy" spins with busy polling.
    #[arg(long, default_value = "adaptive", value_parser = ["adaptive", "busy"])]
    poll: String,
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
}

const LOSS_TENTH: f64 = 0.001;
/// Client threads opening connections (the machine has two cores).
const CPS_CLIENTS: usize = 4;

struct Run {
    peer: Peer,
    result: PeerResult,
    pps: bool,
}

fn main() {
    let args = Args::parse();
    require_root();
    if let Err(e) = run(&args) {
        eprintln!("linerate: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), LabError> {
    report::register_font(&args.font).map_err(LabError)?;
    std::fs::create_dir_all(&args.out).map_err(|e| LabError(format!("{}: {e}", args.out.display())))?;
    let trial = Duration::from_millis(args.trial_ms);
    // The main profile: established IPv4 TCP, the traffic the null
    // forwarder handles too (one VIP, one protocol).
    let main = Profile { frame: args.frame, flows: args.flows, mix: [0, 1, 0], v6_percent: 0 };
    // fulcrum NAT is inline (backends route replies through it); DSR and
    // tunnels are one-arm. Each is compared with the null forwarder on its
    // own topology; HAProxy only in connections per second.
    let duts = [
        Dut::Direct,
        Dut::NullFwd(Topology::OneArm, XdpMode::Native),
        Dut::Fulcrum(LabMode::Dsr, XdpMode::Native),
        Dut::Fulcrum(LabMode::Ipip, XdpMode::Native),
        Dut::NullFwd(Topology::Inline, XdpMode::Native),
        Dut::Fulcrum(LabMode::Nat, XdpMode::Native),
        Dut::Nftables,
        Dut::NullFwd(Topology::Inline, XdpMode::Generic),
        Dut::Fulcrum(LabMode::Nat, XdpMode::Generic),
        Dut::Haproxy,
    ];
    let cps_peer = |d: &Dut| matches!(d, Dut::Fulcrum(LabMode::Nat, XdpMode::Native) | Dut::Nftables | Dut::Haproxy);
    let wanted = |d: &Dut| *d == Dut::Direct || args.only.is_empty() || args.only.iter().any(|o| d.to_string().contains(o.as_str()));
    let started = Instant::now();
    let mut runs = Vec::new();
    for dut in duts.into_iter().filter(wanted) {
        eprintln!("setting up: {dut} ({} lab)", topology_name(dut.topology()));
        let peer = Peer::start(dut, &main, cps_peer(&dut), args.poll == "busy")?;
        let result = PeerResult { name: dut.to_string(), topology: topology_name(dut.topology()).into(), ..PeerResult::default() };
        runs.push(Run { peer, result, pps: dut != Dut::Haproxy });
    }
    let (min_len, max_len) = runs[0].peer.generator.frame_lengths();
    eprintln!("{} peers up in {:.0} s; frames {min_len}-{max_len} B", runs.len(), started.elapsed().as_secs_f64());

    // The search range: a little above what the generator moves with no
    // device at all (what it can send when nothing else needs the CPUs).
    let (calib, _) = runs[0].peer.trial(5e6, trial)?;
    let max = (calib.received_rate() * 1.1).max(50_000.0);
    eprintln!("generator → sink without a device: {} kpps; searching 0-{:.0} kpps", (calib.received_rate() / 1000.0) as u64, max / 1000.0);
    // Warm-up: flows enter the tables (fulcrum's, conntrack's).
    for r in runs.iter_mut().filter(|r| r.pps) {
        r.peer.trial(max / 10.0, Duration::from_millis(300))?;
    }

    search(&mut runs, "main", max, args.trials, trial)?;

    // Latency at half each peer's zero-loss rate.
    for r in runs.iter_mut().filter(|r| r.pps) {
        let Some(rate) = r.result.zero_rate().map(|z| z / 2.0) else { continue };
        let (_, counts) = r.peer.trial(rate, trial * 2)?;
        r.result.latency = Some((rate, sink::latency(&counts), counts.reordered));
    }

    // New connections per second, interleaved over three rounds; median.
    let mut cps: Vec<Vec<(f64, u64)>> = vec![Vec::new(); runs.len()];
    for round in 0..3 {
        for (i, r) in runs.iter().enumerate().filter(|(_, r)| cps_peer(&r.peer.dut)) {
            let m = r.peer.connections_per_second(CPS_CLIENTS, trial)?;
            eprintln!("connections round {}/3: {}: {:.0}/s, {} failed", round + 1, r.peer.dut, m.0, m.1);
            cps[i].push(m);
        }
    }
    for (r, mut v) in runs.iter_mut().zip(cps) {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        r.result.cps = v.get(v.len() / 2).map(|&(rate, _)| (rate, v.iter().map(|m| m.1).sum()));
    }

    let main_results: Vec<PeerResult> = runs.iter().map(|r| r.result.clone()).collect();

    // The mixed profile (new flows, UDP, IPv6) through the devices that
    // balance all of it.
    let mix = Profile { frame: args.frame, flows: args.flows, mix: [1, 2, 1], v6_percent: 25 };
    let mixed: Vec<usize> =
        (0..runs.len()).filter(|&i| matches!(runs[i].peer.dut, Dut::Fulcrum(LabMode::Nat | LabMode::Dsr, XdpMode::Native) | Dut::Nftables)).collect();
    let mut mix_results = Vec::new();
    if !mixed.is_empty() {
        let mut mruns: Vec<Run> = Vec::new();
        for &i in mixed.iter().rev() {
            let mut r = runs.remove(i);
            r.peer.generator.set_profile(mix.clone()).map_err(|e| LabError(e.to_string()))?;
            r.result = PeerResult { name: r.peer.dut.to_string(), topology: r.result.topology.clone(), ..PeerResult::default() };
            mruns.push(r);
        }
        mruns.reverse();
        search(&mut mruns, "mix", max, args.trials.saturating_sub(2).max(3), trial)?;
        mix_results = mruns.iter().map(|r| r.result.clone()).collect();
        runs.extend(mruns);
    }

    // fulcrum's counters over the whole run, to explain losses.
    let mut summaries = Vec::new();
    for r in runs {
        let name = r.peer.dut.to_string();
        let out = r.peer.stop()?;
        if out.contains("drops:") {
            summaries.push(format!("{name}:\n{}", out.lines().filter(|l| l.starts_with("drops:") || l.starts_with("workers:")).collect::<Vec<_>>().join("\n")));
        }
    }
    let md = render(&main_results, &mix_results, &main, &mix, args, max, min_len, max_len, &summaries);
    std::fs::write(args.out.join("linerate.md"), &md).map_err(|e| LabError(e.to_string()))?;
    print!("{md}");
    let plot = |f: fn(&[PeerResult], &str, &std::path::Path) -> report::PlotResult, rs: &[PeerResult], title: &str, file: &str| {
        f(rs, title, &args.out.join(file)).map_err(|e| LabError(format!("plot {file}: {e}")))
    };
    plot(report::plot_throughput, &main_results, &format!("Throughput vs offered load ({})", main.describe()), "throughput.png")?;
    plot(report::plot_latency, &main_results, "One-way latency at half the zero-loss rate", "latency.png")?;
    eprintln!("done in {:.0} s; plots in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

/// RFC 2544 searches (zero loss, ≤ 0.1% loss) for every peer, one trial
/// per search per round, peers interleaved within each round, until every
/// search has its answer.
fn search(runs: &mut [Run], label: &str, max: f64, trials: u32, trial: Duration) -> Result<(), LabError> {
    let mut searches: Vec<[Search; 2]> = runs.iter().map(|_| [Search::new(max, 0.0, trials), Search::new(max, LOSS_TENTH, trials)]).collect();
    let total = runs.iter().filter(|r| r.pps).count() * 2 * trials as usize;
    let (mut done, mut round, mut more) = (0, 0, true);
    while more {
        (round, more) = (round + 1, false);
        for (r, s) in runs.iter_mut().zip(&mut searches).filter(|(r, _)| r.pps) {
            for (k, search) in s.iter_mut().enumerate() {
                let Some(rate) = search.next() else { continue };
                more = true;
                let cpu = r.peer.cpu_secs();
                let (t, _) = r.peer.trial(rate, trial)?;
                if let (Some(a), Some(b)) = (cpu, r.peer.cpu_secs()) {
                    let (secs, frames) = r.result.cpu.unwrap_or_default();
                    r.result.cpu = Some((secs + b - a, frames + t.received));
                }
                search.record(t);
                r.result.trials.push(t);
                done += 1;
                let what = if k == 0 { "zero loss" } else { "≤0.1% loss" };
                eprintln!(
                    "[{label} {done:>3}/~{total}] round {round}: {} ({what}): offered {:.0} kpps, sent {:.0}, received {:.0}, loss {:.3}%",
                    r.result.name,
                    rate / 1000.0,
                    t.sent_rate() / 1000.0,
                    t.received_rate() / 1000.0,
                    t.loss() * 100.0
                );
            }
        }
    }
    for (r, [zero, tenth]) in runs.iter_mut().zip(searches) {
        r.result.zero = zero.best().map(|t| (t, zero.at_max()));
        r.result.tenth = tenth.best().map(|t| (t, tenth.at_max()));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    results: &[PeerResult],
    mix: &[PeerResult],
    main: &Profile,
    mix_profile: &Profile,
    args: &Args,
    max: f64,
    min_len: usize,
    max_len: usize,
    summaries: &[String],
) -> String {
    let by = |name: &str| results.iter().find(|r| r.name == name);
    let ratio = |a: &str, b: &str, f: &dyn Fn(&PeerResult) -> Option<f64>| Some(f(by(a)?)? / f(by(b)?)?);
    let zero = |r: &PeerResult| r.zero_rate();
    let cps = |r: &PeerResult| r.cps.map(|c| c.0);
    let name = |d: Dut| d.to_string();
    let (n_one, n_in, n_gen) = (
        name(Dut::NullFwd(Topology::OneArm, XdpMode::Native)),
        name(Dut::NullFwd(Topology::Inline, XdpMode::Native)),
        name(Dut::NullFwd(Topology::Inline, XdpMode::Generic)),
    );
    let (f_dsr, f_ipip, f_nat, f_gen) = (
        name(Dut::Fulcrum(LabMode::Dsr, XdpMode::Native)),
        name(Dut::Fulcrum(LabMode::Ipip, XdpMode::Native)),
        name(Dut::Fulcrum(LabMode::Nat, XdpMode::Native)),
        name(Dut::Fulcrum(LabMode::Nat, XdpMode::Generic)),
    );
    let (nft, hap) = (name(Dut::Nftables), name(Dut::Haproxy));
    let cpu = |r: &PeerResult| r.cpu_ns();
    let ratios = vec![
        ("fulcrum dsr / null fwd (one-arm), device CPU per frame".to_string(), ratio(&f_dsr, &n_one, &cpu)),
        ("fulcrum ipip / null fwd (one-arm), device CPU per frame".into(), ratio(&f_ipip, &n_one, &cpu)),
        ("fulcrum nat / null fwd (inline), device CPU per frame".into(), ratio(&f_nat, &n_in, &cpu)),
        ("fulcrum nat / null fwd, generic XDP (inline), device CPU per frame".into(), ratio(&f_gen, &n_gen, &cpu)),
        ("fulcrum dsr / null fwd (one-arm), zero-loss pps".into(), ratio(&f_dsr, &n_one, &zero)),
        ("fulcrum ipip / null fwd (one-arm), zero-loss pps".into(), ratio(&f_ipip, &n_one, &zero)),
        ("fulcrum nat / null fwd (inline), zero-loss pps".into(), ratio(&f_nat, &n_in, &zero)),
        ("fulcrum nat / nftables DNAT (inline), zero-loss pps".into(), ratio(&f_nat, &nft, &zero)),
        ("fulcrum nat generic XDP / null fwd generic XDP (inline), zero-loss pps".into(), ratio(&f_gen, &n_gen, &zero)),
        ("fulcrum nat native / generic XDP, zero-loss pps".into(), ratio(&f_nat, &f_gen, &zero)),
        ("fulcrum nat / HAProxy, new connections per second".into(), ratio(&f_nat, &hap, &cps)),
        ("fulcrum nat / nftables DNAT, new connections per second".into(), ratio(&f_nat, &nft, &cps)),
    ];
    let mut checks = Vec::new();
    for (f, n) in [(&f_dsr, &n_one), (&f_ipip, &n_one), (&f_nat, &n_in)] {
        if let Some(v) = ratio(f, n, &zero) {
            checks.push(Check { what: format!("{f} vs null forwarder, pps"), target: "≥ 0.9×".into(), measured: format!("{v:.2}×"), met: v >= 0.9 });
        }
    }
    if let Some(v) = ratio(&f_nat, &nft, &zero) {
        checks.push(Check { what: "fulcrum nat vs nftables DNAT, pps".into(), target: "≥ 2×".into(), measured: format!("{v:.2}×"), met: v >= 2.0 });
    }
    for r in results.iter().filter(|r| r.name.starts_with("fulcrum")) {
        if let Some((rate, l, _)) = r.latency {
            checks.push(Check {
                what: format!("{}: p99 one-way latency at {:.0} kpps", r.name, rate / 1000.0),
                target: "≤ 50 µs".into(),
                measured: format!("{:.1} µs", l.p99),
                met: l.p99 <= 50.0,
            });
        }
    }
    let mut md = format!(
        "Profile: {} (sent {min_len}-{max_len} B: the smallest frames that hold the headers and the \
         16-byte stamp); trials of {} ms, {} per search, searched between 0 and {:.0} kpps (1.1× the \
         generator's rate with no device). Rates are received frames per second of the best passing \
         trial; \"gen. limit\" = passed at the top of the range. Device CPU = user + system time of the \
         device's process over all its trials per frame delivered (AF_XDP devices pay their copy-mode \
         TX in their own system calls; kernel forwarding is charged to the sender instead). Latency is one-way, generator to sink \
         (the no-device row is the path's own share), from the sink's 3% buckets. AF_XDP devices poll \
         `{}`.\n\n",
        main.describe(),
        args.trial_ms,
        args.trials,
        max / 1000.0,
        args.poll
    );
    md += &report::markdown(results, &ratios, &checks);
    if !mix.is_empty() {
        md += &format!(
            "\nMixed profile: {}; every SYN opens a new flow (fulcrum's SYN proxy is off: no SYN completes a handshake, which it would take for a flood).\n\n",
            mix_profile.describe()
        );
        md += "| device under test | zero-loss kpps | ≤0.1% loss kpps |\n|---|---|---|\n";
        for r in mix {
            let cell = |b: Option<(fulcrum_linerate::search::Trial, bool)>| b.map_or("none".into(), |(t, _)| format!("{:.1}", t.received_rate() / 1000.0));
            md += &format!("| {} | {} | {} |\n", r.name, cell(r.zero), cell(r.tenth));
        }
    }
    if !summaries.is_empty() {
        md += &format!("\nCounters at exit:\n\n```\n{}\n```\n", summaries.join("\n"));
    }
    md += "\nPlots: `perf/results/throughput.png` (received against offered, every trial), `perf/results/latency.png`.\n";
    md
}
