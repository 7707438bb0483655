use gateway::config::Config;
use gateway::server::Gateway;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match common_io::process::config_or_exit("gateway", Config::from_env()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Before the runtime: the trace exporter's blocking HTTP client must not be built inside one.
    let (_telemetry, metrics) = match common_io::telemetry::setup(&config.telemetry, "gateway", &[])
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        if config.secret_generated {
            tracing::warn!(
                "SECRET is not set: generated a random one for this process; tokens will not work across gateways or restarts"
            );
        }
        let gateway = match Gateway::build(config, metrics).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "gateway failed to start");
                return ExitCode::FAILURE;
            }
        };
        let addr = gateway.local_addr().expect("bound listener");
        let admin = gateway.admin_addr();
        // Machine-readable readiness line for launchers and tests (PORT=0 picks a free port).
        println!(
            "{}",
            serde_json::json!({
                "event": "listening",
                "addr": addr.to_string(),
                "admin_addr": admin.map(|a| a.to_string()),
            })
        );
        tracing::info!(%addr, admin = ?admin, gateway = %gateway.state.registrar.gateway_id, "gateway listening");
        gateway.run(common_io::process::stop_signal()).await;
        tracing::info!("gateway stopped");
        ExitCode::SUCCESS
    });
    // Do not wait for tasks still winding down (the drain already gave them their time).
    runtime.shutdown_background();
    code
}
