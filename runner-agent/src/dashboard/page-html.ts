/**
 * The dashboard's HTML: the page itself (filled in by app.js from the live feed) and the login
 * form. Plain strings, no template engine: the page is small, has no build step, and loads
 * nothing but its own two assets and its event stream from the agent.
 */

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rpi-flash lab</title>
<link rel="stylesheet" href="/dashboard/app.css">
<link rel="icon" href="/dashboard/icon.svg" type="image/svg+xml">
<script src="/dashboard/app.js" defer></script>
</head>
<body>
<header>
  <h1>rpi-flash lab</h1>
  <span id="status" class="status connecting">connecting…</span>
  <span id="agent"></span>
  <form method="post" action="/dashboard/logout"><button type="submit">Log out</button></form>
</header>
<main>
  <section>
    <h2>Boards</h2>
    <table id="boards">
      <thead><tr>
        <th>Board</th><th>Model</th><th>State</th><th>Lease</th><th>Since</th><th>Job</th><th>Queue</th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section id="pools-section" hidden>
    <h2>Pools</h2>
    <table id="pools">
      <thead><tr><th>Pool</th><th>Boards</th><th>Queue</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Job log <span id="log-title"></span></h2>
    <nav id="running"></nav>
    <div id="log" class="log" aria-live="polite"><p class="empty">No job is running.</p></div>
  </section>
  <section>
    <h2>Last jobs</h2>
    <table id="recent">
      <thead><tr><th>Finished</th><th>Board</th><th>Holder</th><th>Result</th><th>Duration</th><th>Log</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
</body>
</html>
`;

/** A board-green square with a white stripe: the tab's icon, so the browser asks for no /favicon.ico. */
export const PAGE_ICON =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">' +
  '<rect width="16" height="16" rx="3" fill="#1a7f37"/><rect x="3" y="7" width="10" height="2" fill="#fff"/></svg>';

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The login form; `error` says why the last try failed. */
export function loginPage(error?: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rpi-flash lab: log in</title>
<link rel="stylesheet" href="/dashboard/app.css">
<link rel="icon" href="/dashboard/icon.svg" type="image/svg+xml">
</head>
<body class="login">
<form method="post" action="/dashboard/login">
  <h1>rpi-flash lab</h1>
  <p>The dashboard is read-only. Give the agent's token or its read-only dashboard token.</p>
  ${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
  <label>Token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
  <button type="submit">Log in</button>
</form>
</body>
</html>
`;
}
