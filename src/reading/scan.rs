//! The fastest path through a message: a single forward scan specialised to the one message
//! shape meters send, `{"measurements":[{...}, ...]}` with four scalar fields per reading.
//!
//! Decoding is the hot path and a general JSON parser spends most of its time on generality
//! (visitors, arbitrary nesting). This scanner reads exactly the common case and answers
//! `None` for anything else — a nested value in an unknown field, a repeated or missing field,
//! an exotic number — so the serde paths in [`crate::reading`] decide every unusual message.
//! It never decides *differently* from serde_json: when it answers, serde_json's typed
//! decoding into [`TypedMessage`] gives the same values (a property test checks this on
//! arbitrary messages).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// A JSON number, kept as serde_json classifies it so validation treats both paths alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number::Float(v))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// One reading's fields as found, strings borrowed from the message where they have no
/// escapes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ScannedReading<'a> {
    pub device_id: i64,
    #[serde(borrow)]
    pub device_name: Cow<'a, str>,
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    pub cumulative_energy: Number,
}

/// serde_json's typed, borrowed reading of the same shape: the fallback for messages the
/// scanner leaves (unknown fields are skipped; anything else unusual is an error that sends
/// the message to the slow path), and the reference the scanner must agree with.
#[derive(Deserialize)]
pub(crate) struct TypedMessage<'a> {
    #[serde(borrow)]
    pub measurements: Vec<ScannedReading<'a>>,
}

/// Scans a whole message, handing each reading to `on_reading` as it is read (no buffer per
/// message); `None` when the message is not in the common shape or `on_reading` refused a
/// reading — readings handed over before then are the caller's to discard.
pub(crate) fn scan_message<'a>(
    text: &'a str,
    mut on_reading: impl FnMut(ScannedReading<'a>) -> Option<()>,
) -> Option<()> {
    let mut scanner = Scanner { text, pos: 0 };
    scanner.expect(b'{')?;
    let mut seen_measurements = false;
    loop {
        let key = scanner.string()?;
        scanner.expect(b':')?;
        if key.as_ref() == "measurements" {
            if seen_measurements {
                return None;
            }
            seen_measurements = true;
            scanner.readings(&mut on_reading)?;
        } else {
            scanner.skip_scalar()?;
        }
        if !scanner.comma_or(b'}')? {
            break;
        }
    }
    scanner.skip_whitespace();
    (seen_measurements && scanner.pos == text.len()).then_some(())
}

/// Index of the first byte that ends a plain run through a string — a quote, a backslash or
/// a control character — eight bytes at a time (SWAR: no unsafe code, no CPU features).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// High bit set in each byte of `x` that is zero; exact for the lowest such byte.
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| offset + i)
}

/// The members of a reading the scanner keeps.
#[derive(Debug, Clone, Copy)]
enum Field {
    DeviceId,
    DeviceName,
    Time,
    Energy,
    Other,
}

/// The reading fields as they appear in the message, in their usual order.
const QUOTED_FIELDS: [(&[u8], Field); 4] = [
    (b"\"device_id\"", Field::DeviceId),
    (b"\"device_name\"", Field::DeviceName),
    (b"\"time\"", Field::Time),
    (b"\"cumulative_energy\"", Field::Energy),
];

/// 10^0 ..= 10^15, all exact in f64.
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.bytes();
        if bytes.get(self.pos).is_some_and(|&b| b > b' ') {
            return;
        }
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes().get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// After a member: `true` for a comma (another follows), `false` for `close`.
    fn comma_or(&mut self, close: u8) -> Option<bool> {
        let next = self.peek()?;
        self.pos += 1;
        match next {
            b',' => Some(true),
            _ if next == close => Some(false),
            _ => None,
        }
    }

    /// `"measurements": [ reading, ... ]`
    fn readings(
        &mut self,
        on_reading: &mut impl FnMut(ScannedReading<'a>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            on_reading(self.reading()?)?;
            if !self.comma_or(b']')? {
                return Some(());
            }
        }
    }

    fn reading(&mut self) -> Option<ScannedReading<'a>> {
        self.expect(b'{')?;
        let (mut device_id, mut device_name, mut time, mut energy) = (None, None, None, None);
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            let field = self.field()?;
            self.expect(b':')?;
            // A repeated field is an error for serde's derive too: leave it to the slow path.
            match field {
                Field::DeviceId if device_id.is_none() => device_id = Some(self.integer()?),
                Field::DeviceName if device_name.is_none() => device_name = Some(self.string()?),
                Field::Time if time.is_none() => time = Some(self.string()?),
                Field::Energy if energy.is_none() => energy = Some(self.number()?),
                Field::Other => self.skip_scalar()?,
                _ => return None,
            }
            if !self.comma_or(b'}')? {
                break;
            }
        }
        Some(ScannedReading {
            device_id: device_id?,
            device_name: device_name?,
            time: time?,
            cumulative_energy: energy?,
        })
    }

    /// A reading's key. The four fields are recognised by their quoted text without a
    /// scan; any other spelling (even an escaped one) goes through [`Self::string`].
    fn field(&mut self) -> Option<Field> {
        self.skip_whitespace();
        let rest = self.bytes().get(self.pos..)?;
        for (quoted, field) in QUOTED_FIELDS {
            if rest.starts_with(quoted) {
                self.pos += quoted.len();
                return Some(field);
            }
        }
        Some(match self.string()?.as_ref() {
            "device_id" => Field::DeviceId,
            "device_name" => Field::DeviceName,
            "time" => Field::Time,
            "cumulative_energy" => Field::Energy,
            _ => Field::Other,
        })
    }

    /// A string; one with escapes is unescaped by serde_json itself, so both paths agree.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.pos;
        let bytes = self.bytes();
        let mut escaped = false;
        loop {
            self.pos += first_special(bytes.get(self.pos..)?)?;
            let byte = bytes[self.pos];
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                }
                // A control character is invalid JSON: leave it to serde's error.
                _ => return None,
            }
        }
        let quoted = self.text.get(start - 1..self.pos)?;
        if escaped {
            serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
        } else {
            // Both ends sit next to an ASCII quote, so they are character boundaries.
            Some(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
        }
    }

    /// A number per the JSON grammar, as serde_json classifies it: integers as `UInt`/`Int`,
    /// the rest as `Float`. Integers of 19+ digits and `-0` are left to serde_json.
    fn number(&mut self) -> Option<Number> {
        self.skip_whitespace();
        let bytes = self.bytes();
        let start = self.pos;
        let mut pos = start;
        let negative = bytes.get(pos) == Some(&b'-');
        pos += usize::from(negative);
        // All digits, integer and fraction, as one integer while it is small enough.
        let mut mantissa = 0u64;
        let mut digits = 0usize;
        let integer_start = pos;
        while let Some(digit) = bytes.get(pos).filter(|b| b.is_ascii_digit()) {
            mantissa = mantissa
                .wrapping_mul(10)
                .wrapping_add(u64::from(digit - b'0'));
            pos += 1;
        }
        let integer_digits = pos - integer_start;
        if integer_digits == 0 || (integer_digits > 1 && bytes[integer_start] == b'0') {
            return None;
        }
        digits += integer_digits;
        let mut fraction_digits = 0usize;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            while let Some(digit) = bytes.get(pos).filter(|b| b.is_ascii_digit()) {
                mantissa = mantissa
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(digit - b'0'));
                pos += 1;
                fraction_digits += 1;
            }
            if fraction_digits == 0 {
                return None;
            }
            digits += fraction_digits;
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = bytes.get(pos) {
                pos += 1;
            }
            let exponent_start = pos;
            while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            if pos == exponent_start {
                return None;
            }
            exponent = true;
        }
        self.pos = pos;
        if exponent || fraction_digits > 0 {
            if !exponent && digits <= 15 {
                // Clinger's fast path: both operands are exact in f64, so the one division
                // is correctly rounded, as serde_json's `float_roundtrip` parse is.
                let value = mantissa as f64 / POWERS_OF_TEN[fraction_digits];
                return Some(Number::Float(if negative { -value } else { value }));
            }
            let value: f64 = self.text[start..pos].parse().ok()?;
            return value.is_finite().then_some(Number::Float(value));
        }
        match (negative, mantissa) {
            _ if digits > 18 => None,
            (false, _) => Some(Number::UInt(mantissa)),
            (true, 0) => None,
            (true, _) => Some(Number::Int(-(mantissa as i64))),
        }
    }

    /// An integer for an `i64` field (serde accepts any integer that fits, nothing else).
    fn integer(&mut self) -> Option<i64> {
        match self.number()? {
            Number::Int(value) => Some(value),
            Number::UInt(value) => i64::try_from(value).ok(),
            Number::Float(_) => None,
        }
    }

    /// Skips a string, number, `true`, `false` or `null`; anything nested is not common.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => {
                let rest = &self.bytes()[self.pos..];
                let word = [&b"true"[..], b"false", b"null"]
                    .into_iter()
                    .find(|word| rest.starts_with(word))?;
                self.pos += word.len();
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(text: &str) -> Option<Vec<ScannedReading<'_>>> {
        let mut out = Vec::new();
        scan_message(text, |reading| {
            out.push(reading);
            Some(())
        })
        .map(|()| out)
    }

    #[test]
    fn reads_the_common_shape_with_unknown_scalar_fields() {
        let text = r#" {"site":"HK","measurements":[{"device_id":123456,"device_name":"Tsuen Wan meter 7","time":"2022-07-11T02:15:00Z","cumulative_energy":1000.25,"firmware":null},{"cumulative_energy":7,"time":"t","device_name":"Lab \"S\" \u00e9","device_id":-5}],"n":-1.5e3} "#;
        let readings = scan(text).unwrap();
        assert_eq!(
            readings,
            vec![
                ScannedReading {
                    device_id: 123456,
                    device_name: "Tsuen Wan meter 7".into(),
                    time: "2022-07-11T02:15:00Z".into(),
                    cumulative_energy: Number::Float(1000.25),
                },
                ScannedReading {
                    device_id: -5,
                    device_name: "Lab \"S\" \u{e9}".into(),
                    time: "t".into(),
                    cumulative_energy: Number::UInt(7),
                },
            ]
        );
        assert_eq!(scan(r#"{"measurements":[]}"#), Some(vec![]));
    }

    #[test]
    fn leaves_everything_unusual_to_serde() {
        for text in [
            r#"{"measurements":[{"device_id":1,"device_name":"a","time":"t"}]}"#,
            r#"{"measurements":[{"device_id":1,"device_id":2,"device_name":"a","time":"t","cumulative_energy":1}]}"#,
            r#"{"measurements":[{"device_id":1.0,"device_name":"a","time":"t","cumulative_energy":1}]}"#,
            r#"{"measurements":[{"device_id":1,"device_name":"a","time":"t","cumulative_energy":-0}]}"#,
            r#"{"measurements":[{"device_id":1,"device_name":"a","time":"t","cumulative_energy":1e400}]}"#,
            r#"{"measurements":[{"device_id":1,"device_name":"a","time":"t","cumulative_energy":01}]}"#,
            r#"{"measurements":[{"device_id":1,"device_name":"a","time":"t","cumulative_energy":1,"x":{}}]}"#,
            r#"{"measurements":[{"device_id":12345678901234567890,"device_name":"a","time":"t","cumulative_energy":1}]}"#,
            r#"{"measurements":[],"measurements":[]}"#,
            r#"{"measurements":[]} x"#,
            r#"{"measurements":[],}"#,
            r#"{"measurements":[{}]}"#,
            r#"{"other":1}"#,
            r#"{"measurements":[1]}"#,
            "{\"measurements\":[{\"device_id\":1,\"device_name\":\"a\tb\",\"time\":\"t\",\"cumulative_energy\":1}]}",
        ] {
            assert_eq!(scan(text), None, "{text}");
        }
    }

    /// Pieces of JSON text meant to hit every branch: usual and unusual keys, strings with
    /// escapes and control characters, numbers of every shape, nesting, stray bytes.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"device_id\"".to_string()),
            Just("\"device_name\"".to_string()),
            Just("\"time\"".to_string()),
            Just("\"cumulative_energy\"".to_string()),
            Just("\"device\\u005fid\"".to_string()),
            Just("\"measurements\"".to_string()),
            "\"[a-z\\\\\"\t é]{0,6}\"",
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
            "-?0[0-9]{1,3}",
            Just("-0".to_string()),
            Just("1e400".to_string()),
            Just("true".to_string()),
            Just("nul".to_string()),
            Just("{}".to_string()),
            Just("[]".to_string()),
            "[ \t\r\n]{0,2}",
            "[{}\\[\\]:,]",
        ]
    }

    /// A message of the common shape with some of its tokens replaced by random pieces.
    fn message() -> impl Strategy<Value = String> {
        let energy = prop_oneof![
            "(0|[1-9][0-9]{0,8})\\.[0-9]{1,8}",
            "[1-9][0-9]{0,18}",
            "(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?[eE][+-]?[0-9]{1,3}",
            "(0|[1-9][0-9]{0,20})\\.[0-9]{1,20}",
        ];
        let reading = (0i64..3_000_000_000, energy);
        (
            proptest::collection::vec(reading, 0..4),
            proptest::collection::vec((0usize..64, piece()), 0..4),
        )
            .prop_map(|(readings, edits)| {
                let mut tokens = vec![
                    "{".to_string(),
                    "\"measurements\"".into(),
                    ":".into(),
                    "[".into(),
                ];
                for (i, (id, energy)) in readings.into_iter().enumerate() {
                    if i > 0 {
                        tokens.push(",".into());
                    }
                    for (j, (key, value)) in [
                        ("\"device_id\"", id.to_string()),
                        ("\"device_name\"", format!("\"Meter {id}\"")),
                        ("\"time\"", "\"2022-07-11T02:15:00Z\"".into()),
                        ("\"cumulative_energy\"", energy),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        tokens.push(if j == 0 { "{" } else { "," }.into());
                        tokens.extend([key.to_string(), ":".into(), value]);
                    }
                    tokens.push("}".into());
                }
                tokens.extend(["]".into(), "}".into()]);
                for (at, piece) in edits {
                    let at = at % tokens.len();
                    tokens[at] = piece;
                }
                tokens.concat()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Whenever the scanner answers, serde_json reads the very same readings.
        #[test]
        fn agrees_with_serde_json_whenever_it_answers(text in message()) {
            if let Some(scanned) = scan(&text) {
                let message = serde_json::from_str::<TypedMessage>(&text);
                prop_assert!(message.is_ok(), "serde_json refused what the scanner read: {text}");
                prop_assert_eq!(scanned, message.unwrap().measurements, "{}", text);
            }
        }

        /// Common-shape messages are read by the scanner itself, not left to serde.
        #[test]
        fn reads_every_unedited_message(
            readings in proptest::collection::vec((0i64..2_000_000_000, 0u32..100_000), 0..6)
        ) {
            let body: Vec<String> = readings
                .iter()
                .map(|(id, e)| format!(
                    r#"{{"device_id":{id},"device_name":"Meter {id}","time":"2022-07-11T02:15:00Z","cumulative_energy":{e}.5}}"#
                ))
                .collect();
            let text = format!(r#"{{"measurements":[{}]}}"#, body.join(","));
            prop_assert_eq!(scan(&text).map(|r| r.len()), Some(readings.len()));
        }
    }
}
