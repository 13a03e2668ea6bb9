// The Graft dashboard: a small single-page app on the public API, no build step.
// The API key lives in sessionStorage and travels only as an Authorization header,
// so images, downloads and the event stream are all read with fetch().
'use strict';

const KEY = 'graft.apiKey';
const SVG = 'http://www.w3.org/2000/svg';
const ARCHITECTURES = ['resnet18', 'resnet50', 'mobilenet_v2', 'mobilenet_v3_small', 'mobilenet_v3_large',
  'efficientnet_b0', 'convnext_tiny', 'vgg16', 'vit_b_16'];
const ACTIVE = ['queued', 'running'];
const TERMINAL = ['job.succeeded', 'job.failed', 'job.cancelled', 'job.pruned'];
const ENDED = { succeeded: 'Succeeded', failed: 'Failed', cancelled: 'Cancelled', pruned: 'Pruned' };
const main = document.getElementById('main');
let view = null; // the page on screen: {signal, urls}; replaced on every navigation

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...kids) { return build(document.createElement(tag), attrs, kids); }
function s(tag, attrs, ...kids) { return build(document.createElementNS(SVG, tag), attrs, kids); }
function build(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
// append and replaceChildren, skipping the null and false of conditional children.
const clean = (kids) => kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false);
const add = (el, ...kids) => el.append(...clean(kids));
const put = (el, ...kids) => el.replaceChildren(...clean(kids));
const enc = encodeURIComponent;
const link = (href, text) => h('a', { href }, text);
const badge = (status) => h('span', { class: `badge ${status}` }, status);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
const fixed = (x, d = 3) => (typeof x === 'number' ? x.toFixed(d) : '—');
const pct = (x) => (typeof x === 'number' ? `${(x * 100).toFixed(1)} %` : '—');
function bytes(n) {
  if (typeof n !== 'number') return '—';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function duration(sec) {
  if (typeof sec !== 'number') return '—';
  sec = Math.round(sec);
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
}
const key = () => sessionStorage.getItem(KEY);
const sleep = (ms, v) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  v.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});
function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter((p) => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}
function section(title, ...kids) { return h('section', { class: 'card' }, h('h2', {}, title), kids); }
const row = (cells, attrs) => h('tr', attrs || {}, cells.map((c) => h('td', {}, c)));
function table(head, rows, attrs) {
  return h('div', { class: 'scroll' }, h('table', attrs || {},
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    Object.assign(this, { status, code, param });
  }
}

async function toError(status, text) {
  let err = {};
  try { err = JSON.parse(text).error || {}; } catch { /* not the API's JSON */ }
  return new ApiError(status, err.code || `http_${status}`,
    err.message || `The server answered ${status}.`, err.param || null);
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${key()}`, ...(opts.headers || {}) };
  let body = opts.body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  let r;
  try {
    r = await fetch(path, { method: opts.method || 'GET', headers, body, signal: view.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The server could not be reached.', null);
  }
  if (!r.ok) throw await toError(r.status, await r.text());
  if (opts.raw) return r;
  return r.status === 204 ? null : r.json();
}

// An <img> cannot send the key: fetch the PNG and show it through a blob: URL.
function thumbnail(datasetId, path, alt, size = 64) {
  const img = h('img', { class: 'thumb', alt, width: size, height: size });
  const v = view;
  api(`/v1/datasets/${enc(datasetId)}/thumbnail?path=${enc(path)}&size=${size * 2}`, { raw: true })
    .then((r) => r.blob())
    .then((blob) => { const url = URL.createObjectURL(blob); v.urls.push(url); img.src = url; })
    .catch((e) => { if (!v.signal.aborted) { img.alt = `${alt} (${e.message})`; img.classList.add('broken'); } });
  return img;
}

// ---------------------------------------------------------------- routing

const routes = [
  [/^#\/datasets\/?$/, datasetsView], [/^#\/upload$/, datasetsView],
  [/^#\/datasets\/([^/]+)$/, datasetView],
  [/^#\/jobs\/?$/, jobsView], [/^#\/jobs\/([^/]+)$/, jobView],
  [/^#\/models\/?$/, modelsView], [/^#\/models\/([^/]+)$/, modelView],
  [/^#\/evaluations\/([^/]+)$/, evaluationView],
  [/^#\/searches\/?$/, searchesView], [/^#\/searches\/([^/]+)$/, searchView],
  [/^#\/new-job$/, newJobView],
];

function route(message) {
  if (view) { view.abort(); view.urls.forEach((u) => URL.revokeObjectURL(u)); }
  const ctrl = new AbortController();
  view = { signal: ctrl.signal, abort: () => ctrl.abort(), urls: [] };
  put(main);
  const signedIn = Boolean(key());
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('sign-out').hidden = !signedIn;
  if (!signedIn) { signInView(message); return; }
  if (!location.hash || location.hash === '#/') { location.replace('#/datasets'); return; }
  const [path, query] = location.hash.split('?');
  const params = new URLSearchParams(query || '');
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', path.startsWith(link.getAttribute('href')));
  }
  for (const [re, fn] of routes) {
    const m = path.match(re);
    if (m) { show(fn, m[1] ? decodeURIComponent(m[1]) : params, params); return; }
  }
  add(main, notice('Not found', `There is no page ${path}.`));
}

async function show(fn, arg, params) {
  const v = view;
  try {
    await fn(arg, v, params);
  } catch (e) {
    if (v.signal.aborted || e.name === 'AbortError') return;
    showError(e);
  }
}

function notice(title, message, cls = 'error') {
  return h('section', { class: `notice ${cls}`, role: 'alert' }, h('h1', {}, title), h('p', {}, message));
}

function showError(e) {
  if (e.status === 401) { signOut(`The key was not accepted: ${e.message}`); return; }
  put(main, e.status === 404
    ? notice('Not found', `${e.message} It does not exist, or it belongs to another team.`)
    : notice('Something went wrong', e.message || String(e)));
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  route(message);
}

function signInView(message) {
  const input = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const msg = h('p', { id: 'sign-in-message', class: 'error', role: 'alert' }, message || '');
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'card sign-in', novalidate: true },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste an API key of your team. It stays in this browser tab (sessionStorage) and is sent only as a request header.'),
    h('label', { for: 'api-key' }, 'API key'), input, button, msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    if (!value) { msg.textContent = 'Paste a key first.'; return; }
    button.disabled = true;
    sessionStorage.setItem(KEY, value);
    try {
      await api('/v1/usage');
    } catch (e) {
      sessionStorage.removeItem(KEY);
      button.disabled = false;
      msg.textContent = e.status === 401 ? `The key was not accepted: ${e.message}` : e.message;
      return;
    }
    route();
  });
  add(main, form);
  input.focus();
}

// ---------------------------------------------------------------- lists

// A table of a paginated list, with a "Load more" button that follows next_cursor.
async function pagedTable(into, path, head, row, empty) {
  const body = h('tbody');
  const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Load more');
  let cursor = null;
  async function load() {
    more.disabled = true;
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=20${cursor ? `&cursor=${enc(cursor)}` : ''}`);
    page.data.forEach((item) => add(body, h('tr', {}, row(item).map((c) => h('td', {}, c)))));
    cursor = page.next_cursor;
    more.hidden = !page.has_more;
    more.disabled = false;
    return page;
  }
  more.addEventListener('click', () => load().catch(showError));
  const first = await load();
  put(into, first.data.length
    ? h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))), body))
    : h('p', { class: 'empty' }, empty), more);
  return first;
}

// pagedTable, drawn again every 2 s while an item of the first page is still `moving`
// (and no more pages were opened).
async function livePagedTable(v, moving, ...args) {
  const [list] = args;
  for (;;) {
    const page = await pagedTable(...args);
    if (!page.data.some(moving)) return;
    await sleep(2000, v);
    if (v.signal.aborted || list.querySelector('tbody tr:nth-child(21)')) return;
  }
}

async function datasetsView(_, v) {
  const list = h('div');
  add(main, h('h1', {}, 'Datasets'), uploadCard(v), section('All datasets', list));
  if (location.hash === '#/upload') document.getElementById('upload-file').focus();
  await pagedTable(list, '/v1/datasets', ['Name', 'Status', 'Kind', 'Images', 'Classes', 'Uploaded'],
    (d) => [link(`#/datasets/${d.id}`, d.name), badge(d.status), d.kind, d.num_images, d.classes.length, when(d.created_at)],
    'No datasets yet: upload one above.');
}

function uploadCard(v) {
  const file = h('input', { id: 'upload-file', type: 'file', accept: '.zip,.tar,.gz,.tgz,application/zip,application/gzip,application/x-tar' });
  const name = h('input', { id: 'upload-name', type: 'text', maxlength: 200, placeholder: 'the archive’s name' });
  const kind = h('select', { id: 'upload-kind' }, h('option', { value: 'labeled' }, 'labeled (class folders)'),
    h('option', { value: 'unlabeled' }, 'unlabeled (domain adaptation target)'));
  const bar = h('progress', { id: 'upload-progress', max: 1, value: 0, hidden: true });
  const msg = h('p', { id: 'upload-message', role: 'status' });
  const button = h('button', { type: 'submit' }, 'Upload');
  const form = h('form', { class: 'card upload', id: 'upload' },
    h('h2', {}, 'Upload a dataset'),
    h('p', { class: 'hint' }, 'A zip or tar.gz with one folder per class (cat/001.jpg), or train/ and val/ folders of class folders.'),
    h('div', { class: 'row' },
      h('div', { class: 'field' }, h('label', { for: 'upload-file' }, 'Archive'), file),
      h('div', { class: 'field' }, h('label', { for: 'upload-name' }, 'Name'), name),
      h('div', { class: 'field' }, h('label', { for: 'upload-kind' }, 'Kind'), kind)),
    button, bar, msg);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!file.files.length) { msg.textContent = 'Choose an archive first.'; return; }
    const data = new FormData();
    data.append('file', file.files[0]);
    if (name.value.trim()) data.append('name', name.value.trim());
    data.append('kind', kind.value);
    // XMLHttpRequest, not fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/datasets');
    xhr.setRequestHeader('Authorization', `Bearer ${key()}`);
    xhr.upload.addEventListener('progress', (e) => {
      if (!e.lengthComputable) return;
      bar.value = e.loaded / e.total;
      msg.textContent = `Uploading: ${Math.round((100 * e.loaded) / e.total)} % (${bytes(e.loaded)} of ${bytes(e.total)})`;
    });
    xhr.upload.addEventListener('load', () => { msg.textContent = 'Uploaded; the server is checking every file…'; });
    xhr.addEventListener('load', async () => {
      button.disabled = false;
      if (v.signal.aborted) return;
      if (xhr.status === 200 || xhr.status === 201) {
        location.hash = `#/datasets/${JSON.parse(xhr.responseText).id}`;
        return;
      }
      const e = await toError(xhr.status, xhr.responseText);
      if (e.status === 401) { signOut(`The key was not accepted: ${e.message}`); return; }
      bar.hidden = true;
      msg.textContent = `Upload refused: ${e.message}`;
    });
    xhr.addEventListener('error', () => { button.disabled = false; bar.hidden = true; msg.textContent = 'The upload failed: the server could not be reached.'; });
    bar.hidden = false;
    bar.value = 0;
    button.disabled = true;
    xhr.send(data);
  });
  return form;
}

async function jobsView(params, v) {
  const status = h('select', { id: 'job-status-filter' }, h('option', { value: '' }, 'any'),
    ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'pruned'].map((x) => h('option', { value: x }, x)));
  status.value = params.get('status') || '';
  status.addEventListener('change', () => { location.hash = status.value ? `#/jobs?status=${status.value}` : '#/jobs'; });
  const list = h('div');
  add(main, h('div', { class: 'title' }, h('h1', {}, 'Jobs'), link('#/new-job', 'New job')),
    h('div', { class: 'field inline' }, h('label', { for: 'job-status-filter' }, 'Status'), status),
    section('All jobs', list));
  const path = status.value ? `/v1/jobs?status=${status.value}` : '/v1/jobs';
  await livePagedTable(v, (j) => ACTIVE.includes(j.status), list, path,
    ['Job', 'Status', 'Progress', 'Base model', 'Dataset', 'Created'],
    (j) => [link(`#/jobs/${j.id}`, j.id), badge(j.status), jobBar(j), j.spec.base_model,
      link(`#/datasets/${j.spec.dataset_id}`, j.spec.dataset_id), when(j.created_at)],
    'No jobs yet.');
}

function jobBar(job) {
  const fraction = job.status === 'succeeded' ? 1 : (job.progress ? job.progress.fraction : 0);
  const p = job.progress;
  const text = p && job.status === 'running' ? `epoch ${p.epoch}/${p.total_epochs}` : `${Math.round(fraction * 100)} %`;
  return h('span', { class: 'bar' }, h('progress', { max: 1, value: fraction, 'aria-label': `progress of ${job.id}` }), ` ${text}`);
}

async function modelsView() {
  const list = h('div');
  add(main, h('h1', {}, 'Models'), section('All models', list));
  await pagedTable(list, '/v1/models', ['Name', 'Architecture', 'Classes', 'Val accuracy', 'Recommended', 'Created'],
    (m) => [link(`#/models/${m.id}`, m.name), m.architecture, m.classes.length, pct(m.metrics.val_accuracy),
      m.recommended_artifact || '—', when(m.created_at)],
    'No models yet: a job that succeeds makes one.');
}

// ---------------------------------------------------------------- a dataset

async function datasetView(id, v) {
  let d = await api(`/v1/datasets/${enc(id)}`);
  if (d.status === 'processing') {
    const wait = notice(d.name, 'Still processing: the archive is being checked file by file. This page updates by itself.', 'info');
    add(main, wait);
    while (d.status === 'processing') {
      await sleep(1000, v);
      if (v.signal.aborted) return;
      d = await api(`/v1/datasets/${enc(id)}`);
    }
    wait.remove();
  }
  add(main, h('div', { class: 'title' }, h('h1', {}, d.name), badge(d.status)),
    dl([['Id', d.id], ['Kind', d.kind], ['Images', d.num_images], ['Archive', bytes(d.size_bytes)],
      ['Uploaded', when(d.created_at)], ['SHA-256', h('code', {}, d.sha256)]]));
  if (d.status === 'failed') {
    add(main, notice('Ingestion failed', d.error ? d.error.message : 'The archive could not be read.'));
  }
  if (d.status === 'ready' && d.kind === 'labeled') {
    add(main, h('p', {}, link(`#/new-job?dataset=${d.id}`, 'Train a model on this dataset')));
  }
  const split = d.splits
    ? `Explicit split: ${Object.entries(d.splits).map(([k, n]) => `${k} ${n}`).join(', ')} images.`
    : 'No train/val folders: split per job (the job’s validation_split).';
  if (d.classes.length) {
    add(main, section('Images per class', h('figure', { id: 'class-chart' }, barChart(d.classes),
      h('figcaption', {}, `${d.classes.length} classes, ${d.num_images} images. ${split}`))));
  } else {
    add(main, section('Split', h('p', {}, split)));
  }
  add(main, section('Warnings', d.warnings.length
    ? h('ul', { id: 'warnings' }, d.warnings.map((w) => h('li', {}, h('code', {}, w.code), ' ', w.message)))
    : h('p', { class: 'empty' }, 'No warnings.')));
  if (d.near_duplicates && d.near_duplicates.length) {
    add(main, section(`Near-duplicate images (${d.near_duplicates.length})`,
      table(['Kind', 'Image', 'Class', 'Image', 'Class', 'Distance'], d.near_duplicates.map((p) => h('tr', {},
        h('td', {}, p.kind === 'conflicting_labels' ? 'conflicting labels' : 'train/val leakage'),
        h('td', {}, h('code', {}, p.a)), h('td', {}, p.label_a || ''), h('td', {}, h('code', {}, p.b)),
        h('td', {}, p.label_b || ''), h('td', {}, p.distance))), { id: 'near-duplicates' })));
  }
  add(main, section(`Rejected files (${d.rejected.length})`, d.rejected.length
    ? table(['File', 'Reason', 'Detail'], d.rejected.map((r) => h('tr', {}, h('td', {}, h('code', {}, r.path)),
      h('td', {}, r.reason), h('td', {}, r.detail || ''))), { id: 'rejected' })
    : h('p', { class: 'empty' }, 'Every file was kept.')));
  if (d.status !== 'ready') return;
  const samples = h('div', { id: 'samples' });
  add(main, section('Sample images', samples));
  const groups = d.classes.length ? d.classes.slice(0, 24).map((c) => c.name) : [null];
  for (const cls of groups) {
    const row = h('div', { class: 'thumbs' });
    add(samples, h('h3', {}, cls === null ? 'Images' : cls), row);
    const q = cls === null ? '' : `&class_name=${enc(cls)}`;
    api(`/v1/datasets/${enc(d.id)}/images?limit=${cls === null ? 16 : 6}${q}`)
      .then((page) => page.data.forEach((img) => add(row, thumbnail(d.id, img.path, `${img.class_name || ''} ${img.path}`.trim()))))
      .catch((e) => { if (!v.signal.aborted) add(row, h('p', { class: 'error' }, e.message)); });
  }
}

function barChart(classes) {
  const max = Math.max(1, ...classes.map((c) => c.count));
  const bar = 28;
  const gap = 8;
  const left = 120;
  const width = 640;
  const height = classes.length * (bar + gap) + gap;
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Images per class', class: 'chart bars' });
  classes.forEach((c, i) => {
    const y = gap + i * (bar + gap);
    const w = Math.max(1, ((width - left - 60) * c.count) / max);
    add(svg, 
      s('text', { x: left - 8, y: y + bar / 2 + 5, 'text-anchor': 'end', class: 'label' }, c.name.length > 16 ? `${c.name.slice(0, 15)}…` : c.name),
      s('rect', { x: left, y, width: w, height: bar, rx: 3, class: 'bar', 'data-class': c.name, 'data-count': c.count }, s('title', {}, `${c.name}: ${c.count}`)),
      s('text', { x: left + w + 6, y: y + bar / 2 + 5, class: 'value' }, c.count));
  });
  return svg;
}

// ---------------------------------------------------------------- a job

async function jobView(id, v) {
  let job = await api(`/v1/jobs/${enc(id)}`);
  const points = new Map(job.metrics.map((m) => [m.epoch, m]));
  const head = h('div');
  const progress = section('Progress');
  const curves = h('section', { class: 'card', id: 'curves' });
  const report = h('div', { id: 'report' });
  const log = h('ol', { id: 'event-log', class: 'log' });
  add(main, head, progress, curves, report, section('Event log', h('div', { class: 'scroll log-box' }, log)));
  const paintCurves = () => renderCurves(curves, job, [...points.values()].sort((a, b) => a.epoch - b.epoch));
  const paint = () => { renderJobHead(head, job, v, refresh); renderProgress(progress, job); };
  async function refresh() {
    job = await api(`/v1/jobs/${enc(id)}`);
    job.metrics.forEach((m) => points.set(m.epoch, m));
    paint();
    if (!ACTIVE.includes(job.status)) { paintCurves(); renderReport(report, job); }
  }
  paint(); paintCurves(); renderReport(report, job);
  // The curves grow from the event stream; the progress bar (ETA, images/s) from polling.
  followEvents(v, id, (ev) => {
    add(log, eventItem(ev));
    if (ev.type === 'job.progress' && ev.data.metrics) { points.set(ev.data.metrics.epoch, ev.data.metrics); paintCurves(); }
    // Ended while on screen: the report comes with the job (a replayed end needs nothing).
    if (TERMINAL.includes(ev.type) && ACTIVE.includes(job.status)) refresh().catch(showError);
  }, (e) => add(log, h('li', { class: 'error' }, `The event stream stopped: ${e.message}`)));
  while (ACTIVE.includes(job.status)) {
    await sleep(1000, v);
    if (v.signal.aborted) return;
    await refresh();
  }
}

// Server-Sent Events over fetch (EventSource cannot send the key), resuming with
// Last-Event-ID after a dropped connection; the server ends the stream after the
// job's final event.
async function followEvents(v, jobId, onEvent, onError) {
  let last = 0;
  let retry = 2000;
  let ended = false;
  while (!v.signal.aborted && !ended) {
    try {
      const headers = { Authorization: `Bearer ${key()}`, Accept: 'text/event-stream' };
      if (last) headers['Last-Event-ID'] = String(last);
      const r = await fetch(`/v1/jobs/${enc(jobId)}/events`, { headers, signal: v.signal });
      if (!r.ok) throw await toError(r.status, await r.text());
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          const frame = parseFrame(buf.slice(0, at));
          buf = buf.slice(at + 2);
          if (frame.retry) retry = frame.retry;
          if (frame.id) last = Number(frame.id);
          if (frame.data === undefined) continue;
          const ev = JSON.parse(frame.data);
          if (TERMINAL.includes(ev.type)) ended = true;
          onEvent(ev);
        }
      }
    } catch (e) {
      if (v.signal.aborted || e.name === 'AbortError') return;
      if (e.status && e.status < 500) { onError(e); return; }
    }
    if (!ended) await sleep(retry, v);
  }
}

function parseFrame(text) {
  const frame = {};
  for (const raw of text.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') frame.data = frame.data === undefined ? value : `${frame.data}\n${value}`;
    else if (field === 'id') frame.id = value;
    else if (field === 'event') frame.event = value;
    else if (field === 'retry' && /^\d+$/.test(value)) frame.retry = Number(value);
  }
  return frame;
}

function eventItem(ev) {
  const m = ev.data.metrics;
  const text = m
    ? `epoch ${m.epoch}: train loss ${fixed(m.train_loss)}, val loss ${fixed(m.val_loss)}, val accuracy ${pct(m.val_accuracy)}`
    : JSON.stringify(ev.data).slice(0, 300);
  return h('li', { 'data-type': ev.type }, h('time', { datetime: ev.created_at }, new Date(ev.created_at).toLocaleTimeString()),
    ' ', h('strong', {}, ev.type), ' ', text === '{}' ? '' : text);
}

function renderJobHead(into, job, v, refresh) {
  const spec = job.spec;
  const hp = spec.hyperparameters || {};
  const msg = h('p', { id: 'cancel-message', role: 'status' });
  const cancel = ACTIVE.includes(job.status) && !job.cancel_requested
    ? h('button', { type: 'button', id: 'cancel', class: 'danger', onclick: async () => {
      cancel.disabled = true;
      try { await api(`/v1/jobs/${enc(job.id)}/cancel`, { method: 'POST' }); await refresh(); } catch (e) {
        if (e.status === 401) { showError(e); return; }
        msg.textContent = `Cancel refused: ${e.message}`;
        cancel.disabled = false;
      }
    } }, 'Cancel job')
    : null;
  put(into, 
    h('div', { class: 'title' }, h('h1', {}, `Job ${job.id}`), h('span', { id: 'job-status' }, badge(job.status)), cancel),
    msg,
    job.cancel_requested && ACTIVE.includes(job.status) ? h('p', {}, 'Cancel requested: the job stops at its next step.') : null,
    job.error ? notice(`Failed: ${job.error.code}`, job.error.message) : null,
    dl([['Dataset', link(`#/datasets/${spec.dataset_id}`, spec.dataset_id)],
      ['Base model', spec.base_model.startsWith('mdl_') ? link(`#/models/${spec.base_model}`, spec.base_model) : spec.base_model],
      ['Weights', spec.pretrained_weights], ['Strategy', spec.strategy + (spec.unfreeze_last ? ` (last ${spec.unfreeze_last})` : '')],
      ['Epochs', hp.epochs], ['Batch size', hp.batch_size], ['Learning rate', hp.learning_rate], ['Image size', hp.image_size],
      ['Export', [...(spec.export || []), ...(spec.quantization || []).map((q) => `onnx-${q}`)].join(', ') || 'none'],
      ['Created', when(job.created_at)], ['Started', when(job.started_at)], ['Finished', when(job.finished_at)],
      ['Attempt', job.attempt],
      job.search_id ? ['Search', link(`#/searches/${job.search_id}`, job.search_id)] : null,
      job.result ? ['Model', link(`#/models/${job.result.model_id}`, job.result.model_id)] : null]));
}

function renderProgress(into, job) {
  const p = job.progress;
  const fraction = job.status === 'succeeded' ? 1 : (p ? p.fraction : 0);
  let text;
  if (job.status === 'queued') text = 'Queued: waiting for a worker.';
  else if (!p) text = job.status === 'running' ? 'Starting…' : `${ENDED[job.status] || job.status}.`;
  else if (job.status !== 'running') text = `${ENDED[job.status] || job.status}, after epoch ${p.epoch} of ${p.total_epochs}.`;
  else {
    const steps = p.steps_per_epoch ? `step ${p.step} of ${p.steps_per_epoch}` : `step ${p.step}`;
    text = [p.phase === 'features' ? `Computing features, ${steps}` : `Epoch ${p.epoch} of ${p.total_epochs}, ${steps}`,
      `${Math.round(p.fraction * 100)} %`,
      `ETA ${p.eta_seconds === null || p.eta_seconds === undefined ? '—' : duration(p.eta_seconds)}`,
      `${p.images_per_second ? p.images_per_second.toFixed(0) : '—'} images/s`,
      p.learning_rate ? `lr ${p.learning_rate.toPrecision(3)}` : null].filter(Boolean).join(' · ');
  }
  put(into, h('h2', {}, 'Progress'),
    h('progress', { id: 'job-progress', max: 1, value: fraction, 'aria-label': 'Job progress' }),
    h('p', { id: 'progress-text' }, text));
}

function renderCurves(into, job, metrics) {
  put(into, h('h2', {}, 'Training curves'));
  if (!metrics.length) {
    add(into, h('p', { class: 'empty', id: 'no-metrics' }, ACTIVE.includes(job.status)
      ? 'No metrics yet: the curves start after the first epoch.' : 'This job recorded no metrics.'));
    return;
  }
  const total = (job.progress && job.progress.total_epochs) || (job.spec.hyperparameters || {}).epochs || metrics.length;
  const series = (k) => metrics.filter((m) => typeof m[k] === 'number').map((m) => [m.epoch, m[k]]);
  add(into, h('div', { class: 'grid' },
    lineChart('curve-loss', 'Loss', [['train_loss', 'train', series('train_loss')], ['val_loss', 'validation', series('val_loss')]], total, null),
    lineChart('curve-accuracy', 'Accuracy', [['train_accuracy', 'train', series('train_accuracy')], ['val_accuracy', 'validation', series('val_accuracy')]], total, 1)));
}

function lineChart(id, title, series, xMax, yMax) {
  const W = 480; const H = 260; const L = 48; const R = 12; const T = 12; const B = 36;
  xMax = Math.max(xMax, ...series.flatMap(([, , pts]) => pts.map((p) => p[0])));
  const top = yMax || Math.max(1e-6, ...series.flatMap(([, , pts]) => pts.map((p) => p[1]))) * 1.1;
  const x = (e) => L + ((W - L - R) * (e - 1)) / Math.max(1, xMax - 1);
  const y = (val) => T + (H - T - B) * (1 - Math.min(val, top) / top);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart line', role: 'img', 'aria-label': `${title} per epoch` });
  for (let i = 0; i <= 4; i += 1) {
    const val = (top * i) / 4;
    add(svg, s('line', { x1: L, x2: W - R, y1: y(val), y2: y(val), class: 'grid-line' }),
      s('text', { x: L - 6, y: y(val) + 4, 'text-anchor': 'end', class: 'tick' }, yMax ? `${Math.round(val * 100)}%` : val.toPrecision(2)));
  }
  const step = Math.max(1, Math.ceil(xMax / 10));
  for (let e = 1; e <= xMax; e += step) {
    add(svg, s('text', { x: x(e), y: H - B + 16, 'text-anchor': 'middle', class: 'tick' }, e));
  }
  add(svg, s('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', class: 'axis' }, 'epoch'));
  for (const [name, , pts] of series) {
    add(svg, s('polyline', { points: pts.map(([e, val]) => `${x(e)},${y(val)}`).join(' '), class: `series ${name}` }));
    pts.forEach(([e, val]) => add(svg, s('circle', { cx: x(e), cy: y(val), r: 3.5, class: `pt ${name}`, 'data-series': name, 'data-epoch': e },
      s('title', {}, `${name} epoch ${e}: ${val.toFixed(4)}`))));
  }
  const legend = h('p', { class: 'legend' }, series.map(([name, label]) => h('span', { class: `key ${name}` }, label)));
  return h('figure', { id }, h('figcaption', {}, title), svg, legend);
}

function renderReport(into, job) {
  put(into);
  const r = job.report;
  if (!r) {
    if (ACTIVE.includes(job.status)) add(into, section('Report', h('p', { class: 'empty' }, 'The validation report appears when the job succeeds.')));
    return;
  }
  add(into, section('Validation report', dl([['Accuracy', pct(r.accuracy)], ['Best epoch', r.best_epoch],
    ['Validation images', r.num_samples], ['Macro F1', r.macro_avg ? fixed(r.macro_avg.f1) : '—']])));
  add(into, scores(r, job.spec.dataset_id, 'validation'));
  if (r.label_issues) {
    const shown = r.label_issues.slice(0, 24);
    add(into, section(`Suspected label errors in training (${r.label_issues_total ?? shown.length})`, shown.length
      ? h('div', { class: 'thumbs', id: 'label-issues' }, shown.map((m) => h('figure', { class: 'mistake' },
        thumbnail(job.spec.dataset_id, m.path, m.path),
        h('figcaption', {}, h('span', {}, `labelled ${m.given_label}`), h('span', {}, `looks like ${m.suggested_label}`), h('span', {}, `quality ${fixed(m.label_quality, 2)}`)))))
      : h('p', { class: 'empty' }, r.label_issues_skipped ? `Not searched: ${r.label_issues_skipped}.` : 'None found.')));
  }
  if (r.export) {
    const e = r.export;
    add(into, section('Export report', exportTable(e.variants, e.recommended_artifact),
      h('p', { class: 'hint' }, `PyTorch accuracy ${pct(e.pytorch_accuracy)} on ${e.num_val} validation images; a variant is within budget when it loses at most ${e.max_accuracy_drop} ${e.max_accuracy_drop === 1 ? 'point' : 'points'}. Opset ${e.opset}.`)));
  }
  if (r.domain_adaptation) add(into, section('Domain adaptation', adaptation(r.domain_adaptation)));
}

// The confusion matrix, per-class scores and most confident mistakes of a report: a
// job's on its validation images, an evaluation's on its dataset.
function scores(r, datasetId, what) {
  const out = [];
  if (r.confusion_matrix) out.push(section('Confusion matrix', heatmap(r.confusion_matrix)));
  if (r.per_class) {
    const rows = r.per_class.map((c) => h('tr', {}, h('th', { scope: 'row' }, c.name), h('td', {}, fixed(c.precision)),
      h('td', {}, fixed(c.recall)), h('td', {}, fixed(c.f1)), h('td', {}, c.support)));
    if (r.macro_avg) {
      rows.push(h('tr', { class: 'total' }, h('th', { scope: 'row' }, 'macro average'), h('td', {}, fixed(r.macro_avg.precision)),
        h('td', {}, fixed(r.macro_avg.recall)), h('td', {}, fixed(r.macro_avg.f1)), h('td', {}, r.num_samples)));
    }
    out.push(section('Per class', table(['Class', 'Precision', 'Recall', 'F1', 'Support'], rows, { id: 'per-class' })));
  }
  if (r.misclassified) {
    const shown = r.misclassified.slice(0, 24);
    out.push(section(`Misclassified ${what} images (${r.misclassified_total ?? shown.length})`, shown.length
      ? h('div', { class: 'thumbs', id: 'misclassified' }, shown.map((m) => h('figure', { class: 'mistake' },
        thumbnail(datasetId, m.path, m.path),
        h('figcaption', {}, h('span', {}, `true ${m.true_label}`), h('span', {}, `predicted ${m.predicted_label}`), h('span', {}, pct(m.confidence))))))
      : h('p', { class: 'empty' }, `None: every ${what} image was classified right.`)));
  }
  return out;
}

function heatmap(cm) {
  const n = cm.labels.length;
  const cell = Math.max(16, Math.min(56, Math.floor(480 / Math.max(1, n))));
  const longest = Math.min(12, Math.max(...cm.labels.map((l) => l.length)));
  const left = 16 + longest * 7; const top = 16 + longest * 5;
  const size = left + n * cell + 8;
  const height = top + n * cell + 8;
  // Drawn at its natural size (shrunk to fit a narrow window), not stretched to the card.
  const svg = s('svg', { viewBox: `0 0 ${size} ${height}`, width: size, height, class: 'chart heatmap', id: 'confusion', role: 'img', 'aria-label': 'Confusion matrix: rows true class, columns predicted class' });
  const short = (t) => (t.length > 12 ? `${t.slice(0, 11)}…` : t);
  cm.labels.forEach((label, i) => {
    add(svg, s('text', { x: left - 6, y: top + i * cell + cell / 2 + 4, 'text-anchor': 'end', class: 'label' }, short(label)),
      s('text', { x: left + i * cell + cell / 2, y: top - 6, transform: `rotate(-45 ${left + i * cell + cell / 2} ${top - 6})`, class: 'label' }, short(label)));
  });
  cm.matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((count, j) => {
      const t = count / total;
      const mix = (a, b) => Math.round(a + (b - a) * t);
      const fill = `rgb(${mix(244, 24)},${mix(246, 78)},${mix(251, 170)})`;
      const g = s('g', {}, s('rect', { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1, fill, class: 'cell', 'data-row': i, 'data-col': j, 'data-count': count },
        s('title', {}, `true ${cm.labels[i]}, predicted ${cm.labels[j]}: ${count}`)));
      if (cell >= 20) add(g, s('text', { x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4, 'text-anchor': 'middle', class: t > 0.5 ? 'count dark' : 'count' }, count));
      add(svg, g);
    });
  });
  return h('figure', {}, svg, h('figcaption', {}, 'Rows: true class; columns: predicted class; colour: share of the row.'));
}

function exportTable(variants, recommended) {
  const rows = (variants || []).map((v) => {
    const lat = v.latency_ms || {};
    return h('tr', { class: v.format === recommended ? 'recommended' : null, 'data-format': v.format },
      h('th', { scope: 'row' }, v.format, v.format === recommended ? h('span', { class: 'badge succeeded' }, 'recommended') : null),
      h('td', {}, bytes(v.size_bytes)), h('td', {}, fixed(lat.batch_1, 2)), h('td', {}, fixed(lat.batch_32, 2)),
      h('td', {}, pct(v.accuracy)), h('td', {}, fixed(v.accuracy_drop_points, 2)), h('td', {}, pct(v.top1_agreement)),
      h('td', {}, v.within_budget ? 'yes' : 'no'));
  });
  return table(['Variant', 'Size', 'Latency b1 (ms)', 'Latency b32 (ms)', 'Accuracy', 'Drop (points)', 'Top-1 agreement', 'Within budget'], rows, { class: 'export-table' });
}

function adaptation(a) {
  const pair = (label, p, fmt = pct) => (p ? h('tr', {}, h('th', { scope: 'row' }, label), h('td', {}, fmt(p.before)), h('td', {}, fmt(p.after))) : null);
  const t = a.target || {};
  const out = [a.summary ? h('p', { class: 'summary' }, a.summary) : null,
    dl([['Method', a.method], a.auto ? ['Chosen', a.auto.chosen || 'none'] : null, ['Kept', a.kept], ['Target images', t.num_images], a.guard_reason ? ['Guard', a.guard_reason] : null]),
    table(['', 'Before', 'After'], [pair('Source val accuracy', a.source_val_accuracy), pair('Target eval accuracy', a.target_eval_accuracy),
      pair('Top class share (target)', t.top_class_share), pair('Mean confidence (target)', t.mean_confidence)].filter(Boolean))];
  if (a.auto) {
    const rows = a.auto.candidates.map((c) => h('tr', {}, h('td', {}, c.method), h('td', {}, c.status),
      h('td', {}, c.target_eval_accuracy == null ? '' : pct(c.target_eval_accuracy)), h('td', {}, c.seconds == null ? '' : String(c.seconds))));
    out.push(h('h3', {}, 'Candidates'), table(['Method', 'Status', 'Target eval accuracy', 'Seconds'], rows));
  }
  if (a.history && a.history.length) {
    const cols = [...new Set(a.history.flatMap((row) => Object.keys(row)))];
    out.push(h('h3', {}, 'History'), table(cols, a.history.map((row) => h('tr', {}, cols.map((c) => h('td', {}, typeof row[c] === 'number' ? +row[c].toFixed(4) : String(row[c] ?? '')))))));
  }
  return out;
}

// ---------------------------------------------------------------- a model

async function modelView(id, v) {
  const m = await api(`/v1/models/${enc(id)}`);
  const scalars = Object.entries(m.metrics).filter(([, val]) => ['number', 'boolean', 'string'].includes(typeof val));
  const variants = m.artifacts.filter((a) => a.report).map((a) => ({ format: a.format, size_bytes: a.size_bytes, ...a.report }));
  const onnx = m.artifacts.filter((a) => a.format.startsWith('onnx'));
  add(main, h('div', { class: 'title' }, h('h1', {}, m.name)),
    dl([['Id', m.id], ['Architecture', m.architecture], ['Source', m.source],
      m.job_id ? ['Job', link(`#/jobs/${m.job_id}`, m.job_id)] : null, ['Created', when(m.created_at)],
      ['Classes', `${m.classes.length}: ${m.classes.slice(0, 30).join(', ')}${m.classes.length > 30 ? ', …' : ''}`],
      ['Recommended', m.recommended_artifact || '—']]),
    h('div', { class: 'grid' },
      section('Metrics', scalars.length ? dl(scalars.map(([k, val]) => [k, k.includes('accuracy') ? pct(val) : typeof val === 'number' && !Number.isInteger(val) ? fixed(val, 4) : String(val)]))
        : h('p', { class: 'empty' }, 'No metrics: this model was uploaded, not trained here.')),
      section('Preprocessing', dl(Object.entries(m.preprocessing).map(([k, val]) => [k, h('code', {}, JSON.stringify(val))])))),
    section('Downloads', artifactsTable(m, v)),
    variants.length ? section('Export report', exportTable(variants, m.recommended_artifact)) : null,
    section('Try it', onnx.length ? tryIt(m, onnx, v)
      : h('p', { id: 'try-unavailable', class: 'notice info' }, 'Try it needs an ONNX export: this model has no ONNX variant. Train it with export “onnx” to try it here.')),
    m.kind === 'backbone' ? null : section('Evaluate on a test set', await evaluateForm(m)));
}

// Datasets with exactly the model's classes (by name), and the model's evaluations.
async function evaluateForm(m) {
  const [datasets, evaluations] = await Promise.all([api('/v1/datasets?limit=100'), api('/v1/evaluations?limit=100')]);
  const mine = new Set(m.classes);
  const fits = datasets.data.filter((d) => d.status === 'ready' && d.kind === 'labeled'
    && d.classes.length === mine.size && d.classes.every((c) => mine.has(c.name)));
  const past = evaluations.data.filter((e) => e.model_id === m.id);
  const list = past.length ? table(['Evaluation', 'Dataset', 'File', 'Status', 'Accuracy'], past.map((e) => h('tr', {},
    h('td', {}, link(`#/evaluations/${e.id}`, e.id)), h('td', {}, link(`#/datasets/${e.dataset_id}`, e.dataset_id)),
    h('td', {}, e.artifact), h('td', {}, badge(e.status)), h('td', {}, e.result ? pct(e.result.accuracy) : '—'))), { id: 'evaluations' }) : null;
  if (!fits.length) {
    return [h('p', { class: 'empty', id: 'evaluate-unavailable' }, 'No ready labelled dataset has exactly this model’s classes: upload one (say, held-out test images) to score it.'), list];
  }
  const dataset = h('select', { id: 'evaluate-dataset' }, fits.map((d) => h('option', { value: d.id }, `${d.name} (${d.num_images} images)`)));
  const files = ['safetensors', ...m.artifacts.map((a) => a.format).filter((f) => f.startsWith('onnx'))];
  const artifact = h('select', { id: 'evaluate-artifact' }, files.map((f) => h('option', { value: f }, f)));
  const msg = h('p', { id: 'evaluate-message', role: 'status' });
  const button = h('button', { type: 'submit', id: 'evaluate' }, 'Evaluate');
  const form = h('form', {}, h('div', { class: 'row' }, h('div', { class: 'field' }, h('label', { for: 'evaluate-dataset' }, 'Dataset'), dataset),
    h('div', { class: 'field' }, h('label', { for: 'evaluate-artifact' }, 'File'), artifact)), button, msg);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    try {
      const ev = await api(`/v1/models/${enc(m.id)}/evaluations`, { method: 'POST', json: { dataset_id: dataset.value, artifact: artifact.value } });
      location.hash = `#/evaluations/${ev.id}`;
    } catch (err) {
      if (err.status === 401) { showError(err); return; }
      msg.textContent = err.message;
      button.disabled = false;
    }
  });
  return [form, list];
}

// ---------------------------------------------------------------- an evaluation

async function evaluationView(id, v) {
  const head = h('div');
  const body = h('div', { id: 'evaluation' });
  add(main, head, body);
  for (;;) {
    const ev = await api(`/v1/evaluations/${enc(id)}`);
    if (v.signal.aborted) return;
    const p = ev.progress;
    put(head, h('div', { class: 'title' }, h('h1', {}, `Evaluation ${ev.id}`), badge(ev.status)),
      dl([['Model', link(`#/models/${ev.model_id}`, ev.model_id)], ['Dataset', link(`#/datasets/${ev.dataset_id}`, ev.dataset_id)],
        ['File', ev.artifact], ['Created', when(ev.created_at)], ['Finished', when(ev.finished_at)],
        ['Images', p ? `${p.images_done} of ${p.images_total}` : '—']]),
      ev.error ? notice(ev.error.code, ev.error.message) : null);
    const r = ev.result;
    if (r) {
      put(body, section('Scores', dl([['Accuracy', pct(r.accuracy)], ['Balanced accuracy', pct(r.balanced_accuracy)],
        ['Macro F1', fixed(r.macro_f1)], ['Images', r.num_samples]])), scores(r, ev.dataset_id, 'test'));
    }
    if (!ACTIVE.includes(ev.status)) return;
    await sleep(1000, v);
    if (v.signal.aborted) return;
  }
}

function artifactsTable(m, v) {
  const msg = h('p', { id: 'download-message', role: 'status' });
  const rows = m.artifacts.map((a) => {
    const button = h('button', { type: 'button', class: 'download', 'data-format': a.format, 'aria-label': `Download ${a.format}` }, 'Download');
    button.addEventListener('click', async () => {
      button.disabled = true;
      msg.textContent = `Downloading ${a.file}…`;
      try {
        const r = await api(`/v1/models/${enc(m.id)}/artifacts/${enc(a.format)}`, { raw: true });
        const blob = await r.blob();
        const named = /filename="?([^";]+)"?/.exec(r.headers.get('Content-Disposition') || '');
        const url = URL.createObjectURL(blob);
        const anchor = h('a', { href: url, download: named ? named[1] : `${m.id}-${a.file}`, hidden: true });
        add(document.body, anchor);
        anchor.click();
        anchor.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        msg.textContent = `Downloaded ${a.file} (${bytes(blob.size)}).`;
      } catch (e) {
        if (e.status === 401) { showError(e); return; }
        if (!v.signal.aborted) msg.textContent = `Download failed: ${e.message}`;
      } finally { button.disabled = false; }
    });
    return h('tr', {}, h('th', { scope: 'row' }, a.format, a.format === m.recommended_artifact ? h('span', { class: 'badge succeeded' }, 'recommended') : null),
      h('td', {}, a.file), h('td', {}, bytes(a.size_bytes)), h('td', {}, h('code', { title: a.sha256 }, `${a.sha256.slice(0, 16)}…`)), h('td', {}, button));
  });
  return [table(['Format', 'File', 'Size', 'SHA-256', ''], rows, { id: 'artifacts' }), msg];
}

function tryIt(m, onnx, v) {
  const file = h('input', { id: 'try-file', type: 'file', accept: 'image/*' });
  const artifact = h('select', { id: 'try-artifact' }, onnx.map((a) => h('option', { value: a.format }, a.format)));
  if (onnx.some((a) => a.format === m.recommended_artifact)) artifact.value = m.recommended_artifact;
  const topK = h('input', { id: 'try-topk', type: 'number', min: 1, max: 100, value: Math.min(5, m.classes.length) });
  const preview = h('div', { class: 'preview' });
  const result = h('div', { id: 'try-result', 'aria-live': 'polite' });
  const zone = h('div', { class: 'drop', id: 'drop-zone' }, h('p', {}, 'Drop an image here, or choose one:'),
    h('label', { for: 'try-file' }, 'Image'), file);
  async function predict(f) {
    put(preview);
    const url = URL.createObjectURL(f);
    v.urls.push(url);
    add(preview, h('img', { src: url, alt: f.name, class: 'thumb big' }));
    put(result, h('p', {}, `Classifying ${f.name}…`));
    const data = new FormData();
    data.append('files', f, f.name);
    data.append('artifact', artifact.value);
    if (topK.value) data.append('top_k', topK.value);
    try {
      const answer = await api(`/v1/models/${enc(m.id)}/predict`, { method: 'POST', body: data });
      const one = answer.results[0];
      if (one.error) { put(result, h('p', { class: 'error', role: 'alert' }, one.error.message)); return; }
      put(result, h('p', {}, `${one.filename}, with ${answer.artifact}:`),
        table(['Label', 'Score', ''], one.predictions.map((p) => h('tr', {}, h('th', { scope: 'row', class: 'label' }, p.label),
          h('td', { class: 'score' }, pct(p.score)), h('td', {}, h('progress', { max: 1, value: p.score, 'aria-label': `score of ${p.label}` }))))));
    } catch (e) {
      if (e.status === 401) { showError(e); return; }
      if (!v.signal.aborted) put(result, h('p', { class: 'error', role: 'alert' }, e.message));
    }
  }
  file.addEventListener('change', () => { if (file.files.length) predict(file.files[0]); });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  return [h('div', { class: 'row' }, h('div', { class: 'field' }, h('label', { for: 'try-artifact' }, 'Variant'), artifact),
    h('div', { class: 'field' }, h('label', { for: 'try-topk' }, 'Top k'), topK)), zone, h('div', { class: 'row' }, preview, result)];
}

// ---------------------------------------------------------------- a new job

async function newJobView(params) {
  const [datasets, models] = await Promise.all([api('/v1/datasets?limit=100'), api('/v1/models?limit=100')]);
  const ready = datasets.data.filter((d) => d.status === 'ready' && d.kind === 'labeled');
  add(main, h('h1', {}, 'New job'));
  if (!ready.length) {
    add(main, notice('No dataset to train on', 'Upload a labeled dataset first (Datasets page); a job needs a ready one.', 'info'));
    return;
  }
  const fields = [];
  const field = (param, label, control, hint) => {
    const id = `f-${param.replace(/\./g, '-')}`;
    control.id = id;
    const error = h('p', { class: 'field-error', id: `${id}-error`, role: 'alert' });
    control.setAttribute('aria-describedby', `${id}-error`);
    const wrap = h('div', { class: 'field', 'data-param': param }, h('label', { for: id }, label), control, hint ? h('small', {}, hint) : null, error);
    fields.push({ param, control, wrap, error });
    return wrap;
  };
  const select = (options, value) => {
    const el = h('select', {}, options.map((o) => (Array.isArray(o) ? h('option', { value: o[0] }, o[1]) : h('option', { value: o }, o))));
    el.value = value;
    return el;
  };
  const number = (value, step = 'any') => h('input', { type: 'number', step, value });
  const check = (value, checked) => h('input', { type: 'checkbox', value, checked });
  const datasetSel = select(ready.map((d) => [d.id, `${d.name} (${d.num_images} images, ${d.classes.length} classes)`]),
    params.get('dataset') && ready.some((d) => d.id === params.get('dataset')) ? params.get('dataset') : ready[0].id);
  const base = h('select', {}, h('optgroup', { label: 'Architectures' }, ARCHITECTURES.map((a) => h('option', { value: a }, a))),
    models.data.length ? h('optgroup', { label: 'Your models (continue from one)' }, models.data.map((m) => h('option', { value: m.id }, `${m.name} (${m.id})`))) : null);
  const c = {
    dataset_id: datasetSel, base_model: base,
    pretrained_weights: select([['imagenet', 'imagenet (torchvision weights)'], ['none', 'none (random initialisation)']], 'imagenet'),
    strategy: select([['linear_probe', 'linear_probe (frozen backbone, new head)'], ['partial', 'partial (train the last blocks)'], ['full', 'full (train everything)']], 'linear_probe'),
    unfreeze_last: number('', 1),
    'hyperparameters.epochs': number(5, 1), 'hyperparameters.batch_size': number(32, 1),
    'hyperparameters.learning_rate': number(0.001), 'hyperparameters.image_size': number(224, 1),
    'hyperparameters.augmentation': select(['none', 'light', 'strong'], 'light'),
    'hyperparameters.seed': number(0, 1), validation_split: number(0.2),
    onnx: check('onnx', true), int8: check('int8', true), fp16: check('fp16', false),
    webhook_url: h('input', { type: 'url', placeholder: 'https://…' }),
  };
  const formError = h('p', { id: 'form-error', class: 'error', role: 'alert' });
  const button = h('button', { type: 'submit' }, 'Start job');
  const form = h('form', { id: 'job-form', class: 'card', novalidate: true },
    h('fieldset', {}, h('legend', {}, 'Data and model'), h('div', { class: 'row' },
      field('dataset_id', 'Dataset', c.dataset_id), field('base_model', 'Base model', c.base_model),
      field('pretrained_weights', 'Pretrained weights', c.pretrained_weights, 'imagenet needs the weights in the server’s cache'),
      field('strategy', 'Strategy', c.strategy), field('unfreeze_last', 'Unfreeze last blocks', c.unfreeze_last, 'partial only'))),
    h('fieldset', {}, h('legend', {}, 'Hyperparameters'), h('div', { class: 'row' },
      field('hyperparameters.epochs', 'Epochs', c['hyperparameters.epochs'], '1 to 500'),
      field('hyperparameters.batch_size', 'Batch size', c['hyperparameters.batch_size'], '1 to 1024'),
      field('hyperparameters.learning_rate', 'Learning rate', c['hyperparameters.learning_rate']),
      field('hyperparameters.image_size', 'Image size (px)', c['hyperparameters.image_size'], '16 to 1024'),
      field('hyperparameters.augmentation', 'Augmentation', c['hyperparameters.augmentation']),
      field('hyperparameters.seed', 'Seed', c['hyperparameters.seed']),
      field('validation_split', 'Validation split', c.validation_split, '0.05 to 0.5, unless the dataset has val/'))),
    h('fieldset', {}, h('legend', {}, 'Export'), h('div', { class: 'row' },
      h('div', { class: 'field', 'data-param': 'export' }, h('label', { class: 'check' }, c.onnx, ' ONNX (fp32)')),
      h('div', { class: 'field', 'data-param': 'quantization' }, h('label', { class: 'check' }, c.int8, ' int8 quantized'),
        h('label', { class: 'check' }, c.fp16, ' fp16'), h('p', { class: 'field-error', id: 'f-quantization-error', role: 'alert' })),
      field('webhook_url', 'Webhook URL (optional)', c.webhook_url))),
    formError, button);
  fields.push({ param: 'quantization', wrap: form.querySelector('[data-param="quantization"]'), error: form.querySelector('#f-quantization-error') });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const f of fields) { f.error.textContent = ''; if (f.control) f.control.removeAttribute('aria-invalid'); }
    formError.textContent = '';
    const val = (k) => c[k].value.trim();
    const num = (k) => (val(k) === '' ? undefined : Number(val(k)));
    const hyper = {};
    for (const k of ['epochs', 'batch_size', 'learning_rate', 'image_size', 'seed']) {
      const n = num(`hyperparameters.${k}`);
      if (n !== undefined) hyper[k] = n;
    }
    hyper.augmentation = val('hyperparameters.augmentation');
    const spec = { dataset_id: val('dataset_id'), base_model: val('base_model'), pretrained_weights: val('pretrained_weights'),
      strategy: val('strategy'), hyperparameters: hyper,
      export: c.onnx.checked ? ['onnx'] : [], quantization: [c.int8, c.fp16].filter((x) => x.checked).map((x) => x.value) };
    if (num('unfreeze_last') !== undefined) spec.unfreeze_last = num('unfreeze_last');
    if (num('validation_split') !== undefined) spec.validation_split = num('validation_split');
    if (val('webhook_url')) spec.webhook_url = val('webhook_url');
    button.disabled = true;
    try {
      const job = await api('/v1/jobs', { method: 'POST', json: spec });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      button.disabled = false;
      if (e.status === 401) { showError(e); return; }
      // The API names the field (`hyperparameters.epochs`, `quantization.1`): show it there.
      const target = e.param && fields.find((f) => e.param === f.param || e.param.startsWith(`${f.param}.`));
      if (target) {
        target.error.textContent = e.message;
        if (target.control) { target.control.setAttribute('aria-invalid', 'true'); target.control.focus(); }
      } else {
        formError.textContent = e.message;
      }
    }
  });
  add(main, form);
}

// ---------------------------------------------------------------- start

document.getElementById('sign-out').addEventListener('click', () => signOut('Signed out.'));
// ---------------------------------------------------------------- model searches

async function searchesView(_, v) {
  const list = h('div');
  add(main, h('h1', {}, 'Model searches'),
    h('p', { class: 'hint' }, 'Start one with POST /v1/searches or `graft search create request.json`; each trial is a job.'),
    section('All searches', list));
  await livePagedTable(v, (x) => x.status === 'running', list, '/v1/searches',
    ['Search', 'Status', 'Trials', 'Epochs', 'Recommended model', 'Created'],
    (x) => [link(`#/searches/${x.id}`, x.id), badge(x.status), `${x.budget_used.trials} / ${x.spec.budget.max_trials}`,
      x.budget_used.epochs, x.recommended_model_id ? link(`#/models/${x.recommended_model_id}`, x.recommended_model_id) : '—',
      when(x.created_at)],
    'No searches yet.');
}

async function searchView(id, v) {
  const head = h('div');
  const board = section('Leaderboard');
  const front = h('section', { class: 'card', id: 'frontier' });
  add(main, head, board, front);
  for (;;) {
    const x = await api(`/v1/searches/${enc(id)}`);
    renderSearchHead(head, x, v);
    renderLeaderboard(board, x);
    renderFrontier(front, x);
    if (x.status !== 'running') return;
    await sleep(2000, v);
    if (v.signal.aborted) return;
  }
}

function renderSearchHead(into, x, v) {
  const spec = x.spec;
  const msg = h('p', { id: 'cancel-message', role: 'status' });
  const cancel = x.status === 'running'
    ? h('button', { type: 'button', id: 'cancel', class: 'danger', onclick: async () => {
      cancel.disabled = true;
      try { await api(`/v1/searches/${enc(x.id)}/cancel`, { method: 'POST' }); msg.textContent = 'Cancelled: its trials stop.'; } catch (e) {
        if (e.status === 401) { showError(e); return; }
        msg.textContent = `Cancel refused: ${e.message}`;
        cancel.disabled = false;
      }
    } }, 'Cancel search')
    : null;
  const c = spec.constraints;
  const limits = [c.max_latency_ms != null ? `latency ≤ ${c.max_latency_ms} ms` : null,
    c.max_size_mb != null ? `size ≤ ${c.max_size_mb} MB` : null].filter(Boolean).join(', ');
  put(into,
    h('div', { class: 'title' }, h('h1', {}, `Search ${x.id}`), h('span', { id: 'search-status' }, badge(x.status)), cancel),
    msg,
    x.error ? notice(`Failed: ${x.error.code}`, x.error.message) : null,
    h('p', { id: 'recommendation', class: x.recommended_model_id ? 'ok' : '' },
      x.recommended_model_id ? ['Recommended: ', link(`#/models/${x.recommended_model_id}`, x.recommended_model_id), '. '] : null,
      x.recommendation),
    dl([['Dataset', link(`#/datasets/${spec.dataset_id}`, spec.dataset_id)],
      ['Objective', spec.objective], ['Sampler', `${spec.sampler} (seed ${spec.seed})`], ['Pruner', spec.pruner],
      ['Trials', `${x.budget_used.trials} of ${spec.budget.max_trials}, ${spec.budget.max_parallel} at once`],
      ['Epochs', `${x.budget_used.epochs}` + (spec.budget.max_epochs_total ? ` of ${spec.budget.max_epochs_total}` : '')],
      ['Constraints', c.quantization ? `${limits || 'none'} on onnx-${c.quantization}` : 'none'],
      ['Created', when(x.created_at)], ['Finished', when(x.finished_at)]]));
}

const paramText = (params) => Object.entries(params)
  .map(([k, val]) => `${k} ${typeof val === 'number' ? val.toPrecision(3) : val}`).join(', ');

function renderLeaderboard(into, x) {
  const objective = x.spec.objective;
  const rows = x.leaderboard.map((t) => row([t.number, badge(t.status), paramText(t.params),
    objective === 'val_accuracy' ? pct(t.value) : fixed(t.value, 4), t.epochs,
    t.artifact ? fixed(t.artifact.size_mb, 2) : '—', t.artifact ? fixed(t.artifact.latency_ms, 2) : '—',
    t.meets_constraints === null ? '—' : (t.meets_constraints ? 'yes' : 'no'),
    link(`#/jobs/${t.job_id}`, t.job_id), t.model_id ? link(`#/models/${t.model_id}`, t.model_id) : '—'],
  { 'data-trial': t.number, class: t.model_id && t.model_id === x.recommended_model_id ? 'recommended' : null }));
  put(into, h('h2', {}, 'Leaderboard'),
    rows.length
      ? table(['Trial', 'Status', 'Parameters', objective, 'Epochs', 'MB', 'ms', 'Meets', 'Job', 'Model'], rows, { id: 'leaderboard' })
      : h('p', { class: 'empty' }, 'No trials yet.'));
}

// Objective against latency: every succeeded trial with an artifact, the Pareto front
// (objective, latency and size) joined and marked, the recommended model ringed.
function renderFrontier(into, x) {
  put(into, h('h2', {}, 'Accuracy against latency'));
  const pts = x.leaderboard.filter((t) => t.value !== null && t.artifact && t.artifact.latency_ms !== null);
  if (!pts.length) {
    add(into, h('p', { class: 'empty', id: 'no-frontier' }, x.spec.constraints.quantization
      ? 'The frontier appears once a trial has succeeded and its quantized artifact was measured.'
      : 'No frontier: the search exports no quantized artifact (constraints.quantization).'));
    return;
  }
  const onFront = new Set(x.pareto_front.map((p) => p.number));
  const W = 480; const H = 280; const L = 56; const R = 16; const T = 12; const B = 40;
  const lat = pts.map((t) => t.artifact.latency_ms); const val = pts.map((t) => t.value);
  const [x0, x1] = [Math.min(...lat) * 0.9, Math.max(...lat) * 1.1 + 1e-9];
  const [y0, y1] = [Math.min(...val) - 0.02, Math.max(...val) + 0.02];
  const px = (ms) => L + ((W - L - R) * (ms - x0)) / (x1 - x0);
  const py = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart scatter', role: 'img', 'aria-label': 'objective against latency per trial' });
  for (let i = 0; i <= 4; i += 1) {
    const yv = y0 + ((y1 - y0) * i) / 4; const xv = x0 + ((x1 - x0) * i) / 4;
    add(svg, s('line', { x1: L, x2: W - R, y1: py(yv), y2: py(yv), class: 'grid-line' }),
      s('text', { x: L - 6, y: py(yv) + 4, 'text-anchor': 'end', class: 'tick' }, yv.toFixed(3)),
      s('text', { x: px(xv), y: H - B + 16, 'text-anchor': 'middle', class: 'tick' }, xv.toFixed(2)));
  }
  add(svg, s('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', class: 'axis' }, `latency (ms, onnx-${x.spec.constraints.quantization}, batch 1)`));
  const front = pts.filter((t) => onFront.has(t.number)).sort((a, b) => a.artifact.latency_ms - b.artifact.latency_ms);
  add(svg, s('polyline', { points: front.map((t) => `${px(t.artifact.latency_ms)},${py(t.value)}`).join(' '), class: 'frontier' }));
  for (const t of pts) {
    const cls = `pt trial${onFront.has(t.number) ? ' front' : ''}${t.meets_constraints ? '' : ' misses'}`;
    add(svg, s('circle', { cx: px(t.artifact.latency_ms), cy: py(t.value), r: t.model_id === x.recommended_model_id ? 7 : 4.5, class: cls, 'data-trial': t.number },
      s('title', {}, `trial ${t.number}: ${x.spec.objective} ${t.value.toFixed(4)}, ${t.artifact.latency_ms.toFixed(2)} ms, ${t.artifact.size_mb.toFixed(2)} MB${t.meets_constraints ? '' : ' (misses the constraints)'}`)));
  }
  add(into, h('figure', { id: 'pareto' }, svg,
    h('p', { class: 'legend' }, h('span', { class: 'key front' }, 'Pareto front'), h('span', { class: 'key misses' }, 'misses a constraint'))),
  table(['Trial', x.spec.objective, 'ms', 'MB', 'Model'], x.pareto_front.map((p) => row([p.number, fixed(p.value, 4), fixed(p.latency_ms, 2), fixed(p.size_mb, 2),
    link(`#/models/${p.model_id}`, p.model_id)])), { id: 'pareto-table' }));
}

window.addEventListener('hashchange', () => route());
route();
