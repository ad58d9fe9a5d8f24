//! [`IntoTaskResult`]: how a tracked task's return value becomes its JSON
//! `result`, or its `error`.

use std::fmt::Display;

use serde::Serialize;
use serde_json::Value;

/// What a tracked task may return: a value recorded as its JSON `result`, or
/// an error recorded as a failure with the error's message.
///
/// Implemented for `Result<T, E>` (`T: Serialize` is the result, `E:
/// Display` the failure) and, for tasks that cannot fail, for `String`,
/// `&'static str`, `()` (result `null`) and `serde_json::Value`. Implement it
/// for your own types to return them directly.
///
/// # Example
///
/// ```
/// use serde_json::json;
/// use tower_background::tracking::IntoTaskResult;
///
/// assert_eq!("Hello Me!".into_task_result(), Ok(json!("Hello Me!")));
/// assert_eq!(Ok::<_, String>(vec![1, 2]).into_task_result(), Ok(json!([1, 2])));
/// assert_eq!(
///     Err::<u8, _>("no such user").into_task_result(),
///     Err("no such user".to_owned()),
/// );
/// ```
pub trait IntoTaskResult: Send + 'static {
    /// The JSON result, or the failure's message.
    fn into_task_result(self) -> Result<Value, String>;
}

impl<T, E> IntoTaskResult for Result<T, E>
where
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    /// `Ok` is serialized (a value that cannot be is a failure saying so);
    /// `Err` is a failure with the error's `Display` text.
    fn into_task_result(self) -> Result<Value, String> {
        let value = self.map_err(|error| error.to_string())?;
        serde_json::to_value(value)
            .map_err(|error| format!("the task's result could not be turned into JSON: {error}"))
    }
}

impl IntoTaskResult for String {
    fn into_task_result(self) -> Result<Value, String> {
        Ok(Value::String(self))
    }
}

impl IntoTaskResult for &'static str {
    fn into_task_result(self) -> Result<Value, String> {
        Ok(Value::from(self))
    }
}

impl IntoTaskResult for () {
    /// `null`.
    fn into_task_result(self) -> Result<Value, String> {
        Ok(Value::Null)
    }
}

impl IntoTaskResult for Value {
    fn into_task_result(self) -> Result<Value, String> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_unserializable_result_is_a_failure() {
        let mut map = BTreeMap::new();
        map.insert((1, 2), "tuple keys are not JSON");
        let result = Ok::<_, String>(map).into_task_result();
        assert!(result
            .unwrap_err()
            .starts_with("the task's result could not be turned into JSON"));
    }

    #[test]
    fn unit_is_null() {
        assert_eq!(().into_task_result(), Ok(Value::Null));
        assert_eq!(Ok::<(), String>(()).into_task_result(), Ok(Value::Null));
    }
}
