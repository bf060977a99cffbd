// Run page: live charts (uPlot), rollout browser, events, files, stop button.
// Data comes from the JSON API; smoothing and downsampling happen on the server (Python).
"use strict";
(() => {
  const { el, fmt, getJSON } = window.roll;
  const PAGE = window.roll.pageData();
  const RUN = PAGE.run_id;
  const RUNS = [RUN, ...PAGE.compare];
  const POLL_MS = 2000;
  const MAX_POINTS = 800;
  const LONG_TEXT = 280;
  const FINISHED = ["completed", "failed", "interrupted", "stopped"];
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79"];
  const DASHES = [[], [7, 4], [2, 3], [9, 3, 2, 3], [1, 2]];
  const api = (run, path) => `/api/runs/${encodeURIComponent(run)}${path}`;

  // ------------------------------------------------------------------ colours (stable per run id)
  function hash(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
    return h >>> 0;
  }
  const RUN_COLOURS = (() => {
    const used = new Set();
    const out = {};
    for (const id of RUNS) {
      let i = hash(id) % PALETTE.length;
      while (used.has(i) && used.size < PALETTE.length) i = (i + 1) % PALETTE.length;
      used.add(i);
      out[id] = PALETTE[i];
    }
    return out;
  })();
  function alpha(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }
  function tint(hex, amount) {
    const n = parseInt(hex.slice(1), 16);
    const mix = (c) => Math.round(c + (255 - c) * amount);
    return `rgb(${mix(n >> 16)}, ${mix((n >> 8) & 255)}, ${mix(n & 255)})`;
  }

  // ------------------------------------------------------------------ state
  const state = {
    xMode: "step",
    smoothing: 0.6,
    zoom: null, // {min, max} in x units while zoomed
    keys: {}, // run -> metric keys
    lastEvent: {}, // run -> last event id seen
    metrics: {}, // run -> last metrics response
    charts: {}, // chart id -> {plot, signature, node}
    ticking: false,
  };

  function chartKeys(spec) {
    const available = new Set(RUNS.flatMap((run) => state.keys[run] || []));
    const left = spec.keys.filter((k) => available.has(k));
    if (spec.prefix) {
      for (const key of [...available].sort()) {
        if (key.startsWith(spec.prefix) && !left.includes(key) && !(spec.exclude || []).includes(key)) left.push(key);
      }
    }
    const right = (spec.right || []).filter((k) => available.has(k));
    return { left, right };
  }

  function allChartKeys() {
    const keys = new Set();
    for (const spec of PAGE.charts) {
      const { left, right } = chartKeys(spec);
      left.concat(right).forEach((k) => keys.add(k));
    }
    return [...keys];
  }

  // ------------------------------------------------------------------ fetching
  async function refreshDetails() {
    for (const run of RUNS) {
      const detail = await getJSON(api(run, `?events_after=${state.lastEvent[run] || 0}`));
      state.keys[run] = detail.metric_keys;
      if (detail.events.length) state.lastEvent[run] = detail.events[detail.events.length - 1].id;
      if (run === RUN) showRun(detail);
    }
  }

  function stepRange(run) {
    if (!state.zoom) return null;
    const { min, max } = state.zoom;
    if (state.xMode === "step") return { start: Math.max(0, Math.floor(min)), end: Math.max(0, Math.ceil(max)) };
    const data = state.metrics[run];
    if (!data) return null;
    const origin = data.wall_origin;
    const inside = data.step.filter((s, i) => data.wall_time[i] !== null && data.wall_time[i] - origin >= min && data.wall_time[i] - origin <= max);
    return inside.length ? { start: inside[0], end: inside[inside.length - 1] } : null;
  }

  async function refreshMetrics() {
    const keys = allChartKeys();
    if (!keys.length) {
      drawCharts(); // placeholders until the run logs its first metrics
      return;
    }
    const ranges = Object.fromEntries(RUNS.map((run) => [run, stepRange(run)]));
    for (const run of RUNS) {
      const params = new URLSearchParams({ keys: keys.join(","), max_points: MAX_POINTS, smoothing: state.smoothing });
      const range = ranges[run];
      if (range) {
        params.set("start", range.start);
        params.set("end", range.end);
      }
      state.metrics[run] = await getJSON(api(run, `/metrics?${params}`));
    }
    drawCharts();
  }

  // ------------------------------------------------------------------ charts
  function xValues(data) {
    if (state.xMode === "step") return data.step;
    return data.wall_time.map((w) => (w === null ? null : w - data.wall_origin));
  }

  // One run's aligned table [x, ...ys] for a chart, and the series options that go with it.
  function runTable(run, spec, keys, compare) {
    const data = state.metrics[run];
    const x = xValues(data);
    const keep = x.map((v, i) => (v === null ? -1 : i)).filter((i) => i >= 0);
    const pick = (arr) => keep.map((i) => arr[i]);
    const columns = [pick(x)];
    const series = [];
    const all = keys.left.concat(keys.right);
    const stacked = spec.stacked && !compare;
    let total = null;
    all.forEach((key, j) => {
      const s = data.series[key];
      if (!s) return;
      const colour = compare ? RUN_COLOURS[run] : PALETTE[j % PALETTE.length];
      const dash = compare ? DASHES[j % DASHES.length] : [];
      const scale = keys.right.includes(key) ? "r" : "y";
      const name = compare ? `${key} · ${run}` : key;
      if (stacked) {
        const raw = pick(s.value);
        total = raw.map((v, i) => (v === null && (total === null || total[i] === null) ? null : (v || 0) + ((total && total[i]) || 0)));
        columns.push(total);
        series.push({ label: name, stroke: colour, fill: tint(colour, 0.45), width: 1, scale, raw, spanGaps: true });
        return;
      }
      const smooth = state.smoothing > 0;
      columns.push(pick(s.value));
      series.push({ label: smooth ? `${name} (raw)` : name, stroke: smooth ? alpha(colour, 0.3) : colour, width: smooth ? 1 : 1.5, dash, scale, spanGaps: true });
      if (smooth) {
        columns.push(pick(s.smoothed));
        series.push({ label: name, stroke: colour, width: 2, dash, scale, spanGaps: true });
      }
    });
    if (stacked) {
      // draw the largest sum first so each smaller one paints over it: a stacked area chart
      columns.splice(1, columns.length - 1, ...columns.slice(1).reverse());
      series.reverse();
      series.forEach((s) => {
        const raw = s.raw;
        delete s.raw;
        s.value = (u, v, si, i) => (i === null || i === undefined ? "–" : fmt(raw[i]));
      });
    }
    return { columns, series };
  }

  function chartData(spec) {
    const keys = chartKeys(spec);
    if (!keys.left.length && !keys.right.length) return null;
    const compare = RUNS.length > 1;
    const runs = RUNS.filter((run) => state.metrics[run]);
    if (!runs.length) return null;
    const parts = runs.map((run) => runTable(run, spec, keys, compare));
    const data = parts.length === 1 ? parts[0].columns : uPlot.join(parts.map((p) => p.columns));
    const series = parts.flatMap((p) => p.series);
    const primary = state.metrics[RUN];
    let lastStep = null;
    if (primary) {
      primary.step.forEach((step, i) => {
        if (keys.left.concat(keys.right).some((k) => primary.series[k] && primary.series[k].value[i] !== null)) lastStep = step;
      });
    }
    return { data, series, keys, lastStep };
  }

  function makeChart(node, spec, built) {
    const width = Math.max(300, node.clientWidth - 4);
    const axes = [
      { label: state.xMode === "step" ? "step" : "seconds since start" },
      { scale: "y", size: 60 },
    ];
    if (built.keys.right.length) axes.push({ scale: "r", side: 1, size: 50, grid: { show: false } });
    const options = {
      width,
      height: 230,
      title: spec.title,
      scales: { x: { time: false }, y: { range: padRange }, r: { range: padRange } },
      series: [{ label: state.xMode === "step" ? "step" : "s" }, ...built.series],
      axes,
      cursor: { drag: { x: true, y: false }, sync: { key: "roll-run" } },
      legend: { live: true },
      hooks: { setSelect: [onSelect] },
    };
    const plot = new uPlot(options, built.data, node);
    plot.over.addEventListener("dblclick", () => {
      state.zoom = null;
      tick(true);
    });
    return plot;
  }

  // a flat series (all zeros) gets a small band around it instead of uPlot's 0..100
  function padRange(u, min, max) {
    if (min === null || max === null) return [0, 1];
    if (min === max) return [min - Math.max(1, Math.abs(min) * 0.1), max + Math.max(1, Math.abs(max) * 0.1)];
    return uPlot.rangeNum(min, max, 0.1, true);
  }

  function onSelect(u) {
    if (u.select.width < 4) return;
    const min = u.posToVal(u.select.left, "x");
    const max = u.posToVal(u.select.left + u.select.width, "x");
    state.zoom = { min, max };
    for (const chart of Object.values(state.charts)) {
      if (chart.plot !== u) chart.plot.setScale("x", { min, max });
    }
    tick(true); // fetch the zoomed range at full resolution
  }

  function drawCharts() {
    const grid = document.getElementById("chart-grid");
    for (const spec of PAGE.charts) {
      const built = chartData(spec);
      let chart = state.charts[spec.id];
      if (!built) {
        if (!chart) {
          const node = el("div", { class: "chart empty", id: `chart-${spec.id}`, "data-chart": spec.id },
            el("div", { class: "chart-title", text: spec.title }), el("p", { text: `no data (yet): ${spec.keys.concat(spec.right || []).join(", ")}` }));
          grid.append(node);
          state.charts[spec.id] = { node, plot: null, signature: null };
        }
        continue;
      }
      const signature = JSON.stringify([state.xMode, built.series.map((s) => s.label), built.keys]);
      if (!chart) {
        const node = el("div", { class: "chart", id: `chart-${spec.id}`, "data-chart": spec.id });
        grid.append(node);
        chart = state.charts[spec.id] = { node, plot: null, signature: null };
      }
      if (chart.signature !== signature) {
        if (chart.plot) chart.plot.destroy();
        chart.node.replaceChildren();
        chart.node.className = "chart";
        chart.plot = makeChart(chart.node, spec, built);
        chart.signature = signature;
      } else {
        chart.plot.setData(built.data, !state.zoom);
      }
      if (state.zoom) chart.plot.setScale("x", { min: state.zoom.min, max: state.zoom.max });
      chart.node.dataset.x = state.xMode;
      chart.node.dataset.points = built.data[0].length;
      chart.node.dataset.lastStep = built.lastStep === null ? "" : built.lastStep;
    }
  }

  function resizeCharts() {
    for (const chart of Object.values(state.charts)) {
      if (chart.plot) chart.plot.setSize({ width: Math.max(300, chart.node.clientWidth - 4), height: 230 });
    }
  }

  function showLegend() {
    if (RUNS.length < 2) return;
    const box = document.getElementById("legend-runs");
    box.replaceChildren(
      ...RUNS.map((run) => el("span", { class: "run-chip", style: `border-color: ${RUN_COLOURS[run]}` }, el("i", { style: `background: ${RUN_COLOURS[run]}` }), run)),
    );
  }

  // ------------------------------------------------------------------ run header and events
  function showRun(detail) {
    const run = detail.run;
    const badge = document.getElementById("run-status");
    badge.textContent = run.status;
    badge.className = `status status-${run.status}`;
    document.getElementById("run-step").textContent = run.last_step === null ? "–" : run.last_step;
    if (detail.stop_requested) document.getElementById("stop-state").textContent = "stop requested";
    document.getElementById("stop-button").disabled = FINISHED.includes(run.status);
    const body = document.getElementById("events-body");
    for (const event of detail.events) {
      body.append(
        el("tr", { "data-event": event.id }, el("td", { text: roll.fmtTime(event.time) }), el("td", { text: event.step ?? "" }),
          el("td", { text: event.kind }), el("td", { text: event.message })),
      );
    }
  }

  async function loadFiles() {
    const { files } = await getJSON(api(RUN, "/files"));
    const list = document.getElementById("files-list");
    list.replaceChildren(
      ...files.map((f) => el("li", {}, el("a", { href: api(RUN, `/files/${f.path.split("/").map(encodeURIComponent).join("/")}`), text: f.path }), ` (${f.bytes} bytes)`)),
    );
  }

  async function requestStop() {
    const note = document.getElementById("stop-state");
    if (!roll.token()) {
      note.textContent = "set the token first (top right)";
      return;
    }
    if (!window.confirm(`Request a stop of ${RUN}?`)) return;
    const { status, data } = await roll.post(api(RUN, "/stop"));
    note.textContent = status === 202 ? "stop requested" : `refused: ${data.detail || status}`;
  }

  // ------------------------------------------------------------------ rollouts
  const rollouts = { steps: [], index: -1, follow: true, loaded: "", signature: "" };

  function rolloutQuery() {
    return {
      sort: document.getElementById("rollout-sort").value,
      order: document.getElementById("rollout-order").value,
      q: document.getElementById("rollout-search").value.trim(),
    };
  }

  async function refreshSteps() {
    const { steps } = await getJSON(api(RUN, "/steps"));
    const slider = document.getElementById("step-slider");
    if (steps.join(",") !== rollouts.steps.join(",")) {
      rollouts.steps = steps;
      slider.max = Math.max(0, steps.length - 1);
      if (rollouts.follow || rollouts.index < 0 || rollouts.index >= steps.length) rollouts.index = steps.length - 1;
      slider.value = Math.max(0, rollouts.index);
    }
    await loadRollouts(false);
  }

  async function loadRollouts(force) {
    const step = rollouts.steps[rollouts.index];
    document.getElementById("step-value").textContent = step === undefined ? "no rollouts yet" : `step ${step}`;
    if (step === undefined) return;
    const query = rolloutQuery();
    const key = JSON.stringify([step, query]);
    const latest = rollouts.index === rollouts.steps.length - 1;
    if (!force && key === rollouts.loaded && !latest) return; // old steps do not change
    const params = new URLSearchParams({ step, ...query });
    const data = await getJSON(api(RUN, `/rollouts?${params}`));
    const signature = JSON.stringify(data.groups);
    if (key === rollouts.loaded && signature === rollouts.signature) return; // keep expanded texts open
    rollouts.loaded = key;
    rollouts.signature = signature;
    renderRollouts(data);
  }

  function longText(text, cls) {
    const full = text ?? "";
    const box = el("div", { class: cls });
    const body = el("span", { text: full.length > LONG_TEXT ? `${full.slice(0, LONG_TEXT)}…` : full });
    box.append(body);
    if (full.length > LONG_TEXT) {
      const button = el("button", { type: "button", class: "expand", text: "expand" });
      button.addEventListener("click", () => {
        const open = button.textContent === "expand";
        body.textContent = open ? full : `${full.slice(0, LONG_TEXT)}…`;
        button.textContent = open ? "collapse" : "expand";
      });
      box.append(" ", button);
    }
    return box;
  }

  function renderRollouts(data) {
    document.getElementById("rollout-count").textContent = `${data.matched_rows} of ${data.rows} completions`;
    const groups = data.groups.map((group) => {
      const rows = group.samples.map((s) =>
        el("tr", { class: s.match ? "sample match" : "sample", "data-sample": s.sample_id },
          el("td", { class: "sid", text: s.sample_id }), el("td", {}, longText(s.response, "response")),
          el("td", { class: "num", text: fmt(s.reward) }), el("td", { class: "num", text: fmt(s.advantage) }),
          el("td", { text: s.state ?? "" })));
      const head = el("tr", {}, ...["sample", "completion", "reward", "advantage", "state"].map((h) => el("th", { text: h })));
      return el("div", { class: "group", "data-group": group.group_id ?? "" },
        el("div", { class: "group-head", text: `group ${group.group_id ?? "–"} · ${group.samples.length} completions · mean reward ${fmt(group.mean_reward)}` }),
        longText(group.prompt, group.prompt_match ? "prompt match" : "prompt"),
        el("table", { class: "samples" }, el("thead", {}, head), el("tbody", {}, ...rows)));
    });
    const box = document.getElementById("rollout-groups");
    box.replaceChildren(...(groups.length ? groups : [el("p", { class: "empty", text: "no completions match" })]));
    box.dataset.step = data.step;
  }

  // ------------------------------------------------------------------ loop
  async function tick(force) {
    if (state.ticking && !force) return;
    state.ticking = true;
    const live = document.getElementById("live-state");
    try {
      await refreshDetails();
      await refreshMetrics();
      await refreshSteps();
      live.textContent = `updated ${new Date().toLocaleTimeString()}`;
      live.className = "live";
    } catch (error) {
      live.textContent = `not updated: ${error.message}`;
      live.className = "live bad";
    } finally {
      state.ticking = false;
    }
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    showLegend();
    const smoothing = document.getElementById("smoothing");
    const smoothingValue = document.getElementById("smoothing-value");
    smoothing.addEventListener("input", () => {
      state.smoothing = Number(smoothing.value);
      smoothingValue.textContent = state.smoothing.toFixed(2);
    });
    smoothing.addEventListener("input", debounce(() => tick(true), 150));
    document.getElementById("x-axis").addEventListener("change", (event) => {
      state.xMode = event.target.value;
      state.zoom = null;
      tick(true);
    });
    const slider = document.getElementById("step-slider");
    const follow = document.getElementById("follow-latest");
    slider.addEventListener("input", () => {
      rollouts.index = Number(slider.value);
      rollouts.follow = rollouts.index === rollouts.steps.length - 1 && follow.checked;
      if (!rollouts.follow) follow.checked = false;
      loadRollouts(true);
    });
    follow.addEventListener("change", () => {
      rollouts.follow = follow.checked;
      if (follow.checked) {
        rollouts.index = rollouts.steps.length - 1;
        slider.value = Math.max(0, rollouts.index);
        loadRollouts(true);
      }
    });
    for (const id of ["rollout-sort", "rollout-order"]) document.getElementById(id).addEventListener("change", () => loadRollouts(true));
    document.getElementById("rollout-search").addEventListener("input", debounce(() => loadRollouts(true), 200));
    document.getElementById("stop-button").addEventListener("click", requestStop);
    window.addEventListener("resize", debounce(resizeCharts, 100));
    loadFiles().catch(() => {});
    tick(true);
    setInterval(() => {
      if (!document.hidden) tick(false);
    }, POLL_MS);
  });
})();
