//! Unix seconds ↔ UTC calendar text (RFC 3339), for log lines, terminal output
//! and command-line dates. Pure arithmetic on the proleptic Gregorian calendar
//! (Howard Hinnant's `days_from_civil` / `civil_from_days`); no time zone but
//! UTC, never reads a clock.

/// `unix_ms` as RFC 3339 in UTC with milliseconds: `2026-12-05T09:12:39.123Z`.
pub fn rfc3339_millis(unix_ms: i64) -> String {
    let (secs, ms) = (unix_ms.div_euclid(1000), unix_ms.rem_euclid(1000));
    format!("{}.{ms:03}Z", date_time(secs))
}

/// `unix_s` as RFC 3339 in UTC to the second: `2026-12-05T09:12:39Z`.
pub fn rfc3339(unix_s: i64) -> String {
    format!("{}Z", date_time(unix_s))
}

fn date_time(unix_s: i64) -> String {
    let (days, sod) = (unix_s.div_euclid(86_400), unix_s.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// A time given by a person: unix seconds (`1700000000`), a date (`2024-01-31`,
/// midnight UTC) or a UTC date and time (`2024-01-31T12:30`, `…T12:30:15`, an
/// optional trailing `Z`). Anything else is an error saying what is accepted.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    let bad = || format!("{text:?} is not a time: give unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][Z] (UTC)");
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, clock) = match t.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (t, None),
    };
    let num = |s: &str, lo: i64, hi: i64| s.parse::<i64>().ok().filter(|n| (lo..=hi).contains(n));
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let (Some(y), Some(m), Some(d)) = (num(y, 1970, 9999), num(m, 1, 12), num(d, 1, 31)) else { return Err(bad()) };
    if d > days_in_month(y, m as u32) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m as u32, d as u32) * 86_400;
    if let Some(clock) = clock {
        let mut parts = clock.split(':');
        let (Some(h), Some(mi)) = (parts.next().and_then(|h| num(h, 0, 23)), parts.next().and_then(|m| num(m, 0, 59))) else {
            return Err(bad());
        };
        let s = match parts.next() {
            None => 0,
            Some(s) => num(s, 0, 59).ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + s;
    }
    Ok(secs)
}

fn days_in_month(y: i64, m: u32) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(951_782_400_500), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339_millis(1_764_925_959_123), "2025-12-05T09:12:39.123Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn days_round_trip() {
        for z in (-1_000..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn parses_what_people_type() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("2024-01-31"), Ok(1_706_659_200));
        assert_eq!(parse_time("2024-01-31T12:30"), Ok(1_706_659_200 + 45_000));
        assert_eq!(parse_time("2024-01-31T12:30:15Z"), Ok(1_706_659_200 + 45_015));
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800));
        for bad in ["", "2023-02-29", "2024-13-01", "2024-01-31T25:00", "yesterday", "2024-01-31T12", "2024-01-31T12:30:15:1"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("unix seconds"), "{bad}: {e}");
        }
    }
}
