//! The connections this gateway holds, by connection id.
//!
//! Push and kick calls from logic find a connection here and queue work for its
//! task through a bounded channel; a full channel means the client does not read
//! fast enough, and the connection is told to close instead of growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastim_proto::client::Message;
use tokio::sync::{Notify, mpsc};

/// Work for a connection task, queued by push, kick and drain.
#[derive(Debug)]
pub enum Outbound {
    /// Messages to push (shared between all recipients of a batch).
    Push(Arc<[Message]>),
    /// Close with a Kick frame.
    Kick(String),
    /// Ask the client to reconnect elsewhere, then close.
    Reconnect(String),
}

/// What the registry holds for one connection.
#[derive(Clone)]
pub struct ConnHandle {
    /// Bounded queue into the connection task.
    pub tx: mpsc::Sender<Outbound>,
    /// Wakes the task to close it when the queue overflowed.
    pub overflow: Arc<Notify>,
}

/// What happened to a queued delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// Queued.
    Ok,
    /// The connection's queue was full: it is being closed.
    Overflow,
    /// No such connection here (any more).
    Missing,
}

/// All connections of the gateway.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers a connection and returns its id.
    pub fn insert(&self, handle: ConnHandle) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, handle);
        id
    }

    /// Forgets a connection.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of all connections, for draining.
    pub fn ids(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// Queues `item` for connection `id` without waiting.
    pub fn deliver(&self, id: u64, item: Outbound) -> Queued {
        let Some(handle) = self.lock().get(&id).cloned() else {
            return Queued::Missing;
        };
        match handle.tx.try_send(item) {
            Ok(()) => Queued::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => {
                handle.overflow.notify_one();
                Queued::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Missing,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}
