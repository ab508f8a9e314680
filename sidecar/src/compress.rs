//! Compressed upstream responses.
//!
//! The enforcement point asks every upstream for `accept-encoding: identity`:
//! it must read usage and scan generated text, and it answers callers
//! uncompressed (on loopback or inside a cluster the bytes saved are not worth
//! the CPU). A server that compresses anyway is still understood: `gzip`,
//! `deflate` (zlib) and `br` bodies are decoded as they arrive, whole or
//! streamed, and passed on decoded without `content-encoding`. Any other
//! encoding is refused as an upstream failure rather than passed on unread.

use std::io::Write;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;

/// Buffer of the brotli decoder.
const BROTLI_BUFFER: usize = 4096;

/// An encoding the enforcement point cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream answered with content-encoding {0:?}, which policybind cannot read")]
pub struct UnknownEncoding(pub String);

/// A corrupt compressed body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's compressed body is corrupt: {0}")]
pub struct CorruptBody(#[from] std::io::Error);

/// Decodes one response body incrementally.
pub enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    /// The decoder a response needs, `None` for an identity body.
    pub fn for_headers(headers: &HeaderMap) -> Result<Option<Decoder>, UnknownEncoding> {
        let Some(value) = headers.get(CONTENT_ENCODING) else {
            return Ok(None);
        };
        let name = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "" | "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Decoder::Gzip(flate2::write::GzDecoder::new(vec![])))),
            "deflate" => Ok(Some(Decoder::Deflate(flate2::write::ZlibDecoder::new(
                vec![],
            )))),
            "br" => Ok(Some(Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(vec![], BROTLI_BUFFER),
            )))),
            _ => Err(UnknownEncoding(name)),
        }
    }

    /// Decodes a chunk and returns what it yields (possibly nothing yet).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, CorruptBody> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Deflate(d) => {
                d.write_all(chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Brotli(d) => {
                d.write_all(chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
        }
    }

    /// Ends the body and returns the last bytes.
    pub fn finish(&mut self) -> Result<Bytes, CorruptBody> {
        match self {
            Decoder::Gzip(d) => d.try_finish()?,
            Decoder::Deflate(d) => d.try_finish()?,
            Decoder::Brotli(d) => d.close()?,
        }
        self.push(&[])
    }
}

/// Removes the headers a decoded body no longer matches.
pub fn strip_encoding_headers(headers: &mut HeaderMap) {
    headers.remove(CONTENT_ENCODING);
    headers.remove(http::header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn decode_in_pieces(encoding: &str, encoded: &[u8]) -> Vec<u8> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        let mut decoder = Decoder::for_headers(&headers).unwrap().unwrap();
        let mut out = vec![];
        for piece in encoded.chunks(7) {
            out.extend_from_slice(&decoder.push(piece).unwrap());
        }
        out.extend_from_slice(&decoder.finish().unwrap());
        out
    }

    const TEXT: &[u8] = b"data: {\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";

    #[test]
    fn gzip_deflate_and_brotli_bodies_decode_across_chunk_boundaries() {
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        gz.write_all(TEXT).unwrap();
        assert_eq!(decode_in_pieces("gzip", &gz.finish().unwrap()), TEXT);

        let mut zlib = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::fast());
        zlib.write_all(TEXT).unwrap();
        assert_eq!(decode_in_pieces("deflate", &zlib.finish().unwrap()), TEXT);

        let mut br = vec![];
        {
            let mut writer = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            writer.write_all(TEXT).unwrap();
        }
        assert_eq!(decode_in_pieces("br", &br), TEXT);
    }

    #[test]
    fn identity_needs_no_decoder_and_unknown_encodings_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(Decoder::for_headers(&headers).unwrap().is_none());
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(
            Decoder::for_headers(&headers).err(),
            Some(UnknownEncoding("zstd".into()))
        );
    }

    #[test]
    fn a_corrupt_body_is_an_error_not_silence() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut decoder = Decoder::for_headers(&headers).unwrap().unwrap();
        let pushed = decoder.push(b"definitely not gzip");
        assert!(pushed.is_err() || decoder.finish().is_err());
    }
}
