"use strict";
// firecracer viewer: physical memory of a guest, page owners, NMT regions, and the restore animation.
// Data: one JSON meta per recording + one zlib blob of typed arrays (see firecracer/viz/pack.py).
// Drawing: one pixel per page in an ImageData (Uint32 view), scaled onto the visible canvas; no DOM per page.
(function () {
const $ = (id) => document.getElementById(id);
const OPTS = JSON.parse($("fc-opts").textContent);
const METAS = JSON.parse($("fc-meta").textContent);
const FC = window.FC = { ready: false, error: null, panels: [], opts: OPTS };

// ---------------------------------------------------------------- colours (seed defaults, then ours)
function rgb(hex) { const v = parseInt(hex.slice(1), 16); return (255 << 24 | (v & 255) << 16 | (v >> 8 & 255) << 8 | v >> 16) >>> 0; }
const COL = {
  background: "#d3d3d3",   // seed LIGHT_GRAY: no page at this address
  memory: "#808080",       // seed GRAY: a page some process owns
  kernel: "#8878a8", pagecache: "#78a088", free: "#e4e4e4", traceonly: "#a0a0a0", shared: "#98a7b4",
  selected: "#404040",     // seed DARK_GRAY: selected, one mapper
  selshared: "#4d7a97",    // seed SHARED: selected, more than one mapper
  loadsel: "#ffc800",      // seed ORANGE: restored, in the selection
  load: "#ffff00",         // seed YELLOW: restored, owned by someone else
  nomap: "#0000ff",        // seed BLUE: restored, no owner known
  hover: "#ff2020", outside: "#f7f7f5",
};
for (const k of Object.keys(OPTS.colors || {})) COL[k] = OPTS.colors[k];
const PX = {}; for (const k of Object.keys(COL)) PX[k] = rgb(COL[k]);
const CLASS_COL = ["traceonly", "memory", "kernel", "pagecache", "free"];
// zoomed out below 1 px/page, a screen pixel shows the most telling of the pages it covers
const RANK = new Map();
[["background", 0], ["outside", 0], ["free", 1], ["traceonly", 2], ["memory", 3], ["shared", 3], ["pagecache", 3],
  ["kernel", 3], ["selected", 5], ["selshared", 5], ["load", 6], ["nomap", 6], ["loadsel", 7]]
  .forEach(([k, r]) => { if (!RANK.has(PX[k]) || RANK.get(PX[k]) < r) RANK.set(PX[k], r); });
const LEGEND = [["background", "no page"], ["memory", "process"], ["shared", "shared (>1 owner)"], ["kernel", "kernel"],
  ["pagecache", "page cache"], ["free", "free"], ["selected", "selected"], ["selshared", "selected, shared"],
  ["loadsel", "restored, selected"], ["load", "restored, other owner"], ["nomap", "restored, no owner"]];
const ACTIONS = ["load", "zero", "prefetch", "around", "eager"];
const KPF = ["LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB", "WRITEBACK", "RECLAIM",
  "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED", "COMPOUND_HEAD", "COMPOUND_TAIL", "HUGE", "UNEVICTABLE",
  "HWPOISON", "NOPAGE", "KSM", "THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE"];
const KPF_HI = { 32: "RESERVED", 33: "MLOCKED", 34: "MAPPEDTODISK", 35: "PRIVATE", 36: "PRIVATE_2", 37: "OWNER_PRIVATE",
  38: "ARCH", 39: "UNCACHED", 40: "SOFTDIRTY", 41: "ARCH_2" };

// ---------------------------------------------------------------- small helpers
const fmtInt = (n) => Math.round(n).toLocaleString("en-US");
const kb = (bytes) => fmtInt(bytes / 1024);
function hex(v, digits) { let s = (typeof v === "bigint" ? v : BigInt(Math.round(v))).toString(16); if (digits) s = s.padStart(digits, "0"); return "0x" + s; }
const hex16 = (v) => hex(v, 16);
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
function basename(p) { const i = p.lastIndexOf("/"); return i >= 0 ? p.slice(i + 1) : p; }
function upper(arr, n, v) { let lo = 0, hi = n; while (lo < hi) { const m = (lo + hi) >>> 1; if (arr[m] <= v) lo = m + 1; else hi = m; } return lo; }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }

async function b64bytes(id) {
  const s = $(id).textContent.trim();
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(s);
  const r = await fetch("data:application/octet-stream;base64," + s);
  return new Uint8Array(await r.arrayBuffer());
}
async function inflate(bytes) {
  const ds = new DecompressionStream("deflate");
  const out = new Response(new Blob([bytes]).stream().pipeThrough(ds));
  return await out.arrayBuffer();
}
const TYPES = { uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, float64: Float64Array };

// ---------------------------------------------------------------- one recording
class Rec {
  constructor(meta, buf) {
    this.m = meta; this.ps = meta.page_size; this.a = {}; this.detail = false;
    this.views(buf, 0);
    const A = this.a;
    this.nRows = A.row_phys.length; this.nPhys = A.phys_pfn.length; this.nTr = A.tr_pfn.length; this.nMaps = A.map_rs.length;
    const physBytes = OPTS.phys_bytes || meta.phys_bytes;
    this.slots = Math.max(1, Math.ceil(physBytes / this.ps));
    // slot (pfn) -> distinct physical page
    this.slotPhys = new Int32Array(this.slots).fill(-1);
    for (let p = 0; p < this.nPhys; p++) { const s = A.phys_pfn[p]; if (s < this.slots) this.slotPhys[s] = p; }
    this.physStart = null; // rows of each physical page: built on the first hover (rowsOfPhys)
    // first restore of each slot, and time per trace row
    this.slotFirst = new Int32Array(this.slots).fill(-1);
    for (let i = this.nTr - 1; i >= 0; i--) { const s = A.tr_pfn[i]; if (s < this.slots) this.slotFirst[s] = i; }
    // mappings: sorted by row start (to find a row's mapping) and per owner
    const ord = new Uint32Array(this.nMaps); for (let i = 0; i < this.nMaps; i++) ord[i] = i;
    ord.sort((x, y) => A.map_rs[x] - A.map_rs[y]);
    this.mapByRow = ord; this.mapRsSorted = new Float64Array(this.nMaps);
    for (let i = 0; i < this.nMaps; i++) this.mapRsSorted[i] = A.map_rs[ord[i]];
    this.owners = meta.owners;
    for (const o of this.owners) o.maps = [];
    for (let m = 0; m < this.nMaps; m++) this.owners[A.map_owner[m]].maps.push(m);
    this.nmt = meta.nmt;
    this.regCat = this.nmt ? Int32Array.from(this.nmt.regions.map((r) => r.cat)) : new Int32Array(0);
    this.sel = new Uint8Array(this.nPhys);
  }
  views(buf, part) { // typed-array views of one blob, prefix sums undone in place
    for (const [name, [dt, off, len, delta, k]] of Object.entries(this.m.arrays)) {
      if ((k || 0) !== part) continue;
      const a = new TYPES[dt](buf, off, len);
      if (delta) { let acc = 0; for (let i = 0; i < len; i++) { acc = (acc + a[i]) >>> 0; a[i] = acc; } }
      this.a[name] = a;
    }
    if (part === 1) this.detail = true;
  }
  rowsOfPhys(p) { // [start, end) into physRows; a counting sort over all rows, once
    if (!this.physStart) {
      const A = this.a, cnt = new Uint32Array(this.nPhys + 1);
      for (let r = 0; r < this.nRows; r++) cnt[A.row_phys[r] + 1]++;
      for (let q = 0; q < this.nPhys; q++) cnt[q + 1] += cnt[q];
      const fill = cnt.slice(0, this.nPhys), rows = new Uint32Array(this.nRows);
      for (let r = 0; r < this.nRows; r++) rows[fill[A.row_phys[r]]++] = r;
      this.physStart = cnt; this.physRows = rows;
    }
    return [this.physStart[p], this.physStart[p + 1]];
  }
  ownerOfRow(r) { for (let i = 0; i < this.owners.length; i++) { const o = this.owners[i]; if (r >= o.rs && r < o.re) return i; } return -1; }
  mapOfRow(r) {
    const o = this.owners[this.ownerOfRow(r)];
    if (!o || r >= o.us) return -1;
    const k = upper(this.mapRsSorted, this.nMaps, r) - 1;
    if (k < 0) return -1;
    const m = this.mapByRow[k];
    return r < this.a.map_re[m] ? m : -1;
  }
  vaddrOfRow(r, m) { // guest virtual address (kernel segments, page cache, free: the physical address)
    if (m === undefined) m = this.mapOfRow(r);
    if (m < 0) return this.a.phys_pfn[this.a.row_phys[r]] * this.ps;
    return this.a.map_start[m] + this.a.row_vpi[r] * this.ps;
  }
  mapName(m) { return this.m.map_names[this.a.map_name[m]]; }
  // calls f(row) for every row a selection covers
  forRows(s, f) {
    const A = this.a;
    const range = (a, b) => { for (let r = a; r < b; r++) f(r); };
    if (!s) return;
    if (s.t === "owner") { const o = this.owners[s.o]; range(o.rs, o.re); }
    else if (s.t === "unmapped") { const o = this.owners[s.o]; range(o.us, o.re); }
    else if (s.t === "map") range(A.map_rs[s.m], A.map_re[s.m]);
    else if (s.t === "maps") { for (const m of this.owners[s.o].maps) range(A.map_rs[m], A.map_re[m]); }
    else if (this.nmt) {
      const o = this.owners[this.nmt.owner], nm = A.row_nmt;
      if (s.t === "nmt") { for (let r = o.rs; r < o.re; r++) if (nm[r] >= 0) f(r); }
      else if (s.t === "reg") { for (let r = o.rs; r < o.re; r++) if (nm[r] === s.r) f(r); }
      else if (s.t === "cat") { for (let r = o.rs; r < o.re; r++) if (nm[r] >= 0 && this.regCat[nm[r]] === s.c) f(r); }
      else if (s.t === "com" && this.detail) {
        const [cs, ce] = this.nmt.regions[s.r].com[s.i];
        for (const m of o.maps) {
          const ms = A.map_start[m];
          for (let r = A.map_rs[m]; r < A.map_re[m]; r++) {
            if (nm[r] !== s.r) continue;
            const va = ms + A.row_vpi[r] * this.ps;
            if (va >= cs && va < ce) f(r);
          }
        }
      }
    }
  }
  setSelection(s) {
    this.sel.fill(0);
    const rp = this.a.row_phys, sel = this.sel;
    let n = 0;
    this.forRows(s, (r) => { if (!sel[rp[r]]) { sel[rp[r]] = 1; n++; } });
    this.selCount = n;
    return n;
  }
  // everything known about one physical page, for the tooltip
  describe(slot) {
    const A = this.a, ps = this.ps, p = this.slotPhys[slot], out = [];
    const addr = slot * ps;
    out.push(`<b>${hex16(addr)}</b>  pfn ${fmtInt(slot)}`);
    if (p >= 0 && !this.detail) out.push(`class: ${this.m.classes[A.phys_class[p]]}, ${A.phys_nrows[p]} owner(s); loading page details…`);
    else if (p >= 0) {
      const [a, b] = this.rowsOfPhys(p);
      out.push(`class: ${this.m.classes[A.phys_class[p]]}, ${b - a} owner${b - a === 1 ? "" : "s"}`);
      const shown = Math.min(b, a + 40); // a page mapped by hundreds of processes: the first 40
      for (let k = a; k < shown; k++) {
        const r = this.physRows[k], oi = this.ownerOfRow(r), o = this.owners[oi], m = this.mapOfRow(r);
        let line = `${o.pid}: ${esc(o.exe)} (${hex16(this.vaddrOfRow(r, m))} virt)`;
        if (m >= 0) {
          const pr = A.map_perms[m];
          const perms = (pr & 1 ? "r" : "-") + (pr & 2 ? "w" : "-") + (pr & 4 ? "x" : "-") + (pr & 8 ? "s" : "p");
          line += `  ${esc(this.mapName(m) || "[anon]")} ${perms}`;
        }
        const pm = A.row_pm[r];
        if (o.pid > 0) line += `  ${pm & 1 ? "exclusive" : "shared"}${pm & 2 ? " file" : " anon"}${pm & 4 ? " soft-dirty" : ""}`;
        const ri = A.row_nmt[r];
        if (ri >= 0 && this.nmt) {
          const rg = this.nmt.regions[ri];
          const va = this.vaddrOfRow(r, m);
          const com = rg.com.some(([cs, ce]) => va >= cs && va < ce);
          line += `\n     NMT ${esc(this.nmt.categories[rg.cat])} [${hex16(rg.s)} - ${hex16(rg.e)}]${com ? " committed" : ""}`;
        }
        out.push(line);
      }
      if (b > shown) out.push(`… and ${fmtInt(b - shown)} more owners`);
      const lo = A.kfl_lo[A.phys_kfl[p]], hi = A.kfl_hi[A.phys_kfl[p]], names = [];
      for (let b = 0; b < 27; b++) if (lo & (1 << b)) names.push(KPF[b]);
      for (let b = 32; b < 42; b++) if (hi & (1 << (b - 32))) names.push(KPF_HI[b]);
      out.push(`kpageflags ${hex(BigInt(hi >>> 0) << 32n | BigInt(lo >>> 0), 16)} ${names.join(" ") || "-"}  mapcount ${A.phys_kcount[p]}`);
    } else out.push(this.slotFirst[slot] >= 0 ? "no owner recorded (not in the memmap)" : "no page recorded here");
    const i = this.slotFirst[slot];
    if (i >= 0) {
      const bits = A.tr_bits[i];
      const act = ACTIONS[bits >> 3] || "?";
      out.push("<hr>" + `uffd event: ${bits & 1 ? "write" : "read"}` + `\nuffd action: ${act}${bits & 4 && act !== "zero" ? " (zero page)" : ""}` +
        `${bits & 2 ? ", faulting page" : ""}\nrestore #${fmtInt(i + 1)} of ${fmtInt(this.nTr)} at ${(A.tr_t[i] / 1000).toFixed(3)} ms`);
    }
    return out.join("\n");
  }
}

// ---------------------------------------------------------------- one panel (a recording drawn on a canvas)
class Panel {
  constructor(rec, idx, host) {
    this.rec = rec; this.idx = idx; this.cursor = 0;
    this.root = el("div", "panel"); this.root.dataset.panel = idx;
    const h = el("h2", null, rec.m.label);
    h.title = rec.m.label; // a long label is cut with an ellipsis to fit the window
    const t = rec.m.totals;
    h.appendChild(el("span", "sub", (rec.m.no_memmap ? "no memory map" : `${fmtInt(t.physical_pages)} pages`) +
      `, ${fmtInt(t.uffd_events)} events` +
      (rec.m.space === "process" ? " · the JVM process image (CRIU), in virtual-address order" : "")));
    this.root.appendChild(h);
    this.view = el("div", "view");
    this.scroller = el("div", "scroller"); this.sizer = el("div", "sizer");
    this.scroller.appendChild(this.sizer);
    this.canvas = el("canvas", "pages");
    this.view.appendChild(this.scroller); this.view.appendChild(this.canvas);
    this.root.appendChild(this.view); host.appendChild(this.root);
    this.off = document.createElement("canvas");
    this.layout();
  }
  layout() {
    const W = UI.width, rec = this.rec;
    this.W = W; this.H = Math.ceil(rec.slots / W);
    this.img = new ImageData(W, this.H);
    this.pix = new Uint32Array(this.img.data.buffer);
    this.off.width = W; this.off.height = this.H;
    this.octx = this.off.getContext("2d");
    this.k = 0;
    if (this.painted) this.repaint(); // the first paint waits for the initial selection
  }
  // the reduced image (one pixel per k x k pages) used below 1 px/page
  reduceAll() {
    const k = UI.zoom < 1 ? Math.round(1 / UI.zoom) : 1;
    if (k <= 1) { this.k = 1; return; }
    if (k !== this.k) {
      this.k = k; this.Wk = Math.ceil(this.W / k); this.Hk = Math.ceil(this.H / k);
      this.rimg = new ImageData(this.Wk, this.Hk); this.rpix = new Uint32Array(this.rimg.data.buffer);
      this.roff = document.createElement("canvas"); this.roff.width = this.Wk; this.roff.height = this.Hk;
      this.rctx = this.roff.getContext("2d");
    }
    const W = this.W, Wk = this.Wk, pix = this.pix, rpix = this.rpix, rr = new Uint8Array(rpix.length);
    rpix.fill(PX.outside);
    let lastC = -1, r = 0;
    for (let y = 0; y < this.H; y++) {
      const ry = ((y / k) | 0) * Wk, row = y * W;
      for (let x = 0; x < W; x++) {
        const c = pix[row + x], i = ry + ((x / k) | 0);
        if (c !== lastC) { lastC = c; r = RANK.get(c) || 0; }
        if (r > rr[i] || (r === rr[i] && c !== PX.outside && rpix[i] === PX.outside)) { rr[i] = r; rpix[i] = c; }
      }
    }
    this.rrank = rr;
    this.rctx.putImageData(this.rimg, 0, 0);
  }
  reducedSet(s, c) {
    const k = this.k, i = (((s / this.W) | 0) / k | 0) * this.Wk + (((s % this.W) / k) | 0), r = RANK.get(c) || 0;
    if (r >= this.rrank[i]) { this.rrank[i] = r; this.rpix[i] = c; }
  }
  // base colours + selection + restored pages up to the cursor (a full pass over the typed arrays)
  repaint() {
    this.painted = true;
    const rec = this.rec, A = rec.a, pix = this.pix, sp = rec.slotPhys, cls = A.phys_class, nrows = A.phys_nrows, sel = rec.sel;
    const seed = UI.seedColors;
    const base = CLASS_COL.map((c) => PX[seed && c !== "free" ? "memory" : c]);
    if (seed) base[4] = PX.memory;
    const shared = seed ? PX.memory : PX.shared;
    const n = rec.slots, total = pix.length;
    for (let s = 0; s < n; s++) {
      const p = sp[s];
      if (p < 0) { pix[s] = rec.slotFirst[s] >= 0 ? (seed ? PX.memory : PX.traceonly) : PX.background; continue; }
      const multi = nrows[p] > 1;
      if (sel[p]) pix[s] = multi ? PX.selshared : PX.selected;
      else pix[s] = multi && cls[p] === 1 ? shared : base[cls[p]];
    }
    for (let s = n; s < total; s++) pix[s] = PX.outside;
    this.drawn = 0;
    this.advance(this.cursor, true);
    if (UI.zoom < 1) { this.reduceAll(); this.render(); }
  }
  restoredColor(s) {
    const p = this.rec.slotPhys[s];
    if (p < 0) return PX.nomap;
    return this.rec.sel[p] ? PX.loadsel : PX.load;
  }
  // draw trace rows [drawn, k) (or repaint when going back)
  advance(k, full) {
    const rec = this.rec, tp = rec.a.tr_pfn, pix = this.pix, W = this.W;
    k = Math.max(0, Math.min(k, rec.nTr));
    if (k < this.drawn) { this.cursor = k; this.repaint(); return; }
    let y0 = Infinity, y1 = -1;
    const reduced = !full && this.k > 1 && UI.zoom < 1;
    for (let i = this.drawn; i < k; i++) {
      const s = tp[i];
      if (s >= rec.slots) continue;
      pix[s] = this.restoredColor(s);
      if (reduced) this.reducedSet(s, pix[s]);
      const y = (s / W) | 0; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (reduced && y1 >= 0) this.rctx.putImageData(this.rimg, 0, 0, 0, (y0 / this.k) | 0, this.Wk, ((y1 - y0) / this.k | 0) + 2);
    this.drawn = k; this.cursor = k;
    if (UI.zoom < 1) this.offStale = true;    // the full-size image is only uploaded when shown
    else if (full || this.offStale) { this.octx.putImageData(this.img, 0, 0); this.offStale = false; }
    else if (y1 >= 0) this.octx.putImageData(this.img, 0, 0, 0, y0, W, y1 - y0 + 1);
    this.render();
  }
  resize() {
    const dpr = window.devicePixelRatio || 1, w = this.scroller.clientWidth, h = this.scroller.clientHeight;
    this.canvas.style.width = w + "px"; this.canvas.style.height = h + "px";
    this.canvas.width = Math.max(1, Math.round(w * dpr)); this.canvas.height = Math.max(1, Math.round(h * dpr));
    this.sizer.style.width = Math.ceil(this.W * UI.zoom) + "px"; this.sizer.style.height = Math.ceil(this.H * UI.zoom) + "px";
    this.render();
  }
  render() {
    const c = this.canvas, ctx = c.getContext("2d"), dpr = c.width / Math.max(1, this.scroller.clientWidth), z = UI.zoom;
    const ox = this.scroller.scrollLeft / z, oy = this.scroller.scrollTop / z;
    if (z >= 1 && this.offStale) { this.octx.putImageData(this.img, 0, 0); this.offStale = false; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = COL.outside; ctx.fillRect(0, 0, c.width, c.height);
    ctx.imageSmoothingEnabled = false;
    ctx.setTransform(z * dpr, 0, 0, z * dpr, -ox * z * dpr, -oy * z * dpr);
    if (z < 1 && this.k > 1) { ctx.scale(this.k, this.k); ctx.drawImage(this.roff, 0, 0); }
    else ctx.drawImage(this.off, 0, 0);
    if (z >= 4) { // the seed's drawRect(scale-1) look: a one-pixel gap between pages
      ctx.setTransform(1, 0, 0, 1, 0, 0); ctx.fillStyle = COL.outside;
      const x0 = Math.floor(ox), x1 = Math.min(this.W, Math.ceil(ox + c.width / dpr / z));
      const y0 = Math.floor(oy), y1 = Math.min(this.H, Math.ceil(oy + c.height / dpr / z));
      for (let x = x0 + 1; x <= x1; x++) ctx.fillRect(Math.round(((x - ox) * z - 1) * dpr), 0, Math.max(1, Math.round(dpr)), (y1 - oy) * z * dpr);
      for (let y = y0 + 1; y <= y1; y++) ctx.fillRect(0, Math.round(((y - oy) * z - 1) * dpr), (x1 - ox) * z * dpr, Math.max(1, Math.round(dpr)));
    }
    if (UI.hoverSlot >= 0 && UI.hoverSlot < this.rec.slots) {
      const s = UI.hoverSlot, x = s % this.W, y = (s / this.W) | 0;
      ctx.setTransform(1, 0, 0, 1, 0, 0); ctx.strokeStyle = COL.hover; ctx.lineWidth = Math.max(1, dpr);
      ctx.strokeRect(((x - ox) * z - 1.5) * dpr, ((y - oy) * z - 1.5) * dpr, (z + 2) * dpr, (z + 2) * dpr);
    }
  }
  slotAt(clientX, clientY) {
    const r = this.scroller.getBoundingClientRect(), z = UI.zoom;
    const x = Math.floor((clientX - r.left + this.scroller.scrollLeft) / z), y = Math.floor((clientY - r.top + this.scroller.scrollTop) / z);
    if (x < 0 || x >= this.W || y < 0 || y >= this.H) return -1;
    const s = y * this.W + x;
    return s < this.rec.slots ? s : -1;
  }
  slotToClient(s) { // centre of page s in client coordinates (scrolls it into view)
    const z = UI.zoom, x = (s % this.W + 0.5) * z, y = (Math.floor(s / this.W) + 0.5) * z;
    const sc = this.scroller;
    if (x < sc.scrollLeft || x > sc.scrollLeft + sc.clientWidth) sc.scrollLeft = x - sc.clientWidth / 2;
    if (y < sc.scrollTop || y > sc.scrollTop + sc.clientHeight) sc.scrollTop = y - sc.clientHeight / 2;
    const r = sc.getBoundingClientRect();
    return { x: r.left + x - sc.scrollLeft, y: r.top + y - sc.scrollTop };
  }
}

// ---------------------------------------------------------------- UI state
const UI = { width: OPTS.width || 512, zoom: OPTS.scale || 2, seedColors: false, hoverSlot: -1, playing: false, pos: 0,
  clock: "events", rate: 1000, treeOf: 0, selKey: null, selNode: null };
const SPEEDS = [["events", 100, "100 events/s"], ["events", 1000, "1,000 events/s (seed)"], ["events", 10000, "10k events/s"],
  ["events", 100000, "100k events/s"], ["events", 1e6, "1M events/s"], ["time", 0.01, "time ×0.01"], ["time", 0.1, "time ×0.1"],
  ["time", 1, "real time"]];

function posMax() { // end of the animation in the current clock's unit (events, or µs)
  let m = 0;
  for (const p of FC.panels) m = Math.max(m, UI.clock === "events" ? p.rec.nTr : (p.rec.nTr ? p.rec.a.tr_t[p.rec.nTr - 1] : 0));
  return m;
}
function cursorFor(p, pos) { return UI.clock === "events" ? Math.floor(pos) : upper(p.rec.a.tr_t, p.rec.nTr, pos); }
function setPos(pos) {
  UI.pos = Math.max(0, Math.min(pos, posMax()));
  for (const p of FC.panels) p.advance(cursorFor(p, UI.pos));
  updateCounters();
}
function updateCounters() {
  const parts = FC.panels.map((p) => `<span class="ctr" id="counter${p.idx}" title="${esc(p.rec.m.label)}: events drawn">${fmtInt(p.cursor)}</span>`);
  $("counters").innerHTML = parts.join("");
  const p0 = FC.panels[0];
  let ms = 0;
  if (UI.clock === "time") ms = UI.pos / 1000;
  else for (const p of FC.panels) if (p.cursor > 0) ms = Math.max(ms, p.rec.a.tr_t[p.cursor - 1] / 1000);
  const span = Math.max(...FC.panels.map((p) => p.rec.m.trace.span_ms || 0));
  $("clock").textContent = `${ms.toFixed(3)} / ${span.toFixed(3)} ms` + (p0 && FC.panels.length === 1 ? `  (${fmtInt(p0.cursor)} / ${fmtInt(p0.rec.nTr)})` : "");
  drawAxis();
}
let lastT = 0;
function frame(t) {
  if (!UI.playing) return;
  const dt = lastT ? Math.min(100, t - lastT) : 16; lastT = t;
  const step = UI.clock === "events" ? UI.rate * dt / 1000 : UI.rate * dt * 1000; // events, or µs of trace time
  const next = UI.pos + Math.max(step, UI.clock === "events" ? 0 : 0);
  setPos(next);
  if (UI.pos >= posMax()) { setPlaying(false); return; }
  requestAnimationFrame(frame);
}
function setPlaying(on) {
  UI.playing = on && posMax() > 0;
  $("b-play").querySelector("path").setAttribute("d", UI.playing ? "M3 2h4v12H3zM9 2h4v12H9z" : "M3 2v12l11-6z");
  $("b-play").title = UI.playing ? "Pause (space)" : "Play (space)";
  if (UI.playing) { if (UI.pos >= posMax()) setPos(0); lastT = 0; requestAnimationFrame(frame); }
}
function stepBy(dir) {
  setPlaying(false);
  if (UI.clock === "events") { setPos(Math.floor(UI.pos) + dir); return; }
  // time clock: to the time of the next (previous) event of any panel
  let best = dir > 0 ? Infinity : -Infinity;
  for (const p of FC.panels) {
    const t = p.rec.a.tr_t, c = p.cursor;
    if (dir > 0 && c < p.rec.nTr) best = Math.min(best, t[c]);
    if (dir < 0 && c > 1) best = Math.max(best, t[c - 2]);
    if (dir < 0 && c === 1) best = Math.max(best, -1);
  }
  if (isFinite(best)) setPos(best);
}

// ---------------------------------------------------------------- time axis (event density + cursor)
function drawAxis() {
  const c = $("axis"), dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
  if (!w) return;
  if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
  const ctx = c.getContext("2d"); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!posMax()) {
    ctx.fillStyle = "#777"; ctx.font = "11px sans-serif"; ctx.textAlign = "left";
    ctx.fillText("no restore trace in " + (FC.panels.length > 1 ? "these recordings" : "this recording"), 4, h / 2 + 4);
    return;
  }
  const max = posMax() || 1, bins = Math.max(1, Math.floor(w / 2)), colors = ["#4d7a97", "#c0762a"];
  FC.panels.forEach((p, k) => {
    const key = `${UI.clock}|${bins}|${max}`;
    if (!p.hist || p.hist.key !== key) { // event density, computed once per clock and width
      const hist = new Float64Array(bins), t = p.rec.a.tr_t;
      for (let i = 0; i < p.rec.nTr; i++) { const v = UI.clock === "events" ? i : t[i]; hist[Math.min(bins - 1, Math.floor(v / max * bins))]++; }
      p.hist = { key, hist };
    }
    const hist = p.hist.hist;
    let hm = 1; for (const v of hist) hm = Math.max(hm, v);
    ctx.fillStyle = colors[k % 2] + "aa";
    const bh = (h - 12) / FC.panels.length;
    for (let b = 0; b < bins; b++) if (hist[b]) { const hh = Math.max(1, hist[b] / hm * bh); ctx.fillRect(b * w / bins, k * bh + bh - hh, Math.max(1, w / bins - 0.5), hh); }
  });
  ctx.fillStyle = "#555"; ctx.font = "10px sans-serif";
  const unit = UI.clock === "events" ? "event" : "ms", scale = UI.clock === "events" ? 1 : 1e-3;
  for (let k = 0; k <= 4; k++) {
    const x = k / 4 * (w - 1), v = k / 4 * max * scale;
    ctx.fillRect(x, h - 12, 1, 3);
    const label = (UI.clock === "events" ? fmtInt(v) : v.toFixed(1)) + (k === 4 ? " " + unit + (UI.clock === "events" ? "s" : "") : "");
    ctx.textAlign = k === 0 ? "left" : k === 4 ? "right" : "center"; ctx.fillText(label, x, h - 1);
  }
  ctx.fillStyle = "#d00"; ctx.fillRect(Math.min(w - 2, UI.pos / max * w), 0, 2, h - 12);
}
function axisSeek(ev) { const r = $("axis").getBoundingClientRect(); setPlaying(false); setPos((ev.clientX - r.left) / r.width * posMax()); }

// ---------------------------------------------------------------- the owner tree
function statCols(n) { return [n.virt, n.rss, n.rest].map((v) => v === undefined || v === null ? "" : kb(v)); }
function tipOf(n) {
  const pad = (s) => String(s).padStart(9);
  return `${n.head}\n────────────\nvirtual: ${pad(kb(n.virt || 0))} kB\n    rss: ${pad(kb(n.rss || 0))} kB\n   uffd: ${pad(kb(n.rest || 0))} kB\n\n--select ${n.key}`;
}
function keyed(list, labelOf) { const seen = {}; return list.map((x) => { const l = labelOf(x); const k = seen[l] || 0; seen[l] = k + 1; return l + "#" + k; }); }
function mapNode(rec, o, m, key) {
  const A = rec.a, name = rec.mapName(m);
  return { label: `${hex16(A.map_start[m])}-${hex16(A.map_end[m])}`, head: name || "[anon]", virt: A.map_end[m] - A.map_start[m],
    rss: A.map_rss[m] * rec.ps, rest: A.map_rest[m] * rec.ps, sel: { t: "map", m }, key, suffix: name ? basename(name) : "" };
}
function buildTree(rec) {
  const roots = [], ps = rec.ps;
  const order = rec.owners.map((o, i) => i).sort((x, y) => rec.owners[x].pid - rec.owners[y].pid);
  for (const oi of order) {
    const o = rec.owners[oi];
    const n = { label: `${o.pid}: ${basename(o.exe)}`, head: `${o.pid}: ${o.exe}/pmap`, virt: o.virt, rss: o.rss, rest: o.rest, sel: { t: "owner", o: oi }, key: o.key, kids: [] };
    if (o.maps.length) {
      const mk = keyed(o.maps, (m) => rec.mapName(m));
      let v = 0, r = 0, u = 0;
      for (const m of o.maps) { v += rec.a.map_end[m] - rec.a.map_start[m]; r += rec.a.map_rss[m]; u += rec.a.map_rest[m]; }
      const g = o.pid > 0 ? "pmap" : "physical";
      n.kids.push({ label: g, head: g, virt: v, rss: r * ps, rest: u * ps, sel: { t: "maps", o: oi }, key: o.key + "|" + g,
        lazy: () => o.maps.map((m, i) => mapNode(rec, o, m, o.key + "|m:" + mk[i])) });
    }
    if (o.us < o.re) n.kids.push({ label: "(pages without mapping)", head: "pages without mapping", rss: (o.re - o.us) * ps, sel: { t: "unmapped", o: oi }, key: o.key + "|none" });
    if (rec.nmt && rec.nmt.owner === oi) {
      const nm = rec.nmt, regs = nm.regions;
      const sum = (f) => regs.reduce((a, r) => a + r[f], 0);
      n.kids.push({ label: "NMT", head: "NMT", virt: sum("virt"), rss: sum("rss"), rest: sum("rest"), sel: { t: "nmt" }, key: o.key + "|nmt",
        lazy: () => regs.map((r, ri) => ({ label: nm.categories[r.cat], head: `${hex16(r.s)}-${hex16(r.e)}`, virt: r.virt, rss: r.rss, rest: r.rest,
          sel: { t: "reg", r: ri }, key: "nmt|" + r.key, committed: r.committed,
          kids: r.com.map((c, ci) => ({ label: `${hex16(c[0])}-${hex16(c[1])}`, head: `committed ${kb(c[1] - c[0])} kB`, virt: c[1] - c[0], rss: c[2], rest: c[3],
            sel: { t: "com", r: ri, i: ci }, key: "nmt|" + r.key + "|c" + ci })) })) });
      n.kids.push({ label: "NMT categories", head: "NMT categories (all regions of a category)", virt: sum("virt"), rss: sum("rss"), rest: sum("rest"), sel: { t: "nmt" }, key: o.key + "|nmtcats",
        kids: nm.cats.map((c) => ({ label: c.name, head: `${c.name}: ${c.regions.length} region(s), committed ${kb(c.committed)} kB`, virt: c.virt, rss: c.rss, rest: c.rest, sel: { t: "cat", c: c.i }, key: "nmtcat|" + c.name })) });
    }
    roots.push(n);
  }
  return roots;
}
function kidsOf(n) { if (!n.kids && n.lazy) { n.kids = n.lazy(); n.lazy = null; } return n.kids || []; }
function nodeEl(n, depth) {
  const wrap = el("div", "tn"), row = el("div", "row");
  row.setAttribute("role", "treeitem"); row.dataset.key = n.key;
  n.el = wrap; n.row = row;
  const hasKids = !!(n.lazy || (n.kids && n.kids.length));
  const lab = el("span", "lab");
  lab.style.paddingLeft = depth * 14 + "px";
  const tw = el("span", "tw", hasKids ? "▸" : "");
  lab.appendChild(tw); lab.appendChild(document.createTextNode(n.label + (n.suffix ? "  " + n.suffix : "")));
  row.appendChild(lab);
  for (const v of statCols(n)) row.appendChild(el("span", "num", v));
  row.title = tipOf(n);
  wrap.appendChild(row);
  const kids = el("div", "kids"); wrap.appendChild(kids);
  const toggle = () => {
    if (!hasKids) return;
    if (!kids.childElementCount) for (const k of kidsOf(n)) kids.appendChild(nodeEl(k, depth + 1));
    wrap.classList.toggle("open"); tw.textContent = wrap.classList.contains("open") ? "▾" : "▸";
  };
  n.toggle = toggle; n.expand = () => { if (!wrap.classList.contains("open")) toggle(); };
  tw.addEventListener("click", (e) => { e.stopPropagation(); toggle(); });
  row.addEventListener("click", () => selectNode(n));
  row.addEventListener("dblclick", toggle);
  return wrap;
}
function renderTree() {
  const t = $("tree"); t.textContent = "";
  const p = FC.panels[UI.treeOf];
  if (p.rec.m.no_memmap) { t.appendChild(el("p", "note", p.rec.m.no_memmap)); return; }
  if (!p.tree) p.tree = buildTree(p.rec);
  for (const n of p.tree) t.appendChild(nodeEl(n, 0));
  if (UI.selKey) { const n = findKey(p.tree, UI.selKey); if (n) markSelected(n); }
}
function* walk(nodes, path) { for (const n of nodes) { yield [n, path]; yield* walk(kidsOf(n), path.concat([n.label])); } }
function findKey(tree, key) { for (const [n] of walk(tree, [])) if (n.key === key) return n; return null; }
function markSelected(n) {
  document.querySelectorAll("#tree .row.sel").forEach((r) => r.classList.remove("sel"));
  if (n.row) n.row.classList.add("sel");
}
function selectNode(n) {
  UI.selKey = n.key; UI.selNode = n; markSelected(n);
  const counts = [];
  FC.panels.forEach((p, k) => {
    if (!p.tree) p.tree = buildTree(p.rec);
    const m = k === UI.treeOf ? n : findKey(p.tree, n.key);
    counts.push(p.rec.setSelection(m ? m.sel : null));
    p.repaint();
  });
  $("status").textContent = `selected: ${n.label} (${counts.map(fmtInt).join(" | ")} pages)`;
  FC.selected = { key: n.key, label: n.label, pages: counts };
}
// reveal a node in the tree (expanding its ancestors) and select it
function reveal(key) {
  const p = FC.panels[UI.treeOf];
  for (const [n, path] of walk(p.tree, [])) {
    if (n.key !== key) continue;
    let nodes = p.tree;
    for (const lab of path) { const a = nodes.find((x) => x.label === lab); if (!a) break; a.expand(); nodes = kidsOf(a); }
    if (n.row) n.row.scrollIntoView({ block: "center" });
    selectNode(n); return n;
  }
  return null;
}

// ---------------------------------------------------------------- search
let searchTimer = 0;
function doSearch() {
  const q = $("search").value.trim().toLowerCase(), t = $("tree");
  if (!q) { renderTree(); return; }
  t.textContent = "";
  const p = FC.panels[UI.treeOf];
  if (/^0x[0-9a-f]+$/.test(q)) {
    const addr = Number(BigInt(q)), s = Math.floor(addr / p.rec.ps);
    const item = el("div", "tn hit"), row = el("div", "row");
    row.appendChild(el("span", "lab", `go to physical page ${hex16(s * p.rec.ps)}`));
    row.addEventListener("click", () => { const c = p.slotToClient(s); UI.hoverSlot = s; showTip(p, s, c.x, c.y); FC.panels.forEach((x) => x.render()); });
    item.appendChild(row); t.appendChild(item);
  }
  let shown = 0;
  for (const [n, path] of walk(p.tree, [])) {
    const text = (n.label + " " + (n.head || "") + " " + (n.suffix || "")).toLowerCase();
    if (!text.includes(q)) continue;
    const item = el("div", "tn hit"), row = el("div", "row");
    const lab = el("span", "lab");
    lab.appendChild(el("span", "path", path.join(" › ") + (path.length ? " › " : "")));
    lab.appendChild(document.createTextNode(n.label + (n.suffix ? "  " + n.suffix : "")));
    row.appendChild(lab);
    for (const v of statCols(n)) row.appendChild(el("span", "num", v));
    row.title = tipOf(n);
    row.addEventListener("click", () => { $("search").value = ""; renderTree(); reveal(n.key); });
    item.appendChild(row); t.appendChild(item);
    if (++shown >= 400) { t.appendChild(el("div", "path", "… more matches; refine the search")); break; }
  }
  if (!shown && !t.childElementCount) t.appendChild(el("div", "path", "no match"));
}

// ---------------------------------------------------------------- hover tooltip
function showTip(p, s, x, y) {
  const tip = $("tip");
  if (s < 0) { tip.style.display = "none"; return; }
  let html = FC.panels.length > 1 ? `<b>${esc(p.rec.m.label)}</b>\n` : "";
  html += p.rec.describe(s);
  tip.innerHTML = html; tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.max(4, Math.min(x + 14, window.innerWidth - w - 4)) + "px";
  tip.style.top = Math.max(4, (y + 16 + h > window.innerHeight ? y - h - 10 : y + 16)) + "px";
}

// ---------------------------------------------------------------- summary tab
function tableHTML(t, limit) {
  const isText = (c) => /^(category|class|name|exe|group|start|end)$/.test(c);
  let h = `<table><thead><tr>${t.columns.map((c) => `<th class="${isText(c) ? "s" : ""}">${esc(c)}</th>`).join("")}</tr></thead><tbody>`;
  const cell = (v, c) => v === null ? "–" : typeof v === "number" && Number.isInteger(v) && !/^(pid|first|p50|p90|last)$/.test(c) ? fmtInt(v) : esc(v);
  for (const r of t.rows.slice(0, limit || 1e9)) h += `<tr>${r.map((v, i) => `<td class="${isText(t.columns[i]) ? "s" : ""}">${cell(v, t.columns[i])}</td>`).join("")}</tr>`;
  return h + "</tbody></table>";
}
const SERIES_COLORS = ["#4d7a97", "#c0762a", "#6a9a3a", "#8e5ea2", "#b8485a", "#3a8f8f", "#9a8a2a", "#5a5a9a", "#777777", "#c25fa0"];
let seriesColor = null; // one colour per series name across all recordings, so A and B read alike
function colorOf(name) {
  if (!seriesColor) {
    const names = [...new Set(METAS.flatMap((m) => m.chart.series.map((s) => s.name)))].sort();
    seriesColor = new Map(names.map((n, i) => [n, SERIES_COLORS[i % SERIES_COLORS.length]]));
  }
  return seriesColor.get(name) || "#999";
}
function chartSVG(ch, w, h) {
  if (!ch.series.length) return "<p>No restore trace.</p>";
  const L = 54, R = 170, T = 10, B = 30, pw = w - L - R, ph = h - T - B;
  const tmax = ch.t[ch.t.length - 1] || 1;
  let vmax = 0; for (const s of ch.series) vmax = Math.max(vmax, s.values[s.values.length - 1]);
  vmax = vmax || 1;
  let g = `<svg class="chart" width="${w}" height="${h}" role="img" aria-label="restored MiB over time per category" data-series="${ch.series.length}">`;
  g += `<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="#fff" stroke="#ccc"/>`;
  for (let k = 0; k <= 4; k++) {
    const y = T + ph - k / 4 * ph, x = L + k / 4 * pw;
    g += `<line x1="${L}" x2="${L + pw}" y1="${y}" y2="${y}" stroke="#eee"/><text x="${L - 4}" y="${y + 4}" text-anchor="end">${(k / 4 * vmax).toFixed(vmax < 4 ? 2 : 1)}</text>`;
    g += `<text x="${x}" y="${T + ph + 14}" text-anchor="middle">${ch.x === "ms" ? (k / 4 * tmax).toFixed(1) : fmtInt(k / 4 * tmax)}</text>`;
  }
  g += `<text x="${L + pw / 2}" y="${h - 2}" text-anchor="middle">${ch.x === "ms" ? "ms since the first fault" : "trace events"}</text>`;
  g += `<text x="12" y="${T + ph / 2}" transform="rotate(-90 12 ${T + ph / 2})" text-anchor="middle">restored MiB</text>`;
  ch.series.forEach((s, i) => {
    const col = colorOf(s.name);
    const pts = s.values.map((v, j) => `${(L + ch.t[j] / tmax * pw).toFixed(1)},${(T + ph - v / vmax * ph).toFixed(1)}`);
    g += `<polyline fill="none" stroke="${col}" stroke-width="1.6" points="${L},${T + ph} ${pts.join(" ")}"/>`;
    g += `<rect x="${L + pw + 10}" y="${T + 4 + i * 15}" width="10" height="10" fill="${col}"/><text x="${L + pw + 24}" y="${T + 13 + i * 15}">${esc(s.name)} ${s.total.toFixed(1)}</text>`;
  });
  return g + "</svg>";
}
function renderSummary() {
  const box = $("summary"); let h = "";
  if (OPTS.compare && OPTS.compare.length) {
    h += `<h3>Comparison: ${esc(METAS[0].label)} vs ${esc(METAS[1].label)}</h3>`;
    for (const t of OPTS.compare) h += `<h4>${esc(t.title)}</h4>` + tableHTML(t);
  }
  h += `<div class="cols">`;
  for (const m of METAS) {
    const t = m.totals;
    const facts = Object.entries(m.facts).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
    h += `<div class="col"><h3>${esc(m.label)}</h3><div class="facts">${esc(facts)}</div>`;
    h += `<p>${fmtInt(t.physical_pages)} ${m.space === "process" ? "pages of the JVM's CRIU images (virtual-address order)" : "physical pages"}, ${t.processes} owners, ${fmtInt(t.uffd_events)} uffd events ` +
      `(${fmtInt(t.pages_loaded)} pages / ${kb(t.pages_loaded * m.page_size)} kB loaded, ${fmtInt(t.pages_zeroed)} pages / ${kb(t.pages_zeroed * m.page_size)} kB zeroed), ` +
      `${t.nmt_regions} NMT regions; restored ${kb(t.restored_kb * 1024)} kB, ${t.attributed_pct ?? "–"} % attributed.</p>`;
    h += `<h4>Restored MiB over time per category</h4>` + chartSVG(m.chart, 640, Math.max(220, 40 + 15 * m.chart.series.length));
    for (const [name, t2] of Object.entries(m.tables)) {
      if (!t2.rows.length) continue;
      const long = t2.rows.length > 30;
      h += `<h4>${esc(t2.title)}</h4>` + (long ? `<div class="scrolltab">${tableHTML(t2)}</div>` : tableHTML(t2));
    }
    h += `</div>`;
  }
  box.innerHTML = h + `</div>`;
}

// ---------------------------------------------------------------- wiring
function uffdLine() {
  return FC.panels.map((p) => {
    const t = p.rec.m.totals, ps = p.rec.ps;
    return `<b>Userfaultfd:</b> ${fmtInt(t.uffd_events)} events (${fmtInt(t.pages_loaded)} pages / ${kb(t.pages_loaded * ps)} kB loaded,  ${fmtInt(t.pages_zeroed)} pages / ${kb(t.pages_zeroed * ps)} kB zeroed)`;
  }).join(" &nbsp;|&nbsp; ");
}
function setZoom(z, cx, cy) {
  const p0 = FC.panels[0], sc = p0.scroller, old = UI.zoom;
  z = Math.max(0.125, Math.min(64, z));
  if (z < 1) z = 1 / Math.pow(2, Math.round(Math.log2(1 / z))); // 1/2, 1/4, 1/8: whole pages per pixel
  const r = sc.getBoundingClientRect();
  const ax = cx === undefined ? sc.clientWidth / 2 : cx - r.left, ay = cy === undefined ? sc.clientHeight / 2 : cy - r.top;
  const px = (sc.scrollLeft + ax) / old, py = (sc.scrollTop + ay) / old;
  UI.zoom = z;
  for (const p of FC.panels) {
    if (z < 1 && p.painted) p.reduceAll();
    p.resize(); p.scroller.scrollLeft = px * z - ax; p.scroller.scrollTop = py * z - ay; p.render();
  }
  $("zoomlabel").textContent = z >= 1 ? z + " px/page" : Math.round(1 / z) + " pages/px";
}
let syncing = false;
function wirePanel(p) {
  const sc = p.scroller;
  // the controls below can wrap onto more lines after load (counters, clock): keep the canvas the size of
  // its scroller, or it covers the scroll bars and spills under the controls
  if (window.ResizeObserver) new ResizeObserver(() => p.resize()).observe(sc);
  sc.addEventListener("scroll", () => {
    p.render();
    if (syncing) return; syncing = true;
    for (const q of FC.panels) if (q !== p) { q.scroller.scrollLeft = sc.scrollLeft; q.scroller.scrollTop = sc.scrollTop; }
    syncing = false;
  });
  let drag = null;
  sc.addEventListener("mousedown", (e) => { if (e.button === 0) { drag = { x: e.clientX, y: e.clientY, l: sc.scrollLeft, t: sc.scrollTop, moved: false }; } });
  window.addEventListener("mouseup", () => { if (drag) sc.classList.remove("drag"); drag = null; });
  sc.addEventListener("mousemove", (e) => {
    if (drag && (e.buttons & 1)) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; sc.classList.add("drag"); }
      if (drag.moved) { sc.scrollLeft = drag.l - dx; sc.scrollTop = drag.t - dy; return; }
    }
    const s = p.slotAt(e.clientX, e.clientY);
    if (s !== UI.hoverSlot) { UI.hoverSlot = s; FC.panels.forEach((q) => q.render()); }
    showTip(p, s, e.clientX, e.clientY);
  });
  sc.addEventListener("mouseleave", () => { UI.hoverSlot = -1; $("tip").style.display = "none"; FC.panels.forEach((q) => q.render()); });
  sc.addEventListener("wheel", (e) => {
    if (!e.ctrlKey && !e.metaKey) return;
    e.preventDefault(); setZoom(UI.zoom * (e.deltaY < 0 ? 1.25 : 0.8), e.clientX, e.clientY);
  }, { passive: false });
}
function wire() {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("#tabs button").forEach((x) => x.classList.toggle("on", x === b));
    document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("on", x.id === "tab-" + b.dataset.tab));
    if (b.dataset.tab === "phys") { FC.panels.forEach((p) => p.resize()); drawAxis(); }
  }));
  $("b-play").addEventListener("click", () => setPlaying(!UI.playing));
  $("b-rewind").addEventListener("click", () => { setPlaying(false); setPos(0); });
  $("b-ff").addEventListener("click", () => { setPlaying(false); setPos(posMax()); });
  $("b-step").addEventListener("click", () => stepBy(1));
  $("b-back").addEventListener("click", () => stepBy(-1));
  $("b-zoomin").addEventListener("click", () => setZoom(UI.zoom * 2));
  $("b-zoomout").addEventListener("click", () => setZoom(UI.zoom / 2));
  const sp = $("speed");
  SPEEDS.forEach(([c, r, lab], i) => { const o = el("option", null, lab); o.value = i; sp.appendChild(o); });
  const hasTime = FC.panels.some((p) => p.rec.m.trace.span_ms > 0);
  [...sp.options].forEach((o) => { if (SPEEDS[o.value][0] === "time" && !hasTime) o.disabled = true; });
  sp.value = 1;
  sp.addEventListener("change", () => {
    const [c, r] = SPEEDS[sp.value];
    if (c !== UI.clock) { // keep the drawn position when switching clocks
      const p = FC.panels[0];
      UI.clock = c;
      UI.pos = c === "events" ? p.cursor : (p.cursor ? p.rec.a.tr_t[p.cursor - 1] : 0);
    }
    UI.rate = r; updateCounters();
  });
  const wi = $("width"); wi.value = UI.width;
  wi.addEventListener("change", () => { const v = Math.max(16, parseInt(wi.value, 10) || 512); UI.width = v; FC.panels.forEach((p) => { p.layout(); p.resize(); }); });
  $("seedcolors").addEventListener("change", (e) => { UI.seedColors = e.target.checked; FC.panels.forEach((p) => p.repaint()); });
  const tof = $("treeof");
  METAS.forEach((m, i) => { const o = el("option", null, m.label); o.value = i; tof.appendChild(o); });
  tof.style.display = METAS.length > 1 ? "" : "none";
  tof.addEventListener("change", () => { UI.treeOf = +tof.value; renderTree(); });
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(doSearch, 150); });
  let axisDrag = false;
  $("axis").addEventListener("mousedown", (e) => { axisDrag = true; axisSeek(e); });
  window.addEventListener("mousemove", (e) => { if (axisDrag) axisSeek(e); });
  window.addEventListener("mouseup", () => { axisDrag = false; });
  window.addEventListener("resize", () => { FC.panels.forEach((p) => p.resize()); drawAxis(); });
  window.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if (e.key === " ") { e.preventDefault(); setPlaying(!UI.playing); }
    else if (e.key === "ArrowRight") stepBy(1);
    else if (e.key === "ArrowLeft") stepBy(-1);
    else if (e.key === "Home") { setPlaying(false); setPos(0); }
    else if (e.key === "End") { setPlaying(false); setPos(posMax()); }
    else if (e.key === "+" || e.key === "=") setZoom(UI.zoom * 2);
    else if (e.key === "-") setZoom(UI.zoom / 2);
  });
  const lg = $("legend");
  for (const [k, lab] of LEGEND) { const s = el("span"); const i = el("i"); i.style.background = COL[k]; s.appendChild(i); s.appendChild(document.createTextNode(lab)); lg.appendChild(s); }
}

async function main() {
  const t0 = performance.now();
  const ph = FC.phases = { parse: t0 };
  let tl = t0;
  const mark = (name) => { const t = performance.now(); ph[name] = t - tl; tl = t; };
  document.title = OPTS.title || document.title;
  $("title").textContent = METAS.map((m) => m.label).join("  vs  ");
  const recs = [];
  for (let i = 0; i < METAS.length; i++) {
    const bytes = await b64bytes(`fc-blob-${i}-0`); mark("base64");
    const buf = await inflate(bytes); mark("inflate");
    recs.push(new Rec(METAS[i], buf)); mark("index");
  }
  const host = $("panels");
  recs.forEach((r, i) => FC.panels.push(new Panel(r, i, host)));
  FC.panels.forEach(wirePanel);
  wire();
  $("uffdline").innerHTML = uffdLine();
  FC.panels.forEach((p) => p.resize()); mark("draw");
  if (UI.zoom < 1) setZoom(UI.zoom); else $("zoomlabel").textContent = UI.zoom + " px/page";
  FC.panels.forEach((p) => { p.tree = buildTree(p.rec); });
  renderTree();
  // initial selection as the seed: the kernel (row 1 of its tree), else the first node
  const tree = FC.panels[0].tree, start = OPTS.select ? findKey(tree, OPTS.select) : (tree.find((n) => n.label.startsWith("0:")) || tree[0]);
  if (start) { if (OPTS.select) reveal(start.key); else selectNode(start); }
  FC.panels.forEach((p) => { if (!p.painted) p.repaint(); });
  // the whole restore is drawn at load; Play animates it from the first fault (setPlaying rewinds at the end)
  if (OPTS.position === "start") updateCounters(); else setPos(posMax());
  mark("tree+select");
  renderSummary(); mark("summary");
  FC.loadMs = performance.now() - t0;
  FC.readyAt = performance.now();     // ms since navigation start: what a user waits for
  $("status").textContent = `loaded in ${Math.round(FC.loadMs)} ms`;
  FC.ready = true;
  // then what only hover text needs: the second blob, and the owners of each page
  for (let i = 0; i < recs.length; i++) {
    const el1 = $(`fc-blob-${i}-1`);
    if (el1) recs[i].views(await inflate(await b64bytes(`fc-blob-${i}-1`)), 1); else recs[i].detail = true;
    recs[i].rowsOfPhys(0);
  }
  FC.detailAt = performance.now();
  FC.detailReady = true;
  if (UI.selNode && UI.selNode.sel.t === "com") selectNode(UI.selNode);
}

// ---------------------------------------------------------------- API for tests and scripting
Object.assign(FC, {
  select: (key) => { const n = reveal(key); return n ? FC.selected : null; },
  keys: (panel) => [...walk(FC.panels[panel || 0].tree, [])].map(([n, path]) => ({ key: n.key, path: path.concat([n.label]) })),
  pixel: (panel, slot) => FC.panels[panel].pix[slot],
  pixels: (panel) => { const p = FC.panels[panel], u8 = new Uint8Array(p.pix.buffer, 0, p.rec.slots * 4); let s = ""; for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000)); return btoa(s); },
  slotsWithColor: (panel, names) => { // page indices currently drawn in any of the named colours
    const p = FC.panels[panel], want = new Set(names.map((n) => PX[n])), out = [];
    for (let s = 0; s < p.rec.slots; s++) if (want.has(p.pix[s])) out.push(s);
    return out;
  },
  colors: PX,
  slotToClient: (panel, slot) => FC.panels[panel].slotToClient(slot),
  counter: (panel) => FC.panels[panel || 0].cursor,
  setPos, setZoom, play: () => setPlaying(true), pause: () => setPlaying(false), ui: UI,
});
main().catch((e) => { FC.error = String(e && e.stack || e); $("status").textContent = "error: " + e; console.error(e); });
})();
