//! Private etcd, Redis and PostgreSQL servers for tests.
//!
//! Each starts from its Debian package's binary on a free loopback port, in its own
//! temporary directory, waits until it answers, and is killed and removed on drop.
//! The machine's own instances (on the standard ports) are never touched. Each can be
//! stopped and started again on the same directory and port, for failure tests.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the data
//! directory is given to the `postgres` user and the server runs as that user.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the race with other processes is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// A process we started, stopped on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A private Redis server.
pub struct Redis {
    dir: tempfile::TempDir,
    proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// Starts one (no persistence).
    pub fn start() -> Redis {
        let mut redis = Redis {
            dir: tempfile::tempdir().expect("temp dir"),
            proc: Proc(None),
            port: free_port(),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (`kill -9`).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// (Re)starts the server on the same port; it comes back empty.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log_file(self.dir.path(), "redis.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install the redis-server package)");
        self.proc = Proc(Some(child));
        let port = self.port;
        wait_until("redis", Duration::from_secs(20), || {
            use std::io::{Read, Write};
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
        });
    }
}

/// A private single-member etcd cluster.
pub struct Etcd {
    dir: tempfile::TempDir,
    proc: Proc,
    /// Client port on 127.0.0.1.
    pub port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts one.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            proc: Proc(None),
            port: free_port(),
            peer_port: free_port(),
        };
        etcd.restart();
        etcd
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (`kill -9`).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// (Re)starts the server on the same data directory and ports.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args([
                "--name",
                "test",
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log_file(self.dir.path(), "etcd.log"))
            .spawn()
            .expect("start etcd (install the etcd-server package)");
        self.proc = Proc(Some(child));
        let port = self.port;
        wait_until("etcd", Duration::from_secs(30), || http_ok(port, "/health"));
    }
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    s.write_all(request.as_bytes()).is_ok()
        && s.read_to_string(&mut response).is_ok()
        && response.starts_with("HTTP/1.1 200")
        && response.contains("true")
}

/// A private PostgreSQL server (trust authentication, user `postgres`).
pub struct Postgres {
    dir: tempfile::TempDir,
    proc: Proc,
    bin: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin (install the postgresql package)")
}

/// Runs `cmd` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres_user(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid);
    }
}

/// The uid and gid of `postgres` when running as root; `None` otherwise.
fn postgres_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

impl Postgres {
    /// Creates a cluster in a temporary directory and starts it.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("give the data directory to postgres");
        }
        let bin = postgres_bin();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        initdb.stdout(Stdio::null()).stderr(log_file(dir.path(), "initdb.log"));
        as_postgres_user(&mut initdb);
        let status = initdb.status().expect("run initdb");
        assert!(
            status.success(),
            "initdb failed: see {}",
            dir.path().join("initdb.log").display()
        );
        let mut pg = Postgres {
            dir,
            proc: Proc(None),
            bin,
            port: free_port(),
        };
        pg.restart();
        pg
    }

    /// A libpq-style connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs one SQL command with psql; panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-tA",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Kills the server (`kill -9` of the postmaster).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Stops the server cleanly (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.proc.0.take() {
            signal(&child, "INT");
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same data directory and port.
    pub fn restart(&mut self) {
        self.stop();
        // A killed postmaster leaves its pid file; the new one checks it is stale.
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()]);
        cmd.arg("-k").arg(self.dir.path());
        cmd.args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]);
        cmd.stdout(Stdio::null())
            .stderr(log_file(self.dir.path(), "postgres.log"));
        as_postgres_user(&mut cmd);
        self.proc = Proc(Some(cmd.spawn().expect("start postgres")));
        let (bin, port) = (self.bin.clone(), self.port);
        wait_until("postgres", Duration::from_secs(60), || {
            Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        });
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends with it.
        if let Some(child) = &self.proc.0 {
            signal(child, "QUIT");
        }
    }
}

/// A private Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    _nodes: Vec<Proc>,
    /// Ports of the masters on 127.0.0.1.
    pub ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them, and waits for `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(log_file(&node_dir, "redis.log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push(Proc(Some(child)));
        }
        for port in &ports {
            let port = *port;
            wait_until("redis node", Duration::from_secs(20), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        for port in &ports {
            let port = port.to_string();
            wait_until("redis cluster", Duration::from_secs(30), || {
                Command::new("redis-cli")
                    .args(["-p", &port, "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
        }
        RedisCluster {
            _dir: dir,
            _nodes: nodes,
            ports,
        }
    }

    /// `redis://` URLs of the masters.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect()
    }
}
