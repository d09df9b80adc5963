//! Durations in Go's syntax, as the config file stores them (PROTOCOL.md §2.6)
//! and as the `timeout` field of a `shell.exec` payload carries them (§7.1).
//!
//! Parsing follows Go's `time.ParseDuration`: a sequence of decimal numbers,
//! each with an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`,
//! `m`, `h`), e.g. `1m30s`, `1.5h`, `500ms`; a lone `0` is zero. Formatting
//! follows Go's `Duration.String()`, so a file the agent writes reads the same
//! as one the original agent wrote (`10m0s`, `1m30s`, `500ms`).

use std::fmt::Write as _;
use std::time::Duration;

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration: {reason} (examples: 500ms, 2s, 1m30s, 10m0s, 1h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration. Negative durations are refused: nothing the agent
/// configures can be negative.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut total_nanos: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(err("missing unit"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(err("unknown unit (use ns, us, ms, s, m or h)"));
        };
        let too_big = || err("too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_big())?
        };
        let mut nanos = int.checked_mul(scale).ok_or_else(too_big)?;
        // Fraction: digits beyond nanosecond precision are dropped, as in Go.
        let mut place = scale;
        for d in frac_part.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            nanos += u128::from(d - b'0') * place;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(too_big)?;
        s = rest;
    }
    // Go durations are int64 nanoseconds (~292 years).
    if total_nanos > i64::MAX as u128 {
        return Err(err("too large"));
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Formats like Go's `Duration.String()`: `0s`, `500ms`, `1.5s`, `1m30s`, `10m0s`, `2h0m0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (scale, unit) = if nanos < 1_000 {
            (1, "ns")
        } else if nanos < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let mut out = String::new();
    let total_secs = nanos / 1_000_000_000;
    let (h, m) = (total_secs / 3600, total_secs % 3600 / 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let secs_nanos = nanos % 60_000_000_000;
    let _ = write!(out, "{}s", decimal(secs_nanos, 1_000_000_000));
    out
}

/// `value / scale` as a decimal without trailing zeros.
fn decimal(value: u128, scale: u128) -> String {
    let int = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

/// Serde adapter for `#[serde(with = "go_duration::serde_str")]` fields.
#[cfg(feature = "config")]
pub mod serde_str {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    use serde::Deserialize as _;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_go_syntax() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("2s", ms(2_000)),
            ("1m30s", ms(90_000)),
            ("10m0s", ms(600_000)),
            ("10m", ms(600_000)),
            ("1h", ms(3_600_000)),
            ("1.5h", ms(5_400_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("+3s", ms(3_000)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000001s", ms(1_000)),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for s in [
            "",
            "s",
            "10",
            "1x",
            "1 s",
            " 1s",
            "1s ",
            "-1s",
            "1.2.3s",
            "ms",
            "9999999999h",
            "1hh",
            ".s",
            "1d",
        ] {
            assert!(parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_micros(100), "100µs"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (ms(500), "500ms"),
            (ms(1_500), "1.5s"),
            (ms(2_000), "2s"),
            (ms(90_000), "1m30s"),
            (ms(600_000), "10m0s"),
            (ms(3_600_000), "1h0m0s"),
            (ms(5_400_000), "1h30m0s"),
            (ms(3_723_004), "1h2m3.004s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "{d:?}");
        }
    }

    #[test]
    fn format_parse_round_trip() {
        for n in [
            1u64,
            999,
            1_000,
            1_001,
            999_999,
            12_345_678_901,
            86_400_000_000_000,
        ] {
            let d = Duration::from_nanos(n);
            assert_eq!(parse(&format(d)), Ok(d), "{n}");
        }
    }
}
