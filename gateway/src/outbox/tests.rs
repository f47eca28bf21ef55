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
}
