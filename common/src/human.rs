//! Values as an operator reads them in `status` and `promote` output: sizes in binary units
//! ("4.0 GiB"), durations in whole units ("5m 3s"), times in RFC 3339 UTC to the second.

use std::time::{Duration, SystemTime};

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
    fn timestamps_to_the_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_803_250);
        assert_eq!(timestamp(t), "2024-05-01T12:00:03Z");
        assert_eq!(rfc3339(t, true), "2024-05-01T12:00:03.25Z");
    }
}
