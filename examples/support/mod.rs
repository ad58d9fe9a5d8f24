//! Start-up code the examples share: `main` (logging, settings from the
//! environment, exit codes), the shutdown signal, how long the HTTP drain
//! may take, and serving an axum app until the signal.

use std::env::{self, VarError};
use std::error::Error;
use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::io;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_background::Supervisor;
use tracing_subscriber::EnvFilter;

/// How long open connections get to finish once the signal has come. With
/// the crate's default 15 s grace period, the whole shutdown stays within
/// Kubernetes' default 30 s `terminationGracePeriodSeconds`, with 5 s to spare.
pub(crate) const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// The examples' `main`: logs with the `RUST_LOG` filter (default `info`),
/// reads `PORT` and `GRACE_SECS`, and runs `run(port, grace_period)`. Exits
/// with 2 on a bad setting (reported before anything starts; `run`'s own
/// settings come from [`setting`]) and 1 when `run` fails.
pub(crate) async fn main<F, R>(run: F) -> ExitCode
where
    F: FnOnce(u16, Duration) -> R,
    R: Future<Output = Result<(), Box<dyn Error>>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let (port, grace_period) = match settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };

    match run(port, grace_period).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if error.is::<BadSetting>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A setting of the example's own, read by `run` before it starts
/// anything: the variable `name` parsed, or `default` when it is not set.
/// A bad value makes `main` exit with 2, as a bad `PORT` does.
// Only the durable-job examples have settings of their own.
#[allow(dead_code)]
pub(crate) fn setting<T>(name: &str, default: T, expected: &str) -> Result<T, Box<dyn Error>>
where
    T: FromStr,
    T::Err: Display,
{
    env_or(name, default, expected).map_err(|message| BadSetting(message).into())
}

/// A setting `run` rejects: `main` exits with 2.
#[allow(dead_code)]
pub(crate) fn bad_setting(message: impl Into<String>) -> Box<dyn Error> {
    BadSetting(message.into()).into()
}

/// The durable-job examples' heartbeat when `HEARTBEAT_SECS` is not set:
/// 2 s, not the crate's 30 s, so that the jobs of a worker you kill in the
/// demo are run again by another within about 4 s instead of a minute.
#[allow(dead_code)]
pub(crate) const EXAMPLE_HEARTBEAT: Duration = Duration::from_secs(2);

/// `HEARTBEAT_SECS` (default [`EXAMPLE_HEARTBEAT`]): how often the
/// durable-job examples' workers tell the database they are alive. Every
/// process that shares a queue needs the same value: a worker takes for
/// dead, and runs the jobs of, any worker silent for two of *its own*
/// intervals.
#[allow(dead_code)]
pub(crate) fn heartbeat() -> Result<Duration, Box<dyn Error>> {
    let default = EXAMPLE_HEARTBEAT.as_secs();
    let secs = setting("HEARTBEAT_SECS", default, "a whole number of seconds")?;
    if secs == 0 {
        return Err(bad_setting(
            "HEARTBEAT_SECS=0: the heartbeat is at least 1 s",
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Where the durable-job examples keep their queue, for the logs:
/// `$DATABASE_URL` with any password hidden, or `default` (the SQLite file
/// `JobQueue::from_env` falls back to).
#[allow(dead_code)]
pub(crate) fn database_location(default: &str) -> String {
    match env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => without_password(&url),
        _ => default.to_owned(),
    }
}

/// `scheme://user:password@host/…` with the password replaced by `***`.
#[allow(dead_code)]
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = user_info.split_once(':') else {
        return url.to_owned();
    };
    format!("{scheme}://{user}:***@{host}{path}")
}

#[derive(Debug)]
struct BadSetting(String);

impl Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for BadSetting {}

/// Serves `app` on 127.0.0.1:`port` until `SIGINT` or `SIGTERM`, then
/// shuts down in this order:
///
/// 1. `axum::serve` stops accepting connections and waits (at most
///    [`HTTP_DRAIN`]) for the requests in flight. Their responses end, so
///    their tasks are handed off to the supervisor.
/// 2. Only then does `background` stop taking tasks, and waits for the
///    running ones for at most its grace period before cancelling them. Its
///    report is printed.
///
/// Shutting the supervisor down first would refuse the tasks of the
/// requests still being answered. `axum::serve` alone would wait for a
/// stalled client forever, hence the bound on step 1.
///
/// On Kubernetes, `SIGKILL` follows `SIGTERM` after 30 s
/// (`terminationGracePeriodSeconds`), and that budget covers both steps:
/// with the default 15 s grace period and the drain bounded to 10 s, 5 s
/// remain for the process to exit.
// The hyper example serves without axum.
#[allow(dead_code)]
pub(crate) async fn serve_axum(
    port: u16,
    app: axum::Router,
    background: Supervisor,
) -> Result<(), Box<dyn Error>> {
    // Installed before serving, so that a failure shows up at start-up.
    let signal =
        shutdown_signal().map_err(|error| format!("cannot listen for signals: {error}"))?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|error| format!("cannot listen on 127.0.0.1:{port}: {error}"))?;
    println!("listening on http://{}", listener.local_addr()?);

    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let mut server = std::pin::pin!(server.into_future());
    let served = tokio::select! {
        served = &mut server => served, // only on an I/O error
        () = signal => {
            let _ = stop.send(());
            tokio::time::timeout(HTTP_DRAIN, server).await.unwrap_or_else(|_| {
                eprintln!("connections still open after {HTTP_DRAIN:?}; shutting down anyway");
                Ok(())
            })
        }
    };

    let report = background.shutdown().await;
    println!("{report}");
    Ok(served?)
}

/// `PORT` and `GRACE_SECS` from the environment.
fn settings() -> Result<(u16, Duration), String> {
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
