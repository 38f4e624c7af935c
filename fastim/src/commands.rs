//! Client commands: register, send, group create, recv, chat.

use std::time::Duration;

use anyhow::{Context, anyhow};
use fastim_client::{Client, ClientConfig, ClientError, Event, Message, Target};
use fastim_proto::Command;
use fastim_proto::client as pb;
use fastim_proto::client::DeviceKind;
use tokio::io::AsyncBufReadExt;

use crate::cli::{ChatArgs, ClientArgs, GroupCreateArgs, RecvArgs, SendArgs};

fn password() -> anyhow::Result<String> {
    std::env::var("FASTIM_PASSWORD")
        .map_err(|_| anyhow!("set the password in the environment variable FASTIM_PASSWORD"))
}

fn config(args: &ClientArgs, kind: DeviceKind, receive: bool) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new("", &args.user, &password()?);
    config.servers = crate::config::list(&args.server);
    config.device_kind = kind;
    config.receive = receive;
    config.lsb = args.lsb.clone();
    config.tls = tls(args)?;
    Ok(config)
}

/// TLS settings when --tls-ca is given (otherwise the system's roots are used).
fn tls(args: &ClientArgs) -> anyhow::Result<Option<std::sync::Arc<fastim_client::connection::TlsConfig>>> {
    args.tls_ca
        .as_deref()
        .map(|ca| fastim_client::connection::tls_config(Some(ca)).map_err(|e| anyhow!("--tls-ca {e}")))
        .transpose()
}

/// Turns a client error into one clear line.
fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Server(err) => anyhow!("{} ({})", err.message, err.code().as_str_name().to_lowercase()),
        other => anyhow!("{other}"),
    }
}

async fn connect(config: ClientConfig) -> anyhow::Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Event>)> {
    Client::connect(config).await.map_err(explain)
}

pub async fn register(args: ClientArgs) -> anyhow::Result<i32> {
    let password = password()?;
    let server = crate::config::list(&args.server)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("--server: no address"))?;
    let (mut reader, mut writer) = fastim_client::connection::connect_with(&server, 1 << 20, tls(&args)?.as_ref())
        .await
        .map_err(explain)?;
    let request = pb::RegisterRequest {
        user: args.user.clone(),
        password,
    };
    writer
        .write(&fastim_proto::Frame::new(Command::Register, 1, &request))
        .await
        .map_err(explain)?;
    let frame = tokio::time::timeout(Duration::from_secs(30), reader.read())
        .await
        .map_err(|_| anyhow!("server did not answer"))?
        .map_err(explain)?
        .ok_or_else(|| anyhow!("server closed the connection"))?;
    writer.close().await;
    if frame.command() == Some(Command::Error) {
        let error: pb::Error = frame.decode().context("undecodable error")?;
        return Err(explain(ClientError::Server(error)));
    }
    let response: pb::RegisterResponse = frame.decode().context("undecodable response")?;
    println!("registered {} (id {})", args.user, response.user_id);
    Ok(0)
}

pub async fn send(args: SendArgs) -> anyhow::Result<i32> {
    let (client, _) = connect(config(&args.client, args.device_kind.proto(), false)?).await?;
    let target = match (args.to, args.group) {
        (Some(to), _) => Target::User(to),
        (None, Some(group)) => Target::Group(group),
        (None, None) => return Err(anyhow!("give --to USER or --group ID")),
    };
    let ack = client.send_text(target, &args.text).await.map_err(explain)?;
    client.close();
    println!("sent {}#{}", ack.conversation, ack.seq);
    Ok(0)
}

pub async fn group_create(args: GroupCreateArgs) -> anyhow::Result<i32> {
    let (client, _) = connect(config(&args.client, DeviceKind::Bot, false)?).await?;
    let group = client.create_group(&args.name, &args.members).await.map_err(explain)?;
    client.close();
    println!("{}", group.id);
    Ok(0)
}

fn message_json(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "conversation": m.conversation,
        "seq": m.seq,
        "id": m.id,
        "from": m.sender,
        "text": m.text,
        "sent_unix_ms": m.sent_unix_ms,
    });
    if m.group_id != 0 {
        v["group"] = m.group_id.into();
    }
    v
}

fn message_line(m: &Message) -> String {
    let place = if m.group_id != 0 {
        format!("group {}", m.group_id)
    } else {
        "direct".to_owned()
    };
    format!("[{place} #{}] {}: {}", m.seq, m.sender, m.text)
}

pub async fn recv(args: RecvArgs) -> anyhow::Result<i32> {
    let mut config = config(&args.client, args.device_kind.proto(), true)?;
    if let Some(id) = &args.device_id {
        config.device_id = id.clone();
    }
    let (client, mut events) = connect(config).await?;
    let run = async {
        while let Some(event) = events.recv().await {
            match event {
                Event::Message(m) if args.json => println!("{}", message_json(&m)),
                Event::Message(m) => println!("{}", message_line(&m)),
                Event::Kicked(reason) => return Err(anyhow!("disconnected for good: {reason}")),
                Event::Disconnected(reason) => eprintln!("connection lost ({reason}); reconnecting"),
                Event::Connected { .. } => {}
            }
        }
        Ok(())
    };
    let result = match args.for_secs {
        Some(secs) => tokio::time::timeout(Duration::from_secs_f64(secs.max(0.0)), run)
            .await
            .unwrap_or(Ok(())),
        None => tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        },
    };
    client.close();
    result.map(|_| 0)
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<i32> {
    let (client, mut events) = connect(config(&args.client, args.device_kind.proto(), true)?).await?;
    println!(
        "logged in as {}. Type /to NAME or /group ID to pick a chat, then type messages.",
        args.client.user
    );
    println!("Commands: /to NAME, /group ID, /groups, /unread, /history, /quit");
    let mut target: Option<Target> = None;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Message(m)) => println!("{}", message_line(&m)),
                Some(Event::Kicked(reason)) => {
                    println!("disconnected for good: {reason}");
                    return Ok(1);
                }
                Some(Event::Disconnected(reason)) => println!("(connection lost: {reason}; reconnecting)"),
                Some(Event::Connected { .. }) => {}
                None => return Ok(0),
            },
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if let Err(e) = chat_line(&client, &mut target, line.trim()).await {
                    println!("error: {e}");
                }
                if line.trim() == "/quit" {
                    break;
                }
            }
        }
    }
    client.close();
    Ok(0)
}

async fn chat_line(client: &Client, target: &mut Option<Target>, line: &str) -> anyhow::Result<()> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "" | "/quit" => {}
        "/to" => {
            *target = Some(Target::User(rest.trim().to_owned()));
            println!("now chatting with {}", rest.trim());
        }
        "/group" => {
            let id = rest.trim().parse().context("/group takes a group id")?;
            *target = Some(Target::Group(id));
            println!("now chatting in group {id}");
        }
        "/groups" => {
            for g in client.groups().await.map_err(explain)? {
                println!("group {}: {}", g.id, g.name);
            }
        }
        "/unread" => {
            for c in client.conversations().await.map_err(explain)? {
                println!("{} ({}): {} unread", c.title, c.conversation, c.unread);
            }
        }
        "/history" => {
            let conversation = match target {
                Some(Target::Group(id)) => fastim_proto::conversation::group(*id),
                Some(Target::User(name)) => {
                    let c = client.conversations().await.map_err(explain)?;
                    c.into_iter()
                        .find(|c| &c.title == name)
                        .map(|c| c.conversation)
                        .context("no chat with that user yet")?
                }
                _ => anyhow::bail!("pick a chat first"),
            };
            let mut messages = client.history(&conversation, 0, 20).await.map_err(explain)?;
            messages.reverse();
            for m in &messages {
                println!("{}", message_line(m));
            }
            if let Some(last) = messages.last() {
                client.mark_read(&conversation, last.seq).await.map_err(explain)?;
            }
        }
        _ if word.starts_with('/') => anyhow::bail!("unknown command {word}"),
        _ => {
            let to = target.clone().context("pick a chat first: /to NAME or /group ID")?;
            client.send_text(to, line).await.map_err(explain)?;
        }
    }
    Ok(())
}
