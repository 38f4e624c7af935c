//! Traffic for failure tests: many registered users, a ring of senders (client `i`
//! sends to client `i + 1`), and the check that every acknowledged message arrived
//! exactly once, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastim_client::{Client, Event, Message, Target};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use crate::register_users;

/// Registers `names` on `server`, 50 per connection-sequence, concurrently.
pub async fn register_many(server: &str, names: &[String]) {
    let mut tasks = Vec::new();
    for chunk in names.chunks(50) {
        let (server, chunk) = (server.to_owned(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            register_users(&server, &refs).await;
        }));
    }
    for t in tasks {
        t.await.expect("registration task");
    }
}

/// What one client saw.
#[derive(Default)]
pub struct Seen {
    /// Messages, in the order the SDK handed them over.
    pub messages: Vec<Message>,
    /// When a gateway first asked this client to reconnect elsewhere.
    pub moved_at: Option<Instant>,
    /// Gateways it was connected to, in order.
    pub gateways: Vec<String>,
}

/// Records a client's events in the background.
pub fn watch(mut events: UnboundedReceiver<Event>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut s = sink.lock().await;
            match event {
                Event::Message(m) => s.messages.push(m),
                Event::Disconnected(reason) if reason.contains("reconnect") => {
                    s.moved_at = s.moved_at.or(Some(Instant::now()));
                }
                Event::Connected { gateway_id } => s.gateways.push(gateway_id),
                _ => {}
            }
        }
    });
    seen
}

/// Client `i` sends `count` messages to `names[i + 1]`, pausing `pause(i, k)` before
/// message `k`; each task returns the acknowledged `(conversation, seq)`s.
/// `strict`: every send must be acknowledged; otherwise retriable errors are allowed.
pub fn ring(
    clients: &[Client],
    names: &[String],
    count: u64,
    pause: fn(usize, u64) -> Duration,
    strict: bool,
) -> Vec<JoinHandle<Vec<(String, u64)>>> {
    clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let (client, to) = (client.clone(), names[(i + 1) % names.len()].clone());
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for k in 0..count {
                    tokio::time::sleep(pause(i, k)).await;
                    match client.send_text(Target::User(to.clone()), &format!("{k}")).await {
                        Ok(ack) => acks.push((ack.conversation, ack.seq)),
                        Err(e) if !strict && e.is_retriable() => {}
                        Err(e) => panic!("send {k} of client {i} failed: {e:?}"),
                    }
                }
                acks
            })
        })
        .collect()
}

/// What client `i` of a ring must have received: its own messages (its device gets
/// them too) and those of client `i - 1`.
pub fn expected_in_ring(acked: &[Vec<(String, u64)>], i: usize) -> BTreeSet<(String, u64)> {
    let n = acked.len();
    acked[i].iter().chain(&acked[(i + n - 1) % n]).cloned().collect()
}

/// Waits until `seen` holds every message in `expected`, then checks that nothing
/// was shown twice and each conversation is gap-free from 1.
pub async fn assert_exactly_once(who: &str, seen: &Mutex<Seen>, expected: &BTreeSet<(String, u64)>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: BTreeSet<(String, u64)> = seen
            .lock()
            .await
            .messages
            .iter()
            .map(|m| (m.conversation.clone(), m.seq))
            .collect();
        if expected.is_subset(&got) {
            break;
        }
        let missing: Vec<_> = expected.difference(&got).take(3).collect();
        assert!(tokio::time::Instant::now() < deadline, "{who} is missing {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().await;
    let mut per_conversation: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &seen.messages {
        per_conversation.entry(&m.conversation).or_default().push(m.seq);
    }
    for (conversation, seqs) in per_conversation {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{who} in {conversation}: in order, gap-free, each once");
    }
}
