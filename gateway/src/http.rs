//! HTTP routes: health probes, Directus's REST auth endpoints, and the WebSocket upgrade.
//!
//! Responses and errors use Directus's shapes (`{"data": ...}`, `{"errors":[{"message", "extensions":
//! {"code"}}]}`) so the SDK and scripts written for Directus work unchanged.

use crate::auth::{AuthError, ClientInfo};
use crate::conn::{self, Admission, ConnGuard};
use crate::state::AppState;
use crate::telemetry;
use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value as Json, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub type Body = Full<Bytes>;

/// Largest request body the auth endpoints read.
const MAX_BODY: usize = 64 * 1024;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Json) -> Response<Body> {
    respond(status, "application/json; charset=utf-8", v.to_string())
}

/// Directus's error body.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"errors": [{"message": message, "extensions": {"code": code}}]}),
    )
}

fn auth_error(e: &AuthError) -> Response<Body> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.code(), &e.to_string())
}

fn invalid_payload(reason: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "INVALID_PAYLOAD",
        &format!("Invalid payload. {reason}."),
    )
}

/// A bare HTTP status with an empty body (how Directus refuses WebSocket upgrades).
fn bare(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The value of the request cookie `name`, read as Directus's cookie-parser reads it: the first pair with
/// that name wins, name and value trimmed, surrounding double quotes dropped, and the value percent-decoded
/// (kept as sent when it does not decode to UTF-8).
fn request_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            Cookie::parse_encoded(pair)
                .or_else(|_| Cookie::parse(pair))
                .ok()
        })
        .find(|c| c.name() == name)
        .map(|c| c.value_trimmed().to_owned())
}

/// The refresh-token cookie `name` as Directus sets it (`Path=/`, `HttpOnly`, `SameSite=Lax`), living `max_age`
/// seconds; an empty value with `max_age` 0 clears it.
fn refresh_cookie<'a>(name: &'a str, value: &'a str, max_age: u64) -> Cookie<'a> {
    Cookie::build((name, value))
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age).unwrap_or(i64::MAX),
        ))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .build()
}

fn append_set_cookie(resp: &mut Response<Body>, c: &Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&c.encoded().to_string()) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Client address: the first `X-Forwarded-For` entry (Directus trusts proxies by default), else the peer.
fn client_info(req: &Request<Incoming>, peer: SocketAddr) -> ClientInfo {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let header = |name: &str, max: usize| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(max).collect::<String>())
    };
    ClientInfo {
        ip: Some(forwarded.unwrap_or(peer.ip())),
        user_agent: header("user-agent", 1024),
        origin: header("origin", 255),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Json, Response<Body>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_PAYLOAD",
                "Invalid payload. The request body is too large.",
            )
        })?
        .to_bytes();
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|_| invalid_payload("The request body is not valid JSON"))
}

pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let ws = &state.config.ws;
    if ws.enabled
        && ws.rest_enabled
        && path == ws.rest_path
        && fastwebsockets::upgrade::is_upgrade_request(&req)
    {
        return Ok(upgrade(state, peer, &mut req).await);
    }
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/server/health") => {
            let ok = state.pool.get().await.is_ok();
            let body = if ok {
                json!({"status": "ok"})
            } else {
                json!({"status": "error"})
            };
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(
                status,
                "application/health+json; charset=utf-8",
                body.to_string(),
            )
        }
        (&Method::GET, "/server/ping") => {
            respond(StatusCode::OK, "text/plain; charset=utf-8", "pong")
        }
        (&Method::GET, "/healthz" | "/readyz" | "/metrics")
            if path != "/metrics" || state.config.admin_port.is_none() =>
        {
            admin_route(&state, &path).await
        }
        (&Method::POST, "/auth/login") => login(&state, peer, req).await,
        (&Method::POST, "/auth/refresh") => refresh(&state, peer, req).await,
        (&Method::POST, "/auth/logout") => logout(&state, req).await,
        _ => error_response(
            StatusCode::NOT_FOUND,
            "ROUTE_NOT_FOUND",
            &format!("Route {path} doesn't exist."),
        ),
    };
    Ok(response)
}

/// The admin listener (`REALTIME_ADMIN_PORT`): probes and metrics only.
pub async fn handle_admin(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path();
    Ok(match (req.method(), path) {
        (&Method::GET, "/healthz" | "/readyz" | "/metrics") => admin_route(&state, path).await,
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found",
        ),
    })
}

/// `/healthz`: the process runs. `/readyz`: not draining, PostgreSQL and Redis answer. `/metrics`:
/// Prometheus text.
async fn admin_route(state: &AppState, path: &str) -> Response<Body> {
    let text = |status, body: &'static str| respond(status, "text/plain; charset=utf-8", body);
    match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else if state.pool.get().await.is_err() {
                text(StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
            } else if !state.registrar.ping().await {
                text(StatusCode::SERVICE_UNAVAILABLE, "redis unreachable")
            } else {
                text(StatusCode::OK, "ready")
            }
        }
        _ => match &state.metrics {
            Some(m) => {
                crate::telemetry::record_gauges(
                    &state.gauges,
                    crate::telemetry::GaugeReading {
                        queries: state.hub.query_count(),
                        subscriptions: state.hub.subscriber_count(),
                        draining: state.draining.load(std::sync::atomic::Ordering::Relaxed),
                        rights_pending: state.hub.rights.pending(),
                        rights_last_lsn: state.hub.rights.last_lsn(),
                    },
                );
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    m.render(),
                )
            }
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are disabled (METRICS_ENABLED=false)",
            ),
        },
    }
}

fn set_refresh_cookie(resp: &mut Response<Body>, state: &AppState, token: &str) {
    let ttl = state.config.refresh_token_ttl.as_secs();
    append_set_cookie(
        resp,
        &refresh_cookie(&state.config.refresh_token_cookie_name, token, ttl),
    );
}

fn token_body(mode: &str, tokens: &crate::auth::Tokens) -> Json {
    // Key order as Directus: expires, refresh_token, access_token.
    if mode == "cookie" {
        json!({"data": {"expires": tokens.expires_ms, "access_token": tokens.access_token}})
    } else {
        json!({"data": {"expires": tokens.expires_ms, "refresh_token": tokens.refresh_token, "access_token": tokens.access_token}})
    }
}

fn mode_of(body: &Json, default: &str) -> Result<String, Box<Response<Body>>> {
    match body.get("mode") {
        None | Some(Json::Null) => Ok(default.to_owned()),
        Some(Json::String(m)) if m == "json" || m == "cookie" => Ok(m.clone()),
        Some(Json::String(m)) if m == "session" => Err(Box::new(invalid_payload(
            "\"mode\" session is not supported by this server; use json or cookie",
        ))),
        Some(_) => Err(Box::new(invalid_payload(
            "\"mode\" must be one of [cookie, json, session]",
        ))),
    }
}

async fn login(state: &AppState, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let client = client_info(&req, peer);
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mode = match mode_of(&body, "json") {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        tokio::time::sleep(state.config.login_stall).await;
        let reason = if body.get("email").is_none() {
            "\"email\" is required"
        } else {
            "\"password\" is required"
        };
        return invalid_payload(reason);
    };
    if !common::protocol::is_valid_email(email) {
        tokio::time::sleep(state.config.login_stall).await;
        return invalid_payload("\"email\" must be a valid email");
    }
    match state.auth.login(email, password, &client).await {
        Ok(tokens) => {
            let mut resp = json_response(StatusCode::OK, &token_body(&mode, &tokens));
            if mode == "cookie" {
                set_refresh_cookie(&mut resp, state, &tokens.refresh_token);
            }
            resp
        }
        Err(e) => {
            telemetry::auth_failure("rest_login");
            auth_error(&e)
        }
    }
}

async fn refresh(state: &AppState, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let client = client_info(&req, peer);
    let from_cookie = request_cookie(req.headers(), &state.config.refresh_token_cookie_name);
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let default_mode = if body.get("refresh_token").is_some() {
        "json"
    } else {
        "cookie"
    };
    let mode = match mode_of(&body, default_mode) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let token = if mode == "json" {
        body["refresh_token"].as_str().map(str::to_owned)
    } else {
        from_cookie
    };
    let Some(token) = token else {
        return invalid_payload("The refresh token is required in either the payload or cookie");
    };
    match state.auth.refresh(&token, &client).await {
        Ok(tokens) => {
            let mut resp = json_response(StatusCode::OK, &token_body(&mode, &tokens));
            if mode == "cookie" {
                set_refresh_cookie(&mut resp, state, &tokens.refresh_token);
            }
            resp
        }
        Err(e) => auth_error(&e),
    }
}

async fn logout(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let from_cookie = request_cookie(req.headers(), &state.config.refresh_token_cookie_name);
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let token = body["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .or(from_cookie);
    let Some(token) = token else {
        return invalid_payload("The refresh token is required in either the payload or cookie");
    };
    match state.auth.logout(&token).await {
        Ok(()) => {
            let mut resp = bare(StatusCode::NO_CONTENT);
            append_set_cookie(
                &mut resp,
                &refresh_cookie(&state.config.refresh_token_cookie_name, "", 0),
            );
            resp
        }
        Err(e) => auth_error(&e),
    }
}

/// The `/websocket` upgrade: connection limit (403), token from the URL or session cookie in any mode or
/// required in strict mode (401 when missing or invalid), then hand the raw socket to [`conn::serve`].
async fn upgrade(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: &mut Request<Incoming>,
) -> Response<Body> {
    // While draining the gateway still accepts (load balancers take a while to notice readiness);
    // once connections are being closed, new ones are turned away.
    if *state.shutdown.borrow() {
        telemetry::upgrade_rejected("draining");
        return bare(StatusCode::SERVICE_UNAVAILABLE);
    }
    if let Some(limit) = state.config.ws.rest_conn_limit
        && state.rest_connections.load(Ordering::Relaxed) >= limit
    {
        telemetry::upgrade_rejected("conn_limit");
        return bare(StatusCode::FORBIDDEN);
    }
    let client = client_info(req, peer);
    let url_token = query_param(req, "access_token");
    let cookie_token = request_cookie(req.headers(), &state.config.session_cookie_name);
    let token = if state.config.ws.rest_auth == crate::config::AuthMode::Strict
        || url_token.is_some()
        || cookie_token.is_some()
    {
        let Some(token) = url_token.or(cookie_token) else {
            telemetry::upgrade_rejected("unauthorized");
            return bare(StatusCode::UNAUTHORIZED);
        };
        match state.auth.verify_access_token(&token, client.ip).await {
            Ok(auth) if auth.accountability.user.is_some() => Some(auth),
            Ok(_)
            | Err(
                AuthError::InvalidCredentials
                | AuthError::InvalidToken
                | AuthError::TokenExpired
                | AuthError::UserSuspended
                | AuthError::Revoked,
            ) => {
                telemetry::auth_failure("upgrade");
                telemetry::upgrade_rejected("unauthorized");
                return bare(StatusCode::UNAUTHORIZED);
            }
            Err(AuthError::Unavailable(_)) => {
                telemetry::upgrade_rejected("unavailable");
                return bare(StatusCode::SERVICE_UNAVAILABLE);
            }
        }
    } else {
        None
    };
    let public = match state.public_accountability(client.ip).await {
        Ok(p) => p,
        Err(_) => {
            telemetry::upgrade_rejected("unavailable");
            return bare(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(pair) => pair,
        Err(_) => return bare(StatusCode::BAD_REQUEST),
    };
    state.rest_connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnGuard(state.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let upgraded = ws.into_inner().into_inner();
        let parts = match upgraded.downcast::<hyper_util::rt::TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                return;
            }
        };
        // Copy out what hyper read past the request and let its read buffer go now: kept in this
        // future, it would hold hyper's whole buffer (8 KiB and more) for the connection's lifetime.
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        let leftover = read_buf.to_vec();
        drop(read_buf);
        conn::serve(
            state,
            io.into_inner(),
            leftover,
            Admission {
                token,
                public,
                client,
            },
        )
        .await;
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn request_cookies_as_cookie_parser_reads_them() {
        let h = headers(&[
            "a=1; directus_refresh_token=abc-_9; b=2",
            "directus_refresh_token=second",
        ]);
        assert_eq!(
            request_cookie(&h, "directus_refresh_token").as_deref(),
            Some("abc-_9")
        );
        assert_eq!(request_cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(request_cookie(&h, "missing"), None);
        // Trimmed, unquoted, percent-decoded; undecodable values are kept as sent.
        let h = headers(&[" x = \"q v\" ;y=a%20b%3D;z=%ff%zz;novalue;=empty"]);
        assert_eq!(request_cookie(&h, "x").as_deref(), Some("q v"));
        assert_eq!(request_cookie(&h, "y").as_deref(), Some("a b="));
        assert_eq!(request_cookie(&h, "z").as_deref(), Some("%ff%zz"));
        assert_eq!(request_cookie(&h, "novalue"), None);
        assert_eq!(request_cookie(&h, ""), None);
        // A later header is read when the earlier ones lack the cookie.
        let h = headers(&["a=1", "t=tok"]);
        assert_eq!(request_cookie(&h, "t").as_deref(), Some("tok"));
    }

    #[test]
    fn refresh_cookie_attributes() {
        let set = refresh_cookie("directus_refresh_token", "abc-_9", 604_800);
        assert_eq!(
            set.encoded().to_string(),
            "directus_refresh_token=abc-_9; HttpOnly; SameSite=Lax; Path=/; Max-Age=604800"
        );
        let clear = refresh_cookie("directus_refresh_token", "", 0);
        assert_eq!(
            clear.encoded().to_string(),
            "directus_refresh_token=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
