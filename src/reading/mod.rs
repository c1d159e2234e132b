//! Decoding one input message into validated readings and rejections (contract §2).
//!
//! The fast path deserializes the whole message in one strictly typed, borrowed pass (serde
//! derive: the fastest serde_json can go). Anything unusual — a wrong type, a missing or
//! repeated field, a rule broken — makes it give up, and the slow path walks the message again
//! through `RawValue`s with lenient [`Scalar`] fields that cannot fail, so one bad reading never
//! costs its neighbours, each bad element keeps its original text for its dead letter, and
//! numbers serde_json cannot represent (such as `1e400`) are attributed to their field. Both
//! paths judge fields with the same [`Element::validate`].

pub mod reason;
mod scan;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::reading::reason::Reason;
use crate::reading::scan::{Number, ScannedReading, TypedMessage};
use crate::timestamp;

/// A reading that passed every rule of contract §2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub device_id: i32,
    /// Event time in UTC microseconds.
    pub time: i64,
    pub cumulative_energy: f64,
    /// Position in the message's `measurements`, for dead letters found later (late, conflict).
    pub index: u32,
    /// Where the device name's text is; see [`DecodedBlock::text`].
    pub name: TextSpan,
}

/// Where a decoded name lives, so readings need no allocation per name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSpan {
    /// Bytes of the input itself (the name had no escapes).
    Input { start: u32, len: u32 },
    /// The block's side buffer of unescaped names.
    Unescaped { start: u32, len: u32 },
}

/// A record refused while decoding, with what its dead letter needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index in `measurements`; `None` when the whole message was refused.
    pub index: Option<u32>,
    pub reason: Reason,
    pub detail: String,
    /// The original JSON text of the element (or of the message).
    pub record: String,
}

/// What validation needs besides the record itself, decided once per run or epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Readings later than this (UTC microseconds) are `future_time`.
    pub latest_time: i64,
}

/// One decoded message: ranges into its block's readings and rejections.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMessage {
    /// Where the message is in its source: a line number or a Kafka offset.
    pub position: u64,
    /// The message's bytes within the block.
    pub bytes: Range<usize>,
    /// Elements in `measurements` (0 when the message itself was refused).
    pub measurement_count: u32,
    pub readings: Range<usize>,
    pub rejected: Range<usize>,
}

/// Input bytes holding whole messages, decoded together; names point into `input` or
/// `unescaped`.
#[derive(Debug)]
pub struct DecodedBlock {
    input: BlockText,
    unescaped: String,
    pub messages: Vec<DecodedMessage>,
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejected>,
}

impl DecodedBlock {
    /// Takes ownership of input bytes; messages are added with [`DecodedBlock::decode`].
    pub fn new(bytes: Vec<u8>) -> Self {
        DecodedBlock {
            input: BlockText::new(bytes),
            unescaped: String::new(),
            messages: Vec::new(),
            readings: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// The block's input bytes.
    pub fn bytes(&self) -> &[u8] {
        self.input.as_bytes()
    }

    /// The text of a decoded name.
    pub fn text(&self, span: TextSpan) -> &str {
        match span {
            TextSpan::Input { start, len } => {
                // Spans are made only from `str`s borrowed out of the input, so this is text.
                self.input
                    .str(start as usize..(start + len) as usize)
                    .unwrap_or_default()
            }
            TextSpan::Unescaped { start, len } => {
                &self.unescaped[start as usize..(start + len) as usize]
            }
        }
    }

    /// Decodes the message at `range` of `bytes` and records it in `messages`.
    pub fn decode(&mut self, range: Range<usize>, position: u64, limits: &Limits) {
        let readings_start = self.readings.len();
        let rejected_start = self.rejected.len();
        let mut out = Output {
            base: &self.input,
            readings: &mut self.readings,
            rejected: &mut self.rejected,
            unescaped: &mut self.unescaped,
        };
        let measurement_count = out.decode(range.clone(), limits);
        self.messages.push(DecodedMessage {
            position,
            bytes: range,
            measurement_count,
            readings: readings_start..self.readings.len(),
            rejected: rejected_start..self.rejected.len(),
        });
    }
}

/// A block's bytes, kept as a `String` when they are valid UTF-8 (practically always), so
/// messages and names are sliced without validating each string again.
#[derive(Debug)]
enum BlockText {
    Utf8(String),
    Bytes(Vec<u8>),
}

impl BlockText {
    #[allow(unsafe_code)] // The crate's one exception to `unsafe_code = "deny"`.
    fn new(bytes: Vec<u8>) -> Self {
        if simdutf8::basic::from_utf8(&bytes).is_err() {
            return BlockText::Bytes(bytes);
        }
        // SAFETY: simdutf8 has just validated exactly these bytes as UTF-8 (std's own check
        // is a measurable share of decoding, so it is not run twice).
        BlockText::Utf8(unsafe { String::from_utf8_unchecked(bytes) })
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            BlockText::Utf8(text) => text.as_bytes(),
            BlockText::Bytes(bytes) => bytes,
        }
    }

    /// The range as text, if it is text (ranges cut at ASCII bytes always are in UTF-8 input).
    fn str(&self, range: Range<usize>) -> Option<&str> {
        match self {
            BlockText::Utf8(text) => text.get(range),
            BlockText::Bytes(bytes) => std::str::from_utf8(bytes.get(range)?).ok(),
        }
    }
}

/// The block's growing vectors while one message is decoded.
struct Output<'b> {
    base: &'b BlockText,
    readings: &'b mut Vec<Reading>,
    rejected: &'b mut Vec<Rejected>,
    unescaped: &'b mut String,
}

impl<'b> Output<'b> {
    fn decode(&mut self, range: Range<usize>, limits: &Limits) -> u32 {
        let base = self.base;
        let text = &base.as_bytes()[range.clone()];
        let saved = (self.readings.len(), self.unescaped.len());
        if let Some(count) = base
            .str(range)
            .and_then(|text| self.decode_fast(text, limits))
        {
            return count;
        }
        self.readings.truncate(saved.0);
        self.unescaped.truncate(saved.1);
        self.decode_slow(text, limits)
    }

    /// The scanner, else serde's typed pass; `None` unless every reading is valid.
    fn decode_fast(&mut self, text: &'b str, limits: &Limits) -> Option<u32> {
        let saved = (self.readings.len(), self.unescaped.len());
        let mut count = 0;
        let mut all_valid = true;
        let scanned = scan::scan_message(text, |reading| {
            all_valid = self.push_valid(Element::from(reading), count, limits);
            count += 1;
            all_valid.then_some(())
        });
        if scanned.is_some() {
            return Some(count);
        }
        if !all_valid {
            return None;
        }
        // Not in the scanner's shape: start the message over with serde.
        self.readings.truncate(saved.0);
        self.unescaped.truncate(saved.1);
        let message = serde_json::from_str::<TypedMessage<'b>>(text).ok()?;
        let count = message.measurements.len() as u32;
        for (index, element) in message.measurements.into_iter().enumerate() {
            if !self.push_valid(Element::from(element), index as u32, limits) {
                return None;
            }
        }
        Some(count)
    }

    /// Pushes the element if it is valid; whether it was.
    fn push_valid(&mut self, element: Element<'b>, index: u32, limits: &Limits) -> bool {
        match element.validate(limits) {
            Ok(valid) => {
                self.push(valid, index);
                true
            }
            Err(_) => false,
        }
    }

    /// Walks a message with a problem element by element, keeping original texts.
    fn decode_slow(&mut self, text: &'b [u8], limits: &Limits) -> u32 {
        let elements = match split_measurements(text) {
            Ok(elements) => elements,
            Err((reason, detail)) => {
                self.rejected.push(Rejected {
                    index: None,
                    reason,
                    detail,
                    record: String::from_utf8_lossy(text).into_owned(),
                });
                return 0;
            }
        };
        for (index, raw) in elements.iter().enumerate() {
            let element = serde_json::from_str::<Element<'b>>(raw.get())
                .unwrap_or_else(|_| Element::from_raw_fields(raw));
            match element.validate(limits) {
                Ok(valid) => self.push(valid, index as u32),
                Err((reason, detail)) => self.rejected.push(Rejected {
                    index: Some(index as u32),
                    reason,
                    detail,
                    record: raw.get().to_owned(),
                }),
            }
        }
        elements.len() as u32
    }

    fn push(&mut self, valid: Valid<'b>, index: u32) {
        let name = self.span_of(valid.device_name);
        self.readings.push(Reading {
            device_id: valid.device_id,
            time: valid.time,
            cumulative_energy: valid.cumulative_energy,
            index,
            name,
        });
    }

    fn span_of(&mut self, name: Cow<'b, str>) -> TextSpan {
        let base = self.base.as_bytes().as_ptr_range();
        if let Cow::Borrowed(s) = name {
            let ptr = s.as_ptr();
            if base.contains(&ptr) || (s.is_empty() && ptr == base.end) {
                let start = ptr as usize - base.start as usize;
                return TextSpan::Input {
                    start: start as u32,
                    len: s.len() as u32,
                };
            }
        }
        let start = self.unescaped.len() as u32;
        self.unescaped.push_str(&name);
        TextSpan::Unescaped {
            start,
            len: name.len() as u32,
        }
    }
}

/// Splits a message into its `measurements` elements, or says why it has none.
fn split_measurements(text: &[u8]) -> Result<Vec<&RawValue>, (Reason, String)> {
    let message: &RawValue =
        serde_json::from_slice(text).map_err(|e| (Reason::InvalidJson, e.to_string()))?;
    let fields: HashMap<Cow<str>, &RawValue> =
        serde_json::from_str(message.get()).map_err(|_| {
            (
                Reason::MissingMeasurements,
                "message is not a JSON object".into(),
            )
        })?;
    let measurements = fields.get("measurements").ok_or_else(|| {
        (
            Reason::MissingMeasurements,
            "message has no measurements field".into(),
        )
    })?;
    serde_json::from_str(measurements.get()).map_err(|_| {
        (
            Reason::MissingMeasurements,
            "measurements is not an array".into(),
        )
    })
}

/// The original JSON texts of a message's elements, for dead letters decided after decoding
/// (late, conflicting duplicate). Split once per message, however many of its readings are
/// refused, so refusals cost time linear in the message.
pub struct ElementTexts<'a> {
    message: &'a [u8],
    elements: Vec<&'a RawValue>,
}

/// Only the elements of `measurements`, as raw texts: one pass over a message (the general
/// split parses it three times).
#[derive(serde::Deserialize)]
struct MeasurementsOnly<'a> {
    #[serde(borrow)]
    measurements: Vec<&'a RawValue>,
}

impl<'a> ElementTexts<'a> {
    /// For a message that decoded as measurements. A repeated `measurements` key (where the
    /// last one counts) takes the general split.
    pub fn of(message: &'a [u8]) -> Self {
        let elements = match serde_json::from_slice::<MeasurementsOnly<'a>>(message) {
            Ok(only) => only.measurements,
            Err(_) => split_measurements(message).unwrap_or_default(),
        };
        ElementTexts { message, elements }
    }

    /// Where element `index` is in the message, in bytes.
    pub fn span(&self, index: u32) -> Option<std::ops::Range<usize>> {
        let text = self.elements.get(index as usize)?.get();
        let start = (text.as_ptr() as usize).checked_sub(self.message.as_ptr() as usize)?;
        (start + text.len() <= self.message.len()).then(|| start..start + text.len())
    }

    /// The text of element `index`, if the message has it.
    pub fn get(&self, index: u32) -> Option<&'a str> {
        self.elements.get(index as usize).map(|raw| raw.get())
    }
}

impl<'a> From<ScannedReading<'a>> for Element<'a> {
    fn from(reading: ScannedReading<'a>) -> Self {
        Element::Fields(RawFields {
            device_id: Some(Scalar::Int(reading.device_id)),
            device_name: Some(Scalar::Str(reading.device_name)),
            time: Some(Scalar::Str(reading.time)),
            cumulative_energy: Some(match reading.cumulative_energy {
                Number::Int(v) => Scalar::Int(v),
                Number::UInt(v) => Scalar::UInt(v),
                Number::Float(v) => Scalar::Float(v),
            }),
        })
    }
}

/// One element of `measurements`, before any rule is applied.
enum Element<'a> {
    NotObject(&'static str),
    Fields(RawFields<'a>),
}

/// The four fields as found (`None` when absent); later duplicates of a key win.
#[derive(Default)]
struct RawFields<'a> {
    device_id: Option<Scalar<'a>>,
    device_name: Option<Scalar<'a>>,
    time: Option<Scalar<'a>>,
    cumulative_energy: Option<Scalar<'a>>,
}

/// A validated element, name still borrowed.
struct Valid<'a> {
    device_id: i32,
    device_name: Cow<'a, str>,
    time: i64,
    cumulative_energy: f64,
}

impl<'a> Element<'a> {
    /// Field by field, for an element the typed pass could not read (an unrepresentable
    /// number): each field that fails on its own becomes [`Scalar::Unrepresentable`].
    fn from_raw_fields(raw: &'a RawValue) -> Self {
        let Ok(map) = serde_json::from_str::<HashMap<Cow<'a, str>, &'a RawValue>>(raw.get()) else {
            return Element::NotObject("unreadable JSON");
        };
        let field = |key: &str| {
            map.get(key).map(|value| {
                serde_json::from_str::<Scalar<'a>>(value.get()).unwrap_or(Scalar::Unrepresentable)
            })
        };
        Element::Fields(RawFields {
            device_id: field("device_id"),
            device_name: field("device_name"),
            time: field("time"),
            cumulative_energy: field("cumulative_energy"),
        })
    }

    /// Applies contract §2's table in order; the first failing row gives the reason.
    fn validate(self, limits: &Limits) -> Result<Valid<'a>, (Reason, String)> {
        let fields = match self {
            Element::NotObject(kind) => {
                return Err((
                    Reason::InvalidReading,
                    format!("measurement is {kind}, not an object"),
                ))
            }
            Element::Fields(fields) => fields,
        };
        let device_id = match fields.device_id {
            Some(Scalar::Int(v)) => i32::try_from(v).ok(),
            Some(Scalar::UInt(v)) => i32::try_from(v).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            (
                Reason::InvalidDeviceId,
                describe("device_id", &fields.device_id, "an integer in Int32 range"),
            )
        })?;
        let device_name = match fields.device_name {
            Some(Scalar::Str(name)) => name,
            other => {
                return Err((
                    Reason::InvalidDeviceName,
                    describe("device_name", &other, "a string"),
                ))
            }
        };
        let time = match &fields.time {
            Some(Scalar::Str(text)) => timestamp::parse_micros(text)
                .map_err(|why| (Reason::InvalidTime, format!("{why}: {text:?}")))?,
            other => {
                return Err((
                    Reason::InvalidTime,
                    describe("time", other, "an RFC 3339 string"),
                ))
            }
        };
        let cumulative_energy = match fields.cumulative_energy {
            Some(Scalar::Int(v)) if v >= 0 => v as f64,
            Some(Scalar::UInt(v)) => v as f64,
            Some(Scalar::Float(v)) if v >= 0.0 && v.is_finite() => v,
            other => {
                return Err((
                    Reason::InvalidEnergy,
                    describe("cumulative_energy", &other, "a finite number >= 0"),
                ))
            }
        };
        if time > limits.latest_time {
            return Err((
                Reason::FutureTime,
                format!(
                    "time {} is after the latest accepted time {}",
                    timestamp::format_micros(time),
                    timestamp::format_micros(limits.latest_time)
                ),
            ));
        }
        Ok(Valid {
            device_id,
            device_name,
            time,
            cumulative_energy,
        })
    }
}

/// "field is X, expected Y" for a dead letter's detail.
fn describe(field: &str, value: &Option<Scalar<'_>>, expected: &str) -> String {
    match value {
        None => format!("{field} is missing"),
        Some(value) => format!("{field} is {value}, expected {expected}"),
    }
}

/// Any JSON value, reduced to what validation needs; never fails to deserialize.
#[derive(Debug, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool,
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
    /// A number outside f64's range, which serde_json refuses to produce.
    Unrepresentable,
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Null => f.write_str("null"),
            Scalar::Bool => f.write_str("a boolean"),
            Scalar::Int(v) => write!(f, "{v}"),
            Scalar::UInt(v) => write!(f, "{v}"),
            Scalar::Float(v) => write!(f, "{v}"),
            Scalar::Str(s) => write!(f, "the string {s:?}"),
            Scalar::Array => f.write_str("an array"),
            Scalar::Object => f.write_str("an object"),
            Scalar::Unrepresentable => f.write_str("a number out of range"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor(std::marker::PhantomData))
    }
}

struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Element<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ElementVisitor(std::marker::PhantomData))
    }
}

struct ElementVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ElementVisitor<'a> {
    type Value = Element<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a measurement")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::DeviceId => &mut fields.device_id,
                Key::DeviceName => &mut fields.device_name,
                Key::Time => &mut fields.time,
                Key::CumulativeEnergy => &mut fields.cumulative_energy,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Scalar<'a>>()?);
        }
        Ok(Element::Fields(fields))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Element::NotObject("an array"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Element::NotObject("null"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Element::NotObject("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Element::NotObject("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Element::NotObject("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Element::NotObject("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Element::NotObject("a string"))
    }
}

/// The field names validation looks at; all others are ignored.
enum Key {
    DeviceId,
    DeviceName,
    Time,
    CumulativeEnergy,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "device_id" => Key::DeviceId,
                    "device_name" => Key::DeviceName,
                    "time" => Key::Time,
                    "cumulative_energy" => Key::CumulativeEnergy,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMIT: Limits = Limits {
        latest_time: i64::MAX,
    };

    fn decode(line: &str, limits: Limits) -> DecodedBlock {
        let mut block = DecodedBlock::new(line.as_bytes().to_vec());
        block.decode(0..line.len(), 1, &limits);
        block
    }

    fn reasons(line: &str) -> Vec<(Option<u32>, Reason)> {
        decode(line, NO_LIMIT)
            .rejected
            .iter()
            .map(|r| (r.index, r.reason))
            .collect()
    }

    fn one(element: &str) -> String {
        format!(r#"{{"measurements":[{element}]}}"#)
    }

    const GOOD: &str = r#"{"device_id":1,"device_name":"a","time":"2022-07-11T02:15:00Z","cumulative_energy":1.5}"#;

    #[test]
    fn decodes_the_seed_example() {
        let line = r#"{"measurements": [
          {"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:15:00Z", "cumulative_energy": 120.12},
          {"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:20:00Z", "cumulative_energy": 122.45}
        ]}"#;
        let block = decode(line, NO_LIMIT);
        assert!(block.rejected.is_empty());
        assert_eq!(block.messages[0].measurement_count, 2);
        let r = &block.readings;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].device_id, 123456);
        assert_eq!(block.text(r[0].name), "Test Device");
        assert_eq!(
            r[0].time,
            timestamp::parse_micros("2022-07-11T02:15:00Z").unwrap()
        );
        assert_eq!(r[1].cumulative_energy, 122.45);
        assert_eq!(r[1].index, 1);
        assert!(matches!(r[0].name, TextSpan::Input { .. }));
    }

    #[test]
    fn whole_message_reasons() {
        assert_eq!(reasons("{not json"), vec![(None, Reason::InvalidJson)]);
        assert_eq!(reasons(r#"{"a":1} x"#), vec![(None, Reason::InvalidJson)]);
        assert_eq!(reasons("[1,2]"), vec![(None, Reason::MissingMeasurements)]);
        assert_eq!(
            reasons(r#"{"readings":[]}"#),
            vec![(None, Reason::MissingMeasurements)]
        );
        assert_eq!(
            reasons(r#"{"measurements":null}"#),
            vec![(None, Reason::MissingMeasurements)]
        );
        assert_eq!(
            reasons(r#"{"measurements":{"a":1}}"#),
            vec![(None, Reason::MissingMeasurements)]
        );
        let empty = decode(r#"{"measurements":[]}"#, NO_LIMIT);
        assert!(empty.rejected.is_empty() && empty.readings.is_empty());
    }

    #[test]
    fn invalid_reading_keeps_its_neighbours() {
        let line = format!(r#"{{"measurements":[{GOOD}, 7, "x", null, [1], {GOOD}]}}"#);
        let block = decode(&line, NO_LIMIT);
        assert_eq!(block.readings.len(), 2);
        assert_eq!(block.readings[1].index, 5);
        let got: Vec<_> = block
            .rejected
            .iter()
            .map(|r| (r.index, r.reason, r.record.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), Reason::InvalidReading, "7"),
                (Some(2), Reason::InvalidReading, "\"x\""),
                (Some(3), Reason::InvalidReading, "null"),
                (Some(4), Reason::InvalidReading, "[1]"),
            ]
        );
    }

    #[test]
    fn device_id_rules() {
        for bad in [
            r#""1""#,
            "1.0",
            "2147483648",
            "-2147483649",
            "null",
            "true",
            "{}",
            "1e3",
        ] {
            let element = GOOD.replace(r#""device_id":1"#, &format!(r#""device_id":{bad}"#));
            assert_eq!(
                reasons(&one(&element)),
                vec![(Some(0), Reason::InvalidDeviceId)],
                "{bad}"
            );
        }
        let missing = GOOD.replace(r#""device_id":1,"#, "");
        assert_eq!(
            reasons(&one(&missing)),
            vec![(Some(0), Reason::InvalidDeviceId)]
        );
        let edge = GOOD.replace(r#""device_id":1"#, r#""device_id":-2147483648"#);
        assert_eq!(
            decode(&one(&edge), NO_LIMIT).readings[0].device_id,
            i32::MIN
        );
    }

    #[test]
    fn device_name_rules() {
        for bad in ["null", "1", "[]"] {
            let element = GOOD.replace(r#""device_name":"a""#, &format!(r#""device_name":{bad}"#));
            assert_eq!(
                reasons(&one(&element)),
                vec![(Some(0), Reason::InvalidDeviceName)],
                "{bad}"
            );
        }
        let missing = GOOD.replace(r#""device_name":"a","#, "");
        assert_eq!(
            reasons(&one(&missing)),
            vec![(Some(0), Reason::InvalidDeviceName)]
        );
    }

    #[test]
    fn escaped_and_unicode_names_are_unescaped() {
        let element = GOOD.replace(
            r#""device_name":"a""#,
            r#""device_name":"Lab \"A\" \u65fa""#,
        );
        let block = decode(&one(&element), NO_LIMIT);
        assert_eq!(block.text(block.readings[0].name), "Lab \"A\" 旺");
        let plain = GOOD.replace(r#""device_name":"a""#, r#""device_name":"旺角 電錶""#);
        let block = decode(&one(&plain), NO_LIMIT);
        assert_eq!(block.text(block.readings[0].name), "旺角 電錶");
    }

    #[test]
    fn time_rules() {
        for bad in [
            r#""2022-13-01T00:00:00Z""#,
            r#""yesterday""#,
            "1657505700",
            "null",
        ] {
            let element = GOOD.replace(
                r#""time":"2022-07-11T02:15:00Z""#,
                &format!(r#""time":{bad}"#),
            );
            assert_eq!(
                reasons(&one(&element)),
                vec![(Some(0), Reason::InvalidTime)],
                "{bad}"
            );
        }
    }

    #[test]
    fn energy_rules() {
        for bad in ["-0.01", "-1", r#""1.5""#, "null", "1e400", "-1e400"] {
            let element = GOOD.replace(
                r#""cumulative_energy":1.5"#,
                &format!(r#""cumulative_energy":{bad}"#),
            );
            assert_eq!(
                reasons(&one(&element)),
                vec![(Some(0), Reason::InvalidEnergy)],
                "{bad}"
            );
        }
        for good in ["0", "18446744073709551615", "1e300", "0.0"] {
            let element = GOOD.replace(
                r#""cumulative_energy":1.5"#,
                &format!(r#""cumulative_energy":{good}"#),
            );
            assert_eq!(decode(&one(&element), NO_LIMIT).readings.len(), 1, "{good}");
        }
    }

    #[test]
    fn unrepresentable_number_elsewhere_is_ignored_or_attributed() {
        // An ignored field with a huge number must not cost the reading.
        let extra = GOOD.replace('}', r#","calibration":1e999}"#);
        assert_eq!(decode(&one(&extra), NO_LIMIT).readings.len(), 1);
        let huge_id = GOOD.replace(r#""device_id":1"#, r#""device_id":1e999"#);
        assert_eq!(
            reasons(&one(&huge_id)),
            vec![(Some(0), Reason::InvalidDeviceId)]
        );
    }

    #[test]
    fn future_time_uses_the_limit() {
        let t = timestamp::parse_micros("2022-07-11T02:15:00Z").unwrap();
        let at_limit = decode(&one(GOOD), Limits { latest_time: t });
        assert_eq!(at_limit.readings.len(), 1);
        let beyond = decode(&one(GOOD), Limits { latest_time: t - 1 });
        assert_eq!(beyond.rejected[0].reason, Reason::FutureTime);
    }

    #[test]
    fn first_failing_rule_wins() {
        let everything_wrong =
            r#"{"device_id":"x","device_name":null,"time":"bad","cumulative_energy":-1}"#;
        assert_eq!(
            reasons(&one(everything_wrong)),
            vec![(Some(0), Reason::InvalidDeviceId)]
        );
        let name_and_time = r#"{"device_id":1,"time":"bad","cumulative_energy":-1}"#;
        assert_eq!(
            reasons(&one(name_and_time)),
            vec![(Some(0), Reason::InvalidDeviceName)]
        );
        let energy_and_future = r#"{"device_id":1,"device_name":"a","time":"2999-01-01T00:00:00Z","cumulative_energy":-1}"#;
        let block = decode(&one(energy_and_future), Limits { latest_time: 0 });
        assert_eq!(block.rejected[0].reason, Reason::InvalidEnergy);
    }

    #[test]
    fn unknown_fields_are_ignored_and_duplicate_keys_take_the_last() {
        let element = r#"{"firmware":{"v":[1,2]},"device_id":1,"device_id":2,"device_name":"a","time":"2022-07-11T02:15:00Z","cumulative_energy":1}"#;
        let line = format!(r#"{{"gateway":"g1","measurements":[{element}],"extra":[null]}}"#);
        let block = decode(&line, NO_LIMIT);
        assert_eq!(block.readings[0].device_id, 2);
    }

    #[test]
    fn invalid_utf8_costs_only_its_own_message() {
        let good = one(GOOD);
        let mut bytes = one(&GOOD.replace(r#""a""#, "\"a\u{FFFD}\"")).into_bytes();
        let bad_at = bytes
            .windows(3)
            .position(|w| w == "\u{FFFD}".as_bytes())
            .unwrap();
        bytes.splice(bad_at..bad_at + 3, [0xff]);
        let first_end = bytes.len();
        bytes.push(b'\n');
        bytes.extend_from_slice(good.as_bytes());
        let mut block = DecodedBlock::new(bytes);
        block.decode(0..first_end, 1, &NO_LIMIT);
        block.decode(first_end + 1..block.bytes().len(), 2, &NO_LIMIT);
        assert_eq!(block.rejected[0].reason, Reason::InvalidJson);
        assert_eq!(block.readings.len(), 1);
        assert_eq!(block.text(block.readings[0].name), "a");
    }

    #[test]
    fn element_text_returns_the_original_element() {
        let line = format!(r#"{{"measurements":[{GOOD}, {{ "device_id" : 9 }}]}}"#);
        assert_eq!(
            ElementTexts::of(line.as_bytes()).get(1),
            Some(r#"{ "device_id" : 9 }"#)
        );
        assert_eq!(ElementTexts::of(line.as_bytes()).get(2), None);
        // The last of repeated keys counts, as when the message was decoded.
        let repeated = format!(
            r#"{{"measurements":[1,2], "x": {{"measurements": 0}}, "measurements":[{GOOD}, 7]}}"#
        );
        assert_eq!(ElementTexts::of(repeated.as_bytes()).get(1), Some("7"));
        assert_eq!(ElementTexts::of(repeated.as_bytes()).get(0), Some(GOOD));
        let texts = ElementTexts::of(line.as_bytes());
        let span = texts.span(1).unwrap();
        assert_eq!(&line[span], r#"{ "device_id" : 9 }"#);
        assert_eq!(texts.span(2), None);
    }
}
