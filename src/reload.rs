//! SIGHUP: read the settings again and apply what can change without dropping anything — the
//! accepted credentials and the source allowlist (credential rotation without a restart).

use std::path::PathBuf;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::access::Access;
use crate::app::AccessHandle;
use crate::settings::Settings;

/// The SIGHUP stream; from the moment it exists SIGHUP no longer ends the process.
pub fn hangups() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// On every SIGHUP, loads the settings as at start (`config`, else the default file, then the
/// environment) and swaps in their `[auth]` rules. Settings that do not load or validate keep
/// the running rules, and the log says why.
pub async fn on_hangup(mut hangups: Signal, config: Option<PathBuf>, access: AccessHandle) {
    while hangups.recv().await.is_some() {
        let loaded = Settings::load(config.as_deref())
            .map_err(|error| error.to_string())
            .map(|settings| {
                let rules = Access::new(&settings.auth);
                (settings, rules)
            });
        match loaded {
            Ok((settings, rules)) => {
                access.replace(rules);
                info!(
                    credentials = settings.auth.all_credentials().len(),
                    allowed_sources = settings.auth.allowed_sources.len(),
                    "SIGHUP: credentials and source allowlist reloaded; other settings apply at the next restart"
                );
            }
            Err(error) => {
                warn!(%error, "SIGHUP: settings not reloaded, the running credentials and allowlist stay");
            }
        }
    }
}
