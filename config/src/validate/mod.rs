//! From the raw file to a `Config`: every check, every default. Each check
//! records its error and goes on, so one run reports everything wrong; a
//! value that failed is `None` and the checks that depend on it are
//! skipped rather than piling up follow-on errors.
//!
//! This file is the driver: it splits the document into its sections and
//! deserializes tables. Each section is checked in its own file, and the
//! checks of single values (addresses, durations, ...) every section uses
//! are in `values`.

mod bgp;
mod daemon;
mod health;
mod interface;
mod limits;
mod plugins;
mod sync;
mod timeouts;
mod values;
mod vip;

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{ConfigErrors, Report};
use crate::model::Config;
use crate::overlay::Overlay;

pub use daemon::{DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_FILE};

const SECTIONS: &str = "`daemon`, `interface`, `limits`, `timeouts`, `plugins`, `vip`, `sync`, `bgp`";
/// What is written as arrays of tables (`[[name]]`).
const ARRAYS: [&str; 3] = ["interface", "vip", "vip.backend"];

pub(crate) fn config(text: &str, origin: &str, base: &Path, overlay: &Overlay) -> Result<Config, ConfigErrors> {
    let snippets = overlay.snippets();
    let mut c = Checker { r: Report::new(text, origin), text, base, runtime: Vec::new() };
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        c.syntax(syntax);
        return c.r.finish(None);
    }
    c.runtime = overlay.apply(doc.get_mut(), &snippets);
    let mut sections: [Option<Spanned<DeValue<'_>>>; 8] = Default::default();
    for (key, value) in doc.into_inner() {
        let slot = match key.get_ref().as_ref() {
            "daemon" => 0,
            "interface" => 1,
            "limits" => 2,
            "timeouts" => 3,
            "vip" => 4,
            "sync" => 5,
            "bgp" => 6,
            "plugins" => 7,
            other => {
                c.r.error(key.span(), "", format!("unknown section `{other}`, expected one of {SECTIONS}"));
                continue;
            }
        };
        sections[slot] = Some(value);
    }
    let [daemon, interfaces, limits, timeouts, vips, sync, bgp, plugins] = sections;
    let daemon = c.daemon(daemon);
    let topology = c.topology(interfaces);
    let limits = c.limits(limits, daemon.as_ref().map(|d| &d.workers));
    let timeouts = c.timeouts(timeouts);
    let plugins = c.plugins(plugins);
    let vips = c.vips(vips);
    let sync = c.sync(sync, daemon.as_ref().map(|d| &d.workers));
    let bgp = c.bgp(bgp, vips.as_deref());
    let config = (|| {
        Some(Config { daemon: daemon?, topology: topology?, limits: limits?, timeouts: timeouts?, plugins: plugins?, vips: vips?, sync: sync?, bgp: bgp? })
    })();
    c.r.finish(config)
}

struct Checker<'a> {
    r: Report<'a>,
    /// The whole file, for hints that look at its lines.
    text: &'a str,
    /// Where relative plugin paths start.
    base: &'a Path,
    /// Per `[[vip]]` entry, its backend entries that runtime changes
    /// (`Overlay`) added or changed.
    runtime: Vec<(usize, Vec<usize>)>,
}

/// Tables and sections.
impl Checker<'_> {
    /// At most one error per line: after the first, the parser's recovery
    /// tends to report follow-on noise.
    fn syntax(&mut self, mut errors: Vec<toml::de::Error>) {
        errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
        let mut last_line = None;
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let line = self.r.line(span.start);
            if last_line != Some(line) {
                last_line = Some(line);
                let message = match self.single_table(line) {
                    Some(hint) => format!("TOML syntax: {}; {hint}", e.message()),
                    None => format!("TOML syntax: {}", e.message()),
                };
                self.r.error(span, "", message);
            }
        }
    }

    /// When the syntax error on `line` is at the header of an array of
    /// tables (`[[vip]]`, `[vip]`) and the file declares that name as a
    /// single table somewhere (`[vip]`): what to write instead. TOML itself
    /// only says "duplicate key" of a second `[vip]`, or of a `[vip]` beside
    /// a `[[vip]]`.
    fn single_table(&self, line: usize) -> Option<String> {
        let mut lines = self.text.split('\n');
        let (name, _) = header(lines.clone().nth(line - 1)?)?;
        if !ARRAYS.contains(&name.as_str()) {
            return None;
        }
        let first = 1 + lines.position(|l| header(l).is_some_and(|(n, array)| n == name && !array))?;
        Some(format!("[{name}] at line {first} is a single table: write [[{name}]] (an array of tables) for each one"))
    }

    /// Deserializes one table. Every unknown key in it is reported and
    /// dropped, and the rest checked on; a nested table (or the table
    /// itself) of the wrong type is reported too, but then the table counts
    /// as failed (`None`).
    fn de<T: DeserializeOwned>(&mut self, mut value: Spanned<DeValue<'_>>, ctx: &str) -> Option<T> {
        let mut failed = false;
        loop {
            let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(t) => return (!failed).then_some(t),
                Err(e) => e,
            };
            let span = e.span().unwrap_or_else(|| value.span());
            let mut path = Vec::new();
            let at_key = locate(value.get_ref(), span.start, &mut path) == Some(true);
            // An unknown key's message names it already.
            let shown = &path[..path.len() - usize::from(at_key)];
            let message = match shown.is_empty() {
                true => e.message().to_string(),
                false => format!("{}: {}", shown.join("."), e.message()),
            };
            self.r.error(span, ctx, message);
            failed |= !at_key;
            if !remove(value.get_mut(), &path) {
                return None;
            }
        }
    }

    /// A section that may be left out (`[daemon]`, `[limits]`,
    /// `[timeouts]`): all its defaults when it is.
    fn section<T: DeserializeOwned + Default>(&mut self, section: Option<Spanned<DeValue<'_>>>, ctx: &str) -> Option<T> {
        match section {
            None => Some(T::default()),
            Some(v) => self.de(v, ctx),
        }
    }

    /// The entries of an array of tables (`[[name]]`); `None` if `value`
    /// is something else (reported).
    fn entries<'i>(&mut self, value: Spanned<DeValue<'i>>, ctx: &str, name: &str) -> Option<Vec<Spanned<DeValue<'i>>>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(a) => Some(a.into_iter().collect()),
            // `[vip]` for `[[vip]]`: the likely slip, named as such.
            DeValue::Table(_) => {
                self.r.error(span, ctx, format!("{name} must be an array of tables: write [[{name}]] for each one, not [{name}]"));
                None
            }
            other => {
                let kind = other.type_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                self.r.error(span, ctx, format!("{name} must be an array of tables ([[{name}]]), got {article} {kind}"));
                None
            }
        }
    }
}

/// Pushes onto `path` the keys leading to the key (`Some(true)`) or value
/// (`Some(false)`) at byte `pos`, an error's position.
fn locate(value: &DeValue<'_>, pos: usize, path: &mut Vec<String>) -> Option<bool> {
    let DeValue::Table(table) = value else {
        return None;
    };
    for (key, v) in table.iter() {
        path.push(key.get_ref().to_string());
        if key.span().contains(&pos) {
            return Some(true);
        }
        // Inner keys first: a standard table's own span is only its header.
        if let Some(at_key) = locate(v.get_ref(), pos, path) {
            return Some(at_key);
        }
        if v.span().contains(&pos) {
            return Some(false);
        }
        path.pop();
    }
    None
}

/// Removes the key at `path`; false if there is none.
fn remove(value: &mut DeValue<'_>, path: &[String]) -> bool {
    let DeValue::Table(table) = value else {
        return false;
    };
    match path {
        [] => false,
        [key] => table.remove(key.as_str()).is_some(),
        [key, rest @ ..] => table.get_mut(key.as_str()).is_some_and(|v| remove(v.get_mut(), rest)),
    }
}

/// The table header `line` holds, if any: its name (spaces dropped) and
/// whether it is an array of tables (`[[name]]`).
fn header(line: &str) -> Option<(String, bool)> {
    let line = line.trim_start();
    let (name, array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split_once("]]")?.0, true),
        None => (line.strip_prefix('[')?.split_once(']')?.0, false),
    };
    Some((name.chars().filter(|c| !c.is_whitespace()).collect(), array))
}
