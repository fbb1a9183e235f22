//! Response compression: the coding a client accepts (br, else gzip), and a
//! whole body encoded at once.
//!
//! Every body this service answers is already in memory when the guard sees
//! it (JSON written in one pass), so it is encoded in one call, and sent with
//! its length, instead of through a streaming encoder. (poem's `Compress`
//! streams through async-compression, whose poem feature also builds zstd's
//! C sources, for a coding this service never sends: about 60 s of CPU in
//! every build profile.)

use std::io::Write;

use poem::Response;
use poem::http::{HeaderValue, StatusCode, header};

use super::errors::{ErrorBody, ErrorCode, accepted, error_response};

/// A content coding this service sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// Brotli (RFC 7932).
    Br,
    /// gzip (RFC 1952).
    Gzip,
}

/// brotli's quality and gzip's level: 4 of 11 and of 9, a body of a
/// thousand users in about a millisecond, most of the size saved.
const LEVEL: u32 = 4;

impl Coding {
    /// The coding to compress a response with, from `Accept-Encoding` (every
    /// line of it, as one list): br when accepted, else gzip; `None` when the
    /// client accepts neither.
    pub(crate) fn accepted_by(headers: &poem::http::HeaderMap) -> Option<Self> {
        let lines = headers.get_all(header::ACCEPT_ENCODING).into_iter();
        let mut best = None;
        for name in lines
            .filter_map(|line| line.to_str().ok())
            .flat_map(accepted)
        {
            // Codings are case-insensitive; x-gzip is gzip (RFC 9110 8.4.1).
            if name.eq_ignore_ascii_case("br") {
                return Some(Self::Br);
            }
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                best = Some(Self::Gzip);
            }
        }
        best
    }

    /// Its name in `Content-Encoding`.
    fn name(self) -> &'static str {
        match self {
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }

    /// `body`, encoded whole.
    fn encode(self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut encoded = Vec::with_capacity(body.len() / 4);
        match self {
            Self::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: LEVEL as i32,
                    lgwin: window_bits(body.len()),
                    size_hint: body.len(),
                    ..Default::default()
                };
                brotli::BrotliCompress(&mut &body[..], &mut encoded, &params)?;
            }
            Self::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(encoded, flate2::Compression::new(LEVEL));
                encoder.write_all(body)?;
                encoded = encoder.finish()?;
            }
        }
        Ok(encoded)
    }
}

/// brotli's window for a body of `len` bytes: the smallest that holds it
/// (10 to 22 bits; a window is 2^bits - 16 bytes), so a 10 KiB body does not
/// make the encoder allocate the 4 MiB ring of the largest.
fn window_bits(len: usize) -> i32 {
    (10..22)
        .find(|&bits| (1usize << bits) - 16 >= len)
        .unwrap_or(22)
}

/// `response`, compressed with `coding` when its body is `from_bytes` or
/// more and not encoded yet; `Vary: Accept-Encoding` on every response that
/// could have been. A response with an entity tag (one user: 201, 200, and
/// its 304) is sent as it is, whatever its size (up to about 1.3 KiB with
/// the longest names and address): its tag is strong, so it names one
/// body, which a coding would change (RFC 9110, 8.8.3), and a weak tag
/// would match no `If-Match`. A body that encoding would not make smaller
/// is sent as it is too.
pub(crate) async fn compressed(
    mut response: Response,
    coding: Coding,
    from_bytes: usize,
) -> Response {
    if response.headers().contains_key(header::CONTENT_ENCODING)
        || response.headers().contains_key(header::ETAG)
        || matches!(
            response.status(),
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return response;
    }
    let body = match response.take_body().into_bytes().await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "cannot read a response body to compress it");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                ErrorBody::internal().message,
            );
        }
    };
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if body.len() < from_bytes {
        response.set_body(body);
        return response;
    }
    match coding.encode(&body) {
        Ok(encoded) if encoded.len() < body.len() => {
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.name()),
            );
            headers.remove(header::CONTENT_LENGTH);
            response.set_body(encoded);
        }
        Ok(_) => response.set_body(body),
        Err(error) => {
            // Writing into memory fails only if the encoder does; the body
            // is still good as it is.
            tracing::warn!(%error, coding = coding.name(), "cannot compress a response body; sent as it is");
            response.set_body(body);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn decode(coding: Coding, encoded: &[u8]) -> Vec<u8> {
        let mut decoded = Vec::new();
        match coding {
            Coding::Br => brotli::Decompressor::new(encoded, 4096)
                .read_to_end(&mut decoded)
                .unwrap(),
            Coding::Gzip => flate2::read::GzDecoder::new(encoded)
                .read_to_end(&mut decoded)
                .unwrap(),
        };
        decoded
    }

    fn headers(accept_encoding: &str) -> poem::http::HeaderMap {
        let mut headers = poem::http::HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept_encoding).unwrap(),
        );
        headers
    }

    #[test]
    fn br_is_preferred_then_gzip_and_a_refused_coding_is_never_chosen() {
        assert_eq!(Coding::accepted_by(&headers("gzip, br")), Some(Coding::Br));
        assert_eq!(
            Coding::accepted_by(&headers("gzip, br;q=0")),
            Some(Coding::Gzip)
        );
        assert_eq!(Coding::accepted_by(&headers("deflate, identity")), None);
        // Names and the weight's name are case-insensitive; x-gzip is gzip.
        assert_eq!(
            Coding::accepted_by(&headers("br;Q=0, gzip")),
            Some(Coding::Gzip)
        );
        assert_eq!(
            Coding::accepted_by(&headers("GZIP, Br ; q=0.0")),
            Some(Coding::Gzip)
        );
        assert_eq!(Coding::accepted_by(&headers("BR")), Some(Coding::Br));
        assert_eq!(Coding::accepted_by(&headers("x-gzip")), Some(Coding::Gzip));
        assert_eq!(Coding::accepted_by(&headers("x-gzip;Q=0")), None);
        // Two lines are one list.
        let mut two = headers("gzip");
        two.append(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(Coding::accepted_by(&two), Some(Coding::Br));
        assert_eq!(Coding::accepted_by(&poem::http::HeaderMap::new()), None);
    }

    #[test]
    fn window_bits_hold_the_body_within_brotlis_bounds() {
        assert_eq!(window_bits(0), 10);
        assert_eq!(window_bits(1008), 10);
        assert_eq!(window_bits(1009), 11);
        assert_eq!(window_bits(150_000), 18);
        assert_eq!(window_bits(100_000_000), 22);
    }

    #[tokio::test]
    async fn a_large_body_decodes_to_itself_with_its_coding_and_length() {
        let body: String = (0..200)
            .map(|i| {
                format!("{{\"id\":{i},\"first_name\":\"Ada\",\"email\":\"ada{i}@example.com\"}},")
            })
            .collect();
        for coding in [Coding::Br, Coding::Gzip] {
            let response = Response::builder().body(body.clone());
            let mut response = compressed(response, coding, 1024).await;
            assert_eq!(
                response.headers().get(header::CONTENT_ENCODING).unwrap(),
                coding.name()
            );
            assert_eq!(
                response.headers().get(header::VARY).unwrap(),
                "accept-encoding"
            );
            let encoded = response.take_body().into_vec().await.unwrap();
            assert!(
                encoded.len() < body.len() / 4,
                "{coding:?}: {} bytes",
                encoded.len()
            );
            assert_eq!(decode(coding, &encoded), body.as_bytes(), "{coding:?}");
        }
    }

    #[tokio::test]
    async fn a_small_or_incompressible_body_is_sent_as_it_is() {
        let small = compressed(Response::builder().body("{}"), Coding::Br, 1024).await;
        assert!(small.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(
            small.headers().get(header::VARY).unwrap(),
            "accept-encoding"
        );
        // Bytes with no repetition: encoding adds its framing to them.
        let mut state = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        for coding in [Coding::Br, Coding::Gzip] {
            let mut response =
                compressed(Response::builder().body(noise.clone()), coding, 1024).await;
            assert!(
                response.headers().get(header::CONTENT_ENCODING).is_none(),
                "{coding:?}"
            );
            assert_eq!(response.take_body().into_vec().await.unwrap(), noise);
        }
    }

    #[tokio::test]
    async fn an_encoded_empty_or_tagged_answer_is_left_alone() {
        let encoded = Response::builder()
            .header(header::CONTENT_ENCODING, "gzip")
            .body(vec![b'a'; 4096]);
        let mut encoded = compressed(encoded, Coding::Br, 1024).await;
        assert_eq!(
            encoded.headers().get(header::CONTENT_ENCODING).unwrap(),
            "gzip"
        );
        assert_eq!(encoded.take_body().into_vec().await.unwrap().len(), 4096);
        let not_modified = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .finish();
        let not_modified = compressed(not_modified, Coding::Gzip, 0).await;
        assert!(not_modified.headers().get(header::VARY).is_none());
        let tagged = Response::builder()
            .header(header::ETAG, "\"3\"")
            .body(vec![b'a'; 4096]);
        let mut tagged = compressed(tagged, Coding::Br, 1024).await;
        assert!(tagged.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(tagged.headers().get(header::VARY).is_none());
        assert_eq!(tagged.take_body().into_vec().await.unwrap().len(), 4096);
        let no_content = Response::builder().status(StatusCode::NO_CONTENT).finish();
        let no_content = compressed(no_content, Coding::Gzip, 0).await;
        assert!(no_content.headers().get(header::VARY).is_none());
    }
}
