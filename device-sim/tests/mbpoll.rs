//! mbpoll (libmodbus, a Modbus master nobody here wrote) reads and drives the simulated fridge,
//! over Modbus/TCP and over RTU on its pseudo-terminal.

use std::time::Duration;

use rxgate_sim::fridge::{FridgeOptions, FridgeSim};

const MBPOLL: &str = "/usr/bin/mbpoll";

/// Runs mbpoll with `args` (`-1`: poll once) and returns the values it printed, by reference.
async fn mbpoll(args: &[&str]) -> Vec<(u32, String)> {
    assert!(
        std::path::Path::new(MBPOLL).exists(),
        "{MBPOLL} is missing: install the Debian package mbpoll"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(MBPOLL)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mbpoll finishes")
    .expect("mbpoll runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("failed"),
        "mbpoll {args:?} failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    // Value lines look like "[1]: \t65501 (-35)".
    stdout
        .lines()
        .filter_map(|line| {
            let (reference, value) = line.strip_prefix('[')?.split_once("]:")?;
            Some((reference.parse().ok()?, value.trim().to_owned()))
        })
        .collect()
}

fn values(read: &[(u32, String)]) -> Vec<&str> {
    read.iter().map(|(_, v)| v.as_str()).collect()
}

fn frozen(initial_c: f64) -> FridgeOptions {
    FridgeOptions {
        speed: 0.0,
        initial_c: Some(initial_c),
        ..FridgeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_fridge_registers_over_tcp() {
    let fridge = FridgeSim::start(frozen(-3.5))
        .await
        .expect("start the fridge");
    let port = fridge.local_addr().expect("tcp").port().to_string();
    let tcp = |extra: &'static [&'static str]| {
        let mut args = vec!["-m", "tcp", "-p", port.as_str(), "-a", "1"];
        args.extend_from_slice(extra);
        args
    };

    // Input registers 0-4 (mbpoll's -r is 1-based): temperature and ambient in signed tenths,
    // compressor starts (u32), door openings.
    let read = mbpoll(
        &[
            tcp(&["-t", "3", "-r", "1", "-c", "5", "-1"]),
            vec!["127.0.0.1"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        read.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(values(&read), ["65501 (-35)", "220", "0", "0", "0"]);

    // Holding registers 0-3: setpoint 5.0, differential 1.0, alarm limits 8.0 and 2.0.
    let read = mbpoll(
        &[
            tcp(&["-t", "4", "-r", "1", "-c", "4", "-1"]),
            vec!["127.0.0.1"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(values(&read), ["50", "10", "80", "20"]);

    // Discrete inputs: door closed, no high alarm, low alarm (-3.5 < 2.0), probe fine, power fine.
    let read = mbpoll(
        &[
            tcp(&["-t", "1", "-r", "1", "-c", "5", "-1"]),
            vec!["127.0.0.1"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(values(&read), ["0", "0", "1", "0", "0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_injects_faults_and_opens_the_door_through_the_control_registers() {
    let fridge = FridgeSim::start(frozen(5.0))
        .await
        .expect("start the fridge");
    let port = fridge.local_addr().expect("tcp").port().to_string();
    let base = ["-m", "tcp", "-p", port.as_str(), "-a", "1", "-t", "4"];

    // Holding 102 (reference 103): open the door for 30 s.
    mbpoll(&[&base[..], &["-r", "103", "127.0.0.1", "30"]].concat()).await;
    assert!(fridge.snapshot().door_open());
    // Holding 100 (reference 101): fault mask 4 = sensor fault.
    mbpoll(&[&base[..], &["-r", "101", "127.0.0.1", "4"]].concat()).await;
    let read = mbpoll(&[
        "-m",
        "tcp",
        "-p",
        port.as_str(),
        "-t",
        "3",
        "-r",
        "1",
        "-c",
        "1",
        "-1",
        "127.0.0.1",
    ])
    .await;
    assert_eq!(
        values(&read),
        ["32768 (-32768)"],
        "a failed probe reads 0x8000"
    );
    let read = mbpoll(&[
        "-m",
        "tcp",
        "-p",
        port.as_str(),
        "-t",
        "1",
        "-r",
        "1",
        "-c",
        "4",
        "-1",
        "127.0.0.1",
    ])
    .await;
    assert_eq!(
        values(&read),
        ["1", "0", "0", "1"],
        "door open, probe failure alarm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_fridge_over_rtu_on_its_pseudo_terminal() {
    let fridge = FridgeSim::start(FridgeOptions {
        tcp: None,
        rtu: true,
        unit: 7,
        ..frozen(4.3)
    })
    .await
    .expect("start the fridge");
    let pty = fridge.rtu_path().expect("pty").display().to_string();
    let read = mbpoll(&[
        "-m", "rtu", "-b", "19200", "-P", "none", "-a", "7", "-t", "3", "-r", "1", "-c", "2", "-1",
        &pty,
    ])
    .await;
    assert_eq!(values(&read), ["43", "220"]);
}
