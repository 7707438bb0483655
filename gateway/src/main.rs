use gateway::config::{Config, LogFormat};
use gateway::server::Gateway;
use std::process::ExitCode;
use std::time::Duration;

fn init_logging(cfg: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| "info".into());
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
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("gateway: invalid configuration:");
            for e in errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    if config.secret_generated {
        tracing::warn!(
            "SECRET is not set: generated a random one for this process; tokens will not work across gateways or restarts"
        );
    }
    let gateway = match Gateway::build(config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed to start");
            return ExitCode::FAILURE;
        }
    };
    let addr = gateway.local_addr().expect("bound listener");
    // Machine-readable readiness line for launchers and tests (PORT=0 picks a free port).
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addr": addr.to_string()})
    );
    tracing::info!(%addr, "gateway listening");
    gateway.run(stop_signal(), Duration::from_secs(10)).await;
    tracing::info!("gateway stopped");
    ExitCode::SUCCESS
}
