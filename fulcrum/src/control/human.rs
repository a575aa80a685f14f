//! Times and durations as an operator reads them in `fulcrum status`:
//! "3h12m" rather than 11520 s, "2026-12-04 18:00:01 UTC (5m ago)"
//! rather than a Unix time. `--json` keeps the numbers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The two largest units of `secs`, a zero second left out: "42s",
/// "5m", "5m12s", "3h12m", "2d4h".
pub fn duration(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|&(_, n)| secs >= n) else { return "0s".into() };
    let (big, n) = units[first];
    let mut out = format!("{}{big}", secs / n);
    if let Some(&(small, m)) = units.get(first + 1) {
        let rest = secs % n / m;
        if rest > 0 {
            out.push_str(&format!("{rest}{small}"));
        }
    }
    out
}

/// Unix seconds as "2026-12-04 18:00:01 UTC".
pub fn utc(unix: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix);
    // RFC 3339 "2026-12-04T18:00:01Z", spelt for reading.
    humantime::format_rfc3339_seconds(at).to_string().replacen('T', " ", 1).replace('Z', " UTC")
}

/// "2026-12-04 18:00:01 UTC (5m ago)", as seen at `now` (Unix seconds);
/// a time ahead of `now` (clocks apart) says "from now".
pub fn at(unix: u64, now: u64) -> String {
    match now.checked_sub(unix) {
        Some(0) => format!("{} (just now)", utc(unix)),
        Some(d) => format!("{} ({} ago)", utc(unix), duration(d)),
        None => format!("{} ({} from now)", utc(unix), duration(unix - now)),
    }
}

/// The current Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        for (secs, shown) in
            [(0, "0s"), (42, "42s"), (60, "1m"), (300, "5m"), (312, "5m12s"), (3_600, "1h"), (11_520, "3h12m"), (11_521, "3h12m"), (187_200, "2d4h")]
        {
            assert_eq!(duration(secs), shown, "{secs}");
        }
    }

    #[test]
    fn times_are_utc_with_how_long_ago() {
        // 2026-12-04 18:00:01 UTC.
        let t = 1_796_407_201;
        assert_eq!(utc(t), "2026-12-04 18:00:01 UTC");
        assert_eq!(at(t, t + 300), "2026-12-04 18:00:01 UTC (5m ago)");
        assert_eq!(at(t, t), "2026-12-04 18:00:01 UTC (just now)");
        assert_eq!(at(t, t - 2), "2026-12-04 18:00:01 UTC (2s from now)");
    }
}
