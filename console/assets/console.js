'use strict';

// Operator console: hash-routed pages over GraphQL (/graphql) and the
// operations REST API. Server text only ever reaches the page as textContent.

const TOKEN_KEY = 'orders-console-token';
const REFRESH_MS = 5000;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ORDER_STATUSES = ['PLACED', 'CONFIRMED', 'PARTIALLY_SHIPPED', 'SHIPPED', 'DELIVERED', 'CANCELLED'];
// Orders that may still ship what is left of them.
const SHIPPABLE = new Set(['CONFIRMED', 'PARTIALLY_SHIPPED']);
const ORDERS_API = '/api/orders';
const FINAL_SAGA_STATES = new Set(['CONFIRMED', 'CANCELLED', 'ABANDONED']);
const DLQ_API = '/api/operations/dead-letters';
const SAGA_API = '/api/operations/sagas';

// gen: bumped on every render so late answers for a page left behind are dropped.
// acting: operator actions waiting for their answers.
const state = { gen: 0, timer: null, readAfter: null, acting: 0 };

// ---------------------------------------------------------------- DOM helpers

// Attributes that must be set as properties rather than attributes.
const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'open', 'selected']);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'data') {
      for (const [key, item] of Object.entries(value)) node.dataset[key] = String(item);
    } else if (name.startsWith('on')) {
      // Handlers only as listeners: an on* attribute would be inline script.
      if (typeof value === 'function') node.addEventListener(name.slice(2), value);
    } else if (PROPS.has(name)) node[name] = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  return add(node, children);
}

// Appends nodes and strings (as text); null, undefined and false are skipped.
function add(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : String(child));
  }
  return parent;
}

const $ = (id) => document.getElementById(id);

function muted(text) {
  return el('span', { class: 'muted' }, text);
}

const dash = () => muted('—');

function mono(text) {
  return text === null || text === undefined || text === '' ? dash() : el('code', {}, String(text));
}

function loadingNote() {
  return el('p', { class: 'muted loading' }, 'Loading…');
}

function emptyNote(text) {
  return el('p', { class: 'empty' }, text);
}

// A heading cell; a leading '#' marks a numeric (right-aligned) column.
function th(label) {
  const numeric = label.startsWith('#');
  return el('th', { scope: 'col', class: numeric ? 'num' : null }, numeric ? label.slice(1) : label);
}

function table(id, headings, rows) {
  return el('table', { id, class: 'grid' },
    el('thead', {}, el('tr', {}, headings.map(th))),
    el('tbody', {}, rows));
}

function td(content, cls) {
  return el('td', { class: cls }, content === null || content === undefined || content === '' ? dash() : content);
}

function num(value) {
  return td(typeof value === 'number' ? value.toLocaleString('en') : value, 'num');
}

// A definition list from [label, content] pairs; pairs that are null are skipped.
function facts(pairs) {
  const list = el('dl', { class: 'facts' });
  for (const pair of pairs) {
    if (!pair) continue;
    const [label, content] = pair;
    list.append(el('dt', {}, label),
      el('dd', {}, content === null || content === undefined || content === '' ? dash() : content));
  }
  return list;
}

function statusClass(text) {
  return 's-' + String(text).toLowerCase().replace(/[^a-z0-9]+/g, '-');
}

function badge(text) {
  if (!text) return dash();
  return el('span', { class: `badge ${statusClass(text)}` }, String(text));
}

function attentionBadge() {
  return el('span', { class: 'badge attention' }, 'needs attention');
}

// ---------------------------------------------------------------- formatting

function pad(n) {
  return String(n).padStart(2, '0');
}

function localStamp(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

// A <time> showing local time, with the server's full value as its title.
function when(iso) {
  if (iso === null || iso === undefined || iso === '') return dash();
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return el('span', { title: String(iso) }, String(iso));
  return el('time', { datetime: String(iso), title: String(iso) }, localStamp(date));
}

// Milliseconds since the epoch, keeping sub-millisecond digits Date drops.
function instant(iso) {
  if (typeof iso !== 'string') return NaN;
  const fraction = /\.(\d+)/.exec(iso);
  if (!fraction) return Date.parse(iso);
  return Date.parse(iso.replace(fraction[0], '')) + Number('0.' + fraction[1]) * 1000;
}

function delta(ms) {
  if (!Number.isFinite(ms)) return '?';
  const sign = ms < 0 ? '-' : '+';
  const abs = Math.abs(ms);
  if (abs < 10) return `${sign}${abs.toFixed(1)} ms`;
  if (abs < 999.5) return `${sign}${Math.round(abs)} ms`;
  if (abs < 59950) return `${sign}${(abs / 1000).toFixed(1)} s`;
  if (abs < 3600000) return `${sign}${Math.floor(abs / 60000)} min ${Math.floor((abs % 60000) / 1000)} s`;
  return `${sign}${Math.floor(abs / 3600000)} h ${Math.floor((abs % 3600000) / 60000)} min`;
}

function money(cents, currency) {
  if (typeof cents !== 'number') return '—';
  return `${(cents / 100).toFixed(2)} ${currency || ''}`.trim();
}

// Pretty JSON for a value, or for text that parses as JSON; other text as is.
function pretty(value) {
  if (typeof value === 'string') {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const bearer = token();
  if (!bearer) throw new ApiError('Sign in with a token that has the admin scope.', 401);
  const headers = {
    accept: 'application/json, application/problem+json',
    authorization: `Bearer ${bearer}`,
  };
  const init = { method: options.method || 'GET', headers, cache: 'no-store', credentials: 'same-origin' };
  if (options.idempotencyKey) headers['idempotency-key'] = options.idempotencyKey;
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(`Could not reach the server (${error.message || error}). Check the connection and try again.`, 0);
  }
  let text = '';
  try {
    text = await response.text();
  } catch (error) {
    throw new ApiError(`The answer from the server broke off (${error.message || error}).`, 0);
  }
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) throw problem(response, body);
  if (text && body === null) throw new ApiError('The server answered with something that is not JSON.', response.status);
  return body;
}

// An ApiError from a problem+json answer (or a GraphQL error list).
function problem(response, body) {
  const field = (name) => (body && typeof body[name] === 'string' ? body[name] : '');
  const graphqlErrors = body && Array.isArray(body.errors) ?
    body.errors.map((e) => (e && e.message) || '').filter(Boolean).join('; ') : '';
  const detail = field('detail') || graphqlErrors;
  if (response.status === 403) {
    const why = [field('title'), detail].filter(Boolean).join(': ');
    return new ApiError(`This token lacks the admin scope${why ? ` (${why})` : ''}`, 403);
  }
  const message = [field('title'), detail].filter(Boolean).join(': ') ||
    `HTTP ${response.status} ${response.statusText || ''}`.trim();
  return new ApiError(message, response.status);
}

// The idempotency key of each operator action on an order until it is
// answered: pressing again after a lost answer (or on a page redrawn
// meanwhile) repeats the same command instead of issuing a second one.
const actionKeys = new Map();

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'console-' + [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// Sends the command `action` names (such as `<order>:ship`) under its key.
// The key is dropped once the command is answered, accepted or refused:
// only an answer that never came keeps it for the next press.
async function command(action, path, body) {
  if (!actionKeys.has(action)) actionKeys.set(action, newKey());
  try {
    const answer = await api(path, { method: 'POST', body, idempotencyKey: actionKeys.get(action) });
    actionKeys.delete(action);
    return answer;
  } catch (error) {
    if (error.status >= 400 && error.status < 500) actionKeys.delete(action);
    throw error;
  }
}

async function gql(query, variables) {
  const body = await api('/graphql', { method: 'POST', body: { query, variables } });
  const errors = body && Array.isArray(body.errors) ? body.errors : [];
  if (errors.length) {
    const code = (e) => e && e.extensions && e.extensions.code;
    const messages = errors.map((e) => (e && e.message) || 'unknown error').join('; ');
    if (errors.some((e) => code(e) === 'UNAUTHENTICATED')) throw new ApiError(messages, 401);
    if (errors.some((e) => code(e) === 'FORBIDDEN')) {
      throw new ApiError(`This token lacks the admin scope (${messages})`, 403);
    }
    throw new ApiError(messages, 200);
  }
  if (!body || !body.data || typeof body.data !== 'object') {
    throw new ApiError('The GraphQL answer carried no data.', 200);
  }
  return body.data;
}

const ORDER_ROW_FIELDS = 'id customerId status totalCents currency placedAt saga { state needsAttention }';

const ORDER_BY_ID = `query ConsoleOrderById($id: ID!) { order(id: $id) { ${ORDER_ROW_FIELDS} } }`;

const ORDERS = `query ConsoleOrders($customerId: String, $status: OrderStatus, $first: Int, $after: String) {
  orders(customerId: $customerId, status: $status, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { ${ORDER_ROW_FIELDS} }
  }
}`;

const ORDER_TIMELINE = `query ConsoleOrder($id: ID!, $after: String) {
  order(id: $id, afterPosition: $after) {
    id customerId status totalCents currency version placedAt updatedAt cancellationReason
    email shippingAddress { name line1 line2 city postalCode country }
    authorizedCents capturedCents refundedCents
    lines { sku quantity unitPriceCents }
    shipments { id lines { sku quantity } carrier trackingNumber status shippedAt deliveredAt failure }
    returns { id lines { sku quantity } reason status requestedAt receivedAt refundCents restocked }
    history { sequence globalPosition eventType recordedAt payload }
    saga { state needsAttention traceId updatedAt steps { name status at detail } }
  }
}`;

const PRODUCTS = `query ConsoleProducts($first: Int, $after: String) {
  products(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { sku name priceCents currency onHand reserved available active version }
  }
}`;

// ---------------------------------------------------------------- messages, routing

function showError(message) {
  const box = $('error');
  box.textContent = message || '';
  box.hidden = !message;
}

function showNotice(message) {
  const box = $('notice');
  box.textContent = message || '';
  box.hidden = !message;
}

// Reports a failure for the page that asked, if it is still the one shown.
function fail(error, gen) {
  if (gen !== state.gen) return;
  for (const note of $('view').querySelectorAll('.loading')) note.remove();
  if (error && error.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    renderSignIn(error.message);
    return;
  }
  showError(error && error.message ? error.message : String(error));
}

// Runs a page's async loading, sending failures to fail().
function run(ctx, work) {
  work().catch((error) => fail(error, ctx.gen));
}

function stopTimer() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

function parseRoute() {
  const hash = location.hash.replace(/^#/, '');
  const mark = hash.indexOf('?');
  const path = mark < 0 ? hash : hash.slice(0, mark);
  const params = new URLSearchParams(mark < 0 ? '' : hash.slice(mark + 1));
  const parts = path.split('/').filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  return { parts, params };
}

// Moves to a page with query values (empty ones dropped); re-renders when the hash is unchanged.
function go(path, values) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(values)) if (value) query.set(key, value);
  const text = query.toString();
  const hash = `#${path}${text ? `?${text}` : ''}`;
  if (location.hash === hash) render(true);
  else location.hash = hash;
}

function markNav(section) {
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.route === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function render(clearNotice) {
  state.gen += 1;
  stopTimer();
  showError('');
  if (clearNotice) showNotice('');
  const { parts, params } = parseRoute();
  const [section = 'status', id, extra] = parts;
  markNav(section);
  if (!token()) {
    renderSignIn('');
    return;
  }
  $('sign-out').hidden = false;
  const gen = state.gen;
  const ctx = { gen, params, live: () => gen === state.gen };
  let page = null;
  let title = '';
  if (extra === undefined) {
    if (section === 'status' && !id) [page, title] = [statusPage(ctx), 'Status'];
    else if (section === 'orders' && !id) [page, title] = [ordersPage(ctx), 'Orders'];
    else if (section === 'orders') [page, title] = [orderPage(ctx, id), `Order ${id}`];
    else if (section === 'products' && !id) [page, title] = [productsPage(ctx), 'Products'];
    else if (section === 'dead-letters' && !id) [page, title] = [deadLettersPage(ctx), 'Dead letters'];
    else if (section === 'sagas' && !id) [page, title] = [sagasPage(ctx), 'Sagas'];
    else if (section === 'sagas') [page, title] = [sagaPage(ctx, id), `Saga ${id}`];
  }
  if (!page) {
    page = el('section', { id: 'not-found' }, el('h1', {}, 'Not found'),
      el('p', {}, 'There is no page at this address. ', el('a', { href: '#/status' }, 'Go to the status page.')));
    title = 'Not found';
  }
  document.title = `${title} · Orders console`;
  $('view').replaceChildren(page);
}

function renderSignIn(message) {
  state.gen += 1;
  stopTimer();
  $('sign-out').hidden = true;
  const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true });
  const form = el('form', { id: 'sign-in-form', class: 'sign-in' },
    el('h1', {}, 'Sign in'),
    el('p', {}, 'Paste a bearer token with the admin scope. It is kept in this browser tab only.'),
    el('label', { for: 'token' }, 'Token'),
    input,
    el('button', { type: 'submit', id: 'sign-in' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = input.value.trim().replace(/^Bearer\s+/i, '');
    if (!value) {
      showError('Enter a token.');
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = '';
    render(true);
  });
  document.title = 'Sign in · Orders console';
  $('view').replaceChildren(form);
  showError(message || '');
  input.focus();
}

// Runs an operator action from a button: disables its siblings, then shows the
// result and re-renders the page, or shows the error and re-enables them.
function act(ctx, button, work) {
  const group = [...button.parentElement.querySelectorAll('button')];
  for (const b of group) b.disabled = true;
  showNotice('');
  state.acting += 1;
  const finished = work().finally(() => {
    state.acting -= 1;
  });
  finished.then((done) => {
    if (!ctx.live()) return;
    // A command's answer: its position, for the next read to wait on.
    const { message, position } = typeof done === 'string' ? { message: done } : done;
    state.readAfter = position || null;
    showNotice(message);
    render(false);
  }, (error) => {
    for (const b of group) b.disabled = false;
    fail(error, ctx.gen);
  });
}

// ---------------------------------------------------------------- status

function statusPage(ctx) {
  const body = el('div', {}, loadingNote());
  const stamp = el('span', { id: 'status-updated', class: 'muted' });
  const refresh = el('button', { type: 'button', id: 'refresh' }, 'Refresh');
  let busy = false;
  async function load() {
    if (busy) return;
    busy = true;
    stopTimer();
    try {
      const overview = await api('/api/operations/overview');
      if (!ctx.live()) return;
      body.replaceChildren(...overviewView(overview || {}));
      stamp.textContent = `Updated ${localStamp(new Date())}`;
      showError('');
    } catch (error) {
      fail(error, ctx.gen);
    } finally {
      busy = false;
      if (ctx.live()) state.timer = setTimeout(load, REFRESH_MS);
    }
  }
  refresh.addEventListener('click', load);
  load();
  return el('section', { id: 'status-page' },
    el('div', { class: 'page-head' }, el('h1', {}, 'Status'), refresh, stamp), body);
}

// Events behind; "at least" when positions beyond the overview's window were not looked at.
function lagCell(reader) {
  const behind = typeof reader.behind === 'number' ? reader.behind.toLocaleString('en') : reader.behind;
  const cell = td(reader.behind_more ? `\u2265 ${behind}` : behind, 'num');
  if (reader.behind_more) cell.title = 'at least: later positions were not counted';
  return cell;
}

function overviewView(overview) {
  const events = overview.events || {};
  const relay = Array.isArray(overview.relay) ? overview.relay : [];
  const projections = Array.isArray(overview.projections) ? overview.projections : [];
  const sagas = overview.sagas || {};
  const byState = Object.entries(sagas.in_progress || {}).sort(([a], [b]) => a.localeCompare(b));
  const attention = Number(sagas.needing_attention) || 0;
  const behindRow = (behind) => (Number(behind) > 0 ? 'behind' : null);

  const relayView = relay.length ?
    table('relay-table', ['Name', '#Published position', '#Behind', 'Oldest unpublished', 'Updated'],
      relay.map((r) => el('tr', { class: behindRow(r.behind) },
        td(r.name), num(r.global_position), lagCell(r), td(when(r.oldest_behind_at)),
        td(when(r.updated_at))))) :
    emptyNote('The relay has not run yet.');

  const projectionsView = projections.length ?
    table('projections-table',
      ['Name', 'Table', '#Applied position', '#Behind', 'Oldest unapplied', 'Updated', 'Rebuilt'],
      projections.map((p) => el('tr', { class: behindRow(p.behind) },
        td(p.name), td(mono(p.table)), num(p.last_global_position), lagCell(p),
        td(when(p.oldest_behind_at)), td(when(p.updated_at)), td(when(p.rebuilt_at))))) :
    emptyNote('No projections reported.');

  const sagaView = el('div', {},
    byState.length ?
      table('saga-states-table', ['State', '#Sagas at work'], byState.map(([name, count]) =>
        el('tr', {}, td(badge(name)), num(count)))) :
      emptyNote('No saga at work.'),
    el('p', { class: attention > 0 ? 'attention-line' : 'muted' },
      el('a', { href: '#/sagas' }, attention === 1 ? '1 saga needs attention' : `${attention} sagas need attention`)));

  return [
    el('div', { class: 'cards' },
      el('div', { class: 'card' }, el('h2', {}, 'Events'), facts([
        ['Last position', typeof events.last_position === 'number' ? events.last_position.toLocaleString('en') : 'none yet'],
        ['Last recorded', when(events.last_recorded_at)],
      ])),
      el('div', { class: 'card' }, el('h2', {}, 'Sagas'), sagaView)),
    el('h2', {}, 'Relay'), relayView,
    el('h2', {}, 'Projections'), projectionsView,
  ];
}

// ---------------------------------------------------------------- orders

function ordersPage(ctx) {
  const text = (ctx.params.get('q') || '').trim();
  const wanted = ctx.params.get('status') || '';
  const status = ORDER_STATUSES.includes(wanted) ? wanted : '';
  const input = el('input', {
    type: 'search', id: 'order-search', placeholder: 'order id or customer id', value: text,
    'aria-label': 'Order id or customer id', autocomplete: 'off', spellcheck: 'false',
  });
  const select = el('select', { id: 'order-status', 'aria-label': 'Order status' },
    el('option', { value: '' }, 'All'), ORDER_STATUSES.map((s) => el('option', { value: s }, s)));
  select.value = status;
  const form = el('form', { class: 'toolbar', role: 'search' },
    input, select, el('button', { type: 'submit', id: 'search' }, 'Search'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go('/orders', { q: input.value.trim(), status: select.value });
  });
  const results = el('div', { class: 'results' });
  const headings = ['Order', 'Customer', 'Status', '#Total', 'Placed', 'Saga'];

  if (UUID_RE.test(text)) {
    results.append(loadingNote());
    run(ctx, async () => {
      const data = await gql(ORDER_BY_ID, { id: text });
      if (!ctx.live()) return;
      results.replaceChildren(data.order ?
        table('orders-table', headings, [orderRow(data.order)]) : emptyNote('No such order'));
    });
  } else {
    results.append(pagedTable(ctx, {
      id: 'orders-table',
      headings,
      fetch: (after) => gql(ORDERS, { customerId: text || null, status: status || null, first: 50, after })
        .then((data) => data.orders),
      row: orderRow,
      empty: text ? 'No orders for that customer' : 'No orders',
    }));
  }
  return el('section', { id: 'orders-page' }, el('h1', {}, 'Orders'), form, results);
}

function orderHref(id) {
  return `#/orders/${encodeURIComponent(id)}`;
}

function sagaHref(id) {
  return `#/sagas/${encodeURIComponent(id)}`;
}

function orderRow(order) {
  const saga = order.saga;
  return el('tr', {},
    td(el('a', { href: orderHref(order.id), class: 'id' }, order.id)),
    td(mono(order.customerId)),
    td(badge(order.status)),
    td(money(order.totalCents, order.currency), 'num'),
    td(when(order.placedAt)),
    td(saga ? [badge(saga.state), saga.needsAttention ? [' ', attentionBadge()] : null] : muted('none')));
}

// A table filled one GraphQL connection page at a time, with a "More" button.
function pagedTable(ctx, options) {
  const grid = table(options.id, options.headings, []);
  const body = grid.tBodies[0];
  const more = el('div', { class: 'more' });
  const box = el('div', {}, loadingNote());
  let first = true;

  async function next(after, button) {
    try {
      const connection = await options.fetch(after);
      if (!ctx.live()) return;
      const nodes = (connection && connection.nodes) || [];
      add(body, nodes.map(options.row));
      if (first) {
        first = false;
        box.replaceChildren(nodes.length ? grid : emptyNote(options.empty), more);
      }
      const info = (connection && connection.pageInfo) || {};
      more.replaceChildren(el('span', { class: 'muted' }, `${body.rows.length} shown`));
      if (info.hasNextPage && info.endCursor) {
        const moreButton = el('button', { type: 'button', class: 'more-button' }, 'More');
        moreButton.addEventListener('click', () => {
          moreButton.disabled = true;
          next(info.endCursor, moreButton);
        });
        more.prepend(moreButton, ' ');
      }
    } catch (error) {
      if (button) button.disabled = false;
      fail(error, ctx.gen);
    }
  }
  next(null, null);
  return box;
}

// ---------------------------------------------------------------- one order

// How often an order's page looks again while its saga is at work.
const ORDER_REFRESH_MS = 1000;

function orderPage(ctx, id) {
  const heading = el('h1', {}, 'Order ', el('code', {}, id));
  const page = el('section', { id: 'order-page' }, heading);
  if (!UUID_RE.test(id)) {
    page.append(emptyNote('That is not an order id.'));
    return page;
  }
  page.append(loadingNote());
  // The position an action on this page answered: the first read waits
  // until the read models show it.
  let after = state.readAfter;
  state.readAfter = null;
  let shown = null;
  // Reads that failed in a row: the page tries again, less and less often.
  let failures = 0;
  async function load() {
    stopTimer();
    try {
      const data = await gql(ORDER_TIMELINE, { id, after });
      after = null;
      if (!ctx.live()) return;
      if (failures) showError('');
      failures = 0;
      const order = data.order;
      const seen = JSON.stringify(order);
      // Never redraw under an operator filling in the shipment form, nor
      // while an action from the page waits for its answer (its buttons
      // stay disabled).
      const typing = document.activeElement && document.activeElement.closest('#ship-form');
      const held = typing || state.acting > 0;
      if (seen !== shown && !held) {
        shown = seen;
        page.replaceChildren(heading, ...(order ? orderView(ctx, order).filter(Boolean) : [emptyNote('No such order')]));
      }
      if (order && (atWork(order) || held)) state.timer = setTimeout(load, ORDER_REFRESH_MS);
    } catch (error) {
      // A read side still catching up, or a server away for a moment: say
      // so, and look again (without waiting for a position any more).
      after = null;
      failures += 1;
      fail(error, ctx.gen);
      if (ctx.live() && token()) {
        state.timer = setTimeout(load, Math.min(ORDER_REFRESH_MS * 2 ** failures, 30000));
      }
    }
  }
  load();
  return page;
}

// Whether something on the order is still moving: a shipment waiting for
// its capture, money the read side does not show yet for what shipped or
// came back, or a saga that has not come to rest.
function atWork(order) {
  const saga = order.saga;
  // A saga that waits for someone moves no further by itself.
  if (saga && (saga.needsAttention || saga.state === 'ABANDONED')) return false;
  if ((order.shipments || []).some((s) => s.status === 'PENDING')) return true;
  const owed = (order.returns || []).filter((r) => r.status === 'RECEIVED').reduce((sum, r) => sum + r.refundCents, 0);
  if (typeof order.refundedCents === 'number' && order.refundedCents < owed) return true;
  // What shipped is captured: the money read model may not show it yet.
  const price = new Map((order.lines || []).map((line) => [line.sku, line.unitPriceCents]));
  const shipped = (order.shipments || []).filter((s) => s.status === 'SHIPPED' || s.status === 'DELIVERED')
    .flatMap((s) => s.lines).reduce((sum, line) => sum + line.quantity * (price.get(line.sku) || 0), 0);
  if (typeof order.capturedCents === 'number' && order.capturedCents < shipped) return true;
  return Boolean(saga && !saga.needsAttention && !FINAL_SAGA_STATES.has(saga.state));
}

function orderView(ctx, order) {
  const saga = order.saga;
  const trace = saga && saga.traceId ?
    el('span', {}, el('code', { id: 'trace-id' }, saga.traceId), ' ', copyButton('trace-id', 'trace id')) : null;

  let sagaLine;
  if (saga) {
    const open = saga.needsAttention || !FINAL_SAGA_STATES.has(saga.state);
    sagaLine = el('p', { class: 'saga-summary' }, 'Saga ', badge(saga.state), ' ',
      saga.needsAttention ? attentionBadge() : muted('does not need attention'),
      ' · updated ', when(saga.updatedAt),
      open ? [' · ', el('a', { href: sagaHref(order.id) }, 'Open the saga')] : null);
  } else {
    sagaLine = el('p', { class: 'saga-summary muted' }, 'No saga recorded for this order.');
  }

  const lines = order.lines || [];
  return [
    facts([
      ['Customer', mono(order.customerId)],
      ['Status', badge(order.status)],
      ['Total', money(order.totalCents, order.currency)],
      ['Version', String(order.version)],
      ['Placed', when(order.placedAt)],
      ['Updated', when(order.updatedAt)],
      order.cancellationReason ? ['Cancellation reason', order.cancellationReason] : null,
      ['E-mail', order.email || null],
      ['Ship to', address(order.shippingAddress)],
      trace ? ['Trace id', trace] : null,
    ]),
    sagaLine,
    el('h2', {}, 'Money'),
    moneyFacts(order),
    el('h2', {}, 'Lines'),
    lines.length ?
      table('lines-table', ['SKU', '#Quantity', '#Shipped', '#Unit price', '#Line total'], lines.map((line) =>
        el('tr', {}, td(mono(line.sku)), num(line.quantity), num(shippedUnits(order, line.sku)),
          td(money(line.unitPriceCents, order.currency), 'num'),
          td(money(line.unitPriceCents * line.quantity, order.currency), 'num')))) :
      emptyNote('No lines'),
    el('h2', {}, 'Shipments'),
    shipmentsTable(ctx, order),
    shipForm(ctx, order),
    el('h2', {}, 'Returns'),
    returnsTable(ctx, order),
    el('h2', {}, 'Timeline'),
    timeline(order),
  ];
}

function address(to) {
  if (!to) return null;
  return el('span', { id: 'ship-to' }, [to.name, to.line1, to.line2, `${to.postalCode} ${to.city}`, to.country]
    .filter(Boolean).join(', '));
}

// What the card holds, what was taken and what was given back.
function moneyFacts(order) {
  const amount = (cents) => (cents === null || cents === undefined ? null : money(cents, order.currency));
  return el('div', { id: 'order-money' }, facts([
    ['Authorized', amount(order.authorizedCents)],
    ['Captured', amount(order.capturedCents)],
    ['Refunded', amount(order.refundedCents)],
  ]));
}

function itemList(lines) {
  return (lines || []).map((line) => `${line.sku} × ${line.quantity}`).join(', ');
}

// Units of one SKU in shipments that did not fail (pending ones included:
// they are on their way out).
function shippedUnits(order, sku) {
  let units = 0;
  for (const shipment of order.shipments || []) {
    if (shipment.status === 'FAILED') continue;
    for (const line of shipment.lines) if (line.sku === sku) units += line.quantity;
  }
  return units;
}

function positionOf(answer) {
  return answer && typeof answer.position === 'string' ? answer.position : null;
}

function orderPath(order, ...rest) {
  return [ORDERS_API, order.id, ...rest].map((part, i) => (i === 0 ? part : encodeURIComponent(part))).join('/');
}

function shipmentsTable(ctx, order) {
  const shipments = order.shipments || [];
  if (!shipments.length) return emptyNote('Nothing shipped yet.');
  return table('shipments-table',
    ['Shipment', 'Lines', 'Carrier', 'Tracking number', 'Status', 'Shipped', 'Delivered', 'Failure', ''],
    shipments.map((shipment) => el('tr', { class: 'shipment', data: { shipmentId: shipment.id } },
      td(mono(shipment.id)), td(itemList(shipment.lines)), td(shipment.carrier), td(mono(shipment.trackingNumber)),
      td(badge(shipment.status)), td(shipment.shippedAt ? when(shipment.shippedAt) : null),
      td(shipment.deliveredAt ? when(shipment.deliveredAt) : null), td(shipment.failure, 'clip'),
      td(shipment.status === 'SHIPPED' ? deliveredButton(ctx, order, shipment) : null))));
}

function deliveredButton(ctx, order, shipment) {
  const button = el('button', { type: 'button', class: 'delivered' }, 'Mark delivered');
  button.addEventListener('click', () => act(ctx, button, async () => {
    const answer = await command(`${order.id}:deliver:${shipment.id}`,
      orderPath(order, 'shipments', shipment.id, 'delivered'), {});
    return { message: `Marked shipment ${shipment.id} delivered`, position: positionOf(answer) };
  }));
  return el('span', { class: 'buttons' }, button);
}

// What is left to ship, one field per SKU, with the carrier and its
// tracking number: the shipment captures the value of what it carries.
function shipForm(ctx, order) {
  if (!SHIPPABLE.has(order.status)) return null;
  const left = (order.lines || [])
    .map((line) => ({ line, units: line.quantity - shippedUnits(order, line.sku) }))
    .filter((item) => item.units > 0);
  if (!left.length) return null;
  const fields = left.map(({ line, units }) => el('input', {
    type: 'number', min: '0', max: String(units), step: '1', value: String(units), class: 'ship-quantity',
    data: { sku: line.sku }, 'aria-label': `Units of ${line.sku} to ship (up to ${units})`,
  }));
  const carrier = el('input', { type: 'text', id: 'ship-carrier', placeholder: 'carrier', 'aria-label': 'Carrier', required: true });
  const tracking = el('input', {
    type: 'text', id: 'ship-tracking', placeholder: 'tracking number', 'aria-label': 'Tracking number', required: true,
  });
  const button = el('button', { type: 'submit', id: 'ship' }, 'Ship');
  // The page checks the fields itself, to say what is wrong in words.
  const form = el('form', { id: 'ship-form', class: 'ship-form', novalidate: true },
    el('h3', {}, 'Ship'),
    table('ship-lines', ['SKU', '#Left to ship', '#Ship now'], left.map(({ line, units }, i) =>
      el('tr', {}, td(mono(line.sku)), num(units), td(fields[i], 'num')))),
    el('div', { class: 'toolbar' }, carrier, tracking, button));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const lines = [];
    for (const field of fields) {
      const quantity = Number(field.value);
      if (!Number.isInteger(quantity) || quantity < 0 || quantity > Number(field.max)) {
        showError(`Ship from 0 to ${field.max} units of ${field.dataset.sku}.`);
        field.focus();
        return;
      }
      if (quantity > 0) lines.push({ sku: field.dataset.sku, quantity });
    }
    if (!lines.length) {
      showError('Nothing to ship: give at least one line a quantity.');
      return;
    }
    for (const [field, what] of [[carrier, 'the carrier'], [tracking, 'the tracking number']]) {
      if (!field.value.trim()) {
        showError(`Name ${what} of the shipment.`);
        field.focus();
        return;
      }
    }
    const value = lines.reduce((sum, l) =>
      sum + l.quantity * order.lines.find((line) => line.sku === l.sku).unitPriceCents, 0);
    const sure = window.confirm(`Ship ${itemList(lines)} with ${carrier.value.trim()} ` +
      `(${tracking.value.trim()})?\n\nThis captures ${money(value, order.currency)} from the customer's card.`);
    if (!sure) return;
    showError('');
    act(ctx, button, async () => {
      const answer = await command(`${order.id}:ship`, orderPath(order, 'shipments'),
        { lines, carrier: carrier.value.trim(), tracking_number: tracking.value.trim() });
      return {
        message: `Shipment of ${itemList(lines)} requested: it ships once its capture goes through`,
        position: positionOf(answer),
      };
    });
  });
  return form;
}

function returnsTable(ctx, order) {
  const returns = order.returns || [];
  if (!returns.length) return emptyNote('Nothing returned.');
  const restocked = (r) => (r.restocked === null || r.restocked === undefined ? null : r.restocked ? 'yes' : 'written off');
  return table('returns-table',
    ['Return', 'Lines', 'Reason', 'Status', 'Requested', 'Received', '#Refund', 'Restocked', ''],
    returns.map((r) => el('tr', { class: 'return', data: { returnId: r.id } },
      td(mono(r.id)), td(itemList(r.lines)), td(r.reason, 'clip'), td(badge(r.status)), td(when(r.requestedAt)),
      td(r.receivedAt ? when(r.receivedAt) : null), td(money(r.refundCents, order.currency), 'num'),
      td(restocked(r)), td(r.status === 'REQUESTED' ? receiveButtons(ctx, order, r) : null))));
}

// Receiving refunds the return's value; its units go back on hand, or are
// written off.
function receiveButtons(ctx, order, found) {
  const restock = el('button', { type: 'button', class: 'receive' }, 'Receive and restock');
  const writeOff = el('button', { type: 'button', class: 'write-off danger' }, 'Receive, write off');
  const receive = (button, back) => act(ctx, button, async () => {
    const answer = await command(`${order.id}:receive:${found.id}`,
      orderPath(order, 'returns', found.id, 'receive'), { restock: back });
    return {
      message: `Received return ${found.id}: ${money(found.refundCents, order.currency)} is refunded` +
        (back ? ' and its units go back on hand' : ', its units written off'),
      position: positionOf(answer),
    };
  });
  restock.addEventListener('click', () => receive(restock, true));
  writeOff.addEventListener('click', () => {
    const sure = window.confirm(`Receive return ${found.id} and write its units off?\n\n` +
      `This refunds ${money(found.refundCents, order.currency)}; nothing goes back on hand.`);
    if (sure) receive(writeOff, false);
  });
  return el('span', { class: 'buttons' }, restock, writeOff);
}

// Copies the text of the element with the given id; selects it when the clipboard is unavailable.
function copyButton(targetId, label) {
  const button = el('button', { type: 'button', class: 'copy' }, 'Copy');
  button.addEventListener('click', async () => {
    const target = $(targetId);
    if (!target) return;
    try {
      await navigator.clipboard.writeText(target.textContent);
      showNotice(`Copied the ${label}`);
    } catch {
      window.getSelection().selectAllChildren(target);
      showNotice(`The clipboard is not available here: the ${label} is selected, copy it by hand.`);
    }
  });
  return button;
}

// One list of the order's events and saga steps, oldest first.
function timeline(order) {
  const items = [];
  for (const event of order.history || []) {
    items.push({ kind: 'event', t: instant(event.recordedAt), rank: 0, seq: event.sequence, data: event });
  }
  const steps = (order.saga && order.saga.steps) || [];
  steps.forEach((step, index) => items.push({ kind: 'step', t: instant(step.at), rank: 1, seq: index, data: step }));
  if (!items.length) return emptyNote('Nothing recorded yet.');

  const key = (t) => (Number.isFinite(t) ? t : Infinity);
  items.sort((a, b) => (key(a.t) - key(b.t)) || (a.rank - b.rank) || (a.seq - b.seq));

  const list = el('ol', { id: 'timeline' });
  const start = items[0].t;
  let previous = NaN;
  items.forEach((item, index) => {
    const gaps = index === 0 ?
      el('div', { class: 'gaps' }, 'start') :
      el('div', { class: 'gaps' },
        el('span', { title: 'since the previous item' }, `${delta(item.t - previous)} since previous`),
        el('span', { title: 'since the first item' }, `${delta(item.t - start)} since first`));
    const time = el('div', { class: 'when' }, when(item.kind === 'event' ? item.data.recordedAt : item.data.at), gaps);
    list.append(item.kind === 'event' ? eventItem(item.data, time) : stepItem(item.data, time));
    if (Number.isFinite(item.t)) previous = item.t;
  });
  return list;
}

function eventItem(event, time) {
  return el('li', { class: 'event' }, time,
    el('div', { class: 'what' },
      el('div', {}, el('span', { class: 'kind' }, 'event'), ' ', el('strong', {}, event.eventType), ' ',
        muted(`sequence ${event.sequence} · position ${event.globalPosition}`)),
      el('details', {}, el('summary', {}, 'Payload'), el('pre', {}, pretty(event.payload)))));
}

function stepItem(step, time) {
  return el('li', { class: `step ${statusClass(step.status)}` }, time,
    el('div', { class: 'what' },
      el('div', {}, el('span', { class: 'kind' }, 'saga'), ' ', el('strong', {}, step.name), ' ', badge(step.status)),
      step.detail ? el('div', { class: 'detail' }, step.detail) : null));
}

// ---------------------------------------------------------------- products

function productsPage(ctx) {
  return el('section', { id: 'products-page' }, el('h1', {}, 'Products'), pagedTable(ctx, {
    id: 'products-table',
    headings: ['SKU', 'Name', 'Status', '#Price', '#On hand', '#Reserved', '#Available', '#Version'],
    fetch: (after) => gql(PRODUCTS, { first: 100, after }).then((data) => data.products),
    row: (p) => el('tr', { class: p.available <= 0 || !p.active ? 'sold-out' : null },
      td(mono(p.sku)), td(p.name), td(badge(p.active ? 'active' : 'discontinued')),
      td(money(p.priceCents, p.currency), 'num'),
      num(p.onHand), num(p.reserved), td(String(p.available), p.available <= 0 ? 'num zero' : 'num'), num(p.version)),
    empty: 'No products',
  }));
}

// ---------------------------------------------------------------- dead letters

function deadLettersPage(ctx) {
  const params = ctx.params;
  const field = (id, name, placeholder) => el('input', {
    type: 'text', id, placeholder, value: params.get(name) || '', 'aria-label': placeholder,
    autocomplete: 'off', spellcheck: 'false',
  });
  const topic = field('dlq-topic', 'topic', 'topic');
  const aggregate = field('dlq-aggregate', 'aggregate', 'aggregate id');
  const reason = field('dlq-reason', 'reason', 'reason');
  const all = el('input', { type: 'checkbox', id: 'dlq-all', checked: params.get('all') === 'true' });
  const form = el('form', { class: 'toolbar' }, topic, aggregate, reason,
    el('label', { class: 'check' }, all, ' include handled'),
    el('button', { type: 'submit', id: 'dlq-filter' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go('/dead-letters', {
      topic: topic.value.trim(), aggregate: aggregate.value.trim(), reason: reason.value.trim(),
      all: all.checked ? 'true' : '',
    });
  });

  const query = new URLSearchParams();
  for (const name of ['topic', 'aggregate', 'reason']) {
    const value = (params.get(name) || '').trim();
    if (value) query.set(name, value);
  }
  if (params.get('all') === 'true') query.set('all', 'true');
  const list = el('div', {}, loadingNote());
  run(ctx, async () => {
    const text = query.toString();
    const data = await api(`${DLQ_API}${text ? `?${text}` : ''}`);
    if (!ctx.live()) return;
    const letters = (data && data.dead_letters) || [];
    list.replaceChildren(letters.length ?
      table('dead-letters-table',
        ['Id', 'At', 'Aggregate', 'Consumer', 'Source topic', 'Error', 'State', 'Actions'],
        letters.map((letter) => deadLetterRows(ctx, letter))) :
      emptyNote('No dead letters'));
    if (data && data.more) {
      list.append(el('p', { class: 'muted', id: 'dlq-more' },
        `${letters.length} of ${data.matching} shown, oldest first: narrow the filter to see the others.`));
    }
  });
  return el('section', { id: 'dead-letters-page' }, el('h1', {}, 'Dead letters'), form, list);
}

function deadLetterRows(ctx, letter) {
  const detail = el('tr', { class: 'dead-letter-detail', hidden: true },
    el('td', { colspan: 8 }, letterDetail(letter)));
  const show = el('button', { type: 'button', class: 'show', 'aria-expanded': 'false' }, 'Show');
  show.addEventListener('click', () => {
    detail.hidden = !detail.hidden;
    show.textContent = detail.hidden ? 'Show' : 'Hide';
    show.setAttribute('aria-expanded', String(!detail.hidden));
  });
  const buttons = el('span', { class: 'buttons' });
  if (!letter.state) add(buttons, letterButtons(ctx, letter));
  buttons.append(show);
  const row = el('tr', { class: 'dead-letter', data: { id: letter.id } },
    td(mono(letter.id), 'topic'), td(when(letter.at)), td(mono(letter.key)), td(letter.consumer),
    td(mono(letter.source_topic), 'topic'), td(letter.error, 'reason'), td(badge(letter.state || 'open')), td(buttons));
  return [row, detail];
}

function letterButtons(ctx, letter) {
  const path = (action) => `${DLQ_API}/${encodeURIComponent(letter.id)}/${action}`;
  const target = letter.source_topic || 'its topic';
  const replay = el('button', { type: 'button', class: 'replay' }, 'Replay');
  const dryRun = el('button', { type: 'button', class: 'dry-run' }, 'Dry run');
  const discard = el('button', { type: 'button', class: 'discard danger' }, 'Discard');

  replay.addEventListener('click', () => {
    if (!window.confirm(`Replay dead letter ${letter.id} to ${target}?`)) return;
    act(ctx, replay, async () => {
      const answer = await api(path('replay'), { method: 'POST', body: { dry_run: false } });
      return `Replayed ${(answer && answer.id) || letter.id} to ${(answer && answer.to) || target}`;
    });
  });
  dryRun.addEventListener('click', () => {
    act(ctx, dryRun, async () => {
      const answer = await api(path('replay'), { method: 'POST', body: { dry_run: true } });
      return `Dry run: ${(answer && answer.id) || letter.id} would be replayed to ${(answer && answer.to) || target}; nothing was sent`;
    });
  });
  discard.addEventListener('click', () => {
    const reason = window.prompt(`Why discard dead letter ${letter.id}? (a reason is required)`, '');
    if (reason === null || !reason.trim()) return;
    act(ctx, discard, async () => {
      const answer = await api(path('discard'), { method: 'POST', body: { reason: reason.trim() } });
      return `Discarded ${(answer && answer.id) || letter.id}`;
    });
  });
  return [replay, dryRun, discard];
}

// Header pairs may come as [name, value] arrays or as an object.
function headerPairs(headers) {
  if (Array.isArray(headers)) return headers.map((h) => (Array.isArray(h) ? [h[0], h[1]] : [String(h), '']));
  if (headers && typeof headers === 'object') return Object.entries(headers);
  return [];
}

function letterDetail(letter) {
  const headers = headerPairs(letter.headers);
  const actions = Array.isArray(letter.actions) ? letter.actions : [];
  return el('div', { class: 'letter-detail' },
    el('h3', {}, 'Payload'),
    el('pre', {}, letter.payload === null || letter.payload === undefined ? '(none)' : pretty(letter.payload)),
    el('h3', {}, 'Headers'),
    headers.length ?
      table(null, ['Name', 'Value'], headers.map(([name, value]) =>
        el('tr', {}, td(mono(name)), td(value === null || value === undefined ? '' : String(value), 'clip')))) :
      emptyNote('No headers'),
    actions.length ? [el('h3', {}, 'Actions'), actionsTable(null, actions)] : null);
}

function actionsTable(id, actions) {
  return table(id, ['Who', 'What', 'Why', 'When'], actions.map((a) =>
    el('tr', {}, td(a.actor), td(badge(a.action)), td(a.reason, 'clip'), td(when(a.at)))));
}

// ---------------------------------------------------------------- sagas

function sagaButtons(ctx, orderId) {
  const path = (action) => `${SAGA_API}/${encodeURIComponent(orderId)}/${action}`;
  const retry = el('button', { type: 'button', class: 'retry' }, 'Retry');
  const abandon = el('button', { type: 'button', class: 'abandon danger' }, 'Abandon');

  retry.addEventListener('click', () => {
    const reason = window.prompt(`Retry the saga of order ${orderId} now? Reason (optional):`, '');
    if (reason === null) return;
    const body = reason.trim() ? { reason: reason.trim() } : {};
    act(ctx, retry, async () => {
      await api(path('retry'), { method: 'POST', body });
      return `Retried the saga of order ${orderId}`;
    });
  });
  abandon.addEventListener('click', () => {
    const reason = window.prompt(`Why abandon the saga of order ${orderId}? (a reason is required)`, '');
    if (reason === null) return;
    if (!reason.trim()) {
      showNotice('Nothing done: abandoning a saga needs a reason.');
      return;
    }
    const sure = window.confirm(`Abandon the saga of order ${orderId}?\n\n` +
      'This stops the saga for good and undoes nothing: settle its stock and payment by hand. ' +
      'The audit will list the order with your name and reason.');
    if (!sure) return;
    act(ctx, abandon, async () => {
      await api(path('abandon'), { method: 'POST', body: { reason: reason.trim() } });
      return `Abandoned the saga of order ${orderId}`;
    });
  });
  return el('span', { class: 'buttons' }, retry, abandon);
}

function sagasPage(ctx) {
  const heading = el('h1', {}, 'Sagas needing attention');
  const page = el('section', { id: 'sagas-page' }, heading, loadingNote());
  run(ctx, async () => {
    const data = await api(SAGA_API);
    if (!ctx.live()) return;
    const sagas = (data && data.sagas) || [];
    page.replaceChildren(heading, sagas.length ?
      table('sagas-table',
        ['Order', 'State', '#Attempts', 'Attention or reason', 'Next attempt', 'Lease', 'Updated', 'Actions'],
        sagas.map((s) => sagaRow(ctx, s))) :
      emptyNote('Nothing needs attention'));
  });
  return page;
}

function lease(row) {
  if (!row.lease_owner && !row.leased_until) return muted('none');
  return [mono(row.lease_owner), ' until ', when(row.leased_until)];
}

function sagaRow(ctx, row) {
  const saga = row.saga || {};
  return el('tr', { class: 'saga', data: { orderId: row.order_id } },
    td([el('a', { href: sagaHref(row.order_id), class: 'id' }, row.order_id), ' ',
      el('a', { href: orderHref(row.order_id), class: 'small' }, 'order')]),
    td([badge(row.state), row.needs_attention ? [' ', attentionBadge()] : null]),
    num(saga.attempts),
    td(saga.attention || saga.reason || row.cancel_reason, 'clip'),
    td(when(row.next_attempt_at)),
    td(lease(row)),
    td(when(row.updated_at)),
    td(row.done ? muted('done') : sagaButtons(ctx, row.order_id)));
}

function sagaPage(ctx, orderId) {
  const heading = el('h1', {}, 'Saga of order ', el('code', {}, orderId));
  const page = el('section', { id: 'saga-page' }, heading, loadingNote());
  run(ctx, async () => {
    const row = await api(`${SAGA_API}/${encodeURIComponent(orderId)}`);
    if (!ctx.live()) return;
    page.replaceChildren(heading, ...sagaView(ctx, row || {}, orderId));
  });
  return page;
}

function sagaView(ctx, row, orderId) {
  const saga = row.saga || {};
  const steps = Array.isArray(saga.steps) ? saga.steps : [];
  const actions = Array.isArray(row.actions) ? row.actions : [];
  return [
    el('p', { class: 'links' }, el('a', { href: orderHref(orderId) }, 'Order timeline'), ' · ',
      el('a', { href: '#/sagas' }, 'All sagas needing attention')),
    row.done ? null : el('div', { class: 'page-actions' }, sagaButtons(ctx, orderId)),
    facts([
      ['Order', mono(row.order_id || orderId)],
      ['State', badge(row.state)],
      ['Done', row.done ? 'yes' : 'no'],
      ['Needs attention', row.needs_attention ? attentionBadge() : 'no'],
      ['Attempts', saga.attempts === undefined ? null : String(saga.attempts)],
      ['Attention', saga.attention],
      ['Reason', saga.reason],
      ['Cancel reason', row.cancel_reason],
      ['Next attempt', when(row.next_attempt_at)],
      ['Lease owner', mono(row.lease_owner)],
      ['Leased until', when(row.leased_until)],
      ['Updated', when(row.updated_at)],
      ['Version', row.version === undefined ? null : String(row.version)],
    ]),
    el('h2', {}, 'Steps'),
    steps.length ?
      table('saga-steps-table', ['Step', 'Status', 'At', 'Detail'], steps.map((s) =>
        el('tr', {}, td(s.name), td(badge(s.status)), td(when(s.at)), td(s.detail, 'clip')))) :
      emptyNote('No steps yet'),
    el('h2', {}, 'Operator actions'),
    actions.length ? actionsTable('saga-actions-table', actions) : emptyNote('No operator actions'),
    el('details', { class: 'raw' }, el('summary', {}, 'Saga JSON'), el('pre', {}, pretty(saga))),
  ];
}

// ---------------------------------------------------------------- start

function start() {
  window.addEventListener('hashchange', () => render(true));
  $('sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showNotice('Signed out.');
    renderSignIn('');
  });
  render(true);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
