// websock.js: a byte stream over a WebSocket, for talking to a TCP service through websockify.
//
// A dependency-free ES module. The browser's WebSocket delivers messages; a TCP service speaks a
// byte stream whose message boundaries mean nothing. Websock turns the one into the other: every
// received message is appended to a receive queue that the application reads with the rQ*
// methods, and everything sent goes through a send queue that is flushed as the socket allows.
//
//     import { Websock } from './websock.js';
//     const ws = new Websock();
//     ws.on('open', () => ws.send([0x52, 0x46, 0x42]));
//     ws.on('message', () => {
//         if (ws.rQwait('version', 12)) return;      // not all there yet: wait for more
//         const version = ws.rQshiftStr(12);
//     });
//     ws.on('close', (e) => console.log('closed', e.code, e.reason));
//     ws.open('ws://localhost:6080/websockify');      // offers the 'binary' subprotocol
//
// Connection
//   new Websock()                  An idle object; handlers may be added before open().
//   open(uri, protocols)           Connects. `protocols` is a string or an array of subprotocol
//                                  names; left out it is ['binary']. Pass [] to offer none.
//                                  Whatever the server picks decides the framing:
//                                    'binary' or none: binary frames, raw bytes;
//                                    'base64': text frames holding base64, in both directions
//                                    (the legacy websockify protocol).
//                                  A text message in binary mode is taken as UTF-8 bytes.
//                                  Opening a Websock that is not CLOSED throws; opening a closed
//                                  one again starts with empty queues.
//   close(code, reason)            Closes (code and reason are optional, as for WebSocket).
//   protocol                       The subprotocol the server chose ('' for none).
//   readyState                     WebSocket.CONNECTING/OPEN/CLOSING/CLOSED, or CLOSED if never
//                                  opened.
//
// Events: on(event, handler) adds a handler, off(event, handler) removes it.
//   'open'     handler()           The connection is up; queued sends are flushed now.
//   'message'  handler(count)      `count` new bytes were appended to the receive queue. The
//                                  event carries no data: read it with the rQ* methods. Bytes
//                                  left in the queue stay there for the next message.
//   'close'    handler(event)      The CloseEvent: event.code, event.reason, event.wasClean.
//   'error'    handler(error)      A socket error (always followed by 'close') or an exception
//                                  thrown by a 'message' handler or by undecodable base64.
//
// Receive queue (all multi-byte numbers are big-endian, network order)
//   rQlen()                        Bytes waiting to be read.
//   rQpeek8()                      The next byte without consuming it (undefined if empty).
//   rQshift8() / rQshift16() / rQshift32()
//                                  Consume an unsigned 8/16/32-bit number.
//   rQshiftStr(len)                Consume `len` bytes (default: all) as a string with one
//                                  character per byte (Latin-1), e.g. "RFB 003.008\n".
//   rQshiftBytes(len)              Consume `len` bytes (default: all) as a new Uint8Array.
//   rQpeekBytes(len)               The next `len` bytes (default: all) without consuming them.
//   rQskip(len)                    Consume and drop `len` bytes.
//   rQwait(msg, num, goback)       True when fewer than `num` bytes are waiting, so the caller
//                                  should return and wait for the next 'message'. With
//                                  `goback`, the read position first moves back that many bytes
//                                  (bytes this handler already consumed), so the caller can
//                                  parse the whole unit again later. `msg` names the wait in
//                                  the error thrown if `goback` reaches before the queue.
//   Reading past the end of the queue throws a RangeError; consumed bytes are never returned.
//
// Send queue
//   send(bytes)                    Queue a Uint8Array, ArrayBuffer, typed array or array of
//                                  numbers 0..255, then flush.
//   sendString(str)                Queue a string, one byte per character (Latin-1; characters
//                                  above U+00FF are an error), then flush.
//   flush()                        Send what is queued as one message if the socket is open and
//                                  its bufferedAmount is below `maxBufferedAmount` (default
//                                  1 MiB); otherwise retry shortly. Returns true when the queue
//                                  is empty afterwards. Sends made before 'open' go out on open.
//   sQlen()                        Bytes queued and not yet handed to the WebSocket.
//
// Helpers: encodeBase64(bytes) and decodeBase64(text) are exported as well.

const DEFAULT_PROTOCOLS = ['binary'];
const INITIAL_CAPACITY = 64 * 1024;
const FLUSH_RETRY_MS = 10;
const CLOSED = 3; // WebSocket.CLOSED, without needing the global in tests.

/** A growable byte buffer with a read position (the receive queue) or none (the send queue). */
class ByteQueue {
    constructor() {
        this.buf = new Uint8Array(INITIAL_CAPACITY);
        this.start = 0; // read position
        this.end = 0; // write position
    }

    get length() {
        return this.end - this.start;
    }

    /** Makes room for `n` more bytes, moving unread bytes to the front when that is enough. */
    reserve(n) {
        if (this.end + n <= this.buf.length) return;
        const unread = this.length;
        if (unread + n <= this.buf.length && this.start > 0) {
            this.buf.copyWithin(0, this.start, this.end);
        } else {
            let size = this.buf.length;
            while (size < unread + n) size *= 2;
            const grown = new Uint8Array(size);
            grown.set(this.buf.subarray(this.start, this.end));
            this.buf = grown;
        }
        this.start = 0;
        this.end = unread;
    }

    push(bytes) {
        this.reserve(bytes.length);
        this.buf.set(bytes, this.end);
        this.end += bytes.length;
    }

    /** Forgets consumed bytes when nothing is unread, so the buffer is reused from the start. */
    compactIfEmpty() {
        if (this.start === this.end) {
            this.start = 0;
            this.end = 0;
        }
    }

    /** Checks that `n` unread bytes exist. */
    need(n, what) {
        if (!Number.isInteger(n) || n < 0) {
            throw new RangeError(`${what}: bad length ${n}`);
        }
        if (n > this.length) {
            throw new RangeError(`${what}: wanted ${n} bytes, ${this.length} in the receive queue`);
        }
    }
}

/** Converts what send() accepts into a Uint8Array (no copy for a Uint8Array). */
function toBytes(data) {
    if (data instanceof Uint8Array) return data;
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) {
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    }
    if (Array.isArray(data)) {
        const out = new Uint8Array(data.length);
        for (let i = 0; i < data.length; i++) {
            const v = data[i];
            if (!Number.isInteger(v) || v < 0 || v > 255) {
                throw new TypeError(`send: element ${i} is ${v}, not a byte`);
            }
            out[i] = v;
        }
        return out;
    }
    throw new TypeError('send: expected a Uint8Array, ArrayBuffer, typed array or array of bytes');
}

/** base64 of a byte array. */
export function encodeBase64(bytes) {
    // btoa takes a "binary string"; build it in slices to stay under argument-count limits.
    const parts = [];
    const step = 0x8000;
    for (let i = 0; i < bytes.length; i += step) {
        parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + step)));
    }
    return btoa(parts.join(''));
}

/** Bytes of a base64 string (throws on characters outside the alphabet). */
export function decodeBase64(text) {
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
}

/** A WebSocket carrying a byte stream, with receive and send queues. */
export class Websock {
    constructor() {
        this._ws = null;
        this._rQ = new ByteQueue();
        this._sQ = new ByteQueue();
        this._handlers = { open: [], message: [], close: [], error: [] };
        this._base64 = false;
        this._b64carry = ''; // base64 characters of an incomplete 4-character group
        this._flushTimer = null;
        this._utf8 = new TextEncoder();
        /** Flushing waits while the WebSocket holds more than this many unsent bytes. */
        this.maxBufferedAmount = 1024 * 1024;
    }

    // ---- events ----

    on(event, handler) {
        const list = this._handlers[event];
        if (!list) throw new Error(`Websock: unknown event '${event}'`);
        if (typeof handler !== 'function') throw new TypeError('Websock.on: handler must be a function');
        list.push(handler);
        return this;
    }

    off(event, handler) {
        const list = this._handlers[event];
        if (!list) return this;
        const i = list.indexOf(handler);
        if (i >= 0) list.splice(i, 1);
        return this;
    }

    _emit(event, arg) {
        for (const handler of this._handlers[event].slice()) handler(arg);
    }

    _fail(error) {
        if (this._handlers.error.length === 0) {
            console.error('Websock:', error);
            return;
        }
        this._emit('error', error);
    }

    // ---- connection ----

    get protocol() {
        return this._ws ? this._ws.protocol : '';
    }

    get readyState() {
        return this._ws ? this._ws.readyState : CLOSED;
    }

    open(uri, protocols) {
        if (this._ws && this._ws.readyState < CLOSED) {
            throw new Error('Websock.open: already open');
        }
        this._reset();
        const offered = protocols === undefined ? DEFAULT_PROTOCOLS : protocols;
        const ws = new WebSocket(uri, offered);
        ws.binaryType = 'arraybuffer';
        this._ws = ws;
        ws.onopen = () => {
            if (this._ws !== ws) return;
            this._base64 = ws.protocol === 'base64';
            this._emit('open');
            this.flush();
        };
        ws.onmessage = (e) => {
            if (this._ws !== ws) return;
            this._receive(e.data);
        };
        ws.onerror = (e) => {
            if (this._ws !== ws) return;
            this._fail(e);
        };
        ws.onclose = (e) => {
            if (this._ws !== ws) return;
            this._stopFlushTimer();
            this._emit('close', e);
        };
    }

    close(code, reason) {
        if (!this._ws) return;
        this._stopFlushTimer();
        if (this._ws.readyState < 2 /* CLOSING */) {
            if (code === undefined) this._ws.close();
            else this._ws.close(code, reason);
        }
    }

    _reset() {
        this._stopFlushTimer();
        this._rQ = new ByteQueue();
        this._sQ = new ByteQueue();
        this._base64 = false;
        this._b64carry = '';
    }

    _receive(data) {
        let bytes;
        if (typeof data === 'string') {
            if (this._base64) {
                // Decode whole 4-character groups; keep a trailing partial group for the next
                // message, so a sender that splits base64 anywhere is still understood.
                const text = this._b64carry + data;
                const whole = text.length - (text.length % 4);
                this._b64carry = text.slice(whole);
                try {
                    bytes = decodeBase64(text.slice(0, whole));
                } catch (err) {
                    this._fail(new Error(`Websock: bad base64 from the server (${err.message})`));
                    return;
                }
            } else {
                bytes = this._utf8.encode(data);
            }
        } else {
            bytes = new Uint8Array(data);
        }
        if (bytes.length === 0) return;
        this._rQ.compactIfEmpty();
        this._rQ.push(bytes);
        try {
            this._emit('message', bytes.length);
        } catch (err) {
            this._fail(err);
        }
    }

    // ---- receive queue ----

    rQlen() {
        return this._rQ.length;
    }

    rQpeek8() {
        const q = this._rQ;
        return q.length > 0 ? q.buf[q.start] : undefined;
    }

    rQshift8() {
        const q = this._rQ;
        q.need(1, 'rQshift8');
        return q.buf[q.start++];
    }

    rQshift16() {
        const q = this._rQ;
        q.need(2, 'rQshift16');
        const b = q.buf;
        const s = q.start;
        q.start += 2;
        return (b[s] << 8) | b[s + 1];
    }

    rQshift32() {
        const q = this._rQ;
        q.need(4, 'rQshift32');
        const b = q.buf;
        const s = q.start;
        q.start += 4;
        // Multiplication instead of << 24 keeps the result unsigned.
        return b[s] * 0x1000000 + ((b[s + 1] << 16) | (b[s + 2] << 8) | b[s + 3]);
    }

    rQshiftStr(len) {
        const bytes = this._take(len, 'rQshiftStr');
        const parts = [];
        const step = 0x8000;
        for (let i = 0; i < bytes.length; i += step) {
            parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + step)));
        }
        return parts.join('');
    }

    rQshiftBytes(len) {
        return this._take(len, 'rQshiftBytes').slice();
    }

    rQpeekBytes(len) {
        const q = this._rQ;
        const n = len === undefined ? q.length : len;
        q.need(n, 'rQpeekBytes');
        return q.buf.slice(q.start, q.start + n);
    }

    rQskip(len) {
        this._take(len, 'rQskip');
    }

    rQwait(msg, num, goback) {
        const q = this._rQ;
        if (q.length >= num) return false;
        if (goback) {
            if (goback > q.start) {
                throw new RangeError(`rQwait(${msg}): cannot go back ${goback} bytes, only ${q.start} consumed`);
            }
            q.start -= goback;
        }
        return true;
    }

    /** Consumes `len` bytes (all when undefined) and returns a view of them (valid until the next receive). */
    _take(len, what) {
        const q = this._rQ;
        const n = len === undefined ? q.length : len;
        q.need(n, what);
        const view = q.buf.subarray(q.start, q.start + n);
        q.start += n;
        return view;
    }

    // ---- send queue ----

    sQlen() {
        return this._sQ.length;
    }

    send(data) {
        this._sQ.push(toBytes(data));
        return this.flush();
    }

    sendString(str) {
        const bytes = new Uint8Array(str.length);
        for (let i = 0; i < str.length; i++) {
            const c = str.charCodeAt(i);
            if (c > 0xff) throw new RangeError(`sendString: character ${i} (U+${c.toString(16)}) is not a byte`);
            bytes[i] = c;
        }
        return this.send(bytes);
    }

    flush() {
        const q = this._sQ;
        if (q.length === 0) return true;
        const ws = this._ws;
        if (!ws || ws.readyState !== 1 /* OPEN */) return false; // sent on 'open'
        if (ws.bufferedAmount >= this.maxBufferedAmount) {
            // WebSocket has no "drained" event; look again shortly.
            if (this._flushTimer === null) {
                this._flushTimer = setTimeout(() => {
                    this._flushTimer = null;
                    this.flush();
                }, FLUSH_RETRY_MS);
            }
            return false;
        }
        const bytes = q.buf.subarray(q.start, q.end);
        if (this._base64) {
            ws.send(encodeBase64(bytes));
        } else {
            ws.send(bytes); // the browser copies the bytes at once
        }
        q.start = 0;
        q.end = 0;
        return true;
    }

    _stopFlushTimer() {
        if (this._flushTimer !== null) {
            clearTimeout(this._flushTimer);
            this._flushTimer = null;
        }
    }
}

export default Websock;
