//! A whole FastIM cluster on loopback: private etcd, Redis and PostgreSQL, and any
//! number of `fastim logic` and `fastim gateway` processes.

use crate::services::{Etcd, Postgres, Redis};
use crate::{CHEAP_HASHING, ServerProcess};

/// The backing services and the FastIM processes of one test cluster.
pub struct Cluster {
    /// etcd.
    pub etcd: Etcd,
    /// Redis.
    pub redis: Redis,
    /// PostgreSQL with a `fastim` database.
    pub postgres: Postgres,
    /// Logic nodes.
    pub logic: Vec<ServerProcess>,
    /// Gateways.
    pub gateways: Vec<ServerProcess>,
    extra_gateway_args: Vec<String>,
}

impl Cluster {
    /// Starts the services, `logic` logic nodes and `gateways` gateways.
    pub fn start(logic: usize, gateways: usize) -> Cluster {
        Cluster::start_with(logic, gateways, &[])
    }

    /// Like [`Cluster::start`] with extra flags for every gateway.
    pub fn start_with(logic: usize, gateways: usize, gateway_args: &[&str]) -> Cluster {
        let postgres = Postgres::start();
        postgres.create_database("fastim");
        let mut cluster = Cluster {
            etcd: Etcd::start(),
            redis: Redis::start(),
            postgres,
            logic: Vec::new(),
            gateways: Vec::new(),
            extra_gateway_args: gateway_args.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..logic {
            cluster.add_logic();
        }
        for _ in 0..gateways {
            cluster.add_gateway();
        }
        cluster
    }

    /// The arguments of a logic node of this cluster.
    pub fn logic_args(&self, id: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.into(),
            "--grpc".into(),
            "127.0.0.1:0".into(),
            "--database".into(),
            self.postgres.url("fastim"),
            "--redis".into(),
            self.redis.url(),
            "--etcd".into(),
            self.etcd.endpoint(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(CHEAP_HASHING.map(String::from));
        args
    }

    /// Starts one more logic node.
    pub fn add_logic(&mut self) -> &mut ServerProcess {
        self.add_logic_with(&[])
    }

    /// Starts one more logic node with extra flags.
    pub fn add_logic_with(&mut self, extra: &[&str]) -> &mut ServerProcess {
        let id = format!("logic-{}", self.logic.len());
        let mut args = self.logic_args(&id);
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = ServerProcess::start("logic", args);
        self.logic.push(process);
        self.logic.last_mut().expect("just pushed")
    }

    /// Starts one more gateway.
    pub fn add_gateway(&mut self) -> &mut ServerProcess {
        let id = format!("gateway-{}", self.gateways.len());
        let mut args: Vec<String> = vec!["--id".into(), id];
        args.extend(
            [
                "--tcp",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        args.extend(["--etcd".to_string(), self.etcd.endpoint()]);
        args.extend(self.extra_gateway_args.iter().cloned());
        self.gateways.push(ServerProcess::start("gateway", args));
        self.gateways.last_mut().expect("just pushed")
    }

    /// TCP address of gateway `i`.
    pub fn tcp(&self, i: usize) -> String {
        self.gateways[i].get("tcp")
    }
}
