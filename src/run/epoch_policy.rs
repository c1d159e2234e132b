//! When the service closes an epoch, as data: the loop describes what it sees, the policy
//! answers with the reason to close (logged with the epoch), or none.

use std::fmt;
use std::time::Duration;

/// Why an epoch closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A stop was requested (SIGTERM/SIGINT) with messages buffered: they are committed first.
    Stop,
    /// The buffered messages reached `--epoch-max-bytes`.
    Full,
    /// `--epoch-interval` passed with messages buffered.
    Interval,
    /// `--stop-when-drained`: every partition is read to its end and something is left to
    /// emit.
    Drained,
    /// A partition turned idle (or active again) with readings waiting: they may be released
    /// although no message came.
    IdleChange,
    /// An offset gap is to be skipped: what was read before it is committed first.
    OffsetGap,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Stop => "stop requested",
            CloseReason::Full => "epoch-max-bytes reached",
            CloseReason::Interval => "epoch-interval passed",
            CloseReason::Drained => "drained",
            CloseReason::IdleChange => "idle partitions changed",
            CloseReason::OffsetGap => "an offset gap is skipped",
        })
    }
}

/// What the service loop sees between two polls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopState {
    /// Time since the current epoch started.
    pub elapsed: Duration,
    pub buffered_bytes: usize,
    /// Some partition has buffered messages.
    pub has_messages: bool,
    /// The state holds readings waiting for the watermark.
    pub has_pending: bool,
    /// `--stop-when-drained` and every partition is read to its end.
    pub drained: bool,
    /// The partitions idle now differ from those the state treats as idle.
    pub idle_changed: bool,
    pub stopping: bool,
    /// An offset gap waits to be skipped (`--on-offset-gap skip-and-record`).
    pub gap_found: bool,
}

/// The closing rules of `meterflow run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPolicy {
    pub interval: Duration,
    pub max_bytes: usize,
}

impl EpochPolicy {
    /// Whether the epoch closes now, and why (the first rule that holds, in this order).
    pub fn close(&self, seen: &LoopState) -> Option<CloseReason> {
        if seen.stopping && seen.has_messages {
            Some(CloseReason::Stop)
        } else if seen.gap_found && seen.has_messages {
            Some(CloseReason::OffsetGap)
        } else if seen.buffered_bytes >= self.max_bytes {
            Some(CloseReason::Full)
        } else if seen.has_messages && seen.elapsed >= self.interval {
            Some(CloseReason::Interval)
        } else if seen.drained && (seen.has_messages || seen.has_pending) {
            // A drained stream closes with an epoch only if it has something to emit, so a
            // restart after the last epoch writes nothing new.
            Some(CloseReason::Drained)
        } else if !seen.has_messages && seen.idle_changed && seen.has_pending {
            // A quiet stream still gets its rows when a partition turns idle.
            Some(CloseReason::IdleChange)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EpochPolicy = EpochPolicy {
        interval: Duration::from_secs(60),
        max_bytes: 1000,
    };

    #[test]
    fn nothing_closes_an_epoch_that_has_nothing_to_do() {
        let quiet = LoopState {
            elapsed: Duration::from_secs(3600),
            ..LoopState::default()
        };
        assert_eq!(POLICY.close(&quiet), None);
        // Drained or a stop with nothing buffered or waiting writes no epoch.
        let done = LoopState {
            drained: true,
            stopping: true,
            ..quiet
        };
        assert_eq!(POLICY.close(&done), None);
        // Waiting readings alone, with no idle change, wait for messages.
        let waiting = LoopState {
            has_pending: true,
            ..quiet
        };
        assert_eq!(POLICY.close(&waiting), None);
        // A gap to skip with nothing read before it is skipped without an epoch.
        let gap = LoopState {
            gap_found: true,
            ..quiet
        };
        assert_eq!(POLICY.close(&gap), None);
    }

    #[test]
    fn each_rule_closes_with_its_reason() {
        let messages = LoopState {
            has_messages: true,
            buffered_bytes: 10,
            ..LoopState::default()
        };
        assert_eq!(POLICY.close(&messages), None, "within interval and bytes");
        let cases = [
            (
                LoopState {
                    stopping: true,
                    ..messages
                },
                CloseReason::Stop,
            ),
            (
                LoopState {
                    gap_found: true,
                    ..messages
                },
                CloseReason::OffsetGap,
            ),
            (
                LoopState {
                    buffered_bytes: 1000,
                    ..messages
                },
                CloseReason::Full,
            ),
            (
                LoopState {
                    elapsed: Duration::from_secs(60),
                    ..messages
                },
                CloseReason::Interval,
            ),
            (
                LoopState {
                    drained: true,
                    ..messages
                },
                CloseReason::Drained,
            ),
            (
                LoopState {
                    drained: true,
                    has_pending: true,
                    ..LoopState::default()
                },
                CloseReason::Drained,
            ),
            (
                LoopState {
                    idle_changed: true,
                    has_pending: true,
                    ..LoopState::default()
                },
                CloseReason::IdleChange,
            ),
        ];
        for (seen, reason) in cases {
            assert_eq!(POLICY.close(&seen), Some(reason), "{seen:?}");
        }
    }

    #[test]
    fn the_interval_alone_does_not_close_an_empty_epoch() {
        let idle_buffer = LoopState {
            elapsed: Duration::from_secs(61),
            idle_changed: true,
            has_pending: false,
            ..LoopState::default()
        };
        assert_eq!(POLICY.close(&idle_buffer), None);
    }
}
