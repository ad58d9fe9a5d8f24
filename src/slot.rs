//! Waiting for a [`Slot`] in a lane, for a step of a group that is already
//! running: the step queues behind the lane's other waiters and is woken
//! with its slot.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::lane::Waiting;
use crate::running::{dispatch, release_slot, Slot};
use crate::task_set::TaskSet;
use crate::work::LaneId;

/// Waits for a slot in `lane`, for a step of a running group. `None` if
/// the queue was emptied by an abort first.
///
/// Cancel safe: a slot granted to a dropped waiter is handed back.
pub(crate) async fn acquire(set: &Arc<TaskSet>, lane: LaneId) -> Option<Slot> {
    let queue = set.lane(lane);
    if !queue.try_claim() {
        let (granted, grant) = oneshot::channel();
        queue.push(Waiting::Step(granted));
        dispatch(set, lane);
        let mut grant = Grant {
            set,
            lane,
            receiver: Some(grant),
        };
        let received = match grant.receiver.as_mut() {
            Some(receiver) => receiver.await,
            None => return None,
        };
        grant.receiver = None;
        received.ok()?;
    }
    Some(Slot::taken(set, lane))
}

/// A step's place in a lane's queue while it waits. Dropped before the grant
/// was received (the step was cancelled), it hands a slot that arrived in the
/// meantime back to the lane.
struct Grant<'a> {
    set: &'a Arc<TaskSet>,
    lane: LaneId,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                release_slot(self.set, self.lane);
            }
        }
    }
}
