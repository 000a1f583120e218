// Helpers shared by the browser tests: child processes that are always stopped, waits that
// always end, Chromium through playwright-core, and a small check/report helper.
//
// Every child process is started in its own process group and recorded; stopAll() (run on
// exit, on SIGINT/SIGTERM and on failure) sends SIGTERM to each by PID, waits a bounded time,
// then SIGKILLs the group.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(WEB_DIR, '..');
export const SHOTS = path.join(REPO, 'target', 'browser');
export const WEBSOCKIFY = process.env.WEBSOCKIFY || path.join(REPO, 'target', 'debug', 'websockify');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const children = new Set();
const cleanups = [];

/** Logs with the elapsed time, so a slow step shows in the output. */
const t0 = Date.now();
export function log(...args) {
    console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...args);
}

/** Runs `fn` on cleanup (last registered, first run). */
export function onCleanup(fn) {
    cleanups.push(fn);
}

/**
 * Starts a program in its own process group, collecting its stdout and stderr.
 * Returns { pid, name, output(), exited (a promise of { code, signal }), proc }.
 */
export function start(name, cmd, args, options = {}) {
    const proc = spawn(cmd, args, {
        detached: true, // own process group, so a stop reaches what it started too
        // options.fd3: a fourth pipe, e.g. for an X server's -displayfd 3
        stdio: options.fd3 ? ['ignore', 'pipe', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...(options.env || {}) },
    });
    let text = '';
    const listeners = new Set();
    const append = (chunk) => {
        text += chunk.toString();
        if (text.length > 4_000_000) text = text.slice(-2_000_000);
        for (const l of listeners) l();
    };
    proc.stdout.on('data', append);
    proc.stderr.on('data', append);
    let exitInfo = null;
    const exited = new Promise((resolve) => {
        proc.on('exit', (code, signal) => {
            exitInfo = { code, signal };
            children.delete(child);
            for (const l of listeners) l();
            resolve(exitInfo);
        });
        proc.on('error', (err) => {
            text += `\n(failed to start ${cmd}: ${err.message})\n`;
            exitInfo = { code: null, signal: null, error: err };
            children.delete(child);
            for (const l of listeners) l();
            resolve(exitInfo);
        });
    });
    const child = {
        name,
        proc,
        pid: proc.pid,
        exited,
        output: () => text,
        hasExited: () => exitInfo !== null,
        /** Waits until `regex` matches the output; fails on timeout or exit. Returns the match. */
        waitFor(regex, timeoutMs, what = String(regex)) {
            return new Promise((resolve, reject) => {
                const check = () => {
                    const m = text.match(regex);
                    if (m) return finish(null, m);
                    if (exitInfo) return finish(new Error(`${name} exited (${JSON.stringify(exitInfo)}) before ${what}\n--- ${name} output ---\n${text}`));
                    return undefined;
                };
                const timer = setTimeout(() => finish(new Error(`${name}: no ${what} within ${timeoutMs} ms\n--- ${name} output ---\n${text}`)), timeoutMs);
                function finish(err, m) {
                    clearTimeout(timer);
                    listeners.delete(check);
                    if (err) reject(err);
                    else resolve(m);
                }
                listeners.add(check);
                check();
            });
        },
        stop: () => stopChild(child),
    };
    children.add(child);
    return child;
}

/** Runs a short command to its end (bounded); throws unless it exits 0. Returns its output. */
export async function run(cmd, args, timeoutMs = 15000, options = {}) {
    const child = start(cmd, cmd, args, options);
    let result;
    try {
        result = await withTimeout(child.exited, timeoutMs, `${cmd} ${args.join(' ')}`);
    } catch (err) {
        await stopChild(child);
        throw err;
    }
    if (result.code !== 0) {
        throw new Error(`${cmd} ${args.join(' ')} failed (${JSON.stringify(result)}):\n${child.output()}`);
    }
    return child.output();
}

/** SIGTERM by PID, up to 5 s for the exit, then SIGKILL to the process group. */
async function stopChild(child, graceMs = 5000) {
    if (child.hasExited()) return;
    try {
        process.kill(child.pid, 'SIGTERM');
    } catch {
        /* already gone */
    }
    const timer = new Promise((resolve) => setTimeout(() => resolve('timeout'), graceMs));
    const result = await Promise.race([child.exited, timer]);
    if (result === 'timeout') {
        log(`${child.name} (pid ${child.pid}) ignored SIGTERM for ${graceMs} ms: SIGKILL to its group`);
    }
    try {
        // The group may hold programs the child started (e.g. a wrapped server): end them too.
        process.kill(-child.pid, 'SIGKILL');
    } catch {
        /* no such group left */
    }
    await Promise.race([child.exited, new Promise((resolve) => setTimeout(resolve, 2000))]);
}

let stopping = null;
/** Runs the cleanups, then stops every child still running. */
export function stopAll() {
    if (!stopping) {
        stopping = (async () => {
            while (cleanups.length) {
                const fn = cleanups.pop();
                try {
                    await withTimeout(Promise.resolve().then(fn), 10000, 'cleanup');
                } catch (err) {
                    log(`cleanup failed: ${err.message}`);
                }
            }
            await Promise.all([...children].map((c) => stopChild(c)));
        })();
    }
    return stopping;
}

for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
        log(`${signal}: stopping`);
        stopAll().finally(() => process.exit(130));
    });
}
process.on('exit', () => {
    // Last resort when exit came without stopAll(): synchronous kills only.
    for (const c of children) {
        try {
            process.kill(-c.pid, 'SIGKILL');
        } catch {
            /* gone */
        }
    }
});

/** Rejects with a message naming `what` when `promise` takes longer than `ms`. */
export function withTimeout(promise, ms, what) {
    let timer;
    const limit = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** A TCP port that was free a moment ago (for programs that need a fixed port number). */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

/** Starts websockify with `args`; resolves to { child, port } once it logs its listen address. */
export async function startWebsockify(name, args, timeoutMs = 10000) {
    if (!existsSync(WEBSOCKIFY)) throw new Error(`${WEBSOCKIFY} is missing: run cargo build -p websockify`);
    const child = start(name, WEBSOCKIFY, args, { env: { RUST_LOG: process.env.RUST_LOG || 'info' } });
    const m = await child.waitFor(/listening on (?:\[[^\]]+\]|[^\s:]+):(\d+)/, timeoutMs, 'listening on ADDR');
    return { child, port: Number(m[1]) };
}

/** Launches headless Debian Chromium with a fresh profile; closed on cleanup. */
export async function launchChromium(extraArgs = []) {
    const { chromium } = await import('playwright-core');
    const profile = mkdtempSync(path.join(os.tmpdir(), 'wsfy-chromium-'));
    const context = await withTimeout(chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1000, height: 720 },
        timeout: 30000,
        args: [
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--no-first-run',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            ...extraArgs,
        ],
    }), 40000, 'launching Chromium');
    onCleanup(async () => {
        await withTimeout(context.close(), 8000, 'closing Chromium').catch((err) => log(err.message));
        rmSync(profile, { recursive: true, force: true });
    });
    const page = context.pages()[0] || (await context.newPage());
    const consoleLines = [];
    page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`));
    return { context, page, consoleLines };
}

/** Makes the screenshot folder and returns the path for `name`.png. */
export function shotPath(name) {
    mkdirSync(SHOTS, { recursive: true });
    return path.join(SHOTS, `${name}.png`);
}

/** Collects named checks; report() prints them and returns whether all passed. */
export class Checks {
    constructor(suite) {
        this.suite = suite;
        this.results = [];
    }

    check(name, ok, detail = '') {
        this.results.push({ name, ok: Boolean(ok), detail });
        log(`${ok ? 'ok  ' : 'FAIL'} ${this.suite}: ${name}${detail ? ` (${detail})` : ''}`);
        return Boolean(ok);
    }

    get ok() {
        return this.results.length > 0 && this.results.every((r) => r.ok);
    }

    report() {
        const failed = this.results.filter((r) => !r.ok);
        log(`${this.suite}: ${this.results.length - failed.length} of ${this.results.length} checks passed`);
        return failed.length === 0 && this.results.length > 0;
    }
}

/**
 * Runs a test body with cleanup and an overall time limit; sets the exit code.
 * The body gets a Checks object and returns nothing; throwing fails the test.
 */
export async function main(suite, limitMs, body) {
    const checks = new Checks(suite);
    let ok = false;
    try {
        await withTimeout(body(checks), limitMs, `${suite} (whole test)`);
        ok = checks.report();
    } catch (err) {
        log(`FAIL ${suite}: ${err.stack || err.message}`);
        checks.report();
    } finally {
        await stopAll();
    }
    log(`${suite}: ${ok ? 'PASSED' : 'FAILED'}`);
    process.exit(ok ? 0 : 1);
}
