// The "API Keys" page: plain DOM code against the demo's HTTP API on the same origin.
// Text from the server (names, messages) only ever goes into textContent, never into HTML.
'use strict';

const STORAGE_KEY = 'pg_apikey.key';
const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';

// The key the page signs in with. Session storage: gone when the tab closes, never sent anywhere
// but this origin's API. A newly created key is never stored (it is shown once).
const session = {
  get: () => sessionStorage.getItem(STORAGE_KEY),
  set: (key) => sessionStorage.setItem(STORAGE_KEY, key),
  clear: () => sessionStorage.removeItem(STORAGE_KEY),
};

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// X-Api-Key rather than "Authorization: Bearer": nginx would pass anything that does not look like
// a key on to PostgREST as a JWT, whose error says nothing useful about a mistyped key.
async function api(path, { method = 'GET', body, key = session.get() } = {}) {
  const headers = { 'X-Api-Key': key || '' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* an empty or non-JSON body */ }
  if (!res.ok) {
    const retry = parseInt(res.headers.get('Retry-After') || '', 10);
    const message = (data && (data.message || data.error)) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message, Number.isFinite(retry) ? retry : null);
  }
  return data;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'className') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function showStatus(text) { $('status').textContent = text; }

function formatTime(iso, empty) {
  if (!iso) return document.createTextNode(empty);
  const d = new Date(iso);
  return el('time', { datetime: d.toISOString(), title: d.toString(),
    text: d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) });
}

// 24 hourly bars, oldest on the left; refusals (expired, revoked, rate limited, denied) stacked
// on top in a second colour.
function usageChart(usage) {
  const W = 120, H = 28, n = 24, bw = W / n;
  const uses = usage ? usage.uses : new Array(n).fill(0);
  const refused = usage ? usage.refused : new Array(n).fill(0);
  const total = uses.reduce((a, b) => a + b, 0);
  const totalRefused = refused.reduce((a, b) => a + b, 0);
  const max = Math.max(1, ...uses.map((u, i) => u + refused[i]));
  const label = `${total} ${total === 1 ? 'use' : 'uses'} and ${totalRefused} refused in the last 24 hours`;
  const chart = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': label, class: 'chart', 'data-total': total });
  chart.append(svg('title'));
  chart.firstChild.textContent = label;
  chart.append(svg('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: 'axis' }));
  const first = usage ? new Date(usage.first_hour) : null;
  uses.forEach((u, i) => {
    const r = refused[i];
    const hu = (u / max) * (H - 2), hr = (r / max) * (H - 2);
    const g = svg('g', { 'data-uses': u, 'data-refused': r });
    const hour = first ? new Date(first.getTime() + i * 3600e3) : null;
    const t = svg('title');
    t.textContent = `${hour ? hour.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' }) + ': ' : ''}` +
      `${u} ${u === 1 ? 'use' : 'uses'}${r ? `, ${r} refused` : ''}`;
    g.append(t);
    // A transparent full-height bar so the hour's tooltip works even where nothing was used.
    g.append(svg('rect', { x: i * bw, y: 0, width: bw, height: H, class: 'hit' }));
    if (u) g.append(svg('rect', { x: i * bw + 0.5, y: H - 1 - hu, width: bw - 1, height: hu, class: 'uses' }));
    if (r) g.append(svg('rect', { x: i * bw + 0.5, y: H - 1 - hu - hr, width: bw - 1, height: hr, class: 'refused' }));
    chart.append(g);
  });
  return chart;
}

function renderKeys(keys, usage) {
  const byId = new Map((usage || []).map((u) => [u.key_id, u]));
  const body = $('keys').tBodies[0];
  body.replaceChildren();
  for (const k of keys) {
    const del = el('button', { type: 'button', className: 'danger small', text: 'Delete',
      'aria-label': `Delete ${k.name}` });
    del.addEventListener('click', () => confirmDelete(k));
    body.append(el('tr', { 'data-key-id': k.id },
      el('td', { className: 'name', text: k.name }),
      el('td', {}, el('code', { className: 'masked', text: k.key })),
      el('td', { text: k.sub_agency || 'All' }),
      el('td', {}, el('span', { className: `badge ${k.status}`, text: k.status })),
      el('td', {}, formatTime(k.created_at, '')),
      el('td', {}, formatTime(k.expires_at, 'Never')),
      el('td', {}, formatTime(k.last_used_at, 'Never')),
      el('td', {}, usageChart(byId.get(k.id))),
      el('td', {}, del)));
  }
  $('keys').hidden = keys.length === 0;
  $('no-keys').hidden = keys.length !== 0;
}

async function refresh() {
  // The chart is an extra: the list still shows if usage cannot be read.
  const [keys, usage] = await Promise.all([
    api('/api/keys'),
    api('/api/keys/usage').catch(() => []),
  ]);
  renderKeys(keys, usage);
}

async function loadSubAgencies() {
  const select = $('create-sub-agency');
  select.replaceChildren(el('option', { value: '', text: 'All sub-agencies' }));
  for (const a of await api('/api/sub-agencies')) {
    select.append(el('option', { value: a.slug, text: a.name }));
  }
}

function showSignIn(message) {
  session.clear();
  hideNewKey();
  $('signed-in').hidden = true;
  $('account').hidden = true;
  $('sign-in').hidden = false;
  $('keys').tBodies[0].replaceChildren();
  showStatus(message || '');
}

async function showSignedIn() {
  const who = await api('/rpc/whoami');
  $('signed-in-as').textContent = `Signed in as ${who.owner}`;
  $('sign-in').hidden = true;
  $('signed-in').hidden = false;
  $('account').hidden = false;
  await Promise.all([refresh(), loadSubAgencies()]);
}

// A 401 after signing in means the key was deleted, revoked or has expired: sign out.
function handle(err) {
  if (err instanceof ApiError && err.status === 401) {
    showSignIn(`Signed out: ${err.message}.`);
  } else {
    showStatus(err.message);
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = $('sign-in-key');
  const key = input.value.trim();
  input.value = '';
  try {
    await api('/api/keys', { key });
    session.set(key);
    showStatus('');
    await showSignedIn();
  } catch (err) {
    session.clear();
    showStatus(err instanceof ApiError ? `Sign-in failed: ${err.message}` : err.message);
  }
}

function hideNewKey() {
  $('new-key-value').value = '';
  $('copy-status').textContent = '';
  $('new-key').hidden = true;
}

async function createKey(event) {
  event.preventDefault();
  const error = $('create-error');
  error.textContent = '';
  const days = $('create-expiry').value;
  const body = {
    name: $('create-name').value.trim(),
    expires_in_days: days === '' ? null : Number(days),
    sub_agency: $('create-sub-agency').value || null,
  };
  $('create-submit').disabled = true;
  try {
    const created = await api('/api/keys', { method: 'POST', body });
    $('create-form').reset();
    $('new-key-value').value = created.key;
    $('copy-status').textContent = '';
    $('new-key').hidden = false;
    $('copy-key').focus();
    await refresh();
  } catch (err) {
    if (err instanceof ApiError && err.status === 429) {
      const wait = err.retryAfter === null ? 'a while' : `${err.retryAfter} seconds`;
      error.textContent = `Too many API key creation requests. Please try again in ${wait}.`;
    } else if (err instanceof ApiError && err.status === 401) {
      handle(err);
    } else {
      error.textContent = err.message;
    }
  } finally {
    $('create-submit').disabled = false;
  }
}

async function copyKey() {
  const input = $('new-key-value');
  const status = $('copy-status');
  try {
    await navigator.clipboard.writeText(input.value);
    status.textContent = 'Copied to the clipboard.';
  } catch (_) {
    // No asynchronous clipboard (a plain-HTTP origin other than localhost, or no permission).
    input.select();
    status.textContent = document.execCommand('copy')
      ? 'Copied to the clipboard.'
      : 'Copying failed: select the key and copy it by hand.';
  }
}

function confirmDelete(k) {
  const dialog = $('delete-dialog');
  $('delete-text').textContent =
    `“${k.name}” (${k.key}) will be deleted now. Requests with this key will be refused at once; this cannot be undone.`;
  dialog.returnValue = '';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'delete') return;
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
      showStatus(`Deleted “${k.name}”.`);
      await refresh();
    } catch (err) {
      handle(err);
    }
  };
  dialog.showModal();
}

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('create-form').addEventListener('submit', createKey);
  $('copy-key').addEventListener('click', copyKey);
  $('new-key-done').addEventListener('click', hideNewKey);
  $('sign-out').addEventListener('click', () => showSignIn('Signed out.'));
  if (session.get()) {
    $('sign-in').hidden = true;
    showSignedIn().catch(handle);
  }
});
