//! RFC 3339 UTC timestamps for a task's start and end times, to the
//! millisecond (`2026-05-01T09:30:00.123Z`), with `serde` helpers for
//! [`TaskRecord`](super::TaskRecord)'s fields.
//!
//! Conversions go through whole nanoseconds since the Unix epoch with checked
//! arithmetic, rather than `time`'s `From<SystemTime>` impls, which panic on
//! a clock outside the years `time` can represent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_MILLI: i128 = 1_000_000;

/// `time` in RFC 3339, UTC, truncated to the millisecond, always with its
/// three digits of milliseconds: one width for every time, so that the
/// strings sort as the times do.
pub(super) fn format(time: SystemTime) -> Result<String, String> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let nanos = nanos - nanos.rem_euclid(NANOS_PER_MILLI);
    let utc =
        OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|error| error.to_string())?;
    let year = utc.year();
    // RFC 3339 has four-digit years only.
    if !(0..=9999).contains(&year) {
        return Err(format!("{time:?} has no RFC 3339 form: year {year}"));
    }
    Ok(format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond(),
    ))
}

/// Parses an RFC 3339 timestamp, with any offset.
pub(super) fn parse(text: &str) -> Result<SystemTime, String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|error| error.to_string())?;
    let nanos = parsed.unix_timestamp_nanos();
    let magnitude = nanos.unsigned_abs();
    let duration = u64::try_from(magnitude / NANOS_PER_SEC as u128)
        .ok()
        .map(|secs| Duration::new(secs, (magnitude % NANOS_PER_SEC as u128) as u32));
    let time = match duration {
        Some(duration) if nanos >= 0 => UNIX_EPOCH.checked_add(duration),
        Some(duration) => UNIX_EPOCH.checked_sub(duration),
        None => None,
    };
    time.ok_or_else(|| format!("{text} is out of this system's clock range"))
}

pub(super) fn serialize<S: Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = format(*time).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// The same for an `Option<SystemTime>`, `null` when `None`.
pub(super) mod option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(in super::super) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => super::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_to_the_millisecond() {
        let time = UNIX_EPOCH + Duration::new(1_777_627_800, 123_456_789);
        assert_eq!(format(time).unwrap(), "2026-05-01T09:30:00.123Z");
        assert_eq!(format(UNIX_EPOCH).unwrap(), "1970-01-01T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(format(before).unwrap(), "1969-12-31T23:59:58.500Z");
        let time = UNIX_EPOCH + Duration::from_millis(1_777_627_800_050);
        assert_eq!(format(time).unwrap(), "2026-05-01T09:30:00.050Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        let time = UNIX_EPOCH + Duration::from_millis(1_777_627_800_123);
        assert_eq!(parse(&format(time).unwrap()), Ok(time));
        assert_eq!(parse("2026-05-01T11:30:00.123+02:00"), Ok(time),);
        assert_eq!(
            parse("1969-12-31T23:59:58.5Z"),
            Ok(UNIX_EPOCH - Duration::from_millis(1500))
        );
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn a_clock_far_in_the_future_is_an_error_not_a_panic() {
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(400 * 365 * 86_400 * 100)) {
            assert!(format(far).is_err());
        }
    }
}
