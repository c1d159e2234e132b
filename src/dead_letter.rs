//! Dead-letter records: one JSON line per refused record (contract §2).

use serde::Serialize;

use crate::reason::Reason;

/// Where a record came from, so an operator can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Origin {
    /// A line of an input file (1-based).
    File { file: String, line: u64 },
    /// A Kafka record.
    Kafka {
        topic: String,
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
    pub detail: String,
    pub source: Origin,
    /// Index of the element in `measurements`; null when the whole message was refused.
    pub index: Option<u32>,
    pub record: String,
}

impl DeadLetter {
    /// The JSON line, with its trailing newline.
    pub fn to_json_line(&self) -> String {
        // Serializing these plain types cannot fail; an empty object keeps the file readable
        // should it ever.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }
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
}
