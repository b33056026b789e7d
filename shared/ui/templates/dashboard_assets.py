"""CSS and JavaScript of the dashboard pages.

Colours are keyed on the ``data-status`` attribute, so the refresh script changes a
stage's colour by changing that one attribute (the same one the browser test reads).
The script only ever sets ``textContent`` and http(s) ``href`` values: nothing from
the API is parsed as HTML.
"""

CSS = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; }
body { margin: 1.5rem 2rem; background: #f6f8fa; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
a { color: #0969da; }
.sub { color: #57606a; margin: 0 0 1rem; }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 1rem; font-size: .85rem;
         font-weight: 600; color: #fff; background: #8c959f; }
.badge[data-status=running] { background: #0969da; }
.badge[data-status=awaiting_approval], .badge[data-status=waiting] { background: #bf8700; }
.badge[data-status=queued] { background: #8250df; }
.badge[data-status=stopped], .badge[data-status=failed] { background: #cf222e; }
.badge[data-status=succeeded] { background: #1a7f37; }
.badge[data-status=superseded], .badge[data-status=skipped], .badge[data-status=pending] { background: #8c959f; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #d0d7de; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #eaeef2; }
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
.stage[data-status=running] .st { color: #0969da; }
.stage[data-status=waiting] { border-color: #bf8700; background: #fff8c5; }
.stage[data-status=waiting] .st { color: #9a6700; }
.stage[data-status=queued] { border-color: #8250df; background: #fbefff; }
.stage[data-status=queued] .st { color: #8250df; }
.stage[data-status=succeeded] { border-color: #1a7f37; background: #dafbe1; }
.stage[data-status=succeeded] .st { color: #1a7f37; }
.stage[data-status=failed] { border-color: #cf222e; background: #ffebe9; }
.stage[data-status=failed] .st { color: #cf222e; }
.stage[data-status=skipped] { border-style: dashed; color: #8c959f; background: #f6f8fa; }
.stage.optional { border-style: dashed; }
.stage.optional[data-status=succeeded], .stage.optional[data-status=running],
.stage.optional[data-status=failed] { border-style: solid; }
.reason { background: #ffebe9; border: 1px solid #cf222e; border-radius: .4rem; padding: .5rem .8rem; }
pre.notes { background: #fff; border: 1px solid #d0d7de; padding: .8rem; overflow-x: auto; font-size: .8rem; }
.live { color: #57606a; font-size: .8rem; }
"""

# Polls the JSON view of the release every 2 s while it can still change (running or
# awaiting approval), every 10 s while stopped (only a replay moves it), not at all
# once it is terminal. ``API`` is relative so the page works under any URL prefix.
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
  function apply(data) {
    const rel = data.release;
    root.dataset.updatedAt = String(rel.updated_at);
    root.dataset.releaseStatus = rel.status;
    document.querySelectorAll('[data-field=release-status]').forEach(function (b) {
      b.textContent = rel.status; b.dataset.status = rel.status;
    });
    document.querySelectorAll('[data-field=release-reason]').forEach(function (r) {
      r.textContent = rel.reason || ''; r.hidden = !rel.reason;
    });
    document.querySelectorAll('[data-field=approval_text]').forEach(function (a) { a.textContent = rel.approval_text; });
    document.querySelectorAll('[data-field=traffic_text]').forEach(function (t) { t.textContent = rel.traffic_text; });
    document.querySelectorAll('[data-field=notes]').forEach(function (n) { n.textContent = data.notes; });
    data.stages.forEach(function (s) {
      document.querySelectorAll('[data-stage="' + CSS.escape(s.id) + '"], [data-row="' + CSS.escape(s.id) + '"]')
        .forEach(function (el) { setFields(el, s); });
    });
    return rel;
  }
  function tick() {
    fetch(API, {cache: 'no-store'}).then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.json();
    }).then(function (data) {
      const rel = apply(data);
      live.textContent = 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC';
      if (rel.terminal) { live.textContent += ' (final)'; return; }
      setTimeout(tick, rel.status === 'stopped' ? 10000 : 2000);
    }).catch(function (e) {
      live.textContent = 'refresh failed (' + e.message + '); retrying';
      setTimeout(tick, 5000);
    });
  }
  if (root.dataset.terminal !== 'true') { setTimeout(tick, 2000); }
})();
"""
