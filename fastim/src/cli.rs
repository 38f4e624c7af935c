//! Command-line interface: every flag also reads a `FASTIM_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// FastIM: a distributed instant-messaging system.
///
/// Every flag can also be set by its FASTIM_* environment variable, or in a file of
/// FASTIM_*=value lines named by --config FILE (or FASTIM_CONFIG); flags win over the
/// environment, the environment over the file.
#[derive(Parser, Debug)]
#[command(name = "fastim", version, about)]
pub struct Cli {
    /// A file of FASTIM_*=value lines (see above).
    #[arg(long, global = true, env = "FASTIM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run gateway, logic and ID allocation in one process with embedded storage.
    Standalone(StandaloneArgs),
    /// Run a gateway (client connections) of a cluster.
    Gateway(GatewayArgs),
    /// Run a logic node (accounts, chat, storage) of a cluster.
    Logic(LogicArgs),
    /// Run the LSB: tells clients which gateway to connect to (least connections first).
    Lsb(LsbArgs),
    /// Run an ID allocator: segment ids from etcd counters and snowflake ids.
    Idgen(IdgenArgs),
    /// The Kubernetes operator.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Register a user (password from FASTIM_PASSWORD).
    Register(ClientArgs),
    /// Send one message and exit 0 once the server acknowledged it.
    Send(SendArgs),
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Receive messages: sync what was missed, then print live messages.
    Recv(RecvArgs),
    /// Interactive terminal chat.
    Chat(ChatArgs),
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCommand),
}

impl Command {
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            Command::Standalone(_)
                | Command::Gateway(_)
                | Command::Logic(_)
                | Command::Lsb(_)
                | Command::Idgen(_)
                | Command::Operator(OperatorCommand::Run(_))
        )
    }

    pub async fn run(self) -> anyhow::Result<i32> {
        match self {
            Command::Standalone(args) => crate::standalone::run(args).await,
            Command::Gateway(args) => crate::cluster::gateway(args).await,
            Command::Logic(args) => crate::cluster::logic(args).await,
            Command::Lsb(args) => crate::cluster::lsb(args).await,
            Command::Idgen(args) => crate::cluster::idgen(args).await,
            Command::Operator(OperatorCommand::Crd) => {
                print!("{}", fastim_operator::crd_yaml());
                Ok(0)
            }
            Command::Operator(OperatorCommand::Run(args)) => crate::operator::run(args).await,
            Command::Register(args) => crate::commands::register(args).await,
            Command::Send(args) => crate::commands::send(args).await,
            Command::Group(GroupCommand::Create(args)) => crate::commands::group_create(args).await,
            Command::Recv(args) => crate::commands::recv(args).await,
            Command::Chat(args) => crate::commands::chat(args).await,
            Command::Bench(BenchCommand::Chat(args)) => crate::bench::chat(args).await,
            Command::Bench(BenchCommand::Idle(args)) => crate::bench::idle(args).await,
            Command::Bench(BenchCommand::Group(args)) => crate::bench::group(args).await,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct StandaloneArgs {
    /// Directory of the embedded store.
    #[arg(long, env = "FASTIM_DATA_DIR", default_value = "./fastim-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub gateway: GatewayFlags,
    #[command(flatten)]
    pub logic: LogicFlags,
}

/// Settings of the client-facing side (standalone and `fastim gateway`).
#[derive(Args, Debug, Clone)]
pub struct GatewayFlags {
    /// TCP listen address (FastIM frames); port 0 picks a free port.
    #[arg(long, env = "FASTIM_TCP", default_value = "127.0.0.1:7000")]
    pub tcp: SocketAddr,
    /// WebSocket listen address.
    #[arg(long, env = "FASTIM_WS", default_value = "127.0.0.1:7001")]
    pub ws: SocketAddr,
    /// Time a new connection has to log in, in ms.
    #[arg(long, env = "FASTIM_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,
    /// Largest frame body in bytes.
    #[arg(long, env = "FASTIM_MAX_FRAME_BODY", default_value_t = 65_536)]
    pub max_frame_body: usize,
    /// Frames per second one connection may send (sustained).
    #[arg(long, env = "FASTIM_FRAMES_PER_SEC", default_value_t = 200)]
    pub frames_per_sec: u32,
    /// Burst of frames above the sustained rate.
    #[arg(long, env = "FASTIM_FRAME_BURST", default_value_t = 400)]
    pub frame_burst: u32,
    /// Pushes queued per connection before it is closed as a slow reader.
    #[arg(long, env = "FASTIM_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Time before an unacknowledged push is resent, in ms.
    #[arg(long, env = "FASTIM_RETRANSMIT_MS", default_value_t = 5_000)]
    pub retransmit_ms: u64,
    /// Most concurrent connections.
    #[arg(long, env = "FASTIM_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Connections per second asked to reconnect while shutting down.
    #[arg(long, env = "FASTIM_DRAIN_RATE", default_value_t = 500)]
    pub drain_rate: u32,
    /// Longest drain in seconds; the clients still connected then are closed.
    #[arg(long, env = "FASTIM_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// TLS certificate chain (PEM): with --tls-key, both listeners require TLS
    /// (frames inside TLS on --tcp, wss:// on --ws).
    #[arg(long, env = "FASTIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "FASTIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Settings of logic (standalone and `fastim logic`).
#[derive(Args, Debug, Clone)]
pub struct LogicFlags {
    /// Heartbeat interval told to clients, in ms; 3 missed intervals close a connection.
    #[arg(long, env = "FASTIM_HEARTBEAT_MS", default_value_t = 30_000)]
    pub heartbeat_ms: u64,
    /// Which older login a new one kicks: same-kind, single-device or never.
    #[arg(long, env = "FASTIM_KICK_POLICY", default_value = "same-kind")]
    pub kick_policy: String,
    /// argon2id memory cost in KiB for new password hashes.
    #[arg(long, env = "FASTIM_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations for new password hashes.
    #[arg(long, env = "FASTIM_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// Session token lifetime in seconds.
    #[arg(long, env = "FASTIM_SESSION_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_ttl_secs: u64,
    /// Groups with at least this many members are fanned out by each gateway to its own members.
    #[arg(long, env = "FASTIM_LARGE_GROUP_THRESHOLD", default_value_t = 500)]
    pub large_group_threshold: usize,
}

/// `fastim gateway`: client connections, in a cluster.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Unique id of this gateway (default: gateway-<hostname>-<pid>).
    #[arg(long, env = "FASTIM_ID")]
    pub id: Option<String>,
    /// Internal gRPC listen address (logic pushes here).
    #[arg(long, env = "FASTIM_GRPC", default_value = "127.0.0.1:7010")]
    pub grpc: SocketAddr,
    /// Internal address others use to reach this gateway (default: the bound --grpc address).
    #[arg(long, env = "FASTIM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Client-facing TCP address to publish for the LSB (default: the bound --tcp address).
    #[arg(long, env = "FASTIM_PUBLIC_TCP")]
    pub public_tcp: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "FASTIM_ETCD", default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "FASTIM_HTTP", default_value = "127.0.0.1:7080")]
    pub http: SocketAddr,
    /// Seconds between announcements of this gateway's devices to logic (route refresh).
    #[arg(long, env = "FASTIM_ROUTE_REFRESH_SECS", default_value_t = 20)]
    pub route_refresh_secs: u64,
    #[command(flatten)]
    pub gateway: GatewayFlags,
}

/// `fastim lsb`: which gateway a client should connect to.
#[derive(Args, Debug, Clone)]
pub struct LsbArgs {
    /// HTTP listen address: GET /v1/gateway (the least loaded), /v1/gateways (all), /healthz, /readyz.
    #[arg(long, env = "FASTIM_HTTP", default_value = "127.0.0.1:7070")]
    pub http: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "FASTIM_ETCD", default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Print the IMCluster CustomResourceDefinition (YAML).
    Crd,
    /// Run the operator: reconcile IMClusters into Deployments, Services, HPAs...
    ///
    /// Reaches the Kubernetes API through the in-cluster service account, or
    /// KUBECONFIG / ~/.kube/config outside a cluster.
    Run(OperatorRunArgs),
}

/// `fastim operator run`.
#[derive(Args, Debug, Clone)]
pub struct OperatorRunArgs {
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "FASTIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Watch IMClusters of this namespace only (default: all namespaces).
    #[arg(long, env = "FASTIM_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "FASTIM_LEASE_NAME", default_value = "fastim-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else the client's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This candidate's identity in the Lease (default: POD_NAME, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Act without leader election (a single operator process, e.g. run locally).
    #[arg(long)]
    pub no_leader_election: bool,
    /// A kubeconfig file to use instead of the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// `fastim idgen`: unique ids for the cluster.
#[derive(Args, Debug, Clone)]
pub struct IdgenArgs {
    /// Unique id of this allocator (default: idgen-<hostname>-<pid>).
    #[arg(long, env = "FASTIM_ID")]
    pub id: Option<String>,
    /// gRPC listen address of the IdAllocator service.
    #[arg(long, env = "FASTIM_GRPC", default_value = "127.0.0.1:7030")]
    pub grpc: SocketAddr,
    /// Address published in etcd (default: the bound --grpc address).
    #[arg(long, env = "FASTIM_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP address for /healthz and /readyz.
    #[arg(long, env = "FASTIM_HTTP", default_value = "127.0.0.1:7095")]
    pub http: SocketAddr,
    /// Ids per segment taken from etcd at a time.
    #[arg(long, env = "FASTIM_SEGMENT_SIZE", default_value_t = 1000)]
    pub segment_size: u64,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "FASTIM_ETCD", default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
}

/// `fastim logic`: accounts, chat and storage, in a cluster.
#[derive(Args, Debug, Clone)]
pub struct LogicArgs {
    /// Unique id of this logic node (default: logic-<hostname>-<pid>).
    #[arg(long, env = "FASTIM_ID")]
    pub id: Option<String>,
    /// Internal gRPC listen address (gateways call here).
    #[arg(long, env = "FASTIM_GRPC", default_value = "127.0.0.1:7020")]
    pub grpc: SocketAddr,
    /// Internal address gateways use to reach this node (default: the bound --grpc address).
    #[arg(long, env = "FASTIM_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "FASTIM_HTTP", default_value = "127.0.0.1:7090")]
    pub http: SocketAddr,
    /// PostgreSQL connection string (libpq style or postgres:// URL).
    #[arg(
        long,
        env = "FASTIM_DATABASE",
        default_value = "host=127.0.0.1 user=postgres dbname=fastim"
    )]
    pub database: String,
    /// PostgreSQL connections per logic node.
    #[arg(long, env = "FASTIM_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: usize,
    /// Redis URLs, comma-separated (several, or --redis-cluster, for Redis Cluster).
    #[arg(long, env = "FASTIM_REDIS", default_value = "redis://127.0.0.1:6379/")]
    pub redis: String,
    /// Treat --redis as a Redis Cluster.
    #[arg(long, env = "FASTIM_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Seconds a route lives without a refresh from its gateway.
    #[arg(long, env = "FASTIM_ROUTE_TTL_SECS", default_value_t = 90)]
    pub route_ttl_secs: u64,
    /// Milliseconds between runs of the singleton jobs (session purge) on the elected leader.
    #[arg(long, env = "FASTIM_JOBS_INTERVAL_MS", default_value_t = 60_000)]
    pub jobs_interval_ms: u64,
    /// Lease TTL of the jobs leadership, in seconds: a dead leader is replaced after about this long.
    #[arg(long, env = "FASTIM_LEADER_TTL_SECS", default_value_t = 10)]
    pub leader_ttl_secs: u64,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "FASTIM_ETCD", default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
    #[command(flatten)]
    pub logic: LogicFlags,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Kind {
    Mobile,
    Desktop,
    Web,
    Bot,
}

impl Kind {
    pub fn proto(self) -> fastim_proto::client::DeviceKind {
        use fastim_proto::client::DeviceKind as K;
        match self {
            Kind::Mobile => K::Mobile,
            Kind::Desktop => K::Desktop,
            Kind::Web => K::Web,
            Kind::Bot => K::Bot,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address: host:port (TCP) or ws://host:port/ (WebSocket), tls://host:port or
    /// wss://host:port/ inside TLS; comma-separated to try several.
    #[arg(long, env = "FASTIM_SERVER", default_value = "127.0.0.1:7000")]
    pub server: String,
    /// A CA certificate (PEM) to trust for tls:// and wss:// servers, besides the system's.
    #[arg(long, env = "FASTIM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Ask this LSB (http://host:port) for the least loaded gateway first.
    #[arg(long, env = "FASTIM_LSB")]
    pub lsb: Option<String>,
    /// User name.
    #[arg(long, env = "FASTIM_USER")]
    pub user: String,
}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Recipient user name (1:1 chat).
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    pub to: Option<String>,
    /// Group id.
    #[arg(long)]
    pub group: Option<u64>,
    /// Device kind this command logs in as.
    #[arg(long, value_enum, default_value = "bot")]
    pub device_kind: Kind,
    /// The message text.
    pub text: String,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group; prints its id.
    Create(GroupCreateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GroupCreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Group title.
    #[arg(long)]
    pub name: String,
    /// Member user names, comma-separated (you are added).
    #[arg(long, value_delimiter = ',')]
    pub members: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RecvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device kind; a later login of the same kind kicks this one.
    #[arg(long, value_enum, default_value = "mobile")]
    pub device_kind: Kind,
    /// Device id (delivery cursors are kept per device); defaults to the kind.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long = "for")]
    pub for_secs: Option<f64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device kind.
    #[arg(long, value_enum, default_value = "desktop")]
    pub device_kind: Kind,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// 1:1 message throughput and latency.
    Chat(BenchChatArgs),
    /// Memory per idle authenticated connection.
    Idle(BenchIdleArgs),
    /// Group fan-out: deliveries per second to the members of one group.
    Group(BenchGroupArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchChatArgs {
    /// Server address (host:port); with two comma-separated gateways, senders use the
    /// first and receivers the second.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub server: String,
    /// Sender/receiver pairs (2 connections each).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Messages each sender keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Password of the bench users (they are registered when missing).
    #[arg(long, env = "FASTIM_PASSWORD", default_value = "bench-password")]
    pub password: String,
}

#[derive(Args, Debug, Clone)]
pub struct BenchGroupArgs {
    /// Gateway addresses (host:port), comma-separated: members are spread over them.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub server: String,
    /// Members of the group (each one connection).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Messages sent to the group.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Messages the sender keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Password of the bench users.
    #[arg(long, env = "FASTIM_PASSWORD", default_value = "bench-password")]
    pub password: String,
}

#[derive(Args, Debug, Clone)]
pub struct BenchIdleArgs {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub server: String,
    /// Authenticated connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Pid of the server, to read its resident memory from /proc.
    #[arg(long)]
    pub server_pid: u32,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 200)]
    pub parallel: usize,
    /// Password of the bench users.
    #[arg(long, env = "FASTIM_PASSWORD", default_value = "bench-password")]
    pub password: String,
}
