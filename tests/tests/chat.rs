//! End-to-end chat against the real `fastim standalone` binary, through the SDK.

use std::collections::HashSet;
use std::time::Duration;

use fastim_client::{Client, ClientError, Event, Target};
use fastim_proto::client::{DeviceKind, ErrorCode};
use fastim_tests::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_online_delivery() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (alice, mut alice_events) = connect(&server.tcp, "alice").await;
    let (_bob, mut bob_events) = connect(&server.tcp, "bob").await;

    let ack = alice.send_text(Target::User("bob".into()), "hello bob").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert!(!ack.duplicate);
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(got[0].text, "hello bob");
    assert_eq!(got[0].sender, "alice");
    assert_eq!(got[0].conversation, ack.conversation);
    assert_eq!(got[0].seq, 1);
    // The sender's own device sees its message in the timeline too.
    assert_eq!(messages(&mut alice_events, 1, T).await[0].id, ack.id);

    // Reply: same conversation, next seq.
    let (bob, _) = (_bob, ());
    let reply = bob.send_text(Target::User("alice".into()), "hi alice").await.unwrap();
    assert_eq!((reply.conversation.as_str(), reply.seq), (ack.conversation.as_str(), 2));
    assert_eq!(messages(&mut alice_events, 1, T).await[0].text, "hi alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_delivery_on_next_login() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    // Bob logs in once (so his device has a cursor), then goes offline.
    let (bob, mut events) = connect(&server.tcp, "bob").await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    alice
        .send_text(Target::User("bob".into()), "while online")
        .await
        .unwrap();
    assert_eq!(messages(&mut events, 1, T).await[0].text, "while online");
    tokio::time::sleep(Duration::from_millis(500)).await; // cursor flush
    bob.close();
    drop(events);

    for i in 0..5 {
        alice
            .send_text(Target::User("bob".into()), &format!("offline {i}"))
            .await
            .unwrap();
    }
    let (_bob, mut events) = connect(&server.tcp, "bob").await;
    let got = messages(&mut events, 5, T).await;
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["offline 0", "offline 1", "offline 2", "offline 3", "offline 4"]);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    no_more_messages(&mut events, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_50_all_receive_in_the_same_order() {
    // Above the large-group threshold: the gateway fans out to its own members.
    let server = Standalone::start(&["--large-group-threshold", "20"]);
    let names: Vec<String> = (0..50).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    server.register(&refs).await;
    let mut clients = Vec::new();
    for name in &names {
        clients.push(connect(&server.tcp, name).await);
    }
    let group = clients[0].0.create_group("fifty", &names[1..]).await.unwrap();
    assert_eq!(clients[3].0.group_members(group.id).await.unwrap().len(), 50);

    // Five members send concurrently, 10 messages each.
    let mut senders = Vec::new();
    for s in 0..5 {
        let client = clients[s * 7].0.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..10 {
                client
                    .send_text(Target::Group(group.id), &format!("from {s}: {i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let mut orders = Vec::new();
    for (_, events) in clients.iter_mut() {
        let got = messages(events, 50, T).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<u64>>()
        );
        assert!(got.iter().all(|m| m.group_id == group.id));
        orders.push(got.iter().map(|m| m.id).collect::<Vec<_>>());
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every member sees the same order"
    );
    // Each sender's messages are in its own send order.
    for s in 0..5 {
        let prefix = format!("from {s}: ");
        let history = clients[1].0.history(&group.conversation, 0, 100).await.unwrap();
        let mine: Vec<u32> = history
            .iter()
            .rev()
            .filter_map(|m| m.text.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert_eq!(mine, (0..10).collect::<Vec<u32>>());
    }
    // One quiet period for everybody, then nothing more may have arrived.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, events) in clients.iter_mut() {
        while let Ok(event) = events.try_recv() {
            assert!(!matches!(event, Event::Message(_)), "duplicate delivery: {event:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_of_one_user_both_receive_and_see_each_other() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (phone, mut phone_events) = Client::connect(user(&server.tcp, "alice", DeviceKind::Mobile))
        .await
        .unwrap();
    let (_laptop, mut laptop_events) = Client::connect(user(&server.ws, "alice", DeviceKind::Desktop))
        .await
        .unwrap();
    let (bob, mut bob_events) = connect(&server.tcp, "bob").await;

    bob.send_text(Target::User("alice".into()), "to both").await.unwrap();
    assert_eq!(messages(&mut phone_events, 1, T).await[0].text, "to both");
    assert_eq!(messages(&mut laptop_events, 1, T).await[0].text, "to both");

    phone
        .send_text(Target::User("bob".into()), "sent from the phone")
        .await
        .unwrap();
    let on_laptop = messages(&mut laptop_events, 1, T).await;
    assert_eq!(
        (on_laptop[0].text.as_str(), on_laptop[0].sender.as_str()),
        ("sent from the phone", "alice")
    );
    assert_eq!(on_laptop[0].seq, 2);
    assert_eq!(messages(&mut phone_events, 1, T).await[0].seq, 2);
    assert_eq!(messages(&mut bob_events, 2, T).await[1].text, "sent from the phone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_login_of_the_same_kind_kicks_the_first() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (first, mut first_events) = Client::connect(user(&server.tcp, "alice", DeviceKind::Mobile))
        .await
        .unwrap();
    let (_web, mut web_events) = Client::connect(user(&server.tcp, "alice", DeviceKind::Web))
        .await
        .unwrap();
    let (_second, mut second_events) = Client::connect(user(&server.tcp, "alice", DeviceKind::Mobile))
        .await
        .unwrap();

    let reason = loop {
        match tokio::time::timeout(T, first_events.recv())
            .await
            .expect("kick in time")
        {
            Some(Event::Kicked(reason)) => break reason,
            Some(_) => continue,
            None => panic!("events ended without a kick"),
        }
    };
    assert!(reason.contains("another mobile device"), "reason: {reason}");
    // The kicked client stays down (no reconnect fight) and says why.
    let err = first.send_text(Target::User("bob".into()), "x").await.unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");

    // The new phone and the web session both still receive.
    let (bob, _) = connect(&server.tcp, "bob").await;
    bob.send_text(Target::User("alice".into()), "still here?")
        .await
        .unwrap();
    assert_eq!(messages(&mut second_events, 1, T).await[0].text, "still here?");
    assert_eq!(messages(&mut web_events, 1, T).await[0].text, "still here?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_after_missed_heartbeats() {
    let server = Standalone::start(&["--heartbeat-ms", "300"]);
    server.register(&["alice", "bob"]).await;
    // A raw connection that never pings is closed after ~3 intervals.
    let mut silent = raw(&server.tcp).await;
    let login = silent.login("alice", DeviceKind::Mobile).await;
    assert_eq!(login.heartbeat_interval_ms, 300);
    let started = std::time::Instant::now();
    let mut kick = None;
    while let Some(frame) = silent.next(Duration::from_secs(10)).await {
        if frame.command() == Some(fastim_proto::Command::Kick) {
            kick = Some(frame.decode::<fastim_proto::client::Kick>().unwrap().reason);
        }
    }
    assert_eq!(kick.as_deref(), Some("heartbeat timeout"));
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "closed too early: {:?}",
        started.elapsed()
    );

    // The SDK heartbeats, so its connection outlives many intervals.
    let (bob, mut bob_events) = connect(&server.tcp, "bob").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    alice
        .send_text(Target::User("bob".into()), "you are alive")
        .await
        .unwrap();
    let mut got = None;
    while got.is_none() {
        match tokio::time::timeout(T, bob_events.recv()).await.unwrap().unwrap() {
            Event::Message(m) => got = Some(m),
            Event::Disconnected(reason) => panic!("heartbeating client was disconnected: {reason}"),
            _ => {}
        }
    }
    assert_eq!(got.unwrap().text, "you are alive");
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_with_the_same_client_message_id_is_not_duplicated() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    let (_bob, mut bob_events) = connect(&server.tcp, "bob").await;
    let first = alice
        .send_with_id(Target::User("bob".into()), "once", "cmid-1")
        .await
        .unwrap();
    let again = alice
        .send_with_id(Target::User("bob".into()), "once", "cmid-1")
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.id, again.sent_unix_ms),
        (first.seq, first.id, first.sent_unix_ms)
    );
    let next = alice
        .send_with_id(Target::User("bob".into()), "twice", "cmid-2")
        .await
        .unwrap();
    assert_eq!(next.seq, first.seq + 1, "no gap from the deduplicated retry");
    let got = messages(&mut bob_events, 2, T).await;
    assert_eq!(
        got.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["once", "twice"]
    );
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    assert_eq!(alice.history(&first.conversation, 0, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_1000_acknowledged_messages_loses_nothing() {
    let mut server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    // 4 concurrent senders so acks come from group commits of several messages.
    let mut acked = Vec::new();
    let mut tasks = Vec::new();
    for lane in 0..4 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..250 {
                acks.push(
                    alice
                        .send_text(Target::User("bob".into()), &format!("{lane}-{i}"))
                        .await
                        .unwrap(),
                );
            }
            acks
        }));
    }
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 1000);
    let conversation = acked[0].conversation.clone();
    alice.close();
    server.kill9();
    server.restart();

    let (bob, _) = connect(&server.tcp, "bob").await;
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let page = bob.history(&conversation, before, 200).await.unwrap();
        let Some(last) = page.last() else { break };
        before = last.seq;
        all.extend(page);
        if before == 1 {
            break;
        }
    }
    all.reverse();
    assert_eq!(all.len(), 1000);
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<u64>>(),
        "in order, no gaps"
    );
    let ids: HashSet<u64> = acked.iter().map(|a| a.id).collect();
    assert!(
        all.iter().all(|m| ids.contains(&m.id)),
        "every stored message is an acknowledged one"
    );
    // And the sync path delivers them all to a fresh device, in order.
    let (_fresh, mut events) = Client::connect(user(&server.tcp, "bob", DeviceKind::Web))
        .await
        .unwrap();
    let synced = messages(&mut events, 1000, T).await;
    assert_eq!(
        synced.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<u64>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_unread_and_read_markers() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    let (bob, _) = connect(&server.tcp, "bob").await;
    for i in 1..=7 {
        alice
            .send_text(Target::User("bob".into()), &format!("m{i}"))
            .await
            .unwrap();
    }
    let conversations = bob.conversations().await.unwrap();
    assert_eq!(conversations.len(), 1);
    let c = &conversations[0];
    assert_eq!((c.last_seq, c.unread, c.title.as_str()), (7, 7, "alice"));
    // The sender has read its own messages.
    assert_eq!(alice.conversations().await.unwrap()[0].unread, 0);

    let page1 = bob.history(&c.conversation, 0, 3).await.unwrap();
    assert_eq!(page1.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![7, 6, 5]);
    let page2 = bob.history(&c.conversation, 5, 3).await.unwrap();
    assert_eq!(page2.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 3, 2]);
    let page3 = bob.history(&c.conversation, 2, 3).await.unwrap();
    assert_eq!(page3.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1]);

    bob.mark_read(&c.conversation, 5).await.unwrap();
    assert_eq!(bob.conversations().await.unwrap()[0].unread, 2);
    bob.mark_read(&c.conversation, 3).await.unwrap(); // never moves back
    assert_eq!(bob.conversations().await.unwrap()[0].unread, 2);
    bob.mark_read(&c.conversation, 99).await.unwrap(); // capped at the last message
    assert_eq!(bob.conversations().await.unwrap()[0].unread, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_reads_or_writes_a_conversation_they_are_not_in() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob", "mallory"]).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    let (mallory, mut mallory_events) = connect(&server.tcp, "mallory").await;
    let ack = alice.send_text(Target::User("bob".into()), "private").await.unwrap();
    let group = alice.create_group("closed", &["bob".into()]).await.unwrap();

    let forbidden = |e: ClientError| assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e:?}");
    forbidden(mallory.history(&ack.conversation, 0, 10).await.unwrap_err());
    forbidden(
        mallory
            .send_text(Target::Conversation(ack.conversation.clone()), "hi")
            .await
            .unwrap_err(),
    );
    forbidden(mallory.send_text(Target::Group(group.id), "hi").await.unwrap_err());
    forbidden(mallory.history(&group.conversation, 0, 10).await.unwrap_err());
    forbidden(mallory.group_members(group.id).await.unwrap_err());
    forbidden(mallory.add_members(group.id, &["mallory".into()]).await.unwrap_err());
    forbidden(mallory.mark_read(&group.conversation, 1).await.unwrap_err());
    let not_found = mallory.send_text(Target::Group(group.id + 100), "x").await.unwrap_err();
    assert_eq!(not_found.code(), Some(ErrorCode::NotFound));
    let bad = mallory.history("not-a-conversation", 0, 1).await.unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::InvalidArgument));
    assert!(mallory.conversations().await.unwrap().is_empty());
    assert!(mallory.groups().await.unwrap().is_empty());
    no_more_messages(&mut mallory_events, Duration::from_millis(300)).await;

    // A removed member loses access; only the owner removes others.
    let (bob, _) = connect(&server.tcp, "bob").await;
    forbidden(bob.remove_members(group.id, &["alice".into()]).await.unwrap_err());
    alice.remove_members(group.id, &["bob".into()]).await.unwrap();
    forbidden(bob.send_text(Target::Group(group.id), "still in?").await.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_pushes_are_resent() {
    let server = Standalone::start(&["--retransmit-ms", "200"]);
    server.register(&["alice", "bob"]).await;
    let mut bob = raw(&server.tcp).await;
    bob.login("bob", DeviceKind::Mobile).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    alice.send_text(Target::User("bob".into()), "ack me").await.unwrap();
    let mut pushes = 0;
    while pushes < 3 {
        let frame = bob.next(Duration::from_secs(5)).await.expect("push");
        if frame.command() == Some(fastim_proto::Command::Push) {
            let push: fastim_proto::client::Push = frame.decode().unwrap();
            assert_eq!(push.messages[0].text, "ack me");
            pushes += 1;
        }
    }
    // Acknowledge: the resends stop.
    let ack = fastim_proto::client::PushAck {
        conversation: "d:1:2".into(),
        seq: 1,
    };
    bob.send(fastim_proto::Frame::new(fastim_proto::Command::PushAck, 0, &ack))
        .await;
    let ping = fastim_proto::Frame::new(fastim_proto::Command::Ping, 9, &fastim_proto::client::Ping {});
    tokio::time::sleep(Duration::from_millis(700)).await;
    bob.send(ping).await;
    // The next frame is the pong: nothing was resent after the ack.
    loop {
        let frame = bob.next(Duration::from_secs(5)).await.expect("frame");
        match frame.command() {
            Some(fastim_proto::Command::Ping) => break,
            Some(fastim_proto::Command::Push) => {
                // A resend already in flight when the ack arrived is fine once.
                continue;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// PUSH_ACK gets no answer: the gateway hands it to logic in the background. It moves
/// the acknowledging device's cursor (where its next sync starts); an ack of somebody
/// else's conversation moves nothing and costs the connection nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_move_the_device_cursor_and_foreign_ones_are_ignored() {
    use fastim_proto::client::{Ping, PushAck};
    use fastim_proto::{Command, Frame};
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob", "carol"]).await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    let mut conversation = String::new();
    for i in 0..3 {
        conversation = alice
            .send_text(Target::User("bob".into()), &format!("m{i}"))
            .await
            .unwrap()
            .conversation;
    }
    let ack = |seq| {
        Frame::new(
            Command::PushAck,
            0,
            &PushAck {
                conversation: conversation.clone(),
                seq,
            },
        )
    };
    // Carol is not in the conversation: no error, and her connection still answers.
    let mut carol = raw(&server.tcp).await;
    carol.login("carol", DeviceKind::Mobile).await;
    carol.send(ack(3)).await;
    carol.send(Frame::new(Command::Ping, 9, &Ping {})).await;
    let pong = carol.next(T).await.expect("pong");
    assert_eq!((pong.command(), pong.request_id), (Some(Command::Ping), 9));
    // Bob's phone says it holds up to 2 without syncing, and goes away.
    let mut bob = raw(&server.tcp).await;
    bob.login("bob", DeviceKind::Mobile).await;
    bob.send(ack(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(bob);
    // The same phone through the SDK: its sync starts after 2.
    let (_bob, mut events) = connect(&server.tcp, "bob").await;
    let got = messages(&mut events, 1, T).await;
    assert_eq!((got[0].seq, got[0].text.as_str()), (3, "m2"));
    no_more_messages(&mut events, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_server_restart_resyncs() {
    let mut server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    let (_bob, mut bob_events) = connect(&server.tcp, "bob").await;
    let (alice, _) = connect(&server.tcp, "alice").await;
    alice.send_text(Target::User("bob".into()), "before").await.unwrap();
    assert_eq!(messages(&mut bob_events, 1, T).await[0].text, "before");
    server.kill9();
    server.restart();
    // Alice's retrying send goes through after the restart; Bob's client
    // reconnects by itself with its token and resyncs.
    alice.send_text(Target::User("bob".into()), "after").await.unwrap();
    assert_eq!(messages(&mut bob_events, 1, T).await[0].text, "after");
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_token() {
    use fastim_proto::{Command, Frame, client as pb};
    let server = Standalone::start(&[]);
    server.register(&["alice"]).await;
    let token_login = |token: &str| pb::LoginRequest {
        user: "alice".into(),
        token: token.into(),
        device_kind: DeviceKind::Mobile as i32,
        ..Default::default()
    };
    let mut first = raw(&server.tcp).await;
    let token = first.login("alice", DeviceKind::Mobile).await.token;
    // The token works for a new connection ...
    let mut second = raw(&server.tcp).await;
    second.send(Frame::new(Command::Login, 1, &token_login(&token))).await;
    assert_eq!(second.next(T).await.unwrap().command(), Some(Command::Login));
    // ... until logout, which answers and closes the connection.
    second.send(Frame::new(Command::Logout, 2, &pb::LogoutRequest {})).await;
    assert_eq!(second.next(T).await.unwrap().command(), Some(Command::Logout));
    assert!(second.next(T).await.is_none());
    let mut third = raw(&server.tcp).await;
    third.send(Frame::new(Command::Login, 1, &token_login(&token))).await;
    let errors = third.errors_until_close(T).await;
    assert_eq!(errors[0].code(), ErrorCode::AuthFailed);

    // Wrong password: a clear error.
    let mut config = user(&server.tcp, "alice", DeviceKind::Desktop);
    config.password = "wrong-password".into();
    let err = Client::connect(config).await.err().expect("wrong password refused");
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed));
    assert_eq!(err.to_string(), "unknown user or wrong password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_and_exits_cleanly() {
    let mut server = Standalone::start(&["--drain-rate", "20"]);
    server.register(&["alice", "bob"]).await;
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        for kind in [DeviceKind::Mobile, DeviceKind::Desktop, DeviceKind::Web] {
            clients.push(Client::connect(user(&server.tcp, name, kind)).await.unwrap());
        }
    }
    let started = std::time::Instant::now();
    assert_eq!(server.terminate(), Some(0), "clean exit after draining");
    // Six clients at 20 per second: the drain is paced, not instant.
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    for (_, events) in clients.iter_mut() {
        let event = tokio::time::timeout(T, async {
            loop {
                match events.recv().await {
                    Some(Event::Disconnected(reason)) => return reason,
                    Some(_) => continue,
                    None => panic!("events ended"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(event, "server asked to reconnect");
    }
}
