//! The node's identity: one ed25519 key, made at first start and kept in the
//! store. Its public half in lowercase hex is the node's server name, so any glia
//! server's verify key is read from its name, with no key fetch.

use ruma::{
    serde::Base64,
    signatures::{Ed25519KeyPair, KeyPair, PublicKeyMap},
    OwnedServerName, ServerName,
};

use super::platform::Random;
use crate::store::{Batch, Store, StoreError};

/// The one key ID every glia node signs with.
pub const KEY_ID: &str = "ed25519:glia";
const KEY_VERSION: &str = "glia";
const SEED_KEY: &[u8] = b"node_key_seed";

pub struct NodeKey {
    pair: Ed25519KeyPair,
    server_name: OwnedServerName,
}

impl NodeKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = Ed25519KeyPair::new(ed25519_dalek::pkcs8::ALGORITHM_OID, seed, None, KEY_VERSION.to_owned())
            .expect("any 32 bytes are an ed25519 secret key");
        let server_name = ServerName::parse(hex(&pair.public_key())).expect("64 hex digits are a server name");
        Self { pair, server_name }
    }

    /// The node's key from `store`, or a new one if this is the node's first start.
    pub async fn load_or_create(store: &dyn Store, random: &dyn Random) -> Result<Self, StoreError> {
        loop {
            if let Some(seed) = store.get("meta", SEED_KEY).await? {
                let seed: [u8; 32] =
                    seed.try_into().map_err(|_| StoreError::Backend("the stored node key is not 32 bytes".into()))?;
                return Ok(Self::from_seed(&seed));
            }
            let mut seed = [0u8; 32];
            random.fill(&mut seed);
            // Two first starts racing (two worker instances) must agree on one key.
            let batch = Batch::new().expect("meta", SEED_KEY, None).put("meta", SEED_KEY, seed);
            match store.write(batch).await {
                Ok(()) => return Ok(Self::from_seed(&seed)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// A bare ed25519 signature of `message`, for the relay's hello.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_bytes().to_vec()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.pair.public_key()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The verify key of the glia server `server`: its name is the key in lowercase
/// hex. `None` for any other server name.
pub fn verify_key(server: &ServerName) -> Option<[u8; 32]> {
    let name = server.as_bytes();
    if name.len() != 64 || !name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in name.chunks(2).enumerate() {
        let digit = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
        key[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(key)
}

/// A server whose key cannot be derived from its name: not a glia node.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a glia server name (64 lowercase hex digits of an ed25519 key)")]
pub struct NotAGliaServer(pub OwnedServerName);

/// The keys of `servers`, in the form ruma's signature checks take.
pub fn public_key_map<'a>(servers: impl IntoIterator<Item = &'a ServerName>) -> Result<PublicKeyMap, NotAGliaServer> {
    servers
        .into_iter()
        .map(|server| {
            let key = verify_key(server).ok_or_else(|| NotAGliaServer(server.to_owned()))?;
            let keys = [(KEY_ID.to_owned(), Base64::new(key.to_vec()))].into();
            Ok((server.to_string(), keys))
        })
        .collect()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::{core::SCHEMA, store::MemoryStore};

    #[test]
    fn server_name_is_the_public_key_and_gives_it_back() {
        let key = NodeKey::from_seed(&[7; 32]);
        assert_eq!(key.server_name().as_str().len(), 64);
        assert_eq!(verify_key(key.server_name()), Some(key.public_key()));
    }

    #[test]
    fn other_server_names_have_no_derived_key() {
        for name in ["example.org", "ABCD", &"A".repeat(64), &"g".repeat(64), &"a".repeat(63)] {
            if let Ok(name) = ServerName::parse(name) {
                assert_eq!(verify_key(&name), None, "{name}");
                assert!(public_key_map([&*name]).is_err());
            }
        }
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_kept() {
        let store = MemoryStore::new(SCHEMA);
        let first = NodeKey::load_or_create(&store, &super::super::OsRandom).await.unwrap();
        let again = NodeKey::load_or_create(&store, &super::super::OsRandom).await.unwrap();
        assert_eq!(first.server_name(), again.server_name());
    }
}
