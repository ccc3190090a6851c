// The workflow editor (/workflows/new, /workflows/NAME/edit). The page works without this
// script: a form around the workflow's YAML. With it, the element #visual-editor (which
// carries the workflow as JSON in data-draft) becomes a visual editor: name, triggers,
// stages with their adapter instance and `with`, and `needs` drawn on a canvas (click a
// stage's output handle, then the stage that needs it; click an edge to remove it) or
// picked from each stage's "Needs" list. After each change (300 ms after the last) the
// server writes the YAML (POST /ui/editor/compose, which keeps an existing file's comments)
// and checks it (POST /ui/editor/validate); problems show next to their stage.
"use strict";

(function () {
  const form = document.getElementById("workflow-form");
  const yamlArea = document.getElementById("workflow-yaml");
  const draftInput = document.getElementById("workflow-draft");
  const problemsBox = document.getElementById("workflow-problems");
  const root = document.getElementById("visual-editor");
  const csrfMeta = document.querySelector('meta[name="baton-csrf"]');
  if (!form || !yamlArea || !problemsBox) return;
  const csrf = csrfMeta ? csrfMeta.content : "";
  const SVG = "http://www.w3.org/2000/svg";
  const WAIT_MS = 300;

  // --- small helpers -------------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else if (key === "value") node.value = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  // Enter and Space act on focusable non-buttons (SVG groups) as a click does.
  function activate(node, handler) {
    node.addEventListener("click", handler);
    node.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        handler(event);
      }
    });
  }

  async function post(url, body, type) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": type, "accept": "application/json", "x-csrf-token": csrf },
      body,
    });
    const kind = response.headers.get("content-type") || "";
    if (!kind.startsWith("application/json")) {
      throw new Error(response.status === 200 ? "signed out? reload the page" : "the server said " + response.status);
    }
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : "the server said " + response.status);
    return answer;
  }

  function problemItem(problem) {
    return el("li", {}, [
      el("span", { class: "icon", "aria-hidden": "true", text: "✗ " }),
      problem.path ? el("code", { text: problem.path }) : null,
      problem.path ? document.createTextNode(": ") : null,
      document.createTextNode(problem.message),
      problem.line ? el("span", { class: "muted", text: " (line " + problem.line + ")" }) : null,
    ]);
  }

  // --- checking as the person types ----------------------------------------------------

  let timer = null;
  let sequence = 0;
  const status = el("p", { id: "editor-status", class: "editor-status", "aria-live": "polite" });
  form.before(status);

  function schedule(work) {
    clearTimeout(timer);
    status.textContent = "Checking…";
    timer = setTimeout(work, WAIT_MS);
  }

  function showProblems(problems, stageLists) {
    const general = [];
    for (const list of Object.values(stageLists)) list.replaceChildren();
    for (const card of document.querySelectorAll(".stage-card")) card.classList.remove("has-problems");
    for (const problem of problems) {
      const match = /^stages\.([a-z0-9_-]+)(?:[.[]|$)/.exec(problem.path);
      const list = match && stageLists[match[1]];
      if (list) {
        list.append(problemItem(problem));
        list.closest(".stage-card").classList.add("has-problems");
      } else {
        general.push(problem);
      }
    }
    problemsBox.replaceChildren();
    if (problems.length === 0) {
      problemsBox.append(el("p", { class: "valid", role: "status" }, [
        el("span", { "aria-hidden": "true", text: "✓ " }), "No problems: the workflow is valid.",
      ]));
      status.textContent = "✓ Valid";
    } else {
      problemsBox.append(el("h2", { text: problems.length + (problems.length === 1 ? " problem" : " problems") }));
      const withStages = problems.length - general.length;
      if (withStages > 0) {
        problemsBox.append(el("p", { class: "muted", text: withStages === problems.length
          ? "Each is shown with its stage above."
          : withStages + " of them shown with their stage above." }));
      }
      problemsBox.append(el("ul", {}, general.map(problemItem)));
      status.textContent = "✗ " + problems.length + (problems.length === 1 ? " problem" : " problems");
    }
    problemsBox.dataset.checked = String(Number(problemsBox.dataset.checked || "0") + 1);
  }

  function validationUrl(base) {
    return "/ui/editor/validate" + (base ? "?editing=" + encodeURIComponent(base) : "");
  }

  if (!root) {
    // The visual editor cannot show this file: check the text as it is typed.
    const base = (form.querySelector('input[name="base"]') || {}).value || "";
    yamlArea.addEventListener("input", () => schedule(async () => {
      const seq = ++sequence;
      try {
        const validation = await post(validationUrl(base), yamlArea.value, "application/yaml");
        if (seq === sequence) showProblems(validation.problems, {});
      } catch (error) {
        if (seq === sequence) status.textContent = "Could not check: " + error.message;
      }
    }));
    return;
  }

  // --- the visual editor ---------------------------------------------------------------

  const draft = JSON.parse(root.dataset.draft);
  const instances = JSON.parse(root.dataset.instances || "[]");
  const sources = JSON.parse(root.dataset.sources || "[]");
  const base = root.dataset.base || "";
  const stageLists = {};
  let connectFrom = null;

  root.hidden = false;
  yamlArea.readOnly = true;
  yamlArea.setAttribute("aria-readonly", "true");
  const yamlLabel = form.querySelector('label[for="workflow-yaml"]');
  if (yamlLabel) yamlLabel.textContent = "Workflow YAML (written from the editor above)";

  const stageById = (id) => draft.stages.find((s) => s.id === id);

  function changed(structure) {
    draftInput.value = JSON.stringify(draft);
    if (structure) {
      renderCanvas();
      renderNeedsOptions();
    }
    schedule(refresh);
  }

  async function refresh() {
    const seq = ++sequence;
    try {
      const composed = await post("/ui/editor/compose", JSON.stringify({ draft, base: base || null }), "application/json");
      if (seq !== sequence) return;
      yamlArea.value = composed.yaml;
      const kept = document.getElementById("comments-lost");
      if (kept) kept.hidden = composed.comments_kept;
      const validation = await post(validationUrl(base), composed.yaml, "application/yaml");
      if (seq !== sequence) return;
      showProblems(validation.problems, stageLists);
    } catch (error) {
      if (seq === sequence) status.textContent = "Could not check: " + error.message;
    }
  }

  // Name.
  const nameInput = el("input", {
    id: "workflow-name", name: "workflow-name", "aria-label": "Workflow name",
    autocomplete: "off", spellcheck: "false", value: draft.name,
  });
  nameInput.addEventListener("input", () => { draft.name = nameInput.value; changed(false); });

  // Triggers.
  const triggerList = el("ol", { id: "trigger-list", class: "trigger-list" });
  function renderTriggers() {
    triggerList.replaceChildren();
    draft.on.forEach((trigger, i) => {
      const n = i + 1;
      const choices = ["manual", ...sources];
      if (trigger.source && !choices.includes(trigger.source)) choices.push(trigger.source);
      const source = el("select", { id: `trigger-${n}-source`, name: "trigger-source", "aria-label": `Trigger ${n} source` },
        choices.map((c) => el("option", { value: c, text: c === "manual" ? "manual (by hand)" : c, selected: c === trigger.source })));
      source.addEventListener("change", () => { trigger.source = source.value; changed(false); });
      const event = el("input", {
        id: `trigger-${n}-event`, name: "trigger-event", "aria-label": `Trigger ${n} event`,
        placeholder: "any event", value: trigger.event, autocomplete: "off",
      });
      event.addEventListener("input", () => { trigger.event = event.value; changed(false); });
      const condition = el("input", {
        id: `trigger-${n}-if`, name: "trigger-if", "aria-label": `Trigger ${n} condition (jq)`,
        placeholder: "always", value: trigger.if, autocomplete: "off", spellcheck: "false", class: "mono",
      });
      condition.addEventListener("input", () => { trigger.if = condition.value; changed(false); });
      const remove = el("button", { type: "button", id: `trigger-${n}-remove`, "aria-label": `Remove trigger ${n}`, text: "Remove" });
      remove.addEventListener("click", () => {
        draft.on.splice(i, 1);
        renderTriggers();
        changed(false);
        document.getElementById("add-trigger").focus();
      });
      triggerList.append(el("li", { class: "trigger", id: `trigger-${n}` }, [
        el("label", {}, ["Source", source]),
        el("label", {}, ["Event", event]),
        el("label", { class: "wide-field" }, ["If (jq)", condition]),
        remove,
      ]));
    });
  }
  const addTrigger = el("button", { type: "button", id: "add-trigger", "aria-label": "Add trigger", text: "Add trigger" });
  addTrigger.addEventListener("click", () => {
    draft.on.push({ source: "manual", event: "", if: "" });
    renderTriggers();
    changed(false);
    document.getElementById(`trigger-${draft.on.length}-source`).focus();
  });

  // The canvas.
  const canvas = svg("svg", {
    id: "stage-canvas", class: "stage-canvas", role: "group",
    "aria-label": "Stage graph. Activate a stage's output handle, then the stage that needs it, to connect them; activate an edge to remove it.",
  });
  const hint = el("p", { id: "canvas-hint", class: "muted canvas-hint", "aria-live": "polite",
    text: "Click a stage's ● handle, then the stage that needs it. Click an arrow to remove it." });
  const NODE_W = 150, NODE_H = 46, GAP_X = 70, GAP_Y = 26, PAD = 16;

  function depths() {
    const ids = draft.stages.map((s) => s.id);
    const depth = {};
    const visiting = new Set();
    function of(id) {
      if (id in depth) return depth[id];
      if (visiting.has(id)) return 0; // a cycle: validation says so
      visiting.add(id);
      let d = 0;
      for (const need of stageById(id).needs) if (ids.includes(need)) d = Math.max(d, of(need) + 1);
      visiting.delete(id);
      depth[id] = d;
      return d;
    }
    ids.forEach(of);
    return depth;
  }

  function cancelConnect(message) {
    connectFrom = null;
    for (const node of canvas.querySelectorAll(".node.connecting")) node.classList.remove("connecting");
    canvas.classList.remove("connecting");
    if (message) hint.textContent = message;
  }

  function connect(from, to) {
    const stage = stageById(to);
    if (from === to) {
      cancelConnect("A stage cannot need itself.");
      return;
    }
    if (stage.needs.includes(from)) {
      cancelConnect(`${to} already needs ${from}.`);
      return;
    }
    stage.needs.push(from);
    cancelConnect(`${to} now needs ${from}.`);
    changed(true);
  }

  function renderCanvas() {
    const focused = document.activeElement && canvas.contains(document.activeElement) ? document.activeElement.id : null;
    canvas.replaceChildren();
    const depth = depths();
    const columns = [];
    for (const stage of draft.stages) (columns[depth[stage.id]] ||= []).push(stage.id);
    const place = {};
    columns.forEach((ids, col) => ids.forEach((id, row) => {
      place[id] = { x: PAD + col * (NODE_W + GAP_X), y: PAD + row * (NODE_H + GAP_Y) };
    }));
    const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
    const width = PAD * 2 + Math.max(1, columns.length) * (NODE_W + GAP_X) - GAP_X;
    const height = PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y;
    canvas.setAttribute("viewBox", `0 0 ${width} ${height}`);
    canvas.setAttribute("width", width);
    canvas.setAttribute("height", height);
    canvas.append(svg("defs", {}, [
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        [svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" })]),
    ]));
    if (draft.stages.length === 0) {
      canvas.append(svg("text", { x: PAD, y: PAD + 20, class: "empty", text: "No stages yet: add one below." }));
    }
    for (const stage of draft.stages) {
      for (const need of stage.needs) {
        const from = place[need], to = place[stage.id];
        if (!from || !to) continue;
        const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
        const mid = (x1 + x2) / 2;
        const d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2 - 2} ${y2}`;
        const edge = svg("g", {
          class: "edge", id: `edge-${need}-${stage.id}`, role: "button", tabindex: 0,
          "aria-label": `Remove the edge: ${stage.id} needs ${need}`,
        }, [
          svg("title", { text: `${stage.id} needs ${need} (activate to remove)` }),
          svg("path", { d, class: "edge-hit" }),
          svg("path", { d, class: "edge-line", "marker-end": "url(#arrow)" }),
        ]);
        activate(edge, () => {
          stage.needs = stage.needs.filter((n) => n !== need);
          cancelConnect(`${stage.id} no longer needs ${need}.`);
          changed(true);
        });
        canvas.append(edge);
      }
    }
    for (const stage of draft.stages) {
      const { x, y } = place[stage.id];
      const node = svg("g", {
        class: "node" + (connectFrom === stage.id ? " connecting" : ""), id: `node-${stage.id}`,
        "data-stage": stage.id, role: "button", tabindex: 0,
        "aria-label": `Stage ${stage.id}` + (stage.uses ? ` (uses ${stage.uses})` : ""),
      }, [
        svg("rect", { x, y, width: NODE_W, height: NODE_H, rx: 6 }),
        svg("text", { x: x + 10, y: y + 19, class: "node-id", text: stage.id }),
        svg("text", { x: x + 10, y: y + 36, class: "node-uses", text: stage.uses || "(no adapter)" }),
      ]);
      activate(node, () => {
        if (connectFrom) {
          connect(connectFrom, stage.id);
        } else {
          const card = document.getElementById(`stage-${stage.id}`);
          if (card) {
            card.scrollIntoView({ block: "nearest" });
            document.getElementById(`stage-${stage.id}-uses`).focus();
          }
        }
      });
      const handle = svg("circle", {
        cx: x + NODE_W, cy: y + NODE_H / 2, r: 8, class: "handle", id: `handle-${stage.id}`,
        role: "button", tabindex: 0, "aria-label": `Connect from stage ${stage.id}: then activate the stage that needs it`,
      }, [svg("title", { text: `Connect from ${stage.id}` })]);
      activate(handle, (event) => {
        event.stopPropagation();
        if (connectFrom === stage.id) {
          cancelConnect("Connecting cancelled.");
          return;
        }
        cancelConnect();
        connectFrom = stage.id;
        node.classList.add("connecting");
        canvas.classList.add("connecting");
        hint.textContent = `Now activate the stage that needs ${stage.id} (Escape cancels).`;
      });
      canvas.append(node, handle);
    }
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  }
  canvas.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && connectFrom) cancelConnect("Connecting cancelled.");
  });

  // Stages.
  const stageList = el("div", { id: "stage-list", class: "stage-list" });

  function instanceOptions(current) {
    const options = [];
    if (!current) options.push(el("option", { value: "", text: "— choose an adapter —", selected: true }));
    let known = false;
    for (const instance of instances) {
      known ||= instance.name === current;
      const text = instance.name === instance.kind ? instance.name : `${instance.name} (${instance.kind})`;
      options.push(el("option", { value: instance.name, text, selected: instance.name === current }));
    }
    if (current && !known) options.push(el("option", { value: current, text: `${current} (not in the config)`, selected: true }));
    return options;
  }

  function renderNeedsOptions() {
    for (const stage of draft.stages) {
      const select = document.getElementById(`stage-${stage.id}-needs`);
      if (!select) continue;
      const others = draft.stages.filter((s) => s.id !== stage.id).map((s) => s.id);
      select.replaceChildren(...others.map((id) => el("option", { value: id, text: id, selected: stage.needs.includes(id) })));
      select.size = Math.max(2, Math.min(5, others.length));
      select.disabled = others.length === 0;
    }
  }

  function stageCard(stage) {
    const id = stage.id;
    const uses = el("select", { id: `stage-${id}-uses`, name: "stage-uses", "aria-label": `Adapter of stage ${id}` }, instanceOptions(stage.uses));
    uses.addEventListener("change", () => { stage.uses = uses.value; changed(true); });
    const needs = el("select", { id: `stage-${id}-needs`, name: "stage-needs", multiple: true, "aria-label": `Stages that ${id} needs` });
    needs.addEventListener("change", () => {
      const ids = draft.stages.map((s) => s.id);
      const chosen = Array.from(needs.selectedOptions, (o) => o.value);
      // Ids the list cannot show (no such stage) stay, for validation to name.
      stage.needs = [...stage.needs.filter((n) => !ids.includes(n)), ...chosen];
      changed(true);
    });
    const withArea = el("textarea", {
      id: `stage-${id}-with`, name: "stage-with", rows: Math.max(3, stage.with.split("\n").length + 1),
      spellcheck: "false", autocapitalize: "off", class: "mono", "aria-label": `With of stage ${id} (YAML)`,
      "aria-describedby": `stage-${id}-problems`, value: stage.with,
    });
    withArea.addEventListener("input", () => { stage.with = withArea.value; changed(false); });
    const problems = el("ul", { id: `stage-${id}-problems`, class: "stage-problems", "aria-live": "polite" });
    stageLists[id] = problems;
    const remove = el("button", { type: "button", id: `stage-${id}-remove`, class: "danger", "aria-label": `Remove stage ${id}`, text: "Remove stage" });
    remove.addEventListener("click", () => {
      draft.stages = draft.stages.filter((s) => s !== stage);
      for (const other of draft.stages) other.needs = other.needs.filter((n) => n !== id);
      delete stageLists[id];
      renderStages();
      changed(true);
      newStageId.focus();
    });
    return el("section", { class: "stage-card", id: `stage-${id}`, "data-stage": id, "aria-labelledby": `stage-${id}-title` }, [
      el("h3", { id: `stage-${id}-title` }, ["Stage ", el("code", { text: id })]),
      el("div", { class: "stage-fields" }, [
        el("label", {}, ["Adapter", uses]),
        el("label", {}, ["Needs", needs]),
      ]),
      el("label", { class: "with-field" }, ["With (YAML)", withArea]),
      problems,
      remove,
    ]);
  }

  function renderStages() {
    stageList.replaceChildren(...draft.stages.map(stageCard));
    renderNeedsOptions();
  }

  const newStageId = el("input", {
    id: "new-stage-id", name: "new-stage-id", "aria-label": "New stage id", placeholder: "build",
    autocomplete: "off", spellcheck: "false", pattern: "[a-z0-9_-]+", "aria-describedby": "new-stage-note",
  });
  const newStageNote = el("span", { id: "new-stage-note", class: "muted", "aria-live": "polite", text: "lowercase letters, digits, _ and -" });
  const addStage = el("button", { type: "button", id: "add-stage", "aria-label": "Add stage", text: "Add stage" });
  function addStageNow() {
    const id = newStageId.value.trim();
    if (!/^[a-z0-9_-]+$/.test(id)) {
      newStageNote.textContent = "A stage id is lowercase letters, digits, _ and -.";
      newStageId.focus();
      return;
    }
    if (stageById(id)) {
      newStageNote.textContent = `There is already a stage ${id}.`;
      newStageId.focus();
      return;
    }
    const uses = instances.some((i) => i.name === "exec") ? "exec" : (instances[0] ? instances[0].name : "");
    draft.stages.push({ id, uses, with: "", needs: [] });
    newStageId.value = "";
    newStageNote.textContent = `Stage ${id} added.`;
    renderStages();
    changed(true);
    document.getElementById(`stage-${id}-uses`).focus();
  }
  addStage.addEventListener("click", addStageNow);
  newStageId.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addStageNow();
    }
  });

  const commentsLost = el("p", { id: "comments-lost", class: "notice", hidden: true,
    text: "This change cannot keep the file's layout: the YAML below is written out whole, without its comments." });

  root.append(
    el("fieldset", { id: "workflow-meta" }, [
      el("legend", { text: "Workflow" }),
      el("label", {}, ["Name", nameInput]),
    ]),
    el("fieldset", { id: "triggers" }, [
      el("legend", { text: "Triggers" }),
      triggerList,
      addTrigger,
    ]),
    el("fieldset", { id: "graph" }, [
      el("legend", { text: "Stage graph" }),
      el("div", { class: "canvas-frame" }, [canvas]),
      hint,
    ]),
    el("fieldset", { id: "stages" }, [
      el("legend", { text: "Stages" }),
      stageList,
      el("div", { class: "add-stage" }, [
        el("label", {}, ["New stage id", newStageId]),
        addStage,
        newStageNote,
      ]),
    ]),
    commentsLost,
  );
  renderTriggers();
  renderStages();
  renderCanvas();
  draftInput.value = JSON.stringify(draft);
  refresh();
})();
