//! What happens to a request's tasks when its response does not end normally.

/// What to do with a request's tasks when the client goes away before the
/// response body has ended (the body is dropped unfinished).
///
/// Set with [`BackgroundTaskLayer::on_disconnect`](crate::BackgroundTaskLayer::on_disconnect).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnDisconnect {
    /// Run them anyway (the default): the handler's work happened, and the
    /// tasks usually complete it (send the e-mail, write the audit record).
    #[default]
    Run,
    /// Discard them, counted in [`Stats::discarded`](crate::Stats::discarded)
    /// as `client_disconnected` and logged at `DEBUG`. For work that only
    /// makes sense if the client saw the response.
    Skip,
}

/// What to do with a request's tasks when its response has a server-error
/// status (`5xx`).
///
/// Set with [`BackgroundTaskLayer::on_server_error`](crate::BackgroundTaskLayer::on_server_error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnServerError {
    /// Run them like any other response's tasks (the default).
    #[default]
    Run,
    /// Discard them as soon as the `5xx` response is produced, counted in
    /// [`Stats::discarded`](crate::Stats::discarded) as `server_error` and
    /// logged at `DEBUG`. Tasks added later through a clone of the handle are
    /// discarded too.
    Skip,
}

/// Both policies, as the layer carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) on_disconnect: OnDisconnect,
    pub(crate) on_server_error: OnServerError,
}
