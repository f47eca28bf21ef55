//! Log output: `tracing` to stderr, filtered by `RUST_LOG` or `[gateway].log`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default` applies when `RUST_LOG` is unset.
pub fn init(default: &str) {
    // The embedded broker reports every ordinary disconnect as an ERROR; rxgate logs sessions
    // itself. `RUST_LOG=rumqttd=debug` brings its logs back when needed.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("rumqttd=off,{default}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
