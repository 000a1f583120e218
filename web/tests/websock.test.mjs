// Test a: websock.js in Chromium against websockify and TCP targets started here.
//
//   echo target     <- websockify --web web 127.0.0.1:0 (serves the test page too)
//   "bye" target    <- websockify 127.0.0.1:0   (writes "bye\n" and closes: 1000 Target closed)
//   closed port     <- websockify 127.0.0.1:0   (connection refused: 1011)
//
// The page (tests/websock_test.html) runs every check for the binary, base64 and no
// subprotocol and sets window.testResult, which this script waits for and reports.

import net from 'node:net';
import { WEB_DIR, freePort, launchChromium, log, main, onCleanup, shotPath, startWebsockify, withTimeout } from './lib.mjs';

/** A TCP server on 127.0.0.1:0 running `handler` per connection; closed on cleanup. */
function tcpServer(name, handler) {
    return new Promise((resolve, reject) => {
        const sockets = new Set();
        const srv = net.createServer((sock) => {
            sockets.add(sock);
            sock.on('close', () => sockets.delete(sock));
            sock.on('error', () => {});
            handler(sock);
        });
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            onCleanup(() => new Promise((done) => {
                for (const s of sockets) s.destroy();
                srv.close(() => done());
            }));
            log(`${name} target on 127.0.0.1:${srv.address().port}`);
            resolve(srv.address().port);
        });
    });
}

await main('websock.js', 150000, async (checks) => {
    const echoPort = await tcpServer('echo', (sock) => sock.pipe(sock));
    const byePort = await tcpServer('bye', (sock) => sock.end('bye\n'));
    // A port nobody listens on: taken from the OS, then released.
    const closedPort = await freePort();

    const echo = await startWebsockify('websockify-echo', ['--web', WEB_DIR, '127.0.0.1:0', `127.0.0.1:${echoPort}`]);
    const bye = await startWebsockify('websockify-bye', ['127.0.0.1:0', `127.0.0.1:${byePort}`]);
    const refused = await startWebsockify('websockify-refused', ['127.0.0.1:0', `127.0.0.1:${closedPort}`]);
    log(`websockify on ${echo.port} (echo + web), ${bye.port} (bye), ${refused.port} (refused)`);

    const { page, consoleLines } = await launchChromium();
    const query = new URLSearchParams({
        closer: `ws://127.0.0.1:${bye.port}/websockify`,
        unreachable: `ws://127.0.0.1:${refused.port}/websockify`,
    });
    const url = `http://127.0.0.1:${echo.port}/tests/websock_test.html?${query}`;
    log(`opening ${url}`);
    await withTimeout(page.goto(url), 15000, 'loading the test page');
    try {
        await page.waitForFunction(() => window.testResult, null, { timeout: 120000, polling: 200 });
    } finally {
        await page.screenshot({ path: shotPath('websock'), fullPage: true }).catch((err) => log(`screenshot: ${err.message}`));
        log(`screenshot ${shotPath('websock')}`);
    }
    const result = await page.evaluate(() => window.testResult);
    for (const c of result.checks) checks.check(c.name, c.ok, c.detail);
    if (!result.ok) {
        log('browser console:\n' + consoleLines.join('\n'));
        log('websockify (echo) log tail:\n' + echo.child.output().slice(-3000));
    }
});
