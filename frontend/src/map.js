// map.js: the stations on a <canvas>, without tiles: a d3-geo projection fitted to the stations (Mercator for one
// system, Equal Earth for all), each system's outline as a concave hull of its stations (concaveman) filled as land,
// then one dot per station coloured by state and sized by capacity (d3-scale), drawn in one path per colour. A
// d3-quadtree, built when the stations' positions change, finds the dot under the pointer for the tooltip.

import concaveman from "concaveman";
import { geoEqualEarth, geoGraticule10, geoMercator, geoPath } from "d3-geo";
import { quadtree } from "d3-quadtree";
import { scaleSqrt } from "d3-scale";
import { count, duration, element, when } from "./format.js";

/** The `state` column's values, in order: 0 in between, 1 empty, 2 full, 3 not renting, 4 no status yet. */
export const STATES = [
  { name: "in-between", label: "Bikes and docks", color: "#2b9348" },
  { name: "empty", label: "Empty (no bike)", color: "#e03131" },
  { name: "full", label: "Full (no dock)", color: "#6741d9" },
  { name: "closed", label: "Not renting", color: "#6c757d" },
  { name: "unknown", label: "No status yet", color: "#c3c8cd" },
];
const DRAW_ORDER = [4, 3, 0, 2, 1]; // the problems last, on top
const WORLD_PROBLEM = 0.6; // all systems (a city is a few px wide): the problems' dots smaller, so a city with a
// few empty stations reads green speckled with red rather than all red
const LAND = "#efe9db";
const SHORE = "#d6cbb1";
const SPHERE = "#f3f7fa";
const GRATICULE = "#e1e8ee";
const PAD = 20; // px around the stations
const PICK_PX = 8; // how far from a dot the pointer still finds it
const TAU = 2 * Math.PI;

export class MapView {
  constructor(canvas, tooltip, focus) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.focus = focus;
    this.ctx = canvas.getContext("2d");
    this.data = null; // the last api/state answer
    this.geometry = null; // what depends only on the stations' positions (projected once, hull, quadtree)
    this.groups = null; // per state, the indices of the stations drawn in that colour
    this.radius = null; // per station, its dot's radius in px at the base size
    this.view = null; // the fitted transform of the last draw: px = k * raw + t
    this.picked = -1; // the station the tooltip shows
    this.pointer = null; // where the tooltip was asked for (px in the canvas)
    this.message = "Loading the stations\u2026";
    this.frame = 0;
    new ResizeObserver(() => this.schedule()).observe(canvas.parentElement);
    canvas.addEventListener("pointermove", (e) => { if (e.pointerType === "mouse") this.pick(e); });
    canvas.addEventListener("pointerdown", (e) => { if (e.pointerType !== "mouse") this.pick(e); });
    canvas.addEventListener("click", (e) => this.pick(e));
    canvas.addEventListener("pointerleave", (e) => { if (e.pointerType === "mouse") this.hideTooltip(); });
  }

  /** Shows a line of text instead of the stations (no data yet, or none). */
  showMessage(text) {
    this.data = null;
    this.geometry = null;
    this.message = text;
    this.hideTooltip();
    this.draw();
  }

  /** Takes a new api/state answer and draws it at once; returns the counts per state (placed stations only). */
  setData(state) {
    const started = performance.now();
    const columns = state.columns;
    if (!this.geometry || !samePositions(this.geometry, state.system, columns)) {
      this.geometry = buildGeometry(state.system, columns);
    }
    const n = columns.state.length;
    const placed = this.geometry.placed;
    const counts = [0, 0, 0, 0, 0];
    for (let i = 0; i < n; i++) if (placed[i]) counts[stateOf(columns.state[i])]++;
    const groups = counts.map((c) => new Uint32Array(c));
    const filled = [0, 0, 0, 0, 0];
    for (let i = 0; i < n; i++) {
      if (!placed[i]) continue;
      const s = stateOf(columns.state[i]);
      groups[s][filled[s]++] = i;
    }
    this.groups = groups;
    this.radius = radii(columns.capacity, placed, state.system === "*");
    this.data = state;
    const prepared = performance.now();
    this.draw();
    const board = window.__dashboard;
    if (board) board.lastLoad = { prepareMs: round(prepared - started), drawMs: board.lastDraw.ms, dots: this.geometry.count };
    if (this.picked >= 0 && this.pointer) this.showAt(this.pointer.x, this.pointer.y);
    return counts;
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
      if (this.picked >= 0 && this.pointer) this.showAt(this.pointer.x, this.pointer.y);
    });
  }

  draw() {
    const started = performance.now();
    const canvas = this.canvas;
    const ctx = this.ctx;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    const pixelsW = Math.max(1, Math.round(width * dpr));
    const pixelsH = Math.max(1, Math.round(height * dpr));
    if (canvas.width !== pixelsW || canvas.height !== pixelsH) {
      canvas.width = pixelsW;
      canvas.height = pixelsH;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const g = this.geometry;
    if (!this.data || !g || g.count === 0) {
      this.view = null;
      ctx.fillStyle = "#6c757d";
      ctx.font = "15px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText(this.data ? "No station has a position yet" : this.message, width / 2, height / 2);
      if (this.data) this.drawn(0);
      return;
    }

    // Fit: the raw projection (scale 1, no translation) maps to px by one scale and one translation.
    const b = g.bounds;
    const spanX = Math.max(b.x1 - b.x0, 1e-9);
    const spanY = Math.max(b.y1 - b.y0, 1e-9);
    const k = Math.max(1e-9, Math.min((width - 2 * PAD) / spanX, (height - 2 * PAD) / spanY));
    const tx = width / 2 - (k * (b.x0 + b.x1)) / 2;
    const ty = height / 2 - (k * (b.y0 + b.y1)) / 2;
    this.view = { k, tx, ty };

    if (g.world) {
      const projection = g.projection.scale(k).translate([tx, ty]);
      const path = geoPath(projection, ctx);
      ctx.beginPath();
      path({ type: "Sphere" });
      ctx.fillStyle = SPHERE;
      ctx.fill();
      ctx.beginPath();
      path(geoGraticule10());
      ctx.strokeStyle = GRATICULE;
      ctx.lineWidth = 0.6;
      ctx.stroke();
      projection.scale(1).translate([0, 0]);
    }

    // Land: every hull in one path, padded by a wide round stroke so the outer dots sit inside the shore.
    const scale = Math.min(1.25, Math.max(0.6, Math.sqrt(Math.min(width, height) / 800)));
    const margin = (g.world ? 5 : 12) * scale;
    ctx.beginPath();
    for (const ring of g.hulls) {
      ctx.moveTo(k * ring[0][0] + tx, k * ring[0][1] + ty);
      if (ring.length === 1) ctx.lineTo(k * ring[0][0] + tx + 0.01, k * ring[0][1] + ty);
      for (let j = 1; j < ring.length; j++) ctx.lineTo(k * ring[j][0] + tx, k * ring[j][1] + ty);
      if (ring.length > 2) ctx.closePath();
    }
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    ctx.strokeStyle = SHORE;
    ctx.lineWidth = 2 * margin + 2;
    ctx.stroke();
    ctx.strokeStyle = LAND;
    ctx.lineWidth = 2 * margin;
    ctx.stroke();
    ctx.fillStyle = LAND;
    ctx.fill();

    // Dots: one path and one fill per colour; small ones as squares (cheaper, and alike at that size).
    const x = g.x;
    const y = g.y;
    const radius = this.radius;
    const outline = g.count < 15000;
    ctx.lineWidth = 0.75;
    ctx.strokeStyle = "rgba(255,255,255,0.85)";
    for (const s of DRAW_ORDER) {
      const group = this.groups[s];
      if (group.length === 0) continue;
      const shrink = g.world && s !== 0 ? WORLD_PROBLEM * scale : scale;
      ctx.beginPath();
      for (let j = 0; j < group.length; j++) {
        const i = group[j];
        const px = k * x[i] + tx;
        const py = k * y[i] + ty;
        const r = radius[i] * shrink;
        if (r < 1.3) {
          ctx.rect(px - r, py - r, 2 * r, 2 * r);
        } else {
          ctx.moveTo(px + r, py);
          ctx.arc(px, py, r, 0, TAU);
        }
      }
      ctx.fillStyle = STATES[s].color;
      ctx.fill();
      if (outline) ctx.stroke();
    }
    this.scale = scale;
    this.drawn(g.count, performance.now() - started);
  }

  drawn(dots, ms = 0) {
    this.canvas.dataset.drawn = String(dots);
    this.canvas.dataset.system = this.data ? this.data.system : "";
    if (!window.__dashboard) window.__dashboard = { firstDrawMs: performance.now() };
    window.__dashboard.lastDraw = { ms: round(ms), dots };
  }

  /** The tooltip for the dot under a pointer event, or none. */
  pick(event) {
    const rect = this.canvas.getBoundingClientRect();
    this.showAt(event.clientX - rect.left, event.clientY - rect.top);
  }

  showAt(px, py) {
    const g = this.geometry;
    const v = this.view;
    if (!g || !v || !this.data) return this.hideTooltip();
    const found = g.tree.find((px - v.tx) / v.k, (py - v.ty) / v.k, PICK_PX / v.k);
    if (found === undefined) return this.hideTooltip();
    if (found !== this.picked || this.filledFrom !== this.data) this.fillTooltip(found);
    this.picked = found;
    this.filledFrom = this.data;
    this.pointer = { x: px, y: py };
    const tip = this.tooltip;
    tip.hidden = false;
    const dotX = v.k * g.x[found] + v.tx;
    const dotY = v.k * g.y[found] + v.ty;
    const r = Math.max(4, this.radius[found] * this.scale + 3);
    Object.assign(this.focus.style, { left: `${dotX - r}px`, top: `${dotY - r}px`, width: `${2 * r}px`, height: `${2 * r}px` });
    this.focus.hidden = false;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    const left = dotX + 14 + tip.offsetWidth > width ? dotX - 14 - tip.offsetWidth : dotX + 14;
    const top = Math.min(Math.max(4, dotY - tip.offsetHeight / 2), height - tip.offsetHeight - 4);
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${Math.max(4, top)}px`;
  }

  hideTooltip() {
    this.picked = -1;
    this.pointer = null;
    this.tooltip.hidden = true;
    this.focus.hidden = true;
  }

  fillTooltip(i) {
    const c = this.data.columns;
    const tip = this.tooltip;
    tip.replaceChildren();
    const title = element("div", "tt-name", c.name[i] || `Station ${c.station_id[i]}`);
    tip.append(title);
    if (this.data.system === "*") tip.append(element("div", "tt-system", c.system_id[i]));
    const state = STATES[stateOf(c.state[i])];
    const badge = element("div", `tt-state state-${state.name}`, state.label);
    tip.append(badge);
    const figures = element("dl", "tt-figures");
    for (const [label, value] of [["Bikes", c.bikes[i]], ["E-bikes", c.ebikes[i]], ["Docks", c.docks[i]],
      ["Capacity", c.capacity[i] || null]]) {
      figures.append(element("dt", null, label), element("dd", null, count(value)));
    }
    tip.append(figures);
    const kind = c.outage_kind[i];
    const since = c.outage_since[i];
    if (kind && since !== null && since !== undefined) {
      const lasted = duration(Date.now() / 1000 - since);
      tip.append(element("div", `tt-outage outage-${kind}`, `${kind[0].toUpperCase()}${kind.slice(1)} for ${lasted} (since ${when(since)})`));
    }
  }
}

function stateOf(value) {
  return value >= 0 && value <= 4 ? value | 0 : 4;
}

function round(ms) {
  return Math.round(ms * 10) / 10;
}

/** Whether the stations are where they were (same system, same stations, same positions). */
function samePositions(g, system, c) {
  if (g.system !== system || g.n !== c.lat.length) return false;
  const { ids, systems, lat, lon } = g.columns;
  for (let i = 0; i < g.n; i++) {
    if (lat[i] !== c.lat[i] || lon[i] !== c.lon[i] || ids[i] !== c.station_id[i] || systems[i] !== c.system_id[i]) return false;
  }
  return true;
}

/** The stations projected once (raw: scale 1, no translation), the fit's bounds, the land hulls and the quadtree. */
function buildGeometry(system, c) {
  const world = system === "*";
  const n = c.lat.length;
  const projection = (world ? geoEqualEarth() : geoMercator()).scale(1).translate([0, 0]);
  const x = new Float64Array(n);
  const y = new Float64Array(n);
  const placed = new Uint8Array(n);
  const point = [0, 0];
  let placedCount = 0;
  for (let i = 0; i < n; i++) {
    const lat = c.lat[i];
    const lon = c.lon[i];
    if (lat === null || lon === null || lat === undefined || lon === undefined || !Number.isFinite(lat)
      || !Number.isFinite(lon) || Math.abs(lat) > 85 || Math.abs(lon) > 180) continue;
    point[0] = lon;
    point[1] = lat;
    const p = projection(point);
    if (!p || !Number.isFinite(p[0]) || !Number.isFinite(p[1])) continue;
    x[i] = p[0];
    y[i] = p[1];
    placed[i] = 1;
    placedCount++;
  }
  const indices = new Uint32Array(placedCount);
  for (let i = 0, j = 0; i < n; i++) if (placed[i]) indices[j++] = i;
  let bounds = world ? extent(x, y, indices) : robustExtent(x, y, indices);
  if (world) { // stations on several continents: the whole globe, which reads better than a cut-out of it
    const [[x0, y0], [x1, y1]] = geoPath(projection).bounds({ type: "Sphere" });
    if (bounds.x1 - bounds.x0 > (x1 - x0) / 3 || !placedCount) bounds = { x0, y0, x1, y1 };
  }
  const tree = quadtree().x((i) => x[i]).y((i) => y[i]).addAll(indices);
  return {
    system, world, n, x, y, placed, count: placedCount, bounds, tree, projection,
    hulls: hulls(c.system_id, x, y, indices, bounds, world),
    columns: { ids: c.station_id, systems: c.system_id, lat: c.lat, lon: c.lon },
  };
}

function extent(x, y, indices) {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const i of indices) {
    if (x[i] < x0) x0 = x[i];
    if (x[i] > x1) x1 = x[i];
    if (y[i] < y0) y0 = y[i];
    if (y[i] > y1) y1 = y[i];
  }
  return { x0, y0, x1, y1 };
}

/** The stations' extent without the far outliers (a test station at 0,0 would shrink a city to a dot). */
function robustExtent(x, y, indices) {
  if (indices.length < 20) return extent(x, y, indices);
  const keep = (values) => {
    const sorted = Float64Array.from(indices, (i) => values[i]).sort();
    const q1 = sorted[Math.floor(sorted.length * 0.25)];
    const q3 = sorted[Math.floor(sorted.length * 0.75)];
    const reach = Math.max(6 * (q3 - q1), 0.01); // 0.01 raw ~ 0.6 degree
    return [q1 - reach, q3 + reach];
  };
  const [xl, xh] = keep(x);
  const [yl, yh] = keep(y);
  const kept = indices.filter((i) => x[i] >= xl && x[i] <= xh && y[i] >= yl && y[i] <= yh);
  return extent(x, y, kept.length ? kept : indices);
}

/**
 * Each system's outline: the concave hull of its stations snapped to a grid (so a city seen from afar is a few
 * cells and a big one stays quick), as rings of raw points; a system of one or two cells is a line or a point,
 * which the padded stroke draws as a blob.
 */
function hulls(systemIds, x, y, indices, bounds, world) {
  const cell = Math.max(bounds.x1 - bounds.x0, bounds.y1 - bounds.y0, 1e-9) / (world ? 300 : 700);
  const slack = cell * 40;
  const cells = new Map(); // system -> Set of cell keys
  for (const i of indices) {
    if (!world && (x[i] < bounds.x0 - slack || x[i] > bounds.x1 + slack || y[i] < bounds.y0 - slack || y[i] > bounds.y1 + slack)) continue;
    const system = world ? systemIds[i] : "";
    let own = cells.get(system);
    if (!own) cells.set(system, (own = new Set()));
    own.add(Math.round(x[i] / cell) * 67108864 + Math.round(y[i] / cell));
  }
  const rings = [];
  for (const own of cells.values()) {
    const points = [];
    for (const key of own) {
      const gx = Math.round(key / 67108864);
      points.push([gx * cell, (key - gx * 67108864) * cell]);
    }
    rings.push(points.length < 3 ? points : concaveman(points, 2, cell * 4));
  }
  return rings;
}

/** The dots' radii (px, at the base size) by capacity, on a square-root scale. */
function radii(capacity, placed, world) {
  const n = capacity.length;
  const known = [];
  for (let i = 0; i < n; i++) if (placed[i] && capacity[i] > 0) known.push(capacity[i]);
  known.sort((a, b) => a - b);
  const top = known.length ? known[Math.floor(known.length * 0.98)] || known[known.length - 1] : 1;
  const scale = scaleSqrt().domain([0, Math.max(top, 1)]).range(world ? [0.8, 2.4] : [1.5, 4.8]).clamp(true);
  const smallest = world ? 1 : 2;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = capacity[i] > 0 ? Math.max(smallest, scale(capacity[i])) : smallest;
  return out;
}
