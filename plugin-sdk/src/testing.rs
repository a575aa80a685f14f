//! Unit-test helpers for plugin authors, behind the cargo feature `testing`.
//!
//! Natively a plugin's `pick` is a plain function, so a unit test needs only
//! rows (`Backend::new(id, weight)` and its builders) and one call made the
//! way the host makes it. [`choose`] is that call; it also checks what the
//! host checks after every `lb_pick`, so a plugin that names a row it must
//! not fails its own tests instead of faulting in production:
//!
//! ```toml
//! [dev-dependencies]
//! fulcrum-plugin-sdk = { path = "../../plugin-sdk", features = ["testing"] }
//! ```
//!
//! ```
//! use fulcrum_plugin_sdk::testing::choose;
//! use fulcrum_plugin_sdk::{Backend, Backends, Choice, Flow};
//!
//! fn pick(_flow: &Flow, backends: &Backends) -> Choice {
//!     backends.min_by_key(|b| b.active)
//! }
//!
//! let rows = [Backend::new(1, 1).with_active(7), Backend::new(2, 1).with_active(3), Backend::new(3, 1).down()];
//! assert_eq!(choose(pick, &rows), Some(1));
//! assert_eq!(choose(pick, &rows[2..]), None);
//! ```
//!
//! Stateful plugins pass a closure over their state, e.g.
//! `choose(|f, b| rr.pick(f, b), &rows)`; policies that read the flow use
//! [`choose_for`]. Only `core` is used, so enabling the feature never
//! changes what the crate needs on wasm32.

use crate::{Backend, Backends, Choice, Flow};

/// The row `pick` chooses among `rows` for [`Flow::default()`] (all-zero
/// addresses, ports and hash), or `None` when it declines. For policies
/// that do not read the flow, such as the load-based ones.
///
/// # Panics
///
/// When `pick` names a row that is out of range, down or drained (see
/// [`choose_for`]).
#[track_caller]
pub fn choose(pick: impl FnOnce(&Flow, &Backends) -> Choice, rows: &[Backend]) -> Option<usize> {
    choose_for(pick, &Flow::default(), rows)
}

/// The row `pick` chooses among `rows` for `flow`, or `None` when it
/// declines.
///
/// # Panics
///
/// When `pick` names a row that is out of range (the export glue would
/// quietly turn it into "no choice", hiding the bug) or one that is down or
/// drained (the host counts that as a fault and sends the flow elsewhere).
#[track_caller]
pub fn choose_for(pick: impl FnOnce(&Flow, &Backends) -> Choice, flow: &Flow, rows: &[Backend]) -> Option<usize> {
    let i = pick(flow, &Backends::new(rows)).index()?;
    match rows.get(i) {
        Some(row) if row.is_eligible() => Some(i),
        Some(row) => panic!("pick chose row {i}, which is down or drained: {row:?}"),
        None => panic!("pick chose row {i}, but there are only {} rows", rows.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn least_active(_flow: &Flow, backends: &Backends) -> Choice {
        backends.min_by_key(|b| b.active)
    }

    #[test]
    fn choose_returns_the_pick_or_none() {
        let rows = [Backend::new(1, 1).with_active(5), Backend::new(2, 1).with_active(2)];
        assert_eq!(choose(least_active, &rows), Some(1));
        assert_eq!(choose(least_active, &[]), None);
        assert_eq!(choose(|_, _| Choice::NoChoice, &rows), None);
    }

    #[test]
    fn choose_for_hands_the_flow_and_all_rows_to_pick() {
        let flow = Flow::v4([198, 18, 0, 1], 4000, [198, 18, 0, 100], 80, 6, 7);
        let rows = [Backend::new(1, 1), Backend::new(2, 1), Backend::new(3, 1)];
        assert_eq!(choose_for(|f, b| Choice::Backend(f.hash as usize % b.len()), &flow, &rows), Some(1));
        let mut seen = None;
        choose(
            |f, b| {
                seen = Some((*f, b.len()));
                Choice::NoChoice
            },
            &rows,
        );
        assert_eq!(seen, Some((Flow::default(), 3)));
    }

    #[test]
    #[should_panic(expected = "down or drained")]
    fn a_pick_of_a_down_row_fails_the_test() {
        choose(|_, _| Choice::Backend(0), &[Backend::new(1, 1).down()]);
    }

    #[test]
    #[should_panic(expected = "down or drained")]
    fn a_pick_of_a_drained_row_fails_the_test() {
        choose(|_, _| Choice::Backend(1), &[Backend::new(1, 1), Backend::new(2, 0)]);
    }

    #[test]
    #[should_panic(expected = "only 2 rows")]
    fn a_pick_out_of_range_fails_the_test() {
        choose(|_, _| Choice::Backend(2), &[Backend::new(1, 1), Backend::new(2, 1)]);
    }
}
