/*
 * Edge Inspector: the Lovelace card for one inspection station, its visual editor, and the
 * `custom:edge-inspector` dashboard strategy (a card for every station).
 *
 * Served by the integration itself (/edge_inspector_frontend/edge-inspector-card.js) and loaded
 * into every browser as an extra module: nothing to install. Plain custom elements, no build
 * step; the figures come from the integration's websocket command
 * `edge_inspector/station_overview` (the engine's store), the picture from the station's image
 * entity, and colours from the Home Assistant theme (light and dark).
 *
 *   type: custom:edge-inspector-card
 *   station_id: s_...            # required (the editor lists the stations)
 *   title: Press                 # optional, default: the station's name
 *   hours: 8                     # chart span
 *   bucket_minutes: 15           # chart resolution
 *   show_chart: true
 *   show_report: true
 */

const VERSION = "0.1.0";
const CARD = "edge-inspector-card";
const EDITOR = "edge-inspector-card-editor";

const fmtPercent = (value) =>
  value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} %`;
const fmtTime = (iso) => {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString([], { hour: "2-digit", minute: "2-digit", day: "numeric", month: "short" });
};
const esc = (text) =>
  String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const STYLE = `
  ha-card { overflow: hidden; }
  .header { display: flex; align-items: center; justify-content: space-between; padding: 12px 16px 4px; }
  .title { font-size: 1.25em; font-weight: 500; color: var(--primary-text-color); }
  .chip { font-size: 0.8em; padding: 2px 10px; border-radius: 12px; color: var(--text-primary-color, #fff); }
  .chip.running { background: var(--success-color, #43a047); }
  .chip.off { background: var(--disabled-color, #9e9e9e); }
  .chip.unavailable { background: var(--error-color, #db4437); }
  .picture { position: relative; background: var(--secondary-background-color); min-height: 120px; }
  .picture img { display: block; width: 100%; height: auto; }
  .picture .empty { padding: 48px 16px; text-align: center; color: var(--secondary-text-color); }
  .picture .caption { position: absolute; left: 0; right: 0; bottom: 0; padding: 4px 12px;
    background: rgba(0, 0, 0, 0.55); color: #fff; font-size: 0.9em; }
  .counters { display: grid; grid-template-columns: repeat(4, 1fr); gap: 4px; padding: 12px 16px; }
  .counter { text-align: center; }
  .counter .value { font-size: 1.4em; font-weight: 500; color: var(--primary-text-color); }
  .counter .label { font-size: 0.75em; color: var(--secondary-text-color); text-transform: uppercase; }
  .counter.bad .value { color: var(--error-color, #db4437); }
  .chart { padding: 0 16px 8px; }
  .chart svg { width: 100%; height: 90px; display: block; }
  .chart .bar { fill: var(--primary-color); }
  .chart .bar.fail { fill: var(--error-color, #db4437); }
  .chart .axis { stroke: var(--divider-color); stroke-width: 1; }
  .chart text { fill: var(--secondary-text-color); font-size: 9px; }
  .chart .legend { display: flex; justify-content: space-between; font-size: 0.75em; color: var(--secondary-text-color); }
  .report { padding: 8px 16px; border-top: 1px solid var(--divider-color); color: var(--primary-text-color); }
  .report h3 { margin: 4px 0; font-size: 1em; font-weight: 500; }
  .report .meta { font-size: 0.85em; color: var(--secondary-text-color); }
  .report ol { margin: 4px 0 4px 20px; padding: 0; }
  .report .verdict { display: inline-block; margin: 4px 0; padding: 1px 8px; border-radius: 10px;
    font-size: 0.8em; color: var(--text-primary-color, #fff); background: var(--disabled-color, #9e9e9e); }
  .report .verdict.confirmed { background: var(--error-color, #db4437); }
  .report .verdict.disputed { background: var(--warning-color, #ffa600); }
  .report .verdict.reclassified { background: var(--info-color, #039be5); }
  .actions { display: flex; gap: 8px; justify-content: flex-end; padding: 8px 16px 12px;
    border-top: 1px solid var(--divider-color); }
  button { font: inherit; border: none; border-radius: 4px; padding: 6px 14px; cursor: pointer;
    background: var(--primary-color); color: var(--text-primary-color, #fff); }
  button.secondary { background: transparent; color: var(--primary-color); border: 1px solid var(--primary-color); }
  button[disabled] { opacity: 0.4; cursor: default; }
  .error { padding: 12px 16px; color: var(--error-color, #db4437); }
`;

// The model's verdict on the detector's call, as the card says it.
const verdictText = (last) => {
  const said = last.classification?.defect_type;
  return {
    confirmed: `Model confirms: ${last.defect_class}`,
    disputed: "Model sees no defect",
    reclassified: said && said !== "other" ? `Model says: ${said}` : "Model says: another kind of defect",
    unconfirmed: "Not confirmed by the model in time",
  }[last.vlm_verdict];
};

class EdgeInspectorCard extends HTMLElement {
  constructor() {
    super();
    this.attachShadow({ mode: "open" });
    this._overview = null;
    this._error = null;
    this._watch = {};
    this._timer = null;
    this._busy = false;
  }

  static getConfigElement() {
    return document.createElement(EDITOR);
  }

  static async getStubConfig(hass) {
    const { stations } = await hass.callWS({ type: "edge_inspector/stations" });
    return { station_id: stations.length ? stations[0].station_id : "" };
  }

  setConfig(config) {
    if (!config || !config.station_id) {
      throw new Error("Choose a station (station_id)");
    }
    this._config = { hours: 8, bucket_minutes: 15, show_chart: true, show_report: true, ...config };
    this._overview = null;
    if (this._hass) this._refresh();
  }

  set hass(hass) {
    const first = !this._hass;
    this._hass = hass;
    if (first) {
      this._refresh();
      this._interval = setInterval(() => this._refresh(), 60000);
      return;
    }
    // Refetch when one of the station's entities changed (new inspection, incident, state).
    let changed = false;
    for (const [entityId, stamp] of Object.entries(this._watch)) {
      const state = hass.states[entityId];
      if (state && state.last_updated !== stamp) changed = true;
    }
    if (changed) this._schedule();
    else this._renderPicture();
  }

  disconnectedCallback() {
    clearInterval(this._interval);
    this._interval = null;
  }

  connectedCallback() {
    if (this._hass && !this._interval) {
      this._interval = setInterval(() => this._refresh(), 60000);
      this._refresh();
    }
  }

  getCardSize() {
    return 9;
  }

  getGridOptions() {
    return { columns: 12, min_columns: 6, rows: "auto" };
  }

  _schedule() {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._refresh(), 300);
  }

  async _refresh() {
    if (!this._hass || !this._config) return;
    try {
      this._overview = await this._hass.callWS({
        type: "edge_inspector/station_overview",
        station_id: this._config.station_id,
        hours: this._config.hours,
        bucket_minutes: this._config.bucket_minutes,
      });
      this._error = null;
    } catch (err) {
      this._error = err && err.message ? err.message : String(err);
    }
    this._watch = {};
    for (const entityId of Object.values(this._overview?.entities || {})) {
      const state = this._hass.states[entityId];
      if (state) this._watch[entityId] = state.last_updated;
    }
    this._render();
  }

  _imageEntity() {
    const entities = this._overview?.entities || {};
    const key = Object.keys(entities).find((k) => k.startsWith("image."));
    return key ? entities[key] : null;
  }

  _renderPicture() {
    const holder = this.shadowRoot.querySelector(".picture");
    if (!holder || !this._overview) return;
    const entityId = this._imageEntity();
    const state = entityId ? this._hass.states[entityId] : null;
    const url = state?.attributes?.entity_picture;
    const last = this._overview.last_incident;
    if (!url || !last) {
      holder.innerHTML = `<div class="empty">No defect yet</div>`;
      return;
    }
    const src = this._hass.hassUrl(url);
    const img = holder.querySelector("img");
    if (img && img.dataset.src === src) return;
    holder.innerHTML = `<img alt="Last defect" data-src="${esc(src)}" src="${esc(src)}">
      <div class="caption">${esc(last.defect_class)} · ${Math.round(last.confidence * 100)} % · ${esc(fmtTime(last.created_at))}</div>`;
  }

  _chart() {
    const points = this._overview.series.points;
    if (!points.length) return "";
    const width = 300;
    const height = 80;
    const top = 10;
    const max = Math.max(0.05, ...points.map((p) => p.rate));
    const step = width / points.length;
    const bars = points
      .map((p, i) => {
        const h = ((height - top) * p.rate) / max;
        const cls = p.incidents ? "bar fail" : "bar";
        return `<rect class="${cls}" x="${(i * step + 1).toFixed(1)}" y="${(height - h).toFixed(1)}"
          width="${Math.max(1, step - 2).toFixed(1)}" height="${h.toFixed(1)}"><title>${esc(fmtTime(p.start))}: ${p.failed}/${p.inspections} failed, ${p.incidents} incidents</title></rect>`;
      })
      .join("");
    return `<div class="chart" data-points="${points.length}">
      <svg viewBox="0 0 ${width} ${height + 2}" preserveAspectRatio="none" role="img"
        aria-label="Defect rate per ${this._overview.series.bucket_minutes} minutes">
        <line class="axis" x1="0" y1="${height}" x2="${width}" y2="${height}"></line>
        ${bars}
        <text x="2" y="8">${(max * 100).toFixed(0)} %</text>
      </svg>
      <div class="legend"><span>${esc(fmtTime(points[0].start))}</span>
        <span>defect rate, last ${this._config.hours} h</span><span>now</span></div>
    </div>`;
  }

  _report() {
    const last = this._overview.last_incident;
    if (!last) return `<div class="report"><span class="meta">No incidents recorded.</span></div>`;
    const report = last.report;
    const verdict = verdictText(last);
    const steps = (report?.fix_steps || []).map((s) => `<li>${esc(s)}</li>`).join("");
    const refs = (report?.manual_refs || [])
      .map((r) => esc([r.file, r.section, r.page ? `p. ${r.page}` : ""].filter(Boolean).join(" – ")))
      .join("; ");
    let body;
    if (report) {
      body = `<p class="summary">${esc(report.summary)}</p>
        <div class="meta">Probable cause: ${esc(report.probable_cause)}</div>
        ${steps ? `<ol>${steps}</ol>` : ""}
        ${refs ? `<div class="meta">Manual: ${refs}</div>` : ""}`;
    } else if (last.vlm_status) {
      body = `<p class="summary meta">Report: ${esc(last.vlm_status)}</p>`;
    } else {
      body = `<p class="summary meta">No report (the vision-language model is not configured).</p>`;
    }
    return `<div class="report">
      <h3>${esc(last.defect_class)} on ${esc(last.station)}</h3>
      <div class="meta">${esc(fmtTime(last.created_at))} · ${Math.round(last.confidence * 100)} %${last.part_id ? ` · part ${esc(last.part_id)}` : ""} · ${esc(last.state)}</div>
      ${verdict ? `<div class="verdict ${esc(last.vlm_verdict)}" data-verdict="${esc(last.vlm_verdict)}">${esc(verdict)}</div>` : ""}
      ${body}
    </div>`;
  }

  _render() {
    const root = this.shadowRoot;
    if (this._error && !this._overview) {
      root.innerHTML = `<style>${STYLE}</style><ha-card><div class="error">Edge Inspector: ${esc(this._error)}</div></ha-card>`;
      return;
    }
    if (!this._overview) {
      root.innerHTML = `<style>${STYLE}</style><ha-card><div class="empty">Loading…</div></ha-card>`;
      return;
    }
    const o = this._overview;
    const status = !o.available ? "unavailable" : o.enabled ? "running" : "off";
    const today = o.today;
    const rate = today.defect_rate_percent;
    const last = o.last_incident;
    const canAck = last && last.state === "open";
    root.innerHTML = `<style>${STYLE}</style>
      <ha-card>
        <div class="header">
          <span class="title">${esc(this._config.title || o.station)}</span>
          <span class="chip ${status}" title="${esc(o.error || "")}">${status}</span>
        </div>
        <div class="picture"></div>
        <div class="counters">
          <div class="counter" data-counter="inspections"><div class="value">${today.inspections}</div><div class="label">Inspected today</div></div>
          <div class="counter ${today.failed ? "bad" : ""}" data-counter="failed"><div class="value">${today.failed}</div><div class="label">Failed</div></div>
          <div class="counter" data-counter="rate"><div class="value">${fmtPercent(rate)}</div><div class="label">Defect rate</div></div>
          <div class="counter" data-counter="yield"><div class="value">${fmtPercent(today.yield_percent)}</div><div class="label">Yield</div></div>
        </div>
        ${this._config.show_chart ? this._chart() : ""}
        ${this._config.show_report ? this._report() : ""}
        ${this._error ? `<div class="error">${esc(this._error)}</div>` : ""}
        <div class="actions">
          <button class="secondary" data-action="acknowledge" ${canAck ? "" : "disabled"}>Acknowledge</button>
          <button data-action="inspect" ${o.available && o.device_id ? "" : "disabled"}>Inspect now</button>
        </div>
      </ha-card>`;
    this._renderPicture();
    root.querySelector('[data-action="inspect"]').addEventListener("click", () => this._inspect());
    root.querySelector('[data-action="acknowledge"]').addEventListener("click", () => this._acknowledge());
  }

  async _call(button, service, data) {
    if (this._busy) return;
    this._busy = true;
    button.disabled = true;
    try {
      await this._hass.callService("edge_inspector", service, data);
      this._error = null;
    } catch (err) {
      this._error = `${service}: ${err && err.message ? err.message : err}`;
    } finally {
      this._busy = false;
    }
    await this._refresh();
  }

  _inspect() {
    const button = this.shadowRoot.querySelector('[data-action="inspect"]');
    return this._call(button, "inspect", { device_id: this._overview.device_id });
  }

  _acknowledge() {
    const button = this.shadowRoot.querySelector('[data-action="acknowledge"]');
    const last = this._overview.last_incident;
    return this._call(button, "acknowledge", { incident_id: last.incident_id, state: "acknowledged" });
  }
}

class EdgeInspectorCardEditor extends HTMLElement {
  constructor() {
    super();
    this._stations = null;
  }

  setConfig(config) {
    this._config = { ...config };
    this._render();
  }

  set hass(hass) {
    this._hass = hass;
    if (this._stations === null) {
      this._stations = [];
      hass.callWS({ type: "edge_inspector/stations" }).then(({ stations }) => {
        this._stations = stations;
        this._render();
      });
    }
    if (this._form) this._form.hass = hass;
  }

  _schema() {
    return [
      {
        name: "station_id",
        required: true,
        selector: {
          select: {
            mode: "dropdown",
            options: (this._stations || []).map((s) => ({
              value: s.station_id,
              label: s.line ? `${s.name} (${s.line})` : s.name,
            })),
          },
        },
      },
      { name: "title", selector: { text: {} } },
      { name: "hours", selector: { number: { min: 1, max: 168, mode: "box", unit_of_measurement: "h" } } },
      { name: "bucket_minutes", selector: { number: { min: 1, max: 240, mode: "box", unit_of_measurement: "min" } } },
      { name: "show_chart", selector: { boolean: {} } },
      { name: "show_report", selector: { boolean: {} } },
    ];
  }

  _render() {
    if (!this._hass || !this._config) return;
    if (!this._form) {
      this._form = document.createElement("ha-form");
      this._form.computeLabel = (schema) =>
        ({
          station_id: "Station",
          title: "Title",
          hours: "Chart span",
          bucket_minutes: "Chart resolution",
          show_chart: "Show the defect-rate chart",
          show_report: "Show the latest report",
        })[schema.name] || schema.name;
      this._form.addEventListener("value-changed", (ev) => {
        this._config = ev.detail.value;
        this.dispatchEvent(
          new CustomEvent("config-changed", { detail: { config: this._config }, bubbles: true, composed: true }),
        );
      });
      this.appendChild(this._form);
    }
    this._form.hass = this._hass;
    this._form.data = { hours: 8, bucket_minutes: 15, show_chart: true, show_report: true, ...this._config };
    this._form.schema = this._schema();
  }
}

/* The dashboard strategy: `strategy: {type: custom:edge-inspector}` builds one view with a card
 * for every station (grouped by production line), whatever stations exist now. */
class EdgeInspectorDashboardStrategy extends HTMLElement {
  static async generate(config, hass) {
    const { stations } = await hass.callWS({ type: "edge_inspector/stations" });
    const lines = new Map();
    for (const s of stations) {
      const line = s.line || "Stations";
      if (!lines.has(line)) lines.set(line, []);
      lines.get(line).push(s);
    }
    const sections = [...lines.entries()].map(([line, group]) => ({
      type: "grid",
      cards: [
        { type: "heading", heading: line },
        ...group.map((s) => ({ type: `custom:${CARD}`, station_id: s.station_id, hours: config.hours || 8 })),
      ],
    }));
    return {
      title: config.title || "Edge Inspector",
      views: [
        {
          title: "Inspection",
          path: "inspection",
          icon: "mdi:magnify-scan",
          type: "sections",
          max_columns: 3,
          sections: sections.length
            ? sections
            : [{ type: "grid", cards: [{ type: "markdown", content: "No Edge Inspector stations yet: add one under Settings → Devices & services → Edge Inspector." }] }],
        },
      ],
    };
  }
}

if (!customElements.get(CARD)) customElements.define(CARD, EdgeInspectorCard);
if (!customElements.get(EDITOR)) customElements.define(EDITOR, EdgeInspectorCardEditor);
if (!customElements.get("ll-strategy-dashboard-edge-inspector")) {
  customElements.define("ll-strategy-dashboard-edge-inspector", EdgeInspectorDashboardStrategy);
}
window.customCards = window.customCards || [];
if (!window.customCards.some((c) => c.type === CARD)) {
  window.customCards.push({
    type: CARD,
    name: "Edge Inspector station",
    description: "The last defect picture, live counters, the defect-rate chart and the VLM report of one inspection station.",
    preview: true,
    documentationURL: "https://github.com/edge-inspector/edge-inspector#dashboard",
  });
}
console.info(`%c EDGE-INSPECTOR-CARD %c ${VERSION} `, "background:#1565c0;color:#fff", "");
