//! The durable jobs the `worker` and `distributed` examples share (and the
//! durable-job tests run): `add`, `power`, `join` and `fibonacci`, as in
//! aiotaskq's simple app. The server enqueues them; any worker that
//! registered them runs them; calling `run` directly gives the same result.
//!
//! Arithmetic is checked: a result that does not fit in an `i64` is an
//! error, the same from a direct call and from a worker. The server checks
//! inputs with [`Check::check`] first and answers `400` with a JSON error;
//! `check` and `run` share the code that decides, so they cannot disagree.

#![allow(dead_code)] // each example and test uses a part

use serde::{Deserialize, Serialize};
use tower_background::durable::{Job, JobFailure, Workers};

/// What a server asks before it enqueues a job: `Err` says why a worker
/// would fail it (a result that does not fit, a Fibonacci number too
/// costly to compute), so that the client hears it now, as a `400`.
pub(crate) trait Check {
    /// `Ok` if the job would succeed; cheap (it never runs the job).
    fn check(&self) -> Result<(), String>;
}

/// `x + y`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Add {
    pub(crate) x: i64,
    pub(crate) y: i64,
}

impl Add {
    fn sum(&self) -> Result<i64, String> {
        self.x
            .checked_add(self.y)
            .ok_or_else(|| format!("{} + {} does not fit in an i64", self.x, self.y))
    }
}

impl Job for Add {
    const NAME: &'static str = "add";
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        Ok(self.sum()?)
    }
}

impl Check for Add {
    fn check(&self) -> Result<(), String> {
        self.sum().map(drop)
    }
}

/// `a` to the power `b` (`b` defaults to 1, as in the reference).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Power {
    pub(crate) a: i64,
    #[serde(default = "one")]
    pub(crate) b: u32,
}

fn one() -> u32 {
    1
}

impl Power {
    fn value(&self) -> Result<i64, String> {
        self.a
            .checked_pow(self.b)
            .ok_or_else(|| format!("{}^{} does not fit in an i64", self.a, self.b))
    }
}

impl Job for Power {
    const NAME: &'static str = "power";
    type Output = i64;

    async fn run(self) -> Result<i64, JobFailure> {
        Ok(self.value()?)
    }
}

impl Check for Power {
    fn check(&self) -> Result<(), String> {
        self.value().map(drop)
    }
}

/// The items of `ls`, as text, joined by `delimiter` (default `","`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Join {
    pub(crate) ls: Vec<serde_json::Value>,
    #[serde(default = "comma")]
    pub(crate) delimiter: String,
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

impl Check for Join {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The `n`th Fibonacci number, computed naively (CPU-heavy on purpose, as
/// in the reference), on the blocking pool so it never stalls a worker
/// thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fibonacci {
    pub(crate) n: u32,
}

/// The largest `n` the job takes. The naive computation's time grows 1.6×
/// with each step of `n` (35 takes about 80 ms unoptimised, 42 about 2 s):
/// the server refuses more.
pub(crate) const MAX_FIBONACCI: u32 = 35;

impl Job for Fibonacci {
    const NAME: &'static str = "fibonacci";
    type Output = u64;

    async fn run(self) -> Result<u64, JobFailure> {
        self.check()?;
        let n = self.n;
        Ok(tokio::task::spawn_blocking(move || naive_fibonacci(n)).await?)
    }
}

impl Check for Fibonacci {
    fn check(&self) -> Result<(), String> {
        if self.n > MAX_FIBONACCI {
            return Err(format!(
                "n = {} is above the limit of {MAX_FIBONACCI}",
                self.n
            ));
        }
        Ok(())
    }
}

fn naive_fibonacci(n: u32) -> u64 {
    if n <= 2 {
        return u64::from(n > 0);
    }
    naive_fibonacci(n - 1) + naive_fibonacci(n - 2)
}

/// Registers the four jobs.
pub(crate) fn register(workers: Workers) -> Workers {
    workers
        .register::<Add>()
        .register::<Power>()
        .register::<Join>()
        .register::<Fibonacci>()
}
