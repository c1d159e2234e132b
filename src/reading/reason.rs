//! The reason codes of dead-letter records (contract §2–§3).

use serde::Serialize;

/// Why an input record did not become an output row. The code is the stable, documented name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The message is not valid JSON (or not UTF-8).
    InvalidJson,
    /// The message is JSON but has no `measurements` array.
    MissingMeasurements,
    /// An element of `measurements` is not a JSON object.
    InvalidReading,
    /// `device_id` is missing, not an integer, or outside Int32.
    InvalidDeviceId,
    /// `device_name` is missing, null or not a string.
    InvalidDeviceName,
    /// `time` is missing or not an RFC 3339 instant.
    InvalidTime,
    /// `cumulative_energy` is missing, not a finite number, or negative.
    InvalidEnergy,
    /// `time` is later than processing time plus the allowed future skew.
    FutureTime,
    /// Same device and time as an accepted reading, with a different energy.
    ConflictingDuplicate,
    /// Older than the device's last emitted reading: accepting it would rewrite history.
    Late,
}

impl Reason {
    /// Every reason, in the order of the contract's validation table.
    pub const ALL: [Reason; 10] = [
        Reason::InvalidJson,
        Reason::MissingMeasurements,
        Reason::InvalidReading,
        Reason::InvalidDeviceId,
        Reason::InvalidDeviceName,
        Reason::InvalidTime,
        Reason::InvalidEnergy,
        Reason::FutureTime,
        Reason::ConflictingDuplicate,
        Reason::Late,
    ];

    /// The code written into dead letters and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::MissingMeasurements => "missing_measurements",
            Reason::InvalidReading => "invalid_reading",
            Reason::InvalidDeviceId => "invalid_device_id",
            Reason::InvalidDeviceName => "invalid_device_name",
            Reason::InvalidTime => "invalid_time",
            Reason::InvalidEnergy => "invalid_energy",
            Reason::FutureTime => "future_time",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::Late => "late",
        }
    }

    /// Position in [`Reason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_serde_names_and_indexes() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            let json = serde_json::to_string(reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.code()));
        }
    }
}
