//! Start-up code the examples share: settings from the environment, the
//! shutdown signal, and how long the HTTP drain may take.

use std::env::{self, VarError};
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::time::Duration;

/// How long open connections get to finish once the signal has come. With
/// the crate's default 15 s grace period, the whole shutdown stays within
/// Kubernetes' default 30 s `terminationGracePeriodSeconds`, with 5 s to spare.
pub(crate) const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// `PORT` and `GRACE_SECS` from the environment.
pub(crate) fn settings() -> Result<(u16, Duration), String> {
    let port = env_or("PORT", 3000_u16, "a port number (0-65535)")?;
    let default = tower_background::DEFAULT_GRACE_PERIOD.as_secs();
    let grace = env_or("GRACE_SECS", default, "a whole number of seconds")?;
    // Longer than any orchestrator waits: surely a typo.
    if grace > 3600 {
        return Err(format!("GRACE_SECS={grace} is more than an hour"));
    }
    Ok((port, Duration::from_secs(grace)))
}

/// Reads and parses the environment variable `name`, or gives `default` when
/// it is not set.
fn env_or<T>(name: &str, default: T, expected: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    match env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|error| format!("{name}={value:?} is not {expected}: {error}")),
        Err(VarError::NotPresent) => Ok(default),
        Err(VarError::NotUnicode(value)) => Err(format!("{name}={value:?} is not valid UTF-8")),
    }
}

/// Resolves on the first `SIGINT` (Ctrl-C) or `SIGTERM` (what Kubernetes
/// sends).
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => println!("SIGINT received, shutting down"),
            _ = terminate.recv() => println!("SIGTERM received, shutting down"),
        }
    })
}

/// Resolves on the first Ctrl-C.
#[cfg(windows)]
pub(crate) fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
    Ok(async move {
        ctrl_c.recv().await;
        println!("Ctrl-C received, shutting down");
    })
}
