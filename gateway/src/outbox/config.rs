//! `[outbox]`: this component's section of the config file. `config/` assembles the
//! sections and checks them; every key is documented in `config/gateway.toml`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::Deserialize;

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Space the outbox may use, in MiB. When it is full new messages are refused (devices
    /// resend later); nothing already accepted is dropped.
    #[serde(default = "defaults::outbox_max_mib")]
    pub max_mib: NonZeroU32,
    /// Messages written together in one durable commit, at most.
    #[serde(default = "defaults::batch_max")]
    pub batch_max: NonZeroUsize,
    /// Longest a message waits for its batch to fill before it is committed: the longest an MQTT
    /// device waits for its PUBACK (plus the commit), and how long a polled reading may stay
    /// undurable. Each durable commit costs the SD card ~30 KiB whatever it carries, so this
    /// bounds the writes at low rates (at most 1 s).
    #[serde(default = "defaults::batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_mib: defaults::outbox_max_mib(),
            batch_max: defaults::batch_max(),
            batch_delay: defaults::batch_delay(),
        }
    }
}

mod defaults {
    use super::*;

    pub fn outbox_max_mib() -> NonZeroU32 {
        NonZeroU32::new(1024).expect("1024 is not zero")
    }
    pub fn batch_max() -> NonZeroUsize {
        NonZeroUsize::new(2048).expect("2048 is not zero")
    }
    pub fn batch_delay() -> Duration {
        Duration::from_millis(500)
    }
}
