//! `StackConfig` read from and written to files (feature `serde`).

use std::time::Duration;

use llm_sluice::retry::Jitter;
use llm_sluice::stack::{LlmStack, StackConfig};

const TOML: &str = r#"
deadline = "5m"

[retry]
max_retries = 3
backoff_base = "250ms"
jitter = "equal"

[breaker]
failure_rate = 0.25
per_partition = 64

[concurrency]
max_in_flight = 32
max_queue_wait = "1m 30s"
aging = "2s"

[rate]
requests_per_minute = 500
tokens_per_minute = 200000
max_wait = 20

[timeout]
attempt = "90s"
idle = 30.5
"#;

#[test]
fn a_toml_file_sets_what_it_names_and_defaults_the_rest() {
    let config: StackConfig = toml::from_str(TOML).unwrap();
    let defaults = StackConfig::default();
    assert_eq!(config.deadline, Some(Duration::from_secs(300)));
    assert_eq!(config.retry.max_retries, 3);
    assert_eq!(config.retry.backoff_base, Duration::from_millis(250));
    assert_eq!(config.retry.jitter, Jitter::Equal);
    assert_eq!(config.retry.backoff_cap, defaults.retry.backoff_cap);
    assert_eq!(config.breaker.failure_rate, Some(0.25));
    assert_eq!(config.breaker.per_partition, Some(64));
    assert_eq!(config.breaker.open_duration, defaults.breaker.open_duration);
    assert_eq!(config.concurrency.max_in_flight, 32);
    assert_eq!(config.concurrency.max_queue_wait, Duration::from_secs(90));
    assert_eq!(config.concurrency.aging, Some(Duration::from_secs(2)));
    assert_eq!(
        config.concurrency.max_queued,
        defaults.concurrency.max_queued
    );
    assert_eq!(config.rate.requests_per_minute, Some(500));
    assert_eq!(
        config.rate.max_wait,
        Some(Duration::from_secs(20)),
        "a number is seconds"
    );
    assert_eq!(config.timeout.attempt, Some(Duration::from_secs(90)));
    assert_eq!(config.timeout.idle, Some(Duration::from_millis(30_500)));
    assert_eq!(config.timeout.first_chunk, None);

    let stack = LlmStack::from_config(&config).unwrap();
    assert!(stack.rate_handle().is_some());
    assert_eq!(stack.concurrency().unwrap().max_in_flight(), 32);
}

#[test]
fn an_empty_file_is_the_default_configuration() {
    assert_eq!(
        toml::from_str::<StackConfig>("").unwrap(),
        StackConfig::default()
    );
    assert_eq!(
        serde_json::from_str::<StackConfig>("{}").unwrap(),
        StackConfig::default()
    );
}

#[test]
fn the_configuration_round_trips_through_json_and_toml() {
    let config: StackConfig = toml::from_str(TOML).unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<StackConfig>(&json).unwrap(), config);
    let text = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<StackConfig>(&text).unwrap(), config);
    assert!(
        json.contains(r#""deadline":"5m""#),
        "durations are written for people: {json}"
    );
}

#[test]
fn unknown_fields_and_bad_durations_are_refused_with_their_name() {
    let err = toml::from_str::<StackConfig>("[rate]\nrequests_per_minut = 5\n").unwrap_err();
    assert!(err.to_string().contains("requests_per_minut"), "{err}");
    let err = toml::from_str::<StackConfig>("[concurency]\n").unwrap_err();
    assert!(err.to_string().contains("concurency"), "{err}");
    let err = toml::from_str::<StackConfig>("deadline = \"five minutes\"\n").unwrap_err();
    assert!(err.to_string().contains("five minutes"), "{err}");
    let err = serde_json::from_str::<StackConfig>(r#"{"deadline": -3}"#).unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
}

#[test]
fn values_that_parse_but_are_invalid_fail_at_build_naming_the_field() {
    let config: StackConfig = toml::from_str("[breaker]\nhalf_open_probes = 0\n").unwrap();
    let err = LlmStack::from_config(&config).unwrap_err();
    assert_eq!(
        (err.section(), err.field()),
        (Some("breaker"), "half_open_probes")
    );
}

#[test]
fn off_turns_off_a_setting_whose_default_is_on_and_round_trips() {
    let text = "[timeout]\nattempt = \"off\"\n\n[concurrency]\naging = \"off\"\n";
    let config: StackConfig = toml::from_str(text).unwrap();
    assert_eq!(config.timeout.attempt, None, "the default is 120 s");
    assert_eq!(config.concurrency.aging, None, "the default is 5 s");
    assert_eq!(config.timeout.idle, StackConfig::default().timeout.idle);
    let written = toml::to_string(&config).unwrap();
    assert!(written.contains("attempt = \"off\""), "{written}");
    assert_eq!(toml::from_str::<StackConfig>(&written).unwrap(), config);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<StackConfig>(&json).unwrap(), config);
    let null: StackConfig = serde_json::from_str(r#"{"timeout": {"attempt": null}}"#).unwrap();
    assert_eq!(null.timeout.attempt, None);
}
