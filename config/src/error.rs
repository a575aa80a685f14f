//! Errors that name the file, the line and the field, and the collector
//! that gathers all of them in one pass.

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the caller named it.
    pub origin: String,
    /// 1-based; `None` when the problem belongs to no line (the file could
    /// not be read, or something required is missing from the whole file).
    pub line: Option<usize>,
    /// What the problem is in: "daemon", "vip 198.18.0.100:80/tcp,
    /// backend 2". Empty for TOML syntax errors.
    pub context: String,
    /// The field, what was expected and what was found.
    pub message: String,
}

impl ConfigError {
    /// An error whose origin, context and message have every control or
    /// invisible character escaped (`\n`, `\u{1b}`): they echo names and
    /// paths from the file, and one holding a newline or a terminal escape
    /// must not be able to forge another `FILE:LINE: ...` line or restyle
    /// the terminal. Quotes and backslashes are kept as they are.
    pub fn new(origin: &str, line: Option<usize>, context: &str, message: &str) -> ConfigError {
        ConfigError { origin: escape_controls(origin), line, context: escape_controls(context), message: escape_controls(message) }
    }
}

fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\'' | '\\' => out.push(c),
            _ => out.extend(c.escape_debug()),
        }
    }
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.context.is_empty() {
            write!(f, ": {}", self.context)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// How many errors `Display` lists before it counts the rest: a file
    /// that is wrong throughout (or no config at all) should fill a screen
    /// with its first problems, not scroll thousands of lines past.
    pub const MAX_SHOWN: usize = 20;

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many problems there are, shown or not.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One error per line, so a terminal or an editor's error list shows them
/// as a compiler's: the first `MAX_SHOWN`, then `... and K more problems`.
/// The alternate form (`{:#}`) lists every one.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if f.alternate() { self.len() } else { self.len().min(Self::MAX_SHOWN) };
        for (i, e) in self.0[..shown].iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        match self.len() - shown {
            0 => Ok(()),
            1 => write!(f, "\n... and 1 more problem"),
            more => write!(f, "\n... and {more} more problems"),
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects errors while the whole file is checked, turning byte spans
/// into line numbers.
pub(crate) struct Report<'a> {
    origin: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(text: &str, origin: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Report { origin, line_starts, errors: Vec::new() }
    }

    /// The 1-based line holding byte `pos`.
    pub(crate) fn line(&self, pos: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= pos).max(1)
    }

    pub(crate) fn error(&mut self, span: Range<usize>, context: &str, message: impl Into<String>) {
        let line = Some(self.line(span.start));
        self.push(line, context, message.into());
    }

    /// A problem with no line of its own (something missing from the file).
    pub(crate) fn error_no_line(&mut self, context: &str, message: impl Into<String>) {
        self.push(None, context, message.into());
    }

    fn push(&mut self, line: Option<usize>, context: &str, message: String) {
        self.errors.push(ConfigError::new(self.origin, line, context, &message));
    }

    /// Gives the errors from index `from` on the context `context`: for
    /// those found before the name of what they are in was known.
    pub(crate) fn rename(&mut self, from: usize, context: &str) {
        for e in &mut self.errors[from..] {
            e.context = escape_controls(context);
        }
    }

    /// `value` if nothing was wrong, else every error in line order (the
    /// checks run section by section, not strictly top to bottom).
    pub(crate) fn finish<T>(mut self, value: Option<T>) -> Result<T, ConfigErrors> {
        self.errors.sort_by_key(|e| e.line);
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ => {
                debug_assert!(!self.errors.is_empty(), "a config was rejected without saying why");
                Err(ConfigErrors(self.errors))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_count_the_newline_as_part_of_its_line() {
        let r = Report::new("a\nbc\n\nd", "f");
        assert_eq!([0, 1, 2, 3, 4, 5, 6].map(|p| r.line(p)), [1, 1, 2, 2, 2, 3, 4]);
        assert_eq!(r.line(100), 4);
        assert_eq!(Report::new("", "f").line(0), 1);
    }

    #[test]
    fn display_lists_one_error_per_line() {
        let e = |line, context: &str| ConfigError { origin: "f.toml".into(), line, context: context.into(), message: "m".into() };
        let errors = ConfigErrors(vec![e(Some(3), "vip x"), e(None, ""), e(Some(1), "")]);
        assert_eq!(errors.to_string(), "f.toml:3: vip x: m\nf.toml: m\nf.toml:1: m");
    }
}
