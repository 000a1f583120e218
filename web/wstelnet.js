// wstelnet.js: a telnet client in the browser, talking to a telnet server through websockify.
//
// Three parts, bottom up:
//   Terminal  an 80x24 character screen with scrollback, fed with text; understands CR, LF,
//             backspace, tab and the common ANSI/VT100 escape sequences (cursor movement,
//             erase, insert/delete); colours and modes are accepted and ignored.
//   Telnet    splits the byte stream from the server into data and telnet commands (IAC ...),
//             and answers option negotiation: it lets the server echo and suppress go-ahead,
//             offers its terminal type (VT100) and window size, and refuses everything else.
//   the page  the host/port/encrypt form, the Connect button, keyboard input.

import { Websock } from './websock.js';

// ---------------------------------------------------------------------------------------------
// Terminal

const COLS = 80;
const ROWS = 24;
const SCROLLBACK = 1000;

class Terminal {
    constructor(element, cols = COLS, rows = ROWS) {
        this.element = element;
        this.cols = cols;
        this.rows = rows;
        this.renderPending = false;
        this.reset();
    }

    reset() {
        this.screen = [];
        for (let y = 0; y < this.rows; y++) this.screen.push(this.blankLine());
        this.scrollback = [];
        this.x = 0;
        this.y = 0;
        this.saved = { x: 0, y: 0 };
        this.top = 0; // scrolling region, inclusive
        this.bottom = this.rows - 1;
        this.state = 'text';
        this.params = '';
        this.scheduleRender();
    }

    blankLine() {
        return new Array(this.cols).fill(' ');
    }

    /** Interprets a string of text and escape sequences. */
    write(text) {
        for (const ch of text) this.feed(ch);
        this.scheduleRender();
    }

    feed(ch) {
        switch (this.state) {
        case 'text':
            return this.text(ch);
        case 'esc':
            return this.escape(ch);
        case 'csi':
            return this.csi(ch);
        case 'osc':
            // Operating system command (window title...): ends with BEL or ESC \.
            if (ch === '\x07') this.state = 'text';
            else if (ch === '\x1b') this.state = 'esc';
            return undefined;
        case 'charset':
            // ESC ( X and friends pick a character set: ignored.
            this.state = 'text';
            return undefined;
        default:
            this.state = 'text';
            return undefined;
        }
    }

    text(ch) {
        switch (ch) {
        case '\r':
            this.x = 0;
            return;
        case '\n':
        case '\x0b':
        case '\x0c':
            this.lineFeed();
            return;
        case '\b':
            if (this.x >= this.cols) this.x = this.cols - 1;
            if (this.x > 0) this.x--;
            return;
        case '\t':
            this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8);
            return;
        case '\x1b':
            this.state = 'esc';
            return;
        default:
            break;
        }
        const code = ch.codePointAt(0);
        if (code < 0x20 || code === 0x7f || (code >= 0x80 && code < 0xa0)) return; // other controls
        if (this.x >= this.cols) {
            // The previous character filled the line: wrap now (deferred wrap, as VT100 does).
            this.x = 0;
            this.lineFeed();
        }
        this.screen[this.y][this.x] = ch;
        this.x++;
    }

    escape(ch) {
        this.state = 'text';
        switch (ch) {
        case '[':
            this.state = 'csi';
            this.params = '';
            break;
        case ']':
            this.state = 'osc';
            break;
        case '(':
        case ')':
        case '*':
        case '+':
            this.state = 'charset';
            break;
        case 'D': // index
            this.lineFeed();
            break;
        case 'E': // next line
            this.x = 0;
            this.lineFeed();
            break;
        case 'M': // reverse index
            if (this.y === this.top) this.scrollDown(1);
            else if (this.y > 0) this.y--;
            break;
        case '7':
            this.saved = { x: this.x, y: this.y };
            break;
        case '8':
            this.x = this.saved.x;
            this.y = this.saved.y;
            break;
        case 'c':
            this.reset();
            break;
        default:
            break; // keypad modes and the like
        }
    }

    csi(ch) {
        const code = ch.charCodeAt(0);
        if (code >= 0x20 && code <= 0x3f) {
            // parameters ("1;2", "?25") and intermediate bytes
            this.params += ch;
            if (this.params.length > 64) this.state = 'text'; // garbage: give up on it
            return;
        }
        this.state = 'text';
        if (code < 0x40 || code > 0x7e) return;
        if (/^[<=>?]/.test(this.params)) return; // private modes (?25h cursor, ...): ignored
        const args = this.params.split(';').map((p) => parseInt(p, 10));
        const n = (i, dflt = 1) => (Number.isFinite(args[i]) && args[i] > 0 ? args[i] : dflt);
        const clampX = (x) => Math.max(0, Math.min(this.cols - 1, x));
        const clampY = (y) => Math.max(0, Math.min(this.rows - 1, y));
        switch (ch) {
        case 'A': this.y = Math.max(this.top, this.y - n(0)); break;
        case 'B': this.y = Math.min(this.bottom, this.y + n(0)); break;
        case 'C': this.x = clampX(this.x + n(0)); break;
        case 'D': this.x = clampX(Math.min(this.x, this.cols - 1) - n(0)); break;
        case 'E': this.x = 0; this.y = clampY(this.y + n(0)); break;
        case 'F': this.x = 0; this.y = clampY(this.y - n(0)); break;
        case 'G': case '`': this.x = clampX(n(0) - 1); break;
        case 'd': this.y = clampY(n(0) - 1); break;
        case 'H': case 'f':
            this.y = clampY(n(0) - 1);
            this.x = clampX(n(1) - 1);
            break;
        case 'J': this.eraseDisplay(Number.isFinite(args[0]) ? args[0] : 0); break;
        case 'K': this.eraseLine(Number.isFinite(args[0]) ? args[0] : 0); break;
        case 'X': this.fill(this.y, this.x, Math.min(this.cols, this.x + n(0))); break;
        case 'P': this.deleteChars(n(0)); break;
        case '@': this.insertChars(n(0)); break;
        case 'L': this.insertLines(n(0)); break;
        case 'M': this.deleteLines(n(0)); break;
        case 'S': this.scrollUp(n(0)); break;
        case 'T': this.scrollDown(n(0)); break;
        case 'r':
            this.top = clampY(n(0) - 1);
            this.bottom = clampY(n(1, this.rows) - 1);
            if (this.top >= this.bottom) {
                this.top = 0;
                this.bottom = this.rows - 1;
            }
            this.x = 0;
            this.y = this.top;
            break;
        case 's': this.saved = { x: this.x, y: this.y }; break;
        case 'u': this.x = this.saved.x; this.y = this.saved.y; break;
        default:
            break; // m (colours), h/l (modes), n (reports) ...: ignored
        }
    }

    lineFeed() {
        if (this.y === this.bottom) this.scrollUp(1);
        else if (this.y < this.rows - 1) this.y++;
    }

    scrollUp(count) {
        for (let i = 0; i < count; i++) {
            const [gone] = this.screen.splice(this.top, 1);
            if (this.top === 0) {
                this.scrollback.push(gone.join('').trimEnd());
                if (this.scrollback.length > SCROLLBACK) this.scrollback.shift();
            }
            this.screen.splice(this.bottom, 0, this.blankLine());
        }
    }

    scrollDown(count) {
        for (let i = 0; i < count; i++) {
            this.screen.splice(this.bottom, 1);
            this.screen.splice(this.top, 0, this.blankLine());
        }
    }

    fill(y, from, to) {
        const line = this.screen[y];
        for (let x = Math.max(0, from); x < Math.min(this.cols, to); x++) line[x] = ' ';
    }

    eraseLine(mode) {
        const x = Math.min(this.x, this.cols - 1);
        if (mode === 0) this.fill(this.y, x, this.cols);
        else if (mode === 1) this.fill(this.y, 0, x + 1);
        else if (mode === 2) this.fill(this.y, 0, this.cols);
    }

    eraseDisplay(mode) {
        if (mode === 0) {
            this.eraseLine(0);
            for (let y = this.y + 1; y < this.rows; y++) this.fill(y, 0, this.cols);
        } else if (mode === 1) {
            this.eraseLine(1);
            for (let y = 0; y < this.y; y++) this.fill(y, 0, this.cols);
        } else if (mode === 2 || mode === 3) {
            for (let y = 0; y < this.rows; y++) this.fill(y, 0, this.cols);
            if (mode === 3) this.scrollback = [];
        }
    }

    deleteChars(count) {
        const line = this.screen[this.y];
        const x = Math.min(this.x, this.cols - 1);
        line.splice(x, Math.min(count, this.cols - x));
        while (line.length < this.cols) line.push(' ');
    }

    insertChars(count) {
        const line = this.screen[this.y];
        const x = Math.min(this.x, this.cols - 1);
        line.splice(x, 0, ...new Array(Math.min(count, this.cols - x)).fill(' '));
        line.length = this.cols;
    }

    insertLines(count) {
        if (this.y < this.top || this.y > this.bottom) return;
        for (let i = 0; i < Math.min(count, this.bottom - this.y + 1); i++) {
            this.screen.splice(this.bottom, 1);
            this.screen.splice(this.y, 0, this.blankLine());
        }
    }

    deleteLines(count) {
        if (this.y < this.top || this.y > this.bottom) return;
        for (let i = 0; i < Math.min(count, this.bottom - this.y + 1); i++) {
            this.screen.splice(this.y, 1);
            this.screen.splice(this.bottom, 0, this.blankLine());
        }
    }

    /** The whole text: scrollback, then the screen, without trailing blanks. */
    toString() {
        const lines = this.scrollback.concat(this.screen.map((l) => l.join('').trimEnd()));
        return lines.join('\n').trimEnd();
    }

    scheduleRender() {
        if (this.renderPending) return;
        this.renderPending = true;
        requestAnimationFrame(() => {
            this.renderPending = false;
            this.render();
        });
    }

    render() {
        const el = this.element;
        const cx = Math.min(this.x, this.cols - 1);
        const lines = this.screen.map((l) => l.join(''));
        const before = this.scrollback.concat(lines.slice(0, this.y)).concat([lines[this.y].slice(0, cx)]);
        const cursorChar = lines[this.y][cx];
        const after = [lines[this.y].slice(cx + 1).trimEnd()].concat(lines.slice(this.y + 1).map((l) => l.trimEnd()));
        const stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
        const cursor = document.createElement('span');
        cursor.className = 'cursor';
        cursor.textContent = cursorChar;
        el.replaceChildren(
            document.createTextNode(before.join('\n')),
            cursor,
            document.createTextNode(after.join('\n').trimEnd()),
        );
        if (stick) el.scrollTop = el.scrollHeight;
    }
}

// ---------------------------------------------------------------------------------------------
// Telnet (RFC 854 and the option RFCs it names)

const IAC = 255;
const DONT = 254;
const DO = 253;
const WONT = 252;
const WILL = 251;
const SB = 250;
const SE = 240;

const OPT_ECHO = 1; // RFC 857
const OPT_SGA = 3; // RFC 858, suppress go-ahead
const OPT_TTYPE = 24; // RFC 1091, terminal type
const OPT_NAWS = 31; // RFC 1073, window size

const TTYPE_IS = 0;
const TTYPE_SEND = 1;

/** Options the server may enable (it echoes, it does not send go-aheads). */
const SERVER_MAY = new Set([OPT_ECHO, OPT_SGA]);
/** Options we enable when the server asks. */
const WE_MAY = new Set([OPT_SGA, OPT_TTYPE, OPT_NAWS]);

const VERB_NAMES = { [DONT]: 'DONT', [DO]: 'DO', [WONT]: 'WONT', [WILL]: 'WILL' };

class Telnet {
    /**
     * @param send      function(Uint8Array|number[]) sending bytes to the server
     * @param onData    function(Uint8Array) for data bytes (commands removed)
     * @param terminal  { type, cols, rows } reported to the server
     */
    constructor(send, onData, terminal) {
        this.send = send;
        this.onData = onData;
        this.terminal = terminal;
        this.state = 'data';
        this.verb = 0;
        this.sb = [];
        this.ours = new Set(); // options enabled on our side
        this.theirs = new Set(); // options enabled on the server's side
        this.log = []; // negotiation trace, for the curious and for tests
    }

    get serverEchoes() {
        return this.theirs.has(OPT_ECHO);
    }

    /** Processes bytes from the server. */
    receive(bytes) {
        const data = [];
        for (const b of bytes) {
            switch (this.state) {
            case 'data':
                if (b === IAC) this.state = 'iac';
                else data.push(b);
                break;
            case 'iac':
                this.state = 'data';
                if (b === IAC) data.push(IAC); // escaped 255
                else if (b >= WILL && b <= DONT) {
                    this.verb = b;
                    this.state = 'option';
                } else if (b === SB) {
                    this.sb = [];
                    this.state = 'sb';
                }
                // NOP, GA, DM, BRK, IP, AO, AYT, EC, EL: nothing to do for a display
                break;
            case 'option':
                this.state = 'data';
                this.negotiate(this.verb, b);
                break;
            case 'sb':
                if (b === IAC) this.state = 'sb-iac';
                else if (this.sb.length < 512) this.sb.push(b);
                break;
            case 'sb-iac':
                if (b === SE) {
                    this.state = 'data';
                    this.subnegotiation(this.sb);
                } else {
                    if (b === IAC && this.sb.length < 512) this.sb.push(IAC);
                    this.state = 'sb';
                }
                break;
            default:
                this.state = 'data';
            }
        }
        if (data.length) this.onData(new Uint8Array(data));
    }

    /** Answers one WILL/WONT/DO/DONT, replying only when a state changes (no loops, RFC 1143). */
    negotiate(verb, opt) {
        this.log.push(`< ${VERB_NAMES[verb]} ${opt}`);
        switch (verb) {
        case WILL:
            if (this.theirs.has(opt)) break;
            if (SERVER_MAY.has(opt)) {
                this.theirs.add(opt);
                this.command(DO, opt);
            } else {
                this.command(DONT, opt);
            }
            break;
        case WONT:
            if (this.theirs.delete(opt)) this.command(DONT, opt);
            break;
        case DO:
            if (this.ours.has(opt)) break;
            if (WE_MAY.has(opt)) {
                this.ours.add(opt);
                this.command(WILL, opt);
                if (opt === OPT_NAWS) this.sendWindowSize();
            } else {
                this.command(WONT, opt);
            }
            break;
        case DONT:
            if (this.ours.delete(opt)) this.command(WONT, opt);
            break;
        default:
            break;
        }
    }

    subnegotiation(sb) {
        if (sb[0] === OPT_TTYPE && sb[1] === TTYPE_SEND && this.ours.has(OPT_TTYPE)) {
            const name = Array.from(this.terminal.type, (c) => c.charCodeAt(0));
            this.log.push(`> SB TTYPE IS ${this.terminal.type}`);
            this.send([IAC, SB, OPT_TTYPE, TTYPE_IS, ...name, IAC, SE]);
        }
    }

    sendWindowSize() {
        const { cols, rows } = this.terminal;
        const body = [cols >> 8, cols & 0xff, rows >> 8, rows & 0xff].flatMap((b) => (b === IAC ? [IAC, IAC] : [b]));
        this.log.push(`> SB NAWS ${cols}x${rows}`);
        this.send([IAC, SB, OPT_NAWS, ...body, IAC, SE]);
    }

    command(verb, opt) {
        this.log.push(`> ${VERB_NAMES[verb]} ${opt}`);
        this.send([IAC, verb, opt]);
    }

    /** Sends user data, doubling IAC bytes. */
    sendData(bytes) {
        const out = [];
        for (const b of bytes) {
            out.push(b);
            if (b === IAC) out.push(IAC);
        }
        this.send(out);
    }
}

// ---------------------------------------------------------------------------------------------
// The page

const KEYS = {
    Enter: '\r\n', // end of line in telnet's network virtual terminal is CR LF
    Backspace: '\x7f',
    Tab: '\t',
    Escape: '\x1b',
    ArrowUp: '\x1b[A',
    ArrowDown: '\x1b[B',
    ArrowRight: '\x1b[C',
    ArrowLeft: '\x1b[D',
    Home: '\x1b[H',
    End: '\x1b[F',
    Insert: '\x1b[2~',
    Delete: '\x1b[3~',
    PageUp: '\x1b[5~',
    PageDown: '\x1b[6~',
};

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();
const termEl = $('terminal');
const terminal = new Terminal(termEl);
let ws = null;
let telnet = null;
let decoder = null;

function setStatus(text, state, isError = false) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('error', isError);
    document.body.dataset.state = state;
}

function formatHost(host) {
    return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

function connect() {
    const host = $('host').value.trim();
    const port = $('port').value.trim();
    if (!host || !/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
        setStatus('Give a host and a port (1-65535).', 'idle', true);
        return;
    }
    const uri = `${$('encrypt').checked ? 'wss' : 'ws'}://${formatHost(host)}:${port}/websockify`;
    terminal.reset();
    decoder = new TextDecoder('utf-8');
    ws = new Websock();
    const sock = ws;
    telnet = new Telnet(
        (bytes) => sock.send(bytes),
        (bytes) => terminal.write(decoder.decode(bytes, { stream: true })),
        { type: 'VT100', cols: terminal.cols, rows: terminal.rows },
    );
    const session = telnet;
    ws.on('open', () => {
        setStatus(`Connected to ${uri} (subprotocol: ${sock.protocol || 'none'}).`, 'connected');
        $('connect').textContent = 'Disconnect';
        termEl.focus();
    });
    ws.on('message', () => session.receive(sock.rQshiftBytes()));
    ws.on('error', (e) => console.warn('wstelnet: socket error', e));
    ws.on('close', (e) => {
        if (ws !== sock) return;
        const why = e.reason ? `${e.code} ${e.reason}` : `${e.code}`;
        setStatus(`Disconnected (${why}).`, 'closed', !e.wasClean);
        $('connect').textContent = 'Connect';
        ws = null;
        telnet = null;
    });
    setStatus(`Connecting to ${uri} ...`, 'connecting');
    $('connect').textContent = 'Disconnect';
    try {
        ws.open(uri, ['binary', 'base64']);
    } catch (err) {
        setStatus(`Cannot connect: ${err.message}`, 'closed', true);
        $('connect').textContent = 'Connect';
        ws = null;
    }
}

function disconnect() {
    if (ws) ws.close(1000, "user disconnected");
}

function sendText(text) {
    if (!telnet) return;
    telnet.sendData(encoder.encode(text));
    if (!telnet.serverEchoes) terminal.write(text.replace(/\r\n/g, '\n').replace(/\n/g, '\r\n').replace(/\x7f/g, '\b \b'));
}

termEl.addEventListener('keydown', (e) => {
    if (!telnet || e.isComposing || e.metaKey) return;
    let text = null;
    if (e.ctrlKey && !e.altKey) {
        if (e.shiftKey) return; // Ctrl+Shift+C/V: leave copy and paste to the browser
        const k = e.key.length === 1 ? e.key.toLowerCase() : '';
        if (k >= 'a' && k <= 'z') text = String.fromCharCode(k.charCodeAt(0) - 96);
        else if (k === ' ' || k === '@' || k === '2') text = '\0';
        else if (k === '[') text = '\x1b';
        else if (k === '\\') text = '\x1c';
        else if (k === ']') text = '\x1d';
    } else if (e.key in KEYS) {
        text = KEYS[e.key];
    } else if (e.key.length >= 1 && [...e.key].length === 1) {
        text = e.key;
    }
    if (text === null) return;
    if (e.altKey) text = `\x1b${text}`;
    e.preventDefault();
    sendText(text);
});

termEl.addEventListener('paste', (e) => {
    if (!telnet) return;
    e.preventDefault();
    sendText(e.clipboardData.getData('text').replace(/\r?\n/g, '\r\n'));
});

$('connect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (ws) disconnect();
    else connect();
});

// Defaults: the page's own host and port, so the page works when websockify serves it
// (websockify --web DIR PORT ...) on the port it proxies. Query parameters override them.
const params = new URLSearchParams(location.search);
$('host').value = params.get('host') || location.hostname || 'localhost';
$('port').value = params.get('port') || location.port || (location.protocol === 'https:' ? '443' : '80');
$('encrypt').checked = params.has('encrypt') ? params.get('encrypt') !== '0' && params.get('encrypt') !== 'false' : location.protocol === 'https:';
setStatus('Not connected.', 'idle');

// For tests and for the console: the terminal text and the negotiation trace.
window.wstelnet = {
    text: () => terminal.toString(),
    negotiation: () => (telnet ? telnet.log.slice() : []),
    connect,
    disconnect,
};

if (params.get('autoconnect') === '1') connect();
