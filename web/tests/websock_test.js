// Tests of websock.js in a real browser against websockify and a TCP echo target.
// Run by web/tests/websock.test.mjs, which starts the servers and reads window.testResult:
//   { ok, passed, failed, checks: [{ name, ok, detail }] }

import { Websock, encodeBase64, decodeBase64 } from '../websock.js';

const params = new URLSearchParams(location.search);
const ECHO = params.get('echo') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/websockify`;
const CLOSER = params.get('closer');
const UNREACHABLE = params.get('unreachable');
const MODES = {
    // undefined: Websock's default offer, which is ['binary']
    binary: { offer: undefined, expect: 'binary' },
    base64: { offer: ['base64'], expect: 'base64' },
    none: { offer: [], expect: '' },
};
const SIZES = [1, 2, 3, 125, 126, 127, 1000, 4096, 65535, 65536, 65537, 100000, 262144, 1048576];
const STEP_MS = 15000;

const checks = [];
const logEl = document.getElementById('log');

function check(name, ok, detail = '') {
    checks.push({ name, ok: Boolean(ok), detail: String(detail) });
    const li = document.createElement('li');
    li.className = ok ? 'ok' : 'fail';
    li.textContent = `${ok ? 'ok' : 'FAIL'} ${name}${detail ? ` (${detail})` : ''}`;
    logEl.append(li);
    return Boolean(ok);
}

function equal(name, actual, expected) {
    const ok = Object.is(actual, expected);
    return check(name, ok, ok ? '' : `got ${JSON.stringify(actual)}, want ${JSON.stringify(expected)}`);
}

function throws(name, fn, type) {
    try {
        fn();
        return check(name, false, 'did not throw');
    } catch (err) {
        return check(name, err instanceof type, `${err.name}: ${err.message}`);
    }
}

function randomBytes(n) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
    return out;
}

/** Index of the first difference, or -1. */
function firstDifference(a, b) {
    if (a.length !== b.length) return Math.min(a.length, b.length);
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
    return -1;
}

/** Resolves when pred() holds, checked now and after every 'message'; rejects on close or timeout. */
function until(ws, pred, what, ms = STEP_MS) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => done(new Error(`timed out waiting for ${what} (rQlen ${ws.rQlen()})`)), ms);
        const onMessage = () => {
            try {
                if (pred()) done();
            } catch (err) {
                done(err);
            }
        };
        const onClose = (e) => done(new Error(`closed (${e.code} ${e.reason}) while waiting for ${what}`));
        function done(err) {
            clearTimeout(timer);
            ws.off('message', onMessage);
            ws.off('close', onClose);
            if (err) reject(err);
            else resolve();
        }
        ws.on('message', onMessage);
        ws.on('close', onClose);
        onMessage();
    });
}

/** The next close event of `ws` (rejects after `ms`). */
function nextClose(ws, ms = STEP_MS) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('timed out waiting for close')), ms);
        ws.on('close', (e) => {
            clearTimeout(timer);
            resolve(e);
        });
    });
}

/** Opens a Websock; resolves at 'open', rejects at 'close' or timeout. */
function connect(uri, offer, beforeOpen = () => {}) {
    const ws = new Websock();
    const opened = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out opening ${uri}`)), STEP_MS);
        ws.on('open', () => {
            clearTimeout(timer);
            resolve(ws);
        });
        ws.on('close', (e) => {
            clearTimeout(timer);
            reject(new Error(`closed while opening ${uri}: ${e.code} ${e.reason}`));
        });
    });
    ws.on('error', (e) => console.warn('websock error', e && e.message ? e.message : e));
    ws.open(uri, offer);
    beforeOpen(ws);
    return opened;
}

function testBase64Helpers() {
    equal('encodeBase64([])', encodeBase64(new Uint8Array(0)), '');
    equal('encodeBase64([0xff])', encodeBase64(new Uint8Array([0xff])), '/w==');
    equal('encodeBase64("RFB")', encodeBase64(new Uint8Array([82, 70, 66])), 'UkZC');
    const big = randomBytes(100001);
    equal('decodeBase64(encodeBase64(100001 random bytes))', firstDifference(decodeBase64(encodeBase64(big)), big), -1);
    const ws = new Websock();
    equal('a new Websock is CLOSED', ws.readyState, 3);
    equal('a new Websock has an empty receive queue', ws.rQlen(), 0);
    equal('rQpeek8 on an empty queue is undefined', ws.rQpeek8(), undefined);
    throws('rQshift8 on an empty queue throws RangeError', () => ws.rQshift8(), RangeError);
    throws('send of a non-byte throws TypeError', () => ws.send([1, 256]), TypeError);
    throws('sendString of U+0100 throws RangeError', () => ws.sendString('\u0100'), RangeError);
}

async function testMode(mode) {
    const { offer, expect } = MODES[mode];
    const t = (name) => `[${mode}] ${name}`;

    // 1. Sends made before 'open' are queued and go out on open.
    const ws = await connect(ECHO, offer, (w) => {
        w.send([0x10, 0x20, 0x30]);
        equal(t('send before open is queued (sQlen)'), w.sQlen(), 3);
    });
    equal(t('server chose subprotocol'), ws.protocol, expect);
    await until(ws, () => ws.rQlen() >= 3, 'the early send to come back');
    equal(t('early send echoed'), Array.from(ws.rQshiftBytes()).join(','), '16,32,48');
    equal(t('send queue empty after open'), ws.sQlen(), 0);

    // 2. The rQ methods on a known vector.
    const vector = [0xab, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, ...Array.from('RFB 003.008\n', (c) => c.charCodeAt(0)), 1, 2, 3, 4, 5, 0x99];
    ws.send(vector);
    await until(ws, () => !ws.rQwait('vector', vector.length), 'the vector');
    equal(t('rQlen'), ws.rQlen(), vector.length);
    equal(t('rQpeek8'), ws.rQpeek8(), 0xab);
    equal(t('rQpeek8 does not consume'), ws.rQlen(), vector.length);
    equal(t('rQshift8'), ws.rQshift8(), 0xab);
    equal(t('rQshift16 (big-endian)'), ws.rQshift16(), 0x1234);
    equal(t('rQshift32 (big-endian, unsigned)'), ws.rQshift32(), 0xdeadbeef);
    equal(t('rQshiftStr(12)'), ws.rQshiftStr(12), 'RFB 003.008\n');
    equal(t('rQwait with enough bytes is false'), ws.rQwait('rest', 6), false);
    equal(t('rQpeekBytes(2)'), Array.from(ws.rQpeekBytes(2)).join(','), '1,2');
    equal(t('rQshiftBytes(5)'), Array.from(ws.rQshiftBytes(5)).join(','), '1,2,3,4,5');
    equal(t('rQwait(num=2, goback=5) is true'), ws.rQwait('more', 2, 5), true);
    equal(t('rQwait goback rewinds 5 bytes'), ws.rQlen(), 6);
    ws.rQskip(5);
    equal(t('rQskip(5) then rQshift8'), ws.rQshift8(), 0x99);
    equal(t('queue empty'), ws.rQlen(), 0);
    throws(t('rQshiftBytes past the end throws RangeError'), () => ws.rQshiftBytes(1), RangeError);
    throws(t('rQwait goback past consumed bytes throws'), () => ws.rQwait('x', 1, 1000000), RangeError);

    // 3. sendString (one byte per character) and rQshiftStr.
    const latin1 = 'Gr\u00fc\u00dfe \u00ff\u0000\u0080!';
    ws.sendString(latin1);
    await until(ws, () => ws.rQlen() >= latin1.length, 'the Latin-1 string');
    equal(t('sendString / rQshiftStr round trip'), ws.rQshiftStr(), latin1);

    // 4. A unit split across messages, parsed with rQwait(..., goback) like a protocol decoder.
    let calls = 0;
    let body = null;
    const parse = () => {
        calls++;
        if (ws.rQwait('header', 2)) return;
        const len = ws.rQshift16();
        if (ws.rQwait('body', len, 2)) return; // put the header back until the body is here
        body = ws.rQshiftStr(len);
    };
    ws.on('message', parse);
    ws.send([0x00, 0x05]);
    await until(ws, () => calls >= 1, 'the length header');
    equal(t('header alone: rQwait(goback) left it in the queue'), ws.rQlen(), 2);
    ws.sendString('hello');
    await until(ws, () => body !== null, 'the body');
    ws.off('message', parse);
    equal(t('split unit parsed after the second part'), body, 'hello');
    check(t('parser ran once per part'), calls >= 2, `${calls} calls`);

    // 5. Binary round trips of many sizes (Uint8Array, array of numbers, ArrayBuffer).
    for (const size of SIZES) {
        const data = randomBytes(size);
        let payload = data;
        let kind = 'Uint8Array';
        if (size === 1000) {
            payload = Array.from(data);
            kind = 'array';
        } else if (size === 4096) {
            payload = data.buffer;
            kind = 'ArrayBuffer';
        }
        let messages = 0;
        const count = () => messages++;
        ws.on('message', count);
        const started = performance.now();
        ws.send(payload);
        await until(ws, () => ws.rQlen() >= size, `${size} bytes back`);
        ws.off('message', count);
        const back = ws.rQshiftBytes(size);
        const diff = firstDifference(back, data);
        check(t(`round trip ${size} B (${kind})`), diff === -1 && ws.rQlen() === 0,
            diff === -1 ? `${messages} message(s), ${Math.round(performance.now() - started)} ms` : `first difference at ${diff}`);
    }

    // 6. The send queue holds data while bufferedAmount is high and flushes it later.
    ws.maxBufferedAmount = 64 * 1024;
    const chunks = [];
    for (let i = 0; i < 8; i++) chunks.push(randomBytes(256 * 1024));
    for (const c of chunks) ws.send(c);
    const queued = ws.sQlen();
    check(t('send queue holds data while bufferedAmount is high'), queued > 0, `${queued} bytes queued`);
    const total = chunks.length * 256 * 1024;
    await until(ws, () => ws.rQlen() >= total, `${total} queued bytes back`);
    const all = new Uint8Array(total);
    chunks.forEach((c, i) => all.set(c, i * c.length));
    const diff = firstDifference(ws.rQshiftBytes(total), all);
    check(t('queued sends flushed in order (2 MiB)'), diff === -1 && ws.sQlen() === 0, diff === -1 ? '' : `first difference at ${diff}`);
    ws.maxBufferedAmount = 1024 * 1024;

    // 7. Client close: websockify echoes the code and reason.
    const closing = nextClose(ws);
    ws.close(4000, 'bye');
    const e = await closing;
    equal(t('client close: code echoed'), e.code, 4000);
    equal(t('client close: reason echoed'), e.reason, 'bye');
    equal(t('client close: clean'), e.wasClean, true);

    // 8. The target closes: its last bytes arrive, then 1000 "Target closed".
    if (CLOSER) {
        const ws2 = new Websock();
        const closed2 = nextClose(ws2);
        ws2.open(CLOSER, offer);
        const e2 = await closed2;
        equal(t('target closed: its data arrived before the close'), ws2.rQshiftStr(), 'bye\n');
        equal(t('target closed: close code'), e2.code, 1000);
        equal(t('target closed: close reason'), e2.reason, 'Target closed');
    }

    // 9. The target is unreachable: 1011.
    if (UNREACHABLE) {
        const ws3 = new Websock();
        let opened = false;
        ws3.on('open', () => { opened = true; });
        const closed3 = nextClose(ws3);
        ws3.open(UNREACHABLE, offer);
        const e3 = await closed3;
        check(t('unreachable target: the WebSocket opened first'), opened);
        equal(t('unreachable target: close code'), e3.code, 1011);
        check(t('unreachable target: close reason'), /connect/i.test(e3.reason), e3.reason);
    }
}

async function run() {
    try {
        testBase64Helpers();
    } catch (err) {
        check('base64 helpers', false, err.message);
    }
    const modes = (params.get('modes') || 'binary,base64,none').split(',');
    for (const mode of modes) {
        if (!MODES[mode]) {
            check(`mode ${mode}`, false, 'unknown mode');
            continue;
        }
        try {
            await testMode(mode);
        } catch (err) {
            check(`[${mode}] ran to the end`, false, err.message);
        }
    }
    const failed = checks.filter((c) => !c.ok).length;
    const ok = checks.length > 0 && failed === 0;
    const summary = document.getElementById('summary');
    summary.textContent = `${ok ? 'PASSED' : 'FAILED'}: ${checks.length - failed} of ${checks.length} checks`;
    summary.className = ok ? 'ok' : 'fail';
    window.testResult = { ok, passed: checks.length - failed, failed, checks };
}

run();
