//! Other servers fetching this node's files for their users.

use ruma::{
    api::federation::authenticated_media::{
        get_content, get_content_thumbnail, Content, ContentMetadata, FileOrLocation,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::core::{
    api::{
        client::media::thumbnail_of,
        ranged::{ByteRange, ContentRange, Ranged, RangedAnswer},
    },
    router::Origin,
    service::media::MediaError,
    Error, Homeserver,
};

/// `GET /_matrix/federation/v1/media/download/{mediaId}`, whole or (with a
/// `Range` header, from glia nodes) a part at a time.
pub(crate) async fn download(
    hs: &Homeserver,
    _: Origin,
    Ranged { request, range }: Ranged<get_content::v1::Request>,
) -> Result<RangedAnswer<get_content::v1::Response>, Error> {
    let server = hs.key().server_name();
    let (media, file, part) = match range {
        None => {
            let (media, file) = hs.media().file(server, &request.media_id).await?;
            (media, file, None)
        }
        Some(range) => {
            let (media, file) = hs.media().part(server, &request.media_id, range.start, range.end).await?;
            if range.start >= media.size && media.size > 0 {
                return Err(Error::InvalidParam(format!("the range starts past the file's {} bytes", media.size)));
            }
            let end = (range.start + file.len() as u64).saturating_sub(1);
            let part = ContentRange { range: ByteRange { start: range.start, end }, total: media.size };
            (media, file, Some(part))
        }
    };
    let content_type = media.content_type.unwrap_or_else(|| "application/octet-stream".into());
    // The other server decides how it serves the file to its clients.
    let disposition = ContentDisposition::new(ContentDispositionType::Attachment).with_filename(media.filename);
    let content = FileOrLocation::File(Content::new(file, content_type, disposition));
    Ok(RangedAnswer { response: get_content::v1::Response::new(ContentMetadata::new(), content), part })
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub(crate) async fn thumbnail(
    hs: &Homeserver,
    _: Origin,
    request: get_content_thumbnail::v1::Request,
) -> Result<get_content_thumbnail::v1::Response, Error> {
    if hs.media().media(hs.key().server_name(), &request.media_id).await?.is_none() {
        return Err(MediaError::NotFound(request.media_id).into());
    }
    let size = (request.width, request.height);
    let (content_type, file) =
        thumbnail_of(hs, hs.key().server_name(), &request.media_id, size, request.method).await?;
    let disposition = ContentDisposition::new(ContentDispositionType::Inline);
    let content = FileOrLocation::File(Content::new(file, content_type, disposition));
    Ok(get_content_thumbnail::v1::Response::new(ContentMetadata::new(), content))
}
