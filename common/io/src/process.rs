//! The parts of each binary's `main` that are the same in every role.

use std::fmt::Display;
use std::process::ExitCode;

/// Exit status for a configuration that does not validate (the process never started).
pub const CONFIG_ERROR: u8 = 2;

/// The configuration, or every error in it printed to stderr under `program`'s name and the exit code
/// [`CONFIG_ERROR`]: an operator fixes them all in one go.
pub fn config_or_exit<C, E: Display>(
    program: &str,
    config: Result<C, Vec<E>>,
) -> Result<C, ExitCode> {
    config.map_err(|errors| {
        eprintln!("{}", config_report(program, &errors));
        ExitCode::from(CONFIG_ERROR)
    })
}

fn config_report<E: Display>(program: &str, errors: &[E]) -> String {
    let mut out = format!("{program}: invalid configuration:");
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

/// Resolves on the first SIGTERM (Kubernetes, systemd) or SIGINT (a terminal's Ctrl-C).
///
/// # Panics
/// If the signal handlers cannot be installed (no signal support in this process), at startup.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_error_is_reported() {
        assert_eq!(
            config_report("gateway", &["PORT: not a number", "SECRET: too short"]),
            "gateway: invalid configuration:\n  PORT: not a number\n  SECRET: too short"
        );
        assert!(config_or_exit::<u8, &str>("x", Ok(7)).is_ok_and(|c| c == 7));
        assert!(config_or_exit::<u8, &str>("x", Err(vec!["bad"])).is_err());
    }
}
