//! The root of one [`Hutch`](crate::Hutch)'s supervision tree: one
//! cancellation token and one task tracker.
//!
//! What belongs to the `Hutch` and outlives any one
//! [`Running`](crate::Running) is spawned here: the publishing connection's
//! manager, the tasks that retire a mandatory publish's channel, the error
//! hooks' workers. A `Running` takes a child of this token for its own
//! subtree (the consuming connection's manager and the consumers), tracked by
//! a tracker of its own so that its shutdown waits for its tasks only.

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The token every task of a `Hutch` descends from, and the tracker of the
/// tasks the `Hutch` itself owns.
///
/// Held in an `Arc` by the `Hutch` and by each `Running` (never by a tracked
/// task, which would keep it alive for ever): when the last of them goes,
/// the token is cancelled and everything below it stops.
#[derive(Debug, Default)]
pub(crate) struct Root {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Root {
    /// A token cancelled with the root (or on its own).
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// The root's token itself, for tasks that stop only with the whole tree.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker of the tasks the `Hutch` owns.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        self.token.cancel();
        self.tracker.close();
    }
}
