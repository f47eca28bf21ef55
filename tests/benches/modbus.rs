//! Modbus benchmark: a pymodbus farm (tests/benches/modbus_farm.py, code nobody at rxgate wrote)
//! polled by the real rxgate binary, with mosquitto as the cloud.
//!
//! `cargo bench -p rxgate-e2e --bench modbus [-- --devices 100 --registers 100 --interval-ms 1000
//! --seconds 60 --batch-delay-ms 500]` (500 ms is the shipped `[outbox].batch_delay`), and the
//! pharmacy-sized load with `-- --devices 10 --registers 10 --interval-ms 10000 --seconds 120`.
//!
//! Each device is one `[devices.*]` entry with one register range (`count`), polled every
//! interval. After a warm-up, over the measured window it prints: values/s delivered to the
//! cloud, the gateway's CPU seconds per minute, its RSS (peak, from VmHWM), bytes it wrote to disk
//! (`/proc/<pid>/io` write_bytes) per value and per day at this rate, and missed poll cycles (per
//! device, the cycles of the window that brought no reading to the cloud).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, Proc, bench_arg, cpu_seconds, proc_field, python, workspace};

fn main() {
    let devices = bench_arg("--devices", 100);
    let registers = bench_arg("--registers", 100);
    let interval = Duration::from_millis(bench_arg("--interval-ms", 1000));
    let seconds = bench_arg("--seconds", 60);
    let tmp = tempfile::tempdir().expect("temp dir");
    let cloud = Cloud::start(tmp.path());

    let mut farm = Command::new(python());
    farm.arg(workspace().join("tests/benches/modbus_farm.py"))
        .arg(devices.to_string())
        .arg(registers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = farm
        .spawn()
        .expect("start the pymodbus farm (scripts/test installs pymodbus into .venv)");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("farm stdout"))
        .read_line(&mut ready)
        .expect("the farm's ready line");
    let ports: Vec<u16> = ready
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(ports.len() as u64, devices, "farm said: {ready}");
    let _farm = Proc(child);

    let policy = tmp.path().join("bench-policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").expect("bench policy");
    // The test harness's config commits every 5 ms; a bench measures the shipped 500 ms.
    let mut config = format!(
        "{}[gateway]\nlog = \"warn\"\npolicy_file = \"{}\"\n[outbox]\nbatch_delay = \"{}ms\"\n",
        cloud.pki.gateway_config(cloud.port),
        policy.display(),
        bench_arg("--batch-delay-ms", 500)
    );
    for (i, port) in ports.iter().enumerate() {
        config.push_str(&format!(
            "[devices.farm-{i:03}]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
             poll_interval = \"{}ms\"\n\
             [[devices.farm-{i:03}.registers]]\nname = \"r{{n}}\"\nfunction = \"holding\"\naddress = 0\n\
             count = {registers}\n",
            interval.as_millis()
        ));
    }
    let subscription = cloud.subscribe("rxgate/v1/store-0042/devices/+/telemetry");
    // Logging at `warn` as the config says: the harness's default (`debug`) writes a log file in
    // the data directory, which would be counted as the gateway's disk writes.
    let mut gw = Gateway::init(&config);
    gw.spawn_logging("warn");
    let pid = gw.child.as_ref().expect("gateway process").id();

    // Warm-up: every poller connected and the cloud link up.
    std::thread::sleep(Duration::from_secs(5).max(interval * 2));
    let received_before = subscription.timed_messages().len();
    let (cpu_before, written_before) = (cpu_seconds(pid), proc_field(pid, "io", "write_bytes:"));
    let started = Instant::now();
    let window_start_us = now_us();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let window_end_us = now_us();
    let (cpu_after, written_after) = (cpu_seconds(pid), proc_field(pid, "io", "write_bytes:"));
    let rss_peak_kib = proc_field(pid, "status", "VmHWM:");
    let rss_now_kib = proc_field(pid, "status", "VmRSS:");
    // Readings polled inside the window still in flight arrive within a second or two.
    std::thread::sleep(Duration::from_secs(2));
    drop(gw);

    let mut values = 0u64;
    let mut readings = 0u64;
    let mut per_device: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for (_, payload, _) in subscription
        .timed_messages()
        .into_iter()
        .skip(received_before)
    {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&payload) else {
            continue;
        };
        let Some(ts) = message["gateway_ts"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) else {
            continue;
        };
        let us = ts.unix_timestamp_nanos() / 1000;
        if us < i128::from(window_start_us) || us >= i128::from(window_end_us) {
            continue;
        }
        readings += 1;
        values += message["points"].as_object().map_or(0, |p| p.len() as u64);
        per_device
            .entry(message["device"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(us);
    }
    let expected_per_device = (elapsed / interval.as_secs_f64()).floor() as u64;
    let missed: u64 = (0..devices)
        .map(|i| {
            let got = per_device
                .get(&format!("farm-{i:03}"))
                .map_or(0, |v| v.len() as u64);
            expected_per_device.saturating_sub(got)
        })
        .sum();
    let written = written_after.saturating_sub(written_before);
    let values_per_s = values as f64 / elapsed;
    let bytes_per_value = written as f64 / values.max(1) as f64;
    let bytes_per_day = written as f64 / elapsed * 86_400.0;
    let cpu_per_minute = (cpu_after - cpu_before) / elapsed * 60.0;

    println!(
        "Modbus benchmark: {devices} devices x {registers} registers every {} ms, {seconds} s measured (pymodbus farm -> rxgate -> mosquitto)",
        interval.as_millis()
    );
    println!("  values delivered:       {values_per_s:>10.0} values/s ({readings} readings)");
    println!("  CPU:                    {cpu_per_minute:>10.2} s per minute");
    println!("  RSS (KiB):              peak {rss_peak_kib}  now {rss_now_kib}");
    println!(
        "  disk writes:            {written} bytes, {bytes_per_value:.1} bytes/value, {:.1} MB/day",
        bytes_per_day / 1e6
    );
    println!(
        "  missed poll cycles:     {missed} of {} ({expected_per_device} per device)",
        expected_per_device * devices
    );
    println!(
        "{}",
        serde_json::json!({
            "devices": devices, "registers": registers, "interval_ms": interval.as_millis() as u64,
            "values_per_s": values_per_s, "cpu_s_per_min": cpu_per_minute,
            "rss_peak_kib": rss_peak_kib, "bytes_per_value": bytes_per_value,
            "bytes_per_day": bytes_per_day, "missed_cycles": missed,
            "expected_cycles": expected_per_device * devices,
        })
    );
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
