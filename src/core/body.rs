//! A request's body as a shell hands it over: whole, or as pieces read as they
//! arrive. Uploads to the media repository store each piece as it comes, so a
//! large file is never held in memory whole; every other body is collected
//! first, up to [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::Error;

/// The pieces of a streamed body: `Send` natively, where requests run on a
/// thread pool; a JS stream's on wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub type Pieces = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;
#[cfg(target_arch = "wasm32")]
pub type Pieces = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>>>>;

/// Reading a body failed: the client went away, mostly.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct BodyError(pub String);

pub struct Body(Inner);

enum Inner {
    /// Taken by the first read.
    Whole(Option<Bytes>),
    Streamed(Pieces),
}

impl Body {
    pub fn streamed(pieces: Pieces) -> Self {
        Self(Inner::Streamed(pieces))
    }

    /// The body's bytes if it is whole, or the body.
    pub fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self.0 {
            Inner::Whole(bytes) => Ok(bytes.unwrap_or_default()),
            streamed => Err(Self(streamed)),
        }
    }

    /// The whole body, refused with `M_TOO_LARGE` as soon as it passes `limit`
    /// bytes.
    pub(crate) async fn collect(self, limit: usize) -> Result<Bytes, Error> {
        let mut pieces = match self.0 {
            Inner::Whole(bytes) => {
                let bytes = bytes.unwrap_or_default();
                return match bytes.len() > limit {
                    true => Err(Error::TooLarge { limit }),
                    false => Ok(bytes),
                };
            }
            Inner::Streamed(pieces) => pieces,
        };
        let mut whole = BytesMut::new();
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            if whole.len() + piece.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            whole.extend_from_slice(&piece);
        }
        Ok(whole.freeze())
    }
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().filter(|bytes| !bytes.is_empty()).map(Ok)),
            Inner::Streamed(pieces) => pieces.as_mut().poll_next(cx),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self(Inner::Whole(Some(bytes)))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn pieces(pieces: &[&'static [u8]]) -> Body {
        let pieces: Vec<_> = pieces.iter().map(|piece| Ok(Bytes::from_static(piece))).collect();
        Body::streamed(Box::pin(futures_util::stream::iter(pieces)))
    }

    #[tokio::test]
    async fn bodies_are_collected_within_the_limit_only() {
        assert_eq!(&pieces(&[b"ab", b"cd"]).collect(4).await.unwrap()[..], b"abcd");
        assert!(matches!(pieces(&[b"ab", b"cde"]).collect(4).await, Err(Error::TooLarge { limit: 4 })));
        assert!(matches!(Body::from(vec![0; 5]).collect(4).await, Err(Error::TooLarge { limit: 4 })));
        let broken = Body::streamed(Box::pin(futures_util::stream::iter([Err(BodyError("gone".into()))])));
        assert!(matches!(broken.collect(4).await, Err(Error::Body(_))));
    }
}
