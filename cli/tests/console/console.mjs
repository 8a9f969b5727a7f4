// Drives the skiff web console in headless Chromium for cli/tests/console.rs.
//
// Usage: node console.mjs URL SCREENSHOT_PATH
//
// The Rust test runs three sites (west, east, north; links west-east, east-north, west-north;
// key "echo" served at east and north; listeners at west: "echo", "down" (its backend refuses)
// and "nowhere" (no site serves its key)) with west's admin API at URL. This script checks what
// the page shows and asks the test for actions over stdio: it prints `ask ACTION` and waits for
// `done ACTION` on stdin (ACTION: `failing-flow`, `stop north`, `stop west`, `start west`).
// It also answers the page's polls of /v1/network, /v1/connectors and /v1/flows itself for a
// while (page.route), with hostile names (markup, a very long string) and a flow total beyond
// the page's limit, then lets the real answers through again; then, the same way, a site that
// goes and comes back with a new id (drawn once) and west's links going down and up again (no
// rate averaged over the outage); and it hides the page to check that polling pauses. Progress lines
// start with `step`; a failure exits 1 with `FAIL what` on stderr. Env: SKIFF_CHROMIUM (the
// browser, default /usr/bin/chromium), SKIFF_CONSOLE_EXTRA_SHOTS (a folder for screenshots of
// the later states). Time bounds (the page polls every 2 s): the failed flow shows within 6 s,
// north unreachable within 10 s of its stop, the banner within 8 s of west's stop.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node console.mjs URL SCREENSHOT_PATH');
  process.exit(2);
}
// A folder for screenshots of the later states too (north stopped, west stopped), if wanted.
const extraShots = process.env.SKIFF_CONSOLE_EXTRA_SHOTS;
const chromiumPath = process.env.SKIFF_CHROMIUM || '/usr/bin/chromium';
const started = Date.now();
const step = (what) => console.log(`step ${((Date.now() - started) / 1000).toFixed(1)}s ${what}`);

// Replies from the test, one line each.
const replies = [];
let wake = null;
createInterface({ input: process.stdin }).on('line', (line) => {
  replies.push(line.trim());
  if (wake) wake();
});
async function ask(action, timeoutMs) {
  console.log(`ask ${action}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = replies.indexOf(`done ${action}`);
    if (i >= 0) { replies.splice(i, 1); return; }
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`the test did not answer "${action}" within ${timeoutMs} ms`);
    await new Promise((resolve) => { wake = resolve; setTimeout(resolve, Math.min(left, 200)); });
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// Waits until `fn` (run in the page with `arg`) is truthy; on timeout says what was awaited
// and what the page showed.
// Returns how long it took, in ms.
async function until(page, what, fn, arg, timeoutMs = 15000) {
  const from = Date.now();
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
    return Date.now() - from;
  } catch (e) {
    const shown = await page.evaluate(() => ({
      sites: [...document.querySelectorAll('g.site')].map((g) => `${g.dataset.site}:${g.dataset.state}`),
      links: [...document.querySelectorAll('line.link')].map((l) => `${l.dataset.from}-${l.dataset.to}:${l.dataset.state}`),
      banner: document.getElementById('banner').hidden ? null : document.getElementById('banner').textContent,
      flows: [...document.querySelectorAll('tr.flow')].map((r) => `${r.dataset.key}:${r.dataset.outcome}`).slice(0, 10),
      summary: document.getElementById('flows-summary').textContent,
    }));
    throw new Error(`${what}: not shown within ${timeoutMs} ms; the page shows ${JSON.stringify(shown)}`);
  }
}

const pair = (a, b) => [a, b].sort().join('-');

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  const problems = [];
  let expectFetchErrors = false;
  // Fetches the page aborted itself: harmless unless the banner was shown (then a fetch was
  // cut by the console's timeout while west was running, which is a problem).
  const aborted = [];
  const apiWentDown = () => page.evaluate(() => window.__skiffApiDown === true);
  const noProblems = async (when) => {
    if (!expectFetchErrors && aborted.length && (await apiWentDown())) problems.push(...aborted);
    check(problems.length === 0, `the page had problems ${when}: ${problems.join('; ')}`);
  };
  await page.addInitScript(() => {
    // Notes whether the console ever marked the API down (its banner), for the test.
    new MutationObserver(() => {
      if (document.body && document.body.dataset.api === 'down') window.__skiffApiDown = true;
    }).observe(document, { attributes: true, subtree: true, attributeFilter: ['data-api'] });
  });
  // Polls of the admin API, with their times, to check the flow limit and the hidden pause.
  const polls = [];
  page.on('dialog', (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => problems.push(`script error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    if (expectFetchErrors && /Failed to load resource|ERR_CONNECTION_REFUSED/.test(m.text())) return;
    problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('requestfailed', (r) => {
    if (expectFetchErrors) return;
    const what = `request failed: ${r.url()} ${r.failure()?.errorText}`;
    if (/ERR_ABORTED/.test(r.failure()?.errorText || '')) aborted.push(what);
    else problems.push(what);
  });
  const outside = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(url.replace(/\/$/, ''))) outside.push(r.url());
    if (r.url().includes('/v1/')) polls.push({ t: Date.now(), url: r.url() });
  });

  const response = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  check(response.ok(), `GET ${url} answered ${response.status()}`);
  step('page loaded');

  // Three sites, west marked as this site, and the three links up.
  await until(page, 'three reachable sites and three links up', () =>
    document.querySelectorAll('g.site[data-state="local"], g.site[data-state="reachable"]').length === 3 &&
    document.querySelectorAll('line.link[data-state="up"]').length === 3);
  const drawn = await page.evaluate(() => ({
    sites: [...document.querySelectorAll('g.site')].map((g) => ({ name: g.dataset.site, state: g.dataset.state, text: g.textContent })),
    links: [...document.querySelectorAll('line.link')].map((l) => [l.dataset.from, l.dataset.to, l.dataset.state]),
    labels: [...document.querySelectorAll('g.edge-label')].map((g) => g.textContent),
  }));
  check(JSON.stringify(drawn.sites.map((s) => s.name).sort()) === '["east","north","west"]', `sites drawn: ${JSON.stringify(drawn.sites)}`);
  const west = drawn.sites.find((s) => s.name === 'west');
  check(west.state === 'local' && west.text.includes('this site'), `west is not marked as this site: ${JSON.stringify(west)}`);
  const edges = drawn.links.map(([a, b]) => pair(a, b)).sort();
  check(JSON.stringify(edges) === JSON.stringify(['east-north', 'east-west', 'north-west']), `edges drawn: ${JSON.stringify(drawn.links)}`);
  check(drawn.labels.every((l) => /cost 1/.test(l)), `edge labels without cost: ${JSON.stringify(drawn.labels)}`);
  step(`topology drawn: ${JSON.stringify(drawn.links)} labels ${JSON.stringify(drawn.labels)}`);

  // Services: key "echo" served by east and north; "nowhere" has no target, and says why.
  await until(page, 'key echo served by east and north', () => {
    const tags = [...document.querySelectorAll('tr.key[data-key="echo"] .site-tag')].map((t) => t.dataset.site);
    return tags.includes('east') && tags.includes('north');
  });
  const nowhere = await page.evaluate(() => {
    const row = document.querySelector('tr.listener[data-listener="nowhere"]');
    return row && { status: row.dataset.status, detail: row.querySelector('.detail').textContent };
  });
  check(nowhere && nowhere.status === 'no-target' && /nowhere/.test(nowhere.detail),
    `listener "nowhere" should show no-target with its key in the reason: ${JSON.stringify(nowhere)}`);
  const echo = await page.evaluate(() => document.querySelector('tr.listener[data-listener="echo"] .detail')?.textContent);
  check(/east/.test(echo) && /north/.test(echo), `listener "echo" should name its reachable sites east and north: ${echo}`);
  step(`services listed; listener nowhere: ${nowhere.detail}; listener echo: ${echo}`);

  // A flow the backend refuses shows up in the table, highlighted, with its reason.
  // The page polls every 2 s: a new flow record shows within one poll and a fetch.
  await ask('failing-flow', 20000);
  const flowShown = await until(page, 'a failed flow for key "down"', () =>
    [...document.querySelectorAll('tr.flow.error[data-key="down"]')].some((r) => r.querySelector('.reason')?.textContent),
  null, 6000);
  const failed = await page.evaluate(() => {
    const row = document.querySelector('tr.flow.error[data-key="down"]');
    const ok = document.createElement('tr');
    ok.className = 'flow ok';
    ok.append(document.createElement('td'));
    document.querySelector('#flows tbody').append(ok);
    const plain = getComputedStyle(ok.firstChild).backgroundColor;
    ok.remove();
    return {
      outcome: row.dataset.outcome,
      text: row.querySelector('.outcome').textContent,
      background: getComputedStyle(row.querySelector('td')).backgroundColor,
      plain,
    };
  });
  check(failed.outcome !== 'ok' && failed.background !== failed.plain,
    `the failed flow is not highlighted: ${JSON.stringify(failed)}`);
  step(`failed flow shown highlighted after ${flowShown} ms (${failed.background}): ${failed.text}`);

  // Traffic on this site's links: the test streams data through listener "echo".
  // Keepalives alone move a few hundred B/s; the stream moves megabytes.
  const trafficShown = await until(page, 'a traffic rate of at least 100 kB/s on a link of west', () =>
    [...document.querySelectorAll('g.edge-label')].some((g) =>
      [...g.textContent.matchAll(/[↑↓] ([\d.]+) (B|kB|MB|GB)\/s/g)].some(([, n, unit]) =>
        Number(n) * { B: 1, kB: 1e3, MB: 1e6, GB: 1e9 }[unit] >= 100e3)),
  null, 10000);
  const labels = await page.evaluate(() => [...document.querySelectorAll('g.edge-label')].map((g) => `${g.dataset.from}-${g.dataset.to}: ${g.textContent}`));
  check(labels.filter((l) => / rtt [\d.]+ ms/.test(l)).length === 2, `west's two links should show their rtt: ${JSON.stringify(labels)}`);
  step(`traffic shown after ${trafficShown} ms: ${JSON.stringify(labels)}`);

  await noProblems('before the screenshot');
  check(outside.length === 0, `the page fetched from elsewhere: ${outside.join(', ')}`);
  const flowPolls = polls.filter((p) => p.url.includes('/v1/flows'));
  check(flowPolls.length > 0 && flowPolls.every((p) => p.url.endsWith('/v1/flows?limit=100')),
    `the page should ask /v1/flows?limit=100: ${JSON.stringify(flowPolls.slice(0, 3))}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  step(`screenshot written to ${screenshot}`);

  // Hostile names in the admin API's answers (a site, a key, a connector's host and reason,
  // a very long string) are shown as text: no element made, no script run, no dialog.
  const hostile = {
    site: '"><svg onload=alert(1)>',
    key: '<img src=x onerror=alert(2)>',
    host: '<img src=x onerror=alert(3)>',
    reason: '</td><script>alert(4)</script>' + 'W'.repeat(20000),
  };
  const elementsBefore = await page.evaluate(() => ({
    img: document.querySelectorAll('img').length,
    svg: document.querySelectorAll('svg').length,
    script: document.querySelectorAll('script').length,
  }));
  const doctor = async (route, edit) => {
    const real = await route.fetch();
    const body = await real.json();
    edit(body);
    await route.fulfill({ status: real.status(), json: body });
  };
  await page.route('**/v1/network*', (route) => doctor(route, (net) => {
    const east = (net.routers || []).find((r) => r.name === 'east');
    if (east) east.name = hostile.site;
    (net.keys || []).push({ routingKey: hostile.key, sites: [{ siteName: hostile.site, protocol: 'tcp', port: 9, connectors: 1, reachable: true }] });
  }));
  await page.route('**/v1/connectors*', (route) => doctor(route, (list) => {
    list.push({ name: 'hostile', routingKey: hostile.key, host: hostile.host, port: 9, status: 'error', reason: hostile.reason, flowsTotal: 0, flowsFailed: 0, flowsActive: 0 });
  }));
  // A site with more flows than the page asked for says how many it has.
  await page.route('**/v1/flows*', (route) => doctor(route, (flows) => {
    flows.activeTotal = (flows.active || []).length + 5000;
  }));
  const hostileShown = await until(page, 'the hostile answers drawn', () =>
    document.querySelector('tr.connector[data-connector="hostile"]') &&
    /of \d+ active/.test(document.getElementById('flows-summary').textContent), null, 8000);
  const shownHostile = await page.evaluate((h) => {
    const row = document.querySelector('tr.connector[data-connector="hostile"]');
    const key = [...document.querySelectorAll('tr.key')].find((r) => r.dataset.key === h.key);
    const site = [...document.querySelectorAll('g.site')].find((g) => g.dataset.site === h.site);
    return {
      host: row.children[2].textContent,
      reason: row.querySelector('.detail').textContent,
      cells: row.children.length,
      key: key && key.children[0].textContent,
      tag: key && key.querySelector('.site-tag').textContent,
      site: site && site.querySelector('text.name').textContent,
      img: document.querySelectorAll('img').length,
      svg: document.querySelectorAll('svg').length,
      script: document.querySelectorAll('script').length,
      flows: document.getElementById('flows-summary').textContent,
      pageWidth: document.documentElement.scrollWidth,
    };
  }, hostile);
  check(shownHostile.pageWidth <= 1280, `a very long reason widened the page to ${shownHostile.pageWidth} px`);
  check(shownHostile.host === `${hostile.host}:9` && shownHostile.reason === hostile.reason && shownHostile.cells === 6,
    `the hostile connector should show its host and reason as text in its own cells: ${JSON.stringify({ ...shownHostile, reason: shownHostile.reason.slice(0, 80) })}`);
  check(shownHostile.key === hostile.key && shownHostile.tag.startsWith(hostile.site) && shownHostile.site === hostile.site,
    `the hostile key and site name should show as text: ${JSON.stringify({ ...shownHostile, reason: undefined })}`);
  check(shownHostile.img === elementsBefore.img && shownHostile.svg === elementsBefore.svg && shownHostile.script === elementsBefore.script,
    `the hostile names made elements: before ${JSON.stringify(elementsBefore)}, after ${JSON.stringify({ ...shownHostile, reason: undefined })}`);
  await noProblems('with hostile names');
  step(`hostile names shown as text after ${hostileShown} ms (no element, no dialog); flows: ${shownHostile.flows}`);
  await page.unroute('**/v1/network*');
  await page.unroute('**/v1/connectors*');
  await page.unroute('**/v1/flows*');
  await until(page, 'the real answers again', () =>
    !document.querySelector('tr.connector[data-connector="hostile"]') &&
    document.querySelector('g.site[data-site="east"]') &&
    !/ of /.test(document.getElementById('flows-summary').textContent), null, 8000);

  // Three polls answered by the test: (1) a site "ghost" and west's links up with 1 GB sent,
  // (2) ghost gone and the links connecting, (3) ghost re-created with a new id and the links
  // up again with 500 MB more. The page must draw one ghost (the new, reachable one), and no
  // rate averaged over the outage (500 MB / 4 s would read 125 MB/s).
  let netCalls = 0;
  let linkCalls = 0;
  await page.route('**/v1/network*', (route) => doctor(route, (net) => {
    netCalls++;
    if (netCalls === 1) net.routers.push({ id: 'ghost-old-id', name: 'ghost', reachable: true, cost: 1, links: [] });
    if (netCalls >= 3) net.routers.push({ id: 'ghost-new-id', name: 'ghost', reachable: true, cost: 1, links: [] });
  }));
  await page.route('**/v1/links*', (route) => doctor(route, (links) => {
    linkCalls++;
    for (const l of links) {
      l.status = linkCalls === 2 ? 'connecting' : 'up';
      l.bytes_sent = l.bytes_received = linkCalls >= 3 ? 1.5e9 : 1e9;
    }
  }));
  const ghost = () => page.evaluate(() => [...document.querySelectorAll('g.site')].filter((g) => g.dataset.site === 'ghost')
    .map((g) => ({ id: g.dataset.siteId, state: g.dataset.state, text: g.textContent })));
  await until(page, 'site ghost drawn', () => [...document.querySelectorAll('g.site')].some((g) => g.dataset.site === 'ghost'), null, 8000);
  await until(page, 'site ghost drawn as gone', () => [...document.querySelectorAll('g.site')]
    .some((g) => g.dataset.site === 'ghost' && g.textContent.includes('gone')), null, 8000);
  await until(page, 'site ghost re-created', () => [...document.querySelectorAll('g.site')]
    .some((g) => g.dataset.siteId === 'ghost-new-id'), null, 8000);
  const [ghosts, backLabels] = [await ghost(), await page.evaluate(() => [...document.querySelectorAll('g.edge-label')].map((g) => g.textContent))];
  await page.unroute('**/v1/network*');
  await page.unroute('**/v1/links*');
  check(ghosts.length === 1 && ghosts[0].id === 'ghost-new-id' && ghosts[0].state === 'reachable',
    `a re-created site should be drawn once, by its new id: ${JSON.stringify(ghosts)}`);
  const averaged = backLabels.filter((l) => [...l.matchAll(/[↑↓] ([\d.]+) (MB|GB)\/s/g)]
    .some(([, n, unit]) => Number(n) * { MB: 1e6, GB: 1e9 }[unit] >= 100e6));
  check(averaged.length === 0 && backLabels.some((l) => l.includes('measuring traffic')),
    `links back up should measure afresh, not average over the outage: ${JSON.stringify(backLabels)}`);
  step(`re-created site drawn once (${JSON.stringify(ghosts)}); links back up: ${JSON.stringify(backLabels)}`);

  // A hidden page asks nothing; shown again, it polls at once.
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await new Promise((r) => setTimeout(r, 1000)); // a poll under way finishes
  const hiddenFrom = polls.length;
  await new Promise((r) => setTimeout(r, 5000));
  const whileHidden = polls.length - hiddenFrom;
  const shownAt = Date.now();
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  for (let i = 0; i < 40 && !polls.some((p) => p.t >= shownAt); i++) await new Promise((r) => setTimeout(r, 50));
  const firstShown = polls.find((p) => p.t >= shownAt);
  const resumed = firstShown ? firstShown.t - shownAt : null;
  check(whileHidden === 0, `the hidden page polled ${whileHidden} times in 5 s`);
  check(resumed !== null && resumed < 1000, `the page shown again did not poll within 1 s (${resumed})`);
  step(`hidden for 5 s: ${whileHidden} polls; shown again: polled after ${resumed} ms`);

  // A stopped site is marked unreachable, in words.
  await ask('stop north', 20000);
  const northShown = await until(page, 'north marked unreachable', () => {
    const g = document.querySelector('g.site[data-site="north"]');
    return g && g.dataset.state === 'unreachable' && g.textContent.includes('unreachable');
  }, null, 10000);
  const afterNorth = await page.evaluate(() =>
    [...document.querySelectorAll('line.link')].map((l) => [[l.dataset.from, l.dataset.to].sort().join('-'), l.dataset.state]));
  check(afterNorth.filter(([p]) => p.includes('north')).every(([, s]) => s === 'down'),
    `links to north should be drawn down: ${JSON.stringify(afterNorth)}`);
  check(afterNorth.some(([p, s]) => p === 'east-west' && s === 'up'), `east-west should stay up: ${JSON.stringify(afterNorth)}`);
  step(`north shown unreachable ${northShown} ms after it stopped; links ${JSON.stringify(afterNorth)}`);
  if (extraShots) await page.screenshot({ path: `${extraShots}/console-north-stopped.png`, fullPage: true });

  // West itself stopped: the banner says the admin API does not answer.
  await noProblems('before west stopped');
  expectFetchErrors = true;
  await ask('stop west', 20000);
  const bannerShown = await until(page, 'the banner for a stopped site', () => {
    const b = document.getElementById('banner');
    return !b.hidden && b.textContent.includes('has not served the console') && document.body.dataset.api === 'down';
  }, null, 8000);
  // West has exited now (the test answers once it has): the banner says nothing answers.
  await until(page, 'the banner saying there is no connection', () =>
    document.getElementById('banner').textContent.includes('no connection for /v1/'), null, 6000);
  const banner = await page.evaluate(() => document.getElementById('banner').textContent);
  step(`banner shown ${bannerShown} ms after west stopped: ${banner}`);
  if (extraShots) await page.screenshot({ path: `${extraShots}/console-west-stopped.png`, fullPage: true });
  // West back on the same address: the banner goes by itself; north is still shown, unreachable.
  await ask('start west', 30000);
  const recovered = await until(page, 'the banner gone once west answers again', () =>
    document.getElementById('banner').hidden && document.body.dataset.api === 'up' &&
    document.querySelector('g.site[data-site="west"]')?.dataset.state === 'local' &&
    document.querySelector('g.site[data-site="north"]')?.dataset.state === 'unreachable', null, 8000);
  step(`banner gone ${recovered} ms after west answered again; north still shown unreachable`);
  check(problems.length === 0, `the page had problems: ${problems.join('; ')}`);
  console.log('ok');
} catch (e) {
  console.error(`FAIL ${e.message}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
