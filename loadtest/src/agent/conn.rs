//! The connections of one agent: setup (upgrade, auth, subscribe), the live phase that records every
//! delivery, leaving, and the agent's main loop that runs them and answers the harness's commands.

use super::*;

/// One connection's lifetime (for churn: one of a slot's sessions).
struct Session<'a> {
    sh: &'a Shared,
    conn_idx: usize,
    subs: Vec<SubRecord>,
    /// Per subscription: waiting for its init.
    pending_init: Vec<bool>,
    out: Vec<u8>,
    auth: Option<Result<(), String>>,
    closed_by_server: bool,
}

impl Session<'_> {
    fn handle(&mut self, msg: Message) {
        match msg {
            Message::Data { payload, .. } => self.handle_text(&payload),
            Message::Ping(p) => {
                encode_masked_frame(&mut self.out, OpCode::Pong, &p, rand::random())
            }
            Message::Close(_) => self.closed_by_server = true,
            Message::Pong(_) => {}
        }
    }

    fn handle_text(&mut self, payload: &[u8]) {
        inc(&self.sh.frames);
        let Ok(f) = serde_json::from_slice::<Frame>(payload) else {
            self.sh.error("unparseable message from the server");
            return;
        };
        match (&*f.ty, f.event.as_deref(), f.status.as_deref()) {
            ("ping", _, _) => encode_masked_frame(
                &mut self.out,
                OpCode::Text,
                br#"{"type":"pong"}"#,
                rand::random(),
            ),
            ("auth", _, Some("ok")) => self.auth = Some(Ok(())),
            ("auth", _, _) => {
                let code = f
                    .error
                    .as_ref()
                    .and_then(|e| e["code"].as_str())
                    .unwrap_or("?");
                if self.auth.is_none() {
                    self.auth = Some(Err(format!("auth failed: {code}")));
                } else {
                    self.sh.error(&format!("auth message while live: {code}"));
                }
            }
            ("subscription", Some("init"), _) => {
                let now = now_us();
                if let Some(j) = uid_index(&f.uid).filter(|&j| j < self.subs.len())
                    && self.pending_init[j]
                {
                    self.pending_init[j] = false;
                    let s = &mut self.subs[j];
                    s.init_at_us = now;
                    s.init_rows = rows(f.data)
                        .iter()
                        .map(|r| (r.writer as u32, r.seq as u32))
                        .collect();
                } else {
                    self.sh.error("init for an unknown or repeated uid");
                }
            }
            ("subscription", Some("create" | "update"), _) => {
                let now = now_us();
                let Some(j) = uid_index(&f.uid).filter(|&j| j < self.subs.len()) else {
                    self.sh.error("event for an unknown uid");
                    return;
                };
                for r in rows(f.data) {
                    self.sh.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t0) = r.t0 {
                        self.sh.live.record((now - t0).max(1) as u64);
                    }
                    self.subs[j].deliveries.push(Delivery {
                        writer: r.writer as u32,
                        seq: r.seq as u32,
                        at_us: now,
                    });
                }
            }
            ("subscription", Some(_), _) => {}
            ("subscribe", _, Some("error")) => {
                let code = f
                    .error
                    .as_ref()
                    .and_then(|e| e["code"].as_str())
                    .unwrap_or("?");
                self.sh.error(&format!("subscribe error: {code}"));
                // Directus's service errors carry no uid: charge the first subscription still waiting.
                let j = uid_index(&f.uid).or_else(|| self.pending_init.iter().position(|p| *p));
                if let Some(j) = j.filter(|&j| j < self.subs.len())
                    && self.pending_init[j]
                {
                    self.pending_init[j] = false;
                    self.subs[j].init_at_us = i64::MIN;
                    inc(&self.sh.subs_failed);
                }
            }
            (ty, _, _) => self.sh.error(&format!("unhandled message type {ty}")),
        }
    }
}

enum Wait {
    /// The awaited condition holds.
    Done,
    Closed,
    Timeout,
    Stopping,
}

/// Resolves when the agent is stopping; never, when `phase` is `None` or its sender is gone.
async fn until_stopping(phase: Option<&mut watch::Receiver<Phase>>) {
    if let Some(p) = phase
        && p.wait_for(|p| *p == Phase::Stopping).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await
}

/// Read and handle messages until `done(session)` holds, the socket closes, the deadline passes or the
/// agent is stopping (when `phase` is given).
async fn wait_until(
    conn: &mut Conn,
    s: &mut Session<'_>,
    msgs: &mut Vec<Message>,
    deadline: Instant,
    mut phase: Option<&mut watch::Receiver<Phase>>,
    done: impl Fn(&Session) -> bool,
) -> Result<Wait> {
    loop {
        for m in msgs.drain(..) {
            s.handle(m);
        }
        if !s.out.is_empty() {
            let out = std::mem::take(&mut s.out);
            conn.send_raw(&out).await?;
        }
        if done(s) {
            return Ok(Wait::Done);
        }
        if s.closed_by_server {
            return Ok(Wait::Closed);
        }
        tokio::select! {
            r = conn.readable() => {
                r?;
                if conn.read_available(msgs)? == ReadState::Closed {
                    for m in msgs.drain(..) {
                        s.handle(m);
                    }
                    s.closed_by_server = true;
                    return Ok(Wait::Closed);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Wait::Timeout),
            _ = until_stopping(phase.as_deref_mut()) => return Ok(Wait::Stopping),
        }
    }
}

/// Run one connection: setup, live, leave. `hold`: leave after this long (churn); otherwise stay until the
/// agent stops. Returns the records of the subscriptions that got their `init`.
async fn session(
    sh: &Shared,
    conn_idx: usize,
    mut phase: watch::Receiver<Phase>,
    hold: Option<Duration>,
) -> Vec<SubRecord> {
    let permit = sh.handshakes.clone().acquire_owned().await;
    let spec = &sh.spec;
    let target = &sh.targets[conn_idx % sh.targets.len()];
    let source =
        (!spec.source_ips.is_empty()).then(|| spec.source_ips[conn_idx % spec.source_ips.len()]);
    let mut s = Session {
        sh,
        conn_idx,
        subs: (0..spec.subs_per_conn)
            .map(|j| SubRecord {
                filter: sub_filter(spec.scenario, conn_idx, j, spec.subs_per_conn),
                init_at_us: 0,
                end_at_us: None,
                init_rows: Vec::new(),
                deliveries: Vec::new(),
            })
            .collect(),
        pending_init: vec![true; spec.subs_per_conn],
        out: Vec::new(),
        auth: None,
        closed_by_server: false,
    };
    // A connection settles (finishes its setup, well or not) exactly once: the harness waits for all.
    let settled = std::sync::atomic::AtomicBool::new(false);
    let settle = || {
        if !settled.swap(true, Ordering::Relaxed) {
            inc(&sh.settled);
        }
    };
    let started = Instant::now();
    let mut conn = match tokio::time::timeout(SETUP_TIMEOUT, Conn::open(target, source)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            inc(&sh.connects_failed);
            sh.error(&format!("{:#}", e).chars().take(120).collect::<String>());
            settle();
            return Vec::new();
        }
        Err(_) => {
            inc(&sh.connects_failed);
            sh.error("connect timed out");
            settle();
            return Vec::new();
        }
    };
    sh.connect_us
        .lock()
        .saturating_record(started.elapsed().as_micros().max(1) as u64);
    inc(&sh.connects_ok);
    inc(&sh.open);
    let result = live(&mut conn, &mut s, &mut phase, permit.ok(), hold, &settle).await;
    sh.open.fetch_sub(1, Ordering::Relaxed);
    if !settled.load(Ordering::Relaxed) {
        // The socket failed mid-handshake (an I/O error): charge the step it was in.
        if !matches!(s.auth, Some(Ok(()))) {
            inc(&sh.auth_failed);
        } else {
            let pending = s.pending_init.iter().filter(|p| **p).count() as u64;
            sh.subs_failed.fetch_add(pending, Ordering::Relaxed);
        }
        settle();
    }
    if let Err(e) = result {
        sh.error(
            &format!("connection error: {e:#}")
                .chars()
                .take(120)
                .collect::<String>(),
        );
    }
    if s.closed_by_server {
        conn_closed_by_server(sh, &mut s);
    } else {
        conn.close().await;
    }
    s.subs.into_iter().filter(|r| r.init_at_us > 0).collect()
}

fn conn_closed_by_server(sh: &Shared, s: &mut Session) {
    let now = now_us();
    let mut charged = false;
    for r in &mut s.subs {
        if r.init_at_us > 0 && r.end_at_us.is_none() {
            r.end_at_us = Some(now);
            charged = true;
        }
    }
    if charged {
        inc(&sh.server_closed);
        sh.error("server closed a live connection");
    }
}

async fn live(
    conn: &mut Conn,
    s: &mut Session<'_>,
    phase: &mut watch::Receiver<Phase>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    hold: Option<Duration>,
    settle: &(dyn Fn() + Sync),
) -> Result<()> {
    let sh = s.sh;
    let spec = &sh.spec;
    let mut msgs = Vec::new();
    conn.decode_pending(&mut msgs)?;
    // Auth.
    let token = match &spec.auth {
        AuthPlan::Token(t) => t.clone(),
        AuthPlan::PerUser { prefix } => format!("{prefix}{}", s.conn_idx),
    };
    let t = Instant::now();
    conn.send_text(&serde_json::json!({"type":"auth","access_token":token}).to_string())
        .await?;
    let w = wait_until(conn, s, &mut msgs, t + SETUP_TIMEOUT, Some(phase), |s| {
        s.auth.is_some()
    })
    .await?;
    match (&w, &s.auth) {
        (Wait::Done, Some(Ok(()))) => {
            inc(&sh.auth_ok);
            sh.auth_us
                .lock()
                .saturating_record(t.elapsed().as_micros().max(1) as u64);
        }
        // The harness stopped us mid-handshake (a churn session that began just before the end): our
        // choice, not a failure.
        (Wait::Stopping, None) => {
            settle();
            return Ok(());
        }
        _ => {
            inc(&sh.auth_failed);
            let why = match (&w, &s.auth) {
                (_, Some(Err(e))) => e.clone(),
                (Wait::Closed, _) => "closed during auth".into(),
                _ => "auth timed out".into(),
            };
            sh.error(&why);
            settle();
            s.closed_by_server = false;
            return Ok(());
        }
    }
    // Subscribe, all at once; then wait for every init.
    let t = Instant::now();
    let mut batch = Vec::new();
    for (j, r) in s.subs.iter().enumerate() {
        let msg = serde_json::json!({
            "type": "subscribe",
            "collection": spec.collection,
            "uid": format!("s{j}"),
            "query": subscribe_query(spec.query_form, spec.run, r.filter, spec.churn(), spec.related),
        });
        encode_masked_frame(
            &mut batch,
            OpCode::Text,
            msg.to_string().as_bytes(),
            rand::random(),
        );
    }
    conn.send_raw(&batch).await?;
    drop(batch);
    // A gateway answers one connection's subscribes one after another (each is an init snapshot), so
    // the wait grows with how many this connection sent.
    let wait = SETUP_TIMEOUT + Duration::from_millis(250) * s.subs.len() as u32;
    let w = wait_until(conn, s, &mut msgs, t + wait, Some(phase), |s| {
        s.pending_init.iter().all(|p| !p)
    })
    .await?;
    let ok = s.subs.iter().filter(|r| r.init_at_us > 0).count() as u64;
    sh.subs_ok.fetch_add(ok, Ordering::Relaxed);
    let unanswered = s.pending_init.iter().filter(|p| **p).count() as u64;
    match w {
        Wait::Closed if unanswered > 0 => sh.error("closed while subscribing"),
        Wait::Timeout if unanswered > 0 => sh.error("subscribe timed out"),
        _ => {}
    }
    // Stopped by the harness mid-subscribe is not a failure (see auth above).
    if !matches!(w, Wait::Stopping) {
        sh.subs_failed.fetch_add(unanswered, Ordering::Relaxed);
    }
    if ok > 0 {
        sh.subscribe_us
            .lock()
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
    }
    settle();
    drop(permit);
    if ok == 0 || !matches!(w, Wait::Done) {
        return Ok(());
    }
    // Live until we leave (hold elapsed or stop), then linger so events for writes committed before we
    // began to leave can still arrive.
    let leave_at = hold.map_or(Instant::now() + Duration::from_secs(365 * 86_400), |h| {
        Instant::now() + h
    });
    let w = wait_until(conn, s, &mut msgs, leave_at, Some(phase), |_| false).await?;
    if matches!(w, Wait::Closed) {
        return Ok(());
    }
    let leaving = now_us();
    if hold.is_some() {
        for r in &mut s.subs {
            r.end_at_us = Some(leaving);
        }
        let linger = Instant::now() + Duration::from_millis(spec.linger_ms);
        if let Wait::Closed = wait_until(conn, s, &mut msgs, linger, None, |_| false).await? {
            // Closed while lingering: the window is over anyway.
            s.closed_by_server = false;
        }
    }
    Ok(())
}

/// Run an agent until it has answered `account` (or its command channel closes).
pub async fn run(
    spec: AgentSpec,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<AgentEvent>,
) -> Result<()> {
    let mut targets = Vec::new();
    for u in &spec.urls {
        targets.push(testkit::ws::resolve(u).await?);
    }
    let sh = Arc::new(Shared {
        targets,
        connects_ok: AtomicU64::new(0),
        connects_failed: AtomicU64::new(0),
        auth_ok: AtomicU64::new(0),
        auth_failed: AtomicU64::new(0),
        subs_ok: AtomicU64::new(0),
        subs_failed: AtomicU64::new(0),
        open: AtomicU64::new(0),
        server_closed: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        live: LiveHist::default(),
        connect_us: Mutex::new(accounting::new_histogram()),
        auth_us: Mutex::new(accounting::new_histogram()),
        subscribe_us: Mutex::new(accounting::new_histogram()),
        errors: Mutex::new(BTreeMap::new()),
        handshakes: Arc::new(Semaphore::new(spec.max_inflight)),
        spec,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let count = (sh.spec.conn_end - sh.spec.conn_start) as u64;

    // Progress reporter (also says `ready` once).
    let mut reporter = Some({
        let sh = sh.clone();
        let events = events.clone();
        let mut phase = phase_rx.clone();
        tokio::spawn(async move {
            let mut ready = false;
            let mut tick =
                tokio::time::interval(Duration::from_millis(sh.spec.progress_ms.max(10)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = phase.wait_for(|p| *p == Phase::Stopping) => {}
                }
                let counters = sh.counters();
                let ev = AgentEvent::Progress {
                    counters,
                    live: sh.live.take(),
                };
                if events.send(ev).await.is_err() {
                    return;
                }
                if !ready && (sh.spec.churn() || counters.settled >= count) {
                    ready = true;
                    if events.send(AgentEvent::Ready).await.is_err() {
                        return;
                    }
                }
                if *phase.borrow() == Phase::Stopping {
                    return;
                }
            }
        })
    });

    // Connections: for churn, slots that cycle once writes start; otherwise one task per connection,
    // opened at the ramp-up rate.
    let spawner = {
        let sh = sh.clone();
        let phase_rx = phase_rx.clone();
        tokio::spawn(async move {
            let spec = &sh.spec;
            let mut tasks = Vec::with_capacity(count as usize);
            if spec.churn() {
                let mut phase = phase_rx.clone();
                let _ = phase.wait_for(|p| *p != Phase::Setup).await;
                // Tickets pace new connections; the queue holds at most one per slot (full = the pacer
                // waits, so tickets never pile up while slots are busy).
                let (tx, rx) = mpsc::channel::<()>(count.max(1) as usize);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                let pacer = (spec.churn_rate > 0.0).then(|| {
                    let every = Duration::from_secs_f64(1.0 / spec.churn_rate);
                    let mut phase = phase_rx.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = tick.tick() => {}
                                _ = phase.wait_for(|p| *p == Phase::Stopping) => return,
                            }
                            if tx.send(()).await.is_err() {
                                return;
                            }
                        }
                    })
                });
                for c in spec.conn_start..spec.conn_end {
                    let sh = sh.clone();
                    let rx = rx.clone();
                    let paced = pacer.is_some();
                    let phase = phase_rx.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut records = Vec::new();
                        let hold = Duration::from_millis(sh.spec.hold_ms);
                        loop {
                            if *phase.borrow() == Phase::Stopping {
                                break;
                            }
                            if paced {
                                let mut p = phase.clone();
                                let got = tokio::select! {
                                    t = async { rx.lock().await.recv().await } => t.is_some(),
                                    _ = p.wait_for(|p| *p == Phase::Stopping) => false,
                                };
                                if !got {
                                    break;
                                }
                            }
                            let got = session(&sh, c, phase.clone(), Some(hold)).await;
                            if got.is_empty() {
                                // Failed before subscribing: back off so a dead target is not hammered.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            records.extend(got);
                        }
                        records
                    }));
                }
                let _ = pacer;
            } else {
                let start = Instant::now();
                for (i, c) in (spec.conn_start..spec.conn_end).enumerate() {
                    if spec.ramp_up > 0.0 {
                        let at = start + Duration::from_secs_f64(i as f64 / spec.ramp_up);
                        tokio::time::sleep_until(at).await;
                    }
                    if *phase_rx.borrow() == Phase::Stopping {
                        break;
                    }
                    let sh = sh.clone();
                    let phase = phase_rx.clone();
                    tasks.push(tokio::spawn(
                        async move { session(&sh, c, phase, None).await },
                    ));
                }
            }
            tasks
        })
    };

    let mut spawner = Some(spawner);
    let mut records: Vec<SubRecord> = Vec::new();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Start => {
                let _ = phase_tx.send(Phase::Running);
            }
            Cmd::Stop => {
                let _ = phase_tx.send(Phase::Stopping);
                if let Some(sp) = spawner.take() {
                    for t in sp.await.context("connection spawner")? {
                        records.extend(t.await.context("connection task")?);
                    }
                }
                if let Some(r) = reporter.take() {
                    let _ = r.await;
                }
                let _ = events
                    .send(AgentEvent::Stopped {
                        counters: sh.counters(),
                    })
                    .await;
            }
            Cmd::Account { writes, phases } => {
                let log = read_write_log(&writes)?;
                let mut out = Outcome::new(phases);
                for r in &records {
                    accounting::account(&log, r, &mut out);
                }
                let result = AgentResult {
                    tally: out.tally,
                    latency_us: hist_pairs(&out.latency),
                    phase_latency_us: out.phase_latency.iter().map(hist_pairs).collect(),
                    negative_latency: out.negative_latency,
                    examples: out.examples,
                    connect_us: hist_pairs(&sh.connect_us.lock()),
                    auth_us: hist_pairs(&sh.auth_us.lock()),
                    subscribe_us: hist_pairs(&sh.subscribe_us.lock()),
                    counters: sh.counters(),
                    errors: sh.errors.lock().clone(),
                };
                let _ = events.send(AgentEvent::Result(Box::new(result))).await;
                return Ok(());
            }
        }
    }
    Ok(())
}
