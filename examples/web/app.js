// The "API Keys" page: plain DOM code against the demo's HTTP API on the same origin.
// Text from the server (names, messages) only ever goes into textContent, never into HTML.
'use strict';

const STORAGE_KEY = 'pg_apikey.key';
const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';
const HOUR = 3600e3, DAY = 24 * HOUR;

// The key the page signs in with. Session storage: gone when the tab closes, never sent anywhere
// but this origin's API. A newly created key is never stored (it is shown once).
const session = {
  get: () => sessionStorage.getItem(STORAGE_KEY),
  set: (key) => sessionStorage.setItem(STORAGE_KEY, key),
  clear: () => sessionStorage.removeItem(STORAGE_KEY),
};

// What the server says about the signed-in key (GET /api/keys/session): the bounds of every key it
// may create, and the owner's creation quota. Null while signed out.
let me = null;
let agencyNames = new Map();

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

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function showStatus(text) { $('status').textContent = text; }

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

// "in 3 months", "5 minutes ago": rounded to the largest unit that reads naturally; the exact
// time is in the element's title and datetime.
const RELATIVE_NOW = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: 'always' });
function relative(date) {
  const s = (date.getTime() - Date.now()) / 1000, a = Math.abs(s);
  if (a < 45) return RELATIVE_NOW.format(0, 'second');
  if (a < 45 * 60) return RELATIVE.format(Math.round(s / 60), 'minute');
  if (a < 22 * 3600) return RELATIVE.format(Math.round(s / 3600), 'hour');
  if (a < 45 * 86400) return RELATIVE.format(Math.round(s / 86400), 'day');
  if (a < 320 * 86400) return RELATIVE.format(Math.round(s / (30.44 * 86400)), 'month');
  return RELATIVE.format(Math.round(s / (365.25 * 86400)), 'year');
}

const fullDate = (d) => d.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'long' });
const shortDate = (d) => d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function timeElement(date, text) {
  return el('time', { datetime: date.toISOString(), title: fullDate(date), 'data-relative': '', text });
}

function formatTime(iso, empty) {
  if (!iso) return document.createTextNode(empty);
  const d = new Date(iso);
  return timeElement(d, relative(d));
}

// The date and how far off it is: "Mar 7, 2027, 2:15 PM (in 3 months)".
function formatDate(date) {
  const frag = document.createDocumentFragment();
  frag.append(el('time', { datetime: date.toISOString(), title: fullDate(date), text: shortDate(date) }),
    ` (${relative(date)})`);
  return frag;
}

// Relative times go stale while the page stays open.
function updateTimes() {
  for (const t of document.querySelectorAll('time[data-relative]')) {
    t.textContent = relative(new Date(t.getAttribute('datetime')));
  }
}

// 24 hourly bars, oldest on the left; refusals (expired, revoked, rate limited, denied) stacked on
// top in a second colour. A scale on the left (0 and the busiest hour's count) and three hour
// labels make the bars readable as numbers; the totals are repeated in text beside the legend.
function usageChart(usage) {
  const n = 24, W = 232, H = 88, left = 30, right = 6, top = 8, bottom = 18;
  const pw = W - left - right, ph = H - top - bottom, bw = pw / n, base = top + ph;
  const uses = usage ? usage.uses : new Array(n).fill(0);
  const refused = usage ? usage.refused : new Array(n).fill(0);
  const total = uses.reduce((a, b) => a + b, 0);
  const totalRefused = refused.reduce((a, b) => a + b, 0);
  const peak = Math.max(0, ...uses.map((u, i) => u + refused[i]));
  const max = Math.max(1, peak);
  const label = `${plural(total, 'use', 'uses')} and ${totalRefused} refused in the last 24 hours`;
  const chart = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${label}${peak ? `; at most ${peak} in one hour` : ''}`, class: 'chart',
    'data-total': total, 'data-max': max });
  chart.append(svg('title', {}, label));

  chart.append(svg('line', { x1: left, y1: top + 0.5, x2: W - right, y2: top + 0.5, class: 'grid' }));
  chart.append(svg('line', { x1: left - 0.5, y1: top, x2: left - 0.5, y2: base, class: 'axis' }));
  chart.append(svg('line', { x1: left, y1: base + 0.5, x2: W - right, y2: base + 0.5, class: 'axis' }));
  chart.append(svg('text', { x: left - 4, y: top + 4, 'text-anchor': 'end', class: 'tick y-max' }, String(max)));
  chart.append(svg('text', { x: left - 4, y: base, 'text-anchor': 'end', class: 'tick' }, '0'));

  const lastHour = new Date(Math.floor(Date.now() / HOUR) * HOUR);
  const first = usage ? new Date(usage.first_hour) : new Date(lastHour.getTime() - (n - 1) * HOUR);
  const hourAt = (i) => new Date(first.getTime() + i * HOUR);
  const hourLabel = (d) => d.toLocaleTimeString(undefined, { hour: 'numeric' });
  for (const [i, anchor] of [[0, 'start'], [12, 'middle'], [n - 1, 'end']]) {
    const x = anchor === 'start' ? left : anchor === 'end' ? W - right : left + (i + 0.5) * bw;
    chart.append(svg('text', { x, y: H - 4, 'text-anchor': anchor, class: 'tick x-hour' }, hourLabel(hourAt(i))));
  }

  uses.forEach((u, i) => {
    const r = refused[i];
    const hu = (u / max) * ph, hr = (r / max) * ph, x = left + i * bw;
    const g = svg('g', { 'data-uses': u, 'data-refused': r });
    const at = hourAt(i).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
    g.append(svg('title', {}, `${at}: ${plural(u, 'use', 'uses')}${r ? `, ${r} refused` : ''}`));
    // A transparent full-height bar so the hour's tooltip works even where nothing was used.
    g.append(svg('rect', { x, y: top, width: bw, height: ph, class: 'hit' }));
    if (u) g.append(svg('rect', { x: x + 0.5, y: base - hu, width: bw - 1, height: hu, class: 'uses' }));
    if (r) g.append(svg('rect', { x: x + 0.5, y: base - hu - hr, width: bw - 1, height: hr, class: 'refused' }));
    chart.append(g);
  });

  const legend = el('div', { className: 'legend', 'aria-hidden': 'true' },
    el('span', { className: 'swatch uses' }), plural(total, 'use', 'uses'), ' ',
    el('span', { className: 'swatch refused' }), `${totalRefused} refused`);
  return el('div', { className: 'usage' }, chart, legend);
}

const scopeText = (scopes) => (scopes ? (scopes.length ? scopes.join(', ') : 'none') : 'All');

function actionButton(text, label, className, onClick) {
  const b = el('button', { type: 'button', className: `small ${className}`, text, 'aria-label': `${text} ${label}` });
  b.addEventListener('click', onClick);
  return b;
}

// The actions offered for a key. The server checks each again; the page only leaves out what it
// would refuse, and what would lock the user out of this page without asking:
//  - a key the signed-in key may not manage (one wider than itself): none;
//  - revoked and expired keys: delete only (rotate refuses them, and revoking or disabling a key
//    that no longer works changes nothing);
//  - a key in a rotation's grace: no rotate (its successor is the one to rotate);
//  - a disabled key: enable, revoke, delete (rotate refuses a disabled key);
//  - the key this page is signed in with: no disable (a disabled key cannot sign in here to
//    enable itself again); rotate only with a grace, so the page still works while the new key
//    is copied; revoke and delete only after a confirmation that says the page signs out.
function actionsFor(k) {
  if (!k.manageable) {
    return [el('span', { className: 'muted', text: 'None: wider than the key you signed in with' })];
  }
  const label = k.name;
  const del = actionButton('Delete', label, 'danger', () => confirmDelete(k));
  if (k.status === 'revoked' || k.status === 'expired') return [del];
  const out = [];
  const graces = graceChoices(k);
  if (k.status === 'active' && !k.stops_at && graces.length) {
    out.push(actionButton('Rotate', label, 'secondary', () => confirmRotate(k)));
  }
  if (k.status === 'disabled') {
    out.push(actionButton('Enable', label, 'secondary', () => toggle(k, 'enable')));
  } else if (!k.current) {
    out.push(actionButton('Disable', label, 'secondary', () => toggle(k, 'disable')));
  }
  out.push(actionButton('Revoke', label, 'danger', () => confirmRevoke(k)), del);
  return out;
}

function renderKeys(keys, usage) {
  const byId = new Map((usage || []).map((u) => [u.key_id, u]));
  const body = $('keys').tBodies[0];
  body.replaceChildren();
  for (const k of keys) {
    const name = el('td', { className: 'name', 'data-col': 'name' }, el('span', { className: 'name-text', text: k.name }));
    if (k.current) name.append(' ', el('span', { className: 'badge session', text: 'this session' }));
    const status = el('td', { 'data-col': 'status' }, el('span', { className: `badge ${k.status}`, text: k.status }));
    if (k.stops_at) {
      const stops = new Date(k.stops_at);
      status.append(el('span', { className: 'note' }, 'replaced: stops ', timeElement(stops, relative(stops))));
    }
    body.append(el('tr', { 'data-key-id': k.id, 'data-status': k.status, class: k.current ? 'current' : '' },
      name,
      el('td', { 'data-col': 'key' }, el('code', { className: 'masked', text: k.key })),
      el('td', { 'data-col': 'scopes', className: 'scopes-cell', text: scopeText(k.scopes) }),
      el('td', { 'data-col': 'sub_agency', text: k.sub_agency || 'All' }),
      status,
      el('td', { 'data-col': 'created' }, formatTime(k.created_at, '')),
      el('td', { 'data-col': 'expires' }, formatTime(k.expires_at, 'Never')),
      el('td', { 'data-col': 'last_used' }, formatTime(k.last_used_at, 'Never')),
      el('td', { 'data-col': 'usage' }, usageChart(byId.get(k.id))),
      el('td', { 'data-col': 'actions' }, el('div', { className: 'actions' }, ...actionsFor(k)))));
  }
  $('keys').hidden = keys.length === 0;
  $('no-keys').hidden = keys.length !== 0;
}

async function loadSession() {
  me = await api('/api/keys/session');
  renderScopeChoices();
  renderPreview();
  renderQuota();
}

// aria-busy on the signed-in part while any of it is being loaded, so assistive technology (and
// anything else watching) waits for the whole of it.
let loading = 0;
async function busy(work) {
  if (loading++ === 0) $('signed-in').setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    if (--loading === 0) $('signed-in').setAttribute('aria-busy', 'false');
  }
}

function refresh() {
  return busy(async () => {
    // The chart is an extra: the list still shows if usage cannot be read.
    const [keys, usage] = await Promise.all([
      api('/api/keys'),
      api('/api/keys/usage').catch(() => []),
      loadSession(),
    ]);
    renderKeys(keys, usage);
  });
}

async function loadSubAgencies() {
  const select = $('create-sub-agency');
  select.replaceChildren(el('option', { value: '', text: 'All sub-agencies' }));
  agencyNames = new Map();
  for (const a of await api('/api/sub-agencies')) {
    agencyNames.set(a.slug, a.name);
    select.append(el('option', { value: a.slug, text: a.name }));
  }
  renderPreview();
}

// --- Creating a key: what it will really get -------------------------------------------------

// A key made with a key never outlives it (apikey.create caps the expiry to the signing key's),
// and "never" means the database's default lifetime where one is set.
function expectedExpiry(daysValue) {
  const now = Date.now();
  let wanted = null;
  if (daysValue !== '') wanted = now + Number(daysValue) * DAY;
  else if (me.default_lifetime_seconds) wanted = now + me.default_lifetime_seconds * 1000;
  const cap = me.expires_at ? new Date(me.expires_at).getTime() : null;
  if (cap !== null && (wanted === null || wanted > cap)) return { at: new Date(cap), capped: true };
  return { at: wanted === null ? null : new Date(wanted), capped: false };
}

function chosenScopes() {
  if (!document.querySelector('input[name=scope_mode][value=only]').checked) return null;
  return [...$('scope-list').querySelectorAll('input[type=checkbox]:checked')].map((c) => c.value);
}

// Restrictions the signed-in key holds (apikey.deny_scopes) pass to every key it makes, so they
// are ticked and cannot be unticked; other scopes are offered only if the signed-in key holds them.
function renderScopeChoices() {
  const list = $('scope-list');
  const before = new Set(chosenScopes() || []);
  list.replaceChildren();
  for (const s of me.grantable_scopes || []) {
    const id = `scope-${s.scope.replace(/[^a-z0-9]/g, '-')}`;
    const box = el('input', { type: 'checkbox', id, value: s.scope, 'aria-describedby': `${id}-help` });
    // defaultChecked too: the form's reset after a creation must leave restrictions ticked.
    box.defaultChecked = s.restriction;
    box.checked = s.restriction || before.has(s.scope);
    box.disabled = s.restriction;
    box.addEventListener('change', renderPreview);
    list.append(el('div', { className: 'choice' }, box,
      el('label', { for: id }, el('code', { text: s.scope })),
      el('span', { id: `${id}-help`, className: 'help', text: s.restriction
        ? `${s.description} Your key holds it, so every key it creates does too.` : s.description })));
  }
  $('scopes-inherit-label').textContent = me.scopes
    ? `The same as the key you are signed in with (${me.scopes.join(', ')})`
    : 'The same as the key you are signed in with (every scope)';
  const only = document.querySelector('input[name=scope_mode][value=only]');
  only.disabled = !(me.grantable_scopes || []).length;
  if (only.disabled) document.querySelector('input[name=scope_mode][value=inherit]').checked = true;
  updateScopeState();
}

function updateScopeState() {
  const only = document.querySelector('input[name=scope_mode][value=only]').checked;
  $('scope-list').hidden = !only;
  renderPreview();
}

function renderPreview() {
  if (!me) return;
  const exp = expectedExpiry($('create-expiry').value);
  const expiry = $('preview-expiry');
  expiry.replaceChildren();
  const tooLong = me.max_lifetime_seconds &&
    (exp.at === null || exp.at.getTime() - Date.now() > me.max_lifetime_seconds * 1000);
  if (exp.at === null) {
    expiry.append('Never expires.');
  } else {
    expiry.append('Expires ', formatDate(exp.at), '.');
  }
  if (exp.capped) {
    expiry.append(' The key you are signed in with expires then, and a key it creates never outlives it.');
    expiry.classList.add('capped');
  } else {
    expiry.classList.remove('capped');
  }
  if (tooLong) {
    expiry.append(` Refused: keys here may live at most ${plural(Math.round(me.max_lifetime_seconds / 86400), 'day', 'days')}.`);
  }

  const chosen = $('create-sub-agency').value;
  const agency = $('preview-sub-agency');
  if (chosen) {
    agency.textContent = `Reaches only the sub-agency ${agencyNames.get(chosen) || chosen}.`;
    agency.classList.remove('capped');
  } else if (me.sub_agency) {
    agency.textContent = `Reaches only the sub-agency ${agencyNames.get(me.sub_agency) || me.sub_agency}, ` +
      'not all of them: the key you are signed in with is limited to it.';
    agency.classList.add('capped');
  } else {
    agency.textContent = 'Reaches all sub-agencies.';
    agency.classList.remove('capped');
  }

  const scopes = chosenScopes();
  $('preview-scopes').textContent = scopes === null
    ? `Scopes: ${me.scopes ? me.scopes.join(', ') : 'every scope'}, like the key you are signed in with.`
    : `Scopes: ${scopes.length ? scopes.join(', ') : 'none'}.`;
}

function periodText(seconds) {
  if (seconds === 3600) return 'per hour';
  if (seconds === 86400) return 'per day';
  if (seconds % 3600 === 0) return `per ${seconds / 3600} hours`;
  return `per ${Math.round(seconds / 60)} minutes`;
}

function renderQuota() {
  const q = me.creation_quota;
  const p = $('quota');
  p.replaceChildren();
  if (!q) {
    p.textContent = 'There is no limit on new keys.';
    return;
  }
  const rule = `${plural(q.limit, 'new key', 'new keys')} ${periodText(q.period_seconds)}; a rotation counts as one`;
  if (q.remaining > 0) {
    p.append(`You can create ${q.remaining} more ${q.remaining === 1 ? 'key' : 'keys'} now (${rule}).`);
  } else if (q.next_slot_at) {
    const next = new Date(q.next_slot_at);
    p.append('You cannot create another key yet: the next one can be created ', timeElement(next, relative(next)),
      ` (${rule}).`);
  } else {
    p.append(`You cannot create another key now (${rule}).`);
  }
}

// --- Signing in and out ------------------------------------------------------------------------

function showSignIn(message) {
  session.clear();
  me = null;
  hideNewKey();
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  $('signed-in').hidden = true;
  $('account').hidden = true;
  $('sign-in').hidden = false;
  $('keys').tBodies[0].replaceChildren();
  showStatus(message || '');
  $('sign-in-key').focus();
}

async function showSignedIn() {
  const who = await api('/rpc/whoami');
  $('signed-in-as').textContent = `Signed in as ${who.owner}`;
  $('sign-in').hidden = true;
  $('signed-in').hidden = false;
  $('account').hidden = false;
  await busy(() => Promise.all([refresh(), loadSubAgencies()]));
}

// A 401 after signing in means the key was deleted, revoked or has expired: sign out.
function handle(err) {
  if (err instanceof ApiError && err.status === 401) {
    showSignIn(`Signed out: ${err.message}.`);
  } else if (err instanceof ApiError && err.status === 429) {
    showStatus(tooMany(err));
  } else {
    showStatus(err.message);
  }
}

function tooMany(err) {
  const wait = err.retryAfter === null ? 'a while' : `${err.retryAfter} seconds`;
  return `Too many API key creation requests. Please try again in ${wait}.`;
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
    // The list is what one signs in for; its heading is where a screen reader continues.
    $('keys-title').focus();
  } catch (err) {
    session.clear();
    showStatus(err instanceof ApiError ? `Sign-in failed: ${err.message}` : err.message);
    input.focus();
  }
}

// --- The shown-once panel ----------------------------------------------------------------------

function hideNewKey() {
  $('new-key-value').value = '';
  $('new-key-name').textContent = '';
  $('new-key-details').replaceChildren();
  $('copy-status').textContent = '';
  $('new-key-ask').hidden = false;
  $('new-key-confirm').hidden = true;
  $('new-key').hidden = true;
}

function detail(list, id, term, ...value) {
  list.append(el('dt', { text: term }), el('dd', { id }, ...value));
}

// `created`: what POST /api/keys or a rotation returned; `note`: what to say about the key it
// replaced, if any.
function showNewKey(created, note) {
  $('new-key-name').textContent = created.name;
  $('new-key-value').value = created.key;
  $('copy-status').textContent = '';
  const list = $('new-key-details');
  list.replaceChildren();
  const expires = created.expires_at ? [formatDate(new Date(created.expires_at))] : ['Never'];
  if (created.expiry_capped) {
    expires.push(el('span', { className: 'capped-note',
      text: ' Capped: the key you are signed in with expires then, and a key it creates never outlives it.' }));
  }
  detail(list, 'new-key-expires', 'Expires', ...expires);
  const agency = [created.sub_agency ? (agencyNames.get(created.sub_agency) || created.sub_agency) : 'All sub-agencies'];
  if (created.sub_agency_capped) {
    agency.push(el('span', { className: 'capped-note',
      text: ' Limited to the sub-agency of the key you are signed in with.' }));
  }
  detail(list, 'new-key-sub-agency', 'Sub-agency', ...agency);
  detail(list, 'new-key-scopes', 'Scopes', created.scopes ? created.scopes.join(', ') : 'All');
  if (note) detail(list, 'new-key-replaces', 'Replaces', ...note);
  $('new-key-ask').hidden = false;
  $('new-key-confirm').hidden = true;
  $('new-key').hidden = false;
  $('copy-key').focus();
}

// Closing loses the key for good, so it takes a second, explicit step.
function askCloseNewKey() {
  $('new-key-confirm-text').textContent =
    `Close this panel? “${$('new-key-name').textContent}” cannot be shown again; if it is lost, rotate it.`;
  $('new-key-ask').hidden = true;
  $('new-key-confirm').hidden = false;
  $('new-key-keep').focus();
}

function keepNewKey() {
  $('new-key-confirm').hidden = true;
  $('new-key-ask').hidden = false;
  $('new-key-done').focus();
}

function closeNewKey() {
  hideNewKey();
  $('create-name').focus();
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

async function createKey(event) {
  event.preventDefault();
  const error = $('create-error');
  error.textContent = '';
  const days = $('create-expiry').value;
  const scopes = chosenScopes();
  if (scopes !== null && scopes.length === 0) {
    error.textContent = 'Tick at least one scope, or give the new key the same scopes as yours.';
    return;
  }
  const body = {
    name: $('create-name').value.trim(),
    expires_in_days: days === '' ? null : Number(days),
    sub_agency: $('create-sub-agency').value || null,
  };
  if (scopes !== null) body.scopes = scopes;
  $('create-submit').disabled = true;
  try {
    const created = await api('/api/keys', { method: 'POST', body });
    $('create-form').reset();
    showNewKey(created);
    await refresh();
  } catch (err) {
    if (err instanceof ApiError && err.status === 429) {
      error.textContent = tooMany(err);
      loadSession().catch(() => {});
    } else if (err instanceof ApiError && err.status === 401) {
      handle(err);
    } else {
      error.textContent = err.message;
    }
  } finally {
    $('create-submit').disabled = false;
    updateScopeState();
  }
}

// --- Acting on a key ---------------------------------------------------------------------------

// After the list is redrawn, focus stays with the key acted on (its first action), or moves to
// the key that took the place of one that is gone, or to the list's heading.
function restoreFocus(keyId, index) {
  const rows = [...$('keys').tBodies[0].rows];
  const row = rows.find((r) => r.getAttribute('data-key-id') === String(keyId)) ||
    rows[Math.min(index, rows.length - 1)];
  const target = row && row.querySelector('[data-col=actions] button');
  (target || $('keys-title')).focus();
}

const rowIndex = (k) => [...$('keys').tBodies[0].rows].findIndex((r) => r.getAttribute('data-key-id') === String(k.id));

// Opens `dialog`; calls `onConfirm` if the user confirms, else gives focus back to the button
// that opened it.
function ask(dialog, onConfirm) {
  const opener = document.activeElement;
  dialog.returnValue = '';
  dialog.onclose = () => {
    if (dialog.returnValue === 'confirm') onConfirm();
    else if (opener && opener.isConnected) opener.focus();
  };
  dialog.showModal();
}

const signOutWarning = ' This is the key this page is signed in with: you will be signed out.';

function confirmDelete(k) {
  $('delete-text').textContent =
    `“${k.name}” (${k.key}) will be deleted now. Requests with this key will be refused at once; this cannot be undone.` +
    (k.current ? signOutWarning : '');
  const index = rowIndex(k);
  ask($('delete-dialog'), async () => {
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
      if (k.current) {
        showSignIn(`Signed out: you deleted “${k.name}”, the key you were signed in with.`);
        return;
      }
      showStatus(`Deleted “${k.name}”.`);
      await refresh();
      restoreFocus(null, index);
    } catch (err) {
      handle(err);
    }
  });
}

function confirmRevoke(k) {
  $('revoke-text').textContent =
    `“${k.name}” (${k.key}) will stop working now and for good; it stays listed as revoked until you delete it.` +
    (k.current ? signOutWarning : '');
  ask($('revoke-dialog'), async () => {
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}/revoke`, { method: 'POST' });
      if (k.current) {
        showSignIn(`Signed out: you revoked “${k.name}”, the key you were signed in with.`);
        return;
      }
      showStatus(`Revoked “${k.name}”.`);
      await refresh();
      restoreFocus(k.id, rowIndex(k));
    } catch (err) {
      handle(err);
    }
  });
}

async function toggle(k, action) {
  try {
    await api(`/api/keys/${encodeURIComponent(k.id)}/${action}`, { method: 'POST' });
    showStatus(action === 'disable'
      ? `Disabled “${k.name}”: requests with it are refused until you enable it.`
      : `Enabled “${k.name}”.`);
    await refresh();
    restoreFocus(k.id, rowIndex(k));
  } catch (err) {
    handle(err);
  }
}

const GRACES = [
  { seconds: 0, label: 'No: it stops at once' },
  { seconds: 3600, label: 'For 1 hour' },
  { seconds: 86400, label: 'For 24 hours' },
];

// The graces the server accepts (apikey.max_rotation_grace); never none for the page's own key.
function graceChoices(k) {
  const max = me ? me.max_rotation_grace_seconds : 0;
  return GRACES.filter((g) => g.seconds <= max && !(k.current && g.seconds === 0));
}

function confirmRotate(k) {
  const choices = graceChoices(k);
  const preferred = choices.find((g) => g.seconds === 3600) || choices[0];
  $('rotate-text').textContent =
    `“${k.name}” gets a new key with the same name, scopes, sub-agency and lifetime, shown once. ` +
    'Rotating counts as creating a key.' +
    (k.current ? ' This is the key this page is signed in with: sign in with the new key before the old one stops.' : '');
  $('grace-options').replaceChildren(...choices.map((g) => {
    const id = `grace-${g.seconds}`;
    const radio = el('input', { type: 'radio', name: 'grace', id, value: String(g.seconds) });
    radio.checked = g === preferred;
    return el('div', { className: 'choice' }, radio, el('label', { for: id, text: g.label }));
  }));
  ask($('rotate-dialog'), async () => {
    const checked = $('grace-options').querySelector('input:checked');
    const grace = checked ? Number(checked.value) : preferred.seconds;
    try {
      const created = await api(`/api/keys/${encodeURIComponent(k.id)}/rotate?grace_seconds=${grace}`, { method: 'POST' });
      const stops = created.old_key_stops_at ? new Date(created.old_key_stops_at) : null;
      const note = [`“${k.name}” (${k.key}), which `];
      if (stops && grace > 0) note.push('keeps working until ', formatDate(stops), '.');
      else note.push('stopped working at once.');
      if (k.current) note.push(' It is the key this page is signed in with: sign in again with the new key before then.');
      showNewKey(created, note);
      showStatus(`Rotated “${k.name}”.`);
      await refresh();
    } catch (err) {
      handle(err);
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('create-form').addEventListener('submit', createKey);
  $('create-form').addEventListener('reset', () => setTimeout(updateScopeState));
  $('create-expiry').addEventListener('change', renderPreview);
  $('create-sub-agency').addEventListener('change', renderPreview);
  for (const r of document.querySelectorAll('input[name=scope_mode]')) r.addEventListener('change', updateScopeState);
  $('copy-key').addEventListener('click', copyKey);
  $('new-key-done').addEventListener('click', askCloseNewKey);
  $('new-key-keep').addEventListener('click', keepNewKey);
  $('new-key-close').addEventListener('click', closeNewKey);
  $('sign-out').addEventListener('click', () => showSignIn('Signed out.'));
  setInterval(() => { updateTimes(); renderPreview(); }, 30e3);
  if (session.get()) {
    $('sign-in').hidden = true;
    showSignedIn().catch(handle);
  }
});
