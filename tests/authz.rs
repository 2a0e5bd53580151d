//! Private topics end to end: subscription claims against the real server, including claims
//! made by the Python and JavaScript snippets of README.md.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use wspush::Config;
use wspush::app::claim::{self, Scope};
use wspush::app::sha256::HmacSha256;
use wspush::wire::base64url;

const SECRET: &str = "authz-test-secret-0123456789";

fn private_config() -> Config {
    Config {
        subscribe_secret: Some(SECRET.to_owned()),
        private_prefix: Some("private-".to_owned()),
        // The seed's frames, without positions: these tests are about claims.
        history_size: 0,
        ..test_config()
    }
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

fn make_claim(scope: Scope, expires_unix_secs: u64) -> String {
    claim::sign(
        &HmacSha256::new(SECRET.as_bytes()),
        &scope,
        expires_unix_secs,
    )
}

fn topic_claim(topic: &str, ttl_secs: u64) -> String {
    make_claim(Scope::Topic(topic.to_owned()), unix_now_secs() + ttl_secs)
}

/// Sends a subscribe and returns the reply.
fn subscribe(ws: &mut Client, topics: &[&str], claims: &[&str]) -> Value {
    send_json(
        ws,
        json!({"cmd": "subscribe", "topics": topics, "claims": claims}),
    );
    next_json(ws)
}

fn assert_subscribed(reply: &Value, topics: &[&str]) {
    assert_eq!(reply, &json!({"cmd": "subscribed", "topics": topics}));
}

fn assert_refused(reply: &Value, topic: &str, reason: &str) {
    assert_eq!(reply["cmd"], "error", "{reply}");
    assert_eq!(reply["topic"], topic, "{reply}");
    assert_eq!(reply["reason"], reason, "{reply}");
    let text = reply["error"].as_str().unwrap_or_default();
    assert!(text.contains(topic), "the text names the topic: {reply}");
}

#[test]
fn a_valid_claim_subscribes_to_its_private_topic() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let claim = topic_claim("private-42", 60);
    assert_subscribed(
        &subscribe(&mut ws, &["private-42"], &[&claim]),
        &["private-42"],
    );
    assert_eq!(server.publish("private-42", "1")["subscribers"], 1);
    assert_eq!(
        next_json(&mut ws),
        json!({"cmd": "push", "topic": "private-42", "data": 1})
    );
}

#[test]
fn the_seed_form_carries_claims_too() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let claim = topic_claim("private-42", 60);
    send_json(
        &mut ws,
        json!({"topics": ["private-42"], "claims": [claim]}),
    );
    assert_subscribed(&next_json(&mut ws), &["private-42"]);
}

#[test]
fn an_expired_claim_is_refused() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let claim = make_claim(Scope::Topic("private-42".into()), unix_now_secs() - 1);
    let reply = subscribe(&mut ws, &["private-42"], &[&claim]);
    assert_refused(&reply, "private-42", "claim_expired");
    assert_eq!(server.publish("private-42", "1")["subscribers"], 0);
}

#[test]
fn a_claim_for_another_topic_is_refused() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let claim = topic_claim("private-43", 60);
    let reply = subscribe(&mut ws, &["private-42"], &[&claim]);
    assert_refused(&reply, "private-42", "wrong_topic");
    // A topic claim is exact, not a prefix.
    let reply = subscribe(&mut ws, &["private-430"], &[&claim]);
    assert_refused(&reply, "private-430", "wrong_topic");
}

#[test]
fn a_prefix_claim_covers_every_topic_under_it() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let claim = make_claim(
        Scope::Prefix("private-team-7/".into()),
        unix_now_secs() + 60,
    );
    let topics = ["private-team-7/chat", "private-team-7/alerts"];
    assert_subscribed(&subscribe(&mut ws, &topics, &[&claim]), &topics);
    for topic in topics {
        assert_eq!(server.publish(topic, "true")["subscribers"], 1);
        assert_eq!(next_json(&mut ws)["topic"], topic);
    }
    let reply = subscribe(&mut ws, &["private-team-8/chat"], &[&claim]);
    assert_refused(&reply, "private-team-8/chat", "wrong_topic");
}

#[test]
fn tampered_payloads_and_signatures_are_refused() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let genuine = topic_claim("private-1", 60);
    let (payload, signature) = genuine.split_once('.').unwrap();
    // The payload re-encoded for another topic, under the genuine signature.
    let json = base64url::decode(payload).unwrap();
    let forged_json = String::from_utf8(json)
        .unwrap()
        .replace("private-1", "private-2");
    let forged_payload = base64url::encode(forged_json.as_bytes());
    let reply = subscribe(
        &mut ws,
        &["private-2"],
        &[&format!("{forged_payload}.{signature}")],
    );
    assert_refused(&reply, "private-2", "bad_signature");
    // One bit of the signature flipped.
    let mut flipped = base64url::decode(signature).unwrap();
    flipped[31] ^= 0x80;
    let forged_signature = base64url::encode(&flipped);
    let reply = subscribe(
        &mut ws,
        &["private-1"],
        &[&format!("{payload}.{forged_signature}")],
    );
    assert_refused(&reply, "private-1", "bad_signature");
    // Signed with another secret.
    let stranger = claim::sign(
        &HmacSha256::new(b"not-the-server-secret"),
        &Scope::Topic("private-1".into()),
        unix_now_secs() + 60,
    );
    let reply = subscribe(&mut ws, &["private-1"], &[&stranger]);
    assert_refused(&reply, "private-1", "bad_signature");
    assert_eq!(server.stats()["claims_refused"], 3);
}

#[test]
fn a_private_topic_without_a_claim_is_refused_and_nothing_is_subscribed() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let reply = subscribe(&mut ws, &["news", "private-42"], &[]);
    assert_refused(&reply, "private-42", "missing_claim");
    send_json(&mut ws, json!({"topics": ["private-42"]}));
    assert_refused(&next_json(&mut ws), "private-42", "missing_claim");
    // All or nothing: the public topic of the refused subscribe was not subscribed either.
    assert_eq!(server.publish("news", "1")["subscribers"], 0);
    let stats = server.stats();
    assert_eq!(stats["claims_refused"], 2);
    assert_eq!(stats["subscriptions"], 0);
}

#[test]
fn malformed_claims_are_refused() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let genuine = topic_claim("private-1", 60);
    let padded = format!("{genuine}=");
    let signed_garbage = claim::sign_payload(
        &HmacSha256::new(SECRET.as_bytes()),
        br#"{"topic":"private-1"}"#,
    );
    for bad in ["no-dot-at-all", "a.b", &padded, &signed_garbage] {
        let reply = subscribe(&mut ws, &["private-1"], &[bad]);
        assert_refused(&reply, "private-1", "malformed_claim");
    }
    // Claims must be strings.
    send_json(
        &mut ws,
        json!({"topics": ["private-1"], "claims": [{"topic": "private-1"}]}),
    );
    assert_eq!(next_json(&mut ws)["cmd"], "error");
    assert_eq!(server.publish("private-1", "1")["subscribers"], 0);
}

#[test]
fn public_and_private_topics_share_a_connection() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    // A public topic needs no claim.
    assert_subscribed(&subscribe(&mut ws, &["news"], &[]), &["news"]);
    let claim = topic_claim("private-42", 60);
    assert_subscribed(
        &subscribe(&mut ws, &["private-42", "weather"], &[&claim]),
        &["private-42", "weather"],
    );
    for (topic, n) in [("news", 1), ("private-42", 2), ("weather", 3)] {
        assert_eq!(server.publish(topic, &n.to_string())["subscribers"], 1);
        assert_eq!(
            next_json(&mut ws),
            json!({"cmd": "push", "topic": topic, "data": n})
        );
    }
}

#[test]
fn a_claim_that_expires_during_the_subscription_ends_it() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    // Whole seconds: this claim expires 1 to 2 s from now.
    let claim = topic_claim("private-42", 2);
    assert_subscribed(
        &subscribe(&mut ws, &["private-42", "news"], &[&claim]),
        &["private-42", "news"],
    );
    assert_eq!(server.publish("private-42", "1")["subscribers"], 1);
    assert_eq!(next_json(&mut ws)["data"], 1);
    assert_eq!(
        next_json(&mut ws),
        json!({"cmd": "unsubscribed", "topics": ["private-42"], "reason": "claim expired"})
    );
    assert_eq!(server.publish("private-42", "2")["subscribers"], 0);
    // The connection stays open, with its public topic.
    assert_eq!(server.publish("news", "3")["subscribers"], 1);
    assert_eq!(next_json(&mut ws)["data"], 3);
    assert_nothing_pending(&mut ws);
    let stats = server.stats();
    assert_eq!(stats["claim_expirations"], 1);
    assert_eq!(stats["subscriptions"], 1);
}

#[test]
fn a_fresh_claim_before_expiry_keeps_the_subscription() {
    let server = TestServer::with(private_config());
    let mut ws = connect(&server);
    let expires = unix_now_secs() + 2;
    let short = make_claim(Scope::Topic("private-42".into()), expires);
    assert_subscribed(
        &subscribe(&mut ws, &["private-42"], &[&short]),
        &["private-42"],
    );
    let fresh = topic_claim("private-42", 600);
    assert_subscribed(
        &subscribe(&mut ws, &["private-42"], &[&fresh]),
        &["private-42"],
    );
    // A witness whose claim expires a second after the first short one: once it is told, the
    // first claim's expiry has passed too.
    let mut witness = connect(&server);
    let witness_claim = make_claim(Scope::Topic("private-w".into()), expires + 1);
    assert_subscribed(
        &subscribe(&mut witness, &["private-w"], &[&witness_claim]),
        &["private-w"],
    );
    assert_eq!(next_json(&mut witness)["reason"], "claim expired");
    assert_eq!(server.publish("private-42", "1")["subscribers"], 1);
    assert_eq!(
        next_json(&mut ws),
        json!({"cmd": "push", "topic": "private-42", "data": 1}),
        "no unsubscribed before the push"
    );
    assert_eq!(
        server.stats()["subscriptions"],
        1,
        "re-subscribing added no member"
    );
}

#[test]
fn without_the_settings_every_topic_is_public() {
    let server = TestServer::with(Config {
        history_size: 0,
        ..test_config()
    });
    let mut ws = connect(&server);
    assert_subscribed(&subscribe(&mut ws, &["private-x"], &[]), &["private-x"]);
    assert_eq!(server.publish("private-x", "1")["subscribers"], 1);
    assert_eq!(next_json(&mut ws)["data"], 1);
}

/// The fenced block of `language` in README.md's "Private topics" section.
fn readme_snippet(language: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Private topics"))
        .expect("README.md has a \"Private topics\" section");
    let fence = format!("```{language}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no {language} block under \"Private topics\""))
        + fence.len();
    let length = section[start..].find("```").expect("a closed code block");
    section[start..start + length].to_owned()
}

/// Runs `program` with `flag` and `code`; a missing interpreter fails the test.
fn run_snippet(program: &str, flag: &str, code: &str) -> String {
    let output = Command::new(program)
        .arg(flag)
        .arg(code)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): this test needs it to check README's snippet")
        });
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

#[test]
fn the_readme_snippets_make_claims_the_server_accepts() {
    let python = readme_snippet("python");
    let javascript = readme_snippet("js");
    let made = [
        (
            "python3",
            run_snippet(
                "python3",
                "-c",
                &format!("{python}\nprint(claim({SECRET:?}, \"private-py\"))"),
            ),
        ),
        (
            "node",
            run_snippet(
                "node",
                "-e",
                &format!("{javascript}\nconsole.log(claim({SECRET:?}, \"private-js\"));"),
            ),
        ),
    ];
    let server = TestServer::with(private_config());
    for (program, claim) in made {
        let topic = if program == "node" {
            "private-js"
        } else {
            "private-py"
        };
        let mut ws = connect(&server);
        let reply = subscribe(&mut ws, &[topic], &[&claim]);
        assert_subscribed(&reply, &[topic]);
        assert_eq!(server.publish(topic, "1")["subscribers"], 1, "{program}");
        assert_eq!(next_json(&mut ws)["data"], 1);
    }
}
