use fanout_worker::config::WorkerConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match common_io::process::config_or_exit("fanout-worker", WorkerConfig::from_env())
    {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The replication client logs its own termination at error level; the capture loop already
    // reports (and retries) that failure with context, so the duplicate line is silenced unless the
    // operator asks for it. Set up before the runtime: the trace exporter's blocking HTTP client must
    // not be built inside one.
    let (_telemetry, metrics) = match common_io::telemetry::setup(
        &config.telemetry,
        "fanout-worker",
        &["pgwire_replication=off"],
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fanout-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        let worker = match fanout_worker::server::Worker::build(config, metrics).await {
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
        worker.run(common_io::process::stop_signal()).await;
        tracing::info!("fanout-worker stopped");
        ExitCode::SUCCESS
    });
    runtime.shutdown_background();
    code
}
