//! Durable notification queues, one per channel, so alerts survive restarts and a dead SMTP
//! server never delays the buzzer or the cloud.
//!
//! Table `notify_queue`: key `(channel: u8, n: u64)`, value the [`Notification`] as JSON.
//! An entry is written in the same transaction as the alert change it reports, once per
//! configured channel, and deleted by that channel's worker after delivery. Workers deliver in
//! order and retry the head entry until it goes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::record::Notification;
use crate::error::{Error, Result};
use crate::store::Store;

const QUEUE: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("notify_queue");

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The cloud broker, `rxgate/v1/<site>/alerts`, through the outbox.
    Cloud = 0,
    /// The local broker, `devices/<id>/alerts`, for the device's own display.
    Local = 1,
    Email = 2,
    Webhook = 3,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Cloud,
        Channel::Local,
        Channel::Email,
        Channel::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Cloud => "cloud",
            Channel::Local => "local",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// The queues. Cheap to clone.
#[derive(Clone)]
pub struct NotifyQueue {
    store: Store,
    channels: Arc<Vec<Channel>>,
    next: Arc<AtomicU64>,
    wake: Arc<[Notify; 4]>,
}

impl NotifyQueue {
    /// Opens the queues for `channels` (the configured ones; others get nothing queued).
    pub fn open(store: Store, channels: Vec<Channel>) -> Result<NotifyQueue> {
        let next = store.read(|txn| match txn.open_table(QUEUE) {
            Ok(table) => Ok(table
                .iter()?
                .flatten()
                .map(|(k, _)| k.value().1 + 1)
                .max()
                .unwrap_or(0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        })?;
        Ok(NotifyQueue {
            store,
            channels: Arc::new(channels),
            next: Arc::new(AtomicU64::new(next)),
            wake: Arc::new(Default::default()),
        })
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// Queues `notification` for every configured channel, inside `txn`. Call [`Self::wake`]
    /// after the commit.
    pub fn enqueue(&self, txn: &WriteTransaction, notification: &Notification) -> Result<()> {
        let value = crate::store::to_json(notification);
        let mut table = txn.open_table(QUEUE)?;
        for channel in self.channels.iter() {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            table.insert((*channel as u8, n), value.as_slice())?;
        }
        Ok(())
    }

    /// Wakes every channel's worker.
    pub fn wake(&self) {
        for notify in self.wake.iter() {
            notify.notify_one();
        }
    }

    /// Resolves when something was queued since the last call for `channel`.
    pub async fn woken(&self, channel: Channel) {
        self.wake[channel as usize].notified().await;
    }

    /// The oldest notification waiting on `channel`.
    pub fn head(&self, channel: Channel) -> Result<Option<(u64, Notification)>> {
        self.store.read(|txn| {
            let table = match txn.open_table(QUEUE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let c = channel as u8;
            let Some(entry) = table.range((c, 0)..=(c, u64::MAX))?.next() else {
                return Ok(None);
            };
            let (key, value) = entry?;
            let n = key.value().1;
            let notification =
                serde_json::from_slice(value.value()).map_err(|e| Error::Corrupt {
                    table: "notify_queue".to_owned(),
                    key: format!("{:?}", key.value()),
                    reason: e.to_string(),
                })?;
            Ok(Some((n, notification)))
        })
    }

    /// Removes a delivered notification.
    pub fn remove(&self, channel: Channel, n: u64) -> Result<()> {
        self.store.write(|txn| {
            txn.open_table(QUEUE)?.remove((channel as u8, n))?;
            Ok(())
        })
    }

    /// How many notifications wait on `channel`.
    pub fn depth(&self, channel: Channel) -> Result<u64> {
        self.store.read(|txn| match txn.open_table(QUEUE) {
            Ok(table) => {
                let c = channel as u8;
                Ok(table.range((c, 0)..=(c, u64::MAX))?.count() as u64)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        })
    }
}
