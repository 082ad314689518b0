//! Values as an operator reads them in `status` and `promote` output: sizes in binary units
//! ("4.0 GiB"), durations in whole units ("5m 3s"), times in RFC 3339 UTC to the second; and
//! durations as an operator writes them, in a config file or on the command line alike
//! ([`parse_duration`]: "500ms", "10s", "5m", "1h 30m", "2d", or a number of seconds).

use std::time::{Duration, SystemTime};

/// Shortest duration any setting or flag takes: below a millisecond QUIC rounds an idle timeout
/// to zero, which means "no timeout", the opposite of what was asked for.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Longest duration any setting or flag takes: 365 days (room for `retain_for`).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Parse a duration as operators write it: a number of seconds (`"3"`, `"1.5"`), or numbers
/// with units, one or several (`"500ms"`, `"10s"`, `"2m"`, `"5 min"`, `"1h 30m"`, `"1h30m"`,
/// `"2d"`, `"1w"`; the units of humantime: ms, s, m/min, h, d, w and their long names). At
/// least [`MIN_DURATION`], at most [`MAX_DURATION`]. The reason in an error does not repeat the
/// value: the caller shows it next to its key or flag. Also the clap value parser of every
/// duration flag (`promote --timeout`, `status --max-age`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(text)?;
    if d < MIN_DURATION {
        return Err(range_error());
    }
    Ok(d)
}

/// [`parse_duration`], where zero in any spelling (`"0"`, `"0s"`, `"0d"`) is zero: for a key
/// whose zero means "off" (`retain_for`). Non-zero values below [`MIN_DURATION`] are refused.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let d = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = t.parse().map_err(|_| expected_duration())?;
        Duration::try_from_secs_f64(secs).map_err(|_| range_error())?
    } else {
        humantime::parse_duration(t).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => range_error(),
            humantime::DurationError::UnknownUnit { unit, .. } => format!(
                "unknown unit {unit:?}; use ms, s, m, h or d, alone or combined like \"1h 30m\""
            ),
            _ => expected_duration(),
        })?
    };
    if d.is_zero() {
        return Ok(d);
    }
    if d < MIN_DURATION || d > MAX_DURATION {
        return Err(range_error());
    }
    Ok(d)
}

fn expected_duration() -> String {
    "expected a duration like \"10s\", \"500ms\", \"5m\" or \"1h 30m\" (a number alone means seconds)"
        .to_string()
}

fn range_error() -> String {
    "out of range: at least 1ms, at most 365d".to_string()
}

/// `1536` -> "1.5 KiB"; below 1 KiB the exact count ("512 B").
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration to the second, largest units first, zeros left out: "2h 5m", "5m 3s", "45s";
/// under a second, milliseconds ("250ms", "0s").
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    text.join(" ")
}

/// RFC 3339 in UTC, to the second: "2024-05-01T12:00:03Z".
pub fn timestamp(t: SystemTime) -> String {
    rfc3339(t, false)
}

/// RFC 3339 in UTC; with `fraction` the sub-second digits too (as `status --json` has always
/// printed them).
pub fn rfc3339(t: SystemTime, fraction: bool) -> String {
    let mut at = time::OffsetDateTime::from(t);
    if !fraction {
        at = at.replace_nanosecond(0).unwrap_or(at);
    }
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

/// A duration as it is written in a config: `1h`, `90m`, `45s`, `500ms`.
pub fn setting(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(16 << 20), "16.0 MiB");
        assert_eq!(size(4 << 30), "4.0 GiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_in_whole_units() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::ZERO), "0ms");
        assert_eq!(duration(Duration::from_millis(45_900)), "45s");
        assert_eq!(duration(Duration::from_secs(303)), "5m 3s");
        assert_eq!(duration(Duration::from_secs(7200 + 300)), "2h 5m");
        assert_eq!(duration(Duration::from_secs(86_400 + 1)), "1d 1s");
    }

    #[test]
    fn durations_as_operators_write_them() {
        let ok = |t: &str| parse_duration(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        // Every spelling config files have used so far.
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("5 min"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("3"), Duration::from_secs(3));
        assert_eq!(ok(" 300 "), Duration::from_secs(300));
        assert_eq!(ok("0.25"), Duration::from_millis(250));
        assert_eq!(ok("1ms"), MIN_DURATION);
        // What operators write on a command line or for retain_for.
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("2d"), Duration::from_secs(2 * 86_400));
        assert_eq!(ok("1w"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok("300s"), Duration::from_secs(300));
        assert_eq!(ok("365d"), MAX_DURATION);
    }

    #[test]
    fn durations_out_of_range_or_unreadable_are_refused() {
        let err = |t: &str| parse_duration(t).expect_err(t);
        for t in ["ten", "", "5 parsecs", "-5s", "1..2", "s", "1e3"] {
            let e = err(t);
            assert!(
                e.starts_with("expected") || e.starts_with("unknown unit"),
                "{t:?}: {e}"
            );
        }
        assert!(err("5 parsecs").contains("\"parsecs\""));
        for t in [
            "0",
            "0s",
            "0.0001ms",
            "0.5ms",
            "366d",
            "99999999999999999999d",
        ] {
            assert!(
                err(t).contains("at least 1ms, at most 365d"),
                "{t:?}: {}",
                err(t)
            );
        }
        // Zero, where zero means "off".
        for t in ["0", "0s", "0ms", "0d", "0.0"] {
            assert_eq!(parse_duration_or_zero(t), Ok(Duration::ZERO), "{t:?}");
        }
        assert!(parse_duration_or_zero("0.5ms").is_err());
        assert_eq!(
            parse_duration_or_zero("7d"),
            Ok(Duration::from_secs(7 * 86_400))
        );
    }

    #[test]
    fn timestamps_to_the_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_803_250);
        assert_eq!(timestamp(t), "2024-05-01T12:00:03Z");
        assert_eq!(rfc3339(t, true), "2024-05-01T12:00:03.25Z");
    }
}
