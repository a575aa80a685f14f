//! `[plugins]`: limits on compiling plugin modules.

use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::optional;
use crate::model::*;
use crate::raw::*;

impl Checker<'_> {
    pub(super) fn plugins(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Plugins> {
        let ctx = "plugins";
        let raw: RawPlugins = self.section(section, ctx)?;
        // The daemon reads at most 64 MiB of a module file.
        let max_module_bytes =
            optional(&raw.max_module_bytes, |v| self.int(ctx, "max_module_bytes", v, 1024..=64 << 20)).map(|n| n.unwrap_or(Plugins::DEFAULT.max_module_bytes));
        let max_functions =
            optional(&raw.max_functions, |v| self.int(ctx, "max_functions", v, 1..=1_000_000)).map(|n| n.unwrap_or(Plugins::DEFAULT.max_functions));
        let compile_timeout = self.duration(
            ctx,
            "compile_timeout",
            &raw.compile_timeout,
            Plugins::DEFAULT.compile_timeout,
            Duration::from_millis(100)..=Duration::from_secs(600),
        );
        Some(Plugins { max_module_bytes: max_module_bytes?, max_functions: max_functions?, compile_timeout: compile_timeout? })
    }
}
