"""CSS and JavaScript of the dashboard pages.

Colours are keyed on the ``data-status`` attribute, so the refresh script changes a
stage's colour by changing that one attribute (the same one the browser test reads).
The script only ever sets ``textContent`` and http(s) ``href`` values from the JSON:
nothing from the API is parsed as HTML. The notes (HTML rendered by the server from
Markdown) are copied from a fresh copy of the page itself.
"""

# Colours: every text/background pair meets WCAG AA (4.5:1) for its size; the browser test
# computes the ratio from the rendered styles of every status badge (tests/e2e).
CSS = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; }
body { margin: 1.5rem 2rem; background: #f6f8fa; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
a { color: #0550ae; }
code { overflow-wrap: anywhere; }
.sub { color: #57606a; margin: 0 0 1rem; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 1rem; font-size: .85rem;
         font-weight: 600; color: #fff; background: #57606a; white-space: nowrap; }
.badge[data-status=running] { background: #0969da; }
.badge[data-status=awaiting_approval], .badge[data-status=waiting] { background: #7d4e00; }
.badge[data-status=queued] { background: #8250df; }
.badge[data-status=stopped], .badge[data-status=failed] { background: #cf222e; }
.badge[data-status=succeeded] { background: #1a7f37; }
.badge[data-status=superseded], .badge[data-status=skipped], .badge[data-status=pending],
.badge[data-status=cancelled] { background: #57606a; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #d0d7de; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #eaeef2; }
td[data-field=detail], td code, .notes td:last-child { overflow-wrap: anywhere; }
.flow { display: flex; flex-wrap: wrap; align-items: flex-start; gap: .9rem 0; }
.step { display: flex; align-items: flex-start; }
.arrow { width: 1.6rem; text-align: center; color: #57606a; font-size: 1.3rem; margin-top: 2.1rem; }
.column { display: flex; flex-direction: column; align-items: flex-start; }
.branch { display: flex; align-items: flex-start; margin-top: .35rem; margin-left: 1.2rem; }
.branch-mark { color: #57606a; font-size: 1.2rem; margin-right: .3rem; }
.stage { width: 8.6rem; min-height: 6.2rem; box-sizing: border-box; border-radius: .5rem; padding: .45rem .55rem;
         border: 2px solid #d0d7de; background: #fff; font-size: .8rem; }
.stage .num { font-size: .7rem; color: #57606a; }
.stage .name { font-weight: 600; margin: .1rem 0 .2rem; }
.stage .st { font-weight: 600; text-transform: uppercase; font-size: .7rem; letter-spacing: .03em; }
.stage .meta, .stage .detail { color: #57606a; overflow-wrap: anywhere; }
.stage a[data-field=log][hidden] { display: none; }
.stage[data-status=pending] { border-color: #d0d7de; background: #fff; }
.stage[data-status=running] { border-color: #0969da; background: #ddf4ff; }
.stage[data-status=running] .st { color: #0550ae; }
.stage[data-status=waiting] { border-color: #bf8700; background: #fff8c5; }
.stage[data-status=waiting] .st { color: #7d4e00; }
.stage[data-status=queued] { border-color: #8250df; background: #fbefff; }
.stage[data-status=queued] .st { color: #6639ba; }
.stage[data-status=succeeded] { border-color: #1a7f37; background: #dafbe1; }
.stage[data-status=succeeded] .st { color: #116329; }
.stage[data-status=failed] { border-color: #cf222e; background: #ffebe9; }
.stage[data-status=failed] .st { color: #a40e26; }
.stage[data-status=skipped] { border-style: dashed; color: #57606a; background: #f6f8fa; }
.stage.optional { border-style: dashed; }
.stage.optional[data-status=succeeded], .stage.optional[data-status=running],
.stage.optional[data-status=failed] { border-style: solid; }
.reason { background: #ffebe9; border: 1px solid #cf222e; border-radius: .4rem; padding: .5rem .8rem;
          overflow-wrap: anywhere; }
.notes { background: #fff; border: 1px solid #d0d7de; padding: .2rem .9rem .8rem; font-size: .85rem;
         overflow-x: auto; }
.notes h1 { font-size: 1.15rem; margin-top: .6rem; } .notes h2 { font-size: 1rem; margin: 1rem 0 .4rem; }
.notes table { font-size: .8rem; }
ol.timeline { background: #fff; border: 1px solid #d0d7de; padding: .5rem .8rem .5rem 2.2rem; margin: 0;
              font-size: .85rem; overflow-wrap: anywhere; }
ol.timeline time { color: #57606a; font-variant-numeric: tabular-nums; }
.progress { margin: 0 0 .4rem; font-weight: 600; }
.live { color: #57606a; font-size: .8rem; min-height: 1em; margin: 0 0 .6rem; }
/* Phones: tables become one card per row, each cell labelled; nothing is wider than the screen. */
@media (max-width: 700px) {
  body { margin: .8rem; }
  table.cards thead { display: none; }
  table.cards, table.cards tbody, table.cards tr, table.cards td { display: block; width: auto; }
  table.cards tr { border: 1px solid #d0d7de; border-radius: .4rem; margin-bottom: .6rem; background: #fff; }
  table.cards td { border: 0; padding: .15rem .6rem; }
  table.cards td[data-label]::before { content: attr(data-label) ": "; font-weight: 600; color: #57606a; }
  .flow { flex-direction: column; }
  .step { flex-direction: column; }
  .arrow { transform: rotate(90deg); margin: 0 0 0 3.5rem; height: 1.2rem; }
  .stage { width: min(18rem, calc(100vw - 3rem)); min-height: 0; }
}
"""

# Follows one release (see tick() for how often). ``API`` is relative so the page works
# under any URL prefix.
REFRESH_JS = """
(function () {
  const root = document.querySelector('[data-release]');
  const API = '../api/release/' + encodeURIComponent(root.dataset.release);
  const live = document.getElementById('live');
  function setFields(el, view) {
    el.dataset.status = view.status;
    el.querySelectorAll('[data-field]').forEach(function (f) {
      const key = f.dataset.field;
      if (key === 'log') {
        const ok = /^https?:\\/\\//.test(view.log_url || '');
        f.hidden = !ok;
        if (ok) { f.href = view.log_url; }
      } else if (key in view) {
        f.textContent = view[key] == null ? '' : String(view[key]);
        if (key === 'status') { f.dataset.status = view.status; }
      }
    });
  }
  // The notes (HTML the server renders from Markdown, raw HTML off) and the timeline are taken
  // from a fresh copy of this same page, never from the JSON; scripts in parsed
  // documents do not run, and the CSP allows only this page's own script anyway.
  function refreshSections() {
    fetch(location.href, {cache: 'no-store'}).then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) { return; }
        const fresh = new DOMParser().parseFromString(text, 'text/html');
        fresh.querySelectorAll('[data-refresh]').forEach(function (part) {
          const here = document.querySelector('[data-refresh="' + CSS.escape(part.dataset.refresh) + '"]');
          if (here) { here.replaceChildren.apply(here, Array.from(part.childNodes)); }
        });
      }).catch(function () { /* the next change tries again */ });
  }
  function apply(data) {
    const rel = data.release;
    // updated_at alone can repeat within a clock tick; the stages' statuses and attempts cannot.
    const shape = rel.status + '|' + data.stages.map(function (s) { return s.status + ':' + s.attempt; }).join(',');
    if (shape !== root.dataset.shape) { refreshSections(); }
    root.dataset.shape = shape;
    root.dataset.updatedAt = String(rel.updated_at);
    root.dataset.releaseStatus = rel.status;
    document.querySelectorAll('[data-field=release-status]').forEach(function (b) {
      b.textContent = rel.status; b.dataset.status = rel.status;
    });
    document.querySelectorAll('[data-field=release-reason]').forEach(function (r) {
      r.textContent = rel.reason || ''; r.hidden = !rel.reason;
    });
    const prog = data.progress || {};
    document.querySelectorAll('[data-field=progress_text]').forEach(function (p) { p.textContent = prog.text || ''; });
    document.querySelectorAll('[data-field=stalled_text]').forEach(function (p) {
      p.textContent = prog.stalled_text || ''; p.hidden = !prog.stalled_text;
    });
    document.querySelectorAll('[data-field=approval_text]').forEach(function (a) { a.textContent = rel.approval_text; });
    document.querySelectorAll('[data-field=traffic_text]').forEach(function (t) { t.textContent = rel.traffic_text; });
    const moved = [];
    data.stages.forEach(function (s) {
      const box = document.querySelector('div[data-stage="' + CSS.escape(s.id) + '"]');
      if (box && box.dataset.status !== s.status) { moved.push(s.name + ' ' + s.status); }
      document.querySelectorAll('[data-stage="' + CSS.escape(s.id) + '"], [data-row="' + CSS.escape(s.id) + '"]')
        .forEach(function (el) { setFields(el, s); });
    });
    // The live region (role=status) announces what changed, not every poll.
    if (moved.length) { live.textContent = 'Release ' + rel.status + ': ' + moved.join(', ') + '.'; }
    return rel;
  }
  // Polls the one-read state of the release as often as the server says it can move
  // (refresh_after_s: 2 s running, 15 s waiting for a lock or a person, 60 s stopped,
  // never once terminal), fetches the full view only when it moved, and pauses while
  // the tab is hidden.
  let timer = null;
  function later(seconds) {
    clearTimeout(timer);
    timer = seconds == null ? null : setTimeout(tick, seconds * 1000);
  }
  function tick() {
    if (document.hidden) { timer = null; return; }
    fetch(API + '/state', {cache: 'no-store'}).then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.json();
    }).then(function (state) {
      root.dataset.checkedAt = new Date().toISOString();
      if (state.shape === root.dataset.shape) { return state; }
      return fetch(API, {cache: 'no-store'}).then(function (r) {
        if (!r.ok) { throw new Error('HTTP ' + r.status); }
        return r.json();
      }).then(function (data) { apply(data); return state; });
    }).then(function (state) {
      later(state.refresh_after_s);
    }).catch(function (e) {
      live.textContent = 'refresh failed (' + e.message + '); retrying';
      later(5);
    });
  }
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && timer === null && root.dataset.terminal !== 'true') { tick(); }
  });
  if (root.dataset.terminal !== 'true') { later(2); }
})();
"""
