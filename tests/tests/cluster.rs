//! Cluster mode end to end: real `fastim logic` and `fastim gateway` processes on
//! private etcd, Redis and PostgreSQL.

use std::time::Duration;

use fastim_client::{Client, Event, Target};
use fastim_proto::client::DeviceKind;
use fastim_tests::cluster::Cluster;
use fastim_tests::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_one_to_one_and_in_a_200_member_group() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(2, 2)).await.unwrap();
    let (gw0, gw1) = (cluster.tcp(0), cluster.tcp(1));

    // 1:1 across gateways, both directions, plus a second device of alice on the other gateway.
    register_users(&gw0, &["alice", "bob"]).await;
    let (alice, mut alice_events) = connect(&gw0, "alice").await;
    let (bob, mut bob_events) = connect(&gw1, "bob").await;
    let (_alice_web, mut alice_web_events) =
        Client::connect(user(&cluster.gateways[1].get("ws"), "alice", DeviceKind::Web))
            .await
            .unwrap();
    let ack = alice
        .send_text(Target::User("bob".into()), "hello from gateway 0")
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(messages(&mut bob_events, 1, T).await[0].text, "hello from gateway 0");
    bob.send_text(Target::User("alice".into()), "hello from gateway 1")
        .await
        .unwrap();
    for events in [&mut alice_events, &mut alice_web_events] {
        let got = messages(events, 2, T).await;
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[1].text, "hello from gateway 1");
    }

    // A 200-member group, half the members on each gateway.
    let names: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    register_users(&gw1, &refs).await;
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let server = if i % 2 == 0 { &gw0 } else { &gw1 };
        members.push(connect(server, name).await);
    }
    let group = members[0].0.create_group("two hundred", &names[1..]).await.unwrap();
    let mut senders = Vec::new();
    for s in 0..4 {
        let client = members[s * 3].0.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..10 {
                client
                    .send_text(Target::Group(group.id), &format!("{s}-{i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let mut first_order: Option<Vec<u64>> = None;
    for (_, events) in members.iter_mut() {
        let got = messages(events, 40, T).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<u64>>()
        );
        let order: Vec<u64> = got.iter().map(|m| m.id).collect();
        match &first_order {
            None => first_order = Some(order),
            Some(first) => assert_eq!(first, &order, "every member sees the same order"),
        }
        no_more_messages(events, Duration::from_millis(20)).await;
    }
    // Exactly once: nothing more arrives anywhere after a quiet period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, events) in members.iter_mut() {
        while let Ok(event) = events.try_recv() {
            assert!(!matches!(event, Event::Message(_)), "duplicate delivery: {event:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_groups_are_fanned_out_by_each_gateway_to_its_own_members() {
    let mut cluster = tokio::task::spawn_blocking(|| {
        let mut cluster = Cluster::start(0, 0);
        cluster.add_logic_with(&["--large-group-threshold", "50"]);
        cluster.add_gateway();
        cluster.add_gateway();
        cluster
    })
    .await
    .unwrap();
    let (gw0, gw1) = (cluster.tcp(0), cluster.tcp(1));
    let names: Vec<String> = (0..120).map(|i| format!("big{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    register_users(&gw0, &refs).await;
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        members.push(connect(if i % 2 == 0 { &gw0 } else { &gw1 }, name).await);
    }
    // One member also has a desktop on the other gateway.
    let (_desk, desk_events) = Client::connect(user(&gw1, "big0", DeviceKind::Desktop)).await.unwrap();
    members.push((_desk, desk_events));
    let group = members[0].0.create_group("big", &names[1..]).await.unwrap();
    for i in 0..20 {
        members[i % 7]
            .0
            .send_text(Target::Group(group.id), &format!("{i}"))
            .await
            .unwrap();
    }
    for (_, events) in members.iter_mut() {
        let got = messages(events, 20, T).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<u64>>()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, events) in members.iter_mut() {
        while let Ok(event) = events.try_recv() {
            assert!(!matches!(event, Event::Message(_)), "duplicate delivery: {event:?}");
        }
    }
    drop(cluster.gateways.pop());
}
