//! The guard that carries a request's tasks from the service call to the end
//! of the response body, and decides their fate if it is dropped on the way.

use std::sync::Arc;

use crate::error::AddError;
use crate::handle::RequestTasks;
use crate::stats::DiscardReason;

/// Owned first by the response future, then by the response body. Whatever
/// way it goes, the request's tasks are handed off or discarded exactly once:
/// by [`Handoff::finish`] / [`Handoff::discard`], or by `Drop` according to
/// [`Handoff::if_dropped`].
#[derive(Debug)]
pub(crate) struct Handoff {
    request: Arc<RequestTasks>,
    if_dropped: IfDropped,
}

/// What dropping the guard means at the point it has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IfDropped {
    /// The response has ended (or the policy runs tasks anyway): hand off.
    HandOff,
    /// Something went wrong first: discard, for this reason.
    Discard(DiscardReason),
}

impl Handoff {
    /// A guard for a request whose response does not exist yet: dropped now,
    /// its tasks are discarded for want of a response.
    pub(crate) fn new(request: Arc<RequestTasks>) -> Self {
        Self {
            request,
            if_dropped: IfDropped::Discard(DiscardReason::NoResponse),
        }
    }

    /// Why a plain `add` on the request could not accept a task, if one
    /// could not.
    pub(crate) fn refusal(&self) -> Option<&AddError> {
        self.request.refusal()
    }

    pub(crate) fn if_dropped(&mut self, if_dropped: IfDropped) {
        self.if_dropped = if_dropped;
    }

    /// The response has ended: hand the tasks off now.
    pub(crate) fn finish(mut self) {
        self.if_dropped = IfDropped::HandOff;
    }

    /// Discard the tasks now.
    pub(crate) fn discard(mut self, reason: DiscardReason) {
        self.if_dropped = IfDropped::Discard(reason);
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        match self.if_dropped {
            IfDropped::HandOff => self.request.hand_off(),
            IfDropped::Discard(reason) => self.request.discard(reason),
        }
    }
}
