//! The media repository: files this node's users upload, and copies of other
//! servers' files fetched for them. A file is kept in chunks, so that no store
//! value (an IndexedDB record, a redb value) grows with the file, and written
//! in one batch with its record, so a file is there whole or not at all.
//! Thumbnails are made once per size and method, and kept.
//!
//! Key encodings:
//! - `media`: server name, 0, media ID → [`Media`] as JSON
//! - `media_chunks`: server name, 0, media ID, 0, chunk number (u32 BE) → up
//!   to [`CHUNK_BYTES`] of the file
//! - `thumbnails`: server name, 0, media ID, 0, width (u32 BE), height (u32
//!   BE), method (`crop`/`scale`) → content type, 0, the thumbnail's bytes

use std::{ops::Bound, sync::Arc};

use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};

use super::rooms::RoomError;
use crate::core::platform::Thumbnailer;
use crate::store::{Batch, Direction, KeyRange, Store, StoreError};

pub(crate) const MEDIA: &str = "media";
pub(crate) const MEDIA_CHUNKS: &str = "media_chunks";
pub(crate) const THUMBNAILS: &str = "thumbnails";

/// The size of a stored chunk of a file.
pub const CHUNK_BYTES: usize = 256 * 1024;
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
}

impl Media {
    /// The record of a file about to be stored (its size is counted then).
    pub fn uploaded(uploader: Option<OwnedUserId>, content_type: Option<String>, filename: Option<String>) -> Self {
        Self { content_type, filename, size: 0, chunks: 0, uploader, pending_until: None }
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
        };
        let key = media_key(server, media_id);
        let batch = Batch::new().expect(MEDIA, key.clone(), None).put(MEDIA, key, encode(&media)?);
        Ok(self.store.write(batch).await?)
    }

    /// Stores a file under `media_id`: a new one, or the upload a reservation
    /// waits for (then only its uploader's, before it expires, and once).
    pub async fn put(
        &self,
        server: &ServerName,
        media_id: &str,
        mut media: Media,
        file: Vec<u8>,
        now: u64,
    ) -> Result<(), MediaError> {
        let key = media_key(server, media_id);
        let stored = self.store.get(MEDIA, &key).await?;
        if let Some(bytes) = &stored {
            let reserved = decode(bytes)?;
            let Some(until) = reserved.pending_until else {
                return Err(MediaError::CannotOverwrite(media_id.into()));
            };
            if reserved.uploader != media.uploader {
                return Err(MediaError::Forbidden(format!("media {media_id} was reserved by another user")));
            }
            if until < now {
                return Err(MediaError::NotFound(media_id.into()));
            }
        }
        media.size = file.len() as u64;
        media.chunks = file.len().div_ceil(CHUNK_BYTES) as u32;
        media.pending_until = None;
        // The record as it was read, so two uploads under one reservation
        // cannot both land.
        let mut batch = Batch::new().expect(MEDIA, key.clone(), stored).put(MEDIA, key.clone(), encode(&media)?);
        for (n, chunk) in file.chunks(CHUNK_BYTES).enumerate() {
            batch = batch.put(MEDIA_CHUNKS, chunk_key(&key, n as u32), chunk);
        }
        drop(file);
        self.store.write(batch).await.map_err(|err| match err {
            StoreError::Conflict { .. } => MediaError::CannotOverwrite(media_id.into()),
            err => err.into(),
        })
    }

    /// The record of a file, uploaded or reserved.
    pub async fn media(&self, server: &ServerName, media_id: &str) -> Result<Option<Media>, MediaError> {
        let bytes = self.store.get(MEDIA, &media_key(server, media_id)).await?;
        Ok(bytes.map(|bytes| decode(&bytes)).transpose()?)
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
        let key = media_key(server, media_id);
        let media = self.media(server, media_id).await?.ok_or_else(|| MediaError::NotFound(media_id.into()))?;
        if media.pending_until.is_some() {
            return Err(MediaError::NotYetUploaded(media_id.into()));
        }
        let end = end.min(media.size.saturating_sub(1));
        if media.size == 0 || start > end {
            return Ok((media, Vec::new()));
        }
        let chunk = CHUNK_BYTES as u64;
        let (first, last) = ((start / chunk) as u32, (end / chunk) as u32);
        let range = KeyRange::new(Bound::Included(chunk_key(&key, first)), Bound::Included(chunk_key(&key, last)));
        let chunks = self.store.scan(MEDIA_CHUNKS, range, Direction::Forward, usize::MAX).await?;
        if chunks.len() != (last - first + 1) as usize || last >= media.chunks {
            let found = chunks.len();
            return Err(
                RoomError::corrupt(format!("media {media_id} lacks chunks: {found} of {first}..={last}")).into()
            );
        }
        let mut bytes = Vec::with_capacity((end - start + 1) as usize);
        for (n, (_, data)) in chunks.iter().enumerate() {
            let offset = (u64::from(first) + n as u64) * chunk;
            let from = start.saturating_sub(offset) as usize;
            let to = ((end + 1 - offset) as usize).min(data.len());
            bytes.extend_from_slice(data.get(from..to).unwrap_or_default());
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

fn chunk_key(media_key: &[u8], n: u32) -> Vec<u8> {
    [media_key, b"\0", &n.to_be_bytes()].concat()
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

    use image::{ImageFormat, ImageReader};

    use super::*;

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
