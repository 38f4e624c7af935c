//! The storage conformance suite: the contract of [`Store`], checked the same way
//! against every implementation.
//!
//! Each check takes a fresh, empty store. An implementation's test file lists them
//! with [`conformance_tests!`](crate::conformance_tests), e.g. for the embedded store:
//!
//! ```ignore
//! fastim_logic::conformance_tests!(fresh()); // fresh() -> (Arc<dyn Store>, guard)
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use fastim_proto::client::Message;
use fastim_proto::conversation;

use super::*;

fn message(conversation: &str, sender: u64, client_msg_id: &str, text: &str) -> NewMessage {
    NewMessage {
        message: Message {
            conversation: conversation.to_owned(),
            sender_id: sender,
            sender: format!("user{sender}"),
            client_msg_id: client_msg_id.to_owned(),
            text: text.to_owned(),
            id: rand_id(),
            sent_unix_ms: 1,
            ..Default::default()
        },
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn two_users(store: &dyn Store) -> (u64, u64) {
    let a = store.create_user("alice", "hash-a", 1).await.unwrap().id;
    let b = store.create_user("bob", "hash-b", 1).await.unwrap().id;
    (a, b)
}

/// Users: unique names, lookups by name and id.
pub async fn users(store: Arc<dyn Store>) {
    let alice = store.create_user("alice", "hash-a", 42).await.unwrap();
    assert_eq!(alice.name, "alice");
    assert_eq!(
        store.create_user("alice", "other", 43).await,
        Err(StoreError::UserExists("alice".into()))
    );
    let bob = store.create_user("bob", "hash-b", 44).await.unwrap();
    assert_ne!(alice.id, bob.id);
    assert_eq!(store.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_id(bob.id).await.unwrap(), Some(bob));
    assert_eq!(store.user_by_name("nobody").await.unwrap(), None);
    assert_eq!(store.user_by_id(9_999_999).await.unwrap(), None);
}

/// Sessions: stored by token hash, revoked by delete.
pub async fn sessions(store: Arc<dyn Store>) {
    let record = SessionRecord {
        user_id: 7,
        device_id: "phone".into(),
        expires_ms: 1000,
    };
    store.create_session("h1", record.clone()).await.unwrap();
    assert_eq!(store.session("h1").await.unwrap(), Some(record));
    assert_eq!(store.session("h2").await.unwrap(), None);
    store.delete_session("h1").await.unwrap();
    assert_eq!(store.session("h1").await.unwrap(), None);
    store.delete_session("h1").await.unwrap();
}

/// Direct conversations: created once, both users members.
pub async fn direct_conversations(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let c = conversation::direct(a, b);
    store.ensure_direct(&c, a, b).await.unwrap();
    store.ensure_direct(&c, a, b).await.unwrap();
    let mut members = store.members(&c).await.unwrap();
    members.sort();
    assert_eq!(members, vec![a.min(b), a.max(b)]);
    assert!(store.is_member(&c, a).await.unwrap());
    assert!(!store.is_member(&c, 12345).await.unwrap());
    let states = store.user_conversations(a).await.unwrap();
    assert_eq!(
        states,
        vec![ConversationState {
            conversation: c,
            last_seq: 0,
            read_seq: 0
        }]
    );
}

/// Groups: created with members; adding is idempotent; removing revokes membership.
pub async fn groups(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let g = store.create_group("team", a, &[a, b]).await.unwrap();
    assert_eq!((g.name.as_str(), g.owner_id), ("team", a));
    assert_eq!(store.group(g.id).await.unwrap(), Some(g.clone()));
    assert_eq!(store.group(g.id + 1000).await.unwrap(), None);
    let c = conversation::group(g.id);
    store.add_members(&c, &[b, 77]).await.unwrap();
    let mut members = store.members(&c).await.unwrap();
    members.sort();
    assert_eq!(members, vec![a, b, 77]);
    store.remove_members(&c, &[b]).await.unwrap();
    assert!(!store.is_member(&c, b).await.unwrap());
    assert!(store.user_conversations(b).await.unwrap().is_empty());
    assert!(matches!(
        store.add_members("g:999999", &[a]).await,
        Err(StoreError::NotFound(_))
    ));
    let g2 = store.create_group("second", b, &[b]).await.unwrap();
    assert_ne!(g2.id, g.id);
}

/// Append: gap-free sequence, idempotent by client message id, read marker of the sender.
pub async fn append_sequences_and_dedup(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let c = conversation::direct(a, b);
    store.ensure_direct(&c, a, b).await.unwrap();
    let first = store.append(message(&c, a, "m1", "one")).await.unwrap();
    assert_eq!((first.message.seq, first.duplicate), (1, false));
    let again = store.append(message(&c, a, "m1", "one, retried")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message, "the original is returned, not the retry");
    // The same client id from another sender is a different message.
    let other = store.append(message(&c, b, "m1", "bob's m1")).await.unwrap();
    assert_eq!((other.message.seq, other.duplicate), (2, false));
    let no_id = store.append(message(&c, a, "", "no id")).await.unwrap();
    assert_eq!(no_id.message.seq, 3);
    let no_id_again = store.append(message(&c, a, "", "no id")).await.unwrap();
    assert_eq!(
        (no_id_again.message.seq, no_id_again.duplicate),
        (4, false),
        "no id: no deduplication"
    );
    // The key is scoped to the conversation.
    let g = store.create_group("g", a, &[a, b]).await.unwrap();
    let elsewhere = store
        .append(message(&conversation::group(g.id), a, "m1", "m1 in a group"))
        .await
        .unwrap();
    assert_eq!((elsewhere.message.seq, elsewhere.duplicate), (1, false));
    let states = store.user_conversations(a).await.unwrap();
    let direct = states.iter().find(|s| s.conversation == c).unwrap();
    assert_eq!(
        (direct.last_seq, direct.read_seq),
        (4, 4),
        "the sender has read its own message"
    );
    let of_b = store.user_conversations(b).await.unwrap();
    assert_eq!(of_b.iter().find(|s| s.conversation == c).unwrap().read_seq, 2);
    let missing = store.append(message("d:1000:1001", a, "x", "nowhere")).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
}

/// Concurrent appends to one conversation get distinct, gap-free sequence numbers.
pub async fn concurrent_appends_are_gap_free(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let c = conversation::direct(a, b);
    store.ensure_direct(&c, a, b).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (store, c) = (store.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            store.append(message(&c, a, &format!("c{i}"), "x")).await.unwrap()
        }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap().message.seq));
    }
    assert_eq!(seqs, (1..=200).collect::<HashSet<u64>>());
}

/// Paging forwards (sync) and backwards (history).
pub async fn paging(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let c = conversation::direct(a, b);
    store.ensure_direct(&c, a, b).await.unwrap();
    for i in 1..=10 {
        store
            .append(message(&c, a, &format!("p{i}"), &format!("text {i}")))
            .await
            .unwrap();
    }
    let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.messages_after(&c, 0, 3).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(seqs(store.messages_after(&c, 8, 5).await.unwrap()), vec![9, 10]);
    assert!(store.messages_after(&c, 10, 5).await.unwrap().is_empty());
    assert_eq!(seqs(store.messages_before(&c, 0, 3).await.unwrap()), vec![10, 9, 8]);
    assert_eq!(seqs(store.messages_before(&c, 3, 5).await.unwrap()), vec![2, 1]);
    assert!(store.messages_before(&c, 1, 5).await.unwrap().is_empty());
    assert!(store.messages_after("g:424242", 0, 5).await.unwrap().is_empty());
    let m = &store.messages_after(&c, 4, 1).await.unwrap()[0];
    assert_eq!(
        (m.text.as_str(), m.sender_id, m.client_msg_id.as_str()),
        ("text 5", a, "p5")
    );
}

/// Delivery cursors per device and read markers only move forward.
pub async fn cursors_and_read_markers(store: Arc<dyn Store>) {
    let (a, b) = two_users(&*store).await;
    let c = conversation::direct(a, b);
    store.ensure_direct(&c, a, b).await.unwrap();
    let up = |device: &str, seq| CursorUpdate {
        user: a,
        device_id: device.into(),
        conversation: c.clone(),
        seq,
    };
    store.advance_cursors(&[up("phone", 5), up("laptop", 2)]).await.unwrap();
    store.advance_cursors(&[up("phone", 3)]).await.unwrap();
    assert_eq!(store.cursors(a, "phone").await.unwrap().get(&c), Some(&5));
    assert_eq!(store.cursors(a, "laptop").await.unwrap().get(&c), Some(&2));
    assert!(store.cursors(b, "phone").await.unwrap().is_empty());
    store.mark_read(b, &c, 4).await.unwrap();
    store.mark_read(b, &c, 2).await.unwrap();
    assert_eq!(store.user_conversations(b).await.unwrap()[0].read_seq, 4);
    assert!(matches!(
        store.mark_read(b, "g:31337", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

/// The session purge removes only expired sessions, and is fenced: a job run with an
/// older token than one already recorded does nothing.
pub async fn fenced_session_purge(store: Arc<dyn Store>) {
    let session = |expires_ms| SessionRecord {
        user_id: 1,
        device_id: "d".into(),
        expires_ms,
    };
    store.create_session("old", session(100)).await.unwrap();
    store.create_session("older", session(50)).await.unwrap();
    store.create_session("fresh", session(10_000)).await.unwrap();
    assert_eq!(store.purge_expired_sessions(1_000, 7).await.unwrap(), Some(2));
    assert!(store.session("old").await.unwrap().is_none());
    assert!(store.session("fresh").await.unwrap().is_some());
    store.create_session("late", session(200)).await.unwrap();
    // A deposed leader (token 5 < 7) changes nothing.
    assert_eq!(store.purge_expired_sessions(1_000, 5).await.unwrap(), None);
    assert!(store.session("late").await.unwrap().is_some());
    // The same leader again, or a newer one, proceeds.
    assert_eq!(store.purge_expired_sessions(1_000, 7).await.unwrap(), Some(1));
    assert_eq!(store.purge_expired_sessions(20_000, 9).await.unwrap(), Some(1));
    assert_eq!(store.purge_expired_sessions(20_000, 8).await.unwrap(), None);
}

/// Generates one `#[tokio::test]` per conformance check; `$make` is an async
/// expression that yields a fresh, empty `Arc<dyn Store>` and a guard that keeps
/// its backing resources (a temporary directory, a database) alive for the test.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            users, sessions, direct_conversations, groups, append_sequences_and_dedup,
            concurrent_appends_are_gap_free, paging, cursors_and_read_markers, fenced_session_purge);
    };
    (@each $make:expr; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (store, _guard) = $make.await;
            $crate::store::conformance::$check(store).await;
        }
    )*};
}
