use fanout_worker::config::{LogFormat, WorkerConfig};
use std::process::ExitCode;

fn init_logging(cfg: &WorkerConfig) {
    // The replication client logs its own termination at error level; the
    // capture loop already reports (and retries) that failure with context,
    // so the duplicate line is silenced unless the operator asks for it.
    let mut directives = cfg.log_level.clone();
    if !directives.contains("pgwire_replication") {
        directives.push_str(",pgwire_replication=off");
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match WorkerConfig::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("fanout-worker: invalid configuration:");
            for e in errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let worker = match fanout_worker::server::Worker::build(config).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fanout-worker failed to start");
            return ExitCode::FAILURE;
        }
    };
    let addr = worker.local_addr().expect("bound listener");
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addr": addr.to_string()})
    );
    tracing::info!(%addr, worker = %worker.config.worker_id, "fanout-worker started");
    worker.run(stop_signal()).await;
    tracing::info!("fanout-worker stopped");
    ExitCode::SUCCESS
}
