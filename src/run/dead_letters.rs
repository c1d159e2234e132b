//! Where the service sends an epoch's dead letters: the epoch's `_dead_letter/` file (the
//! default) or a Kafka topic (`--dead-letter-topic`), behind one interface so the epoch's
//! steps do not branch on the choice.

use crate::kafka::dead_letter_topic::DeadLetterTopic;
use crate::run::RunError;
use crate::sink::dead_letter::DeadLetter;

/// A destination for dead letters.
pub trait DeadLetterDestination {
    /// Takes from `letters` what this destination sends itself; what stays is written with
    /// the epoch's files.
    fn take(&self, letters: &mut Vec<DeadLetter>) -> Vec<DeadLetter>;

    /// Sends what [`DeadLetterDestination::take`] took. Called after the epoch's files are
    /// written and before its checkpoint, so a crash in between sends them again (at least
    /// once).
    fn deliver(&self, letters: &[DeadLetter]) -> Result<(), RunError>;

    /// The topic letters go to; `None` for the epoch's file.
    fn topic(&self) -> Option<&str>;
}

/// Dead letters stay in the epoch's `_dead_letter/` file, written exactly once with it.
#[derive(Debug, Default, Clone, Copy)]
pub struct EpochFile;

impl DeadLetterDestination for EpochFile {
    fn take(&self, _letters: &mut Vec<DeadLetter>) -> Vec<DeadLetter> {
        Vec::new()
    }

    fn deliver(&self, letters: &[DeadLetter]) -> Result<(), RunError> {
        debug_assert!(letters.is_empty(), "the epoch file took them all");
        Ok(())
    }

    fn topic(&self) -> Option<&str> {
        None
    }
}

impl DeadLetterDestination for DeadLetterTopic {
    fn take(&self, letters: &mut Vec<DeadLetter>) -> Vec<DeadLetter> {
        std::mem::take(letters)
    }

    fn deliver(&self, letters: &[DeadLetter]) -> Result<(), RunError> {
        self.publish(letters)
            .map_err(|source| RunError::DeadLetterTopic {
                topic: self.topic().to_string(),
                source,
            })
    }

    fn topic(&self) -> Option<&str> {
        Some(DeadLetterTopic::topic(self))
    }
}
