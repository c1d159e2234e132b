//! RFC 3339 timestamps to UTC microseconds and back.
//!
//! Parsing sits on the hot path (one call per reading), so it is a small hand-written scanner
//! over bytes instead of chrono's general format machinery (about 5× faster here); chrono still
//! decides which calendar dates exist and formats times for people.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};

/// Microseconds in one minute, the unit of `duration`.
pub const MICROS_PER_MINUTE: i64 = 60_000_000;
/// Microseconds in one day, the width of a date partition.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a time string was refused; the text goes into the dead letter's `detail`.
pub type TimeError = &'static str;

/// Parses `YYYY-MM-DD[T|t| ]HH:MM:SS[.fraction][Z|z|±HH:MM|±HHMM]` into UTC microseconds.
///
/// No offset means UTC. The fraction may have 1–9 digits and is truncated to microseconds,
/// which floors the instant (the fraction is always a positive part of the second).
pub fn parse_micros(text: &str) -> Result<i64, TimeError> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err("time is too short for YYYY-MM-DDTHH:MM:SS");
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err("time is not of the form YYYY-MM-DDTHH:MM:SS");
    }
    if b[13] != b':' || b[16] != b':' {
        return Err("time is not of the form YYYY-MM-DDTHH:MM:SS");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day is out of range");
    }
    let days = days_since_epoch(year, month, day)?;

    let mut rest = &b[19..];
    let mut micros_of_second = 0i64;
    if let Some((b'.', fraction)) = rest.split_first() {
        let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 || count > 9 {
            return Err("fraction of a second must have 1 to 9 digits");
        }
        for (i, c) in fraction[..count.min(6)].iter().enumerate() {
            micros_of_second += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
        rest = &fraction[count..];
    }
    let offset_seconds = parse_offset(rest)?;

    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    Ok(seconds * 1_000_000 + micros_of_second)
}

/// Days from 1970-01-01 to a calendar date, if it exists.
///
/// A message's readings (and a stream's messages) nearly all fall on the same date, so the
/// last date looked up on this thread is remembered; chrono decides every other one.
fn days_since_epoch(year: u32, month: u32, day: u32) -> Result<i64, TimeError> {
    thread_local! {
        /// (year·10⁴ + month·10² + day, its days since 1970-01-01); no date has key `u32::MAX`.
        static LAST: std::cell::Cell<(u32, i64)> = const { std::cell::Cell::new((u32::MAX, 0)) };
    }
    let key = year * 10_000 + month * 100 + day;
    let (last_key, last_days) = LAST.get();
    if key == last_key {
        return Ok(last_days);
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or("no such calendar date")?;
    let days = i64::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE;
    LAST.set((key, days));
    Ok(days)
}

/// Days from 0001-01-01 (chrono's common-era day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// The offset suffix in seconds east of UTC; empty means UTC.
fn parse_offset(rest: &[u8]) -> Result<i64, TimeError> {
    let (sign, hh, mm) = match rest {
        [] | [b'Z'] | [b'z'] => return Ok(0),
        [s @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [s @ (b'+' | b'-'), h1, h2, m1, m2] => {
            (*s, digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
        }
        _ => return Err("time has an unreadable offset (expected Z or ±hh:mm)"),
    };
    if hh > 23 || mm > 59 {
        return Err("time offset is out of range");
    }
    let seconds = i64::from(hh * 3600 + mm * 60);
    Ok(if sign == b'-' { -seconds } else { seconds })
}

/// Reads a run of ASCII digits as a number.
fn digits(b: &[u8]) -> Result<u32, TimeError> {
    b.iter().try_fold(0u32, |acc, c| match c {
        b'0'..=b'9' => Ok(acc * 10 + u32::from(c - b'0')),
        _ => Err("time is not of the form YYYY-MM-DDTHH:MM:SS"),
    })
}

/// A flag's duration in microseconds, the unit of event times (saturating: "forever").
pub fn duration_micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Formats UTC microseconds as RFC 3339 with `Z`, for logs, dead letters and `inspect`.
pub fn format_micros(micros: i64) -> String {
    let mut text = String::with_capacity(27);
    // Writing into a String cannot fail.
    let _ = write_micros(&mut text, micros);
    text
}

/// Writes [`format_micros`]'s text into `out` without allocating.
///
/// Years 0000–9999 are written directly (the civil-from-days conversion of H. Hinnant): dead
/// letters of a message of refused readings each name two times, and chrono's formatter was
/// most of their cost. Other years go through chrono; both give the same text.
pub fn write_micros(out: &mut impl std::fmt::Write, micros: i64) -> std::fmt::Result {
    const FIRST: i64 = -62_167_219_200_000_000; // 0000-01-01T00:00:00Z
    const END: i64 = 253_402_300_800_000_000; // 10000-01-01T00:00:00Z
    if !(FIRST..END).contains(&micros) {
        return out.write_str(&format_micros_chrono(micros));
    }
    let (day, in_day) = (
        micros.div_euclid(MICROS_PER_DAY),
        micros.rem_euclid(MICROS_PER_DAY),
    );
    let (year, month, date) = civil_from_days(day);
    let seconds = in_day / 1_000_000;
    let fraction = in_day % 1_000_000;
    let mut text = Digits::default();
    text.number(year as u64, 4);
    text.byte(b'-');
    text.number(u64::from(month), 2);
    text.byte(b'-');
    text.number(u64::from(date), 2);
    text.byte(b'T');
    text.number((seconds / 3600) as u64, 2);
    text.byte(b':');
    text.number((seconds / 60 % 60) as u64, 2);
    text.byte(b':');
    text.number((seconds % 60) as u64, 2);
    // As chrono's `SecondsFormat::AutoSi`: none, milliseconds or microseconds.
    if fraction != 0 {
        text.byte(b'.');
        if fraction % 1000 == 0 {
            text.number((fraction / 1000) as u64, 3);
        } else {
            text.number(fraction as u64, 6);
        }
    }
    text.byte(b'Z');
    // Only ASCII digits and separators were written.
    out.write_str(std::str::from_utf8(text.written()).unwrap_or_default())
}

/// The text of one time on the stack: at most `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
#[derive(Default)]
struct Digits {
    bytes: [u8; 27],
    len: usize,
}

impl Digits {
    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// Appends the last `width` decimal digits of `value`, zero-padded.
    fn number(&mut self, mut value: u64, width: usize) {
        for slot in self.bytes[self.len..self.len + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    fn written(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn format_micros_chrono(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{micros}µs"))
}

/// (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let date = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, date)
}

/// The UTC calendar date (`YYYY-MM-DD`) of an instant: the Hive partition value.
pub fn date_of(micros: i64) -> String {
    date_of_day(micros.div_euclid(MICROS_PER_DAY))
}

/// The calendar date (`YYYY-MM-DD`) of a day counted from 1970-01-01.
pub fn date_of_day(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day.saturating_mul(86_400), 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day{day}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_formatting_equals_chronos() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut samples = vec![
            0,
            -1,
            1,
            1_000,
            999_999,
            -62_167_219_200_000_000,
            -62_167_219_200_000_001,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            951_782_400_000_000, // 2000-02-29
            i64::MIN,
            i64::MAX,
        ];
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let micros = (state as i64) % 400_000_000_000_000_000;
            // Whole seconds and milliseconds as often as microseconds.
            samples.push(match state % 3 {
                0 => micros - micros % 1_000_000,
                1 => micros - micros % 1_000,
                _ => micros,
            });
        }
        for micros in samples {
            assert_eq!(
                format_micros(micros),
                format_micros_chrono(micros),
                "{micros}"
            );
        }
    }

    fn chrono_micros(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("chrono parses the reference")
            .timestamp_micros()
    }

    #[test]
    fn agrees_with_chrono_on_offsets_and_fractions() {
        for text in [
            "2022-07-11T02:15:00Z",
            "2022-07-11T10:15:00+08:00",
            "2022-07-10T21:45:00-04:30",
            "1969-12-31T23:59:59.999999Z",
            "2000-02-29T12:00:00.5Z",
            "2022-07-11t02:15:00z",
            "2022-07-11 02:15:00Z",
        ] {
            assert_eq!(parse_micros(text), Ok(chrono_micros(text)), "{text}");
        }
    }

    #[test]
    fn no_offset_means_utc_and_basic_offset_is_accepted() {
        assert_eq!(
            parse_micros("2022-07-11T02:15:00"),
            parse_micros("2022-07-11T02:15:00Z")
        );
        assert_eq!(
            parse_micros("2022-07-11T10:15:00+0800"),
            parse_micros("2022-07-11T02:15:00Z")
        );
    }

    #[test]
    fn fraction_is_truncated_to_microseconds() {
        let base = parse_micros("2022-07-11T02:15:00Z").unwrap();
        assert_eq!(
            parse_micros("2022-07-11T02:15:00.123456789Z"),
            Ok(base + 123_456)
        );
        assert_eq!(parse_micros("2022-07-11T02:15:00.1Z"), Ok(base + 100_000));
        assert_eq!(parse_micros("1969-12-31T23:59:59.9999999Z"), Ok(-1));
    }

    #[test]
    fn refuses_what_is_not_a_valid_instant() {
        for text in [
            "",
            "yesterday",
            "2022-07-11",
            "2022-02-30T00:00:00Z",
            "0000-00-00T00:00:00Z",
            "2022-07-11T24:00:00Z",
            "2022-07-11T23:59:60Z",
            "2022-07-11T02:15:00.Z",
            "2022-07-11T02:15:00.1234567890Z",
            "2022-07-11T02:15:00+8:00",
            "2022-07-11T02:15:00+24:00",
            "2022-07-11T02:15:00 UTC",
            "2022/07/11T02:15:00Z",
            "+2022-07-11T02:15:00Z",
        ] {
            assert!(parse_micros(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn the_remembered_date_never_answers_for_another() {
        let texts = [
            "2022-07-11T00:00:00Z",
            "2022-07-12T00:00:00Z",
            "2022-07-11T00:00:00Z",
            "2021-02-29T00:00:00Z",
            "2022-07-11T00:00:00Z",
            "2022-07-11T00:00:00Z",
        ];
        let got: Vec<_> = texts.iter().map(|t| parse_micros(t).ok()).collect();
        let expected: Vec<_> = texts
            .iter()
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|d| d.timestamp_micros())
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn formats_and_dates_in_utc() {
        let t = parse_micros("2022-07-11T01:15:00-04:00").unwrap();
        assert_eq!(format_micros(t), "2022-07-11T05:15:00Z");
        assert_eq!(date_of(t), "2022-07-11");
        assert_eq!(date_of(-1), "1969-12-31");
    }
}
