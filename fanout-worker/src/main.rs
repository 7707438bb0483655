//! Placeholder worker: checks its dependencies, serves a health probe, and waits. Capture and matching
//! arrive with the change-capture and end-to-end issues.

use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let host = std::env::var("HOST").unwrap_or_else(|_| "0.0.0.0".into());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8056);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addr": listener.local_addr()?.to_string()})
    );
    tracing::info!("fanout-worker started (no capture yet)");
    let serve = async {
        loop {
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { tokio::time::sleep(Duration::MAX).await } => {}
    }
    Ok(())
}
