//! The telemetry spine end to end: devices → rxgate → mosquitto (the cloud), over mutual TLS.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use rxgate_e2e::cloud::{Cloud, Subscription};
use rxgate_e2e::{Gateway, curl_raw, text, wait_until};
use rxgate_sim::cabinet::{Credentials, mqtt_options};

const TELEMETRY: &str = "rxgate/v1/store-0042/devices/fridge-01/telemetry";

#[test]
fn mosquitto_pub_with_an_enrolled_certificate_reaches_the_cloud_in_the_documented_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let creds = gw.enroll_with_sim("fridge-01", "fridge");

    let out = gw.mosquitto_pub(
        &creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"ts":"2026-05-01T08:00:00Z","points":{"temperature_c":4.5,"door_open":false}}"#,
    );
    assert!(out.status.success(), "{}", text(&out));

    let messages = backend.wait_for(TELEMETRY, 1, Duration::from_secs(10));
    let m = &messages[0];
    assert_eq!(m["type"], "telemetry");
    assert_eq!(m["site"], "store-0042");
    assert_eq!(m["device"], "fridge-01");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["device_ts"], "2026-05-01T08:00:00Z");
    assert_eq!(m["clock_synced"], true);
    assert_eq!(m["points"]["temperature_c"]["value"], 4.5);
    assert_eq!(m["points"]["door_open"]["value"], false);
    assert_eq!(m["points"]["temperature_c"]["quality"], "good");
    let id = m["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "a UUIDv7: {id}");
    assert!(m["gateway_ts"].as_str().unwrap().ends_with('Z'));

    let status = backend.wait_for(
        "rxgate/v1/store-0042/gateway/status",
        1,
        Duration::from_secs(5),
    );
    assert_eq!(status[0]["online"], true);
}

/// Cloud topic filter of every device's telemetry at the test site.
const SITE_TELEMETRY: &str = "rxgate/v1/store-0042/devices/+/telemetry";

/// A gateway for a fleet on one loopback address: enrollment's per-source rate limit is raised,
/// as every simulated device enrolls from 127.0.0.1; `extra` (TOML) is merged over that. The
/// policy is the built-in default, whose telemetry rate limit (50 a second per device, bursts of
/// 500) acknowledges and drops what exceeds it: the loads below stay under it, so every
/// acknowledged reading must reach the cloud.
fn gateway_for_fleet(cloud: &Cloud, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{}[enroll]\nrate_per_minute = 6000\nrate_burst = 200\n{extra}",
        cloud.pki.gateway_config(cloud.port)
    ))
}

/// Enrolls `fridge-01` … `fridge-<count>` over EST and loads their credentials.
fn enroll_fleet(gw: &Gateway, count: usize) -> Vec<Credentials> {
    (1..=count)
        .map(|i| {
            let dir = gw.enroll_with_sim(&format!("fridge-{i:02}"), "fridge");
            Credentials::load(&dir).unwrap()
        })
        .collect()
}

/// What one simulated device has done so far.
#[derive(Clone, Default)]
struct Tally {
    /// The `n` of each message the gateway acknowledged (PUBACK), in the order of the PUBACKs.
    acked: Vec<u64>,
    /// Messages written to the connection.
    sent: u64,
    /// Messages handed to the client (`publish` returned).
    queued: u64,
    /// The publisher has stopped (limit reached or told to stop).
    done: bool,
    /// Why the connection ended, if it did, and whether the test expected it to.
    ended: Option<(String, bool)>,
}

/// Devices publishing QoS 1 telemetry to a gateway, each on its own connection, each recording
/// exactly which of its messages were acknowledged.
struct Fleet {
    /// Dropping it closes every connection.
    _runtime: tokio::runtime::Runtime,
    tallies: Vec<(String, Arc<Mutex<Tally>>)>,
    stop: Arc<AtomicBool>,
    /// Set before the test breaks the connections on purpose.
    expect_drop: Arc<AtomicBool>,
}

/// The `n`-th reading of a fleet device: `{"points":{"temperature_c":4.5,"n":N}}`.
fn numbered_reading(n: u64) -> String {
    format!(r#"{{"points":{{"temperature_c":4.5,"n":{n}}}}}"#)
}

impl Fleet {
    /// Connects every device to `gw` and starts publishing [`numbered_reading`]s on
    /// `devices/<id>/telemetry` with N = 0, 1, 2, … per device: at most `limit` messages, one
    /// every `every`, or with `None` as fast as the acknowledgements allow (16 in flight per
    /// device).
    fn start(
        gw: &Gateway,
        devices: Vec<Credentials>,
        every: Option<Duration>,
        limit: u64,
    ) -> Fleet {
        Self::publishing(gw, devices, "telemetry", numbered_reading, every, limit)
    }

    /// Like [`Fleet::start`], publishing `message(N)` on `devices/<id>/<stream>`.
    fn publishing(
        gw: &Gateway,
        devices: Vec<Credentials>,
        stream: &'static str,
        message: fn(u64) -> String,
        every: Option<Duration>,
        limit: u64,
    ) -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let expect_drop = Arc::new(AtomicBool::new(false));
        let address = gw.mqtt.to_string();
        let tallies = devices
            .into_iter()
            .map(|credentials| {
                let mut options = mqtt_options(&address, &credentials).unwrap();
                options.set_inflight(16);
                let tally = Arc::new(Mutex::new(Tally::default()));
                runtime.spawn(device(
                    options,
                    format!("devices/{}/{stream}", credentials.device),
                    message,
                    tally.clone(),
                    every,
                    limit,
                    stop.clone(),
                    expect_drop.clone(),
                ));
                (credentials.device, tally)
            })
            .collect();
        Fleet {
            _runtime: runtime,
            tallies,
            stop,
            expect_drop,
        }
    }

    /// Every device's tally now; panics if a connection ended that should not have.
    fn snapshot(&self) -> BTreeMap<String, Tally> {
        self.tallies
            .iter()
            .map(|(device, tally)| {
                let tally = tally.lock().unwrap().clone();
                if let Some((why, false)) = &tally.ended {
                    panic!("{device}: connection to the gateway ended: {why}");
                }
                (device.clone(), tally)
            })
            .collect()
    }
}

/// One device: a publisher task sending `message(n)` on `topic`, and the event loop matching
/// PUBACKs to messages. Without reconnections nothing is sent twice, so the k-th PUBLISH written
/// carries n = k, and a PUBACK names the packet id of one in flight.
#[allow(clippy::too_many_arguments)]
async fn device(
    options: MqttOptions,
    topic: String,
    message: fn(u64) -> String,
    tally: Arc<Mutex<Tally>>,
    every: Option<Duration>,
    limit: u64,
    stop: Arc<AtomicBool>,
    expect_drop: Arc<AtomicBool>,
) {
    let (client, mut events) = AsyncClient::new(options, 16);
    let publisher = tally.clone();
    tokio::spawn(async move {
        let mut tick = every.map(tokio::time::interval);
        for n in 0..limit {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(tick) = tick.as_mut() {
                tick.tick().await;
            }
            let payload = message(n);
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
            publisher.lock().unwrap().queued = n + 1;
        }
        publisher.lock().unwrap().done = true;
        // The client stays open: the event loop still waits for acknowledgements.
        std::future::pending::<()>().await;
        drop(client);
    });
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut connected = false;
    loop {
        let event = events.poll().await;
        let mut tally = tally.lock().unwrap();
        let ended = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) if connected => Some("reconnected".to_owned()),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                None
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                in_flight.insert(pkid, tally.sent);
                tally.sent += 1;
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => match in_flight.remove(&ack.pkid) {
                Some(n) => {
                    tally.acked.push(n);
                    None
                }
                None => Some(format!("PUBACK for packet id {} not in flight", ack.pkid)),
            },
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = ended {
            tally.ended = Some((why, expect_drop.load(Ordering::SeqCst)));
            return;
        }
    }
}

/// Each device's acknowledged message numbers, checked to have come in the order the messages
/// were sent (MQTT 3.1.1 §4.6: PUBACKs in the order the PUBLISHes came).
fn acked_in_order(tallies: &BTreeMap<String, Tally>) -> BTreeMap<String, Vec<u64>> {
    for (device, tally) in tallies {
        assert_eq!(
            tally.acked,
            (0..tally.acked.len() as u64).collect::<Vec<_>>(),
            "{device}: PUBACKs out of order"
        );
    }
    tallies
        .iter()
        .map(|(device, tally)| (device.clone(), tally.acked.clone()))
        .collect()
}

/// One telemetry message as the backend received it.
struct Arrival {
    device: String,
    n: u64,
    seq: u64,
    id: String,
}

/// The telemetry of the fleet's devices (those `in_fleet` accepts) the backend has received, in
/// arrival order; other messages (other topics, other devices' telemetry) are left out.
fn arrivals(backend: &Subscription, in_fleet: impl Fn(&str) -> bool) -> Vec<Arrival> {
    backend
        .messages()
        .into_iter()
        .filter(|(topic, _)| {
            topic
                .strip_prefix("rxgate/v1/store-0042/devices/")
                .and_then(|rest| rest.strip_suffix("/telemetry"))
                .is_some_and(&in_fleet)
        })
        .map(|(topic, payload)| {
            let m: serde_json::Value = serde_json::from_str(&payload)
                .unwrap_or_else(|e| panic!("{topic}: {e}: {payload}"));
            let device = m["device"].as_str().expect("device").to_owned();
            assert_eq!(
                topic,
                format!("rxgate/v1/store-0042/devices/{device}/telemetry")
            );
            Arrival {
                n: m["points"]["n"]["value"].as_f64().expect("points.n.value") as u64,
                seq: m["seq"].as_u64().expect("seq"),
                id: m["id"].as_str().expect("id").to_owned(),
                device,
            }
        })
        .collect()
}

/// Checks what the cloud received against what the gateway acknowledged to each device, as the
/// cloud contract promises (docs/cloud-contract.md, "Delivery", "Sequence numbers", "Order"):
/// - every acknowledged reading is there;
/// - a message delivered more than once is the same message: one `id` for each (device, n),
///   and each `id` always with the same device, n and `seq`;
/// - per device, the distinct messages sorted by `seq` are seq 1, 2, 3, … without gaps, carrying
///   n = 0, 1, 2, …: the order the device sent them in (one topic, one lane), nothing skipped;
/// - with `in_arrival_order`, also their first copies arrived in `seq` order (within one lane
///   messages leave in order and one broker keeps it; only redelivered copies may come late).
///
/// Returns the problems found, empty if none.
fn check(
    arrivals: &[Arrival],
    acked: &BTreeMap<String, Vec<u64>>,
    in_arrival_order: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, (&str, u64, u64)> = HashMap::new();
    let mut ids_of_reading: BTreeMap<(&str, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut first_seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in arrivals {
        let this = (a.device.as_str(), a.n, a.seq);
        match by_id.get(a.id.as_str()) {
            Some(first) if *first != this => problems.push(format!(
                "id {} came as (device, n, seq) {first:?} and as {this:?}",
                a.id
            )),
            Some(_) => {}
            None => {
                by_id.insert(&a.id, this);
                first_seqs.entry(&a.device).or_default().push(a.seq);
            }
        }
        ids_of_reading
            .entry((&a.device, a.n))
            .or_default()
            .insert(&a.id);
    }
    for ((device, n), ids) in &ids_of_reading {
        if ids.len() > 1 {
            problems.push(format!(
                "{device} n={n} arrived under different ids: {ids:?}"
            ));
        }
    }
    let mut streams: BTreeMap<&str, BTreeSet<(u64, u64)>> = BTreeMap::new();
    for (device, n, seq) in by_id.values() {
        streams.entry(device).or_default().insert((*seq, *n));
    }
    for (device, acked) in acked {
        let stream = streams.remove(device.as_str()).unwrap_or_default();
        if let Some((i, (seq, n))) = stream
            .iter()
            .enumerate()
            .find(|(i, (seq, n))| *seq != *i as u64 + 1 || *n != *i as u64)
        {
            problems.push(format!(
                "{device}: message {} in seq order is seq {seq} with n {n}, expected seq {} with n {i}",
                i + 1,
                i + 1
            ));
        }
        let arrived: HashSet<u64> = stream.iter().map(|(_, n)| *n).collect();
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|n| !arrived.contains(n))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{device}: {} of {} acknowledged readings missing, n = {:?}{}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(20)],
                if missing.len() > 20 { " …" } else { "" }
            ));
        }
        if in_arrival_order {
            let seqs = first_seqs.get(device.as_str()).cloned().unwrap_or_default();
            if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
                problems.push(format!(
                    "{device}: seq {} first arrived after seq {}",
                    w[1], w[0]
                ));
            }
        }
    }
    for device in streams.keys() {
        problems.push(format!("telemetry from {device}, which never published"));
    }
    problems
}

/// Messages waiting in the gateway's outbox, from its metrics endpoint.
fn outbox_depth(gw: &Gateway) -> Option<u64> {
    let out = curl_raw(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("rxgate_outbox_depth "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Polls until the gateway's outbox is empty and [`check`] finds nothing wrong; panics with
/// the problems still there after `timeout`.
fn wait_for_complete_delivery(
    gw: &Gateway,
    backend: &Subscription,
    acked: &BTreeMap<String, Vec<u64>>,
    in_arrival_order: bool,
    timeout: Duration,
) {
    let problems = delivery_problems(gw, backend, acked, in_arrival_order, timeout);
    if !problems.is_empty() {
        panic!("after {timeout:?}:\n{}", problems.join("\n"));
    }
}

/// Polls until the gateway's outbox is empty and [`check`] finds nothing wrong, for at most
/// `timeout`; returns the problems still there then (empty once delivery is complete), the
/// number of telemetry messages at the cloud first.
fn delivery_problems(
    gw: &Gateway,
    backend: &Subscription,
    acked: &BTreeMap<String, Vec<u64>>,
    in_arrival_order: bool,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let arrivals = arrivals(backend, |device| acked.contains_key(device));
        let mut problems = check(&arrivals, acked, in_arrival_order);
        match outbox_depth(gw) {
            Some(0) => {}
            depth => problems.push(format!("outbox depth {depth:?}")),
        }
        if problems.is_empty() {
            let distinct: HashSet<&str> = arrivals.iter().map(|a| a.id.as_str()).collect();
            eprintln!(
                "delivered: {} acknowledged readings, {} messages at the cloud, {} distinct ids",
                acked.values().map(Vec::len).sum::<usize>(),
                arrivals.len(),
                distinct.len()
            );
            return problems;
        }
        if Instant::now() > deadline {
            problems.insert(
                0,
                format!("{} telemetry messages at the cloud", arrivals.len()),
            );
            return problems;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Issue 3: a power cut (SIGKILL) of the gateway while ten devices publish QoS 1 as fast as
/// their acknowledgements allow, with the cloud up. After a restart on the same data dir every
/// message the gateway had acknowledged reaches the cloud; one delivered twice carries the same
/// `id` both times; each device's messages are numbered by `seq` in the order it sent them.
#[test]
fn a_gateway_killed_while_ten_devices_publish_delivers_every_acknowledged_reading_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let mut gw = gateway_for_fleet(&cloud, "");
    let backend = cloud.subscribe(SITE_TELEMETRY);
    // At most 450 readings per device: under the policy's burst of 500.
    let fleet = Fleet::start(&gw, enroll_fleet(&gw, 10), None, 450);

    wait_until(
        Duration::from_secs(60),
        "hundreds of PUBACKs, some for every device",
        || {
            let tallies = fleet.snapshot();
            let total: usize = tallies.values().map(|t| t.acked.len()).sum();
            (total >= 600 && tallies.values().all(|t| t.acked.len() >= 30)).then_some(())
        },
    );
    // A power cut: no chance to flush or to say goodbye.
    fleet.expect_drop.store(true, Ordering::SeqCst);
    let mut child = gw.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let tallies = wait_until(
        Duration::from_secs(15),
        "every device to lose its connection",
        || {
            let tallies = fleet.snapshot();
            tallies
                .values()
                .all(|t| t.ended.is_some())
                .then_some(tallies)
        },
    );
    drop(fleet);
    assert!(
        tallies.values().any(|t| t.sent > t.acked.len() as u64),
        "killed while messages were in flight"
    );
    let acked = acked_in_order(&tallies);

    gw.spawn();
    wait_for_complete_delivery(&gw, &backend, &acked, false, Duration::from_secs(60));
}

/// Issue 3: the cloud broker stopped for 60 s while five devices each publish 20 readings a
/// second, then started again while they go on. The gateway keeps acknowledging throughout;
/// afterwards every reading is at the cloud (copies only with the same `id`), each device's
/// numbered by `seq` in the order it sent them, without gaps, first copies in that order.
///
/// Slow on purpose: the outage lasts the 60 s the acceptance criterion names, so the test takes
/// well over a minute.
#[test]
fn readings_accepted_during_a_sixty_second_cloud_outage_under_load_arrive_complete_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(tmp.path());
    let mut gw = gateway_for_fleet(&cloud, "");
    let backend = cloud.subscribe(SITE_TELEMETRY);
    // 20 a second each: under the policy's 50 a second per device.
    let fleet = Fleet::start(
        &gw,
        enroll_fleet(&gw, 5),
        Some(Duration::from_millis(50)),
        u64::MAX,
    );

    // The load flows to the cloud (a second's worth from every device) before the outage.
    wait_until(
        Duration::from_secs(30),
        "every device's first 20 readings at the cloud",
        || {
            fleet.snapshot();
            let devices: HashSet<String> = arrivals(&backend, |_| true)
                .into_iter()
                .filter(|a| a.n >= 20)
                .map(|a| a.device)
                .collect();
            (devices.len() == 5).then_some(())
        },
    );
    let before = fleet.snapshot();
    cloud.stop();
    // The outage, held for its full length while the devices keep publishing.
    std::thread::sleep(Duration::from_secs(60));
    let during = fleet.snapshot();
    assert!(gw.is_running(), "{}", gw.logs());
    for (device, tally) in &during {
        let accepted = tally.acked.len() - before[device].acked.len();
        assert!(
            accepted >= 600,
            "{device}: only {accepted} readings acknowledged during the 60 s outage (~1200 sent)"
        );
    }
    cloud.restart();

    // Delivery resumes under load: readings sent after the restart arrive.
    let resumed = fleet.snapshot();
    wait_until(
        Duration::from_secs(90),
        "readings sent after the restart at the cloud",
        || {
            fleet.snapshot();
            let mut newest: HashMap<String, u64> = HashMap::new();
            for a in arrivals(&backend, |_| true) {
                let n = newest.entry(a.device).or_default();
                *n = (*n).max(a.n);
            }
            resumed
                .iter()
                .all(|(device, t)| newest.get(device).is_some_and(|n| *n >= t.queued))
                .then_some(())
        },
    );
    fleet.stop.store(true, Ordering::SeqCst);
    let tallies = wait_until(
        Duration::from_secs(15),
        "every reading sent to be acknowledged",
        || {
            let tallies = fleet.snapshot();
            tallies
                .values()
                .all(|t| t.done && t.acked.len() as u64 == t.queued)
                .then_some(tallies)
        },
    );
    drop(fleet);
    for (device, tally) in &tallies {
        assert_eq!(
            tally.acked,
            (0..tally.queued).collect::<Vec<_>>(),
            "{device}: every reading acknowledged, in order"
        );
    }
    let acked: BTreeMap<String, Vec<u64>> = tallies
        .into_iter()
        .map(|(device, tally)| (device, tally.acked))
        .collect();
    wait_for_complete_delivery(&gw, &backend, &acked, true, Duration::from_secs(60));
    assert!(gw.is_running(), "{}", gw.logs());
}

/// The `n`-th access event of the flooding cabinet: an override without a witness, which the
/// default policy flags (`override_without_witness`), so each one raises an access-flag alert
/// (two, outside the default opening hours: `access_after_hours` too for the controlled ones).
/// Even `n` are a controlled substance (CII: high lane, audited), odd `n` not (normal lane), so
/// the cabinet's event stream uses two lanes, as the cloud contract says it may. `event_id`
/// carries `n`.
fn unwitnessed_override(n: u64) -> String {
    let (schedule, item, ndc) = if n.is_multiple_of(2) {
        ("CII", "Morphine 10mg", "0409-1234-01")
    } else {
        ("none", "Amoxicillin 500mg", "0093-4155-73")
    };
    format!(
        r#"{{"type":"access","action":"override","user":"nurse-7","drawer":"C1","ndc":"{ndc}","item":"{item}","schedule":"{schedule}","quantity":1,"auth":"badge","ts":"2026-05-01T08:00:00Z","event_id":"flood-{n}"}}"#
    )
}

/// The outbox lane a message of the default policy waits in (docs/cloud-contract.md, "Order"):
/// within one lane a topic's messages leave, and first arrive, in `seq` order.
fn lane(topic: &str, message: &serde_json::Value) -> &'static str {
    if topic.ends_with("/alerts") {
        "critical"
    } else if topic.ends_with("/events") {
        match message["event"]["schedule"].as_str() {
            Some("CII" | "CIII" | "CIV" | "CV") => "high",
            _ => "normal",
        }
    } else if topic.ends_with("/telemetry") {
        "normal"
    } else {
        // Device statuses, audit checkpoints.
        "high"
    }
}

/// What [`check_streams`] counted.
#[derive(Debug, Default)]
struct StreamFigures {
    /// Messages received (copies included), `gateway/status` left out.
    messages: usize,
    /// Distinct `id`s among them.
    ids: usize,
    /// Distinct (topic, `seq`) among them.
    records: usize,
    /// Distinct `seq`s on the alerts topic.
    alerts: usize,
    /// Topics seen, with how many distinct `seq`s each.
    streams: BTreeMap<String, usize>,
}

/// Checks every stream (topic) the backend received against the cloud contract's sequence
/// numbers (docs/cloud-contract.md, "Sequence numbers and gaps", "Delivery", "Order"):
/// - the `seq`s seen on a topic are contiguous from the first seen to the last: a gap is a
///   record lost, or overwritten in the outbox by another one;
/// - each `seq` of a topic came with exactly one `id` (two would be two records given one
///   place in the stream);
/// - each copy of an `id` is the same message: same topic, same `seq`, same bytes. Except on the
///   alerts topic, where a notification the gateway hands to its outbox again after a restart
///   comes as a new message with a new `seq` (the contract's "Consuming alerts"): there an `id`
///   seen under another `seq` must be the same notification, the same (`alert.id`, `event`);
/// - within one lane of one topic, the first copies arrived in `seq` order. Across the lanes of
///   a topic there is no order to check: the contract lets a cabinet's controlled-substance
///   events (high lane) overtake its other events (normal lane), so only `seq` uniqueness and
///   contiguity hold across them.
///
/// `gateway/status` is a state, not a stream (no `id`, no `seq`), and is left out.
fn check_streams(messages: &[(String, String)]) -> (Vec<String>, StreamFigures) {
    #[derive(Default)]
    struct Stream<'a> {
        ids_of_seq: BTreeMap<u64, BTreeSet<String>>,
        /// First copy of each id: its seq, its payload, and (alerts) its (`alert.id`, `event`).
        first: HashMap<String, (u64, &'a str, (String, String))>,
        /// Per lane, each seq in the order its first copy arrived.
        first_seqs: BTreeMap<&'static str, Vec<u64>>,
    }
    let mut problems = Vec::new();
    let mut streams: BTreeMap<&str, Stream> = BTreeMap::new();
    let mut topic_of_id: HashMap<String, &str> = HashMap::new();
    let mut figures = StreamFigures::default();
    for (topic, payload) in messages {
        if topic.ends_with("/gateway/status") {
            continue;
        }
        figures.messages += 1;
        let m: serde_json::Value = match serde_json::from_str(payload) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{topic}: not JSON ({e}): {payload}"));
                continue;
            }
        };
        let (Some(id), Some(seq)) = (m["id"].as_str(), m["seq"].as_u64()) else {
            problems.push(format!("{topic}: no id or seq: {payload}"));
            continue;
        };
        let notification = (
            m["alert"]["id"].as_str().unwrap_or_default().to_owned(),
            m["event"].as_str().unwrap_or_default().to_owned(),
        );
        match topic_of_id.get(id) {
            Some(first) if first != topic => {
                problems.push(format!("id {id} came on {first} and on {topic}"));
                continue;
            }
            Some(_) => {}
            None => {
                topic_of_id.insert(id.to_owned(), topic);
            }
        }
        let stream = streams.entry(topic).or_default();
        let new_seq = !stream.ids_of_seq.contains_key(&seq);
        stream
            .ids_of_seq
            .entry(seq)
            .or_default()
            .insert(id.to_owned());
        if new_seq {
            stream
                .first_seqs
                .entry(lane(topic, &m))
                .or_default()
                .push(seq);
        }
        match stream.first.get(id) {
            None => {
                stream
                    .first
                    .insert(id.to_owned(), (seq, payload, notification));
            }
            Some((first_seq, _, first_notification)) if *first_seq != seq => {
                if !topic.ends_with("/alerts") || *first_notification != notification {
                    problems.push(format!(
                        "{topic}: id {id} came as seq {first_seq} and as seq {seq}"
                    ));
                }
            }
            Some((_, first_payload, _)) if *first_payload != payload.as_str() => {
                problems.push(format!(
                    "{topic}: two copies of id {id}, seq {seq}, differ:\n  {first_payload}\n  {payload}"
                ));
            }
            Some(_) => {}
        }
    }
    for (topic, stream) in &streams {
        figures.ids += stream.first.len();
        figures.records += stream.ids_of_seq.len();
        figures
            .streams
            .insert((*topic).to_owned(), stream.ids_of_seq.len());
        if topic.ends_with("/alerts") {
            figures.alerts = stream.ids_of_seq.len();
        }
        for (seq, ids) in &stream.ids_of_seq {
            if ids.len() > 1 {
                problems.push(format!(
                    "{topic}: seq {seq} came with {} ids: {ids:?}",
                    ids.len()
                ));
            }
        }
        if let (Some(first), Some(last)) = (
            stream.ids_of_seq.keys().next(),
            stream.ids_of_seq.keys().next_back(),
        ) {
            let missing: Vec<u64> = (*first..=*last)
                .filter(|seq| !stream.ids_of_seq.contains_key(seq))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{topic}: {} seq missing between {first} and {last}: {:?}{}",
                    missing.len(),
                    &missing[..missing.len().min(20)],
                    if missing.len() > 20 { " …" } else { "" }
                ));
            }
        }
        for (lane, seqs) in &stream.first_seqs {
            if let Some(w) = seqs.windows(2).find(|w| w[0] > w[1]) {
                problems.push(format!(
                    "{topic} ({lane} lane): seq {} first arrived after seq {}",
                    w[1], w[0]
                ));
            }
        }
    }
    (problems, figures)
}

/// Every device and fleet tally has stopped: waits until each connection has ended.
fn ended(fleet: &Fleet, what: &str) -> BTreeMap<String, Tally> {
    wait_until(
        Duration::from_secs(15),
        &format!("{what} to lose its connection"),
        || {
            let tallies = fleet.snapshot();
            tallies
                .values()
                .all(|t| t.ended.is_some())
                .then_some(tallies)
        },
    )
}

/// Issue 3, with every outbox writer busy at once: a power cut (SIGKILL) of the gateway while
/// ten devices publish QoS 1 telemetry, a Modbus fridge is polled every 100 ms, and a cabinet
/// floods the gateway with flagged access events, each raising an alert that the alert channels
/// append to the outbox from their own thread while the pipeline appends telemetry, events and
/// statuses. After a restart on the same data dir:
/// - every telemetry reading and every access event the gateway had acknowledged reaches the
///   cloud, a copy only ever with the same `id`;
/// - every stream the cloud received (each device's telemetry, the fridge's telemetry, the
///   cabinet's events, the alerts, each device's status, the audit checkpoints) is numbered
///   without gaps, one `id` per `seq`, first copies in `seq` order within each lane.
#[test]
fn a_gateway_killed_during_telemetry_modbus_polls_and_an_alert_flood_keeps_every_stream_gapless_with_one_id_per_seq_after_restart()
 {
    let tmp = tempfile::tempdir().unwrap();
    let mut sim = std::process::Command::new(rxgate_e2e::bin("rxgate-sim"));
    sim.args(["fridge", "--tcp", "127.0.0.1:0", "--setpoint", "4.5"]);
    let (fridge_sim, fridge_port) = rxgate_e2e::start_ready(sim, "rxgate-sim fridge");
    let cloud = Cloud::start(tmp.path());
    let model = rxgate_e2e::workspace().join("config/devices/acme-fr400.toml");
    // The default policy's event rate limit (2 a second, bursts of 120) would hold the cabinet
    // back, and access flags fold into one alert per (device, flag): this test wants a flood of
    // kept events and of alert notifications, so the limit is raised and every occurrence is
    // sent on (a digest interval of zero).
    let policy = rxgate_e2e::policy_without_event_limit(tmp.path());
    // The fridge is polled as often as the gateway allows (100 ms), 10 readings a second.
    let mut gw = gateway_for_fleet(
        &cloud,
        &format!(
            "[gateway]\npolicy_file = \"{}\"\n[alerts]\nflag_digest_every = \"0s\"\n\
             [devices.fridge-modbus]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{fridge_port}\"\n\
             model = \"{}\"\npoll_interval = \"100ms\"\ntimeout = \"80ms\"\nmax_backoff = \"400ms\"\n",
            policy.display(),
            model.display()
        ),
    );
    let backend = cloud.subscribe("rxgate/v1/store-0042/#");
    const FRIDGE: &str = "rxgate/v1/store-0042/devices/fridge-modbus/telemetry";
    const FRIDGE_STATUS: &str = "rxgate/v1/store-0042/devices/fridge-modbus/status";
    const EVENTS: &str = "rxgate/v1/store-0042/devices/cabinet-01/events";
    const ALERTS: &str = "rxgate/v1/store-0042/alerts";
    let devices = enroll_fleet(&gw, 10);
    let cabinet = Credentials::load(&gw.enroll_with_sim("cabinet-01", "cabinet")).unwrap();

    // Telemetry is rate-limited (50 a second per device, bursts of 500) and events are not here:
    // 40 events a second, each flagged, and 40 readings a second per device, at most 450 each
    // (under the burst whatever the pacing), are all kept.
    let flood = Fleet::publishing(
        &gw,
        vec![cabinet],
        "events",
        unwitnessed_override,
        Some(Duration::from_millis(25)),
        2000,
    );
    let fleet = Fleet::start(&gw, devices, Some(Duration::from_millis(25)), 450);
    wait_until(
        Duration::from_secs(40),
        "hundreds of PUBACKs for every publisher, alerts and fridge readings at the cloud",
        || {
            let tallies = fleet.snapshot();
            let total: usize = tallies.values().map(|t| t.acked.len()).sum();
            let events = flood
                .snapshot()
                .values()
                .map(|t| t.acked.len())
                .sum::<usize>();
            (total >= 600
                && tallies.values().all(|t| t.acked.len() >= 30)
                && events >= 80
                && backend.json_on(ALERTS).len() >= 40
                && backend.json_on(FRIDGE).len() >= 10)
                .then_some(())
        },
    );
    // A power cut while all of it goes on: no chance to flush or to say goodbye.
    fleet.expect_drop.store(true, Ordering::SeqCst);
    flood.expect_drop.store(true, Ordering::SeqCst);
    let mut child = gw.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let tallies = ended(&fleet, "every device");
    let cabinet = ended(&flood, "the cabinet");
    drop((fleet, flood));
    acked_in_order(&cabinet);
    let acked = acked_in_order(&tallies);
    let events_acked = cabinet["cabinet-01"].acked.clone();
    let alerts_before = backend.json_on(ALERTS).len();

    gw.spawn();
    // The poller takes up the fridge again; then the fridge goes away for good (offline after
    // three failed polls), so that the outbox can empty.
    let polled_before = backend.json_on(FRIDGE).len();
    wait_until(
        Duration::from_secs(15),
        "fridge readings after the restart",
        || (backend.json_on(FRIDGE).len() >= polled_before + 5).then_some(()),
    );
    drop(fridge_sim);
    wait_until(
        Duration::from_secs(15),
        "the fridge reported offline",
        || (backend.json_on(FRIDGE_STATUS).last()?["online"] == false).then_some(()),
    );
    // Everything found wrong is reported together, telemetry, events and streams, so a
    // failure shows the whole picture.
    let mut problems = delivery_problems(&gw, &backend, &acked, true, Duration::from_secs(30));

    // The cabinet: every acknowledged event arrived, each under one message id.
    let mut ids_of_event: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in backend.json_on(EVENTS) {
        let event_id = m["event"]["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = m["id"].as_str().unwrap_or_default().to_owned();
        ids_of_event.entry(event_id).or_default().insert(id);
    }
    let missing: Vec<u64> = events_acked
        .iter()
        .copied()
        .filter(|n| !ids_of_event.contains_key(&format!("flood-{n}")))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "cabinet-01: {} of {} acknowledged access events missing, flood-n for n = {missing:?}",
            missing.len(),
            events_acked.len()
        ));
    }
    for (event_id, ids) in &ids_of_event {
        if ids.len() > 1 {
            problems.push(format!(
                "cabinet-01: {event_id} arrived as different messages: {ids:?}"
            ));
        }
    }

    // Every stream: gapless, one id per seq, in order within each lane. The outbox is empty,
    // so the broker has everything; the backend may still be receiving the last of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (stream_problems, figures) = loop {
        let (stream_problems, figures) = check_streams(&backend.messages());
        if stream_problems.is_empty() || Instant::now() > deadline {
            break (stream_problems, figures);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    problems.extend(stream_problems);
    eprintln!(
        "acknowledged: {} readings, {} access events; at the cloud: {} messages, {} distinct ids, \
         {} duplicates, {} records in {} streams, {} alerts ({} before the kill), {} fridge readings",
        acked.values().map(Vec::len).sum::<usize>(),
        events_acked.len(),
        figures.messages,
        figures.ids,
        figures.messages - figures.ids,
        figures.records,
        figures.streams.len(),
        figures.alerts,
        alerts_before,
        figures.streams.get(FRIDGE).copied().unwrap_or(0),
    );
    for topic in [FRIDGE, FRIDGE_STATUS, EVENTS, ALERTS] {
        if !figures.streams.contains_key(topic) {
            problems.push(format!("nothing on {topic}"));
        }
    }
    assert!(
        problems.is_empty(),
        "after the restart, {} problems with what reached the cloud:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
