"""A model's lineage as a graph: models (ancestors, the model, descendants), the data files and
teachers that went into each step, and where each model is deployed (its aliases), laid out
left to right in layers and drawn as inline SVG with links."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import PurePath
from urllib.parse import quote

from slmops.errors import SlmopsError
from slmops.models.lineage import lineage
from slmops.models.store import ModelRecord, ModelStore


@dataclass
class Node:
    id: str
    kind: str  # model | data | teacher | deployment
    label: str
    sub: str = ""
    href: str | None = None
    focus: bool = False
    layer: int = 0


@dataclass
class Edge:
    source: str
    target: str
    label: str = ""


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def link(self, source: str, target: str, label: str = "") -> None:
        if not any(e.source == source and e.target == target for e in self.edges):
            self.edges.append(Edge(source, target, label))

    def of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == kind]


def model_href(ref: str) -> str:
    name, _, version = ref.partition(":")
    return f"/models/{quote(name)}/{quote(version or 'latest')}"


def _step(rec: ModelRecord) -> str:
    recipe = rec.recipe or {}
    kind = str(recipe.get("kind") or ("distill" if recipe.get("distill") else "import"))
    return "distill" if kind == "finetune" and recipe.get("distill") else kind


def _model_node(rec: ModelRecord, focus: bool = False) -> Node:
    return Node(f"model:{rec.ref}", "model", rec.ref, f"{_step(rec)} · {rec.format}", model_href(rec.ref), focus)


def _find(store: ModelStore, ref: str) -> ModelRecord | None:
    if "://" in ref:
        return None
    try:
        return store.find(ref)
    except SlmopsError:
        return None


def build_graph(store: ModelStore, ref: str, deployments: dict[str, list[Node]] | None = None) -> Graph:
    """The graph around one version: every ancestor with its inputs, the descendants, aliases,
    and ``deployments`` (model ref -> nodes: the servers and fleets running it)."""
    graph = Graph()
    target = store.get(ref)
    records = {r.ref: r for r in store.list()}
    for node in lineage(store, target.ref):
        rec = node.record
        me = graph.add(_model_node(rec, rec.ref == target.ref)).id
        for parent in rec.parents:
            if parent in records:
                graph.add(_model_node(records[parent]))
                graph.link(f"model:{parent}", me, node.step)
        for name, value in node.inputs.items():
            if "teacher" in name:
                teacher = value.split(" (", 1)[0]
                found = _find(store, teacher)
                if found is not None:
                    graph.add(_model_node(found))
                    graph.link(f"model:{found.ref}", me, name)
                else:
                    url, _, served = teacher.partition("#")
                    sub = f"{name} · {url}" if served else name
                    graph.add(Node(f"teacher:{teacher}", "teacher", served or url, sub))
                    graph.link(f"teacher:{teacher}", me, name)
            else:
                short = value[:12] if len(value) >= 32 else value
                label = PurePath(name.split(" ", 1)[-1]).name or name
                graph.add(Node(f"data:{value}", "data", label, f"sha256 {short}"))
                graph.link(f"data:{value}", me, name.split(" ", 1)[0] if " " in name else "data")
    # descendants, breadth first
    frontier = [target.ref]
    while frontier:
        ref_now = frontier.pop(0)
        for rec in records.values():
            if ref_now in rec.parents and f"model:{rec.ref}" not in graph.nodes:
                graph.add(_model_node(rec))
                frontier.append(rec.ref)
            if ref_now in rec.parents:
                graph.link(f"model:{ref_now}", f"model:{rec.ref}", _step(rec))
    for node in list(graph.of_kind("model")):
        rec = records.get(node.label)
        for alias in rec.aliases if rec else []:
            dep = graph.add(Node(f"alias:{rec.name}@{alias}", "deployment", f"{rec.name}@{alias}", "alias",
                                 node.href))
            graph.link(node.id, dep.id, "alias")
        for dep in (deployments or {}).get(node.label, []):
            graph.link(node.id, graph.add(dep).id, dep.sub)
    _layers(graph)
    return graph


def _layers(graph: Graph) -> None:
    """Longest path from the sources: every edge points one or more layers to the right."""
    incoming: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for e in graph.edges:
        incoming[e.target].append(e.source)
    memo: dict[str, int] = {}

    def layer(nid: str, stack: frozenset[str] = frozenset()) -> int:
        if nid in memo:
            return memo[nid]
        if nid in stack:  # a cycle would be a broken store; do not loop on it
            return 0
        value = max((layer(s, stack | {nid}) + 1 for s in incoming[nid]), default=0)
        memo[nid] = value
        return value

    for nid, node in graph.nodes.items():
        node.layer = layer(nid)
    # sources with a single consumer sit just left of it (data beside the step that read it)
    for nid, node in graph.nodes.items():
        outs = [e.target for e in graph.edges if e.source == nid]
        if not incoming[nid] and len(outs) == 1:
            node.layer = max(0, graph.nodes[outs[0]].layer - 1)


NODE_W, NODE_H, COL_W, ROW_H, PAD, LANE = 178, 46, 232, 62, 12, 34
FILL = {"model": "#e8f0fe", "data": "#fef7e0", "teacher": "#fce8e6", "deployment": "#e6f4ea"}
STROKE = {"model": "#1a73e8", "data": "#f9ab00", "teacher": "#d93025", "deployment": "#188038"}


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render_svg(graph: Graph) -> str:
    columns: dict[int, list[Node]] = {}
    order = {"model": 0, "teacher": 1, "data": 2, "deployment": 3}
    for node in sorted(graph.nodes.values(), key=lambda n: (order[n.kind], n.label)):
        columns.setdefault(node.layer, []).append(node)
    long_edges = any(graph.nodes[e.target].layer - graph.nodes[e.source].layer > 1 for e in graph.edges)
    top = PAD + (LANE if long_edges else 0)  # a lane above the nodes for edges that skip a layer
    pos: dict[str, tuple[float, float]] = {}
    for col, nodes in columns.items():
        for row, node in enumerate(nodes):
            pos[node.id] = (PAD + col * COL_W, top + row * ROW_H)
    width = PAD * 2 + (max(columns, default=0)) * COL_W + NODE_W
    height = top + PAD + max((len(v) for v in columns.values()), default=1) * ROW_H - (ROW_H - NODE_H)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage graph">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>']
    for e in graph.edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        attrs = (f'class="edge" data-source="{escape(e.source)}" data-target="{escape(e.target)}" '
                 f'data-label="{escape(e.label)}"')
        if graph.nodes[e.target].layer - graph.nodes[e.source].layer > 1:
            # over the top: from the source's top edge, through the lane, down onto the target's top edge
            sx, ex, lane = x1 + NODE_W * 0.7, x2 + NODE_W * 0.3, PAD + 6
            out.append(f'<path {attrs} d="M{sx:.0f},{y1:.0f} C{sx:.0f},{lane} {ex:.0f},{lane} {ex:.0f},{y2 - 2:.0f}" '
                       f'fill="none" stroke="#b06000" stroke-dasharray="5 3" marker-end="url(#arrow)">'
                       f"<title>{escape(e.label)}</title></path>")
            out.append(f'<text x="{(sx + ex) / 2:.0f}" y="{lane + 10}" font-size="11" fill="#b06000" '
                       f'text-anchor="middle">{escape(e.label)}</text>')
            continue
        x1, y1, x2, y2 = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
        mid = (x1 + x2) / 2
        out.append(f'<path {attrs} d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}" '
                   f'fill="none" stroke="#888" marker-end="url(#arrow)"><title>{escape(e.label)}</title></path>')
    for node in graph.nodes.values():
        x, y = pos[node.id]
        stroke_w = 3 if node.focus else 1.2
        body = (f'<rect x="{x}" y="{y}" rx="6" width="{NODE_W}" height="{NODE_H}" fill="{FILL[node.kind]}" '
                f'stroke="{STROKE[node.kind]}" stroke-width="{stroke_w}"/>'
                f'<text x="{x + 8}" y="{y + 19}" font-size="13" font-weight="600" fill="#202124">'
                f"{escape(_short(node.label))}</text>"
                f'<text x="{x + 8}" y="{y + 36}" font-size="11" fill="#5f6368">{escape(_short(node.sub, 30))}</text>'
                f"<title>{escape(node.kind)}: {escape(node.label)} {escape(node.sub)}</title>")
        if node.href:
            body = f'<a href="{escape(node.href)}">{body}</a>'
        cls = f"node node-{node.kind}" + (" focus" if node.focus else "")
        out.append(f'<g class="{cls}" data-id="{escape(node.id)}" data-label="{escape(node.label)}">{body}</g>')
    out.append("</svg>")
    return "".join(out)
