// Test c: Debian's noVNC (/usr/share/novnc), served by websockify --web, connects through
// websockify to a real VNC server and shows the desktop's pixels, over ws:// and wss://.
//
//   Xtigervnc :N (320x240x24, no VNC auth, loopback only)   root window painted by xsetroot
//   websockify --web /usr/share/novnc --cert self.pem 127.0.0.1:0 127.0.0.1:VNCPORT
//   Chromium -> http(s)://127.0.0.1:PORT/vnc.html?autoconnect=1&host=127.0.0.1&port=PORT&...
//
// Checks: noVNC reaches its connected state, its canvas has the desktop's size, the canvas
// pixels are the colour drawn on the X display, and a colour change made while connected shows
// up (so updates keep flowing through the proxy).

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, launchChromium, log, main, onCleanup, run, shotPath, start, startWebsockify, withTimeout } from './lib.mjs';

const NOVNC = process.env.NOVNC_DIR || '/usr/share/novnc';
const WIDTH = 320;
const HEIGHT = 240;
const FIRST = { css: '#1e90ff', rgb: [0x1e, 0x90, 0xff] };
const SECOND = { css: '#ff8c00', rgb: [0xff, 0x8c, 0x00] };

/** Starts Xtigervnc on a free display and a free VNC port; resolves to { display, port }. */
async function startVncServer() {
    for (let attempt = 1; attempt <= 3; attempt++) {
        const port = await freePort();
        const x = start('Xtigervnc', 'Xtigervnc', [
            '-displayfd', '3', // the server picks a free display and writes its number here
            '-rfbport', String(port),
            '-localhost=1',
            '-SecurityTypes', 'None',
            '-geometry', `${WIDTH}x${HEIGHT}`,
            '-depth', '24',
            '-AlwaysShared',
        ], { fd3: true });
        const display = await withTimeout(new Promise((resolve, reject) => {
            let text = '';
            x.proc.stdio[3].on('data', (d) => {
                text += d.toString();
                if (text.includes('\n')) resolve(text.trim());
            });
            x.exited.then(() => reject(new Error(`Xtigervnc exited:\n${x.output()}`)));
        }), 15000, 'Xtigervnc to report its display').catch((err) => {
            log(`attempt ${attempt}: ${err.message.split('\n')[0]}`);
            return null;
        });
        if (display !== null) {
            try {
                await x.waitFor(new RegExp(`Listening for VNC connections.*port ${port}`), 10000, `VNC listening on ${port}`);
                return { display: `:${display}`, port };
            } catch (err) {
                log(`attempt ${attempt}: ${err.message.split('\n')[0]}`);
            }
        }
        await x.stop();
    }
    throw new Error('could not start Xtigervnc');
}

/** A self-signed certificate and its key in one PEM file (websockify --cert). */
async function makeCertificate() {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wsfy-cert-'));
    onCleanup(() => rmSync(dir, { recursive: true, force: true }));
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
        '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
        '-keyout', key, '-out', cert], 30000);
    const pem = path.join(dir, 'self.pem');
    writeFileSync(pem, readFileSync(cert, 'utf8') + readFileSync(key, 'utf8'));
    return pem;
}

/** Reads the noVNC canvas: its size and the colours at the centre and near the corners. */
function readCanvas(page) {
    return page.evaluate(() => {
        const canvas = document.querySelector('#noVNC_container canvas') || document.querySelector('canvas');
        if (!canvas || canvas.width === 0) return null;
        const ctx = canvas.getContext('2d');
        const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
        const w = canvas.width;
        const h = canvas.height;
        return {
            width: w,
            height: h,
            pixels: [at(w >> 1, h >> 1), at(2, 2), at(w - 3, 2), at(2, h - 3), at(w - 3, h - 3)],
        };
    });
}

const sameColour = (px, rgb) => px && px[0] === rgb[0] && px[1] === rgb[1] && px[2] === rgb[2] && px[3] === 255;

/** Polls the canvas until every sampled pixel is `rgb`; returns the last reading. */
async function waitForColour(page, rgb, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let reading = null;
    while (Date.now() < deadline) {
        reading = await readCanvas(page);
        if (reading && reading.pixels.every((px) => sameColour(px, rgb))) return { ok: true, reading };
        await new Promise((resolve) => setTimeout(resolve, 100)); // polling a canvas has no event to wait on
    }
    return { ok: false, reading };
}

await main('noVNC', 120000, async (checks) => {
    if (!existsSync(path.join(NOVNC, 'vnc.html'))) throw new Error(`${NOVNC}/vnc.html is missing (apt-get install novnc)`);

    const pem = await makeCertificate();
    const vnc = await startVncServer();
    log(`Xtigervnc on display ${vnc.display}, VNC port ${vnc.port}`);
    await run('xsetroot', ['-display', vnc.display, '-solid', FIRST.css]);

    const ws = await startWebsockify('websockify-novnc', ['--web', NOVNC, '--cert', pem, '127.0.0.1:0', `127.0.0.1:${vnc.port}`]);
    log(`websockify on ${ws.port} (ws:// and wss://, noVNC from ${NOVNC})`);

    const { page, consoleLines } = await launchChromium(['--ignore-certificate-errors']);
    for (const scheme of ['ws', 'wss']) {
        const encrypted = scheme === 'wss';
        const http = encrypted ? 'https' : 'http';
        const query = new URLSearchParams({
            autoconnect: '1', host: '127.0.0.1', port: String(ws.port), path: 'websockify',
            encrypt: encrypted ? '1' : '0', resize: 'off', reconnect: '0',
        });
        const url = `${http}://127.0.0.1:${ws.port}/vnc.html?${query}`;
        log(`opening ${url}`);
        await withTimeout(page.goto(url), 20000, `loading vnc.html over ${http}`);
        try {
            await page.waitForFunction(() => document.documentElement.classList.contains('noVNC_connected'), null, { timeout: 20000, polling: 100 });
            checks.check(`[${scheme}] noVNC reached the connected state`, true);
        } catch (err) {
            const status = await page.textContent('#noVNC_status').catch(() => '');
            checks.check(`[${scheme}] noVNC reached the connected state`, false, `${err.message.split('\n')[0]}; status: ${status}`);
            await page.screenshot({ path: shotPath(`novnc-${scheme}`) });
            continue;
        }
        const status = (await page.textContent('#noVNC_status')) || '';
        checks.check(`[${scheme}] status names the ${encrypted ? 'encrypted' : 'unencrypted'} connection`,
            status.includes(encrypted ? 'Connected (encrypted)' : 'Connected (unencrypted)'), status.trim());

        const first = await waitForColour(page, FIRST.rgb, 10000);
        const size = first.reading ? `${first.reading.width}x${first.reading.height}` : 'no canvas';
        checks.check(`[${scheme}] canvas has the desktop size ${WIDTH}x${HEIGHT}`, size === `${WIDTH}x${HEIGHT}`, size);
        checks.check(`[${scheme}] canvas shows the X root colour ${FIRST.css}`, first.ok,
            first.reading ? `pixels ${JSON.stringify(first.reading.pixels)}` : 'no canvas');
        await page.screenshot({ path: shotPath(`novnc-${scheme}`) });
        log(`screenshot ${shotPath(`novnc-${scheme}`)}`);

        // A change on the X display while connected reaches the canvas.
        await run('xsetroot', ['-display', vnc.display, '-solid', SECOND.css]);
        const second = await waitForColour(page, SECOND.rgb, 10000);
        checks.check(`[${scheme}] canvas follows a colour change to ${SECOND.css}`, second.ok,
            second.reading ? `pixels ${JSON.stringify(second.reading.pixels)}` : 'no canvas');
        await run('xsetroot', ['-display', vnc.display, '-solid', FIRST.css]);
    }
    if (!checks.results.every((r) => r.ok)) {
        log('browser console:\n' + consoleLines.join('\n'));
        log('websockify log tail:\n' + ws.child.output().slice(-4000));
    }
});
