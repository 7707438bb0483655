//! A TCP proxy standing in for a load balancer: each connection goes to the first backend that accepts.
//! Tests put it in front of several gateways, kill one, and watch clients reconnect to another.

use parking_lot::Mutex;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: String,
    backends: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(backends: Vec<String>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let backends = Arc::new(Mutex::new(backends));
        let list = backends.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let candidates = list.lock().clone();
                tokio::spawn(async move {
                    for b in candidates {
                        if let Ok(mut upstream) = TcpStream::connect(&b).await {
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            backends,
            task,
        })
    }

    pub fn set_backends(&self, backends: Vec<String>) {
        *self.backends.lock() = backends;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
