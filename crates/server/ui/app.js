// veto dashboard: polls /api/v1/status once a second and renders tables
// plus two hand-drawn SVG charts. Plain ES2020, no dependencies.
'use strict';

(() => {
  // The page is served at both /ui and /ui/, so resolve against the origin.
  const API_URL = new URL('/api/v1/status', location.origin).toString();
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 2500;
  const MAX_RATE_POINTS = 300;
  const SVGNS = 'http://www.w3.org/2000/svg';

  const OUTCOMES = [
    'valid', 'malformed', 'bad_signature', 'unknown_key', 'expired',
    'not_yet_valid', 'wrong_audience', 'insufficient_scope', 'revoked', 'stale',
  ];
  const OUTCOME_COLORS = {
    valid: '#3fb950',
    malformed: '#8b949e',
    bad_signature: '#db61a2',
    unknown_key: '#39c5cf',
    expired: '#a371f7',
    not_yet_valid: '#6e8bff',
    wrong_audience: '#2ea89f',
    insufficient_scope: '#e3b341',
    revoked: '#f85149',
    stale: '#f0883e',
  };
  const P50_COLOR = '#5b9cf6';
  const P99_COLOR = '#f0883e';
  const FALLBACK_COLORS = ['#ffa198', '#a5d6ff', '#d2a8ff', '#9be9a8', '#ffdf5d', '#79c0ff'];

  const state = {
    last: null,          // last successfully fetched status
    lastOkAt: null,      // Date of last successful fetch
    prev: null,          // previous sample for rate computation
    edgeRates: new Map(),// edge id -> verifies/s (null until two samples)
    totalRates: {},      // outcome -> verifies/s (latest)
    rateSeries: [],      // [{t, rates: {outcome: n}}], client wall-clock ms
    failing: false,
    ready: false,
  };

  // ---------------------------------------------------------------- helpers

  const $ = (sel) => document.querySelector(sel);

  function num(v) {
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  }

  function obj(v) {
    return v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  }

  function arr(v) {
    return Array.isArray(v) ? v : [];
  }

  function fmtInt(v) {
    const n = num(v);
    return n === null ? '–' : Math.round(n).toLocaleString('en-US');
  }

  function fmtMs(v) {
    const n = num(v);
    if (n === null) return '–';
    if (n < 10) return `${n.toFixed(2)} ms`;
    if (n < 100) return `${n.toFixed(1)} ms`;
    if (n < 10000) return `${Math.round(n)} ms`;
    return `${(n / 1000).toFixed(1)} s`;
  }

  function fmtRate(v) {
    const n = num(v);
    if (n === null) return '–';
    if (n === 0) return '0';
    if (n < 10) return n.toFixed(1);
    return Math.round(n).toLocaleString('en-US');
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtTick(v) {
    return String(+v.toFixed(6));
  }

  function outcomeColor(key, extraIndex) {
    return OUTCOME_COLORS[key] || FALLBACK_COLORS[extraIndex % FALLBACK_COLORS.length];
  }

  // Known outcomes first (in canonical order), then any unknown keys sorted.
  function orderOutcomes(keys) {
    const set = new Set(keys);
    const known = OUTCOMES.filter((k) => set.has(k));
    const extra = [...set].filter((k) => !OUTCOMES.includes(k)).sort();
    return known.concat(extra);
  }

  function colorMap(keys) {
    const m = {};
    let extra = 0;
    for (const k of keys) {
      m[k] = OUTCOME_COLORS[k] || outcomeColor(k, extra++);
    }
    return m;
  }

  function sumCounts(counts) {
    let s = 0;
    for (const v of Object.values(obj(counts))) {
      const n = num(v);
      if (n !== null) s += n;
    }
    return s;
  }

  function setText(sel, text) {
    const e = typeof sel === 'string' ? $(sel) : sel;
    if (e && e.textContent !== text) e.textContent = text;
  }

  function svgEl(name, attrs, parent) {
    const e = document.createElementNS(SVGNS, name);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v !== undefined && v !== null) e.setAttribute(k, String(v));
      }
    }
    if (parent) parent.appendChild(e);
    return e;
  }

  function niceScale(max, count) {
    let m = num(max);
    if (m === null || m <= 0) m = 1;
    const raw = m / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const stepNorm = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    const step = stepNorm * mag;
    const top = Math.ceil(m / step - 1e-9) * step;
    const ticks = [];
    for (let i = 0; i * step <= top + step / 2; i++) ticks.push(i * step);
    return { top, ticks };
  }

  const TIME_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

  function timeTicks(t0, t1, widthPx) {
    const spanS = Math.max(1, (t1 - t0) / 1000);
    const maxTicks = Math.max(2, Math.floor(widthPx / 80));
    let stepS = TIME_STEPS_S[TIME_STEPS_S.length - 1];
    for (const s of TIME_STEPS_S) {
      if (spanS / s <= maxTicks) { stepS = s; break; }
    }
    const stepMs = stepS * 1000;
    const ticks = [];
    for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= t1; t += stepMs) ticks.push(t);
    return ticks;
  }

  function chartBox(svg) {
    const r = svg.getBoundingClientRect();
    const w = Math.max(280, Math.round(r.width || svg.clientWidth || 800));
    const h = Math.max(160, Math.round(r.height || svg.clientHeight || 260));
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('width', String(w));
    svg.setAttribute('height', String(h));
    const m = { l: 58, r: 14, t: 30, b: 24 };
    return { w, h, m, pw: w - m.l - m.r, ph: h - m.t - m.b };
  }

  // Gridlines, y labels (with unit), x time labels, frame.
  function drawAxes(svg, box, yScale, unit, t0, t1) {
    const { m, pw, ph } = box;
    const axis = svgEl('g', { class: 'axis' }, svg);
    for (const v of yScale.ticks) {
      const y = m.t + ph - (v / yScale.top) * ph;
      svgEl('line', { class: 'gridline', x1: m.l, x2: m.l + pw, y1: y.toFixed(1), y2: y.toFixed(1) }, axis);
      const label = svgEl('text', { x: m.l - 6, y: (y + 3.5).toFixed(1), 'text-anchor': 'end' }, axis);
      label.textContent = `${fmtTick(v)} ${unit}`;
    }
    const span = Math.max(1, t1 - t0);
    for (const t of timeTicks(t0, t1, pw)) {
      const x = m.l + ((t - t0) / span) * pw;
      svgEl('line', { class: 'gridline', x1: x.toFixed(1), x2: x.toFixed(1), y1: m.t, y2: m.t + ph }, axis);
      const label = svgEl('text', { x: x.toFixed(1), y: m.t + ph + 16, 'text-anchor': 'middle' }, axis);
      label.textContent = fmtClock(t);
    }
    svgEl('line', { class: 'axisline', x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }, axis);
    svgEl('line', { class: 'axisline', x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }, axis);
  }

  function drawLegend(svg, box, items) {
    const g = svgEl('g', { class: 'legend' }, svg);
    let x = box.m.l;
    const y = 14;
    for (const it of items) {
      if (it.kind === 'bar') {
        svgEl('rect', { x, y: y - 6, width: 10, height: 10, rx: 1.5, class: it.cls || '' }, g);
      } else {
        svgEl('rect', { x, y: y - 2, width: 14, height: 3, rx: 1.5, fill: it.color }, g);
      }
      const label = svgEl('text', { x: x + 19, y: y + 3 }, g);
      label.textContent = it.label;
      x += 19 + it.label.length * 6.6 + 18;
    }
  }

  function drawEmpty(svg, box, text) {
    const t = svgEl('text', {
      class: 'empty-text',
      x: (box.m.l + box.pw / 2).toFixed(1),
      y: (box.m.t + box.ph / 2).toFixed(1),
      'text-anchor': 'middle',
    }, svg);
    t.textContent = text;
  }

  // ------------------------------------------------------------ rate maths

  function updateRates(status) {
    const clientNow = Date.now();
    const serverNow = num(status.now_ms);
    const totals = obj(status.verify_totals);
    const edgeSums = new Map();
    for (const e of arr(status.edges)) {
      const id = edgeKey(e);
      if (id !== null) edgeSums.set(id, sumCounts(obj(e).verify));
    }
    const sample = { clientNow, serverNow, node: status.node_id, totals, edgeSums };
    const prev = state.prev;
    state.prev = sample;
    if (!prev) return;

    // Prefer the server clock when the same node answered twice (counts are
    // snapshots on that node); fall back to the client clock otherwise.
    let dtMs = clientNow - prev.clientNow;
    if (serverNow !== null && prev.serverNow !== null && prev.node === status.node_id &&
        serverNow > prev.serverNow) {
      dtMs = serverNow - prev.serverNow;
    }
    if (!(dtMs > 0)) {
      state.prev = prev; // identical snapshot; keep the older baseline
      return;
    }
    const dt = dtMs / 1000;

    const rates = {};
    const keys = new Set([...Object.keys(totals), ...Object.keys(prev.totals)]);
    for (const k of keys) {
      const cur = num(totals[k]);
      const old = num(prev.totals[k]) ?? 0;
      if (cur === null) continue;
      // A counter going backwards means an edge restarted: treat as no data.
      rates[k] = Math.max(0, cur - old) / dt;
    }
    state.totalRates = rates;

    const edgeRates = new Map();
    for (const [id, sum] of edgeSums) {
      const old = prev.edgeSums.get(id);
      edgeRates.set(id, old === undefined ? null : Math.max(0, sum - old) / dt);
    }
    state.edgeRates = edgeRates;

    state.rateSeries.push({ t: clientNow, rates });
    if (state.rateSeries.length > MAX_RATE_POINTS) {
      state.rateSeries.splice(0, state.rateSeries.length - MAX_RATE_POINTS);
    }
  }

  function edgeKey(e) {
    const id = obj(e).edge_id;
    return id === undefined || id === null ? null : String(id);
  }

  // --------------------------------------------------------------- header

  function renderHeader(s) {
    setText('#hdr-node', s.node_id === undefined || s.node_id === null ? '–' : String(s.node_id));
    const leader = $('#hdr-leader');
    if (s.leader === undefined || s.leader === null) {
      setText(leader, 'none');
      leader.className = 'bad';
    } else {
      setText(leader, String(s.leader));
      leader.className = '';
    }
    setText('#hdr-term', fmtInt(s.term));
    setText('#hdr-refresh', state.lastOkAt ? fmtClock(state.lastOkAt.getTime()) : '–');
  }

  function renderStats(s) {
    setText('#stat-commit', fmtInt(s.commit_index));
    setText('#stat-applied', fmtInt(s.applied_index));
    const members = arr(s.members);
    const voters = members.filter((m) => obj(m).voter !== false).length;
    const learners = members.length - voters;
    setText('#stat-members', learners > 0 ? `${voters} (+${learners} learner${learners > 1 ? 's' : ''})` : String(voters));
    const edges = arr(s.edges);
    const connected = edges.filter((e) => obj(e).connected === true).length;
    const stEdges = $('#stat-edges');
    setText(stEdges, `${connected} / ${edges.length}`);
    stEdges.className = 'value' + (edges.length > 0 && connected < edges.length ? ' warn' : '');
    let total = null;
    for (const v of Object.values(state.totalRates)) total = (total ?? 0) + v;
    setText('#stat-vps', fmtRate(total));
    const series = arr(obj(s.propagation).series);
    const lastPt = series.length ? obj(series[series.length - 1]) : null;
    setText('#stat-p99', lastPt ? fmtMs(lastPt.p99_ms) : '–');
  }

  // ------------------------------------------------- tokens and signals

  function fmtPct(v) {
    const n = num(v);
    if (n === null) return '–';
    const p = Math.round(n * 1000) / 10;
    return `${Number.isInteger(p) ? p.toFixed(0) : p.toFixed(1)} %`;
  }

  function fmtDuration(sec) {
    let n = num(sec);
    if (n === null) return '–';
    n = Math.max(0, Math.round(n));
    if (n < 60) return `${n} s`;
    if (n < 3600) return `${Math.floor(n / 60)} m ${n % 60} s`;
    if (n < 86400) return `${Math.floor(n / 3600)} h ${Math.floor((n % 3600) / 60)} m`;
    return `${Math.floor(n / 86400)} d ${Math.floor((n % 86400) / 3600)} h`;
  }

  // Unix seconds as local time: the clock when within a day of now, else date and minutes.
  function fmtWhen(unixS, nowMs) {
    const n = num(unixS);
    if (n === null) return '–';
    const ms = n * 1000;
    if (Math.abs(ms - nowMs) < 86400000) return fmtClock(ms);
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }

  function setValue(sel, text, cls) {
    const e = $(sel);
    if (!e) return;
    setText(e, text);
    const want = `value${e.classList.contains('small') ? ' small' : ''}${cls ? ` ${cls}` : ''}`;
    if (e.className !== want) e.className = want;
  }

  function renderUsage(s) {
    const u = obj(s.usage);
    const active = num(u.active);
    const used = num(u.used);
    const never = num(u.never_used);
    setValue('#tok-active', fmtInt(active));
    setText('#tok-used', used === null ? '–' : `${fmtInt(used)} used`);
    setValue('#tok-never', fmtInt(never), never !== null && never > 0 ? 'warn' : '');
    setText('#tok-never-share', never !== null && active ? `${fmtPct(never / active)} of active` : '–');
    const ratio = num(u.least_privilege_ratio);
    setValue('#tok-lp', fmtPct(ratio), ratio !== null && ratio < 0.5 && (used ?? 0) > 0 ? 'warn' : '');
    setText('#tok-lp-detail', used ? `${fmtInt(u.least_privilege)} of ${fmtInt(used)} used` : 'none used yet');
    setValue('#tok-verifies', fmtInt(u.verifies));
    const atEdges = sumCounts(s.verify_totals);
    setText('#tok-verifies-rate', `${fmtInt(atEdges)} answered at edges`);
  }

  function renderSignals(s) {
    const u = obj(s.usage);
    const totals = obj(s.verify_totals);
    const revoked = num(u.revoked_attempts);
    setValue('#sig-revoked', fmtInt(revoked), revoked !== null && revoked > 0 ? 'bad' : (revoked === 0 ? 'ok' : ''));
    setText('#sig-revoked-detail', revoked ? 'see veto audit' : (revoked === 0 ? 'none recorded' : '–'));
    for (const [key, sel] of [['bad_signature', '#sig-badsig'], ['unknown_key', '#sig-unknown']]) {
      // No rate before the second poll; after it an outcome no edge reports is 0/s.
      const rate = num(state.totalRates[key]) ?? (state.rateSeries.length > 0 ? 0 : null);
      setValue(sel, fmtRate(rate), rate !== null && rate > 0 ? 'bad' : '');
      setText(`${sel}-total`, `${fmtInt(num(totals[key]) ?? 0)} total`);
    }

    const k = obj(s.keys);
    const nowMs = num(s.now_ms) ?? Date.now();
    const nowS = nowMs / 1000;
    setValue('#key-last', fmtWhen(k.last_rotation_unix, nowMs));
    const kidText = typeof k.active_kid === 'string' && k.active_kid ? `kid ${k.active_kid}` : 'no active key';
    setText('#key-kid', kidText);
    $('#key-kid').title = kidText;
    setValue('#key-age', fmtDuration(k.active_key_age_seconds));
    const pending = obj(k.pending);
    setText('#key-pending', typeof pending.kid === 'string' ? `pending ${pending.kid}` : 'no key pending');
    const next = num(k.next_rotation_unix);
    if (next === null) {
      setValue('#key-next', k.active_kid ? 'manual' : '–');
      setText('#key-next-in', k.active_kid ? 'no rotation policy' : '–');
    } else {
      const overdue = nowS - next;
      setValue('#key-next', fmtWhen(next, nowMs), overdue > 3600 ? 'bad' : (overdue > 0 ? 'warn' : ''));
      setText('#key-next-in', overdue > 0 ? `overdue ${fmtDuration(overdue)}` : `in ${fmtDuration(-overdue)}`);
    }
  }

  // -------------------------------------------------------------- members

  function renderMembers(s) {
    const tbody = $('#members tbody');
    const members = arr(s.members).map(obj).slice()
      .sort((a, b) => (num(a.id) ?? 0) - (num(b.id) ?? 0));
    const commit = num(s.commit_index);
    const rows = members.map((m) => {
      const tr = document.createElement('tr');
      const stateName = typeof m.state === 'string' && m.state ? m.state : 'unknown';
      const isLeader = stateName === 'leader' ||
        (s.leader !== null && s.leader !== undefined && m.id === s.leader);
      if (isLeader) tr.className = 'is-leader';
      tr.dataset.member = String(m.id ?? '');

      const tdId = document.createElement('td');
      tdId.textContent = m.id === undefined || m.id === null ? '–' : String(m.id);
      const tdAddr = document.createElement('td');
      tdAddr.textContent = typeof m.addr === 'string' && m.addr ? m.addr : '–';
      const tdRole = document.createElement('td');
      const role = m.voter === false ? 'learner' : 'voter';
      const roleBadge = document.createElement('span');
      roleBadge.className = `badge ${role === 'learner' ? 'learner' : ''}`;
      roleBadge.textContent = role;
      tdRole.appendChild(roleBadge);
      const tdState = document.createElement('td');
      const stBadge = document.createElement('span');
      const stCls = ['leader', 'follower', 'learner', 'candidate'].includes(stateName) ? stateName : 'unknown';
      stBadge.className = `badge ${isLeader ? 'leader' : stCls}`;
      stBadge.textContent = isLeader && stateName !== 'leader' ? `${stateName} (leader)` : stateName;
      tdState.appendChild(stBadge);
      const tdMatched = document.createElement('td');
      tdMatched.className = 'num';
      const matched = num(m.matched_index);
      tdMatched.textContent = fmtInt(matched);
      if (matched !== null && commit !== null && commit > matched) {
        const behind = document.createElement('span');
        behind.className = commit - matched > 100 ? 'bad' : 'dim';
        behind.textContent = ` (−${fmtInt(commit - matched)})`;
        tdMatched.appendChild(behind);
      }
      tr.append(tdId, tdAddr, tdRole, tdState, tdMatched);
      return tr;
    });
    tbody.replaceChildren(...rows);
    $('#members-empty').hidden = rows.length > 0;
  }

  // --------------------------------------------------------- verify totals

  function renderTotals(s) {
    const tbody = $('#totals tbody');
    const totals = obj(s.verify_totals);
    const keys = orderOutcomes(Object.keys(totals).filter((k) => num(totals[k]) !== null));
    const colors = colorMap(orderOutcomes([...keys, ...Object.keys(state.totalRates)]));
    const rows = keys.map((k) => {
      const tr = document.createElement('tr');
      tr.dataset.outcome = k;
      const tdName = document.createElement('td');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = colors[k];
      tdName.append(sw, document.createTextNode(k));
      const tdTotal = document.createElement('td');
      tdTotal.className = 'num';
      tdTotal.textContent = fmtInt(totals[k]);
      const tdRate = document.createElement('td');
      tdRate.className = 'num';
      tdRate.textContent = fmtRate(state.totalRates[k] ?? null);
      tr.append(tdName, tdTotal, tdRate);
      return tr;
    });
    tbody.replaceChildren(...rows);
    $('#totals-empty').hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- edges

  const EDGE_COLS = 8;

  function freshClass(v) {
    const n = num(v);
    if (n === null || n < 0) return 'bad';
    if (n < 1000) return 'ok';
    if (n < 2000) return 'warn';
    return 'bad';
  }

  function fmtFresh(v) {
    const n = num(v);
    if (n === null) return '–';
    if (n < 0) return 'never';
    return fmtMs(n);
  }

  function renderEdges(s) {
    const tbody = $('#edges tbody');
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.edge, tr);
    const edges = arr(s.edges).map(obj).slice().sort((a, b) =>
      String(a.edge_id ?? '').localeCompare(String(b.edge_id ?? ''), 'en', { numeric: true }));
    const used = new Set();
    let count = 0;
    edges.forEach((e, i) => {
      let id = edgeKey(e) ?? `edge#${i}`;
      if (used.has(id)) id = `${id}#${i}`;
      used.add(id);
      let tr = existing.get(id);
      if (!tr) {
        tr = document.createElement('tr');
        tr.dataset.edge = id;
        for (let c = 0; c < EDGE_COLS; c++) {
          const td = document.createElement('td');
          if (![0, 2].includes(c)) td.className = 'num';
          tr.appendChild(td);
        }
      }
      const td = tr.cells;
      setText(td[0], id);
      setText(td[1], e.node_id === undefined || e.node_id === null ? '–' : String(e.node_id));

      const connected = e.connected === true;
      let badge = td[2].firstElementChild;
      if (!badge) {
        badge = document.createElement('span');
        td[2].appendChild(badge);
      }
      badge.className = `badge ${connected ? 'yes' : 'no'}`;
      setText(badge, connected ? 'connected' : 'disconnected');

      setText(td[3], fmtInt(e.applied_revision));
      setText(td[4], fmtInt(e.lag_revisions));
      setText(td[5], fmtMs(e.lag_ms));
      setText(td[6], fmtFresh(e.fresh_age_ms));
      td[6].className = `num ${freshClass(e.fresh_age_ms)}`;
      const rate = state.edgeRates.get(edgeKey(e) ?? '');
      setText(td[7], fmtRate(rate ?? null));

      tbody.appendChild(tr); // (re)append keeps rows in sorted order
      count++;
    });
    for (const [id, tr] of existing) {
      if (!used.has(id)) tr.remove();
    }
    $('#edges-empty').hidden = count > 0;
    return count;
  }

  // ------------------------------------------------------ propagation chart

  function renderPropagation(s) {
    const svg = $('#propagation-chart');
    svg.replaceChildren();
    const box = chartBox(svg);
    const prop = obj(s.propagation);
    const windowS = num(prop.window_s) ?? 300;
    const points = arr(prop.series).map(obj).filter((p) => num(p.t_ms) !== null)
      .sort((a, b) => a.t_ms - b.t_ms);
    const lastT = points.length ? points[points.length - 1].t_ms : null;
    const t1 = num(s.now_ms) ?? lastT ?? Date.now();
    const t0 = t1 - windowS * 1000;
    setText('#prop-hint', `commit → edge ack, all edges · last ${windowS} s`);

    let maxY = 0;
    for (const p of points) {
      maxY = Math.max(maxY, num(p.p99_ms) ?? 0, num(p.p50_ms) ?? 0);
    }
    const yScale = niceScale(maxY * 1.05, 4);
    drawAxes(svg, box, yScale, 'ms', t0, t1);
    drawLegend(svg, box, [
      { label: 'p50', color: P50_COLOR },
      { label: 'p99', color: P99_COLOR },
      { label: 'samples/s', kind: 'bar', cls: 'countbar' },
    ]);

    if (!points.length) {
      drawEmpty(svg, box, `No propagation samples in the last ${windowS} s`);
      return 0;
    }

    const { m, pw, ph } = box;
    const span = Math.max(1, t1 - t0);
    const xOf = (t) => m.l + Math.min(1, Math.max(0, (t - t0) / span)) * pw;
    const yOf = (v) => m.t + ph - (Math.min(v, yScale.top) / yScale.top) * ph;

    // Sample-count bars along the bottom (scaled to 25% of plot height).
    let maxCount = 0;
    for (const p of points) maxCount = Math.max(maxCount, num(p.count) ?? 0);
    if (maxCount > 0) {
      const bars = svgEl('g', { class: 'counts' }, svg);
      const bw = Math.max(1, pw / Math.max(1, windowS) - 0.5);
      for (const p of points) {
        const c = num(p.count) ?? 0;
        if (c <= 0) continue;
        const h = (c / maxCount) * ph * 0.25;
        const x = xOf(p.t_ms) - bw / 2;
        const rect = svgEl('rect', {
          class: 'countbar', x: x.toFixed(1), y: (m.t + ph - h).toFixed(1),
          width: bw.toFixed(1), height: h.toFixed(1),
        }, bars);
        const title = svgEl('title', null, rect);
        title.textContent = `${fmtClock(p.t_ms)} · ${c} samples · p50 ${fmtMs(p.p50_ms)} · p99 ${fmtMs(p.p99_ms)} · max ${fmtMs(p.max_ms)}`;
      }
    }

    const pathFor = (key) => {
      let d = '';
      for (const p of points) {
        const v = num(p[key]);
        if (v === null) continue;
        d += `${d ? 'L' : 'M'}${xOf(p.t_ms).toFixed(1)},${yOf(v).toFixed(1)}`;
      }
      return d;
    };
    const d99 = pathFor('p99_ms');
    const d50 = pathFor('p50_ms');
    if (d99) svgEl('path', { class: 'p99', d: d99 }, svg);
    if (d50) svgEl('path', { class: 'p50', d: d50 }, svg);

    // Sparse data (revocations are rare): mark the individual points.
    if (points.length <= 120) {
      const dots = svgEl('g', { class: 'dots' }, svg);
      for (const p of points) {
        for (const [key, color] of [['p99_ms', P99_COLOR], ['p50_ms', P50_COLOR]]) {
          const v = num(p[key]);
          if (v === null) continue;
          svgEl('circle', { cx: xOf(p.t_ms).toFixed(1), cy: yOf(v).toFixed(1), r: 2.2, fill: color }, dots);
        }
      }
    }
    return points.length;
  }

  // ------------------------------------------------------ verify rate chart

  function renderVerifyChart() {
    const svg = $('#verify-chart');
    svg.replaceChildren();
    const box = chartBox(svg);
    const series = state.rateSeries;
    const t1 = series.length ? series[series.length - 1].t : Date.now();
    const tFirst = series.length ? series[0].t : t1;
    const t0 = t1 - Math.max(60000, t1 - tFirst);

    const seen = new Set();
    let maxY = 0;
    for (const pt of series) {
      for (const [k, v] of Object.entries(pt.rates)) {
        if (v > 0) {
          seen.add(k);
          maxY = Math.max(maxY, v);
        }
      }
    }
    const keys = orderOutcomes([...seen]);
    const colors = colorMap(orderOutcomes([...keys, ...Object.keys(state.totalRates)]));
    const yScale = niceScale(maxY * 1.05, 4);
    drawAxes(svg, box, yScale, '/s', t0, t1);
    drawLegend(svg, box, keys.map((k) => ({ label: k, color: colors[k] })));

    if (series.length < 2 && !keys.length) {
      drawEmpty(svg, box, state.last ? 'Collecting samples…' : 'Waiting for data…');
      return;
    }
    if (!keys.length) {
      drawEmpty(svg, box, 'No verifications since the page opened');
      return;
    }

    const { m, pw, ph } = box;
    const span = Math.max(1, t1 - t0);
    const xOf = (t) => m.l + ((t - t0) / span) * pw;
    const yOf = (v) => m.t + ph - (Math.min(v, yScale.top) / yScale.top) * ph;
    const gapMs = POLL_MS * 5; // break the line across failed polls

    for (const k of keys) {
      let d = '';
      let prevT = null;
      for (const pt of series) {
        const v = pt.rates[k] ?? 0;
        const move = prevT === null || pt.t - prevT > gapMs;
        d += `${move ? 'M' : 'L'}${xOf(pt.t).toFixed(1)},${yOf(v).toFixed(1)}`;
        prevT = pt.t;
      }
      if (series.length === 1) {
        // A single point: draw a short horizontal tick so it is visible.
        d += `L${(xOf(series[0].t) - 3).toFixed(1)},${yOf(series[0].rates[k] ?? 0).toFixed(1)}`;
      }
      svgEl('path', { 'data-outcome': k, class: 'line', d, stroke: colors[k] }, svg);
    }
  }

  // ------------------------------------------------------------ rendering

  function render() {
    const s = state.last;
    if (!s) return;
    renderHeader(s);
    renderStats(s);
    renderUsage(s);
    renderSignals(s);
    renderMembers(s);
    renderTotals(s);
    const edgeRows = renderEdges(s);
    const points = renderPropagation(s);
    renderVerifyChart();

    document.body.dataset.edges = String(edgeRows);
    document.body.dataset.points = String(points);
    if (!state.ready && edgeRows > 0 && points > 0) {
      state.ready = true;
      document.body.dataset.ready = 'true';
    }
  }

  function showError(message) {
    state.failing = true;
    const banner = $('#error-banner');
    setText('#error-text', message);
    if (state.lastOkAt) {
      const ago = Math.round((Date.now() - state.lastOkAt.getTime()) / 1000);
      setText('#error-since', `— showing data from ${fmtClock(state.lastOkAt.getTime())} (${ago} s ago)`);
    } else {
      setText('#error-since', '— no data received yet');
    }
    banner.hidden = false;
    const live = $('#live');
    live.className = 'live err';
    live.textContent = 'error';
    live.title = message;
  }

  function clearError() {
    state.failing = false;
    $('#error-banner').hidden = true;
    const live = $('#live');
    live.className = 'live ok';
    live.textContent = 'live';
    live.title = `polling ${API_URL} every ${POLL_MS / 1000} s`;
  }

  async function fetchStatus() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(API_URL, {
        cache: 'no-store',
        headers: { Accept: 'application/json' },
        signal: ctrl.signal,
      });
      if (!res.ok) {
        let detail = '';
        try { detail = (await res.text()).trim().slice(0, 200); } catch (_) { /* ignore */ }
        throw new Error(`HTTP ${res.status} ${res.statusText}${detail ? `: ${detail}` : ''}`);
      }
      const body = await res.json();
      if (!body || typeof body !== 'object' || Array.isArray(body)) {
        throw new Error('unexpected response (not a JSON object)');
      }
      return body;
    } catch (err) {
      if (err && err.name === 'AbortError') {
        throw new Error(`timed out after ${FETCH_TIMEOUT_MS} ms`);
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async function pollOnce() {
    let status;
    try {
      status = await fetchStatus();
    } catch (err) {
      showError(`${API_URL}: ${err && err.message ? err.message : String(err)}`);
      return;
    }
    state.last = status;
    state.lastOkAt = new Date();
    try {
      updateRates(status);
      render();
      clearError();
    } catch (err) {
      // Never let a rendering problem stop the poll loop.
      console.error(err);
      showError(`render error: ${err && err.message ? err.message : String(err)}`);
    }
  }

  async function loop() {
    const started = performance.now();
    await pollOnce();
    const wait = Math.max(0, POLL_MS - (performance.now() - started));
    setTimeout(loop, wait);
  }

  let resizeQueued = false;
  window.addEventListener('resize', () => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      if (!state.last) return;
      try {
        renderPropagation(state.last);
        renderVerifyChart();
      } catch (err) {
        console.error(err);
      }
    });
  });

  function start() {
    setText('#api-url', API_URL);
    renderPropagation({});
    renderVerifyChart();
    loop();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
