//! Are the services an IMCluster references reachable? A TCP connect to each
//! etcd endpoint, Redis URL and the database host, with a short timeout. A cluster
//! whose etcd, Redis or database answers at none of its addresses is reported as
//! Degraded (its pods would only wait), and checked again on the next pass.
//!
//! The probe is a plain connect, not a login: credentials and protocols are the
//! components' business, and their `/readyz` says what they wait for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Connects to `host:port`; `Err` says why not.
pub type Probe = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How long one connect may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The real probe: a TCP connect within [`PROBE_TIMEOUT`].
pub fn tcp() -> Probe {
    Arc::new(|addr: String| {
        Box::pin(async move {
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            }
        })
    })
}

/// `host:port` of a URL such as `http://etcd:2379`, `redis://:pw@redis:6379/0` or
/// `postgres://user:pw@db/fastim?sslmode=require` (`default_port` when it names
/// none); `None` for what is not a URL (e.g. a libpq `key=value` string).
pub fn endpoint(url: &str, default_port: u16) -> Option<String> {
    let (_, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A host list (libpq's `host1:5432,host2:5432`): the first.
    let host_port = host_port.split(',').next()?;
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host_port.contains(':'),
    };
    Some(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    })
}

/// Where `addr` (`host:port`, as the IMCluster names it) is found from the operator's
/// pod. The components resolve a relative name such as `etcd` or `etcd-0.etcd` in the
/// IMCluster's namespace, but the operator runs in its own: try the name qualified
/// with `namespace` first (`etcd.chat.svc:2379`), then as given (an external host).
/// IP addresses and names already ending in `.svc`/`.svc.cluster.local` are used as
/// they are.
pub fn candidates(addr: &str, namespace: &str) -> Vec<String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return vec![addr.to_owned()];
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let absolute = bare.parse::<std::net::IpAddr>().is_ok()
        || bare.ends_with('.')
        || bare.ends_with(".svc")
        || bare.ends_with(".svc.cluster.local")
        || bare == "localhost"
        || namespace.is_empty();
    if absolute {
        vec![addr.to_owned()]
    } else {
        vec![format!("{bare}.{namespace}.svc:{port}"), addr.to_owned()]
    }
}

/// One referenced service: its name in messages, the reason when it is down, and
/// the addresses of which one must answer.
pub struct Reference {
    /// e.g. "etcd".
    pub what: &'static str,
    /// Condition reason when none answers, e.g. "EtcdUnreachable".
    pub reason: &'static str,
    /// `host:port` addresses.
    pub addresses: Vec<String>,
}

/// The first reference none of whose addresses answers: (reason, message). The
/// addresses are names as seen from `namespace` (see [`candidates`]).
pub async fn first_unreachable(
    probe: &Probe,
    references: Vec<Reference>,
    namespace: &str,
) -> Option<(&'static str, String)> {
    let checks = references.into_iter().map(|reference| {
        let probe = probe.clone();
        async move {
            if reference.addresses.is_empty() {
                return None;
            }
            let mut failures = Vec::new();
            for address in &reference.addresses {
                let mut last = String::new();
                for candidate in candidates(address, namespace) {
                    match probe(candidate).await {
                        Ok(()) => return None,
                        Err(e) => last = e,
                    }
                }
                failures.push(format!("{address}: {last}"));
            }
            Some((
                reference.reason,
                format!(
                    "{} does not answer at any address ({})",
                    reference.what,
                    failures.join("; ")
                ),
            ))
        }
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_urls() {
        let cases = [
            ("http://etcd-0.etcd:2379", 2379, Some("etcd-0.etcd:2379")),
            ("http://etcd", 2379, Some("etcd:2379")),
            ("redis://:secret@redis:6380/0", 6379, Some("redis:6380")),
            ("redis://redis/", 6379, Some("redis:6379")),
            ("rediss://user:pw@[::1]:7000", 6379, Some("[::1]:7000")),
            ("redis://[::1]/", 6379, Some("[::1]:6379")),
            (
                "postgres://fastim:p%40ss@db.internal/fastim?sslmode=require",
                5432,
                Some("db.internal:5432"),
            ),
            ("postgresql://u@h1:5433,h2:5434/db", 5432, Some("h1:5433")),
            ("host=db user=fastim", 5432, None),
            ("postgres:///fastim", 5432, None),
        ];
        for (url, port, want) in cases {
            assert_eq!(endpoint(url, port).as_deref(), want, "{url}");
        }
    }

    fn fake(down: &'static [&'static str]) -> Probe {
        Arc::new(move |addr: String| {
            Box::pin(async move {
                if down.contains(&addr.as_str()) {
                    Err("connection refused".to_string())
                } else {
                    Ok(())
                }
            })
        })
    }

    fn reference(what: &'static str, reason: &'static str, addresses: &[&str]) -> Reference {
        Reference {
            what,
            reason,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn one_answering_address_is_enough() {
        let probe = fake(&["etcd-0:2379", "redis.im.svc:6379", "redis:6379"]);
        let refs = vec![
            reference("etcd", "EtcdUnreachable", &["etcd-0:2379", "etcd-1:2379"]),
            reference("Redis", "RedisUnreachable", &["redis:6379"]),
        ];
        let (reason, message) = first_unreachable(&probe, refs, "im").await.unwrap();
        assert_eq!(reason, "RedisUnreachable");
        assert_eq!(
            message,
            "Redis does not answer at any address (redis:6379: connection refused)"
        );
        let refs = vec![reference("etcd", "EtcdUnreachable", &["etcd-0:2379", "etcd-1:2379"])];
        assert_eq!(first_unreachable(&probe, refs, "im").await, None);
        // Found in the IMCluster's namespace, though not from the operator's own.
        let probe = fake(&["db:5432"]);
        let refs = vec![reference("the database", "DatabaseUnreachable", &["db:5432"])];
        assert_eq!(first_unreachable(&probe, refs, "im").await, None);
    }

    #[test]
    fn relative_names_are_tried_in_the_clusters_namespace_first() {
        let cases: [(&str, &[&str]); 7] = [
            ("etcd:2379", &["etcd.chat.svc:2379", "etcd:2379"]),
            ("etcd-0.etcd:2379", &["etcd-0.etcd.chat.svc:2379", "etcd-0.etcd:2379"]),
            ("db.internal:5432", &["db.internal.chat.svc:5432", "db.internal:5432"]),
            ("redis.other.svc:6379", &["redis.other.svc:6379"]),
            ("pg.db.svc.cluster.local:5432", &["pg.db.svc.cluster.local:5432"]),
            ("10.0.0.7:2379", &["10.0.0.7:2379"]),
            ("[fd00::7]:2379", &["[fd00::7]:2379"]),
        ];
        for (addr, want) in cases {
            assert_eq!(candidates(addr, "chat"), want, "{addr}");
        }
    }

    #[tokio::test]
    async fn the_real_probe_tells_refused_from_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let probe = tcp();
        assert_eq!(probe(open).await, Ok(()));
        assert!(probe(closed).await.is_err());
    }
}
