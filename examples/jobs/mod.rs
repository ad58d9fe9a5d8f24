//! The durable jobs the `worker` and `distributed` examples share (and the
//! durable-job tests run): `add`, `power`, `join` and `fibonacci`, as in
//! aiotaskq's simple app. The server enqueues them; any worker that
//! registered them runs them; calling `run` directly gives the same result.
//!
//! Arithmetic is checked: a result that does not fit in an `i64` is an
//! error, the same from a direct call and from a worker. The server checks
//! inputs with `check` first and answers `400` with a JSON error.

#![allow(dead_code)] // each example and test uses a part

use serde::{Deserialize, Serialize};
use tower_background::durable::{Job, JobFailure, Workers};

/// `x + y`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Add {
    pub x: i64,
    pub y: i64,
}

impl Job for Add {
    const NAME: &'static str = "add";
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        self.x
            .checked_add(self.y)
            .ok_or_else(|| format!("{} + {} does not fit in an i64", self.x, self.y).into())
    }
}

/// `a` to the power `b` (`b` defaults to 1, as in the reference).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Power {
    pub a: i64,
    #[serde(default = "one")]
    pub b: u32,
}

fn one() -> u32 {
    1
}

impl Job for Power {
    const NAME: &'static str = "power";
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        self.a
            .checked_pow(self.b)
            .ok_or_else(|| format!("{}^{} does not fit in an i64", self.a, self.b).into())
    }
}

/// The items of `ls`, as text, joined by `delimiter` (default `","`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Join {
    pub ls: Vec<serde_json::Value>,
    #[serde(default = "comma")]
    pub delimiter: String,
}

fn comma() -> String {
    ",".to_owned()
}

impl Job for Join {
    const NAME: &'static str = "join";
    type Output = String;

    async fn run(self) -> Result<String, JobFailure> {
        let items: Vec<String> = self
            .ls
            .iter()
            .map(|item| match item {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect();
        Ok(items.join(&self.delimiter))
    }
}

/// The `n`th Fibonacci number, computed naively (CPU-heavy on purpose, as
/// in the reference), on the blocking pool so it never stalls a worker
/// thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fibonacci {
    pub n: u32,
}

/// Past this, the naive computation takes minutes: the server refuses it.
pub const MAX_FIBONACCI: u32 = 35;

impl Job for Fibonacci {
    const NAME: &'static str = "fibonacci";
    type Output = u64;

    async fn run(self) -> Result<u64, JobFailure> {
        if self.n > MAX_FIBONACCI {
            return Err(format!("n = {} is above the limit of {MAX_FIBONACCI}", self.n).into());
        }
        let n = self.n;
        Ok(tokio::task::spawn_blocking(move || naive_fibonacci(n)).await?)
    }
}

fn naive_fibonacci(n: u32) -> u64 {
    if n <= 2 {
        return u64::from(n > 0);
    }
    naive_fibonacci(n - 1) + naive_fibonacci(n - 2)
}

/// Registers the four jobs.
pub fn register(workers: Workers) -> Workers {
    workers
        .register::<Add>()
        .register::<Power>()
        .register::<Join>()
        .register::<Fibonacci>()
}
