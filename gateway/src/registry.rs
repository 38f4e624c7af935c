//! The connections this gateway holds, by connection id.
//!
//! Push and kick calls from logic find a connection here and queue work for its
//! task. Each connection's queue is a [`ConnQueue`]: a bounded `VecDeque` behind a
//! mutex plus a `Notify`. It allocates nothing while empty (idle connections are the
//! common case, and a channel would hold a preallocated block per connection), and a
//! full queue means the client does not read fast enough: the connection is told to
//! close instead of growing memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastim_proto::client::Message;
use fastim_proto::internal::Device;
use tokio::sync::Notify;

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

/// The bounded work queue of one connection.
pub struct ConnQueue {
    items: Mutex<VecDeque<Outbound>>,
    /// Wakes the connection task: new items, or an overflow.
    pub wake: Notify,
    /// Set when an item did not fit: the task closes the connection.
    overflowed: AtomicBool,
    capacity: usize,
    /// The logged-in identity, for the periodic route refresh.
    device: Mutex<Option<Arc<Device>>>,
}

impl ConnQueue {
    /// An empty queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Arc<ConnQueue> {
        Arc::new(ConnQueue {
            items: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            overflowed: AtomicBool::new(false),
            capacity,
            device: Mutex::new(None),
        })
    }

    /// Queues an item without waiting.
    pub fn push(&self, item: Outbound) -> Queued {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let queued = if items.len() >= self.capacity {
            self.overflowed.store(true, Ordering::Relaxed);
            Queued::Overflow
        } else {
            items.push_back(item);
            Queued::Ok
        };
        drop(items);
        self.wake.notify_one();
        queued
    }

    /// Takes the next item; releases the buffer once the queue is empty.
    pub fn pop(&self) -> Option<Outbound> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 0 {
            *items = VecDeque::new();
        }
        item
    }

    /// Whether an item was refused for lack of room.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// All connections of the gateway.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnQueue>>>,
    /// Logged-in connections by user id, for large-group fan-out.
    by_user: Mutex<HashMap<u64, Vec<u64>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers a connection and returns its id.
    pub fn insert(&self, queue: Arc<ConnQueue>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, queue);
        id
    }

    /// Forgets a connection.
    pub fn remove(&self, id: u64) {
        if let Some(queue) = self.lock().remove(&id) {
            let device = queue.device.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(device) = device {
                self.unindex(device.user_id, id);
            }
        }
    }

    /// Records (or clears) the logged-in identity of connection `id`.
    pub fn set_device(&self, id: u64, device: Option<Arc<Device>>) {
        let Some(queue) = self.lock().get(&id).cloned() else {
            return;
        };
        let old = std::mem::replace(
            &mut *queue.device.lock().unwrap_or_else(|e| e.into_inner()),
            device.clone(),
        );
        if let Some(old) = old {
            self.unindex(old.user_id, id);
        }
        if let Some(new) = device {
            self.by_user
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(new.user_id)
                .or_default()
                .push(id);
        }
    }

    fn unindex(&self, user: u64, id: u64) {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = by_user.get_mut(&user) {
            conns.retain(|c| *c != id);
            if conns.is_empty() {
                by_user.remove(&user);
            }
        }
    }

    /// Logged-in connections of these users held here.
    pub fn connections_of(&self, users: &[u64]) -> Vec<u64> {
        let by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        users.iter().filter_map(|u| by_user.get(u)).flatten().copied().collect()
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

    /// Every logged-in device, for the periodic route refresh.
    pub fn devices(&self) -> Vec<Device> {
        let queues: Vec<Arc<ConnQueue>> = self.lock().values().cloned().collect();
        queues
            .iter()
            .filter_map(|q| q.device.lock().unwrap_or_else(|e| e.into_inner()).as_deref().cloned())
            .collect()
    }

    /// Queues `item` for connection `id` without waiting.
    pub fn deliver(&self, id: u64, item: Outbound) -> Queued {
        let Some(queue) = self.lock().get(&id).cloned() else {
            return Queued::Missing;
        };
        queue.push(item)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnQueue>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_queue_overflows_instead_of_growing() {
        let queue = ConnQueue::new(2);
        assert_eq!(queue.push(Outbound::Kick("a".into())), Queued::Ok);
        assert_eq!(queue.push(Outbound::Kick("b".into())), Queued::Ok);
        assert!(!queue.overflowed());
        assert_eq!(queue.push(Outbound::Kick("c".into())), Queued::Overflow);
        assert!(queue.overflowed());
        assert!(matches!(queue.pop(), Some(Outbound::Kick(r)) if r == "a"));
        assert!(queue.pop().is_some());
        assert!(queue.pop().is_none());
    }

    #[test]
    fn registry_delivers_to_known_connections_only() {
        let registry = Registry::default();
        let queue = ConnQueue::new(4);
        let id = registry.insert(queue.clone());
        assert_eq!(registry.deliver(id, Outbound::Kick("x".into())), Queued::Ok);
        assert_eq!(registry.deliver(id + 1, Outbound::Kick("x".into())), Queued::Missing);
        registry.remove(id);
        assert!(registry.is_empty());
        assert_eq!(registry.deliver(id, Outbound::Kick("x".into())), Queued::Missing);
    }
}
