// Clicks through every page of `policybind dashboard` in headless Chromium
// (Debian's package, driven by playwright-core with its executablePath), as a
// viewer signed in with a Kubernetes token, asserts what each page shows and
// saves a screenshot of each. Run by e2e/tests/scenarios/dashboard.rs, which
// creates the data and passes what to expect:
//
//   DASHBOARD_URL      http://127.0.0.1:<port>
//   DASHBOARD_TOKEN    the viewer's ServiceAccount token
//   DASHBOARD_EXPECT   JSON: {user, namespace, hidden, model, token, approval,
//                      incident, allowCode, denyCode, policy, rule, message}
//   SCREENSHOT_DIR     where the PNGs go
//   CHROMIUM           default /usr/bin/chromium
//
// Exits non-zero with a message on the first failed expectation; prints one
// JSON line with every page's size and load time on success.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const base = process.env.DASHBOARD_URL;
const token = process.env.DASHBOARD_TOKEN;
const expect = JSON.parse(process.env.DASHBOARD_EXPECT || '{}');
const shots = process.env.SCREENSHOT_DIR || 'screenshots';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!base || !token) throw new Error('DASHBOARD_URL and DASHBOARD_TOKEN are required');
mkdirSync(shots, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Debian's Chromium as root (CI containers) refuses to start sandboxed.
  args: ['--no-sandbox'],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
const page = await context.newPage();
const foreign = [];
page.on('request', (request) => {
  if (!request.url().startsWith(base)) foreign.push(request.url());
});
const scripts = [];
// Pages hold no script, so the console only hears from the browser itself;
// the one message expected is the 401 of the refused sign-in.
page.on('console', (message) => {
  if (!message.text().includes('status of 401')) scripts.push(message.text());
});
page.on('pageerror', (error) => scripts.push(String(error)));
const measured = [];

async function shot(name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

async function text() {
  return page.locator('body').innerText();
}

/// Click the navigation link `label`, wait for its page, check the common frame.
async function open(label, path) {
  const started = Date.now();
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === base + path),
    page.getByRole('link', { name: label, exact: true }).click(),
  ]);
  await page.waitForLoadState('load');
  const body = await response.body();
  measured.push({ page: path, status: response.status(), bytes: body.length, ms: Date.now() - started });
  check(response.status() === 200, `${path}: status ${response.status()}`);
  check(page.url() === base + path, `${label}: landed on ${page.url()}`);
  const current = await page.locator('nav a[aria-current=page]').innerText();
  check(current === label, `${path}: current nav entry is ${current}`);
  const scope = await page.locator('#scope').innerText();
  check(scope.includes(expect.namespace), `${path}: scope "${scope}" lacks ${expect.namespace}`);
  if (expect.hidden) {
    const all = await text();
    check(!all.includes(expect.hidden), `${path}: shows the namespace ${expect.hidden} the viewer may not see`);
  }
  return text();
}

// 1. Not signed in: every page sends to the login page.
await page.goto(`${base}/decisions`);
check(page.url() === `${base}/login`, `unauthenticated /decisions went to ${page.url()}`);
await shot('01-login');

// 2. A wrong token is refused, and not echoed.
await page.fill('#token', 'not-a-valid-token');
await page.click('button[type=submit]');
const error = await page.locator('#error').innerText();
check(error.includes('did not accept'), `wrong token: "${error}"`);
check(!(await page.content()).includes('not-a-valid-token'), 'the refused token is echoed');
await shot('02-login-refused');

// 3. Sign in with the viewer's token.
await page.fill('#token', token);
await page.click('button[type=submit]');
await page.waitForURL(`${base}/decisions`);
const cookies = await context.cookies();
const session = cookies.find((c) => c.name === 'policybind_session');
check(session && session.httpOnly && session.sameSite === 'Strict', `session cookie ${JSON.stringify(session)}`);
check(!cookies.some((c) => c.value.includes(token.slice(0, 24))), 'the token is in a cookie');
const who = await page.locator('.who').innerText();
check(who.includes(expect.user), `signed in as "${who}", expected ${expect.user}`);

// 4. Every page, from the navigation bar.
let shown = await open('Decisions', '/decisions');
const bars = await page.locator('svg[aria-label="Decisions over time by effect"] rect.bar').count();
check(bars > 0, 'the decisions chart has no bar');
check(await page.locator('svg[aria-label="Decisions over time by effect"] rect[data-series=Deny]').count() > 0, 'no Deny bar');
check(shown.includes(expect.allowCode) && shown.includes(expect.denyCode), 'decisions lack the allow or deny code');
await shot('03-decisions');

shown = await open('Denials', '/denials');
check(shown.includes(expect.denyCode), `denials lack ${expect.denyCode}`);
check(shown.includes(`${expect.policy} / ${expect.rule}`), `denials lack ${expect.policy} / ${expect.rule}`);
check(shown.includes(expect.message), `denials lack the rule message "${expect.message}"`);
const refused = page.locator('tr', { hasText: 'TOKEN_MISSING' });
check(await refused.count() === 1, 'no summary of the request without a token (TOKEN_MISSING)');
check((await refused.innerText()).includes('\t1\t'), `TOKEN_MISSING count: ${await refused.innerText()}`);
await shot('04-denials');

shown = await open('Approvals', '/approvals');
check(shown.includes(expect.approval), `approvals lack ${expect.approval}`);
const approve = await page.locator('pre.approve').first().innerText();
check(
  approve.startsWith(`kubectl patch approvalrequest '${expect.approval}' -n '${expect.namespace}' --type merge -p`),
  `approve command: ${approve}`,
);
check(approve.includes(`"approver":"${expect.user}"`), `approve command does not name the viewer: ${approve}`);
await shot('05-approvals');

shown = await open('Models', '/models');
check(shown.includes(expect.model), `models lack ${expect.model}`);
check(await page.locator('td .pill.Low, td .pill.Medium, td .pill.High, td .pill.Critical').count() > 0, 'no risk level shown');
await shot('06-models');

shown = await open('Budgets', '/budgets');
check(shown.includes(expect.token), `budgets lack ${expect.token}`);
const meters = await page.locator('svg.meter').count();
check(meters > 0, 'no burn meter');
// The token's meters (cost and tokens): a few requests are a tiny share of
// the limit, so the attribute carries the unrounded fraction.
const fractions = await page
  .locator('tr', { hasText: expect.token })
  .locator('svg.meter')
  .evaluateAll((svgs) => svgs.map((svg) => Number(svg.getAttribute('data-fraction'))));
check(fractions.some((f) => f > 0), `the burn meters of ${expect.token} show no use (${fractions}) after requests were served`);
await shot('07-budgets');

shown = await open('Incidents', '/incidents');
check(shown.includes(expect.incident), `incidents lack ${expect.incident}`);
await shot('08-incidents');

shown = await open('Audit trail', '/audit');
const rows = page.locator('tbody tr', { hasText: expect.namespace });
check(await rows.count() > 0, 'no writer of the namespace on the audit page');
check(await rows.locator('.pill.Verified').count() > 0, `no verified writer: ${await rows.first().innerText()}`);
check(await page.locator('.pill.Broken').count() === 0, 'a broken writer is shown');
check(shown.includes('Signatures checked against the published keyring'), 'signatures not checked');
await shot('09-audit');

// 5. Signing out ends the session.
await page.getByRole('button', { name: 'Log out' }).click();
await page.waitForURL(`${base}/login`);
await page.goto(`${base}/models`);
check(page.url() === `${base}/login`, `after logout /models went to ${page.url()}`);

check(foreign.length === 0, `requests outside the dashboard: ${foreign.join(', ')}`);
check(scripts.length === 0, `console output (no script should run): ${scripts.join(' | ')}`);
await browser.close();
console.log(JSON.stringify({ ok: true, screenshots: shots, pages: measured }));
