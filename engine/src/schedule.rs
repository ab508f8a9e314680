//! Weekly windows and budget periods in IANA time zones.
//!
//! Time zones come from `chrono-tz`, which compiles the IANA database into the
//! binary, so results do not depend on the zoneinfo files of the image the
//! binary runs in.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use policybind_crds::{BudgetPeriod, Schedule};

/// A schedule with its time zone resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSchedule {
    /// Bit i set: weekday i (Monday = 0) is a window day.
    days: u8,
    start_hour: u32,
    end_hour: u32,
    tz: Tz,
}

/// Parses an IANA zone name, with a message that says what was wrong.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin)"))
}

impl CompiledSchedule {
    pub fn compile(schedule: &Schedule) -> Result<Self, String> {
        let tz = parse_time_zone(&schedule.time_zone)?;
        if schedule.start_hour > 23 {
            return Err(format!("startHour {} is not 0-23", schedule.start_hour));
        }
        if schedule.end_hour == 0 || schedule.end_hour > 24 {
            return Err(format!("endHour {} is not 1-24", schedule.end_hour));
        }
        if schedule.start_hour == schedule.end_hour {
            return Err("startHour and endHour must differ".to_string());
        }
        let days = if schedule.days.is_empty() {
            0x7f
        } else {
            schedule
                .days
                .iter()
                .fold(0u8, |bits, d| bits | (1 << d.index()))
        };
        Ok(CompiledSchedule {
            days,
            start_hour: schedule.start_hour.into(),
            end_hour: schedule.end_hour.into(),
            tz,
        })
    }

    /// Whether `time` falls inside the window. A window whose start hour is after its
    /// end hour runs over midnight and belongs to the day it starts on.
    pub fn contains(&self, time: DateTime<Utc>) -> bool {
        let local = time.with_timezone(&self.tz);
        let day = local.weekday().num_days_from_monday();
        let hour = local.hour();
        let day_set = |d: u32| self.days & (1 << d) != 0;
        if self.start_hour < self.end_hour {
            day_set(day) && hour >= self.start_hour && hour < self.end_hour
        } else {
            let previous = (day + 6) % 7;
            (day_set(day) && hour >= self.start_hour) || (day_set(previous) && hour < self.end_hour)
        }
    }
}

/// Start of the budget period containing `time`, in `tz`: local midnight of the
/// day, of the Monday of the week, or of the first of the month.
pub fn period_start(period: BudgetPeriod, tz: Tz, time: DateTime<Utc>) -> DateTime<Utc> {
    let local = time.with_timezone(&tz).date_naive();
    let first = match period {
        BudgetPeriod::Day => local,
        BudgetPeriod::Week => local - Duration::days(local.weekday().num_days_from_monday().into()),
        BudgetPeriod::Month => NaiveDate::from_ymd_opt(local.year(), local.month(), 1)
            .expect("the first of a month exists"),
    };
    local_midnight(tz, first)
}

/// Start of the period after the one containing `time`.
pub fn period_end(period: BudgetPeriod, tz: Tz, time: DateTime<Utc>) -> DateTime<Utc> {
    let start = period_start(period, tz, time)
        .with_timezone(&tz)
        .date_naive();
    let next = match period {
        BudgetPeriod::Day => start + Duration::days(1),
        BudgetPeriod::Week => start + Duration::days(7),
        BudgetPeriod::Month => {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1).expect("the first of a month exists")
        }
    };
    local_midnight(tz, next)
}

/// The bucket a rolling window of `period` counts in: 1 hour for a day, 6
/// hours for a week, 1 day for a month (a window of 30 days).
pub fn bucket_len(period: BudgetPeriod) -> Duration {
    match period {
        BudgetPeriod::Day => Duration::hours(1),
        BudgetPeriod::Week => Duration::hours(6),
        BudgetPeriod::Month => Duration::days(1),
    }
}

/// Buckets in a rolling window of `period`: 24, 28 or 30.
pub fn window_buckets(period: BudgetPeriod) -> i32 {
    match period {
        BudgetPeriod::Day => 24,
        BudgetPeriod::Week => 28,
        BudgetPeriod::Month => 30,
    }
}

/// Start of the UTC bucket of a rolling window of `period` containing `time`
/// (buckets are aligned on the Unix epoch, so on UTC hours and days).
pub fn bucket_start(period: BudgetPeriod, time: DateTime<Utc>) -> DateTime<Utc> {
    let len = bucket_len(period).num_seconds();
    let seconds = time.timestamp().div_euclid(len) * len;
    DateTime::from_timestamp(seconds, 0).unwrap_or(time)
}

/// Start of what spend is tallied under at `time`: the calendar period
/// ([`period_start`]), or, for a rolling window, the current bucket.
pub fn tally_start(
    period: BudgetPeriod,
    tz: Tz,
    rolling: bool,
    time: DateTime<Utc>,
) -> DateTime<Utc> {
    if rolling {
        bucket_start(period, time)
    } else {
        period_start(period, tz, time)
    }
}

/// The earliest tally start that counts at `time`: the calendar period's
/// start, or, for a rolling window, the start of the bucket
/// [`window_buckets`] before the current one. So a rolling window counts the
/// current bucket and the whole period before it: spend leaves it between one
/// period and one period plus one bucket after it was made, never sooner.
pub fn counting_start(
    period: BudgetPeriod,
    tz: Tz,
    rolling: bool,
    time: DateTime<Utc>,
) -> DateTime<Utc> {
    if rolling {
        bucket_start(period, time) - bucket_len(period) * window_buckets(period)
    } else {
        period_start(period, tz, time)
    }
}

/// When the current tally ends: the calendar period's end ([`period_end`]),
/// or the current bucket's end, when the oldest counted bucket leaves a
/// rolling window.
pub fn tally_end(
    period: BudgetPeriod,
    tz: Tz,
    rolling: bool,
    time: DateTime<Utc>,
) -> DateTime<Utc> {
    if rolling {
        bucket_start(period, time) + bucket_len(period)
    } else {
        period_end(period, tz, time)
    }
}

/// Midnight of a local date as UTC. Where a DST change skips midnight (some zones
/// switch at 00:00), the first existing instant of the day is used.
fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut naive = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.with_timezone(&Utc);
        }
        naive += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&naive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policybind_crds::Weekday;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn rolling_windows_count_whole_utc_buckets_back_one_period_from_the_current_one() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let t = utc("2026-11-22T15:20:00Z");
        let cases = [
            (
                BudgetPeriod::Day,
                "2026-11-22T15:00:00Z",
                "2026-11-21T15:00:00Z",
                "2026-11-22T16:00:00Z",
            ),
            (
                BudgetPeriod::Week,
                "2026-11-22T12:00:00Z",
                "2026-11-15T12:00:00Z",
                "2026-11-22T18:00:00Z",
            ),
            (
                BudgetPeriod::Month,
                "2026-11-22T00:00:00Z",
                "2026-10-23T00:00:00Z",
                "2026-11-23T00:00:00Z",
            ),
        ];
        for (period, tally, counting, end) in cases {
            // The time zone does not move a rolling window.
            assert_eq!(tally_start(period, ny, true, t), utc(tally), "{period:?}");
            assert_eq!(
                counting_start(period, ny, true, t),
                utc(counting),
                "{period:?}"
            );
            assert_eq!(tally_end(period, ny, true, t), utc(end), "{period:?}");
            // Calendar periods are unchanged.
            assert_eq!(
                tally_start(period, ny, false, t),
                period_start(period, ny, t)
            );
            assert_eq!(tally_end(period, ny, false, t), period_end(period, ny, t));
        }
        assert_eq!(
            bucket_start(BudgetPeriod::Day, utc("2026-11-22T15:00:00Z")),
            utc("2026-11-22T15:00:00Z")
        );
    }

    fn business_hours(tz: &str) -> CompiledSchedule {
        CompiledSchedule::compile(&Schedule {
            days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            start_hour: 8,
            end_hour: 18,
            time_zone: tz.to_string(),
        })
        .unwrap()
    }

    #[test]
    fn business_hours_follow_the_time_zone() {
        let berlin = business_hours("Europe/Berlin");
        // 2026-11-23 is a Monday; 07:30 UTC is 08:30 in Berlin (CET, UTC+1).
        assert!(berlin.contains(utc("2026-11-23T07:30:00Z")));
        assert!(!berlin.contains(utc("2026-11-23T06:30:00Z")));
        assert!(!berlin.contains(utc("2026-11-23T17:00:00Z")));
        // Saturday.
        assert!(!berlin.contains(utc("2026-11-28T10:00:00Z")));
        // Summer time: 06:30 UTC is 08:30 CEST.
        assert!(berlin.contains(utc("2026-07-06T06:30:00Z")));
    }

    #[test]
    fn overnight_window_belongs_to_its_start_day() {
        let night = CompiledSchedule::compile(&Schedule {
            days: vec![Weekday::Fri],
            start_hour: 22,
            end_hour: 6,
            time_zone: "UTC".into(),
        })
        .unwrap();
        assert!(night.contains(utc("2026-11-27T23:00:00Z"))); // Friday 23:00
        assert!(night.contains(utc("2026-11-28T05:00:00Z"))); // Saturday 05:00
        assert!(!night.contains(utc("2026-11-28T23:00:00Z"))); // Saturday 23:00
    }

    #[test]
    fn unknown_time_zone_is_an_error() {
        let err = CompiledSchedule::compile(&Schedule {
            days: vec![],
            start_hour: 0,
            end_hour: 24,
            time_zone: "Mars/Olympus".into(),
        })
        .unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn periods_start_at_local_midnight() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let t = utc("2026-11-25T03:00:00Z"); // Tuesday 22:00 in New York
        assert_eq!(
            period_start(BudgetPeriod::Day, ny, t),
            utc("2026-11-24T05:00:00Z")
        );
        assert_eq!(
            period_start(BudgetPeriod::Week, ny, t),
            utc("2026-11-23T05:00:00Z")
        );
        assert_eq!(
            period_start(BudgetPeriod::Month, ny, t),
            utc("2026-11-01T04:00:00Z")
        );
        assert_eq!(
            period_end(BudgetPeriod::Month, ny, t),
            utc("2026-12-01T05:00:00Z")
        );
    }
}
