// OpenEAS console: follows the page's live stream (Server-Sent Events) and swaps in the
// fragments the server rendered (and escaped). The pages work without this file.
const targets = {
  services: "#services tbody",
  groups: "#groups tbody",
  replicas: "#replicas tbody",
  status: "#status",
  charts: "section.charts",
  member_stats: "#member-stats tbody",
  stats_note: "#stats-note",
  steps: "#steps tbody",
  summary: "#summary",
  queues: "#queues tbody",
  jobs: "#jobs tbody",
  log: "#log",
  rollout: "#rollout-state",
  rollout_actions: "#rollout-actions",
};

function sizeBars(root) {
  for (const seg of root.querySelectorAll(".seg[data-share]")) {
    seg.style.flexGrow = seg.dataset.share;
  }
}

function follow(url) {
  const source = new EventSource(url);
  const shown = {}; // what each target last got: an unchanged part is left alone (forms keep their state)
  source.onmessage = (ev) => {
    const data = JSON.parse(ev.data);
    for (const [key, selector] of Object.entries(targets)) {
      const el = document.querySelector(selector);
      if (el && key in data && shown[key] !== data[key]) {
        shown[key] = data[key];
        const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
        el.innerHTML = data[key];
        sizeBars(el);
        if (key === "log" && atEnd) el.scrollTop = el.scrollHeight; // a tail follows its end
      }
    }
    document.body.dataset.liveVersion = String(Number(document.body.dataset.liveVersion || 0) + 1);
  };
}

// A slider shows its value next to it while it moves (the form posts it on submit).
for (const input of document.querySelectorAll("input[type=range][data-out]")) {
  const out = document.getElementById(input.dataset.out);
  input.addEventListener("input", () => { out.value = input.value; });
}

sizeBars(document);
for (const live of document.querySelectorAll('meta[name="openeas-live"]')) follow(live.content);
