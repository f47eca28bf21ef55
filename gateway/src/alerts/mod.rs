//! Alerts pharmacists can trust: one per excursion, delivered on every configured channel from
//! durable queues, escalated when nobody acknowledges them.

pub mod channels;
pub mod config;
pub mod history;
pub mod monitor;
pub mod notify;
pub mod queue;
pub mod record;

pub use config::AlertsConfig;
pub use monitor::{AlertsHandle, Monitor, Observation};
pub use queue::{Channel, NotifyQueue};
pub use record::{Alert, AlertState, Event, Notification};

/// The notification channels `[alerts]` asks for: the cloud (through the outbox, so alerts wait
/// there while no `[cloud]` is configured) and the local broker always, e-mail and webhook when
/// configured.
pub fn configured_channels(config: &AlertsConfig) -> Vec<Channel> {
    let mut channels = vec![Channel::Cloud, Channel::Local];
    if config.email.is_some() {
        channels.push(Channel::Email);
    }
    if config.webhook.is_some() {
        channels.push(Channel::Webhook);
    }
    channels
}
