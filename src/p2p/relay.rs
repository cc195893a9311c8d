//! The relay protocol's control messages: JSON in text WebSocket messages, beside
//! frames in binary ones.
//!
//! ```text
//! relay → node  {"type":"challenge","nonce":"<base64 32 bytes>"}
//! node → relay  {"type":"hello","key":"<hex>","sig":"<base64 ed25519 signature of HELLO_CONTEXT ‖ nonce>"}
//! relay → node  {"type":"welcome","mailbox":<frames waiting>}   then the mailbox, as binary frames
//! node → relay  binary frame                                    forwarded, or kept if `mailbox` is set and
//!                                                                the destination is offline
//! relay → node  {"type":"stored","to":"<hex>","id":<frame id>}  kept in the destination's mailbox
//! node → relay  {"type":"ack","frames":[["<origin hex>",<id>]...]}  handled: the relay forgets them
//! node ↔ relay  {"type":"signal","to"|"from":"<hex>","data":{...}}  WebRTC offer/answer/candidates
//! node → relay  {"type":"peers"}   relay → node {"type":"peers","keys":["<hex>"...]}  who is online
//! relay → node  {"type":"error","code":"<code>","message":"...","to"?,"id"?}
//! ```
//!
//! The relay never holds a private key: a hello proves the node holds the key
//! it registers, and the relay accepts only frames whose origin is that key.

use serde::{Deserialize, Serialize};

use super::frame::PeerKey;

/// Signed with the nonce, so a hello cannot be replayed to another protocol.
pub const HELLO_CONTEXT: &[u8] = b"glia relay hello v1\0";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Challenge {
        nonce: String,
    },
    Hello {
        key: String,
        sig: String,
    },
    Welcome {
        mailbox: u64,
    },
    Stored {
        to: String,
        id: u64,
    },
    Ack {
        frames: Vec<(String, u64)>,
    },
    Signal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        data: serde_json::Value,
    },
    Peers {
        #[serde(default)]
        keys: Vec<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// Why the relay refused something; the frame-level ones carry the frame's
/// destination and id so the sender can fail the request at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadHello,
    BadMessage,
    WrongOrigin,
    FrameTooLarge,
    Offline,
    MailboxFull,
    RateLimited,
    TooManyConnections,
}

/// The bytes a hello signs.
pub fn hello_message(nonce: &[u8]) -> Vec<u8> {
    [HELLO_CONTEXT, nonce].concat()
}

/// Parses a key as the protocol writes it (lowercase hex).
pub fn parse_key(hex: &str) -> Option<PeerKey> {
    let name = ruma::ServerName::parse(hex).ok()?;
    PeerKey::from_server_name(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_read_as_documented() {
        let ack: Control = serde_json::from_str(r#"{"type":"ack","frames":[["ab",3]]}"#).unwrap();
        assert_eq!(ack, Control::Ack { frames: vec![("ab".into(), 3)] });
        let error = Control::Error { code: ErrorCode::MailboxFull, message: "full".into(), to: None, id: Some(2) };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"type":"error","code":"mailbox_full","message":"full","id":2}"#
        );
        assert_eq!(parse_key(&"ab".repeat(32)), Some(PeerKey([0xab; 32])));
        assert_eq!(parse_key("AB"), None);
    }
}
