//! Human-readable output helpers: times and durations.

/// Formats ms since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses a time for `--since`/`--until`: `now`, relative to now (`-2h`, `-30m`, `-1d`), ms
/// since the epoch, RFC 3339 in UTC (`YYYY-MM-DDTHH:MM:SS[.mmm]Z`), or `YYYY-MM-DD`.
pub fn parse_time(s: &str) -> Result<u64, String> {
    parse_time_at(
        s,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// [`parse_time`] with `now` given.
pub fn parse_time_at(s: &str, now: u64) -> Result<u64, String> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = duejob::config::parse_duration(ago)
            .map_err(|e| format!("invalid relative time {s:?}: {e} (e.g. -2h, -30m, -1d)"))?;
        return Ok(now.saturating_sub(d.as_millis() as u64));
    }
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || {
        format!(
            "invalid time {s:?}: use -2h (relative), now, 2026-01-31, 2026-01-31T12:00:00Z or \
             ms since the epoch"
        )
    };
    let (date, rest) = s.split_once('T').unwrap_or((s, ""));
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let y: i64 = parts[0].parse().map_err(|_| bad())?;
    let mo: i64 = parts[1].parse().map_err(|_| bad())?;
    let d: i64 = parts[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let mut ms_of_day = 0i64;
    if !rest.is_empty() {
        let t = rest.strip_suffix('Z').ok_or_else(bad)?;
        let (hms, frac) = t.split_once('.').unwrap_or((t, "0"));
        let hms: Vec<i64> = hms
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
            return Err(bad());
        }
        let frac: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
        ms_of_day = ((hms[0] * 60 + hms[1]) * 60 + hms[2]) * 1000 + frac;
    }
    let days = days_from_civil(y, mo, d);
    Ok((days * 86_400_000 + ms_of_day) as u64)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats milliseconds compactly (`850ms`, `12.5s`, `3m20s`, `2h`).
pub fn millis(ms: f64) -> String {
    if ms < 0.0 {
        return format!("-{}", millis(-ms));
    }
    if ms == 0.0 {
        return "0".into();
    }
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        format!(
            "{}m{:02}s",
            (ms / 60_000.0) as u64,
            ((ms % 60_000.0) / 1000.0) as u64
        )
    } else {
        format!("{:.1}h", ms / 3_600_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2024-13-01").is_err());
        for ms in [0u64, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&time(ms)), Ok(ms));
        }
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time_at("now", now), Ok(now));
        assert_eq!(parse_time_at("-2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time_at("-30m", now), Ok(now - 1_800_000));
        assert!(parse_time_at("-2x", now).unwrap_err().contains("-2h"));
        assert!(parse_time_at("+2h", now).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(millis(0.25), "250µs");
        assert_eq!(millis(12.34), "12.3ms");
        assert_eq!(millis(200_000.0), "3m20s");
        assert_eq!(millis(-1019.0), "-1.0s");
        assert_eq!(millis(-0.5), "-500µs");
        assert_eq!(millis(0.0), "0");
    }
}
