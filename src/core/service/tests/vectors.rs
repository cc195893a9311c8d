//! Known answers from the Matrix specification itself (matrix-org/matrix-spec,
//! `content/appendices.md`): every Canonical JSON example, the rules that section
//! states about numbers and strings, and the Cryptographic Test Vectors, run
//! through the same ruma functions glia signs and hashes its own events with.
//!
//! The spec prints its expected outputs pretty-printed or with keys out of
//! order; where the exact bytes matter (canonical JSON) the spec gives them on
//! one line and they are compared byte for byte, and signed objects are
//! compared in their canonical form, which is unique.

use ruma::{
    canonical_json::{to_canonical_value, CanonicalJsonObject, CanonicalJsonValue},
    room_version_rules::RedactionRules,
    serde::{base64::Standard, Base64},
    signatures::{hash_and_sign_event, sign_json, verify_event, Ed25519KeyPair, Verified},
    RoomVersionId,
};

/// The canonical form of `input`, read straight into ruma's canonical types (the
/// form a PDU reaches `Rooms::receive` in), which refuse what canonical JSON
/// cannot hold.
fn canonical(input: &str) -> Result<String, String> {
    serde_json::from_str::<CanonicalJsonValue>(input).map(|value| value.to_string()).map_err(|err| err.to_string())
}

#[track_caller]
fn assert_canonical(input: &str, expected: &str) {
    assert_eq!(canonical(input).as_deref(), Ok(expected), "input: {input}");
    // A canonical string is its own canonical form.
    assert_eq!(canonical(expected).as_deref(), Ok(expected));
}

/// Spec: Appendices → Canonical JSON → Examples, example 1 (the empty object).
#[tokio::test]
async fn canonical_json_example_1_empty_object() {
    assert_canonical("{}", "{}");
}

/// Spec: Appendices → Canonical JSON → Examples, example 2 (whitespace removed).
#[tokio::test]
async fn canonical_json_example_2_whitespace() {
    assert_canonical("{\n    \"one\": 1,\n    \"two\": \"Two\"\n}", r#"{"one":1,"two":"Two"}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 3 (keys sorted).
#[tokio::test]
async fn canonical_json_example_3_keys_sorted() {
    assert_canonical("{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}", r#"{"a":"1","b":"2"}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 4 (compact input, keys sorted).
#[tokio::test]
async fn canonical_json_example_4_compact_keys_sorted() {
    assert_canonical(r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 5 (nested objects and arrays).
#[tokio::test]
async fn canonical_json_example_5_nested() {
    let input = r#"{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}"#;
    assert_canonical(
        input,
        r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
    );
}

/// Spec: Appendices → Canonical JSON → Examples, example 6 (non-ASCII kept as UTF-8).
#[tokio::test]
async fn canonical_json_example_6_utf8_value() {
    assert_canonical("{\n    \"a\": \"日本語\"\n}", r#"{"a":"日本語"}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 7 (keys sorted by code point).
#[tokio::test]
async fn canonical_json_example_7_keys_sorted_by_code_point() {
    // 日 is U+65E5 and 本 is U+672C.
    assert_canonical("{\n    \"本\": 2,\n    \"日\": 1\n}", r#"{"日":1,"本":2}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 8 (redundant `\u` escape removed).
#[tokio::test]
async fn canonical_json_example_8_redundant_escape() {
    assert_canonical("{\n    \"a\": \"\\u65E5\"\n}", r#"{"a":"日"}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 9 (null kept).
#[tokio::test]
async fn canonical_json_example_9_null() {
    assert_canonical("{\n    \"a\": null\n}", r#"{"a":null}"#);
}

/// Spec: Appendices → Canonical JSON → Examples, example 10 (`-0` and `1e10`
/// written as the integers they are).
#[tokio::test]
#[ignore = "engine bug: serde_json reads -0 and 1e10 as floats and ruma's CanonicalJsonValue (glia's PDU type) refuses all floats, instead of writing 0 and 10000000000"]
async fn canonical_json_example_10_negative_zero_and_exponent() {
    assert_canonical("{\n    \"a\": -0,\n    \"b\": 1e10\n}", r#"{"a":0,"b":10000000000}"#);
}

/// Spec: Appendices → Canonical JSON: "Numbers in the JSON must be integers in
/// the range [-(2**53)+1, (2**53)-1]". The bounds themselves are accepted, one
/// past them is refused, whether parsed from text or serialised from a value.
#[tokio::test]
async fn canonical_json_integers_outside_the_safe_range_are_refused() {
    assert_canonical(
        r#"{"max":9007199254740991,"min":-9007199254740991}"#,
        r#"{"max":9007199254740991,"min":-9007199254740991}"#,
    );
    for input in [r#"{"a":9007199254740992}"#, r#"{"a":-9007199254740992}"#, r#"{"a":18446744073709551615}"#] {
        assert!(canonical(input).is_err(), "{input} must be refused");
    }
    assert!(to_canonical_value(serde_json::json!({ "a": 9_007_199_254_740_992_i64 })).is_err());
    assert!(to_canonical_value(serde_json::json!({ "a": -9_007_199_254_740_992_i64 })).is_err());
}

/// Spec: Appendices → Canonical JSON: "Float values are not permitted by this
/// encoding", and numbers are "represented without exponents or decimal places".
#[tokio::test]
async fn canonical_json_floats_are_refused() {
    for input in [r#"{"a":1.5}"#, r#"{"a":1.0}"#, r#"{"a":[0.1]}"#, r#"{"a":{"b":-2.5e-3}}"#] {
        assert!(canonical(input).is_err(), "{input} must be refused");
    }
    assert!(to_canonical_value(serde_json::json!({ "a": 1.5 })).is_err());
}

/// Spec: Appendices → Canonical JSON → Grammar: control characters are escaped
/// (with the short forms where there is one, else `\u00XX` in lowercase hex),
/// `"` and `\` are escaped, and nothing else is: not `/`, not DEL, not non-ASCII.
#[tokio::test]
async fn canonical_json_string_escapes_follow_the_grammar() {
    let cases = [
        (r#"{"a":"\u0008\u0009\u000A\u000C\u000D"}"#, r#"{"a":"\b\t\n\f\r"}"#),
        (r#"{"a":"\u0000\u0001\u000B\u000E\u001F"}"#, r#"{"a":"\u0000\u0001\u000b\u000e\u001f"}"#),
        (r#"{"a":"\"\\"}"#, r#"{"a":"\"\\"}"#),
        (r#"{"a":"\/\u0041\u007F"}"#, "{\"a\":\"/A\u{7f}\"}"),
        (r#"{"a":"\ud83d\ude00"}"#, "{\"a\":\"\u{1F600}\"}"),
    ];
    for (input, expected) in cases {
        assert_canonical(input, expected);
    }
}

/// Spec: Appendices → Cryptographic Test Vectors → Signing Key: the seed as an
/// ed25519 key named `ed25519:1`. The seed is 43 characters of unpadded Base64
/// whose last character leaves two non-zero spare bits, which strict decoders
/// refuse; ruma's decoder, the one glia uses, ignores them.
fn spec_key() -> Ed25519KeyPair {
    let seed = Base64::<Standard>::parse("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
    assert_eq!(seed.as_bytes().len(), 32);
    Ed25519KeyPair::new(ed25519_dalek::pkcs8::ALGORITHM_OID, seed.as_bytes(), None, "1".into()).unwrap()
}

/// The public half of [`spec_key`], as ruma's verification functions take it.
fn spec_public_keys() -> ruma::signatures::PublicKeyMap {
    let keys = [("ed25519:1".to_owned(), Base64::new(spec_key().public_key().to_vec()))].into();
    [("domain".to_owned(), keys)].into()
}

fn object(json: &str) -> CanonicalJsonObject {
    serde_json::from_str(json).unwrap()
}

/// Both sides in canonical form: the spec prints its outputs pretty, with keys
/// in no particular order.
#[track_caller]
fn assert_same_json(actual: &CanonicalJsonObject, expected: &str) {
    let expected = CanonicalJsonValue::Object(object(expected)).to_string();
    assert_eq!(CanonicalJsonValue::Object(actual.clone()).to_string(), expected);
}

/// Spec: Appendices → Cryptographic Test Vectors → JSON Signing, the empty object.
#[tokio::test]
async fn json_signing_vector_empty_object() {
    let mut json = object("{}");
    sign_json("domain", &spec_key(), &mut json).unwrap();
    assert_same_json(
        &json,
        r#"{
            "signatures": {
                "domain": {
                    "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
                }
            }
        }"#,
    );
    ruma::signatures::verify_json(&spec_public_keys(), &json).unwrap();
}

/// Spec: Appendices → Cryptographic Test Vectors → JSON Signing, the object with data values.
#[tokio::test]
async fn json_signing_vector_object_with_values() {
    let mut json = object(r#"{ "one": 1, "two": "Two" }"#);
    sign_json("domain", &spec_key(), &mut json).unwrap();
    assert_same_json(
        &json,
        r#"{
            "one": 1,
            "signatures": {
                "domain": {
                    "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
                }
            },
            "two": "Two"
        }"#,
    );
    ruma::signatures::verify_json(&spec_public_keys(), &json).unwrap();
}

/// The redaction rules the spec's event vectors were made with. The content
/// hash does not depend on them; the signature, made over the redacted event,
/// does: the vectors keep `origin` (and the message keeps `event_id`), as every
/// room version up to 10 does. Room version 10 is the oldest glia supports, so
/// its rules, as glia reads them, are the ones checked against the spec's bytes.
fn vector_redaction_rules() -> RedactionRules {
    crate::core::pdu::rules(&RoomVersionId::V10).unwrap().redaction
}

const MINIMAL_EVENT: &str = r#"{
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {
        "age_ts": 1000000
    }
}"#;

const MINIMAL_EVENT_SIGNED: &str = r#"{
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {
        "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {
        "age_ts": 1000000
    }
}"#;

const MESSAGE_EVENT: &str = r#"{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {
        "age_ts": 1000000
    }
}"#;

const MESSAGE_EVENT_SIGNED: &str = r#"{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "hashes": {
        "sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    },
    "unsigned": {
        "age_ts": 1000000
    }
}"#;

/// Spec: Appendices → Cryptographic Test Vectors → Event Signing, the
/// minimally-sized event: exact content hash and signature.
#[tokio::test]
async fn event_signing_vector_minimal_event() {
    let mut event = object(MINIMAL_EVENT);
    hash_and_sign_event("domain", &spec_key(), &mut event, &vector_redaction_rules()).unwrap();
    assert_same_json(&event, MINIMAL_EVENT_SIGNED);
}

/// Spec: Appendices → Cryptographic Test Vectors → Event Signing, the event
/// with redactable content: exact content hash and signature.
#[tokio::test]
async fn event_signing_vector_message_event() {
    let mut event = object(MESSAGE_EVENT);
    hash_and_sign_event("domain", &spec_key(), &mut event, &vector_redaction_rules()).unwrap();
    assert_same_json(&event, MESSAGE_EVENT_SIGNED);
}

/// Spec: Appendices → Cryptographic Test Vectors → Event Signing, read the
/// other way: the spec's signed minimal event verifies, hash and all, under
/// glia's rules for room version 10, and editing its content leaves the signature (over
/// the redacted form) valid but the hash wrong — the case the spec says is
/// redacted rather than dropped.
#[tokio::test]
async fn event_signing_vector_verifies_and_detects_tampering() {
    let rules = crate::core::pdu::rules(&RoomVersionId::V10).unwrap();
    let signed = object(MINIMAL_EVENT_SIGNED);
    assert_eq!(verify_event(&spec_public_keys(), &signed, &rules).unwrap(), Verified::All);

    let mut tampered = signed.clone();
    tampered.insert("content".into(), CanonicalJsonValue::Object(object(r#"{"body":"forged"}"#)));
    assert_eq!(verify_event(&spec_public_keys(), &tampered, &rules).unwrap(), Verified::Signatures);

    let mut resigned = signed;
    resigned.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(1_000_001_u32.into()));
    assert!(verify_event(&spec_public_keys(), &resigned, &rules).is_err(), "a signed field changed");
}

/// Spec: Appendices → Cryptographic Test Vectors → Event Signing, both events,
/// against every room version's redaction rules: all versions up to 10 give the
/// spec's exact bytes; from 11 on `origin` is redacted away, so the signature
/// differs while the content hash does not. This pins down which rules the
/// vectors use, and that no version's rules change the hash.
#[tokio::test]
async fn event_signing_vectors_hold_up_to_room_version_10() {
    let signature = |event: &CanonicalJsonObject| {
        let CanonicalJsonValue::Object(signatures) = &event["signatures"] else { panic!("no signatures") };
        signatures["domain"].to_string()
    };
    for (input, expected) in [(MINIMAL_EVENT, MINIMAL_EVENT_SIGNED), (MESSAGE_EVENT, MESSAGE_EVENT_SIGNED)] {
        let expected = object(expected);
        for version in [
            RoomVersionId::V1,
            RoomVersionId::V2,
            RoomVersionId::V3,
            RoomVersionId::V4,
            RoomVersionId::V5,
            RoomVersionId::V6,
            RoomVersionId::V7,
            RoomVersionId::V8,
            RoomVersionId::V9,
            RoomVersionId::V10,
            RoomVersionId::V11,
            RoomVersionId::V12,
        ] {
            let mut event = object(input);
            hash_and_sign_event("domain", &spec_key(), &mut event, &version.rules().unwrap().redaction).unwrap();
            assert_eq!(event["hashes"], expected["hashes"], "v{version}");
            let keeps_origin = !matches!(version, RoomVersionId::V11 | RoomVersionId::V12);
            assert_eq!(signature(&event) == signature(&expected), keeps_origin, "v{version}");
        }
    }
}
