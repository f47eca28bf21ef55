//! The bytes of a stored outbox value: version 1 (one message, written by rxgate before batches)
//! and version 2 (every message of one group commit and lane, compressed as one block). The
//! layouts are documented in the module docs of [`super`].

use std::sync::Arc;

use crate::error::{Error, Result};

pub(super) const V1: u8 = 1;
pub(super) const V2: u8 = 2;
/// `[1][accepted_ms: u64][flags: u8][topic_len: u16]`
pub(super) const V1_HEADER: usize = 1 + 8 + 1 + 2;
/// `[2][compression: u8][count: u16][first_accepted_ms: u64][raw_len: u32]`
pub(super) const V2_HEADER: usize = 1 + 1 + 2 + 8 + 4;
/// Per message in a version 2 body: `[accepted_ms: u64][flags: u8][topic: u16][payload_len: u32]`.
const V2_MESSAGE: usize = 8 + 1 + 2 + 4;

const STORED: u8 = 0;
const DEFLATE: u8 = 1;
/// miniz_oxide's default level. On batches of 100 cloud envelopes (295 bytes each, a random
/// UUIDv7 `id` apiece) it keeps 43 bytes a message (lz4: 73; level 1: 49); on Modbus readings
/// of 100 drifting values, 12 % of the bytes. Random ids are why an entropy coder beats lz4 here.
const DEFLATE_LEVEL: u8 = 6;

/// A record is closed once its messages hold this many bytes uncompressed; a group commit that
/// carries more writes several records in that lane.
pub(super) const RECORD_RAW_MAX: usize = 1 << 20;
/// At most this many messages in one record (the count is a `u16`).
pub(super) const RECORD_COUNT_MAX: usize = u16::MAX as usize;

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub accepted_ms: u64,
    pub retain: bool,
    pub topic: Arc<str>,
    pub payload: Vec<u8>,
}

impl Message {
    /// Bytes the message takes in a version 2 body, its topic counted in full (an upper bound:
    /// topics repeated in a record are stored once).
    pub fn raw_len(&self) -> usize {
        V2_MESSAGE + 2 + self.topic.len() + self.payload.len()
    }
}

/// What a stored value's header says, read without decompressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Summary {
    pub count: u16,
    pub first_accepted_ms: u64,
}

/// Why a stored value cannot be read.
pub(super) type Flaw = &'static str;

/// The header of a value of either version.
pub(super) fn summary(value: &[u8]) -> std::result::Result<Summary, Flaw> {
    match value.first() {
        Some(&V1) => {
            if value.len() < V1_HEADER {
                return Err("shorter than its header");
            }
            Ok(Summary {
                count: 1,
                first_accepted_ms: be_u64(&value[1..9])?,
            })
        }
        Some(&V2) => {
            if value.len() < V2_HEADER {
                return Err("shorter than its header");
            }
            let count = u16::from_be_bytes([value[2], value[3]]);
            if count == 0 {
                return Err("a batch of no messages");
            }
            Ok(Summary {
                count,
                first_accepted_ms: be_u64(&value[4..12])?,
            })
        }
        Some(_) => Err("unknown record version"),
        None => Err("empty"),
    }
}

fn be_u64(bytes: &[u8]) -> std::result::Result<u64, Flaw> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| "header")
}

/// A version 1 value: one message, uncompressed.
#[cfg(test)]
pub(super) fn encode_v1(message: &Message) -> Vec<u8> {
    let mut value = Vec::with_capacity(V1_HEADER + message.topic.len() + message.payload.len());
    value.push(V1);
    value.extend_from_slice(&message.accepted_ms.to_be_bytes());
    value.push(u8::from(message.retain));
    value.extend_from_slice(&(message.topic.len() as u16).to_be_bytes());
    value.extend_from_slice(message.topic.as_bytes());
    value.extend_from_slice(&message.payload);
    value
}

/// A version 2 value holding `messages` (at least one, at most [`RECORD_COUNT_MAX`]), deflated
/// when that makes it smaller.
pub(super) fn encode(messages: &[Message]) -> Result<Vec<u8>> {
    let count = u16::try_from(messages.len())
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "an outbox record holds 1 to 65535 messages, not {}",
                messages.len()
            ))
        })?;
    let mut topics: Vec<&str> = Vec::new();
    let mut body = Vec::with_capacity(messages.iter().map(Message::raw_len).sum::<usize>() + 2);
    let mut indices = Vec::with_capacity(messages.len());
    for message in messages {
        if u16::try_from(message.topic.len()).is_err() {
            return Err(Error::Invalid(format!(
                "topic longer than 65535 bytes: {:.40}…",
                message.topic
            )));
        }
        let index = match topics.iter().position(|t| *t == &*message.topic) {
            Some(i) => i,
            None => {
                topics.push(&message.topic);
                topics.len() - 1
            }
        };
        // At most one topic per message, and there are at most 65535 messages.
        indices.push(index as u16);
    }
    body.extend_from_slice(&(topics.len() as u16).to_be_bytes());
    for topic in &topics {
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
    }
    for (message, index) in messages.iter().zip(indices) {
        let payload_len = u32::try_from(message.payload.len()).map_err(|_| {
            Error::Invalid(format!(
                "payload of {} bytes on {:.40}… is too large",
                message.payload.len(),
                message.topic
            ))
        })?;
        body.extend_from_slice(&message.accepted_ms.to_be_bytes());
        body.push(u8::from(message.retain));
        body.extend_from_slice(&index.to_be_bytes());
        body.extend_from_slice(&payload_len.to_be_bytes());
        body.extend_from_slice(&message.payload);
    }
    let raw_len = u32::try_from(body.len())
        .map_err(|_| Error::Invalid("an outbox record over 4 GiB".to_owned()))?;
    let deflated = miniz_oxide::deflate::compress_to_vec(&body, DEFLATE_LEVEL);
    let (compression, block) = if deflated.len() < body.len() {
        (DEFLATE, deflated)
    } else {
        (STORED, body)
    };
    let mut value = Vec::with_capacity(V2_HEADER + block.len());
    value.push(V2);
    value.push(compression);
    value.extend_from_slice(&count.to_be_bytes());
    value.extend_from_slice(&messages[0].accepted_ms.to_be_bytes());
    value.extend_from_slice(&raw_len.to_be_bytes());
    value.extend_from_slice(&block);
    Ok(value)
}

/// Every message of a stored value of either version, in order.
pub(super) fn decode(value: &[u8]) -> std::result::Result<Vec<Message>, Flaw> {
    let summary = summary(value)?;
    if value[0] == V1 {
        let retain = value[9] & 1 == 1;
        let topic_len = usize::from(u16::from_be_bytes([value[10], value[11]]));
        let rest = &value[V1_HEADER..];
        if rest.len() < topic_len {
            return Err("topic runs past the end");
        }
        let topic = std::str::from_utf8(&rest[..topic_len]).map_err(|_| "topic is not UTF-8")?;
        return Ok(vec![Message {
            accepted_ms: summary.first_accepted_ms,
            retain,
            topic: topic.into(),
            payload: rest[topic_len..].to_vec(),
        }]);
    }
    let raw_len = u32::from_be_bytes([value[12], value[13], value[14], value[15]]) as usize;
    let block = &value[V2_HEADER..];
    let inflated;
    let body = match value[1] {
        STORED => block,
        DEFLATE => {
            // The limit keeps a damaged length from making us allocate more than it says.
            inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(block, raw_len)
                .map_err(|_| "the compressed block is damaged or truncated")?;
            &inflated
        }
        _ => return Err("unknown compression"),
    };
    if body.len() != raw_len {
        return Err("the block's length differs from its header");
    }
    let mut body = Reader(body);
    let topic_count = usize::from(body.u16()?);
    let mut topics: Vec<Arc<str>> = Vec::with_capacity(topic_count.min(usize::from(summary.count)));
    for _ in 0..topic_count {
        let len = usize::from(body.u16()?);
        let topic = std::str::from_utf8(body.take(len)?).map_err(|_| "topic is not UTF-8")?;
        topics.push(topic.into());
    }
    let mut messages = Vec::with_capacity(usize::from(summary.count));
    for _ in 0..summary.count {
        let accepted_ms = body.u64()?;
        let flags = body.u8()?;
        let topic = topics
            .get(usize::from(body.u16()?))
            .ok_or("a message names a topic the record does not have")?
            .clone();
        let len = body.u32()? as usize;
        messages.push(Message {
            accepted_ms,
            retain: flags & 1 == 1,
            topic,
            payload: body.take(len)?.to_vec(),
        });
    }
    if !body.0.is_empty() {
        return Err("bytes after the last message");
    }
    Ok(messages)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], Flaw> {
        if self.0.len() < n {
            return Err("a message runs past the end of its record");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, Flaw> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, Flaw> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> std::result::Result<u32, Flaw> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, Flaw> {
        be_u64(self.take(8)?)
    }
}
