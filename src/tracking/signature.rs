//! [`Signature`]: which task (and which arguments) a tracked task runs, as 12
//! hexadecimal digits that are the same on every machine and every run.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::SignatureError;

/// Which task, or which task with which arguments: the first 6 bytes of a
/// SHA-256 digest, shown as 12 lowercase hexadecimal digits
/// (`36f992696100`).
///
/// A signature depends only on the task's name and the *values* of its
/// arguments, never on memory addresses, `Debug` output, hash-map order or
/// the crate's version, so it is the same across restarts and machines: a
/// database shared by several servers can lock on it.
///
/// # What is hashed, exactly
///
/// - [`Signature::of_task(name)`](Signature::of_task): the SHA-256 of `name`
///   encoded as a JSON string, `"hello_task"` (with the quotes).
/// - [`Signature::of_args(name, args)`](Signature::of_args): the SHA-256 of
///   the two-element JSON array `[name, args]` in *canonical* form,
///   `["hello_task",{"name":"Me"}]`.
///
/// The canonical form of a value is the compact JSON that `serde_json`
/// writes (no whitespace; strings escaped as `serde_json` escapes them,
/// non-ASCII characters written as UTF-8; numbers as `serde_json` prints
/// them), with the keys of every object, at every depth, sorted by their
/// UTF-8 bytes. The arguments are first turned into a `serde_json::Value`
/// with their `Serialize` impl, so a struct and a map with the same fields
/// and values sign alike, whatever order the fields were given in (and
/// whether or not some crate enables `serde_json`'s `preserve_order`).
///
/// 6 bytes (48 bits) tell tasks apart, not adversaries: two argument sets
/// collide with probability 2⁻⁴⁸, about one in 281 trillion. The lock
/// compares the whole [`LockKey`](super::LockKey), which holds these
/// signatures only.
///
/// # Example
///
/// ```
/// use tower_background::tracking::Signature;
///
/// let task = Signature::of_task("hello_task");
/// assert_eq!(task.to_string(), "36f992696100");
///
/// #[derive(serde::Serialize)]
/// struct Hello<'a> {
///     name: &'a str,
/// }
/// let args = Signature::of_args("hello_task", &Hello { name: "Me" })?;
/// assert_eq!(args.to_string(), "487a69db8177");
///
/// // The same values given in another shape sign alike.
/// let json = serde_json::json!({ "name": "Me" });
/// assert_eq!(Signature::of_args("hello_task", &json)?, args);
/// # Ok::<(), tower_background::tracking::SignatureError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature([u8; Signature::BYTES]);

impl Signature {
    /// How many bytes of the SHA-256 digest are kept.
    const BYTES: usize = 6;

    /// The signature of the task called `name`.
    pub fn of_task(name: &str) -> Self {
        let mut canonical = String::new();
        write_canonical(&mut canonical, &Value::from(name));
        Self::of_canonical(&canonical)
    }

    /// The signature of the task called `name` run with `args`.
    ///
    /// # Errors
    ///
    /// When `args` cannot be turned into JSON: its `Serialize` impl fails,
    /// or it holds a map whose keys are not strings or numbers.
    pub fn of_args<A>(name: &str, args: &A) -> Result<Self, SignatureError>
    where
        A: Serialize + ?Sized,
    {
        let args = serde_json::to_value(args).map_err(SignatureError::new)?;
        let mut canonical = String::new();
        write_canonical(&mut canonical, &Value::Array(vec![Value::from(name), args]));
        Ok(Self::of_canonical(&canonical))
    }

    fn of_canonical(canonical: &str) -> Self {
        let digest = Sha256::digest(canonical.as_bytes());
        let mut bytes = [0; Self::BYTES];
        bytes.copy_from_slice(&digest[..Self::BYTES]);
        Self(bytes)
    }
}

/// Writes `value` in the canonical form described on [`Signature`].
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // `String`'s order is the order of the UTF-8 bytes.
            entries.sort_unstable_by_key(|(key, _)| *key);
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_canonical(out, value);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        // Scalars: `serde_json`'s compact form.
        Value::String(text) => write_string(out, text),
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Writes `text` as a JSON string, escaped as `serde_json` escapes it.
fn write_string(out: &mut String, text: &str) {
    // Writing to a `String` cannot fail, and neither can serializing a `str`.
    let _ = write!(out, "{}", JsonStr(text));
}

/// Displays a `str` as a JSON string without copying it into a `Value`.
struct JsonStr<'a>(&'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = serde_json::to_string(self.0).map_err(|_| fmt::Error)?;
        f.write_str(&escaped)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// The error of parsing a [`Signature`] from text that is not 12 lowercase
/// hexadecimal digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseSignatureError;

impl fmt::Display for ParseSignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a signature is 12 lowercase hexadecimal digits")
    }
}

impl std::error::Error for ParseSignatureError {}

impl FromStr for Signature {
    type Err = ParseSignatureError;

    /// Parses the 12 lowercase hexadecimal digits [`Display`](fmt::Display)
    /// writes; any other text is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.as_bytes();
        if digits.len() != 2 * Self::BYTES {
            return Err(ParseSignatureError);
        }
        let mut bytes = [0; Self::BYTES];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self(bytes))
    }
}

fn hex_digit(digit: u8) -> Result<u8, ParseSignatureError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        _ => Err(ParseSignatureError),
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn canonical(value: &Value) -> String {
        let mut out = String::new();
        write_canonical(&mut out, value);
        out
    }

    #[test]
    fn objects_are_sorted_at_every_depth() {
        let value = json!({
            "b": [ { "z": 1, "a": null } ],
            "a": { "y": true, "x": "é\"\n" },
            "é": 1.5,
            "B": -3,
        });
        assert_eq!(
            canonical(&value),
            r#"{"B":-3,"a":{"x":"é\"\n","y":true},"b":[{"a":null,"z":1}],"é":1.5}"#
        );
    }

    #[test]
    fn field_order_does_not_matter() {
        #[derive(Serialize)]
        struct Ab {
            a: u32,
            b: &'static str,
        }
        #[derive(Serialize)]
        struct Ba {
            b: &'static str,
            a: u32,
        }
        let ab = Signature::of_args("t", &Ab { a: 1, b: "x" }).unwrap();
        let ba = Signature::of_args("t", &Ba { b: "x", a: 1 }).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, Signature::of_args("t", &Ab { a: 2, b: "x" }).unwrap());
        assert_ne!(ab, Signature::of_args("u", &Ab { a: 1, b: "x" }).unwrap());
    }

    /// The fixed values are the first 12 hex digits of `sha256sum` over the
    /// canonical text, computed outside Rust.
    #[test]
    fn signatures_are_fixed() {
        assert_eq!(Signature::of_task("hello_task").to_string(), "36f992696100");
        let args = Signature::of_args("hello_task", &json!({ "name": "Me" })).unwrap();
        assert_eq!(args.to_string(), "487a69db8177");
    }

    #[test]
    fn unserializable_arguments_are_an_error() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1_u8], "a vector is not a JSON key");
        assert!(Signature::of_args("t", &map).is_err());
    }

    #[test]
    fn parses_what_it_displays_and_nothing_else() {
        let signature = Signature::of_task("x");
        assert_eq!(signature.to_string().parse(), Ok(signature));
        for bad in [
            "",
            "36f99269610",
            "36f9926961000",
            "36F992696100",
            "36f99269610g",
            "36f99269610é",
        ] {
            assert_eq!(
                bad.parse::<Signature>(),
                Err(ParseSignatureError),
                "{bad:?}"
            );
        }
        let json = serde_json::to_string(&signature).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), signature);
    }
}
