//! The media repository: files this node's users upload, and copies of other
//! servers' files fetched for them. A file is kept in chunks, so that no store
//! value (an IndexedDB record, a redb value) grows with the file, and written
//! a chunk at a time as it arrives; its record is written last, so a file is
//! there whole or not at all.
//! Thumbnails are made once per size and method, and kept.
//!
//! Key encodings:
//! - `media`: server name, 0, media ID → [`Media`] as JSON
//! - `media_chunks`: server name, 0, media ID, 0, upload ID, 0, chunk number
//!   (u32 BE) → up to [`CHUNK_BYTES`] of the file (files stored before
//!   uploads were streamed have no upload ID and its 0)
//! - `media_uploads`: upload ID → when it began (ms, u64 BE), then its
//!   chunks' key prefix: an upload under way
//! - `thumbnails`: server name, 0, media ID, 0, width (u32 BE), height (u32
//!   BE), method (`crop`/`scale`) → content type, 0, the thumbnail's bytes

use std::{ops::Bound, sync::Arc};

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt};
use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};

use super::rooms::RoomError;
use crate::core::platform::Thumbnailer;
use crate::store::{Batch, Direction, KeyRange, Store, StoreError};

pub(crate) const MEDIA: &str = "media";
pub(crate) const MEDIA_CHUNKS: &str = "media_chunks";
pub(crate) const THUMBNAILS: &str = "thumbnails";
pub(crate) const MEDIA_UPLOADS: &str = "media_uploads";

/// The size of a stored chunk of a file.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// How many chunks one read of part of a file takes.
const READ_CHUNKS: u32 = 4;
/// The most pixels an image may have to be thumbnailed: a 4000×3000 photo
/// and then some, not a decompression bomb.
#[cfg(not(target_arch = "wasm32"))]
const MAX_PIXELS: u64 = 50_000_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Media {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub chunks: u32,
    /// Who made it (absent for other servers' files).
    pub uploader: Option<OwnedUserId>,
    /// Set while the ID is handed out (`/media/v1/create`) and nothing is
    /// uploaded under it yet: until when the upload may come, in ms.
    pub pending_until: Option<u64>,
    /// The upload that wrote the file's chunks; none for files stored whole
    /// by nodes before uploads were streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

impl Media {
    /// The record of a file about to be stored (its size is counted then).
    pub fn uploaded(uploader: Option<OwnedUserId>, content_type: Option<String>, filename: Option<String>) -> Self {
        Self { content_type, filename, size: 0, chunks: 0, uploader, pending_until: None, upload: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no media {0}")]
    NotFound(String),
    #[error("media {0} is not uploaded yet")]
    NotYetUploaded(String),
    #[error("media {0} is uploaded already")]
    CannotOverwrite(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the file is larger than the {limit} bytes this node takes")]
    TooLarge { limit: u64 },
    #[error("cannot make a thumbnail: {0}")]
    NotAnImage(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl From<StoreError> for MediaError {
    fn from(err: StoreError) -> Self {
        Self::Room(err.into())
    }
}

/// How a thumbnail fits the size asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Exactly the size, the image's middle cut out.
    Crop,
    /// Within the size, the whole image.
    Scale,
}

pub struct MediaRepository {
    store: Arc<dyn Store>,
    /// What makes thumbnails: none until the shell gives one, in the browser.
    thumbnailer: Option<Arc<dyn Thumbnailer>>,
}

impl MediaRepository {
    pub fn new(store: Arc<dyn Store>) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        let thumbnailer: Option<Arc<dyn Thumbnailer>> = Some(Arc::new(ImageCrate));
        #[cfg(target_arch = "wasm32")]
        let thumbnailer = None;
        Self { store, thumbnailer }
    }

    pub fn make_thumbnails_with(&mut self, thumbnailer: Arc<dyn Thumbnailer>) {
        self.thumbnailer = Some(thumbnailer);
    }

    /// Reserves `media_id` for `uploader`'s upload until `until` (ms).
    pub async fn reserve(
        &self,
        server: &ServerName,
        media_id: &str,
        uploader: &UserId,
        until: u64,
    ) -> Result<(), MediaError> {
        let media = Media {
            content_type: None,
            filename: None,
            size: 0,
            chunks: 0,
            uploader: Some(uploader.to_owned()),
            pending_until: Some(until),
            upload: None,
        };
        let key = media_key(server, media_id);
        let batch = Batch::new().expect(MEDIA, key.clone(), None).put(MEDIA, key, encode(&media)?);
        Ok(self.store.write(batch).await?)
    }

    /// Stores a file under `media_id` as its `pieces` arrive: a new one, or
    /// the upload a reservation waits for (then only its uploader's, before it
    /// expires, and once). `upload` names this upload's chunks (random, so two
    /// uploads under one reservation write apart); more than `limit` bytes
    /// are refused with [`MediaError::TooLarge`].
    ///
    /// Each chunk is written once it is full, so the file is held in memory a
    /// chunk at a time. Nothing of it can be read before the last chunk is
    /// written along with the file's record, and an upload that fails removes
    /// what it wrote.
    pub async fn put<E: From<MediaError>>(
        &self,
        (server, media_id): (&ServerName, &str),
        mut media: Media,
        pieces: impl Stream<Item = Result<Bytes, E>>,
        (upload, limit): (String, u64),
        now: u64,
    ) -> Result<(), E> {
        let key = media_key(server, media_id);
        let stored = self.store.get(MEDIA, &key).await.map_err(MediaError::from)?;
        if let Some(bytes) = &stored {
            let reserved = decode(bytes).map_err(MediaError::from)?;
            let Some(until) = reserved.pending_until else {
                return Err(MediaError::CannotOverwrite(media_id.into()).into());
            };
            if reserved.uploader != media.uploader {
                return Err(MediaError::Forbidden(format!("media {media_id} was reserved by another user")).into());
            }
            if until < now {
                return Err(MediaError::NotFound(media_id.into()).into());
            }
        }
        let prefix = chunk_prefix(&key, Some(&upload));
        let started = [&now.to_be_bytes()[..], &prefix].concat();
        self.store.put(MEDIA_UPLOADS, upload.as_bytes(), &started).await.map_err(MediaError::from)?;
        let written = self.write_chunks(&prefix, pieces, limit).await;
        let finished = match written {
            Ok((last, size)) => {
                media.size = size;
                media.chunks = size.div_ceil(CHUNK_BYTES as u64) as u32;
                media.pending_until = None;
                media.upload = Some(upload.clone());
                // The record as it was read, so two uploads under one
                // reservation cannot both land.
                let mut batch = Batch::new()
                    .expect(MEDIA, key.clone(), stored)
                    .put(MEDIA, key, encode(&media).map_err(MediaError::from)?)
                    .delete(MEDIA_UPLOADS, upload.as_bytes().to_vec());
                if let Some((n, chunk)) = last {
                    batch = batch.put(MEDIA_CHUNKS, chunk_key(&prefix, n), chunk);
                }
                self.store.write(batch).await.map_err(|err| match err {
                    StoreError::Conflict { .. } => MediaError::CannotOverwrite(media_id.into()).into(),
                    err => MediaError::from(err).into(),
                })
            }
            Err(err) => Err(err),
        };
        if finished.is_err() {
            // Left for the next sweep if this fails too.
            let _ = self.remove_upload(upload.as_bytes(), &prefix).await;
        }
        finished
    }

    /// Writes `pieces` in chunks under `prefix`, all but the last, which is
    /// returned (if any) with the file's size.
    async fn write_chunks<E: From<MediaError>>(
        &self,
        prefix: &[u8],
        pieces: impl Stream<Item = Result<Bytes, E>>,
        limit: u64,
    ) -> Result<(Option<(u32, Vec<u8>)>, u64), E> {
        let mut pieces = std::pin::pin!(pieces);
        let (mut chunk, mut n, mut size) = (Vec::with_capacity(CHUNK_BYTES), 0u32, 0u64);
        while let Some(piece) = pieces.next().await {
            let mut piece = &piece?[..];
            size += piece.len() as u64;
            if size > limit {
                return Err(MediaError::TooLarge { limit }.into());
            }
            while !piece.is_empty() {
                if chunk.len() == CHUNK_BYTES {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES));
                    let batch = Batch::new().put(MEDIA_CHUNKS, chunk_key(prefix, n), full);
                    self.store.write(batch).await.map_err(MediaError::from)?;
                    n += 1;
                }
                let take = piece.len().min(CHUNK_BYTES - chunk.len());
                chunk.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
            }
        }
        Ok(((!chunk.is_empty()).then_some((n, chunk)), size))
    }

    /// Deletes an upload's chunks and its mark, a few chunks at a time.
    async fn remove_upload(&self, upload: &[u8], prefix: &[u8]) -> Result<(), StoreError> {
        loop {
            let chunks = self.store.scan(MEDIA_CHUNKS, KeyRange::prefix(prefix), Direction::Forward, 16).await?;
            if chunks.is_empty() {
                return self.store.delete(MEDIA_UPLOADS, upload).await;
            }
            let batch = chunks.into_iter().fold(Batch::new(), |batch, (key, _)| batch.delete(MEDIA_CHUNKS, key));
            self.store.write(batch).await?;
        }
    }

    /// Removes what uploads that began before `before` (ms) and never ended
    /// wrote: a node stopped in the middle of one leaves its chunks behind.
    pub async fn sweep_uploads(&self, before: u64) -> Result<usize, StoreError> {
        let uploads = self.store.scan(MEDIA_UPLOADS, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        let mut swept = 0;
        for (upload, started) in uploads {
            let Some((at, prefix)) = started.split_first_chunk::<8>() else { continue };
            if u64::from_be_bytes(*at) < before {
                self.remove_upload(&upload, prefix).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// The record of a file, uploaded or reserved.
    pub async fn media(&self, server: &ServerName, media_id: &str) -> Result<Option<Media>, MediaError> {
        let bytes = self.store.get(MEDIA, &media_key(server, media_id)).await?;
        Ok(bytes.map(|bytes| decode(&bytes)).transpose()?)
    }

    /// A file a chunk at a time, each read as it is taken: a download holds
    /// one chunk in memory, not the file.
    pub async fn read(
        &self,
        server: &ServerName,
        media_id: &str,
    ) -> Result<(Media, impl Stream<Item = Result<Bytes, MediaError>> + 'static), MediaError> {
        let media = self.media(server, media_id).await?.ok_or_else(|| MediaError::NotFound(media_id.into()))?;
        if media.pending_until.is_some() {
            return Err(MediaError::NotYetUploaded(media_id.into()));
        }
        let (store, chunks) = (self.store.clone(), media.chunks);
        let prefix = chunk_prefix(&media_key(server, media_id), media.upload.as_deref());
        let media_id = media_id.to_owned();
        let pieces = stream::try_unfold(0, move |n| {
            let (store, key, media_id) = (store.clone(), chunk_key(&prefix, n), media_id.clone());
            async move {
                if n == chunks {
                    return Ok(None);
                }
                let chunk = store.get(MEDIA_CHUNKS, &key).await?;
                let chunk = chunk.ok_or_else(|| RoomError::corrupt(format!("media {media_id} lacks chunk {n}")))?;
                Ok(Some((Bytes::from(chunk), n + 1)))
            }
        });
        Ok((media, pieces))
    }

    /// A file, whole.
    pub async fn file(&self, server: &ServerName, media_id: &str) -> Result<(Media, Vec<u8>), MediaError> {
        self.part(server, media_id, 0, u64::MAX).await
    }

    /// The bytes `start..=end` of a file (or up to its end), read from the
    /// chunks that hold them only: another node fetches a large file a part
    /// at a time.
    pub async fn part(
        &self,
        server: &ServerName,
        media_id: &str,
        start: u64,
        end: u64,
    ) -> Result<(Media, Vec<u8>), MediaError> {
        let media = self.media(server, media_id).await?.ok_or_else(|| MediaError::NotFound(media_id.into()))?;
        let prefix = chunk_prefix(&media_key(server, media_id), media.upload.as_deref());
        if media.pending_until.is_some() {
            return Err(MediaError::NotYetUploaded(media_id.into()));
        }
        let end = end.min(media.size.saturating_sub(1));
        if media.size == 0 || start > end {
            return Ok((media, Vec::new()));
        }
        let chunk = CHUNK_BYTES as u64;
        let (first, last) = ((start / chunk) as u32, (end / chunk) as u32);
        if last >= media.chunks {
            return Err(RoomError::corrupt(format!("media {media_id} has {} chunks, not {last}", media.chunks)).into());
        }
        let mut bytes = Vec::with_capacity((end - start + 1) as usize);
        // A few chunks a read, so no more than those are held besides the bytes.
        let mut n = first;
        while n <= last {
            let to = last.min(n + READ_CHUNKS - 1);
            let range = KeyRange::new(Bound::Included(chunk_key(&prefix, n)), Bound::Included(chunk_key(&prefix, to)));
            let chunks = self.store.scan(MEDIA_CHUNKS, range, Direction::Forward, usize::MAX).await?;
            if chunks.len() != (to - n + 1) as usize {
                return Err(RoomError::corrupt(format!("media {media_id} lacks chunks in {n}..={to}")).into());
            }
            for (_, data) in chunks {
                let offset = u64::from(n) * chunk;
                let from = start.saturating_sub(offset) as usize;
                let to = ((end + 1 - offset) as usize).min(data.len());
                bytes.extend_from_slice(data.get(from..to).unwrap_or_default());
                n += 1;
            }
        }
        Ok((media, bytes))
    }

    /// A thumbnail of an image file at most `width`×`height` (exactly that,
    /// cropped, with [`Fit::Crop`]), made on first use and kept; its content
    /// type and bytes.
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        width: u32,
        height: u32,
        fit: Fit,
    ) -> Result<(String, Vec<u8>), MediaError> {
        let method: &[u8] = match fit {
            Fit::Crop => b"crop",
            Fit::Scale => b"scale",
        };
        let key =
            [&media_key(server, media_id)[..], b"\0", &width.to_be_bytes(), &height.to_be_bytes(), method].concat();
        if let Some(kept) = self.store.get(THUMBNAILS, &key).await? {
            let split = kept.iter().position(|b| *b == 0).ok_or_else(|| RoomError::corrupt("bad thumbnail"))?;
            let content_type = String::from_utf8(kept[..split].to_vec()).map_err(RoomError::corrupt)?;
            return Ok((content_type, kept[split + 1..].to_vec()));
        }
        let (_, file) = self.file(server, media_id).await?;
        let thumbnailer = self.thumbnailer.as_ref().ok_or_else(|| MediaError::NotAnImage("no thumbnailer".into()))?;
        let (content_type, thumbnail) = thumbnailer.thumbnail(&file, width, height, fit).await?;
        drop(file);
        let value = [content_type.as_bytes(), b"\0", &thumbnail].concat();
        self.store.put(THUMBNAILS, &key, &value).await?;
        Ok((content_type, thumbnail))
    }
}

/// The thumbnailer of native nodes: the `image` crate.
#[cfg(not(target_arch = "wasm32"))]
pub struct ImageCrate;

#[cfg(not(target_arch = "wasm32"))]
#[async_trait::async_trait]
impl Thumbnailer for ImageCrate {
    async fn thumbnail(&self, file: &[u8], width: u32, height: u32, fit: Fit) -> Result<(String, Vec<u8>), MediaError> {
        make_thumbnail(file, width, height, fit).map(|(content_type, bytes)| (content_type.to_owned(), bytes))
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Decodes an image (within [`MAX_PIXELS`]) and scales it down; JPEG stays
/// JPEG, the rest becomes PNG (which keeps transparency). An image already
/// within the size is not enlarged.
fn make_thumbnail(file: &[u8], width: u32, height: u32, fit: Fit) -> Result<(&'static str, Vec<u8>), MediaError> {
    use image::{imageops::FilterType, ImageFormat, ImageReader, Limits};
    use std::io::Cursor;

    let not_an_image = |err: image::ImageError| MediaError::NotAnImage(err.to_string());
    let mut reader =
        ImageReader::new(Cursor::new(file)).with_guessed_format().map_err(|e| MediaError::NotAnImage(e.to_string()))?;
    let format = reader.format().ok_or_else(|| MediaError::NotAnImage("not an image this node reads".into()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(u32::MAX);
    limits.max_image_height = Some(u32::MAX);
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let (w, h) = reader.into_dimensions().map_err(not_an_image)?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(MediaError::NotAnImage(format!("{w}×{h} is more pixels than this node thumbnails")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(file), format);
    reader.limits({
        let mut limits = Limits::default();
        limits.max_alloc = Some(MAX_PIXELS * 4);
        limits
    });
    let image = reader.decode().map_err(not_an_image)?;
    let (width, height) = (width.max(1), height.max(1));
    let thumbnail = match fit {
        _ if image.width() <= width && image.height() <= height => image,
        Fit::Scale => image.resize(width, height, FilterType::Triangle),
        Fit::Crop => image.resize_to_fill(width, height, FilterType::Triangle),
    };
    let (content_type, format) = match format {
        ImageFormat::Jpeg => ("image/jpeg", ImageFormat::Jpeg),
        _ => ("image/png", ImageFormat::Png),
    };
    let thumbnail = match format {
        // JPEG has no alpha channel to write.
        ImageFormat::Jpeg => image::DynamicImage::ImageRgb8(thumbnail.to_rgb8()),
        _ => thumbnail,
    };
    let mut out = Cursor::new(Vec::new());
    thumbnail.write_to(&mut out, format).map_err(not_an_image)?;
    Ok((content_type, out.into_inner()))
}

fn media_key(server: &ServerName, media_id: &str) -> Vec<u8> {
    [server.as_bytes(), b"\0", media_id.as_bytes()].concat()
}

/// Where a file's chunks are: under the upload that wrote them, after the
/// file's own key.
fn chunk_prefix(media_key: &[u8], upload: Option<&str>) -> Vec<u8> {
    match upload {
        Some(upload) => [media_key, b"\0", upload.as_bytes(), b"\0"].concat(),
        None => [media_key, b"\0"].concat(),
    }
}

fn chunk_key(prefix: &[u8], n: u32) -> Vec<u8> {
    [prefix, &n.to_be_bytes()].concat()
}

fn encode(media: &Media) -> Result<Vec<u8>, RoomError> {
    serde_json::to_vec(media).map_err(RoomError::corrupt)
}

fn decode(bytes: &[u8]) -> Result<Media, RoomError> {
    serde_json::from_slice(bytes).map_err(RoomError::corrupt)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::io::Cursor;

    use futures_util::{future::join, FutureExt, TryStreamExt};
    use image::{ImageFormat, ImageReader};
    use ruma::server_name;

    use super::*;
    use crate::{core::SCHEMA, store::MemoryStore};

    fn repository() -> MediaRepository {
        MediaRepository::new(Arc::new(MemoryStore::new(SCHEMA)))
    }

    /// `file` in pieces of `size` bytes.
    fn pieces(file: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, MediaError>> {
        stream::iter(file.chunks(size).map(|piece| Ok(Bytes::copy_from_slice(piece))).collect::<Vec<_>>())
    }

    async fn count(repo: &MediaRepository, table: &'static str) -> usize {
        repo.store.scan(table, KeyRange::all(), Direction::Forward, usize::MAX).await.unwrap().len()
    }

    fn alice() -> OwnedUserId {
        "@alice:a".try_into().unwrap()
    }

    #[tokio::test]
    async fn uploads_are_stored_a_chunk_at_a_time_and_read_back_in_parts() {
        let repo = repository();
        let file: Vec<u8> = (0..(5 * CHUNK_BYTES + 1000) as u32).map(|i| (i % 251) as u8).collect();
        let media = Media::uploaded(Some(alice()), None, None);
        let id = (server_name!("a"), "m");
        repo.put::<MediaError>(id, media, pieces(&file, 70_001), ("u1".into(), 2 << 20), 0).await.unwrap();
        let (media, whole) = repo.file(id.0, id.1).await.unwrap();
        assert_eq!((media.size, media.chunks, whole == file), (file.len() as u64, 6, true));
        let (_, pieces) = repo.read(id.0, id.1).await.unwrap();
        let pieces: Vec<Bytes> = pieces.try_collect().await.unwrap();
        assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), [[CHUNK_BYTES; 5].as_slice(), &[1000]].concat());
        assert_eq!(pieces.concat(), file);
        let (_, part) = repo.part(id.0, id.1, CHUNK_BYTES as u64 - 10, CHUNK_BYTES as u64 + 9).await.unwrap();
        assert_eq!(part, &file[CHUNK_BYTES - 10..CHUNK_BYTES + 10]);
        assert_eq!(count(&repo, MEDIA_UPLOADS).await, 0);
    }

    #[tokio::test]
    async fn failed_uploads_leave_nothing_behind() {
        let repo = repository();
        let file = vec![1u8; 3 * CHUNK_BYTES];
        let id = (server_name!("a"), "m");
        let media = || Media::uploaded(Some(alice()), None, None);
        let too_large = repo.put(id, media(), pieces(&file, 1000), ("u1".into(), 2 * CHUNK_BYTES as u64), 0).await;
        assert!(matches!(too_large, Err(MediaError::TooLarge { .. })), "{too_large:?}");
        let broken = pieces(&file[..2 * CHUNK_BYTES], 1000)
            .chain(stream::once(async { Err(MediaError::NotFound("the client went away".into())) }));
        assert!(repo.put(id, media(), broken, ("u2".into(), u64::MAX), 0).await.is_err());
        assert!(repo.media(id.0, id.1).await.unwrap().is_none());
        assert_eq!((count(&repo, MEDIA_CHUNKS).await, count(&repo, MEDIA_UPLOADS).await), (0, 0));

        // A node stopped in the middle of an upload: its chunks go at the next sweep.
        let endless = pieces(&file, 1000).chain(stream::pending());
        let stopped = repo.put(id, media(), endless, ("u3".into(), u64::MAX), 5).now_or_never();
        assert!(stopped.is_none(), "the upload waits for more");
        assert_eq!(count(&repo, MEDIA_CHUNKS).await, 2);
        assert_eq!(repo.sweep_uploads(5).await.unwrap(), 0, "not older than the cut-off");
        assert_eq!(repo.sweep_uploads(6).await.unwrap(), 1);
        assert_eq!((count(&repo, MEDIA_CHUNKS).await, count(&repo, MEDIA_UPLOADS).await), (0, 0));
    }

    #[tokio::test]
    async fn one_upload_lands_under_a_reservation() {
        let repo = repository();
        let id = (server_name!("a"), "m");
        repo.reserve(id.0, id.1, &alice(), 100).await.unwrap();
        let media = || Media::uploaded(Some(alice()), None, None);
        let (sender, receiver) = futures_channel::mpsc::unbounded();
        sender.unbounded_send(Ok(Bytes::from(vec![1u8; CHUNK_BYTES + 1]))).unwrap();
        // The first upload is still arriving when the second ends.
        let slow = repo.put::<MediaError>(id, media(), receiver, ("slow".into(), u64::MAX), 0);
        let fast = async {
            let fast = repo.put::<MediaError>(id, media(), pieces(b"fast", 2), ("fast".into(), u64::MAX), 0).await;
            drop(sender);
            fast
        };
        let (slow, fast) = join(slow, fast).await;
        assert!(fast.is_ok(), "{fast:?}");
        assert!(matches!(slow, Err(MediaError::CannotOverwrite(_))), "{slow:?}");
        assert_eq!(repo.file(id.0, id.1).await.unwrap().1, b"fast");
        assert_eq!((count(&repo, MEDIA_CHUNKS).await, count(&repo, MEDIA_UPLOADS).await), (1, 0));
        let again = repo.put::<MediaError>(id, media(), pieces(b"again", 2), ("again".into(), u64::MAX), 0).await;
        assert!(matches!(again, Err(MediaError::CannotOverwrite(_))), "{again:?}");
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8, y as u8, 128, 255]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn size(bytes: &[u8]) -> (u32, u32) {
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
    }

    #[test]
    fn thumbnails_scale_within_crop_to_and_never_enlarge() {
        let (kind, scaled) = make_thumbnail(&png(400, 200), 100, 100, Fit::Scale).unwrap();
        assert_eq!((kind, size(&scaled)), ("image/png", (100, 50)));
        let (_, cropped) = make_thumbnail(&png(400, 200), 100, 100, Fit::Crop).unwrap();
        assert_eq!(size(&cropped), (100, 100));
        let (_, small) = make_thumbnail(&png(40, 20), 100, 100, Fit::Crop).unwrap();
        assert_eq!(size(&small), (40, 20));
        assert!(matches!(make_thumbnail(b"not an image", 10, 10, Fit::Scale), Err(MediaError::NotAnImage(_))));
        let mut truncated = png(400, 200);
        truncated.truncate(100);
        assert!(matches!(make_thumbnail(&truncated, 10, 10, Fit::Scale), Err(MediaError::NotAnImage(_))));
    }
}
