// What every browser scenario shares: its config (JSON in argv[2], from
// tests/browser/stack.py), the system Chromium, the test's own page servers, the result line.
import http from 'node:http';
import { chromium } from 'playwright-core';

export const config = JSON.parse(process.argv[2]);

// The launch flags of FIELD-NOTES (no network chatter of Chromium's own).
export function launch() {
  return chromium.launch({
    executablePath: config.chromium,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

// The test's own page on `origin`: it imports the JS client from tokend's /static (a
// cross-origin module script: tokend's CORS must allow this origin) and leaves it on window.
export function clientPage(tokend) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>harness</title></head>
<body><main><h1>harness</h1></main>
<script type="module">
import { createTokendClient } from ${JSON.stringify(`${tokend}/static/tokend-client.js`)};
window.createTokendClient = createTokendClient;
document.title = 'ready';
</script></body></html>`;
}

// Serve `html(request)` (a string: a page; null: 404) on the port of `origin`.
export async function servePages(origin, html) {
  const { port } = new URL(origin);
  const server = http.createServer((req, res) => {
    const body = html(req);
    if (body === null) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(body);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), new URL(origin).hostname === 'localhost' ? 'localhost' : '127.0.0.1', resolve);
  });
  return server;
}

// Open the client page of `origin` in `context`; wait for the module.
export async function openClientPage(context, origin) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.log(`pageerror ${origin}: ${err.message}`));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => document.title === 'ready', null, { timeout: 10000 });
  return page;
}

// In the page: a client with the scenario's mode, left on window.client; login-required
// callbacks counted in window.loginRequired.
export async function makeClient(page, { tokend, cookie }) {
  await page.evaluate(({ tokend, cookie }) => {
    window.loginRequired = 0;
    window.client = window.createTokendClient({
      baseUrl: tokend,
      ...(cookie ? { cookie: true } : { storage: localStorage }),
      onLoginRequired: () => { window.loginRequired += 1; },
    });
  }, { tokend, cookie });
}

// Count the POSTs to tokend's /auth/refresh that the context sends, and their answers.
export function countRefreshes(context, tokend) {
  const counts = { sent: 0, failed: 0, statuses: {} };
  const isRefresh = (request) => request.method() === 'POST' && request.url() === `${tokend}/auth/refresh`;
  context.on('request', (request) => { if (isRefresh(request)) counts.sent += 1; });
  context.on('requestfailed', (request) => { if (isRefresh(request)) counts.failed += 1; });
  context.on('response', (response) => {
    if (isRefresh(response.request())) {
      counts.statuses[response.status()] = (counts.statuses[response.status()] || 0) + 1;
    }
  });
  return counts;
}

export function result(value) {
  console.log(JSON.stringify({ result: value }));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
