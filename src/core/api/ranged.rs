//! Byte ranges of a request, for files larger than a frame carries: glia
//! nodes fetch another node's media a range at a time (HTTP `Range`,
//! answered `206` with `Content-Range`), since the spec's federation download
//! sends a file whole and a P2P frame holds about a megabyte. A server that
//! ignores the header answers with the whole file, which is taken as it is.

use ruma::api::{
    error::{DeserializationError, IntoHttpError},
    IncomingRequest, IncomingResponse, OutgoingRequest, OutgoingResponse,
};

/// The bytes `start..=end` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// A `Range` header of the one form glia sends, `bytes=start-end`; other
    /// forms are ignored, as HTTP allows, and the whole file is sent.
    fn parse(header: &str) -> Option<Self> {
        let (start, end) = header.strip_prefix("bytes=")?.split_once('-')?;
        let range = Self { start: start.parse().ok()?, end: end.parse().ok()? };
        (range.start <= range.end).then_some(range)
    }
}

/// Ruma's request `R` with the range of the answer's file it asks for.
#[derive(Clone)]
pub(crate) struct Ranged<R> {
    pub request: R,
    pub range: Option<ByteRange>,
}

super::metadata_of_inner!(Ranged);

impl<R: IncomingRequest> IncomingRequest for Ranged<R> {
    type EndpointError = R::EndpointError;
    type OutgoingResponse = RangedAnswer<R::OutgoingResponse>;

    fn try_from_http_request_inner(request: http::Request<&[u8]>, args: &[&str]) -> Result<Self, DeserializationError> {
        let range = request.headers().get(http::header::RANGE).and_then(|h| ByteRange::parse(h.to_str().ok()?));
        Ok(Self { request: R::try_from_http_request_inner(request, args)?, range })
    }
}

impl<R: OutgoingRequest> OutgoingRequest for Ranged<R> {
    type Body = R::Body;
    type EndpointError = R::EndpointError;
    type IncomingResponse = RangedAnswer<R::IncomingResponse>;

    fn try_into_http_request_inner(
        self,
        base_url: &str,
        path_builder_input: <Self::PathBuilder as ruma::api::path_builder::PathBuilder>::Input<'_>,
    ) -> Result<http::Request<Self::Body>, IntoHttpError> {
        let mut request = self.request.try_into_http_request_inner(base_url, path_builder_input)?;
        if let Some(ByteRange { start, end }) = self.range {
            let value = http::HeaderValue::try_from(format!("bytes={start}-{end}"))?;
            request.headers_mut().insert(http::header::RANGE, value);
        }
        Ok(request)
    }
}

/// Where a part of a file lies in the whole: its range and the file's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub range: ByteRange,
    pub total: u64,
}

impl ContentRange {
    fn parse(header: &str) -> Option<Self> {
        let (range, total) = header.strip_prefix("bytes ")?.split_once('/')?;
        Some(Self { range: ByteRange::parse(&format!("bytes={range}"))?, total: total.parse().ok()? })
    }
}

/// Ruma's response `T`, holding only part of its file when `part` says so.
pub(crate) struct RangedAnswer<T> {
    pub response: T,
    pub part: Option<ContentRange>,
}

impl<T: OutgoingResponse> OutgoingResponse for RangedAnswer<T> {
    type Body = T::Body;

    fn try_into_http_response_inner(self) -> Result<http::Response<Self::Body>, IntoHttpError> {
        let mut response = self.response.try_into_http_response_inner()?;
        if let Some(ContentRange { range: ByteRange { start, end }, total }) = self.part {
            *response.status_mut() = http::StatusCode::PARTIAL_CONTENT;
            let value = http::HeaderValue::try_from(format!("bytes {start}-{end}/{total}"))?;
            response.headers_mut().insert(http::header::CONTENT_RANGE, value);
        }
        Ok(response)
    }
}

impl<T: IncomingResponse> IncomingResponse for RangedAnswer<T> {
    type EndpointError = T::EndpointError;

    fn try_from_http_response_inner(response: http::Response<&[u8]>) -> Result<Self, DeserializationError> {
        let part = match response.status() {
            http::StatusCode::PARTIAL_CONTENT => {
                response.headers().get(http::header::CONTENT_RANGE).and_then(|h| ContentRange::parse(h.to_str().ok()?))
            }
            _ => None,
        };
        Ok(Self { response: T::try_from_http_response_inner(response)?, part })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_the_one_form_sent() {
        assert_eq!(ByteRange::parse("bytes=0-1023"), Some(ByteRange { start: 0, end: 1023 }));
        for ignored in ["bytes=5-", "bytes=-5", "bytes=9-3", "bytes=0-1,4-5", "items=0-1", "bytes=a-b"] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
        let part = ContentRange::parse("bytes 1024-2047/4096");
        assert_eq!(part, Some(ContentRange { range: ByteRange { start: 1024, end: 2047 }, total: 4096 }));
        assert_eq!(ContentRange::parse("bytes */4096"), None);
    }
}
