//! `loadtest`: the local-cluster launcher, the load-test harness (`run`) and its client agents.

use anyhow::Result;
use clap::{Parser, Subcommand};
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN, Cluster, ClusterOptions};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Local cluster launcher and load-test harness for the realtime cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (PostgreSQL, Redis, gateways, workers) with demo data, until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Port of the first gateway.
        #[arg(long, default_value_t = 8055)]
        port: u16,
    },
    /// Benchmark change capture: pgbench → PostgreSQL → fanout-worker → Redis stream.
    CaptureBench(loadtest::capture_bench::CaptureBenchArgs),
    /// Benchmark rights changes: permission edit commit → the touched subscriptions follow it.
    RightsBench(loadtest::rights_bench::RightsBenchArgs),
    /// Benchmark following related rows: one author's update → the update of every post showing it.
    FollowBench(loadtest::follow_bench::FollowBenchArgs),
    /// Run a load-test scenario against a cluster (or Directus) over the public protocol; writes
    /// report.json and report.html. Exits non-zero when the run fails its correctness checks.
    Run(Box<loadtest::scenario::RunArgs>),
    /// Internal: a client process of `run` (spec and commands on stdin, events on stdout).
    #[command(hide = true)]
    Agent,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            gateways,
            workers,
            port,
        } => up(gateways, workers, port).await,
        Command::Run(args) => {
            let cfg = loadtest::scenario::Config::resolve(&args)?;
            let report = loadtest::harness::run(cfg.clone()).await?;
            print!("{}", report.summary());
            println!(
                "report: {}/report.json, {}/report.html",
                cfg.out.display(),
                cfg.out.display()
            );
            if !report.passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Agent => {
            // Exit at once: the stdin reader sits in a blocking read that would hold the runtime open
            // until the harness closes the pipe.
            let r = loadtest::agent::run_stdio().await;
            if let Err(e) = &r {
                eprintln!("loadtest agent: {e:#}");
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
        Command::RightsBench(args) => {
            let json_path = args.json.clone();
            let report = loadtest::rights_bench::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if let Some(p) = json_path {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
        Command::FollowBench(args) => {
            let json_path = args.json.clone();
            let report = loadtest::follow_bench::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if let Some(p) = json_path {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
        Command::CaptureBench(args) => {
            let json_path = args.json.clone();
            let report = loadtest::capture_bench::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if let Some(p) = json_path {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}

async fn up(gateways: usize, workers: usize, port: u16) -> Result<()> {
    eprintln!("starting PostgreSQL, Redis, {gateways} gateway(s) and {workers} worker(s)...");
    let cluster = Cluster::start(ClusterOptions {
        gateways,
        workers,
        first_gateway_port: port,
        demo_schema: true,
        ..Default::default()
    })
    .await?;
    let addr = cluster.gateway_addr(0).to_owned();
    println!();
    println!("Realtime cluster is up.");
    println!("  WebSocket:   ws://{addr}/websocket");
    for (i, g) in cluster.gateways.iter().enumerate().skip(1) {
        println!("  gateway {i}:   ws://{}/websocket", g.addr);
    }
    println!(
        "  PostgreSQL:  {}  (psql \"{}\")",
        cluster.postgres.url(&cluster.database),
        cluster.postgres.url(&cluster.database)
    );
    println!("  Redis:       {}", cluster.redis.url());
    println!("  Admin:       {ADMIN_EMAIL} / {ADMIN_PASSWORD}   (static token: {ADMIN_TOKEN})");
    println!();
    println!("Try it (Node 18+, in another terminal):");
    println!(
        r#"  node --experimental-websocket -e 'const ws=new WebSocket("ws://{addr}/websocket");ws.onopen=()=>{{ws.send(JSON.stringify({{type:"auth",access_token:"{ADMIN_TOKEN}"}}));ws.send(JSON.stringify({{type:"subscribe",collection:"articles",uid:"a",query:{{fields:["id","title","status"]}}}}))}};ws.onmessage=m=>console.log(m.data)'"#
    );
    println!("and change data with SQL:");
    println!(
        "  psql \"{}\" -c \"INSERT INTO articles (title, status) VALUES ('Live!', 'published')\"",
        cluster.postgres.url(&cluster.database)
    );
    println!();
    println!("Press Ctrl-C to stop; all data is removed on exit.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("stopping...");
    drop(cluster);
    Ok(())
}
