//! What devices say, on its way in: the one internal event type, and [`Ingest`], the handle every
//! intake (device MQTT, Modbus poller) submits through; and [`envelope`], how it reaches the cloud.
//! A leaf: it imports only the clock.
//!
//! `Ingest::submit` resolves once the event is *accepted*: durable in the outbox (or refused with
//! a reason). Only then may an intake acknowledge it to the device (PUBACK) or count a reading as
//! kept. The channel behind it is bounded; when it is full, `submit` waits, which pushes back on
//! the device (its PUBACK comes later) rather than dropping anything. The Modbus poller does not
//! wait: it hands readings to a bounded queue of its own (see `modbus`), stamped when read
//! ([`Received`]), and keeps its schedule.

pub mod envelope;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// A value read from or reported by a device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
}

impl Value {
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n),
            Value::Bool(_) => None,
        }
    }
}

/// How much a point's value can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Read (or reported) just now.
    Good,
    /// The last good value, older than the poll interval allows.
    Stale,
    /// The device did not answer; the value is the last known one, or absent.
    CommError,
}

/// One named point of a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Absent when the point could never be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub quality: Quality,
}

impl Point {
    pub fn good(value: Value, unit: Option<&str>) -> Point {
        Point {
            value: Some(value),
            unit: unit.map(str::to_owned),
            quality: Quality::Good,
        }
    }
}

/// Telemetry: named points at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: String,
    /// The device's kind (`fridge`, `cabinet`, `sensor`), for the policy.
    pub kind: String,
    /// The device's own timestamp, when it sent one.
    pub device_ts: Option<OffsetDateTime>,
    pub points: BTreeMap<String, Point>,
}

/// Everything an intake can submit.
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    Telemetry(Reading),
    /// A dispensing-cabinet event (`devices/<id>/events`), already parsed as JSON.
    Event {
        device: String,
        kind: String,
        device_ts: Option<OffsetDateTime>,
        body: serde_json::Map<String, serde_json::Value>,
    },
    /// A device came online or went offline (Modbus reachability, MQTT session).
    Status {
        device: String,
        online: bool,
        reason: String,
    },
}

impl Intake {
    pub fn device(&self) -> &str {
        match self {
            Intake::Telemetry(r) => &r.device,
            Intake::Event { device, .. } | Intake::Status { device, .. } => device,
        }
    }
}

/// Where an accepted event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The event's id (UUIDv7), as the cloud will see it.
    pub id: uuid::Uuid,
}

/// Why an event was not accepted. The intake reports it to the device where it can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The content is wrong (schema, range, unknown type): the device should not resend it.
    #[error("{0}")]
    Invalid(String),
    /// Policy says no.
    #[error("denied by policy: {0}")]
    Denied(String),
    /// The gateway cannot take it now (outbox full, store failing, shutting down): resend later.
    #[error("not accepted now: {0}")]
    Unavailable(String),
}

/// An intake's event with the way to tell it the outcome.
pub struct Submission {
    pub intake: Intake,
    pub received_at: OffsetDateTime,
    pub clock_synced: bool,
    pub reply: oneshot::Sender<Result<Accepted, Refused>>,
}

/// A queued intake's outcome, to come. Also a future of it, so a caller can keep several and
/// wait on the oldest without giving it up.
pub struct Pending(oneshot::Receiver<Result<Accepted, Refused>>);

impl Pending {
    /// Waits until the intake is durable or refused.
    pub async fn outcome(self) -> Result<Accepted, Refused> {
        self.await
    }
}

impl std::future::Future for Pending {
    type Output = Result<Accepted, Refused>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|outcome| {
            outcome.unwrap_or_else(|_| {
                Err(Refused::Unavailable(
                    "the gateway is shutting down".to_owned(),
                ))
            })
        })
    }
}

/// When the gateway took an intake in (its `gateway_ts`), and whether its clock was synchronised
/// then. Usually the moment it is queued; a poller stamps a reading when it read it, as the
/// reading may wait a little before it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub at: OffsetDateTime,
    pub clock_synced: bool,
}

/// The handle intakes submit through. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Submission>,
    clock: crate::clock::SharedClock,
}

impl Ingest {
    /// A handle and the receiving end, with room for `capacity` submissions in flight.
    pub fn channel(
        capacity: usize,
        clock: crate::clock::SharedClock,
    ) -> (Ingest, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Ingest { tx, clock }, rx)
    }

    /// Submits `intake` and waits until it is durable or refused.
    pub async fn submit(&self, intake: Intake) -> Result<Accepted, Refused> {
        self.enqueue(intake).await?.outcome().await
    }

    /// Queues `intake` and returns once it is queued: intakes queued one after the other are
    /// decided, and given their `seq`, in that order. [`Pending::outcome`] then says when it is
    /// durable or refused.
    pub async fn enqueue(&self, intake: Intake) -> Result<Pending, Refused> {
        self.enqueue_received(intake, self.now()).await
    }

    /// The stamp an intake taken in now gets.
    pub fn now(&self) -> Received {
        Received {
            at: self.clock.now(),
            clock_synced: self.clock.synced(),
        }
    }

    /// [`Ingest::enqueue`] for an intake taken in earlier, at `received`.
    pub async fn enqueue_received(
        &self,
        intake: Intake,
        received: Received,
    ) -> Result<Pending, Refused> {
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            intake,
            received_at: received.at,
            clock_synced: received.clock_synced,
            reply,
        };
        self.tx
            .send(submission)
            .await
            .map_err(|_| Refused::Unavailable("the gateway is shutting down".to_owned()))?;
        Ok(Pending(outcome))
    }
}
