/**
 * The dashboard's script (app.js), plain ES5-ish JavaScript in a string so the agent serves it as
 * it is: no bundler, no framework, nothing fetched from elsewhere. It renders the `snapshot`
 * events of /dashboard/events into the tables, and appends the `log` events to the selected
 * job's log. Every text from the lab (board names, holders, log lines) goes in through
 * textContent, never as HTML: a holder or a console line cannot inject markup.
 */
export const PAGE_JS = String.raw`'use strict';
(function () {
  var MAX_LINES = 2000;
  var snapshot = null;
  var logs = {};        // job id -> [line]
  var ended = {};       // job id -> finished job (for the log's last line)
  var selected = null;  // the job whose log is shown
  var chosenByHand = false;

  function $(id) { return document.getElementById(id); }
  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      if (k === 'text') node.textContent = props[k];
      else if (k === 'className') node.className = props[k];
      else node.setAttribute(k, props[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function td(text, className) {
    return el('td', { text: text == null ? '' : String(text), className: className || '' });
  }
  function pad(n) { return n < 10 ? '0' + n : String(n); }
  function clock(ms) {
    var d = new Date(ms);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min ago';
  }
  function duration(seconds) {
    if (seconds < 60) return seconds.toFixed(1) + ' s';
    return Math.floor(seconds / 60) + ' min ' + Math.round(seconds % 60) + ' s';
  }
  // "owner/repo run 42.1 job build" (the action's holder) -> the run's page.
  function runLink(holder, base) {
    var m = /^([\w.-]+\/[\w.-]+) run (\d+)/.exec(holder || '');
    if (!m || !base) return null;
    var href = base.replace(/\/$/, '') + '/' + m[1] + '/actions/runs/' + m[2];
    return el('a', { href: href, text: holder, rel: 'noreferrer' });
  }
  function holderCell(holder, base) {
    var cell = el('td', { className: 'holder' });
    var link = runLink(holder, base);
    if (link) cell.appendChild(link); else cell.textContent = holder || '';
    return cell;
  }

  function jobText(board, running) {
    var job = running[board.job];
    if (!job) return '';
    var text = job.phase || 'starting';
    var p = job.progress;
    if (p && p.phase === job.phase) {
      if (p.part) text += ' part ' + p.part + '/' + p.parts;
      if (p.total) text += ' ' + Math.floor((100 * p.done) / p.total) + ' %';
    }
    return text;
  }

  function renderBoards(s) {
    var running = {};
    s.running.forEach(function (j) { running[j.id] = j; });
    var body = el('tbody');
    s.boards.forEach(function (b) {
      var since = b.lease ? b.lease.since : b.stateSince;
      var row = el('tr', { 'data-board': b.name }, [
        td(b.name, 'name'),
        td(b.model || '', 'model'),
        el('td', { className: 'state state-' + b.state, text: b.state, title: b.reason || '' }),
        b.lease ? holderCell(b.lease.holder, s.runLinkBase) : td('', 'holder'),
        el('td', { className: 'since', text: since ? ago(since) : '', 'data-since': since || '' }),
        td(jobText(b, running), 'job'),
        td(b.queue ? String(b.queue) : '', 'queue')
      ]);
      body.appendChild(row);
    });
    $('boards').replaceChild(body, $('boards').tBodies[0]);
    var pools = el('tbody');
    s.pools.forEach(function (p) {
      pools.appendChild(el('tr', { 'data-pool': p.name }, [td(p.name), td(p.boards), td(p.queue || '', 'queue')]));
    });
    $('pools').replaceChild(pools, $('pools').tBodies[0]);
    $('pools-section').hidden = s.pools.length === 0;
  }

  function renderRecent(s) {
    var body = el('tbody');
    s.recent.forEach(function (j) {
      ended[j.id] = j;
      var href = '/dashboard/jobs/' + encodeURIComponent(j.id) + '/log';
      var log = el('a', { href: href, text: 'log', target: '_blank' });
      body.appendChild(el('tr', { 'data-job': j.id }, [
        td(clock(j.finishedAt), 'finished'),
        td(j.target, 'name'),
        holderCell(j.holder, s.runLinkBase),
        el('td', { className: 'code ' + (j.ok ? 'code-ok' : 'code-failed'), text: j.code, title: j.message }),
        td(duration(j.seconds), 'duration'),
        el('td', {}, [log])
      ]));
    });
    $('recent').replaceChild(body, $('recent').tBodies[0]);
  }

  function renderRunning(s) {
    var ids = s.running.map(function (j) { return j.id; });
    if (!selected || (!chosenByHand && ids.indexOf(selected) < 0 && ids.length)) {
      if (ids.length) select(ids[ids.length - 1], false);
    }
    var nav = $('running');
    nav.textContent = '';
    s.running.forEach(function (j) {
      var b = el('button', {
        type: 'button', 'data-job': j.id, 'aria-pressed': String(j.id === selected), text: j.target + ' · ' + j.id
      });
      b.addEventListener('click', function () { select(j.id, true); });
      nav.appendChild(b);
    });
    var title = '';
    if (selected) {
      var run = s.running.filter(function (j) { return j.id === selected; })[0];
      var done = ended[selected];
      if (run) title = run.target + ' · job ' + selected + ' (running)';
      else if (done) title = done.target + ' · job ' + selected + ' (' + done.code + ')';
      else title = 'job ' + selected;
    }
    $('log-title').textContent = title;
  }

  function lineNode(l) {
    return el('div', { className: 'line src-' + l.source + ' lvl-' + l.level, 'data-source': l.source,
      text: clock(l.time) + ' ' + (l.phase || '').padEnd(8) + ' ' + l.source.padEnd(7) + ' ' + l.message });
  }

  function renderLog() {
    var box = $('log');
    box.textContent = '';
    var lines = selected ? logs[selected] || [] : [];
    var none = selected ? 'No lines yet.' : 'No job is running.';
    if (!lines.length) box.appendChild(el('p', { className: 'empty', text: none }));
    lines.forEach(function (l) { box.appendChild(lineNode(l)); });
    if (selected && ended[selected]) box.appendChild(endNode(ended[selected]));
    box.scrollTop = box.scrollHeight;
  }
  function endNode(j) { return el('div', { className: 'ended', text: 'job ended: ' + j.code + ': ' + j.message }); }

  function select(id, byHand) {
    selected = id;
    chosenByHand = byHand;
    if (!logs[id]) {
      logs[id] = [];
      // A job opened mid-run: its lines so far come from the agent's tail, then live ones follow.
      fetch('/dashboard/jobs/' + encodeURIComponent(id) + '/tail', { credentials: 'same-origin' })
        .then(function (r) { return r.ok ? r.json() : { lines: [] }; })
        .then(function (t) {
          var live = logs[id] || [];
          var last = t.lines.length ? t.lines[t.lines.length - 1].time : 0;
          logs[id] = t.lines.concat(live.filter(function (l) { return l.time > last; }));
          if (selected === id) renderLog();
        })
        .catch(function () {});
    }
    if (snapshot) renderRunning(snapshot);
    renderLog();
  }

  function onLog(batch) {
    var shown = false;
    batch.lines.forEach(function (l) {
      var list = logs[l.job] || (logs[l.job] = []);
      list.push(l);
      if (list.length > MAX_LINES) list.splice(0, list.length - MAX_LINES);
      if (l.job === selected) shown = true;
    });
    if (!shown) return;
    var box = $('log');
    var empty = box.querySelector('.empty');
    if (empty) empty.remove();
    var stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
    batch.lines.forEach(function (l) { if (l.job === selected) box.appendChild(lineNode(l)); });
    while (box.childNodes.length > MAX_LINES) box.removeChild(box.firstChild);
    if (stick) box.scrollTop = box.scrollHeight;
  }

  function onSnapshot(s) {
    var wasEnded = selected && ended[selected];
    snapshot = s;
    $('agent').textContent =
      'agent ' + s.agent + ' · ' + s.boards.length + ' boards · ' + s.running.length + ' running';
    renderBoards(s);
    renderRecent(s);
    renderRunning(s);
    if (selected && ended[selected] && !wasEnded) {
      $('log').appendChild(endNode(ended[selected]));
      $('log').scrollTop = $('log').scrollHeight;
    }
  }

  function status(text, cls) { var s = $('status'); s.textContent = text; s.className = 'status ' + cls; }

  var events = new EventSource('/dashboard/events');
  events.addEventListener('open', function () { status('live', 'live'); });
  events.addEventListener('error', function () { status('reconnecting…', 'lost'); });
  events.addEventListener('snapshot', function (e) { onSnapshot(JSON.parse(e.data)); });
  events.addEventListener('log', function (e) { onLog(JSON.parse(e.data)); });
  setInterval(function () {
    Array.prototype.forEach.call(document.querySelectorAll('td.since[data-since]'), function (c) {
      var since = Number(c.getAttribute('data-since'));
      if (since) c.textContent = ago(since);
    });
  }, 5000);
})();
`;
