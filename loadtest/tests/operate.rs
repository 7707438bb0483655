//! Operating the cluster, with real processes: staged gateway drain on SIGTERM, workers handing over on
//! SIGTERM, Prometheus metrics, and OpenTelemetry traces arriving at an OTLP receiver.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::client::{Incoming, WsClient, http};
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::services::free_port;
use testkit::wait::{self, admin_client, env, eventually};

const WAIT: Duration = Duration::from_secs(20);

async fn client(addr: &str) -> WsClient {
    let mut ws = admin_client(addr, WAIT).await;
    let init = wait::subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"messages","uid":"m","query":{"fields":["id","text"],"limit":1}}),
        WAIT,
    )
    .await;
    assert_eq!(init["event"], "init", "{init}");
    ws
}

async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let r = http(addr, "GET", path, &[], None).await.ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// The value of one sample in Prometheus text (`series` is the name with its labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// SIGTERM on a gateway: readiness goes false at once while it keeps serving (events and new
/// connections), then every connection is closed with 1012 at moments spread over the window, and the
/// process exits cleanly before its hard-stop timeout.
#[tokio::test]
async fn gateway_drains_in_stages() {
    let admin_port = free_port();
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        gateway_env: env(&[
            ("REALTIME_ADMIN_PORT", &admin_port.to_string()),
            ("REALTIME_DRAIN_DELAY", "3s"),
            ("REALTIME_DRAIN_SPREAD", "2s"),
            ("REALTIME_SHUTDOWN_TIMEOUT", "15s"),
        ]),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = c.gateway_addr(0).to_owned();
    let admin = format!("127.0.0.1:{admin_port}");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(&gw).await);
    }
    assert_eq!(get(&admin, "/readyz").await.unwrap().0, 200);
    // The main port no longer serves metrics once an admin port is set.
    assert_eq!(get(&gw, "/metrics").await.unwrap().0, 404);

    c.gateways[0].signal(libc::SIGTERM);
    eventually(WAIT, "readiness to fail", || async {
        get(&admin, "/readyz").await.is_some_and(|(s, _)| s == 503)
    })
    .await;
    // Still serving during the delay: a new client gets in, and events reach everyone.
    clients.push(client(&gw).await);
    c.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO messages (text) VALUES ('during drain')")
        .await
        .unwrap();
    for ws in &mut clients {
        let ev = ws.recv_skip_ping(WAIT).await.unwrap();
        assert_eq!(
            (ev["event"].as_str(), ev["data"][0]["text"].as_str()),
            (Some("create"), Some("during drain")),
            "{ev}"
        );
    }
    let metrics = get(&admin, "/metrics").await.unwrap().1;
    assert_eq!(
        sample(&metrics, "realtime_gateway_draining"),
        Some(1.0),
        "{metrics}"
    );

    // Then closes with 1012, spread out (each client notes its own close time).
    let closed_at: Vec<Instant> =
        futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
            loop {
                match ws.next(WAIT).await.unwrap() {
                    Some(Incoming::Closed { code, .. }) => {
                        assert_eq!(code, Some(1012));
                        return Instant::now();
                    }
                    Some(Incoming::Json(v)) if v["type"] == "ping" => {}
                    other => panic!("expected a close, got {other:?}"),
                }
            }
        }))
        .await;
    let first = *closed_at.iter().min().unwrap();
    let last = *closed_at.iter().max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "21 closes spread over a 2 s window should not land within {:?}",
        last - first
    );
    let status = c.gateways[0].terminate(WAIT).await.unwrap();
    assert!(status.success(), "gateway exited with {status}");
}

/// SIGTERM on the worker that captures and owns shards: it releases the slot and its leases, so the
/// other worker takes both over long before the 30 s leases would expire, and no event is lost.
#[tokio::test]
async fn stopping_worker_hands_over_at_once() {
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 2,
        worker_env: env(&[
            ("REALTIME_SHARD_LEASE", "30s"),
            ("REALTIME_STATUS_INTERVAL", "200ms"),
        ]),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ws = client(c.gateway_addr(0)).await;
    let sql = c.sql().await.unwrap();
    let mut capturer = None;
    for (i, w) in c.workers.iter().enumerate() {
        let s = http(&w.addr, "GET", "/capture", &[], None).await.unwrap();
        if s.json().unwrap()["capturing"] == true {
            capturer = Some(i);
        }
    }
    let capturer = capturer.expect("one worker captures");
    let other = 1 - capturer;
    let other_addr = c.workers[other].addr.clone();
    sql.batch_execute("INSERT INTO messages (text) VALUES ('before')")
        .await
        .unwrap();

    let stopped = Instant::now();
    let status = c.workers[capturer].terminate(WAIT).await.unwrap();
    assert!(status.success(), "worker exited with {status}");
    eventually(
        Duration::from_secs(15),
        "the other worker to take over",
        || async {
            let cap = http(&other_addr, "GET", "/capture", &[], None).await;
            let fan = http(&other_addr, "GET", "/fanout", &[], None).await;
            matches!((cap, fan), (Ok(cap), Ok(fan))
            if cap.json().unwrap()["capturing"] == true
                && fan.json().unwrap()["shards"] == common::shard::DEFAULT_SHARDS)
        },
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "handover took {:?}; leases were released, not waited out",
        stopped.elapsed()
    );
    sql.batch_execute("INSERT INTO messages (text) VALUES ('after')")
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = ws.recv_skip_ping(WAIT).await.unwrap();
        got.push(ev["data"][0]["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["before", "after"]);
    let metrics = get(&other_addr, "/metrics").await.unwrap().1;
    assert_eq!(
        sample(&metrics, "realtime_capture_active"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "realtime_shards_owned"),
        Some(common::shard::DEFAULT_SHARDS as f64)
    );
}

/// Metrics on a gateway without an admin port are on the main port, and count what happened.
#[tokio::test]
async fn gateway_metrics_count_connections_messages_and_errors() {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = c.gateway_addr(0).to_owned();
    let mut ws = client(&gw).await;
    ws.send_text("not json").await.unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap()["error"]["code"],
        "INVALID_PAYLOAD"
    );
    let mut bad = WsClient::connect(&gw, "/websocket", &[])
        .await
        .unwrap()
        .open()
        .unwrap();
    bad.send_json(&json!({"type":"auth","access_token":"wrong"}))
        .await
        .unwrap();
    assert_eq!(bad.expect_close(WAIT).await.unwrap(), None);
    c.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO messages (text) VALUES ('counted')")
        .await
        .unwrap();
    ws.recv_skip_ping(WAIT).await.unwrap();

    let (status, m) = get(&gw, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let s = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("{series} missing:\n{m}"));
    assert_eq!(
        s(r#"realtime_gateway_connections{endpoint="websocket",auth="authenticated"}"#),
        1.0
    );
    assert_eq!(
        s(r#"realtime_gateway_connections_opened_total{endpoint="websocket"}"#),
        2.0
    );
    assert_eq!(
        s(
            r#"realtime_gateway_connections_closed_total{endpoint="websocket",reason="auth_failed"}"#
        ),
        1.0
    );
    assert_eq!(
        s(r#"realtime_gateway_auth_failures_total{method="access_token"}"#),
        1.0
    );
    assert_eq!(
        s(r#"realtime_gateway_protocol_errors_total{code="INVALID_PAYLOAD"}"#),
        1.0
    );
    assert_eq!(
        s(r#"realtime_gateway_protocol_errors_total{code="AUTH_FAILED"}"#),
        1.0
    );
    assert_eq!(s("realtime_gateway_subscriptions"), 1.0);
    assert_eq!(s("realtime_gateway_queries"), 1.0);
    assert_eq!(s("realtime_gateway_events_delivered_total"), 1.0);
    assert!(s(r#"realtime_gateway_messages_received_total{endpoint="websocket"}"#) >= 4.0);
    assert!(s("realtime_change_to_send_seconds_count") >= 1.0);
    assert!(s("process_resident_memory_bytes") > 1e6);
    assert!(m.contains(r#"realtime_build_info{version=""#), "{m}");

    // The worker counts a publish when Redis has answered it, which can be after the gateway already
    // delivered the event: wait for the counters rather than read them once.
    let worker = c.workers[0].addr.clone();
    eventually(WAIT, "the worker's publish counters", || {
        let worker = worker.clone();
        async move {
            let w = get(&worker, "/metrics").await.unwrap().1;
            sample(&w, "realtime_published_frames_total").is_some_and(|v| v >= 1.0)
                && sample(&w, "realtime_matching_duration_seconds_count").is_some_and(|v| v >= 1.0)
        }
    })
    .await;
    let w = get(&c.workers[0].addr, "/metrics").await.unwrap().1;
    let ws_ = |series: &str| sample(&w, series).unwrap_or_else(|| panic!("{series} missing:\n{w}"));
    assert_eq!(ws_("realtime_capture_active"), 1.0);
    assert!(ws_("realtime_capture_transactions_total") >= 1.0);
    assert!(ws_("realtime_published_frames_total") >= 1.0);
    assert!(ws_("realtime_matching_duration_seconds_count") >= 1.0);
    assert_eq!(get(&c.workers[0].addr, "/readyz").await.unwrap().0, 200);
}

/// A local OTLP/HTTP receiver (JSON encoding) that keeps every span it is sent.
struct Receiver {
    addr: String,
    spans: Arc<Mutex<Vec<Json>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let spans: Arc<Mutex<Vec<Json>>> = Arc::default();
        let store = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            if let Ok(v) = serde_json::from_slice::<Json>(&body) {
                                let mut s = store.lock();
                                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                                    let service = rs["resource"]["attributes"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .find(|a| a["key"] == "service.name")
                                        .map(|a| a["value"]["stringValue"].clone())
                                        .unwrap_or(Json::Null);
                                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                        for span in ss["spans"].as_array().into_iter().flatten() {
                                            let mut span = span.clone();
                                            span["service"] = service.clone();
                                            s.push(span);
                                        }
                                    }
                                }
                            }
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"{}",
                            ))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, spans }
    }

    fn named(&self, name: &str) -> Vec<Json> {
        self.spans
            .lock()
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    }
}

/// With an OTLP endpoint set, connections and subscriptions are spans, and one change is followed from
/// capture (worker) through matching (worker) to delivery (gateway) in a single trace.
#[tokio::test]
async fn traces_reach_an_otlp_receiver() {
    let rx = Receiver::start().await;
    let endpoint = format!("http://{}", rx.addr);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export within a fraction of a second instead of the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        gateway_env: env(&otel),
        worker_env: env(&otel),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ws = client(c.gateway_addr(0)).await;
    c.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO messages (text) VALUES ('traced')")
        .await
        .unwrap();
    ws.recv_skip_ping(WAIT).await.unwrap();
    ws.close(1000).await.unwrap();
    let _ = ws.expect_close(WAIT).await;

    eventually(
        WAIT,
        "connection, subscription and change spans",
        || async {
            [
                "ws.connection",
                "ws.subscription",
                "change.capture",
                "change.match",
                "change.deliver",
            ]
            .iter()
            .all(|n| !rx.named(n).is_empty())
        },
    )
    .await;
    let sub = &rx.named("ws.subscription")[0];
    let conn = &rx.named("ws.connection")[0];
    assert_eq!(
        sub["traceId"], conn["traceId"],
        "subscription inside its connection"
    );
    assert_eq!(sub["parentSpanId"], conn["spanId"]);
    assert_eq!(conn["service"], "realtime-gateway");
    // The three stages of the change share one trace and one (virtual) parent, across processes.
    let stages: Vec<Json> = ["change.capture", "change.match", "change.deliver"]
        .iter()
        .map(|n| rx.named(n).pop().unwrap())
        .collect();
    assert!(
        stages
            .windows(2)
            .all(|w| w[0]["traceId"] == w[1]["traceId"]
                && w[0]["parentSpanId"] == w[1]["parentSpanId"]),
        "{stages:#?}"
    );
    assert_eq!(stages[0]["service"], "realtime-fanout-worker");
    assert_eq!(stages[2]["service"], "realtime-gateway");
}
