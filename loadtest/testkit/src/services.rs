//! Real PostgreSQL and Redis servers for tests and the local cluster.
//!
//! Each [`Postgres`] / [`Redis`] is a private server process on a free loopback port with its own data
//! directory under the system temp dir. They never touch the services on the standard ports. Dropping the
//! handle kills the process and removes the directory, also when a test panics; if the test process itself
//! is killed, the servers get SIGKILL from the kernel (`PR_SET_PDEATHSIG`).
//!
//! PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` user.
//! `initdb` runs once per machine into a cached template that later instances copy (an initdb costs a
//! second or two; a copy, a few milliseconds).

use anyhow::{Context, Result, bail};
use rustix::fs::FlockOperation;
use rustix::process::{self, Pid, Signal};
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready before the harness gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness probes (polling with a deadline, never a fixed sleep).
const POLL: Duration = Duration::from_millis(20);

/// A free TCP port on 127.0.0.1 (bound and released; callers retry if it was taken meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let path = base.join(format!(
                "{prefix}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            if fs::create_dir(&path).is_ok() {
                return Ok(TempDir(path));
            }
        }
        bail!("could not create a temp dir in {}", base.display())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Arrange for the child to die with us and to run as `as_user` (uid, gid) if given.
fn harden(cmd: &mut Command, as_user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = as_user {
        cmd.gid(gid).uid(uid);
    }
    // Own process group, so a Ctrl-C in the launcher's terminal reaches only the launcher, which then shuts
    // its children down in order.
    cmd.process_group(0);
    // SAFETY: `pre_exec` is unsafe because the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes one prctl(2) system call (rustix issues it directly: no
    // allocation, no locks). std runs it after switching uid/gid, which would clear the setting.
    unsafe {
        cmd.pre_exec(|| {
            let _ = process::set_parent_process_death_signal(Some(Signal::KILL));
            Ok(())
        });
    }
}

fn kill_and_wait(child: &mut Child, signal: Signal, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = process::kill_process(Pid::from_child(child), signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// uid/gid of `postgres` when we run as root, from `getent passwd` (which asks NSS, as getpwnam does).
fn postgres_user() -> Result<Option<(u32, u32)>> {
    if !process::geteuid().is_root() {
        return Ok(None);
    }
    let out = Command::new("getent")
        .args(["passwd", "postgres"])
        .stderr(Stdio::null())
        .output()
        .context("run getent to look up the 'postgres' user")?;
    // name:password:uid:gid:gecos:home:shell
    let entry = String::from_utf8_lossy(&out.stdout);
    let mut fields = entry.trim_end().split(':').skip(2);
    let uid = fields.next().and_then(|v| v.parse().ok());
    let gid = fields.next().and_then(|v| v.parse().ok());
    match (out.status.success(), uid, gid) {
        (true, Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        _ => bail!(
            "running as root, but there is no 'postgres' user to run PostgreSQL as (install postgresql)"
        ),
    }
}

fn chown_r(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("chown {} failed", path.display());
        }
    }
    Ok(())
}

/// Directory with PostgreSQL's server binaries: `$PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the directory of `postgres` on PATH.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("command -v postgres")
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if p.is_empty() {
        bail!(
            "PostgreSQL server binaries not found; install postgresql (deploy/local/prereqs installs it) or set PG_BIN_DIR"
        );
    }
    Ok(PathBuf::from(p)
        .parent()
        .expect("a path with a parent")
        .to_owned())
}

/// An exclusive lock on a file, released on drop (flock).
struct FileLock(fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .with_context(|| format!("flock {}", path.display()))?;
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, FlockOperation::Unlock);
    }
}

/// The cached, initdb'd template data directory (created once, under a lock).
fn pg_template(bin: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("pg")
        .to_owned();
    let base = std::env::temp_dir().join(format!("rt-pg-template-{version}-v1"));
    let _lock =
        FileLock::acquire(&std::env::temp_dir().join(format!("rt-pg-template-{version}.lock")))?;
    if base.join("PG_VERSION").exists() {
        return Ok(base);
    }
    let staging = std::env::temp_dir().join(format!(
        "rt-pg-template-{version}-staging-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    chown_r(&staging, owner)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(&staging)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    harden(&mut cmd, owner);
    let out = cmd.output().context("run initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = fs::remove_dir_all(&base);
    fs::rename(&staging, &base)?;
    Ok(base)
}

/// A private PostgreSQL server with `wal_level=logical`.
pub struct Postgres {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// Extra `-c name=value` settings (override the defaults).
    settings: Vec<(String, String)>,
}

impl Postgres {
    /// Start a fresh server (empty `postgres` database, superuser `postgres`, trust auth on loopback).
    pub async fn start() -> Result<Postgres> {
        Postgres::start_with(&[]).await
    }

    /// Start with extra server settings, e.g. `[("fsync", "on")]` for benchmarks.
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<Postgres> {
        let bin = pg_bin_dir()?;
        let owner = postgres_user()?;
        let template = pg_template(&bin, owner)?;
        let dir = TempDir::new("rt-pg")?;
        chown_r(dir.path(), owner)?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("copying the PostgreSQL template failed");
        }
        let settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pg = Postgres {
            child: None,
            dir,
            port: 0,
            bin,
            owner,
            settings,
        };
        pg.spawn_on_free_port().await?;
        Ok(pg)
    }

    async fn spawn_on_free_port(&mut self) -> Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            self.port = free_port();
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn spawn(&mut self) -> Result<()> {
        let data = self.dir.path().join("data");
        let log = fs::File::create(self.log_path())?;
        chown_r(&self.log_path(), self.owner)?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_wal_senders=10",
                "-c",
                "max_replication_slots=10",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
                // Test data is disposable: skip the fsyncs.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "wal_sender_timeout=10s",
                "-c",
                "log_min_messages=warning",
            ])
            .args(
                self.settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_owned(), format!("{k}={v}")]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        harden(&mut cmd, self.owner);
        self.child = Some(cmd.spawn().context("start postgres")?);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "postgres exited ({status}): {}",
                    fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection to database `db` (its driver task runs on the current runtime).
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Create a database and return its name.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let c = self.connect("postgres").await?;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(name.to_owned())
    }

    /// Stop the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child, Signal::INT, Duration::from_secs(20));
        }
    }

    /// Kill the server without a shutdown checkpoint (crash), keeping its data.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child, Signal::KILL, Duration::from_secs(5));
        }
    }

    /// Start again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// Start after [`Postgres::stop`]/[`Postgres::crash`] on the same port.
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Path of a PostgreSQL client program (pgbench, psql) matching the server.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The server's process id (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// A private Redis server without persistence.
pub struct Redis {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    /// Extra `redis-server` arguments (cluster mode, `--replicaof`).
    args: Vec<String>,
    /// Run as a sentinel with this initial configuration.
    sentinel_conf: Option<String>,
}

impl Redis {
    pub async fn start() -> Result<Redis> {
        Redis::start_with(&[]).await
    }

    /// Start with extra arguments (`{port}` in them is replaced by the server's port).
    pub async fn start_with(args: &[&str]) -> Result<Redis> {
        Redis::launch(args, None).await
    }

    /// Start a sentinel with these configuration lines (e.g. `sentinel monitor m 127.0.0.1 6379 1`).
    pub async fn start_sentinel(conf: &str) -> Result<Redis> {
        Redis::launch(&[], Some(conf.to_owned())).await
    }

    async fn launch(args: &[&str], sentinel_conf: Option<String>) -> Result<Redis> {
        let dir = TempDir::new("rt-redis")?;
        let mut r = Redis {
            child: None,
            dir,
            port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            sentinel_conf,
        };
        let mut last_err = None;
        for _ in 0..5 {
            r.port = free_port();
            match r.spawn().await {
                Ok(()) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = fs::File::create(self.dir.path().join("redis.log"))?;
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(bin);
        let port = self.port.to_string();
        if let Some(conf) = &self.sentinel_conf {
            // Sentinel rewrites its file as it learns the topology; a restart keeps what it learned.
            let path = self.dir.path().join("sentinel.conf");
            if !path.exists() {
                fs::write(&path, conf)?;
            }
            cmd.arg(path).arg("--sentinel");
        }
        cmd.args(self.args.iter().map(|a| a.replace("{port}", &port)));
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .args(["--loglevel", "warning", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        harden(&mut cmd, None);
        self.child = Some(
            cmd.spawn()
                .context("start redis-server (install redis-server)")?,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server exited ({status}): {}",
                    fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
                );
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The server's process id (for CPU/RSS sampling).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child, Signal::KILL, Duration::from_secs(5));
        }
    }

    /// Kill and start again on the same port: without persistence, all data is gone.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Path of one of this workspace's binaries (`gateway`, `fanout-worker`): `$RT_BIN_DIR`, else next to the
/// running test executable's `deps/` directory.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("RT_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not built (run `cargo build --workspace` first)",
            p.display()
        );
    }
    Ok(p)
}

/// One of our own server processes, killed on drop.
pub struct Process {
    child: Option<Child>,
    pub name: String,
    /// The `host:port` the process reported it listens on.
    pub addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Process {
    /// Spawn `bin` with exactly `env` (plus PATH/HOME) and wait for it to print
    /// `{"event":"listening","addr":"..."}` on stdout.
    pub async fn spawn(name: &str, bin: &Path, env: &[(String, String)]) -> Result<Process> {
        let dir = TempDir::new(&format!("rt-{name}"))?;
        let log_path = dir.path().join("stderr.log");
        let out_path = dir.path().join("stdout.log");
        let mut cmd = Command::new(bin);
        cmd.env_clear();
        for key in ["PATH", "HOME", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&log_path)?);
        harden(&mut cmd, None);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut p = Process {
            child: Some(child),
            name: name.into(),
            addr: String::new(),
            log: log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(addr) = out.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["event"] == "listening")
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                p.addr = addr;
                return Ok(p);
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{name} exited ({status}) before listening:\n{}", p.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not report listening within {READY_TIMEOUT:?}:\n{}",
                    p.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send signal `sig` (a `libc::SIG*` number: SIGSTOP, SIGCONT, SIGTERM…) unless the process was
    /// killed already.
    ///
    /// # Panics
    /// If `sig` is not a named signal (real-time signals are not supported).
    pub fn signal(&self, sig: i32) {
        let sig =
            Signal::from_named_raw(sig).unwrap_or_else(|| panic!("{sig} is not a named signal"));
        if let Some(c) = &self.child {
            let _ = process::kill_process(Pid::from_child(c), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_wait(&mut c, Signal::KILL, Duration::from_secs(5));
        }
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = process::kill_process(Pid::from_child(&c), Signal::TERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Is the process still running (not killed, not exited)?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Has the process exited (and with what)?
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.log());
        }
        self.kill();
    }
}

/// The directory with the Node.js client tests (`loadtest/js`), with its npm packages installed
/// (`npm ci`, once per checkout, under a lock).
pub fn node_client_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../js");
    let _lock = FileLock::acquire(&std::env::temp_dir().join("rt-npm-install.lock"))?;
    if !dir.join("node_modules/@directus/sdk").exists()
        || !dir.join("node_modules/graphql-ws").exists()
    {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .context("run npm (Node.js and npm are needed for the client tests)")?;
        if !out.status.success() {
            bail!(
                "npm ci failed in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(dir)
}

/// Run `node <script> <args>` in the client-test directory; returns (success, stdout lines as JSON).
pub async fn run_node(
    script: &str,
    args: &[&str],
) -> Result<(bool, Vec<serde_json::Value>, String)> {
    let dir = node_client_dir()?;
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output()
        .await
        .context("run node")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    Ok((
        out.status.success(),
        lines,
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    ))
}
