// The dashboard page: renders the /api/state dict (docs/dashboard.md) with plotly.js, inlined in the same
// page by the server from the installed plotly wheel, so the page needs no network.
'use strict';
var $ = function (id) { return document.getElementById(id); };
var PLOT = {displaylogo: false, responsive: true};
var HEALTH = {  // rate -> [label, what it means]; other rates are shown with their own name
  invalid_rate: ['invalid verdicts', 'share of verdicts the judge did not give (unparsed); no rating effect'],
  position_flip_rate: ['position flips', 'both orders judged and the two games disagree on the winner'],
  single_game_rate: ['judged in one order only', 'position bias not cancelled for these verdicts'],
  first_position_win_rate: ['first position wins', 'of decided games, the answer shown first won (fair: 50%)'],
  longer_answer_win_rate: ['longer answer wins', 'of decided verdicts with answer lengths, the longer answer won'],
  injection_rate: ['injection wins', 'an answer with an injected instruction beat the same answer without']
};

function esc(s) {
  return String(s == null ? '' : s).replace(/[&<>"']/g, function (c) {
    return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
  });
}
function num(x, d) { return x == null || !isFinite(x) ? 'n/a' : Number(x).toFixed(d == null ? 1 : d); }
function pct(x) { return x == null || !isFinite(x) ? 'n/a' : (100 * x).toFixed(1) + '%'; }
function ci(lo, hi) { return lo == null || hi == null ? 'n/a' : num(lo) + ' .. ' + num(hi); }

// one colour per competitor, stable across refreshes and distinct past any fixed palette's length:
// hues a golden angle apart, in the order of the sorted names
function colours(names) {
  var out = {};
  names.slice().sort().forEach(function (m, i) {
    out[m] = 'hsl(' + Math.round((i * 137.508) % 360) + ',65%,' + (i % 2 ? 38 : 48) + '%)';
  });
  return out;
}

function renderLeaderboard(s, col) {
  var rows = s.leaderboard || [];
  $('lb-title').textContent = 'Leaderboard (' + (s.split || 'eval') + ' split, Bradley-Terry with 95% CI)';
  $('lb').querySelector('tbody').innerHTML = rows.length ? rows.map(function (r) {
    return '<tr><td class="num">' + esc(r.rank) + '</td><td>' + esc(r.model) + '</td><td class="num">' + num(r.rating) +
      '</td><td class="num">' + ci(r.lower, r.upper) + '</td><td class="num">' + esc(r.battles) +
      '</td><td class="num">' + pct(r.win_rate) + '</td></tr>';
  }).join('') : '<tr><td colspan="6" class="empty">no rated verdicts yet</td></tr>';
  var models = rows.map(function (r) { return r.model; });
  Plotly.react($('forest'), [{
    type: 'scatter', mode: 'markers', x: rows.map(function (r) { return r.rating; }), y: models,
    marker: {size: 9, color: models.map(function (m) { return col[m]; })},
    error_x: {type: 'data', symmetric: false, thickness: 2, width: 4,
      array: rows.map(function (r) { return r.upper - r.rating; }),
      arrayminus: rows.map(function (r) { return r.rating - r.lower; })},
    hovertext: rows.map(function (r) {
      return esc(r.model) + '<br>rating ' + num(r.rating) + '<br>95% CI ' + ci(r.lower, r.upper) + '<br>' + r.battles + ' battles';
    }),
    hoverinfo: 'text'
  }], {
    margin: {l: 140, r: 20, t: 10, b: 40}, height: Math.max(220, 30 * models.length + 70),
    xaxis: {title: {text: 'rating (95% CI)'}, zeroline: false},
    yaxis: {autorange: 'reversed', automargin: true}, showlegend: false
  }, PLOT);
}

function renderHistory(s, col) {
  var hist = s.history || {}, traces = [];
  Object.keys(hist).sort().forEach(function (m) {
    var ps = hist[m];
    traces.push({
      type: 'scatter', mode: ps.length > 1 ? 'lines+markers' : 'markers', name: m,
      line: {color: col[m], width: 2}, marker: {color: col[m], size: 5},
      x: ps.map(function (p) { return new Date(p[0] * 1000); }), y: ps.map(function (p) { return p[1]; }),
      hovertext: ps.map(function (p) {
        return esc(m) + '<br>' + new Date(p[0] * 1000).toLocaleString() + '<br>rating ' + num(p[1]) +
          (p[2] != null && p[3] != null && p[2] !== p[3] ? '<br>95% CI ' + ci(p[2], p[3]) : '');
      }),
      hoverinfo: 'text'
    });
  });
  // each checkpoint as a dotted line at the time it was announced (when the state knows it)
  var shapes = [], notes = [];
  (s.checkpoints || []).forEach(function (c) {
    if (c.t == null) return;
    var x = new Date(c.t * 1000);
    shapes.push({type: 'line', xref: 'x', yref: 'paper', x0: x, x1: x, y0: 0, y1: 1, line: {dash: 'dot', color: '#999'}});
    notes.push({xref: 'x', yref: 'paper', x: x, y: 1, yanchor: 'bottom', showarrow: false, font: {size: 10, color: '#555'},
      text: esc(c.model) + ' it' + esc(c.iteration) + (c.stage ? ' ' + esc(c.stage) : '')});
  });
  Plotly.react($('history'), traces, {
    margin: {l: 60, r: 10, t: 24, b: 50}, height: 360, hovermode: 'closest',
    xaxis: {title: {text: 'time'}, type: 'date'}, yaxis: {title: {text: 'rating'}},
    legend: {orientation: 'v'}, shapes: shapes, annotations: notes.concat(traces.length ? [] : [{
      xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, showarrow: false, text: 'no ratings yet'}])
  }, PLOT);
}

function renderCheckpoints(s) {
  var cs = s.checkpoints || [];
  $('ckpt').querySelector('tbody').innerHTML = cs.length ? cs.map(function (c) {
    return '<tr><td>' + esc(c.model) + '</td><td class="num">' + esc(c.iteration) + '</td><td>' + (c.stage ? esc(c.stage) : 'n/a') +
      '</td><td>' + esc(c.competitor || c.checkpoint) + '</td><td class="num">' +
      (c.rating != null ? num(c.rating) : 'not rated yet') + '</td><td class="num">' + ci(c.lower, c.upper) + '</td></tr>';
  }).join('') : '<tr><td colspan="6" class="empty">no checkpoints yet</td></tr>';
}

function renderHeat(s, split) {
  var pairs = (s.pairs_by_split || {})[split] || [], ms = [], cell = {}, total = 0, most = 1;
  pairs.forEach(function (p) {
    var n = p.a_wins + p.ties + p.b_wins;
    if (!n) return;
    total += n;
    most = Math.max(most, n);
    cell[p.a + '\u0000' + p.b] = [(p.a_wins + p.ties / 2) / n, n, p.a_wins, p.ties];
    cell[p.b + '\u0000' + p.a] = [(p.b_wins + p.ties / 2) / n, n, p.b_wins, p.ties];
    [p.a, p.b].forEach(function (m) { if (ms.indexOf(m) < 0) ms.push(m); });
  });
  ms.sort();
  $('heat-title').textContent = 'Pairwise results, ' + split + ' split (' + total + ' valid verdicts)';
  function grid(k) {
    return ms.map(function (r) { return ms.map(function (c) { var v = cell[r + '\u0000' + c]; return v ? v[k] : null; }); });
  }
  var hover = ms.map(function (r) {
    return ms.map(function (c) {
      var v = cell[r + '\u0000' + c];
      return v ? esc(r) + ' vs ' + esc(c) + '<br>' + v[2] + ' wins, ' + v[3] + ' ties of ' + v[1] + ' battles<br>score ' + pct(v[0]) : '';
    });
  });
  var axes = {xaxis: {title: {text: 'column model'}, automargin: true, type: 'category'},
    yaxis: {title: {text: 'row model'}, automargin: true, autorange: 'reversed', type: 'category'}};
  var h = Math.max(260, 34 * ms.length + 140);
  function layout(title) {
    return Object.assign({title: {text: title, font: {size: 13}}, margin: {l: 10, r: 10, t: 34, b: 10}, height: h,
      annotations: ms.length ? [] : [{xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, showarrow: false,
        text: 'no valid ' + split + ' verdicts'}]}, axes);
  }
  Plotly.react($('heat-rate'), ms.length ? [{type: 'heatmap', x: ms, y: ms, z: grid(0), zmin: 0, zmax: 1,
    colorscale: 'RdBu', reversescale: true, texttemplate: '%{z:.0%}', hovertext: hover, hoverinfo: 'text',
    colorbar: {title: {text: 'win rate'}, tickformat: '.0%'}}] : [], layout('win rate (row beats column, ties half)'), PLOT);
  Plotly.react($('heat-count'), ms.length ? [{type: 'heatmap', x: ms, y: ms, z: grid(1), colorscale: 'Blues',
    reversescale: true, zmin: 0, zmax: most,
    texttemplate: '%{z}', hovertext: hover, hoverinfo: 'text', colorbar: {title: {text: 'battles'}}}] : [],
    layout('battles'), PLOT);
}

function renderHealth(s) {
  var h = s.health || {}, keys = Object.keys(h);
  $('health').querySelector('tbody').innerHTML = keys.length ? keys.map(function (k) {
    var d = HEALTH[k] || [k.replace(/_/g, ' '), ''];
    return '<tr><td>' + esc(d[0]) + '</td><td class="num">' + pct(h[k]) + '</td><td class="muted">' + esc(d[1]) + '</td></tr>';
  }).join('') : '<tr><td>judge health</td><td class="num">n/a</td><td class="muted">no verdicts yet</td></tr>';
}

function renderFailures(s) {
  var fs = s.failures || [];
  $('fails').innerHTML = fs.length ? fs.map(function (f) {
    var msgs = f.messages || [], ask = msgs.filter(function (m) { return m.role === 'user'; })[0];
    var loser = f.loser || f.target || 'target', winner = f.winner_model || 'winner';
    return '<details><summary>' + (f.split ? '[' + esc(f.split) + '] ' : '') + '<b>' + esc(loser) + '</b> lost to <b>' +
      esc(winner) + '</b> (margin ' + num(f.margin, 2) + ') <span class="muted">' + esc(ask ? ask.content.slice(0, 120) : f.instruction_id) +
      '</span></summary><pre>' + esc(msgs.map(function (m) { return m.role + ': ' + m.content; }).join('\n')) + '</pre>' +
      (f.reference ? '<b>reference</b><pre>' + esc(f.reference) + '</pre>' : '') +
      '<b>' + esc(loser) + '</b><pre>' + esc((f.target_answers || []).join('\n---\n')) + '</pre>' +
      '<b>' + esc(winner) + '</b><pre>' + esc((f.winner_answers || []).join('\n---\n')) + '</pre>' +
      (f.judge_id ? '<b>judge</b> ' + esc(f.judge_id) : '') + '</details>';
  }).join('') : '<p class="empty">no failures yet</p>';
}

var last = null;
function render(s) {
  last = s;
  var split = $('split').value, names = {};
  Object.keys(s.history || {}).forEach(function (m) { names[m] = 1; });
  (s.leaderboard || []).forEach(function (r) { names[r.model] = 1; });
  var col = colours(Object.keys(names));
  $('source').textContent = s.source === 'ledger' ? 'ledger ' + (s.ledger || '') : 'live stream worker';
  $('meta').textContent = s.verdicts + ' verdicts | updated ' + new Date(s.generated_at * 1000).toLocaleTimeString();
  renderLeaderboard(s, col);
  renderHistory(s, col);
  renderCheckpoints(s);
  renderHeat(s, split);
  renderHealth(s);
  renderFailures(s);
}

// Long poll: /api/events answers when the state's version differs from `since` (or after ~10 s).
// Any failure (the worker stopped, a proxy error) shows the notice and retries with a growing pause.
var ver = '', inflight = null, wait = 500;
function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
async function poll() {
  for (;;) {
    var ctl = new AbortController(), timer = setTimeout(function () { ctl.abort(); }, 25000);
    inflight = ctl;
    try {
      var r = await fetch('api/events?since=' + encodeURIComponent(ver) + '&split=' + encodeURIComponent($('split').value),
        {signal: ctl.signal, cache: 'no-store'});
      if (!r.ok) throw new Error('HTTP ' + r.status);
      var s = await r.json();
      $('conn').classList.remove('on');
      wait = 500;
      if (s.version !== ver) { ver = s.version; render(s); }
    } catch (e) {
      if (!ctl.switched) {
        $('conn').classList.add('on');
        await sleep(wait);
        wait = Math.min(5000, wait * 2);
      }
    } finally {
      clearTimeout(timer);
    }
  }
}
$('split').addEventListener('change', function () {
  if (last) renderHeat(last, $('split').value);  // at once; the server's answer for the split follows
  ver = '';
  if (inflight) { inflight.switched = true; inflight.abort(); }
});
var initial = new URLSearchParams(location.search).get('split') || document.body.dataset.split;
if (initial) $('split').value = initial;
poll();
