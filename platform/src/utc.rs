//! UTC calendar time from the system clock, without a date library.
//!
//! Log lines, certificate validity and reported properties need only "which UTC day and time is
//! it"; that is a few lines of integer arithmetic (Howard Hinnant's `civil_from_days`), cheaper
//! than pulling in chrono. Leap seconds do not exist in unix time, so none are handled here.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const SECONDS_PER_DAY: u64 = 86_400;

/// A UTC instant split into calendar fields, millisecond resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcDateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
}

impl UtcDateTime {
    /// The instant `millis` milliseconds after 1970-01-01T00:00:00Z.
    pub fn from_unix_millis(millis: u64) -> Self {
        let seconds = millis / 1000;
        let second_of_day = seconds % SECONDS_PER_DAY;
        // u64::MAX / 86_400 fits in i64, so the conversion cannot fail.
        let days = i64::try_from(seconds / SECONDS_PER_DAY).unwrap_or(i64::MAX);
        let (year, month, day) = civil_from_days(days);
        // Each remainder below is bounded by its divisor, so the narrowing is lossless.
        UtcDateTime {
            year,
            month,
            day,
            hour: (second_of_day / 3600) as u8,
            minute: (second_of_day % 3600 / 60) as u8,
            second: (second_of_day % 60) as u8,
            millis: (millis % 1000) as u16,
        }
    }

    /// Converts a `SystemTime`; a clock set before 1970 reads as the epoch rather than failing,
    /// because a log line or a certificate date is better than none.
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self::from_unix_millis(millis)
    }

    /// The current time from the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }
}

/// RFC 3339 with milliseconds and `Z`: `2026-11-27T17:03:47.123Z`.
impl fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// Days since the current unix day (UTC), for date arithmetic such as certificate validity.
pub fn unix_days_now() -> i64 {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    i64::try_from(seconds / SECONDS_PER_DAY).unwrap_or(i64::MAX)
}

/// Proleptic Gregorian `(year, month, day)` of the day `days` after 1970-01-01.
///
/// Hinnant's algorithm: shift the epoch to 0000-03-01 so the leap day is the last day of the
/// year, then split into 400-year eras of 146 097 days.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    /// Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT_DAYS: i64 = 719_468;
    const DAYS_PER_ERA: i64 = 146_097;
    let shifted = days.saturating_add(EPOCH_SHIFT_DAYS);
    let era = shifted.div_euclid(DAYS_PER_ERA);
    let day_of_era = shifted.rem_euclid(DAYS_PER_ERA); // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // month and day are bounded as commented above, so the narrowing is lossless.
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_from_days_matches_python_datetime() {
        // Expected values from python3: date(1970,1,1) + timedelta(days=d).
        let table = [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (59, (1970, 3, 1)),
            (60, (1970, 3, 2)),
            (11_016, (2000, 2, 29)),
            (19_722, (2023, 12, 31)),
            (20_784, (2026, 11, 27)),
            (2_932_896, (9999, 12, 31)),
            (-719_162, (1, 1, 1)),
        ];
        for (days, expected) in table {
            assert_eq!(civil_from_days(days), expected, "days = {days}");
        }
    }

    #[test]
    fn consecutive_days_advance_the_calendar_by_one() {
        let mut previous = civil_from_days(-200_000);
        for days in -199_999..200_000 {
            let current = civil_from_days(days);
            let next_in_month = (previous.0, previous.1, previous.2 + 1);
            let first_of_next_month = (previous.0, previous.1 + 1, 1);
            let new_year = (previous.0 + 1, 1, 1);
            assert!(
                current == next_in_month || current == first_of_next_month || current == new_year,
                "{previous:?} -> {current:?}"
            );
            previous = current;
        }
    }

    #[test]
    fn formats_rfc3339_with_millis() {
        // python3: datetime(2026,11,27,17,3,47,123000, tzinfo=timezone.utc).timestamp()
        let time = UtcDateTime::from_unix_millis(1_795_799_027_123);
        assert_eq!(time.to_string(), "2026-11-27T17:03:47.123Z");
        assert_eq!(UtcDateTime::from_unix_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn clock_before_epoch_reads_as_epoch() {
        let before = UNIX_EPOCH - std::time::Duration::from_secs(10);
        assert_eq!(UtcDateTime::from_system_time(before), UtcDateTime::from_unix_millis(0));
    }
}
