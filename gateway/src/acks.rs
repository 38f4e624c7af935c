//! Delivery acknowledgements on their way to logic.
//!
//! A client answers every push with a cumulative `PUSH_ACK`. The connection task
//! handles it locally at once (the acknowledged pushes stop being resent) and hands
//! it to the [`AckForwarder`], so the connection never waits for logic on an ack
//! (it used to: one logic round trip per push, in line with the client's next
//! request). One background task per gateway takes what has queued up, keeps the
//! highest seq per device and conversation, and sends it to logic in one `Acks` call;
//! while that call is in flight the next batch gathers.
//!
//! Acks only move the device's server-side cursor, which decides where its next sync
//! starts. An ack that is dropped (queue full, logic unreachable) leaves the cursor
//! behind: the device is sent those messages again on its next sync and drops them
//! as duplicates. Nothing acknowledged to a sender depends on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fastim_proto::internal::logic_server::Logic;
use fastim_proto::internal::{Ack, AckBatch, Device};
use tokio::sync::mpsc;
use tonic::Request;

/// Acks waiting for the forwarder; beyond this they are dropped (see the module).
pub const QUEUE: usize = 65_536;
/// Most acks taken into one batch.
pub const BATCH: usize = 4_096;
/// How long one batch may take in logic.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One acknowledgement from one connection.
struct Pending {
    device: Arc<Device>,
    conversation: String,
    seq: u64,
}

/// The handle connections queue their acks on.
pub struct AckForwarder {
    queue: mpsc::Sender<Pending>,
}

impl AckForwarder {
    /// Starts the forwarding task (on the current Tokio runtime); it ends when the
    /// forwarder is dropped.
    pub fn start(logic: Arc<dyn Logic>) -> AckForwarder {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(forward(logic, pending));
        AckForwarder { queue }
    }

    /// Queues `device`'s ack of `conversation` up to `seq`; never waits.
    pub fn ack(&self, device: Arc<Device>, conversation: String, seq: u64) {
        let pending = Pending {
            device,
            conversation,
            seq,
        };
        if self.queue.try_send(pending).is_err() {
            tracing::debug!("acknowledgement queue full; a cursor stays behind until the next ack");
        }
    }
}

/// Keeps the highest seq per (user, device, conversation): acks are cumulative.
fn coalesce(pending: impl IntoIterator<Item = Pending>) -> AckBatch {
    let mut latest: HashMap<(u64, String, String), Ack> = HashMap::new();
    for p in pending {
        let key = (p.device.user_id, p.device.device_id.clone(), p.conversation);
        match latest.get_mut(&key) {
            Some(ack) => ack.seq = ack.seq.max(p.seq),
            None => {
                let ack = Ack {
                    device: Some((*p.device).clone()),
                    conversation: key.2.clone(),
                    seq: p.seq,
                };
                latest.insert(key, ack);
            }
        }
    }
    AckBatch {
        acks: latest.into_values().collect(),
    }
}

async fn forward(logic: Arc<dyn Logic>, mut pending: mpsc::Receiver<Pending>) {
    let mut taken = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut taken, BATCH).await > 0 {
        let batch = coalesce(taken.drain(..));
        let count = batch.acks.len();
        match tokio::time::timeout(TIMEOUT, logic.acks(Request::new(batch))).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::warn!(acks = count, error = %status, "acknowledgements not forwarded; those cursors stay behind")
            }
            Err(_) => tracing::warn!(
                acks = count,
                "acknowledgements timed out; those cursors may stay behind"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(user_id: u64, device_id: &str, conversation: &str, seq: u64) -> Pending {
        Pending {
            device: Arc::new(Device {
                user_id,
                device_id: device_id.into(),
                ..Device::default()
            }),
            conversation: conversation.into(),
            seq,
        }
    }

    #[test]
    fn the_highest_seq_per_device_and_conversation_is_kept() {
        let batch = coalesce([
            pending(1, "mobile", "d:1:2", 3),
            pending(1, "mobile", "d:1:2", 5),
            pending(1, "mobile", "d:1:2", 4),
            pending(1, "desktop", "d:1:2", 2),
            pending(1, "mobile", "g:7", 9),
            pending(2, "mobile", "d:1:2", 1),
        ]);
        let mut acks: Vec<_> = batch
            .acks
            .iter()
            .map(|a| {
                let d = a.device.as_ref().unwrap();
                (d.user_id, d.device_id.as_str(), a.conversation.as_str(), a.seq)
            })
            .collect();
        acks.sort();
        assert_eq!(
            acks,
            [
                (1, "desktop", "d:1:2", 2),
                (1, "mobile", "d:1:2", 5),
                (1, "mobile", "g:7", 9),
                (2, "mobile", "d:1:2", 1)
            ]
        );
    }
}
