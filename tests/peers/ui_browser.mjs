// Drives hypervisord's dashboard in headless Chromium (Debian's, through
// playwright-core), as hypersdk-daemon/tests/ui.rs starts it: sign in, submit
// an export of the example VM and watch it reach 100 %, open its report,
// cancel a slow one, see a viewer without the submit button and answered 403
// by the API behind it, the pages at phone width and by keyboard, nothing
// requested from elsewhere; a screenshot of every page into SHOTS.
//
// Environment: BASE (http://127.0.0.1:PORT), PLAYWRIGHT_DIR (where
// playwright-core is installed), ADMIN_KEY, VIEWER_KEY, SHOTS (a directory).
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');
const BASE = process.env.BASE;
const SHOTS = process.env.SHOTS;
mkdirSync(SHOTS, { recursive: true });

const problems = [];
function check(ok, what) {
  if (!ok) problems.push(what);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  timeout: 60000,
});

async function session(viewport) {
  const ctx = await browser.newContext({ viewport: viewport || { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  const foreign = [];
  const errors = [];
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(BASE) && !/^(data|blob|about):/.test(u)) foreign.push(u);
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  // Script errors and policy refusals; not the browser's notes of the
  // API's expected 4xx answers (a wrong key, a bad option, a viewer's POST).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
  });
  page.on('response', (r) => { if (r.status() === 404) errors.push(`404 ${r.url()}`); });
  return { ctx, page, foreign, errors };
}

async function signIn(page, key) {
  await page.goto(`${BASE}/`);
  await page.waitForSelector('#apikey');
  // By keyboard: the field has focus; type the key and press Enter.
  await page.keyboard.type(key);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#whoami');
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function jobStatus(page) {
  return (await page.locator('.toolbar .badge').first().textContent()).trim();
}

try {
  // ---- an admin ----
  const a = await session();
  await a.page.goto(`${BASE}/`);
  check(a.page.url().endsWith('/ui/'), `/ redirects to the dashboard (${a.page.url()})`);
  await a.page.waitForSelector('#apikey');
  await shot(a.page, 'signin');
  await a.page.fill('#apikey', 'not-a-key');
  await a.page.click('button[type=submit]');
  await a.page.getByText('That API key is not known').waitFor();
  check(true, 'a wrong key is refused with a message');
  check(!a.page.url().includes('not-a-key'), 'the key is never in the URL');

  await signIn(a.page, process.env.ADMIN_KEY);
  check((await a.page.locator('#whoami').textContent()).includes('admin'), 'signed in as admin');
  check(await a.page.locator('nav a[data-page=audit]').count() === 1, 'an admin sees the audit log');

  // Submit an export of the example VM, slowed so its progress shows.
  await a.page.goto(`${BASE}/ui/#/submit`);
  await a.page.waitForSelector('#o-vm option[value="demo-vm"]', { state: 'attached' });
  await shot(a.page, 'submit');
  // A bad option value: the daemon's message, shown at the field.
  await a.page.fill('#o-bwlimit', 'fast');
  await a.page.click('#submit-button');
  await a.page.locator('#submit-error').filter({ hasText: 'bwlimit' }).waitFor();
  check(await a.page.locator('#o-bwlimit').getAttribute('aria-invalid') === 'true', 'a bad bwlimit is marked at its field');
  await a.page.fill('#o-bwlimit', '16M');
  await a.page.selectOption('#o-format', 'ova');
  await a.page.check('#o-verify');
  await a.page.click('#submit-button');
  await a.page.waitForURL(/#\/job\/\d+$/);
  const jobUrl = a.page.url();
  const id = jobUrl.split('/').pop();
  check(true, `job ${id} submitted from the form`);
  // Watch it: a bar part-way, then succeeded (100 %).
  let partWay = false;
  const deadline = Date.now() + 60000;
  for (;;) {
    const bar = a.page.locator(`[data-progress="${id}"] progress`);
    if (await bar.count()) {
      const v = Number(await bar.getAttribute('value'));
      if (v > 0 && v < 100) partWay = true;
    }
    if ((await jobStatus(a.page)) === 'succeeded') break;
    if (Date.now() > deadline) throw new Error(`job ${id} did not succeed`);
    await a.page.waitForTimeout(150);
  }
  check(partWay, 'live progress showed the job part-way');
  check((await jobStatus(a.page)) === 'succeeded', 'the job succeeded');
  // Its report, in a sandboxed frame.
  const report = a.page.frameLocator('#report');
  await report.getByText('Export of demo-vm').waitFor();
  await report.getByText('verified: every stored file').first().waitFor();
  check(true, 'the job page shows its report (verified)');
  check(await a.page.locator('a[download$="report.html"]').count() === 1, 'the report can be downloaded');
  await shot(a.page, 'job');
  await a.page.goto(`${BASE}/ui/#/jobs`);
  await a.page.locator(`tr[data-job="${id}"] [data-progress]`).filter({ hasText: '100%' }).waitFor();
  check(true, 'the jobs list shows it at 100%');
  await shot(a.page, 'jobs');

  // A slow one, cancelled from its page, then retryable.
  await a.page.goto(`${BASE}/ui/#/submit`);
  await a.page.waitForSelector('#o-vm option[value="demo-vm"]', { state: 'attached' });
  await a.page.fill('#o-bwlimit', '1M');
  await a.page.selectOption('#o-format', 'ovf');
  await a.page.fill('#o-output', 'slow');
  await a.page.click('#submit-button');
  await a.page.waitForURL(/#\/job\/\d+$/);
  await a.page.locator('[data-progress] progress').waitFor();
  await a.page.click('button[data-action=cancel]');
  await a.page.locator('.toolbar .badge').filter({ hasText: 'cancelled' }).waitFor();
  check(true, 'a running job was cancelled from its page');
  check(await a.page.locator('button[data-action=retry]').count() === 1, 'a cancelled job offers Retry');

  // Filters of the jobs list.
  await a.page.goto(`${BASE}/ui/#/jobs?status=cancelled`);
  await a.page.locator('tr[data-job]').first().waitFor();
  const statuses = await a.page.locator('tr[data-job] .badge').allTextContents();
  check(statuses.length >= 1 && statuses.every((s) => s === 'cancelled'), `the status filter lists only cancelled jobs (${statuses})`);

  for (const p of ['vms', 'schedules', 'profiles', 'webhooks', 'audit', 'health']) {
    await a.page.goto(`${BASE}/ui/#/${p}`);
    await a.page.locator('main h1').waitFor();
    await a.page.waitForTimeout(300);
    await shot(a.page, p);
  }
  await a.page.goto(`${BASE}/ui/#/vms`);
  await a.page.getByRole('cell', { name: 'demo-vm' }).waitFor();
  check(true, 'the VMs page lists the example VM');
  await a.page.goto(`${BASE}/ui/#/schedules`);
  await a.page.getByText('nightly').waitFor();
  await a.page.locator('details summary').first().click();
  await a.page.getByText('missed').first().waitFor();
  check(true, 'schedules show their history with missed runs');
  // A name carrying HTML shows as text; its handler never runs.
  await a.page.getByText('<img src=x onerror=').first().waitFor();
  check(await a.page.evaluate(() => window.__pwned === undefined), 'HTML in a name is shown as text, never run');
  await a.page.goto(`${BASE}/ui/#/webhooks`);
  await a.page.locator('.badge').filter({ hasText: /open until|closed/ }).first().waitFor();
  check(true, 'webhooks show their circuit');
  await a.page.goto(`${BASE}/ui/#/audit`);
  await a.page.getByText('POST /api/v1/jobs').first().waitFor();
  check(true, 'the audit log lists the submissions');
  await a.page.goto(`${BASE}/ui/#/health`);
  await a.page.locator('#health-status').filter({ hasText: 'ready' }).waitFor();
  check(true, 'the health page says ready');
  check(a.foreign.length === 0, `no request left the daemon (${a.foreign})`);
  check(a.errors.length === 0, `no script or policy errors (${a.errors})`);

  // ---- a viewer, at phone width ----
  const v = await session({ width: 390, height: 844 });
  await signIn(v.page, process.env.VIEWER_KEY);
  check(await v.page.locator('nav a[data-page=submit]').count() === 0, 'a viewer has no Submit page');
  check(await v.page.locator('nav a[data-page=audit]').count() === 0, 'a viewer has no audit log');
  await v.page.goto(`${BASE}/ui/#/jobs`);
  await v.page.locator('tr[data-job]').first().waitFor();
  check(await v.page.locator('button[data-action]').count() === 0, 'a viewer sees no Cancel or Retry');
  const overflow = await v.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the jobs page fits a phone's width (overflow ${overflow}px)`);
  await shot(v.page, 'jobs-phone');
  await v.page.goto(`${BASE}/ui/#/submit`);
  await v.page.getByText('needs the operator role').waitFor();
  check(await v.page.locator('#submit-button').count() === 0, 'a viewer is shown no submit button');
  await shot(v.page, 'submit-viewer');
  const code = await v.page.evaluate(async (key) => (await fetch('/api/v1/jobs', {
    method: 'POST', headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: JSON.stringify({ vm: 'demo-vm', provider: 'kvm' }),
  })).status, process.env.VIEWER_KEY);
  check(code === 403, `the API behind the button answers a viewer 403 (${code})`);
  // Keyboard only: on a fresh load the first Tab reaches the skip link.
  await v.page.goto('about:blank');
  await v.page.goto(`${BASE}/ui/#/jobs`);
  await v.page.locator('main h1').waitFor();
  await v.page.keyboard.press('Tab');
  const first = await v.page.evaluate(() => document.activeElement.className);
  check(first === 'skip', `the first Tab lands on the skip link (${first})`);
  await v.page.click('#who button');
  await v.page.waitForSelector('#apikey');
  check(await v.page.evaluate(() => sessionStorage.length) === 0, 'signing out forgets the key');
  check(v.foreign.length === 0, `no request left the daemon (${v.foreign})`);
  check(v.errors.length === 0, `no script or policy errors (${v.errors})`);
} catch (e) {
  problems.push(String(e && e.stack || e));
  console.log(`FAIL ${e}`);
} finally {
  await browser.close();
}
if (problems.length) {
  console.log(`\n${problems.length} problem(s):\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('all dashboard checks passed');
