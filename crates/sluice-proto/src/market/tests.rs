use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;
const URL_A: &str = "wss://gw-a.example/v1/node";
const URL_B: &str = "wss://gw-b.example/v1/node";

fn node() -> Keys {
    Keys::from_secret_hex(&"11".repeat(32)).unwrap()
}

fn gateway_a() -> Keys {
    Keys::from_secret_hex(&"22".repeat(32)).unwrap()
}

fn gateway_b() -> Keys {
    Keys::from_secret_hex(&"33".repeat(32)).unwrap()
}

fn chunk(delta: &str) -> Message {
    Message::Chunk(Chunk {
        request_id: "req_1".into(),
        index: 0,
        delta: delta.into(),
    })
}

fn receipt_for(text: &str, output_tokens: u64) -> Receipt {
    Receipt {
        request_id: "req_1".into(),
        model: "qwen2.5-0.5b".into(),
        input_tokens: 12,
        output_tokens,
        output_sha256: output_hash(text),
        first_token_ms: 80,
        total_ms: 900,
        finish_reason: "stop".into(),
    }
}

/// One message of every type.
fn samples() -> Vec<Message> {
    vec![
        Message::Challenge(Challenge {
            nonce: "n0nce".into(),
            gateway: URL_A.into(),
        }),
        Message::Hello(Hello {
            nonce: "n0nce".into(),
            gateway: URL_A.into(),
            software: "sluice 0.1.0".into(),
        }),
        Message::Ad(Ad {
            seq: 7,
            models: vec![AdModel {
                name: "qwen2.5-0.5b".into(),
                family: "qwen2".into(),
                quantization: "Q4_K_M".into(),
                context_window: 32_768,
                max_concurrency: 2,
                price: Price {
                    input_msat_per_mtok: 1_000_000,
                    output_msat_per_mtok: 3_000_000,
                },
            }],
            hardware: Hardware {
                memory_bytes: 16 << 30,
                accelerator: None,
                cores: 8,
            },
            software: "sluice 0.1.0".into(),
        }),
        Message::Heartbeat(Heartbeat {
            in_flight: 1,
            queued: 0,
            tokens_per_sec_recent: 12_500,
            seq: 42,
        }),
        Message::Request(Request {
            request_id: "req_1".into(),
            model: "qwen2.5-0.5b".into(),
            body: serde_json::json!({
                "model": "qwen2.5-0.5b",
                "messages": [{"role": "user", "content": "hi \"there\"\n"}],
                "temperature": 0.5,
            }),
            max_tokens: 256,
            stream: true,
        }),
        chunk("Hello"),
        Message::Receipt(receipt_for("Hello", 1)),
        Message::Failed(Failed {
            request_id: "req_1".into(),
            reason: "out of memory".into(),
        }),
        Message::Cancel(Cancel {
            request_id: "req_1".into(),
        }),
        Message::InvoiceRequest(InvoiceRequest {
            payout_id: "po_1".into(),
            amount_msat: 21_000,
        }),
        Message::Invoice(Invoice {
            payout_id: "po_1".into(),
            bolt11: "lnbcrt210n1...".into(),
        }),
    ]
}

/// A raw frame signed by `keys`, with any kind, tags and content.
fn signed(keys: &Keys, kind: u32, tags: Vec<Vec<String>>, content: &str, at: u64) -> String {
    Event::sign(keys, at, kind, tags, content.into()).to_json()
}

fn tags(t: &str, p: Option<&Keys>) -> Vec<Vec<String>> {
    let mut tags = vec![vec!["t".to_owned(), t.to_owned()]];
    if let Some(p) = p {
        tags.push(vec!["p".to_owned(), p.public_hex()]);
    }
    tags
}

fn content(message: &Message) -> String {
    serde_json::to_string(message).unwrap()
}

#[test]
fn a_sealed_message_opens_to_the_same_message_and_sender() {
    let (node, gw) = (node(), gateway_a());
    for message in samples() {
        let recipient = gw.public_hex();
        let envelope = seal(&node, &message, Some(&recipient), NOW);
        assert_eq!(envelope.kind, ENVELOPE_KIND);
        assert_eq!(envelope.tag("t"), Some(message.message_type().as_str()));
        assert_eq!(envelope.tag("p"), Some(recipient.as_str()));
        let opened = open(&envelope.to_json(), Some(&recipient), NOW).unwrap();
        assert_eq!(opened.message, message);
        assert_eq!(opened.sender_pubkey, node.public_hex());
        assert_eq!(opened.id, envelope.id);
        assert_eq!(opened.created_at, NOW);
        assert_eq!(
            opened.sender_npub().unwrap(),
            crate::nostr::npub(&node.public_hex()).unwrap()
        );
    }
}

#[test]
fn the_body_is_internally_tagged_snake_case() {
    let body = content(&Message::InvoiceRequest(InvoiceRequest {
        payout_id: "po_1".into(),
        amount_msat: 21_000,
    }));
    assert_eq!(
        body,
        r#"{"type":"invoice_request","payout_id":"po_1","amount_msat":21000}"#
    );
    for ty in MessageType::ALL {
        assert_eq!(MessageType::from_wire(ty.as_str()), Some(ty));
    }
    for message in samples() {
        let value: serde_json::Value = serde_json::from_str(&content(&message)).unwrap();
        assert_eq!(value["type"], message.message_type().as_str());
    }
}

#[test]
fn tampered_content_fails_the_signature() {
    let gw = gateway_a();
    let mut envelope = seal(
        &node(),
        &Message::Receipt(receipt_for("Hello", 1)),
        Some(&gw.public_hex()),
        NOW,
    );
    envelope.content = envelope
        .content
        .replace("\"output_tokens\":1", "\"output_tokens\":9");
    let err = open(&envelope.to_json(), Some(&gw.public_hex()), NOW).unwrap_err();
    assert_eq!(err, MarketError::BadSignature(NostrError::IdMismatch));

    // Id recomputed too: only the signature can tell.
    envelope.id = envelope.compute_id();
    let err = open(&envelope.to_json(), Some(&gw.public_hex()), NOW).unwrap_err();
    assert_eq!(err, MarketError::BadSignature(NostrError::BadSignature));
}

#[test]
fn an_unsigned_message_is_refused() {
    let gw = gateway_a();
    let envelope = seal(&node(), &chunk("x"), Some(&gw.public_hex()), NOW);
    let mut value: serde_json::Value = serde_json::from_str(&envelope.to_json()).unwrap();
    value["sig"] = "".into();
    let raw = value.to_string();
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::Unsigned)
    );
    value.as_object_mut().unwrap().remove("sig");
    assert_eq!(
        open(&value.to_string(), Some(&gw.public_hex()), NOW),
        Err(MarketError::Unsigned)
    );
}

#[test]
fn a_wrong_kind_is_refused() {
    let gw = gateway_a();
    let message = chunk("x");
    let raw = signed(
        &node(),
        1,
        tags("chunk", Some(&gw)),
        &content(&message),
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::WrongKind { found: 1 })
    );
    let raw = signed(
        &node(),
        crate::nostr::HTTP_AUTH_KIND,
        tags("chunk", Some(&gw)),
        &content(&message),
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::WrongKind { found: 27235 })
    );
}

#[test]
fn a_t_tag_not_matching_the_body_is_refused() {
    let gw = gateway_a();
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("heartbeat", Some(&gw)),
        &content(&chunk("x")),
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::TypeMismatch {
            tag: "heartbeat".into(),
            body: "\"chunk\"".into()
        })
    );
}

#[test]
fn a_missing_or_repeated_t_tag_is_refused() {
    let gw = gateway_a();
    let body = content(&chunk("x"));
    let p = vec!["p".to_owned(), gw.public_hex()];
    let raw = signed(&node(), ENVELOPE_KIND, vec![p], &body, NOW);
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::BadEnvelope("no `t` tag"))
    );
    let mut two = tags("chunk", Some(&gw));
    two.push(vec!["t".into(), "chunk".into()]);
    let raw = signed(&node(), ENVELOPE_KIND, two, &body, NOW);
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::BadEnvelope("several `t` tags"))
    );
}

#[test]
fn a_wrong_recipient_is_refused() {
    let (a, b) = (gateway_a(), gateway_b());
    let raw = seal(&node(), &chunk("x"), Some(&a.public_hex()), NOW).to_json();
    assert!(open(&raw, Some(&a.public_hex()), NOW).is_ok());
    assert!(
        open(&raw, Some(&a.public_hex().to_ascii_uppercase()), NOW).is_ok(),
        "the opener's key is compared lower-cased"
    );
    assert_eq!(
        open(&raw, Some(&b.public_hex()), NOW),
        Err(MarketError::WrongRecipient {
            expected: Some(b.public_hex()),
            found: Some(format!("\"{}\"", a.public_hex())),
        })
    );
    // An addressed message opened by someone who expects none.
    assert_eq!(
        open(&raw, None, NOW).unwrap_err().label(),
        "wrong_recipient"
    );

    // Every type but the challenge must be addressed.
    let unaddressed = seal(&node(), &chunk("x"), None, NOW).to_json();
    assert_eq!(
        open(&unaddressed, Some(&a.public_hex()), NOW),
        Err(MarketError::WrongRecipient {
            expected: Some(a.public_hex()),
            found: None
        })
    );

    // Two `p` tags cannot address two parties at once.
    let mut two = tags("chunk", Some(&a));
    two.push(vec!["p".into(), b.public_hex()]);
    let raw = signed(&node(), ENVELOPE_KIND, two, &content(&chunk("x")), NOW);
    assert_eq!(
        open(&raw, Some(&a.public_hex()), NOW),
        Err(MarketError::BadEnvelope("several `p` tags"))
    );
}

#[test]
fn an_unaddressed_challenge_opens_for_any_node() {
    let gw = gateway_a();
    let challenge = Message::Challenge(Challenge {
        nonce: "n0nce".into(),
        gateway: URL_A.into(),
    });
    let raw = seal(&gw, &challenge, None, NOW).to_json();
    let opened = open(&raw, Some(&node().public_hex()), NOW).unwrap();
    assert_eq!(opened.message, challenge);
    assert_eq!(opened.sender_pubkey, gw.public_hex());
    assert!(open(&raw, None, NOW).is_ok());

    // Addressed, it must be addressed to the opener.
    let raw = seal(&gw, &challenge, Some(&gateway_b().public_hex()), NOW).to_json();
    assert_eq!(
        open(&raw, Some(&node().public_hex()), NOW)
            .unwrap_err()
            .label(),
        "wrong_recipient"
    );
}

#[test]
fn a_message_too_old_is_refused() {
    let gw = gateway_a().public_hex();
    let raw = seal(&node(), &chunk("x"), Some(&gw), NOW).to_json();
    assert!(open(&raw, Some(&gw), NOW + MESSAGE_WINDOW_SECS).is_ok());
    assert_eq!(
        open(&raw, Some(&gw), NOW + MESSAGE_WINDOW_SECS + 1),
        Err(MarketError::TooOld {
            created_at: NOW,
            now: NOW + MESSAGE_WINDOW_SECS + 1,
            window: MESSAGE_WINDOW_SECS,
        })
    );
}

#[test]
fn a_message_too_far_in_the_future_is_refused() {
    let gw = gateway_a().public_hex();
    let raw = seal(&node(), &chunk("x"), Some(&gw), NOW).to_json();
    assert!(open(&raw, Some(&gw), NOW - MESSAGE_WINDOW_SECS).is_ok());
    assert_eq!(
        open(&raw, Some(&gw), NOW - MESSAGE_WINDOW_SECS - 1),
        Err(MarketError::TooFarInFuture {
            created_at: NOW,
            now: NOW - MESSAGE_WINDOW_SECS - 1,
            window: MESSAGE_WINDOW_SECS,
        })
    );
}

#[test]
fn an_oversized_frame_is_refused_before_parsing() {
    // Not even JSON: the size alone decides.
    let huge = "x".repeat(MAX_FRAME_BYTES + 1);
    assert_eq!(
        open(&huge, None, NOW),
        Err(MarketError::Oversized {
            size: MAX_FRAME_BYTES + 1,
            limit: MAX_FRAME_BYTES,
        })
    );

    // A chunk over its type's limit, though under the frame limit.
    let gw = gateway_a().public_hex();
    let big = "y".repeat(MAX_MESSAGE_BYTES);
    let raw = seal(&node(), &chunk(&big), Some(&gw), NOW).to_json();
    assert_eq!(
        open(&raw, Some(&gw), NOW),
        Err(MarketError::Oversized {
            size: raw.len(),
            limit: MAX_MESSAGE_BYTES,
        })
    );

    // A request of that size is within its own, larger limit.
    let request = Message::Request(Request {
        request_id: "req_1".into(),
        model: "m".into(),
        body: serde_json::json!({ "messages": [{ "role": "user", "content": big }] }),
        max_tokens: 16,
        stream: false,
    });
    let node_key = node().public_hex();
    let raw = seal(&gateway_a(), &request, Some(&node_key), NOW).to_json();
    assert!(raw.len() > MAX_MESSAGE_BYTES);
    assert_eq!(open(&raw, Some(&node_key), NOW).unwrap().message, request);
}

#[test]
fn a_frame_that_is_not_json_is_refused() {
    for raw in ["", "hello", "[1,2,3]", "{\"id\":", "{}"] {
        assert_eq!(
            open(raw, None, NOW).unwrap_err().label(),
            "not_json",
            "{raw}"
        );
    }
}

#[test]
fn an_unknown_type_is_refused() {
    let gw = gateway_a();
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("bribe", Some(&gw)),
        r#"{"type":"bribe"}"#,
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::UnknownType("\"bribe\"".into()))
    );
    // A known tag over a body of an unknown type.
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("chunk", Some(&gw)),
        r#"{"type":"bribe"}"#,
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW),
        Err(MarketError::UnknownType("\"bribe\"".into()))
    );
}

#[test]
fn a_body_that_is_not_its_type_is_refused() {
    let gw = gateway_a();
    let bodies = [
        "not json",
        r#"{"request_id":"req_1"}"#,
        r#"{"type":"chunk","request_id":"req_1","index":0}"#,
        r#"{"type":"chunk","request_id":"req_1","index":-1,"delta":""}"#,
        // Money and billing bodies refuse fields they do not know.
        r#"{"type":"chunk","request_id":"req_1","index":0,"delta":"","bonus":1}"#,
    ];
    for body in bodies {
        let raw = signed(&node(), ENVELOPE_KIND, tags("chunk", Some(&gw)), body, NOW);
        assert_eq!(
            open(&raw, Some(&gw.public_hex()), NOW).unwrap_err().label(),
            "bad_body",
            "{body}"
        );
    }
    let mut receipt = serde_json::to_value(Message::Receipt(receipt_for("x", 1))).unwrap();
    receipt["discount_msat"] = 5.into();
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("receipt", Some(&gw)),
        &receipt.to_string(),
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW).unwrap_err().label(),
        "bad_body"
    );
}

#[test]
fn descriptive_bodies_ignore_fields_they_do_not_know_but_prices_do_not() {
    let gw = gateway_a();
    let ad = samples().swap_remove(2);
    let mut value = serde_json::to_value(&ad).unwrap();
    value["region"] = "eu".into();
    value["models"][0]["vision"] = true.into();
    value["hardware"]["gpus"] = 2.into();
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("ad", Some(&gw)),
        &value.to_string(),
        NOW,
    );
    assert_eq!(open(&raw, Some(&gw.public_hex()), NOW).unwrap().message, ad);

    value["models"][0]["price"]["per_request_msat"] = 1.into();
    let raw = signed(
        &node(),
        ENVELOPE_KIND,
        tags("ad", Some(&gw)),
        &value.to_string(),
        NOW,
    );
    assert_eq!(
        open(&raw, Some(&gw.public_hex()), NOW).unwrap_err().label(),
        "bad_body"
    );
}

#[test]
fn a_hello_for_gateway_a_is_refused_at_gateway_b() {
    let (node, a, b) = (node(), gateway_a(), gateway_b());
    let challenge = Challenge {
        nonce: "n0nce".into(),
        gateway: URL_A.into(),
    };
    let hello = Hello::answering(&challenge, URL_A, "sluice 0.1.0").unwrap();
    let raw = seal(&node, &Message::Hello(hello), Some(&a.public_hex()), NOW).to_json();

    // Gateway A accepts it.
    let opened = open(&raw, Some(&a.public_hex()), NOW).unwrap();
    let Message::Hello(hello) = &opened.message else {
        panic!("not a hello: {:?}", opened.message)
    };
    verify_hello(hello, "n0nce", URL_A).unwrap();

    // Gateway B refuses the envelope: it is addressed to A.
    assert_eq!(
        open(&raw, Some(&b.public_hex()), NOW).unwrap_err().label(),
        "wrong_recipient"
    );
    // And even behind A's key (one key, two URLs), the URL does not match B's, nor does
    // the nonce B issued.
    assert_eq!(
        verify_hello(hello, "n0nce", URL_B),
        Err(MarketError::WrongGateway {
            found: format!("\"{URL_A}\""),
            expected: format!("\"{URL_B}\""),
        })
    );
    assert_eq!(
        verify_hello(hello, "other", URL_A),
        Err(MarketError::WrongChallenge)
    );
    assert_eq!(
        verify_hello(hello, "", URL_A),
        Err(MarketError::WrongChallenge)
    );
}

#[test]
fn a_node_refuses_to_answer_a_challenge_for_another_url() {
    // Gateway B relays A's challenge to a node that dialed B: the node will not sign it.
    let relayed = Challenge {
        nonce: "n0nce".into(),
        gateway: URL_A.into(),
    };
    assert_eq!(
        Hello::answering(&relayed, URL_B, "sluice 0.1.0")
            .unwrap_err()
            .label(),
        "wrong_gateway"
    );
}

#[test]
fn a_replayed_id_is_refused() {
    let gw = gateway_a().public_hex();
    let raw = seal(&node(), &chunk("x"), Some(&gw), NOW).to_json();
    let opened = open(&raw, Some(&gw), NOW).unwrap();
    assert_eq!(opened.forget_after(), NOW + MESSAGE_WINDOW_SECS);
    let id = opened.id.clone();
    assert!(opened.clone().unseen(true).is_ok());
    assert_eq!(opened.unseen(false), Err(MarketError::Replayed { id }));
    // Once the seen-set may forget the id, the window refuses the replay anyway.
    assert_eq!(
        open(&raw, Some(&gw), NOW + MESSAGE_WINDOW_SECS + 1)
            .unwrap_err()
            .label(),
        "too_old"
    );
}

#[test]
fn an_ad_with_a_lower_seq_is_stale() {
    assert!(ad_supersedes(6, 7));
    assert!(!ad_supersedes(7, 6), "older ad");
    assert!(!ad_supersedes(7, 7), "same seq");
    assert!(ad_supersedes(0, u64::MAX));
}

#[test]
fn every_refusal_has_its_own_label() {
    let errors = [
        MarketError::Oversized { size: 0, limit: 0 },
        MarketError::NotJson(String::new()),
        MarketError::Unsigned,
        MarketError::WrongKind { found: 0 },
        MarketError::BadEnvelope(""),
        MarketError::UnknownType(String::new()),
        MarketError::TooOld {
            created_at: 0,
            now: 0,
            window: 0,
        },
        MarketError::TooFarInFuture {
            created_at: 0,
            now: 0,
            window: 0,
        },
        MarketError::WrongRecipient {
            expected: None,
            found: None,
        },
        MarketError::BadSignature(NostrError::IdMismatch),
        MarketError::TypeMismatch {
            tag: String::new(),
            body: String::new(),
        },
        MarketError::BadBody(String::new()),
        MarketError::Replayed { id: String::new() },
        MarketError::WrongChallenge,
        MarketError::WrongGateway {
            found: String::new(),
            expected: String::new(),
        },
    ];
    let labels: std::collections::HashSet<_> = errors.iter().map(MarketError::label).collect();
    assert_eq!(labels.len(), errors.len());
}

#[test]
fn output_hash_is_sha256_hex() {
    assert_eq!(
        output_hash(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        output_hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_receipt_matching_everything_passes() {
    let check = receipt_matches(
        &receipt_for("Hello world", 2),
        "Hello world",
        2,
        TokenTolerance::EXACT,
    );
    assert!(check.is_ok(), "{check:?}");
}

#[test]
fn a_receipt_with_another_hash_fails() {
    let receipt = receipt_for("Hello world", 2);
    let check = receipt_matches(&receipt, "Hello world!", 2, TokenTolerance::EXACT);
    assert_eq!(
        check.failures,
        vec![ReceiptFailure::OutputHashMismatch {
            claimed: receipt.output_sha256.clone(),
            delivered: output_hash("Hello world!"),
        }]
    );
    assert!(!check.is_ok());
}

#[test]
fn an_inflated_output_count_beyond_tolerance_fails() {
    let tolerance = TokenTolerance {
        absolute: 2,
        per_mille: 50,
    };
    // 5% of 100 is 5, more than the absolute 2.
    assert_eq!(tolerance.allowed(100), 5);
    let check = receipt_matches(&receipt_for("text", 106), "text", 100, tolerance);
    assert_eq!(
        check.failures,
        vec![ReceiptFailure::OutputTokensInflated {
            claimed: 106,
            counted: 100,
            allowed: 5,
        }]
    );
    assert_eq!(check.failures[0].label(), "output_tokens_inflated");

    // Both checks fail together, hash first.
    let check = receipt_matches(&receipt_for("text", 106), "other", 100, tolerance);
    let labels: Vec<_> = check.failures.iter().map(ReceiptFailure::label).collect();
    assert_eq!(labels, ["output_hash_mismatch", "output_tokens_inflated"]);
}

#[test]
fn an_output_count_within_tolerance_passes() {
    let tolerance = TokenTolerance {
        absolute: 2,
        per_mille: 50,
    };
    for claimed in [95, 100, 105] {
        let check = receipt_matches(&receipt_for("text", claimed), "text", 100, tolerance);
        assert!(check.is_ok(), "{claimed}: {check:?}");
    }
    // Small counts get the absolute allowance.
    assert!(receipt_matches(&receipt_for("t", 3), "t", 1, tolerance).is_ok());
    // Under-reporting beyond tolerance is a discrepancy too.
    let check = receipt_matches(&receipt_for("text", 94), "text", 100, tolerance);
    assert_eq!(check.failures[0].label(), "output_tokens_deflated");
    // No overflow at the edge.
    assert_eq!(
        TokenTolerance {
            absolute: 0,
            per_mille: u64::MAX
        }
        .allowed(u64::MAX),
        u64::MAX
    );
}

proptest! {
    #[test]
    fn seal_then_open_is_the_identity_for_chunks(
        request_id in any::<String>(),
        index in any::<u32>(),
        delta in any::<String>(),
        skew in 0..=2 * MESSAGE_WINDOW_SECS,
    ) {
        let (node, gw) = (node(), gateway_a().public_hex());
        let message = Message::Chunk(Chunk { request_id, index, delta });
        let envelope = seal(&node, &message, Some(&gw), NOW);
        let opened = open(&envelope.to_json(), Some(&gw), NOW - MESSAGE_WINDOW_SECS + skew)
            .unwrap();
        prop_assert_eq!(opened.message, message);
        prop_assert_eq!(opened.sender_pubkey, node.public_hex());
        prop_assert_eq!(opened.id, envelope.id);
    }
}
