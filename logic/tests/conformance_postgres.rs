//! The storage conformance suite against PostgreSQL: each check gets a private
//! server (on a free port, in a temporary directory), removed when the check ends.

use std::sync::Arc;

use fastim_logic::store::Store;
use fastim_logic::store::postgres::PostgresStore;
use fastim_tests::services::Postgres;

async fn fresh() -> (Arc<dyn Store>, Postgres) {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("start PostgreSQL");
    pg.create_database("fastim");
    let store = PostgresStore::connect(&pg.url("fastim"), 8)
        .await
        .expect("connect to the private PostgreSQL");
    (Arc::new(store), pg)
}

fastim_logic::conformance_tests!(fresh());

/// Several logic nodes starting at once apply the migrations exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    pg.create_database("fastim");
    let url = pg.url("fastim");
    let starts: Vec<_> = (0..6)
        .map(|_| tokio::spawn(PostgresStore::connect_owned(url.clone())))
        .collect();
    for start in starts {
        start.await.unwrap().expect("every node starts");
    }
    let applied = pg.psql(
        "fastim",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM fastim_schema",
    );
    assert_eq!(applied, "1,2", "each migration exactly once");
}

/// An unreachable server is a clear, retriable error, not a hang.
#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = fastim_tests::services::free_port();
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=none connect_timeout=2");
    match PostgresStore::connect(&url, 2).await {
        Err(fastim_logic::store::StoreError::Unavailable(message)) => {
            assert!(message.contains("postgres"), "{message}")
        }
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// Two logic nodes (two stores on one database) racing the same client message id:
/// one message is stored, every caller gets its seq, and the sequence has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_one_idempotency_key_store_it_once() {
    use fastim_logic::store::NewMessage;
    use fastim_proto::client::Message;
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    pg.create_database("fastim");
    let a = Arc::new(PostgresStore::connect(&pg.url("fastim"), 8).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&pg.url("fastim"), 8).await.unwrap());
    a.ensure_direct("d:1:2", 1, 2).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(async move {
            let message = Message {
                conversation: "d:1:2".into(),
                id: 1000 + i,
                sender_id: 1,
                client_msg_id: "same".into(),
                text: format!("try {i}"),
                ..Default::default()
            };
            store.append(NewMessage { message }).await.unwrap()
        }));
    }
    let mut originals = 0;
    for call in calls {
        let appended = call.await.unwrap();
        assert_eq!(appended.message.seq, 1);
        originals += usize::from(!appended.duplicate);
    }
    assert_eq!(originals, 1);
    let next = a
        .append(NewMessage {
            message: Message {
                conversation: "d:1:2".into(),
                id: 5000,
                sender_id: 2,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    assert_eq!(next.message.seq, 2, "no sequence number was burnt by the duplicates");
}

/// A mangled connection string is refused, not guessed at.
#[tokio::test]
async fn mangled_connection_strings_are_refused() {
    let url = "host=127.0.0.1,port=1,user=postgres,dbname=x";
    match PostgresStore::connect(url, 2).await {
        Err(fastim_logic::store::StoreError::Unavailable(message)) => assert!(message.contains("mangled"), "{message}"),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("accepted {url}"),
    }
}
