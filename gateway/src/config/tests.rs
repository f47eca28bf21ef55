use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let config = Config::parse(text, Path::new("/etc/rxgate"))?;
    config.check()?;
    Ok(config)
}

fn keys(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn example_config_in_repo_loads_and_passes_every_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config/gateway.toml: {e}"));
    assert_eq!(config.gateway.site, "store-0042");
    assert_eq!(config.enroll.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(config.mqtt.listen, "0.0.0.0:8883".parse().unwrap());
    assert!(config.cloud.is_some());
}

#[test]
fn example_config_states_every_default_explicitly_and_correctly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let example = Config::load(&path).unwrap();
    let minimal = parse("[gateway]\nsite = \"store-0042\"\n").unwrap();
    assert_eq!(
        format!("{:?}", example.enroll),
        format!("{:?}", minimal.enroll)
    );
    assert_eq!(example.gateway.data_dir, minimal.gateway.data_dir);
    assert_eq!(example.gateway.log, minimal.gateway.log);
    assert_eq!(
        format!("{:?}", example.backup),
        format!("{:?}", minimal.backup)
    );
}

#[test]
fn minimal_config_needs_only_the_site() {
    let config = parse("[gateway]\nsite = \"s1\"\n").unwrap();
    assert_eq!(config.gateway.data_dir, Path::new("/var/lib/rxgate"));
    assert_eq!(config.enroll.cert_validity, Duration::from_secs(30 * 86400));
    assert!(config.cloud.is_none());
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let config = parse(
        "[gateway]\nsite = \"s1\"\ndata_dir = \"data\"\n[cloud]\nurl = \"mqtts://c:8883\"\nca_file = \"ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(config.gateway.data_dir, Path::new("/etc/rxgate/data"));
    assert_eq!(
        config.cloud.unwrap().ca_file.unwrap(),
        Path::new("/etc/rxgate/ca.pem")
    );
}

#[test]
fn unknown_keys_are_refused_naming_section_and_key() {
    let errors = parse("[gateway]\nsite = \"s1\"\nsitee = 3\n").unwrap_err();
    assert_eq!(keys(&errors), ["gateway"]);
    assert!(
        errors.0[0].message.contains("unknown field `sitee`"),
        "{errors}"
    );
}

#[test]
fn unknown_sections_are_refused() {
    let errors = parse("[gateway]\nsite = \"s1\"\n[enrol]\nlisten = \"x\"\n").unwrap_err();
    assert_eq!(keys(&errors), ["enrol"]);
}

#[test]
fn errors_in_several_sections_are_all_reported() {
    let errors = parse(
        "[gateway]\nsite = \"s1\"\n[enroll]\nlisten = \"not an address\"\n[mqtt]\nlisten = 5\n",
    )
    .unwrap_err();
    assert_eq!(keys(&errors), ["enroll", "mqtt"], "{errors}");
    assert!(
        errors.0[0].message.contains("invalid socket address"),
        "{errors}"
    );
}

#[test]
fn semantic_errors_are_all_collected_with_key_and_value() {
    let errors = parse(
        r#"
[gateway]
site = "store 42"
server_names = ["ok.example", "bad name!"]
[enroll]
cert_validity = "5m"
token_ttl = "90d"
max_body_bytes = 100
[cloud]
url = "http://cloud.example"
cert_file = "c.pem"
"#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&errors),
        [
            "gateway.site",
            "gateway.server_names",
            "enroll.cert_validity",
            "enroll.token_ttl",
            "enroll.max_body_bytes",
            "cloud.url",
            "cloud.cert_file"
        ],
        "{errors}"
    );
    let text = errors.to_string();
    assert!(
        text.contains(r#"gateway.site = "store 42": must be"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gateway.server_names = "bad name!""#),
        "{text}"
    );
    assert!(
        text.contains(r#"enroll.cert_validity = "5m": must be between 1h and"#),
        "{text}"
    );
}

#[test]
fn mqtts_cloud_without_ca_file_is_refused() {
    let errors = parse("[gateway]\nsite = \"s\"\n[cloud]\nurl = \"mqtts://c\"\n").unwrap_err();
    assert_eq!(keys(&errors), ["cloud.ca_file"]);
}

#[test]
fn syntax_errors_say_where() {
    let errors = parse("[gateway\nsite = 1").unwrap_err();
    assert!(errors.to_string().starts_with("invalid TOML"), "{errors}");
    assert!(errors.to_string().contains("line 1"), "{errors}");
}

#[test]
fn missing_gateway_section_is_an_error() {
    let errors = parse("[mqtt]\n").unwrap_err();
    assert_eq!(keys(&errors), ["gateway"]);
}

#[test]
fn cloud_endpoint_parses_scheme_host_and_default_port() {
    use crate::uplink::cloud_endpoint;
    let e = cloud_endpoint("mqtts://broker.example").unwrap();
    assert_eq!(
        (e.tls, e.host.as_str(), e.port),
        (true, "broker.example", 8883)
    );
    let e = cloud_endpoint("mqtt://127.0.0.1:18830").unwrap();
    assert_eq!(
        (e.tls, e.host.as_str(), e.port),
        (false, "127.0.0.1", 18830)
    );
    assert!(cloud_endpoint("mqtt://[::1]:1883").is_ok_and(|e| !e.tls));
    assert!(cloud_endpoint("mqtt://localhost").is_ok_and(|e| e.port == 1883));
    assert!(cloud_endpoint("mqtts://h:99999").is_err());
    assert!(cloud_endpoint("mqtts://user@h:1").is_err());
}

#[test]
fn a_plaintext_cloud_url_off_loopback_is_refused_by_config_check() {
    for url in [
        "mqtt://cloud.example.com:1883",
        "mqtt://192.0.2.10",
        "mqtt://[2001:db8::1]:1883",
        "mqtt://localhost.example.com",
    ] {
        let errors = parse(&format!(
            "[gateway]\nsite = \"s\"\n[cloud]\nurl = \"{url}\"\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n"
        ))
        .unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("cloud.url") && text.contains("only for a broker on loopback"),
            "{url}: {text}"
        );
    }
}

#[test]
fn cold_chain_keys_are_checked_with_key_and_value() {
    let errors = parse(
        "[gateway]\nsite = \"s\"\n[devices.f1]\nprofile = \"refrigerator\"\nlow = 9.0\n[devices.f2]\nhigh = 8.0\n[devices.f3]\nprofile = \"freezer\"\nhysteresis = 30.0\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&errors),
        ["devices.f1.low", "devices.f2.high", "devices.f3.hysteresis"],
        "{errors}"
    );
    let ok = parse("[gateway]\nsite = \"s\"\n[devices.fridge-31]\nprofile = \"refrigerator\"\n")
        .unwrap();
    let limits = crate::coldchain::Limits::of(&ok.devices["fridge-31"]).unwrap();
    assert_eq!(
        (limits.low, limits.high, limits.critical_low),
        (2.0, 8.0, Some(0.0))
    );
    assert_eq!(
        limits.expected_interval,
        Duration::from_secs(60),
        "an MQTT device: one reading a minute"
    );
}

#[test]
fn every_listener_is_open_by_default_where_it_always_was() {
    let config = parse("[gateway]\nsite = \"s1\"\n").unwrap();
    let listeners: Vec<(&str, Option<std::net::SocketAddr>)> = config
        .listeners()
        .iter()
        .map(|l| (l.name, l.listen))
        .collect();
    assert_eq!(
        listeners,
        [
            ("enroll", Some("0.0.0.0:8443".parse().unwrap())),
            ("mqtt", Some("0.0.0.0:8883".parse().unwrap())),
            ("console", Some("0.0.0.0:8444".parse().unwrap())),
            ("metrics", Some("127.0.0.1:9880".parse().unwrap())),
        ]
    );
}

#[test]
fn a_listener_with_enabled_false_is_off_and_config_check_says_so_and_where_the_others_are() {
    let config = parse(
        "[gateway]\nsite = \"s1\"\n[enroll]\nenabled = false\n[mqtt]\nenabled = false\n\
         [console]\nlisten = \"127.0.0.1:8444\"\n",
    )
    .unwrap();
    assert!(!config.enroll.enabled && !config.mqtt.enabled);
    assert!(config.console.enabled && config.metrics.enabled);
    let notices = notices(&config);
    assert_eq!(
        notices[..4],
        [
            "listener enroll (device enrollment (EST)): off (enroll.enabled = false)",
            "listener mqtt (device MQTT): off (mqtt.enabled = false)",
            "listener console (the pharmacy console): 127.0.0.1:8444, TLS (HTTPS; password and second factor)",
            "listener metrics (/metrics and /health): 127.0.0.1:9880, plain HTTP, no TLS, no authentication",
        ]
    );
    assert_eq!(notices.len(), 4, "nothing open to the network: {notices:?}");
    // With the EST listener off nothing serves /crl, so certificates name no CRL.
    assert_eq!(config.pki().crl_uri, None);
}

#[test]
fn checks_of_a_listener_that_is_off_do_not_apply() {
    // The same address twice, and an unauthenticated endpoint on the network: both off.
    parse(
        "[gateway]\nsite = \"s1\"\n[enroll]\nenabled = false\nlisten = \"0.0.0.0:8883\"\n\
         [metrics]\nenabled = false\nlisten = \"0.0.0.0:9880\"\n",
    )
    .unwrap();
    let errors = parse(
        "[gateway]\nsite = \"s1\"\n[enroll]\nlisten = \"0.0.0.0:8883\"\n\
         [metrics]\nlisten = \"0.0.0.0:9880\"\n",
    )
    .unwrap_err();
    assert_eq!(keys(&errors), ["mqtt.listen", "metrics.listen"]);
}

#[test]
fn enabled_must_be_a_boolean() {
    let errors = parse("[gateway]\nsite = \"s1\"\n[mqtt]\nenabled = \"no\"\n").unwrap_err();
    assert_eq!(keys(&errors), ["mqtt"], "{errors}");
    assert!(
        errors.to_string().contains("expected a boolean"),
        "{errors}"
    );
}

#[test]
fn cloud_points_default_to_the_full_v1_form_and_compact_is_an_option() {
    use crate::message::envelope::PointsForm;
    let cloud =
        "[gateway]\nsite = \"s1\"\n[cloud]\nurl = \"mqtts://c:8883\"\nca_file = \"ca.pem\"\n";
    assert_eq!(
        parse(cloud).unwrap().cloud.unwrap().points,
        PointsForm::Full
    );
    let compact = parse(&format!("{cloud}points = \"compact\"\n")).unwrap();
    assert_eq!(compact.cloud.unwrap().points, PointsForm::Compact);
    let errors = parse(&format!("{cloud}points = \"short\"\n")).unwrap_err();
    assert_eq!(keys(&errors), ["cloud"], "{errors}");
    assert!(
        errors.to_string().contains("full") && errors.to_string().contains("compact"),
        "{errors}"
    );
}
