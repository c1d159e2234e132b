//! Dead-letter records: one JSON line per refused record (contract §2).

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::reading::reason::Reason;
use crate::timestamp::write_micros;

/// Where a record came from, so an operator can find it again. File and topic names are
/// shared by all the dead letters of a source: a refusal costs no copy of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Origin {
    /// A line of an input file (1-based).
    File {
        #[serde(serialize_with = "shared_str")]
        file: Arc<str>,
        line: u64,
    },
    /// A Kafka record.
    Kafka {
        #[serde(serialize_with = "shared_str")]
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
}

/// One dead letter, serialized as
/// `{"reason","detail","source","index","record"}` with `record` the original JSON text as a
/// string (a string, because an `invalid_json` record cannot be embedded as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub reason: Reason,
    pub detail: Detail,
    pub source: Origin,
    /// Index of the element in `measurements`; null when the whole message was refused.
    pub index: Option<u32>,
    pub record: RecordText,
}

/// The original text of a refused record. Readings the state refuses share their message's
/// text (copied once) when they are most of it, so a message refused reading by reading costs
/// one copy, not one allocation per reading.
#[derive(Debug, Clone)]
pub enum RecordText {
    Owned(String),
    /// `message[start..end]`.
    Shared {
        message: Arc<str>,
        start: u32,
        end: u32,
    },
}

impl RecordText {
    pub fn as_str(&self) -> &str {
        match self {
            RecordText::Owned(text) => text,
            RecordText::Shared {
                message,
                start,
                end,
            } => message
                .get(*start as usize..*end as usize)
                .unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl PartialEq for RecordText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<String> for RecordText {
    fn from(text: String) -> Self {
        RecordText::Owned(text)
    }
}

impl From<&str> for RecordText {
    fn from(text: &str) -> Self {
        RecordText::Owned(text.to_owned())
    }
}

impl Serialize for RecordText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Serializes a shared name as a string (serde's own impl needs its `rc` feature, which would
/// rebuild every crate that depends on serde for one field).
fn shared_str<S: Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text)
}

/// Why a record was refused, in words. Refusals decided by the state machine keep their
/// numbers and are put into words only when written (on the writer's side of the pipeline), so
/// a message refused in full costs no formatting while it is processed.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// Decided while decoding, already in words.
    Text(String),
    /// The device has emitted a newer reading already.
    Late {
        device_id: i32,
        time: i64,
        last_emitted: i64,
    },
    /// The device has an accepted reading at this time with another energy.
    ConflictingDuplicate {
        device_id: i32,
        time: i64,
        accepted_energy: f64,
    },
    /// The device was evicted by the state TTL and the reading is older than its horizon.
    BeyondTtl {
        device_id: i32,
        time: i64,
        horizon: i64,
    },
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Text(text) => f.write_str(text),
            Detail::Late {
                device_id,
                time,
                last_emitted,
            } => {
                write!(f, "device {device_id} already emitted a reading at ")?;
                write_micros(f, *last_emitted)?;
                f.write_str(", after ")?;
                write_micros(f, *time)
            }
            Detail::ConflictingDuplicate {
                device_id,
                time,
                accepted_energy,
            } => {
                write!(f, "device {device_id} already has a reading at ")?;
                write_micros(f, *time)?;
                write!(f, " with cumulative_energy {accepted_energy}")
            }
            Detail::BeyondTtl {
                device_id,
                time,
                horizon,
            } => {
                write!(f, "device {device_id} has no state (state TTL) and ")?;
                write_micros(f, *time)?;
                f.write_str(" is before the TTL horizon ")?;
                write_micros(f, *horizon)
            }
        }
    }
}

impl From<String> for Detail {
    fn from(text: String) -> Self {
        Detail::Text(text)
    }
}

impl From<&str> for Detail {
    fn from(text: &str) -> Self {
        Detail::Text(text.to_owned())
    }
}

impl Serialize for Detail {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Detail::Text(text) => serializer.serialize_str(text),
            other => serializer.collect_str(other),
        }
    }
}

impl DeadLetter {
    /// The JSON line, with its trailing newline.
    pub fn to_json_line(&self) -> String {
        let mut line = Vec::new();
        self.write_json_line(&mut line);
        // serde_json writes UTF-8 only.
        String::from_utf8(line).unwrap_or_else(|_| "{}\n".into())
    }

    /// Appends the JSON line, with its trailing newline, to `out`.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Serializing these plain types into memory cannot fail; an empty object keeps the
        // file readable should it ever.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        out.push(b'\n');
    }
}

/// What a letter cut to fit its destination says about the record it no longer holds whole
/// (contract §2): the record's size and SHA-256, so it can be found and checked in the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncated {
    /// The original record's size in bytes (UTF-8).
    pub bytes: usize,
    /// Lower-case hex SHA-256 of the original record's bytes.
    pub sha256: String,
}

/// A letter as sent when it had to be cut: the same fields, `detail` and `record` prefixes.
#[derive(Serialize)]
struct CutLetter<'a> {
    reason: Reason,
    detail: &'a str,
    source: &'a Origin,
    index: Option<u32>,
    record: &'a str,
    truncated: &'a Truncated,
}

/// A letter cannot be made to fit: even without its record and detail it is larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a dead letter needs {needed} bytes even with its record cut, the limit is {limit}")]
pub struct LetterTooLarge {
    pub needed: usize,
    pub limit: usize,
}

impl DeadLetter {
    /// The JSON text (no newline) in at most `limit` bytes: the letter itself when it fits,
    /// else with `record` (then, were that not enough, `detail`) cut at a character boundary
    /// and a `truncated` field. Linear in the letter's size.
    pub fn json_within(&self, limit: usize) -> Result<Vec<u8>, LetterTooLarge> {
        let mut whole = Vec::new();
        self.write_json_line(&mut whole);
        whole.pop();
        if whole.len() <= limit {
            return Ok(whole);
        }
        let record = self.record.as_str();
        let truncated = Truncated {
            bytes: record.len(),
            sha256: sha256_hex(record.as_bytes()),
        };
        let detail = self.detail.to_string();
        let cut = |detail: &str, record: &str| {
            serde_json::to_vec(&CutLetter {
                reason: self.reason,
                detail,
                source: &self.source,
                index: self.index,
                record,
                truncated: &truncated,
            })
            .unwrap_or_default()
        };
        let bare = cut("", "").len();
        if bare > limit {
            return Err(LetterTooLarge {
                needed: bare,
                limit,
            });
        }
        let detail = json_prefix(&detail, limit - bare);
        let room = limit - bare - escaped_len(detail);
        let text = cut(detail, json_prefix(record, room));
        debug_assert!(text.len() <= limit, "{} > {limit}", text.len());
        Ok(text)
    }
}

/// The longest prefix of `text` whose JSON string escape takes at most `room` bytes.
fn json_prefix(text: &str, room: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_char_len(c);
        if used > room {
            return &text[..at];
        }
    }
    text
}

/// Bytes of `text` inside a JSON string, as serde_json escapes it (without the quotes).
fn escaped_len(text: &str) -> usize {
    text.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_the_documented_shape() {
        let letter = DeadLetter {
            reason: Reason::InvalidTime,
            detail: "bad".into(),
            source: Origin::File {
                file: "in.jsonl".into(),
                line: 3,
            },
            index: Some(1),
            record: r#"{"time":"x"}"#.into(),
        };
        let value: serde_json::Value = serde_json::from_str(&letter.to_json_line()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"reason":"invalid_time","detail":"bad","source":{"file":"in.jsonl","line":3},"index":1,"record":"{\"time\":\"x\"}"})
        );
        let kafka = DeadLetter {
            source: Origin::Kafka {
                topic: "t".into(),
                partition: 2,
                offset: 9,
            },
            index: None,
            ..letter
        };
        let value: serde_json::Value = serde_json::from_str(&kafka.to_json_line()).unwrap();
        assert_eq!(
            value["source"],
            serde_json::json!({"topic":"t","partition":2,"offset":9})
        );
        assert!(value["index"].is_null());
    }

    fn letter_of(record: String, detail: String) -> DeadLetter {
        DeadLetter {
            reason: Reason::InvalidJson,
            detail: Detail::Text(detail),
            source: Origin::Kafka {
                topic: "readings".into(),
                partition: 3,
                offset: 41,
            },
            index: Some(2),
            record: record.into(),
        }
    }

    proptest::proptest! {
        /// Whatever the record (quotes, controls, any script) and limit: the text fits, is
        /// JSON, keeps every field but the cut ones, and the cut ones are prefixes with the
        /// original's size and digest.
        #[test]
        fn a_letter_is_cut_to_fit_and_says_what_it_held(
            record in "(\\PC|[\"\\\\\u{0}-\u{1f}]){0,400}",
            detail in "(\\PC|\"){0,80}",
            limit in 0usize..1200,
        ) {
            let letter = letter_of(record.clone(), detail.clone());
            let whole = letter.to_json_line();
            match letter.json_within(limit) {
                Err(too_large) => {
                    proptest::prop_assert!(too_large.needed > limit);
                    proptest::prop_assert!(whole.len() - 1 > limit);
                }
                Ok(text) => {
                    proptest::prop_assert!(text.len() <= limit, "{} > {limit}", text.len());
                    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    let expected: serde_json::Value = serde_json::from_str(&whole).unwrap();
                    if whole.len() - 1 <= limit {
                        proptest::prop_assert_eq!(text.as_slice(), whole.trim_end().as_bytes());
                    } else {
                        for field in ["reason", "source", "index"] {
                            proptest::prop_assert_eq!(&value[field], &expected[field]);
                        }
                        let cut = value["record"].as_str().unwrap();
                        proptest::prop_assert!(record.starts_with(cut));
                        proptest::prop_assert!(detail.starts_with(value["detail"].as_str().unwrap()));
                        proptest::prop_assert_eq!(&value["truncated"]["bytes"], &serde_json::json!(record.len()));
                        proptest::prop_assert_eq!(
                            value["truncated"]["sha256"].as_str().unwrap(),
                            sha256_hex(record.as_bytes())
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_cut_letter_keeps_as_much_of_its_record_as_fits() {
        let record = "x".repeat(10_000);
        let letter = letter_of(record.clone(), "expected value".into());
        let text = letter.json_within(1024).unwrap();
        assert!(
            text.len() >= 1023,
            "at most one byte unused: {}",
            text.len()
        );
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["detail"], "expected value", "the detail stays whole");
        assert_eq!(value["truncated"]["bytes"], 10_000);
        // The SHA-256 of 10 000 'x', as `sha256sum` gives it.
        assert_eq!(
            value["truncated"]["sha256"],
            "e4ee97ec252749d2096447e849628d0d7734f51700416eefbb33574bf0b3ee75"
        );
    }

    #[test]
    fn state_details_are_written_in_words() {
        let time = crate::timestamp::parse_micros("2022-07-10T01:00:00Z").unwrap();
        let hour = 3_600_000_000;
        let cases = [
            (
                Detail::Late {
                    device_id: 1,
                    time,
                    last_emitted: time + hour,
                },
                "device 1 already emitted a reading at 2022-07-10T02:00:00Z, after \
                 2022-07-10T01:00:00Z",
            ),
            (
                Detail::ConflictingDuplicate {
                    device_id: 2,
                    time,
                    accepted_energy: 1.5,
                },
                "device 2 already has a reading at 2022-07-10T01:00:00Z with cumulative_energy 1.5",
            ),
            (
                Detail::BeyondTtl {
                    device_id: 3,
                    time,
                    horizon: time + hour,
                },
                "device 3 has no state (state TTL) and 2022-07-10T01:00:00Z is before the TTL \
                 horizon 2022-07-10T02:00:00Z",
            ),
        ];
        for (detail, words) in cases {
            assert_eq!(detail.to_string(), words);
            assert_eq!(serde_json::to_value(&detail).unwrap(), words);
        }
    }
}
