//! MJPEG over HTTP: a `multipart/x-mixed-replace` body is an endless run of
//! parts, each a JPEG (or PNG) with its own headers, between boundary lines.
//!
//! Cameras differ: some give each part a `Content-Length`, some do not
//! (then the part ends at the next boundary); some put the leading `--` in
//! the `boundary` parameter, some do not; some send `\n` for `\r\n`. All of
//! that is accepted. What the server sends is untrusted: lines and parts
//! have hard size limits, so a stream without boundaries cannot make blipd
//! buffer without bound.

use std::io::{BufRead, Read};

/// Longest header or boundary line read.
const MAX_LINE: usize = 4096;
/// Most header lines in one part.
const MAX_HEADERS: usize = 32;

/// The boundary of a `multipart/x-mixed-replace; boundary=...` content
/// type, without leading dashes; None for any other type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/x-mixed-replace") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        let v = v.trim_start_matches("--");
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Reads parts from a multipart body.
pub struct Parts<R> {
    reader: R,
    /// `--<boundary>`.
    marker: Vec<u8>,
    max_part: usize,
    /// Positioned after a boundary line (so the next part's headers follow).
    at_part: bool,
}

impl<R: BufRead> Parts<R> {
    pub fn new(reader: R, boundary: &str, max_part: usize) -> Self {
        Parts {
            reader,
            marker: format!("--{boundary}").into_bytes(),
            max_part,
            at_part: false,
        }
    }

    /// The next part's body, or `Ok(None)` when the stream ended. `keep`
    /// false skips the part's bytes without keeping them (a frame nobody
    /// needs yet costs no allocation).
    pub fn next_part(&mut self, keep: bool) -> Result<Option<Vec<u8>>, String> {
        if !self.at_part {
            // Skip to the first boundary line (a preamble is allowed).
            loop {
                let Some(line) = self.line()? else {
                    return Ok(None);
                };
                if line.starts_with(&self.marker) {
                    break;
                }
            }
        }
        let mut length: Option<usize> = None;
        for n in 0.. {
            if n >= MAX_HEADERS {
                return Err(format!("a part has more than {MAX_HEADERS} header lines"));
            }
            let Some(line) = self.line()? else {
                return Ok(None);
            };
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            if let Some((k, v)) = text.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    let v: usize = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad part Content-Length {:?}", v.trim()))?;
                    length = Some(v);
                }
            }
        }
        let body = match length {
            Some(len) => {
                if len > self.max_part {
                    return Err(self.too_big(len));
                }
                let mut body = Vec::new();
                let got = if keep {
                    body.reserve_exact(len);
                    (&mut self.reader)
                        .take(len as u64)
                        .read_to_end(&mut body)
                        .map_err(read_err)?
                } else {
                    std::io::copy(
                        &mut (&mut self.reader).take(len as u64),
                        &mut std::io::sink(),
                    )
                    .map_err(read_err)? as usize
                };
                if got < len {
                    return Ok(None);
                }
                self.at_part = false;
                body
            }
            None => {
                let body = self.until_marker(keep)?;
                let Some(body) = body else {
                    return Ok(None);
                };
                self.at_part = true;
                body
            }
        };
        Ok(Some(body))
    }

    fn too_big(&self, len: usize) -> String {
        format!(
            "a frame of the MJPEG stream is {len} bytes or more; at most {} are accepted",
            self.max_part
        )
    }

    /// The bytes up to the next boundary line (which is consumed), without
    /// the line break before it.
    fn until_marker(&mut self, keep: bool) -> Result<Option<Vec<u8>>, String> {
        let mut body = Vec::new();
        let mut total = 0usize;
        loop {
            let Some(line) = self.raw_line(self.max_part + MAX_LINE)? else {
                return Ok(None);
            };
            let trimmed = trim_eol(&line);
            if trimmed.starts_with(&self.marker) {
                // The line break before the boundary belongs to it.
                if body.ends_with(b"\r\n") {
                    body.truncate(body.len() - 2);
                } else if body.ends_with(b"\n") {
                    body.truncate(body.len() - 1);
                }
                return Ok(Some(body));
            }
            total += line.len();
            if total > self.max_part {
                return Err(self.too_big(total));
            }
            if keep {
                body.extend_from_slice(&line);
            } else {
                // Keep only what could be the line break before a boundary.
                body.clear();
                if line.ends_with(b"\r\n") {
                    body.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// One line without its `\r\n` / `\n`, at most [`MAX_LINE`] bytes.
    fn line(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.raw_line(MAX_LINE)?.map(|l| trim_eol(&l).to_vec()))
    }

    /// One line with its line break, at most `max` bytes (a longer one is
    /// an error); None at the end of the stream.
    fn raw_line(&mut self, max: usize) -> Result<Option<Vec<u8>>, String> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(read_err)?;
        if n == 0 {
            return Ok(None);
        }
        if n > max {
            return Err(format!(
                "the MJPEG stream has a line over {max} bytes (is it really multipart?)"
            ));
        }
        Ok(Some(line))
    }
}

fn trim_eol(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn read_err(e: std::io::Error) -> String {
    format!("reading the stream: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_as_cameras_write_them() {
        let b = |s| boundary(s);
        assert_eq!(
            b("multipart/x-mixed-replace; boundary=frame").unwrap(),
            "frame"
        );
        assert_eq!(
            b("multipart/x-mixed-replace;boundary=\"--myboundary\"").unwrap(),
            "myboundary"
        );
        assert!(b("image/jpeg").is_none());
        assert!(b("multipart/x-mixed-replace").is_none());
    }

    #[test]
    fn parts_with_and_without_length() {
        let stream = b"preamble\r\n--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc\r\n--frame\r\nContent-Type: image/jpeg\r\n\r\nline1\nline2\r\n--frame\nContent-Length: 2\n\nxy\n--frame--\r\n";
        let mut p = Parts::new(&stream[..], "frame", 100);
        assert_eq!(p.next_part(true).unwrap().unwrap(), b"abc");
        assert_eq!(p.next_part(true).unwrap().unwrap(), b"line1\nline2");
        assert_eq!(p.next_part(false).unwrap().unwrap(), b"");
        assert_eq!(p.next_part(true).unwrap(), None);
    }

    #[test]
    fn hostile_streams_are_bounded() {
        let big = b"--f\r\nContent-Length: 1000\r\n\r\n";
        assert!(Parts::new(&big[..], "f", 100).next_part(true).is_err());
        let endless = [b"--f\r\n\r\n".to_vec(), vec![b'x'; 500]].concat();
        assert!(Parts::new(&endless[..], "f", 100).next_part(true).is_err());
        let headers = [b"--f\r\n".to_vec(), b"A: b\r\n".repeat(40)].concat();
        assert!(Parts::new(&headers[..], "f", 100).next_part(true).is_err());
        let bad_len = b"--f\r\nContent-Length: -1\r\n\r\n";
        assert!(Parts::new(&bad_len[..], "f", 100).next_part(true).is_err());
        let truncated = b"--f\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(
            Parts::new(&truncated[..], "f", 100)
                .next_part(true)
                .unwrap(),
            None
        );
    }
}
