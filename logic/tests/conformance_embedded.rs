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
