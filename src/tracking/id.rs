//! [`TaskId`]: a tracked task's id, a random UUID (version 4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A tracked task's id: a random UUID (version 4), shown and parsed in its
/// hyphenated lowercase form, `4ee301eb-6487-48a0-b6ed-e5f576accfc2`.
///
/// Ids are random, not sequential, so that one client cannot guess another's
/// task ids from its own.
///
/// # Example
///
/// ```
/// use tower_background::tracking::TaskId;
///
/// let id = TaskId::new();
/// let text = id.to_string();
/// assert_eq!(text.len(), 36);
/// assert_eq!(text.parse::<TaskId>(), Ok(id));
///
/// // Only the hyphenated form is an id; anything else is refused.
/// assert!("not-a-task-id".parse::<TaskId>().is_err());
/// assert!(text.replace('-', "").parse::<TaskId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A new random id, from the operating system's random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random bytes (`uuid` panics
    /// then; on Linux, only before the kernel's generator is seeded at boot).
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for TaskId {
    /// Same as [`TaskId::new`]: a new random id.
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

/// The error of parsing a [`TaskId`] from text that is not a hyphenated UUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseTaskIdError;

impl fmt::Display for ParseTaskIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task id is a hyphenated UUID (8-4-4-4-12 hexadecimal digits)")
    }
}

impl std::error::Error for ParseTaskIdError {}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    /// Parses the hyphenated form (either case). The other forms `uuid`
    /// accepts (braced, URN, 32 bare digits) are refused, so that every id
    /// has one spelling.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 36 {
            return Err(ParseTaskIdError);
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| ParseTaskIdError)
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_and_round_trip() {
        let id = TaskId::new();
        assert_eq!(id.0.get_version_num(), 4);
        assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
        assert_ne!(TaskId::new(), TaskId::new());
    }

    #[test]
    fn only_the_hyphenated_form_parses() {
        let text = "4ee301eb-6487-48a0-b6ed-e5f576accfc2";
        assert_eq!(
            text.parse::<TaskId>().map(|id| id.to_string()).as_deref(),
            Ok(text)
        );
        assert!(text.to_uppercase().parse::<TaskId>().is_ok());
        for bad in [
            "",
            "4ee301eb648748a0b6ede5f576accfc2",
            "{4ee301eb-6487-48a0-b6ed-e5f576accfc2}",
            "urn:uuid:4ee301eb-6487-48a0-b6ed-e5f576accfc2",
            "4ee301eb-6487-48a0-b6ed-e5f576accfcg",
            "4ee301eb+6487-48a0-b6ed-e5f576accfc2",
            "é4e301eb-6487-48a0-b6ed-e5f576accfc",
        ] {
            assert_eq!(bad.parse::<TaskId>(), Err(ParseTaskIdError), "{bad:?}");
        }
    }

    #[test]
    fn serializes_as_a_string() {
        let id: TaskId = "4ee301eb-6487-48a0-b6ed-e5f576accfc2".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""4ee301eb-6487-48a0-b6ed-e5f576accfc2""#);
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TaskId>(r#""nope""#).is_err());
    }
}
