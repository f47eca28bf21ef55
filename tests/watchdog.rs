//! systemd's notify protocol with the real binary: a fake `NOTIFY_SOCKET` (a datagram socket this
//! test binds) and `WATCHDOG_USEC` as systemd sets them for `Type=notify` and `WatchdogSec=`.
//!
//! The gateway's data_dir is on an ext4 file system of its own (a loop device) that the test
//! freezes with `fsfreeze`: every write to it blocks, as on an SD card that stopped answering.
//! The pipeline's next batch then never finishes, and the heartbeat must stop until the file
//! system thaws. Needs root (mount, losetup, fsfreeze), as CI runs.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rxgate_e2e::loopfs::{Frozen, LoopFs};
use rxgate_e2e::{Gateway, bin, fridge_device_config, start_ready, wait_until};

/// Every notification that arrived, with when.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(path: &Path) -> Log {
    let socket = UnixDatagram::bind(path).unwrap();
    let log: Log = Arc::default();
    let out = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            out.lock().unwrap().push((Instant::now(), text));
        }
    });
    log
}

fn since(log: &Log, from: Instant) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, t)| t.clone())
        .collect()
}

fn heartbeats(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn ready_comes_once_the_listeners_are_bound_and_the_heartbeat_stops_while_the_pipeline_cannot_write()
 {
    let fs = LoopFs::new(64);
    let data_dir = fs.mount.join("data");
    let (_fridge, port) = start_ready(
        {
            let mut cmd = Command::new(bin("rxgate-sim"));
            cmd.args(["fridge", "--tcp", "127.0.0.1:0", "--setpoint", "5"]);
            cmd
        },
        "rxgate-sim fridge",
    );
    let mut gw = Gateway::init(&format!(
        "[gateway]\ndata_dir = \"{}\"\n{}",
        data_dir.display(),
        fridge_device_config(port)
    ));
    let socket = gw.path("notify.sock");
    let log = listen(&socket);
    let started = Instant::now();
    gw.spawn_with_env(
        "info",
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            // systemd's WatchdogSec=2s: a heartbeat every 500 ms, stuck after 1 s.
            ("WATCHDOG_USEC", "2000000"),
        ],
    );

    // READY=1 once, first, and by then every listener answers.
    let ready = wait_until(Duration::from_secs(10), "READY=1", || {
        since(&log, started)
            .into_iter()
            .find(|m| m.lines().any(|l| l == "READY=1"))
    });
    assert!(ready.contains("STATUS=running"), "{ready:?}");
    assert!(since(&log, started)[0].contains("READY=1"));
    for addr in [gw.enroll, gw.mqtt, gw.metrics, gw.console] {
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    }

    // Polled every 500 ms, readings stored: the heartbeat goes on.
    let healthy = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let beats = heartbeats(&since(&log, healthy));
    assert!(beats >= 4, "{beats} heartbeats in 3 s");

    {
        let _frozen = Frozen::new(&fs.mount);
        // The next reading's batch blocks in its write; a second later it is stuck.
        let stuck = wait_until(Duration::from_secs(10), "the stuck status", || {
            since(&log, healthy)
                .into_iter()
                .find(|m| m.contains(" stuck for "))
        });
        assert!(stuck.starts_with("STATUS=pipeline stuck for "), "{stuck:?}");
        let quiet = Instant::now();
        std::thread::sleep(Duration::from_secs(4));
        let during = since(&log, quiet);
        assert_eq!(heartbeats(&during), 0, "heartbeats while stuck: {during:?}");
    }

    // Thawed: the batch finishes and the heartbeat resumes, saying so.
    let thawed = Instant::now();
    let back = wait_until(Duration::from_secs(10), "the heartbeat again", || {
        since(&log, thawed)
            .into_iter()
            .find(|m| m.lines().any(|l| l == "WATCHDOG=1"))
    });
    assert_eq!(back, "WATCHDOG=1\nSTATUS=running");
    let logs = gw.logs();
    assert!(
        logs.contains("A component is stuck") && logs.contains("components=pipeline"),
        "{logs}"
    );

    let stopping = Instant::now();
    assert!(gw.stop(), "a clean stop:\n{}", gw.logs());
    assert!(
        since(&log, stopping).iter().any(|m| m == "STOPPING=1"),
        "{:?}",
        since(&log, stopping)
    );
}
