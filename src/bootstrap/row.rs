//! The rows the file readers hand back before cleaning: [`RawRow`] (a time and five
//! values, any of them missing), a time column whose unit may still be unknown
//! ([`RawTimes`]), the units ([`RawTimeUnit`]) and their inference from magnitude.
//!
//! Owns: the row types `read`, `json` and `feather` share, so the readers never
//! import `read` back (no import circle). Never reads a file.

/// A row as read, before cleaning: the time already in seconds when known.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawRow {
    pub(super) time: Option<i64>,
    pub(super) values: [Option<f64>; 5],
}

/// How raw integer times in a file map to seconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RawTimeUnit {
    Seconds,
    Millis,
    Micros,
    Nanos,
}

impl RawTimeUnit {
    fn per_second(self) -> i64 {
        match self {
            RawTimeUnit::Seconds => 1,
            RawTimeUnit::Millis => 1_000,
            RawTimeUnit::Micros => 1_000_000,
            RawTimeUnit::Nanos => 1_000_000_000,
        }
    }

    /// Whole seconds (floor), so a jittered `…:00.002` lands on its second.
    pub fn to_seconds(self, raw: i64) -> i64 {
        raw.div_euclid(self.per_second())
    }
}

/// The unit of an untyped integer time column, from its largest magnitude —
/// the reference system's rule (`> 1e14` ns, `> 1e11` ms, else s), refined so that
/// microseconds are recognised too: every real-world time after 1973 is above
/// 1e17 in ns, above 1e14 in µs, above 1e11 in ms and below 1e11 in s.
pub fn infer_time_unit(max_abs: i64) -> RawTimeUnit {
    let m = max_abs.unsigned_abs();
    if m > 100_000_000_000_000_000 {
        RawTimeUnit::Nanos
    } else if m > 100_000_000_000_000 {
        RawTimeUnit::Micros
    } else if m > 100_000_000_000 {
        RawTimeUnit::Millis
    } else {
        RawTimeUnit::Seconds
    }
}

/// A time column before its unit is known: raw integers plus either a fixed
/// unit (typed timestamps) or `None` (infer from the largest value).
pub(super) struct RawTimes {
    pub(super) values: Vec<Option<i64>>,
    pub(super) unit: Option<RawTimeUnit>,
}

impl RawTimes {
    pub(super) fn into_seconds(self) -> Vec<Option<i64>> {
        let unit = self.unit.unwrap_or_else(|| {
            infer_time_unit(
                self.values
                    .iter()
                    .flatten()
                    .map(|v| v.saturating_abs())
                    .max()
                    .unwrap_or(0),
            )
        });
        self.values
            .into_iter()
            .map(|v| v.map(|raw| unit.to_seconds(raw)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_heuristic() {
        let t = 1_509_836_520_i64; // 2017-11-04 23:02 UTC
        assert_eq!(infer_time_unit(t), RawTimeUnit::Seconds);
        assert_eq!(infer_time_unit(t * 1000), RawTimeUnit::Millis);
        assert_eq!(infer_time_unit(t * 1_000_000), RawTimeUnit::Micros);
        assert_eq!(infer_time_unit(t * 1_000_000_000), RawTimeUnit::Nanos);
        // The reference system's boundaries: ≤ 1e11 is seconds, just above is ms.
        assert_eq!(infer_time_unit(100_000_000_000), RawTimeUnit::Seconds);
        assert_eq!(infer_time_unit(100_000_000_001), RawTimeUnit::Millis);
        assert_eq!(infer_time_unit(0), RawTimeUnit::Seconds);
        assert_eq!(
            infer_time_unit(i64::MIN.saturating_abs()),
            RawTimeUnit::Nanos
        );
        for unit in [
            RawTimeUnit::Seconds,
            RawTimeUnit::Millis,
            RawTimeUnit::Micros,
            RawTimeUnit::Nanos,
        ] {
            assert_eq!(unit.to_seconds(t * unit.per_second()), t);
        }
        // Jittered funding-rate style time floors to its second.
        assert_eq!(
            RawTimeUnit::Millis.to_seconds(1_637_193_600_002),
            1_637_193_600
        );
        assert_eq!(RawTimeUnit::Millis.to_seconds(-1), -1);
    }
}
