/* protloc web page: vanilla JS, no external resources. Talks to GET /model and POST /predict. */
(function () {
  "use strict";

  var HPA_RE = /^(.+)_(red|green|blue|yellow)\.(png|tiff?|jpe?g)$/i;
  var PARALLEL = 2;
  var state = { card: null, results: [], queue: [], running: 0, seq: 0 };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function pct(p) { return Math.max(0, Math.min(100, p * 100)); }
  function fmt(p) { return (Math.round(p * 100) / 100).toFixed(2); }
  function mb(n) { return (n / 1048576).toFixed(1) + " MB"; }

  // ---------------------------------------------------------------- status and model card
  function setStatus(ok, text) {
    var s = $("status");
    s.classList.toggle("ok", ok === true);
    s.classList.toggle("bad", ok === false);
    $("status-text").textContent = text;
  }

  function factsTable(rows) {
    var t = el("table", "facts");
    rows.forEach(function (r) {
      if (r[1] === null || r[1] === undefined || r[1] === "") return;
      var tr = el("tr");
      tr.appendChild(el("td", null, r[0]));
      tr.appendChild(el("td", null, r[1]));
      t.appendChild(tr);
    });
    return t;
  }

  function renderCard(card) {
    var body = $("model-body");
    body.textContent = "";
    var kp = el("div", "kpis");
    var v = card.validation || {};
    function kpi(value, label) {
      var k = el("div", "kpi");
      k.appendChild(el("b", null, value === null || value === undefined ? "–" : fmt(value)));
      k.appendChild(el("span", null, label));
      kp.appendChild(k);
    }
    var at = typeof v.threshold === "number" ? " at threshold " + v.threshold : "";
    if (v.macro_f1_tuned !== null && v.macro_f1_tuned !== undefined) {
      kpi(v.macro_f1_tuned, "validation macro F1 (tuned thresholds, as used here)");
      kpi(v.macro_f1, "macro F1" + at);
    } else {
      kpi(v.macro_f1, "validation macro F1" + at);
    }
    var k3 = el("div", "kpi");
    k3.appendChild(el("b", null, card.classes.length));
    k3.appendChild(el("span", null, "compartments"));
    kp.appendChild(k3);
    body.appendChild(kp);

    body.appendChild(el("h3", null, "Input"));
    card.channels.forEach(function (c) {
      var row = el("div", "chan");
      var known = ["red", "green", "blue", "yellow"].indexOf(c.name) >= 0;
      row.appendChild(el("span", "swatch " + (known ? c.name : "other")));
      row.appendChild(el("span", null, c.name + (c.role && c.role !== c.name ? " — " + c.role : "")));
      body.appendChild(row);
    });
    var rd = card.reading || {};
    body.appendChild(factsTable([
      ["image size", card.image_size + " × " + card.image_size + " px (larger images are resized)"],
      ["file layout", card.format],
      ["accepted files", (card.limits.types || []).join(", ") + " (8 or 16 bit, OME-TIFF), ≤ " +
        card.limits.max_upload_mb + " MB each"],
      ["intensity", rd.intensity || null],
      ["pixel size", rd.pixel_size_um ? rd.pixel_size_um + " µm/px in training (" + rd.pixel_size_note + ")"
        : (rd.pixel_size_note || null)],
      ["Z stacks", rd.z_projection ? rd.z_projection + " projection" : null],
      ["unusual images", card.ood ? card.ood.note : null]
    ]));

    body.appendChild(el("h3", null, "Model"));
    body.appendChild(factsTable([
      ["run", card.run],
      ["network", card.backbone],
      ["ensemble", card.ensemble ? card.ensemble + (card.ensemble > 1 ? " models" : " model") : null],
      ["label schema", card.schema],
      ["thresholds", card.thresholds.source + (card.thresholds.method ? " (" + card.thresholds.method + ")" : "")]
    ]));

    body.appendChild(el("h3", null, "Labels and thresholds"));
    var rows = card.classes.map(function (c) {
      var extra = [];
      if (c.f1 !== null && c.f1 !== undefined) extra.push("F1 " + fmt(c.f1));
      if (c.n_positives !== null && c.n_positives !== undefined) extra.push("n=" + c.n_positives);
      return [c.id + " · " + c.name, fmt(c.threshold) + (extra.length ? "  (" + extra.join(", ") + ")" : "")];
    });
    body.appendChild(factsTable(rows));

    var tr = card.training || {};
    var keys = Object.keys(tr);
    if (keys.length) {
      body.appendChild(el("h3", null, "Training"));
      body.appendChild(factsTable(keys.map(function (k) { return [k.replace(/_/g, " "), tr[k]]; })));
    }

    $("drop-hint").textContent = "PNG, TIFF or JPEG with " + card.channels.length + " channels (" +
      card.channels.map(function (c) { return c.name + " = " + c.role; }).join(", ") +
      "), or the HPA channel files <id>_" + card.channels.map(function (c) { return c.name; }).join("/") +
      ".png of an image together. Up to " + card.limits.max_upload_mb + " MB per file.";
  }

  function loadCard() {
    fetch("/model").then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (card) {
      state.card = card;
      renderCard(card);
      setStatus(true, "model ready · " + card.run);
    }).catch(function (e) {
      setStatus(false, "server not reachable");
      $("model-body").textContent = "Could not load the model card (" + e.message + ").";
    });
  }

  // ---------------------------------------------------------------- grouping and queue
  function groupFiles(files) {
    var groups = [], byId = {};
    Array.prototype.forEach.call(files, function (f) {
      var m = HPA_RE.exec(f.name);
      if (m) {
        var key = m[1];
        if (!byId[key]) { byId[key] = { name: key, files: [] }; groups.push(byId[key]); }
        byId[key].files.push(f);
      } else {
        groups.push({ name: f.name, files: [f] });
      }
    });
    return groups;
  }

  function addFiles(files) {
    if (!files || !files.length) return;
    document.body.classList.add("has-results");
    groupFiles(files).forEach(function (g) {
      g.node = makeCard(g.name);
      g.id = ++state.seq;
      $("results").appendChild(g.node);
      state.queue.push(g);
    });
    updateToolbar();
    pump();
  }

  function pump() {
    while (state.running < PARALLEL && state.queue.length) {
      var g = state.queue.shift();
      state.running++;
      send(g).then(function () { state.running--; updateToolbar(); pump(); });
    }
  }

  function send(g) {
    var lim = state.card && state.card.limits;
    if (lim) {
      for (var i = 0; i < g.files.length; i++) {
        if (g.files[i].size > lim.max_upload_mb * 1048576) {
          showError(g, { error: "file too large", detail: g.files[i].name + ": expected at most " +
            lim.max_upload_mb + " MB per file, got " + mb(g.files[i].size) + ". Fix: downscale or crop the image." });
          return Promise.resolve();
        }
      }
    }
    var fd = new FormData();
    g.files.forEach(function (f) { fd.append("files", f, f.name); });
    var q = "preview=true&explain=" + ($("opt-explain").checked ? "true" : "false") +
      "&tta=" + encodeURIComponent($("opt-tta").value);
    return fetch("/predict?" + q, { method: "POST", body: fd }).then(function (r) {
      return r.json().catch(function () { return { error: "HTTP " + r.status, detail: "unexpected answer" }; })
        .then(function (body) {
          if (!r.ok) { showError(g, body); return; }
          body.results.forEach(function (res, k) {
            var node = k === 0 ? g.node : makeCard(res.name);
            if (k > 0) g.node.after(node);
            showResult(node, res, body.classes);
            state.results.push({ gid: g.id, res: res });
          });
        });
    }).catch(function (e) {
      showError(g, { error: "network error", detail: String(e.message || e) + ". Is the server still running?" });
    });
  }

  // ---------------------------------------------------------------- rendering
  function makeCard(name) {
    var node = $("tpl-result").content.firstElementChild.cloneNode(true);
    node.querySelector(".result-name").textContent = name;
    return node;
  }

  function showError(g, body) {
    var node = g.node;
    node.dataset.status = "error";
    var b = node.querySelector(".result-body");
    b.textContent = "";
    var box = el("div", "error-box");
    box.appendChild(el("b", null, body.error || "error"));
    box.appendChild(el("span", "error-detail", body.detail || ""));
    b.appendChild(box);
    var labels = node.querySelector(".labels");
    labels.textContent = "";
    labels.appendChild(el("span", "chip none", "not analysed"));
  }

  function showResult(node, res, classes) {
    node.dataset.status = "done";
    node.dataset.image = res.image;
    node.querySelector(".result-name").textContent = res.name +
      (res.files && res.files.length > 1 ? "  (" + res.files.length + " channel files)" : "");
    var labels = node.querySelector(".labels");
    labels.textContent = "";
    if (!res.labels.length) {
      labels.appendChild(el("span", "chip none", "no compartment above its threshold"));
    }
    res.labels.slice().sort(function (a, b) { return b.probability - a.probability; }).forEach(function (l) {
      var c = el("span", "chip", l.name);
      c.dataset.classId = l.id;
      c.appendChild(el("small", null, fmt(l.probability)));
      labels.appendChild(c);
    });

    var body = node.querySelector(".result-body");
    body.textContent = "";

    // out of distribution: a clear warning before anything else
    if (res.ood_flag) {
      node.dataset.ood = "flagged";
      var warn = el("div", "ood-warning");
      warn.setAttribute("role", "alert");
      warn.appendChild(el("b", null, "This image is unlike the training images"));
      warn.appendChild(el("span", null, " (out-of-distribution score " + res.ood_score.toFixed(2) +
        ", flagged above 1). The probabilities below may be meaningless: check the channel order, " +
        "the stain and that the field is not empty."));
      body.appendChild(warn);
    }
    var inp = res.input || {};
    var facts = [];
    if (inp.intensity) facts.push("intensity: " + inp.intensity);
    facts.push("pixel size: " + (inp.pixel_size_um ? inp.pixel_size_um + " µm/px (" + inp.pixel_size_source + ")"
      : "unknown") + (inp.run_pixel_size_um ? ", training " + inp.run_pixel_size_um + " µm/px" : ""));
    if (inp.geometry) facts.push(inp.geometry);
    if (inp.z_planes > 1) facts.push(inp.z_planes + " Z planes projected");
    if (typeof res.ood_score === "number" && !res.ood_flag) facts.push("OOD score " + res.ood_score.toFixed(2));
    var line = el("p", "input-facts", facts.join(" · "));
    line.title = (inp.notes || []).join("\n");
    body.appendChild(line);

    // images
    var pics = el("div", "pics");
    if (res.composite) {
      var fig = el("figure", "composite");
      var img = el("img");
      img.src = res.composite;
      img.alt = "composite of " + res.name;
      fig.appendChild(img);
      fig.appendChild(el("figcaption", null, "composite · " + res.width + " × " + res.height + " px"));
      pics.appendChild(fig);
      var ch = el("div", "channels");
      (res.channel_images || []).forEach(function (c) {
        var f = el("figure");
        var i = el("img");
        i.src = c.src;
        i.alt = c.name + " channel";
        f.appendChild(i);
        f.appendChild(el("figcaption", null, c.role || c.name));
        f.title = c.name + " channel (" + (c.role || c.name) + "), contrast stretched for display";
        ch.appendChild(f);
      });
      pics.appendChild(ch);
    }
    body.appendChild(pics);

    // probability bars, highest first
    var bars = el("div", "bars-wrap");
    bars.appendChild(el("p", "section-title", "Probability per compartment"));
    var list = el("div", "bars");
    var on = {};
    res.labels.forEach(function (l) { on[l.id] = true; });
    var order = classes.map(function (c, k) { return k; });
    order.sort(function (a, b) { return res.probabilities[classes[b]] - res.probabilities[classes[a]]; });
    order.forEach(function (k) {
      var name = classes[k], p = res.probabilities[name], t = res.thresholds[name];
      var row = el("div", "bar-row" + (on[k] ? " on" : ""));
      row.title = name + ": probability " + fmt(p) + ", threshold " + fmt(t);
      row.appendChild(el("span", "cls", name));
      var track = el("div", "track");
      var fill = el("div", "fill");
      fill.style.width = pct(p) + "%";
      var tick = el("div", "tick");
      tick.style.left = pct(t) + "%";
      track.appendChild(fill);
      track.appendChild(tick);
      row.appendChild(track);
      row.appendChild(el("span", "val", fmt(p)));
      list.appendChild(row);
    });
    bars.appendChild(list);
    var lg = el("div", "legend");
    [["l-on", "predicted (≥ threshold)"], ["l-off", "below threshold"], ["l-tick", "threshold"]].forEach(function (x) {
      var s = el("span");
      s.appendChild(el("i", x[0]));
      s.appendChild(document.createTextNode(x[1]));
      lg.appendChild(s);
    });
    bars.appendChild(lg);
    body.appendChild(bars);

    // grad-cam
    var cams = el("div", "cams");
    if (res.overlays) {
      cams.appendChild(el("p", "section-title", "Grad-CAM: where the model looked"));
      var grid = el("div", "grid");
      res.overlays.slice().sort(function (a, b) { return b.probability - a.probability; }).forEach(function (o) {
        var f = el("figure");
        var i = el("img");
        i.src = o.src;
        i.alt = "Grad-CAM for " + o.name;
        f.appendChild(i);
        f.appendChild(el("figcaption", null, o.name));
        grid.appendChild(f);
      });
      if (!res.overlays.length) grid.appendChild(el("p", "note", "No predicted compartment to explain."));
      cams.appendChild(grid);
    }
    body.appendChild(cams);
  }

  // ---------------------------------------------------------------- toolbar, CSV
  function done() { return state.results.length; }

  function updateToolbar() {
    var cards = document.querySelectorAll(".result").length;
    var pending = document.querySelectorAll('.result[data-status="pending"]').length;
    var errors = document.querySelectorAll('.result[data-status="error"]').length;
    var txt = cards ? done() + " analysed" : "No images yet";
    if (pending) txt += " · " + pending + " waiting";
    if (errors) txt += " · " + errors + " with errors";
    $("count").textContent = txt;
    $("btn-csv").disabled = done() === 0;
    $("btn-clear").disabled = cards === 0 || pending > 0;
  }

  function csvCell(v) {
    var s = String(v);
    if (/^ *[=+\-@\t\r]/.test(s)) s = "'" + s;  // no spreadsheet formulas (as protloc.web.uploads.csv_safe)
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function downloadCsv() {
    if (!done()) return;
    var classes = state.card ? state.card.classes.map(function (c) { return c.name; })
      : Object.keys(state.results[0].res.probabilities);
    var scored = state.results.some(function (x) { return typeof x.res.ood_score === "number"; });
    var lines = [["Image", "Label"].concat(classes).concat(scored ? ["ood_score", "ood_flag"] : [])
      .map(csvCell).join(",")];
    state.results.forEach(function (x) {
      var r = x.res;
      var ood = scored ? [typeof r.ood_score === "number" ? r.ood_score.toFixed(4) : "", r.ood_flag ? 1 : 0] : [];
      lines.push([r.image, r.label].concat(classes.map(function (c) { return r.probabilities[c].toFixed(5); }))
        .concat(ood).map(csvCell).join(","));
    });
    var blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
    var a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "protloc_predictions.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function clearAll() {
    $("results").textContent = "";
    state.results = [];
    document.body.classList.remove("has-results");
    updateToolbar();
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    var dz = $("dropzone"), input = $("file-input");
    dz.addEventListener("click", function (e) { if (e.target.tagName !== "LABEL") input.click(); });
    dz.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach(function (ev) {
      dz.addEventListener(ev, function (e) { e.preventDefault(); dz.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (ev) {
      dz.addEventListener(ev, function (e) { e.preventDefault(); dz.classList.remove("over"); });
    });
    dz.addEventListener("drop", function (e) { addFiles(e.dataTransfer && e.dataTransfer.files); });
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) { e.preventDefault(); });
    input.addEventListener("change", function () {
      addFiles(Array.prototype.slice.call(input.files));
      input.value = "";
    });
    $("btn-csv").addEventListener("click", downloadCsv);
    $("btn-clear").addEventListener("click", clearAll);
    loadCard();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
