//! Exactly-once, in-order delivery on top of at-least-once pushes.
//!
//! The server may push a message twice (resends, sync after reconnect) and may push
//! out of order (concurrent fan-outs). [`Delivery`] keeps, per conversation, the
//! highest seq handed to the application; a message at `cursor + 1` is handed on
//! (with any buffered successors), one at or below the cursor is a duplicate, and
//! one beyond `cursor + 1` is buffered and reported as a gap, which the client fills
//! by syncing.
//!
//! Messages are handed on through a callback while the state is borrowed, never
//! returned: two tasks accepting concurrently (the push reader and a sync) would
//! otherwise emit in whichever order they got past the lock, and a client could show
//! 4 before 2 and 3 even though each call released them in order.

use std::collections::{BTreeMap, HashMap};

use fastim_proto::client::Message;

/// Per-conversation delivery state of one client.
#[derive(Default, Debug)]
pub struct Delivery {
    /// Highest seq delivered per conversation (known baseline).
    cursors: HashMap<String, u64>,
    /// Messages that arrived ahead of a gap.
    ahead: HashMap<String, BTreeMap<u64, Message>>,
}

/// What accepting messages left to do besides delivering them.
#[derive(Default, Debug)]
pub struct Accepted {
    /// Conversations with a gap before a buffered message: sync them.
    pub gaps: Vec<String>,
    /// (conversation, cursor) to acknowledge to the server.
    pub acks: Vec<(String, u64)>,
}

impl Delivery {
    /// Sets the baseline of a conversation not seen yet (from a sync response), and
    /// releases what was held back waiting for it through `deliver`.
    pub fn baseline(&mut self, conversation: &str, seq: u64, deliver: &mut impl FnMut(Message)) -> Accepted {
        if self.cursors.contains_key(conversation) {
            return Accepted::default();
        }
        self.cursors.insert(conversation.to_owned(), seq);
        let held = self
            .ahead
            .remove(conversation)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        self.accept(held, deliver)
    }

    /// Current cursors, for a sync request.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        self.cursors.iter().map(|(c, s)| (c.clone(), *s)).collect()
    }

    /// The cursor of one conversation, if known.
    pub fn cursor(&self, conversation: &str) -> Option<u64> {
        self.cursors.get(conversation).copied()
    }

    /// Accepts messages from a push or a sync, handing the deliverable ones to
    /// `deliver` in order.
    ///
    /// A conversation without a cursor yet (no sync has covered it) starts at its
    /// first message; anything later is held back until a sync gives the baseline,
    /// so a device that already saw a conversation is not shown it again.
    pub fn accept(&mut self, messages: Vec<Message>, deliver: &mut impl FnMut(Message)) -> Accepted {
        let mut out = Accepted::default();
        let mut touched: Vec<String> = Vec::new();
        for m in messages {
            let conversation = m.conversation.clone();
            if !touched.contains(&conversation) {
                touched.push(conversation.clone());
            }
            let cursor = match self.cursors.get_mut(&conversation) {
                Some(cursor) => cursor,
                None if m.seq == 1 => self.cursors.entry(conversation.clone()).or_insert(0),
                None => {
                    self.ahead.entry(conversation).or_default().insert(m.seq, m);
                    continue;
                }
            };
            if m.seq <= *cursor {
                continue;
            }
            if m.seq == *cursor + 1 {
                *cursor = m.seq;
                deliver(m);
                if let Some(ahead) = self.ahead.get_mut(&conversation) {
                    while let Some(next) = ahead.remove(&(*cursor + 1)) {
                        *cursor = next.seq;
                        deliver(next);
                    }
                    ahead.retain(|seq, _| *seq > *cursor);
                    if ahead.is_empty() {
                        self.ahead.remove(&conversation);
                    }
                }
            } else {
                self.ahead.entry(conversation).or_default().insert(m.seq, m);
            }
        }
        for conversation in touched {
            if self.ahead.contains_key(&conversation) {
                out.gaps.push(conversation.clone());
            }
            if let Some(cursor) = self.cursors.get(&conversation) {
                out.acks.push((conversation, *cursor));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(c: &str, seq: u64) -> Message {
        Message {
            conversation: c.into(),
            seq,
            ..Default::default()
        }
    }

    /// Accepts `messages`; returns the seqs delivered and the rest.
    fn accept(d: &mut Delivery, messages: Vec<Message>) -> (Vec<u64>, Accepted) {
        let mut seqs = Vec::new();
        let rest = d.accept(messages, &mut |m| seqs.push(m.seq));
        (seqs, rest)
    }

    fn baseline(d: &mut Delivery, c: &str, seq: u64) -> (Vec<u64>, Accepted) {
        let mut seqs = Vec::new();
        let rest = d.baseline(c, seq, &mut |m| seqs.push(m.seq));
        (seqs, rest)
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut d = Delivery::default();
        assert_eq!(accept(&mut d, vec![msg("a", 1), msg("a", 2)]).0, vec![1, 2]);
        // Duplicate: nothing delivered, still acked.
        let (seqs, dup) = accept(&mut d, vec![msg("a", 2)]);
        assert!(seqs.is_empty());
        assert_eq!(dup.acks, vec![("a".to_string(), 2)]);
        // Gap: 4 buffered, gap reported.
        let (seqs, gap) = accept(&mut d, vec![msg("a", 4)]);
        assert!(seqs.is_empty());
        assert_eq!(gap.gaps, vec!["a".to_string()]);
        // Filling the gap releases the buffered one.
        let (seqs, fill) = accept(&mut d, vec![msg("a", 3)]);
        assert_eq!(seqs, vec![3, 4]);
        assert!(fill.gaps.is_empty());
        assert_eq!(d.cursor("a"), Some(4));
    }

    #[test]
    fn baseline_only_sets_unknown_conversations() {
        let mut d = Delivery::default();
        baseline(&mut d, "a", 10);
        baseline(&mut d, "a", 3);
        assert_eq!(d.cursor("a"), Some(10));
        assert!(accept(&mut d, vec![msg("a", 10)]).0.is_empty());
        assert_eq!(accept(&mut d, vec![msg("a", 11)]).0, vec![11]);
    }

    #[test]
    fn a_push_before_the_baseline_waits_for_it() {
        let mut d = Delivery::default();
        // A returning device: the push of seq 51 races the first sync.
        let (seqs, early) = accept(&mut d, vec![msg("a", 51)]);
        assert!(seqs.is_empty());
        assert_eq!(early.gaps, vec!["a".to_string()]);
        assert!(early.acks.is_empty(), "nothing to acknowledge before the baseline");
        assert_eq!(d.cursor("a"), None);
        // The sync says the device already holds 50: 51 is released, nothing older.
        let (seqs, released) = baseline(&mut d, "a", 50);
        assert_eq!(seqs, vec![51]);
        assert_eq!(released.acks, vec![("a".to_string(), 51)]);
        // A brand-new conversation starts at seq 1 without waiting.
        assert_eq!(accept(&mut d, vec![msg("b", 1)]).0, vec![1]);
    }

    /// The push reader and a sync accept concurrently (the run that found this:
    /// a client shown 1, 4, 2, 3, 5 after its gateway was killed). Both take up
    /// from the current cursor, as a sync does; whatever the interleaving, what
    /// reaches the application is in order and each message once.
    #[test]
    fn concurrent_pushes_and_syncs_reach_the_application_in_order() {
        use std::sync::{Arc, Mutex};
        const N: u64 = 20_000;
        let delivery = Arc::new(Mutex::new(Delivery::default()));
        let sink = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = [1u64, 3]
            .into_iter()
            .map(|page| {
                let (delivery, sink) = (delivery.clone(), sink.clone());
                std::thread::spawn(move || {
                    loop {
                        let mut d = delivery.lock().unwrap();
                        let from = d.cursor("a").unwrap_or(0) + 1;
                        if from > N {
                            return;
                        }
                        let batch = (from..(from + page).min(N + 1)).map(|s| msg("a", s)).collect();
                        d.accept(batch, &mut |m| sink.lock().unwrap().push(m.seq));
                        drop(d);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seen = sink.lock().unwrap();
        let first_wrong = seen.iter().zip(1..).position(|(got, want)| *got != want);
        assert_eq!(
            first_wrong,
            None,
            "out of order near {:?}",
            first_wrong.map(|i| &seen[i..seen.len().min(i + 5)])
        );
        assert_eq!(seen.len() as u64, N);
    }
}
