//! The report of a line-rate run: markdown tables and PNG plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::search::Trial;
use crate::sink::Latency;

/// What one peer measured.
#[derive(Clone, Debug, Default)]
pub struct PeerResult {
    pub name: String,
    pub topology: String,
    /// Every trial of its searches: throughput against offered load.
    pub trials: Vec<Trial>,
    /// Best trial with zero loss / at most 0.1% loss, and whether it was at
    /// the top of the range (then the generator, not the device, limited).
    pub zero: Option<(Trial, bool)>,
    pub tenth: Option<(Trial, bool)>,
    /// At half the zero-loss rate: that rate, latency, reordered frames.
    pub latency: Option<(f64, Latency, u64)>,
    /// New connections per second and failed connections.
    pub cps: Option<(f64, u64)>,
    /// The device's CPU time and the frames it delivered over all trials.
    pub cpu: Option<(f64, u64)>,
}

impl PeerResult {
    pub fn zero_rate(&self) -> Option<f64> {
        self.zero.map(|(t, _)| t.received_rate())
    }

    /// The device's CPU ns per delivered frame over all trials.
    pub fn cpu_ns(&self) -> Option<f64> {
        self.cpu.filter(|c| c.1 > 0).map(|(secs, frames)| secs * 1e9 / frames as f64)
    }
}

/// A target of the issue, measured.
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

fn kpps(r: f64) -> String {
    format!("{:.1}", r / 1000.0)
}

fn rate_cell(best: Option<(Trial, bool)>) -> String {
    match best {
        Some((t, at_max)) => format!("{}{}", kpps(t.received_rate()), if at_max { " (gen. limit)" } else { "" }),
        None => "none".into(),
    }
}

/// The throughput, latency and connection tables, ratios and targets.
pub fn markdown(results: &[PeerResult], ratios: &[(String, Option<f64>)], checks: &[Check]) -> String {
    let mut m = String::new();
    m += "| device under test | topology | zero-loss kpps | ≤0.1% loss kpps | device CPU ns per frame | latency at half zero-loss rate: p50 / p99 / p99.9 / max µs | reordered |\n";
    m += "|---|---|---|---|---|---|---|\n";
    for r in results.iter().filter(|r| !r.trials.is_empty()) {
        let lat = r.latency.map_or("".into(), |(rate, l, _)| format!("{:.1} / {:.1} / {:.1} / {:.0} (at {} kpps)", l.p50, l.p99, l.p999, l.max, kpps(rate)));
        let reordered = r.latency.map_or("".into(), |(_, _, n)| n.to_string());
        let cpu = r.cpu_ns().map_or("".into(), |ns| format!("{ns:.0}"));
        let _ = writeln!(m, "| {} | {} | {} | {} | {cpu} | {lat} | {reordered} |", r.name, r.topology, rate_cell(r.zero), rate_cell(r.tenth));
    }
    let cps: Vec<&PeerResult> = results.iter().filter(|r| r.cps.is_some()).collect();
    if !cps.is_empty() {
        m += "\n| device under test (inline) | new TCP connections per second | failed |\n|---|---|---|\n";
        for r in cps {
            let (rate, failed) = r.cps.unwrap_or_default();
            let _ = writeln!(m, "| {} | {rate:.0} | {failed} |", r.name);
        }
    }
    m += "\n| ratio | value |\n|---|---|\n";
    for (what, v) in ratios {
        let _ = writeln!(m, "| {what} | {} |", v.map_or("n/a".into(), |v| format!("{v:.2}")));
    }
    m += "\n| target | wanted | measured | met |\n|---|---|---|---|\n";
    for c in checks {
        let _ = writeln!(m, "| {} | {} | {} | {} |", c.what, c.target, c.measured, if c.met { "yes" } else { "**no**" });
    }
    m
}

/// Loads a TrueType font for the plots' text (ab_glyph has none built in).
pub fn register_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("font {}: {e} (Debian: fonts-dejavu-core)", path.display()))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("font {}: not a TrueType font", path.display()))
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

pub type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Received against offered rate (kpps), one line per peer, every trial.
pub fn plot_throughput(results: &[PeerResult], title: &str, path: &Path) -> PlotResult {
    let peers: Vec<&PeerResult> = results.iter().filter(|r| !r.trials.is_empty()).collect();
    let top = peers.iter().flat_map(|r| &r.trials).map(|t| t.sent_rate().max(t.received_rate())).fold(1.0, f64::max) / 1000.0 * 1.05;
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..top, 0.0..top)?;
    chart.configure_mesh().x_desc("offered (sent) kpps").y_desc("received kpps").label_style(("sans-serif", 15)).draw()?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.25)))?
        .label("no loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.25)));
    for (i, r) in peers.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = r.trials.iter().map(|t| (t.sent_rate() / 1000.0, t.received_rate() / 1000.0)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(&r.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Latency percentiles (µs, log scale) at half each peer's zero-loss rate.
pub fn plot_latency(results: &[PeerResult], title: &str, path: &Path) -> PlotResult {
    let peers: Vec<(&str, Latency)> = results.iter().filter_map(|r| r.latency.map(|(_, l, _)| (r.name.as_str(), l))).collect();
    let top = peers.iter().map(|(_, l)| l.max).fold(10.0, f64::max) * 1.5;
    let low = peers.iter().map(|(_, l)| l.p50).fold(top, f64::min).max(0.1) / 1.5;
    let n = Latency::LABELS.len();
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(-0.3..(n as f64 - 0.7), (low..top).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| Latency::LABELS.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 0.01).map_or(String::new(), |s| s.to_string()))
        .x_desc("percentile")
        .y_desc("one-way latency, µs (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (name, l)) in peers.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = l.values().iter().enumerate().map(|(k, &v)| (k as f64, v.max(low))).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}
