//! The media repository's endpoints: uploads (at once, or to an ID reserved
//! first), downloads and thumbnails, authenticated (`/client/v1/media`) and
//! the legacy unauthenticated `/media/v3` reads clients of v1.10 and before
//! (Hydrogen among them) still use. Other servers' files are fetched over
//! federation once and kept.
//!
//! Files are served inline only when their type is one browsers show without
//! running anything (images, audio, video, plain text); anything else, HTML
//! above all, is an attachment. Every core response also carries a sandboxing
//! Content-Security-Policy (see the router).

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use ruma::{
    api::{
        client::{
            authenticated_media::{get_content, get_content_as_filename, get_content_thumbnail, get_media_preview},
            media::{
                create_content, create_content_async, create_mxc_uri, get_content as legacy_content,
                get_content_as_filename as legacy_content_as_filename, get_content_thumbnail as legacy_thumbnail,
                get_media_preview as legacy_preview,
            },
        },
        federation::authenticated_media::{get_content as federation_content, FileOrLocation},
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    media::Method,
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, ServerName, UInt,
};

use crate::core::{
    api::{
        answer::{Answered, JsonAnswer, Streamed},
        ranged::{ByteRange, Ranged},
    },
    service::{
        accounts::Session,
        federation::FederationError,
        media::{Fit, Media, MediaError},
    },
    Body, BodyError, Error, Homeserver,
};

/// How long an ID handed out by `/media/v1/create` waits for its upload.
const RESERVED_MS: u64 = 24 * 60 * 60 * 1000;
/// The largest thumbnail made: clients ask for a few hundred pixels.
const MAX_THUMBNAIL_SIDE: u32 = 1_600;

/// The content types served inline.
fn inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "image/jpeg" | "image/png" | "image/gif" | "image/webp" | "image/apng" | "image/avif" | "text/plain"
    ) || essence.starts_with("audio/")
        || essence.starts_with("video/")
}

fn served(media: &Media, filename: Option<String>) -> (String, ContentDisposition) {
    let content_type = media.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
    let kind = match inline(&content_type) {
        true => ContentDispositionType::Inline,
        false => ContentDispositionType::Attachment,
    };
    (content_type, ContentDisposition::new(kind).with_filename(filename.or_else(|| media.filename.clone())))
}

fn mxc(hs: &Homeserver, media_id: &str) -> OwnedMxcUri {
    format!("mxc://{}/{media_id}", hs.key().server_name()).into()
}

/// `POST /_matrix/media/v3/upload`
pub(crate) async fn upload(
    hs: &Homeserver,
    session: Session,
    request: create_content::v3::Request,
    body: Body,
) -> Result<create_content::v3::Response, Error> {
    let media_id = hs.accounts().random_string(24);
    let media = Media::uploaded(Some(session.user_id), request.content_type, request.filename);
    store(hs, (hs.key().server_name(), &media_id), media, body).await?;
    Ok(create_content::v3::Response::new(mxc(hs, &media_id)))
}

/// Stores a file as its pieces arrive, up to the node's upload limit.
async fn store<E: Into<Error>>(
    hs: &Homeserver,
    id: (&ServerName, &str),
    media: Media,
    pieces: impl Stream<Item = Result<Bytes, E>>,
) -> Result<(), Error> {
    let upload = (hs.accounts().random_string(16), hs.limits().max_upload_bytes as u64);
    hs.media().put(id, media, pieces.map_err(Into::into), upload, hs.clock().now_millis()).await
}

/// `POST /_matrix/media/v1/create`
pub(crate) async fn create(
    hs: &Homeserver,
    session: Session,
    _: create_mxc_uri::v1::Request,
) -> Result<create_mxc_uri::v1::Response, Error> {
    hs.limits().media_create.check(session.user_id.as_str(), hs.clock().now_millis())?;
    let media_id = hs.accounts().random_string(24);
    let until = hs.clock().now_millis() + RESERVED_MS;
    hs.media().reserve(hs.key().server_name(), &media_id, &session.user_id, until).await?;
    let mut response = create_mxc_uri::v1::Response::new(mxc(hs, &media_id));
    response.unused_expires_at = Some(MilliSecondsSinceUnixEpoch(UInt::new_saturating(until)));
    Ok(response)
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub(crate) async fn upload_to(
    hs: &Homeserver,
    session: Session,
    Answered(request): Answered<create_content_async::v3::Request>,
    body: Body,
) -> Result<JsonAnswer, Error> {
    if request.server_name != hs.key().server_name() {
        return Err(Error::Forbidden(format!("{} is not this server", request.server_name)));
    }
    if hs.media().media(&request.server_name, &request.media_id).await?.is_none() {
        return Err(MediaError::NotFound(request.media_id).into());
    }
    let media = Media::uploaded(Some(session.user_id), request.content_type, request.filename);
    store(hs, (&request.server_name, &request.media_id), media, body).await?;
    Ok(JsonAnswer(serde_json::json!({})))
}

/// How much of another server's file one request asks for: what a P2P frame
/// holds, less room for the rest of the answer.
const FETCH_PART_BYTES: u64 = 1 << 20;

/// Makes sure a file is here: this node's, or another server's fetched once
/// and kept.
async fn fetched(hs: &Homeserver, server: &ServerName, media_id: &str) -> Result<(), Error> {
    if server == hs.key().server_name() || hs.media().media(server, media_id).await?.is_some() {
        return Ok(());
    }
    match fetch(hs, server, media_id).await {
        // Fetched for another client meanwhile.
        Ok(()) | Err(Error::Media(MediaError::CannotOverwrite(_))) => Ok(()),
        Err(err) => Err(err),
    }
}

/// A file's download: ruma's response `head` made with its content type and
/// disposition (as `filename`, if given), and its bytes sent as they are read.
async fn download_of<R>(
    hs: &Homeserver,
    (server, media_id): (&ServerName, &str),
    filename: Option<String>,
    head: impl FnOnce(Vec<u8>, String, ContentDisposition) -> R,
) -> Result<Streamed<R>, Error> {
    fetched(hs, server, media_id).await?;
    let (media, pieces) = hs.media().read(server, media_id).await?;
    let (content_type, disposition) = served(&media, filename);
    let pieces = pieces.map_err(|err| BodyError(err.to_string()));
    Ok(Streamed {
        head: head(Vec::new(), content_type, disposition),
        body: Body::streamed(Box::pin(pieces)),
        length: media.size,
    })
}

/// Stores another server's file, fetched a frame's worth at a time: the
/// first answer says how large it is. Refused when it is larger than this
/// node takes uploads.
async fn fetch(hs: &Homeserver, server: &ServerName, media_id: &str) -> Result<(), Error> {
    let part = |start: u64| {
        let request = federation_content::v1::Request::new(media_id.to_owned());
        let range = Some(ByteRange { start, end: start + FETCH_PART_BYTES - 1 });
        async move {
            let answer = hs.federation().request(server, Ranged { request, range }, false).await;
            let answer = answer.map_err(|err| match err {
                FederationError::Remote { status: 404, .. } => {
                    Error::NotFound(format!("{server} has no media {media_id}"))
                }
                err => err.into(),
            })?;
            match answer.response.content {
                FileOrLocation::File(content) => Ok((content, answer.part)),
                _ => Err(Error::NotFound(format!(
                    "{server} offered {media_id} elsewhere, which this node does not follow"
                ))),
            }
        }
    };
    let (mut content, first) = part(0).await?;
    let first_bytes = Bytes::from(std::mem::take(&mut content.file));
    let total = first.map_or(first_bytes.len() as u64, |first| first.total);
    if total > hs.limits().max_upload_bytes as u64 {
        return Err(Error::TooLarge { limit: hs.limits().max_upload_bytes });
    }
    let part = &part;
    let rest = stream::try_unfold(first_bytes.len() as u64, move |offset| async move {
        if offset >= total {
            return Ok(None);
        }
        let (next, range) = part(offset).await?;
        match range {
            Some(range) if range.range.start == offset && !next.file.is_empty() => {
                let next_offset = offset + next.file.len() as u64;
                Ok(Some((Bytes::from(next.file), next_offset)))
            }
            _ => Err(FederationError::Invalid(format!("{server} sent a wrong part of {media_id}")).into()),
        }
    });
    let filename = content.content_disposition.and_then(|d| d.filename);
    let media = Media::uploaded(None, content.content_type, filename);
    store(hs, (server, media_id), media, stream::once(async { Ok::<_, Error>(first_bytes) }).chain(rest)).await
}

/// A thumbnail at most `width`×`height`.
pub(crate) async fn thumbnail_of(
    hs: &Homeserver,
    server: &ServerName,
    media_id: &str,
    (width, height): (UInt, UInt),
    method: Option<Method>,
) -> Result<(String, Vec<u8>), Error> {
    let side = |n: UInt| u32::try_from(u64::from(n)).unwrap_or(u32::MAX).clamp(1, MAX_THUMBNAIL_SIDE);
    let fit = match method {
        Some(Method::Crop) => Fit::Crop,
        _ => Fit::Scale,
    };
    fetched(hs, server, media_id).await?;
    Ok(hs.media().thumbnail(server, media_id, side(width), side(height), fit).await?)
}

fn thumbnail_disposition() -> ContentDisposition {
    ContentDisposition::new(ContentDispositionType::Inline).with_filename(Some("thumbnail".into()))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub(crate) async fn download(
    hs: &Homeserver,
    _: Session,
    request: get_content::v1::Request,
) -> Result<Streamed<get_content::v1::Response>, Error> {
    download_of(hs, (&request.server_name, &request.media_id), None, get_content::v1::Response::new).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub(crate) async fn download_as(
    hs: &Homeserver,
    _: Session,
    request: get_content_as_filename::v1::Request,
) -> Result<Streamed<get_content_as_filename::v1::Response>, Error> {
    let id = (&*request.server_name, &*request.media_id);
    download_of(hs, id, Some(request.filename), get_content_as_filename::v1::Response::new).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub(crate) async fn thumbnail(
    hs: &Homeserver,
    _: Session,
    request: get_content_thumbnail::v1::Request,
) -> Result<get_content_thumbnail::v1::Response, Error> {
    let size = (request.width, request.height);
    let (content_type, bytes) = thumbnail_of(hs, &request.server_name, &request.media_id, size, request.method).await?;
    Ok(get_content_thumbnail::v1::Response::new(bytes, content_type, thumbnail_disposition()))
}

/// `GET /_matrix/client/v1/media/preview_url` (and its legacy path): this
/// node reaches no web site, so every preview is an empty object (which
/// ruma's type would send as no body at all).
pub(crate) async fn preview<R>(_: &Homeserver, _: Session, _: Answered<R>) -> Result<JsonAnswer, Error> {
    Ok(JsonAnswer(serde_json::json!({})))
}

#[allow(deprecated)]
pub(crate) type LegacyDownload = legacy_content::v3::Request;
#[allow(deprecated)]
pub(crate) type LegacyDownloadAs = legacy_content_as_filename::v3::Request;
#[allow(deprecated)]
pub(crate) type LegacyThumbnail = legacy_thumbnail::v3::Request;
#[allow(deprecated)]
pub(crate) type LegacyPreview = legacy_preview::v3::Request;
pub(crate) type Preview = get_media_preview::v1::Request;

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}`
#[allow(deprecated)]
pub(crate) async fn legacy_download(
    hs: &Homeserver,
    _: (),
    request: LegacyDownload,
) -> Result<Streamed<legacy_content::v3::Response>, Error> {
    download_of(hs, (&request.server_name, &request.media_id), None, legacy_content::v3::Response::new).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`
#[allow(deprecated)]
pub(crate) async fn legacy_download_as(
    hs: &Homeserver,
    _: (),
    request: LegacyDownloadAs,
) -> Result<Streamed<legacy_content_as_filename::v3::Response>, Error> {
    let id = (&*request.server_name, &*request.media_id);
    download_of(hs, id, Some(request.filename), legacy_content_as_filename::v3::Response::new).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`
#[allow(deprecated)]
pub(crate) async fn legacy_thumbnail(
    hs: &Homeserver,
    _: (),
    request: LegacyThumbnail,
) -> Result<legacy_thumbnail::v3::Response, Error> {
    let size = (request.width, request.height);
    let (content_type, bytes) = thumbnail_of(hs, &request.server_name, &request.media_id, size, request.method).await?;
    Ok(legacy_thumbnail::v3::Response::new(bytes, content_type, thumbnail_disposition()))
}
