//! The load generator's fridges, read by a Modbus client (tokio-modbus, as the gateway reads
//! them), and the config snippet it writes for the gateway.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rxgate_sim::fleet::{self, Fleet, FleetConfig, FleetError, TokenEntry};
use tokio::sync::watch;
use tokio_modbus::client::Reader as _;

const TIMEOUT: Duration = Duration::from_secs(5);

fn model() -> PathBuf {
    fleet::resolve_model(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/devices/acme-fr400.toml"),
    )
    .expect("the register map in config/devices")
}

/// Reads holding register 0 (setpoint, signed tenths of °C) and input register 0 (temperature)
/// of the fridge at `addr`.
async fn read_setpoint_and_temperature(addr: std::net::SocketAddr) -> (f64, f64) {
    let mut ctx = tokio::time::timeout(TIMEOUT, tokio_modbus::client::tcp::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let setpoint = tokio::time::timeout(TIMEOUT, ctx.read_holding_registers(0, 1))
        .await
        .expect("an answer in time")
        .expect("no transport error")
        .expect("no Modbus exception");
    let temperature = tokio::time::timeout(TIMEOUT, ctx.read_input_registers(0, 1))
        .await
        .expect("an answer in time")
        .expect("no transport error")
        .expect("no Modbus exception");
    (
        f64::from(setpoint[0] as i16) / 10.0,
        f64::from(temperature[0] as i16) / 10.0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_starts_fridges_that_answer_modbus_and_writes_their_gateway_config() {
    let model = model();
    let fleet = Fleet::start(FleetConfig {
        fridges: 3,
        speed: 0.0,
        seed: 7,
        model: model.clone(),
        poll_interval: Duration::from_secs(5),
        ..FleetConfig::default()
    })
    .await
    .expect("start the fleet");
    assert_eq!(fleet.fridges().len(), 3);

    for fridge in fleet.fridges() {
        let (setpoint, temperature) = read_setpoint_and_temperature(fridge.addr()).await;
        assert_eq!(setpoint, fridge.plan.setpoint_c, "{}", fridge.plan.id);
        assert!(
            (temperature - fridge.plan.initial_c).abs() < 0.051,
            "{}: read {temperature}, started at {}",
            fridge.plan.id,
            fridge.plan.initial_c
        );
    }
    assert_eq!(fleet.fridges_answering(), 3);

    let snippet: toml::Table = fleet.config_snippet().parse().expect("the snippet is TOML");
    let devices = snippet["devices"].as_table().expect("[devices.*] sections");
    let ids: Vec<&String> = devices.keys().collect();
    assert_eq!(ids, ["sim-fridge-01", "sim-fridge-02", "sim-fridge-03"]);
    for fridge in fleet.fridges() {
        let section = devices[&fridge.plan.id].as_table().expect("a table");
        let expected: toml::Table = toml::toml! {
            kind = "fridge"
            transport = "tcp"
            poll_interval = "5s"
        };
        for (key, value) in &expected {
            assert_eq!(section.get(key), Some(value), "{}.{key}", fridge.plan.id);
        }
        assert_eq!(
            section["address"].as_str(),
            Some(fridge.addr().to_string().as_str())
        );
        assert_eq!(section["model"].as_str(), model.to_str());
        assert_eq!(section.len(), 5, "no other keys: {section:?}");
    }

    let (stop, stopped) = watch::channel(true);
    let report = fleet.run(stopped).await;
    drop(stop);
    assert_eq!((report.fridges, report.cabinets), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fridges_listen_on_consecutive_ports_from_the_base_port() {
    // A free range: bind one port, release it, and hope the next two are free too; retry a few
    // times if another process took one.
    for _ in 0..5 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("probe port")
            .port();
        if base > u16::MAX - 2 {
            continue;
        }
        let started = Fleet::start(FleetConfig {
            fridges: 2,
            base_port: Some(base),
            model: model(),
            ..FleetConfig::default()
        })
        .await;
        match started {
            Ok(fleet) => {
                let ports: Vec<u16> = fleet.fridges().iter().map(|f| f.addr().port()).collect();
                assert_eq!(ports, [base, base + 1]);
                read_setpoint_and_temperature(fleet.fridges()[1].addr()).await;
                return;
            }
            Err(FleetError::Fridge { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free pair of ports found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_faults_the_eighth_fridge_loses_power_and_stops_answering_for_a_while() {
    // Every fourth fridge gets a fault in turn; the 8th a power cut at 5 min for 10 min of
    // simulated time: at 300x, from 1 s to 3 s.
    let fleet = Fleet::start(FleetConfig {
        fridges: 8,
        faults: true,
        speed: 300.0,
        model: model(),
        ..FleetConfig::default()
    })
    .await
    .expect("start the fleet");
    let silent = fleet.fridges()[7].addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.fridges_answering() != 7 {
        assert!(Instant::now() < deadline, "the power cut never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without power, the fridge closes connections at once: no answer.
    let answer = tokio::time::timeout(Duration::from_millis(500), async {
        let mut ctx = tokio_modbus::client::tcp::connect(silent).await.ok()?;
        ctx.read_holding_registers(0, 1).await.ok()?.ok()
    })
    .await;
    assert!(
        !matches!(answer, Ok(Some(_))),
        "a fridge without power answered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.fridges_answering() != 8 {
        assert!(Instant::now() < deadline, "power never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cabinets_without_credentials_and_without_an_est_url_are_named_in_the_error() {
    let state = tempfile::tempdir().unwrap();
    let entries = fleet::parse_tokens("cab-01 t1\ncab-02 t2\n").unwrap();
    assert_eq!(
        entries[1],
        TokenEntry {
            device: "cab-02".to_owned(),
            token: "t2".to_owned()
        }
    );
    let err = fleet::enroll_cabinets(&entries, state.path(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::NeedsEnrollment { devices, .. } if devices == &["cab-01", "cab-02"]),
        "{err}"
    );
    assert!(err.to_string().contains("pass --est URL"), "{err}");
}

#[tokio::test]
async fn a_missing_register_map_is_reported_with_the_option_to_fix_it() {
    let err = fleet::resolve_model(Path::new("no/such/acme-fr400.toml")).unwrap_err();
    assert!(err.to_string().contains("--model"), "{err}");
}
