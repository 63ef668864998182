(() => {
'use strict';
const ARXIV = '__ARXIV__';
const PAGE = 200;
const DASH = '\u2013';
const D = JSON.parse(document.getElementById('features-data').textContent);
const F = D.features || [];
const P = D.papers || [];
const S = D.summary || {};
const byId = new Map(F.map(f => [f.id, f]));
const FAM = new Map((D.families || []).map(fam => [fam.id, fam]));
const nPapers = D.n_papers || P.length;
const terms = F.map(f => (f.label || []).concat(f.llm && f.llm.label ? [f.llm.label] : [])
  .map(t => String(t).toLowerCase()));
const $ = id => document.getElementById(id);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const isNum = x => typeof x === 'number' && isFinite(x);
const fix = (x, d) => isNum(x) ? x.toFixed(d) : DASH;
const sig = (x, d = 3) => !isNum(x) ? DASH : x === 0 ? '0' : String(Number(x.toPrecision(d)));
const int = x => isNum(x) ? Math.round(x).toLocaleString('en-US') : DASH;
function pct(x) {
  if (!isNum(x)) return DASH;
  const p = x * 100;
  if (p === 0) return '0%';
  return (p >= 10 ? p.toFixed(1) : p >= 1 ? p.toFixed(2) : p >= 0.01 ? p.toFixed(3)
    : p.toPrecision(2)) + '%';
}
const isDead = f => !(f.density > 0);
const labelOf = f => (f.label && f.label.length) ? f.label.join(', ') : '';
const headOf = f => f.family != null && FAM.has(f.family) && FAM.get(f.family).parent === f.id;

// ---- header --------------------------------------------------------------------------
function header() {
  $('cell').textContent = D.cell || D.model || 'features';
  const meta = [D.domain, D.k != null && `k ${D.k}`, D.n_latents != null &&
    `${int(D.n_latents)} latents`, `${int(nPapers)} papers`, D.model].filter(Boolean);
  $('meta').textContent = meta.join(' \u00b7 ');
  const live = S.live_features ?? F.filter(f => !isDead(f)).length;
  const dead = S.dead_features ?? F.length - live;
  const nFam = S.families ?? FAM.size;
  const by = S.label_score === 'embed' ? 'label_embed' : 'label';
  const figs = [
    ['live', int(live)], ['dead', int(dead)], ['label F1 mean', fix(S[`${by}_f1_mean`], 2)],
    ['F1 \u2265 0.8', pct(S[`${by}_f1_ge_0_8`])],
    ['Pearson mean', fix(S[`${by}_pearson_mean`], 2)],
    ['families', int(nFam)],
  ];
  if (isNum(S.clean_share)) figs.push(['clean', pct(S.clean_share)]);
  if (isNum(S.family_size_mean)) figs.push(['mean family size', fix(S.family_size_mean, 1)]);
  if (S.probe_categories) {
    figs.push(['probe F1 k=1 / 16', `${fix(S.probe_f1_k1_mean, 2)} / ${fix(S.probe_f1_k16_mean, 2)}`],
      ['dense probe F1', fix(S.dense_probe_f1_mean, 2)]);
  }
  $('summary').replaceChildren(...figs.map(([k, v]) => h('div', {class: 'fig'},
    h('span', null, k), h('b', null, v))));
  const sel = $('family');
  sel.append(h('option', {value: ''}, 'all features'), h('option', {value: 'in'}, 'in a family'),
    h('option', {value: 'none'}, 'in no family'));
  const fams = [...FAM.values()].sort((a, b) => b.members.length - a.members.length || a.id - b.id);
  for (const fam of fams) {
    const head = byId.get(fam.parent);
    const lab = head ? (head.label || []).slice(0, 3).join(', ') : '';
    sel.append(h('option', {value: `f${fam.id}`},
      `family ${fam.id}: #${fam.parent} ${lab} (${fam.members.length})`));
  }
  categorySelect();
  document.title = `features \u00b7 ${D.cell || D.model || ''}`;
}

// The arXiv categories some feature is over-represented in, the most such features first.
function categorySelect() {
  const count = new Map();
  for (const f of F) for (const [c] of f.categories || []) count.set(c, (count.get(c) || 0) + 1);
  const sel = $('category');
  sel.append(h('option', {value: ''}, 'any arXiv category'));
  const cats = [...count].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  for (const [c, n] of cats) sel.append(h('option', {value: c}, `${c} (${n} features)`));
  sel.hidden = !cats.length;
}
const inCategory = (f, c) => (f.categories || []).some(x => x[0] === c);

// ---- the table -----------------------------------------------------------------------
const KEYS = {
  id: f => f.id,
  label: f => (f.label && f.label.length) ? String(f.label[0]).toLowerCase() : null,
  density: f => f.density, mean_act: f => f.mean_act, f1: f => f.f1, pearson: f => f.pearson,
  family: f => f.family,
};
const FIRST_DIR = {id: 1, label: 1, family: 1, density: -1, mean_act: -1, f1: -1, pearson: -1};
const state = {key: 'id', dir: 1, shown: PAGE, rows: [], selected: null, query: null};
const missing = v => v == null || (typeof v === 'number' && !isFinite(v));

function sortRows(rows) {
  const get = KEYS[state.key], dir = state.dir;
  if (state.key === 'id') return dir === 1 ? rows : rows.reverse();
  const keyed = rows.map(f => [get(f), f]);
  keyed.sort((a, b) => {
    const ma = missing(a[0]), mb = missing(b[0]);
    if (ma || mb) return ma && mb ? a[1].id - b[1].id : ma ? 1 : -1;  // missing last
    const c = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
    return c * dir || a[1].id - b[1].id;
  });
  return keyed.map(p => p[1]);
}

function filterRows() {
  const q = $('search').value.trim().toLowerCase();
  const m = /^#?(\d+)$/.exec(q);
  if (m) return byId.has(+m[1]) ? [byId.get(+m[1])] : [];  // an id: that one, dead or not
  const hideDead = $('hide-dead').checked, fam = $('family').value, cat = $('category').value;
  const famId = fam.startsWith('f') ? +fam.slice(1) : null;
  const out = [];
  for (let i = 0; i < F.length; i++) {
    const f = F[i];
    if (hideDead && isDead(f)) continue;
    if (fam === 'in' ? f.family == null : fam === 'none' ? f.family != null
      : famId != null && f.family !== famId) continue;
    if (cat && !inCategory(f, cat)) continue;
    if (q && !terms[i].some(t => t.includes(q))) continue;
    out.push(f);
  }
  return out;
}

function row(f) {
  const label = labelOf(f);
  return h('tr', {'data-id': f.id, tabindex: 0, class: [isDead(f) && 'dead',
    f.id === state.selected && 'selected'].filter(Boolean).join(' ') || null},
    h('td', {class: 'num id'}, `#${f.id}`),
    h('td', {title: label || null}, label || (isDead(f) ? 'dead' : DASH)),
    h('td', {class: 'num'}, pct(f.density)),
    h('td', {class: 'num'}, sig(f.mean_act)),
    h('td', {class: 'num'}, fix(f.f1, 2)),
    h('td', {class: 'num'}, fix(f.pearson, 2)),
    h('td', {class: 'num'}, f.family == null ? DASH : String(f.family),
      headOf(f) ? h('span', {class: 'head-mark', title: 'heads its family'}, '\u2605') : null));
}

function showRows(from) {
  const body = $('features').tBodies[0];
  const end = Math.min(state.shown, state.rows.length);
  const frag = document.createDocumentFragment();
  for (let i = from; i < end; i++) frag.append(row(state.rows[i]));
  if (from === 0) body.replaceChildren(frag); else body.append(frag);
  const line = $('showing');
  line.textContent = `showing ${end.toLocaleString('en-US')} of ` +
    `${state.rows.length.toLocaleString('en-US')} features` +
    (state.rows.length !== F.length ? ` (${F.length.toLocaleString('en-US')} in all)` : '');
  line.dataset.matched = state.rows.length;
  line.dataset.query = state.query;
  $('more').hidden = end >= state.rows.length;
}

function apply() {
  state.query = $('search').value;
  state.rows = sortRows(filterRows());
  state.shown = PAGE;
  showRows(0);
}

function sortBy(key) {
  if (state.key === key) state.dir = -state.dir;
  else { state.key = key; state.dir = FIRST_DIR[key] || 1; }
  for (const th of $('features').tHead.rows[0].cells) {
    if (th.dataset.key === state.key) {
      th.setAttribute('aria-sort', state.dir === 1 ? 'ascending' : 'descending');
    } else th.removeAttribute('aria-sort');
  }
  state.rows = sortRows(state.key === 'id' ? filterRows() : state.rows);
  state.shown = PAGE;
  showRows(0);
  $('list').scrollTop = 0;
}

// ---- the card ------------------------------------------------------------------------
function fLink(id) {
  return h('a', {href: `#f${id}`, 'data-f': id, class: 'f'}, `#${id}`);
}
function paperList(pairs) {
  if (!pairs || !pairs.length) return h('p', {class: 'muted'}, 'none');
  return h('ol', {class: 'papers'}, pairs.map(([i, act]) => {
    const p = P[i];
    if (!p) return h('li', null, h('span', {class: 'act'}, sig(act)), `paper ${i}`);
    return h('li', null, h('span', {class: 'act'}, sig(act)),
      h('a', {href: ARXIV + encodeURIComponent(p.id).replace(/%2F/g, '/'), target: '_blank',
        rel: 'noopener', title: p.title}, p.title || p.id),
      h('span', {class: 'pid'}, p.id));
  }));
}
function featureList(pairs, show) {
  if (!pairs || !pairs.length) return h('p', {class: 'muted'}, 'none');
  return h('ul', {class: 'links'}, pairs.map(([id, v]) => {
    const g = byId.get(id);
    const lab = g ? labelOf(g) || (isDead(g) ? 'dead' : DASH) : '';
    return h('li', null, fLink(id), h('span', {class: 'lab', title: lab}, lab),
      h('span', {class: 'val'}, show(v)));
  }));
}
function treeNode(id, members, seen, current) {
  seen.add(id);
  const f = byId.get(id);
  const kids = ((f && f.children) || []).filter(c => members.has(c) && !seen.has(c));
  const lab = f ? (f.label || []).slice(0, 3).join(', ') : '';
  const node = h('span', {class: 'node' + (id === current ? ' current' : '')}, fLink(id), ' ',
    h('span', {class: 'lab'}, lab));
  const sub = kids.length ? h('ul', null, kids.map(c => seen.has(c) ? null
    : treeNode(c, members, seen, current))) : null;
  return h('li', null, node, sub);
}
function familyTree(fam, current) {
  const members = new Set(fam.members || []);
  members.add(fam.parent);
  const seen = new Set();
  const roots = [fam.parent, ...[...members].filter(m => {
    const g = byId.get(m);
    return m !== fam.parent && !(g && members.has(g.parent));
  })];
  const items = [];
  for (const r of roots) if (!seen.has(r)) items.push(treeNode(r, members, seen, current));
  for (const m of members) if (!seen.has(m)) items.push(treeNode(m, members, seen, current));
  return h('ul', {class: 'tree'}, items);
}
function familySection(f) {
  const out = [h('h3', null, 'Family')];
  const fam = f.family != null ? FAM.get(f.family) : null;
  const kids = f.children || [];
  if (!fam && f.parent == null && !kids.length) {
    out.push(h('p', {class: 'muted'}, 'not in a family'));
    return out;
  }
  if (fam) {
    out.push(h('p', {class: 'rel'}, h('span', null, 'family'),
      `${fam.id}: ${fam.members.length} members, depth ${fam.depth}` +
      (fam.parent === f.id ? ' \u00b7 this feature heads it' : '')));
  }
  const withLabel = id => {
    const g = byId.get(id);
    return h('span', {class: 'ref'}, fLink(id), ' ', h('span', {class: 'muted'},
      g ? (g.label || []).slice(0, 3).join(', ') : ''));
  };
  out.push(h('p', {class: 'rel'}, h('span', null, 'parent'),
    f.parent == null ? h('span', {class: 'muted'}, 'none') : withLabel(f.parent)));
  const kidLinks = [];
  kids.forEach((c, i) => { if (i) kidLinks.push(' \u00b7 '); kidLinks.push(withLabel(c)); });
  out.push(h('p', {class: 'rel'}, h('span', null, 'children'),
    kids.length ? kidLinks : h('span', {class: 'muted'}, 'none')));
  if (fam) out.push(familyTree(fam, f.id));
  return out;
}
// An LLM's label, when `sae features --llm-labels` asked for one (with its own scores).
function llmOf(f) {
  if (!f.llm) return [];
  const text = f.llm.error ? h('span', {class: 'too-few'}, f.llm.error)
    : `${f.llm.label} (F1 ${fix(f.llm.f1, 2)} / r ${fix(f.llm.pearson, 2)}` + (isNum(f.llm.embed_f1)
      ? ` \u00b7 by embedding ${fix(f.llm.embed_f1, 2)} / ${fix(f.llm.embed_pearson, 2)})` : ')');
  return [h('dt', null, 'LLM label'), h('dd', {class: 'llm'}, text)];
}
// Lift = P(category | fires) / P(category), and the papers in both.
function categoriesOf(f) {
  const cats = f.categories || [];
  if (!cats.length) return h('span', {class: 'muted'}, 'none over-represented');
  return cats.map(([c, lift, n], i) => [i ? ' \u00b7 ' : '', h('span', {class: 'cat',
    title: `P(${c} | fires) / P(${c}) = ${sig(lift)}; ${n} papers`}, c),
    ` \u00d7${sig(lift, 2)} (${int(n)})`]);
}
// The category probes (sparse probing of the codes against the embedding), while no card is open.
function probeTable() {
  const rows = D.probes || [];
  if (!rows.length) return null;
  const f1 = (o, k) => fix(o && o[k], 2);
  return h('div', {class: 'probes'}, h('h3', null, 'arXiv category probes (held-out F1)'),
    h('table', {id: 'probes'}, h('thead', null, h('tr', null,
      ['category', 'papers', 'best single', 'k=1', 'k=4', 'k=16', 'dense k=16', 'dense all']
        .map((t, i) => h('th', {class: i ? 'num' : null}, t)))),
    h('tbody', null, rows.map(p => h('tr', null,
      h('td', null, p.category), h('td', {class: 'num'}, int(p.papers)),
      h('td', {class: 'num'}, fLink(p.single.latent), ` ${fix(p.single.f1, 2)}`),
      h('td', {class: 'num'}, f1(p.sparse_f1, '1')), h('td', {class: 'num'}, f1(p.sparse_f1, '4')),
      h('td', {class: 'num'}, f1(p.sparse_f1, '16')),
      h('td', {class: 'num'}, f1(p.dense_f1, '16')), h('td', {class: 'num'}, fix(p.full_f1, 2)))))));
}
// The label score is S.label_score's (f1/pearson); the other scorer's pair goes beside it.
const OTHER = S.label_score === 'embed' ? ['term', 'by terms'] : ['embed', 'by embedding'];
function otherScore(f) {
  const f1 = f[`${OTHER[0]}_f1`];
  return isNum(f1) ? h('span', {class: 'muted'},
    ` \u00b7 ${OTHER[1]} ${fix(f1, 2)} / ${fix(f[`${OTHER[0]}_pearson`], 2)}`) : null;
}
function cardOf(f) {
  const scored = isNum(f.f1) || isNum(f.pearson);
  const count = isNum(f.density) ? f.density * nPapers : null;
  const terms = (f.label || []).length ? h('div', {class: 'terms'},
    f.label.map(t => h('span', {class: 'term'}, t))) : h('p', {class: 'muted'}, 'no label');
  return [
    h('div', {class: 'card-head'}, h('h2', null, `#${f.id}`),
      isDead(f) ? h('span', {class: 'badge'}, 'dead') : null,
      headOf(f) ? h('span', {class: 'badge'}, `heads family ${f.family}`) : null,
      h('button', {type: 'button', class: 'close', title: 'close', 'data-close': ''}, '\u00d7')),
    terms,
    h('dl', {class: 'stats'},
      h('dt', null, 'density'), h('dd', null, `${pct(f.density)} \u00b7 ${int(count)} ` +
        (isNum(count) && Math.round(count) === 1 ? 'paper' : 'papers')),
      h('dt', null, 'mean act'), h('dd', null, sig(f.mean_act)),
      h('dt', null, 'label F1 / Pearson'), h('dd', null, scored
        ? [`${fix(f.f1, 2)} / ${fix(f.pearson, 2)}`, otherScore(f)]
        : h('span', {class: 'too-few'}, 'too few held-out papers')),
      ...llmOf(f),
      h('dt', null, 'arXiv categories'), h('dd', {class: 'cats'}, categoriesOf(f))),
    h('h3', null, 'Top papers'), paperList(f.top),
    h('h3', null, 'From the middle of its range'), paperList(f.middle),
    h('h3', null, 'Nearest decoder neighbours'), featureList(f.neighbours, v => `cos ${fix(v, 2)}`),
    h('h3', null, 'Most co-occurring'), featureList(f.cooccurs, v => pct(v)),
    familySection(f),
  ];
}
function hint() {
  return [h('p', {class: 'hint'}, 'Choose a feature to see its card.'), probeTable()];
}
function mark() {
  for (const tr of $('features').tBodies[0].rows) {
    tr.classList.toggle('selected', +tr.dataset.id === state.selected);
  }
}
function openCard(id, push) {
  const card = $('card');
  const f = byId.get(id);
  state.selected = f ? id : null;
  if (!f) card.replaceChildren(h('p', {class: 'hint'}, `There is no feature #${id}.`));
  else card.replaceChildren(...cardOf(f).flat());
  card.dataset.feature = f ? id : '';
  card.scrollTop = 0;
  mark();
  if (push) setHash(`#f${id}`);
  if (f && !window.matchMedia('(min-width: 980px)').matches) {
    const top = card.getBoundingClientRect().top + window.scrollY;
    window.scrollTo({top: top - document.querySelector('header').offsetHeight});
  }
}
function closeCard() {
  state.selected = null;
  $('card').replaceChildren(...hint().filter(Boolean));
  $('card').dataset.feature = '';
  mark();
  setHash('');
}
function setHash(hash) {
  if (location.hash === hash || (!hash && !location.hash)) return;
  const url = hash || location.pathname + location.search;
  try { history.pushState(null, '', url); } catch (e) {
    try { location.hash = hash; } catch (e2) { /* a sandboxed viewer: no hash to keep */ }
  }
}
function fromHash() {
  const m = /^#f(\d+)$/.exec(location.hash);
  if (m) { if (+m[1] !== state.selected) openCard(+m[1], false); }
  else if (state.selected != null) closeCard();
}

// ---- wiring --------------------------------------------------------------------------
header();
let timer = 0;
$('search').addEventListener('input', () => {
  clearTimeout(timer);
  timer = setTimeout(apply, 80);
});
$('search').addEventListener('keydown', e => {
  if (e.key === 'Enter') {
    clearTimeout(timer); apply();
    if (state.rows.length === 1) openCard(state.rows[0].id, true);
  } else if (e.key === 'Escape') { $('search').value = ''; clearTimeout(timer); apply(); }
});
$('hide-dead').addEventListener('change', apply);
$('family').addEventListener('change', apply);
$('category').addEventListener('change', apply);
$('more').addEventListener('click', () => {
  const from = Math.min(state.shown, state.rows.length);
  state.shown += PAGE;
  showRows(from);
});
$('features').tHead.addEventListener('click', e => {
  const th = e.target.closest('th[data-key]');
  if (th) sortBy(th.dataset.key);
});
const body = $('features').tBodies[0];
body.addEventListener('click', e => {
  if (e.target.closest('a')) return;
  const tr = e.target.closest('tr[data-id]');
  if (tr) openCard(+tr.dataset.id, true);
});
body.addEventListener('keydown', e => {
  const tr = e.target.closest('tr[data-id]');
  if (!tr) return;
  if (e.key === 'Enter') openCard(+tr.dataset.id, true);
  else if (e.key === 'ArrowDown' && tr.nextElementSibling) {
    e.preventDefault(); tr.nextElementSibling.focus();
  } else if (e.key === 'ArrowUp' && tr.previousElementSibling) {
    e.preventDefault(); tr.previousElementSibling.focus();
  }
});
document.addEventListener('click', e => {
  if (e.target.closest('[data-close]')) { closeCard(); return; }
  const a = e.target.closest('a[data-f]');
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();  // no navigation: a viewer's iframe resolves '#f1' against its parent
  openCard(+a.dataset.f, true);
});
document.addEventListener('keydown', e => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (e.key === '/' && !typing) { e.preventDefault(); $('search').focus(); $('search').select(); }
});
window.addEventListener('hashchange', fromHash);
window.addEventListener('popstate', fromHash);
$('card').replaceChildren(...hint().filter(Boolean));
apply();
fromHash();
})();
