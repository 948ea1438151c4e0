//! Frames between the host and a worker process, over the worker's stdin and stdout.
//!
//! ```text
//! frame   = u32 LE header length | header (JSON) | u32 LE section count | section*
//! section = u64 LE length | bytes
//! ```
//!
//! Code, output and snapshots travel as raw sections, never inside JSON, so a 10 MB snapshot
//! costs one write and one read.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::{Completion, Console, Limits, RunError};

/// Largest header accepted, to fail fast on a garbled stream.
const MAX_HEADER: u32 = 1 << 20;
/// Most sections in one frame.
const MAX_SECTIONS: u32 = 4;

/// What the host asks a worker to do. Sections: the code, then the sealed heap if `heap`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Snapshot the heap afterwards.
    pub stateful: bool,
    /// A sealed heap follows the code.
    pub heap: bool,
    /// Time, memory and output limits.
    pub limits: Limits,
}

/// What a worker answers. Sections on success of a stateful run: the sealed heap.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// The completion, or why there is none.
    pub result: Result<Completion, RunError>,
    /// What the code printed.
    pub console: Console,
}

fn encode_header<H: Serialize>(header: &H) -> io::Result<Vec<u8>> {
    serde_json::to_vec(header).map_err(io::Error::other)
}

fn decode_header<H: DeserializeOwned>(bytes: &[u8]) -> io::Result<H> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes one frame (blocking side: the worker).
pub fn write_frame<H: Serialize>(
    w: &mut impl Write,
    header: &H,
    sections: &[&[u8]],
) -> io::Result<()> {
    let header = encode_header(header)?;
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(&(sections.len() as u32).to_le_bytes())?;
    for section in sections {
        w.write_all(&(section.len() as u64).to_le_bytes())?;
        w.write_all(section)?;
    }
    w.flush()
}

/// Reads one frame (blocking side). `Ok(None)` at a clean end of stream.
pub fn read_frame<H: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<(H, Vec<Vec<u8>>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header_len = u32::from_le_bytes(len);
    if header_len > MAX_HEADER {
        return Err(invalid("frame header too large"));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)?;
    r.read_exact(&mut len)?;
    let count = u32::from_le_bytes(len);
    if count > MAX_SECTIONS {
        return Err(invalid("too many sections"));
    }
    let mut sections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut len = [0u8; 8];
        r.read_exact(&mut len)?;
        let len =
            usize::try_from(u64::from_le_bytes(len)).map_err(|_| invalid("section too large"))?;
        let mut section = vec![0u8; len];
        r.read_exact(&mut section)?;
        sections.push(section);
    }
    Ok(Some((decode_header(&header)?, sections)))
}

/// Writes one frame (async side: the host).
pub async fn write_frame_async<H: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    header: &H,
    sections: &[&[u8]],
) -> io::Result<()> {
    let header = encode_header(header)?;
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    w.write_all(&head).await?;
    for section in sections {
        w.write_all(&(section.len() as u64).to_le_bytes()).await?;
        w.write_all(section).await?;
    }
    w.flush().await
}

/// Reads one frame (async side). End of stream is an `UnexpectedEof` error: a worker
/// that stops talking mid-call has died.
pub async fn read_frame_async<H: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> io::Result<(H, Vec<Vec<u8>>)> {
    let header_len = r.read_u32_le().await?;
    if header_len > MAX_HEADER {
        return Err(invalid("frame header too large"));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).await?;
    let count = r.read_u32_le().await?;
    if count > MAX_SECTIONS {
        return Err(invalid("too many sections"));
    }
    let mut sections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len =
            usize::try_from(r.read_u64_le().await?).map_err(|_| invalid("section too large"))?;
        let mut section = vec![0u8; len];
        r.read_exact(&mut section).await?;
        sections.push(section);
    }
    Ok((decode_header(&header)?, sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_between_both_sides() {
        let limits = Limits::default();
        let request = Request {
            stateful: true,
            heap: true,
            limits,
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &request, &[b"1 + 1", &[0u8, 1, 2]]).unwrap();
        let (back, sections): (Request, _) = read_frame_async(&mut wire.as_slice()).await.unwrap();
        assert!(back.stateful && back.heap && back.limits == limits);
        assert_eq!(sections, vec![b"1 + 1".to_vec(), vec![0, 1, 2]]);

        let mut wire = Vec::new();
        let error = Response {
            result: Err(RunError::Timeout(std::time::Duration::from_secs(2))),
            console: Console::default(),
        };
        write_frame_async(&mut wire, &error, &[]).await.unwrap();
        let (back, sections): (Response, _) = read_frame(&mut wire.as_slice()).unwrap().unwrap();
        assert!(matches!(back.result, Err(RunError::Timeout(d)) if d.as_secs() == 2));
        assert!(sections.is_empty());
    }

    #[test]
    fn end_of_stream_and_garbage() {
        assert!(read_frame::<Request>(&mut [].as_slice()).unwrap().is_none());
        let garbage = [0xFFu8; 16];
        assert!(read_frame::<Request>(&mut garbage.as_slice()).is_err());
    }
}
