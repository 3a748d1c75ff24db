//! The NATS JetStream peer: the same load shape as the gRPC benchmark, with NATS's own Rust
//! client (async-nats). Producers publish to a file-storage stream and wait for each publish
//! ack (the message is stored by the server); consumers pull from a durable consumer with
//! explicit acks. Also starts a `nats-server -js` on loopback when no URL is given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;

use super::client_threads::ClientThreads;
use super::load::{self, Consumer, Producer};
use super::procs::{self, Server};
use super::report::{Report, RunResult};
use super::{LoadArgs, OutArgs};

pub use super::NATS_STORAGE as STORAGE;

/// `rmq-gateway bench nats`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// NATS server URL. Without it `nats-server -js` is started on loopback.
    #[arg(long)]
    pub url: Option<String>,
    /// nats-server binary to start.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// Directory for the started server's JetStream store (removed afterwards).
    #[arg(long, default_value = "bench-results/.work")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub out: OutArgs,
}

/// One in-flight publish slot.
pub struct NatsProducer {
    js: jetstream::Context,
    subject: String,
    /// The client thread its connection lives on (`client_threads.rs`), as the gRPC load's.
    runtime: tokio::runtime::Handle,
}

impl Producer for NatsProducer {
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.runtime.clone())
    }

    async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        // JetStream (2.9) has no batch publish: publish them all, then wait for every ack.
        let mut acks = Vec::with_capacity(bodies.len());
        for b in bodies {
            acks.push(self.js.publish(self.subject.clone(), b).await?);
        }
        for a in acks {
            a.await?;
        }
        Ok(())
    }
}

/// A pull consumer bound to the shared durable consumer.
pub struct NatsConsumer {
    messages: consumer::pull::Stream,
    runtime: tokio::runtime::Handle,
}

impl Consumer for NatsConsumer {
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.runtime.clone())
    }

    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        match self.messages.next().await {
            Some(Ok(m)) => {
                m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                Ok(vec![m.message.payload])
            }
            Some(Err(e)) => Err(anyhow::anyhow!("pull: {e}")),
            None => anyhow::bail!("the consumer stream ended"),
        }
    }
}

/// A started `nats-server`.
pub struct SpawnedNats {
    pub server: Server,
    pub url: String,
    pub store_dir: PathBuf,
}

/// Starts `nats-server -js` on 127.0.0.1 with its store under `work_dir`.
pub fn spawn_server(bin: &str, work_dir: &Path, name: &str) -> anyhow::Result<SpawnedNats> {
    let bin = procs::which(bin).with_context(|| {
        format!("`{bin}` not found; install it with `apt-get install -y nats-server` (Debian) or pass --nats-server")
    })?;
    let store_dir = work_dir.join(name);
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir)?;
    let port = procs::free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(&store_dir);
    let server = Server::spawn(name, cmd, &work_dir.join(format!("{name}.log")))?;
    Ok(SpawnedNats { server, url: format!("nats://127.0.0.1:{port}"), store_dir })
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Creates a fresh file-storage stream `name` (subjects `name.>`), retrying while JetStream
/// starts up.
pub async fn create_stream(url: &str, name: &str, limit: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let attempt = async {
            let js = jetstream::new(connect(url).await?);
            let _ = js.delete_stream(name).await;
            js.create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![format!("{name}.>")],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create stream {name}: {e}"))?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Deletes a stream (frees its disk space).
pub async fn delete_stream(url: &str, name: &str) -> anyhow::Result<()> {
    let js = jetstream::new(connect(url).await?);
    js.delete_stream(name).await.map_err(|e| anyhow::anyhow!("delete stream {name}: {e}"))?;
    Ok(())
}

/// Runs the load against stream `name` (which must exist).
pub async fn run(
    label: &str,
    args: &LoadArgs,
    url: &str,
    name: &str,
    server_pid: Option<u32>,
) -> anyhow::Result<load::LoadOutcome> {
    let subject = format!("{name}.bench");
    // Dropped (its threads stopped) once the load is over.
    let mut threads = ClientThreads::per_cpu()?;
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let runtime = threads.next_thread();
        let u = url.to_string();
        let js = jetstream::new(ClientThreads::on(&runtime, async move { connect(&u).await }).await??);
        for _ in 0..args.concurrency {
            producers.push(NatsProducer { js: js.clone(), subject: subject.clone(), runtime: runtime.clone() });
        }
    }
    let mut consumers = Vec::new();
    if args.consumers > 0 {
        let js = jetstream::new(connect(url).await?);
        let s = js.get_stream(name).await.map_err(|e| anyhow::anyhow!("get stream {name}: {e}"))?;
        s.create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
        for _ in 0..args.consumers {
            let runtime = threads.next_thread();
            let (u, name) = (url.to_string(), name.to_string());
            let messages = ClientThreads::on(&runtime, async move {
                let js = jetstream::new(connect(&u).await?);
                let s = js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("get stream {name}: {e}"))?;
                let c: consumer::PullConsumer =
                    s.get_consumer("bench").await.map_err(|e| anyhow::anyhow!("get consumer: {e}"))?;
                c.messages().await.map_err(|e| anyhow::anyhow!("consumer messages: {e}"))
            })
            .await??;
            consumers.push(NatsConsumer { messages, runtime });
        }
    }
    load::drive(label, args, producers, consumers, server_pid.into_iter().collect::<Vec<u32>>().into()).await
}

/// `rmq-gateway bench nats`.
pub async fn main(args: NatsArgs) -> anyhow::Result<()> {
    args.load.validate()?;
    std::fs::create_dir_all(&args.work_dir)?;
    let mut spawned = None;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => {
            let s = spawn_server(&args.nats_server, &args.work_dir, "nats-e2e")?;
            let url = s.url.clone();
            spawned = Some(s);
            url
        }
    };
    let name = "BENCH";
    create_stream(&url, name, Duration::from_secs(20)).await?;
    let pid = spawned.as_ref().and_then(|s| s.server.pid());
    eprintln!("running nats-jetstream on {url}");
    let outcome = run("nats-jetstream", &args.load, &url, name, pid).await?;
    let mut report = Report::new(&args.work_dir);
    let mut result = RunResult::new("nats-jetstream", "single", STORAGE, &args.load, &outcome);
    if let Some(mut s) = spawned {
        s.server.check_alive()?;
        result.disk_bytes = Some(procs::dir_size(&s.store_dir));
        let _ = delete_stream(&url, name).await;
        s.server.stop(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&s.store_dir);
    }
    report.results.push(result);
    println!("{}", report.table());
    for p in report.write(&args.out.out, "nats")? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
