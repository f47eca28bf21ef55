//! The two channels that stay inside rxgate's own machinery: the cloud (through the outbox, so
//! an alert waits there through an outage like any other message) and the local broker (to the
//! device the alert is about, for its own display or buzzer).

use rumqttd::local::LinkTx;
use serde::Serialize;

use super::notify::{Deliver, DeliveryError, DeliveryFuture};
use super::queue::Channel;
use super::record::{Alert, Notification};
use crate::message::envelope::{self, Stamp};
use crate::outbox::{NewRecord, Outbox, Priority};

/// Body of an `alert` message on `rxgate/v1/<site>/alerts`.
#[derive(Debug, Serialize)]
struct AlertBody<'a> {
    event: &'static str,
    escalation: bool,
    alert: &'a Alert,
}

/// The message id of a notification: a UUIDv7 whose time is the notification's and whose other
/// bits come from (alert id, event, time), so a notification handed to the outbox twice (a
/// crash between delivery and its removal from the queue) arrives with the same id.
pub fn notification_id(n: &Notification) -> uuid::Uuid {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(n.alert.id.as_bytes());
    ctx.update(n.event.as_str().as_bytes());
    ctx.update(&n.at.unix_timestamp_nanos().to_be_bytes());
    let digest = ctx.finish();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest.as_ref()[..10]);
    let ms = u64::try_from(n.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// Delivers alert notifications to the cloud, by appending them to the outbox.
pub struct CloudChannel {
    outbox: Outbox,
}

impl CloudChannel {
    pub fn new(outbox: Outbox) -> Self {
        CloudChannel { outbox }
    }
}

impl Deliver for CloudChannel {
    fn channel(&self) -> Channel {
        Channel::Cloud
    }

    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let site = n.alert.site.clone();
            let device = n.alert.device.clone();
            let stamp = Stamp {
                id: notification_id(n),
                device_ts: None,
                gateway_ts: n.at,
                clock_synced: n.clock_synced,
            };
            let notification = n.clone();
            let record = NewRecord {
                priority: Priority::Critical,
                topic: envelope::alerts_topic(&site),
                retain: false,
                accepted_ms: u64::try_from(n.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                seq: None,
                payload: Box::new(move |seq| {
                    let body = AlertBody {
                        event: notification.event.as_str(),
                        escalation: notification.escalation,
                        alert: &notification.alert,
                    };
                    envelope::encode(&site, Some(&device), "alert", &stamp, seq, &body)
                }),
            };
            let outbox = self.outbox.clone();
            match tokio::task::spawn_blocking(move || outbox.append(vec![record])).await {
                Ok(Ok(results)) => match results.into_iter().next() {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(full)) => Err(DeliveryError::Retry(full.to_string())),
                    None => Err(DeliveryError::Retry("nothing appended".to_owned())),
                },
                Ok(Err(e)) => Err(DeliveryError::Retry(e.to_string())),
                Err(e) => Err(DeliveryError::Retry(e.to_string())),
            }
        })
    }
}

/// Delivers alert notifications to the device itself on the local broker,
/// `devices/<id>/alerts`, where a smart fridge's display can subscribe.
pub struct LocalChannel {
    link: std::sync::Mutex<LinkTx>,
}

impl LocalChannel {
    pub fn new(link: LinkTx) -> Self {
        LocalChannel {
            link: std::sync::Mutex::new(link),
        }
    }
}

impl Deliver for LocalChannel {
    fn channel(&self) -> Channel {
        Channel::Local
    }

    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let body = AlertBody {
                event: n.event.as_str(),
                escalation: n.escalation,
                alert: &n.alert,
            };
            let payload =
                serde_json::to_vec(&body).map_err(|e| DeliveryError::Drop(e.to_string()))?;
            let topic = format!("devices/{}/alerts", n.alert.device);
            let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
            link.publish(topic, payload)
                .map(drop)
                .map_err(|e| DeliveryError::Retry(format!("local broker: {e}")))
        })
    }
}
