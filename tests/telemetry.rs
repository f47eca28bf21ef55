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
/// as every simulated device enrolls from 127.0.0.1. The policy is the built-in default, whose
/// telemetry rate limit (50 a second per device, bursts of 500) acknowledges and drops what
/// exceeds it: the loads below stay under it, so every acknowledged reading must reach the cloud.
fn gateway_for_fleet(cloud: &Cloud) -> Gateway {
    Gateway::start(&format!(
        "{}[enroll]\nrate_per_minute = 6000\nrate_burst = 200\n",
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

impl Fleet {
    /// Connects every device to `gw` and starts publishing `{"points":{"temperature_c":4.5,
    /// "n":N}}` on `devices/<id>/telemetry` with N = 0, 1, 2, … per device: at most `limit`
    /// messages, one every `every`, or with `None` as fast as the acknowledgements allow (16 in
    /// flight per device).
    fn start(
        gw: &Gateway,
        devices: Vec<Credentials>,
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
                    credentials.device.clone(),
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

/// One device: a publisher task, and the event loop matching PUBACKs to messages. Without
/// reconnections nothing is sent twice, so the k-th PUBLISH written carries n = k, and a PUBACK
/// names the packet id of one in flight.
async fn device(
    options: MqttOptions,
    name: String,
    tally: Arc<Mutex<Tally>>,
    every: Option<Duration>,
    limit: u64,
    stop: Arc<AtomicBool>,
    expect_drop: Arc<AtomicBool>,
) {
    let (client, mut events) = AsyncClient::new(options, 16);
    let publisher = tally.clone();
    tokio::spawn(async move {
        let topic = format!("devices/{name}/telemetry");
        let mut tick = every.map(tokio::time::interval);
        for n in 0..limit {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(tick) = tick.as_mut() {
                tick.tick().await;
            }
            let payload = format!(r#"{{"points":{{"temperature_c":4.5,"n":{n}}}}}"#);
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

/// One telemetry message as the backend received it.
struct Arrival {
    device: String,
    n: u64,
    seq: u64,
    id: String,
}

/// The telemetry the backend has received, in arrival order.
fn arrivals(backend: &Subscription) -> Vec<Arrival> {
    backend
        .messages()
        .into_iter()
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
    let deadline = Instant::now() + timeout;
    loop {
        let arrivals = arrivals(backend);
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
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "after {timeout:?}, {} telemetry messages at the cloud, and:\n{}",
                arrivals.len(),
                problems.join("\n")
            );
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
    let mut gw = gateway_for_fleet(&cloud);
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
    for (device, tally) in &tallies {
        // MQTT 3.1.1 §4.6: PUBACKs in the order the PUBLISHes came.
        assert_eq!(
            tally.acked,
            (0..tally.acked.len() as u64).collect::<Vec<_>>(),
            "{device}: PUBACKs out of order"
        );
    }
    let acked: BTreeMap<String, Vec<u64>> = tallies
        .into_iter()
        .map(|(device, tally)| (device, tally.acked))
        .collect();

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
    let mut gw = gateway_for_fleet(&cloud);
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
            let devices: HashSet<String> = arrivals(&backend)
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
            for a in arrivals(&backend) {
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
