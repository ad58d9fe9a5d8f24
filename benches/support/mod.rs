//! What the benches share: how they tell a measurement from the smoke
//! pass, their flags, the statistics their tables are made of and how the
//! tables are printed, and ([`requests`]) how the in-process benches drive
//! a layered service.
//!
//! Each bench is a crate of its own and takes this file in with
//! `mod support;` (`load`, a directory, with
//! `#[path = "../support/mod.rs"] mod support;`). Cargo does not make a
//! bench target of it: it looks for benches in `benches/*.rs` and
//! `benches/*/main.rs` only.
//!
//! Only what means the same in every bench lives here; what merely looks
//! alike (durable's `median`, each bench's way of printing a time) stays in
//! its bench.

#![allow(dead_code, reason = "each bench uses only a part of this module")]

use std::fmt;

pub(crate) mod requests;

/// How the bench binary was started.
///
/// `cargo bench` passes `--bench` to a `harness = false` target and
/// `cargo test --benches` (so `cargo test --all-features`) does not: that
/// is the one sign a bench has of whether it is to measure or only to
/// check, quickly, that it still works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Run without `--bench`: one short pass, no figures worth keeping.
    Smoke,
    /// `--bench --quick`: fewer, shorter rounds.
    Quick,
    /// `--bench`: the full measurement.
    Full,
}

impl Mode {
    /// The mode that `args` (the program's arguments, without its name)
    /// ask for.
    pub(crate) fn from_args(args: &[String]) -> Self {
        let flag = |name: &str| args.iter().any(|arg| arg == name);
        if !flag("--bench") {
            Self::Smoke
        } else if flag("--quick") {
            Self::Quick
        } else {
            Self::Full
        }
    }

    /// Whether this run measures: not the smoke pass.
    pub(crate) fn measures(self) -> bool {
        self != Self::Smoke
    }

    /// The mode's name in the progress lines and the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Smoke => "test",
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A bench's own flags, one at a time, for its `match`: what cargo and
/// criterion habits pass besides (`--bench`, `--quick`, which
/// [`Mode::from_args`] has read, and words that are not flags, which cargo
/// passes as filters) is skipped.
pub(crate) struct Flags {
    bench: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Flags {
    /// The flags in `args` (the program's arguments, without its name) of
    /// the bench named `bench`, the name its messages start with.
    pub(crate) fn new(bench: &'static str, args: Vec<String>) -> Self {
        Self {
            bench,
            args: args.into_iter(),
        }
    }

    /// The argument after `flag`, or a panic that says it is missing: a
    /// mistyped flag should stop a bench before it runs for minutes.
    pub(crate) fn value(&mut self, flag: &str) -> String {
        self.args
            .next()
            .unwrap_or_else(|| panic!("{}: {flag} needs a value", self.bench))
    }

    /// A flag the bench does not know: said, and otherwise ignored, as
    /// cargo may pass flags meant for other harnesses.
    pub(crate) fn ignore(&self, flag: &str) {
        eprintln!("{}: ignoring {flag}", self.bench);
    }
}

impl Iterator for Flags {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.args
            .find(|arg| arg.starts_with("--") && arg != "--bench" && arg != "--quick")
    }
}

/// A command-line value as a number, or a panic that names the value: a
/// mistyped flag should stop a bench before it runs for minutes.
pub(crate) fn parse<T: std::str::FromStr>(value: &str) -> T {
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {value:?}"))
}

/// The `q`-quantile of `sorted` (ascending) by nearest rank: the smallest
/// value with at least `q` of all values at or below it, so always one of
/// the values measured, never an interpolation. `None` when there are
/// none; each bench says what an empty set reads as in its tables.
pub(crate) fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The median of per-round figures, the middle two averaged for an even
/// count, NaN for none: what the tables show, so that one noisy round does
/// not move a figure.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Prints a plain table, each column padded to its widest cell, after an
/// empty line.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    println!();
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// CPU time (ns) used so far by this process's threads whose name starts
/// with `prefix` (`""`: all of them), from the first field of each
/// thread's `/proc/self/task/*/schedstat` (Linux); `None` where that cannot
/// be read. Unlike the wall clock, it hardly moves when other processes
/// take the cores.
pub(crate) fn threads_cpu_ns(prefix: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread has just exited
        };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) {
            total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}
