//! Routes in Redis, for cluster mode (a single Redis or Redis Cluster).
//!
//! One hash per user, `fastim:routes:{<user id>}` (the braces make it one hash slot
//! in a cluster), with one field per connection, `<gateway id>/<conn id>`, whose value
//! is `<device kind>:<expires at, ms>:<protobuf Device>`. Binding runs as one Lua
//! script, so two logins of the same kind on two gateways cannot both survive. Expired
//! fields are dropped when read; the whole hash expires when no device refreshes it,
//! so routes left by a crashed gateway disappear by themselves. Gateways re-announce
//! their devices every `ttl / 3`, which also rebuilds everything after a Redis restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastim_proto::internal::Device;
use prost::Message as _;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{KickPolicy, RouteError, RouteTable};

const BIND: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local replaced = {}
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local kind, expires = string.match(value, '^(%d+):(%d+):')
  if expires == nil or tonumber(expires) < tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[1], field)
  elseif field ~= ARGV[1] and (ARGV[4] == 'single' or (ARGV[4] == 'kind' and kind == ARGV[3])) then
    redis.call('HDEL', KEYS[1], field)
    table.insert(replaced, value)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return replaced
"#;

/// A connection to a single Redis (reconnecting) or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, through a connection manager that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Connects to `urls`: one `redis://` URL for a single server, several (or one
    /// with `cluster = true`) for a cluster.
    pub async fn connect(urls: &[String], cluster: bool) -> Result<RedisConnection, RouteError> {
        let fail = |e: redis::RedisError| RouteError(format!("cannot connect to Redis {urls:?}: {e}"));
        if cluster || urls.len() > 1 {
            let client = redis::cluster::ClusterClient::new(urls.to_vec()).map_err(fail)?;
            Ok(RedisConnection::Cluster(
                client.get_async_connection().await.map_err(fail)?,
            ))
        } else {
            let url = urls.first().ok_or_else(|| RouteError("no Redis URL given".into()))?;
            let client = redis::Client::open(url.as_str()).map_err(fail)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2);
            Ok(RedisConnection::Single(
                ConnectionManager::new_with_config(client, config).await.map_err(fail)?,
            ))
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis [`RouteTable`].
pub struct RedisRoutes {
    conn: RedisConnection,
    /// How long a route lives without a refresh.
    ttl: Duration,
    bind: redis::Script,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(user_id: u64) -> String {
    format!("fastim:routes:{{{user_id}}}")
}

fn field(device: &Device) -> String {
    format!("{}/{}", device.gateway_id, device.conn_id)
}

fn failed(e: redis::RedisError) -> RouteError {
    RouteError(format!("redis: {e}"))
}

/// Parses a stored value; `None` when malformed or expired.
fn parse(value: &[u8], now: u64) -> Option<Device> {
    let mut parts = value.splitn(3, |b| *b == b':');
    let _kind = parts.next()?;
    let expires: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    (expires >= now).then_some(())?;
    Device::decode(parts.next()?).ok()
}

impl RedisRoutes {
    /// Routes on `conn` that expire after `ttl` without a refresh.
    pub fn new(conn: RedisConnection, ttl: Duration) -> RedisRoutes {
        RedisRoutes {
            conn,
            ttl,
            bind: redis::Script::new(BIND),
        }
    }

    fn value(&self, device: &Device) -> Vec<u8> {
        let mut value = format!("{}:{}:", device.kind, now_ms() + self.ttl.as_millis() as u64).into_bytes();
        value.extend(device.encode_to_vec());
        value
    }
}

#[tonic::async_trait]
impl RouteTable for RedisRoutes {
    async fn bind(&self, device: &Device, policy: KickPolicy) -> Result<Vec<Device>, RouteError> {
        let policy = match policy {
            KickPolicy::SameKind => "kind",
            KickPolicy::SingleDevice => "single",
            KickPolicy::Never => "never",
        };
        let replaced: Vec<Vec<u8>> = self
            .bind
            .key(key(device.user_id))
            .arg(field(device))
            .arg(self.value(device))
            .arg(device.kind.to_string())
            .arg(policy)
            .arg(now_ms())
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(replaced.iter().filter_map(|v| parse(v, 0)).collect())
    }

    async fn unbind(&self, device: &Device) -> Result<(), RouteError> {
        redis::cmd("HDEL")
            .arg(key(device.user_id))
            .arg(field(device))
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(failed)
    }

    async fn devices(&self, user_id: u64) -> Result<Vec<Device>, RouteError> {
        let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key(user_id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        let now = now_ms();
        Ok(all.iter().filter_map(|(_, value)| parse(value, now)).collect())
    }

    async fn refresh(&self, devices: &[Device]) -> Result<(), RouteError> {
        let ttl = self.ttl.as_millis() as u64;
        let commands = |pipe: &mut Pipeline, device: &Device| {
            let key = key(device.user_id);
            pipe.cmd("HSET")
                .arg(&key)
                .arg(field(device))
                .arg(self.value(device))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        };
        match &self.conn {
            // One server: big pipelines.
            RedisConnection::Single(_) => {
                for chunk in devices.chunks(500) {
                    let mut pipe = redis::pipe();
                    for device in chunk {
                        commands(&mut pipe, device);
                    }
                    pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(failed)?;
                }
            }
            // A cluster refuses pipelines across hash slots: one small pipeline per
            // user (one key, one slot), many in flight at once.
            RedisConnection::Cluster(_) => {
                for chunk in devices.chunks(200) {
                    let calls = chunk.iter().map(|device| {
                        let mut pipe = redis::pipe();
                        commands(&mut pipe, device);
                        let mut conn = self.conn.clone();
                        async move { pipe.query_async::<()>(&mut conn).await }
                    });
                    futures_util::future::try_join_all(calls).await.map_err(failed)?;
                }
            }
        }
        Ok(())
    }
}
