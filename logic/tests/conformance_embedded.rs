//! The storage conformance suite against the embedded (redb) store.

use std::sync::Arc;

use fastim_logic::store::Store;
use fastim_logic::store::embedded::EmbeddedStore;

/// A fresh store in a temporary directory, removed when the guard drops.
async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    (Arc::new(store), dir)
}

fastim_logic::conformance_tests!(fresh());

/// Embedded-only: the newest message id survives a reopen, for the id generator.
#[tokio::test]
async fn max_message_id_survives_reopen() {
    use fastim_logic::store::NewMessage;
    use fastim_proto::client::Message;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.max_message_id().unwrap(), 0);
        store.ensure_direct("d:1:2", 1, 2).await.unwrap();
        for id in [500, 900, 700] {
            let message = Message {
                conversation: "d:1:2".into(),
                id,
                sender_id: 1,
                ..Default::default()
            };
            store.append(NewMessage { message }).await.unwrap();
        }
    }
    // The writer thread lets go of the file when the store is dropped.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.max_message_id().unwrap(), 900);
}
