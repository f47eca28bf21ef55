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
        payload: Box::new(move |seq| format!("{{\"seq\":{seq},\"b\":\"{body}\"}}").into_bytes()),
    }
}

fn ok(results: Vec<Result<Appended, AppendError>>) -> Vec<Appended> {
    results.into_iter().map(Result::unwrap).collect()
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
        .read_after(Priority::Normal as u8, Some(read[0].key.1), 10)
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
fn deleted_records_are_gone_and_depth_follows() {
    let (_dir, outbox) = outbox(u64::MAX);
    let appended = ok(outbox
        .append(
            (0..5)
                .map(|i| record(Priority::Normal, "t", &i.to_string()))
                .collect(),
        )
        .unwrap());
    assert_eq!(outbox.depth().unwrap().records, 5);
    outbox.delete(&[appended[0].key, appended[1].key]).unwrap();
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
    assert!(err.to_string().contains("outbox"), "{err}");
}

#[test]
fn an_append_that_finds_its_key_taken_writes_nothing_and_the_next_one_succeeds() {
    let (_dir, outbox) = outbox(u64::MAX);
    let first = ok(outbox
        .append(vec![record(Priority::Normal, "t", "a")])
        .unwrap());
    // A record the counter does not know of, at the very next key.
    let planted = encode(1, false, "planted", b"kept").unwrap();
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
    assert_eq!(again[0].key, (2, first[0].key.1 + 2));
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
    outbox.delete(&[appended[0].key]).unwrap();
    assert_eq!(outbox.depth().unwrap().oldest_ms, Some(1_000));
    outbox.delete(&[appended[2].key]).unwrap();
    assert_eq!(outbox.depth().unwrap().oldest_ms, Some(5_000));
    outbox.delete(&[appended[1].key]).unwrap();
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
    let cursors = [None, Some(appended[1].key.1), None, Some(appended[0].key.1)];
    assert_eq!(
        keys(outbox.read_due(&cursors, 10).unwrap()),
        [3, 2, 4].map(|i| appended[i].key)
    );
    assert_eq!(
        keys(outbox.read_due(&[None; LANES], 2).unwrap()),
        [3, 1].map(|i| appended[i].key)
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
    let bytes: usize = stored
        .values()
        .map(|r| HEADER + r.topic.len() + r.payload.len())
        .sum();
    assert_eq!(depth.bytes, bytes as u64);
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
    /// nothing accepted is lost, nothing acknowledged comes back, lanes keep FIFO order, and each
    /// stream's seq grows by one per record.
    #[test]
    fn outbox_matches_a_model_across_appends_acks_and_restarts(ops in prop::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let mut outbox = Some(Outbox::open(Store::create(&path).unwrap(), u64::MAX).unwrap());
        let mut model: [Vec<(Key, String, u64)>; LANES] = Default::default();
        let mut last_seq: std::collections::HashMap<String, u64> = Default::default();
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
                        let keys: Vec<Key> = lane.drain(..take).map(|(k, _, _)| k).collect();
                        ob.delete(&keys).unwrap();
                    }
                }
                Op::Reopen => {
                    drop(outbox.take());
                    outbox = Some(Outbox::open(Store::open(&path).unwrap(), u64::MAX).unwrap());
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
                    outbox.delete(&due.iter().map(|r| r.key).collect::<Vec<_>>()).unwrap();
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
                let ns: Vec<u64> = mine.iter().filter(|s| s.appended.key.0 == lane).map(|s| s.appended.key.1).collect();
                prop_assert!(ns.windows(2).all(|w| w[0] < w[1]), "lane {} out of order: {:?}", lane, ns);
            }
        }
        let depth = outbox.depth().unwrap();
        prop_assert_eq!(depth.records, left.len() as u64);
        let bytes: usize = left.values().map(|r| HEADER + r.topic.len() + r.payload.len()).sum();
        prop_assert_eq!(depth.bytes, bytes as u64);
        prop_assert_eq!(depth.oldest_ms, left.values().next().map(|r| r.accepted_ms));
    }
}
