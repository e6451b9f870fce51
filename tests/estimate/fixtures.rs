//! Real-looking bodies, each with its figures worked out by hand.

use super::*;

#[test]
fn chat_turns_count_characters_and_per_message_overhead() {
    let body = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}
        ],
        "max_tokens": 64
    }"#;
    // 28 + 30 + 6 + 13 = 77 characters: 20 tokens; 4 messages: 16; reply: 3.
    assert_eq!(estimate(body), Estimate::new(20 + 16 + 3, 64));
    assert_eq!(estimate(body).total, 103);
}

#[test]
fn characters_not_bytes() {
    // 8 characters, 24 bytes.
    let body =
        r#"{"messages": [{"role": "user", "content": "日本語のテキスト"}], "max_tokens": 1}"#;
    assert_eq!(estimate(body), Estimate::new(2 + 4 + 3, 1));
}

#[test]
fn text_parts_count_and_an_image_counts_its_flat_rate_not_its_data() {
    let body = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this image."},
        {"type": "image_url", "image_url": {
            "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
            "detail": "high"}},
        {"type": "text", "text": "Be brief."}
    ]}], "max_completion_tokens": 300}"#;
    // 20 + 9 = 29 characters: 8; 1 message: 4; 1 image: 765; reply: 3.
    assert_eq!(estimate(body), Estimate::new(8 + 4 + 765 + 3, 300));
}

#[test]
fn tools_count_their_keys_and_strings() {
    let body = r#"{"model": "gpt-4o",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the weather",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "max_tokens": 20}"#;
    // The message: 17. The tool: type+function 12; function 8 + name 15 +
    // description 26 + parameters (10 + type 10 + properties 24 +
    // required 12 = 56) = 105. 134 characters: 34; 1 message: 4; reply: 3.
    assert_eq!(estimate(body), Estimate::new(34 + 4 + 3, 20));
}

#[test]
fn tool_calls_and_tool_results_count_and_n_multiplies_the_output() {
    let body = r#"{"model": "gpt-4o-mini", "n": 3, "max_tokens": 100, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
    ]}"#;
    // 17; tool_calls 10 + id 8 + type 12 + function (8 + name 15 +
    // arguments 25) = 78; tool_call_id 18 + content 13 = 31. 126
    // characters: 32; 3 messages: 12; reply: 3. Output: 100 * 3.
    assert_eq!(estimate(body), Estimate::new(32 + 12 + 3, 300));
}

#[test]
fn max_completion_tokens_comes_before_max_tokens() {
    let body = r#"{"messages": [], "max_tokens": 4096, "max_completion_tokens": 128}"#;
    assert_eq!(estimate(body), Estimate::new(3, 128));
    // An unreadable first field falls through to the next.
    let body = r#"{"messages": [], "max_completion_tokens": null, "max_tokens": 4096}"#;
    assert_eq!(estimate(body), Estimate::new(3, 4096));
}

#[test]
fn anthropic_messages_count_the_system_prompt_and_blocks() {
    let body = r#"{"model": "claude-sonnet-4-5", "max_tokens": 1024,
        "system": "You are a poet.",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Write a haiku about rain."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}}
        ]}]}"#;
    // 15 + 25 = 40 characters: 10; the system prompt and 1 message: 8; 1
    // image: 765; reply: 3.
    assert_eq!(estimate(body), Estimate::new(10 + 8 + 765 + 3, 1024));
}

#[test]
fn responses_api_counts_instructions_and_input() {
    let body = r#"{"model": "gpt-4.1", "instructions": "Answer in French.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
        "max_output_tokens": 500}"#;
    // 17 + 11 = 28 characters: 7; instructions and 1 item: 8; reply: 3.
    assert_eq!(estimate(body), Estimate::new(7 + 8 + 3, 500));
    let body = r#"{"model": "gpt-4.1", "input": "Tell me a joke.", "max_output_tokens": 50}"#;
    assert_eq!(estimate(body), Estimate::new(4 + 4 + 3, 50));
}

#[test]
fn without_a_maximum_the_default_output_per_choice() {
    let body = r#"{"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]}"#;
    assert_eq!(estimate(body), Estimate::new(1 + 4 + 3, 2 * 256));
    let estimator = ChatEstimator::new().default_output(1000);
    assert_eq!(
        estimator.estimate(body.as_bytes()),
        Estimate::new(8, 2 * 1000)
    );
}

#[test]
fn a_parsed_body_estimates_as_its_bytes() {
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 7});
    let estimator = ChatEstimator::new();
    assert_eq!(
        estimator.estimate_json(&body),
        estimator.estimate(body.to_string().as_bytes())
    );
    assert_eq!(estimator.estimate_json(&body), Estimate::new(2 + 4 + 3, 7));
}
