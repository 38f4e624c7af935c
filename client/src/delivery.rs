//! Exactly-once, in-order delivery on top of at-least-once pushes.
//!
//! The server may push a message twice (resends, sync after reconnect) and may push
//! out of order (concurrent fan-outs). [`Delivery`] keeps, per conversation, the
//! highest seq handed to the application; a message at `cursor + 1` is handed on
//! (with any buffered successors), one at or below the cursor is a duplicate, and
//! one beyond `cursor + 1` is buffered and reported as a gap, which the client fills
//! by syncing.

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

/// What accepting messages produced.
#[derive(Default, Debug)]
pub struct Accepted {
    /// Messages to hand to the application, in order.
    pub deliver: Vec<Message>,
    /// Conversations with a gap before a buffered message: sync them.
    pub gaps: Vec<String>,
    /// (conversation, cursor) to acknowledge to the server.
    pub acks: Vec<(String, u64)>,
}

impl Delivery {
    /// Sets the baseline of a conversation not seen yet (from a sync response), and
    /// releases what was held back waiting for it.
    pub fn baseline(&mut self, conversation: &str, seq: u64) -> Accepted {
        if self.cursors.contains_key(conversation) {
            return Accepted::default();
        }
        self.cursors.insert(conversation.to_owned(), seq);
        let held = self
            .ahead
            .remove(conversation)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        self.accept(held)
    }

    /// Current cursors, for a sync request.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        self.cursors.iter().map(|(c, s)| (c.clone(), *s)).collect()
    }

    /// The cursor of one conversation, if known.
    pub fn cursor(&self, conversation: &str) -> Option<u64> {
        self.cursors.get(conversation).copied()
    }

    /// Accepts messages from a push or a sync.
    ///
    /// A conversation without a cursor yet (no sync has covered it) starts at its
    /// first message; anything later is held back until a sync gives the baseline,
    /// so a device that already saw a conversation is not shown it again.
    pub fn accept(&mut self, messages: Vec<Message>) -> Accepted {
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
                out.deliver.push(m);
                if let Some(ahead) = self.ahead.get_mut(&conversation) {
                    while let Some(next) = ahead.remove(&(*cursor + 1)) {
                        *cursor = next.seq;
                        out.deliver.push(next);
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

    fn seqs(a: &Accepted) -> Vec<u64> {
        a.deliver.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut d = Delivery::default();
        assert_eq!(seqs(&d.accept(vec![msg("a", 1), msg("a", 2)])), vec![1, 2]);
        // Duplicate: nothing delivered, still acked.
        let dup = d.accept(vec![msg("a", 2)]);
        assert!(dup.deliver.is_empty());
        assert_eq!(dup.acks, vec![("a".to_string(), 2)]);
        // Gap: 4 buffered, gap reported.
        let gap = d.accept(vec![msg("a", 4)]);
        assert!(gap.deliver.is_empty());
        assert_eq!(gap.gaps, vec!["a".to_string()]);
        // Filling the gap releases the buffered one.
        let fill = d.accept(vec![msg("a", 3)]);
        assert_eq!(seqs(&fill), vec![3, 4]);
        assert!(fill.gaps.is_empty());
        assert_eq!(d.cursor("a"), Some(4));
    }

    #[test]
    fn baseline_only_sets_unknown_conversations() {
        let mut d = Delivery::default();
        d.baseline("a", 10);
        d.baseline("a", 3);
        assert_eq!(d.cursor("a"), Some(10));
        assert!(d.accept(vec![msg("a", 10)]).deliver.is_empty());
        assert_eq!(seqs(&d.accept(vec![msg("a", 11)])), vec![11]);
    }

    #[test]
    fn a_push_before_the_baseline_waits_for_it() {
        let mut d = Delivery::default();
        // A returning device: the push of seq 51 races the first sync.
        let early = d.accept(vec![msg("a", 51)]);
        assert!(early.deliver.is_empty());
        assert_eq!(early.gaps, vec!["a".to_string()]);
        assert!(early.acks.is_empty(), "nothing to acknowledge before the baseline");
        assert_eq!(d.cursor("a"), None);
        // The sync says the device already holds 50: 51 is released, nothing older.
        let released = d.baseline("a", 50);
        assert_eq!(seqs(&released), vec![51]);
        assert_eq!(released.acks, vec![("a".to_string(), 51)]);
        // A brand-new conversation starts at seq 1 without waiting.
        assert_eq!(seqs(&d.accept(vec![msg("b", 1)])), vec![1]);
    }
}
