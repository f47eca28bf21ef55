//! The MQTT framing the device relay runs on every byte a device sends
//! (`gateway/src/broker/session.rs`): `rumqttc::mqttbytes::check` finds a whole packet, then
//! `Packet::read` parses it. Neither may panic: a panic would end the session task.
//!
//! On top, what the relay relies on to confine a device to `devices/<id>/`: rumqttd, which gets
//! SUBSCRIBE, UNSUBSCRIBE and local PUBLISH frames exactly as the device sent them, must read the
//! same filters and topic that rxgate's access check saw; and the CONNECT and PUBLISH packets
//! rxgate re-encodes (with its own login, or as a QoS 0 copy) must read back unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4::{Login, Packet};
use rumqttc::mqttbytes::{self, QoS};
use rumqttd::protocol::Protocol as _;
use rumqttd::protocol::v4::V4;

/// `broker::MAX_PACKET`.
const MAX_PACKET: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // The relay's loop: whole packets are taken off the front until one is malformed or cut.
    loop {
        let header = match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(n)) => return assert!(n > 0),
            Err(_) => return,
        };
        assert!(header.frame_length() <= buf.len() && header.frame_length() >= 2);
        let frame = buf.split_to(header.frame_length());
        let mut copy = frame.clone();
        let packet = match Packet::read(&mut copy, MAX_PACKET) {
            Ok(packet) => packet,
            Err(_) => {
                // The session ends here; rumqttd never sees this frame, but must not panic on it.
                let _ = V4.read_mut(&mut frame.clone(), MAX_PACKET);
                return;
            }
        };
        assert!(copy.is_empty(), "Packet::read left bytes of its own frame");
        relayed(packet, &frame);
    }
});

fn rumqttd_reads(bytes: &[u8]) -> Option<rumqttd::protocol::Packet> {
    let mut bytes = BytesMut::from(bytes);
    V4.read_mut(&mut bytes, MAX_PACKET).ok()
}

fn write(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, MAX_PACKET * 2)
        .expect("a packet rumqttc read can be written again");
    out
}

fn relayed(packet: Packet, frame: &[u8]) {
    use rumqttd::protocol::Packet as D;
    match packet {
        Packet::Connect(mut connect) => {
            // session.rs: the device's login is replaced by the relay's before forwarding.
            connect.login = Some(Login::new("rxgate-relay", "0123456789abcdef"));
            let bytes = write(&Packet::Connect(connect.clone()));
            let mut again = bytes.clone();
            match Packet::read(&mut again, MAX_PACKET) {
                Ok(Packet::Connect(back)) => assert_eq!(back, connect),
                other => panic!("re-encoded CONNECT reads back as {other:?}"),
            }
            if let Some(D::Connect(c, _, will, _, login)) = rumqttd_reads(&bytes) {
                assert_eq!(
                    c.client_id, connect.client_id,
                    "rumqttd sees another client id"
                );
                let login = login.map(|l| (l.username, l.password));
                assert_eq!(
                    login,
                    Some(("rxgate-relay".to_owned(), "0123456789abcdef".to_owned()))
                );
                let will = will.map(|w| w.topic.to_vec());
                let expected = connect.last_will.map(|w| w.topic.into_bytes());
                assert_eq!(will, expected, "rumqttd sees another last will topic");
            }
        }
        Packet::Publish(publish) => {
            // Local topics are relayed as sent.
            match rumqttd_reads(frame) {
                Some(D::Publish(p, _)) => {
                    assert_eq!(&p.topic[..], publish.topic.as_bytes(), "topic differs");
                    assert_eq!(p.payload, publish.payload);
                }
                other => panic!("rumqttd reads a PUBLISH rumqttc accepted as {other:?}"),
            }
            // Telemetry and events: rumqttd gets a QoS 0 copy.
            let mut copy = publish.clone();
            copy.qos = QoS::AtMostOnce;
            copy.pkid = 0;
            copy.dup = false;
            match rumqttd_reads(&write(&Packet::Publish(copy))) {
                Some(D::Publish(p, _)) => {
                    assert_eq!(&p.topic[..], publish.topic.as_bytes());
                    assert_eq!(p.payload, publish.payload);
                }
                other => panic!("rumqttd reads the QoS 0 copy as {other:?}"),
            }
        }
        Packet::Subscribe(subscribe) => match rumqttd_reads(frame) {
            Some(D::Subscribe(s, _)) => {
                let ours: Vec<&str> = subscribe.filters.iter().map(|f| f.path.as_str()).collect();
                let theirs: Vec<&str> = s.filters.iter().map(|f| f.path.as_str()).collect();
                assert_eq!(
                    ours, theirs,
                    "rumqttd subscribes to other filters than rxgate checked"
                );
            }
            None => {}
            other => panic!("rumqttd reads a SUBSCRIBE as {other:?}"),
        },
        Packet::Unsubscribe(unsubscribe) => {
            if let Some(D::Unsubscribe(u, _)) = rumqttd_reads(frame) {
                assert_eq!(unsubscribe.topics, u.filters);
            }
        }
        _ => {
            let _ = rumqttd_reads(frame);
        }
    }
}
