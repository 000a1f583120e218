//! The WebSocket frame codec (RFC 6455 section 5), written for streaming.
//!
//! The decoder never buffers a data payload: it reports each data frame's payload as ranges of
//! the caller's input, unmasked in place, as soon as the bytes arrive. A frame that declares
//! 2^40 bytes therefore flows through in the caller's fixed buffer. Control frames (at most
//! 125 bytes by the RFC) are collected inside the decoder, in a buffer allocated only for a
//! non-empty payload and freed at the next frame, so an idle session's decoder holds none.
//!
//! Why not tungstenite: it reassembles whole messages and checks a maximum message size
//! before delivering anything, so a large frame either costs its full length in memory or is
//! refused. The proxy only needs the bytes, in order, so it streams them instead.

/// Close codes sent by the proxy.
pub mod close_code {
    /// Normal closure (target closed).
    pub const NORMAL: u16 = 1000;
    /// Going away (server shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (text frames in binary mode).
    pub const UNSUPPORTED: u16 = 1003;
    /// No close frame arrived (only logged, never sent).
    pub const ABNORMAL: u16 = 1006;
    /// Invalid payload data (bad UTF-8 in a close reason).
    pub const INVALID_DATA: u16 = 1007;
    /// Internal error (target unreachable, target failed).
    pub const INTERNAL: u16 = 1011;
}

/// Largest server frame header: 2 bytes, plus 8 for a 64-bit length (servers never mask).
pub const MAX_SERVER_HEADER: usize = 10;

/// The close frame of the Hixie drafts, both ways (`--hixie`; the `hixie` module speaks the drafts).
pub const HIXIE_CLOSE: [u8; 2] = [0xff, 0x00];

/// Frame opcodes.
mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The kind of a data message: binary, or text (base64 in the legacy mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Binary,
    Text,
}

/// What a client did wrong; turned into a close frame with `code` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct ProtocolError {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: close_code::PROTOCOL,
        reason,
    }
}

/// One thing the decoder found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Unmasked payload bytes of a data frame, at `start..end` of the input slice.
    /// `message_end` is set on the last chunk of the last frame of a message.
    Data {
        start: usize,
        end: usize,
        kind: DataKind,
        message_end: bool,
    },
    /// A complete ping; its payload is [`Decoder::control_payload`].
    Ping,
    /// A complete pong.
    Pong,
    /// A complete, valid close frame. `code` is `None` for an empty payload.
    Close { code: Option<u16> },
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a frame header (up to 14 bytes) in `header`.
    Header,
    /// Inside a payload.
    Payload {
        remaining: u64,
        mask: [u8; 4],
        /// Payload bytes already unmasked, modulo 4 (where the mask key continues).
        phase: usize,
        frame: FrameType,
        fin: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameType {
    Data(DataKind),
    Close,
    Ping,
    Pong,
}

/// Incremental decoder of client-to-server frames.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    header: [u8; 14],
    header_len: usize,
    /// Kind of the fragmented message in progress, if any.
    message: Option<DataKind>,
    /// Payload of the control frame being read, at most 125 bytes. Allocated only for a
    /// payload (our pings are empty, so are the pongs answering them) and freed at the next
    /// frame: an idle session keeps no room for one.
    control: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            state: State::Header,
            header: [0; 14],
            header_len: 0,
            message: None,
            control: Vec::new(),
        }
    }

    /// Payload of the last complete control frame (ping, pong or close).
    pub fn control_payload(&self) -> &[u8] {
        &self.control
    }

    /// The close reason of the last close frame (valid UTF-8, checked when it was decoded).
    pub fn close_reason(&self) -> &str {
        self.control_payload()
            .get(2..)
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("")
    }

    /// Inside a data frame's payload: how many of its payload bytes are still to come.
    pub fn data_remaining(&self) -> Option<u64> {
        match self.state {
            State::Payload {
                frame: FrameType::Data(_),
                remaining,
                ..
            } if remaining > 0 => Some(remaining),
            _ => None,
        }
    }

    /// Decodes from `input[*pos..]`, advancing `*pos`, and returns the next event, or `None`
    /// when the input is used up. Data payloads are unmasked in place inside `input`.
    pub fn next(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, ProtocolError> {
        loop {
            match self.state {
                State::Header => {
                    if !self.fill_header(input, pos)? {
                        return Ok(None);
                    }
                    if let Some(event) = self.finish_empty_frame(*pos) {
                        return Ok(Some(event?));
                    }
                }
                State::Payload {
                    remaining,
                    mask,
                    phase,
                    frame,
                    fin,
                } => {
                    let available = input.len() - *pos;
                    if available == 0 {
                        return Ok(None);
                    }
                    let take = remaining.min(available as u64) as usize;
                    let start = *pos;
                    let end = start + take;
                    unmask(&mut input[start..end], mask, phase);
                    *pos = end;
                    let remaining = remaining - take as u64;
                    let done = remaining == 0;
                    self.state = if done {
                        State::Header
                    } else {
                        State::Payload {
                            remaining,
                            mask,
                            phase: (phase + take) % 4,
                            frame,
                            fin,
                        }
                    };
                    match frame {
                        FrameType::Data(kind) => {
                            let message_end = done && fin;
                            if message_end {
                                self.message = None;
                            }
                            return Ok(Some(Event::Data {
                                start,
                                end,
                                kind,
                                message_end,
                            }));
                        }
                        _ => {
                            self.control.extend_from_slice(&input[start..end]);
                            if done {
                                return self.control_event(frame).map(Some);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Gathers header bytes; returns true when a complete, valid header moved us to `Payload`.
    fn fill_header(&mut self, input: &[u8], pos: &mut usize) -> Result<bool, ProtocolError> {
        loop {
            let needed = self.header_needed()?;
            if self.header_len >= needed {
                break;
            }
            let Some(&byte) = input.get(*pos) else {
                return Ok(false);
            };
            self.header[self.header_len] = byte;
            self.header_len += 1;
            *pos += 1;
        }
        let b0 = self.header[0];
        let b1 = self.header[1];
        let fin = b0 & 0x80 != 0;
        let (length, ext) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                2,
            ),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                let length = u64::from_be_bytes(bytes);
                if length >> 63 != 0 {
                    return Err(protocol("Protocol error: Frame length has the top bit set"));
                }
                (length, 8)
            }
            small => (small as u64, 0),
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.header[2 + ext..6 + ext]);
        let frame = self.frame_type(b0 & 0x0f, fin)?;
        self.header_len = 0;
        // Frees the last control payload, if there was one.
        self.control = Vec::new();
        self.state = State::Payload {
            remaining: length,
            mask,
            phase: 0,
            frame,
            fin,
        };
        Ok(true)
    }

    /// How many header bytes this frame has, validating the first two as soon as they arrive.
    fn header_needed(&self) -> Result<usize, ProtocolError> {
        if self.header_len < 2 {
            return Ok(2);
        }
        let b0 = self.header[0];
        let b1 = self.header[1];
        if b0 & 0x70 != 0 {
            return Err(protocol("Protocol error: Reserved bits set"));
        }
        let op = b0 & 0x0f;
        let is_control = op & 0x08 != 0;
        if !matches!(
            op,
            opcode::CONTINUATION
                | opcode::TEXT
                | opcode::BINARY
                | opcode::CLOSE
                | opcode::PING
                | opcode::PONG
        ) {
            return Err(protocol("Protocol error: Unknown opcode"));
        }
        if is_control && b0 & 0x80 == 0 {
            return Err(protocol("Protocol error: Fragmented control frame"));
        }
        if is_control && b1 & 0x7f > 125 {
            return Err(protocol(
                "Protocol error: Control frame larger than 125 bytes",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(protocol("Protocol error: Frame not masked"));
        }
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Ok(2 + ext + 4)
    }

    fn frame_type(&mut self, op: u8, fin: bool) -> Result<FrameType, ProtocolError> {
        let kind = match op {
            opcode::CLOSE => return Ok(FrameType::Close),
            opcode::PING => return Ok(FrameType::Ping),
            opcode::PONG => return Ok(FrameType::Pong),
            opcode::CONTINUATION => {
                return match self.message {
                    Some(kind) => Ok(FrameType::Data(kind)),
                    None => Err(protocol("Protocol error: Unexpected continuation frame")),
                };
            }
            opcode::TEXT => DataKind::Text,
            _ => DataKind::Binary,
        };
        if self.message.is_some() {
            return Err(protocol("Protocol error: Unexpected new frame"));
        }
        if !fin {
            self.message = Some(kind);
        }
        Ok(FrameType::Data(kind))
    }

    /// A frame with an empty payload is complete as soon as its header is.
    /// A frame with an empty payload is complete with its header; `pos` is where it ended
    /// (an empty data event is placed there, like every other data event).
    fn finish_empty_frame(&mut self, pos: usize) -> Option<Result<Event, ProtocolError>> {
        let State::Payload {
            remaining: 0,
            frame,
            fin,
            ..
        } = self.state
        else {
            return None;
        };
        self.state = State::Header;
        Some(match frame {
            FrameType::Data(kind) => {
                if fin {
                    self.message = None;
                }
                Ok(Event::Data {
                    start: pos,
                    end: pos,
                    kind,
                    message_end: fin,
                })
            }
            control => self.control_event(control),
        })
    }

    fn control_event(&self, frame: FrameType) -> Result<Event, ProtocolError> {
        match frame {
            FrameType::Ping => Ok(Event::Ping),
            FrameType::Pong => Ok(Event::Pong),
            _ => self.close_event(),
        }
    }

    fn close_event(&self) -> Result<Event, ProtocolError> {
        let payload = self.control_payload();
        match payload {
            [] => Ok(Event::Close { code: None }),
            [_] => Err(protocol(
                "Protocol error: Close frame with a 1-byte payload",
            )),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !valid_close_code(code) {
                    return Err(protocol("Protocol error: Invalid close code"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(ProtocolError {
                        code: close_code::INVALID_DATA,
                        reason: "Invalid UTF-8 in close reason",
                    });
                }
                Ok(Event::Close { code: Some(code) })
            }
        }
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the mask key, starting at key position `phase`.
pub fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(phase + i) % 4];
    }
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// The opcode of a server data frame.
pub fn data_opcode(kind: DataKind) -> u8 {
    match kind {
        DataKind::Binary => opcode::BINARY,
        DataKind::Text => opcode::TEXT,
    }
}

/// Writes an unmasked, final frame header for `len` payload bytes into the end of `dst` and
/// returns how many bytes it used (2, 4 or 10).
pub fn write_header(dst: &mut [u8; MAX_SERVER_HEADER], op: u8, len: usize) -> usize {
    let b0 = 0x80 | op;
    if len < 126 {
        dst[8] = b0;
        dst[9] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        dst[6] = b0;
        dst[7] = 126;
        dst[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        dst[0] = b0;
        dst[1] = 127;
        dst[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A complete control frame from the server (ping, pong or close), at most 127 bytes.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; 2 + 125],
    len: u8,
}

impl ControlFrame {
    fn new(op: u8, payload: &[u8]) -> Self {
        let payload = &payload[..payload.len().min(125)];
        let mut bytes = [0u8; 127];
        bytes[0] = 0x80 | op;
        bytes[1] = payload.len() as u8;
        bytes[2..2 + payload.len()].copy_from_slice(payload);
        ControlFrame {
            bytes,
            len: (2 + payload.len()) as u8,
        }
    }

    /// A ping with this payload.
    pub fn ping(payload: &[u8]) -> Self {
        Self::new(opcode::PING, payload)
    }

    /// A pong echoing this ping payload.
    pub fn pong(payload: &[u8]) -> Self {
        Self::new(opcode::PONG, payload)
    }

    /// A close frame; `None` sends an empty payload. The reason is cut to fit 123 bytes
    /// on a character boundary.
    pub fn close(code: Option<u16>, reason: &str) -> Self {
        let Some(code) = code else {
            return Self::new(opcode::CLOSE, &[]);
        };
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
        Self::new(opcode::CLOSE, &payload[..2 + cut])
    }

    /// The close frame of the Hixie drafts, `0xFF 0x00` (`--hixie`).
    pub fn hixie_close() -> Self {
        let mut bytes = [0u8; 127];
        bytes[..2].copy_from_slice(&HIXIE_CLOSE);
        ControlFrame { bytes, len: 2 }
    }

    /// The encoded frame.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlFrame({:02x?})", self.as_bytes())
    }
}

/// Encodes a masked client frame (for the codec's and the relay's tests).
#[cfg(test)]
pub(crate) fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `step` bytes and collects data bytes and events.
    fn decode_all(input: &[u8], step: usize) -> (Vec<u8>, Vec<Event>, Option<ProtocolError>) {
        let mut decoder = Decoder::new();
        let mut data = Vec::new();
        let mut events = Vec::new();
        for chunk in input.chunks(step) {
            let mut chunk = chunk.to_vec();
            let mut pos = 0;
            loop {
                match decoder.next(&mut chunk, &mut pos) {
                    Ok(Some(Event::Data {
                        start,
                        end,
                        kind,
                        message_end,
                    })) => {
                        data.extend_from_slice(&chunk[start..end]);
                        if message_end {
                            events.push(Event::Data {
                                start: 0,
                                end: 0,
                                kind,
                                message_end,
                            });
                        }
                    }
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(err) => return (data, events, Some(err)),
                }
            }
        }
        (data, events, None)
    }

    #[test]
    fn decodes_binary_frames_of_every_length_class_in_any_chunking() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let frame = client_frame(0x82, &payload, [1, 2, 3, 4]);
            for step in [1, 3, 7, 4096, frame.len()] {
                let (data, events, err) = decode_all(&frame, step);
                assert_eq!(err, None);
                assert_eq!(data, payload, "len {len} step {step}");
                assert_eq!(events.len(), 1);
            }
        }
    }

    #[test]
    fn streams_fragmented_messages_and_interleaved_pings() {
        let mut input = client_frame(0x02, b"hello ", [9, 8, 7, 6]);
        input.extend(client_frame(0x89, b"ping!", [1, 1, 1, 1]));
        input.extend(client_frame(0x80, b"world", [5, 5, 5, 5]));
        let (data, events, err) = decode_all(&input, 5);
        assert_eq!(err, None);
        assert_eq!(data, b"hello world");
        assert_eq!(events[0], Event::Ping);
        assert!(matches!(
            events[1],
            Event::Data {
                message_end: true,
                ..
            }
        ));
    }

    #[test]
    fn a_control_payload_is_held_only_until_the_next_frame() {
        let mut decoder = Decoder::new();
        let mut next = |bytes: Vec<u8>| {
            let (mut input, mut pos) = (bytes, 0);
            let event = decoder.next(&mut input, &mut pos);
            (
                event,
                decoder.control.capacity(),
                decoder.control_payload().to_vec(),
            )
        };
        // An empty pong (the answer to our heartbeat ping) allocates nothing.
        let (event, capacity, _) = next(client_frame(0x8a, b"", [1, 2, 3, 4]));
        assert_eq!(event, Ok(Some(Event::Pong)));
        assert_eq!(capacity, 0);
        // A ping's payload is there for the pong...
        let (event, capacity, payload) = next(client_frame(0x89, b"are you there", [4, 3, 2, 1]));
        assert_eq!(event, Ok(Some(Event::Ping)));
        assert!(capacity > 0);
        assert_eq!(payload, b"are you there");
        // ...and freed by the next frame's header.
        let (event, capacity, _) = next(client_frame(0x82, b"x", [7, 7, 7, 7]));
        assert!(matches!(event, Ok(Some(Event::Data { .. }))));
        assert_eq!(capacity, 0);
    }

    #[test]
    fn rejects_what_rfc_6455_forbids() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(0xC2, b"x", [0; 4]), 1002),             // RSV1
            (client_frame(0x83, b"x", [0; 4]), 1002),             // reserved opcode
            (client_frame(0x09, b"x", [0; 4]), 1002),             // fragmented ping
            (client_frame(0x89, &[0; 126], [0; 4]), 1002),        // control > 125
            (vec![0x82, 0x01, b'x'], 1002),                       // not masked
            (client_frame(0x80, b"x", [0; 4]), 1002),             // continuation without start
            (client_frame(0x88, &[3], [0; 4]), 1002),             // 1-byte close
            (client_frame(0x88, &[3, 0xed], [0; 4]), 1002),       // close code 1005
            (client_frame(0x88, &[3, 0xe8, 0xff], [0; 4]), 1007), // bad UTF-8 reason
        ];
        for (input, code) in cases {
            let (_, _, err) = decode_all(&input, 1);
            assert_eq!(err.map(|e| e.code), Some(code), "{input:02x?}");
        }
        let mut top_bit = vec![0x82, 0xff];
        top_bit.extend_from_slice(&(1u64 << 63).to_be_bytes());
        top_bit.extend_from_slice(&[0; 4]);
        assert_eq!(decode_all(&top_bit, 2).2.map(|e| e.code), Some(1002));
        let mut two_starts = client_frame(0x02, b"a", [0; 4]);
        two_starts.extend(client_frame(0x82, b"b", [0; 4]));
        assert_eq!(decode_all(&two_starts, 100).2.map(|e| e.code), Some(1002));
    }

    #[test]
    fn huge_declared_length_is_streamed_without_allocation() {
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[0xaa; 4]);
        let mut decoder = Decoder::new();
        let mut pos = 0;
        assert_eq!(decoder.next(&mut header, &mut pos), Ok(None));
        let mut chunk = vec![0xaa; 1 << 16];
        let mut pos = 0;
        let event = decoder.next(&mut chunk, &mut pos).unwrap();
        assert!(matches!(
            event,
            Some(Event::Data {
                start: 0,
                end: 65536,
                message_end: false,
                ..
            })
        ));
        assert!(chunk.iter().all(|&b| b == 0));
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let (_, events, err) = decode_all(&client_frame(0x88, b"\x0f\xa0bye", [3; 4]), 2);
        assert_eq!(err, None);
        assert_eq!(events, vec![Event::Close { code: Some(4000) }]);
        let frame = ControlFrame::close(Some(1000), "Target closed");
        assert_eq!(frame.as_bytes(), b"\x88\x0f\x03\xe8Target closed");
        assert_eq!(ControlFrame::close(None, "").as_bytes(), b"\x88\x00");
        let long = "é".repeat(100);
        assert!(ControlFrame::close(Some(1000), &long).as_bytes().len() <= 127);
    }

    #[test]
    fn unmask_matches_bytewise_xor_at_every_phase() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for phase in 0..4 {
            for len in 0..40 {
                let original: Vec<u8> = (0..len as u8).collect();
                let mut fast = original.clone();
                unmask(&mut fast, mask, phase);
                let slow: Vec<u8> = original
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + phase) % 4])
                    .collect();
                assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        let mut head = [0u8; MAX_SERVER_HEADER];
        assert_eq!(write_header(&mut head, 2, 5), 2);
        assert_eq!(&head[8..], &[0x82, 5]);
        assert_eq!(write_header(&mut head, 2, 300), 4);
        assert_eq!(&head[6..], &[0x82, 126, 1, 44]);
        assert_eq!(write_header(&mut head, 1, 70000), 10);
        assert_eq!(&head[..2], &[0x81, 127]);
    }

    /// A tiny deterministic generator, so the randomized tests need no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    #[test]
    fn random_valid_streams_decode_to_their_payloads_in_any_chunking() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let fragments = 1 + rng.below(3);
                for f in 0..fragments {
                    let len = match rng.below(4) {
                        0 => rng.below(126),
                        1 => 126 + rng.below(1000),
                        _ => rng.below(20),
                    };
                    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let op = if f == 0 { 0x2 } else { 0x0 };
                    let fin = if f + 1 == fragments { 0x80 } else { 0 };
                    let mask = (rng.next() as u32).to_be_bytes();
                    input.extend(client_frame(fin | op, &payload, mask));
                    expected.extend_from_slice(&payload);
                    if rng.below(3) == 0 {
                        let ping: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
                        input.extend(client_frame(0x89, &ping, mask));
                    }
                }
            }
            let step = 1 + rng.below(300);
            let (data, _, err) = decode_all(&input, step);
            assert_eq!(err, None);
            assert_eq!(data, expected);
        }
    }

    /// Found by fuzzing (fuzz/ frame_binary): an empty data frame was reported at `0..0`
    /// instead of where it ended in the input.
    #[test]
    fn empty_data_frames_are_reported_where_they_end() {
        let mut input = client_frame(0x82, b"abc", [1, 2, 3, 4]);
        input.extend(client_frame(0x82, b"", [5, 6, 7, 8]));
        let mut decoder = Decoder::new();
        let mut pos = 0;
        let first = decoder.next(&mut input, &mut pos).expect("valid");
        assert!(matches!(
            first,
            Some(Event::Data {
                start: 6,
                end: 9,
                ..
            })
        ));
        let second = decoder.next(&mut input, &mut pos).expect("valid");
        assert_eq!(
            second,
            Some(Event::Data {
                start: 15,
                end: 15,
                kind: DataKind::Binary,
                message_end: true
            })
        );
        assert_eq!(pos, 15);
        assert_eq!(decoder.next(&mut input, &mut pos), Ok(None));
    }

    #[test]
    fn random_garbage_never_panics_or_overreads() {
        let mut rng = Rng(12345);
        for _ in 0..20000 {
            let len = rng.below(64);
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut decoder = Decoder::new();
            let mut pos = 0;
            while let Ok(Some(event)) = decoder.next(&mut input, &mut pos) {
                if let Event::Data { start, end, .. } = event {
                    assert!(start <= end && end <= input.len());
                }
            }
            assert!(pos <= input.len());
        }
    }
}
