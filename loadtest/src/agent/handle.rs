//! The harness's side of an agent (in process, or a `loadtest agent` child over JSON lines), and the
//! child's side of that pipe.

use super::*;

/// The harness's side of an agent.
pub struct AgentHandle {
    pub cmds: mpsc::Sender<Cmd>,
    /// The child process, for CPU/RSS sampling (`None` when in-process).
    pub pid: Option<u32>,
    child: Option<tokio::process::Child>,
}

impl AgentHandle {
    /// Run the agent as a task of this process; its events go to `events` tagged with its index.
    pub fn in_process(spec: AgentSpec, events: mpsc::Sender<(usize, AgentEvent)>) -> AgentHandle {
        let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
        let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
        let index = spec.index;
        let fwd = events.clone();
        tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                if fwd.send((index, ev)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            if let Err(e) = run(spec, cmd_rx, ev_tx).await {
                let _ = events
                    .send((
                        index,
                        AgentEvent::Error {
                            message: format!("{e:#}"),
                        },
                    ))
                    .await;
            }
        });
        AgentHandle {
            cmds: cmd_tx,
            pid: None,
            child: None,
        }
    }

    /// Run `bin agent` as a child process.
    pub async fn spawn(
        bin: &std::path::Path,
        spec: AgentSpec,
        events: mpsc::Sender<(usize, AgentEvent)>,
    ) -> Result<AgentHandle> {
        let index = spec.index;
        let mut child = tokio::process::Command::new(bin)
            .arg("agent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} agent", bin.display()))?;
        let pid = child.id();
        let mut stdin = child.stdin.take().context("agent stdin")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
            .await?;
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(CMD_QUEUE);
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                let line = serde_json::to_string(&cmd).expect("commands serialise") + "\n";
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut finished = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let ev = match serde_json::from_str::<AgentEvent>(&line) {
                    Ok(ev) => ev,
                    Err(e) => AgentEvent::Error {
                        message: format!(
                            "agent {index} sent an unreadable line ({e}): {line:.200}"
                        ),
                    },
                };
                finished |= matches!(ev, AgentEvent::Result(_) | AgentEvent::Error { .. });
                if events.send((index, ev)).await.is_err() {
                    return;
                }
            }
            if !finished {
                let _ = events
                    .send((
                        index,
                        AgentEvent::Error {
                            message: format!("agent {index} exited before reporting its result"),
                        },
                    ))
                    .await;
            }
        });
        Ok(AgentHandle {
            cmds: cmd_tx,
            pid,
            child: Some(child),
        })
    }

    /// Wait for a child to exit (after its result).
    pub async fn wait(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }
}

/// `loadtest agent`: the child side. Reads the spec and commands from stdin, writes events to stdout.
pub async fn run_stdio() -> Result<()> {
    raise_fd_limit();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no agent spec on stdin")?;
    let spec: AgentSpec = serde_json::from_str(&first).context("agent spec")?;
    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::channel::<AgentEvent>(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Cmd>(&line) {
                Ok(c) => {
                    if cmd_tx.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("agent: bad command {line:?}: {e}"),
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let line = serde_json::to_string(&ev).expect("events serialise") + "\n";
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            let _ = out.flush().await;
        }
    });
    let r = run(spec, cmd_rx, ev_tx.clone()).await;
    if let Err(e) = &r {
        let _ = ev_tx
            .send(AgentEvent::Error {
                message: format!("{e:#}"),
            })
            .await;
    }
    drop(ev_tx);
    let _ = writer.await;
    r
}
