use proptest::prelude::*;

use super::*;

fn outbox(max_bytes: u64) -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    (dir, Outbox::open(store, max_bytes).unwrap())
}

fn record(priority: Priority, topic: &str, body: &str) -> NewRecord {
    let body = body.to_owned();
    NewRecord {
        priority,
        topic: topic.to_owned(),
        retain: false,
        accepted_ms: 1_700_000_000_000,
        seq: None,
        payload: Box::new(move |seq| format!("{{\"seq\":{seq},\"b\":\"{body}\"}}").into_bytes()),
    }
}

fn ok(results: Vec<Result<Appended, AppendError>>) -> Vec<Appended> {
    results.into_iter().map(Result::unwrap).collect()
}

fn message(accepted_ms: u64, topic: &str, payload: &[u8]) -> Message {
    Message {
        accepted_ms,
        retain: false,
        topic: topic.into(),
        payload: payload.to_vec(),
    }
}

/// Every stored record as written: key and value bytes.
fn raw_records(outbox: &Outbox) -> Vec<(RecordKey, Vec<u8>)> {
    outbox
        .store
        .read(|txn| {
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
        .unwrap()
}

/// The bytes the stored records take.
fn stored_bytes(outbox: &Outbox) -> u64 {
    raw_records(outbox)
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum()
}

/// Writes `value` at `key` as it is, as an older rxgate (or damage) would have left it.
fn plant(outbox: &Outbox, key: RecordKey, value: &[u8]) {
    outbox
        .store
        .write(|txn| {
            txn.open_table(OUTBOX)?.insert(key, value)?;
            Ok(())
        })
        .unwrap();
}

#[test]
fn appended_records_read_back_in_order_with_per_stream_seq() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(vec![
            record(Priority::Normal, "t/a", "1"),
            record(Priority::Normal, "t/b", "2"),
            record(Priority::Normal, "t/a", "3"),
        ])
        .unwrap());
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    let read = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].topic, "t/a");
    assert_eq!(read[2].payload, br#"{"seq":2,"b":"3"}"#);
    let after_first = outbox
        .read_after(
            Priority::Normal as u8,
            Some((read[0].key.1, read[0].key.2)),
            10,
        )
        .unwrap();
    assert_eq!(after_first.len(), 2);
}

#[test]
fn lanes_are_separate_and_seq_continues_across_them() {
    let (_dir, outbox) = outbox(u64::MAX);
    ok(outbox
        .append(vec![record(Priority::Low, "t/a", "x")])
        .unwrap());
    let high = ok(outbox
        .append(vec![record(Priority::High, "t/a", "y")])
        .unwrap());
    assert_eq!(high[0].seq, 2);
    assert_eq!(
        outbox
            .read_after(Priority::High as u8, None, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        outbox
            .read_after(Priority::Low as u8, None, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        outbox
            .read_after(Priority::Critical as u8, None, 10)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn acknowledged_messages_are_not_read_again_and_depth_follows() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(
            (0..5)
                .map(|i| record(Priority::Normal, "t", &i.to_string()))
                .collect(),
        )
        .unwrap());
    assert_eq!(outbox.depth().unwrap().records, 5);
    outbox.ack(&[appended[0].key, appended[1].key]).unwrap();
    let depth = outbox.depth().unwrap();
    assert_eq!(depth.records, 3);
    assert_eq!(depth.oldest_ms, Some(1_700_000_000_000));
    let left = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
    assert_eq!(
        left.iter().map(|r| r.key).collect::<Vec<_>>(),
        [appended[2].key, appended[3].key, appended[4].key]
    );
}

#[test]
fn a_full_outbox_refuses_new_records_and_keeps_the_old() {
    let (_dir, outbox) = outbox(100);
    let results = outbox
        .append(
            (0..10)
                .map(|i| record(Priority::Normal, "topic", &format!("{i:040}")))
                .collect(),
        )
        .unwrap();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!((1..10).contains(&accepted), "{accepted}");
    assert!(matches!(
        results.last().unwrap(),
        Err(AppendError::Full { .. })
    ));
    assert_eq!(
        outbox
            .read_after(Priority::Normal as u8, None, 100)
            .unwrap()
            .len(),
        accepted
    );
}

#[test]
fn records_and_seqs_survive_reopening_and_keys_keep_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let first = {
        let outbox = Outbox::open(Store::create(&path).unwrap(), u64::MAX).unwrap();
        ok(outbox
            .append(vec![
                record(Priority::Normal, "t", "a"),
                record(Priority::Normal, "t", "b"),
            ])
            .unwrap())
    };
    let outbox = Outbox::open(Store::open(&path).unwrap(), u64::MAX).unwrap();
    assert_eq!(outbox.depth().unwrap().records, 2);
    let next = ok(outbox
        .append(vec![record(Priority::Normal, "t", "c")])
        .unwrap());
    assert_eq!(next[0].seq, 3);
    assert!(next[0].key.1 > first[1].key.1);
}

#[test]
fn a_corrupt_record_is_reported_not_panicked_on() {
    let (_dir, outbox) = outbox(u64::MAX);
    outbox
        .store
        .write(|txn| {
            txn.open_table(OUTBOX)?
                .insert((2, 7), [9u8, 1, 2].as_slice())?;
            Ok(())
        })
        .unwrap();
    let err = outbox.read_after(2, None, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "store record outbox/(2, 7) is unreadable: unknown record version"
    );
}

#[test]
fn an_append_that_finds_its_key_taken_writes_nothing_and_the_next_one_succeeds() {
    let (_dir, outbox) = outbox(u64::MAX);
    let first = ok(outbox
        .append(vec![record(Priority::Normal, "t", "a")])
        .unwrap());
    // A record the counter does not know of, at the very next key.
    let planted = record::encode_v1(&message(1, "planted", b"kept"));
    outbox
        .store
        .write(|txn| {
            txn.open_table(OUTBOX)?
                .insert((2, first[0].key.1 + 1), planted.as_slice())?;
            Ok(())
        })
        .unwrap();
    let err = outbox
        .append(vec![record(Priority::Normal, "t", "b")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "outbox key (2, {}) already holds a stored record; the batch was not written and the record kept (the key counter has moved past every stored key, so sending again will succeed)",
            first[0].key.1 + 1
        )
    );
    let stored = outbox.read_after(2, None, 10).unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|r| (r.topic.as_str(), r.payload.as_slice()))
            .collect::<Vec<_>>(),
        [
            ("t", br#"{"seq":1,"b":"a"}"#.as_slice()),
            ("planted", b"kept".as_slice())
        ]
    );
    let again = ok(outbox
        .append(vec![record(Priority::Normal, "t", "b")])
        .unwrap());
    assert_eq!(again[0].key, (2, first[0].key.1 + 2, 0));
    assert_eq!(again[0].seq, 2, "the refused batch used no seq");
}

#[test]
fn depth_reports_the_oldest_first_record_of_any_lane_without_reading() {
    let (_dir, outbox) = outbox(u64::MAX);
    assert_eq!(outbox.depth().unwrap(), Depth::default());
    let at = |priority, ms| NewRecord {
        accepted_ms: ms,
        ..record(priority, "t", "x")
    };
    let appended = ok(outbox
        .append(vec![
            at(Priority::Low, 3_000),
            at(Priority::Critical, 5_000),
            at(Priority::Low, 1_000),
        ])
        .unwrap());
    // Lane order decides what is first in a lane, not the timestamp.
    assert_eq!(outbox.depth().unwrap().oldest_ms, Some(3_000));
    // The low lane's record holds both of its messages: it goes when both are acknowledged.
    outbox.ack(&[appended[0].key]).unwrap();
    assert_eq!(outbox.depth().unwrap().oldest_ms, Some(3_000));
    assert_eq!(outbox.depth().unwrap().records, 2);
    outbox.ack(&[appended[2].key]).unwrap();
    assert_eq!(outbox.depth().unwrap().oldest_ms, Some(5_000));
    outbox.ack(&[appended[1].key]).unwrap();
    assert_eq!(outbox.depth().unwrap(), Depth::default());
}

#[test]
fn read_due_takes_lanes_in_priority_order_after_each_cursor_up_to_the_limit() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(vec![
            record(Priority::Low, "t", "l1"),
            record(Priority::High, "t", "h1"),
            record(Priority::High, "t", "h2"),
            record(Priority::Critical, "t", "c1"),
            record(Priority::Low, "t", "l2"),
        ])
        .unwrap());
    let keys = |records: Vec<Record>| records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let all = outbox.read_due(&[None; LANES], 10).unwrap();
    assert_eq!(
        keys(all),
        [3, 1, 2, 0, 4].map(|i| appended[i].key),
        "critical, then high, then low"
    );
    let cursor = |i: usize| Some((appended[i].key.1, appended[i].key.2));
    let cursors = [None, cursor(1), None, cursor(0)];
    assert_eq!(
        keys(outbox.read_due(&cursors, 10).unwrap()),
        [3, 2, 4].map(|i| appended[i].key)
    );
    assert_eq!(
        keys(outbox.read_due(&[None; LANES], 2).unwrap()),
        [3, 1].map(|i| appended[i].key)
    );
}

#[test]
fn read_due_reads_on_from_a_cursor_inside_a_record_skipping_what_the_cloud_acknowledged() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(
            (0..6)
                .map(|i| record(Priority::Normal, "t", &format!("m{i}")))
                .collect(),
        )
        .unwrap());
    // One group commit in one lane: one record, its messages at indices 0..6.
    assert!(appended.windows(2).all(|w| w[0].key.1 == w[1].key.1));
    outbox.ack(&[appended[3].key]).unwrap();
    let mut cursors = [None; LANES];
    let lane = usize::from(appended[0].key.0);
    cursors[lane] = Some((appended[1].key.1, appended[1].key.2));
    let due = outbox.read_due(&cursors, 10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.key).collect::<Vec<_>>(),
        [2, 4, 5].map(|i| appended[i].key)
    );
    let bodies: Vec<String> = due
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    assert!(
        ["m2", "m4", "m5"]
            .iter()
            .zip(&bodies)
            .all(|(m, b)| b.contains(&format!("\"b\":\"{m}\""))),
        "{bodies:?}"
    );
    cursors[lane] = Some((appended[5].key.1, appended[5].key.2));
    assert!(
        outbox.read_due(&cursors, 10).unwrap().is_empty(),
        "a cursor at the end"
    );
}

const PRIORITIES: [Priority; LANES] = [
    Priority::Critical,
    Priority::High,
    Priority::Normal,
    Priority::Low,
];

/// What one appender was told: where each record landed and what it should read back as.
struct Sent {
    appended: Appended,
    topic: String,
    payload: Vec<u8>,
}

/// Appends `batches` (each a list of `(lane, stream)`) from one thread, tagging every payload with
/// `thread` so records from different threads can never look alike.
fn append_batches(outbox: &Outbox, thread: usize, batches: &[Vec<(u8, u8)>]) -> Vec<Sent> {
    let mut sent = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let records = batch
            .iter()
            .enumerate()
            .map(|(i, (lane, stream))| {
                record(
                    PRIORITIES[usize::from(*lane)],
                    &format!("s{stream}"),
                    &format!("t{thread}-b{b}-i{i}"),
                )
            })
            .collect();
        let appended = ok(outbox.append(records).unwrap());
        for ((i, (_, stream)), appended) in batch.iter().enumerate().zip(appended) {
            sent.push(Sent {
                appended,
                topic: format!("s{stream}"),
                payload: format!("{{\"seq\":{},\"b\":\"t{thread}-b{b}-i{i}\"}}", appended.seq)
                    .into_bytes(),
            });
        }
    }
    sent
}

/// Runs one appender thread per entry of `work`, all released at once.
fn append_concurrently(outbox: &Outbox, work: Vec<Vec<Vec<(u8, u8)>>>) -> Vec<Vec<Sent>> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(work.len()));
    let threads: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(thread, batches)| {
            let outbox = outbox.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                append_batches(&outbox, thread, &batches)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Everything stored, by key.
fn stored(outbox: &Outbox) -> std::collections::BTreeMap<Key, Record> {
    (0..LANES as u8)
        .flat_map(|lane| outbox.read_after(lane, None, usize::MAX).unwrap())
        .map(|r| (r.key, r))
        .collect()
}

/// Checks what concurrent appenders were told against `found` (every record stored, or stored
/// and then acknowledged): how many keys were handed out twice, how many records are not found
/// exactly as appended, and whether every stream's seqs are exactly 1..=n.
fn check_concurrent_appends(
    sent: &[Vec<Sent>],
    found: &std::collections::BTreeMap<Key, Record>,
) -> (usize, usize, Result<(), String>) {
    let all: Vec<&Sent> = sent.iter().flatten().collect();
    let keys: std::collections::HashSet<Key> = all.iter().map(|s| s.appended.key).collect();
    let collisions = all.len() - keys.len();
    let lost = all
        .iter()
        .filter(|s| {
            found
                .get(&s.appended.key)
                .is_none_or(|r| r.topic != s.topic || r.payload != s.payload)
        })
        .count();
    let mut seqs: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for s in &all {
        seqs.entry(&s.topic).or_default().push(s.appended.seq);
    }
    let mut streams = Ok(());
    for (topic, mut seq) in seqs {
        seq.sort_unstable();
        if seq != (1..=seq.len() as u64).collect::<Vec<_>>() {
            streams = Err(format!(
                "stream {topic} has seqs that are not 1..={}",
                seq.len()
            ));
        }
    }
    (collisions, lost, streams)
}

#[test]
fn four_threads_appending_ten_thousand_records_at_once_get_unique_keys_and_lose_none() {
    const THREADS: usize = 4;
    const BATCHES: usize = 250;
    const PER_BATCH: usize = 10;
    let (_dir, outbox) = outbox(u64::MAX);
    let work = (0..THREADS)
        .map(|t| {
            (0..BATCHES)
                .map(|b| {
                    (0..PER_BATCH)
                        .map(|i| (((t + b + i) % LANES) as u8, (i % 3) as u8))
                        .collect()
                })
                .collect()
        })
        .collect();
    let sent = append_concurrently(&outbox, work);
    let stored = stored(&outbox);
    let (collisions, lost, streams) = check_concurrent_appends(&sent, &stored);
    assert_eq!(
        (collisions, lost),
        (0, 0),
        "(keys handed out twice, records that do not read back as appended)"
    );
    assert_eq!(streams, Ok(()));
    assert_eq!(stored.len(), THREADS * BATCHES * PER_BATCH);
    let depth = outbox.depth().unwrap();
    assert_eq!(depth.records, stored.len() as u64);
    assert_eq!(depth.bytes, stored_bytes(&outbox));
    // Each batch of ten spreads over all four lanes: one record per lane and batch.
    assert_eq!(raw_records(&outbox).len(), THREADS * BATCHES * LANES);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, u8)>),
    AckOldest(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec((0u8..4, 0u8..3), 1..6).prop_map(Op::Append),
        (1usize..5).prop_map(Op::AckOldest),
        Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Against a model: whatever the interleaving of appends, acknowledgements and restarts,
    /// nothing accepted is lost, nothing acknowledged comes back except after a restart the
    /// messages of a record not wholly acknowledged, lanes keep FIFO order, and each stream's seq
    /// grows by one per message.
    #[test]
    fn outbox_matches_a_model_across_appends_acks_and_restarts(ops in prop::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let mut outbox = Some(Outbox::open(Store::create(&path).unwrap(), u64::MAX).unwrap());
        let mut model: [Vec<(Key, String, u64)>; LANES] = Default::default();
        let mut last_seq: std::collections::HashMap<String, u64> = Default::default();
        // Acknowledged since the last restart.
        let mut acked: Vec<(Key, String, u64)> = Vec::new();
        for op in ops {
            let ob = outbox.as_ref().unwrap();
            match op {
                Op::Append(items) => {
                    let batch = items.iter().map(|(lane, stream)| {
                        let priority = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low][*lane as usize];
                        record(priority, &format!("s{stream}"), "p")
                    }).collect();
                    let appended = ok(ob.append(batch).unwrap());
                    for ((lane, stream), a) in items.iter().zip(appended) {
                        let topic = format!("s{stream}");
                        let expected = last_seq.get(&topic).copied().unwrap_or(0) + 1;
                        prop_assert_eq!(a.seq, expected);
                        last_seq.insert(topic.clone(), a.seq);
                        prop_assert_eq!(a.key.0, *lane);
                        model[*lane as usize].push((a.key, topic, a.seq));
                    }
                }
                Op::AckOldest(n) => {
                    for lane in model.iter_mut() {
                        let take = n.min(lane.len());
                        let taken: Vec<(Key, String, u64)> = lane.drain(..take).collect();
                        let keys: Vec<Key> = taken.iter().map(|(k, _, _)| *k).collect();
                        ob.ack(&keys).unwrap();
                        acked.extend(taken);
                    }
                }
                Op::Reopen => {
                    drop(outbox.take());
                    outbox = Some(Outbox::open(Store::open(&path).unwrap(), u64::MAX).unwrap());
                    // Acknowledgements live in memory: a record not wholly acknowledged comes
                    // back in full, in its place.
                    let records: std::collections::HashSet<(u8, u64)> = model
                        .iter()
                        .flatten()
                        .map(|(k, _, _)| (k.0, k.1))
                        .collect();
                    for (key, topic, seq) in acked.drain(..) {
                        if records.contains(&(key.0, key.1)) {
                            model[usize::from(key.0)].push((key, topic, seq));
                        }
                    }
                    for lane in model.iter_mut() {
                        lane.sort_by_key(|(k, _, _)| *k);
                    }
                }
            }
            let ob = outbox.as_ref().unwrap();
            for (lane, expected) in model.iter().enumerate() {
                let stored = ob.read_after(lane as u8, None, 1000).unwrap();
                let stored: Vec<(Key, String)> = stored.into_iter().map(|r| (r.key, r.topic)).collect();
                let expected: Vec<(Key, String)> = expected.iter().map(|(k, t, _)| (*k, t.clone())).collect();
                prop_assert_eq!(stored, expected);
            }
        }
    }

    /// Several appenders at once, with a drainer acknowledging whatever it reads (as the uplink
    /// does): no key is handed out twice, every record reads back as appended until it is
    /// acknowledged, each appender's records keep their order within a lane, every stream's seqs
    /// are exactly 1..=n, and the counts match what is left.
    #[test]
    fn concurrent_appenders_and_a_drainer_lose_nothing_and_share_no_key(
        work in prop::collection::vec(
            prop::collection::vec(prop::collection::vec((0u8..4, 0u8..3), 1..6), 1..12),
            2..5,
        ),
        drain in any::<bool>(),
    ) {
        let (_dir, outbox) = outbox(u64::MAX);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drainer = drain.then(|| {
            let outbox = outbox.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut acked: Vec<Record> = Vec::new();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let due = outbox.read_due(&[None; LANES], 7).unwrap();
                    if due.is_empty() {
                        if finished {
                            return acked;
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    outbox.ack(&due.iter().map(|r| r.key).collect::<Vec<_>>()).unwrap();
                    acked.extend(due);
                }
            })
        });
        let sent = append_concurrently(&outbox, work);
        done.store(true, Ordering::Release);
        let acked = drainer.map(|d| d.join().unwrap()).unwrap_or_default();

        let left = stored(&outbox);
        let mut found = left.clone();
        for record in acked {
            let key = record.key;
            prop_assert!(found.insert(key, record).is_none(), "{:?} acknowledged twice or kept after its delete", key);
        }
        let (collisions, lost, streams) = check_concurrent_appends(&sent, &found);
        prop_assert_eq!((collisions, lost), (0, 0), "(keys handed out twice, records not found as appended)");
        prop_assert_eq!(streams, Ok(()));
        prop_assert_eq!(found.len(), sent.iter().map(Vec::len).sum::<usize>());
        for mine in &sent {
            for lane in 0..LANES as u8 {
                let ns: Vec<(u64, u16)> = mine.iter().filter(|s| s.appended.key.0 == lane).map(|s| (s.appended.key.1, s.appended.key.2)).collect();
                prop_assert!(ns.windows(2).all(|w| w[0] < w[1]), "lane {} out of order: {:?}", lane, ns);
            }
        }
        let depth = outbox.depth().unwrap();
        prop_assert_eq!(depth.records, left.len() as u64);
        prop_assert_eq!(depth.bytes, stored_bytes(&outbox));
        prop_assert_eq!(depth.oldest_ms, left.values().next().map(|r| r.accepted_ms));
    }
}

/// A cloud message as the pipeline builds it: repeated keys, a random id, a drifting value.
fn telemetry(device: usize, n: usize) -> NewRecord {
    NewRecord {
        priority: Priority::Normal,
        topic: format!("rxgate/v1/store-0042/devices/bench-{device:03}/telemetry"),
        retain: false,
        accepted_ms: 1_765_000_000_000 + n as u64,
        seq: None,
        payload: Box::new(move |seq| {
            let id = envelope_id(device, n);
            format!(
                r#"{{"id":"{id}","seq":{seq},"site":"store-0042","device":"bench-{device:03}","type":"telemetry","device_ts":null,"gateway_ts":"2026-12-07T14:20:{:02}.{:03}Z","clock_synced":true,"points":{{"temperature_c":{{"value":{}.{}}}}}}}"#,
                n % 60,
                n * 7 % 1000,
                4 + n % 3,
                n % 10
            )
            .into_bytes()
        }),
    }
}

fn envelope_id(device: usize, n: usize) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    let mut x = (device as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n as u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[test]
fn a_batch_is_stored_as_one_compressed_record_per_lane_and_read_back_message_by_message() {
    let (_dir, outbox) = outbox(u64::MAX);
    let mut batch: Vec<NewRecord> = (0..200).map(|i| telemetry(i % 100, i)).collect();
    batch.push(record(Priority::Critical, "alerts", "door"));
    let appended = ok(outbox.append(batch).unwrap());
    let records = raw_records(&outbox);
    assert_eq!(
        records.iter().map(|(k, _)| k.0).collect::<Vec<_>>(),
        [Priority::Critical as u8, Priority::Normal as u8],
        "one record per lane the batch used"
    );
    assert_eq!(appended[200].key, (0, records[0].0.1, 0));
    assert_eq!(appended[199].key, (2, records[1].0.1, 199));
    let normal = &records[1].1;
    assert_eq!(normal[..2], [record::V2, 1], "version 2, deflated");
    let read = outbox
        .read_after(Priority::Normal as u8, None, 1000)
        .unwrap();
    let raw: usize = read.iter().map(|r| r.payload.len() + r.topic.len()).sum();
    assert_eq!(read.len(), 200);
    assert_eq!(
        read.iter().map(|r| r.key).collect::<Vec<_>>(),
        appended[..200].iter().map(|a| a.key).collect::<Vec<_>>()
    );
    let first: serde_json::Value = serde_json::from_slice(&read[0].payload).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["id"], envelope_id(0, 0).to_string());
    // Keys repeat inside a batch; a random id per message is what stays.
    let per_message = normal.len() / 200;
    assert!(
        per_message < 80 && normal.len() * 4 < raw,
        "{per_message} bytes a message stored, {} raw",
        raw / 200
    );
    assert_eq!(outbox.depth().unwrap().bytes, stored_bytes(&outbox));
    assert_eq!(outbox.depth().unwrap().records, 201);
}

#[test]
fn a_record_is_deleted_once_every_message_in_it_is_acknowledged_in_any_order() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(
            (0..4)
                .map(|i| record(Priority::Normal, "t", &i.to_string()))
                .collect(),
        )
        .unwrap());
    outbox.ack(&[appended[3].key, appended[1].key]).unwrap();
    assert_eq!(raw_records(&outbox).len(), 1, "two messages still wait");
    assert_eq!(
        outbox
            .read_after(2, None, 10)
            .unwrap()
            .iter()
            .map(|r| r.key)
            .collect::<Vec<_>>(),
        [appended[0].key, appended[2].key]
    );
    // An acknowledgement that comes twice (a duplicate PUBACK) counts once.
    outbox.ack(&[appended[1].key]).unwrap();
    assert_eq!(outbox.depth().unwrap().records, 2);
    outbox.ack(&[appended[0].key, appended[2].key]).unwrap();
    assert!(raw_records(&outbox).is_empty());
    assert_eq!(outbox.depth().unwrap(), Depth::default());
    // The key of a deleted record is ignored.
    outbox.ack(&[appended[0].key]).unwrap();
}

#[test]
fn partial_acks_are_kept_in_memory_so_a_restart_resends_the_unfinished_record_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (done, unfinished) = {
        let outbox = Outbox::open(Store::create(&path).unwrap(), u64::MAX).unwrap();
        let done = ok(outbox
            .append(
                (0..3)
                    .map(|i| record(Priority::Normal, "t", &format!("a{i}")))
                    .collect(),
            )
            .unwrap());
        let unfinished = ok(outbox
            .append(
                (0..3)
                    .map(|i| record(Priority::Normal, "t", &format!("b{i}")))
                    .collect(),
            )
            .unwrap());
        let mut keys: Vec<Key> = done.iter().map(|a| a.key).collect();
        keys.push(unfinished[0].key);
        keys.push(unfinished[1].key);
        outbox.ack(&keys).unwrap();
        assert_eq!(outbox.depth().unwrap().records, 1);
        (done, unfinished)
    };
    let outbox = Outbox::open(Store::open(&path).unwrap(), u64::MAX).unwrap();
    let read = outbox.read_after(2, None, 10).unwrap();
    assert_eq!(
        read.iter().map(|r| r.key).collect::<Vec<_>>(),
        unfinished.iter().map(|a| a.key).collect::<Vec<_>>(),
        "the finished record stays deleted; the unfinished one comes back whole"
    );
    assert_eq!(read[0].payload, br#"{"seq":4,"b":"b0"}"#);
    assert!(
        read.iter()
            .all(|r| (r.key.0, r.key.1) != (done[0].key.0, done[0].key.1))
    );
    assert_eq!(outbox.depth().unwrap().records, 3);
    let next = ok(outbox
        .append(vec![record(Priority::Normal, "t", "c")])
        .unwrap());
    assert_eq!(next[0].seq, 7, "seqs are never reused, resent or not");
}

#[test]
fn version_1_records_written_before_the_upgrade_are_counted_sent_in_order_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        // What the previous release left: one message per record, and the stream's last seq.
        let store = Store::create(&path).unwrap();
        store
            .write(|txn| {
                let mut table = txn.open_table(OUTBOX)?;
                for (n, body) in [(4u64, "old-1"), (9, "old-2")] {
                    let mut m = message(1_600_000_000_000 + n, "t", body.as_bytes());
                    m.retain = n == 9;
                    table.insert((2, n), record::encode_v1(&m).as_slice())?;
                }
                let v1 = record::encode_v1(&message(1_500_000_000_000, "alerts", b"old-alert"));
                table.insert((0, 3), v1.as_slice())?;
                txn.open_table(SEQ)?.insert("t", 2)?;
                Ok(())
            })
            .unwrap();
    }
    let outbox = Outbox::open(Store::open(&path).unwrap(), u64::MAX).unwrap();
    let depth = outbox.depth().unwrap();
    assert_eq!(
        (depth.records, depth.oldest_ms),
        (3, Some(1_500_000_000_000))
    );
    let new = ok(outbox
        .append(vec![record(Priority::Normal, "t", "new")])
        .unwrap());
    assert_eq!(new[0].seq, 3);
    assert_eq!(new[0].key, (2, 10, 0), "after the largest stored key");
    let due = outbox.read_due(&[None; LANES], 10).unwrap();
    assert_eq!(
        due.iter()
            .map(|r| (r.key, r.payload.as_slice(), r.retain))
            .collect::<Vec<_>>(),
        [
            ((0, 3, 0), b"old-alert".as_slice(), false),
            ((2, 4, 0), b"old-1".as_slice(), false),
            ((2, 9, 0), b"old-2".as_slice(), true),
            ((2, 10, 0), br#"{"seq":3,"b":"new"}"#.as_slice(), false),
        ]
    );
    assert_eq!(due[1].accepted_ms, 1_600_000_000_004);
    outbox
        .ack(&due.iter().map(|r| r.key).collect::<Vec<_>>())
        .unwrap();
    assert!(raw_records(&outbox).is_empty());
    assert_eq!(outbox.depth().unwrap(), Depth::default());
}

#[test]
fn a_truncated_or_damaged_batch_is_reported_as_corrupt_never_panicked_on() {
    let (_dir, outbox) = outbox(u64::MAX);
    let mut batch: Vec<NewRecord> = (0..20).map(|i| telemetry(i % 3, i)).collect();
    batch.push(record(Priority::Normal, "other", "x"));
    ok(outbox.append(batch).unwrap());
    let (key, value) = raw_records(&outbox).remove(0);
    let (_dir2, damaged) = self::outbox(u64::MAX);
    let mut cases: Vec<Vec<u8>> = (0..value.len()).map(|n| value[..n].to_vec()).collect();
    for at in 0..value.len() {
        let mut flipped = value.clone();
        flipped[at] ^= 0x5a;
        cases.push(flipped);
    }
    let (mut reported, mut read) = (0, 0);
    for case in &cases {
        plant(&damaged, key, case);
        // What an earlier case decoded must not stand in for this one.
        *lock(&damaged.decoded) = Decoded::default();
        match damaged.read_after(key.0, None, 100) {
            Err(Error::Corrupt { table, key: k, .. }) => {
                assert_eq!((table.as_str(), k), ("outbox", format!("{key:?}")));
                reported += 1;
            }
            Err(e) => panic!("not reported as corrupt: {e}"),
            // A flipped bit in a payload or timestamp byte of a stored block reads back.
            Ok(_) => read += 1,
        }
    }
    assert!(reported > value.len(), "{reported} reported, {read} read");
    // Truncated at any length: always reported, with the reason.
    plant(&damaged, key, &value[..value.len() - 1]);
    *lock(&damaged.decoded) = Decoded::default();
    let err = damaged.read_after(key.0, None, 100).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "store record outbox/{key:?} is unreadable: the compressed block is damaged or truncated"
        )
    );
}

#[test]
fn max_bytes_counts_the_compressed_bytes_stored_so_more_fits_than_uncompressed() {
    const LIMIT: u64 = 20_000;
    let (_dir, outbox) = outbox(LIMIT);
    let (mut accepted, mut keys, mut raw) = (0usize, Vec::new(), 0usize);
    for batch in 0.. {
        let results = outbox
            .append((0..50).map(|i| telemetry(i % 10, batch * 50 + i)).collect())
            .unwrap();
        for appended in results.iter().flatten() {
            accepted += 1;
            keys.push(appended.key);
        }
        if results.iter().all(Result::is_err) {
            break;
        }
    }
    for record in outbox.read_due(&[None; LANES], usize::MAX).unwrap() {
        raw += record.topic.len() + record.payload.len();
    }
    let depth = outbox.depth().unwrap();
    assert_eq!(depth.bytes, stored_bytes(&outbox));
    assert!(depth.bytes >= LIMIT, "{depth:?}");
    assert!(
        raw as u64 > 3 * LIMIT,
        "{accepted} messages, {raw} bytes uncompressed, kept in {} bytes",
        depth.bytes
    );
    assert_eq!(
        outbox.append(vec![telemetry(0, 0)]).unwrap(),
        [Err(AppendError::Full {
            bytes: depth.bytes,
            max_bytes: LIMIT
        })]
    );
    outbox.ack(&keys).unwrap();
    assert_eq!(outbox.depth().unwrap(), Depth::default());
    assert!(outbox.append(vec![telemetry(0, 0)]).unwrap()[0].is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the messages (topics shared or not, empty payloads, retained or not), a record
    /// reads back exactly as written.
    #[test]
    fn a_record_decodes_to_exactly_the_messages_encoded(
        messages in prop::collection::vec(
            (any::<u64>(), any::<bool>(), 0u8..5, prop::collection::vec(any::<u8>(), 0..300)),
            1..60,
        ),
    ) {
        let messages: Vec<Message> = messages
            .into_iter()
            .map(|(at, retain, topic, payload)| Message {
                accepted_ms: at,
                retain,
                topic: format!("rxgate/v1/s/devices/d{topic}/telemetry").into(),
                payload,
            })
            .collect();
        let value = record::encode(&messages).unwrap();
        prop_assert_eq!(record::summary(&value).unwrap(), Summary {
            count: messages.len() as u16,
            first_accepted_ms: messages[0].accepted_ms,
        });
        prop_assert_eq!(record::decode(&value).unwrap(), messages);
    }
}

/// A message sent before it is stored, numbered by [`Outbox::live_seq`].
fn live(outbox: &Outbox, topic: &str, body: &str) -> Option<NewRecord> {
    let seq = outbox.live_seq(topic)?;
    let mut record = record(Priority::Normal, topic, body);
    record.seq = Some(seq);
    Some(record)
}

/// Every `seq` the stored messages of `topic` carry, in key order.
fn stored_seqs(outbox: &Outbox, topic: &str) -> Vec<u64> {
    stored(outbox)
        .values()
        .filter(|r| r.topic == topic)
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn live_numbers_come_only_from_a_committed_block_and_continue_the_stored_ones_without_a_gap() {
    let (dir, outbox) = outbox(u64::MAX);
    ok(outbox
        .append(vec![
            record(Priority::Normal, "t", "a"),
            record(Priority::Normal, "t", "b"),
        ])
        .unwrap());
    assert_eq!(outbox.live_seq("t"), None, "no block reserved yet");
    assert!(outbox.wants_reservation());
    outbox.reserve().unwrap();
    assert!(!outbox.wants_reservation());
    // 3 and 4 go to the cloud and are never stored; 5 is stored with its number, 6 is stored
    // without one and takes the next; then live numbers go on after it.
    assert_eq!(outbox.live_seq("t"), Some(3));
    assert_eq!(outbox.live_seq("t"), Some(4));
    let five = live(&outbox, "t", "e").unwrap();
    let appended = ok(outbox
        .append(vec![five, record(Priority::Normal, "t", "f")])
        .unwrap());
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(outbox.live_seq("t"), Some(7));
    assert_eq!(stored_seqs(&outbox, "t"), vec![1, 2, 5, 6]);

    // A clean stop writes back the last number given: the next start goes on at 8.
    outbox.release_reservations().unwrap();
    drop(outbox);
    let outbox = Outbox::open(Store::open(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
    assert!(!outbox.resumed_after_abrupt_stop());
    let next = ok(outbox
        .append(vec![record(Priority::Normal, "t", "h")])
        .unwrap());
    assert_eq!(next[0].seq, 8, "no gap after a clean stop");
}

#[test]
fn after_an_abrupt_stop_a_stream_resumes_past_its_block_and_never_gives_a_number_twice() {
    let (dir, outbox) = outbox(u64::MAX);
    outbox.live_seq("t");
    outbox.reserve().unwrap();
    let given: Vec<u64> = (0..100).map(|_| outbox.live_seq("t").unwrap()).collect();
    assert_eq!(given.first(), Some(&1));
    // A power cut: no release.
    drop(outbox);
    let outbox = Outbox::open(Store::open(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
    assert!(outbox.resumed_after_abrupt_stop());
    let next = ok(outbox
        .append(vec![record(Priority::Normal, "t", "after")])
        .unwrap())[0]
        .seq;
    assert!(next > 100, "{next} was given before the stop");
    assert!(next <= 1 + RESERVE, "skipped at most one block: {next}");
    // The next clean stop clears the mark.
    outbox.release_reservations().unwrap();
    drop(outbox);
    let outbox = Outbox::open(Store::open(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
    assert!(!outbox.resumed_after_abrupt_stop());
}

#[test]
fn a_stream_asks_for_its_next_block_before_the_one_it_uses_runs_out() {
    let (_dir, outbox) = outbox(u64::MAX);
    outbox.live_seq("t");
    outbox.reserve().unwrap();
    let mut last = 0;
    // Two and a half blocks, with a reservation whenever one is asked for: never a `None`.
    for _ in 0..RESERVE * 5 / 2 {
        let seq = outbox.live_seq("t").expect("the next block came in time");
        assert_eq!(seq, last + 1);
        last = seq;
        if outbox.wants_reservation() {
            outbox.reserve().unwrap();
        }
    }
}

#[test]
fn a_message_the_cloud_had_before_its_append_was_seen_is_never_read_and_counts_as_sent() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = outbox
        .append_with(
            vec![
                record(Priority::Normal, "t", "sent and acknowledged"),
                record(Priority::Normal, "t", "to send"),
            ],
            |_, appended| Ok(vec![appended[0].as_ref().unwrap().key]),
        )
        .unwrap();
    let due = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].key, appended[1].as_ref().unwrap().key);
    assert_eq!(outbox.depth().unwrap().records, 1, "one message waits");
    // Its deletion comes with the other's acknowledgement.
    outbox
        .ack(&[appended[0].as_ref().unwrap().key, due[0].key])
        .unwrap();
    assert!(
        outbox
            .read_after(Priority::Normal as u8, None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(outbox.depth().unwrap().records, 0);
}

#[test]
fn a_failed_write_gives_back_the_reserved_numbers_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let outbox = Outbox::open(store, u64::MAX).unwrap();
    outbox.live_seq("t");
    outbox.reserve().unwrap();
    assert_eq!(outbox.live_seq("t"), Some(1));
    let failed = outbox.append_with(
        vec![
            record(Priority::Normal, "t", "x"),
            record(Priority::Normal, "t", "y"),
        ],
        |_, _| Err(Error::Invalid("refused on purpose".to_owned())),
    );
    assert!(failed.is_err());
    assert_eq!(outbox.live_seq("t"), Some(2), "2 and 3 were not used");
    assert!(stored_seqs(&outbox, "t").is_empty());
}

#[test]
fn threads_taking_live_numbers_while_others_append_to_the_same_stream_never_share_one() {
    let (_dir, outbox) = outbox(u64::MAX);
    outbox.live_seq("t");
    outbox.reserve().unwrap();
    let live_taker = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut stored = Vec::new();
            for i in 0..3000 {
                match outbox.live_seq("t") {
                    // Every tenth live message is stored too (the cloud had not acknowledged
                    // it when its batch was due).
                    Some(seq) if i % 10 == 0 => {
                        let mut r = record(Priority::Normal, "t", "live");
                        r.seq = Some(seq);
                        let a = ok(outbox.append(vec![r]).unwrap());
                        assert_eq!(a[0].seq, seq);
                        stored.push(seq);
                    }
                    Some(seq) => sent.push(seq),
                    None => outbox.reserve().unwrap(),
                }
                if outbox.wants_reservation() {
                    outbox.reserve().unwrap();
                }
            }
            (sent, stored)
        })
    };
    let appenders: Vec<_> = (0..2)
        .map(|_| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                (0..100)
                    .flat_map(|_| {
                        let batch = (0..5)
                            .map(|_| record(Priority::Normal, "t", "stored"))
                            .collect();
                        ok(outbox.append(batch).unwrap())
                            .into_iter()
                            .map(|a| a.seq)
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let (sent, live_stored) = live_taker.join().unwrap();
    let mut all: Vec<u64> = sent.iter().chain(&live_stored).copied().collect();
    for appender in appenders {
        all.extend(appender.join().unwrap());
    }
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "a number was given twice");
    let mut on_disk = stored_seqs(&outbox, "t");
    on_disk.sort_unstable();
    assert_eq!(on_disk.len(), 1000 + live_stored.len());
}

#[test]
fn after_a_crash_in_the_same_boot_the_ledger_lets_every_stream_go_on_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let ledger = dir.path().join("seq.ledger");
    let open = || {
        Outbox::open(Store::open(&path).unwrap(), u64::MAX)
            .unwrap()
            .keep_ledger(&ledger)
            .unwrap()
    };
    drop(Store::create(&path).unwrap());
    let outbox = open();
    for topic in ["a", "b"] {
        outbox.live_seq(topic);
    }
    outbox.reserve().unwrap();
    for _ in 0..10 {
        outbox.live_seq("a").unwrap();
    }
    outbox.live_seq("b").unwrap();
    // One stored with a number from the block, one past what was sent.
    ok(outbox
        .append(vec![record(Priority::Normal, "b", "x")])
        .unwrap());
    // A crash (kill -9): no release; the ledger's writes are in the page cache.
    drop(outbox);
    let outbox = open();
    assert!(!outbox.resumed_after_abrupt_stop());
    let next = |topic| {
        ok(outbox
            .append(vec![record(Priority::Normal, topic, "n")])
            .unwrap())[0]
            .seq
    };
    assert_eq!(next("a"), 11);
    assert_eq!(next("b"), 3);

    // A power cut loses the page cache, and with it what the ledger says: as if it was not
    // there. The streams skip past their blocks rather than give a number twice.
    outbox.live_seq("a");
    outbox.reserve().unwrap();
    assert_eq!(outbox.live_seq("a"), Some(12));
    drop(outbox);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&ledger)
        .unwrap();
    let outbox = open();
    assert!(outbox.resumed_after_abrupt_stop());
    let after = ok(outbox
        .append(vec![record(Priority::Normal, "a", "n")])
        .unwrap())[0]
        .seq;
    assert!(after > 12 && after <= 12 + RESERVE, "{after}");
}

#[test]
fn a_ledger_from_another_boot_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("seq.ledger");
    // A ledger written under another boot id, claiming stream "a" stopped at 1.
    let mut bytes = vec![0u8; 48 + 256];
    bytes[..8].copy_from_slice(b"rxgseq1\n");
    bytes[8..44].copy_from_slice(b"00000000-0000-0000-0000-000000000000");
    bytes[48..56].copy_from_slice(&1u64.to_le_bytes());
    bytes[56] = 1;
    bytes[57] = b'a';
    std::fs::write(&ledger, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(
        streams::Ledger::open(&ledger).is_err(),
        "a ledger others may have written is refused"
    );
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, found) = streams::Ledger::open(&ledger).unwrap();
    assert!(found.is_empty(), "{found:?}");
    let link = dir.path().join("link.ledger");
    std::os::unix::fs::symlink(&ledger, &link).unwrap();
    assert!(
        streams::Ledger::open(&link).is_err(),
        "never through a link"
    );
}
