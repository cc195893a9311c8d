//! Endpoints whose answer glia writes itself, where ruma's response type
//! cannot say it: as JSON, an empty map a client needs sent or an empty answer
//! ruma gives no way to make; or a file's bytes as they are read. The request
//! is still ruma's.

use bytes::BufMut;
use ruma::api::{
    error::{DeserializationError, IntoHttpError},
    BytesBody, IncomingRequest, OutgoingResponse, OutgoingResponseExt,
};

use crate::core::{Body, Error};

/// Ruma's request `R`, answered with a [`JsonAnswer`].
pub(crate) struct Answered<R>(pub R);

super::metadata_of_inner!(Answered);

impl<R: IncomingRequest> IncomingRequest for Answered<R> {
    type EndpointError = R::EndpointError;
    type OutgoingResponse = JsonAnswer;

    fn try_from_http_request_inner(request: http::Request<&[u8]>, args: &[&str]) -> Result<Self, DeserializationError> {
        R::try_from_http_request_inner(request, args).map(Self)
    }
}

pub(crate) struct JsonAnswer(pub serde_json::Value);

impl OutgoingResponse for JsonAnswer {
    type Body = BytesBody;

    fn try_into_http_response_inner(self) -> Result<http::Response<BytesBody>, IntoHttpError> {
        let mut body = Vec::new().writer();
        serde_json::to_writer(&mut body, &self.0)?;
        let response = http::Response::builder().header(http::header::CONTENT_TYPE, "application/json");
        Ok(response.body(BytesBody(body.into_inner()))?)
    }
}

/// What a handler answers, as the HTTP response the router sends.
pub(crate) trait Respond {
    fn respond(self) -> Result<http::Response<Body>, Error>;
}

impl<R: OutgoingResponse> Respond for R {
    fn respond(self) -> Result<http::Response<Body>, Error> {
        Ok(self.try_into_http_response::<Vec<u8>>()?.map(Body::from))
    }
}

/// Ruma's response `R` with its body sent as it is read: `R`'s own body is
/// left empty, and its headers are kept.
pub(crate) struct Streamed<R> {
    pub head: R,
    pub body: Body,
    pub length: u64,
}

impl<R: OutgoingResponse> Respond for Streamed<R> {
    fn respond(self) -> Result<http::Response<Body>, Error> {
        let mut response = self.head.try_into_http_response::<Vec<u8>>()?;
        response.headers_mut().insert(http::header::CONTENT_LENGTH, self.length.into());
        Ok(response.map(|_| self.body))
    }
}
