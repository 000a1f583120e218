// Test b: wstelnet.html, served by websockify --web, shows the login prompt of a wrapped
// telnet server (socat + inetutils telnetd, one client per start, respawned).
//
//   websockify --web web PORT --wrap-mode=respawn -- \
//       socat TCP-LISTEN:PORT,reuseaddr EXEC:/usr/sbin/telnetd,nofork
//
// The page is opened at http://127.0.0.1:PORT/wstelnet.html with no parameters, so the form's
// defaults (the page's own host and port) are what a user would get; the test clicks Connect.

import { existsSync } from 'node:fs';
import { WEB_DIR, freePort, launchChromium, log, main, shotPath, startWebsockify, withTimeout } from './lib.mjs';

const TELNETD = '/usr/sbin/telnetd';

await main('wstelnet', 90000, async (checks) => {
    for (const program of ['/usr/bin/socat', TELNETD]) {
        if (!existsSync(program)) throw new Error(`${program} is missing (apt-get install socat inetutils-telnetd)`);
    }
    if (process.getuid && process.getuid() !== 0) log('warning: telnetd and login usually need root');

    // Wrapping needs a fixed port (the program binds it). A port free a moment ago may be taken
    // in between, so try a few.
    let ws = null;
    let port = 0;
    for (let attempt = 1; attempt <= 3 && !ws; attempt++) {
        port = await freePort();
        try {
            ws = await startWebsockify('websockify-telnet', [
                '--web', WEB_DIR, `${port}`, '--wrap-mode=respawn', '--',
                'socat', `TCP-LISTEN:${port},reuseaddr`, `EXEC:${TELNETD},nofork`,
            ]);
        } catch (err) {
            log(`attempt ${attempt} on port ${port} failed: ${err.message.split('\n')[0]}`);
        }
    }
    if (!ws) throw new Error('websockify did not start');
    await ws.child.waitFor(/wrapped program listens on loopback port \d+/, 10000, 'the wrapped telnet server listening');

    const { page, consoleLines } = await launchChromium();
    const url = `http://127.0.0.1:${port}/wstelnet.html`;
    log(`opening ${url}`);
    await withTimeout(page.goto(url), 15000, 'loading wstelnet.html');
    checks.check('host field defaults to the page host', (await page.inputValue('#host')) === '127.0.0.1');
    checks.check('port field defaults to the page port', (await page.inputValue('#port')) === String(port));
    checks.check('encrypt is off for an http:// page', !(await page.isChecked('#encrypt')));

    await page.click('#connect');
    let text = '';
    try {
        await page.waitForFunction(() => window.wstelnet.text().includes('login:'), null, { timeout: 20000, polling: 100 });
        text = await page.evaluate(() => window.wstelnet.text());
        checks.check('terminal shows the telnet login prompt', /login:\s*$/.test(text.trimEnd() + ' ') || text.includes('login:'), JSON.stringify(text.slice(-80)));
    } catch (err) {
        text = await page.evaluate(() => window.wstelnet.text()).catch(() => '');
        checks.check('terminal shows the telnet login prompt', false, `${err.message}; terminal: ${JSON.stringify(text)}`);
    }
    const status = await page.textContent('#status');
    checks.check('status says connected', /^Connected/.test(status), status);
    const negotiation = await page.evaluate(() => window.wstelnet.negotiation());
    log(`telnet negotiation: ${negotiation.join(', ')}`);
    checks.check('server echo accepted (DO ECHO sent)', negotiation.includes('> DO 1'));
    checks.check('terminal type sent', negotiation.some((l) => l.startsWith('> SB TTYPE IS')));
    // The DOM text is what a person sees: the prompt must be rendered, not only in the model.
    const shown = await page.textContent('#terminal');
    checks.check('login prompt rendered in the page', shown.includes('login:'));

    // Typing reaches the server, which echoes it (remote echo): type a user name.
    await page.focus('#terminal');
    await page.keyboard.type('wsuser');
    try {
        await page.waitForFunction(() => /login:\s*wsuser/.test(window.wstelnet.text()), null, { timeout: 10000, polling: 100 });
        checks.check('typed keys are echoed by the server after the prompt', true);
    } catch {
        const now = await page.evaluate(() => window.wstelnet.text());
        checks.check('typed keys are echoed by the server after the prompt', false, JSON.stringify(now.slice(-120)));
    }
    await page.keyboard.press('Enter');
    try {
        await page.waitForFunction(() => /Password:/i.test(window.wstelnet.text()), null, { timeout: 10000, polling: 100 });
        checks.check('Enter submits the line (Password: prompt)', true);
    } catch {
        const now = await page.evaluate(() => window.wstelnet.text());
        checks.check('Enter submits the line (Password: prompt)', false, JSON.stringify(now.slice(-120)));
    }
    await page.screenshot({ path: shotPath('wstelnet') });
    log(`screenshot ${shotPath('wstelnet')}`);

    // Disconnect and connect again: --wrap-mode=respawn started a new telnet server.
    await page.click('#connect');
    try {
        await page.waitForFunction(() => document.body.dataset.state === 'closed', null, { timeout: 10000, polling: 100 });
        checks.check('Disconnect closes the session', true, await page.textContent('#status'));
    } catch {
        checks.check('Disconnect closes the session', false, await page.textContent('#status'));
    }
    await page.click('#connect');
    try {
        await page.waitForFunction(() => window.wstelnet.text().includes('login:'), null, { timeout: 20000, polling: 100 });
        checks.check('a second connection gets a new login prompt (respawned server)', true);
    } catch (err) {
        const now = await page.evaluate(() => window.wstelnet.text());
        checks.check('a second connection gets a new login prompt (respawned server)', false, `${err.message.split('\n')[0]}; terminal: ${JSON.stringify(now)}`);
    }
    if (!checks.results.every((r) => r.ok)) {
        log('browser console:\n' + consoleLines.join('\n'));
        log('websockify log tail:\n' + ws.child.output().slice(-3000));
    }
});
