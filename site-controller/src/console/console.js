// The skiff web console's logic: polls this site's admin API every 2 s and draws the network
// (sites, links, traffic), the services and the recent flows. Plain DOM and SVG; every string
// from the network goes in through textContent or setAttribute, never as markup.
'use strict';

const POLL_MS = 2000;
// Long enough for a site behind a port-forward or SSH tunnel, or busy, to answer: a slower
// answer shows the banner.
const TIMEOUT_MS = 5000;
const MAX_FLOW_ROWS = 100;
const MAX_SEEN_SITES = 500;
// A site gone from the network view is drawn as gone for this long after it was last seen.
const FORGET_GONE_MS = 5 * 60 * 1000;
const SVG_NS = 'http://www.w3.org/2000/svg';
// `flows` asks for at most MAX_FLOW_ROWS flows of each kind (a site that does not know `limit`
// answers them all; the console then cuts the table).
const ENDPOINTS = ['site', 'network', 'links', 'flows', 'listeners', 'connectors'];
const QUERIES = { flows: `?limit=${MAX_FLOW_ROWS}` };

const state = {
  // Sites seen since the page loaded (id -> {name, at: when last in the network view}): one
  // that drops out of the view is still drawn, as gone, until FORGET_GONE_MS have passed or
  // another site of its name is reachable (the site re-created with a new id).
  seen: new Map(),
  // Per link of this site: the last byte counters, for rates.
  samples: new Map(),
  downSince: null,
  siteName: null,
  // The next poll's timer; null while the page is hidden (polling paused).
  timer: null,
  polling: false,
};

// ---- small DOM helpers ------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  setAttrs(e, attrs);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
  }
}

function fillBody(table, rows, emptyText, columns) {
  const body = document.querySelector(`#${table} tbody`);
  if (rows.length === 0) rows = [el('tr', {}, el('td', { class: 'empty', colspan: columns }, emptyText))];
  body.replaceChildren(...rows);
}

// ---- formatting -------------------------------------------------------------------------

function bytes(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
}

function rate(n) { return bytes(n) + '/s'; }

function duration(ms) {
  if (typeof ms !== 'number') return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function clock(date, zone = true) {
  const d = date instanceof Date ? date : new Date(date);
  return isNaN(d) ? '–' : d.toISOString().slice(11, 19) + (zone ? ' UTC' : '');
}

function shortId(id) { return typeof id === 'string' ? id.slice(0, 8) : '?'; }

// ---- polling ----------------------------------------------------------------------------

// The JSON at `path`; an error says which path failed and why (the site's own `error` words
// for an HTTP error, e.g. 503 while it shuts down).
async function getJson(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    let r;
    try {
      r = await fetch(path, { signal: ctl.signal, cache: 'no-store' });
    } catch (e) {
      throw new Error(e.name === 'AbortError' ? `no answer from ${path} within ${TIMEOUT_MS} ms` : `no connection for ${path} (${e.message})`);
    }
    if (!r.ok) {
      const body = await r.json().catch(() => null);
      const why = body && typeof body.error === 'string' ? `: ${body.error}` : '';
      throw new Error(`${path} answered HTTP ${r.status}${why}`);
    }
    return await r.json();
  } finally {
    clearTimeout(timer);
  }
}

async function poll() {
  let data;
  try {
    const values = await Promise.all(ENDPOINTS.map((e) => getJson('/v1/' + e + (QUERIES[e] || ''))));
    data = Object.fromEntries(ENDPOINTS.map((e, i) => [e, values[i]]));
  } catch (e) {
    apiDown(e.message);
    return;
  }
  apiUp();
  render(data, Date.now());
}

// Polls every POLL_MS while the page is visible; a hidden page (another tab, minimised) asks
// nothing and polls at once when it is shown again.
async function loop() {
  state.timer = null;
  if (document.hidden || state.polling) return;
  state.polling = true;
  try {
    await poll();
  } finally {
    state.polling = false;
    if (!document.hidden) state.timer = setTimeout(loop, POLL_MS);
  }
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  } else if (state.timer === null && !state.polling) {
    loop();
  }
});

function apiDown(why) {
  if (state.downSince === null) state.downSince = new Date();
  document.body.dataset.api = 'down';
  const banner = document.getElementById('banner');
  const who = state.siteName ? `site "${state.siteName}"` : 'the site';
  banner.textContent =
    `The admin API at ${location.host} has not served the console since ${clock(state.downSince)} (${why}): ` +
    `${who} may have stopped. Check it with: skiff site status. ` +
    `The page shows the last data it received and retries every ${POLL_MS / 1000} s.`;
  banner.hidden = false;
}

function apiUp() {
  state.downSince = null;
  document.body.dataset.api = 'up';
  document.getElementById('banner').hidden = true;
}

// ---- rendering ----------------------------------------------------------------------------

function render(d, now) {
  const site = d.site || {};
  state.siteName = site.name;
  document.title = `skiff console: ${site.name}`;
  document.getElementById('site-info').textContent =
    `site ${site.name} (${site.mode}) · version ${site.version} · up ${duration((site.uptimeSeconds || 0) * 1000)}`;
  document.getElementById('updated').textContent = `updated ${clock(new Date(now))}`;
  const net = d.network || {};
  const names = new Map((net.routers || []).map((r) => [r.id, r.name]));
  renderTopology(net, Array.isArray(d.links) ? d.links : [], site, now);
  renderKeys(net.keys || []);
  renderListeners(Array.isArray(d.listeners) ? d.listeners : [], net.keys || []);
  renderConnectors(Array.isArray(d.connectors) ? d.connectors : []);
  renderFlows(d.flows, names, site);
}

// Sites as nodes on a circle sorted by name (deterministic), links as edges.
function renderTopology(net, links, site, now) {
  // A link that is gone or not up loses its byte sample: its first rate once up again is
  // measured from then, not averaged over the outage.
  const linksUp = new Set(links.filter((l) => l.status === 'up').map((l) => l.name));
  for (const name of state.samples.keys()) if (!linksUp.has(name)) state.samples.delete(name);
  const sites = new Map();
  for (const r of net.routers || []) {
    sites.set(r.id, { id: r.id, name: r.name, reachable: !!r.reachable, local: !!r.local, cost: r.cost, mode: r.mode });
  }
  if (site.id && !sites.has(site.id)) sites.set(site.id, { id: site.id, name: site.name, reachable: true, local: true, cost: 0, mode: site.mode });
  for (const l of links) {
    if (l.peer_site_id && !sites.has(l.peer_site_id) && l.status !== 'revoked') {
      sites.set(l.peer_site_id, { id: l.peer_site_id, name: l.peer_site_name || l.name, reachable: false, missing: true });
    }
  }
  for (const s of sites.values()) {
    if (!s.name) s.name = shortId(s.id);
    if (!s.missing && (state.seen.size < MAX_SEEN_SITES || state.seen.has(s.id))) state.seen.set(s.id, { name: s.name, at: now });
  }
  const reachableNames = new Set([...sites.values()].filter((s) => s.reachable).map((s) => s.name));
  for (const [id, seen] of state.seen) {
    if (sites.has(id)) continue;
    if (now - seen.at > FORGET_GONE_MS || reachableNames.has(seen.name)) {
      state.seen.delete(id);
      continue;
    }
    sites.set(id, { id, name: seen.name, reachable: false, missing: true });
  }

  // Edges keyed by the pair of site ids: what each end advertises, and this site's links.
  const edges = new Map();
  const edge = (a, b) => {
    const [x, y] = a < b ? [a, b] : [b, a];
    const k = x + '|' + y;
    if (!edges.has(k)) edges.set(k, { a: x, b: y, ads: new Map(), mine: [] });
    return edges.get(k);
  };
  for (const r of net.routers || []) {
    for (const l of r.links || []) if (sites.has(l.peer)) edge(r.id, l.peer).ads.set(r.id, l);
  }
  for (const l of links) {
    if (l.peer_site_id && l.status !== 'revoked' && site.id) edge(site.id, l.peer_site_id).mine.push(l);
  }

  const ordered = [...sites.values()].sort((p, q) => (p.name < q.name ? -1 : p.name > q.name ? 1 : p.id < q.id ? -1 : 1));
  const n = ordered.length;
  // Up to 8 sites: a circle beside the services. More: an ellipse across the page, and cost
  // labels only where they matter (this site's links, links down or one-way).
  const many = n > 8;
  document.getElementById('topology-section').classList.toggle('wide', many);
  document.getElementById('services-section').classList.toggle('wide', many);
  const radius = n <= 1 ? 0 : many ? n * 17 : 165;
  const radiusX = many ? n * 30 : radius;
  const pos = new Map();
  ordered.forEach((s, i) => {
    // From the top, clockwise; two sites side by side.
    const angle = (n === 2 ? Math.PI : -Math.PI / 2) + (2 * Math.PI * i) / Math.max(n, 1);
    pos.set(s.id, { x: radiusX * Math.cos(angle), y: radius * Math.sin(angle) });
  });
  // The picture's box: the nodes, room for names beside and below them.
  const xs = [...pos.values()].map((p) => p.x);
  const ys = [...pos.values()].map((p) => p.y);
  const left = Math.min(...xs) - 110;
  const top = Math.min(...ys) - 75;
  const width = Math.max(Math.max(...xs) + 110 - left, 300);
  const height = Math.max(...ys) + 80 - top;
  const root = document.getElementById('topology');
  root.setAttribute('viewBox', `${Math.round(left)} ${Math.round(top)} ${Math.round(width)} ${Math.round(height)}`);
  const defs = svg('defs', {},
    svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      svg('path', { d: 'M 0 0 L 10 5 L 0 10 z' })));
  const edgeLayer = svg('g', { class: 'links' });
  const labelLayer = svg('g', { class: 'edge-labels' });
  const nodeLayer = svg('g', { class: 'sites' });
  const nodeRadius = 28;
  let up = 0;

  for (const e of edges.values()) {
    const sa = sites.get(e.a);
    const sb = sites.get(e.b);
    const adA = e.ads.get(e.a);
    const adB = e.ads.get(e.b);
    const mineUp = e.mine.filter((l) => l.status === 'up');
    let kind = 'up';
    let from = sa;
    let to = sb;
    if (!sa.reachable || !sb.reachable || (e.mine.length > 0 && mineUp.length === 0) || (!adA && !adB)) {
      kind = 'down';
    } else if (!adA || !adB) {
      kind = 'one-way';
      if (!adA) [from, to] = [sb, sa];
    } else {
      up++;
    }
    if (kind !== 'one-way' && from.name > to.name) [from, to] = [to, from];

    const lines = [];
    const costs = [...new Set([adA, adB, ...e.mine].filter(Boolean).map((x) => x.cost))].filter((c) => c !== undefined);
    const head = [];
    if (kind === 'down') head.push(e.mine.length && mineUp.length === 0 ? `link ${e.mine.map((l) => l.status).join(', ')}` : 'down');
    if (kind === 'one-way') head.push('one-way');
    if (costs.length) head.push(`cost ${costs.join(' / ')}`);
    const traffic = trafficOf(mineUp, now);
    if (traffic && traffic.rtt) head.push(traffic.rtt);
    lines.push(head.join(' · ') || 'up');
    if (traffic && traffic.rate) lines.push(traffic.rate);

    const pa = pos.get(from.id);
    const pb = pos.get(to.id);
    const dx = pb.x - pa.x;
    const dy = pb.y - pa.y;
    const len = Math.hypot(dx, dy) || 1;
    const cut = nodeRadius + 4;
    edgeLayer.append(svg('line', {
      class: `link ${kind}`,
      'data-from': from.name,
      'data-to': to.name,
      'data-state': kind,
      x1: pa.x + (dx / len) * cut, y1: pa.y + (dy / len) * cut,
      x2: pb.x - (dx / len) * cut, y2: pb.y - (dy / len) * cut,
      'marker-end': kind === 'one-way' ? 'url(#arrow)' : null,
    }, svg('title', {}, `${from.name} – ${to.name}: ${lines.join(', ')}`)));
    if (!many || kind !== 'up' || e.mine.length) {
      // This site's edges meet at its node: their labels sit nearer the other end.
      const t = from.local ? 0.62 : to.local ? 0.38 : 0.5;
      labelLayer.append(edgeLabel(lines, pa.x + (pb.x - pa.x) * t, pa.y + (pb.y - pa.y) * t, kind, from.name, to.name));
    }
  }

  for (const s of ordered) {
    const p = pos.get(s.id);
    const cls = ['site', s.local ? 'local' : '', s.reachable ? 'reachable' : 'unreachable'].filter(Boolean).join(' ');
    let note;
    if (!s.reachable) note = s.missing ? 'unreachable (gone)' : 'unreachable';
    else if (s.local) note = 'this site';
    else note = `path cost ${s.cost}`;
    if (s.mode === 'edge') note += ' · edge';
    const above = p.y < -radius * 0.5;
    nodeLayer.append(svg('g', {
      class: cls,
      'data-site': s.name,
      'data-site-id': s.id,
      'data-state': s.local ? 'local' : s.reachable ? 'reachable' : 'unreachable',
    },
    svg('title', {}, `${s.name} (${s.id})`),
    svg('circle', { cx: p.x, cy: p.y, r: nodeRadius }),
    // Names above the nodes in the top part of the circle, below elsewhere: clear of edges.
    svg('text', { class: 'name', x: p.x, y: above ? p.y - nodeRadius - 24 : p.y + nodeRadius + 18 }, s.name),
    svg('text', { class: 'note', x: p.x, y: above ? p.y - nodeRadius - 8 : p.y + nodeRadius + 34 }, note)));
  }
  root.replaceChildren(defs, edgeLayer, labelLayer, nodeLayer);
  fitLabels(root);

  const unreachable = ordered.filter((s) => !s.reachable).length;
  document.getElementById('topology-summary').textContent =
    `${n} site${n === 1 ? '' : 's'}${unreachable ? ` (${unreachable} unreachable)` : ''}, ${up} link${up === 1 ? '' : 's'} up`;
}

// `{rate: "↑ 1.2 MB/s ↓ 3.4 kB/s", rtt: "rtt 0.4 ms"}` from this site's up links to one peer.
function trafficOf(linksUp, now) {
  if (linksUp.length === 0) return null;
  let sent = 0;
  let received = 0;
  let measured = false;
  let counted = false;
  const rtts = [];
  for (const l of linksUp) {
    if (typeof l.rtt_ms === 'number') rtts.push(l.rtt_ms);
    if (typeof l.bytes_sent !== 'number' || typeof l.bytes_received !== 'number') continue;
    counted = true;
    const prev = state.samples.get(l.name);
    state.samples.set(l.name, { t: now, sent: l.bytes_sent, received: l.bytes_received });
    if (!prev || now <= prev.t || l.bytes_sent < prev.sent || l.bytes_received < prev.received) continue;
    measured = true;
    sent += ((l.bytes_sent - prev.sent) * 1000) / (now - prev.t);
    received += ((l.bytes_received - prev.received) * 1000) / (now - prev.t);
  }
  const out = {};
  if (counted) out.rate = measured ? `↑ ${rate(sent)} ↓ ${rate(received)}` : 'measuring traffic…';
  if (rtts.length) {
    const rtt = Math.min(...rtts);
    out.rtt = `rtt ${rtt < 10 ? rtt.toFixed(1) : Math.round(rtt)} ms`;
  }
  return out.rate || out.rtt ? out : null;
}

function edgeLabel(lines, x, y, kind, from, to) {
  const lineHeight = 16;
  const h = lines.length * lineHeight + 8;
  const g = svg('g', { class: `edge-label ${kind}`, 'data-from': from, 'data-to': to },
    svg('rect', { x: x - 30, y: y - h / 2, width: 60, height: h }));
  lines.forEach((text, i) => {
    g.append(svg('text', { x, y: y - h / 2 + lineHeight * (i + 1) }, text));
  });
  return g;
}

// Fits each edge label's box to its text, once the text is in the page and has a size.
function fitLabels(root) {
  for (const g of root.querySelectorAll('g.edge-label')) {
    const rect = g.querySelector('rect');
    let w = 0;
    for (const t of g.querySelectorAll('text')) w = Math.max(w, t.getComputedTextLength());
    if (w <= 0) continue;
    const cx = Number(rect.getAttribute('x')) + Number(rect.getAttribute('width')) / 2;
    rect.setAttribute('x', cx - w / 2 - 6);
    rect.setAttribute('width', w + 12);
  }
}

function statusCell(status) {
  const cls = status === 'active' || status === 'up' ? 'status-ok' : status === 'error' || status === 'no-target' ? 'status-bad' : 'status-warn';
  return el('td', { class: `status ${cls}` }, status || '?');
}

function renderKeys(keys) {
  const rows = keys.map((k) => {
    const served = el('td', { class: 'served-by' });
    const sites = [...(k.sites || [])].sort((a, b) => (a.siteName < b.siteName ? -1 : 1));
    for (const s of sites) {
      let text = `${s.siteName} · ${s.protocol} ${s.port}`;
      if (s.connectors > 1) text += ` · ${s.connectors} connectors`;
      if (!s.reachable) text += ' · unreachable';
      served.append(el('span', { class: `site-tag${s.reachable ? '' : ' unreachable'}`, 'data-site': s.siteName }, text));
    }
    return el('tr', { class: 'key', 'data-key': k.routingKey }, el('td', {}, k.routingKey), served);
  });
  fillBody('keys', rows, 'no site serves a routing key yet (skiff connector create)', 2);
}

// What a listener can reach: its own reason or targets when the router gives them, else the
// reachable sites serving its keys in the network view.
function listenerDetail(l, keys) {
  if (l.reason) return l.reason;
  if (Array.isArray(l.targets)) {
    const names = l.targets.map((t) => (typeof t === 'string' ? t : t.siteName || t.name || t.site || JSON.stringify(t)));
    return names.length ? `reachable: ${names.join(', ')}` : 'no reachable target';
  }
  const wanted = l.routingKeys || [l.routingKey];
  const names = [];
  for (const k of keys) {
    if (!wanted.includes(k.routingKey)) continue;
    for (const s of k.sites || []) if (s.reachable && !names.includes(s.siteName)) names.push(s.siteName);
  }
  return names.length ? `reachable: ${names.join(', ')}` : `no reachable site serves ${wanted.map((k) => `"${k}"`).join(', ')}`;
}

function renderListeners(listeners, keys) {
  const rows = listeners.map((l) => el('tr', { class: 'listener', 'data-listener': l.name, 'data-status': l.status },
    el('td', {}, l.name),
    el('td', {}, (l.routingKeys || [l.routingKey]).join(', ')),
    el('td', {}, l.address || `${l.host}:${l.port} (not bound)`),
    statusCell(l.status),
    el('td', { class: 'detail' }, listenerDetail(l, keys)),
    el('td', { class: 'num' }, `${l.flowsTotal ?? 0} total, ${l.flowsRefused ?? 0} refused, ${l.flowsActive ?? 0} active`)));
  fillBody('listeners', rows, 'none (skiff listener create)', 6);
}

function renderConnectors(connectors) {
  const rows = connectors.map((c) => el('tr', { class: 'connector', 'data-connector': c.name, 'data-status': c.status },
    el('td', {}, c.name),
    el('td', {}, c.routingKey),
    el('td', {}, `${c.host}:${c.port}`),
    statusCell(c.status),
    el('td', { class: 'detail' }, c.reason || ''),
    el('td', { class: 'num' }, `${c.flowsTotal ?? 0} total, ${c.flowsFailed ?? 0} failed, ${c.flowsActive ?? 0} active`)));
  fillBody('connectors', rows, 'none (skiff connector create)', 6);
}

function siteName(x, names) {
  if (x && typeof x === 'object') return x.name || names.get(x.id) || shortId(x.id);
  return names.get(x) || shortId(x);
}

// `/v1/flows`: `{active, recent}`, or (older sites) a plain array of active flows.
function renderFlows(flows, names) {
  const active = Array.isArray(flows) ? flows : (flows && flows.active) || [];
  const recent = (!Array.isArray(flows) && flows && flows.recent) || [];
  const rows = [];
  for (const f of active) {
    if (rows.length >= MAX_FLOW_ROWS) break;
    rows.push(el('tr', { class: 'flow active', 'data-flow-id': f.id, 'data-outcome': 'active', 'data-key': f.routingKey },
      el('td', {}, typeof f.started === 'string' ? clock(f.started, false) : `${f.ageSeconds ?? 0} s ago`),
      el('td', {}, f.routingKey),
      el('td', {}, `${siteName(f.origin, names)} → ${siteName(f.destination, names)}`),
      el('td', {}, f.role),
      el('td', { class: 'num' }, `${bytes(f.bytesForward)} / ${bytes(f.bytesBack)}`),
      el('td', { class: 'num' }, duration((f.ageSeconds ?? 0) * 1000)),
      el('td', { class: 'outcome' }, 'in progress')));
  }
  let failed = 0;
  for (let i = recent.length - 1; i >= 0; i--) {
    const f = recent[i];
    const bad = f.outcome !== 'ok';
    if (bad) failed++;
    if (rows.length >= MAX_FLOW_ROWS) continue;
    const outcome = el('td', { class: 'outcome' }, f.outcome || '?');
    if (f.reason) outcome.append(el('span', { class: 'reason' }, f.reason));
    const from = siteName(f.origin, names) + (f.client ? ` (client ${f.client})` : '');
    rows.push(el('tr', { class: `flow ${bad ? 'error' : 'ok'}`, 'data-flow-id': f.id, 'data-outcome': f.outcome, 'data-key': f.routingKey },
      el('td', {}, clock(f.started, false)),
      el('td', {}, f.routingKey),
      el('td', {}, `${from} → ${siteName(f.destination, names)}`),
      el('td', {}, f.role),
      el('td', { class: 'num' }, `${bytes(f.bytesForward)} / ${bytes(f.bytesBack)}`),
      el('td', { class: 'num' }, duration(f.durationMs)),
      outcome));
  }
  fillBody('flows', rows, 'no flows yet', 7);
  // "100 of 2345 active" when the site answered only part (limit) or the table is cut.
  const count = (drawn, got, total) => {
    const all = typeof total === 'number' && total > got ? total : got;
    return drawn < all ? `${drawn} of ${all}` : String(all);
  };
  const totals = !Array.isArray(flows) && flows ? flows : {};
  const activeDrawn = Math.min(active.length, MAX_FLOW_ROWS);
  const recentDrawn = Math.min(recent.length, MAX_FLOW_ROWS - activeDrawn);
  document.getElementById('flows-summary').textContent =
    `${count(activeDrawn, active.length, totals.activeTotal)} active · ` +
    `${count(recentDrawn, recent.length, totals.recentTotal)} recent${failed ? ` (${failed} failed)` : ''}` +
    (Array.isArray(flows) ? ' · this site keeps no flow records' : '');
}

document.addEventListener('DOMContentLoaded', loop);
