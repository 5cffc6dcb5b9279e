// jrd: carries an open JupyterLab tab through a restart of Jupyter.
//
// While Jupyter is down, jrd's nginx answers JupyterLab's requests with 503 and
// an "X-Jrd-Restarting" header.  On the first such answer this script shows a
// banner, waits until Jupyter answers again, then gives every open notebook and
// console whose kernel went with the old Jupyter a new kernel of the same kind
// (the documents stay open; variables are gone, as after any kernel restart),
// and clears JupyterLab's "server connection error" and "kernel died" dialogs,
// which the banner and the new kernels made moot.
// It needs JupyterLab's app object, which jrd exposes (LabApp.expose_app_in_browser).
(function () {
  "use strict";
  if (window.jrdHeal) return;
  var nativeFetch = window.fetch.bind(window);
  var POLL_MS = 1000;
  // What happened, for people and tests: each banner shown, in order.
  var state = { down: false, heals: 0, lastError: "", history: [] };
  var kernelNames = new Map();
  var banner = null;
  window.jrdHeal = state;

  function baseUrl() {
    var node = document.getElementById("jupyter-config-data");
    try {
      return (node && JSON.parse(node.textContent).baseUrl) || "/";
    } catch (e) {
      return "/";
    }
  }

  function show(text, kind) {
    if (!document.body) return;
    if (!banner) {
      banner = document.createElement("div");
      banner.id = "jrd-heal-banner";
      banner.setAttribute("role", "status");
      banner.setAttribute("aria-live", "polite");
      banner.style.cssText =
        "position:fixed;top:8px;left:50%;transform:translateX(-50%);z-index:100000;" +
        "padding:8px 16px;border-radius:6px;font:14px/1.4 system-ui,sans-serif;" +
        "box-shadow:0 2px 8px rgba(0,0,0,.3);max-width:90vw;text-align:center;";
      document.body.appendChild(banner);
    }
    banner.dataset.state = kind;
    state.history.push(kind);
    banner.style.background = kind === "down" ? "#fff3cd" : "#d1e7dd";
    banner.style.color = "#1e1e1e";
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideLater(ms) {
    setTimeout(function () {
      if (banner && !state.down) banner.hidden = true;
    }, ms);
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // [widget, sessionContext] for every open notebook and console.
  function sessionContexts() {
    var app = window.jupyterapp;
    if (!app || !app.shell) return [];
    var out = [];
    Array.from(app.shell.widgets("main")).forEach(function (widget) {
      var ctx = widget.sessionContext;
      if (ctx && !ctx.isDisposed) out.push([widget, ctx]);
    });
    return out;
  }

  function kernelName(widget, ctx) {
    var kernel = ctx.session && ctx.session.kernel;
    if (kernel && kernel.name) return kernel.name;
    var model = widget.content && widget.content.model;
    var spec = model && model.getMetadata && model.getMetadata("kernelspec");
    return (spec && spec.name) || (ctx.kernelPreference && ctx.kernelPreference.name) || "";
  }

  // Kernel names are read while they are known: a session may be gone before the heal.
  function remember() {
    sessionContexts().forEach(function (pair) {
      var name = kernelName(pair[0], pair[1]);
      if (name) kernelNames.set(pair[1], name);
    });
  }

  // Errors that the outage itself caused: the file browser's refresh that failed meanwhile says
  // "Directory not found", the kernels' say "died".
  var MOOT_DIALOGS = /server connection error|kernel (died|restarting)|error starting kernel|directory not found/i;

  function dismissMootDialogs() {
    document.querySelectorAll(".jp-Dialog").forEach(function (dialog) {
      if (!MOOT_DIALOGS.test(dialog.textContent || "")) return;
      var buttons = dialog.querySelectorAll(".jp-Dialog-button");
      var ok = dialog.querySelector(".jp-Dialog-button.jp-mod-accept") || buttons[buttons.length - 1];
      if (ok) ok.click();
    });
  }

  async function sweepMootDialogs(ms) {
    for (var waited = 0; waited < ms && !state.down; waited += 400) {
      dismissMootDialogs();
      await sleep(400);
    }
  }

  async function sessionAlive(ctx) {
    var session = ctx.session;
    if (!session) return false;
    var url = baseUrl() + "api/sessions/" + encodeURIComponent(session.id);
    var response = await nativeFetch(url, { cache: "no-store", credentials: "same-origin" });
    return response.ok;
  }

  async function giveNewKernel(widget, ctx) {
    if (await sessionAlive(ctx)) return false;
    var name = kernelNames.get(ctx) || kernelName(widget, ctx);
    if (!name) return false;
    if (ctx.session) ctx.session.dispose();  // the old Jupyter's session; the server forgot it
    await ctx.changeKernel({ name: name });
    return true;
  }

  async function heal() {
    var started = 0;
    var pairs = sessionContexts();
    for (var i = 0; i < pairs.length; i++) {
      try {
        if (await giveNewKernel(pairs[i][0], pairs[i][1])) started++;
      } catch (e) {
        state.lastError = String(e);
      }
    }
    return started;
  }

  async function waitUntilBack() {
    var url = baseUrl() + "api/status";
    for (;;) {
      await sleep(POLL_MS);
      dismissMootDialogs();  // the banner says what they would, without blocking the page
      try {
        var response = await nativeFetch(url, { cache: "no-store", credentials: "same-origin" });
        if (response.ok) return;
        if (response.status === 403 || response.status === 401) {
          window.location.reload();  // the login did not survive: the login page, then back here
          return;
        }
      } catch (e) {
        // nginx itself unreachable for a moment: keep waiting
      }
    }
  }

  async function noticeDown() {
    if (state.down) return;
    state.down = true;
    remember();
    show("Jupyter is restarting\u2026 your notebooks stay open; this tab reconnects by itself.", "down");
    await waitUntilBack();
    var started = await heal();
    state.down = false;
    state.heals++;
    show(started ? "Jupyter is back. Kernels were restarted: run your cells again to rebuild variables."
                 : "Jupyter is back.", "up");
    // A "kernel died" or "directory not found" dialog can come some seconds after the heal (the
    // file browser refreshes every 10 s or so); clear those too, meanwhile.
    sweepMootDialogs(12000);
    hideLater(6000);
  }

  window.fetch = function () {
    return nativeFetch.apply(window, arguments).then(function (response) {
      if (response.status === 503 && response.headers.get("X-Jrd-Restarting")) noticeDown();
      return response;
    });
  };
  setInterval(function () { if (!state.down) remember(); }, 5000);
})();
