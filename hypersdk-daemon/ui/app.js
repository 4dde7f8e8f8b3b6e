// hypervisord's dashboard: a small script over the REST API (/api/v1), no
// framework, nothing fetched from elsewhere. The API key lives in this tab's
// sessionStorage and goes in the X-API-Key header, never in a URL. Every
// value from the daemon is put into the page as text (textContent), never
// as HTML; reports are shown in a sandboxed frame without scripts.
'use strict';

const KEY = 'hypersdk.apiKey';
const ROLES = { viewer: 1, operator: 2, admin: 3 };
let me = null; // { name, role, keys_required }
let stream = null; // AbortController of the progress stream
let timers = [];
let refresh = null; // what the page does when a job ends
const live = new Map(); // job id -> latest progress

// ---- DOM ----------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text, error) {
  const s = document.getElementById('status');
  s.textContent = text || '';
  s.className = 'status' + (error ? ' error' : '');
}

function may(role) {
  return me && ROLES[me.role] >= ROLES[role];
}

// ---- units ----------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${u[i]}`;
}
function rate(bps) { return bps > 0 ? `${bytes(Math.round(bps))}/s` : '–'; }
function eta(s) {
  if (s === null || s === undefined || !isFinite(s)) return '';
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}
function when(t) { return t ? new Date(t).toLocaleString() : '–'; }

// ---- API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const key = sessionStorage.getItem(KEY);
  if (key) headers['X-API-Key'] = key;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store',
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `HTTP ${r.status}`;
    if (r.status === 401 && path !== '/api/v1/whoami') { signOut(msg); }
    throw new ApiError(r.status, msg);
  }
  return data;
}

async function apiText(path, accept) {
  const headers = { Accept: accept };
  const key = sessionStorage.getItem(KEY);
  if (key) headers['X-API-Key'] = key;
  const r = await fetch(path, { headers, credentials: 'omit', cache: 'no-store' });
  if (!r.ok) throw new ApiError(r.status, `HTTP ${r.status}`);
  return r.text();
}

// Server-Sent Events over fetch, so the key travels in a header.
async function follow(path, onEvent, signal) {
  const headers = { Accept: 'text/event-stream' };
  const key = sessionStorage.getItem(KEY);
  if (key) headers['X-API-Key'] = key;
  const r = await fetch(path, { headers, signal, credentials: 'omit', cache: 'no-store' });
  if (!r.ok || !r.body) throw new ApiError(r.status, `progress stream: HTTP ${r.status}`);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) {
        try { onEvent(event, JSON.parse(data.join('\n'))); } catch (_) { /* keep going */ }
      }
    }
  }
}

function startProgress() {
  if (stream) return;
  stream = new AbortController();
  const run = async () => {
    while (stream && !stream.signal.aborted) {
      try {
        await follow('/api/v1/progress', (ev, d) => {
          if (ev === 'progress') { merge(d.id, d.progress); paintProgress(d.id); }
          if (ev === 'end') { live.delete(d.id); if (refresh) refresh(d); }
        }, stream.signal);
      } catch (_) { /* reconnect below */ }
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  run();
}

// ---- sign-in --------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  if (stream) { stream.abort(); stream = null; }
  renderSignIn(message);
}

function renderSignIn(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  const input = h('input', { type: 'password', id: 'apikey', name: 'apikey', autocomplete: 'current-password', required: true, 'aria-describedby': 'signin-hint' });
  const err = h('p', { class: 'field-error', role: 'alert' }, message || '');
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        me = await api('GET', '/api/v1/whoami');
        input.value = '';
        start();
      } catch (x) {
        sessionStorage.removeItem(KEY);
        err.textContent = x.status === 401 ? 'That API key is not known to this daemon.' : x.message;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    },
  },
  h('label', { for: 'apikey' }, 'API key', input),
  h('p', { class: 'hint', id: 'signin-hint' }, 'Kept in this browser tab only, until you sign out or close it.'),
  err,
  h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  const main = document.getElementById('main');
  main.replaceChildren(h('section', { class: 'signin card' }, h('h1', {}, 'Sign in to hypervisord'), form));
  say('');
  input.focus();
}

// ---- frame ----------------------------------------------------------------

const PAGES = [
  ['jobs', 'Jobs', 'viewer'], ['submit', 'Submit', 'operator'], ['vms', 'VMs', 'viewer'],
  ['schedules', 'Schedules', 'viewer'], ['profiles', 'Profiles', 'viewer'],
  ['webhooks', 'Webhooks', 'viewer'], ['audit', 'Audit log', 'admin'], ['health', 'Health', 'viewer'],
];

function renderFrame() {
  const nav = document.getElementById('nav');
  nav.replaceChildren(...PAGES.filter((p) => p[0] !== 'job' && may(p[2])).map(([id, label]) =>
    h('a', { href: `#/${id}`, 'data-page': id }, label)));
  nav.hidden = false;
  const who = document.getElementById('who');
  who.replaceChildren(h('span', { id: 'whoami' }, `${me.name} (${me.role})`));
  if (me.keys_required) who.append(h('button', { type: 'button', onclick: () => signOut('Signed out.') }, 'Sign out'));
}

function route() {
  const [path, query] = (location.hash.replace(/^#\/?/, '') || 'jobs').split('?');
  const parts = path.split('/');
  return { page: parts[0] || 'jobs', arg: parts[1], params: new URLSearchParams(query || '') };
}

async function render() {
  if (!me) return;
  for (const t of timers) clearInterval(t);
  timers = [];
  refresh = null;
  const r = route();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === r.page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const main = document.getElementById('main');
  const page = PAGES.find((p) => p[0] === r.page);
  say('');
  if (!page) { main.replaceChildren(h('h1', {}, 'Not found')); return; }
  if (!may(page[2])) {
    main.replaceChildren(h('h1', {}, page[1]), h('p', { role: 'alert' }, `This page needs the ${page[2]} role; you are ${me.role}.`));
    return;
  }
  document.title = `${page[1]} · hypervisord`;
  try {
    const view = await VIEWS[r.page](r);
    main.replaceChildren(...[view].flat());
  } catch (e) {
    if (e.status !== 401) main.replaceChildren(h('h1', {}, page[1]), h('p', { role: 'alert', class: 'field-error' }, e.message));
  }
}

async function act(label, fn) {
  try { await fn(); say(label); } catch (e) { say(`${label} failed: ${e.message}`, true); }
}

// ---- jobs -----------------------------------------------------------------

const FINAL = ['succeeded', 'failed', 'cancelled'];

// A job's progress events, per disk (disks run side by side).
function merge(id, p) {
  const cur = live.get(id) || { disks: new Map(), last: null };
  if (p.phase === 'disk' || p.phase === 'diskdone') cur.disks.set(p.disk_index || 0, p);
  cur.last = p;
  live.set(id, cur);
}

// The whole job: bytes of every disk, the rates of those still reading.
function summary(job) {
  const l = live.get(job.id);
  const one = (l && l.last) || job.progress;
  if (!l || !l.disks.size || (one && (one.phase === 'packaging' || one.phase === 'verify'))) return one;
  let done = 0; let total = 0; let bps = 0;
  for (const d of l.disks.values()) {
    done += d.bytes_done; total += d.bytes_total;
    if (d.phase !== 'diskdone') bps += d.rate_bps;
  }
  return { phase: 'reading', disk: `${l.disks.size} disk${l.disks.size > 1 ? 's' : ''}`, bytes_done: done, bytes_total: total,
    rate_bps: bps, eta_secs: bps > 0 ? (total - done) / bps : null };
}

function progressCell(job) {
  const p = summary(job);
  if (job.status !== 'running' || !p) {
    return h('span', { class: 'muted' }, job.status === 'succeeded' ? '100%' : '–');
  }
  const pct = p.bytes_total ? Math.min(100, 100 * p.bytes_done / p.bytes_total) : 0;
  return h('div', { class: 'bar' },
    h('progress', { max: 100, value: pct.toFixed(1), 'aria-label': `job ${job.id} progress` }),
    h('span', { class: 'hint', 'data-progress-text': job.id },
      `${pct.toFixed(0)}% ${p.phase} ${p.disk} · ${bytes(p.bytes_done)} / ${bytes(p.bytes_total)} · ${rate(p.rate_bps)} ${p.eta_secs ? 'eta ' + eta(p.eta_secs) : ''}`));
}

function paintProgress(id) {
  for (const cell of document.querySelectorAll(`[data-progress="${id}"]`)) {
    cell.replaceChildren(progressCell({ id, status: 'running' }));
  }
}

function jobActions(job, after) {
  const out = [];
  if (!may('operator')) return out;
  if (!FINAL.includes(job.status)) {
    out.push(h('button', { type: 'button', class: 'danger', 'data-action': 'cancel',
      onclick: () => act(`Job ${job.id}: cancel requested`, async () => { await api('POST', `/api/v1/jobs/${job.id}/cancel`); after(); }) }, 'Cancel'));
  }
  if (job.status === 'cancelled' || (job.status === 'failed' && job.retryable)) {
    out.push(h('button', { type: 'button', 'data-action': 'retry',
      onclick: () => act(`Job ${job.id} queued again`, async () => { await api('POST', `/api/v1/jobs/${job.id}/retry`); after(); }) }, 'Retry'));
  }
  return out;
}

function statusBadge(s) { return h('span', { class: `badge s-${s}` }, s); }

async function jobsView(r) {
  const providers = await api('GET', '/api/v1/providers');
  const q = r.params;
  const status = h('select', { name: 'status', id: 'f-status' },
    h('option', { value: '' }, 'any'), ...['queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) =>
      h('option', { value: s, selected: q.get('status') === s }, s)));
  const provider = h('select', { name: 'provider', id: 'f-provider' }, h('option', { value: '' }, 'any'),
    ...providers.map((p) => h('option', { value: p, selected: q.get('provider') === p }, p)));
  const vm = h('input', { name: 'vm', id: 'f-vm', value: q.get('vm') || '', placeholder: 'VM name' });
  const filters = h('form', { class: 'filters', role: 'search', onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, el] of [['status', status], ['provider', provider], ['vm', vm]]) if (el.value) p.set(k, el.value);
    location.hash = `#/jobs?${p}`;
  } },
  h('label', { for: 'f-status' }, 'Status', status), h('label', { for: 'f-provider' }, 'Provider', provider),
  h('label', { for: 'f-vm' }, 'VM', vm), h('button', { type: 'submit' }, 'Filter'));
  const body = h('tbody');
  const count = h('p', { class: 'hint' });
  const load = async () => {
    const qs = new URLSearchParams();
    for (const k of ['status', 'provider', 'vm']) if (q.get(k)) qs.set(k, q.get(k));
    qs.set('limit', '100');
    const list = await api('GET', `/api/v1/jobs?${qs}`);
    count.textContent = `${list.jobs.length} of ${list.total} jobs`;
    body.replaceChildren(...list.jobs.map((j) => h('tr', { 'data-job': j.id },
      h('td', {}, h('a', { href: `#/job/${j.id}` }, `#${j.id}`)),
      h('td', {}, j.spec.vm), h('td', { class: 'hide-narrow' }, j.spec.provider),
      h('td', {}, statusBadge(j.status)),
      h('td', { 'data-progress': j.id }, progressCell(j)),
      h('td', { class: 'hide-narrow' }, when(j.created_at)),
      h('td', {}, ...jobActions(j, load)))));
  };
  await load();
  timers.push(setInterval(() => load().catch(() => {}), 5000));
  refresh = () => load().catch(() => {});
  return [h('h1', {}, 'Jobs'), filters, count,
    h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {},
      h('th', {}, 'Job'), h('th', {}, 'VM'), h('th', { class: 'hide-narrow' }, 'Provider'), h('th', {}, 'Status'),
      h('th', {}, 'Progress'), h('th', { class: 'hide-narrow' }, 'Submitted'), h('th', {}, 'Actions'))), body))];
}

async function jobView(r) {
  const id = Number(r.arg);
  const job = await api('GET', `/api/v1/jobs/${id}`);
  const reload = () => render();
  const kv = (pairs) => h('dl', { class: 'kv' }, ...pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== '')
    .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const out = [h('h1', {}, `Job #${job.id}: ${job.spec.vm}`),
    h('div', { class: 'toolbar' }, statusBadge(job.status), ...jobActions(job, reload)),
    kv([['Provider', job.spec.provider], ['Submitted by', job.submitted_by], ['Submitted', when(job.created_at)],
      ['Started', when(job.started_at)], ['Ended', job.finished_at ? when(job.finished_at) : null],
      ['Runs', job.attempts], ['Error', job.error], ['Partial export kept', job.partial ? `${job.partial.path} (${bytes(job.partial.bytes)})` : null]])];
  if (job.status === 'running' || job.status === 'queued') {
    out.push(h('h2', {}, 'Progress'), h('div', { 'data-progress': job.id }, progressCell(job)));
    // Started or ended meanwhile: shown again.
    refresh = (d) => { if (d.id === id) reload(); };
    if (job.status === 'queued') timers.push(setInterval(async () => {
      try { if ((await api('GET', `/api/v1/jobs/${id}`)).status !== 'queued') reload(); } catch (_) { /* next time */ }
    }, 2000));
  }
  const res = job.result;
  if (res) {
    out.push(h('h2', {}, 'Disks'), h('div', { class: 'wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Disk'), h('th', {}, 'File'), h('th', {}, 'Capacity'), h('th', {}, 'Allocated'), h('th', {}, 'Read'), h('th', {}, 'Seconds'))),
      h('tbody', {}, ...(res.disks || []).map((d) => h('tr', {}, h('td', {}, d.name), h('td', {}, h('code', {}, d.file)),
        h('td', { class: 'n' }, bytes(d.capacity)), h('td', { class: 'n' }, bytes(d.populated)),
        h('td', { class: 'n' }, bytes(d.bytes_read)), h('td', { class: 'n' }, (d.secs || 0).toFixed(1))))))));
    out.push(h('h2', {}, 'Files'), h('div', { class: 'wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'File'), h('th', {}, 'Size'), h('th', {}, `Digest (${res.digest_algorithm})`))),
      h('tbody', {}, ...(res.files || []).map((f) => h('tr', {}, h('td', {}, h('code', {}, f.name)),
        h('td', { class: 'n' }, bytes(f.size)), h('td', {}, h('code', {}, f.digest))))))));
    out.push(kv([['Artifact', res.location], ['Size', bytes(res.size)], ['Read', `${bytes(res.bytes_read)} in ${res.duration_secs.toFixed(1)} s`],
      ['Verified', res.verified ? 'yes: every stored file read back and matched' : 'no']]));
    const frame = h('iframe', { class: 'report', title: `Export report of job ${job.id}`, sandbox: '', id: 'report' });
    const download = h('div', { class: 'toolbar' });
    out.push(h('h2', {}, 'Report'), download, frame);
    apiText(`/api/v1/jobs/${id}/report?format=html`, 'text/html').then((html) => {
      frame.srcdoc = html;
      const blobLink = (text, type, name) => h('a', { class: 'button', download: name, href: URL.createObjectURL(new Blob([text], { type })) }, `Download ${name}`);
      download.append(blobLink(html, 'text/html', `job-${id}-report.html`), blobLink(JSON.stringify(res, null, 2), 'application/json', `job-${id}-report.json`));
    }).catch((e) => download.append(h('p', { class: 'field-error' }, e.message)));
  }
  const logs = await api('GET', `/api/v1/jobs/${id}/logs`);
  out.push(h('h2', {}, 'Log'), h('div', { class: 'wrap' }, h('table', {},
    h('tbody', {}, ...logs.map((e) => h('tr', {}, h('td', { class: 'hide-narrow' }, when(e.at)), h('td', {}, e.status ? statusBadge(e.status) : ''), h('td', {}, e.message)))))));
  return out;
}

// ---- submit ----------------------------------------------------------------

function resolve(doc, s) {
  if (!s) return {};
  if (s.$ref) return resolve(doc, doc.components.schemas[s.$ref.split('/').pop()]);
  if (s.oneOf) {
    const non = s.oneOf.filter((x) => x.type !== 'null');
    if (non.length === 1) return { ...resolve(doc, non[0]), description: s.description || non[0].description };
  }
  return s;
}

function jobFields(doc) {
  const out = {};
  const walk = (s) => {
    s = s.$ref ? doc.components.schemas[s.$ref.split('/').pop()] : s;
    for (const part of s.allOf || []) walk(part);
    for (const [k, v] of Object.entries(s.properties || {})) out[k] = { ...resolve(doc, v), description: v.description || resolve(doc, v).description };
  };
  walk(doc.components.schemas.JobSpec);
  return out;
}

async function submitView(r) {
  const [providers, doc] = await Promise.all([api('GET', '/api/v1/providers'), api('GET', '/api/v1/openapi.json')]);
  const fields = jobFields(doc);
  const errors = {};
  const inputs = {};
  const provider = h('select', { id: 'o-provider', name: 'provider', required: true },
    ...providers.map((p) => h('option', { value: p, selected: r.params.get('provider') === p }, p)));
  const search = h('input', { id: 'o-vm-search', type: 'search', placeholder: 'filter VMs', 'aria-label': 'Filter VMs' });
  const vm = h('select', { id: 'o-vm', name: 'vm', required: true });
  let vms = [];
  const fillVms = () => {
    const f = search.value.toLowerCase();
    const want = r.params.get('vm');
    vm.replaceChildren(...vms.filter((v) => v.name.toLowerCase().includes(f))
      .map((v) => h('option', { value: v.name, selected: v.name === want }, `${v.name} (${v.power_state}, ${bytes(v.total_capacity)})`)));
  };
  const loadVms = async () => {
    vm.replaceChildren(h('option', { value: '' }, 'loading…'));
    try { vms = (await api('GET', `/api/v1/providers/${encodeURIComponent(provider.value)}/vms`)).vms; fillVms(); } catch (e) { vm.replaceChildren(); say(`VMs of ${provider.value}: ${e.message}`, true); }
  };
  provider.addEventListener('change', loadVms);
  search.addEventListener('input', fillVms);
  const optionEls = [];
  for (const [name, s] of Object.entries(fields)) {
    if (name === 'vm' || name === 'provider') continue;
    const id = `o-${name}`;
    const types = [].concat(s.type || 'string').filter((t) => t !== 'null');
    let el;
    if (s.enum) el = h('select', { id, name }, h('option', { value: '' }, '(default)'), ...s.enum.map((v) => h('option', { value: v }, v)));
    else if (types[0] === 'boolean') el = h('input', { id, name, type: 'checkbox' });
    else if (types[0] === 'integer') el = h('input', { id, name, type: 'number', min: s.minimum ?? null, step: 1, inputmode: 'numeric' });
    else el = h('input', { id, name, type: 'text' });
    inputs[name] = { el, type: types[0] };
    const err = h('span', { class: 'field-error', id: `${id}-error`, role: 'alert' });
    errors[name] = err;
    el.setAttribute('aria-describedby', `${id}-hint ${id}-error`);
    const hint = h('span', { class: 'hint', id: `${id}-hint` }, (s.description || '').replace(/\s+/g, ' '));
    optionEls.push(types[0] === 'boolean'
      ? h('div', {}, h('label', { class: 'check', for: id }, el, name), hint, err)
      : h('div', {}, h('label', { for: id }, name, el), hint, err));
  }
  const formError = h('p', { class: 'field-error', role: 'alert', id: 'submit-error' });
  const form = h('form', { id: 'submit-form', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    formError.textContent = '';
    for (const [n, x] of Object.entries(inputs)) { x.el.removeAttribute('aria-invalid'); errors[n].textContent = ''; }
    const body = { provider: provider.value, vm: vm.value };
    let bad = false;
    for (const [n, x] of Object.entries(inputs)) {
      if (x.type === 'boolean') { if (x.el.checked) body[n] = true; continue; }
      const v = x.el.value.trim();
      if (!v) continue;
      if (x.type === 'integer') {
        if (!/^\d+$/.test(v)) { errors[n].textContent = `${n}: a whole number is needed`; x.el.setAttribute('aria-invalid', 'true'); bad = true; continue; }
        body[n] = Number(v);
      } else body[n] = v;
    }
    if (!body.vm) { formError.textContent = 'vm: choose a VM'; bad = true; }
    if (bad) return;
    try {
      const res = await api('POST', '/api/v1/jobs', body);
      const id = res.jobs[0].id;
      say(`Job #${id} queued.`);
      location.hash = `#/job/${id}`;
    } catch (x) {
      formError.textContent = x.message;
      const field = Object.keys(inputs).find((n) => x.message.startsWith(`${n}:`) || x.message.includes(`: ${n}:`) || x.message.includes(`\`${n}\``));
      if (field) { errors[field].textContent = x.message; inputs[field].el.setAttribute('aria-invalid', 'true'); inputs[field].el.focus(); }
    }
  } },
  h('div', { class: 'grid' },
    h('label', { for: 'o-provider' }, 'provider', provider),
    h('div', {}, h('label', { for: 'o-vm' }, 'vm', search, vm))),
  h('h2', {}, 'Options'),
  h('div', { class: 'grid' }, ...optionEls),
  formError,
  h('p', {}, h('button', { class: 'primary', type: 'submit', id: 'submit-button' }, 'Submit export')));
  if (providers.length) loadVms();
  return [h('h1', {}, 'Submit an export'), form];
}

// ---- VMs ------------------------------------------------------------------

async function vmsView(r) {
  const providers = await api('GET', '/api/v1/providers');
  const p = r.params.get('provider') || providers[0];
  const sel = h('select', { id: 'v-provider', onchange: (e) => { location.hash = `#/vms?provider=${encodeURIComponent(e.target.value)}`; } },
    ...providers.map((x) => h('option', { value: x, selected: x === p }, x)));
  const search = h('input', { id: 'v-search', type: 'search', placeholder: 'name' });
  const body = h('tbody');
  const out = [h('h1', {}, 'VMs'), h('div', { class: 'toolbar' }, h('label', { for: 'v-provider' }, 'Provider', sel), h('label', { for: 'v-search' }, 'Search', search)),
    h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'), h('th', { class: 'hide-narrow' }, 'CPUs'),
      h('th', { class: 'hide-narrow' }, 'Memory'), h('th', {}, 'Disks'), h('th', {}, ''))), body))];
  if (!p) { body.append(h('tr', {}, h('td', { colspan: 6 }, 'No providers configured.'))); return out; }
  const list = (await api('GET', `/api/v1/providers/${encodeURIComponent(p)}/vms`)).vms;
  const fill = () => {
    const f = search.value.toLowerCase();
    body.replaceChildren(...list.filter((v) => v.name.toLowerCase().includes(f)).map((v) => h('tr', {},
      h('td', {}, v.name), h('td', {}, v.power_state), h('td', { class: 'n hide-narrow' }, v.cpus), h('td', { class: 'n hide-narrow' }, `${v.memory_mib} MiB`),
      h('td', { class: 'n' }, `${v.disks} · ${bytes(v.total_capacity)}`),
      h('td', {}, may('operator') ? h('a', { class: 'button', href: `#/submit?provider=${encodeURIComponent(p)}&vm=${encodeURIComponent(v.name)}` }, 'Export…') : ''))));
  };
  search.addEventListener('input', fill);
  fill();
  return out;
}

// ---- schedules, profiles, webhooks, audit, health ---------------------------

// A <details> whose body is fetched from `path` and drawn by `draw` each
// time it is opened.
function lazyDetails(summary, path, draw) {
  const body = h('div', { class: 'hint' }, 'loading…');
  const det = h('details', { ontoggle: async () => {
    if (!det.open) return;
    try { body.replaceChildren(draw(await api('GET', path))); } catch (e) { body.textContent = e.message; }
  } }, h('summary', {}, summary), body);
  return det;
}

async function schedulesView() {
  const list = await api('GET', '/api/v1/schedules');
  const rows = list.map((s) => {
    const det = lazyDetails('History', `/api/v1/schedules/${s.id}/runs`, (rr) => (rr.length ? h('table', {}, h('tbody', {}, ...rr.map((x) => h('tr', {},
      h('td', {}, when(x.at)), h('td', {}, h('span', { class: `badge ${x.status === 'missed' ? 's-failed' : ''}` }, x.status)),
      h('td', {}, x.jobs.map((j) => h('a', { href: `#/job/${j}` }, `#${j} `))), h('td', {}, x.message))))) : 'no runs yet'));
    const btn = (label, path) => h('button', { type: 'button', onclick: () => act(`Schedule ${s.name}: ${label.toLowerCase()}`, async () => { await api('POST', `/api/v1/schedules/${s.id}/${path}`); render(); }) }, label);
    return h('tr', {}, h('td', {}, s.name), h('td', {}, h('code', {}, s.cron), ' ', h('span', { class: 'hint' }, s.timezone)),
      h('td', {}, s.enabled ? 'enabled' : 'disabled'), h('td', {}, when(s.next_run_at)), h('td', { class: 'hide-narrow' }, when(s.last_run_at)),
      h('td', {}, ...(may('operator') ? [s.enabled ? btn('Disable', 'disable') : btn('Enable', 'enable'), btn('Run now', 'trigger')] : [])), h('td', {}, det));
  });
  return [h('h1', {}, 'Schedules'), list.length ? h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'When'),
    h('th', {}, 'State'), h('th', {}, 'Next run'), h('th', { class: 'hide-narrow' }, 'Last run'), h('th', {}, 'Actions'), h('th', {}, 'Runs'))), h('tbody', {}, ...rows)))
    : h('p', {}, 'No schedules. Add them with hyperctl schedules add or POST /api/v1/schedules.')];
}

async function profilesView() {
  const list = await api('GET', '/api/v1/profiles');
  return [h('h1', {}, 'Profiles'), list.length ? h('div', {}, ...list.map((p) => h('details', { class: 'card' },
    h('summary', {}, p.name || JSON.stringify(p).slice(0, 60)), h('pre', {}, JSON.stringify(p, null, 2)))))
    : h('p', {}, 'No profiles. Add them with hyperctl profiles put or PUT /api/v1/profiles/NAME.')];
}

async function webhooksView() {
  const list = await api('GET', '/api/v1/webhooks');
  const rows = list.map((w) => {
    const det = lazyDetails('Delivery log', `/api/v1/webhooks/${w.id}/deliveries`, (d) => (d.length ? h('table', {}, h('tbody', {}, ...d.slice(-100).reverse().map((a) => h('tr', {},
      h('td', {}, when(a.at)), h('td', {}, a.event), h('td', {}, a.job_id ? `#${a.job_id}` : ''), h('td', {}, `try ${a.attempt}`),
      h('td', {}, a.ok ? h('span', { class: 'badge s-succeeded' }, a.status || 'ok') : h('span', { class: 'badge s-failed' }, a.status || 'not sent')),
      h('td', {}, a.error || ''))))) : 'nothing delivered yet'));
    const c = w.circuit || {};
    return h('tr', {}, h('td', {}, `#${w.id}`), h('td', {}, h('code', {}, w.url)), h('td', { class: 'hide-narrow' }, w.events.join(', ') || 'all'),
      h('td', {}, c.open ? h('span', { class: 'badge s-failed' }, `open until ${when(c.open_until)}`) : h('span', { class: 'badge s-succeeded' }, 'closed'),
        c.failures_in_a_row ? h('span', { class: 'hint' }, ` ${c.failures_in_a_row} failed in a row`) : ''), h('td', {}, det));
  });
  return [h('h1', {}, 'Webhooks'), list.length ? h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Id'), h('th', {}, 'URL'),
    h('th', { class: 'hide-narrow' }, 'Events'), h('th', {}, 'Circuit'), h('th', {}, 'Deliveries'))), h('tbody', {}, ...rows)))
    : h('p', {}, 'No webhooks. Add them with hyperctl webhooks add or POST /api/v1/webhooks.')];
}

async function auditView() {
  const list = await api('GET', '/api/v1/audit');
  return [h('h1', {}, 'Audit log'), h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {}, ...['When', 'Who', 'Request', 'Status'].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...list.map((a) => h('tr', {}, h('td', {}, when(a.at)), h('td', {}, a.who), h('td', {}, h('code', {}, `${a.method} ${a.path}`)), h('td', { class: 'n' }, a.status))))))];
}

async function healthView() {
  let ready;
  try { ready = await api('GET', '/ready'); } catch (e) { ready = { status: e.message }; }
  const used = ready.size_bytes ? 1 - ready.free_bytes / ready.size_bytes : null;
  return [h('h1', {}, 'Health'), h('div', { class: 'grid' },
    h('div', { class: 'card' }, h('h2', {}, 'Daemon'), h('p', { id: 'health-status' }, ready.status === 'ok' ? 'ready' : `not ready: ${ready.status}`), h('p', { class: 'hint' }, `version ${ready.version || '?'}`)),
    h('div', { class: 'card' }, h('h2', {}, 'Capacity'), h('p', {}, `${ready.active ?? '–'} of ${ready.max_concurrent ?? '–'} export slots busy`), h('p', {}, `${ready.queued ?? '–'} jobs queued`)),
    h('div', { class: 'card' }, h('h2', {}, 'Output space'), used === null ? h('p', {}, '–') : [
      h('progress', { max: 1, value: used.toFixed(3), 'aria-label': 'output space used' }),
      h('p', {}, `${bytes(ready.free_bytes)} free of ${bytes(ready.size_bytes)}`)])),
  h('p', { class: 'hint' }, 'Prometheus metrics: /metrics (with a viewer key). Alert rules and a Grafana dashboard ship in deploy/.')];
}

const VIEWS = {
  jobs: jobsView, job: jobView, submit: submitView, vms: vmsView, schedules: schedulesView,
  profiles: profilesView, webhooks: webhooksView, audit: auditView, health: healthView,
};
PAGES.push(['job', 'Job', 'viewer']);

// ---- start -------------------------------------------------------------------

function start() {
  renderFrame();
  startProgress();
  render();
}

window.addEventListener('hashchange', render);
document.addEventListener('DOMContentLoaded', async () => {
  try {
    me = await api('GET', '/api/v1/whoami');
    start();
  } catch (e) {
    renderSignIn(e.status === 401 ? '' : e.message);
  }
});
