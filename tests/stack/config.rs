//! `StackConfig` read from and written to files (feature `serde`).

use std::time::Duration;

use llm_sluice::retry::Jitter;
use llm_sluice::stack::{ConfigReadError, LlmStack, StackConfig};
use llm_sluice::ConfigError;

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

// ------------------------------------------- errors name the field written

/// A configuration read through `StackConfig::from_deserializer`.
fn read_toml(text: &str) -> Result<StackConfig, ConfigReadError> {
    let document = toml::Deserializer::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    StackConfig::from_deserializer(document)
}

fn read_json(text: &str) -> Result<StackConfig, ConfigReadError> {
    let mut json = serde_json::Deserializer::from_str(text);
    let config = StackConfig::from_deserializer(&mut json)?;
    json.end().unwrap_or_else(|e| panic!("{text}: {e}"));
    Ok(config)
}

fn named(err: &ConfigError) -> (Option<&str>, &str) {
    (err.section(), err.field())
}

/// `section.field` (or `field` at the top level) as a section and a field.
fn split(path: &str) -> (Option<&str>, &str) {
    match path.split_once('.') {
        Some((section, field)) => (Some(section), field),
        None => (None, path),
    }
}

/// A TOML document setting `path` to `value`, with `context` beside it in
/// the same section.
fn toml_doc(path: &str, value: &str, context: &[(&str, &str)]) -> String {
    let (section, field) = split(path);
    let mut text = section.map(|s| format!("[{s}]\n")).unwrap_or_default();
    for (key, value) in context.iter().chain([&(field, value)]) {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

/// The same as a JSON document.
fn json_doc(path: &str, value: &str, context: &[(&str, &str)]) -> String {
    let (section, field) = split(path);
    let members: Vec<String> = context
        .iter()
        .chain([&(field, value)])
        .map(|(key, value)| format!("\"{key}\": {value}"))
        .collect();
    let members = members.join(", ");
    match section {
        Some(section) => format!("{{\"{section}\": {{{members}}}}}"),
        None => format!("{{{members}}}"),
    }
}

/// Every setting of every section, as `section.field` (or `field`), from
/// the configuration itself: a field added later is iterated too.
fn every_field() -> Vec<String> {
    // The guard band is left out of a default's serialization (its default
    // depends on the window): set it to see it.
    let mut config = StackConfig::default();
    config.rate.guard_band = Some(std::time::Duration::from_millis(250));
    let value = serde_json::to_value(config).unwrap();
    let mut paths = Vec::new();
    for (name, value) in value.as_object().unwrap() {
        match value.as_object() {
            Some(section) => paths.extend(section.keys().map(|field| format!("{name}.{field}"))),
            None => paths.push(name.clone()),
        }
    }
    for known in [
        "deadline",
        "retry.backoff_base",
        "timeout.idle",
        "rate.window",
    ] {
        assert!(paths.iter().any(|p| p == known), "{known} in {paths:?}");
    }
    paths
}

#[test]
fn the_reported_cases_name_retry_backoff_base() {
    // A duration that reads but is out of range: named when built.
    let config = read_toml("[retry]\nbackoff_base = \"32days\"\n").unwrap();
    let err = LlmStack::from_config(&config).unwrap_err();
    assert_eq!(named(&err), (Some("retry"), "backoff_base"), "{err}");
    assert!(err.to_string().contains("`retry.backoff_base`"), "{err}");
    // A value that cannot be read: named when read, in JSON as in TOML.
    for err in [
        read_json(r#"{"retry":{"backoff_base":-1}}"#).unwrap_err(),
        read_toml("[retry]\nbackoff_base = -1\n").unwrap_err(),
    ] {
        match &err {
            ConfigReadError::Invalid(e) => {
                assert_eq!(named(e), (Some("retry"), "backoff_base"), "{err}")
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("`retry.backoff_base`"), "{err}");
        assert!(err.to_string().contains("negative"), "{err}");
    }
}

/// Every field, given a value no setting accepts (a table, a word), is
/// named by the error, in TOML and in JSON.
#[test]
fn every_field_names_itself_when_its_value_cannot_be_read() {
    let hostile = [
        ("{ not = \"a value\" }", r#"{"not": "a value"}"#),
        ("\"not a value\"", "\"not a value\""),
        ("[1, 2]", "[1, 2]"),
    ];
    for path in every_field() {
        for (toml_value, json_value) in hostile {
            let toml = toml_doc(&path, toml_value, &[]);
            let json = json_doc(&path, json_value, &[]);
            for (text, result) in [(&toml, read_toml(&toml)), (&json, read_json(&json))] {
                match result {
                    Err(ConfigReadError::Invalid(e)) => {
                        assert_eq!(named(&e), split(&path), "{text}: {e}")
                    }
                    other => panic!("{text}: {other:?}"),
                }
            }
        }
    }
}

/// When a hostile value is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// By `StackConfig::from_deserializer`: it cannot be read.
    Read,
    /// By `LlmStack::from_config`: it reads, but is out of range.
    Build,
}
use Stage::{Build, Read};

/// `(path, value, stage, context)`: a value for a field, when it is refused,
/// and the fields set beside it.
type Hostile = (
    &'static str,
    &'static str,
    Stage,
    &'static [(&'static str, &'static str)],
);

/// A value a person might write wrong, for every field: refused, and named,
/// at reading or at building, in TOML and in JSON alike. `context` sets what
/// the field needs to be used at all (a rate budget, a slow-call threshold).
const HOSTILE: &[Hostile] = &[
    ("deadline", "-1", Read, &[]),
    ("deadline", "\"32days\"", Build, &[]),
    ("retry.enabled", "\"yes\"", Read, &[]),
    ("retry.max_retries", "-1", Read, &[]),
    ("retry.backoff_base", "-1", Read, &[]),
    ("retry.backoff_base", "\"32days\"", Build, &[]),
    ("retry.backoff_base", "\"10s\"", Build, &[]), // above the default cap
    ("retry.backoff_cap", "\"soon\"", Read, &[]),
    ("retry.backoff_cap", "\"100ms\"", Build, &[]), // below the default base
    ("retry.backoff_cap", "\"32days\"", Build, &[]),
    ("retry.jitter", "\"bogus\"", Read, &[]),
    ("retry.max_server_delay", "-1", Read, &[]),
    ("retry.max_server_delay", "\"0s\"", Build, &[]),
    ("retry.max_server_delay", "\"32days\"", Build, &[]),
    ("retry.budget", "1", Read, &[]),
    ("retry.budget_ttl", "-1", Read, &[]),
    ("retry.budget_ttl", "\"2h\"", Build, &[]),
    ("retry.budget_min_per_sec", "-1", Read, &[]),
    ("retry.budget_ratio", "\"x\"", Read, &[]),
    ("retry.budget_ratio", "-1", Build, &[]),
    ("retry.seed", "-1", Read, &[]),
    ("breaker.enabled", "\"no\"", Read, &[]),
    ("breaker.consecutive_failures", "-1", Read, &[]),
    ("breaker.consecutive_failures", "0", Build, &[]),
    ("breaker.failure_rate", "\"half\"", Read, &[]),
    ("breaker.failure_rate", "1.5", Build, &[]),
    ("breaker.count_window", "-1", Read, &[]),
    ("breaker.count_window", "0", Build, &[]),
    ("breaker.time_window", "-1", Read, &[]),
    ("breaker.time_window", "\"32days\"", Build, &[]),
    ("breaker.minimum_calls", "-1", Read, &[]),
    ("breaker.slow_call_threshold", "-1", Read, &[]),
    ("breaker.slow_call_threshold", "\"0s\"", Build, &[]),
    ("breaker.slow_call_threshold", "\"32days\"", Build, &[]),
    ("breaker.slow_call_rate", "\"x\"", Read, &[]),
    (
        "breaker.slow_call_rate",
        "1.5",
        Build,
        &[("slow_call_threshold", "\"5s\"")],
    ),
    ("breaker.open_duration", "-1", Read, &[]),
    ("breaker.open_duration", "\"32days\"", Build, &[]),
    ("breaker.open_duration_multiplier", "\"x\"", Read, &[]),
    ("breaker.open_duration_multiplier", "0.5", Build, &[]),
    ("breaker.max_open_duration", "-1", Read, &[]),
    (
        "breaker.max_open_duration",
        "\"32days\"",
        Build,
        &[("open_duration_multiplier", "2.0")],
    ),
    ("breaker.half_open_probes", "-1", Read, &[]),
    ("breaker.half_open_probes", "0", Build, &[]),
    ("breaker.half_open_max_wait", "-1", Read, &[]),
    ("breaker.half_open_max_wait", "\"32days\"", Build, &[]),
    ("breaker.per_partition", "-1", Read, &[]),
    ("concurrency.enabled", "0", Read, &[]),
    ("concurrency.max_in_flight", "-1", Read, &[]),
    ("concurrency.max_in_flight", "0", Build, &[]),
    ("concurrency.max_queued", "-1", Read, &[]),
    ("concurrency.max_queue_wait", "-1", Read, &[]),
    ("concurrency.max_queue_wait", "\"0s\"", Build, &[]),
    ("concurrency.max_queue_wait", "\"32days\"", Build, &[]),
    ("concurrency.aging", "-1", Read, &[]),
    ("concurrency.aging", "\"32days\"", Build, &[]),
    ("rate.enabled", "\"on\"", Read, &[]),
    ("rate.requests_per_minute", "-1", Read, &[]),
    ("rate.requests_per_minute", "0", Build, &[]),
    ("rate.tokens_per_minute", "-1", Read, &[]),
    ("rate.tokens_per_minute", "0", Build, &[]),
    ("rate.input_tokens_per_minute", "-1", Read, &[]),
    ("rate.input_tokens_per_minute", "0", Build, &[]),
    ("rate.output_tokens_per_minute", "-1", Read, &[]),
    ("rate.output_tokens_per_minute", "0", Build, &[]),
    ("rate.request_burst", "-1", Read, &[]),
    (
        "rate.request_burst",
        "20",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("rate.token_burst", "-1", Read, &[]),
    (
        "rate.token_burst",
        "5",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("rate.global_requests_per_minute", "-1", Read, &[]),
    ("rate.global_requests_per_minute", "0", Build, &[]),
    ("rate.global_tokens_per_minute", "-1", Read, &[]),
    ("rate.global_tokens_per_minute", "0", Build, &[]),
    ("rate.token_charging", "\"bogus\"", Read, &[]),
    ("rate.input_token_charging", "\"later\"", Read, &[]),
    ("rate.output_token_charging", "1", Read, &[]),
    ("rate.learn_limits", "\"always\"", Read, &[]),
    ("rate.window", "-1", Read, &[]),
    (
        "rate.window",
        "\"0s\"",
        Build,
        &[("requests_per_minute", "10")],
    ),
    (
        "rate.window",
        "\"32days\"",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("rate.guard_band", "-1", Read, &[]),
    (
        "rate.guard_band",
        "\"2m\"",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("rate.max_wait", "-1", Read, &[]),
    (
        "rate.max_wait",
        "\"32days\"",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("rate.max_waiters", "-1", Read, &[]),
    ("rate.max_partitions", "-1", Read, &[]),
    (
        "rate.max_partitions",
        "0",
        Build,
        &[("requests_per_minute", "10")],
    ),
    ("timeout.enabled", "\"off\"", Read, &[]),
    ("timeout.attempt", "-1", Read, &[]),
    ("timeout.attempt", "\"0s\"", Build, &[]),
    ("timeout.first_chunk", "-1", Read, &[]),
    ("timeout.first_chunk", "\"0s\"", Build, &[]),
    ("timeout.idle", "-1", Read, &[]),
    ("timeout.idle", "\"0s\"", Build, &[]),
];

#[test]
fn a_hostile_value_in_any_field_is_named_in_toml_and_json() {
    // Every field has a row: a field added without one fails here.
    let fields = every_field();
    let missing: Vec<&String> = fields
        .iter()
        .filter(|path| !HOSTILE.iter().any(|(p, ..)| p == path))
        .collect();
    assert!(
        missing.is_empty(),
        "give these fields a hostile value: {missing:?}"
    );

    for &(path, value, stage, context) in HOSTILE {
        assert!(fields.iter().any(|f| f == path), "no field {path}");
        let toml = toml_doc(path, value, context);
        let json = json_doc(path, value, context);
        for (text, result) in [(&toml, read_toml(&toml)), (&json, read_json(&json))] {
            let err = match (stage, result) {
                (Read, Err(ConfigReadError::Invalid(e))) => e,
                (Build, Ok(config)) => match LlmStack::from_config(&config) {
                    Err(e) => e,
                    Ok(_) => panic!("{text}: built"),
                },
                (stage, other) => panic!("{text}: at {stage:?}, {other:?}"),
            };
            assert_eq!(named(&err), split(path), "{text}: {err}");
            assert!(err.to_string().contains(&format!("`{path}`")), "{err}");
        }
    }
}

#[test]
fn misspelt_keys_and_malformed_documents_are_told_apart() {
    for (text, result) in [
        ("toml", read_toml("[rate]\nrequests_per_minut = 5\n")),
        ("json", read_json(r#"{"rate": {"requests_per_minut": 5}}"#)),
    ] {
        match result {
            Err(ConfigReadError::Unknown {
                section: Some("rate"),
                ref key,
                ref reason,
            }) if key == "requests_per_minut" => {
                assert!(reason.contains("requests_per_minute"), "{text}: {reason}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    match read_toml("[concurency]\n") {
        Err(err @ ConfigReadError::Unknown { section: None, .. }) => {
            assert!(
                err.to_string().starts_with("unknown setting `concurency`"),
                "{err}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A section that is not a table is named as the top-level field it is.
    match read_toml("retry = 5\n") {
        Err(ConfigReadError::Invalid(e)) => assert_eq!(named(&e), (None, "retry")),
        other => panic!("{other:?}"),
    }
    match read_json("5") {
        Err(ConfigReadError::Malformed { .. }) => {}
        other => panic!("{other:?}"),
    }
    // A good document reads, as the format's own functions read it.
    assert_eq!(read_toml(TOML).unwrap(), toml::from_str(TOML).unwrap());
}
