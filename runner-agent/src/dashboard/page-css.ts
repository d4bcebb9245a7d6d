/** The dashboard's style sheet (app.css). */
export const PAGE_CSS = `
:root {
  --ok: #1a7f37; --bad: #cf222e; --busy: #9a6700; --muted: #656d76; --line: #d0d7de;
  font-family: system-ui, sans-serif;
}
body { margin: 0; color: #1f2328; background: #f6f8fa; }
header { display: flex; gap: 1rem; align-items: center; padding: .5rem 1rem; background: #24292f; color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; }
header form { margin-left: auto; }
main { padding: 0 1rem 2rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); font-size: .9rem; }
th { background: #eaeef2; }
.status { font-size: .8rem; padding: .1rem .5rem; border-radius: 1rem; background: var(--muted); }
.status.live { background: var(--ok); }
.status.lost { background: var(--bad); }
.state { font-weight: 600; }
.state-idle { color: var(--ok); }
.state-leased, .state-flashing, .state-booting { color: var(--busy); }
.state-unhealthy { color: var(--bad); }
.state-maintenance { color: var(--muted); }
.code-ok { color: var(--ok); font-weight: 600; }
.code-failed { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
nav button { margin: 0 .3rem .3rem 0; }
nav button[aria-pressed="true"] { font-weight: 700; }
.log {
  background: #0d1117; color: #e6edf3; font: .8rem/1.35 ui-monospace, monospace;
  padding: .5rem; height: 22rem; overflow: auto; white-space: pre-wrap;
}
.log .empty { color: #8b949e; margin: 0; }
.log .src-board { color: #79c0ff; }
.log .src-console { color: #d2a8ff; }
.log .lvl-warn { color: #e3b341; }
.log .lvl-error { color: #ff7b72; }
.log .ended { color: #8b949e; border-top: 1px solid #30363d; margin-top: .3rem; }
body.login { display: grid; place-items: center; min-height: 100vh; }
body.login form {
  background: #fff; padding: 2rem; border: 1px solid var(--line); border-radius: .5rem; max-width: 24rem;
}
body.login label { display: block; margin: 1rem 0; }
body.login input { width: 100%; }
.error { color: var(--bad); }
`;
