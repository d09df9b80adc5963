//! UTC timestamps in the wire format of PROTOCOL.md §0.3 rule 3:
//! ISO-8601, UTC, millisecond precision (`2026-04-02T17:26:11.123Z`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::civil;

/// A point in time with millisecond precision, always rendered in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_millis: i64,
}

/// Why a string is not an ISO-8601 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an ISO-8601 timestamp like 2026-04-02T17:26:11.123Z: {reason}")]
pub struct TimestampError {
    input: String,
    reason: &'static str,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(unix_millis: i64) -> Self {
        Self { unix_millis }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.unix_millis
    }

    /// Parses RFC 3339 / ISO-8601 date-times: `YYYY-MM-DDTHH:MM:SS`, an
    /// optional fraction (any number of digits, truncated to milliseconds)
    /// and `Z` or a `±HH:MM` offset. A lower-case `t`/`z` is accepted too.
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let err = |reason| TimestampError {
            input: input.to_owned(),
            reason,
        };
        let b = input.as_bytes();
        if b.len() < 20 {
            return Err(err("too short"));
        }
        let num = |range: std::ops::Range<usize>| -> Result<u32, TimestampError> {
            let digits = &b[range];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(err("expected digits"));
            }
            Ok(digits
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
        };
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(err("expected YYYY-MM-DDTHH:MM:SS"));
        }
        let year = i64::from(num(0..4)?);
        let (month, day) = (num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || day == 0 || day > civil::days_in_month(year, month) {
            return Err(err("no such date"));
        }
        // 60 is a leap second; it is folded into the next second.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("no such time of day"));
        }
        let mut rest = &b[19..];
        let mut millis = 0u32;
        if let Some((b'.', frac)) = rest.split_first() {
            let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return Err(err("empty fraction of a second"));
            }
            for (i, d) in frac[..n.min(3)].iter().enumerate() {
                millis += u32::from(d - b'0') * [100, 10, 1][i];
            }
            rest = &frac[n..];
        }
        let offset_minutes: i64 = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(err("bad UTC offset"));
                }
                let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
                let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
                if h > 23 || m > 59 {
                    return Err(err("bad UTC offset"));
                }
                if *sign == b'+' {
                    h * 60 + m
                } else {
                    -(h * 60 + m)
                }
            }
            _ => return Err(err("expected Z or a ±HH:MM offset at the end")),
        };
        let days = civil::days_from_civil(year, month, day);
        let secs =
            days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
                - offset_minutes * 60;
        Ok(Self::from_unix_millis(secs * 1000 + i64::from(millis)))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let unix_millis = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Self { unix_millis }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        let d = Duration::from_millis(t.unix_millis.unsigned_abs());
        if t.unix_millis >= 0 {
            UNIX_EPOCH + d
        } else {
            UNIX_EPOCH - d
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.unix_millis.div_euclid(1000);
        let millis = self.unix_millis.rem_euclid(1000);
        let (y, m, d) = civil::civil_from_days(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            s / 3600,
            s % 3600 / 60,
            s % 60
        )
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "api")]
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "api")]
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        let t = Timestamp::from_unix_millis(1_775_150_771_123);
        assert_eq!(t.to_string(), "2026-04-02T17:26:11.123Z");
        assert_eq!(
            Timestamp::from_unix_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_the_server_and_go_write() {
        let cases = [
            ("2026-04-02T17:26:11.123Z", 1_775_150_771_123),
            ("2026-04-02T17:26:11Z", 1_775_150_771_000),
            ("2026-04-02T17:26:11.123456789Z", 1_775_150_771_123),
            ("2026-04-02T19:26:11.5+02:00", 1_775_150_771_500),
            ("2026-04-02t17:26:11z", 1_775_150_771_000),
        ];
        for (s, ms) in cases {
            assert_eq!(Timestamp::parse(s).unwrap().unix_millis(), ms, "{s}");
        }
    }

    #[test]
    fn rejects_non_iso_strings() {
        for s in [
            "",
            "yesterday",
            "2026-04-02",
            "2026-04-02 17:26:11Z",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-04-02T24:00:00Z",
            "2026-04-02T17:26:11",
            "2026-04-02T17:26:11.Z",
            "2026-04-02T17:26:11+0200",
            "2026-04-02T17:26:11Zjunk",
            "２０２６-04-02T17:26:11Z",
        ] {
            assert!(Timestamp::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn display_parse_round_trip() {
        for ms in [0, 1, 999, 1_775_150_771_123, 4_102_444_800_000, -86_400_001] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }
    }
}
