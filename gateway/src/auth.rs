//! Authentication and read permissions, compatible with Directus 11.
//!
//! - Tokens: HS256 JWTs signed with `SECRET`, `iss=directus`, claims `id, role, app_access, admin_access`
//!   (a token from either server works on the other); static tokens from `directus_users.token`; refresh
//!   tokens are 64-character nanoids in `directus_sessions`, rotated on every refresh.
//! - Passwords: argon2 PHC strings (Directus's defaults: argon2id, m=64 MiB, t=3, p=4). Hashing is slow and
//!   memory-hungry on purpose, so it runs on blocking threads behind a semaphore.
//! - Accountability: users and roles (a role tree) → `directus_access` → `directus_policies`; admin and app
//!   access are recomputed from the database, never taken from claims. A user without a role gets the public
//!   policies plus their own.
//! - Read permissions per collection: the `read` rows of the caller's policies, cached briefly.

use common::normalize::{Access, ReadRule};
use deadpool_postgres::Pool;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Who is on the other end, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accountability {
    pub user: Option<String>,
    pub role: Option<String>,
    /// Own role and its ancestors.
    pub roles: Vec<String>,
    pub admin: bool,
    pub app: bool,
    /// Policies in effect (already filtered by `ip_access`), sorted.
    pub policies: Vec<String>,
    /// Every policy the access rows attach, before the `ip_access` filter, sorted: a change to any of
    /// them may change this identity (`crate::rights`).
    pub considered: Vec<String>,
    pub ip: Option<IpAddr>,
}

impl Accountability {
    pub fn is_public(&self) -> bool {
        self.user.is_none()
    }
}

/// An authenticated identity with its token expiry (seconds since the epoch; `None` = never).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub accountability: Arc<Accountability>,
    pub expires_at: Option<i64>,
    /// The new refresh token, for email/password and refresh-token logins.
    pub refresh_token: Option<String>,
    /// How it was proven, to check again when the user's row changes.
    pub proof: Proof,
}

/// What a connection's identity rests on, checked again by [`AuthService::recheck`] when a rights
/// change touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// No credentials: the public policies.
    Public,
    /// A signed access token; `session` is its session claim (session-mode login), or the session a
    /// WebSocket `auth` with credentials or a refresh token opened, which must still exist in
    /// `directus_sessions`. (A refresh made elsewhere with that session's token rotates it: the socket
    /// then ends at the next check of its user, as its access token would at expiry.)
    Jwt { session: Option<String> },
    /// A static token (`directus_users.token`), kept as a hash.
    StaticToken(u128),
}

fn token_hash(token: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(token.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Invalid user credentials.")]
    InvalidCredentials,
    #[error("Invalid token.")]
    InvalidToken,
    #[error("Token expired.")]
    TokenExpired,
    #[error("User suspended.")]
    UserSuspended,
    /// The user was deleted, or the token or session the connection used is gone.
    #[error("Invalid user credentials.")]
    Revoked,
    #[error("Service unavailable: {0}")]
    Unavailable(String),
}

impl common::error::Classify for AuthError {
    fn fault(&self) -> common::error::Fault {
        match self {
            AuthError::Unavailable(_) => common::error::Fault::Dependency,
            _ => common::error::Fault::Client,
        }
    }
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "INVALID_CREDENTIALS",
            AuthError::InvalidToken => "INVALID_TOKEN",
            AuthError::TokenExpired => "TOKEN_EXPIRED",
            AuthError::UserSuspended => "USER_SUSPENDED",
            AuthError::Revoked => "INVALID_CREDENTIALS",
            AuthError::Unavailable(_) => "SERVICE_UNAVAILABLE",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::InvalidToken => 403,
            AuthError::Unavailable(_) => 503,
            _ => 401,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> AuthError {
    tracing::warn!(error = %e, "auth: database error");
    AuthError::Unavailable("the database is not reachable".into())
}

const NANOID_ALPHABET: &[u8; 64] =
    b"useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";

/// A random url-safe token like nanoid.
pub fn random_token(len: usize) -> String {
    (0..len)
        .map(|_| NANOID_ALPHABET[rand::random::<u8>() as usize & 63] as char)
        .collect()
}

/// argon2id with Directus's (node-argon2's) defaults.
fn argon2() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(65_536, 3, 4, Some(32)).expect("valid argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Each argon2 call allocates 64 MiB: at most this many run at once, the rest queue.
static HASH_SLOTS: Semaphore = Semaphore::const_new(2);

pub async fn hash_password(password: String) -> anyhow::Result<String> {
    let _slot = HASH_SLOTS.acquire().await?;
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordHasher;
        let salt: [u8; 16] = rand::random();
        let hash = argon2()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(hash.to_string())
    })
    .await?
}

/// Verify against a PHC string; parameters come from the string, so any Directus hash verifies.
pub async fn verify_password(hash: String, password: String) -> bool {
    let Ok(_slot) = HASH_SLOTS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        let Ok(parsed) = argon2::PasswordHash::new(&hash) else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

use common_io::clock::unix_secs as now_secs;

/// The claims Directus puts in an access token. `role` is always present (possibly null): Directus rejects
/// tokens without it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    role: Option<String>,
    app_access: bool,
    admin_access: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    iat: i64,
    exp: i64,
    iss: String,
}

/// The payload of a JWT without verifying it (Directus's `isDirectusJWT` and `getExpiresAtForToken`):
/// three dot-separated parts whose middle one is base64url JSON (trailing `=` padding tolerated). The header
/// and signature are not looked at.
fn peek_payload(token: &str) -> Option<Json> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        // jsonwebtoken splits from the right and would read the second-to-last part of a longer string.
        return None;
    }
    let unpadded = p.trim_end_matches('=');
    if unpadded.len() == p.len() {
        jsonwebtoken::dangerous::insecure_decode_claims(token).ok()
    } else {
        jsonwebtoken::dangerous::insecure_decode_claims(format!("{h}.{unpadded}.{s}")).ok()
    }
}

pub fn is_directus_jwt(token: &str) -> bool {
    peek_payload(token).is_some_and(|p| p["iss"] == "directus")
}

/// Tokens returned by a login or refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Access token lifetime in milliseconds (Directus's `expires`).
    pub expires_ms: u64,
    pub expires_at: i64,
    pub user: String,
}

/// Where a request came from (recorded on sessions, used for `ip_access`).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
}

/// How long cached read permissions are trusted.
const PERMISSION_TTL: Duration = Duration::from_secs(5);
/// Cap on cached (policies, collection) entries; the cache is cleared when it is exceeded.
const PERMISSION_CACHE_MAX: usize = 10_000;

/// How long a computed identity (roles, policies, admin/app access) is reused for further
/// authentications of the same user from the same address. Thousands of connections of one user then
/// share one `Accountability` (memory per connection) and cost one set of queries, not one each; a
/// role or policy change reaches new authentications within this time, as permission changes do.
const IDENTITY_TTL: Duration = Duration::from_secs(5);

/// (user, role, client address) → identity, with when it was computed and the rights epoch then.
type IdentityCache =
    HashMap<(Option<String>, Option<String>, Option<IpAddr>), (Instant, u64, Arc<Accountability>)>;

/// What [`AuthService::recheck`] reads of a user.
#[derive(Debug, Clone)]
struct UserRow {
    status: String,
    role: Option<String>,
    /// Hash of the static token, if any.
    token: Option<u128>,
}

/// Read rules per (policy set, collection), with when they were fetched and the rights epoch then.
type PermissionCache = HashMap<(Vec<String>, String, bool), (Instant, u64, Vec<ReadRule>)>;

pub struct AuthService {
    pool: Pool,
    secret: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    stall: Duration,
    permissions: Mutex<PermissionCache>,
    identities: Mutex<IdentityCache>,
    /// User rows for re-checks, by user id, with the rights epoch they were read in.
    users: Mutex<HashMap<String, (u64, Option<UserRow>)>>,
    /// Bumped by every committed rights change (`crate::rights`): cached entries from before it are
    /// not used.
    epoch: Arc<crate::rights::Epoch>,
}

/// What authentication needs from the configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `SECRET`: signs and verifies access tokens.
    pub secret: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// `LOGIN_STALL_TIME`: the least time a login attempt takes.
    pub stall: Duration,
}

impl AuthService {
    pub fn new(
        pool: Pool,
        settings: AuthSettings,
        epoch: Arc<crate::rights::Epoch>,
    ) -> AuthService {
        AuthService {
            epoch,
            pool,
            secret: settings.secret,
            access_ttl: settings.access_ttl,
            refresh_ttl: settings.refresh_ttl,
            stall: settings.stall,
            permissions: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// [`AuthService::accountability`], reused for [`IDENTITY_TTL`].
    async fn shared_accountability(
        &self,
        user: Option<&str>,
        role: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<Arc<Accountability>, AuthError> {
        let key = (user.map(str::to_owned), role.map(str::to_owned), ip);
        let epoch = self.epoch.get();
        if let Some((at, e, acct)) = self.identities.lock().get(&key)
            && at.elapsed() < IDENTITY_TTL
            && *e == epoch
        {
            return Ok(acct.clone());
        }
        let acct = Arc::new(self.accountability(user, role, ip).await?);
        let mut cache = self.identities.lock();
        if cache.len() >= PERMISSION_CACHE_MAX {
            cache.retain(|_, (at, e, _)| at.elapsed() < IDENTITY_TTL && *e == epoch);
            if cache.len() >= PERMISSION_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), epoch, acct.clone()));
        Ok(acct)
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    fn sign(
        &self,
        user: &str,
        role: Option<&str>,
        admin: bool,
        app: bool,
        session: Option<&str>,
        ttl: Duration,
    ) -> (String, i64) {
        let iat = now_secs();
        let exp = iat + ttl.as_secs().max(1) as i64;
        let claims = Claims {
            id: Some(user.to_owned()),
            role: role.map(str::to_owned),
            app_access: app,
            admin_access: admin,
            session: session.map(str::to_owned),
            iat,
            exp,
            iss: "directus".into(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("HS256 signing cannot fail");
        (token, exp)
    }

    /// Issue an access token (used by tests and the load generator to mint tokens like Directus does).
    pub fn issue_access_token(
        &self,
        user: &str,
        role: Option<&str>,
        admin: bool,
        app: bool,
        ttl: Duration,
    ) -> String {
        self.sign(user, role, admin, app, None, ttl).0
    }

    /// Email/password login (Directus's local provider). Failures are stalled to `LOGIN_STALL_TIME`, and so
    /// are successes, so timing does not reveal which emails exist.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<Tokens, AuthError> {
        let started = Instant::now();
        let result = self.login_inner(email, password, client).await;
        if !matches!(result, Err(AuthError::Unavailable(_)))
            && let Some(rest) = self.stall.checked_sub(started.elapsed())
        {
            tokio::time::sleep(rest).await;
        }
        result
    }

    async fn login_inner(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<Tokens, AuthError> {
        let db = self.pool.get().await.map_err(unavailable)?;
        let row = db
            .query_opt(
                "SELECT id::text, password, status, provider, role::text, tfa_secret FROM directus_users WHERE LOWER(email) = LOWER($1) LIMIT 1",
                &[&email],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Err(AuthError::InvalidCredentials);
        };
        let id: String = row.get(0);
        let hash: Option<String> = row.get(1);
        let status: String = row.get(2);
        let provider: String = row.get(3);
        let role: Option<String> = row.get(4);
        let tfa: Option<String> = row.get(5);
        if status != "active" || provider != "default" {
            return Err(AuthError::InvalidCredentials);
        }
        let Some(hash) = hash else {
            return Err(AuthError::InvalidCredentials);
        };
        if !verify_password(hash, password.to_owned()).await {
            return Err(AuthError::InvalidCredentials);
        }
        // No OTP can be given here (the WebSocket auth message has no field for it), so TFA users fail, as
        // they do on Directus's WebSocket.
        if tfa.is_some() {
            return Err(AuthError::InvalidCredentials);
        }
        drop(db);
        let acct = self
            .accountability(Some(&id), role.as_deref(), client.ip)
            .await?;
        let refresh = random_token(64);
        let db = self.pool.get().await.map_err(unavailable)?;
        db.execute(
            "INSERT INTO directus_sessions (token, \"user\", expires, ip, user_agent, origin) VALUES ($1, $2::text::uuid, now() + make_interval(secs => $3), $4, $5, $6)",
            &[&refresh, &id, &(self.refresh_ttl.as_secs_f64()), &client.ip.map(|i| i.to_string()), &client.user_agent, &client.origin],
        )
        .await
        .map_err(unavailable)?;
        let _ = db
            .execute("DELETE FROM directus_sessions WHERE expires < now()", &[])
            .await;
        let _ = db
            .execute(
                "UPDATE directus_users SET last_access = now() WHERE id = $1::text::uuid",
                &[&id],
            )
            .await;
        let (access, exp) = self.sign(
            &id,
            role.as_deref(),
            acct.admin,
            acct.app,
            None,
            self.access_ttl,
        );
        Ok(Tokens {
            access_token: access,
            refresh_token: refresh,
            expires_ms: self.access_ttl.as_millis() as u64,
            expires_at: exp,
            user: id,
        })
    }

    /// Exchange a refresh token for new tokens; the session row's token is rotated.
    pub async fn refresh(&self, token: &str, client: &ClientInfo) -> Result<Tokens, AuthError> {
        if token.is_empty() {
            return Err(AuthError::InvalidCredentials);
        }
        let db = self.pool.get().await.map_err(unavailable)?;
        let row = db
            .query_opt(
                "SELECT u.id::text, u.status, u.role::text FROM directus_sessions s JOIN directus_users u ON u.id = s.\"user\"
                 WHERE s.token = $1 AND s.expires >= now()",
                &[&token],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Err(AuthError::InvalidCredentials);
        };
        let id: String = row.get(0);
        let status: String = row.get(1);
        let role: Option<String> = row.get(2);
        if status != "active" {
            let _ = db
                .execute("DELETE FROM directus_sessions WHERE token = $1", &[&token])
                .await;
            tokio::time::sleep(self.stall).await;
            return Err(if status == "suspended" {
                AuthError::UserSuspended
            } else {
                AuthError::InvalidCredentials
            });
        }
        let fresh = random_token(64);
        let rotated = db
            .execute(
                "UPDATE directus_sessions SET token = $1, expires = now() + make_interval(secs => $2) WHERE token = $3 AND expires >= now()",
                &[&fresh, &(self.refresh_ttl.as_secs_f64()), &token],
            )
            .await
            .map_err(unavailable)?;
        if rotated != 1 {
            // Someone else rotated it first: the old token is spent.
            return Err(AuthError::InvalidCredentials);
        }
        let _ = db
            .execute(
                "UPDATE directus_users SET last_access = now() WHERE id = $1::text::uuid",
                &[&id],
            )
            .await;
        drop(db);
        let acct = self
            .accountability(Some(&id), role.as_deref(), client.ip)
            .await?;
        let (access, exp) = self.sign(
            &id,
            role.as_deref(),
            acct.admin,
            acct.app,
            None,
            self.access_ttl,
        );
        Ok(Tokens {
            access_token: access,
            refresh_token: fresh,
            expires_ms: self.access_ttl.as_millis() as u64,
            expires_at: exp,
            user: id,
        })
    }

    /// End a session. Unknown tokens are not an error (Directus answers 204 either way).
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        let db = self.pool.get().await.map_err(unavailable)?;
        db.execute("DELETE FROM directus_sessions WHERE token = $1", &[&token])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Verify an access token (Directus JWT or static token) and build the accountability.
    pub async fn verify_access_token(
        &self,
        token: &str,
        ip: Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        if is_directus_jwt(token) {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_issuer(&["directus"]);
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp", "iss"]);
            let data = jsonwebtoken::decode::<Json>(
                token,
                &DecodingKey::from_secret(self.secret.as_bytes()),
                &validation,
            )
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })?;
            let claims = data.claims;
            for key in ["role", "app_access", "admin_access"] {
                if claims.get(key).is_none() {
                    return Err(AuthError::InvalidToken);
                }
            }
            if claims.get("share").is_some_and(|s| !s.is_null()) {
                // Share tokens grant access through directus_shares, which this server does not model.
                return Err(AuthError::InvalidToken);
            }
            let user = claims["id"].as_str().map(str::to_owned);
            let role = claims["role"].as_str().map(str::to_owned);
            if let Some(session) = claims.get("session").and_then(Json::as_str) {
                let db = self.pool.get().await.map_err(unavailable)?;
                let ok = db
                    .query_opt(
                        "SELECT 1 FROM directus_sessions WHERE token = $1 AND \"user\" IS NOT DISTINCT FROM $2::text::uuid AND expires >= now()",
                        &[&session, &user],
                    )
                    .await
                    .map_err(unavailable)?
                    .is_some();
                if !ok {
                    return Err(AuthError::InvalidCredentials);
                }
            }
            let exp = claims["exp"].as_i64();
            let session = claims
                .get("session")
                .and_then(Json::as_str)
                .map(str::to_owned);
            let acct = self
                .shared_accountability(user.as_deref(), role.as_deref(), ip)
                .await?;
            return Ok(Authenticated {
                accountability: acct,
                expires_at: exp,
                refresh_token: None,
                proof: Proof::Jwt { session },
            });
        }
        let db = self.pool.get().await.map_err(unavailable)?;
        let row = db
            .query_opt("SELECT id::text, role::text FROM directus_users WHERE token = $1 AND status = 'active' LIMIT 1", &[&token])
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Err(AuthError::InvalidCredentials);
        };
        drop(db);
        let user: String = row.get(0);
        let role: Option<String> = row.get(1);
        let acct = self
            .shared_accountability(Some(&user), role.as_deref(), ip)
            .await?;
        Ok(Authenticated {
            accountability: acct,
            expires_at: None,
            refresh_token: None,
            proof: Proof::StaticToken(token_hash(token)),
        })
    }

    /// Log in with email/password or a refresh token and return the session's identity (WebSocket `auth`).
    pub async fn authenticate_login(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<Authenticated, AuthError> {
        let tokens = self.login(email, password, client).await?;
        let mut a = self
            .verify_access_token(&tokens.access_token, client.ip)
            .await?;
        // The connection rests on the session it just opened: a logout (the row deleted) ends it.
        a.proof = Proof::Jwt {
            session: Some(tokens.refresh_token.clone()),
        };
        a.refresh_token = Some(tokens.refresh_token);
        Ok(a)
    }

    pub async fn authenticate_refresh(
        &self,
        refresh: &str,
        client: &ClientInfo,
    ) -> Result<Authenticated, AuthError> {
        let tokens = self.refresh(refresh, client).await?;
        let mut a = self
            .verify_access_token(&tokens.access_token, client.ip)
            .await?;
        // The connection rests on the session it just opened: a logout (the row deleted) ends it.
        a.proof = Proof::Jwt {
            session: Some(tokens.refresh_token.clone()),
        };
        a.refresh_token = Some(tokens.refresh_token);
        Ok(a)
    }

    /// Check an identity again after a rights change touched it, from the database (no cache): the
    /// user must still exist and be active, its static token or session must still be there, and its
    /// role is read from the user's row (a role move applies at once, unlike Directus, whose sockets
    /// keep the token's role claim). The public identity is computed anew.
    pub async fn recheck(
        &self,
        acct: &Accountability,
        proof: &Proof,
    ) -> Result<Arc<Accountability>, AuthError> {
        let Some(user) = acct.user.as_deref() else {
            return self.shared_accountability(None, None, acct.ip).await;
        };
        let Some(UserRow {
            status,
            role,
            token,
        }) = self.user_row(user).await?
        else {
            return Err(AuthError::Revoked);
        };
        if status != "active" {
            return Err(if status == "suspended" {
                AuthError::UserSuspended
            } else {
                AuthError::Revoked
            });
        }
        match proof {
            Proof::StaticToken(hash) if token != Some(*hash) => {
                return Err(AuthError::Revoked);
            }
            Proof::Jwt {
                session: Some(session),
            } => {
                let db = self.pool.get().await.map_err(unavailable)?;
                let live = db
                    .query_opt(
                        "SELECT 1 FROM directus_sessions WHERE token = $1 AND expires >= now()",
                        &[session],
                    )
                    .await
                    .map_err(unavailable)?
                    .is_some();
                if !live {
                    return Err(AuthError::Revoked);
                }
            }
            _ => {}
        }
        self.shared_accountability(Some(user), role.as_deref(), acct.ip)
            .await
    }

    /// A user's status, role and static-token hash, cached until the next rights change (a rights
    /// change touching a thousand connections of one user reads the row once).
    async fn user_row(&self, user: &str) -> Result<Option<UserRow>, AuthError> {
        let epoch = self.epoch.get();
        if let Some((e, row)) = self.users.lock().get(user)
            && *e == epoch
        {
            return Ok(row.clone());
        }
        let db = self.pool.get().await.map_err(unavailable)?;
        let row = db
            .query_opt(
                "SELECT status, role::text, token FROM directus_users WHERE id = $1::text::uuid",
                &[&user],
            )
            .await
            .map_err(unavailable)?
            .map(|r| UserRow {
                status: r.get(0),
                role: r.get(1),
                token: r.get::<_, Option<String>>(2).as_deref().map(token_hash),
            });
        let mut cache = self.users.lock();
        if cache.len() >= PERMISSION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(user.to_owned(), (epoch, row.clone()));
        Ok(row)
    }

    /// The public role's accountability (no user).
    pub async fn public(&self, ip: Option<IpAddr>) -> Result<Accountability, AuthError> {
        self.accountability(None, None, ip).await
    }

    /// Roles tree, policies and global access for a user (or the public when `user` is `None`).
    pub async fn accountability(
        &self,
        user: Option<&str>,
        role: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<Accountability, AuthError> {
        let db = self.pool.get().await.map_err(unavailable)?;
        let roles: Vec<String> = match role {
            None => Vec::new(),
            Some(role) => db
                .query(
                    "WITH RECURSIVE tree(id, parent, depth) AS (
                         SELECT id, parent, 0 FROM directus_roles WHERE id = $1::text::uuid
                         UNION ALL
                         SELECT r.id, r.parent, t.depth + 1 FROM directus_roles r JOIN tree t ON r.id = t.parent WHERE t.depth < 64
                     ) SELECT id::text FROM tree ORDER BY depth DESC",
                    &[&role],
                )
                .await
                .map_err(unavailable)?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        let rows = db
            .query(
                "SELECT p.id::text, p.admin_access, p.app_access, p.ip_access, (a.role IS NULL AND a.\"user\" IS NULL) AS is_public
                 FROM directus_access a JOIN directus_policies p ON p.id = a.policy
                 WHERE a.role = ANY($1::text[]::uuid[])
                    OR ($2::text IS NOT NULL AND a.\"user\" = $2::text::uuid)
                    OR (cardinality($1::text[]) = 0 AND a.role IS NULL AND a.\"user\" IS NULL)",
                &[&roles, &user],
            )
            .await
            .map_err(unavailable)?;
        let mut acct = Accountability {
            user: user.map(str::to_owned),
            role: role.map(str::to_owned),
            roles,
            admin: false,
            app: false,
            policies: Vec::new(),
            considered: Vec::new(),
            ip,
        };
        for r in rows {
            let id: String = r.get(0);
            let admin: bool = r.get(1);
            let app: bool = r.get(2);
            let ip_access: Option<String> = r.get(3);
            let is_public: bool = r.get(4);
            if !acct.considered.contains(&id) {
                acct.considered.push(id.clone());
            }
            if let Some(list) = ip_access.as_deref().filter(|s| !s.trim().is_empty()) {
                match ip {
                    Some(ip) if ip_in_networks(ip, list) => {}
                    _ => continue,
                }
            }
            if !is_public {
                acct.admin |= admin;
                acct.app |= admin || app;
            }
            if !acct.policies.contains(&id) {
                acct.policies.push(id);
            }
        }
        acct.policies.sort();
        acct.considered.sort();
        Ok(acct)
    }

    /// What `acct` may read in `collection`.
    pub async fn read_access(
        &self,
        acct: &Accountability,
        collection: &str,
    ) -> Result<Access, AuthError> {
        if acct.admin {
            return Ok(Access::Admin);
        }
        let key = (acct.policies.clone(), collection.to_owned(), acct.app);
        let epoch = self.epoch.get();
        if let Some((at, e, rules)) = self.permissions.lock().get(&key)
            && at.elapsed() < PERMISSION_TTL
            && *e == epoch
        {
            return Ok(Access::Rules(rules.clone()));
        }
        let db = self.pool.get().await.map_err(unavailable)?;
        let rows = db
            .query(
                "SELECT permissions::text, fields FROM directus_permissions
                 WHERE action = 'read' AND collection = $1 AND policy = ANY($2::text[]::uuid[]) ORDER BY id",
                &[&collection, &acct.policies],
            )
            .await
            .map_err(unavailable)?;
        let mut rules: Vec<ReadRule> = rows
            .iter()
            .map(|r| {
                let filter: Option<String> = r.get(0);
                let fields: Option<String> = r.get(1);
                ReadRule {
                    filter: filter
                        .and_then(|f| serde_json::from_str::<Json>(&f).ok())
                        .filter(|j| !j.is_null()),
                    fields: match fields.as_deref().map(str::trim) {
                        Some("*") => None,
                        Some(csv) => Some(
                            csv.split(',')
                                .map(|f| f.trim().to_owned())
                                .filter(|f| !f.is_empty())
                                .collect(),
                        ),
                        None => Some(Vec::new()),
                    },
                }
            })
            .collect();
        // App access adds Directus's minimal permissions on some system collections (a user reads
        // its own notifications, its own user row, its roles).
        if acct.app {
            rules.extend(
                common::schema::app_minimal_read(collection)
                    .into_iter()
                    .map(|(filter, fields)| ReadRule {
                        filter: Some(filter)
                            .filter(|f| f.as_object().is_none_or(|o| !o.is_empty())),
                        fields: fields.map(|fs| fs.iter().map(|f| f.to_string()).collect()),
                    }),
            );
        }
        // No access is not cached: a grant committed just before a subscribe must not be refused
        // because its rights change has not reached this gateway yet. (Granted rules may be stale for
        // that long; the change then re-evaluates the subscription.)
        if !rules.is_empty() {
            let mut cache = self.permissions.lock();
            if cache.len() >= PERMISSION_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), epoch, rules.clone()));
        }
        Ok(Access::Rules(rules))
    }

    /// Values for `$CURRENT_USER.<field>` / `$CURRENT_ROLE.<field>` references (one level deep).
    pub async fn variable_lookups(
        &self,
        acct: &Accountability,
        refs: &[String],
        schema: &common::schema::Schema,
    ) -> Result<HashMap<String, Json>, AuthError> {
        let mut out = HashMap::new();
        for r in refs {
            let (table, id, field) = if let Some(f) = r.strip_prefix("$CURRENT_USER.") {
                ("directus_users", acct.user.clone(), f)
            } else if let Some(f) = r.strip_prefix("$CURRENT_ROLE.") {
                ("directus_roles", acct.role.clone(), f)
            } else {
                continue;
            };
            let column = schema
                .get(table)
                .and_then(|c| c.column(field).map(|col| (c, col)));
            let (Some(id), Some((coll, col))) = (id, column) else {
                out.insert(r.clone(), Json::Null);
                continue;
            };
            let db = self.pool.get().await.map_err(unavailable)?;
            let sql = format!(
                "SELECT {}::text FROM {} WHERE id = $1::text::uuid",
                common::sql::ident(&col.name),
                common::sql::table(coll)
            );
            let text: Option<String> = db
                .query_opt(&sql, &[&id])
                .await
                .map_err(unavailable)?
                .and_then(|row| row.get(0));
            let mut buf = Vec::new();
            common::value::write_json_value(
                &mut buf,
                &col.kind,
                Default::default(),
                text.as_deref(),
            );
            out.insert(
                r.clone(),
                serde_json::from_slice(&buf).unwrap_or(Json::Null),
            );
        }
        Ok(out)
    }
}

/// Is `ip` in the CSV list of addresses and CIDR networks? A plain address counts as a /32 or /128;
/// entries that parse as neither are ignored, and a network never contains an address of the other family.
pub fn ip_in_networks(ip: IpAddr, list: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .filter_map(|entry| match entry.split_once('/') {
            // std's parsers, as before: no leading-zero octets; the prefix is a decimal number.
            None => entry.parse::<IpAddr>().ok().map(IpNet::from),
            Some((addr, bits)) => IpNet::new(addr.parse().ok()?, bits.parse().ok()?).ok(),
        })
        .any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests;
