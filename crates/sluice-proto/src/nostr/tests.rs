use super::*;

const NOW: u64 = 1_700_000_000;
const WINDOW: u64 = 60;
const URL: &str = "https://gw.example/v1/chat/completions";

/// NIP-19's example key pair (its spec lists this secret, public key and npub).
const NIP19_SECRET: &str = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
const NIP19_PUBKEY: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
const NIP19_NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";

fn note(keys: &Keys) -> Event {
    Event::sign(
        keys,
        NOW,
        1,
        vec![vec!["t".into(), "sluice".into()]],
        "hello".into(),
    )
}

fn header_for(event: &Event) -> String {
    format!("Nostr {}", STANDARD.encode(event.to_json()))
}

fn facts<'a>(url: &'a str, method: &'a str, body: &'a [u8]) -> HttpRequestFacts<'a> {
    HttpRequestFacts { url, method, body }
}

#[test]
fn signed_event_verifies_and_serialises_back() {
    let keys = Keys::generate();
    let event = note(&keys);
    assert_eq!(event.pubkey, keys.public_hex());
    assert_eq!(event.id, event.compute_id());
    assert_eq!(event.id.len(), 64);
    assert_eq!(event.sig.len(), 128);
    event.verify().unwrap();
    let parsed: Event = serde_json::from_str(&event.to_json()).unwrap();
    assert_eq!(parsed, event);
    parsed.verify().unwrap();
}

#[test]
fn tampering_with_any_field_is_refused() {
    let keys = Keys::generate();
    let event = note(&keys);

    let mut e = event.clone();
    e.content.push('!');
    assert_eq!(e.verify(), Err(NostrError::IdMismatch));

    let mut e = event.clone();
    e.tags[0][1] = "other".into();
    assert_eq!(e.verify(), Err(NostrError::IdMismatch));

    let mut e = event.clone();
    e.created_at += 1;
    assert_eq!(e.verify(), Err(NostrError::IdMismatch));

    let mut e = event.clone();
    e.kind = 2;
    assert_eq!(e.verify(), Err(NostrError::IdMismatch));

    // Flip one nibble of the signature.
    let mut e = event.clone();
    let flipped = if e.sig.ends_with('0') { "1" } else { "0" };
    e.sig.replace_range(127.., flipped);
    assert_eq!(e.verify(), Err(NostrError::BadSignature));

    // Another author, with the id recomputed to match: only the signature can catch it.
    let mut e = event.clone();
    e.pubkey = Keys::generate().public_hex();
    assert_eq!(e.verify(), Err(NostrError::IdMismatch));
    e.id = e.compute_id();
    assert_eq!(e.verify(), Err(NostrError::BadSignature));

    // Content changed and id recomputed: the signature no longer covers it.
    let mut e = event.clone();
    e.content = "goodbye".into();
    e.id = e.compute_id();
    assert_eq!(e.verify(), Err(NostrError::BadSignature));

    let mut e = event.clone();
    e.pubkey = e.pubkey.to_ascii_uppercase();
    assert!(matches!(e.verify(), Err(NostrError::BadPubkey(_))));

    let mut e = event.clone();
    e.pubkey = "zz".repeat(32);
    assert!(matches!(e.verify(), Err(NostrError::BadPubkey(_))));

    let mut e = event;
    e.sig.truncate(100);
    assert!(matches!(e.verify(), Err(NostrError::Malformed(_))));
}

#[test]
fn id_preimage_escapes_like_json_stringify() {
    let keys = Keys::from_secret_hex(NIP19_SECRET).unwrap();
    let content = "line1\nq\"b\\t\tc\u{1}\u{1f}\r\u{8}\u{c}é😀 a/b\u{7f}";
    let event = Event::sign(
        &keys,
        NOW,
        1,
        vec![vec!["t".into(), "a/b".into(), "x\"y".into()]],
        content.into(),
    );
    // Written out by hand: short escapes for \n \" \\ \t \r \b \f, \u00xx (lowercase hex)
    // for other controls, and non-ASCII, '/' and DEL verbatim.
    let expected = format!(
        r#"[0,"{NIP19_PUBKEY}",1700000000,1,[["t","a/b","x\"y"]],"line1\nq\"b\\t\tc\u0001\u001f\r\b\fé😀 a/b{}"]"#,
        '\u{7f}'
    );
    assert_eq!(String::from_utf8(event.id_preimage()).unwrap(), expected);
    assert_eq!(event.compute_id(), hex::encode(Sha256::digest(&expected)));
    event.verify().unwrap();
}

/// Events published on relays, copied from the tests of rust-nostr
/// (github.com/rust-nostr/nostr, `crates/nostr/src/event/mod.rs`; the first is marked
/// "Got this fresh off the wire" there). They pin our id computation and signature check
/// to what the network produced.
#[test]
fn real_published_events_verify() {
    let fixtures = [
        r#"{"content":"uRuvYr585B80L6rSJiHocw==?iv=oh6LVqdsYYol3JfFnXTbPA==","created_at":1640839235,"id":"2be17aa3031bdcb006f0fce80c146dea9c1c0268b0af2398bb673365c6444d45","kind":4,"pubkey":"f86c44a2de95d9149b51c6a29afeabba264c18e2fa7c49de93424a0c56947785","sig":"a5d9290ef9659083c490b303eb7ee41356d8778ff19f2f91776c8dc4443388a64ffcf336e61af4c25c05ac3ae952d1ced889ed655b67790891222aaa15b99fdd","tags":[["p","13adc511de7e1cfcf1c6b7f6365fb5a03442d7bcacf565ea57fa7770912c023d"]]}"#,
        r#"{"content":"Think about this.\n\nThe most powerful centralized institutions in the world have been replaced by a protocol that protects the individual. #bitcoin\n\nDo you doubt that we can replace everything else?\n\nBullish on the future of humanity\nnostr:nevent1qqs9ljegkuk2m2ewfjlhxy054n6ld5dfngwzuep0ddhs64gc49q0nmqpzdmhxue69uhhyetvv9ukzcnvv5hx7un8qgsw3mfhnrr0l6ll5zzsrtpeufckv2lazc8k3ru5c3wkjtv8vlwngksrqsqqqqqpttgr27","created_at":1703184271,"id":"38acf9b08d06859e49237688a9fd6558c448766f47457236c2331f93538992c6","kind":1,"pubkey":"e8ed3798c6ffebffa08501ac39e271662bfd160f688f94c45d692d8767dd345a","sig":"f76d5ecc8e7de688ac12b9d19edaacdcffb8f0c8fa2a44c00767363af3f04dbc069542ddc5d2f63c94cb5e6ce701589d538cf2db3b1f1211a96596fabb6ecafe","tags":[["e","5fcb28b72cadab2e4cbf7311f4acf5f6d1a99a1c2e642f6b6f0d5518a940f9ec","","mention"],["p","e8ed3798c6ffebffa08501ac39e271662bfd160f688f94c45d692d8767dd345a","","mention"],["t","bitcoin"],["t","bitcoin"]]}"#,
        r#"{"content":"","created_at":1698412975,"id":"f55c30722f056e330d8a7a6a9ba1522f7522c0f1ced1c93d78ea833c78a3d6ec","kind":3,"pubkey":"f831caf722214748c72db4829986bd0cbb2bb8b3aeade1c959624a52a9629046","sig":"5092a9ffaecdae7d7794706f085ff5852befdf79df424cc3419bb797bf515ae05d4f19404cb8324b8b4380a4bd497763ac7b0f3b1b63ef4d3baa17e5f5901808","tags":[["p","4ddeb9109a8cd29ba279a637f5ec344f2479ee07df1f4043f3fe26d8948cfef9","",""],["p","bb6fd06e156929649a73e6b278af5e648214a69d88943702f1fb627c02179b95","",""],["p","b8b8210f33888fdbf5cedee9edf13c3e9638612698fe6408aff8609059053420","",""],["p","9dcee4fabcd690dc1da9abdba94afebf82e1e7614f4ea92d61d52ef9cd74e083","",""],["p","3eea9e831fefdaa8df35187a204d82edb589a36b170955ac5ca6b88340befaa0","",""],["p","885238ab4568f271b572bf48b9d6f99fa07644731f288259bd395998ee24754e","",""],["p","568a25c71fba591e39bebe309794d5c15d27dbfa7114cacb9f3586ea1314d126","",""]]}"#,
    ];
    for json in fixtures {
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.compute_id(), event.id, "{json}");
        event.verify().unwrap();
        let mut tampered = event.clone();
        tampered.content.push(' ');
        assert_eq!(tampered.verify(), Err(NostrError::IdMismatch));
    }
}

/// BIP-340 test vectors 0 and 1 (bips/bip-0340/test-vectors.csv): secret key, public key,
/// aux_rand, message, signature.
#[test]
fn schnorr_layer_matches_bip340_vectors() {
    let vectors = [
        (
            "0000000000000000000000000000000000000000000000000000000000000003",
            "F9308A019258C31049344F85F89D5229B531C845836F99B08601F113BCE036F9",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "E907831F80848D1069A5371B402410364BDF1C5F8307B0084C55F1CE2DCA821525F66A4A85EA8B71E482A74F382D2CE5EBEEE8FDB2172F477DF4900D310536C0",
        ),
        (
            "B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFEF",
            "DFF1D77F2A671C5F36183726DB2341BE58FEAE1DA2DECED843240F7B502BA659",
            "0000000000000000000000000000000000000000000000000000000000000001",
            "243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C89",
            "6896BD60EEAE296DB48A229FF71DFE071BDE413E6D43F917DC8DCF8C78DE33418906D11AC976ABCCB20B091292BFF4EA897EFCB639EA871CFA95F6DE339E4B0A",
        ),
    ];
    for (sk, pk, aux, msg, sig) in vectors {
        let keys = Keys::from_secret_hex(sk).unwrap();
        assert_eq!(keys.public_hex(), pk.to_ascii_lowercase());
        assert_eq!(keys.secret_hex(), sk.to_ascii_lowercase());
        let aux: [u8; 32] = hex_array_any_case(aux).unwrap();
        let msg = Message::from_digest(hex_array_any_case(msg).unwrap());
        let got = SECP256K1.sign_schnorr_with_aux_rand(&msg, &keys.keypair, &aux);
        assert_eq!(hex::encode(got.serialize()), sig.to_ascii_lowercase());
        let pubkey = xonly_from_lower_hex(&pk.to_ascii_lowercase()).unwrap();
        SECP256K1.verify_schnorr(&got, &msg, &pubkey).unwrap();
    }
}

#[test]
fn keys_and_pubkeys_parse_strictly() {
    let keys = Keys::from_secret_hex(NIP19_SECRET).unwrap();
    assert_eq!(keys.public_hex(), NIP19_PUBKEY);
    assert!(!format!("{keys:?}").contains(NIP19_SECRET));
    assert_eq!(
        Keys::from_secret_hex(&NIP19_SECRET.to_ascii_uppercase())
            .unwrap()
            .public_hex(),
        NIP19_PUBKEY
    );
    for bad in ["", "00", &"0".repeat(64), &"f".repeat(64), &"g".repeat(64)] {
        assert_eq!(
            Keys::from_secret_hex(bad).unwrap_err(),
            NostrError::BadSecretKey
        );
    }

    assert_eq!(npub(NIP19_PUBKEY).unwrap(), NIP19_NPUB);
    assert_eq!(parse_pubkey(NIP19_NPUB).unwrap(), NIP19_PUBKEY);
    assert_eq!(
        parse_pubkey(&NIP19_NPUB.to_ascii_uppercase()).unwrap(),
        NIP19_PUBKEY
    );
    assert_eq!(
        parse_pubkey(&NIP19_PUBKEY.to_ascii_uppercase()).unwrap(),
        NIP19_PUBKEY
    );
    // Broken checksum, wrong prefix, x not on the curve (x = 5 has no y), short, non-ASCII.
    let mut bad_checksum = NIP19_NPUB.to_owned();
    bad_checksum.replace_range(bad_checksum.len() - 1.., "h");
    let not_on_curve = format!("{}05", "0".repeat(62));
    for bad in [
        bad_checksum.as_str(),
        "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5",
        &not_on_curve,
        &NIP19_PUBKEY[..62],
        "npub€€€€",
    ] {
        assert!(
            matches!(parse_pubkey(bad), Err(NostrError::BadPubkey(_))),
            "{bad}"
        );
    }
    assert!(matches!(npub(&not_on_curve), Err(NostrError::BadPubkey(_))));
}

#[test]
fn tag_returns_first_value_of_first_matching_tag() {
    let keys = Keys::generate();
    let event = Event::sign(
        &keys,
        NOW,
        1,
        vec![
            vec!["x".into()],
            vec!["u".into(), "first".into(), "extra".into()],
            vec!["u".into(), "second".into()],
        ],
        String::new(),
    );
    assert_eq!(event.tag("u"), Some("first"));
    assert_eq!(event.tag("x"), None);
    assert_eq!(event.tag("missing"), None);
}

// ---- challenge login ----

#[test]
fn login_accepts_challenge_tag_or_content() {
    let keys = Keys::generate();
    let nonce = "c0ffee-1234";
    let tagged = Event::sign(
        &keys,
        NOW,
        LOGIN_KIND,
        vec![vec!["challenge".into(), nonce.into()]],
        String::new(),
    );
    assert_eq!(
        verify_login(&tagged, nonce, NOW + 30, WINDOW).unwrap(),
        keys.public_hex()
    );
    let text = Event::sign(&keys, NOW, LOGIN_KIND, vec![], nonce.into());
    assert_eq!(
        verify_login(&text, nonce, NOW - 30, WINDOW).unwrap(),
        keys.public_hex()
    );
}

#[test]
fn login_refuses_wrong_nonce_kind_time_and_forgery() {
    let keys = Keys::generate();
    let nonce = "c0ffee-1234";
    let good = Event::sign(
        &keys,
        NOW,
        LOGIN_KIND,
        vec![vec!["challenge".into(), nonce.into()]],
        String::new(),
    );
    assert_eq!(
        verify_login(&good, "other", NOW, WINDOW),
        Err(NostrError::WrongChallenge)
    );
    assert_eq!(
        verify_login(&good, nonce, NOW + WINDOW + 1, WINDOW),
        Err(NostrError::OutOfWindow {
            created_at: NOW,
            now: NOW + WINDOW + 1,
            window: WINDOW
        })
    );
    assert!(matches!(
        verify_login(&good, nonce, NOW - WINDOW - 1, WINDOW),
        Err(NostrError::OutOfWindow { .. })
    ));

    // A challenge tag decides even when the content holds the nonce.
    let mixed = Event::sign(
        &keys,
        NOW,
        LOGIN_KIND,
        vec![vec!["challenge".into(), "stale".into()]],
        nonce.into(),
    );
    assert_eq!(
        verify_login(&mixed, nonce, NOW, WINDOW),
        Err(NostrError::WrongChallenge)
    );
    let valueless_tag = Event::sign(
        &keys,
        NOW,
        LOGIN_KIND,
        vec![vec!["challenge".into()]],
        nonce.into(),
    );
    assert_eq!(
        verify_login(&valueless_tag, nonce, NOW, WINDOW),
        Err(NostrError::WrongChallenge)
    );
    // An empty nonce never matches an empty content.
    let empty = Event::sign(&keys, NOW, LOGIN_KIND, vec![], String::new());
    assert_eq!(
        verify_login(&empty, "", NOW, WINDOW),
        Err(NostrError::WrongChallenge)
    );

    let wrong_kind = Event::sign(&keys, NOW, 1, vec![], nonce.into());
    assert_eq!(
        verify_login(&wrong_kind, nonce, NOW, WINDOW),
        Err(NostrError::WrongKind {
            found: 1,
            expected: LOGIN_KIND
        })
    );

    let mut forged = good;
    forged.pubkey = Keys::generate().public_hex();
    forged.id = forged.compute_id();
    assert_eq!(
        verify_login(&forged, nonce, NOW, WINDOW),
        Err(NostrError::BadSignature)
    );
}

// ---- NIP-98 ----

#[test]
fn http_auth_accepts_a_good_header() {
    let keys = Keys::generate();
    let body = br#"{"model":"m"}"#;
    let header = http_auth_header(&keys, URL, "post", body, NOW);
    assert!(header.starts_with("Nostr "));
    let auth = verify_http_auth(&header, &facts(URL, "POST", body), NOW + 10, WINDOW).unwrap();
    assert_eq!(auth.pubkey, keys.public_hex());
    assert_eq!(auth.created_at, NOW);
    assert_eq!(auth.event_id.len(), 64);

    // Empty body, no payload tag: fine. Lower-case scheme, URL-safe unpadded base64: fine.
    let get = http_auth_header(&keys, URL, "GET", b"", NOW);
    verify_http_auth(&get, &facts(URL, "get", b""), NOW, WINDOW).unwrap();
    let token = get.strip_prefix("Nostr ").unwrap();
    let url_safe = token
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    verify_http_auth(
        &format!("nostr  {url_safe}"),
        &facts(URL, "GET", b""),
        NOW,
        WINDOW,
    )
    .unwrap();

    // One trailing slash of difference either way is tolerated, two are not.
    let slashed = http_auth_header(&keys, &format!("{URL}/"), "GET", b"", NOW);
    verify_http_auth(&slashed, &facts(URL, "GET", b""), NOW, WINDOW).unwrap();
    verify_http_auth(&get, &facts(&format!("{URL}/"), "GET", b""), NOW, WINDOW).unwrap();
    assert!(matches!(
        verify_http_auth(&get, &facts(&format!("{URL}//"), "GET", b""), NOW, WINDOW),
        Err(NostrError::UrlMismatch { .. })
    ));

    // An explicit payload tag on an empty body must be the hash of nothing.
    let empty_payload = Event::sign(
        &keys,
        NOW,
        HTTP_AUTH_KIND,
        vec![
            vec!["u".into(), URL.into()],
            vec!["method".into(), "GET".into()],
            vec!["payload".into(), sha256_hex(b"")],
        ],
        String::new(),
    );
    verify_http_auth(
        &header_for(&empty_payload),
        &facts(URL, "GET", b""),
        NOW,
        WINDOW,
    )
    .unwrap();
}

#[test]
fn http_auth_refuses_mismatches() {
    let keys = Keys::generate();
    let body = b"{}";
    let header = http_auth_header(&keys, URL, "POST", body, NOW);

    let err = verify_http_auth(
        &header,
        &facts("https://gw.example/v1/other", "POST", body),
        NOW,
        WINDOW,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("url mismatch: signed for \"{URL}\", request is \"https://gw.example/v1/other\"")
    );
    assert!(matches!(
        verify_http_auth(&header, &facts(URL, "GET", body), NOW, WINDOW),
        Err(NostrError::MethodMismatch { .. })
    ));
    assert_eq!(
        verify_http_auth(&header, &facts(URL, "POST", b"{ }"), NOW, WINDOW),
        Err(NostrError::PayloadMismatch)
    );
    assert_eq!(
        verify_http_auth(&header, &facts(URL, "POST", b""), NOW, WINDOW),
        Err(NostrError::PayloadMismatch)
    );
    let no_payload = http_auth_header(&keys, URL, "POST", b"", NOW);
    assert_eq!(
        verify_http_auth(&no_payload, &facts(URL, "POST", body), NOW, WINDOW),
        Err(NostrError::MissingPayload)
    );

    let err = verify_http_auth(&header, &facts(URL, "POST", body), NOW + 61, WINDOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "event is too old or too far in the future (created_at 1700000000, now 1700000061, window 60 s)"
    );
    let future = http_auth_header(&keys, URL, "POST", body, NOW + 61);
    assert!(matches!(
        verify_http_auth(&future, &facts(URL, "POST", body), NOW, WINDOW),
        Err(NostrError::OutOfWindow { .. })
    ));

    let note = Event::sign(
        &keys,
        NOW,
        1,
        vec![
            vec!["u".into(), URL.into()],
            vec!["method".into(), "GET".into()],
        ],
        String::new(),
    );
    assert_eq!(
        verify_http_auth(&header_for(&note), &facts(URL, "GET", b""), NOW, WINDOW)
            .unwrap_err()
            .to_string(),
        "wrong kind 1, expected 27235"
    );
    let no_u = Event::sign(
        &keys,
        NOW,
        HTTP_AUTH_KIND,
        vec![vec!["method".into(), "GET".into()]],
        String::new(),
    );
    assert_eq!(
        verify_http_auth(&header_for(&no_u), &facts(URL, "GET", b""), NOW, WINDOW)
            .unwrap_err()
            .to_string(),
        "missing `u` tag"
    );
    let no_method = Event::sign(
        &keys,
        NOW,
        HTTP_AUTH_KIND,
        vec![vec!["u".into(), URL.into()]],
        String::new(),
    );
    assert_eq!(
        verify_http_auth(
            &header_for(&no_method),
            &facts(URL, "GET", b""),
            NOW,
            WINDOW
        ),
        Err(NostrError::MissingTag("method"))
    );
}

#[test]
fn http_auth_refuses_forged_and_malformed_headers() {
    let keys = Keys::generate();
    let header = http_auth_header(&keys, URL, "GET", b"", NOW);
    let req = facts(URL, "GET", b"");

    // Re-target a signed event at another URL: the id no longer matches.
    let token = header.strip_prefix("Nostr ").unwrap();
    let mut event: Event = serde_json::from_slice(&STANDARD.decode(token).unwrap()).unwrap();
    event.tags[0][1] = "https://gw.example/admin".into();
    assert_eq!(
        verify_http_auth(
            &header_for(&event),
            &facts("https://gw.example/admin", "GET", b""),
            NOW,
            WINDOW
        ),
        Err(NostrError::IdMismatch)
    );

    for bad in [
        token.to_owned(),
        format!("Bearer {token}"),
        format!("Nostr{token}"),
        String::new(),
        "Nostr".to_owned(),
    ] {
        assert_eq!(
            verify_http_auth(&bad, &req, NOW, WINDOW),
            Err(NostrError::NotNostrAuth),
            "{bad}"
        );
    }
    for bad in [
        "Nostr !!!!".to_owned(),
        format!("Nostr {}", STANDARD.encode("[1,2,3]")),
        format!("Nostr {}", STANDARD.encode("{\"id\":\"x\"}")),
    ] {
        assert!(
            matches!(
                verify_http_auth(&bad, &req, NOW, WINDOW),
                Err(NostrError::Malformed(_))
            ),
            "{bad}"
        );
    }

    // Over 64 KiB of event JSON, caught before and after decoding.
    let huge = Event::sign(
        &keys,
        NOW,
        HTTP_AUTH_KIND,
        vec![
            vec!["u".into(), URL.into()],
            vec!["method".into(), "GET".into()],
        ],
        "x".repeat(MAX_HTTP_AUTH_EVENT_BYTES),
    );
    assert_eq!(
        verify_http_auth(&header_for(&huge), &req, NOW, WINDOW),
        Err(NostrError::TooLarge {
            limit: MAX_HTTP_AUTH_EVENT_BYTES
        })
    );
    let just_over = STANDARD.encode(vec![b' '; MAX_HTTP_AUTH_EVENT_BYTES + 1]);
    assert_eq!(
        verify_http_auth(&format!("Nostr {just_over}"), &req, NOW, WINDOW),
        Err(NostrError::TooLarge {
            limit: MAX_HTTP_AUTH_EVENT_BYTES
        })
    );
}

// ---- vouches ----

#[test]
fn vouch_round_trip() {
    let voucher = Keys::generate();
    let vouchee = Keys::generate();
    let event = vouch_event(&voucher, &vouchee.public_hex().to_ascii_uppercase(), NOW);
    let vouch = verify_vouch(&event, NOW + 5, WINDOW).unwrap();
    assert_eq!(
        vouch,
        Vouch {
            voucher: voucher.public_hex(),
            vouchee: vouchee.public_hex(),
            event_id: event.id.clone(),
        }
    );
}

#[test]
fn vouch_refusals() {
    let voucher = Keys::generate();
    let vouchee = Keys::generate().public_hex();

    let own = vouch_event(&voucher, &voucher.public_hex(), NOW);
    assert_eq!(verify_vouch(&own, NOW, WINDOW), Err(NostrError::SelfVouch));

    let sign = |tags: Vec<Vec<&str>>, kind| {
        let tags = tags
            .into_iter()
            .map(|t| t.into_iter().map(str::to_owned).collect())
            .collect();
        Event::sign(&voucher, NOW, kind, tags, String::new())
    };
    let l_ns = vec!["L", VOUCH_NAMESPACE];
    let l_vouch = vec!["l", VOUCH_LABEL, VOUCH_NAMESPACE];

    let no_p = sign(vec![l_ns.clone(), l_vouch.clone()], VOUCH_KIND);
    assert_eq!(
        verify_vouch(&no_p, NOW, WINDOW),
        Err(NostrError::MissingTag("p"))
    );
    let other = Keys::generate().public_hex();
    let two_p = sign(
        vec![
            l_ns.clone(),
            l_vouch.clone(),
            vec!["p", &vouchee],
            vec!["p", &other],
        ],
        VOUCH_KIND,
    );
    assert!(matches!(
        verify_vouch(&two_p, NOW, WINDOW),
        Err(NostrError::Malformed(_))
    ));
    let no_namespace = sign(vec![l_vouch.clone(), vec!["p", &vouchee]], VOUCH_KIND);
    assert!(matches!(
        verify_vouch(&no_namespace, NOW, WINDOW),
        Err(NostrError::MissingTag(_))
    ));
    let other_label = sign(
        vec![
            l_ns.clone(),
            vec!["l", "spam", VOUCH_NAMESPACE],
            vec!["p", &vouchee],
        ],
        VOUCH_KIND,
    );
    assert!(matches!(
        verify_vouch(&other_label, NOW, WINDOW),
        Err(NostrError::MissingTag(_))
    ));
    let bad_p = sign(
        vec![l_ns.clone(), l_vouch.clone(), vec!["p", "npub1nope"]],
        VOUCH_KIND,
    );
    assert!(matches!(
        verify_vouch(&bad_p, NOW, WINDOW),
        Err(NostrError::BadPubkey(_))
    ));
    let wrong_kind = sign(vec![l_ns, l_vouch, vec!["p", &vouchee]], 1);
    assert!(matches!(
        verify_vouch(&wrong_kind, NOW, WINDOW),
        Err(NostrError::WrongKind { .. })
    ));

    let good = vouch_event(&voucher, &vouchee, NOW);
    assert!(matches!(
        verify_vouch(&good, NOW + 3600, WINDOW),
        Err(NostrError::OutOfWindow { .. })
    ));
    // Redirect the vouch to someone else: the id gives it away.
    let mut redirected = good;
    redirected.tags[2][1] = other;
    assert_eq!(
        verify_vouch(&redirected, NOW, WINDOW),
        Err(NostrError::IdMismatch)
    );
}
