//! Delivery cursors, buffered.
//!
//! Every push a device acknowledges raises its cursor in that conversation. Writing
//! each ack durably would cost a commit per delivery, so acks are merged in memory
//! and flushed in one batch every `cursor_flush_interval`. Losing the last interval
//! of acks in a crash only means those messages are offered again at the next sync,
//! and clients drop them by (conversation, seq): at-least-once, shown once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{CursorUpdate, Store, StoreResult};

type Key = (u64, String, String);

/// Acknowledged positions not yet written to the store.
pub struct CursorBuffer {
    pending: Mutex<HashMap<Key, u64>>,
    store: Arc<dyn Store>,
}

impl CursorBuffer {
    /// A buffer flushing into `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<CursorBuffer> {
        Arc::new(CursorBuffer {
            pending: Mutex::new(HashMap::new()),
            store,
        })
    }

    /// Starts the periodic flush; it ends when the buffer is dropped.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(buffer) = weak.upgrade() else { return };
                if let Err(e) = buffer.flush().await {
                    tracing::warn!(error = %e, "flushing delivery cursors failed; will retry");
                }
            }
        });
    }

    /// Records that a device holds `conversation` up to `seq`.
    pub fn advance(&self, user: u64, device_id: &str, conversation: &str, seq: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pending
            .entry((user, device_id.to_owned(), conversation.to_owned()))
            .or_insert(0);
        *slot = (*slot).max(seq);
    }

    /// Cursors of one device: the stored ones raised by what is buffered.
    pub async fn cursors(&self, user: u64, device_id: &str) -> StoreResult<HashMap<String, u64>> {
        let mut cursors = self.store.cursors(user, device_id).await?;
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for ((u, d, conversation), seq) in pending.iter() {
            if *u == user && d == device_id {
                let slot = cursors.entry(conversation.clone()).or_insert(0);
                *slot = (*slot).max(*seq);
            }
        }
        Ok(cursors)
    }

    /// Writes everything buffered; on failure it stays buffered.
    pub async fn flush(&self) -> StoreResult<()> {
        let batch: Vec<CursorUpdate> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .drain()
                .map(|((user, device_id, conversation), seq)| CursorUpdate {
                    user,
                    device_id,
                    conversation,
                    seq,
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.store.advance_cursors(&batch).await;
        if result.is_err() {
            for u in batch {
                self.advance(u.user, &u.device_id, &u.conversation, u.seq);
            }
        }
        result
    }
}
